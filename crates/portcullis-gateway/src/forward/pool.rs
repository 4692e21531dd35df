//! Upstream HTTP/1.1 connections driven by the request that uses them.
//!
//! hyper-util's pooled client spawns a task per upstream connection and hands every request to
//! it over a channel: each request wakes that task, which wakes the request's task with the
//! answer, which wakes it again for the body — two tasks and their thread hand-offs per request.
//! Here the request's own task drives the connection (hyper's `client::conn::http1`): it writes
//! the request, reads the answer and streams the body through a body type that polls the
//! connection as it is read, so one wake-up of one task serves each readiness of either socket.
//! Idle connections wait in a pool per thread (no lock shared across threads) until a request on
//! that thread takes them; a connection that is mid-answer is never shared.
//!
//! A connection is pooled again only when its answer was read to the end; an answer dropped
//! half-read (the client went away) closes it. A pooled connection the upstream has closed is
//! noticed when it is taken (polled once before use) and dropped; a request hyper reports as
//! never sent (the upstream closed just as it was taken) is retried once on a new connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower::Service;

type Stream = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type Conn = Connection<Stream, Body>;

/// What failed on the way to an upstream's answer.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections one thread keeps per upstream; more are closed when their answer ends.
const MAX_IDLE: usize = 64;

static POOL_IDS: AtomicU64 = AtomicU64::new(0);

/// The upstreams of one gateway: how to connect, and which idle connections are its own.
#[derive(Clone)]
pub(crate) struct Upstreams {
    id: u64,
    connector: HttpsConnector<HttpConnector>,
    idle_timeout: Duration,
}

/// Where a connection goes: one gateway's upstream (scheme and authority).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    pool: u64,
    scheme: Scheme,
    authority: Authority,
}

/// A connection, and the handle that sends on it.
struct Held {
    sender: SendRequest<Body>,
    conn: Conn,
}

struct Idle {
    held: Box<Held>,
    since: tokio::time::Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<Key, Vec<Idle>, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

impl Upstreams {
    pub(crate) fn new(connector: HttpsConnector<HttpConnector>, idle_timeout: Duration) -> Self {
        Upstreams {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            connector,
            idle_timeout,
        }
    }

    /// Sends `req` (absolute URI, `http` or `https`) and returns the answer, its body streaming
    /// from the connection. Sets `Host` from the URI when the request has none.
    #[cfg(test)]
    pub(crate) async fn request(&self, mut req: Request<Body>) -> Result<Response<Body>, Error> {
        let origin = Origin::of(req.uri())?;
        *req.uri_mut() = Uri::from(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| axum::http::uri::PathAndQuery::from_static("/")),
        );
        self.send_to(&origin, req).await
    }

    /// Sends `req` (origin-form target) to `origin` and returns the answer, its body streaming
    /// from the connection. Sets `Host` to the origin's when the request has none.
    pub(crate) async fn send_to(
        &self,
        origin: &Origin,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, Error> {
        let key = Key {
            pool: self.id,
            scheme: origin.scheme.clone(),
            authority: origin.authority.clone(),
        };
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, origin.host.clone());
        }
        // One `send` in the loop, not one for pooled and one for new connections: the future
        // stays half the size.
        let mut fresh = false;
        loop {
            let held = match self.take(&key) {
                Some(held) => held,
                None => {
                    fresh = true;
                    // Boxed: connecting is rare with pooling, and its future (TCP, TLS, the
                    // HTTP/1 handshake) is most of this one's size otherwise.
                    Box::pin(self.connect(origin.connect.clone())).await?
                }
            };
            match send(held, req).await {
                Sent::Answered(resp) => return Ok(resp.map(|b| b.into_body(key))),
                Sent::Unsent(back) if !fresh => req = back,
                Sent::Unsent(_) => {
                    return Err("the new upstream connection closed before the request".into());
                }
                Sent::Failed(e) => return Err(e),
            }
        }
    }

    /// The most recently used idle connection to `key` on this thread that has not expired.
    fn take(&self, key: &Key) -> Option<Box<Held>> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let list = idle.get_mut(key)?;
            let now = tokio::time::Instant::now();
            while let Some(entry) = list.pop() {
                if now.duration_since(entry.since) < self.idle_timeout {
                    return Some(entry.held);
                }
            }
            None
        })
    }

    async fn connect(&self, uri: Uri) -> Result<Box<Held>, Error> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let stream = connector
            .call(uri)
            .await
            .map_err(|e| format!("connect: {}", chain(&*e)))?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(stream)
            .await?;
        Ok(Box::new(Held { sender, conn }))
    }
}

