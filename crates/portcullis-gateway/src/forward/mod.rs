//! Stage 7, forwarding to an upstream: body limits, the upgrade rule, header hygiene and the
//! caller's identity, a pooled client, the upstream's timeouts, and what its failures become.

mod assertion;
pub mod body;
pub mod headers;
mod pool;
pub mod upgrade;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_token::Clock;

pub use body::{BodyState, Deadline, Primed, ReadToEnd, Received, TotalTimeout, received};
pub use headers::{Forwarding, HeaderPattern, parse_header_list, protect_cache, upstream_request};
pub use pool::Origin;
pub use upgrade::{UpgradeAsk, accepts_websocket, upgrade_ask};

use crate::authn::{Identity, KeySource};
use crate::reject::Reject;
use crate::route::{Route, Target};
use crate::settings::GatewaySettings;

/// The pooled upstream client: plain HTTP, or TLS for `https://` upstreams.
pub type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

pub fn client(connect_timeout: Duration, tls: Arc<rustls::ClientConfig>) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(connector(connect_timeout, tls))
}

/// How long an idle upstream connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Plain TCP for `http://` upstreams, TLS for `https://` ones; HTTP/1.1 either way.
fn connector(
    connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
) -> hyper_rustls::HttpsConnector<HttpConnector> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector)
}

/// Why the TLS settings for upstreams cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no PEM certificate")]
    Empty { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("the client certificate: {0}")]
    Tls(#[from] rustls::Error),
}

/// A client certificate portcullis presents to `https://` upstreams that ask for one (mTLS).
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    /// PEM chain, leaf first.
    pub chain: std::path::PathBuf,
    /// Its PEM private key.
    pub key: std::path::PathBuf,
}

/// TLS to `https://` upstreams: TLS 1.2/1.3, certificates verified against `ca_file` (a PEM
/// bundle) or else the system's roots; the upstream URL's host is the SNI name and the name
/// checked. With `client`, that certificate is presented to upstreams that ask for one.
pub fn upstream_tls(
    ca_file: Option<&std::path::Path>,
    client: Option<&ClientCertificate>,
) -> Result<Arc<rustls::ClientConfig>, UpstreamTlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let read = |e: &dyn std::fmt::Display| UpstreamTlsError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
            let pem = std::fs::read(path).map_err(|e| read(&e))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| read(&e))?;
            if certs.is_empty() {
                return Err(UpstreamTlsError::Empty {
                    path: path.display().to_string(),
                });
            }
            for cert in certs {
                roots.add(cert)?;
            }
        }
        None => {
            // Unreadable system certificates are skipped: an upstream they would have
            // verified then fails its handshake (502), nothing is trusted by mistake.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let read = |path: &std::path::Path, e: &dyn std::fmt::Display| UpstreamTlsError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
            let pem = std::fs::read(&c.chain).map_err(|e| read(&c.chain, &e))?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| read(&c.chain, &e))?;
            if chain.is_empty() {
                return Err(UpstreamTlsError::Empty {
                    path: c.chain.display().to_string(),
                });
            }
            let pem = std::fs::read(&c.key).map_err(|e| read(&c.key, &e))?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| UpstreamTlsError::NoKey {
                path: c.key.display().to_string(),
            })?;
            // Checks that the key belongs to the certificate.
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Ok(Arc::new(config))
}

/// Forwards allowed requests.
pub(crate) struct Forwarder {
    /// Connections driven by the request that uses them (see `pool`).
    upstreams: pool::Upstreams,
    /// hyper-util's pooled client, for WebSocket handshakes: the tunnel outlives the request.
    tunnels: UpstreamClient,
    assertions: assertion::Assertions,
    /// `X-Forwarded-Proto`, from the public origin (fixed at start).
    forwarded_proto: &'static str,
    max_body: usize,
    upstream_timeout: Duration,
    total_timeout: Duration,
    strip: Vec<HeaderPattern>,
    cookies: portcullis_token::cookie::CookiePolicy,
}

