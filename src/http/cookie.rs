//! The admin session cookie and why each attribute is set.

use axum_extra::extract::cookie::{Cookie, SameSite};
use time::Duration;

#[derive(Debug, Clone)]
pub struct SessionCookie {
    secure: bool,
    lifetime: i64,
}

impl SessionCookie {
    pub fn new(secure: bool, lifetime: u64) -> Self {
        Self { secure, lifetime: lifetime as i64 }
    }

    /// With `Secure` we use the `__Host-` prefix: browsers then refuse the cookie unless it
    /// came over HTTPS with `Path=/` and no `Domain`, so a sibling subdomain cannot plant or
    /// shadow it. Without `Secure` (plain-HTTP development) the prefix is not allowed.
    pub fn name(&self) -> &'static str {
        if self.secure { "__Host-keygate_session" } else { "keygate_session" }
    }

    pub fn issue(&self, token: String) -> Cookie<'static> {
        self.build(token, Duration::seconds(self.lifetime))
    }

    pub fn clear(&self) -> Cookie<'static> {
        self.build(String::new(), Duration::ZERO)
    }

    fn build(&self, value: String, max_age: Duration) -> Cookie<'static> {
        Cookie::build((self.name(), value))
            // Script cannot read it, so an XSS cannot exfiltrate the session.
            .http_only(true)
            .secure(self.secure)
            // Never sent on cross-site requests: the first line of CSRF defence.
            .same_site(SameSite::Strict)
            .path("/")
            .max_age(max_age)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header};
    use axum_extra::extract::CookieJar;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_cookie_header_parses_without_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&raw) {
                headers.insert(header::COOKIE, v);
            }
            let _ = CookieJar::from_headers(&headers).get("keygate_session");
        }

        #[test]
        fn issued_cookies_round_trip(secure in any::<bool>(), token in "[A-Za-z0-9_-]{1,64}", other in "[a-z]{1,8}=[a-z0-9]{0,8}") {
            let policy = SessionCookie::new(secure, 3600);
            let issued = policy.issue(token.clone());
            // What the browser sends back: name=value, among other cookies.
            let pair = format!("{}={}", issued.name(), issued.value());
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(&format!("{other}; {pair}")).unwrap());
            let jar = CookieJar::from_headers(&headers);
            prop_assert_eq!(jar.get(policy.name()).map(|c| c.value().to_owned()), Some(token));
            let set_cookie = issued.to_string();
            prop_assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
            prop_assert_eq!(set_cookie.contains("Secure"), secure);
        }
    }
}
