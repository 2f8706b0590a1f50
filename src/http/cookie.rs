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
