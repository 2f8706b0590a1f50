//! `/auth/verify`: forward authentication for gateways (nginx `auth_request`, Traefik
//! `forwardAuth`, Envoy `ext_authz` in HTTP mode). The gateway passes the client's
//! `Authorization` header; a 200 lets the request through, with headers the gateway copies
//! onto the upstream request; a 401 refuses it.
//!
//! Any method and any sub-path are accepted, because gateways send what they have: Envoy
//! appends the original path to the configured prefix and keeps the original method.
//!
//! These requests bypass the router: [`ForwardAuthLayer`], applied in `http::app` between
//! the envelope and the router, answers them itself and hands every other request on. The
//! route gateways call per API request would otherwise pay for axum's routing and handler
//! plumbing (matched-path and URL-parameter extensions, a boxed route cloned per request,
//! state extraction, response mapping), a noticeable share of a verification
//! (docs/benchmarks.md).

use std::{
    borrow::Cow,
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::{IntoResponse, Response},
};
use futures_util::future::{BoxFuture, Either};
use tower::{Layer, Service};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        OpenApi as Doc, PathItem,
        path::{Operation, ParameterBuilder, ParameterIn},
        schema::{ObjectBuilder, Type},
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};

use super::{
    envelope,
    error::{ApiError, Problem},
    ratelimit,
};
use crate::{
    domain::Scopes,
    monitoring::{self as names, Counters},
    service::{AuthError, AuthService, TokenRefusal, limits::MAX_COST},
};
use metrics::Counter;

pub const SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
pub const ACCOUNT: HeaderName = HeaderName::from_static("x-auth-account");
pub const KEY: HeaderName = HeaderName::from_static("x-auth-key");
pub const SCOPES: HeaderName = HeaderName::from_static("x-auth-scopes");
/// Scopes a gateway requires for the route it asks about, space-separated; also
/// `?scope=` on the auth URL.
pub const REQUIRED_SCOPES: HeaderName = HeaderName::from_static("x-required-scopes");

/// Answers forward authentication in front of the router (see the module comment).
#[derive(Clone)]
pub struct ForwardAuthLayer {
    shared: Arc<Shared>,
}

/// What every forward-auth request needs, behind one pointer.
struct Shared {
    auth: Arc<AuthService>,
    outcomes: Outcomes,
}

impl ForwardAuthLayer {
    pub fn new(auth: Arc<AuthService>) -> Self {
        Self { shared: Arc::new(Shared { auth, outcomes: Outcomes::register() }) }
    }
}

impl<S> Layer<S> for ForwardAuthLayer {
    type Service = ForwardAuth<S>;

    fn layer(&self, router: S) -> ForwardAuth<S> {
        ForwardAuth { shared: self.shared.clone(), router }
    }
}

/// `keygate_verifications_total`: a token that passed, no token at all, one refused (by
/// its `TokenRefusal`, or for a scope it lacks), a request that named no valid scopes, or
/// no answer from the store.
struct Outcomes {
    valid: Counter,
    missing: Counter,
    insufficient_scope: Counter,
    quota_exceeded: Counter,
    bad_request: Counter,
    error: Counter,
    refused: Counters<TokenRefusal>,
}

impl Outcomes {
    fn register() -> Self {
        let outcome = |label: &'static str| metrics::counter!(names::VERIFICATIONS, "outcome" => label);
        Self {
            valid: outcome("valid"),
            missing: outcome("missing"),
            insufficient_scope: outcome("insufficient_scope"),
            quota_exceeded: outcome("quota_exceeded"),
            bad_request: outcome("bad_request"),
            error: outcome("error"),
            refused: Counters::register(names::VERIFICATIONS, "outcome", &[]),
        }
    }

    fn record(&self, result: &Result<Response, ApiError>, refusal: Option<TokenRefusal>) {
        match (result, refusal) {
            (Ok(_), _) => self.valid.increment(1),
            (Err(_), Some(refusal)) => self.refused.increment(refusal),
            (Err(ApiError::MissingToken), None) => self.missing.increment(1),
            // A header that holds no well-formed token.
            (Err(ApiError::InvalidToken), None) => self.refused.increment(TokenRefusal::Invalid),
            (Err(ApiError::InsufficientScope(_)), None) => self.insufficient_scope.increment(1),
            (Err(ApiError::QuotaExceeded { .. }), None) => self.quota_exceeded.increment(1),
            (Err(ApiError::BadRequest(_)), None) => self.bad_request.increment(1),
            (Err(_), None) => self.error.increment(1),
        }
    }
}

