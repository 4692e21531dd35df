//! The gateway's request path (DESIGN.md §2), top to bottom in [`Gateway::handle`]:
//! canonicalize → route → authenticate → authorize → CSRF → respond or forward.
//!
//! The hot path reads no database: keys (from the identity provider's key ring), routes, policies
//! and revocations live in memory; [`Gateway::spawn_refresh`] re-reads policies and revocations
//! from the store twice a second, so a change reaches every node within a second.

pub mod authn;
pub mod canonical;
pub mod forwarded;
pub mod issuers;
pub mod proxy;
pub mod route;
pub mod settings;

/// New tokens for a browser session whose access token expired.
#[derive(Debug, Clone)]
pub struct Refreshed {
    pub access: String,
    pub refresh: String,
    /// Cookie lifetime, seconds.
    pub max_age: i64,
}

/// Refreshes a browser session (the identity provider's refresh grant, in process).
pub trait Refresher: Send + Sync {
    fn refresh(
        &self,
        refresh_token: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Refreshed>> + Send + '_>>;
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use portcullis_policy::{PolicySet, parse_file};
use portcullis_store::Store;
use portcullis_token::Clock;
use serde_json::json;
use tower::ServiceExt;

use crate::authn::{AuthError, Authenticator, Identity, KeySource, RevokedSet};
use crate::route::{Route, RouteTable, Target};
use crate::settings::{GatewaySettings, RouteConfig, RouteKind};

/// The gateway.
pub struct Gateway {
    settings: GatewaySettings,
    routes: RouteTable,
    auth: Authenticator,
    policies: ArcSwap<PolicySet>,
    client: proxy::UpstreamClient,
    clock: Clock,
    /// Signed assertions per (token, audience), reused for 30 of their 60 seconds.
    assertions: moka::sync::Cache<String, HeaderValue>,
    refresher: std::sync::OnceLock<Arc<dyn Refresher>>,
    /// One refresh per refresh token at a time: parallel requests of a burst share its result.
    flights: moka::sync::Cache<String, Arc<tokio::sync::OnceCell<Option<Refreshed>>>>,
    /// `X-Forwarded-Proto`, from the public origin (fixed at start).
    forwarded_proto: &'static str,
    /// The route label of requests no route matched.
    no_route: Arc<str>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.routes.routes().len())
            .finish_non_exhaustive()
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON error answer: `{"error": code}`.
fn error(status: StatusCode, code: &'static str) -> Response<Body> {
    json_response(status, json!({ "error": code }))
}

fn redirect(location: &str) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The most options a request's `Connection` headers may name together.
const MAX_CONNECTION_OPTIONS: usize = 16;

/// `response`, with the connection closed after it: for requests whose framing or body cannot be
/// trusted to have ended where the server thinks.
fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn bad_request(message: &str) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "error": "bad_request", "message": message }),
    )
}

/// The CSRF rule for cookie-authenticated unsafe requests, shared by the gateway and the
/// session endpoints: `Origin` equals `origin`, or (without `Origin`) `Sec-Fetch-Site:
/// same-origin`. A missing or `null` origin is not same-origin.
pub fn same_origin(headers: &axum::http::HeaderMap, origin: &str) -> bool {
    match headers.get(header::ORIGIN) {
        Some(o) => o.to_str().is_ok_and(|o| o == origin),
        None => headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("same-origin"),
    }
}

