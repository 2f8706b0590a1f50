//! The HTTP/1.1 server: the accept loop, the connection limit and the per-connection
//! timeouts that keep slow or idle clients from holding the server's descriptors.
//!
//! Each connection is watched by its own task. It may be:
//! - *waiting for a request head*: the first request's head must arrive whole within the
//!   header-read timeout of connecting (a client that never sends a byte included), and a
//!   later one's within that timeout of its first byte (slow-loris);
//! - *idle between requests* (keep-alive): closed after the idle timeout, and at once while
//!   the connection limit is reached, so that a new client gets its place;
//! - *serving a request*: its body, if any, must arrive whole within the header-read timeout
//!   of its head (a slow body is a slow-loris too); otherwise never cut while bytes move, and
//!   closed once neither the client nor keygate has moved a byte for the idle timeout (a
//!   stalled request, a client that does not read its answer).
//!
//! hyper's own `header_read_timeout` is not used: its clock also runs while a keep-alive
//! connection waits for its next request, so it cannot give a separate idle timeout.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::extract::ConnectInfo;
use http_body::Body as _;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::TokioIo,
    server::graceful::{GracefulShutdown, Watcher},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, Semaphore},
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::ConnectionSettings;

/// Descriptors kept for everything but client connections: the store's pool (PostgreSQL
/// connections, or SQLite's database, journal and shared-memory files per connection), log
/// files, the listener, the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 256;
/// Without a known descriptor limit (or an unlimited one), the default connection limit.
const FALLBACK_MAX_CONNECTIONS: u64 = 65_536;
/// How long the accept loop waits at most after an error such as EMFILE before retrying.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The connection limits, resolved against the process's descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Limits {
    /// Raises the open-file limit to its hard maximum where allowed, then checks the
    /// configured connection limit against it or picks the default below it.
    pub fn resolve(settings: &ConnectionSettings) -> anyhow::Result<Self> {
        let descriptors = raise_descriptor_limit();
        let room = connection_room(descriptors);
        let max_connections = match settings.max_connections {
            Some(n) if n > room => {
                return Err(anyhow::Error::new(crate::config::ConfigError::new(
                    "KEYGATE_MAX_CONNECTIONS",
                    format!(
                        "at most {room} here (the open-file limit {} less descriptors kept for the store and logs)",
                        descriptors.map_or_else(|| "unknown".to_owned(), |d| d.to_string())
                    ),
                )));
            }
            Some(n) => n,
            None => room,
        };
        tracing::info!(max_connections, open_files = descriptors, "connection limit");
        Ok(Self {
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        })
    }
}

/// How many client connections fit below `descriptors` open files.
fn connection_room(descriptors: Option<u64>) -> u64 {
    match descriptors {
        Some(limit) => limit - RESERVED_DESCRIPTORS.min(limit / 2),
        None => FALLBACK_MAX_CONNECTIONS,
    }
    .max(1)
}

/// The soft `RLIMIT_NOFILE` after raising it to the hard one (`None`: unlimited or unknown).
#[cfg(target_os = "linux")]
fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
        && let Err(e) = setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) })
    {
        tracing::debug!(error = %e, soft, hard, "open-file limit not raised");
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(not(target_os = "linux"))]
fn raise_descriptor_limit() -> Option<u64> {
    None
}

/// Serves `app` on `listener` until `shutdown` completes; then closes the listener, so that
/// no connection is accepted any more, and lets the requests in flight finish, for at most
/// `drain`: those still running then are cut. With `tls`, each connection is a TLS one,
/// whose handshake counts as the first request's head: it must be done within the
/// header-read timeout of connecting.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    S: AppService,
{
    let graceful = accept_until(&listener, app, limits, tls, shutdown).await;
    drop(listener);
    drain_connections(graceful, drain).await;
    Ok(())
}