/// The service [`ForwardAuthLayer`] makes: forward-authentication paths are answered here,
/// everything else goes to `router`.
#[derive(Clone)]
pub struct ForwardAuth<S> {
    shared: Arc<Shared>,
    router: S,
}

impl<S> Service<Request> for ForwardAuth<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.router.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if is_forward_auth(request.uri().path()) {
            Either::Left(Box::pin(answer(self.shared.clone(), request)))
        } else {
            Either::Right(self.router.call(request))
        }
    }
}

/// `/auth/verify`, `/auth/verify/` and anything under it, whatever the method: the whole
/// routing table of [`ForwardAuth`].
pub(super) fn is_forward_auth(path: &str) -> bool {
    path.strip_prefix("/auth/verify").is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The response to a forward-authentication request, success or refusal, counted.
async fn answer(shared: Arc<Shared>, request: Request) -> Result<Response, Infallible> {
    let mut refusal = None;
    let verified = verify(&shared.auth, request.headers(), request.uri().query(), &mut refusal).await;
    shared.outcomes.record(&verified, refusal);
    Ok(verified.unwrap_or_else(IntoResponse::into_response))
}

/// Forward authentication's part of the OpenAPI document, which `http::app` merges into
/// the routes' part: no route carries it, as the router never sees these requests.
#[derive(OpenApi)]
#[openapi(
    paths(verify),
    modifiers(&AllMethods, &BearerScheme),
    tags((name = "gateway", description = "Forward authentication for API gateways")),
)]
pub struct ForwardAuthDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, doc: &mut Doc) {
        doc.components.get_or_insert_with(Default::default).add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from POST /auth/login or POST /oauth/token"))
                    .build(),
            ),
        );
    }
}