impl Forwarder {
    pub(crate) fn new(
        settings: &GatewaySettings,
        keys: Arc<dyn KeySource>,
        clock: Clock,
    ) -> Forwarder {
        Forwarder {
            upstreams: pool::Upstreams::new(
                connector(settings.connect_timeout, settings.upstream_tls.clone()),
                IDLE_TIMEOUT,
            ),
            tunnels: client(settings.connect_timeout, settings.upstream_tls.clone()),
            assertions: assertion::Assertions::new(settings.issuer.clone(), keys, clock),
            forwarded_proto: if settings.public_origin.starts_with("https://") {
                "https"
            } else {
                "http"
            },
            max_body: settings.max_body,
            upstream_timeout: settings.upstream_timeout,
            total_timeout: settings.total_timeout,
            strip: settings.strip_request_headers.clone(),
            cookies: settings.cookies.clone(),
        }
    }

    /// Sends `req` to the route's upstream with the canonical path `encoded` and the caller's
    /// identity, and streams the answer back.
    pub(crate) async fn forward(
        &self,
        req: Request<Body>,
        route: &Route,
        encoded: &str,
        client_ip: IpAddr,
        identity: Option<&Identity>,
    ) -> Result<Response<Body>, Reject> {
        let Target::Upstream {
            base,
            origin,
            base_path,
            preserve_host,
            upstream_timeout,
            total_timeout,
        } = &route.target
        else {
            return Err(Reject::Internal(
                "forwarding on a route without an upstream",
            ));
        };
        let assertion = match (&route.assertion, identity) {
            (Some(aud), Some(id)) => Some(
                self.assertions
                    .for_caller(id, aud)
                    .ok_or(Reject::Internal("the assertion could not be signed"))?,
            ),
            _ => None,
        };
        if req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > self.max_body)
        {
            return Err(Reject::BodyTooLarge { streaming: false });
        }
        let mut req = req;
        let upgrade = self.upgrade(&mut req, route, encoded)?;
        let (parts, body) = req.into_parts();
        let received = parts.extensions.get::<Received>().is_some();
        let (body, body_state) = self.bounded(body, received);
        let fwd = Forwarding {
            client_ip,
            proto: self.forwarded_proto,
            host: parts.headers.get(header::HOST).cloned(),
            preserve_host: *preserve_host,
            identity,
            strip: &self.strip,
            cookies: &self.cookies,
        };
        // A tunnel goes through hyper-util's client, which takes an absolute URI; the pool takes
        // the origin-form target and the route's origin.
        let target_base = if upgrade.is_some() { base } else { base_path };
        let mut upstream =
            upstream_request(Request::from_parts(parts, body), target_base, encoded, &fwd)
                .map_err(|e| {
                    // The canonical path always makes a valid URI; this is a bug, not the caller's.
                    tracing::error!(error = %e, "request cannot be forwarded");
                    Reject::Internal("the request cannot be forwarded")
                })?;
        if let Some(a) = assertion {
            upstream
                .headers_mut()
                .insert(header::HeaderName::from_static("x-auth-assertion"), a);
        }
        if upgrade.is_some() {
            upstream
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            upstream
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let headers_within = upstream_timeout.unwrap_or(self.upstream_timeout);
        let done_within = total_timeout.unwrap_or(self.total_timeout);
        let sent = std::time::Instant::now();
        let deadline = tokio::time::Instant::from_std(sent) + done_within;
        let within = headers_within.min(done_within);
        let tunnel = upgrade.is_some();
        let result = tokio::time::timeout(within, async {
            if tunnel {
                return match self.tunnels.request(upstream).await {
                    Ok(resp) => Ok(resp.map(Body::new)),
                    Err(e) => Err(pool::Error::from(e)),
                };
            }
            // The body's first frame before anything goes upstream: a request whose body is
            // broken from its start reaches nobody.
            let upstream = if received || axum::body::HttpBody::is_end_stream(upstream.body()) {
                upstream
            } else {
                let (parts, body) = upstream.into_parts();
                let body = Primed::new(body).await.map_err(pool::Error::from)?;
                Request::from_parts(parts, Body::new(body))
            };
            self.upstreams.send_to(origin, upstream).await
        })
        .await;
        if crate::metrics_on() {
            crate::telemetry::upstream_seconds(sent.elapsed().as_secs_f64());
        }
        answer(result, upgrade, body_state.as_deref(), base, deadline)
    }

