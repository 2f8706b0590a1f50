//! Drives keygate's real decoding code in-process, for the cargo-fuzz targets in `fuzz/` and
//! the property tests. Not an API: nothing else should call it.
#![doc(hidden)]

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{HeaderValue, Method, Request, StatusCode, header},
};
use tower::ServiceExt;

use crate::{
    config::{Settings, SettingsArgs},
    crypto::signing::{AccessClaims, KeyRing, KeySealer, SigningAlg},
    domain::{ApiKeyId, ApiPassword, Email, KeyRef, Origin, TrustedProxies},
    http::{SessionCookie, provenance},
    startup::Application,
};

const ADMIN_EMAIL: &str = "fuzz@example.com";
const ADMIN_PASSWORD: &str = "fuzzing password 0123";
/// When the fuzzed tokens are issued and verified.
const TOKENS_AT: u64 = 1_750_000_000;

/// Every parser that takes a string from outside, fed the same bytes. None may panic.
pub fn parsers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::http::decode_login(data);
    let _ = ApiKeyId::parse(&text);
    let _ = ApiPassword::parse(&text);
    let _ = Email::parse(&text);
    let _ = KeyRef::parse(&text);
    let _ = Origin::parse(&text).map(|o| o.matches_host(&text));
    let proxies = TrustedProxies::parse(&text).unwrap_or_default();
    let _ = proxies.client_addr(std::net::IpAddr::from([10, 0, 0, 1]), data.split(|&b| b == b'\n'));
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(data) {
        headers.insert(header::COOKIE, value.clone());
        headers.insert(header::ORIGIN, value.clone());
        headers.insert("sec-fetch-site", value);
    }
    let _ = axum_extra::extract::CookieJar::from_headers(&headers).get(SessionCookie::new(true, 60).name());
    let _ = provenance::check_same_origin(&Method::POST, &headers, &provenance::SecurityPolicy::default());
}

/// A key ring and the claims it expects, for token fuzzing, all at one fixed time.
pub struct Tokens {
    ring: KeyRing,
    pub valid: String,
}

impl Tokens {
    pub fn new() -> Self {
        let sealer = KeySealer::new([7; 32]);
        #[allow(clippy::expect_used)] // Fixed inputs: a failure here is a bug in the harness.
        let key = sealer.generate(SigningAlg::Es256).expect("key generation");
        #[allow(clippy::expect_used)]
        let ring = KeyRing::new(&sealer, &key, &[]).expect("key ring");
        let claims = AccessClaims {
            iss: "https://issuer".into(),
            sub: KeyRef::generate().to_string(),
            aud: "keygate".into(),
            iat: TOKENS_AT,
            nbf: TOKENS_AT,
            exp: TOKENS_AT + 900,
            jti: "fuzz".into(),
            acc: "acc".into(),
            api_key: "46SQZ49LT100U2QWQ3SI".into(),
            client_id: "46SQZ49LT100U2QWQ3SI".into(),
            scope: None,
        };
        #[allow(clippy::expect_used)]
        let valid = ring.sign(&claims).expect("signing");
        Self { ring, valid }
    }

    /// Verifies `token`: must never panic, and must refuse anything that is not a token we
    /// signed (the fuzzer cannot forge an ES256 signature).
    pub fn verify(&self, token: &str) -> bool {
        self.ring.verify(token, "https://issuer", "keygate", 0, TOKENS_AT).is_ok()
    }
}

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}

/// The whole application on a temporary SQLite store, called without a network, with a
/// logged-in admin session to fuzz the authenticated handlers too.
pub struct App {
    runtime: tokio::runtime::Runtime,
    router: crate::http::App,
    /// `name=value` of a live admin session; renewed when a fuzzed request logs it out.
    cookie: std::sync::Mutex<String>,
    _dir: Arc<DataDir>,
}

