//! The request path in process: the gateway driven directly (no sockets but an upstream's), with
//! a test key and a manual clock, to pin down the order of the stages and what each refusal
//! becomes. The wire-level attacks live in the end-to-end suite.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use portcullis_policy::{PolicySet, parse_file};
use portcullis_token::jwt::KeySet;
use portcullis_token::{Algorithm, Clock, SigningKey};
use serde_json::{Value, json};

use crate::Gateway;
use crate::authn::KeySource;
use crate::route::RouteTable;
use crate::settings::{RouteConfig, RouteKind, test_settings};

const NOW: i64 = 1_800_000_000;

struct TestKeys {
    key: Arc<SigningKey>,
}

impl KeySource for TestKeys {
    fn keys(&self) -> Arc<KeySet> {
        Arc::new(KeySet::new([self.key.verifying_key().clone()]))
    }
    fn assertion_key(&self) -> Option<Arc<SigningKey>> {
        Some(self.key.clone())
    }
}

fn route(path: &str, kind: RouteKind, upstream: &str) -> RouteConfig {
    RouteConfig {
        path: path.into(),
        methods: vec![],
        kind,
        upstream: Some(upstream.into()),
        static_dir: None,
        builtin: None,
        spa_fallback: false,
        preserve_host: false,
        upstream_timeout: None,
        total_timeout: None,
        token_sources: vec![
            crate::settings::TokenSource::Header,
            crate::settings::TokenSource::Cookie,
        ],
        assertion: false,
        audience: None,
        websocket: false,
        shared_cache: false,
        cors: None,
        rate_limits: vec![],
        quotas: vec![],
        validation: vec![],
        transform: None,
    }
}

struct Fixture {
    gateway: Arc<Gateway>,
    key: Arc<SigningKey>,
    clock: Clock,
}

/// Routes `/api/**` (api) and `/admin/**` (page) to `upstream`; `group:user` may GET
/// `/api/orders/**` and POST there.
fn fixture(upstream: &str) -> Fixture {
    let key = Arc::new(SigningKey::generate(Algorithm::ES256, "k1").expect("key"));
    fixture_with_keys(upstream, key.clone(), Arc::new(TestKeys { key }))
}

