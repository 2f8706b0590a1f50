//! Key management for admins: generate, list, delete, always within the session's account.

use axum::{
    extract::{Path, State},
    http::StatusCode,
};
use secrecy::SecretString;
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    AppState,
    error::{ApiError, Problem},
    extract::{Admin, Json},
};

#[derive(Serialize, ToSchema)]
pub struct GeneratedKey {
    #[schema(example = "46SQZ49LT100U2QWQ3SI")]
    pub api_key: String,
    /// Shown this once; keygate keeps only a keyed hash of it.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub password: SecretString,
}

fn expose<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secrecy::ExposeSecret::expose_secret(secret))
}

#[derive(Serialize, ToSchema)]
pub struct KeyListItem {
    pub api_key_ref: String,
    pub api_key: String,
}

#[utoipa::path(
    post,
    path = "/auth/keys/generate",
    operation_id = "generate_key",
    tag = "keys",
    security(("session" = [])),
    responses(
        (status = 200, description = "A new key; the password is never shown again", body = GeneratedKey),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sent by a browser from another origin (CSRF)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn generate(State(state): State<AppState>, Admin(session): Admin) -> Result<Json<GeneratedKey>, ApiError> {
    let key = state.auth.generate_key(&session).await?;
    Ok(Json(GeneratedKey { api_key: key.api_key.to_string(), password: SecretString::from(key.password.expose()) }))
}

#[utoipa::path(
    get,
    path = "/auth/keys/list",
    operation_id = "list_keys",
    tag = "keys",
    security(("session" = [])),
    responses(
        (status = 200, description = "The account's keys, oldest first", body = [KeyListItem]),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(State(state): State<AppState>, Admin(session): Admin) -> Result<Json<Vec<KeyListItem>>, ApiError> {
    let keys = state.auth.list_keys(&session).await?;
    Ok(Json(
        keys.into_iter()
            .map(|k| KeyListItem { api_key_ref: k.key_ref.to_string(), api_key: k.api_key.to_string() })
            .collect(),
    ))
}

#[utoipa::path(
    delete,
    path = "/auth/user/{api_key_ref}",
    operation_id = "delete_key",
    tag = "keys",
    security(("session" = [])),
    params(("api_key_ref" = String, Path, description = "The key's `api_key_ref` from the list")),
    responses(
        (status = 204, description = "Deleted; the key no longer logs in"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sent by a browser from another origin (CSRF)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key in this account", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    Admin(session): Admin,
    Path(key_ref): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.auth.delete_key(&session, &key_ref).await?;
    Ok(StatusCode::NO_CONTENT)
}
