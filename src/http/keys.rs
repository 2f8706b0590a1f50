//! Key management for admins: generate, read, list, update, roll and delete, always within
//! the session's account.

use axum::{
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::{IntoParams, ToSchema};

use super::owners::{
    CreditsSpec, CreditsView, LimitSpec, LimitView, credits_view, limit_views, parse_credits, parse_limits,
};
use super::{
    AppState,
    error::{ApiError, Problem},
    extract::{Admin, Json},
};
use crate::{
    domain::{KeyName, KeyRef, Metadata, OwnerId, ParseError, Scopes, parse_amount},
    service::{CreditsEdit, DEFAULT_ROLL_GRACE, Expiry, KeyChange, KeyDetails, KeyOptions, MAX_PAGE},
    store::UnixTime,
};

/// A key as the list shows it.
#[derive(Serialize, ToSchema)]
pub struct KeyListItem {
    pub api_key_ref: String,
    #[schema(example = "46SQZ49LT100U2QWQ3SI")]
    pub api_key: String,
    #[schema(example = "billing service")]
    pub name: Option<String>,
    #[schema(example = json!(["orders:read"]))]
    pub scopes: Vec<String>,
    /// RFC 3339, UTC.
    #[schema(example = "2026-12-02T17:40:00Z")]
    pub created_at: String,
    /// RFC 3339; null when the key never expires.
    pub expires_at: Option<String>,
    /// RFC 3339, accurate to about a minute; null when never used.
    pub last_used_at: Option<String>,
    pub enabled: bool,
    /// The email of the admin who generated it; null for keys made before keygate kept it,
    /// or whose admin is gone.
    pub created_by: Option<String>,
}

/// One key, with its metadata.
#[derive(Serialize, ToSchema)]
pub struct KeyResponse {
    #[serde(flatten)]
    pub key: KeyListItem,
    /// The JSON object given at generation or by an update; null when none.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// The key's own limits, each with what is used of it now.
    pub limits: Vec<LimitView>,
    /// The key's credits; null when it has none.
    pub credits: Option<CreditsView>,
    /// The customer the key belongs to, whose limits it shares; null when none.
    #[schema(example = "cus_42")]
    pub owner: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GeneratedKey {
    #[schema(example = "46SQZ49LT100U2QWQ3SI")]
    pub api_key: String,
    /// Shown this once; keygate keeps only a keyed hash of it.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub password: SecretString,
    pub api_key_ref: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    pub enabled: bool,
    pub limits: Vec<LimitView>,
    pub credits: Option<CreditsView>,
    pub owner: Option<String>,
}

fn expose<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secrecy::ExposeSecret::expose_secret(secret))
}

