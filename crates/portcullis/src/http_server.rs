//! Accepting connections and speaking HTTP on them: HTTP/1.1, and HTTP/2 to TLS clients that
//! choose it by ALPN. Whatever the client spoke, the router sees the same request: an
//! origin-form target, exactly one `Host`, one `Cookie` header, version HTTP/1.1 — so every
//! HTTP/2 request takes exactly the path an HTTP/1.1 request takes (canonical path, route,
//! authentication, authorization, CSRF) and is forwarded to HTTP/1.1 upstreams with the
//! framing hyper's client gives any request.
//!
//! Written here rather than `axum::serve`, which runs hyper without a timer: with no timer
//! there is no header timeout, so a client that sends its headers a byte at a time (or an idle
//! keep-alive connection) holds a connection forever. The TLS handshake runs in the
//! connection's own task and must finish within the header timeout too.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;

use portcullis_gateway::forwarded::TrustedProxies;

/// What the HTTP server allows a client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// For the request head; also how long a connection may stay idle.
    pub header_timeout: Duration,
    /// The request head (HTTP/1.1) or the decoded header list (HTTP/2).
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub max_streams: u32,
}

/// Flow-control window of one HTTP/2 stream: how much request body a stream may have in flight
/// before the gateway reads it.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Flow-control window of one HTTP/2 connection: the most unread request body a connection can
/// make the server hold, whatever its number of streams.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams a client may reset before the server has accepted them (the rapid-reset attack,
/// CVE-2023-44487): past it the connection is closed with `ENHANCE_YOUR_CALM`.
const MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's errors before closing the connection.
const MAX_ERROR_RESETS: usize = 256;
/// HTTP/2 PING interval and how long the answer may take: a peer that stops answering is gone.
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The threads that serve client connections, each running its own single-threaded event loop
/// (like nginx's worker processes). A connection stays on the thread it was given: its request,
/// the upstream connection the gateway drives for it (`portcullis-gateway`'s forward pool) and
/// its answer never move between threads, so nothing is handed from one thread to another on
/// the way through — on a work-stealing runtime every readiness of either socket woke a second
/// thread. New connections go to the thread with the fewest open ones.
pub struct Workers {
    threads: Vec<Worker>,
}

struct Worker {
    handle: tokio::runtime::Handle,
    open: Arc<AtomicUsize>,
    /// Dropped with the pool: the thread's event loop then ends (its remaining tasks with it).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Workers {
    /// `count` threads; 0 means one per CPU.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let count = if count == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            count
        };
        let threads = (0..count)
            .map(|i| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                std::thread::Builder::new()
                    .name(format!("portcullis-io-{i}"))
                    .spawn(move || {
                        let _ = runtime.block_on(stopped);
                    })?;
                Ok(Worker {
                    handle,
                    open: Arc::new(AtomicUsize::new(0)),
                    _stop: stop,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Workers { threads })
    }

    /// Runs `connection` on the least busy thread.
    fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let Some(worker) = self
            .threads
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            tokio::spawn(connection);
            return;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(worker.open.clone());
        worker.handle.spawn(async move {
            let _open = open;
            connection.await;
        });
    }
}

/// One open connection of a serving thread, counted until dropped (a panicking connection too).
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves HTTP on `listener` (over TLS when `tls` is given; HTTP/2 to clients that choose `h2`
/// by ALPN) until `stop` completes, then lets in-flight requests finish within the grace period.
/// Connections are served on `workers`' threads, or on the calling runtime without them.
#[expect(
    clippy::too_many_arguments,
    reason = "the listener's parts, each used once"
)]
pub async fn serve(
    listener: tokio::net::TcpListener,
    workers: Option<Arc<Workers>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: Limits,
    trusted: Arc<TrustedProxies>,
    edge: Arc<Edge>,
    stop: impl Future<Output = ()>,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS)
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE);
    let builders = Arc::new((http1, http2));
    let (stopping, stopped) = watch::channel(false);
    // One permit per open connection: at the limit, stop accepting (the kernel queues the rest).
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut stop = std::pin::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            () = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin, keep serving.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        // The socket was registered with this runtime's event loop by `accept`; it moves to the
        // serving thread's own, or every readiness would pass through this thread first.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "an accepted connection could not be handed over");
                continue;
            }
        };
        let conn = Connection {
            router: router.clone(),
            trusted: trusted.clone(),
            edge: edge.clone(),
            builders: builders.clone(),
            peer,
            limits,
            stopped: stopped.clone(),
        };
        let tls = tls.clone();
        let connection = async move {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "an accepted connection could not be served");
                    return;
                }
            };
            let result = match tls {
                None => conn.http1(stream).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            let alpn = stream.get_ref().1.alpn_protocol();
                            if alpn == Some(crate::acme::ACME_TLS_ALPN) {
                                // A TLS-ALPN-01 validation: the handshake was the answer.
                                let mut stream = stream;
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(1),
                                    tokio::io::AsyncWriteExt::shutdown(&mut stream),
                                )
                                .await;
                                drop(slot);
                                return;
                            }
                            if alpn == Some(b"h2") {
                                conn.http2(stream).await
                            } else {
                                conn.http1(stream).await
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        };
        match &workers {
            Some(workers) => workers.spawn(connection),
            None => {
                tokio::spawn(connection);
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down; finishing in-flight requests");
    let _ = stopping.send(true);
    // Every connection holds a permit until it is done: all of them back means all are done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = slots.acquire_many(all) => {}
        () = tokio::time::sleep(limits.shutdown_grace) => tracing::warn!(
            "shutdown grace of {} expired; closing remaining connections",
            humantime::format_duration(limits.shutdown_grace)
        ),
    }
}

