//! Who is asking and from where: the client address (for lockout and the audit log) and
//! the same-origin rule for cookie-authenticated changes (CSRF).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, Method, header, request::Parts},
};

use super::{AppState, error::ApiError};
use crate::domain::{ClientAddr, Origin, TrustedProxies};

/// The HTTP-level security settings.
#[derive(Debug, Clone, Default)]
pub struct SecurityPolicy {
    /// Peers whose `X-Forwarded-For` is believed (`KEYGATE_TRUSTED_PROXIES`).
    pub trusted_proxies: TrustedProxies,
    /// The origin the admin console is served from (`KEYGATE_PUBLIC_ORIGIN`); when unset,
    /// a request's own `Host` is taken as its origin.
    pub public_origin: Option<Origin>,
    /// keygate serves HTTPS itself: without a public origin, only an `https://` origin
    /// naming the request's `Host` is its own.
    pub https: bool,
}

/// The request's client address: the socket peer, or the client a trusted proxy names.
pub fn client_addr(parts: &Parts, policy: &SecurityPolicy) -> ClientAddr {
    let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
        // Only a request that did not come through `startup`'s server (an in-process test
        // or fuzz harness) lacks its socket address; such requests share one counter.
        return ClientAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    };
    policy.trusted_proxies.client_addr(peer.ip(), parts.headers.get_all("x-forwarded-for"))
}

/// Extractor for the client address.
pub struct Client(pub ClientAddr);

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self(client_addr(parts, &state.security)))
    }
}

/// Refuses a state-changing request that a browser sent on behalf of another site.
///
/// `SameSite=Strict` already keeps the session cookie off cross-site requests in current
/// browsers; this is the second, independent line, and the one that also covers sibling
/// subdomains (which count as the same *site*) and browsers without SameSite:
/// - `Sec-Fetch-Site` is set by the browser and cannot be forged by page script; anything
///   but `same-origin` or `none` (typed by the user) is refused.
/// - `Origin`, sent by browsers on every non-GET request, must be our own origin. `null`
///   (sandboxed frames, some redirects) is refused.
/// - No `Origin` and no `Sec-Fetch-Site`: not a browser (curl, scripts), which carries no
///   ambient cookie and cannot be tricked into sending one. Allowed, as the seed shows.
///
/// Safe methods are never refused: they change nothing, and a cross-site page cannot read
/// the response without CORS, which keygate does not grant.
pub fn check_same_origin(method: &Method, headers: &HeaderMap, policy: &SecurityPolicy) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err(ApiError::CrossSite);
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().ok().and_then(|o| Origin::parse(o).ok()).ok_or(ApiError::CrossSite)?;
    let same = match &policy.public_origin {
        Some(public) => origin == *public,
        None => {
            (!policy.https || origin.is_https())
                && headers.get(header::HOST).and_then(|h| h.to_str().ok()).is_some_and(|host| origin.matches_host(host))
        }
    };
    if same { Ok(()) } else { Err(ApiError::CrossSite) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn same_origin_rules() {
        let open = SecurityPolicy::default();
        let post = Method::POST;
        let ok = |h: &[(&'static str, &str)], p: &SecurityPolicy| check_same_origin(&post, &headers(h), p).is_ok();
        assert!(ok(&[("host", "127.0.0.1:8080")], &open));
        assert!(ok(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")], &open));
        assert!(ok(&[("host", "a.io"), ("origin", "https://a.io"), ("sec-fetch-site", "same-origin")], &open));
        assert!(!ok(&[("host", "a.io"), ("origin", "https://evil.io")], &open));
        assert!(!ok(&[("host", "a.io"), ("origin", "null")], &open));
        assert!(!ok(&[("host", "a.io"), ("sec-fetch-site", "cross-site")], &open));
        assert!(!ok(&[("host", "a.io"), ("sec-fetch-site", "same-site")], &open));
        assert!(!ok(&[("host", "a.io"), ("origin", "https://a.io"), ("sec-fetch-site", "cross-site")], &open));
        assert!(!ok(&[("origin", "https://a.io")], &open));
        // GET is never refused.
        let h = headers(&[("origin", "https://evil.io"), ("sec-fetch-site", "cross-site")]);
        assert!(check_same_origin(&Method::GET, &h, &open).is_ok());

        // With a public origin, Host does not matter (a proxy may rewrite it).
        let fixed = SecurityPolicy {
            public_origin: Some(Origin::parse("https://auth.example.com").unwrap()),
            ..Default::default()
        };
        assert!(ok(&[("host", "10.0.0.5:8080"), ("origin", "https://auth.example.com")], &fixed));
        assert!(!ok(&[("host", "auth.example.com"), ("origin", "http://auth.example.com")], &fixed));
        assert!(!ok(&[("host", "evil.io"), ("origin", "https://evil.io")], &fixed));

        // Served over TLS: the request's Host, on https only.
        let tls = SecurityPolicy { https: true, ..Default::default() };
        assert!(ok(&[("host", "a.io:8443"), ("origin", "https://a.io:8443")], &tls));
        assert!(!ok(&[("host", "a.io:8443"), ("origin", "http://a.io:8443")], &tls));
    }

    proptest! {
        #[test]
        fn never_panics(origin in ".{0,80}", host in ".{0,40}", site in ".{0,20}") {
            let mut h = HeaderMap::new();
            for (k, v) in [("origin", &origin), ("host", &host), ("sec-fetch-site", &site)] {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.insert(k, v);
                }
            }
            let _ = check_same_origin(&Method::DELETE, &h, &SecurityPolicy::default());
        }
    }
}
