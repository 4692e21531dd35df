//! The HTTP server. For now it answers `/healthz` (the process is up) and `/readyz` (the store
//! answers); the identity-provider and gateway issues mount their routes here.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use portcullis_gateway::forwarded::TrustedProxies;

use crate::app::App;
use crate::config::Config;
use crate::failure::Failure;
use crate::http_server::Limits;

/// How long `/readyz` waits for the store before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Deletes audit events past `audit.retention` and quota counts of past periods, hourly.
fn spawn_audit_retention(app: &App) {
    let store = app.store.clone();
    let keep = i64::try_from(app.config.audit_retention.as_secs()).unwrap_or(i64::MAX / 2);
    tokio::spawn(async move {
        let clock = portcullis_token::Clock::system();
        loop {
            match store.prune_audit(clock.now() - keep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "audit events past audit.retention deleted"),
                Err(e) => tracing::warn!(error = %e, "pruning the audit log failed"),
            }
            // Quota counts of periods long over (a month and a bit).
            if let Err(e) = store.prune_quota_usage(clock.now() - 40 * 86400).await {
                tracing::warn!(error = %e, "pruning old quota counts failed");
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
    // Attempt budgets that are full again mean the same as none: forgotten every minute, so a
    // spray from many networks leaves no more rows than a minute of it.
    let store = app.store.clone();
    tokio::spawn(async move {
        let clock = portcullis_token::Clock::system();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            if let Err(e) = store.prune_throttle(clock.now_millis()).await {
                tracing::warn!(error = %e, "pruning sign-in attempt counts failed");
            }
        }
    });
}

/// `portcullis serve`.
pub async fn run(config: Config, listen: Option<SocketAddr>) -> Result<(), Failure> {
    run_config(config, listen, |_| Box::pin(async { Ok(()) })).await
}

/// Something to do once the instance is open and before it serves (the demo seeds users).
pub type BeforeServe = fn(
    &App,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), Failure>> + Send + '_>,
>;

/// Binds the listener, opens the instance (the issuer defaults to the bound address), runs
/// `before`, and serves until SIGTERM or Ctrl-C.
pub async fn run_config(
    mut config: Config,
    listen: Option<SocketAddr>,
    before: BeforeServe,
) -> Result<(), Failure> {
    let addr = listen.unwrap_or(config.listen);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::user(format!(
            "cannot listen on {addr}: {e}. Choose another address with --listen or server.listen"
        ))
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::internal(e.to_string()))?;
    if !config.issuer_configured {
        let tls = !config.certificates.is_empty() || config.acme.is_some();
        let issuer = crate::config::default_issuer(local, tls, config.acme.as_ref());
        config.idp.secure_cookies =
            issuer.starts_with("https://") || portcullis_idp::is_localhost(&issuer);
        config.idp.issuer = issuer;
    }
    if !config.idp.secure_cookies && !config.allow_insecure_http {
        return Err(Failure::user(format!(
            "the issuer {} is plain http on a host other than localhost, where browsers will not keep secure cookies. \
             Serve it over https (set idp.issuer to the https address in front of portcullis), or for development only set server.allow_insecure_http = true",
            config.idp.issuer
        )));
    }
    let admin = match config.admin_listen {
        Some(addr) => Some(admin_listener(addr).await?),
        None => None,
    };
    let app = App::open(config).await?;
    before(&app).await?;
    app.check_signup_groups().await?;
    if let Some(legacy) = &app.config.legacy_verifier {
        let verifier = crate::legacy::HttpVerifier::new(
            legacy.clone(),
            (*app.config.gateway.upstream_tls).clone(),
        )
        .map_err(Failure::internal)?;
        app.provider.set_legacy_verifier(Arc::new(verifier));
    }
    let mut providers = Vec::new();
    for cfg in &app.config.federation {
        let upstream = crate::federation::HttpUpstream::new(
            cfg.clone(),
            &app.config.idp.issuer,
            (*app.config.gateway.upstream_tls).clone(),
        )
        .map_err(Failure::internal)?;
        providers.push(portcullis_idp::federation::FederatedProvider {
            rules: cfg.rules.clone(),
            upstream: Arc::new(upstream),
        });
    }
    app.provider.set_federated_providers(providers);
    let g = app.gateway.settings();
    let sessions = portcullis_session::Sessions::new(
        session_provider(&app).await?,
        &g.public_origin,
        g.cookies.clone(),
        &app.instance_secret,
    )
    .map_err(Failure::internal)?;
    app.gateway.set_refresher(Arc::new(sessions.clone()));
    app.gateway.spawn_refresh(app.store.clone()).await?;
    let keys_changed = Arc::new(tokio::sync::Notify::new());
    spawn_key_refresh(&app, keys_changed.clone());
    spawn_change_listener(&app, keys_changed).await;
    spawn_audit_retention(&app);
    let mut builtins: std::collections::HashMap<String, Arc<dyn portcullis_gateway::Builtin>> =
        std::collections::HashMap::new();
    let api_prefix = crate::admin_api::prefix(&app.config.routes);
    if let Some(prefix) = &api_prefix {
        builtins.insert(
            "admin-api".to_owned(),
            Arc::new(crate::admin_api::AdminApi::new(app.clone(), prefix)),
        );
        tracing::info!(prefix, "admin API enabled");
    }
    if let Some(prefix) = crate::console::prefix(&app.config.routes) {
        let Some(api) = &api_prefix else {
            return Err(Failure::user(
                "the admin-console route needs the admin API: add a [[routes]] entry with builtin = \"admin-api\" (docs/admin.md)",
            ));
        };
        builtins.insert(
            "admin-console".to_owned(),
            Arc::new(crate::console::Console::new(&prefix, api)),
        );
        tracing::info!(prefix, "admin console enabled");
    }
    app.gateway.set_builtins(builtins);
    crate::mail::spawn(
        app.config.mail.clone(),
        app.store.clone(),
        app.accounts.queued(),
        portcullis_token::Clock::system(),
    )
    .map_err(|e| Failure::user(format!("mail: {e}")))?;
    if let Some((listener, handle)) = admin {
        let addr = listener
            .local_addr()
            .map_err(|e| Failure::internal(e.to_string()))?;
        println!("admin listening on http://{addr}");
        let metrics = Router::new().route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, metrics).await });
    }
    let limits = Limits {
        header_timeout: app.config.header_timeout,
        max_header_bytes: app.config.max_header_bytes,
        max_connections: app.config.max_connections,
        shutdown_grace: app.config.shutdown_grace,
        max_streams: app.config.http2_max_streams,
    };
    let answers = app
        .config
        .acme
        .as_ref()
        .map(|_| Arc::new(crate::acme::Answers::default()));
    let tls = if app.config.certificates.is_empty() && app.config.acme.is_none() {
        None
    } else {
        let resolver = crate::tls::Resolver::new(app.config.certificates.clone(), answers.clone());
        crate::tls::spawn_reload(resolver.clone(), portcullis_token::Clock::system());
        if let (Some(acme), Some(answers)) = (&app.config.acme, &answers) {
            let sealer =
                portcullis_token::KeyEncryptionKey::derive_for(&app.instance_secret, "acme v1")
                    .map_err(|e| Failure::internal(e.to_string()))?;
            crate::acme::start(
                acme.clone(),
                app.store.clone(),
                sealer,
                resolver.clone(),
                answers.clone(),
                portcullis_token::Clock::system(),
            )
            .await;
        }
        let config = crate::tls::server_config(resolver, app.config.http2)
            .map_err(|e| Failure::internal(format!("cannot set up TLS: {e}")))?;
        Some(tokio_rustls::TlsAcceptor::from(config))
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let hsts = tls.as_ref().and_then(|_| hsts_header(&app.config));
    if let (Some(addr), Some(_)) = (app.config.redirect_listen, &tls) {
        let origin = app.gateway.settings().public_origin.clone();
        spawn_redirect_listener(addr, origin, limits, answers.clone()).await?;
    }
    // The last line of the start-up banner on stdout, so scripts and tests started with port 0
    // learn the port.
    println!("listening on {scheme}://{local}");
    let _ = std::io::stdout().flush();
    tracing::info!(address = %local, store = app.store.location(), issuer = %app.config.idp.issuer, "portcullis is serving");

    let trusted = Arc::new(app.config.trusted_proxies.clone());
    if trusted.trusts_everyone() {
        tracing::warn!(
            "server.trusted_proxies covers every address: any client can choose the address it is counted as (sign-in throttling, X-Forwarded-For). List only your load balancers"
        );
    }
    // Our own endpoints get one deadline per request, body included; gateway routes have the
    // upstream timeouts.
    let timeout = tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        app.config.request_timeout,
    );
    // While the database does not answer, the endpoints that need it say so at once (503) instead
    // of each waiting for a connection; the gateway keeps serving Bearer tokens from memory.
    app.store.monitor_availability();
    let store = app.store.clone();
    // Applied by the connection loop around the router, not as axum middleware: no boxed future
    // per request on the gateway's hot path.
    let edge = Arc::new(crate::http_server::Edge {
        canonical: app
            .config
            .canonical_redirect
            .then(|| crate::http_server::Canonical {
                origin: app.gateway.settings().public_origin.clone(),
                behind_proxy: !app.config.trusted_proxies.is_empty(),
            }),
        hsts,
    });
    let (gateway, quota_store) = (app.gateway.clone(), app.store.clone());
    let (draining, drain) = (app.draining.clone(), app.config.shutdown_drain);
    let threads = app.config.threads;
    let router = router(app, timeout)?.merge(guarded(sessions.router().layer(timeout), store));
    let workers = crate::http_server::Workers::start(threads)
        .map(Arc::new)
        .map_err(|e| Failure::internal(format!("cannot start the serving threads: {e}")))?;
    crate::http_server::serve(
        listener,
        Some(workers.clone()),
        tls,
        router,
        limits,
        trusted,
        edge,
        async move {
            shutdown_signal().await;
            // Out of the load balancer's rotation first, still serving, then stop accepting.
            if !drain.is_zero() {
                draining.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    "draining: /readyz answers 503 for {} before connections stop being accepted",
                    humantime::format_duration(drain)
                );
                tokio::time::sleep(drain).await;
            }
        },
    )
    .await;
    // Requests served since the refresh task last counted them still count. The serving
    // threads outlive this: store connections opened on them are bound to their event loops.
    gateway.flush_quotas(&quota_store).await;
    drop(workers);
    Ok(())
}

