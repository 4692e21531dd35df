//! The floor of a hyper reverse proxy, for `bench/gateway.sh`: the same design portcullis serves
//! with — one single-threaded tokio event loop per core, hyper's HTTP/1 server, and the upstream
//! connection driven by the request's own task (hyper's `client::conn::http1`, no connection
//! task and no channel hand-off) — and nothing else: no routing, no authorization, no header
//! hygiene, no timeouts, one upstream connection per client connection. The distance between
//! this row and nginx is the price of the HTTP stack; between this row and portcullis, the
//! price of portcullis. `LEGACY=1` runs the design portcullis had before (tokio's work-stealing
//! runtime and hyper-util's pooled client, a task per upstream connection) for comparison.
//!
//!     cargo run --release -p portcullis-gateway --example minproxy -- 127.0.0.1:9001 http://127.0.0.1:9000

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};

type Conn = Connection<TokioIo<tokio::net::TcpStream>, Body>;
struct Up {
    sender: SendRequest<Body>,
    conn: Conn,
}
type Slot = Arc<Mutex<Option<Up>>>;

struct InlineBody {
    body: Incoming,
    up: Option<Up>,
    slot: Slot,
}

impl hyper::body::Body for InlineBody {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        for _ in 0..3 {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(None) => {
                    if let Some(up) = this.up.take() {
                        *this.slot.lock().expect("slot") = Some(up);
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(f)) => {
                    if hyper::body::Body::is_end_stream(&this.body)
                        && let Some(up) = this.up.take()
                    {
                        *this.slot.lock().expect("slot") = Some(up);
                    }
                    return Poll::Ready(Some(f));
                }
                Poll::Pending => {}
            }
            match this.up.as_mut() {
                Some(up) => {
                    if Pin::new(&mut up.conn).poll(cx).is_ready() {
                        this.up = None;
                    }
                }
                None => return Poll::Pending,
            }
        }
        Poll::Pending
    }
    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

async fn connect(addr: &str) -> Option<Up> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    Some(Up { sender, conn })
}

fn main() -> std::io::Result<()> {
    if std::env::var_os("LEGACY").is_some() {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(legacy());
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..n)
        .map(|_| {
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(serve())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a serving thread panicked")?;
    }
    Ok(())
}

/// One listener per thread (`SO_REUSEPORT`: the kernel spreads connections over them).
async fn serve() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let upstream = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:9000".into());
    let addr: Arc<str> = upstream.trim_start_matches("http://").into();
    let listener = {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.set_reuseport(true)?;
        sock.set_reuseaddr(true)?;
        sock.bind(listen.parse().map_err(std::io::Error::other)?)?;
        sock.listen(1024)?
    };
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let upstream = upstream.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let slot: Slot = Arc::new(Mutex::new(None));
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let target = format!(
                    "{upstream}{}",
                    req.uri().path_and_query().map_or("/", |p| p.as_str())
                );
                let slot = slot.clone();
                let addr = addr.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    let Ok(uri) = Uri::try_from(target) else {
                        return Ok::<_, Infallible>(status(StatusCode::BAD_REQUEST));
                    };
                    parts.uri = uri;
                    let taken = slot.lock().expect("slot").take();
                    let mut up = match taken {
                        Some(up) => up,
                        None => match connect(&addr).await {
                            Some(up) => up,
                            None => return Ok(status(StatusCode::BAD_GATEWAY)),
                        },
                    };
                    // ready
                    let ready = std::future::poll_fn(|cx| {
                        if Pin::new(&mut up.conn).poll(cx).is_ready() {
                            return Poll::Ready(false);
                        }
                        up.sender.poll_ready(cx).map(|r| r.is_ok())
                    })
                    .await;
                    if !ready {
                        return Ok(status(StatusCode::BAD_GATEWAY));
                    }
                    let fut = up
                        .sender
                        .send_request(Request::from_parts(parts, Body::new(body)));
                    let mut fut = std::pin::pin!(fut);
                    let conn = &mut up.conn;
                    let mut conn_done = false;
                    let resp = std::future::poll_fn(|cx| {
                        if !conn_done && Pin::new(&mut *conn).poll(cx).is_ready() {
                            conn_done = true;
                        }
                        fut.as_mut().poll(cx)
                    })
                    .await;
                    Ok(match resp {
                        Ok(resp) if !conn_done => resp.map(|b| {
                            Body::new(InlineBody {
                                body: b,
                                up: Some(up),
                                slot,
                            })
                        }),
                        Ok(resp) => resp.map(Body::new),
                        Err(_) => status(StatusCode::BAD_GATEWAY),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}

/// The design before: the work-stealing runtime and hyper-util's pooled client.
async fn legacy() -> std::io::Result<()> {
    use hyper_util::client::legacy::Client;
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let upstream = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:9000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                let target = format!(
                    "{upstream}{}",
                    req.uri().path_and_query().map_or("/", |p| p.as_str())
                );
                async move {
                    let (mut parts, body) = req.into_parts();
                    let Ok(uri) = Uri::try_from(target) else {
                        return Ok::<_, Infallible>(status(StatusCode::BAD_REQUEST));
                    };
                    parts.uri = uri;
                    Ok(
                        match client
                            .request(Request::from_parts(parts, Body::new(body)))
                            .await
                        {
                            Ok(resp) => resp.map(Body::new),
                            Err(_) => status(StatusCode::BAD_GATEWAY),
                        },
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
