use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use super::{ParseError, random_string};

const KEY_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const KEY_LEN: usize = 20;
/// How many bytes an API key has (all ASCII).
pub const API_KEY_LEN: usize = KEY_LEN;

/// `KEY_ALPHABET` as a test: parsing runs on every login, and a byte's class is cheaper
/// than a search of the alphabet.
fn is_key_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

/// The API key: the client's login identifier, 20 characters of `[A-Z0-9]` as in the
/// documented example (`46SQZ49LT100U2QWQ3SI`). It identifies; it does not authenticate,
/// which is why it may be listed back to admins and the password may not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ApiKeyId(String);

impl ApiKeyId {
    pub fn generate() -> Self {
        Self(random_string(KEY_ALPHABET, KEY_LEN))
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.len() == KEY_LEN && raw.bytes().all(is_key_char) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError("api_key must be 20 characters of [A-Z0-9]"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as a fixed-size array, for maps that hold many keys without an allocation each.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        let mut bytes = [0; KEY_LEN];
        // Parsing and generation both make exactly KEY_LEN ASCII bytes.
        bytes.copy_from_slice(&self.0.as_bytes()[..KEY_LEN]);
        bytes
    }
}

impl fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// A fixed, greppable prefix lets secret scanners (GitHub push protection, trufflehog,
/// gitleaks) recognise a leaked keygate password, as `ghp_` and `sk_live_` do for theirs.
pub const PASSWORD_PREFIX: &str = "kgp_";
/// 32 base62 characters carry 190 bits from the CSPRNG, well past the 128 we need.
const RANDOM_LEN: usize = 32;
/// A CRC-32 of prefix and random part in 6 base62 characters. It is not a security
/// measure: it lets scanners tell a real token from a look-alike with no false positives,
/// and lets us refuse typos before touching the store.
const CHECKSUM_LEN: usize = 6;
const PASSWORD_LEN: usize = PASSWORD_PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;

/// The API password. High entropy by construction, so the store keeps only a keyed
/// HMAC of it (see `crypto::ApiPasswordHasher`), never the value.
#[derive(Clone)]
pub struct ApiPassword(SecretString);

impl ApiPassword {
    pub fn generate() -> Self {
        let random = random_string(BASE62, RANDOM_LEN);
        let body = format!("{PASSWORD_PREFIX}{random}");
        let sum = checksum(&body);
        let mut full = body;
        full.extend(sum.map(char::from));
        Self(SecretString::from(full))
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        const BAD: ParseError = ParseError("not a keygate API password");
        if raw.len() != PASSWORD_LEN || !raw.starts_with(PASSWORD_PREFIX) {
            return Err(BAD);
        }
        let (body, sum) = raw.split_at(PASSWORD_LEN - CHECKSUM_LEN);
        let random = &body[PASSWORD_PREFIX.len()..];
        if !random.bytes().all(|b| b.is_ascii_alphanumeric()) || checksum(body) != sum.as_bytes() {
            return Err(BAD);
        }
        Ok(Self(SecretString::from(raw.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiPassword([redacted])")
    }
}

fn checksum(body: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_parse() {
        let k = ApiKeyId::generate();
        assert_eq!(k.as_str().len(), 20);
        assert_eq!(ApiKeyId::parse(k.as_str()).unwrap(), k);
        assert!(ApiKeyId::parse("46SQZ49LT100U2QWQ3SI").is_ok());
        assert!(ApiKeyId::parse("46sqz49lt100u2qwq3si").is_err());
        assert!(ApiKeyId::parse("46SQZ49LT100U2QWQ3S").is_err());
    }

    #[test]
    fn parsers_accept_exactly_the_generators_alphabets() {
        for c in (0..=127u8).map(char::from) {
            let key = format!("{}{c}", "A".repeat(KEY_LEN - 1));
            assert_eq!(ApiKeyId::parse(&key).is_ok(), KEY_ALPHABET.contains(&(c as u8)), "{c:?} in a key");
            let body = format!("{PASSWORD_PREFIX}{}{c}", "a".repeat(RANDOM_LEN - 1));
            let password = format!("{body}{}", std::str::from_utf8(&checksum(&body)).unwrap());
            assert_eq!(ApiPassword::parse(&password).is_ok(), BASE62.contains(&(c as u8)), "{c:?} in a password");
        }
    }

    #[test]
    fn generated_passwords_parse_and_differ() {
        let a = ApiPassword::generate();
        let b = ApiPassword::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with(PASSWORD_PREFIX));
        assert_eq!(a.expose().len(), PASSWORD_LEN);
        assert_eq!(ApiPassword::parse(a.expose()).unwrap().expose(), a.expose());
    }

    #[test]
    fn checksum_catches_a_changed_character() {
        let p = ApiPassword::generate();
        let mut s = p.expose().to_owned();
        let i = PASSWORD_PREFIX.len() + 3;
        let c = if &s[i..=i] == "A" { "B" } else { "A" };
        s.replace_range(i..=i, c);
        assert!(ApiPassword::parse(&s).is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let p = ApiPassword::generate();
        assert!(!format!("{p:?}").contains(p.expose()));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,64}") {
            let _ = ApiKeyId::parse(&s);
            let _ = ApiPassword::parse(&s);
        }

        #[test]
        fn prefixed_noise_is_refused(s in "[0-9A-Za-z]{38}") {
            // Random look-alikes pass the checksum with probability 2^-32.
            let _ = ApiPassword::parse(&format!("kgp_{s}"));
        }
    }
}