fn time(at: UnixTime) -> String {
    OffsetDateTime::from_unix_timestamp(at).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

fn metadata_json(metadata: Option<&Metadata>) -> Option<Box<RawValue>> {
    metadata.and_then(|m| RawValue::from_string(m.as_str().to_owned()).ok())
}

fn scope_list(scopes: &Scopes) -> Vec<String> {
    scopes.iter().map(str::to_owned).collect()
}

impl From<&KeyDetails> for KeyListItem {
    fn from(k: &KeyDetails) -> Self {
        Self {
            api_key_ref: k.key_ref.to_string(),
            api_key: k.api_key.to_string(),
            name: k.name.as_ref().map(|n| n.to_string()),
            scopes: scope_list(&k.scopes),
            created_at: time(k.created_at),
            expires_at: k.expires_at.map(time),
            last_used_at: k.last_used_at.map(time),
            enabled: k.enabled,
            created_by: k.created_by.as_ref().map(|e| e.to_string()),
        }
    }
}

impl KeyResponse {
    fn new(k: &KeyDetails, usage: &[crate::service::limits::PolicyState]) -> Self {
        Self {
            key: k.into(),
            metadata: metadata_json(k.metadata.as_ref()),
            limits: limit_views(&k.limits, usage, ""),
            credits: k.credits.map(credits_view),
            owner: k.owner.as_ref().map(|o| o.to_string()),
        }
    }
}

fn unprocessable(e: ParseError) -> ApiError {
    ApiError::Unprocessable(e.0.to_owned())
}

/// `Some(value)` for a field that was there, so that `Option<Option<T>>` tells an explicit
/// null (clear it) from a missing field (leave it).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

fn parse_name(name: Option<String>) -> Result<Option<KeyName>, ApiError> {
    name.map(|n| KeyName::parse(&n)).transpose().map_err(unprocessable)
}

fn parse_metadata(metadata: Option<Box<RawValue>>) -> Result<Option<Metadata>, ApiError> {
    metadata.map(|m| Metadata::parse(m.get())).transpose().map_err(unprocessable)
}

fn parse_time(field: &'static str, at: &str) -> Result<UnixTime, ApiError> {
    OffsetDateTime::parse(at, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|_| ApiError::Unprocessable(format!("{field}: must be an RFC 3339 time, e.g. 2027-01-31T00:00:00Z")))
}

/// Options for `POST /auth/keys/generate`, all optional; an empty body (the documented
/// call) generates a key without any.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// 1 to 100 printable characters; not unique.
    #[schema(example = "billing service")]
    pub name: Option<String>,
    /// Distinct RFC 6749 scope tokens, at most 50 of 1 to 128 characters each. A key with
    /// `keygate:introspect` may introspect the tokens of its account's other keys: give it
    /// to resource servers' keys.
    #[schema(example = json!(["orders:read"]))]
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Seconds from now until the key expires: 60 to 316224000 (10 years).
    #[schema(example = 2592000)]
    pub expires_in: Option<u64>,
    /// When the key expires (RFC 3339, in the future); not with `expires_in`.
    #[schema(example = "2027-01-31T00:00:00Z")]
    pub expires_at: Option<String>,
    /// A JSON object of at most 4 KiB, kept with the key and shown to admins.
    #[schema(value_type = Option<Object>, example = json!({"team": "billing"}))]
    pub metadata: Option<Box<RawValue>>,
    /// Up to 5 named limits, counted at every verification and active introspection.
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
    /// A credit balance, spent by verifications; with a refill, set back to its amount at
    /// each interval's edge.
    pub credits: Option<CreditsSpec>,
    /// The customer the key belongs to in your own system (1 to 256 characters): keys of
    /// one owner share the owner's limits.
    #[schema(example = "cus_42")]
    pub owner: Option<String>,
}

/// A JSON body that may be left out: empty means `T::default()`.
fn optional_json<T: DeserializeOwned + Default>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    // As axum's own JSON extractor judges it: application/json, or a +json type.
    let essence = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next());
    let json = essence
        .map(|e| e.trim().to_ascii_lowercase())
        .is_some_and(|e| e == "application/json" || (e.starts_with("application/") && e.ends_with("+json")));
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    Ok(axum::Json::<T>::from_bytes(body)?.0)
}

#[utoipa::path(
    post,
    path = "/auth/keys/generate",
    operation_id = "generate_key",
    tag = "keys",
    security(("session" = [])),
    request_body(content = Option<GenerateRequest>, content_type = "application/json", description = "Optional; an empty body generates a key with no name, scopes or expiry"),
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
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<GeneratedKey>, ApiError> {
    let request: GenerateRequest = optional_json(&headers, &body)?;
    let expiry = match (request.expires_in, request.expires_at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Unprocessable("expires_in, expires_at: give one or the other, not both".into()));
        }
        (Some(seconds), None) => Some(Expiry::After(seconds)),
        (None, Some(at)) => Some(Expiry::At(parse_time("expires_at", &at)?)),
        (None, None) => None,
    };
    let options = KeyOptions {
        name: parse_name(request.name)?,
        scopes: Scopes::parse(&request.scopes).map_err(unprocessable)?,
        expiry,
        metadata: parse_metadata(request.metadata)?,
        limits: parse_limits(&request.limits)?,
        owner: parse_owner(request.owner)?,
        credits: request.credits.as_ref().map(parse_credits).transpose()?,
    };
    let generated = state.auth.generate_key(&session, options).await?;
    let k = &generated.key;
    Ok(Json(GeneratedKey {
        api_key: k.api_key.to_string(),
        password: SecretString::from(generated.password.expose()),
        api_key_ref: k.key_ref.to_string(),
        name: k.name.as_ref().map(|n| n.to_string()),
        scopes: scope_list(&k.scopes),
        created_at: time(k.created_at),
        expires_at: k.expires_at.map(time),
        metadata: metadata_json(k.metadata.as_ref()),
        enabled: k.enabled,
        limits: limit_views(&k.limits, &[], ""),
        credits: k.credits.map(credits_view),
        owner: k.owner.as_ref().map(|o| o.to_string()),
    }))
}