/// Where a route's requests go: the upstream's scheme and authority, worked out once per route
/// (the pool's key, the `Host` it is sent, the URI a connection is made to) rather than parsed
/// back out of each request's URI.
#[derive(Clone, Debug)]
pub struct Origin {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    connect: Uri,
}

impl Origin {
    /// The origin of an absolute `http(s)` URI.
    pub fn of(uri: &Uri) -> Result<Origin, Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err("the upstream URL has no scheme or host".into());
        };
        Ok(Origin {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host: host_value(uri)?,
            connect: Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query("/")
                .build()?,
        })
    }
}

/// `Host` for `uri`: its authority, without the port when that is the scheme's default.
fn host_value(uri: &Uri) -> Result<HeaderValue, Error> {
    let authority = uri.authority().ok_or("the upstream URL has no host")?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match authority.port_u16() {
        None => HeaderValue::from_str(authority.host()),
        Some(port) if port == default => HeaderValue::from_str(authority.host()),
        // Routes refuse upstream URLs with a user name; never send one in `Host` regardless.
        Some(_) if !authority.as_str().contains('@') => HeaderValue::from_str(authority.as_str()),
        Some(port) => HeaderValue::try_from(format!("{}:{port}", authority.host())),
    };
    Ok(value?)
}

/// Every message in an error's chain, outermost first.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

enum Sent {
    Answered(Response<PooledBody>),
    /// The connection was closed before any of the request was written: safe to send again.
    Unsent(Request<Body>),
    Failed(Error),
}

/// Sends `req` on `held`, driving the connection in this task until the answer's head arrives.
async fn send(mut held: Box<Held>, req: Request<Body>) -> Sent {
    // Ready: an idle connection has its close (if the upstream closed it) read here.
    let ready = std::future::poll_fn(|cx| {
        if Pin::new(&mut held.conn).poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        held.sender.poll_ready(cx).map(|r| r.is_ok())
    })
    .await;
    if !ready {
        return Sent::Unsent(req);
    }
    let answer = held.sender.try_send_request(req);
    let mut answer = std::pin::pin!(answer);
    let mut closed = false;
    let result = std::future::poll_fn(|cx| {
        if !closed && Pin::new(&mut held.conn).poll(cx).is_ready() {
            // Ended (the answer may already be complete: `Connection: close`).
            closed = true;
        }
        answer.as_mut().poll(cx)
    })
    .await;
    match result {
        Ok(resp) => Sent::Answered(resp.map(|body| PooledBody {
            body,
            held: (!closed).then_some(held),
            key: None,
            ended: false,
        })),
        Err(mut e) => match e.take_message() {
            Some(req) => Sent::Unsent(req),
            None => Sent::Failed(Box::new(e.into_error())),
        },
    }
}

/// An upstream answer's body that drives its connection while it is read, and returns the
/// connection to this thread's idle pool when read to the end.
pub(crate) struct PooledBody {
    body: Incoming,
    held: Option<Box<Held>>,
    key: Option<Key>,
    ended: bool,
}

