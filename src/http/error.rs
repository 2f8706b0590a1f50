//! The one HTTP error type, and the one place errors become responses: RFC 9457
//! `application/problem+json` bodies whose text never carries internal detail.

use std::sync::Arc;

use axum::{
    extract::rejection::JsonRejection,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    crypto::HashPoolError,
    domain::Scopes,
    service::{AuthError, limits::Refusal},
    store::StoreError,
};

/// An RFC 9457 problem details object.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `about:blank` (the status and title say what happened), or for a request over its
    /// limits `https://iana.org/assignments/http-problem-types#quota-exceeded`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The names of the limits the request would exceed (quota-exceeded only).
    #[serde(rename = "violated-policies", skip_serializing_if = "Option::is_none")]
    pub violated_policies: Option<Vec<String>>,
}

/// The problem type of draft-ietf-httpapi-ratelimit-headers for a request over its limits.
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("admin session required")]
    NoSession,
    /// No bearer token at all (RFC 6750 §3.1: then the challenge carries no error code).
    #[error("a bearer token is required")]
    MissingToken,
    #[error("the bearer token is invalid, expired or revoked")]
    InvalidToken,
    /// A live token without every scope the route requires (RFC 6750 §3.1).
    #[error("the token lacks a required scope; required: {0}")]
    InsufficientScope(Scopes),
    #[error("not found")]
    NotFound,
    /// A cookie-authenticated change requested from another site (CSRF).
    #[error("cross-site requests may not use the admin session")]
    CrossSite,
    /// The session is valid, but the password it must confirm is wrong.
    #[error("current_password is not this admin's password")]
    WrongPassword,
    /// Locked out after too many failed logins. The detail is the same for every locked
    /// subject, so it does not say whether the email, the key or the address is locked.
    #[error("too many failed logins; try again later")]
    TooManyRequests { retry_after: u64 },
    /// A key or account that would hold more live revocations than it may.
    #[error("too many revoked tokens of this key or account are still live; delete the key to end all its tokens")]
    TooManyRevocations { retry_after: u64 },
    /// Over one or more of the token's limits, or out of credits; `headers` are the
    /// `RateLimit-Policy` and `RateLimit` values.
    #[error("the request exceeds the quota of {}", .violated.join(", "))]
    QuotaExceeded { violated: Vec<String>, retry_after: u64, headers: Option<(HeaderValue, HeaderValue)> },
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("temporarily unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::InvalidCredentials | Self::NoSession | Self::MissingToken | Self::InvalidToken => {
                StatusCode::UNAUTHORIZED
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::CrossSite | Self::WrongPassword | Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } | Self::TooManyRevocations { .. } | Self::QuotaExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A problem response for `status` with `detail`.
pub fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        status: status.as_u16(),
        detail: detail.into(),
        violated_policies: None,
    };
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

/// What went wrong behind a 500: logged by the envelope with the request's id, method and
/// path, and never sent.
#[derive(Clone)]
pub(crate) struct FailureCause(pub Arc<anyhow::Error>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::QuotaExceeded { violated, retry_after, headers } = self {
            let detail = format!("the request exceeds the quota of {}", violated.join(", "));
            let body = Problem {
                kind: QUOTA_EXCEEDED,
                title: "Request cannot be satisfied as assigned quota has been exceeded".into(),
                status: StatusCode::TOO_MANY_REQUESTS.as_u16(),
                detail,
                violated_policies: Some(violated),
            };
            let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
            let h = response.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            super::ratelimit::insert(h, headers);
            return response;
        }
        let mut response = problem(self.status(), self.to_string());
        match self {
            // The cause goes to the log, in the envelope's line for this response; the client
            // gets only the status.
            Self::Internal(cause) => {
                response.extensions_mut().insert(FailureCause(Arc::new(cause)));
            }
            // RFC 9110 requires a challenge with every 401.
            Self::InvalidCredentials => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"keygate\""));
            }
            Self::NoSession => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Cookie realm=\"keygate\""));
            }
            Self::MissingToken => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"keygate\""));
            }
            Self::InvalidToken => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keygate\", error=\"invalid_token\""),
                );
            }
            Self::InsufficientScope(required) => {
                // Scope tokens hold no quote or backslash, so they quote as they are.
                let challenge = format!("Bearer realm=\"keygate\", error=\"insufficient_scope\", scope=\"{required}\"");
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                }
            }
            Self::Unavailable => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // The rest of the body was never read, so the connection cannot carry another
            // request: say so (RFC 9112 §9.6), or a client reusing it gets a torn response.
            Self::PayloadTooLarge => {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::TooManyRequests { retry_after } | Self::TooManyRevocations { retry_after } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            _ => {}
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable(rejection.body_text()),
            _ => Self::BadRequest(rejection.body_text()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::Unavailable,
            other => Self::Internal(other.into()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => Self::InvalidCredentials,
            AuthError::NoSession => Self::NoSession,
            AuthError::WrongPassword => Self::WrongPassword,
            AuthError::NotFound => Self::NotFound,
            AuthError::Invalid(detail) => Self::Unprocessable(detail.to_owned()),
            AuthError::InvalidScope => Self::BadRequest("a requested scope is not one of the key's".into()),
            AuthError::InvalidToken(_) => Self::InvalidToken,
            AuthError::Locked { retry_after } => Self::TooManyRequests { retry_after },
            AuthError::RevocationLimit { retry_after } => Self::TooManyRevocations { retry_after },
            AuthError::QuotaExceeded(refusal) => match *refusal {
                Refusal::Exceeded { policies, violated, retry_after } => Self::QuotaExceeded {
                    violated: violated.iter().map(|name| name.to_string()).collect(),
                    retry_after,
                    headers: super::ratelimit::headers(&policies),
                },
                Refusal::Unavailable => Self::Unavailable,
            },
            AuthError::LimitsUnavailable => Self::Unavailable,
            AuthError::Hashing(HashPoolError::Busy) => Self::Unavailable,
            AuthError::Hashing(e) => Self::Internal(e.into()),
            AuthError::Store(e) => e.into(),
            AuthError::Signing(e) => Self::Internal(e.into()),
        }
    }
}