/// Exactly one `Host` (none is allowed before HTTP/1.1), holding a bare `host[:port]`.
fn valid_host(req: &Request<Body>) -> bool {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => {
            let v = h.as_bytes();
            !v.is_empty()
                && !v.contains(&b'@')
                && axum::http::uri::Authority::try_from(v)
                    .is_ok_and(|a| a.as_str().len() == v.len())
        }
        (None, None) => req.version() < axum::http::Version::HTTP_11,
        _ => false,
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl Gateway {
    pub fn new(
        settings: GatewaySettings,
        routes: &[RouteConfig],
        issuers: &[issuers::IssuerConfig],
        keys: Arc<dyn KeySource>,
        clock: Clock,
    ) -> Result<Gateway, String> {
        let routes = RouteTable::new(routes)?;
        let external = issuers
            .iter()
            .map(issuers::external)
            .collect::<Result<Vec<_>, _>>()?;
        let auth = Authenticator::new(
            settings.issuer.clone(),
            settings.groups_claim.clone(),
            settings.access_cookie.clone(),
            settings.token_leeway,
            keys,
            external,
            clock.clone(),
        );
        let client = proxy::client(settings.connect_timeout);
        let forwarded_proto = if settings.public_origin.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        Ok(Gateway {
            forwarded_proto,
            no_route: Arc::from("-"),
            settings,
            routes,
            auth,
            policies: ArcSwap::from_pointee(PolicySet::default()),
            client,
            clock,
            refresher: std::sync::OnceLock::new(),
            flights: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            assertions: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
        })
    }

    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    /// Enables transparent refresh of browser sessions.
    pub fn set_refresher(&self, refresher: Arc<dyn Refresher>) {
        let _ = self.refresher.set(refresher);
    }

    fn cookie(&self, name: &str, value: &str, max_age: i64) -> Option<HeaderValue> {
        let secure = if self.settings.cookie_secure {
            "; Secure"
        } else {
            ""
        };
        HeaderValue::from_str(&format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Lax{secure}; Max-Age={max_age}"
        ))
        .ok()
    }

    /// The refresh cookie's value, if exactly one is present.
    fn refresh_cookie<'h>(&self, headers: &'h axum::http::HeaderMap) -> Option<&'h str> {
        let values = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        portcullis_token::cookie::single(values, &self.settings.refresh_cookie)
            .ok()
            .flatten()
    }

    /// Refreshes an expired cookie session once for a burst of parallel requests, and returns
    /// the identity of the new access token plus the cookies to set.
    async fn refresh_session(
        &self,
        headers: &axum::http::HeaderMap,
        outcome: &mut Outcome,
    ) -> Result<(Arc<Identity>, bool), AuthError> {
        let refresher = self.refresher.get().ok_or(AuthError::Missing)?;
        let refresh = self
            .refresh_cookie(headers)
            .ok_or(AuthError::Missing)?
            .to_owned();
        let flight = self
            .flights
            .get_with(refresh.clone(), || Arc::new(tokio::sync::OnceCell::new()));
        let refreshed = flight
            .get_or_init(|| refresher.refresh(refresh))
            .await
            .clone()
            .ok_or(AuthError::Revoked)?;
        let id = self.auth.authenticate(&refreshed.access).await?;
        outcome.set_cookies.extend(self.cookie(
            &self.settings.access_cookie,
            &refreshed.access,
            refreshed.max_age,
        ));
        outcome.set_cookies.extend(self.cookie(
            &self.settings.refresh_cookie,
            &refreshed.refresh,
            refreshed.max_age,
        ));
        metrics::counter!("portcullis_gateway_session_refreshes_total").increment(1);
        Ok((id, true))
    }

    /// Whether a cookie session's access token is within `gateway.refresh_margin` of its end
    /// (at most half its lifetime, so a short-lived token is not refreshed on every request).
    fn expires_soon(&self, id: &Identity) -> bool {
        let lifetime = id.iat.map_or(i64::MAX, |iat| id.exp - iat);
        let margin = self.settings.refresh_margin.min(lifetime / 2);
        id.exp - self.clock.now() <= margin
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Replaces the policies in force.
    pub fn set_policies(&self, set: PolicySet) {
        self.policies.store(Arc::new(set));
    }

    /// Loads policies and revocations now, then keeps them fresh (every 500 ms) in the background.
    pub async fn spawn_refresh(
        self: &Arc<Self>,
        store: Store,
    ) -> Result<(), portcullis_store::StoreError> {
        let mut state = RefreshState::default();
        self.refresh(&store, &mut state).await?;
        // External issuers' keys: fetched now if they answer; otherwise on first use.
        for ext in self.auth.external.values() {
            ext.refresh().await;
        }
        let gw = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(gw) = gw.upgrade() else { return };
                tracing::trace!("gateway refresh");
                if let Err(e) = gw.refresh(&store, &mut state).await {
                    // Keep serving with what is in memory; revocations are re-read in full next time.
                    tracing::warn!(error = %e, "gateway could not refresh policies or revocations");
                    state.revocations_since = None;
                }
            }
        });
        Ok(())
    }

    async fn refresh(
        &self,
        store: &Store,
        state: &mut RefreshState,
    ) -> Result<(), portcullis_store::StoreError> {
        let version = store.policy_version().await?;
        if version != state.policy_version {
            if let Some(current) = store.current_policy().await? {
                match parse_file(&current.document) {
                    Ok(docs) => {
                        self.set_policies(PolicySet::new(docs, current.version));
                        tracing::info!(version = current.version, "policies in force");
                    }
                    Err(e) => {
                        tracing::error!(version = current.version, error = %e, "stored policy version is invalid; keeping the previous one")
                    }
                }
            }
            state.policy_version = version;
        }
        let now = self.clock.now();
        // Incremental reads, with a full re-read every minute to forget expired entries.
        let full = state.revocations_since.is_none() || state.reads.is_multiple_of(120);
        let since = if full {
            0
        } else {
            state.revocations_since.unwrap_or(0) - 2
        };
        let rows = store.revocations_since(since, now).await?;
        let mut set: RevokedSet = if full {
            RevokedSet::default()
        } else {
            (*self.auth.revocations.snapshot()).clone()
        };
        let mut latest = state.revocations_since.unwrap_or(0);
        let before = set.len();
        for (kind, value, _expires, created) in rows {
            set.insert(&kind, value);
            latest = latest.max(created);
        }
        if full || set.len() != before {
            tracing::debug!(revoked = set.len(), "revocation set updated");
            self.auth.revocations.replace(set);
        }
        state.revocations_since = Some(latest.max(now - 5));
        state.reads += 1;
        Ok(())
    }

    /// Handles one request.
    pub async fn handle(self: Arc<Self>, peer: SocketAddr, req: Request<Body>) -> Response<Body> {
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let mut outcome = Outcome::default();
        let mut response = self.handle_inner(peer, req, &mut outcome).await;
        for c in outcome.set_cookies.drain(..) {
            response.headers_mut().append(header::SET_COOKIE, c);
        }
        let status = response.status().as_u16();
        let route: Arc<str> = outcome
            .route
            .take()
            .unwrap_or_else(|| self.no_route.clone());
        metrics::counter!("portcullis_gateway_requests_total", "route" => route.clone(), "status" => status_label(status), "decision" => outcome.decision).increment(1);
        metrics::histogram!("portcullis_gateway_request_duration_seconds", "decision" => outcome.decision).record(started.elapsed().as_secs_f64());
        if self.settings.access_log {
            // The canonical path only (never the query, which may carry secrets), never a token.
            tracing::info!(
                target: "portcullis::access",
                client = %peer.ip(),
                method = %method,
                path = outcome.path.as_deref().unwrap_or("-"),
                route = &*route,
                principal = outcome.principal.as_deref().unwrap_or("-"),
                decision = outcome.decision,
                status,
                micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                "request"
            );
        }
        response
    }

    async fn handle_inner(
        &self,
        peer: SocketAddr,
        req: Request<Body>,
        outcome: &mut Outcome,
    ) -> Response<Body> {
        outcome.decision = "bad_request";
        // 0. Framing: hyper already refuses conflicting Content-Length values; a request with
        //    both Content-Length and Transfer-Encoding, or a coding other than chunked, is how
        //    requests are smuggled past a proxy (RFC 9112 §6.3): refuse it and close.
        let te = req
            .headers()
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .count();
        if te > 0 {
            let only_chunked = te == 1
                && req
                    .headers()
                    .get(header::TRANSFER_ENCODING)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
            if !only_chunked || req.headers().contains_key(header::CONTENT_LENGTH) {
                tracing::info!("request refused: ambiguous message framing");
                return closing(bad_request(
                    "ambiguous message framing (Content-Length with Transfer-Encoding)",
                ));
            }
        }
        // A real `Connection` header names a few options; thousands of them would make header
        // hygiene (each header checked against each option) the attacker's lever on our CPU.
        let options: usize = req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes().split(|b| *b == b',').count())
            .sum();
        if options > MAX_CONNECTION_OPTIONS {
            tracing::info!(options, "request refused: too many Connection options");
            return closing(bad_request("too many options in the Connection header"));
        }
        // RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host, and a valid one. Two Hosts
        // are how a request means one thing to the gateway and another to the backend.
        if !valid_host(&req) {
            tracing::info!("request refused: missing, repeated or invalid Host");
            return closing(bad_request(
                "the request needs exactly one valid Host header",
            ));
        }
        // 1. Canonicalize: origin-form only, one meaning for the path.
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            return bad_request("the request target must be a path");
        }
        let canonical = match canonical::canonicalize(req.uri().path()) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(path = %req.uri().path().escape_debug(), reason = %e, "request refused: bad path");
                return bad_request(&e.to_string());
            }
        };
        if self.settings.access_log {
            outcome.path = Some(canonical.decoded.clone());
        }
        // 2. Route.
        // Split once: routing and authorization both match these segments.
        let segments = portcullis_policy::path_segments(&canonical.lower);
        let Some(route) = self.routes.find_segments(req.method().as_str(), &segments) else {
            outcome.decision = "no_route";
            return error(StatusCode::NOT_FOUND, "not_found");
        };
        outcome.route = Some(route.label.clone());
        outcome.decision = "public";
        // 3–6. Authenticate, authorize, CSRF (not for public routes).
        let mut identity: Option<Arc<Identity>> = None;
        if route.kind != RouteKind::Public {
            let credential = self.auth.credential(req.headers(), &route.sources);
            let cookie_allowed = route.sources.contains(&settings::TokenSource::Cookie);
            let verified = match credential {
                Ok((token, from_cookie)) => match self.auth.authenticate(token).await {
                    // An expired access cookie with a live refresh cookie: refresh in line, so
                    // the browser never sees an expiry while its session is alive.
                    Err(AuthError::Invalid(portcullis_token::jwt::VerifyError::Expired))
                        if from_cookie =>
                    {
                        self.refresh_session(req.headers(), outcome).await
                    }
                    // About to expire: refresh now, so the upstream does not get an identity
                    // that expires while it works; if that fails, the token is still valid.
                    Ok(id)
                        if from_cookie
                            && self.expires_soon(&id)
                            && self.refresh_cookie(req.headers()).is_some() =>
                    {
                        match self.refresh_session(req.headers(), outcome).await {
                            Ok(fresh) => Ok(fresh),
                            Err(e) => {
                                tracing::debug!(reason = %e, "early session refresh failed; the access token is still valid");
                                Ok((id, true))
                            }
                        }
                    }
                    other => other.map(|id| (id, from_cookie)),
                },
                Err(AuthError::Missing)
                    if cookie_allowed && self.refresh_cookie(req.headers()).is_some() =>
                {
                    self.refresh_session(req.headers(), outcome).await
                }
                Err(e) => Err(e),
            };
            let (id, from_cookie) = match verified {
                Ok(ok) => ok,
                Err(e) => {
                    outcome.decision = "unauthenticated";
                    metrics::counter!("portcullis_gateway_auth_failures_total", "reason" => auth_reason(e)).increment(1);
                    return self.unauthenticated(&route, &req, e);
                }
            };
            if self.settings.access_log {
                outcome.principal = Some(id.sub.clone());
            }
            let decision = self.policies.load().decide_segments(
                &id.principals,
                req.method().as_str(),
                &segments,
            );
            if !decision.allowed {
                outcome.decision = "denied";
                tracing::info!(path = %canonical.decoded, sub = %id.sub, decision = %decision, "request denied");
                return match route.kind {
                    RouteKind::Page => redirect(&self.settings.forbidden_url),
                    _ => error(StatusCode::FORBIDDEN, "forbidden"),
                };
            }
            // A WebSocket handshake is a GET, but it opens a channel both ways: with a cookie it
            // must come from our own origin too (cross-site WebSocket hijacking).
            let unsafe_request =
                !is_safe(req.method()) || req.headers().contains_key(header::UPGRADE);
            if from_cookie && unsafe_request && !self.same_origin(&req) {
                outcome.decision = "cross_site";
                tracing::info!(path = %canonical.decoded, sub = %id.sub, "request refused: cross-site request with a cookie credential");
                return json_response(
                    StatusCode::FORBIDDEN,
                    json!({ "error": "forbidden", "message": "cross-site request" }),
                );
            }
            outcome.decision = "allowed";
            identity = Some(id);
        }
        // 7. Forward or serve.
        match &route.target {
            Target::Upstream {
                base,
                preserve_host,
                upstream_timeout,
                total_timeout,
            } => {
                let assertion = match (&route.assertion, identity.as_deref()) {
                    (Some(aud), Some(id)) => match self.assertion(id, aud) {
                        Some(a) => Some(a),
                        None => {
                            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
                        }
                    },
                    _ => None,
                };
                let fwd = proxy::Forwarding {
                    client_ip: peer.ip(),
                    proto: self.forwarded_proto,
                    host: req.headers().get(header::HOST).cloned(),
                    preserve_host: *preserve_host,
                    identity: identity.as_deref(),
                    strip: &self.settings.strip_request_headers,
                    our_cookies: [&self.settings.access_cookie, &self.settings.refresh_cookie],
                };
                let upstream = proxy::Upstream {
                    base,
                    headers_within: upstream_timeout.unwrap_or(self.settings.upstream_timeout),
                    done_within: total_timeout.unwrap_or(self.settings.total_timeout),
                };
                let mut response = self
                    .forward(
                        req,
                        &route,
                        &upstream,
                        &canonical.encoded,
                        fwd,
                        assertion,
                        outcome,
                    )
                    .await;
                if route.kind != RouteKind::Public
                    && response.status() != StatusCode::SWITCHING_PROTOCOLS
                {
                    proxy::protect_cache(response.headers_mut(), route.shared_cache);
                }
                response
            }
            Target::Static { dir, spa_fallback } => {
                // The route's literal prefix maps to the directory: `/static/**` serves
                // `/static/app.js` from `DIR/app.js`.
                let skip = route.pattern.literal_prefix_len();
                let rest: Vec<&str> = canonical.encoded.split('/').skip(1 + skip).collect();
                let local = format!("/{}", rest.join("/"));
                let mut response = serve_static(req, dir, *spa_fallback, &local).await;
                if route.kind != RouteKind::Public {
                    proxy::protect_cache(response.headers_mut(), route.shared_cache);
                }
                response
            }
        }
    }

    fn unauthenticated(&self, route: &Route, req: &Request<Body>, e: AuthError) -> Response<Body> {
        tracing::info!(path = %req.uri().path(), reason = %e, "request refused: not authenticated");
        match route.kind {
            RouteKind::Page => {
                let target = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let encoded: String =
                    url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
                redirect(&format!("{}?return_to={encoded}", self.settings.login_url))
            }
            _ => {
                let challenge = if e == AuthError::Missing {
                    "Bearer realm=\"portcullis\""
                } else {
                    "Bearer realm=\"portcullis\", error=\"invalid_token\""
                };
                let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                r
            }
        }
    }

    /// `Origin` equals the public origin, or `Sec-Fetch-Site: same-origin`. A missing or `null`
    /// origin is not same-origin.
    fn same_origin(&self, req: &Request<Body>) -> bool {
        same_origin(req.headers(), &self.settings.public_origin)
    }

    /// A short JWT about the caller for the upstream (audience `aud`, 60 s), signed with the
    /// access-token key and cached for 30 s per token and audience, so signing is not per request.
    fn assertion(&self, id: &Identity, aud: &str) -> Option<HeaderValue> {
        let key = format!(
            "{}\u{0}{}\u{0}{}",
            id.jti.as_deref().unwrap_or(&id.sub),
            id.exp,
            aud
        );
        if let Some(v) = self.assertions.get(&key) {
            return Some(v);
        }
        let signing = self.auth.keys.assertion_key()?;
        let now = self.clock.now();
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), json!(self.auth.issuer));
        claims.insert("aud".into(), json!(aud));
        claims.insert("sub".into(), json!(id.sub));
        claims.insert("token_use".into(), json!("assertion"));
        claims.insert("groups".into(), json!(id.groups));
        claims.insert("scope".into(), json!(id.scopes.join(" ")));
        if let Some(u) = &id.username {
            claims.insert("username".into(), json!(u));
        }
        if let Some(c) = &id.client_id {
            claims.insert("client_id".into(), json!(c));
        }
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + 60));
        let token = portcullis_token::jwt::sign(&signing, "JWT", &claims).ok()?;
        let value = HeaderValue::from_str(&token).ok()?;
        self.assertions.insert(key, value.clone());
        Some(value)
    }

    #[allow(clippy::too_many_arguments)] // issue 11 splits forwarding into its own stage
    async fn forward(
        &self,
        req: Request<Body>,
        route: &Route,
        target: &proxy::Upstream<'_>,
        encoded: &str,
        fwd: proxy::Forwarding<'_>,
        assertion: Option<HeaderValue>,
        outcome: &mut Outcome,
    ) -> Response<Body> {
        if req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|n| n > self.settings.max_body)
        {
            outcome.decision = "bad_request";
            return error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        }
        let max = self.settings.max_body;
        // Only a WebSocket handshake on a route that allows it becomes a tunnel. Any other
        // protocol (`h2c` above all: every later request on the connection would reach the
        // backend unchecked) loses its upgrade headers, which are hop-by-hop anyway, and goes
        // upstream as an ordinary request.
        let mut req = req;
        let upgrade = match proxy::upgrade_ask(&req) {
            proxy::UpgradeAsk::WebSocket if route.websocket => Some(hyper::upgrade::on(&mut req)),
            proxy::UpgradeAsk::WebSocket | proxy::UpgradeAsk::BadWebSocket => {
                outcome.decision = "bad_request";
                let message = if route.websocket {
                    "a WebSocket upgrade needs GET over HTTP/1.1 with Connection: upgrade, Upgrade: websocket, one Sec-WebSocket-Key and Sec-WebSocket-Version: 13"
                } else {
                    "WebSocket is not enabled on this route (websocket = true in its [[routes]] entry)"
                };
                tracing::info!(path = %encoded, "request refused: {message}");
                return bad_request(message);
            }
            proxy::UpgradeAsk::Other => {
                tracing::debug!(path = %encoded, "upgrade headers removed: only WebSocket may upgrade");
                None
            }
            proxy::UpgradeAsk::None => None,
        };
        let (parts, body) = req.into_parts();
        // A body whose length hyper already knows (Content-Length, checked above, or none at
        // all) cannot outgrow the limit; only a chunked body needs the counting wrapper.
        let bounded = axum::body::HttpBody::size_hint(&body)
            .upper()
            .is_some_and(|n| n <= max as u64);
        let body = if bounded {
            body
        } else {
            Body::new(http_body_util::Limited::new(body, max))
        };
        // Whether the client has sent its whole body, when it has one: an upstream that times
        // out while still waiting for the body is the client's delay (408), not the upstream's.
        let has_body = !axum::body::HttpBody::is_end_stream(&body);
        let (body, body_state) = if has_body {
            let (tracked, state) = proxy::ReadToEnd::new(body);
            (Body::new(tracked), Some(state))
        } else {
            (body, None)
        };
        let req = Request::from_parts(parts, body);
        let base = target.base;
        let upstream = match proxy::upstream_request(req, base, encoded, &fwd) {
            Ok(mut r) => {
                if let Some(a) = assertion {
                    r.headers_mut()
                        .insert(header::HeaderName::from_static("x-auth-assertion"), a);
                }
                if upgrade.is_some() {
                    r.headers_mut()
                        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                }
                r
            }
            Err(e) => {
                // The canonical path always makes a valid URI; this is a bug, not the caller's.
                tracing::error!(error = %e, "request cannot be forwarded");
                return error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
            }
        };
        let sent = std::time::Instant::now();
        let deadline = tokio::time::Instant::from_std(sent) + target.done_within;
        let result = tokio::time::timeout(
            target.headers_within.min(target.done_within),
            self.client.request(upstream),
        )
        .await;
        metrics::histogram!("portcullis_gateway_upstream_seconds")
            .record(sent.elapsed().as_secs_f64());
        match result {
            Ok(Ok(mut resp)) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    && (upgrade.is_none() || !proxy::accepts_websocket(&resp))
                {
                    // Switching to a protocol nobody asked for (or to another than WebSocket)
                    // would join the two connections past every check.
                    tracing::warn!(
                        upstream = base,
                        "upstream switched protocols unasked; refused"
                    );
                    outcome.decision = "upstream_error";
                    return closing(error(StatusCode::BAD_GATEWAY, "bad_gateway"));
                }
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_side) = upgrade
                {
                    let upstream_side = hyper::upgrade::on(&mut resp);
                    tokio::spawn(async move {
                        match (client_side.await, upstream_side.await) {
                            (Ok(client), Ok(server)) => {
                                let mut client = hyper_util::rt::TokioIo::new(client);
                                let mut server = hyper_util::rt::TokioIo::new(server);
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                            (c, u) => tracing::warn!(
                                client = c.is_ok(),
                                upstream = u.is_ok(),
                                "upgrade failed"
                            ),
                        }
                    });
                    // 101 keeps its Upgrade/Connection headers: they are the answer.
                    return resp.map(Body::new);
                }
                let mut resp = resp.map(|b| Body::new(proxy::Deadline::new(b, deadline)));
                proxy::clean_response(&mut resp);
                resp
            }
            Ok(Err(e)) if body_over_limit(&e) => {
                // A chunked body grew past gateway.max_body while it streamed: the upstream got
                // an aborted request, the client gets the reason; the rest of its body is unread.
                outcome.decision = "bad_request";
                tracing::info!(
                    upstream = base,
                    "request refused: body over gateway.max_body"
                );
                closing(error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"))
            }
            Ok(Err(_)) if body_state.as_ref().is_some_and(|s| s.failed()) => {
                // The client's body broke off or was badly framed (a malformed chunk size, say):
                // the upstream got an aborted request, and the fault is the client's.
                outcome.decision = "bad_request";
                tracing::info!(
                    upstream = base,
                    "request refused: malformed or incomplete request body"
                );
                closing(bad_request("the request body is malformed or incomplete"))
            }
            Ok(Err(e)) => {
                outcome.decision = "upstream_error";
                tracing::warn!(upstream = base, error = %e, "upstream failed");
                error(StatusCode::BAD_GATEWAY, "bad_gateway")
            }
            Err(_) if body_state.as_ref().is_some_and(|s| !s.finished()) => {
                outcome.decision = "bad_request";
                tracing::info!(
                    upstream = base,
                    "request refused: the client did not send its body in time"
                );
                closing(error(StatusCode::REQUEST_TIMEOUT, "request_timeout"))
            }
            Err(_) => {
                outcome.decision = "upstream_error";
                tracing::warn!(upstream = base, "upstream timed out");
                error(StatusCode::GATEWAY_TIMEOUT, "gateway_timeout")
            }
        }
    }
}

