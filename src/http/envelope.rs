//! What wraps every request and response: a request id, a span, the body-size gate, the
//! request timeout, panic containment, problem+json for the errors axum produces itself,
//! the security headers, and a log line for every failure. `http::app` applies it as the
//! outermost layer, around forward authentication and the router alike.
//!
//! One hand-written layer rather than a stack of tower-http ones: gateways call
//! `/auth/verify` on every API request, and ten nested middleware futures, a UUID from the
//! kernel per request and their allocations would cost more than the handler
//! (docs/benchmarks.md).

use std::{
    convert::Infallible,
    future::Ready,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::{
    body::HttpBody,
    extract::Request,
    http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use futures_util::{
    FutureExt,
    future::{CatchUnwind, Either},
};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};
use tracing::Span;

use super::{MAX_BODY, error};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Every response that could be a document, unless it carries a policy of its own (the
/// console's pages, which load their script and style).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A caller's own request id is kept (gateways pass theirs along) up to this length.
const MAX_REQUEST_ID: usize = 128;
/// How many headers `finish` adds to every response, for handlers that size their map.
pub const ADDED_HEADERS: usize = 6;

/// Wraps a service in the [`Envelope`].
#[derive(Debug, Clone, Copy)]
pub struct EnvelopeLayer {
    timeout: Duration,
}

impl EnvelopeLayer {
    pub fn new() -> Self {
        Self { timeout: REQUEST_TIMEOUT }
    }
}

impl Default for EnvelopeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for EnvelopeLayer {
    type Service = Envelope<S>;

    fn layer(&self, inner: S) -> Envelope<S> {
        Envelope { inner, timeout: self.timeout }
    }
}

/// The service [`EnvelopeLayer`] makes.
#[derive(Clone)]
pub struct Envelope<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<Request> for Envelope<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, EnvelopeFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let id = request_id(&request);
        // Method and path only: headers and query strings may carry credentials.
        // At debug: a span is a sizeable share of what a verification costs, and at the
        // default level a request logs nothing but its failure, whose line names the
        // request itself.
        let span = tracing::debug_span!(
            "request",
            id = id.to_str().unwrap_or_default(),
            method = %request.method(),
            path = %request.uri().path(),
        );
        // Refused from `Content-Length` alone, before any handler or extractor runs; chunked
        // bodies are capped by `DefaultBodyLimit` as they are read.
        if declared_length(&request).is_some_and(|len| len > MAX_BODY as u64) {
            let response = error::ApiError::PayloadTooLarge.into_response();
            return Either::Left(std::future::ready(Ok(finish(response, id, request.method()))));
        }
        let started = Instant::now();
        let method = request.method().clone();
        let uri = request.uri().clone();
        let handled = span.in_scope(|| self.inner.call(request));
        Either::Right(EnvelopeFuture {
            handled: AssertUnwindSafe(handled).catch_unwind(),
            deadline: None,
            timeout: self.timeout,
            started,
            span,
            id,
            method,
            uri,
        })
    }
}

pin_project! {
    /// The inner service's answer, enveloped. Written out rather than an `async` block, which
    /// could not be named without boxing it: one allocation per request less.
    pub struct EnvelopeFuture<F> {
        #[pin]
        handled: CatchUnwind<AssertUnwindSafe<F>>,
        // Armed only once a poll leaves the request waiting, which a verification's first
        // never does: registering a timer per request is not free.
        deadline: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
        started: Instant,
        span: Span,
        id: HeaderValue,
        method: Method,
        uri: Uri,
    }
}