/// Forward authentication: 200 for a live bearer token, with its identity in headers.
///
/// Checks the signature (algorithm pinned to our key), `iss`, `aud`, `exp` and `nbf` (with
/// a small leeway), that the key still exists, is enabled and has not expired, and that the
/// token is not revoked. A gateway may require scopes for the route (`?scope=` on the auth
/// URL, or `X-Required-Scopes`; all of them must be held). Accepts every method, and any
/// sub-path under `/auth/verify/`.
#[utoipa::path(
    get,
    path = "/auth/verify",
    tag = "gateway",
    security(("bearer" = [])),
    params(
        ("scope" = Option<String>, Query, description = "Space-separated scopes the token must all hold (RFC 6749 scope tokens)",
            example = "orders:read orders:write"),
        ("X-Required-Scopes" = Option<String>, Header, description = "The same, as a header; both may be given"),
        ("cost" = Option<u32>, Query, description = "What the request counts against the token's limits and credits, 0 to 1000 (default 1)",
            minimum = 0, maximum = 1000),
        ("X-Request-Cost" = Option<u32>, Header, description = "The same, as a header (it wins over the query)"),
    ),
    responses(
        (status = 200, description = "The token is live; copy the X-Auth-* headers onto the upstream request",
            headers(
                ("X-Auth-Subject" = String, description = "The key's `api_key_ref` (the token's `sub`)"),
                ("X-Auth-Account" = String, description = "The account id"),
                ("X-Auth-Key" = String, description = "The API key the token was issued to"),
                ("X-Auth-Scopes" = String, description = "The token's scopes that its key still holds, space-separated"),
                ("RateLimit-Policy" = String, description = "When the key or its owner has limits or credits: each policy, as a Structured Field list (`\"burst\";q=100;w=60`), draft-ietf-httpapi-ratelimit-headers-10"),
                ("RateLimit" = String, description = "Where each policy stands after this request (`\"burst\";r=42;t=17`)"),
            )),
        (status = 429, description = "Over a limit, or out of credits: nothing was counted. A `quota-exceeded` problem naming the violated policies",
            body = Problem, content_type = "application/problem+json",
            headers(
                ("Retry-After" = u64, description = "Seconds, never less than the violated policies' `t`"),
                ("RateLimit-Policy" = String, description = "As on a 200"),
                ("RateLimit" = String, description = "As on a 200"),
            )),
        (status = 400, description = "The required scopes are not a list of scope tokens, or the cost is not 0 to 1000", body = Problem,
            content_type = "application/problem+json"),
        (status = 403, description = "The token lacks a required scope", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"keygate\", error=\"insufficient_scope\", scope=\"…\"` (RFC 6750 §3.1)"))),
        (status = 401, description = "No token, or one that is invalid, expired, revoked or whose key was deleted",
            body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"keygate\"`, with `error=\"invalid_token\"` when a token was given"))),
        (status = 503, description = "The store is unavailable; retry", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn verify(
    auth: &AuthService,
    headers: &HeaderMap,
    query: Option<&str>,
    refusal: &mut Option<TokenRefusal>,
) -> Result<Response, ApiError> {
    let token = bearer_token(headers)?;
    let verified = auth.verify_token(token).await.inspect_err(|e| {
        if let AuthError::InvalidToken(why) = e {
            *refusal = Some(*why);
        }
    })?;
    let query = Query::parse(query);
    if let Some(required) = required_scopes(headers, &query)? {
        if !required.is_subset_of(&verified.scopes) {
            return Err(ApiError::InsufficientScope(required));
        }
    }
    let cost = request_cost(headers, &query)?;
    // A key that nothing limits costs this one branch.
    let limited = match verified.quota {
        None => None,
        Some(_) => auth.count(&verified, cost).await?.and_then(|a| ratelimit::headers(&a.policies)),
    };
    // Every value comes from a claim we signed and then parsed, so it is a valid header;
    // `sub` and `acc` are the key ref and account id as they were written.
    let value = |s: &str| HeaderValue::from_str(s).map_err(|e| ApiError::Internal(e.into()));
    let claims = &verified.token.claims;
    // Room for the envelope's headers too, so the map is allocated once and never grown.
    let mut headers = HeaderMap::with_capacity(6 + envelope::ADDED_HEADERS);
    headers.insert(SUBJECT, value(&claims.sub)?);
    headers.insert(ACCOUNT, value(&claims.acc)?);
    headers.insert(KEY, value(&claims.api_key)?);
    headers.insert(SCOPES, value(verified.scopes.as_str())?);
    ratelimit::insert(&mut headers, limited);
    // Not `(StatusCode, HeaderMap)`, which would copy the headers into a fresh map.
    let mut response = Response::new(Body::empty());
    *response.headers_mut() = headers;
    Ok(response)
}

/// What the auth URL's query says: its `scope` parameters, and its first `cost`.
#[derive(Default)]
struct Query<'q> {
    scopes: Vec<Cow<'q, str>>,
    cost: Option<Cow<'q, str>>,
}

impl<'q> Query<'q> {
    /// One pass over the query, whatever else it holds.
    fn parse(query: Option<&'q str>) -> Self {
        let mut parsed = Self::default();
        for (name, value) in query.into_iter().flat_map(|q| form_urlencoded::parse(q.as_bytes())) {
            match &*name {
                "scope" => parsed.scopes.push(value),
                "cost" if parsed.cost.is_none() => parsed.cost = Some(value),
                _ => {}
            }
        }
        parsed
    }
}

/// The scopes a gateway requires: every `scope` query parameter and `X-Required-Scopes`
/// header together; `None` when it names none.
fn required_scopes(headers: &HeaderMap, query: &Query<'_>) -> Result<Option<Scopes>, ApiError> {
    let mut lists: Vec<&str> = query.scopes.iter().map(|s| &**s).collect();
    for value in headers.get_all(REQUIRED_SCOPES) {
        lists.push(value.to_str().map_err(|_| bad_scopes())?);
    }
    if lists.is_empty() {
        return Ok(None);
    }
    let scopes = Scopes::parse_list(&lists.join(" ")).map_err(|_| bad_scopes())?;
    Ok((!scopes.is_empty()).then_some(scopes))
}

/// What the gateway charges for the request: `?cost=N` or `X-Request-Cost: N`, 0 to 1000;
/// 1 when it says nothing.
fn request_cost(headers: &HeaderMap, query: &Query<'_>) -> Result<u64, ApiError> {
    let bad = || ApiError::BadRequest("cost (query) and X-Request-Cost: a whole number from 0 to 1000".into());
    let parse = |raw: &str| raw.trim().parse::<u64>().ok().filter(|n| *n <= MAX_COST).ok_or_else(bad);
    if let Some(value) = headers.get(ratelimit::REQUEST_COST) {
        return parse(value.to_str().map_err(|_| bad())?);
    }
    query.cost.as_deref().map_or(Ok(1), parse)
}

