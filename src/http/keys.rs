//! Key management for admins: generate, list, delete, always within the session's account.

use axum::{
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{ApiError, Problem},
    extract::{Admin, Json},
};
use crate::{
    domain::{KeyRef, Scopes},
    service::{ListedKey, MAX_PAGE},
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

/// Optional options for `POST /auth/keys/generate`; an empty body (the documented call)
/// generates a key without scopes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// Distinct RFC 6749 scope tokens, at most 50 of 1 to 128 characters each. A key with
    /// `keygate:introspect` may introspect the tokens of its account's other keys: give it
    /// to resource servers' keys.
    #[schema(example = json!(["keygate:introspect"]))]
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/auth/keys/generate",
    operation_id = "generate_key",
    tag = "keys",
    security(("session" = [])),
    request_body(content = Option<GenerateRequest>, content_type = "application/json", description = "Optional; an empty body generates a key without scopes"),
    responses(
        (status = 200, description = "A new key; the password is never shown again", body = GeneratedKey),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An option is wrong; the detail names it", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sent by a browser from another origin (CSRF)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn generate(
    State(state): State<AppState>,
    Admin(session): Admin,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<GeneratedKey>, ApiError> {
    let request = if body.is_empty() {
        GenerateRequest::default()
    } else {
        // As axum's own JSON extractor judges it: application/json, or a +json type.
        let essence = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next());
        let json = essence
            .map(|e| e.trim().to_ascii_lowercase())
            .is_some_and(|e| e == "application/json" || (e.starts_with("application/") && e.ends_with("+json")));
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        axum::Json::<GenerateRequest>::from_bytes(&body)?.0
    };
    let scopes = Scopes::parse(&request.scopes).map_err(|e| ApiError::Unprocessable(e.0.to_owned()))?;
    let key = state.auth.generate_key(&session, scopes).await?;
    Ok(Json(GeneratedKey { api_key: key.api_key.to_string(), password: SecretString::from(key.password.expose()) }))
}

/// Optional paging for `GET /auth/keys/list`. Without either parameter the response is
/// every key, as it has always been.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// At most this many keys (1 to 1000). When more follow, the response carries a
    /// `Link: <…>; rel="next"` header with the URL of the next page.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// Start after this key: the `api_key_ref` of the last key of the previous page.
    #[param(value_type = Option<String>, example = "0b6f4ef3-4c0e-4a53-9b5e-6d1f0f3a9a51")]
    pub after: Option<String>,
}

impl ListParams {
    fn parse(self) -> Result<(Option<KeyRef>, Option<u32>), ApiError> {
        let limit = match self.limit {
            None => None,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => Some(n),
                _ => return Err(ApiError::BadRequest(format!("limit must be a whole number from 1 to {MAX_PAGE}"))),
            },
        };
        let after = match self.after {
            None => None,
            Some(raw) => {
                Some(KeyRef::parse(&raw).map_err(|_| ApiError::BadRequest("after must be an api_key_ref".into()))?)
            }
        };
        Ok((after, limit))
    }
}

#[utoipa::path(
    get,
    path = "/auth/keys/list",
    operation_id = "list_keys",
    tag = "keys",
    security(("session" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "The account's keys, oldest first: all of them, or one page when `limit` is given",
            body = [KeyListItem],
            headers(("Link" = String, description = "`<…>; rel=\"next\"`: the next page, when `limit` was given and more keys follow"))),
        (status = 400, description = "A bad `limit` or `after`, or `after` names no key of this account (any more)",
            body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    Admin(session): Admin,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|_| ApiError::BadRequest("malformed query string".into()))?;
    let (after, limit) = params.parse()?;
    let items = |keys: Vec<ListedKey>| -> Vec<KeyListItem> {
        keys.into_iter()
            .map(|k| KeyListItem { api_key_ref: k.key_ref.to_string(), api_key: k.api_key.to_string() })
            .collect()
    };
    if after.is_none() && limit.is_none() {
        return Ok(Json(items(state.auth.list_keys(&session).await?)).into_response());
    }
    let page = state
        .auth
        .list_keys_page(&session, after, limit)
        .await?
        .ok_or_else(|| ApiError::BadRequest("after names no key of this account (deleted since?)".into()))?;
    let mut response = Json(items(page.keys)).into_response();
    if let (Some(next), Some(limit)) = (page.next_after, limit) {
        // A URI reference relative to this one (RFC 8288 §3.1); both parts are plain ASCII.
        let link = format!("</auth/keys/list?limit={limit}&after={next}>; rel=\"next\"");
        let value = HeaderValue::from_str(&link).map_err(|e| ApiError::Internal(e.into()))?;
        response.headers_mut().insert(header::LINK, value);
    }
    Ok(response)
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