struct DataDir(std::path::PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl App {
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("keygate-fuzz-{}", uuid::Uuid::new_v4().simple()));
        let args = SettingsArgs {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.clone()),
            cookie_secure: Some("false".into()),
            log: Some("off".into()),
            // Fuzzed logins fail by the thousand; the harness is about decoding, not lockout.
            lockout_threshold: Some("1000".into()),
            lockout_address_threshold: Some("100000".into()),
            ..Default::default()
        };
        let settings = Settings::load(&args, |name| match name {
            "KEYGATE_BOOTSTRAP_ADMIN_EMAIL" => Some(ADMIN_EMAIL.into()),
            "KEYGATE_BOOTSTRAP_ADMIN_PASSWORD" => Some(ADMIN_PASSWORD.into()),
            _ => None,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let app = runtime.block_on(Application::build(&settings))?;
        let router = app.app();
        let this = Self { runtime, router, cookie: Default::default(), _dir: Arc::new(DataDir(dir)) };
        this.login();
        anyhow::ensure!(!this.cookie().is_empty(), "harness admin login failed");
        Ok(this)
    }

    fn login(&self) {
        let login = serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).to_string();
        let response = self.call(Method::POST, "/auth/login", &[("content-type", "application/json")], login.into());
        let cookie = response.headers().get(header::SET_COOKIE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        *self.cookie.lock().unwrap_or_else(|p| p.into_inner()) =
            cookie.split(';').next().unwrap_or_default().to_owned();
    }

    fn cookie(&self) -> String {
        self.cookie.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> axum::response::Response<Body> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            if let Ok(value) = HeaderValue::from_bytes(v.as_bytes()) {
                builder = builder.header(*k, value);
            }
        }
        let mut request = match builder.body(Body::from(body)) {
            Ok(request) => request,
            Err(_) => Request::new(Body::empty()),
        };
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
        let router = self.router.clone();
        self.runtime.block_on(async move {
            match router.oneshot(request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            }
        })
    }

    /// Decodes `data` into a request (method, route, headers, body) and serves it. Returns
    /// the status; the caller asserts it is not a 5xx.
    pub fn request(&self, data: &[u8]) -> StatusCode {
        let (control, rest) = data.split_at(data.len().min(4));
        let byte = |i: usize| control.get(i).copied().unwrap_or(0);
        let method = [Method::GET, Method::POST, Method::DELETE, Method::PUT, Method::HEAD, Method::OPTIONS]
            [usize::from(byte(0)) % 6]
            .clone();
        // The first line of the rest picks a path suffix; what follows it is the body.
        let (line, body) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&[][..], rest),
        };
        let suffix = String::from_utf8_lossy(line);
        let path = match byte(1) % 8 {
            0 => "/auth/login".to_owned(),
            1 => "/auth/logout".to_owned(),
            2 => "/auth/keys/generate".to_owned(),
            3 => "/auth/keys/list".to_owned(),
            4 => format!("/auth/user/{suffix}"),
            5 => format!("/auth/audit?{suffix}"),
            6 => "/healthz".to_owned(),
            _ => format!("/{suffix}"),
        };
        let flags = byte(2);
        let content_type = match byte(3) % 4 {
            0 => "application/json",
            1 => "application/x-www-form-urlencoded",
            2 => "text/plain",
            _ => "application/json; charset=utf-8",
        };
        let cookie = self.cookie();
        let mut headers = vec![("content-type", content_type)];
        if flags & 1 != 0 {
            headers.push(("cookie", cookie.as_str()));
        }
        let text = String::from_utf8_lossy(body).into_owned();
        let head = &text[..text.char_indices().nth(64).map_or(text.len(), |(i, _)| i)];
        if flags & 2 != 0 {
            headers.push(("origin", head));
        }
        if flags & 4 != 0 {
            headers.push(("sec-fetch-site", head));
        }
        if flags & 8 != 0 {
            headers.push(("x-forwarded-for", head));
        }
        if flags & 16 != 0 {
            headers.push(("authorization", head));
        }
        let status = self.call(method, &path, &headers, body.to_vec()).status();
        if path == "/auth/logout" && status == StatusCode::NO_CONTENT {
            // Keep fuzzing the authenticated handlers after a fuzzed logout.
            self.login();
        }
        status
    }
}