impl<F> Future for EnvelopeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut response = match this.handled.poll(cx) {
            Poll::Ready(Ok(Ok(response))) => response,
            Poll::Ready(Ok(Err(infallible))) => match infallible {},
            Poll::Ready(Err(_panic)) => {
                // What panicked and where, the panic hook has already written.
                let mut response = error::problem(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
                let cause = anyhow::anyhow!("handler panicked");
                response.extensions_mut().insert(error::FailureCause(cause.into()));
                response
            }
            Poll::Pending => {
                let (started, timeout) = (*this.started, *this.timeout);
                let deadline =
                    this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until((started + timeout).into())));
                ready!(deadline.as_mut().poll(cx));
                StatusCode::REQUEST_TIMEOUT.into_response()
            }
        };
        let status = response.status();
        if status.is_server_error() {
            let latency_ms = this.started.elapsed().as_secs_f64() * 1000.0;
            let cause = response.extensions_mut().remove::<error::FailureCause>();
            let error = cause.as_ref().map(|c| tracing::field::debug(&c.0));
            let (id, method, path, status) =
                (this.id.to_str().unwrap_or_default(), &*this.method, this.uri.path(), status.as_u16());
            // A 503 is a dependency's outage, answered with Retry-After; anything else is ours.
            if status == 503 {
                tracing::warn!(id, %method, path, status, latency_ms, error, "response failed");
            } else {
                tracing::error!(id, %method, path, status, latency_ms, error, "response failed");
            }
        } else {
            // The clock is read only if the line is written.
            tracing::debug!(
                status = status.as_u16(),
                latency_ms = this.started.elapsed().as_secs_f64() * 1000.0,
                "response"
            );
        }
        let id = std::mem::replace(this.id, HeaderValue::from_static(""));
        Poll::Ready(Ok(finish(response, id, this.method)))
    }
}

