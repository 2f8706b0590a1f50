//! What an admin may say about a key besides its scopes: a name and free-form metadata.

use std::fmt;

use super::ParseError;

/// A key's name: 1 to 100 printable characters, not only spaces. Control, format and
/// bidirectional characters are refused, so a name shows on a page or a terminal as what
/// it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(Box<str>);

impl KeyName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(name: &str) -> Result<Self, ParseError> {
        let chars = name.chars().count();
        let printable = name.chars().all(|c| !c.is_control() && !is_invisible_format(c));
        if chars == 0 || chars > Self::MAX_CHARS || !printable || name.trim().is_empty() {
            return Err(ParseError(
                "name: must be 1 to 100 printable characters (no control or bidirectional characters)",
            ));
        }
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Unicode format characters that change how text around them reads (bidirectional
/// overrides and isolates, zero-width joiners, the BOM), which `char::is_control` lets by.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

/// A key's metadata: a JSON object of at most 4 KiB, kept as the JSON text given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata(Box<str>);

impl Metadata {
    pub const MAX_BYTES: usize = 4096;

    /// From JSON text, which must hold one object. The size is checked before parsing, so
    /// no oversized or deeply nested value is ever decoded.
    pub fn parse(json: &str) -> Result<Self, ParseError> {
        if json.len() > Self::MAX_BYTES {
            return Err(ParseError("metadata: at most 4096 bytes of JSON"));
        }
        match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(_)) => Ok(Self(json.trim().into())),
            Ok(_) => Err(ParseError("metadata: must be a JSON object")),
            Err(_) => Err(ParseError("metadata: must be a JSON object (nested at most 128 deep)")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printable_and_bounded() {
        assert_eq!(KeyName::parse("billing service").unwrap().as_str(), "billing service");
        assert!(KeyName::parse("ключ 🔑").is_ok());
        assert!(KeyName::parse(&"é".repeat(100)).is_ok());
        for bad in ["", "   ", "tab\there", "new\nline", "\u{202E}evil", "zero\u{200B}width", &"x".repeat(101)] {
            assert!(KeyName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn metadata_is_one_small_object() {
        assert_eq!(
            Metadata::parse(r#"{"team": "billing", "n": [1, 2]}"#).unwrap().as_str(),
            r#"{"team": "billing", "n": [1, 2]}"#
        );
        for bad in ["[]", "1", "\"x\"", "null", "{", "{} {}"] {
            assert!(Metadata::parse(bad).is_err(), "{bad}");
        }
        let big = format!(r#"{{"a": "{}"}}"#, "x".repeat(4096));
        assert!(Metadata::parse(&big).is_err());
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(1000), "]".repeat(1000));
        assert!(Metadata::parse(&deep).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(raw in ".{0,300}") {
            let _ = KeyName::parse(&raw);
            let _ = Metadata::parse(&raw);
        }
    }
}
