//! Domain types. Each is built only by parsing, so a value in hand is a valid one;
//! nothing here does I/O or knows about HTTP.

mod account;
mod admin_password;
mod api_key;
mod client_addr;
mod email;
mod key_info;
mod key_ref;
mod limits;
mod origin;
mod scopes;

pub use account::{AccountId, AccountName};
pub use admin_password::AdminPassword;
pub use api_key::{API_KEY_LEN, ApiKeyId, ApiPassword};
pub use client_addr::{ClientAddr, TrustedProxies};
pub use email::Email;
pub use key_info::{KeyName, Metadata};
pub use key_ref::KeyRef;
pub use limits::{
    CREDITS, Consistency, Credits, CreditsInput, Interval, Limit, LimitInput, LimitName, Limits, MAX_AMOUNT, OwnerId,
    Refill, RefillInput, parse_amount,
};
pub use origin::Origin;
pub use scopes::{INTROSPECT_SCOPE, Scopes};

/// Why a value was refused. The text is safe to show to the caller: it never echoes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub &'static str);

/// Uniformly random characters from `alphabet`, drawn from the OS CSPRNG.
/// Rejection sampling keeps every character equally likely (a plain `% len` would not).
pub(crate) fn random_string(alphabet: &[u8], len: usize) -> String {
    debug_assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    let limit = 256 - (256 % alphabet.len());
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        // Straight from the OS, not through `crypto`, which builds on these types: the
        // arrows between the two point one way. Without an OS RNG no key or password we
        // could make would be safe; stopping is the only answer.
        #[allow(clippy::expect_used)]
        getrandom::fill(&mut buf).expect("the OS random number generator failed");
        for &b in &buf {
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}