fn parse_owner(owner: Option<String>) -> Result<Option<OwnerId>, ApiError> {
    owner.map(|o| OwnerId::parse(&o)).transpose().map_err(unprocessable)
}

/// Optional filter and paging for `GET /auth/keys/list`. Without `limit` or `after` the
/// response is every (matching) key, as it has always been.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only keys with exactly this name.
    #[param(example = "billing service")]
    pub name: Option<String>,
    /// At most this many keys (1 to 1000). When more follow, the response carries a
    /// `Link: <…>; rel="next"` header with the URL of the next page.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// Start after this key: the `api_key_ref` of the last key of the previous page.
    #[param(value_type = Option<String>, example = "0b6f4ef3-4c0e-4a53-9b5e-6d1f0f3a9a51")]
    pub after: Option<String>,
}

/// A listing's filter and paging, parsed.
struct Listing {
    name: Option<KeyName>,
    after: Option<KeyRef>,
    limit: Option<u32>,
}

impl ListParams {
    fn parse(self) -> Result<Listing, ApiError> {
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
        let name = self.name.map(|n| KeyName::parse(&n)).transpose().map_err(|e| ApiError::BadRequest(e.0.into()))?;
        Ok(Listing { name, after, limit })
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
        (status = 400, description = "A bad `name`, `limit` or `after`, or `after` names no key of this account (any more)",
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
    let Listing { name, after, limit } = params.parse()?;
    let page = state
        .auth
        .list_keys_page(&session, name.as_ref(), after, limit)
        .await?
        .ok_or_else(|| ApiError::BadRequest("after names no key of this account (deleted since?)".into()))?;
    let items: Vec<KeyListItem> = page.keys.iter().map(KeyListItem::from).collect();
    let mut response = Json(items).into_response();
    if let (Some(next), Some(limit)) = (page.next_after, limit) {
        // A URI reference relative to this one (RFC 8288 §3.1), its parts percent-encoded.
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(name) = &name {
            query.append_pair("name", name.as_str());
        }
        query.append_pair("limit", &limit.to_string()).append_pair("after", &next.to_string());
        let link = format!("</auth/keys/list?{}>; rel=\"next\"", query.finish());
        let value = HeaderValue::from_str(&link).map_err(|e| ApiError::Internal(e.into()))?;
        response.headers_mut().insert(header::LINK, value);
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/auth/keys/{api_key_ref}",
    operation_id = "get_key",
    tag = "keys",
    security(("session" = [])),
    params(("api_key_ref" = String, Path, description = "The key's `api_key_ref`")),
    responses(
        (status = 200, description = "The key", body = KeyResponse),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key in this account", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    Admin(session): Admin,
    Path(key_ref): Path<String>,
) -> Result<Json<KeyResponse>, ApiError> {
    let key = state.auth.key(&session, &key_ref).await?;
    let usage = state.auth.key_usage(&key);
    Ok(Json(KeyResponse::new(&key, &usage)))
}

/// The fields of `PATCH /auth/keys/{ref}`; each left out stays as it is.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// A new name, or null for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "billing service")]
    pub name: Option<Option<String>>,
    /// The key's scopes from now on; its live tokens lose any scope taken away here.
    #[schema(example = json!(["orders:read"]))]
    pub scopes: Option<Vec<String>>,
    /// A new expiry (RFC 3339, in the future), or null for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "2027-01-31T00:00:00Z")]
    pub expires_at: Option<Option<String>>,
    /// A new JSON object of at most 4 KiB, or null for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<Box<RawValue>>>,
    /// false: the key stops logging in and its tokens stop passing, everywhere within a
    /// second; true: both work again.
    pub enabled: Option<bool>,
    /// The key's limits from now on (an empty list for none); counts so far are kept for
    /// limits whose name and window stay.
    pub limits: Option<Vec<LimitSpec>>,
    /// New credits (`remaining` and `refill`), a top-up (`{"add": 500}`), or null for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CreditsPatch>)]
    pub credits: Option<Option<CreditsPatch>>,
    /// A new owner, or null for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, example = "cus_42")]
    pub owner: Option<Option<String>>,
}

/// A change of a key's credits: either `add`, or `remaining` (with an optional `refill`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsPatch {
    /// Credits to add to the balance, 1 to 1000000000000.
    #[schema(example = 500)]
    pub add: Option<i64>,
    /// The balance from now on.
    pub remaining: Option<i64>,
    pub refill: Option<super::owners::RefillSpec>,
}

fn parse_credits_patch(patch: Option<CreditsPatch>) -> Result<CreditsEdit, ApiError> {
    let Some(patch) = patch else { return Ok(CreditsEdit::Clear) };
    match (patch.add, patch.remaining) {
        (Some(add), None) if patch.refill.is_none() => {
            let add =
                parse_amount(add, "credits.add: a whole number from 1 to 1000000000000").map_err(unprocessable)?;
            if add == 0 {
                return Err(ApiError::Unprocessable("credits.add: a whole number from 1 to 1000000000000".into()));
            }
            Ok(CreditsEdit::Add(add))
        }
        (None, Some(remaining)) => {
            let spec = CreditsSpec { remaining, refill: patch.refill };
            Ok(CreditsEdit::Set(parse_credits(&spec)?))
        }
        _ => Err(ApiError::Unprocessable(
            "credits: give add (a top-up) or remaining (with an optional refill), not both".into(),
        )),
    }
}

#[utoipa::path(
    patch,
    path = "/auth/keys/{api_key_ref}",
    operation_id = "update_key",
    tag = "keys",
    security(("session" = [])),
    params(("api_key_ref" = String, Path, description = "The key's `api_key_ref`")),
    request_body(content = UpdateRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The key as it is now", body = KeyResponse),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sent by a browser from another origin (CSRF)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key in this account", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is wrong; the detail names it, and nothing was changed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    Admin(session): Admin,
    Path(key_ref): Path<String>,
    Json(request): Json<UpdateRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    let expiry = match request.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(at)) => Some(Some(Expiry::At(parse_time("expires_at", &at)?))),
    };
    let change = KeyChange {
        name: request.name.map(parse_name).transpose()?,
        scopes: request.scopes.map(|s| Scopes::parse(&s)).transpose().map_err(unprocessable)?,
        expiry,
        metadata: request.metadata.map(parse_metadata).transpose()?,
        enabled: request.enabled,
        limits: request.limits.as_deref().map(parse_limits).transpose()?,
        owner: request.owner.map(parse_owner).transpose()?,
        credits: request.credits.map(parse_credits_patch).transpose()?,
    };
    let key = state.auth.update_key(&session, &key_ref, change).await?;
    let usage = state.auth.key_usage(&key);
    Ok(Json(KeyResponse::new(&key, &usage)))
}

