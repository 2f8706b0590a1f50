use std::fmt;

use uuid::Uuid;

use super::ParseError;

/// A tenant. Every key, admin and session belongs to exactly one, and every store query
/// that touches them is scoped by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountId(Uuid);

impl AccountId {
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Uuid::try_parse(raw).map(Self).map_err(|_| ParseError("account id is not a UUID"))
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// An account's human name, unique across the store (`keygate admin create --account NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountName(String);

impl AccountName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = (1..=64).contains(&raw.len())
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok { Ok(Self(raw.to_owned())) } else { Err(ParseError("account name must be 1 to 64 of [A-Za-z0-9._-]")) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        assert!(AccountName::parse("acme-prod_2.eu").is_ok());
        for bad in ["", "a b", "ünï", "x/y", &"a".repeat(65)] {
            assert!(AccountName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn account_id_round_trips() {
        let id = AccountId::generate();
        assert_eq!(AccountId::parse(&id.to_string()).unwrap(), id);
        assert!(AccountId::parse("nope").is_err());
    }
}
