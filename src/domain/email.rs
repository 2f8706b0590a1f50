use std::fmt;

use super::ParseError;

/// An admin's email address, normalised to lower case so that one person is one identity
/// whatever case they type it in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.len() > 254 {
            return Err(ParseError("email must be 1 to 254 characters"));
        }
        // `email_address` follows RFC 5321/5322; we refuse the exotic forms it allows
        // (quoted local parts, display names) that no admin needs and that only widen parsing.
        let parsed = email_address::EmailAddress::parse_with_options(
            trimmed,
            email_address::Options::default().without_display_text(),
        )
        .map_err(|_| ParseError("email is not a valid address"))?;
        if parsed.local_part().starts_with('"') {
            return Err(ParseError("email is not a valid address"));
        }
        Ok(Self(trimmed.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalises_case_and_whitespace() {
        let e = Email::parse("  Admin@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "admin@example.com");
    }

    #[test]
    fn refuses_non_addresses() {
        for bad in ["", "admin", "@x.io", "a@", "a b@x.io", "\"q\"@x.io", "Name <a@x.io>"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Email::parse(&format!("{}@x.io", "a".repeat(260))).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = Email::parse(&s);
        }

        #[test]
        fn parse_is_idempotent(s in "[a-z0-9._]{1,20}@[a-z0-9]{1,10}\\.[a-z]{2,5}") {
            if let Ok(e) = Email::parse(&s) {
                prop_assert_eq!(Email::parse(e.as_str()).unwrap(), e);
            }
        }
    }
}