/// `Strict-Transport-Security` for https answers: `server.hsts_max_age`, by default one year
/// when the issuer is not localhost; `None` when off.
fn hsts_header(config: &Config) -> Option<axum::http::HeaderValue> {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    let max_age = match config.hsts_max_age {
        Some(d) => d,
        None if portcullis_idp::is_localhost(&config.idp.issuer) => Duration::ZERO,
        None => YEAR,
    };
    if max_age.is_zero() {
        return None;
    }
    axum::http::HeaderValue::from_str(&format!("max-age={}", max_age.as_secs())).ok()
}

/// `server.redirect_listen`: plain HTTP that answers every request with 308 to the same path
/// and query on the https origin. It never reads a body nor trusts `Host` for the target, and
/// has the main listener's limits (header timeout, connection cap). With ACME it also answers
/// HTTP-01 challenges (`/.well-known/acme-challenge/<token>`).
async fn spawn_redirect_listener(
    addr: SocketAddr,
    origin: String,
    limits: Limits,
    answers: Option<Arc<crate::acme::Answers>>,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::user(format!(
            "cannot listen on {addr} (server.redirect_listen): {e}"
        ))
    })?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::internal(e.to_string()))?;
    println!("redirecting http://{local} to {origin}");
    let redirect = Router::new().fallback(move |uri: axum::http::Uri| {
        let origin = origin.clone();
        async move {
            let target = uri.path_and_query().map_or("/", |p| p.as_str());
            // Only origin-form targets are redirected; anything else gets the origin's root.
            let target = if target.starts_with('/') && !target.starts_with("//") {
                target
            } else {
                "/"
            };
            (
                StatusCode::PERMANENT_REDIRECT,
                [
                    (header::LOCATION, format!("{origin}{target}")),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
            )
        }
    });
    let redirect = match answers {
        Some(answers) => redirect.route(
            "/.well-known/acme-challenge/{token}",
            get(
                move |axum::extract::Path(token): axum::extract::Path<String>| async move {
                    match answers.http01(&token) {
                        Some(key_authorization) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, "text/plain")],
                            key_authorization,
                        )
                            .into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                },
            ),
        ),
        None => redirect,
    };
    tokio::spawn(crate::http_server::serve(
        listener,
        None,
        None,
        redirect,
        limits,
        Arc::new(TrustedProxies::default()),
        Arc::new(crate::http_server::Edge::default()),
        shutdown_signal(),
    ));
    Ok(())
}

