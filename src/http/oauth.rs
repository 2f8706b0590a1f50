//! OAuth 2.0 for API clients, with the API key as `client_id` and the API password as
//! `client_secret`: the client credentials grant (RFC 6749 §4.4), token introspection
//! (RFC 7662), token revocation (RFC 7009) and the server metadata that points at them
//! (RFC 8414).
//!
//! Errors here are RFC 6749 §5.2 JSON, `{"error","error_description"}`, not our usual
//! problem+json: OAuth client libraries parse that shape and no other. It is the one
//! documented exception, and it covers only the 400/401 answers the RFCs define; a body
//! that is too large (413) or a store outage (503) is still problem+json.

use std::collections::HashMap;

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Serialize;
use utoipa::{
    Modify, ToSchema,
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
};

use super::{
    AppState,
    auth::LoginKind,
    error::{ApiError, Problem},
    provenance::Client,
};
use crate::{
    domain::{ClientAddr, Scopes},
    service::{AuthError, AuthenticatedKey, Revoked, Verification},
};

/// How OAuth clients authenticate, for the OpenAPI document.
pub struct ClientScheme;

impl Modify for ClientScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "client_basic",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "client_secret_basic: the API key as user name, the API password as password \
                 (or send client_id and client_secret in the form body: client_secret_post)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The RFC 6749 §5.2 error codes keygate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    /// RFC 7009 §2.1: the client may not revoke this token (it was issued to another key).
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthErrorBody {
    pub error: OAuthErrorCode,
    /// Human-readable; never echoes the request.
    pub error_description: &'static str,
}

#[derive(Debug)]
pub enum OAuthError {
    Client(OAuthErrorCode, &'static str),
    /// Not the client's fault (store down, internal error): our usual problem+json.
    Server(ApiError),
}

fn invalid_request(description: &'static str) -> OAuthError {
    OAuthError::Client(OAuthErrorCode::InvalidRequest, description)
}

const INVALID_CLIENT: OAuthError = OAuthError::Client(OAuthErrorCode::InvalidClient, "client authentication failed");

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (code, description) = match self {
            Self::Server(e) => return e.into_response(),
            Self::Client(code, description) => (code, description),
        };
        // RFC 6749 §5.2: invalid_client is a 401 with a challenge for the scheme clients use.
        let status =
            if code == OAuthErrorCode::InvalidClient { StatusCode::UNAUTHORIZED } else { StatusCode::BAD_REQUEST };
        let mut response =
            (status, no_store(), Json(OAuthErrorBody { error: code, error_description: description })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"keygate\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

impl From<AuthError> for OAuthError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => INVALID_CLIENT,
            AuthError::InvalidScope => {
                Self::Client(OAuthErrorCode::InvalidScope, "a requested scope is not one of this client's")
            }
            other => Self::Server(other.into()),
        }
    }
}

impl From<BytesRejection> for OAuthError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::Server(ApiError::PayloadTooLarge)
        } else {
            invalid_request("the request body could not be read")
        }
    }
}

/// RFC 6749 §5.1: responses carrying tokens or token data must not be cached.
fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

/// The parameters every endpoint here understands; others are ignored, as RFC 6749 §3.1
/// requires, and so are never checked for repetition.
const KNOWN: [&str; 6] = ["grant_type", "scope", "client_id", "client_secret", "token", "token_type_hint"];

