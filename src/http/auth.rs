//! `POST /auth/login` and `POST /auth/logout`.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use axum_extra::extract::CookieJar;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, Problem},
    extract::{Admin, Json},
    security::Client,
};

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
            let issued = state.auth.api_login(&key, &password, client).await?;
            Ok((jar, Json(LoginResponse::Token(issued.token))))
        }
        (Identity::Admin(email), password) => {
            let previous = jar.get(state.cookie.name()).map(|c| c.value().to_owned());
            let session = state.auth.admin_login(&email, &password, previous.as_deref(), client).await?;
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