fn declared_length(request: &Request) -> Option<u64> {
    request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The caller's `X-Request-Id` when it has a sane one, else a new one: a random per-process
/// prefix and a counter. Ids correlate log lines; they are not secrets, so they need not be
/// unpredictable, only unique — and drawing a UUID from the kernel per request is not free.
fn request_id(request: &Request) -> HeaderValue {
    if let Some(given) = request.headers().get(X_REQUEST_ID)
        && !given.is_empty()
        && given.len() <= MAX_REQUEST_ID
        && given.to_str().is_ok()
    {
        return given.clone();
    }
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // Uniqueness across replicas only; a failed draw still leaves the counter.
        let _ = getrandom::fill(&mut bytes);
        u64::from_le_bytes(bytes)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `<prefix>-<counter>` in hex, written by hand: `format!` showed in a verification's profile.
    // The counter's low 48 bits: they wrap after 89 years at 100 000 requests a second.
    let mut id = [b'-'; 29];
    hex(prefix, &mut id[..16]);
    hex(n, &mut id[17..]);
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `n` as lowercase hex, right-aligned in `out` and zero-padded.
fn hex(mut n: u64, out: &mut [u8]) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

fn finish(response: Response, id: HeaderValue, method: &Method) -> Response {
    let mut response = problem_for_bare_errors(response);
    // A success without a body (a forward-auth 200, a logout's 204) holds no document for a
    // browser to sniff, render, frame or follow links from, so the headers that govern one
    // would be bytes for nothing on the path gateways call per API request
    // (docs/benchmarks.md). Errors keep them: a gateway relays a
    // denial to the browser as it is. So does HEAD, whose answer stands for a GET's.
    let bodiless = response.status().is_success() && response.body().size_hint().exact() == Some(0);
    let document = !bodiless || method == Method::HEAD;
    let headers = response.headers_mut();
    headers.reserve(ADDED_HEADERS);
    headers.insert(X_REQUEST_ID, id);
    // Tokens, passwords and session state must never sit in a shared cache; the few
    // cacheable responses (JWKS) say so themselves.
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if document {
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        // Should an API response ever be rendered (an error opened in a browser), it may load
        // nothing, run nothing and be framed by no one (clickjacking). The console's answers
        // set their own, as strict but for their own script and style.
        if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
        }
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

/// Gives the errors axum and tower produce themselves (unknown route 404, wrong method 405
/// with its `Allow`, timeout 408) the same problem+json body as ours, keeping their headers.
fn problem_for_bare_errors(response: Response) -> Response {
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
    // The router has sized the body it made; that length is not the problem's.
    parts.headers.remove(header::CONTENT_LENGTH);
    let (problem_parts, body) = error::problem(status, detail).into_parts();
    parts.headers.extend(problem_parts.headers);
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{Router, body::Body, routing::get};
    use tower::ServiceExt;

    use super::*;

    /// The log, as the subscriber writes it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl tracing_subscriber::fmt::MakeWriter<'_> for Captured {
        type Writer = Self;
        fn make_writer(&self) -> Self {
            self.clone()
        }
    }

    async fn failing() -> Result<(), error::ApiError> {
        Err(error::ApiError::Internal(anyhow::anyhow!("disk on fire")))
    }

    async fn panicking() -> &'static str {
        panic!("boom")
    }

    /// The request timeout is armed only when a first poll leaves the handler waiting: one
    /// that waits and finishes in time is answered, one that waits too long gets a 408.
    #[tokio::test]
    async fn a_handler_that_waits_is_answered_or_timed_out() {
        let router = Router::new()
            .route("/yield", get(|| async { tokio::task::yield_now().await }))
            .route("/hang", get(|| tokio::time::sleep(Duration::from_secs(3600))));
        let app = EnvelopeLayer { timeout: Duration::from_millis(50) }.layer(router);
        let get = |path| {
            let call = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap());
            // A failure here is a test that fails, not one that hangs.
            async move { tokio::time::timeout(Duration::from_secs(10), call).await.unwrap().unwrap() }
        };
        assert_eq!(get("/yield").await.status(), StatusCode::OK);
        let response = get("/hang").await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert!(response.headers().contains_key(X_REQUEST_ID));
    }

    #[test]
    fn added_headers_counts_what_finish_adds() {
        let response = finish(Response::new(Body::from("{}")), HeaderValue::from_static("id"), &Method::GET);
        assert_eq!(response.headers().len(), ADDED_HEADERS);
    }

    #[test]
    fn only_a_bodiless_success_goes_without_the_document_headers() {
        let document_headers = |status: StatusCode, body: Body, method: Method| {
            let mut response = Response::new(body);
            *response.status_mut() = status;
            let response = finish(response, HeaderValue::from_static("id"), &method);
            let headers = response.headers();
            assert!(headers.contains_key(X_REQUEST_ID) && headers.contains_key(header::CACHE_CONTROL));
            let present = [
                header::CONTENT_SECURITY_POLICY,
                header::X_FRAME_OPTIONS,
                header::X_CONTENT_TYPE_OPTIONS,
                header::REFERRER_POLICY,
            ]
            .map(|name| headers.contains_key(name));
            assert!(present.iter().all(|&p| p == present[0]), "{present:?}");
            present[0]
        };
        assert!(!document_headers(StatusCode::OK, Body::empty(), Method::GET));
        assert!(!document_headers(StatusCode::NO_CONTENT, Body::empty(), Method::POST));
        assert!(document_headers(StatusCode::OK, Body::from("{}"), Method::GET));
        assert!(document_headers(StatusCode::OK, Body::empty(), Method::HEAD));
        assert!(document_headers(StatusCode::FOUND, Body::empty(), Method::GET));
        // An empty error gets a problem+json body before the headers are decided.
        assert!(document_headers(StatusCode::UNAUTHORIZED, Body::empty(), Method::GET));
    }

    #[test]
    fn request_ids_are_unique_hex_pairs() {
        let request = || Request::get("/").body(Body::empty()).unwrap();
        let (a, b) = (request_id(&request()), request_id(&request()));
        for id in [&a, &b] {
            let (prefix, counter) = id.to_str().unwrap().split_once('-').unwrap();
            assert_eq!((prefix.len(), counter.len()), (16, 12), "{id:?}");
            assert!(id.to_str().unwrap().bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{id:?}");
        }
        assert_ne!(a, b);
        let mut digits = [0u8; 4];
        hex(0xbeef, &mut digits);
        assert_eq!(&digits, b"beef");
        hex(0x1f, &mut digits);
        assert_eq!(&digits, b"001f");
    }

    /// The request span is off at the default level, so the failure's own line must say
    /// which request it was and why it failed; the client learns neither the cause nor
    /// anything but a problem body.
    #[tokio::test]
    async fn a_failed_request_is_logged_with_its_id_and_cause_at_the_default_level() {
        let logs = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let app =
            EnvelopeLayer::new().layer(Router::new().route("/fail", get(failing)).route("/panic", get(panicking)));

        for (path, cause) in [("/fail", "disk on fire"), ("/panic", "handler panicked")] {
            let id = format!("test{}", path.replace('/', "-"));
            let request = Request::get(path).header("x-request-id", &id).body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(response.headers()["x-request-id"], id.as_str());
            let body = axum::body::to_bytes(response.into_body(), MAX_BODY).await.unwrap();
            let body = String::from_utf8(body.to_vec()).unwrap();
            assert!(body.contains("internal error") && !body.contains(cause), "{body}");

            let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
            let line = text.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("no line for {id}:\n{text}"));
            for part in ["ERROR", "response failed", "GET", path, "500", cause] {
                assert!(line.contains(part), "{part} missing: {line}");
            }
        }
    }
}