/// Serves `app` on `listener` until `until` completes and the requests in flight have been
/// answered, keeping the listener open: for what is served before the app proper can be
/// (start-up waiting for the database). Its connections are closed once idle; clients open
/// new ones, to the app that follows.
pub async fn serve_until<S>(
    listener: TcpListener,
    app: S,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    until: impl Future<Output = ()> + Send + 'static,
) -> TcpListener
where
    S: AppService,
{
    let graceful = accept_until(&listener, app, limits, tls, until).await;
    drain_connections(graceful, limits.header_read_timeout).await;
    listener
}

/// What the listener can serve: the app, or the one served while starting.
pub trait AppService:
    tower::Service<
        hyper::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> AppService for S where
    S: tower::Service<
            hyper::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

async fn drain_connections(graceful: GracefulShutdown, limit: Duration) {
    if tokio::time::timeout(limit, graceful.shutdown()).await.is_err() {
        tracing::warn!(limit_s = limit.as_secs(), "requests still in flight at the shutdown timeout were cut");
    }
}

/// The accept loop, until `shutdown`; returns what waits for the open connections.
async fn accept_until<S>(
    listener: &TcpListener,
    app: S,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> GracefulShutdown
where
    S: AppService,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let pressure = Arc::new(Pressure::default());
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // Off (see the module comment): each connection's watchdog keeps time instead.
    http.header_read_timeout(None);
    let mut shutdown = pin!(shutdown);
    let mut full_logged = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if !full_logged {
                    tracing::warn!(
                        max = limits.max_connections,
                        "connection limit reached: closing idle connections, new ones wait"
                    );
                    full_logged = true;
                }
                pressure.set(true);
                let acquired = tokio::select! {
                    permit = permits.clone().acquire_owned() => permit,
                    () = &mut shutdown => break,
                };
                pressure.set(false);
                let Ok(permit) = acquired else { break };
                permit
            }
        };
        if permits.available_permits() > limits.max_connections / 2 {
            full_logged = false;
        }
        let (stream, peer) = tokio::select! {
            accepted = accept(listener) => accepted,
            () = &mut shutdown => break,
        };
        no_delay(&stream);
        let connection = Connection {
            http: http.clone(),
            app: app.clone(),
            peer,
            limits,
            pressure: pressure.clone(),
            activity: Arc::new(Activity::new()),
        };
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let end = match tls {
                None => connection.serve(stream, watcher).await,
                Some(acceptor) => {
                    let deadline = connection.activity.accepted + limits.header_read_timeout;
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection.serve(stream, watcher).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            End::Closed
                        }
                        Err(_) => End::TimedOut,
                    }
                }
            };
            if end == End::TimedOut {
                tracing::debug!(%peer, "connection closed: timed out");
            }
            drop(permit);
        });
    }
    graceful
}

/// One accepted connection, before its first byte of HTTP.
struct Connection<S> {
    http: http1::Builder,
    app: S,
    peer: SocketAddr,
    limits: Limits,
    pressure: Arc<Pressure>,
    activity: Arc<Activity>,
}

impl<S: AppService> Connection<S> {
    /// Serves HTTP/1.1 on `io` (the socket, or the TLS stream over it) until the connection
    /// ends or times out, under `watcher`'s graceful shutdown.
    async fn serve<I>(self, io: I, watcher: Watcher) -> End
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self { http, app, peer, limits, pressure, activity } = self;
        let io = TokioIo::new(Watched { inner: io, activity: activity.clone() });
        let service = hyper::service::service_fn({
            let activity = activity.clone();
            move |request: hyper::Request<Incoming>| {
                let serving = Serving::begin(activity.clone(), !request.body().is_end_stream());
                let mut request =
                    request.map(|body| axum::body::Body::new(Receiving { body, activity: activity.clone() }));
                // What `into_make_service_with_connect_info::<SocketAddr>` inserts.
                request.extensions_mut().insert(ConnectInfo(peer));
                let response = app.clone().oneshot(request);
                async move {
                    let response = response.await;
                    drop(serving);
                    response
                }
            }
        });
        let conn = watcher.watch(http.serve_connection(io, service));
        watch(conn, &activity, &limits, &pressure).await
    }
}