/// How long clients are asked to wait while the store is down.
const RETRY_AFTER_SECONDS: &str = "5";

/// `router` behind [`store_guard`].
fn guarded(router: Router, store: portcullis_store::Store) -> Router {
    router.layer(axum::middleware::from_fn_with_state(store, store_guard))
}

/// Answers 503 at once while the store is known to be unreachable, for the endpoints that need
/// it (everything of the identity provider and the sessions but discovery and the JWKS, which
/// relying parties need to keep verifying tokens during an outage).
async fn store_guard(
    State(store): State<portcullis_store::Store>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if store.is_available() || req.uri().path().starts_with("/.well-known/") {
        return next.run(req).await;
    }
    unavailable(&req)
}

/// `503` with `Retry-After`: OAuth 2.0's `temporarily_unavailable` as JSON, or a short page for
/// a browser.
fn unavailable(req: &axum::extract::Request) -> Response {
    let html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let mut response = if html {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!doctype html><title>Try again shortly</title><p>Sign-in is unavailable for a moment. Try again in a few seconds.</p>",
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "error": "temporarily_unavailable",
                "error_description": "the service cannot reach its database; try again shortly",
            })),
        )
            .into_response()
    };
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    portcullis_http::no_store(response)
}

fn router(app: App, timeout: tower_http::timeout::TimeoutLayer) -> Result<Router, Failure> {
    let idp = portcullis_idp::router(
        app.provider.clone(),
        app.accounts.clone(),
        app.gateway.settings().cookies.clone(),
    )
    .layer(timeout);
    let idp = guarded(idp, app.store.clone());
    // Everything that is not a portcullis endpoint goes through the gateway. A service of its
    // own rather than a handler on the `App` state: per request it costs one reference count,
    // not one per field of the state.
    let gateway = app.gateway.clone();
    let gateway = tower::service_fn(move |req: axum::extract::Request| {
        let gateway = gateway.clone();
        async move {
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            Ok::<_, std::convert::Infallible>(match peer {
                Some(peer) => gateway.handle(peer, req).await,
                // Only a server built without connect info lands here: refuse, do not guess.
                None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            })
        }
    });
    Ok(Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app)
        .fallback_service(gateway)
        .merge(idp))
}