/// One accepted connection, before it knows its protocol.
struct Connection {
    router: Router,
    trusted: Arc<TrustedProxies>,
    edge: Arc<Edge>,
    builders: Arc<(
        hyper::server::conn::http1::Builder,
        hyper::server::conn::http2::Builder<TokioExecutor>,
    )>,
    peer: SocketAddr,
    limits: Limits,
    stopped: watch::Receiver<bool>,
}

type Io<S> = TokioIo<S>;

impl Connection {
    async fn http1<S>(self, stream: S) -> Result<(), hyper::Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service(self.router, self.trusted, self.edge, self.peer, None);
        let conn = self
            .builders
            .0
            .serve_connection(Io::new(stream), service)
            .with_upgrades();
        drive(conn, self.stopped, None).await
    }

    async fn http2<S>(self, stream: S) -> Result<(), hyper::Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let service = service(
            self.router,
            self.trusted,
            self.edge,
            self.peer,
            Some(activity.clone()),
        );
        let conn = self.builders.1.serve_connection(Io::new(stream), service);
        let idle = Idle {
            activity,
            after: self.limits.header_timeout,
        };
        drive(conn, self.stopped, Some(idle)).await
    }
}

/// The per-request glue: the body type the router takes, the client's address, and for HTTP/2
/// (`h2`) the request made to look like HTTP/1.1 (or refused).
fn service(
    router: Router,
    trusted: Arc<TrustedProxies>,
    edge: Arc<Edge>,
    peer: SocketAddr,
    h2: Option<Arc<Activity>>,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response, std::convert::Infallible>> + Send + 'static,
> {
    use tower::ServiceExt;
    use tracing::Instrument;
    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        // The client's address: the peer, or whom a trusted proxy forwards for.
        let client = if trusted.is_empty() {
            peer
        } else {
            SocketAddr::new(trusted.client(peer.ip(), req.headers()), peer.port())
        };
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(client));
        let exported = crate::otel::enabled();
        let mut ids =
            crate::request_id::assign(req.headers_mut(), trusted.trusts(peer.ip()), exported);
        let span = tracing::info_span!(
            target: "portcullis::request",
            "request",
            id = ids.request_id.to_str().unwrap_or("-"),
            trace = tracing::field::Empty,
        );
        if exported {
            ids.trace_id = crate::request_id::TraceId::from_otel(&crate::otel::continue_trace(
                &span,
                req.headers_mut(),
            ));
        }
        span.record("trace", ids.trace_id.as_str());
        let router = router.clone();
        let edge = edge.clone();
        let busy = h2.as_ref().map(|a| a.start());
        async move {
            let mut response = if busy.is_some()
                && let Err(reason) = as_http1(&mut req)
            {
                refuse(reason)
            } else if let Some(location) = edge
                .canonical
                .as_ref()
                .and_then(|c| canonical_location(c, &req))
            {
                portcullis_http::redirect(StatusCode::FOUND, &location)
            } else {
                router.oneshot(req).await?
            };
            if let Some(hsts) = &edge.hsts {
                response
                    .headers_mut()
                    .entry(header::STRICT_TRANSPORT_SECURITY)
                    .or_insert_with(|| hsts.clone());
            }
            response
                .headers_mut()
                .insert(crate::request_id::REQUEST_ID, ids.request_id);
            drop(busy);
            Ok(response)
        }
        .instrument(span)
    })
}

