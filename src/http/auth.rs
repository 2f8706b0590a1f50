//! `POST /auth/login` and `POST /auth/logout`.

use crate::{
    label_values,
    monitoring::{self, Counters},
    service::AuthError,
};
use axum::{extract::State, http::StatusCode, response::IntoResponse};
use axum_extra::extract::CookieJar;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, Problem},
    extract::{Admin, Json},
    provenance::Client,
};

label_values! {
    /// Which login `keygate_logins_total` counts.
    pub enum LoginKind {
        Api => "api",
        Admin => "admin",
        Oauth => "oauth",
    }
}

label_values! {
    /// How a login ended.
    pub enum LoginOutcome {
        Success => "success",
        /// Wrong secret, an unknown key or email, or scopes the key does not hold.
        Invalid => "invalid",
        /// Refused by a lockout, or by too many attempts in flight.
        Locked => "locked",
        /// Not decided: the store or the hashing pool could not answer.
        Error => "error",
    }
}

impl LoginOutcome {
    fn of<T>(result: &Result<T, AuthError>) -> Self {
        match result {
            Ok(_) => Self::Success,
            // Credentials, or what they asked for (scopes the key does not hold), refused.
            Err(AuthError::InvalidCredentials | AuthError::InvalidScope | AuthError::Invalid(_)) => Self::Invalid,
            Err(AuthError::Locked { .. }) => Self::Locked,
            Err(_) => Self::Error,
        }
    }
}

/// `keygate_logins_total`, one counter per kind and outcome, registered up front.
pub struct LoginMetrics {
    by_kind: Vec<Counters<LoginOutcome>>,
}

impl LoginMetrics {
    pub fn register() -> Self {
        use monitoring::LabelValue;
        let by_kind = LoginKind::ALL
            .iter()
            .map(|kind| Counters::register(monitoring::LOGINS, "outcome", &[("kind", kind.label())]))
            .collect();
        Self { by_kind }
    }

    pub fn record<T>(&self, kind: LoginKind, result: &Result<T, AuthError>) {
        if let Some(counters) = self.by_kind.get(kind as usize) {
            counters.increment(LoginOutcome::of(result));
        }
    }
}

/// Credentials: an API key (`api_key`, or `username` as the documented schema names it)
/// or an admin `email`, with its password.
#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    /// API key, e.g. `46SQZ49LT100U2QWQ3SI`.
    #[schema(example = "46SQZ49LT100U2QWQ3SI")]
    pub api_key: Option<String>,
    /// The same API key, under the name the documented schema uses.
    pub username: Option<String>,
    /// Admin email.
    pub email: Option<String>,
    /// API password or admin password.
    pub password: String,
}

enum Identity {
    ApiKey(String),
    Admin(String),
}

impl LoginRequest {
    fn identity(self) -> Result<(Identity, String), ApiError> {
        match (self.api_key, self.username, self.email) {
            (Some(key), None, None) | (None, Some(key), None) => Ok((Identity::ApiKey(key), self.password)),
            (None, None, Some(email)) => Ok((Identity::Admin(email), self.password)),
            (None, None, None) => Err(ApiError::Unprocessable("one of api_key, username or email is required".into())),
            _ => Err(ApiError::Unprocessable("give exactly one of api_key, username or email".into())),
        }
    }
}

/// Decodes a login body as the handler does: JSON, then exactly one identity. For the
/// fuzz targets and property tests.
#[doc(hidden)]
pub fn decode_login(body: &[u8]) -> bool {
    serde_json::from_slice::<LoginRequest>(body).ok().is_some_and(|r| r.identity().is_ok())
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginResponse {
    /// API login: the JWT, as a bare JSON string.
    Token(String),
    /// Admin login: the session is in the `Set-Cookie` header.
    Admin(AdminLogin),
}

#[derive(Serialize, ToSchema)]
pub struct AdminLogin {
    pub account_id: String,
    pub email: String,
}

#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "A JWT for an API key; a session cookie for an admin", body = LoginResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing or conflicting fields", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins for this identity or address; see Retry-After", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until the lock ends"))),
        (status = 503, description = "Too busy (admin logins are hashed on a bounded pool); see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    jar: CookieJar,
    Json(request): Json<LoginRequest>,
) -> Result<(CookieJar, Json<LoginResponse>), ApiError> {
    match request.identity()? {
        (Identity::ApiKey(key), password) => {
            let issued = state.auth.api_login(&key, &password, client).await;
            state.logins.record(LoginKind::Api, &issued);
            Ok((jar, Json(LoginResponse::Token(issued?.token))))
        }
        (Identity::Admin(email), password) => {
            let previous = jar.get(state.cookie.name()).map(|c| c.value().to_owned());
            let session = state.auth.admin_login(&email, &password, previous.as_deref(), client).await;
            state.logins.record(LoginKind::Admin, &session);
            let session = session?;
            let jar = jar.add(state.cookie.issue(session.token.expose_secret().to_owned()));
            let body = AdminLogin { account_id: session.account_id.to_string(), email: session.email.to_string() };
            Ok((jar, Json(LoginResponse::Admin(body))))
        }
    }
}

#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "auth",
    security(("session" = [])),
    responses(
        (status = 204, description = "Session ended; the cookie is cleared"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sent by a browser from another origin (CSRF)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    Admin(session): Admin,
    jar: CookieJar,
) -> Result<impl IntoResponse, ApiError> {
    state.auth.logout(&session).await?;
    Ok((StatusCode::NO_CONTENT, jar.add(state.cookie.clear())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(body: &str) -> Result<(Identity, String), String> {
        let request: LoginRequest = serde_json::from_str(body).map_err(|e| e.to_string())?;
        request.identity().map_err(|e| e.to_string())
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_login(&body);
        }

        #[test]
        fn json_like_text_decodes_without_panic(body in r#"\{("(api_key|username|email|password|x)": ?("[^"]{0,10}"|1|null|\[\]|\{\}),? ?){0,5}\}"#) {
            let _ = decode(&body);
        }

        #[test]
        fn credentials_round_trip(field in 0usize..3, id in ".{0,40}", password in ".{0,80}") {
            let name = ["api_key", "username", "email"][field];
            let body = serde_json::json!({ name: id, "password": password }).to_string();
            let (identity, got_password) = decode(&body).unwrap();
            prop_assert_eq!(got_password, password);
            match identity {
                Identity::ApiKey(k) => { prop_assert!(field < 2); prop_assert_eq!(k, id); }
                Identity::Admin(e) => { prop_assert_eq!(field, 2); prop_assert_eq!(e, id); }
            }
        }

        #[test]
        fn two_identities_are_refused(a in 0usize..3, b in 0usize..3, id in "[A-Z0-9]{20}") {
            prop_assume!(a != b);
            let names = ["api_key", "username", "email"];
            let body = serde_json::json!({ names[a]: id, names[b]: id, "password": "p" }).to_string();
            prop_assert!(decode(&body).is_err());
        }
    }
}