/// Optional options for `POST /auth/keys/{ref}/roll`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollRequest {
    /// How long the old password keeps working: 0 (not at all) to 604800 (7 days);
    /// 86400 when left out.
    #[schema(example = 3600)]
    pub grace_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct RolledKey {
    #[schema(example = "46SQZ49LT100U2QWQ3SI")]
    pub api_key: String,
    /// The new password, shown this once.
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub password: SecretString,
    pub api_key_ref: String,
    /// When the old password stops working (RFC 3339); null when it already has.
    pub old_password_expires_at: Option<String>,
}

#[utoipa::path(
    post,
    path = "/auth/keys/{api_key_ref}/roll",
    operation_id = "roll_key",
    tag = "keys",
    security(("session" = [])),
    params(("api_key_ref" = String, Path, description = "The key's `api_key_ref`")),
    request_body(content = Option<RollRequest>, content_type = "application/json", description = "Optional"),
    responses(
        (status = 200, description = "The same key with a new password; the old one works until `old_password_expires_at`", body = RolledKey),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid session", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Sent by a browser from another origin (CSRF)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key in this account", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "grace_seconds is out of range", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Temporarily unavailable", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn roll(
    State(state): State<AppState>,
    Admin(session): Admin,
    Path(key_ref): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<RolledKey>, ApiError> {
    let request: RollRequest = optional_json(&headers, &body)?;
    let grace = request.grace_seconds.unwrap_or(DEFAULT_ROLL_GRACE);
    let rolled = state.auth.roll_key(&session, &key_ref, grace).await?;
    Ok(Json(RolledKey {
        api_key: rolled.api_key.to_string(),
        password: SecretString::from(rolled.password.expose()),
        api_key_ref: rolled.key_ref.to_string(),
        old_password_expires_at: rolled.old_password_expires_at.map(time),
    }))
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