fn bad_scopes() -> ApiError {
    ApiError::BadRequest(
        "scope (query) and X-Required-Scopes: must be space-separated RFC 6749 scope tokens, at most 50".into(),
    )
}

/// The token from `Authorization: Bearer <token>` (RFC 6750 §2.1). No header, or another
/// scheme, is "no credentials"; anything else that is not exactly one bearer token is an
/// invalid one. Always a 401, never a 400: `auth_request` turns any other status into a 500.
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(ApiError::MissingToken);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidToken);
    }
    let value = value.as_bytes().trim_ascii();
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ').unwrap_or(value.len()));
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        let printable = value.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
        return Err(if printable { ApiError::MissingToken } else { ApiError::InvalidToken });
    }
    let token = token.trim_ascii();
    // Every byte, without an early exit, so that the compiler vectorises the loop: it runs
    // over the whole token on every verification, where a byte-at-a-time scan showed.
    let foreign = token.iter().fold(0u8, |acc, &b| acc | u8::from(!is_b64token(b)));
    if token.is_empty() || foreign != 0 {
        return Err(ApiError::InvalidToken);
    }
    std::str::from_utf8(token).map_err(|_| ApiError::InvalidToken)
}

/// RFC 6750's `b64token` alphabet (padding included), which holds every compact JWS.
/// Branch-free (`|`, not `||`): see the caller.
fn is_b64token(b: u8) -> bool {
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter | digit | (b == b'-') | (b == b'.') | (b == b'_') | (b == b'~') | (b == b'+') | (b == b'/') | (b == b'=')
}

/// [`ForwardAuth`] answers every method on `/auth/verify` and `/auth/verify/{path}`; utoipa
/// describes one operation per function, so this copies the GET description to the other
/// methods and to the sub-path, each with its own operation id, so the document says what
/// the server does.
struct AllMethods;

