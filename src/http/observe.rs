//! What every request leaves behind for operators: its count and duration in the HTTP
//! metrics, and (unless `KEYGATE_ACCESS_LOG=false`) one access-log line at info. Both name
//! the route by its template (`/auth/user/{api_key_ref}`), never by the path asked for,
//! which may hold a key ref or anything a client sends; query strings are never looked at.
//!
//! The outermost layer in `http::app`, so what the envelope answers by itself (a body too
//! large, a timeout) is counted too. Recording is a route look-up, two clock readings and
//! atomic adds on handles registered when the app is built: a (route, method, status)
//! counter is registered on its first use and kept.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::{
    extract::{ConnectInfo, Request},
    http::{Method, StatusCode},
    response::Response,
};
use metrics::{Counter, Histogram};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{provenance::SecurityPolicy, verify};
use crate::{domain::ClientAddr, monitoring as names};

/// The route label of requests no route matches: one value, whatever was asked for.
const UNMATCHED: &str = "unmatched";
/// Where forward authentication is counted, whichever sub-path a gateway appends.
const FORWARD_AUTH: &str = "/auth/verify";
/// The methods counted by name; any other is counted as `other`.
const METHODS: [(Method, &str); 7] = [
    (Method::GET, "GET"),
    (Method::HEAD, "HEAD"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::DELETE, "DELETE"),
    (Method::PATCH, "PATCH"),
    (Method::OPTIONS, "OPTIONS"),
];
const OTHER_METHOD: usize = METHODS.len();

/// The templates requests are counted under, with their handles.
pub struct Routes {
    matcher: matchit::Router<usize>,
    routes: Vec<Route>,
    forward_auth: usize,
    unmatched: usize,
}

struct Route {
    template: String,
    duration: Histogram,
    /// By method, then status (`STATUSES`), registered on first use.
    requests: Box<[OnceLock<Counter>]>,
}

impl Route {
    fn new(template: String) -> Self {
        let duration = metrics::histogram!(names::HTTP_DURATION, "route" => template.clone());
        let requests = (0..(METHODS.len() + 1) * STATUSES.len()).map(|_| OnceLock::new()).collect();
        Self { template, duration, requests }
    }

    fn record(&self, method: usize, status: StatusCode, seconds: f64) {
        self.duration.record(seconds);
        let method_label = METHODS.get(method).map_or("other", |(_, label)| label);
        let register = || {
            let status = status_label(status);
            metrics::counter!(names::HTTP_REQUESTS, "route" => self.template.clone(), "method" => method_label, "status" => status)
        };
        match STATUSES.iter().position(|(code, _)| *code == status.as_u16()) {
            Some(slot) => self.requests[method * STATUSES.len() + slot].get_or_init(register).increment(1),
            None => register().increment(1),
        }
    }
}

/// The status as its label: a `'static` text for the statuses keygate answers with.
fn status_label(status: StatusCode) -> metrics::SharedString {
    match STATUSES.iter().find(|(code, _)| *code == status.as_u16()) {
        Some((_, label)) => metrics::SharedString::const_str(label),
        None => metrics::SharedString::from(status.as_u16().to_string()),
    }
}

/// The statuses keygate answers with, each with a counter slot per route and method; a
/// status not listed is counted through the registry's look-up instead.
const STATUSES: [(u16, &str); 19] = [
    (200, "200"),
    (201, "201"),
    (204, "204"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (406, "406"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (501, "501"),
    (503, "503"),
];

impl Routes {
    /// The routes `templates` names (in the router's `{param}` syntax), forward
    /// authentication and the unmatched rest.
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a str>) -> Self {
        let mut matcher = matchit::Router::new();
        let mut routes = Vec::new();
        for template in templates {
            // Forward authentication is told apart before matching (see `verify`).
            if template.starts_with(FORWARD_AUTH) {
                continue;
            }
            if matcher.insert(template, routes.len()).is_ok() {
                routes.push(Route::new(template.to_owned()));
            }
        }
        let forward_auth = routes.len();
        routes.push(Route::new(FORWARD_AUTH.to_owned()));
        let unmatched = routes.len();
        routes.push(Route::new(UNMATCHED.to_owned()));
        Self { matcher, routes, forward_auth, unmatched }
    }

    fn of(&self, path: &str) -> usize {
        if verify::is_forward_auth(path) {
            return self.forward_auth;
        }
        self.matcher.at(path).map_or(self.unmatched, |found| *found.value)
    }
}

/// Applies [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

struct Shared {
    routes: Routes,
    access_log: bool,
    policy: Arc<SecurityPolicy>,
}

impl ObserveLayer {
    pub fn new(routes: Routes, access_log: bool, policy: Arc<SecurityPolicy>) -> Self {
        Self { shared: Arc::new(Shared { routes, access_log, policy }) }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, shared: self.shared.clone() }
    }
}

/// The service [`ObserveLayer`] makes.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let route = self.shared.routes.of(request.uri().path());
        let method = METHODS.iter().position(|(m, _)| m == request.method()).unwrap_or(OTHER_METHOD);
        let client = self.shared.access_log.then(|| client_of(&request, &self.shared.policy));
        ObserveFuture { inner: self.inner.call(request), shared: self.shared.clone(), started, route, method, client }
    }
}

/// The client an access-log line names: the socket peer, or whom a trusted proxy names.
fn client_of(request: &Request, policy: &SecurityPolicy) -> ClientAddr {
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() else {
        return ClientAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    };
    policy.trusted_proxies.client_addr(peer.ip(), request.headers().get_all("x-forwarded-for"))
}

pin_project! {
    /// The inner service's answer, recorded as it is handed out.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        shared: Arc<Shared>,
        started: Instant,
        route: usize,
        method: usize,
        client: Option<ClientAddr>,
    }
}

impl<F> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        let elapsed = this.started.elapsed();
        let status = response.status();
        let route = &this.shared.routes.routes[*this.route];
        route.record(*this.method, status, elapsed.as_secs_f64());
        if let Some(client) = this.client {
            let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let method = METHODS.get(*this.method).map_or("other", |(_, label)| label);
            tracing::info!(
                target: "keygate::access",
                method,
                route = route.template.as_str(),
                status = status.as_u16(),
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                client = %client,
                id,
                "request"
            );
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_counted_under_their_template_and_nothing_else() {
        let routes = Routes::new(["/auth/login", "/auth/user/{api_key_ref}", "/auth/verify", "/auth/verify/{path}"]);
        let template = |path: &str| routes.routes[routes.of(path)].template.as_str();
        assert_eq!(template("/auth/login"), "/auth/login");
        assert_eq!(template("/auth/user/3a343eda-0000"), "/auth/user/{api_key_ref}");
        assert_eq!(template("/auth/verify"), "/auth/verify");
        assert_eq!(template("/auth/verify/api/v1/items"), "/auth/verify");
        for path in ["/", "/auth/user/a/b", "/auth/loginx", "/kgp_secret"] {
            assert_eq!(template(path), UNMATCHED, "{path}");
        }
    }

    #[test]
    fn every_status_slot_is_distinct() {
        let mut sorted = STATUSES;
        sorted.sort_unstable();
        assert!(sorted.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(STATUSES.iter().all(|(code, label)| code.to_string() == *label));
    }
}