/// [`fixture`] whose tokens are signed with `key` and verified with `keys`.
fn fixture_with_keys(upstream: &str, key: Arc<SigningKey>, keys: Arc<dyn KeySource>) -> Fixture {
    let clock = Clock::manual(NOW);
    let gateway = Gateway::new(
        test_settings(),
        RouteTable::new(&[
            route("/api/**", RouteKind::Api, upstream),
            route("/admin/**", RouteKind::Page, upstream),
        ])
        .expect("routes"),
        Vec::new(),
        keys,
        clock.clone(),
    );
    let docs = parse_file(
        r#"
[[policy]]
principal = "group:user"
statements = [{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/orders/**"] }]
"#,
    )
    .expect("policy");
    gateway.set_policies(PolicySet::new(docs, 1));
    Fixture {
        gateway: Arc::new(gateway),
        key,
        clock,
    }
}

impl Fixture {
    /// An access token of ours for a member of `groups`, valid for `ttl` seconds from now.
    fn token(&self, groups: &[&str], ttl: i64) -> String {
        mint(&self.key, &self.clock, groups, ttl)
    }

    async fn send(&self, req: Request<Body>) -> Response<Body> {
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        self.gateway.clone().handle(peer, req).await
    }
}

/// An access token signed with `key`, issued now by `clock`, valid for `ttl` seconds.
fn mint(key: &SigningKey, clock: &Clock, groups: &[&str], ttl: i64) -> String {
    let now = clock.now();
    sign(
        key,
        json!({
            "iss": test_settings().issuer, "sub": "u-1", "username": "ada", "client_id": "spa",
            "token_use": "access", "scope": "openid", "groups": groups, "jti": "j-1",
            "iat": now, "exp": now + ttl,
        }),
    )
}

/// An access token with exactly these claims, signed with `key`.
fn sign(key: &SigningKey, claims: Value) -> String {
    portcullis_token::jwt::sign(
        key,
        portcullis_token::jwt::ACCESS_TOKEN_TYP,
        claims.as_object().expect("object"),
    )
    .expect("sign")
}

fn get(path: &str) -> axum::http::request::Builder {
    Request::get(path).header(header::HOST, "app.example.com")
}

/// A GET of `path` with `token` as its Bearer credential.
fn bearer(path: &str, token: &str) -> Request<Body> {
    get(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request")
}

async fn body_json(resp: Response<Body>) -> Value {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// An upstream that answers 200 with what it received.
async fn upstream() -> String {
    let app = axum::Router::new().fallback(|req: Request<Body>| async move {
        let username = req
            .headers()
            .get("x-auth-username")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        axum::Json(json!({ "path": req.uri().path(), "username": username }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test]
async fn stages_refuse_in_order() {
    let f = fixture("http://127.0.0.1:9");
    // Framing before everything: two Hosts on a path that does not even route.
    let resp = f
        .send(
            Request::get("/nowhere")
                .header(header::HOST, "a")
                .header(header::HOST, "b")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()[header::CONNECTION], "close");
    // Canonicalization before routing: a dot segment under a route.
    let resp = f
        .send(get("/api/../admin").body(Body::empty()).expect("request"))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Routing before authentication: no route with a garbage token is 404, not 401.
    let resp = f
        .send(
            get("/nowhere")
                .header(header::AUTHORIZATION, "Bearer junk")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Authentication before authorization: a denied path without a token is 401.
    let resp = f
        .send(get("/api/admin/x").body(Body::empty()).expect("request"))
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Authorization before CSRF: a denied cross-site cookie POST is "forbidden", not
    // "cross-site request".
    let cookie = format!("__Host-portcullis-access={}", f.token(&["user"], 600));
    let cross_site_post = |path: &str| {
        Request::post(path)
            .header(header::HOST, "app.example.com")
            .header(header::COOKIE, &cookie)
            .header(header::ORIGIN, "https://evil.example")
            .body(Body::empty())
            .expect("request")
    };
    let resp = f.send(cross_site_post("/api/admin/x")).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(body_json(resp).await, json!({ "error": "forbidden" }));
    // CSRF before forwarding: an allowed cross-site cookie POST never reaches the (dead) upstream.
    let resp = f.send(cross_site_post("/api/orders/1")).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(body_json(resp).await["message"], "cross-site request");
    // Everything passed: the dead upstream is the only problem left.
    let resp = f
        .send(bearer("/api/orders/1", &f.token(&["user"], 600)))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn refusals_are_rendered_per_route_kind() {
    let f = fixture("http://127.0.0.1:9");
    let resp = f
        .send(
            get("/admin/settings?tab=2")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()[header::LOCATION],
        "/auth/login?return_to=%2Fadmin%2Fsettings%3Ftab%3D2"
    );
    let user = f.token(&["user"], 600);
    let resp = f.send(bearer("/admin/settings", &user)).await;
    assert_eq!(
        (
            resp.status(),
            resp.headers()[header::LOCATION].to_str().ok()
        ),
        (StatusCode::FOUND, Some("/")),
        "signed in but not allowed: home"
    );
    let resp = f
        .send(get("/api/orders/1").body(Body::empty()).expect("request"))
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"portcullis\""
    );
}

#[tokio::test]
async fn the_test_clock_expires_tokens_exactly_at_exp() {
    let up = upstream().await;
    let f = fixture(&up);
    let token = f.token(&["user"], 60);
    let call = || f.send(bearer("/api/orders/7", &token));
    let resp = call().await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CACHE_CONTROL],
        "private, no-cache",
        "a protected answer is private"
    );
    assert_eq!(
        body_json(resp).await,
        json!({ "path": "/api/orders/7", "username": "ada" })
    );
    f.clock.advance(59);
    assert_eq!(
        call().await.status(),
        StatusCode::OK,
        "cached, one second left"
    );
    f.clock.advance(1);
    assert_eq!(
        call().await.status(),
        StatusCode::UNAUTHORIZED,
        "refused from the second of exp on, cached or not"
    );
}

/// A refresher that mints a fresh token with the fixture's key, or fails as told.
struct TestRefresher {
    key: Arc<SigningKey>,
    clock: Clock,
    fail: Option<crate::RefreshError>,
}

impl crate::Refresher for TestRefresher {
    fn refresh(
        &self,
        _refresh_cookie: String,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<crate::Refreshed, crate::RefreshError>>
                + Send
                + '_,
        >,
    > {
        Box::pin(async move {
            if let Some(e) = self.fail {
                return Err(e);
            }
            Ok(crate::Refreshed {
                access: mint(&self.key, &self.clock, &["user"], 60),
                refresh: "next-refresh".into(),
                max_age: 3600,
            })
        })
    }
}

/// With a manual clock: a cookie session is renewed in line once its token has less than the
/// margin left (30 s, at most half of a 60 s token), not before; a refresh that cannot be tried
/// is a 503, not a sign-in.
#[tokio::test]
async fn cookie_sessions_renew_before_expiry_by_the_clock() {
    let up = upstream().await;
    let f = fixture(&up);
    f.gateway.set_refresher(Arc::new(TestRefresher {
        key: f.key.clone(),
        clock: f.clock.clone(),
        fail: None,
    }));
    let token = f.token(&["user"], 60);
    let call = || {
        f.send(
            get("/api/orders/1")
                .header(
                    header::COOKIE,
                    format!("__Host-portcullis-access={token}; __Host-portcullis-refresh=r"),
                )
                .body(Body::empty())
                .expect("request"),
        )
    };
    let renewed = |resp: &Response<Body>| {
        resp.headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .any(|c| c.as_bytes().starts_with(b"__Host-portcullis-access="))
    };
    let resp = call().await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!renewed(&resp), "59 s left: no refresh");
    f.clock.advance(29);
    assert!(!renewed(&call().await), "31 s left: no refresh");
    f.clock.advance(1);
    let resp = call().await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(renewed(&resp), "30 s left: renewed in line");

    let g = fixture(&up);
    g.gateway.set_refresher(Arc::new(TestRefresher {
        key: g.key.clone(),
        clock: g.clock.clone(),
        fail: Some(crate::RefreshError::Unavailable),
    }));
    let resp = g
        .send(
            get("/api/orders/1")
                .header(header::COOKIE, "__Host-portcullis-refresh=r")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
}

/// Futures are moved whole as they are built and awaited (a memcpy of their full size at each
/// layer), so a request's future must stay small: rare, heavy paths (verifying a token missed
/// by the cache, refreshing a session, connecting upstream, the upstream exchange itself) are
/// boxed. Before, the request's future was 5.8 KB and the copies cost ~1 µs per request.
#[test]
fn a_requests_future_stays_small() {
    let f = fixture("http://127.0.0.1:9");
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let request = || {
        Request::builder()
            .uri("/api/x")
            .body(Body::empty())
            .expect("request")
    };
    let handle = f.gateway.clone().handle(peer, request());
    assert!(
        std::mem::size_of_val(&handle) <= 2600,
        "Gateway::handle's future is {} bytes",
        std::mem::size_of_val(&handle)
    );
    let mut outcome = crate::telemetry::Outcome::default();
    let mut kind = None;
    let pipeline = f.gateway.pipeline(peer, request(), &mut outcome, &mut kind);
    assert!(
        std::mem::size_of_val(&pipeline) <= 1600,
        "Gateway::pipeline's future is {} bytes",
        std::mem::size_of_val(&pipeline)
    );
}

/// An upstream URL with a path: requests go to that path + the canonical path + the query, with
/// the upstream's own `Host` (the route's origin is worked out once, at load).
#[tokio::test]
async fn an_upstream_with_a_base_path_gets_it_before_the_request_path() {
    let app = axum::Router::new().fallback(|req: Request<Body>| async move {
        axum::Json(json!({
            "target": req.uri().to_string(),
            "host": req.headers().get(header::HOST).and_then(|v| v.to_str().ok()),
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let f = fixture(&format!("http://{addr}/base/"));
    for _ in 0..2 {
        // Twice: a new upstream connection, then the pooled one.
        let resp = f
            .send(bearer("/api/orders/7?x=1&y=%2F", &f.token(&["user"], 600)))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let seen = body_json(resp).await;
        assert_eq!(seen["target"], "/base/api/orders/7?x=1&y=%2F");
        assert_eq!(seen["host"], addr.to_string());
    }
}

/// Keys as a node sees them during a rotation made on another node: the new key is published
/// in the store, but this node has not re-read it yet.
struct RotatingKeys {
    old: Arc<SigningKey>,
    new: Arc<SigningKey>,
    loaded_new: std::sync::atomic::AtomicBool,
    reloads: std::sync::atomic::AtomicUsize,
}

impl KeySource for RotatingKeys {
    fn keys(&self) -> Arc<KeySet> {
        let mut keys = vec![self.old.verifying_key().clone()];
        if self.loaded_new.load(std::sync::atomic::Ordering::SeqCst) {
            keys.push(self.new.verifying_key().clone());
        }
        Arc::new(KeySet::new(keys))
    }
    fn assertion_key(&self) -> Option<Arc<SigningKey>> {
        Some(self.old.clone())
    }
    fn reload(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        self.reloads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.loaded_new
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { true })
    }
}

/// A token signed with a key of ours this node has not loaded yet is checked again after the
/// keys are re-read; a key that is nowhere stays refused, and re-reads happen at most once a
/// second however many such tokens arrive.
#[tokio::test]
async fn a_token_signed_with_a_key_published_elsewhere_is_accepted_after_a_reread() {
    let up = upstream().await;
    let old = Arc::new(SigningKey::generate(Algorithm::ES256, "old").expect("key"));
    let new = Arc::new(SigningKey::generate(Algorithm::ES256, "new").expect("key"));
    let keys = Arc::new(RotatingKeys {
        old: old.clone(),
        new: new.clone(),
        loaded_new: std::sync::atomic::AtomicBool::new(false),
        reloads: std::sync::atomic::AtomicUsize::new(0),
    });
    let f = fixture_with_keys(&up, old, keys.clone());
    let resp = f
        .send(bearer(
            "/api/orders/1",
            &mint(&new, &f.clock, &["user"], 600),
        ))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(keys.reloads.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A key nobody published: refused, and a burst of them re-reads nothing more this second.
    let stranger = SigningKey::generate(Algorithm::ES256, "stranger").expect("key");
    let refuse_strangers = |n: usize| {
        let f = &f;
        let stranger = &stranger;
        async move {
            for _ in 0..n {
                let token = mint(stranger, &f.clock, &["user"], 600);
                let resp = f.send(bearer("/api/orders/1", &token)).await;
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            }
        }
    };
    refuse_strangers(20).await;
    assert_eq!(keys.reloads.load(std::sync::atomic::Ordering::SeqCst), 1);
    // A second later, the next such token may re-read again (once).
    f.clock.advance(1);
    refuse_strangers(2).await;
    assert_eq!(keys.reloads.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Keys that can be withdrawn, as when a key is removed from the ring.
struct WithdrawableKeys {
    key: Arc<SigningKey>,
    withdrawn: std::sync::atomic::AtomicBool,
}

impl KeySource for WithdrawableKeys {
    fn keys(&self) -> Arc<KeySet> {
        if self.withdrawn.load(std::sync::atomic::Ordering::SeqCst) {
            Arc::new(KeySet::new([]))
        } else {
            Arc::new(KeySet::new([self.key.verifying_key().clone()]))
        }
    }
    fn assertion_key(&self) -> Option<Arc<SigningKey>> {
        None
    }
}

/// A verification is reused for five minutes at most: a token whose key was withdrawn keeps
/// working from the caches (this thread's and the shared one) until then, and not a second more.
#[tokio::test]
async fn a_cached_verification_lasts_five_minutes_at_most() {
    let up = upstream().await;
    let key = Arc::new(SigningKey::generate(Algorithm::ES256, "k1").expect("key"));
    let keys = Arc::new(WithdrawableKeys {
        key: key.clone(),
        withdrawn: std::sync::atomic::AtomicBool::new(false),
    });
    let f = fixture_with_keys(&up, key, keys.clone());
    let token = f.token(&["user"], 3600);
    assert_eq!(
        f.send(bearer("/api/orders/1", &token)).await.status(),
        StatusCode::OK
    );
    keys.withdrawn
        .store(true, std::sync::atomic::Ordering::SeqCst);
    f.clock.advance(299);
    assert_eq!(
        f.send(bearer("/api/orders/1", &token)).await.status(),
        StatusCode::OK,
        "verified 299 s ago: still cached"
    );
    f.clock.advance(1);
    assert_eq!(
        f.send(bearer("/api/orders/1", &token)).await.status(),
        StatusCode::UNAUTHORIZED,
        "verified 300 s ago: checked again, and the key is gone"
    );
}

/// The per-thread cache answers only for the gateway that filled it, for exactly the token it
/// saw, and keeps answering right when tokens outnumber its slots.
#[tokio::test]
async fn the_per_thread_cache_is_per_gateway_and_per_exact_token() {
    let up = upstream().await;
    let a = fixture(&up);
    let b = fixture(&up); // its own key, also named "k1"
    let token = a.token(&["user"], 600);
    assert_eq!(
        a.send(bearer("/api/orders/1", &token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        b.send(bearer("/api/orders/1", &token)).await.status(),
        StatusCode::UNAUTHORIZED,
        "another gateway on this thread does not trust a's key"
    );
    // The same token with one character of its signature changed: not the cached token.
    let at = token.len() - 10;
    let was = token.as_bytes()[at];
    let tampered = format!(
        "{}{}{}",
        &token[..at],
        if was == b'A' { 'B' } else { 'A' },
        &token[at + 1..]
    );
    assert_eq!(
        a.send(bearer("/api/orders/1", &tampered)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // More tokens than slots (each a different user): every one is answered as itself.
    let tokens: Vec<(String, String)> = (0..(crate::authn::RECENT_SLOTS * 2))
        .map(|i| {
            let user = format!("u-{i}");
            let now = a.clock.now();
            let token = sign(
                &a.key,
                json!({
                    "iss": test_settings().issuer, "sub": user, "username": user,
                    "token_use": "access", "scope": "openid", "groups": ["user"],
                    "jti": format!("j-{i}"), "iat": now, "exp": now + 600,
                }),
            );
            (user, token)
        })
        .collect();
    // A token too long for the per-thread cache is found in the shared one.
    let now = a.clock.now();
    let long = sign(
        &a.key,
        json!({
            "iss": test_settings().issuer, "sub": "u-long", "username": "long",
            "token_use": "access", "scope": "openid", "groups": ["user"],
            "note": "x".repeat(crate::authn::RECENT_MAX_TOKEN), "iat": now, "exp": now + 600,
        }),
    );
    assert!(long.len() > crate::authn::RECENT_MAX_TOKEN);
    for _ in 0..2 {
        let resp = a.send(bearer("/api/orders/1", &long)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_json(resp).await["username"], json!("long"));
    }
    for _ in 0..2 {
        for (user, token) in &tokens {
            let resp = a.send(bearer("/api/orders/1", token)).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(body_json(resp).await["username"], json!(user));
        }
    }
}