impl PooledBody {
    fn into_body(mut self, key: Key) -> Body {
        self.key = Some(key);
        Body::new(self)
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // The body's data comes from the connection, which only this task polls: after a
        // pending body, poll the connection (it reads what arrived) and look again.
        for _ in 0..3 {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(frame) => {
                    if frame.is_none() || this.body.is_end_stream() {
                        this.ended = true;
                    }
                    if matches!(frame, Some(Err(_))) {
                        this.held = None;
                    }
                    return Poll::Ready(frame);
                }
                Poll::Pending => {}
            }
            match this.held.as_mut() {
                Some(held) => {
                    if Pin::new(&mut held.conn).poll(cx).is_ready() {
                        // Closed: what it delivered is in the body's channel, then its end.
                        this.held = None;
                    }
                }
                None => return Poll::Pending,
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if !(self.ended || self.body.is_end_stream()) {
            return; // half-read: the connection closes with it
        }
        let (Some(held), Some(key)) = (self.held.take(), self.key.take()) else {
            return;
        };
        let since = tokio::time::Instant::now();
        // During thread teardown the pool may be gone; the connection then just closes.
        let _ = IDLE.try_with(|idle| {
            let Ok(mut idle) = idle.try_borrow_mut() else {
                return;
            };
            let list = idle.entry(key).or_default();
            if list.len() < MAX_IDLE {
                list.push(Idle { held, since });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::Upstreams;

    /// How the test upstream treats a connection after each answer.
    #[derive(Clone, Copy)]
    enum After {
        KeepAlive,
        /// Closes the socket without saying so (an upstream's idle timeout, raced).
        Close,
        /// `Connection: close`, then closes.
        SayClose,
    }

    /// A raw HTTP/1.1 upstream answering every request head with `body`; counts connections.
    async fn upstream(after: After, body: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
                        buf.drain(..end);
                        let close = if matches!(after, After::SayClose) {
                            "connection: close\r\n"
                        } else {
                            ""
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{close}\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        if !matches!(after, After::KeepAlive) {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), connections)
    }

    fn upstreams() -> Upstreams {
        let tls = crate::forward::upstream_tls(None, None).expect("tls");
        Upstreams::new(
            super::super::connector(std::time::Duration::from_secs(2), tls),
            std::time::Duration::from_secs(60),
        )
    }

    async fn get(u: &Upstreams, base: &str) -> (StatusCode, String) {
        let req = Request::get(format!("{base}/x"))
            .body(Body::empty())
            .expect("request");
        let resp = u.request(req).await.expect("answer");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_serves_the_next_request() {
        let (base, connections) = upstream(After::KeepAlive, "hello").await;
        let u = upstreams();
        for _ in 0..5 {
            assert_eq!(get(&u, &base).await, (StatusCode::OK, "hello".into()));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_replaced_not_an_error() {
        for after in [After::Close, After::SayClose] {
            let (base, connections) = upstream(after, "fresh").await;
            let u = upstreams();
            for i in 1..=5 {
                assert_eq!(get(&u, &base).await, (StatusCode::OK, "fresh".into()));
                assert_eq!(connections.load(Ordering::SeqCst), i);
                // Give the close time to arrive before the next request takes the connection.
                if i % 2 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }

    #[tokio::test]
    async fn an_answer_dropped_half_read_closes_its_connection() {
        let big: &'static str = Box::leak("x".repeat(1 << 20).into_boxed_str());
        let (base, connections) = upstream(After::KeepAlive, big).await;
        let u = upstreams();
        let req = Request::get(format!("{base}/x"))
            .body(Body::empty())
            .expect("request");
        let resp = u.request(req).await.expect("answer");
        let mut body = resp.into_body();
        let first = http_body_util::BodyExt::frame(&mut body).await;
        assert!(matches!(first, Some(Ok(_))));
        drop(body);
        let (status, text) = get(&u, &base).await;
        assert_eq!((status, text.len()), (StatusCode::OK, 1 << 20));
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        // Read to its end, that second connection is kept.
        get(&u, &base).await;
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn pools_of_two_gateways_are_not_shared() {
        let (base, connections) = upstream(After::KeepAlive, "a").await;
        let (one, two) = (upstreams(), upstreams());
        get(&one, &base).await;
        get(&two, &base).await;
        get(&one, &base).await;
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error_that_says_why() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let u = upstreams();
        let req = Request::get(format!("http://{addr}/x"))
            .body(Body::empty())
            .expect("request");
        let e = u.request(req).await.expect_err("refused");
        let text = super::chain(&*e);
        assert!(text.starts_with("connect: "), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