    /// The upgrade rule: only a WebSocket handshake on a route that allows it becomes a tunnel
    /// (its client side returned). Any other protocol (`h2c` above all: every later request on
    /// the connection would reach the backend unchecked) loses its upgrade headers, which are
    /// hop-by-hop anyway, and goes upstream as an ordinary request.
    fn upgrade(
        &self,
        req: &mut Request<Body>,
        route: &Route,
        encoded: &str,
    ) -> Result<Option<hyper::upgrade::OnUpgrade>, Reject> {
        match upgrade_ask(req) {
            UpgradeAsk::WebSocket if route.websocket => Ok(Some(hyper::upgrade::on(req))),
            UpgradeAsk::WebSocket | UpgradeAsk::BadWebSocket => {
                Err(Reject::Upgrade(if route.websocket {
                    "a WebSocket upgrade needs GET over HTTP/1.1 with Connection: upgrade, Upgrade: websocket, one Sec-WebSocket-Key and Sec-WebSocket-Version: 13"
                } else {
                    "WebSocket is not enabled on this route (websocket = true in its [[routes]] entry)"
                }))
            }
            UpgradeAsk::Other => {
                tracing::debug!(path = %encoded, "upgrade headers removed: only WebSocket may upgrade");
                Ok(None)
            }
            UpgradeAsk::None => Ok(None),
        }
    }

    /// The request body, limited to `gateway.max_body`, and (when there is one) the state that
    /// says whether the client finished it or broke it — none for a body the gateway has
    /// `received` whole already.
    fn bounded(&self, body: Body, received: bool) -> (Body, Option<Arc<BodyState>>) {
        // A body whose length hyper already knows (Content-Length, checked above, or none at
        // all) cannot outgrow the limit; only a chunked body needs the counting wrapper.
        let known = axum::body::HttpBody::size_hint(&body)
            .upper()
            .is_some_and(|n| n <= self.max_body as u64);
        let body = if known {
            body
        } else {
            Body::new(http_body_util::Limited::new(body, self.max_body))
        };
        // An upstream that times out while still waiting for the body is the client's delay
        // (408), not the upstream's.
        if (received && known) || axum::body::HttpBody::is_end_stream(&body) {
            return (body, None);
        }
        let (tracked, state) = ReadToEnd::new(body);
        (Body::new(tracked), Some(state))
    }
}

/// What the upstream's answer (or its absence) becomes: the response streamed back within the
/// deadline, a WebSocket tunnel, or the refusal that says whose fault it was.
fn answer(
    result: Result<Result<Response<Body>, pool::Error>, tokio::time::error::Elapsed>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    body_state: Option<&BodyState>,
    base: &str,
    deadline: tokio::time::Instant,
) -> Result<Response<Body>, Reject> {
    let upstream = || base.to_owned();
    match result {
        Ok(Ok(mut resp)) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                // Switching to a protocol nobody asked for (or to another than WebSocket)
                // would join the two connections past every check.
                return match upgrade {
                    Some(client_side) if accepts_websocket(&resp) => {
                        upgrade::join(client_side, hyper::upgrade::on(&mut resp));
                        // 101 keeps its Upgrade/Connection headers: they are the answer.
                        Ok(resp.map(Body::new))
                    }
                    _ => Err(Reject::UpstreamSwitched {
                        upstream: upstream(),
                    }),
                };
            }
            let mut resp = resp.map(|b| Body::new(Deadline::new(b, deadline)));
            headers::clean_response(&mut resp);
            Ok(resp)
        }
        // A chunked body grew past gateway.max_body while it streamed: the upstream got an
        // aborted request, the client gets the reason; the rest of its body is unread.
        Ok(Err(e)) if body::over_limit(&*e) => Err(Reject::BodyTooLarge { streaming: true }),
        // The client's body broke off or was badly framed (a malformed chunk size, say): the
        // upstream got an aborted request, and the fault is the client's.
        Ok(Err(_)) if body_state.is_some_and(|s| s.failed()) => Err(Reject::BadBody),
        Ok(Err(e)) => Err(Reject::UpstreamFailed {
            upstream: upstream(),
            error: pool::chain(&*e),
        }),
        // Still waiting for the client's body when the upstream gave up: the client's delay.
        Err(_) if body_state.is_some_and(|s| !s.finished()) => Err(Reject::BodyTooSlow),
        Err(_) => Err(Reject::UpstreamTimeout {
            upstream: upstream(),
        }),
    }
}
