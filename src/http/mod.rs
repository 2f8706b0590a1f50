//! The HTTP surface: routes, middleware and the OpenAPI document generated from them.

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{delete, get, post},
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, SecurityScheme},
};

use crate::service::AuthService;

mod audit;
mod auth;
mod cookie;
mod envelope;
pub mod error;
mod extract;
mod keys;
mod meta;
mod oauth;
mod password;
pub mod security;
mod verify;

pub use auth::decode_login;
pub use cookie::SessionCookie;
pub use envelope::Envelope;
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

#[derive(OpenApi)]
#[openapi(
    info(title = "keygate", description = "API keys in, signed JWTs out."),
    paths(
        auth::login, auth::logout, password::change, keys::generate, keys::list, keys::delete,
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

/// The whole HTTP application.
pub type App = Envelope<Router>;

pub fn app(state: AppState) -> App {
    let gateway = state.auth.clone();
    let router = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/password", post(password::change))
        .route("/auth/keys/generate", post(keys::generate))
        .route("/auth/keys/list", get(keys::list))
        .route("/auth/user/{api_key_ref}", delete(keys::delete))
        .route("/auth/audit", get(audit::list))
        .route("/healthz", get(meta::healthz))
        .route("/readyz", get(meta::readyz))
        .route("/.well-known/jwks.json", get(meta::jwks))
        .route("/openapi.json", get(meta::openapi))
        .merge(oauth::router())
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY));
    Envelope::new(router, Some(gateway))
}