/// The Lua function `le(a, b, c, d)` (`a * b <= c * d`, exactly) that keygate's Redis scripts
/// judge sliding windows with.
pub const REDIS_LE: &str = crate::service::limits::redis_state::LE;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn tokens() -> &'static Tokens {
        static TOKENS: OnceLock<Tokens> = OnceLock::new();
        TOKENS.get_or_init(Tokens::new)
    }

    #[test]
    fn the_harness_reaches_authenticated_handlers() {
        // Its own app: the shared one may be logged out by a fuzzed request at any moment.
        let app = App::new().unwrap();
        // Control bytes: POST, route 2 (generate), cookie flag, JSON.
        assert_eq!(app.request(&[1, 2, 1, 0, b'\n']), StatusCode::OK);
        // GET list with the cookie; without it, 401.
        assert_eq!(app.request(&[0, 3, 1, 0]), StatusCode::OK);
        assert_eq!(app.request(&[0, 3, 0, 0]), StatusCode::UNAUTHORIZED);
        // A logout is followed by a fresh login, so the cookie keeps working.
        assert_eq!(app.request(&[1, 1, 1, 0]), StatusCode::NO_CONTENT);
        assert_eq!(app.request(&[0, 3, 1, 0]), StatusCode::OK);
        assert!(tokens().verify(&tokens().valid));
    }

    #[test]
    fn any_request_is_answered_without_a_server_error() {
        // One app for all cases (its temporary store is removed when the test ends).
        let app = App::new().unwrap();
        proptest!(ProptestConfig { cases: 128, ..ProptestConfig::default() }, |(data in proptest::collection::vec(any::<u8>(), 0..300))| {
            let status = app.request(&data);
            prop_assert!(!status.is_server_error(), "{status} for {data:?}");
        });
    }

    #[test]
    fn any_login_body_is_answered_without_a_server_error() {
        let app = App::new().unwrap();
        proptest!(ProptestConfig { cases: 128, ..ProptestConfig::default() }, |(
            api_key in proptest::option::of(".{0,30}"),
            email in proptest::option::of("[a-z@.]{0,20}"),
            password in proptest::option::of(".{0,60}"),
            extra in proptest::option::of(".{0,10}"),
        )| {
            let mut body = serde_json::Map::new();
            if let Some(k) = api_key { body.insert("api_key".into(), k.into()); }
            if let Some(e) = email { body.insert("email".into(), e.into()); }
            if let Some(p) = password { body.insert("password".into(), p.into()); }
            if let Some(x) = extra { body.insert(x, serde_json::Value::Null); }
            let mut data = vec![1, 0, 0, 0, b'\n'];
            data.extend(serde_json::to_vec(&body).unwrap_or_default());
            let status = app.request(&data);
            prop_assert!(!status.is_server_error(), "{status}");
        });
    }

    proptest! {

        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            parsers(&data);
        }

        #[test]
        fn no_forged_token_verifies(s in "[A-Za-z0-9_.-]{0,400}") {
            prop_assert!(!tokens().verify(&s));
        }

        #[test]
        fn a_tampered_token_never_verifies(i in 0usize..400, c in "[A-Za-z0-9_-]") {
            let valid = &tokens().valid;
            let i = i % valid.len();
            prop_assume!(&valid[i..=i] != c.as_str() && &valid[i..=i] != ".");
            let mut forged = valid.clone();
            forged.replace_range(i..=i, &c);
            // Base64url's last character may carry unused bits; changing only those would
            // leave the same bytes. Anything else must fail.
            let same_bytes = forged.split('.').zip(valid.split('.')).all(|(a, b)| {
                use base64::Engine;
                let d = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok();
                d(a) == d(b)
            });
            prop_assert_eq!(tokens().verify(&forged), same_bytes);
        }
    }
}
