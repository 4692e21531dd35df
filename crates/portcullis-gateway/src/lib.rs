//! The gateway's request path (DESIGN.md §2, extended in docs/architecture.md), read top to
//! bottom in [`Gateway::pipeline`]: framing → canonicalize → CORS preflight → route → limits by
//! network → authenticate (refreshing browser sessions) → authorize → CSRF → limits by caller and
//! quotas → validate → transform → forward or serve a file. Each stage is a module with one entry point that returns
//! `Result<_, Reject>`; a refusal becomes its answer, its log line and its metric label in one
//! place ([`reject`]), and every request is recorded once ([`telemetry`]).
//!
//! The hot path reads no database: keys (from the identity provider's key ring), routes, policies
//! and revocations live in memory; [`Gateway::spawn_refresh`] ([`sync`]) re-reads policies and
//! revocations from the store twice a second, so a change reaches every node within a second.

pub mod authn;
mod authz;
pub mod canonical;
pub mod cors;
mod csrf;
pub mod forward;
pub mod forwarded;
mod framing;
pub mod issuers;
pub mod limits;
pub mod reject;
mod respond;
pub mod route;
mod session;
pub mod settings;
mod static_files;
mod sync;
mod telemetry;
pub mod transform;
pub mod validate;

#[cfg(test)]
mod pipeline_tests;

pub use csrf::same_origin;
pub use reject::{Fault, Reject};
pub use session::{RefreshError, Refreshed, Refresher};

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use portcullis_policy::PolicySet;
use portcullis_token::Clock;

use crate::authn::{Authenticator, Identity, KeySource};
use crate::route::{RouteTable, Target};
use crate::settings::{GatewaySettings, RouteKind};
use crate::telemetry::Outcome;

