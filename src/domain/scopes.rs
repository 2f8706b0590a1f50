use std::{fmt, sync::Arc};

use super::ParseError;

/// At most this many scopes per key.
pub const MAX_SCOPES: usize = 50;
/// At most this many characters per scope.
pub const MAX_SCOPE_LEN: usize = 128;

/// A key's scopes: distinct RFC 6749 §3.3 scope tokens (`%x21 / %x23-5B / %x5D-7E`, no
/// spaces, quotes or backslashes), kept as the space-separated list the standard writes.
/// Shared, so that copying a key's scopes onto each verification costs no allocation, and
/// a key without scopes none at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Option<Arc<str>>);

/// The scope a key needs to introspect tokens issued to other keys of its account: what a
/// resource server's key holds.
pub const INTROSPECT_SCOPE: &str = "keygate:introspect";

fn is_scope_char(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

impl Scopes {
    /// Scopes as an API caller lists them.
    pub fn parse<S: AsRef<str>>(scopes: &[S]) -> Result<Self, ParseError> {
        if scopes.len() > MAX_SCOPES {
            return Err(ParseError("scopes: at most 50"));
        }
        let mut seen: Vec<&str> = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let scope = scope.as_ref();
            if scope.is_empty() || scope.len() > MAX_SCOPE_LEN || !scope.bytes().all(is_scope_char) {
                return Err(ParseError(
                    "scopes: each must be 1 to 128 characters of RFC 6749's scope alphabet (printable ASCII \
                     without space, '\"' or '\\')",
                ));
            }
            if seen.contains(&scope) {
                return Err(ParseError("scopes: each may appear once"));
            }
            seen.push(scope);
        }
        Ok(Self((!seen.is_empty()).then(|| seen.join(" ").into())))
    }

    /// Scopes as the store keeps them: the space-separated list (empty for none).
    pub fn from_stored(stored: &str) -> Result<Self, ParseError> {
        let scopes: Vec<&str> = stored.split(' ').filter(|s| !s.is_empty()).collect();
        Self::parse(&scopes)
    }

    /// A space-separated list as a client or gateway sends it (RFC 6749 §3.3's `scope`
    /// parameter): a scope named twice counts once.
    pub fn parse_list(list: &str) -> Result<Self, ParseError> {
        let mut scopes: Vec<&str> = Vec::new();
        for scope in list.split(' ').filter(|s| !s.is_empty()) {
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Self::parse(&scopes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether every scope here is also in `other`.
    pub fn is_subset_of(&self, other: &Scopes) -> bool {
        self.iter().all(|s| other.contains(s))
    }

    /// The scopes both hold, in this list's order.
    pub fn intersection(&self, other: &Scopes) -> Scopes {
        if self == other {
            return self.clone();
        }
        let kept: Vec<&str> = self.iter().filter(|s| other.contains(s)).collect();
        Self((!kept.is_empty()).then(|| kept.join(" ").into()))
    }

    /// The space-separated list, empty for none (RFC 6749 §3.3's `scope` parameter).
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.as_str().split(' ').filter(|s| !s.is_empty())
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.iter().any(|s| s == scope)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_scope_alphabet_and_refuses_the_rest() {
        let s = Scopes::parse(&["orders:read", "keygate:introspect", "a!#[]~"]).unwrap();
        assert_eq!(s.as_str(), "orders:read keygate:introspect a!#[]~");
        assert!(s.contains(INTROSPECT_SCOPE) && !s.contains("orders"));
        assert_eq!(Scopes::parse::<&str>(&[]).unwrap(), Scopes::default());
        assert_eq!(Scopes::default().as_str(), "");
        for bad in ["", "has space", "quote\"", "back\\slash", "tab\t", "é", &"x".repeat(129)] {
            assert!(Scopes::parse(&[bad]).is_err(), "{bad:?}");
        }
        assert!(Scopes::parse(&["a", "a"]).is_err());
        assert!(
            Scopes::parse(&vec!["x"; 51].iter().enumerate().map(|(i, _)| format!("s{i}")).collect::<Vec<_>>()).is_err()
        );
        assert!(Scopes::parse(&(0..50).map(|i| format!("s{i}")).collect::<Vec<_>>()).is_ok());
    }

    #[test]
    fn lists_narrow_and_intersect() {
        let held = Scopes::parse_list("orders:read orders:write").unwrap();
        let asked = Scopes::parse_list("  orders:read orders:read ").unwrap();
        assert_eq!(asked.as_str(), "orders:read");
        assert!(asked.is_subset_of(&held) && !held.is_subset_of(&asked));
        assert!(Scopes::default().is_subset_of(&held));
        assert_eq!(held.intersection(&asked).as_str(), "orders:read");
        assert!(held.intersection(&Scopes::default()).is_empty());
        assert!(Scopes::parse_list("a \"b").is_err());
    }

    proptest! {
        #[test]
        fn stored_form_round_trips(scopes in proptest::collection::btree_set("[!#-\\[\\]-~]{1,20}", 0..10)) {
            let scopes: Vec<String> = scopes.into_iter().collect();
            let parsed = Scopes::parse(&scopes).unwrap();
            prop_assert_eq!(Scopes::from_stored(parsed.as_str()).unwrap(), parsed.clone());
            prop_assert_eq!(parsed.iter().count(), scopes.len());
        }

        #[test]
        fn never_panics(raw in proptest::collection::vec(any::<String>(), 0..60)) {
            let _ = Scopes::parse(&raw);
        }
    }
}
