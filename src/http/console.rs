//! The admin console: `GET /console` (the account's keys), `GET /console/audit` (its audit
//! log) and their script, style and icon, all compiled into the binary.
//!
//! The pages are rendered here (`page`); what they show and change comes from the JSON API,
//! which the page's script calls with the session cookie like any other client, so lockout,
//! the cross-site check and the audit log apply to the console unchanged. Why this shape is
//! in docs/console.md.

use axum::{
    Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use axum_extra::extract::CookieJar;
use serde::Deserialize;

use super::{AppState, error::ApiError, extract::Admin};

mod assets;
mod page;

pub use page::View;

/// The console's policy: its own script, style and icon, calls to its own origin, and nothing
/// else. No inline script or style at all (so no nonce or hash is needed), no `eval`, and
/// no DOM sink that takes a string of HTML (Trusted Types with no policy).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
     require-trusted-types-for 'script'; trusted-types 'none'";

/// The console's paths, as the router matches them (and the metrics label them).
pub const PATHS: [&str; 4] = ["/", "/console", "/console/audit", "/console/assets/{file}"];

/// The console's routes; `http::app` adds `headers` to each of their answers.
pub fn router() -> Router<AppState> {
    let [root_path, keys_path, audit_path, asset_path] = PATHS;
    Router::new()
        .route(root_path, get(root))
        .route(keys_path, get(keys))
        .route(audit_path, get(audit))
        .route(asset_path, get(asset))
}

/// What every console answer carries besides the envelope's headers: its policy, and no
/// sharing of its window or its files with other origins.
pub async fn headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    response
}

async fn root() -> Redirect {
    Redirect::to("/console")
}

/// The keys page's query: the search, which the page's form sends and shows again. Paging
/// (`after`, `limit`) is read by the script, which passes it to the API.
#[derive(Debug, Default, Deserialize)]
struct KeysQuery {
    name: Option<String>,
}

async fn keys(
    State(state): State<AppState>,
    admin: Result<Admin, ApiError>,
    jar: CookieJar,
    query: Result<Query<KeysQuery>, QueryRejection>,
) -> Response {
    // A malformed query shows the unfiltered page; the script reports what the API says of it.
    let name = query.map(|Query(q)| q).unwrap_or_default().name.unwrap_or_default();
    render(&state, admin, &jar, View::Keys { name: &name })
}

async fn audit(State(state): State<AppState>, admin: Result<Admin, ApiError>, jar: CookieJar) -> Response {
    render(&state, admin, &jar, View::Audit)
}

/// The page, signed in or not. A cookie whose session has ended gets the sign-in form with a
/// notice saying so; a store that cannot answer gets the page with its status and a notice,
/// never a problem document a person would have to read as JSON.
fn render(state: &AppState, admin: Result<Admin, ApiError>, jar: &CookieJar, view: View) -> Response {
    let (signed_in, notice, failure) = match admin {
        Ok(_) => (true, None, None),
        Err(ApiError::NoSession) if jar.get(state.cookie.name()).is_some() => (false, Some(page::Notice::Ended), None),
        Err(ApiError::NoSession) => (false, None, None),
        Err(other) => (false, Some(page::Notice::Unavailable), Some(other.into_response())),
    };
    let html = Html(page::render(&page::Page { view, signed_in, notice }).into_string());
    match failure {
        None => html.into_response(),
        // The failure's status, Retry-After and logged cause, with the page as its body.
        Some(failure) => {
            let (mut parts, _) = failure.into_parts();
            parts.headers.remove(header::CONTENT_TYPE);
            let (page, body) = html.into_response().into_parts();
            parts.headers.extend(page.headers);
            Response::from_parts(parts, body)
        }
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    match assets::find(&file) {
        // The name holds a digest of the content, so a copy never goes stale.
        Some(asset) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            asset.body,
        )
            .into_response(),
        None => ApiError::NotFound.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use crate::store::AuditAction;

    /// The audit view names each event in words; a new kind of event needs its words too.
    #[test]
    fn the_audit_view_has_words_for_every_action() {
        let script = include_str!("console/console.js");
        for action in AuditAction::ALL {
            let entry = format!("'{}': '", action.as_str());
            assert!(script.contains(&entry), "console.js has no words for {}", action.as_str());
        }
    }
}