/// Whether the stages get spans of their own (`authenticate`, `authorize`, `upstream`, target
/// `portcullis::otel`): on when traces are exported, so that without it they cost nothing.
static STAGE_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the stages' spans on (when traces are exported).
pub fn set_stage_spans(on: bool) {
    STAGE_SPANS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether request metrics are recorded (a metrics recorder is installed).
static METRICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the request metrics on: call it once a recorder is installed (`server.admin_listen`).
/// Off, a request spends no clock reads and builds no metric keys for them (the `metrics`
/// macros build their labelled keys even when no recorder would take them).
pub fn set_metrics(on: bool) {
    METRICS.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn metrics_on() -> bool {
    METRICS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A stage's span, or none when traces are not exported.
fn stage_span(name: &'static str) -> tracing::Span {
    if !STAGE_SPANS.load(std::sync::atomic::Ordering::Relaxed) {
        return tracing::Span::none();
    }
    match name {
        "authenticate" => tracing::info_span!(target: "portcullis::otel", "authenticate"),
        "authorize" => tracing::info_span!(target: "portcullis::otel", "authorize"),
        _ => tracing::info_span!(target: "portcullis::otel", "upstream"),
    }
}

/// The gateway.
pub struct Gateway {
    settings: GatewaySettings,
    routes: RouteTable,
    auth: Authenticator,
    policies: ArcSwap<PolicySet>,
    sessions: session::Sessions,
    forwarder: forward::Forwarder,
    clock: Clock,
    /// The route label of requests no route matched.
    no_route: Arc<str>,
    /// portcullis' own services behind `builtin` routes, registered at start-up.
    builtins: std::sync::OnceLock<std::collections::HashMap<String, Arc<dyn Builtin>>>,
    /// Quota counts of every route, synced with the store by the refresh task.
    quotas: limits::QuotaCounts,
    /// Wakes the refresh task before its next tick (another node changed something).
    wake: Arc<tokio::sync::Notify>,
    /// The next refresh re-reads every revocation, not only the newest.
    reread_all: std::sync::atomic::AtomicBool,
}

/// One of portcullis' own services behind a `builtin` route. It gets the request after
/// authentication, authorization and the CSRF check, with the caller's identity and address.
pub trait Builtin: Send + Sync {
    fn call(
        &self,
        req: Request<Body>,
        identity: Option<Arc<Identity>>,
        peer: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>>;
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.routes.routes().len())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub fn new(
        settings: GatewaySettings,
        routes: RouteTable,
        external: Vec<Arc<issuers::ExternalIssuer>>,
        keys: Arc<dyn KeySource>,
        clock: Clock,
    ) -> Gateway {
        let mut auth = Authenticator::new(
            settings.issuer.clone(),
            settings.groups_claim.clone(),
            settings.cookies.access().to_owned(),
            settings.token_leeway,
            keys.clone(),
            external,
            clock.clone(),
        );
        // Every claim of every cached token is only kept when a route's transformation reads
        // them (100,000 sessions held ~90 MB of claim trees otherwise unused).
        auth.keep_claims = routes
            .routes()
            .iter()
            .any(|r| r.transform.as_ref().is_some_and(|t| t.uses_claims()));
        Gateway {
            sessions: session::Sessions::new(&settings, clock.clone()),
            forwarder: forward::Forwarder::new(&settings, keys, clock.clone()),
            no_route: Arc::from("-"),
            settings,
            routes,
            auth,
            policies: ArcSwap::from_pointee(PolicySet::default()),
            clock,
            builtins: std::sync::OnceLock::new(),
            quotas: limits::QuotaCounts::default(),
            wake: Arc::new(tokio::sync::Notify::new()),
            reread_all: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Registers the services `builtin` routes name (once, at start-up).
    pub fn set_builtins(&self, services: std::collections::HashMap<String, Arc<dyn Builtin>>) {
        let _ = self.builtins.set(services);
    }

    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    /// Enables transparent refresh of browser sessions.
    pub fn set_refresher(&self, refresher: Arc<dyn Refresher>) {
        self.sessions.set_refresher(refresher);
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

    /// Another node changed policies or revocations: re-read now rather than at the next tick.
    /// `everything`: changes may have been missed, so every revocation is read again.
    pub fn changed_elsewhere(&self, everything: bool) {
        if everything {
            self.reread_all
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    /// Handles one request: the pipeline, a refusal rendered for the route's kind, the cookies of
    /// a refreshed session, and one record of what it came to.
    pub async fn handle(self: Arc<Self>, peer: SocketAddr, req: Request<Body>) -> Response<Body> {
        let started = (metrics_on() || self.settings.access_log).then(std::time::Instant::now);
        let method = req.method().clone();
        let mut outcome = Outcome::default();
        let mut kind = None;
        let mut response = match self.pipeline(peer, req, &mut outcome, &mut kind).await {
            Ok(response) => response,
            Err(reject) => {
                reject.log(outcome.path.as_deref().unwrap_or("-"));
                outcome.decision = reject.label();
                reject.render(kind, &self.settings)
            }
        };
        for c in outcome.set_cookies.drain(..) {
            response.headers_mut().append(header::SET_COOKIE, c);
        }
        if outcome.cors.is_some() || outcome.limit.is_some() {
            // Room for what is added below at once, rather than the map growing twice.
            response.headers_mut().reserve(6);
        }
        if let Some((cors, origin)) = &outcome.cors {
            cors.decorate(origin.as_ref(), response.headers_mut());
        }
        if let Some(limit) = outcome.limit.take()
            && !response.headers().contains_key(limits::RATELIMIT)
        {
            let headers = response.headers_mut();
            headers.insert(limits::RATELIMIT_POLICY, limit.policy);
            headers.insert(limits::RATELIMIT, limit.state);
        }
        let route = outcome
            .route
            .take()
            .unwrap_or_else(|| self.no_route.clone());
        let status = response.status().as_u16();
        telemetry::record(
            &outcome,
            &route,
            peer,
            &method,
            status,
            started,
            self.settings.access_log,
        );
        response
    }

    /// The request path, stage by stage. `kind` is the matched route's, for rendering a refusal.
    async fn pipeline(
        &self,
        peer: SocketAddr,
        req: Request<Body>,
        outcome: &mut Outcome,
        kind: &mut Option<RouteKind>,
    ) -> Result<Response<Body>, Reject> {
        framing::check(&req)?;
        let canonical = canonical::target(req.uri())?;
        // Split once: routing and authorization both match these segments.
        let segments = portcullis_policy::path_segments(&canonical.lower);
        // A CORS preflight asks about another method: answered from the route that method
        // takes, before authentication (browsers send no credential with it).
        if let Some(asked) = cors::preflight_method(req.method(), req.headers())
            && let Some(route) = self.routes.find_segments(&asked, &segments)
            && let Some(cors) = &route.cors
        {
            (outcome.route, *kind, outcome.decision) =
                (Some(route.label.clone()), Some(route.kind), "preflight");
            outcome.path = Some(canonical.decoded);
            return Ok(cors.preflight(req.headers()));
        }
        let route = self
            .routes
            .find_segments(req.method().as_str(), &segments)
            .ok_or(Reject::NoRoute)?;
        (outcome.route, *kind, outcome.decision) =
            (Some(route.label.clone()), Some(route.kind), "public");
        // The decoded path is only logged from here on: moved, not copied.
        outcome.path = Some(canonical.decoded);
        if let Some(cors) = &route.cors {
            outcome.cors = Some((cors.clone(), req.headers().get(header::ORIGIN).cloned()));
        }
        // Limits by network first: a flood costs no token verification past its budget.
        for limit in route.rate_limits.iter().filter(|l| l.by_address()) {
            if let Some(h) = limit.check(peer.ip(), None)? {
                outcome.limit = Some(h);
            }
        }
        let identity = if route.kind == RouteKind::Public {
            None
        } else {
            let caller = tracing::Instrument::instrument(
                self.sessions.authenticate(
                    &self.auth,
                    &route,
                    (req.headers(), req.uri()),
                    &mut outcome.set_cookies,
                ),
                stage_span("authenticate"),
            )
            .await?;
            if self.settings.access_log {
                outcome.principal = Some(caller.identity.sub.clone());
            }
            let authorizing = stage_span("authorize");
            let entered = authorizing.enter();
            authz::authorize(
                &self.policies.load(),
                &caller.identity,
                req.method().as_str(),
                &segments,
                req.uri(),
                self.clock.now(),
            )?;
            csrf::check(
                caller.from_cookie,
                req.method(),
                req.headers(),
                &self.settings.public_origin,
                route.cors.as_deref(),
                &caller.identity,
            )?;
            for limit in route.rate_limits.iter().filter(|l| !l.by_address()) {
                if let Some(h) = limit.check(peer.ip(), Some(&caller.identity))? {
                    outcome.limit = Some(h);
                }
            }
            for (i, quota) in route.quotas.iter().enumerate() {
                self.quotas.check(
                    &route.label,
                    i,
                    quota,
                    Some(&caller.identity),
                    self.clock.now(),
                )?;
            }
            drop(entered);
            outcome.decision = "allowed";
            Some(caller.identity)
        };
        let mut req = req;
        // Validation and transformation read whole bodies on the routes that ask for them:
        // their futures are boxed, so every other request's pipeline future stays small (it is
        // moved on every poll).
        if let Some(rule) = route.validations.iter().find(|v| v.covers(req.method())) {
            req = Box::pin(rule.check(req, self.settings.max_body, self.settings.upstream_timeout))
                .await?;
        }
        let upstream_span = stage_span("upstream");
        let mut response = match &route.target {
            Target::Upstream { .. } => match &route.transform {
                None => {
                    tracing::Instrument::instrument(
                        Box::pin(self.forwarder.forward(
                            req,
                            &route,
                            &canonical.encoded,
                            peer.ip(),
                            identity.as_deref(),
                        )),
                        upstream_span,
                    )
                    .await?
                }
                Some(t) => {
                    let req = Box::pin(t.request(
                        req,
                        identity.as_deref(),
                        self.settings.max_body,
                        self.settings.upstream_timeout,
                    ))
                    .await?;
                    let mut response = tracing::Instrument::instrument(
                        Box::pin(self.forwarder.forward(
                            req,
                            &route,
                            &t.path(&canonical.encoded),
                            peer.ip(),
                            identity.as_deref(),
                        )),
                        upstream_span,
                    )
                    .await?;
                    t.response(response.headers_mut());
                    response
                }
            },
            Target::Builtin { name } => {
                let service = self
                    .builtins
                    .get()
                    .and_then(|b| b.get(name))
                    .cloned()
                    .ok_or(Reject::Internal("a builtin route's service is not running"))?;
                service.call(req, identity.clone(), peer).await
            }
            Target::Static { dir, spa_fallback } => {
                Box::pin(static_files::serve(
                    req,
                    &route,
                    dir,
                    *spa_fallback,
                    &canonical.encoded,
                ))
                .await?
            }
        };
        if route.kind != RouteKind::Public && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            forward::protect_cache(response.headers_mut(), route.shared_cache);
        }
        Ok(response)
    }
}