impl Modify for AllMethods {
    fn modify(&self, doc: &mut Doc) {
        let Some(get) = doc.paths.paths.get("/auth/verify").and_then(|item| item.get.clone()) else {
            return;
        };
        let with_id = |op: &Operation, id: String| {
            let mut op = op.clone();
            op.operation_id = Some(id);
            op
        };
        let fill = |item: &mut PathItem, op: &Operation, base: &str| {
            item.get = Some(with_id(op, format!("{base}_get")));
            item.head = Some(with_id(op, format!("{base}_head")));
            item.post = Some(with_id(op, format!("{base}_post")));
            item.put = Some(with_id(op, format!("{base}_put")));
            item.patch = Some(with_id(op, format!("{base}_patch")));
            item.delete = Some(with_id(op, format!("{base}_delete")));
            item.options = Some(with_id(op, format!("{base}_options")));
        };

        if let Some(item) = doc.paths.paths.get_mut("/auth/verify") {
            fill(item, &get, "verify");
        }
        let mut sub = get.clone();
        let param = ParameterBuilder::new()
            .name("path")
            .parameter_in(ParameterIn::Path)
            .required(utoipa::openapi::Required::True)
            .description(Some("Any sub-path, e.g. the original request path Envoy appends"))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String).min_length(Some(1))))
            .build();
        sub.parameters.get_or_insert_with(Vec::new).push(param);
        let mut item = PathItem::default();
        fill(&mut item, &sub, "verify_subpath");
        doc.paths.paths.insert("/auth/verify/{path}".to_owned(), item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token(&auth(&["Bearer abc.def.ghi"])).unwrap(), "abc.def.ghi");
        assert_eq!(bearer_token(&auth(&["bearer  abc"])).unwrap(), "abc");
        assert!(matches!(bearer_token(&auth(&[])), Err(ApiError::MissingToken)));
        assert!(matches!(bearer_token(&auth(&["Basic YTpi"])), Err(ApiError::MissingToken)));
        assert!(matches!(bearer_token(&auth(&["Bearer"])), Err(ApiError::InvalidToken)));
        assert!(matches!(bearer_token(&auth(&["Bearer a b"])), Err(ApiError::InvalidToken)));
        assert!(matches!(bearer_token(&auth(&["Bearer a", "Bearer b"])), Err(ApiError::InvalidToken)));
        assert!(matches!(bearer_token(&auth(&["Bearer a,b"])), Err(ApiError::InvalidToken)));
        assert!(matches!(bearer_token(&auth(&["Bearer a\tb"])), Err(ApiError::InvalidToken)));
        let obs_text = HeaderValue::from_bytes(b"Basic \xff").unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, obs_text);
        assert!(matches!(bearer_token(&h), Err(ApiError::InvalidToken)));
    }

    /// What the router's `/auth/verify`, `/auth/verify/` and `/auth/verify/{*path}` routes
    /// matched when they were routes.
    #[test]
    fn forward_auth_paths_are_the_verify_path_and_those_under_it() {
        for path in ["/auth/verify", "/auth/verify/", "/auth/verify/x", "/auth/verify/api/v1/items", "/auth/verify//"] {
            assert!(is_forward_auth(path), "{path}");
        }
        for path in
            ["/auth/verifyx", "/auth/verif", "/auth", "/", "/Auth/verify", "/auth/verify%2F", "/x/auth/verify", ""]
        {
            assert!(!is_forward_auth(path), "{path}");
        }
    }

    #[test]
    fn required_scopes_come_from_the_query_and_the_header_together() {
        let required = |h: &HeaderMap, query: Option<&str>| required_scopes(h, &Query::parse(query));
        let none = HeaderMap::new();
        assert_eq!(required(&none, None).unwrap(), None);
        assert_eq!(required(&none, Some("x=1")).unwrap(), None);
        assert_eq!(required(&none, Some("scope=")).unwrap(), None);
        let got = required(&none, Some("scope=orders:read%20orders:write&x=1")).unwrap().unwrap();
        assert_eq!(got.as_str(), "orders:read orders:write");
        let got = required(&none, Some("scope=orders:read&cost=3&scope=orders:write")).unwrap().unwrap();
        assert_eq!(got.as_str(), "orders:read orders:write");
        let mut h = HeaderMap::new();
        h.insert(REQUIRED_SCOPES, HeaderValue::from_static("admin orders:read"));
        let got = required(&h, Some("scope=orders:read+orders:write")).unwrap().unwrap();
        assert_eq!(got.as_str(), "orders:read orders:write admin");
        assert!(required(&none, Some("scope=%22quoted%22")).is_err());
    }

    #[test]
    fn the_cost_comes_from_the_header_or_else_the_querys_first_cost() {
        let cost = |h: &HeaderMap, query: Option<&str>| request_cost(h, &Query::parse(query)).ok();
        let none = HeaderMap::new();
        assert_eq!(cost(&none, None), Some(1));
        assert_eq!(cost(&none, Some("scope=a&xcost=5")), Some(1));
        assert_eq!(cost(&none, Some("scope=a&cost=5&cost=7")), Some(5));
        assert_eq!(cost(&none, Some("cost=%201000")), Some(1000));
        assert_eq!(cost(&none, Some("cost=1001")), None);
        assert_eq!(cost(&none, Some("cost=")), None);
        let mut h = HeaderMap::new();
        h.insert(ratelimit::REQUEST_COST, HeaderValue::from_static("0"));
        assert_eq!(cost(&h, Some("cost=5")), Some(0));
    }

    #[test]
    fn the_b64token_alphabet_is_exactly_rfc_6750s() {
        for b in 0..=u8::MAX {
            let expected = b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
            assert_eq!(is_b64token(b), expected, "byte {b:#04x}");
        }
    }

    proptest::proptest! {
        /// Any header value: never a panic, and a token that comes out is one non-empty
        /// b64token that was in the header.
        #[test]
        fn any_authorization_header_parses_or_is_refused(value in "[ -~]{0,200}") {
            if let Ok(header) = HeaderValue::from_str(&value) {
                let mut h = HeaderMap::new();
                h.insert(header::AUTHORIZATION, header);
                if let Ok(token) = bearer_token(&h) {
                    proptest::prop_assert!(!token.is_empty() && token.bytes().all(is_b64token));
                    proptest::prop_assert!(value.contains(token));
                }
            }
        }

        #[test]
        fn bearer_round_trips(token in "[A-Za-z0-9._~+/-]{1,100}=*") {
            let h = auth(&[&format!("Bearer {token}")]);
            proptest::prop_assert_eq!(bearer_token(&h).unwrap(), token.as_str());
        }
    }
}
