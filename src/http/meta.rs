//! Health, published keys and the API description.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::{ToSchema, openapi::OpenApi};

use crate::monitoring::Exposition;

use super::{
    AppState,
    error::{ApiError, Problem},
};

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
}

/// Readiness: the store answers, and the server is not shutting down. A load balancer should
/// send no traffic here while this is 503; unlike `/healthz`, it does not mean the process
/// should be restarted.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    responses(
        (status = 200, body = Readiness),
        (status = 503, description = "The database cannot be reached yet or any more, or the server is shutting down", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    if state.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable);
    }
    match state.auth.store().ping().await {
        Ok(()) => Ok(Json(Readiness { status: "ready" })),
        // Whatever the cause, a store that cannot answer `SELECT 1` means "not ready",
        // never a 500; the cause goes to the log only.
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            Err(ApiError::Unavailable)
        }
    }
}

/// The public signing keys (RFC 7517), for gateways that verify tokens themselves: the
/// active key and every retired key that may still have live tokens.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "meta",
    params(("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer")),
    responses(
        (status = 200, description = "JSON Web Key Set", content_type = "application/json", body = Object,
            headers(
                ("Cache-Control" = String, description = "public, max-age=60"),
                ("ETag" = String, description = "Changes whenever the key set does"),
            )),
        (status = 304, description = "Unchanged since the ETag given in If-None-Match",
            headers(("ETag" = String), ("Cache-Control" = String))),
    )
)]
pub async fn jwks(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let set = state.auth.key_ring().jwks();
    let body = match serde_json::to_vec(&set) {
        Ok(body) => body,
        Err(e) => return ApiError::Internal(e.into()).into_response(),
    };
    // A strong validator from the content itself: replicas serving the same keys agree on it.
    let digest = Sha256::digest(&body);
    let etag = format!("\"{}\"", digest[..16].iter().map(|b| format!("{b:02x}")).collect::<String>());
    // A rotated-in key signs at once, so gateways verifying locally must see it soon: one
    // minute of caching spares us a fetch per request and bounds how long a gateway that
    // does not refetch on an unknown kid refuses new tokens.
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    let etag_header = (header::ETAG, HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")));
    if if_none_match(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [cache, etag_header]).into_response();
    }
    ([cache, etag_header, (header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// RFC 9110 §13.1.2: weak comparison, a list of tags, or `*`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag
        },
    )
}

/// The Prometheus exposition (docs/operations.md lists what is in it).
pub async fn metrics(State(exposition): State<Arc<Exposition>>) -> Response {
    let body = exposition.render();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body)
        .into_response()
}

/// Liveness and a 503 for everything else: what is served while start-up waits for the
/// database, so that an orchestrator sees a live process that is not ready yet.
pub async fn starting() -> ApiError {
    ApiError::Unavailable
}

/// The OpenAPI document `http::app` assembled.
pub async fn openapi(State(doc): State<Arc<OpenApi>>) -> Response {
    Json(doc.as_ref()).into_response()
}