async fn healthz() -> Response {
    portcullis_http::no_store((StatusCode::OK, axum::Json(json!({ "status": "ok" }))))
}

async fn readyz(State(app): State<App>) -> Response {
    if app.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return portcullis_http::no_store((
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "draining" })),
        ));
    }
    if !app.store.is_available() {
        return portcullis_http::no_store((
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "unavailable", "reason": "store" })),
        ));
    }
    match tokio::time::timeout(READY_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => {
            portcullis_http::no_store((StatusCode::OK, axum::Json(json!({ "status": "ready" }))))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed: store error");
            portcullis_http::no_store((
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "status": "unavailable", "reason": "store" })),
            ))
        }
        Err(_) => {
            tracing::warn!("readiness check failed: store did not answer in time");
            portcullis_http::no_store((
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "status": "unavailable", "reason": "store timeout" })),
            ))
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Keeps the in-memory signing keys in step with the store (a rotation on another node), so
/// the gateway verifies tokens signed by a newly activated key within a second or two.
/// Re-reads the signing keys every other `gateway.refresh_interval` (at most every second),
/// and when `wake` says another node changed them.
fn spawn_key_refresh(app: &App, wake: Arc<tokio::sync::Notify>) {
    let provider = app.provider.clone();
    let every = (app.config.gateway.refresh_interval * 2).max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let announced = tokio::select! {
                _ = tick.tick() => false,
                () = wake.notified() => true,
            };
            let keys = provider.keys();
            let read = if announced {
                keys.reload(provider.now()).await
            } else {
                keys.refresh(provider.now()).await
            };
            if let Err(e) = read {
                tracing::warn!(error = %e, "could not re-read signing keys");
            }
        }
    });
}

