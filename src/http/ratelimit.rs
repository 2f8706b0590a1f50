//! The `RateLimit-Policy` and `RateLimit` response headers of
//! draft-ietf-httpapi-ratelimit-headers-10: Structured Field lists of the policies that apply
//! (`"burst";q=100;w=60`) and of where each stands (`"burst";r=42;t=17`), for the gateway to
//! copy onto its answer.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use sfv::{KeyRef, ListSerializer, StringRef};

use crate::service::limits::PolicyState;

pub const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// A gateway's charge for the request, 0 to 1000 (default 1); also `?cost=` on the auth URL.
pub const REQUEST_COST: HeaderName = HeaderName::from_static("x-request-cost");

/// The two headers for `policies`; `None` when there is none, or a value does not serialise
/// (names are parsed to be Structured Field strings, so it does not happen).
pub fn headers(policies: &[PolicyState]) -> Option<(HeaderValue, HeaderValue)> {
    let integer = |n: u64| sfv::Integer::try_from(n.min(999_999_999_999_999) as i64).ok();
    let mut policy = ListSerializer::new();
    let mut state = ListSerializer::new();
    for p in policies {
        let name = StringRef::from_str(&p.name).ok()?;
        let mut params = policy.bare_item(name).parameter(KeyRef::from_str("q").ok()?, integer(p.quota)?);
        if let Some(w) = p.window {
            params = params.parameter(KeyRef::from_str("w").ok()?, integer(w)?);
        }
        let _ = params;
        let mut params = state.bare_item(name).parameter(KeyRef::from_str("r").ok()?, integer(p.remaining)?);
        if let Some(t) = p.reset {
            params = params.parameter(KeyRef::from_str("t").ok()?, integer(t)?);
        }
        let _ = params;
    }
    let (policy, state) = (policy.finish()?, state.finish()?);
    Some((HeaderValue::from_str(&policy).ok()?, HeaderValue::from_str(&state).ok()?))
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
}