/// What one request came to, for the access log and metrics (bounded label values only).
#[derive(Default)]
struct Outcome {
    /// Cookies to set on the response (a session refreshed in line).
    set_cookies: Vec<HeaderValue>,
    path: Option<String>,
    route: Option<Arc<str>>,
    principal: Option<String>,
    decision: &'static str,
}

/// Whether an upstream failure was the request body outgrowing its limit.
fn body_over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The status label of a metric: no allocation for the statuses a gateway answers with.
fn status_label(status: u16) -> metrics::SharedString {
    let s = match status {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        303 => "303",
        304 => "304",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(s)
}

fn auth_reason(e: AuthError) -> &'static str {
    match e {
        AuthError::Missing => "missing",
        AuthError::Ambiguous => "ambiguous",
        AuthError::MalformedHeader => "malformed",
        AuthError::Invalid(_) => "invalid",
        AuthError::Revoked => "revoked",
    }
}

#[derive(Default)]
struct RefreshState {
    policy_version: i64,
    revocations_since: Option<i64>,
    reads: u64,
}

async fn serve_static(
    req: Request<Body>,
    dir: &std::path::Path,
    spa_fallback: bool,
    encoded: &str,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.uri = match format!("{encoded}{query}").parse() {
        Ok(u) => u,
        Err(_) => return bad_request("the path cannot be served"),
    };
    let req = Request::from_parts(parts, body);
    let serve = tower_http::services::ServeDir::new(dir)
        .append_index_html_on_directories(true)
        .precompressed_gzip()
        .precompressed_br();
    let result = if spa_fallback {
        serve
            .fallback(tower_http::services::ServeFile::new(dir.join("index.html")))
            .oneshot(req)
            .await
            .map(|r| r.map(Body::new))
    } else {
        serve.oneshot(req).await.map(|r| r.map(Body::new))
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "static file error");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
        }
    }
}