/// What the server adds around every request: the canonical-origin redirect and HSTS.
#[derive(Debug, Default)]
pub struct Edge {
    pub canonical: Option<Canonical>,
    /// `Strict-Transport-Security` for every answer that does not set its own.
    pub hsts: Option<HeaderValue>,
}

/// The public origin browsers are sent to (`server.canonical_redirect`).
#[derive(Debug)]
pub struct Canonical {
    /// `https://auth.example.com` (no trailing slash).
    pub origin: String,
    /// With trusted proxies, the host the client asked for is their `X-Forwarded-Host`.
    pub behind_proxy: bool,
}

/// Sends a browser that navigates to a page on another name of this server (`127.0.0.1` when
/// the issuer is `localhost`, an IP address, a second DNS name) to the same path on the public
/// origin: sign-in could never complete there, because the cookies belong to the public name.
/// Only top-level navigations (`Sec-Fetch-Mode: navigate`, or a GET that accepts HTML from a
/// client that sends no fetch metadata) are redirected; API calls are answered where they are.
fn canonical_location(canonical: &Canonical, req: &Request<axum::body::Body>) -> Option<String> {
    if !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return None;
    }
    let headers = req.headers();
    let navigation = match headers.get("sec-fetch-mode") {
        Some(mode) => mode.as_bytes() == b"navigate",
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html")),
    };
    if !navigation {
        return None;
    }
    let forwarded = canonical
        .behind_proxy
        .then(|| headers.get("x-forwarded-host"))
        .flatten();
    let host = forwarded
        .or_else(|| headers.get(header::HOST))?
        .to_str()
        .ok()?;
    let host = host.split(',').next()?.trim();
    let public = canonical
        .origin
        .split_once("://")
        .map_or(canonical.origin.as_str(), |(_, rest)| rest);
    if host.eq_ignore_ascii_case(public) {
        return None;
    }
    let target = req.uri().path_and_query()?.as_str();
    if !target.starts_with('/') || target.starts_with("//") {
        return None;
    }
    Some(format!("{}{target}", canonical.origin))
}

/// Turns an HTTP/2 request into the HTTP/1.1 request it means, or says why it has none.
///
/// The h2 codec has already refused what RFC 9113 §8.2 calls malformed: uppercase or invalid
/// header names, CR, LF or NUL in a value, connection-specific headers (`Connection`,
/// `Transfer-Encoding`, `Keep-Alive`, `Upgrade`, `Proxy-Connection`, `TE` other than
/// `trailers`), repeated or unknown pseudo-headers, and a body that disagrees with its
/// `content-length`. What is left is the mapping: the target becomes origin-form, `:authority`
/// becomes `Host` (and must agree with a `Host` the client also sent), the cookie crumbs of
/// §8.2.3 become one `Cookie` header. `CONNECT` and targets that are not paths (`*`) are
/// refused, as for HTTP/1.1.
fn as_http1(req: &mut Request<axum::body::Body>) -> Result<(), &'static str> {
    if req.method() == Method::CONNECT {
        return Err("CONNECT is not served");
    }
    let uri = req.uri();
    let Some(target) = uri.path_and_query().filter(|p| p.as_str().starts_with('/')) else {
        return Err("the :path must be a path starting with /");
    };
    let target = target.clone();
    let authority = uri.authority().cloned();
    let headers = req.headers_mut();
    if let Some(authority) = authority {
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) => {
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| "the :authority is not a valid host")?;
                headers.insert(header::HOST, host);
            }
            (Some(host), None) => {
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
                {
                    return Err("the :authority and the Host header disagree");
                }
            }
            // Several: the framing stage refuses them, as for HTTP/1.1.
            (Some(_), Some(_)) => {}
        }
    }
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) {
        let mut joined = first.as_bytes().to_vec();
        for crumb in headers.get_all(header::COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(crumb.as_bytes());
        }
        let joined = HeaderValue::from_bytes(&joined).map_err(|_| "an invalid cookie")?;
        headers.insert(header::COOKIE, joined);
    }
    *req.uri_mut() = Uri::from(target);
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// 400 for an HTTP/2 request that has no HTTP/1.1 meaning.
fn refuse(reason: &'static str) -> Response {
    portcullis_http::json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({ "error": "bad_request", "error_description": reason }),
    )
}

