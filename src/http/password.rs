//! `POST /auth/password`: a signed-in admin changes their own password.

use axum::{extract::State, http::StatusCode};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, Problem},
    extract::{Admin, Json},
};
use crate::domain::AdminPassword;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The admin's password now: a session alone does not let anyone set a new one.
    pub current_password: String,
    /// At least 12 characters, at most 1024 bytes (UTF-8), not only whitespace.
    #[schema(min_length = 12, example = "a long and new passphrase")]
    pub new_password: String,
}

#[utoipa::path(
    post,
    path = "/auth/password",
    operation_id = "change_password",
    tag = "auth",
    security(("session" = [])),
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed; every other session of this admin has ended, this one stays"),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong current_password (counted like a failed login), or sent by a browser from another origin (CSRF)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field missing, unknown, or new_password not allowed; the detail names it", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed attempts for this admin or address; see Retry-After", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds until the lock ends"))),
        (status = 503, description = "Too busy or temporarily unavailable; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change(
    State(state): State<AppState>,
    Admin(session): Admin,
    Json(request): Json<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    // Refused before the current password is checked: it reveals nothing about that one.
    let new = AdminPassword::parse(&request.new_password)
        .map_err(|e| ApiError::Unprocessable(format!("new_password: {e}")))?;
    state.auth.change_password(&session, &request.current_password, new).await?;
    Ok(StatusCode::NO_CONTENT)
}
