//! The HTTP surface: routes, middleware and the OpenAPI document generated from them.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::Response,
    routing::{delete, get, post},
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, SecurityScheme},
};

use crate::service::AuthService;

mod audit;
mod auth;
mod cookie;
pub mod error;
mod extract;
mod keys;
mod meta;
mod oauth;
pub mod security;
mod verify;

pub use auth::decode_login;
pub use cookie::SessionCookie;
use oauth::MergeGatewayDoc;
pub use security::SecurityPolicy;

/// What every handler gets: the service and the cookie policy. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<AuthService>,
    pub cookie: SessionCookie,
    pub security: Arc<SecurityPolicy>,
}

/// Bodies beyond this are refused with 413 before they are read in full.
pub const MAX_BODY: usize = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Every response; a page that needs more must say so itself (there is none).
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

#[derive(OpenApi)]
#[openapi(
    info(title = "keygate", description = "API keys in, signed JWTs out."),
    paths(
        auth::login, auth::logout, keys::generate, keys::list, keys::delete,
        meta::healthz, meta::readyz, meta::jwks, audit::list,
    ),
    modifiers(&SessionScheme, &MergeGatewayDoc),
    tags(
        (name = "auth", description = "Logging in and out"),
        (name = "keys", description = "API key management (admin session)"),
        (name = "meta", description = "Health and published keys"),
        (name = "audit", description = "The account's audit log (admin session)"),
    )
)]
pub struct ApiDoc;

struct SessionScheme;

impl Modify for SessionScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__Host-keygate_session",
                "Admin session from POST /auth/login with email and password (keygate_session when cookies are not Secure)",
            ))),
        );
    }
}

pub fn router(state: AppState) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/keys/generate", post(keys::generate))
        .route("/auth/keys/list", get(keys::list))
        .route("/auth/user/{api_key_ref}", delete(keys::delete))
        .route("/auth/audit", get(audit::list))
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/.well-known/jwks.json", get(meta::jwks))
        .route("/openapi.json", get(meta::openapi))
        .merge(verify::router())
        .merge(oauth::router())
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(x_request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    // Method and path only: headers and query strings may carry credentials.
                    tracing::info_span!("request", id, method = %req.method(), path = %req.uri().path())
                }))
                .layer(PropagateRequestIdLayer::new(x_request_id))
                .layer(SetResponseHeaderLayer::overriding(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ))
                .layer(SetResponseHeaderLayer::overriding(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                ))
                // Tokens, passwords and session state must never sit in a shared cache;
                // the few cacheable responses (JWKS) say so themselves.
                .layer(SetResponseHeaderLayer::if_not_present(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ))
                // keygate serves no page, script or style. Should a response ever be rendered
                // (an error page opened in a browser, a future console), it may load nothing,
                // run nothing and be framed by no one (clickjacking).
                .layer(SetResponseHeaderLayer::overriding(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(CONTENT_SECURITY_POLICY),
                ))
                .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
                .layer(CatchPanicLayer::custom(|_| error::problem(StatusCode::INTERNAL_SERVER_ERROR, "internal error")))
                .layer(middleware::map_response(problem_for_bare_errors))
                .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
                .layer(middleware::from_fn(refuse_large_bodies))
                .layer(DefaultBodyLimit::max(MAX_BODY)),
        )
}

/// Answers 413 from `Content-Length` alone, before any handler or extractor runs; chunked
/// bodies are capped by `DefaultBodyLimit` as they are read.
async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return axum::response::IntoResponse::into_response(error::ApiError::PayloadTooLarge);
    }
    next.run(request).await
}

/// Gives the errors axum and tower produce themselves (unknown route 404, wrong method 405
/// with its `Allow`, timeout 408) the same problem+json body as ours, keeping their headers.
async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => "no such resource",
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed for this resource",
        StatusCode::REQUEST_TIMEOUT => "request took too long",
        _ => status.canonical_reason().unwrap_or("error"),
    };
    let (mut parts, _) = response.into_parts();
    let (problem_parts, body) = error::problem(status, detail).into_parts();
    parts.headers.extend(problem_parts.headers);
    Response::from_parts(parts, body)
}
