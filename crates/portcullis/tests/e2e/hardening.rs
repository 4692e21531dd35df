//! What an outside attack suite found in the gateway and the provider (the hardening issue),
//! each proven closed over real sockets: the refused request gets its answer and nothing of it
//! reaches the upstream.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gateway::{raw_async, raw_to, token_for, trusting_gateway};
use crate::gateway_upstream::{Upstream, bearer_status, key_server, sign_jws};
use crate::oidc::setup;

/// `extra` (settings sections), then an `api` route `/api/**` to `upstream` on which `group:user`
/// may GET `/api/orders/**`.
fn orders_api(upstream: &str, extra: &str) -> String {
    format!(
        r#"{extra}

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{upstream}"

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/orders/**"] }}]
"#
    )
}

/// What a raw upstream received: request heads, and any bytes after a protocol switch.
#[derive(Clone, Default)]
struct Wire(Arc<Mutex<Vec<String>>>);

impl Wire {
    fn all(&self) -> Vec<String> {
        self.0.lock().expect("wire").clone()
    }
    fn push(&self, s: String) {
        self.0.lock().expect("wire").push(s);
    }
}

/// An upstream that speaks h2c the way RFC 7540 §3.2 describes: it answers `Upgrade: h2c` with
/// 101 (`always`: every request, asked or not) and then takes whatever arrives on the
/// connection as the new protocol's bytes. Anything else gets a small 200.
async fn h2c_upstream(always: bool) -> (String, Wire) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let wire = Wire::default();
    let log = wire.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    log.push(format!("head: {head}"));
                    if always || head.contains("upgrade: h2c") {
                        let _ = sock
                            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n")
                            .await;
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = sock.read(&mut buf).await {
                            if n == 0 {
                                return;
                            }
                            log.push(format!(
                                "tunnel: {}",
                                String::from_utf8_lossy(&buf[..n]).to_lowercase()
                            ));
                        }
                        return;
                    }
                    if sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (base, wire)
}

fn h2c_config(upstream: &str, sneaky: &str) -> String {
    format!(
        r#"
[[routes]]
path = "/api/**"
kind = "api"
upstream = "{upstream}"

[[routes]]
path = "/sneaky/**"
kind = "public"
upstream = "{sneaky}"

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/orders/**"] }}]
"#
    )
}

/// With `Upgrade: h2c` on an allowed request, an h2c upstream would switch protocols and every
/// later request on that connection would reach it unchecked, with forged identity headers. The
/// upgrade headers never reach the upstream, and an upstream that switches unasked gets 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_never_opens_a_tunnel_past_authorization() {
    let (upstream, wire) = h2c_upstream(false).await;
    let (sneaky, sneaky_wire) = h2c_upstream(true).await;
    let mut idp = setup(&h2c_config(&upstream, &sneaky));
    let ada = token_for(&mut idp, "ada").await;
    let base = idp.server.base.clone();
    let smuggle = format!(
        "GET /api/orders/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ada}\r\n\
         Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n\
         GET /api/admin/users HTTP/1.1\r\nHost: x\r\nX-Auth-Groups: admin\r\nX-Auth-Username: root\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_async(&base, &smuggle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("HTTP/1.1 401"),
        "the second request is checked on its own: {answer}"
    );
    let seen = wire.all();
    assert_eq!(seen.len(), 1, "one request reached the upstream: {seen:?}");
    assert!(
        !seen[0].contains("upgrade") && !seen[0].contains("http2-settings"),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|s| s.contains("/api/admin") || s.contains("x-auth-groups: admin")),
        "{seen:?}"
    );

    // An upstream that switches protocols although nobody asked: 502, and no tunnel.
    let base = idp.server.base.clone();
    let answer = raw_async(
        &base,
        "GET /sneaky/x HTTP/1.1\r\nHost: x\r\n\r\nGET /sneaky/admin HTTP/1.1\r\nHost: x\r\nX-Auth-Username: root\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = sneaky_wire.all();
    assert!(
        !seen.iter().any(|s| s.starts_with("tunnel:")),
        "nothing crossed a tunnel: {seen:?}"
    );
}

/// Fullwidth solidus and full stop, fullwidth letters and best-fit slashes: a backend that
/// applies NFKC (or a code-page conversion) would read `/api/admin/x` or a `..` segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_unicode_folding_would_change_are_400() {
    let upstream = Upstream::start().await;
    let idp = setup(&format!(
        "[[routes]]\npath = \"/api/**\"\nkind = \"public\"\nupstream = \"{}\"\n",
        upstream.base
    ));
    for target in [
        "/api/%EF%BC%8Fadmin/x",
        "/api/%EF%BC%8E%EF%BC%8E/admin/x",
        "/api/%EF%BD%81dmin/x",
        "/api/a%E2%88%95admin",
        "/api/\u{FF0F}admin/x",
        "/api/\u{FF0E}\u{FF0E}/admin/x",
    ] {
        let answer = raw_to(
            &idp.server.base,
            &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
    }
    let ok = raw_async(
        &idp.server.base,
        "GET /api/caf%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(upstream.count(), 1, "only the plain path was forwarded");
}

/// A chunked body whose framing is broken is the client's fault: 400, the connection closed,
/// and a client-error label in the metrics (not 502 and an upstream failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_framing_is_400_and_closes() {
    let upstream = Upstream::start().await;
    let idp = setup(&format!(
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n\
         [[routes]]\npath = \"/public/**\"\nkind = \"public\"\nupstream = \"{}\"\n",
        upstream.base
    ));
    let cases = [
        ("overflow", "fffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("leading space", " 5\r\nhello\r\n0\r\n\r\n"),
        ("negative", "-5\r\nhello\r\n0\r\n\r\n"),
        ("bare LF", "5\nhello\n0\n\n"),
        ("LF in an extension", "5;ext\nhello\r\n0\r\n\r\n"),
        ("no CRLF after data", "5\r\nhelloXX0\r\n\r\n"),
    ];
    for (what, body) in cases {
        let base = idp.server.base.clone();
        let request = format!(
            "POST /public/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let started = Instant::now();
        let answer = raw_async(&base, &request).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{what}: {answer}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{what}: the connection was closed, not left to time out"
        );
    }
    let admin = idp
        .server
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("admin listening on "))
        .expect("the admin listener is announced")
        .to_owned();
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("portcullis_gateway_requests_total")
                && l.contains("decision=\"bad_request\"")
                && l.contains("status=\"400\"")),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("portcullis_gateway_requests_total")
                && (l.contains("status=\"502\"") || l.contains("upstream_error"))),
        "{metrics}"
    );
}

/// On routes that need sign-in, answers are private to the browser and revalidated; a route
/// may opt into shared caching; public routes are left alone.
#[tokio::test]
async fn protected_answers_are_private_and_revalidated() {
    let upstream = Upstream::start().await;
    let mut idp = setup(&format!(
        r#"
[[routes]]
path = "/api/**"
kind = "api"
upstream = "{u}"

[[routes]]
path = "/shared/**"
kind = "api"
upstream = "{u}"
shared_cache = true

[[routes]]
path = "/public/**"
kind = "public"
upstream = "{u}"

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/orders/**", "/shared/**"] }}]
"#,
        u = upstream.base
    ));
    let ada = token_for(&mut idp, "ada").await;
    let cache_control = |path: &'static str, set: Option<&'static str>| {
        let http = idp.http.clone();
        let url = idp.url(path);
        let ada = ada.clone();
        async move {
            let mut req = http.get(url).bearer_auth(ada);
            if let Some(v) = set {
                req = req.header("x-test-cache-control", v);
            }
            let resp = req.send().await.expect("send");
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            resp.headers()
                .get("cache-control")
                .map(|v| v.to_str().expect("ascii").to_owned())
        }
    };
    assert_eq!(
        cache_control("/api/orders/1", None).await.as_deref(),
        Some("private, no-cache")
    );
    assert_eq!(
        cache_control("/api/orders/1", Some("public, max-age=60, s-maxage=600"))
            .await
            .as_deref(),
        Some("private, max-age=60")
    );
    assert_eq!(
        cache_control("/api/orders/1", Some("no-store"))
            .await
            .as_deref(),
        Some("no-store")
    );
    assert_eq!(
        cache_control("/shared/list", Some("public, s-maxage=600"))
            .await
            .as_deref(),
        Some("public, s-maxage=600"),
        "the route opted into shared caching"
    );
    assert_eq!(cache_control("/public/logo", None).await, None);
}

/// Identity and path-rewrite headers of other gateways, in every spelling and repeated, never
/// reach the backend; neither do the operator's own (`gateway.strip_request_headers`) nor an
/// access cookie whatever its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_gateways_identity_headers_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let mut idp = setup(&orders_api(
        &upstream.base,
        "[gateway]\nstrip_request_headers = \"X-Tenant, X-Corp-*\"\naccess_cookie = \"session\"",
    ));
    let ada = token_for(&mut idp, "ada").await;
    let forged = [
        "X-Remote-User",
        "Remote-User",
        "X-Forwarded-User",
        "X-Forwarded-Email",
        "X-Forwarded-Groups",
        "X-Auth-Request-User",
        "X-Auth-Request-Groups",
        "X-User",
        "X-User-Id",
        "X-Groups",
        "X-Roles",
        "X-Authenticated-User",
        "X-Authenticated-Groups",
        "X-Userinfo",
        "X-Jwt-Payload",
        "X-Consumer-Username",
        "X-Consumer-Id",
        "X-Credential-Identifier",
        "X-Amzn-Oidc-Identity",
        "X-Amzn-Oidc-Data",
        "X-Ms-Client-Principal",
        "X-Ms-Client-Principal-Name",
        "Cf-Access-Authenticated-User-Email",
        "Cf-Access-Jwt-Assertion",
        "X-Replaced-Path",
        "X-Envoy-Original-Path",
        "X-Original-Path",
        "X_Remote_User",
        "x_forwarded_user",
        "X-Tenant",
        "x_corp_role",
    ];
    let mut request =
        String::from("GET /api/orders/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for name in forged {
        request.push_str(&format!("{name}: root\r\n{name}: admin\r\n"));
    }
    request.push_str(&format!("Cookie: session={ada}; theme=dark\r\n\r\n"));
    let base = idp.server.base.clone();
    let answer = raw_async(&base, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.last();
    let headers = seen["headers"].as_object().expect("headers");
    for name in forged {
        let norm = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            !headers.keys().any(|k| k.replace('_', "-") == norm),
            "{name} reached the upstream: {headers:?}"
        );
    }
    assert!(
        !headers
            .values()
            .flat_map(|v| v.as_array().into_iter().flatten())
            .any(|v| v == "root" || v == "admin"),
        "{headers:?}"
    );
    assert_eq!(
        headers["cookie"],
        json!(["theme=dark"]),
        "the access cookie stays here"
    );
    assert_eq!(headers["x-auth-username"], json!(["ada"]));
}

/// A token signed by a trusted issuer's key whose header or claims name a member twice: two
/// parsers could read two different users. Refused, like any malformed token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_a_member_named_twice_are_401() {
    use portcullis_token::{Algorithm, SigningKey};
    let key = SigningKey::generate(Algorithm::ES256, "k1").expect("key");
    let (issuer, _) = key_server(portcullis_token::jwks([key.verifying_key()])).await;
    let upstream = Upstream::start().await;
    let a = trusting_gateway(
        &issuer,
        &format!("jwks_uri = \"{issuer}/jwks.json\""),
        &upstream,
    );
    let gateway = a.serve();
    let now = portcullis_token::Clock::system().now();
    let claims = format!(
        r#""iss":"{issuer}","client_id":"spa","token_use":"access","groups":["user"],"iat":{},"exp":{}"#,
        now - 5,
        now + 600
    );
    let sign = |header: &str, payload: &str| sign_jws(&key, header, payload);
    let header = r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#;
    let url = gateway.url("/api/orders/1");
    let status = |token: String| {
        let url = url.clone();
        async move { bearer_status(&url, &token).await }
    };
    assert_eq!(
        status(sign(header, &format!(r#"{{"sub":"u-1",{claims}}}"#))).await,
        StatusCode::OK,
        "control"
    );
    for (what, h, p) in [
        (
            "sub twice",
            header.to_owned(),
            format!(r#"{{"sub":"u-1",{claims},"sub":"u-2"}}"#),
        ),
        (
            "groups twice",
            header.to_owned(),
            format!(r#"{{"sub":"u-1","groups":["admin"],{claims}}}"#),
        ),
        (
            "kid twice",
            r#"{"alg":"ES256","kid":"other","kid":"k1"}"#.to_owned(),
            format!(r#"{{"sub":"u-1",{claims}}}"#),
        ),
    ] {
        assert_eq!(
            status(sign(&h, &p)).await,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
    assert_eq!(upstream.count(), 1, "only the control reached the upstream");
}

/// A trusted issuer's tokens with a given groups claim and expiry.
struct Issuer {
    key: portcullis_token::SigningKey,
    base: String,
}

impl Issuer {
    async fn start() -> Issuer {
        let key = portcullis_token::SigningKey::generate(portcullis_token::Algorithm::ES256, "k1")
            .expect("key");
        let (base, _) = key_server(portcullis_token::jwks([key.verifying_key()])).await;
        Issuer { key, base }
    }

    fn token(&self, groups: &[&str], exp_in: i64) -> String {
        let now = portcullis_token::Clock::system().now();
        let claims = json!({
            "iss": self.base, "sub": "u-1", "client_id": "spa", "token_use": "access",
            "cognito:groups": groups, "iat": now - 60, "exp": now + exp_in,
        });
        sign_jws(
            &self.key,
            r#"{"alg":"ES256","kid":"k1"}"#,
            &claims.to_string(),
        )
    }

    fn gateway(&self, upstream: &Upstream, extra: &str) -> crate::harness::Instance {
        crate::harness::Instance::with_config(&format!(
            r#"
[[gateway.issuers]]
issuer = "{iss}"
jwks_uri = "{iss}/jwks.json"
audiences = ["spa"]
groups_claim = "cognito:groups"
{extra}

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{u}"

[[policy]]
principal = "group:admin"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/**"] }}]
"#,
            iss = self.base,
            u = upstream.base
        ))
    }
}

async fn status_of(server: &crate::harness::Server, token: &str) -> StatusCode {
    bearer_status(&server.url("/api/x"), token).await
}

/// An external issuer's groups are matched exactly (Cognito's `Admin` is not `admin`), unless
/// the issuer opts into folding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_groups_match_exactly_unless_the_issuer_folds_case() {
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let exact = issuer.gateway(&upstream, "");
    let exact = exact.serve();
    assert_eq!(
        status_of(&exact, &issuer.token(&["admin"], 600)).await,
        StatusCode::OK
    );
    assert_eq!(
        status_of(&exact, &issuer.token(&["Admin"], 600)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_of(&exact, &issuer.token(&["ADMIN"], 600)).await,
        StatusCode::FORBIDDEN
    );
    let folding = issuer.gateway(&upstream, "fold_group_case = true");
    let folding = folding.serve();
    assert_eq!(
        status_of(&folding, &issuer.token(&["Admin"], 600)).await,
        StatusCode::OK
    );
    assert_eq!(upstream.count(), 2);
}

/// `exp` is strict by default for external tokens too (it was 30 s of undocumented leeway); an
/// issuer's `leeway` is the explicit, documented exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused_unless_a_leeway_is_configured() {
    let issuer = Issuer::start().await;
    let upstream = Upstream::start().await;
    let strict = issuer.gateway(&upstream, "");
    let strict = strict.serve();
    assert_eq!(
        status_of(&strict, &issuer.token(&["admin"], -1)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of(&strict, &issuer.token(&["admin"], 0)).await,
        StatusCode::UNAUTHORIZED,
        "refused from the second of exp on"
    );
    let lenient = issuer.gateway(&upstream, "leeway = \"30s\"");
    let lenient = lenient.serve();
    assert_eq!(
        status_of(&lenient, &issuer.token(&["admin"], -1)).await,
        StatusCode::OK
    );
    assert_eq!(upstream.count(), 1);
}

/// A browser session whose access token is about to expire is refreshed by the request that
/// notices, so the upstream gets an identity with time left, never an expired one.
#[tokio::test]
async fn a_cookie_session_is_refreshed_before_its_token_expires() {
    let upstream = Upstream::start().await;
    let mut idp = setup(&orders_api(
        &upstream.base,
        "[sessions]\naccess_ttl = \"6s\"\n\n[gateway]\nrefresh_margin = \"3s\"",
    ));
    crate::sessions::browser_sign_in(&mut idp, "ada", "/").await;
    let first = idp.cookies["__Host-portcullis-access"].clone();
    let exp = |token: &str| crate::oidc::claims(token)["exp"].as_i64().expect("exp");
    let call = |idp: &crate::oidc::Idp| {
        let req = idp
            .http
            .get(idp.url("/api/orders/1"))
            .header("cookie", idp.cookie_header());
        async move { req.send().await.expect("send") }
    };
    let fresh = call(&idp).await;
    assert_eq!(fresh.status(), StatusCode::OK);
    assert!(
        fresh.headers().get("set-cookie").is_none(),
        "a fresh token is not refreshed"
    );
    // 6 s tokens, 3 s margin: after 3.2 s the next request refreshes in line.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let resp = call(&idp).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let renewed = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("__Host-portcullis-access="))
        .map(|c| c.split(';').next().unwrap_or_default().to_owned())
        .expect("the session was refreshed before its token expired");
    assert!(exp(&renewed) > exp(&first), "the new token lives longer");
    let now = portcullis_token::Clock::system().now();
    assert!(
        exp(&renewed) - now >= 4,
        "the upstream's identity has time left"
    );
}

/// A JWKS that never ends is given up at the size limit, not read until a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_jwks_is_cut_off_at_the_size_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let issuer = format!(
        "http://localhost:{}",
        listener.local_addr().expect("addr").port()
    );
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("1000\r\n{}\r\n", " ".repeat(4096));
                while sock.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let upstream = Upstream::start().await;
    let i = trusting_gateway(
        &issuer,
        &format!("jwks_uri = \"{issuer}/jwks.json\""),
        &upstream,
    );
    let log = i.dir.path().join("server.log");
    let file = std::fs::File::create(&log).expect("log file");
    let started = Instant::now();
    let _server = crate::harness::Server::start_with_stderr(
        i.command(&["serve", "--listen", "127.0.0.1:0"]),
        file.into(),
    );
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("larger than") {
            break;
        }
        // The message is the proof (a read that ran into the 5 s client timeout says
        // "timed out" instead); the bound only keeps a broken build from hanging the suite.
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the JWKS read was not cut off at its limit: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one token request during the outage test came to.
struct Answer {
    at: Instant,
    status: StatusCode,
    took: Duration,
    retry_after: bool,
    error: String,
}

/// With PostgreSQL stopped under load, the token endpoint answers 503 `temporarily_unavailable`
/// with `Retry-After` — promptly, not after the pool's connect timeout — never 500; the gateway
/// keeps serving Bearer tokens; and everything recovers by itself when the database returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_promptly_and_heals_itself() {
    let Some(pg) = crate::harness::PrivatePostgres::start() else {
        return;
    };
    let upstream = Upstream::start().await;
    let i = crate::harness::Instance::with_config(&format!(
        r#"
[store]
connect_timeout = "5s"

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{u}"

[[policy]]
principal = "scope:orders/read"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/orders/**"] }}]
"#,
        u = upstream.base
    ))
    .env("PORTCULLIS_STORE_URL", &pg.url());
    i.run(&["resource-server", "add", "orders", "--scope", "read"])
        .ok();
    let out = i
        .run(&[
            "--json",
            "client",
            "add",
            "Backend",
            "--id",
            "backend",
            "--confidential",
            "--scope",
            "orders/read",
        ])
        .ok();
    let secret = serde_json::from_str::<serde_json::Value>(&out).expect("json")["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let server = i.serve();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let token_url = server.url("/oauth2/token");
    let grant = {
        let http = http.clone();
        let secret = secret.clone();
        move || {
            let req = http
                .post(&token_url)
                .basic_auth("backend", Some(&secret))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "orders/read"),
                ]);
            async move {
                let started = Instant::now();
                let resp = req.send().await.expect("the server answers");
                let status = resp.status();
                let retry_after = resp.headers().contains_key("retry-after");
                let body: serde_json::Value = resp.json().await.unwrap_or_default();
                (
                    Answer {
                        at: started,
                        status,
                        took: started.elapsed(),
                        retry_after,
                        error: body["error"].as_str().unwrap_or_default().to_owned(),
                    },
                    body["access_token"].as_str().map(str::to_owned),
                )
            }
        }
    };
    let (first, access) = grant().await;
    assert_eq!(first.status, StatusCode::OK);
    let access = access.expect("an access token");
    let api = server.url("/api/orders/1");
    assert_eq!(
        http.get(&api)
            .bearer_auth(&access)
            .send()
            .await
            .expect("send")
            .status(),
        StatusCode::OK
    );

    // Load: two clients asking for tokens, one calling the API, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let mut load = Vec::new();
    for _ in 0..2 {
        let (stop, answers, grant) = (stop.clone(), answers.clone(), grant.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (answer, _) = grant().await;
                answers.lock().expect("answers").push(answer);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let api_statuses: Arc<Mutex<Vec<StatusCode>>> = Arc::default();
    {
        let (stop, statuses, http, api, access) = (
            stop.clone(),
            api_statuses.clone(),
            http.clone(),
            api.clone(),
            access.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = http
                    .get(&api)
                    .bearer_auth(&access)
                    .send()
                    .await
                    .expect("send")
                    .status();
                statuses.lock().expect("statuses").push(s);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = Instant::now();
    pg.down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    pg.up();
    // Recovery: a token within 5 s of the database coming back.
    let healed = loop {
        let (a, _) = grant().await;
        if a.status == StatusCode::OK {
            break a.at;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "no token 5 s after the database came back: {} {}",
            a.status,
            a.error
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    eprintln!(
        "recovered {:?} after the restart",
        healed.duration_since(restarted)
    );

    let answers = answers.lock().expect("answers");
    for a in answers.iter() {
        assert_ne!(
            a.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "an unavailable store is not a bug"
        );
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                a.retry_after && a.error == "temporarily_unavailable",
                "503 carries Retry-After and temporarily_unavailable"
            );
        } else {
            assert_eq!(a.status, StatusCode::OK);
        }
    }
    // Once the outage is known (a second after the stop) and until the restart, every answer is
    // a prompt 503.
    let known: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.at > stopped + Duration::from_secs(1) && a.at + a.took < restarted)
        .collect();
    assert!(known.len() >= 10, "load kept running: {}", known.len());
    eprintln!(
        "{} token answers: {} x 503; while known down {} answers, slowest {:?}",
        answers.len(),
        answers
            .iter()
            .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
            .count(),
        known.len(),
        known.iter().map(|a| a.took).max().unwrap_or_default()
    );
    for a in &known {
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            a.took < Duration::from_millis(500),
            "a 503 while the store is known down takes {:?}",
            a.took
        );
    }
    let statuses = api_statuses.lock().expect("statuses");
    assert!(statuses.len() >= 20, "{}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "the gateway kept serving Bearer tokens: {statuses:?}"
    );
}

/// A browser session that needs renewing while the database is down gets 503 with
/// `Retry-After` — not the sign-in page (the session may be alive) — and renews itself as soon
/// as the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refresh_during_an_outage_is_503_not_a_sign_in() {
    let Some(pg) = crate::harness::PrivatePostgres::start() else {
        return;
    };
    let upstream = Upstream::start().await;
    let i = crate::harness::Instance::with_config(&format!(
        r#"
[[routes]]
path = "/api/**"
kind = "api"
upstream = "{u}"

[[routes]]
path = "/app/**"
kind = "page"
upstream = "{u}"

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/orders/**", "/app/**"] }}]
"#,
        u = upstream.base
    ))
    .env("PORTCULLIS_STORE_URL", &pg.url());
    let mut idp = crate::oidc::setup_on(i);
    crate::sessions::browser_sign_in(&mut idp, "ada", "/").await;
    // The access cookie is gone (expired, say): only the refresh cookie is sent.
    let refresh = format!(
        "__Host-portcullis-refresh={}",
        idp.cookies["__Host-portcullis-refresh"]
    );
    let call = |path: &'static str| {
        let req = idp.http.get(idp.url(path)).header("cookie", &refresh);
        async move { req.send().await.expect("send") }
    };
    pg.down();
    // Wait for the store to be known down (the monitor probes four times a second).
    tokio::time::sleep(Duration::from_millis(600)).await;
    for path in ["/api/orders/1", "/app/home"] {
        let resp = call(path).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(resp.headers().contains_key("retry-after"), "{path}");
    }
    pg.up();
    let started = Instant::now();
    loop {
        let resp = call("/api/orders/1").await;
        if resp.status() == StatusCode::OK {
            assert!(
                resp.headers().get_all("set-cookie").iter().any(|c| c
                    .to_str()
                    .is_ok_and(|c| c.starts_with("__Host-portcullis-access="))),
                "renewed in line"
            );
            break;
        }
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the session did not renew after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
