//! Forwarding to an upstream: header hygiene, identity headers, a pooled client, timeouts.

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::authn::Identity;

/// The pooled upstream client.
pub type UpstreamClient = Client<HttpConnector, Body>;

pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and proxy credentials: never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Headers a client could use to make the backend see another path, method, host or address.
const UNTRUSTED: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-prefix",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-client-ip",
    "true-client-ip",
];

/// A header name as a lenient backend may read it: lower case, `_` and `.` as `-`.
fn normalized(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// `name` equals `target` (lower case, `-`) as a lenient backend reads it.
fn same_header(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| norm_byte(a) == b)
}

/// `name` starts with `prefix` (lower case, `-`) as a lenient backend reads it.
fn header_starts_with(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name
            .bytes()
            .zip(prefix.bytes())
            .all(|(a, b)| norm_byte(a) == b)
}

fn norm_byte(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

/// Whether a client-sent header must be dropped before forwarding. (No allocation: this runs
/// for every header of every request.)
fn strip(name: &str, connection_listed: &[String]) -> bool {
    header_starts_with(name, "x-forwarded-")
        || header_starts_with(name, "x-auth-")
        || same_header(name, "authorization")
        || HOP_BY_HOP.iter().any(|h| same_header(name, h))
        || UNTRUSTED.iter().any(|h| same_header(name, h))
        || connection_listed.iter().any(|c| same_header(name, c))
}

/// Removes portcullis' own cookies from a Cookie header value; `None` when nothing is left.
fn without_our_cookies(value: &str) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| {
            let name = c.split('=').next().unwrap_or_default();
            !(name.starts_with("__Host-portcullis") || name.starts_with("portcullis-"))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Where a request goes, and how long the upstream has.
#[derive(Debug)]
pub struct Upstream<'a> {
    /// `http://host[:port][/base]`.
    pub base: &'a str,
    /// Until the response headers (`upstream_timeout`).
    pub headers_within: std::time::Duration,
    /// Until the end of the response body (`total_timeout`).
    pub done_within: std::time::Duration,
}

/// What the proxy adds about the request.
#[derive(Debug)]
pub struct Forwarding<'a> {
    pub client_ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    pub host: Option<HeaderValue>,
    /// Keep the caller's `Host`; otherwise the pooled upstream client sets the upstream's own.
    pub preserve_host: bool,
    pub identity: Option<&'a Identity>,
}

/// Builds the upstream request: `base` + canonical encoded path + the query as sent.
pub fn upstream_request(
    mut req: Request<Body>,
    base: &str,
    encoded_path: &str,
    fwd: &Forwarding<'_>,
) -> Result<Request<Body>, String> {
    let query = req.uri().query();
    let mut target =
        String::with_capacity(base.len() + encoded_path.len() + query.map_or(0, |q| q.len() + 1));
    target.push_str(base);
    target.push_str(encoded_path);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    let uri = Uri::try_from(target).map_err(|e| format!("upstream URI: {e}"))?;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    let connection_listed = connection_listed(headers);
    remove_where(headers, |n| strip(n, &connection_listed));
    if headers.contains_key(header::COOKIE) {
        let cookies: Vec<String> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        headers.remove(header::COOKIE);
        if let Some(kept) = without_our_cookies(&cookies.join("; "))
            && let Ok(v) = HeaderValue::from_str(&kept)
        {
            headers.insert(header::COOKIE, v);
        }
    }
    let ip = HeaderValue::try_from(fwd.client_ip.to_string()).map_err(|e| e.to_string())?;
    headers.insert(HeaderName::from_static("x-forwarded-for"), ip);
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(fwd.proto),
    );
    if let Some(host) = &fwd.host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    if !fwd.preserve_host {
        // The pooled client sets `Host` from the upstream URL when the request has none.
        headers.remove(header::HOST);
    }
    if let Some(id) = fwd.identity {
        for (name, value) in &id.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
    Ok(req)
}

/// A response body that must end by a deadline (`gateway.total_timeout`): past it the body fails,
/// so hyper cuts the response off and closes the connection. The timer is only armed when the
/// body first has to wait, so a response that is already complete costs none.
#[derive(Debug)]
pub struct Deadline<B> {
    inner: B,
    deadline: tokio::time::Instant,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, deadline: tokio::time::Instant) -> Self {
        Deadline {
            inner,
            deadline,
            timer: None,
        }
    }
}

/// The error a body past its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response did not finish within gateway.total_timeout")]
pub struct TotalTimeout;

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body<Data = axum::body::Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if this.timer.as_ref().is_some_and(|t| t.is_elapsed()) {
            return Poll::Ready(Some(Err(TotalTimeout.into())));
        }
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        tracing::warn!("upstream response cut off: gateway.total_timeout");
                        Poll::Ready(Some(Err(TotalTimeout.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that notes when it has been read to its end.
#[derive(Debug)]
pub struct ReadToEnd<B> {
    inner: B,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<B> ReadToEnd<B> {
    /// The wrapped body, and the flag it sets at its end.
    pub fn new(inner: B) -> (Self, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        (
            ReadToEnd {
                inner,
                done: done.clone(),
            },
            done,
        )
    }
}

impl<B> hyper::body::Body for ReadToEnd<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, std::task::Poll::Ready(None)) || this.inner.is_end_stream() {
            this.done.store(true, std::sync::atomic::Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request asks for a protocol upgrade (`Connection: upgrade` plus `Upgrade`).
pub fn upgrade_request<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Strips hop-by-hop headers from an upstream response.
pub fn clean_response(resp: &mut Response<Body>) {
    let headers = resp.headers_mut();
    let listed = connection_listed(headers);
    remove_where(headers, |n| {
        HOP_BY_HOP.contains(&n) || listed.iter().any(|l| l == n)
    });
}

/// The header names a message's `Connection` header lists, normalized.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| normalized(t.trim()))
        .collect()
}

/// Removes every header whose (lower-case) name matches, with all its values. Allocates only
/// when something is removed.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| doomed(n.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_are_stripped_in_every_spelling() {
        for name in [
            "X-Auth-User",
            "x_auth_user",
            "X.Auth.User",
            "x-auth-groups",
            "X_AUTH_SUBJECT",
            "Authorization",
            "Forwarded",
            "X-Forwarded-For",
            "x_forwarded_host",
            "X-Original-URL",
            "X-HTTP-Method-Override",
            "X-Real-IP",
            "Connection",
            "Transfer-Encoding",
        ] {
            assert!(strip(name, &[]), "{name}");
        }
        assert!(
            strip("x-custom", &["x-custom".into()]),
            "Connection-listed headers"
        );
        for name in ["content-type", "accept", "x-request-id", "user-agent"] {
            assert!(!strip(name, &[]), "{name}");
        }
    }

    #[test]
    fn our_cookies_are_removed() {
        assert_eq!(
            without_our_cookies("a=1; __Host-portcullis-access=tok; b=2").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(without_our_cookies("__Host-portcullis-access=tok"), None);
        assert_eq!(
            without_our_cookies("portcullis-refresh=x; theme=dark").as_deref(),
            Some("theme=dark")
        );
    }
}