/// When an HTTP/2 connection last started a request, and how many it is answering.
struct Activity {
    epoch: tokio::time::Instant,
    /// Milliseconds from `epoch` to the start of the latest request.
    last: AtomicU64,
    active: AtomicUsize,
}

/// Marks a request in progress until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn start(self: &Arc<Self>) -> Busy {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// When the connection counts as idle if nothing starts before.
    fn idle_at(&self, after: Duration) -> tokio::time::Instant {
        self.epoch + Duration::from_millis(self.last.load(Ordering::Relaxed)) + after
    }
}

/// An HTTP/2 connection's idle limit: no request in progress and none started for `after`.
/// HTTP/1.1 has hyper's header timeout instead, which also covers idle keep-alive.
struct Idle {
    activity: Arc<Activity>,
    after: Duration,
}

/// A hyper connection that can be asked to finish.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn finish(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `conn` to its end, asking it to finish (in-flight requests complete, HTTP/2 sends
/// GOAWAY) when the server stops or, with `idle`, when it has been idle too long.
async fn drive(
    conn: impl Graceful,
    stopped: watch::Receiver<bool>,
    idle: Option<Idle>,
) -> Result<(), hyper::Error> {
    let mut conn = std::pin::pin!(conn);
    let mut stop = WhenWoken::new(Box::pin(stop_signal(stopped)));
    let mut finishing = false;
    loop {
        let idle_at = idle.as_ref().map(|i| i.activity.idle_at(i.after));
        tokio::select! {
            biased;
            result = conn.as_mut() => return result,
            () = &mut stop, if !finishing => {
                conn.as_mut().finish();
                finishing = true;
            }
            () = sleep_until(idle_at), if !finishing && idle_at.is_some() => {
                let idle = idle.as_ref().expect("checked");
                let now = tokio::time::Instant::now();
                if idle.activity.active.load(Ordering::Relaxed) == 0
                    && idle.activity.idle_at(idle.after) <= now
                {
                    conn.as_mut().finish();
                    finishing = true;
                } else if idle.activity.idle_at(idle.after) <= now {
                    // Busy: look again one period later.
                    idle.activity.last.store(
                        u64::try_from(idle.activity.epoch.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                }
            }
        }
    }
}

/// Ends when the server stops (or its sender is gone).
async fn stop_signal(mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow_and_update() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

/// A future polled only after its own waker fired. `tokio::select!` polls every branch each
/// time the task wakes — for a connection, on every read and write — and a pending
/// `watch::Receiver::changed` takes a mutex shared by every connection on every thread each
/// time it is polled. Wrapped, the stop signal costs a connection one atomic load per wake-up.
struct WhenWoken<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
    waker: std::task::Waker,
}

#[derive(Default)]
struct Signal {
    woken: std::sync::atomic::AtomicBool,
    task: atomic_waker::AtomicWaker,
}

impl std::task::Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> WhenWoken<F> {
    fn new(inner: Pin<Box<F>>) -> Self {
        let signal = Arc::new(Signal::default());
        // Polled once at the start, to register.
        signal.woken.store(true, Ordering::Relaxed);
        WhenWoken {
            inner,
            waker: std::task::Waker::from(signal.clone()),
            signal,
        }
    }
}

impl<F: Future> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Pending;
        }
        this.inner
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&this.waker))
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stop_signal_is_polled_only_after_it_woke() {
        use std::sync::atomic::AtomicUsize;
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = watch::channel(false);
        let counted = {
            let polls = polls.clone();
            let mut signal = Box::pin(stop_signal(rx));
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                signal.as_mut().poll(cx)
            })
        };
        let mut stop = WhenWoken::new(Box::pin(counted));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // The first poll registers; the task's other wake-ups do not reach the signal.
        for _ in 0..100 {
            assert!(Pin::new(&mut stop).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        tx.send(true).expect("receiver alive");
        assert!(Pin::new(&mut stop).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_stop_sent_before_the_connection_started_is_seen() {
        let (tx, rx) = watch::channel(false);
        tx.send(true).expect("receiver alive");
        tokio::time::timeout(
            Duration::from_secs(5),
            WhenWoken::new(Box::pin(stop_signal(rx))),
        )
        .await
        .expect("stops at once");
        let (tx, rx) = watch::channel(false);
        drop(tx);
        tokio::time::timeout(
            Duration::from_secs(5),
            WhenWoken::new(Box::pin(stop_signal(rx))),
        )
        .await
        .expect("a server gone counts as stopped");
    }
}
