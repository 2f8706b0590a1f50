//! Health, published keys and the API description.

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, header},
    response::IntoResponse,
};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

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

/// Readiness: the store answers. A load balancer should send no traffic here while this is
/// 503; unlike `/healthz`, it does not mean the process should be restarted.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    responses(
        (status = 200, body = Readiness),
        (status = 503, description = "The database cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
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

/// The public signing keys (RFC 7517), for gateways that verify tokens themselves.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "meta",
    responses((status = 200, description = "JSON Web Key Set", content_type = "application/json", body = Object))
)]
pub async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let set = state.auth.key_ring().jwks();
    // Short enough that a rotated-in key is picked up quickly, long enough to spare us
    // a fetch per request from gateways that honour caching.
    ([(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"))], Json(set))
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::ApiDoc::openapi())
}
