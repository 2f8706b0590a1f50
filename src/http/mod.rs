//! The HTTP surface: routes, middleware and the OpenAPI document generated from them.

use std::sync::{Arc, atomic::AtomicBool};

use axum::{Router, extract::DefaultBodyLimit, routing::get};
use tower::{Layer, ServiceBuilder};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{monitoring::Exposition, service::AuthService};
use envelope::EnvelopeLayer;
use oauth::ClientScheme;
use observe::{Observe, ObserveLayer, Routes};
use verify::ForwardAuthLayer;

mod audit;
mod auth;
pub mod console;
mod cookie;
mod envelope;
pub mod error;
mod extract;
mod keys;
mod meta;
mod oauth;
mod observe;
mod owners;
mod password;
pub mod provenance;
pub mod ratelimit;
mod verify;

pub use auth::{LoginMetrics, decode_login};
pub use cookie::SessionCookie;
pub use envelope::Envelope;
pub use provenance::SecurityPolicy;
pub use verify::ForwardAuth;

/// What every handler gets: the service and the cookie policy. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<AuthService>,
    pub cookie: SessionCookie,
    pub security: Arc<SecurityPolicy>,
    pub logins: Arc<LoginMetrics>,
    /// Set once shutdown has begun: `/readyz` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
}

/// What the app tells operators, besides its answers.
pub struct Observability {
    /// One line per request at info.
    pub access_log: bool,
    /// `/metrics` on this app, when it is not served on a listener of its own.
    pub metrics: Option<Arc<Exposition>>,
}

/// Bodies beyond this are refused with 413 before they are read in full.
pub const MAX_BODY: usize = 64 * 1024;

/// What the document says besides its paths, which the routes add.
#[derive(OpenApi)]
#[openapi(
    info(title = "keygate", description = "API keys in, signed JWTs out."),
    modifiers(&SessionScheme, &ClientScheme),
    tags(
        (name = "auth", description = "Logging in and out"),
        (name = "keys", description = "API key management (admin session)"),
        (name = "owners", description = "Limits shared by the keys of one owner (admin session)"),
        (name = "meta", description = "Health and published keys"),
        (name = "audit", description = "The account's audit log (admin session)"),
        (name = "oauth", description = "OAuth 2.0 client credentials, introspection and revocation"),
    )
)]
struct ApiDoc;

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

/// Every routed endpoint with its OpenAPI entry: `routes!` takes the path, the method and
/// the description from the handler's `#[utoipa::path]`.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(password::change))
        .routes(routes!(keys::generate))
        .routes(routes!(keys::list))
        .routes(routes!(keys::get, keys::update))
        .routes(routes!(keys::roll))
        .routes(routes!(keys::delete))
        .routes(routes!(owners::get, owners::put))
        .routes(routes!(audit::list))
        .routes(routes!(meta::healthz))
        .routes(routes!(meta::readyz))
        .routes(routes!(meta::jwks))
        .routes(routes!(oauth::token))
        .routes(routes!(oauth::introspect))
        .routes(routes!(oauth::revoke))
        .routes(routes!(oauth::metadata))
}

/// The whole HTTP application, outermost layer first.
pub type App = Observe<Envelope<ForwardAuth<Router>>>;

pub fn app(state: AppState, observability: Observability) -> App {
    let auth = state.auth.clone();
    let security = state.security.clone();
    let (router, mut doc) = routes().split_for_parts();
    // `/auth/verify` and everything under it: answered by `ForwardAuth` below, before routing.
    doc.merge(verify::ForwardAuthDoc::openapi());
    let mut templates: Vec<String> = doc.paths.paths.keys().cloned().collect();
    templates.push("/openapi.json".into());
    templates.extend(console::PATHS.map(String::from));
    let mut router = router
        // The document does not describe itself.
        .route("/openapi.json", get(meta::openapi).with_state(Arc::new(doc)))
        // The admin console: pages for people, which the API document does not describe, each
        // answered with the console's own security headers.
        .merge(console::router().route_layer(axum::middleware::map_response(console::headers)))
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY));
    if let Some(exposition) = observability.metrics {
        // Not in the document either: it is for scrapers, not API clients.
        router = router.route("/metrics", get(meta::metrics).with_state(exposition));
        templates.push("/metrics".into());
    }
    let routes = Routes::new(templates.iter().map(String::as_str));
    ServiceBuilder::new()
        // Metrics and the access log: every answer, by route template.
        .layer(ObserveLayer::new(routes, observability.access_log, security))
        // Request id, span, body-size gate, timeout, panic guard, problem+json for bare
        // errors, security headers and failure logs, for every answer below it.
        .layer(EnvelopeLayer::new())
        // Forward authentication, the route gateways call per API request, bypasses the
        // router (see `verify`).
        .layer(ForwardAuthLayer::new(auth))
        .service(router)
}

/// `/metrics` alone, for a listener of its own (`KEYGATE_METRICS_LISTEN`).
pub fn metrics_app(exposition: Arc<Exposition>) -> Router {
    Router::new().route("/metrics", get(meta::metrics)).with_state(exposition)
}

/// What the main listener serves while start-up waits for the database: `/healthz` 200,
/// everything else (`/readyz` included) 503 with `Retry-After`.
pub fn starting_app() -> Envelope<Router> {
    let router = Router::new().route("/healthz", get(meta::healthz)).fallback(meta::starting);
    EnvelopeLayer::new().layer(router)
}