/// Without it Nagle's algorithm holds a small write back while an earlier one is
/// unacknowledged, and the client delays its acknowledgement: answers to pipelined HTTP/1.1
/// requests would wait for the delayed acknowledgement.
pub fn no_delay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
}

/// The next connection. Errors that concern one connection are skipped; others (EMFILE,
/// ENFILE, ENOBUFS) are logged once and retried after a growing pause instead of a busy loop.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::ZERO;
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                if !backoff.is_zero() {
                    tracing::info!("accepting connections again");
                }
                return accepted;
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                if backoff.is_zero() {
                    tracing::warn!(error = %e, "cannot accept connections; retrying");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Set while the accept loop waits for a free connection slot; idle connections then close.
#[derive(Default)]
struct Pressure {
    on: AtomicBool,
    changed: Notify,
}

impl Pressure {
    fn set(&self, on: bool) {
        if self.on.swap(on, Ordering::Relaxed) != on && on {
            self.changed.notify_waiters();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Closed,
    TimedOut,
}

/// Drives `conn` until it ends or its deadline passes; dropping it closes the socket.
async fn watch(
    conn: impl Future<Output = hyper::Result<()>>,
    activity: &Activity,
    limits: &Limits,
    pressure: &Pressure,
) -> End {
    let mut conn = pin!(conn);
    let mut timer = pin!(tokio::time::sleep_until(activity.deadline(limits, false)));
    let mut pressed = pin!(pressure.changed.notified());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended");
            }
            return Poll::Ready(End::Closed);
        }
        // Registers for the next change of pressure (and takes any that happened).
        while pressed.as_mut().poll(cx).is_ready() {
            pressed.set(pressure.changed.notified());
        }
        // Whatever brings a deadline closer happens while `conn` is polled, just above, in
        // this task, or under pressure, which wakes it; a deadline moved later is seen when the
        // timer fires.
        let deadline = activity.deadline(limits, pressure.on.load(Ordering::Relaxed));
        if deadline <= Instant::now() {
            return Poll::Ready(End::TimedOut);
        }
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(End::TimedOut),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// What one connection is doing, as its socket and its requests report it.
struct Activity {
    accepted: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    phase: Phase,
    /// While a request's body is still expected: when its head arrived.
    body_since: Option<Instant>,
    /// The last byte read or written, or request begun or answered.
    last: Instant,
    /// The last write found the socket's buffer full: an answer is still on its way.
    write_blocked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No byte yet.
    Fresh,
    /// Bytes of a request head since `Head`'s instant.
    Head(Instant),
    /// A request is being served.
    Serving,
    /// Between requests.
    Idle,
}

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        let state = State { phase: Phase::Fresh, body_since: None, last: now, write_blocked: false };
        Self { accepted: now, state: Mutex::new(state) }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut state) = self.state.lock() {
            f(&mut state);
        }
    }

    fn read(&self) {
        let now = Instant::now();
        self.update(|s| {
            s.last = now;
            s.phase = match s.phase {
                Phase::Fresh => Phase::Head(self.accepted),
                Phase::Idle => Phase::Head(now),
                other => other,
            };
        });
    }

    fn wrote(&self, blocked: bool) {
        let now = Instant::now();
        self.update(|s| {
            if !blocked {
                s.last = now;
            }
            s.write_blocked = blocked;
        });
    }

    fn deadline(&self, limits: &Limits, under_pressure: bool) -> Instant {
        let Ok(state) = self.state.lock() else { return Instant::now() };
        match state.phase {
            Phase::Fresh => self.accepted + limits.header_read_timeout,
            Phase::Head(since) => since + limits.header_read_timeout,
            Phase::Idle if under_pressure && !state.write_blocked => state.last,
            Phase::Idle => state.last + limits.idle_timeout,
            Phase::Serving => {
                let idle = state.last + limits.idle_timeout;
                state.body_since.map_or(idle, |since| idle.min(since + limits.header_read_timeout))
            }
        }
    }
}