/// With PostgreSQL: what other nodes change (revocations, policies, signing keys) is re-read at
/// once when they announce it, instead of at the next poll.
async fn spawn_change_listener(app: &App, keys_changed: Arc<tokio::sync::Notify>) {
    let Some(mut changes) = app.store.listen().await else {
        return;
    };
    let gateway = Arc::downgrade(&app.gateway);
    tokio::spawn(async move {
        loop {
            let change = changes.next().await;
            let Some(gateway) = gateway.upgrade() else {
                return;
            };
            tracing::debug!(?change, "change announced by another node");
            match change {
                portcullis_store::Change::Revocations | portcullis_store::Change::Policies => {
                    gateway.changed_elsewhere(false)
                }
                portcullis_store::Change::Keys => keys_changed.notify_one(),
                portcullis_store::Change::Missed => {
                    gateway.changed_elsewhere(true);
                    keys_changed.notify_one();
                }
            }
        }
    });
}

/// Binds the admin listener and installs the Prometheus recorder it renders.
async fn admin_listener(
    addr: SocketAddr,
) -> Result<
    (
        tokio::net::TcpListener,
        metrics_exporter_prometheus::PrometheusHandle,
    ),
    Failure,
> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Failure::user(format!(
            "cannot listen on {addr} (server.admin_listen): {e}"
        ))
    })?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Failure::internal(format!("cannot install the metrics recorder: {e}")))?;
    portcullis_gateway::set_metrics(true);
    Ok((listener, handle))
}

/// The external provider of browser sessions, if `sessions.issuer` names one.
/// Where browser sessions sign in: this instance's provider (registering the session client),
/// or the external one `sessions.issuer` names.
async fn session_provider(
    app: &App,
) -> Result<std::sync::Arc<dyn portcullis_session::SessionProvider>, Failure> {
    let origin = &app.gateway.settings().public_origin;
    let Some(external) = &app.config.sessions_external else {
        let own = portcullis_session::OwnProvider::register(
            app.provider.clone(),
            origin,
            app.config.sessions_access_ttl,
        )
        .await
        .map_err(Failure::internal)?;
        return Ok(std::sync::Arc::new(own));
    };
    portcullis_session::RemoteProvider::discover(
        &external.issuer,
        &external.client_id,
        external.client_secret.clone(),
        &external.groups_claim,
        origin,
    )
    .await
    .map(|p| std::sync::Arc::new(p) as std::sync::Arc<dyn portcullis_session::SessionProvider>)
    .map_err(|e| {
        Failure::user(format!(
            "sessions.issuer: cannot use {}: {e}",
            external.issuer
        ))
    })
}
