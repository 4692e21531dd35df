//! The floor of a hyper reverse proxy, for `bench/gateway.sh`: the same server and pooled client
//! portcullis forwards with (hyper's HTTP/1 server, hyper-util's legacy client, tokio's
//! multi-threaded runtime) and nothing else — no routing, no authorization, no header hygiene.
//! The distance between this row and nginx is the price of the HTTP stack; the distance between
//! this row and portcullis is the price of portcullis.
//!
//!     cargo run --release -p portcullis-gateway --example minproxy -- 127.0.0.1:9001 http://127.0.0.1:9000

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::main]
async fn main() -> std::io::Result<()> {
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
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
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

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}
