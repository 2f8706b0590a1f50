use std::fmt;

use uuid::Uuid;

use super::ParseError;

/// The public handle of an API key (`api_key_ref`): what admins delete by and what a token's
/// `sub` names. A random UUID rather than the API key itself, so URLs, logs and tokens can
/// carry it without handing out the login identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRef(Uuid);

impl KeyRef {
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        // Only the canonical hyphenated form: one ref, one spelling.
        if raw.len() != 36 {
            return Err(ParseError("api_key_ref is not a valid reference"));
        }
        let id = Uuid::try_parse(raw).map_err(|_| ParseError("api_key_ref is not a valid reference"))?;
        if id.hyphenated().to_string() != raw {
            return Err(ParseError("api_key_ref is not a valid reference"));
        }
        Ok(Self(id))
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_form_only() {
        let r = KeyRef::generate();
        assert_eq!(KeyRef::parse(&r.to_string()).unwrap(), r);
        assert!(KeyRef::parse(&r.to_string().to_uppercase()).is_err());
        assert!(KeyRef::parse(&r.to_string().replace('-', "")).is_err());
        assert!(KeyRef::parse("../../etc/passwd").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = KeyRef::parse(&s);
        }

        #[test]
        fn round_trips(bytes in any::<[u8; 16]>()) {
            let r = KeyRef(Uuid::from_bytes(bytes));
            prop_assert_eq!(KeyRef::parse(&r.to_string()).unwrap(), r);
        }
    }
}
