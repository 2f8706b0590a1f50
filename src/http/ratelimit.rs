//! The `RateLimit-Policy` and `RateLimit` response headers of
//! draft-ietf-httpapi-ratelimit-headers-10: Structured Field lists of the policies that apply
//! (`"burst";q=100;w=60`) and of where each stands (`"burst";r=42;t=17`), for the gateway to
//! copy onto its answer.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::service::limits::PolicyState;

pub const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// A gateway's charge for the request, 0 to 1000 (default 1); also `?cost=` on the auth URL.
pub const REQUEST_COST: HeaderName = HeaderName::from_static("x-request-cost");

/// The largest Structured Field integer (RFC 9651 §3.3.1); larger figures are sent as it.
const MAX_INTEGER: u64 = 999_999_999_999_999;

/// The two headers for `policies`; `None` when there is none, or a name is not a Structured
/// Field string (names are parsed to be, so it does not happen).
///
/// Written by hand rather than through a Structured Field serializer, as it runs on every
/// counted verification: the lists hold only strings with integer parameters, whose
/// serialization is fixed (the tests check it against `sfv`'s, byte for byte).
pub fn headers(policies: &[PolicyState]) -> Option<(HeaderValue, HeaderValue)> {
    if policies.is_empty() {
        return None;
    }
    // Room for every policy without growing: quotes, a separator, and two parameters each.
    let room: usize = policies.iter().map(|p| p.name.len() + 2 + 2 + 2 * (3 + 15)).sum();
    let (mut policy, mut state) = (Vec::with_capacity(room), Vec::with_capacity(room));
    for (i, p) in policies.iter().enumerate() {
        if i > 0 {
            policy.extend_from_slice(b", ");
            state.extend_from_slice(b", ");
        }
        string(&mut policy, &p.name)?;
        parameter(&mut policy, b";q=", p.quota);
        if let Some(w) = p.window {
            parameter(&mut policy, b";w=", w);
        }
        string(&mut state, &p.name)?;
        parameter(&mut state, b";r=", p.remaining);
        if let Some(t) = p.reset {
            parameter(&mut state, b";t=", t);
        }
    }
    Some((HeaderValue::try_from(policy).ok()?, HeaderValue::try_from(state).ok()?))
}

/// A Structured Field string (RFC 9651 §4.1.6): printable ASCII, quoted, with `"` and `\`
/// escaped.
fn string(out: &mut Vec<u8>, s: &str) -> Option<()> {
    out.push(b'"');
    for b in s.bytes() {
        if !(b' '..=b'~').contains(&b) {
            return None;
        }
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    Some(())
}

/// `;key=` and a Structured Field integer.
fn parameter(out: &mut Vec<u8>, key: &[u8], n: u64) {
    out.extend_from_slice(key);
    out.extend_from_slice(itoa::Buffer::new().format(n.min(MAX_INTEGER)).as_bytes());
}

/// Adds both headers to `map`.
pub fn insert(map: &mut HeaderMap, headers: Option<(HeaderValue, HeaderValue)>) {
    if let Some((policy, state)) = headers {
        map.insert(POLICY, policy);
        map.insert(RATELIMIT, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfv::{KeyRef, ListSerializer, StringRef};

    #[test]
    fn the_drafts_syntax() {
        let policies = [
            PolicyState { name: "burst".into(), quota: 100, window: Some(60), remaining: 42, reset: Some(17) },
            PolicyState { name: "credits".into(), quota: 500, window: None, remaining: 7, reset: None },
        ];
        let (policy, state) = headers(&policies).unwrap();
        assert_eq!(policy, "\"burst\";q=100;w=60, \"credits\";q=500");
        assert_eq!(state, "\"burst\";r=42;t=17, \"credits\";r=7");
        assert!(headers(&[]).is_none());
    }

    /// The two lists as a Structured Field serializer writes them.
    fn by_sfv(policies: &[PolicyState]) -> Option<(String, String)> {
        let integer = |n: u64| sfv::Integer::try_from(n.min(MAX_INTEGER) as i64).ok();
        let (mut policy, mut state) = (ListSerializer::new(), ListSerializer::new());
        for p in policies {
            let name = StringRef::from_str(&p.name).ok()?;
            let params = policy.bare_item(name).parameter(KeyRef::from_str("q").ok()?, integer(p.quota)?);
            if let Some(w) = p.window {
                let _ = params.parameter(KeyRef::from_str("w").ok()?, integer(w)?);
            }
            let params = state.bare_item(name).parameter(KeyRef::from_str("r").ok()?, integer(p.remaining)?);
            if let Some(t) = p.reset {
                let _ = params.parameter(KeyRef::from_str("t").ok()?, integer(t)?);
            }
        }
        Some((policy.finish()?, state.finish()?))
    }

    fn policy_state() -> impl proptest::strategy::Strategy<Value = PolicyState> {
        use proptest::prelude::*;
        let figure = prop_oneof![0..=MAX_INTEGER + 2, Just(u64::MAX), 0..100u64];
        // Names keygate gives policies, any printable ASCII (quotes and backslashes to
        // escape), and anything at all (control characters, non-ASCII: refused).
        let name =
            prop_oneof!["(owner\\.)?[a-z][a-z0-9_-]{0,31}", "(owner\\.)?credits", "[ -~]{0,20}", any::<String>()];
        (name, figure.clone(), proptest::option::of(figure.clone()), figure.clone(), proptest::option::of(figure))
            .prop_map(|(name, quota, window, remaining, reset)| PolicyState {
                name: name.as_str().into(),
                quota,
                window,
                remaining,
                reset,
            })
    }

    proptest::proptest! {
        /// Byte for byte what `sfv` serializes, and refused where it refuses.
        #[test]
        fn the_headers_are_what_a_structured_field_serializer_writes(
            policies in proptest::collection::vec(policy_state(), 0..12)
        ) {
            let ours = headers(&policies).map(|(p, s)| (p.to_str().unwrap().to_owned(), s.to_str().unwrap().to_owned()));
            proptest::prop_assert_eq!(ours, by_sfv(&policies));
        }
    }
}