/// A form-encoded request body (the only encoding these RFCs allow).
struct Form(HashMap<&'static str, String>);

impl Form {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(invalid_request("the body must be application/x-www-form-urlencoded"));
        }
        if std::str::from_utf8(body).is_err() {
            return Err(invalid_request("the body must be UTF-8"));
        }
        let mut params = HashMap::new();
        for (name, value) in form_urlencoded::parse(body) {
            // RFC 6749 §3.1: a parameter without a value is treated as omitted.
            let Some(&known) = KNOWN.iter().find(|k| **k == name) else { continue };
            if value.is_empty() {
                continue;
            }
            if params.insert(known, value.into_owned()).is_some() {
                return Err(invalid_request("a parameter is repeated"));
            }
        }
        Ok(Self(params))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// The client's credentials, by `client_secret_basic` or `client_secret_post` (RFC 6749
/// §2.3.1), never both. Missing or malformed credentials are `invalid_client`.
fn client_credentials(headers: &HeaderMap, form: &Form) -> Result<(String, String), OAuthError> {
    let basic = basic_credentials(headers)?;
    let posted = (form.get("client_id"), form.get("client_secret"));
    match (basic, posted) {
        (Some(_), (Some(_), _) | (_, Some(_))) => {
            Err(invalid_request("use one client authentication method, not both Basic and the body"))
        }
        (Some(credentials), _) => Ok(credentials),
        (None, (Some(id), Some(secret))) => Ok((id.to_owned(), secret.to_owned())),
        (None, _) => Err(INVALID_CLIENT),
    }
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`; `None` for no
/// header or another scheme.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(invalid_request("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| INVALID_CLIENT)?.trim();
    let (scheme, encoded) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| INVALID_CLIENT)?;
    let decoded = String::from_utf8(decoded).map_err(|_| INVALID_CLIENT)?;
    let (id, secret) = decoded.split_once(':').ok_or(INVALID_CLIENT)?;
    Ok(Some((form_decode(id)?, form_decode(secret)?)))
}

/// Undoes application/x-www-form-urlencoded on one value (RFC 6749 §2.3.1 encodes both
/// halves of Basic credentials). A raw `&` or `=` cannot occur in an encoded value.
fn form_decode(raw: &str) -> Result<String, OAuthError> {
    if raw.contains(['&', '=']) {
        return Err(INVALID_CLIENT);
    }
    Ok(form_urlencoded::parse(raw.as_bytes()).next().map(|(v, _)| v.into_owned()).unwrap_or_default())
}

/// A client credentials token request (RFC 6749 §4.4.2). The client authenticates with
/// HTTP Basic, or with `client_id` and `client_secret` here.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the form for the OpenAPI document; parsed by `Form`.
pub struct TokenRequest {
    /// Must be `client_credentials`.
    #[schema(example = "client_credentials")]
    grant_type: String,
    /// Space-separated scopes, all held by the key: the token gets only these. Without it,
    /// the token gets all the key's scopes.
    #[schema(example = "orders:read")]
    scope: Option<String>,
    /// The API key (client_secret_post only).
    #[schema(example = "46SQZ49LT100U2QWQ3SI")]
    client_id: Option<String>,
    /// The API password (client_secret_post only).
    client_secret: Option<String>,
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The granted scopes, space-separated (empty when the key has none).
    pub scope: String,
}

#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "oauth",
    security((), ("client_basic" = [])),
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "An access token", body = TokenResponse,
            headers(("Cache-Control" = String, description = "no-store"))),
        (status = 400, description = "invalid_request, unsupported_grant_type or invalid_scope (RFC 6749 §5.2)", body = OAuthErrorBody),
        (status = 401, description = "invalid_client: missing or wrong client credentials", body = OAuthErrorBody,
            headers(("WWW-Authenticate" = String, description = "Basic realm=\"keygate\""))),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins for this client or address; see Retry-After", body = Problem,
            content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds until the lock ends"))),
        (status = 503, description = "The store is unavailable; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, OAuthError> {
    let form = Form::parse(&headers, &body?)?;
    // The grant and scope are checked before the credentials, so nothing is issued for a
    // request that would then be refused.
    match form.get("grant_type") {
        None => return Err(invalid_request("grant_type is required")),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::Client(
                OAuthErrorCode::UnsupportedGrantType,
                "only the client_credentials grant is supported",
            ));
        }
    }
    let requested = form.get("scope").map(Scopes::parse_list).transpose().map_err(|_| {
        OAuthError::Client(OAuthErrorCode::InvalidScope, "scope is not a list of RFC 6749 scope tokens")
    })?;
    let (client_id, client_secret) = client_credentials(&headers, &form)?;
    let issued = state.auth.client_credentials(&client_id, &client_secret, client, requested).await;
    state.logins.record(LoginKind::Oauth, &issued);
    let issued = issued?;
    let body = TokenResponse {
        access_token: issued.token,
        token_type: "Bearer",
        expires_in: issued.claims.exp.saturating_sub(issued.claims.iat),
        scope: issued.claims.scope.unwrap_or_default(),
    };
    Ok((no_store(), Json(body)))
}

/// An introspection or revocation request (RFC 7662 §2.1, RFC 7009 §2.1).
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the form for the OpenAPI document; parsed by `Form`.
pub struct TokenQuery {
    /// The access token.
    token: String,
    /// `access_token` (the only kind keygate issues); other hints are ignored.
    token_type_hint: Option<String>,
    /// The API key (client_secret_post only).
    client_id: Option<String>,
    /// The API password (client_secret_post only).
    client_secret: Option<String>,
}

/// RFC 7662 §2.2. An inactive token gets `{"active": false}` and nothing else.
#[derive(Default, Serialize, ToSchema)]
pub struct IntrospectionResponse {
    pub active: bool,
    /// The token's scopes that its key still holds, space-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The API key the token was issued to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "Bearer")]
    pub token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The key's `api_key_ref`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The account id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc: Option<String>,
}

impl From<Option<Verification>> for IntrospectionResponse {
    fn from(verified: Option<Verification>) -> Self {
        let Some(verified) = verified else {
            return Self::default();
        };
        let c = verified.token.claims.clone();
        Self {
            active: true,
            scope: Some(verified.scopes.to_string()),
            client_id: Some(c.api_key),
            token_type: Some("Bearer"),
            exp: Some(c.exp),
            iat: Some(c.iat),
            nbf: Some(c.nbf),
            sub: Some(c.sub),
            aud: Some(c.aud),
            iss: Some(c.iss),
            jti: Some(c.jti),
            acc: Some(c.acc),
        }
    }
}

/// Token introspection by the client a token was issued to.
///
/// Active only for a live token issued to the calling key itself, or, when the calling key
/// holds the scope `keygate:introspect` (a resource server's key), to any key of its account.
/// Inactive for anything the forward-auth check refuses (expired, not yet valid, tampered,
/// another issuer or key set, deleted key, revoked) and for other accounts' tokens.
#[utoipa::path(
    post,
    path = "/oauth/introspect",
    tag = "oauth",
    security((), ("client_basic" = [])),
    request_body(content = TokenQuery, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Whether the token is active, and its claims if so", body = IntrospectionResponse),
        (status = 400, description = "invalid_request (RFC 6749 §5.2)", body = OAuthErrorBody),
        (status = 401, description = "invalid_client: missing or wrong client credentials", body = OAuthErrorBody,
            headers(("WWW-Authenticate" = String, description = "Basic realm=\"keygate\""))),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins for this client or address; see Retry-After", body = Problem,
            content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds until the lock ends"))),
        (status = 503, description = "The store is unavailable; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn introspect(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, OAuthError> {
    let (caller, token) = authenticated_token_request(&state, client, &headers, &body?).await?;
    let verified = state.auth.introspect(&caller, &token).await?;
    Ok((no_store(), Json(IntrospectionResponse::from(verified))))
}

/// What introspection and revocation share: the caller authenticates with its key's client
/// credentials (counted towards lockout like any login) and names one `token`.
async fn authenticated_token_request(
    state: &AppState,
    client: ClientAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(AuthenticatedKey, String), OAuthError> {
    let form = Form::parse(headers, body)?;
    let (client_id, client_secret) = client_credentials(headers, &form)?;
    let caller = state.auth.authenticate_key(&client_id, &client_secret, client).await?;
    let token = form.get("token").ok_or_else(|| invalid_request("token is required"))?;
    Ok((caller, token.to_owned()))
}

/// Token revocation (RFC 7009): the token stops working everywhere keygate checks it
/// (forward-auth, introspection) until it would have expired.
///
/// Only tokens issued to the calling key itself are revoked. A valid token issued to another
/// key (of any account) is refused with `unauthorized_client` and left alone (RFC 7009
/// §2.1). Like RFC 7009 §2.2 asks, an invalid or expired token still gets a 200.
#[utoipa::path(
    post,
    path = "/oauth/revoke",
    tag = "oauth",
    security((), ("client_basic" = [])),
    request_body(content = TokenQuery, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or nothing to revoke"),
        (status = 400, description = "invalid_request, or unauthorized_client for a token issued to another key (RFC 7009 §2.1)",
            body = OAuthErrorBody),
        (status = 401, description = "invalid_client: missing or wrong client credentials", body = OAuthErrorBody,
            headers(("WWW-Authenticate" = String, description = "Basic realm=\"keygate\""))),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many failed logins for this client or address; see Retry-After", body = Problem,
            content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds until the lock ends"))),
        (status = 503, description = "The store is unavailable; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, OAuthError> {
    let (caller, token) = authenticated_token_request(&state, client, &headers, &body?).await?;
    match state.auth.revoke_token(&caller, &token).await? {
        Revoked::Token | Revoked::Nothing => Ok((StatusCode::OK, no_store())),
        Revoked::NotIssuedToCaller => {
            Err(OAuthError::Client(OAuthErrorCode::UnauthorizedClient, "the token was not issued to this client"))
        }
    }
}

/// RFC 8414 authorization server metadata. The endpoint URLs are built on the issuer,
/// which therefore should be keygate's public base URL (the default is the bound address).
#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub introspection_endpoint: String,
    pub revocation_endpoint: String,
    pub grant_types_supported: [&'static str; 1],
    /// Empty: keygate has no authorization endpoint.
    pub response_types_supported: [&'static str; 0],
    pub token_endpoint_auth_methods_supported: [&'static str; 2],
    pub introspection_endpoint_auth_methods_supported: [&'static str; 2],
    pub revocation_endpoint_auth_methods_supported: [&'static str; 2],
}

const CLIENT_AUTH_METHODS: [&str; 2] = ["client_secret_basic", "client_secret_post"];

#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "oauth",
    responses((status = 200, description = "RFC 8414 metadata", body = ServerMetadata,
        headers(("Cache-Control" = String, description = "public, max-age=300"))))
)]
pub async fn metadata(State(state): State<AppState>) -> impl IntoResponse {
    let issuer = state.auth.policy().issuer.clone();
    let base = issuer.trim_end_matches('/').to_owned();
    let body = ServerMetadata {
        token_endpoint: format!("{base}/oauth/token"),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        introspection_endpoint: format!("{base}/oauth/introspect"),
        revocation_endpoint: format!("{base}/oauth/revoke"),
        issuer,
        grant_types_supported: ["client_credentials"],
        response_types_supported: [],
        token_endpoint_auth_methods_supported: CLIENT_AUTH_METHODS,
        introspection_endpoint_auth_methods_supported: CLIENT_AUTH_METHODS,
        revocation_endpoint_auth_methods_supported: CLIENT_AUTH_METHODS,
    };
    ([(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"))], Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded; charset=UTF-8"));
        h
    }

    fn code(e: OAuthError) -> OAuthErrorCode {
        match e {
            OAuthError::Client(code, _) => code,
            OAuthError::Server(e) => panic!("server error {e}"),
        }
    }

    #[test]
    fn forms_ignore_unknown_and_empty_and_refuse_repeats() {
        let f = Form::parse(&form_headers(), b"grant_type=client_credentials&x=1&x=2&scope=").unwrap();
        assert_eq!(f.get("grant_type"), Some("client_credentials"));
        assert_eq!(f.get("scope"), None);
        assert_eq!(f.get("x"), None);
        let e = Form::parse(&form_headers(), b"token=a&token=b").err().unwrap();
        assert_eq!(code(e), OAuthErrorCode::InvalidRequest);
        let e = Form::parse(&HeaderMap::new(), b"token=a").err().unwrap();
        assert_eq!(code(e), OAuthErrorCode::InvalidRequest);
        let e = Form::parse(&form_headers(), b"token=\xff").err().unwrap();
        assert_eq!(code(e), OAuthErrorCode::InvalidRequest);
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let encoded = STANDARD.encode("a%2Bb+c:p%3Aw");
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {encoded}")).unwrap());
        assert_eq!(basic_credentials(&h).unwrap(), Some(("a+b c".into(), "p:w".into())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(code(basic_credentials(&h).err().unwrap()), OAuthErrorCode::InvalidClient);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&h).unwrap(), None);
    }

    #[test]
    fn two_authentication_methods_are_refused() {
        let mut h = form_headers();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {}", STANDARD.encode("a:b"))).unwrap());
        let f = Form::parse(&form_headers(), b"client_id=a").unwrap();
        assert_eq!(code(client_credentials(&h, &f).err().unwrap()), OAuthErrorCode::InvalidRequest);
        let f = Form::parse(&form_headers(), b"client_id=a").unwrap();
        assert_eq!(code(client_credentials(&HeaderMap::new(), &f).err().unwrap()), OAuthErrorCode::InvalidClient);
    }

    proptest::proptest! {
        /// Any body bytes: a form or an `invalid_request`, never a panic.
        #[test]
        fn any_form_body_parses_or_is_refused(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Err(e) = Form::parse(&form_headers(), &body) {
                proptest::prop_assert_eq!(code(e), OAuthErrorCode::InvalidRequest);
            }
        }

        /// Credentials survive Basic encoding (RFC 6749 §2.3.1: form-encode, then base64).
        #[test]
        fn basic_credentials_round_trip(id in "\\PC{1,40}", secret in "\\PC{0,60}") {
            let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let mut h = HeaderMap::new();
            let value = format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(&id), enc(&secret))));
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
            proptest::prop_assert_eq!(basic_credentials(&h).unwrap(), Some((id, secret)));
        }

        /// Any Authorization header: never a panic.
        #[test]
        fn any_basic_header_parses_or_is_refused(value in "[ -~]{0,200}") {
            if let Ok(v) = HeaderValue::from_str(&value) {
                let mut h = HeaderMap::new();
                h.insert(header::AUTHORIZATION, v);
                let _ = basic_credentials(&h);
            }
        }
    }
}