/// Marks a request as being served from its head's arrival until its answer is ready.
struct Serving(Arc<Activity>);

impl Serving {
    fn begin(activity: Arc<Activity>, body_expected: bool) -> Self {
        let now = Instant::now();
        activity.update(|s| {
            s.phase = Phase::Serving;
            s.body_since = body_expected.then_some(now);
            s.last = now;
        });
        Self(activity)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let now = Instant::now();
        self.0.update(|s| {
            s.phase = Phase::Idle;
            s.body_since = None;
            s.last = now;
        });
    }
}

/// A request's body, reporting when it has arrived whole, or is no longer wanted (a handler
/// that answers without reading it).
struct Receiving {
    body: Incoming,
    activity: Arc<Activity>,
}

impl Receiving {
    fn received(&self) {
        self.activity.update(|s| s.body_since = None);
    }
}

impl http_body::Body for Receiving {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            self.received();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.received();
    }
}

/// The socket (or the TLS stream over it), reporting each byte moved to the connection's
/// `Activity`.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(polled.is_pending());
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_stay_below_the_descriptor_limit() {
        assert_eq!(connection_room(Some(1_048_576)), 1_048_576 - RESERVED_DESCRIPTORS);
        assert_eq!(connection_room(Some(1024)), 1024 - RESERVED_DESCRIPTORS);
        // A small limit keeps half for the rest.
        assert_eq!(connection_room(Some(256)), 128);
        assert_eq!(connection_room(Some(1)), 1);
        assert_eq!(connection_room(None), FALLBACK_MAX_CONNECTIONS);
    }

    fn limits() -> Limits {
        Limits { header_read_timeout: Duration::from_secs(2), idle_timeout: Duration::from_secs(5), max_connections: 1 }
    }

    fn last(a: &Activity) -> Instant {
        a.state.lock().unwrap().last
    }

    #[test]
    fn each_phase_has_its_deadline() {
        let limits = limits();
        let a = Activity::new();
        let start = a.accepted;
        // Connected: the head must be whole within the header timeout, first byte or not.
        assert_eq!(a.deadline(&limits, true), start + limits.header_read_timeout);
        a.read();
        assert_eq!(a.deadline(&limits, false), start + limits.header_read_timeout);
        // Serving: bounded only by inactivity, and not cut under pressure.
        let serving = Serving::begin(Arc::new(Activity::new()), false);
        serving.0.wrote(false);
        assert_eq!(serving.0.deadline(&limits, true), last(&serving.0) + limits.idle_timeout);
        serving.0.read();
        assert_eq!(serving.0.deadline(&limits, true), last(&serving.0) + limits.idle_timeout);
        // A body still coming must be whole within the header timeout of the head.
        let uploading = Serving::begin(Arc::new(Activity::new()), true);
        let head = last(&uploading.0);
        assert_eq!(uploading.0.deadline(&limits, false), head + limits.header_read_timeout);
        uploading.0.update(|s| s.body_since = None);
        uploading.0.read();
        assert_eq!(uploading.0.deadline(&limits, false), last(&uploading.0) + limits.idle_timeout);
        // Answered: idle, closed after the idle timeout, or at once under pressure.
        let activity = serving.0.clone();
        drop(serving);
        let answered = last(&activity);
        assert_eq!(activity.deadline(&limits, false), answered + limits.idle_timeout);
        assert_eq!(activity.deadline(&limits, true), answered);
        // Unless its answer is still being written.
        activity.wrote(true);
        assert_eq!(activity.deadline(&limits, true), answered + limits.idle_timeout);
        activity.wrote(false);
        // The next request's first byte starts its own header clock.
        activity.read();
        let first_byte = last(&activity);
        assert_eq!(activity.deadline(&limits, true), first_byte + limits.header_read_timeout);
        activity.read();
        assert_eq!(activity.deadline(&limits, true), first_byte + limits.header_read_timeout);
    }
}
