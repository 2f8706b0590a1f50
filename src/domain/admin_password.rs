use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use super::ParseError;

/// A password an admin may be given: the one rule for every place a password is set (the
/// bootstrap setting, `keygate admin create` and `passwd`, `POST /auth/password`), so that
/// no password can be set that login would refuse.
pub struct AdminPassword(SecretString);

impl AdminPassword {
    /// Counted in characters: what a person choosing a password counts.
    pub const MIN_CHARS: usize = 12;
    /// Counted in bytes, as login counts them before hashing: the argon2 input, whose size
    /// the caller must not choose without bound.
    pub const MAX_BYTES: usize = 1024;

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.len() > Self::MAX_BYTES {
            return Err(ParseError("password must be at most 1024 bytes (UTF-8)"));
        }
        if raw.chars().count() < Self::MIN_CHARS {
            return Err(ParseError("password must be at least 12 characters"));
        }
        if raw.chars().all(char::is_whitespace) {
            return Err(ParseError("password must not be only whitespace"));
        }
        Ok(Self(SecretString::from(raw)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn into_secret(self) -> SecretString {
        self.0
    }
}

impl fmt::Debug for AdminPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminPassword([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn length_is_counted_in_characters_below_and_bytes_above() {
        assert!(AdminPassword::parse("eleven char").is_err());
        assert!(AdminPassword::parse("twelve chars").is_ok());
        // 12 characters in 24 bytes: long enough.
        assert!(AdminPassword::parse(&"é".repeat(12)).is_ok());
        assert!(AdminPassword::parse(&"a".repeat(1024)).is_ok());
        assert!(AdminPassword::parse(&"a".repeat(1025)).is_err());
        // 600 characters, but 1200 bytes: login would never accept it.
        assert!(AdminPassword::parse(&"é".repeat(600)).is_err());
        assert!(AdminPassword::parse(&"é".repeat(512)).is_ok());
    }

    #[test]
    fn whitespace_only_is_refused() {
        for raw in [" ".repeat(12), "\t".repeat(20), "\u{3000}".repeat(12), " \n\r\t".repeat(4)] {
            let err = AdminPassword::parse(&raw).unwrap_err();
            assert_eq!(err.0, "password must not be only whitespace");
        }
        assert!(AdminPassword::parse("    x       ").is_ok());
    }

    #[test]
    fn debug_does_not_show_it() {
        let p = AdminPassword::parse("correct horse battery staple").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert_eq!(p.expose(), "correct horse battery staple");
    }

    proptest! {
        #[test]
        fn never_panics_and_accepts_exactly_the_rule(s in "\\PC{0,700}|\\s{0,40}") {
            let accepted = AdminPassword::parse(&s).is_ok();
            let rule = s.len() <= 1024 && s.chars().count() >= 12 && !s.chars().all(char::is_whitespace);
            prop_assert_eq!(accepted, rule);
            if let Ok(p) = AdminPassword::parse(&s) {
                prop_assert_eq!(p.expose(), s.as_str());
            }
        }

        #[test]
        fn anything_accepted_fits_the_login_limit(s in "\\PC{300,1100}") {
            if let Ok(p) = AdminPassword::parse(&s) {
                prop_assert!(p.expose().len() <= AdminPassword::MAX_BYTES);
            }
        }
    }
}
