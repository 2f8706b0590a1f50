//! Extractors: JSON whose rejections speak our error format, and the admin session.

use axum::{
    extract::{FromRequest, FromRequestParts},
    http::request::Parts,
};
use axum_extra::extract::CookieJar;

use super::{AppState, error::ApiError, provenance};
use crate::service::AdminSession;

/// `axum::Json`, but a bad body is answered with a problem document.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// Requires a live admin session cookie. Deliberately ignores `Authorization`: an API
/// client's bearer token never grants admin rights. Because the cookie is ambient
/// authority, every state-changing use of it must also pass the same-origin check (CSRF):
/// doing it here means no handler can forget it.
pub struct Admin(pub AdminSession);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let jar = CookieJar::from_headers(&parts.headers);
        let token = jar.get(state.cookie.name()).ok_or(ApiError::NoSession)?;
        provenance::check_same_origin(&parts.method, &parts.headers, &state.security)?;
        let client = provenance::client_addr(parts, &state.security);
        Ok(Self(state.auth.session(token.value(), client).await?))
    }
}
