//! The gateway over real sockets: route rules from group policies, credentials from header or
//! cookie, responses per route kind, header hygiene, revocation and policy changes within a
//! second, and the attacks of the gateway issue — each proving nothing reached the upstream.

use std::io::{Read, Write};

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::oidc::{Idp, setup};

use crate::gateway_upstream::Upstream;

fn config(upstream: &str, files: &std::path::Path) -> String {
    let files = files.display();
    format!(
        r#"
[server]
admin_listen = "127.0.0.1:0"

[gateway]
upstream_timeout = "1s"

[[routes]]
path = "/verified/**"
kind = "api"
upstream = "{upstream}"
assertion = true
audience = "orders-api"

[[routes]]
path = "/static/**"
kind = "public"
static_dir = "{files}/static"

[[routes]]
path = "/spa/**"
kind = "page"
static_dir = "{files}"
spa_fallback = true

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{upstream}"

[[routes]]
path = "/app/**"
kind = "page"
upstream = "{upstream}"

[[routes]]
path = "/admin/**"
kind = "page"
upstream = "{upstream}"

[[routes]]
path = "/public/**"
kind = "public"
upstream = "{upstream}"

[[routes]]
path = "/vhost/**"
kind = "public"
upstream = "{upstream}"
preserve_host = true

[[routes]]
path = "/down/**"
kind = "public"
upstream = "http://127.0.0.1:9"

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/orders/**", "/app/**", "/verified/**", "/spa/**"] }}]

[[policy]]
principal = "group:admin"
statements = [{{ effect = "allow", methods = ["*"], paths = ["/**"] }}]

[[policy]]
principal = "scope:orders/read"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/orders/**"] }}]
"#
    )
}

struct Env {
    _files: tempfile::TempDir,
    idp: Idp,
    upstream: Upstream,
    ada: String,
    root: String,
}

async fn env() -> Env {
    let upstream = Upstream::start().await;
    let files = tempfile::tempdir().expect("dir");
    let dir = files.path().join("static");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("app.js"), "console.log('hello');\n".repeat(50)).expect("write");
    let gz = std::process::Command::new("gzip")
        .args(["-k", "-9"])
        .arg(dir.join("app.js"))
        .status();
    assert!(
        gz.map(|s| s.success()).unwrap_or(false),
        "gzip is needed for the precompressed-file test"
    );
    std::fs::write(
        files.path().join("index.html"),
        "<!doctype html><title>spa</title>",
    )
    .expect("write");
    let mut idp = setup(&config(&upstream.base, files.path()));
    let ada = token_for(&mut idp, "ada").await;
    let root = token_for(&mut idp, "root").await;
    Env {
        _files: files,
        idp,
        upstream,
        ada,
        root,
    }
}

pub(crate) async fn token_for(idp: &mut Idp, user: &str) -> String {
    idp.cookies.clear();
    let q = idp.sign_in("spa", user).await;
    let (status, tokens) = idp.exchange("spa", &q["code"]).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens["access_token"].as_str().expect("access").to_owned()
}

impl Env {
    fn url(&self, path: &str) -> String {
        self.idp.url(path)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.idp.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("request")
    }
}

#[tokio::test]
async fn group_policies_decide_and_the_upstream_gets_a_trusted_identity() {
    let e = env().await;
    let resp = e.get("/api/orders/7?x=1", Some(&e.ada)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = e.upstream.last();
    assert_eq!(seen["uri"], "/api/orders/7?x=1");
    assert_eq!(seen["headers"]["x-auth-username"], json!(["ada"]));
    assert_eq!(seen["headers"]["x-auth-groups"], json!(["user"]));
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the bearer token is not forwarded"
    );
    assert_eq!(seen["headers"]["x-forwarded-for"], json!(["127.0.0.1"]));

    let before = e.upstream.count();
    for path in ["/api/admin/users", "/API/Admin", "/api/admin", "/api/other"] {
        let resp = e.get(path, Some(&e.ada)).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            resp.json::<Value>().await.expect("json")["error"],
            "forbidden"
        );
    }
    let delete = e
        .idp
        .http
        .delete(e.url("/api/orders/7"))
        .bearer_auth(&e.ada)
        .send()
        .await
        .expect("delete");
    assert_eq!(
        delete.status(),
        StatusCode::FORBIDDEN,
        "methods are part of the rule"
    );
    assert_eq!(
        e.upstream.count(),
        before,
        "nothing denied reached the upstream"
    );
    assert_eq!(
        e.get("/api/admin/users", Some(&e.root)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn apis_answer_401_json_and_pages_redirect() {
    let e = env().await;
    let resp = e.get("/api/orders", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer realm=\"portcullis\""
    );
    let resp = e.get("/api/orders", Some("not.a.token")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .contains("error=\"invalid_token\"")
    );
    let body = resp.text().await.expect("body");
    assert!(!body.contains("not.a.token"), "errors never echo the token");

    let resp = e.get("/admin/settings?tab=2", None).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()["location"],
        "/auth/login?return_to=%2Fadmin%2Fsettings%3Ftab%3D2"
    );
    let resp = e.get("/admin/settings", Some(&e.ada)).await;
    assert_eq!(
        (
            resp.status(),
            resp.headers()["location"].to_str().expect("ascii")
        ),
        (StatusCode::FOUND, "/")
    );
    assert_eq!(
        e.get("/app/home", Some(&e.ada)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        e.get("/public/logo.png", None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        e.get("/nowhere", Some(&e.root)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        e.upstream.count(),
        2,
        "only the allowed page and the public file were forwarded"
    );
}

#[tokio::test]
async fn client_sent_identity_and_forwarding_headers_never_reach_the_upstream() {
    let e = env().await;
    let resp = e
        .idp
        .http
        .get(e.url("/api/orders"))
        .bearer_auth(&e.ada)
        .header("X-Auth-Username", "root")
        .header("x_auth_groups", "admin")
        .header("X.Auth.Subject", "someone")
        .header("X-Auth-Groups", "admin")
        .header("X-Forwarded-For", "10.0.0.1")
        .header("Forwarded", "for=10.0.0.1")
        .header("X-Real-IP", "10.0.0.1")
        .header("X-Original-URL", "/api/admin")
        .header("X-Rewrite-URL", "/api/admin")
        .header("X-Forwarded-Prefix", "/api/admin")
        .header("X-Forwarded-Host", "admin.internal")
        .header("X_Forwarded_Host", "admin.internal")
        .header("X-HTTP-Method-Override", "DELETE")
        .header("Connection", "close, X-Custom")
        .header("X-Custom", "hop")
        .header("Cookie", "__Host-portcullis-access=stolen; theme=dark")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let h = &e.upstream.last()["headers"];
    assert_eq!(h["x-auth-username"], json!(["ada"]));
    assert_eq!(h["x-auth-groups"], json!(["user"]));
    for name in [
        "x_auth_groups",
        "x.auth.subject",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x_forwarded_host",
        "x-http-method-override",
        "x-custom",
    ] {
        assert!(h.get(name).is_none(), "{name} was forwarded: {h}");
    }
    // The upstream sees its own authority as Host, and the Host the client used (not the
    // X-Forwarded-Host it sent) as X-Forwarded-Host.
    let client_host = e
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let upstream_host = e.upstream.base.trim_start_matches("http://").to_owned();
    assert_eq!(h["host"], json!([upstream_host]));
    assert_eq!(h["x-forwarded-host"], json!([client_host]));
    assert_eq!(
        h["x-forwarded-for"],
        json!(["127.0.0.1"]),
        "set, not appended"
    );
    assert_eq!(
        h["cookie"],
        json!(["theme=dark"]),
        "portcullis cookies are not forwarded"
    );
    assert_eq!(e.upstream.last()["method"], "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_are_400_and_reach_nothing() {
    let e = env().await;
    let before = e.upstream.count();
    for path in [
        "/api/orders/../admin/x",
        "/api/orders/%2e%2e/admin",
        "/api/orders/%2E%2E/admin",
        "/api/orders%2fadmin",
        "/api/orders%2Fadmin",
        "/api//admin",
        "/api/orders/./x",
        "/api/orders;x=1/admin",
        "/api/orders%5cadmin",
        "/api/orders%00",
        "/api/admin./x",
        "/api/admin%20/x",
        "/api/%252e%252e/admin",
    ] {
        let resp = raw_request(
            &e,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                e.root
            ),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
    }
    for target in ["http://evil.example/api/orders", "*"] {
        let resp = raw_request(
            &e,
            &format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{target}: {resp}");
    }
    assert_eq!(e.upstream.count(), before);
}

// Blocking socket reads in the test: a second worker keeps the in-process upstream running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_is_refused() {
    let e = env().await;
    // A plain chunked body is forwarded intact.
    let ok = raw_request(
        &e,
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(e.upstream.last()["body"], "abc");
    let before = e.upstream.count();
    for attack in [
        "POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ] {
        let resp = raw_request(&e, attack);
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 400") || resp.starts_with("HTTP/1.1 501"),
            "{attack:?} -> {resp}"
        );
        assert_eq!(
            resp.matches("HTTP/1.1 ").count().min(1),
            usize::from(!resp.is_empty()),
            "one answer, then the connection is closed"
        );
    }
    assert_eq!(e.upstream.count(), before, "nothing was forwarded");
    // Content-Length with Transfer-Encoding: hyper drops the Content-Length (RFC 9112 §6.3),
    // decodes the chunked body and closes the connection after answering, so the request that
    // was hidden behind it is never read, let alone forwarded.
    let resp = raw_request(
        &e,
        "POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/admin/x HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(
        resp.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response, then close: {resp}"
    );
    let seen = e.upstream.seen.lock().expect("log").clone();
    assert!(
        seen.iter().all(|r| r["uri"] != "/api/admin/x"),
        "the smuggled request never reached the upstream"
    );
}

// Blocking socket reads in the test: a second worker keeps the in-process upstream running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_connection_header_tricks_are_400_or_neutralized() {
    let e = env().await;
    let before = e.upstream.count();
    for (what, host_lines) in [
        (
            "two Host headers",
            "Host: shop.example\r\nHost: admin.internal\r\n",
        ),
        ("no Host in HTTP/1.1", ""),
        ("userinfo in Host", "Host: shop.example@admin.internal\r\n"),
        ("a path in Host", "Host: admin.internal/x\r\n"),
        ("an empty Host", "Host: \r\n"),
    ] {
        let resp = raw_request(
            &e,
            &format!("GET /public/x HTTP/1.1\r\n{host_lines}Connection: close\r\n\r\n"),
        );
        assert!(resp.starts_with("HTTP/1.1 400"), "{what}: {resp}");
    }
    assert_eq!(e.upstream.count(), before, "nothing was forwarded");
    // Thousands of Connection options (each header would be checked against each): refused.
    let many: Vec<String> = (0..2000).map(|i| format!("x{i}")).collect();
    let resp = raw_request(
        &e,
        &format!(
            "GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: {}\r\n\r\n",
            many.join(",")
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(e.upstream.count(), before, "nothing was forwarded");
    // Another Host reaches the upstream only as X-Forwarded-Host: the upstream's virtual host
    // is its own authority, unless the route preserves the client's Host.
    let resp = raw_request(
        &e,
        "GET /public/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let upstream_host = e.upstream.base.trim_start_matches("http://").to_owned();
    let h = e.upstream.last()["headers"].clone();
    assert_eq!(h["host"], json!([upstream_host]));
    assert_eq!(h["x-forwarded-host"], json!(["admin.internal"]));
    let resp = raw_request(
        &e,
        "GET /vhost/x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        e.upstream.last()["headers"]["host"],
        json!(["shop.example"]),
        "preserve_host = true forwards the client's Host"
    );
    // HTTP/1.0 may omit Host.
    let resp = raw_request(&e, "GET /public/x HTTP/1.0\r\n\r\n");
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
}

fn raw_request(e: &Env, request: &str) -> String {
    raw_to(&e.idp.server.base, request)
}

/// [`raw_to`] off the async runtime, so an upstream in this process can answer meanwhile.
pub(crate) async fn raw_async(base: &str, request: &str) -> String {
    let (base, request) = (base.to_owned(), request.to_owned());
    tokio::task::spawn_blocking(move || raw_to(&base, &request))
        .await
        .expect("join")
}

/// Sends `request` as written to the server at `base` and reads until it closes.
pub(crate) fn raw_to(base: &str, request: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The server may answer and close before reading all of it (a refused body): what it
    // answered is what the caller checks.
    let _ = s.write_all(request.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn token_attacks_are_401() {
    let e = env().await;
    let before = e.upstream.count();
    // An ID token is not an access token.
    let mut idp = e.idp;
    idp.cookies.clear();
    let q = idp.sign_in("spa", "root").await;
    let (_, tokens) = idp.exchange("spa", &q["code"]).await;
    let id_token = tokens["id_token"].as_str().expect("id").to_owned();
    let e = Env { idp, ..e };
    assert_eq!(
        e.get("/api/orders", Some(&id_token)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // alg none, stripped signature, tampered payload.
    let parts: Vec<&str> = e.root.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for alg in ["none", "NONE", "nOnE"] {
        let h = b64.encode(format!(r#"{{"alg":"{alg}","kid":"x"}}"#));
        assert_eq!(
            e.get("/api/orders", Some(&format!("{h}.{}.", parts[1])))
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        e.get("/api/orders", Some(&format!("{}.{}.", parts[0], parts[1])))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let mut claims = crate::oidc::claims(&e.ada);
    claims["groups"] = json!(["admin"]);
    let forged = format!(
        "{}.{}.{}",
        e.ada.split('.').next().expect("h"),
        b64.encode(claims.to_string()),
        e.ada.rsplit('.').next().expect("s")
    );
    assert_eq!(
        e.get("/api/admin/x", Some(&forged)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Two Authorization headers, or two access cookies: refused, not one picked.
    let two = e
        .idp
        .http
        .get(e.url("/api/orders"))
        .header("authorization", format!("Bearer {}", e.ada))
        .header("authorization", format!("Bearer {}", e.root))
        .send()
        .await
        .expect("send");
    assert_eq!(two.status(), StatusCode::UNAUTHORIZED);
    let cookies = format!(
        "__Host-portcullis-access={}; __Host-portcullis-access={}",
        e.ada, e.root
    );
    let two = e
        .idp
        .http
        .get(e.url("/api/orders"))
        .header("cookie", cookies)
        .send()
        .await
        .expect("send");
    assert_eq!(two.status(), StatusCode::UNAUTHORIZED);
    // Oversized token.
    let huge = e
        .get("/api/orders", Some(&"a".repeat(20_000)))
        .await
        .status();
    assert!(
        huge == StatusCode::UNAUTHORIZED || huge == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{huge}"
    );
    assert_eq!(e.upstream.count(), before);
}

#[tokio::test]
async fn cookie_credentials_need_a_same_origin_for_unsafe_methods() {
    let e = env().await;
    let cookie = format!("__Host-portcullis-access={}", e.ada);
    let origin = e.idp.server.base.replace("127.0.0.1", "localhost");
    let before = e.upstream.count();
    for bad in [Some("https://evil.example"), Some("null"), None] {
        let mut req = e
            .idp
            .http
            .post(e.url("/api/orders"))
            .header("cookie", &cookie)
            .body("{}");
        if let Some(o) = bad {
            req = req.header("origin", o);
        }
        assert_eq!(
            req.send().await.expect("send").status(),
            StatusCode::FORBIDDEN,
            "{bad:?}"
        );
    }
    assert_eq!(e.upstream.count(), before, "nothing forwarded");
    let ok = e
        .idp
        .http
        .post(e.url("/api/orders"))
        .header("cookie", &cookie)
        .header("origin", &origin)
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
    let fetch_meta = e
        .idp
        .http
        .post(e.url("/api/orders"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(fetch_meta.status(), StatusCode::OK);
    let bearer = e
        .idp
        .http
        .post(e.url("/api/orders"))
        .bearer_auth(&e.ada)
        .header("origin", "https://evil.example")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(
        bearer.status(),
        StatusCode::OK,
        "Bearer requests are exempt"
    );
    let get = e
        .idp
        .http
        .get(e.url("/api/orders"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("send");
    assert_eq!(get.status(), StatusCode::OK, "safe methods are exempt");
}

#[tokio::test]
async fn revocation_and_policy_changes_take_effect_within_a_second() {
    let e = env().await;
    assert_eq!(
        e.get("/api/orders", Some(&e.ada)).await.status(),
        StatusCode::OK
    );
    e.idp._instance.run(&["user", "disable", "ada"]).ok();
    let started = Instant::now();
    within_a_second("revocation not enforced within a second", || async {
        e.get("/api/orders", Some(&e.ada)).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    eprintln!("revocation enforced after {:?}", started.elapsed());

    // A new policy version denying root's admin access reaches the running gateway.
    assert_eq!(
        e.get("/api/admin/x", Some(&e.root)).await.status(),
        StatusCode::OK
    );
    let file = e.idp._instance.dir.path().join("policy.toml");
    std::fs::write(&file, "[[policy]]\nprincipal = \"group:admin\"\nstatements = [{ effect = \"deny\", paths = [\"/api/admin/**\"] }]\n").expect("write");
    e.idp
        ._instance
        .run(&["policy", "set", file.to_str().expect("utf-8")])
        .ok();
    within_a_second("policy change not applied within a second", || async {
        e.get("/api/admin/x", Some(&e.root)).await.status() == StatusCode::FORBIDDEN
    })
    .await;
    let explain = e
        .idp
        ._instance
        .run(&[
            "policy",
            "explain",
            "--group",
            "admin",
            "GET",
            "/api/admin/x",
        ])
        .ok();
    assert!(
        explain.contains("denied by statement 1 of group:admin, version 2"),
        "{explain}"
    );
    e.idp._instance.run(&["policy", "rollback", "1"]).ok();
    let history = e.idp._instance.run(&["policy", "history"]).ok();
    assert!(history.contains("rollback to version 1"), "{history}");
    let matrix = e.idp._instance.run(&["policy", "matrix"]).ok();
    let row = matrix
        .lines()
        .find(|l| l.starts_with("DELETE /api/**"))
        .unwrap_or_else(|| panic!("no row for the API route:\n{matrix}"));
    assert_eq!(
        row.split_whitespace().skip(2).collect::<Vec<_>>(),
        ["deny", "allow", "deny"],
        "{matrix}"
    );
}

#[tokio::test]
async fn upstream_faults_are_502_and_504() {
    let e = env().await;
    let resp = e.get("/down/x", None).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["error"],
        "bad_gateway"
    );
    let resp = e.get("/api/slow", Some(&e.root)).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn client_credentials_tokens_are_authorized_by_scope() {
    let e = env().await;
    let secret = e.idp.backend_secret.clone();
    let (_, body) = e
        .idp
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders/read"),
            ],
            Some(("backend", &secret)),
        )
        .await;
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        e.get("/api/orders/1", Some(&token)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        e.upstream.last()["headers"]["x-auth-client-id"],
        json!(["backend"])
    );
    let post = e
        .idp
        .http
        .post(e.url("/api/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(post.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_upstream_can_verify_a_signed_assertion() {
    let e = env().await;
    let forged = e
        .idp
        .http
        .get(e.url("/verified/x"))
        .bearer_auth(&e.ada)
        .header("X-Auth-Assertion", "forged")
        .send()
        .await
        .expect("send");
    assert_eq!(forged.status(), StatusCode::OK);
    let assertion = e.upstream.last()["headers"]["x-auth-assertion"][0]
        .as_str()
        .expect("assertion")
        .to_owned();
    assert_ne!(assertion, "forged", "a client-sent assertion is replaced");
    let jwks: Value = e
        .idp
        .http
        .get(e.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let keys = portcullis_token::jwt::KeySet::new(
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| portcullis_token::VerifyingKey::from_jwk(k).expect("jwk")),
    );
    let issuer = e.idp.server.base.replace("127.0.0.1", "localhost");
    let now =
        i64::try_from(std::time::UNIX_EPOCH.elapsed().expect("clock").as_secs()).expect("i64");
    let aud = ["orders-api".to_owned()];
    let expect = portcullis_token::jwt::Expect {
        issuer: &issuer,
        audiences: &aud,
        token_use: None,
        leeway: 5,
        exp_leeway: 5,
        now,
    };
    let claims = portcullis_token::jwt::verify(&assertion, &keys, &expect)
        .expect("the upstream can verify it");
    assert_eq!(claims.string("token_use"), Some("assertion"));
    assert_eq!(claims.string("username"), Some("ada"));
    assert!(claims.exp - now <= 60);
    // And an assertion is not an access token.
    assert_eq!(
        e.get("/api/orders", Some(&assertion)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_with_caching_headers_precompression_and_spa_fallback() {
    let e = env().await;
    let resp = e.get("/static/app.js", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let modified = resp.headers()["last-modified"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let again = e
        .idp
        .http
        .get(e.url("/static/app.js"))
        .header("if-modified-since", &modified)
        .send()
        .await
        .expect("send");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let gz = e
        .idp
        .http
        .get(e.url("/static/app.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("send");
    assert_eq!(
        gz.headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap_or("")),
        Some("gzip")
    );
    assert_eq!(
        e.get("/static/missing.js", None).await.status(),
        StatusCode::NOT_FOUND
    );
    for escape in [
        "/static/../index.html",
        "/static/%2e%2e/index.html",
        "/static/..%2findex.html",
    ] {
        let resp = raw_get(&e, escape).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{escape}: {resp}");
    }
    let spa = e.get("/spa/orders/42", Some(&e.ada)).await;
    assert_eq!(spa.status(), StatusCode::OK);
    assert!(
        spa.text()
            .await
            .expect("html")
            .contains("<title>spa</title>"),
        "unknown paths get index.html"
    );
    let signed_out = e.get("/spa/orders/42", None).await;
    assert_eq!(
        signed_out.status(),
        StatusCode::FOUND,
        "a page route still asks to sign in first"
    );
}

async fn raw_get(e: &Env, path: &str) -> String {
    let addr = e.idp.server.base.trim_start_matches("http://").to_owned();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn metrics_count_requests_by_route_status_and_decision() {
    let e = env().await;
    e.get("/api/orders/1", Some(&e.ada)).await;
    e.get("/api/admin/x", Some(&e.ada)).await;
    e.get("/api/orders/1", None).await;
    let admin = e
        .idp
        .server
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("admin listening on "))
        .expect("the admin listener is announced")
        .to_owned();
    let text = e
        .idp
        .http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        r#"portcullis_gateway_requests_total{route="/api/**",status="200",decision="allowed"} 1"#,
        r#"portcullis_gateway_requests_total{route="/api/**",status="403",decision="denied"} 1"#,
        r#"portcullis_gateway_requests_total{route="/api/**",status="401",decision="unauthenticated"} 1"#,
        "portcullis_gateway_upstream_seconds",
        r#"portcullis_gateway_token_cache_total{result="miss"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    let main = e
        .idp
        .http
        .get(e.url("/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(
        main.status(),
        StatusCode::NOT_FOUND,
        "metrics are not on the public listener"
    );
}

#[tokio::test]
async fn one_json_access_log_line_per_request_without_tokens_or_queries() {
    let upstream = Upstream::start().await;
    let files = tempfile::tempdir().expect("dir");
    std::fs::create_dir(files.path().join("static")).expect("mkdir");
    let i = crate::harness::Instance::with_config(&config(&upstream.base, files.path()));
    let log = files.path().join("server.log");
    let cmd = i.command(&["--log-format", "json", "serve", "--listen", "127.0.0.1:0"]);
    let server = crate::harness::Server::start_with_stderr(
        cmd,
        std::process::Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    let http = reqwest::Client::new();
    http.get(server.url("/api/orders/1?secret=hunter2"))
        .bearer_auth("header.payload.signature-not-to-be-logged")
        .send()
        .await
        .expect("send");
    drop(server);
    let text = std::fs::read_to_string(&log).expect("log");
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "portcullis::access")
        .unwrap_or_else(|| panic!("no access log line in:\n{text}"));
    assert_eq!(line["fields"]["path"], "/api/orders/1");
    assert_eq!(line["fields"]["decision"], "unauthenticated");
    assert_eq!(line["fields"]["status"], 401);
    assert_eq!(line["fields"]["route"], "/api/**");
    assert_eq!(line["fields"]["client"], "127.0.0.1");
    assert!(
        !text.contains("hunter2") && !text.contains("signature-not-to-be-logged"),
        "no query or token in logs:\n{text}"
    );
}

#[tokio::test]
async fn tokens_of_a_trusted_external_issuer_are_verified_with_its_jwks() {
    // B: another portcullis acting as the external identity provider (as a Cognito pool would).
    let mut b = setup("");
    let issuer = b.server.base.replace("127.0.0.1", "localhost");
    let upstream = Upstream::start().await;
    // A: a gateway that trusts B for client `spa`, with B's groups claim.
    let a = trusting_gateway(&issuer, "groups_claim = \"groups\"", &upstream);
    let gateway = a.serve();
    let http = reqwest::Client::new();
    let first = token_for(&mut b, "ada").await;
    let second = token_for(&mut b, "ada").await;
    let resp = http
        .get(gateway.url("/api/orders/1"))
        .bearer_auth(&first)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        upstream.last()["headers"]["x-auth-username"],
        json!(["ada"])
    );
    let denied = http
        .get(gateway.url("/api/admin/x"))
        .bearer_auth(&first)
        .send()
        .await
        .expect("send");
    assert_eq!(
        denied.status(),
        StatusCode::FORBIDDEN,
        "policies apply to external identities too"
    );

    // A token B issued to another client is not for us.
    let secret = b.backend_secret.clone();
    let (_, cc) = b
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders/read"),
            ],
            Some(("backend", &secret)),
        )
        .await;
    let other = cc["access_token"].as_str().expect("token").to_owned();
    let resp = http
        .get(gateway.url("/api/orders/1"))
        .bearer_auth(&other)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "wrong audience");

    // B goes away: A keeps verifying with the keys it has.
    drop(b);
    let resp = http
        .get(gateway.url("/api/orders/2"))
        .bearer_auth(&second)
        .send()
        .await
        .expect("send");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "cached keys keep working while the issuer is unreachable"
    );
}

/// A gateway that trusts `issuer` for client `spa` (with `issuer_extra` lines in its
/// `[[gateway.issuers]]` entry), forwards `/api/**` to `upstream`, and lets `group:user` GET
/// `/api/orders/**`.
pub(crate) fn trusting_gateway(
    issuer: &str,
    issuer_extra: &str,
    upstream: &Upstream,
) -> crate::harness::Instance {
    crate::harness::Instance::with_config(&format!(
        r#"
[[gateway.issuers]]
issuer = "{issuer}"
audiences = ["spa"]
{issuer_extra}

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{upstream}"

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/orders/**"] }}]
"#,
        upstream = upstream.base
    ))
}

/// A WebSocket upstream: it switches protocols for an identified WebSocket handshake and then
/// echoes bytes.
async fn upgrading_upstream() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                if !head.contains("upgrade: websocket")
                    || !head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq==")
                    || !head.contains("x-auth-username: ada")
                {
                    let _ = sock
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = sock.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").await;
                let mut buf = [0u8; 64];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_on_routes_that_allow_them_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upgrading_upstream().await;
    let mut idp = setup(&format!(
        "[[routes]]\npath = \"/ws/**\"\nkind = \"api\"\nupstream = \"{upstream}\"\nwebsocket = true\n\
         [[routes]]\npath = \"/plain/**\"\nkind = \"api\"\nupstream = \"{upstream}\"\n\
         [[policy]]\nprincipal = \"group:user\"\nstatements = [{{ effect = \"allow\", methods = [\"GET\"], paths = [\"/ws/**\", \"/plain/**\"] }}]\n"
    ));
    let ada = token_for(&mut idp, "ada").await;
    let addr = idp.server.base.trim_start_matches("http://").to_owned();
    let handshake = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let open = |path: &'static str, headers: String| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes())
                .await
                .expect("write");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            (s, String::from_utf8_lossy(&head).into_owned())
        }
    };
    let bearer = format!("Authorization: Bearer {ada}\r\n");
    let (_, refused) = open("/ws/chat", handshake.to_owned()).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let (_, refused) = open("/plain/chat", format!("{handshake}{bearer}")).await;
    assert!(
        refused.starts_with("HTTP/1.1 400"),
        "WebSocket is off unless the route allows it: {refused}"
    );
    let (_, refused) = open(
        "/ws/chat",
        format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n{bearer}"
        ),
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 400"),
        "a handshake without a key: {refused}"
    );
    // With the access cookie, a handshake from another site is cross-site WebSocket hijacking.
    let cookie = format!("Cookie: __Host-portcullis-access={ada}\r\n");
    let (_, refused) = open(
        "/ws/chat",
        format!("{handshake}{cookie}Origin: https://evil.example\r\n"),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let (mut s, head) = open("/ws/chat", format!("{handshake}{bearer}")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"ping");
}

/// Polls `check` until it holds, failing with `what` after 1.5 s (the 1 s propagation the
/// issue allows, plus one poll interval of slack).
async fn within_a_second<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_millis(1500), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A trusted issuer whose signing key the test holds, so it can sign tokens that break one rule
/// each; and an attacker's key server, which must never be asked for anything. (Two workers:
/// the key servers run in this process and must answer while the test waits on the gateway.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_by_a_trusted_key_but_breaking_a_rule_reach_nothing() {
    use base64::Engine;
    use portcullis_token::{Algorithm, SigningKey};
    use std::sync::atomic::Ordering;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let trusted = SigningKey::generate(Algorithm::ES256, "trusted-1").expect("key");
    let attacker = SigningKey::generate(Algorithm::ES256, "attacker-1").expect("key");
    use crate::gateway_upstream::key_server;
    let (issuer, issuer_hits) = key_server(portcullis_token::jwks([trusted.verifying_key()])).await;
    let (evil, evil_hits) = key_server(portcullis_token::jwks([attacker.verifying_key()])).await;

    let upstream = Upstream::start().await;
    let a = trusting_gateway(
        &issuer,
        &format!("jwks_uri = \"{issuer}/jwks.json\"\ngroups_claim = \"cognito:groups\""),
        &upstream,
    );
    let gateway = a.serve();
    let now = portcullis_token::Clock::system().now();
    // Cognito's access-token shape: `client_id`, no `aud`, `token_use`, `cognito:groups`.
    let good = json!({
        "iss": issuer, "sub": "u-1", "username": "ada", "client_id": "spa",
        "token_use": "access", "scope": "openid", "cognito:groups": ["user"],
        "iat": now - 5, "exp": now + 600, "jti": "j-1",
    });
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        change(&mut c);
        c
    };
    let jws = |key: &SigningKey, header: Value, claims: &Value| {
        crate::gateway_upstream::sign_jws(key, &header.to_string(), &claims.to_string())
    };
    let es256 = |kid: &str| json!({ "alg": "ES256", "kid": kid, "typ": "JWT" });
    let url = gateway.url("/api/orders/1");
    let get = |token: String| {
        let url = url.clone();
        async move { crate::gateway_upstream::bearer_status(&url, &token).await }
    };

    // The control: the well-formed token is accepted and reaches the upstream.
    assert_eq!(
        get(jws(&trusted, es256("trusted-1"), &good)).await,
        StatusCode::OK
    );
    let before = upstream.count();
    assert_eq!(before, 1);

    let good_token = jws(&trusted, es256("trusted-1"), &good);
    let (signing_input, _) = good_token.rsplit_once('.').expect("jws");
    // HS256 with the issuer's public key (its JWK, as a confused verifier would use it) as the
    // HMAC secret.
    let public_jwk = trusted.verifying_key().jwk().to_string();
    let hs_input = format!(
        "{}.{}",
        b64.encode(json!({ "alg": "HS256", "kid": "trusted-1" }).to_string()),
        b64.encode(good.to_string())
    );
    let hmac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public_jwk.as_bytes()),
        hs_input.as_bytes(),
    );
    let attacker_jwk = attacker.verifying_key().jwk().clone();
    let attacks: Vec<(&str, String)> = vec![
        (
            "expired",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["exp"] = json!(now - 3600)),
            ),
        ),
        (
            "not valid yet",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["nbf"] = json!(now + 3600)),
            ),
        ),
        (
            "string-typed exp",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["exp"] = json!((now + 600).to_string())),
            ),
        ),
        (
            "wrong issuer",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["iss"] = json!("https://other.example")),
            ),
        ),
        (
            "wrong client",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["client_id"] = json!("other")),
            ),
        ),
        (
            "an ID token",
            jws(
                &trusted,
                es256("trusted-1"),
                &with(&|c| c["token_use"] = json!("id")),
            ),
        ),
        (
            "crit header",
            jws(
                &trusted,
                json!({ "alg": "ES256", "kid": "trusted-1", "crit": ["exp-v2"], "exp-v2": 1 }),
                &good,
            ),
        ),
        ("HS256 keyed with the public key", {
            format!("{hs_input}.{}", b64.encode(hmac.as_ref()))
        }),
        ("alg none", {
            format!(
                "{}.{}.",
                b64.encode(json!({ "alg": "none", "kid": "trusted-1" }).to_string()),
                b64.encode(good.to_string())
            )
        }),
        ("ECDSA r = s = 0", {
            format!("{signing_input}.{}", b64.encode([0u8; 64]))
        }),
        (
            "ES256 relabelled RS256",
            format!(
                "{}.{}.{}",
                b64.encode(json!({ "alg": "RS256", "kid": "trusted-1" }).to_string()),
                b64.encode(good.to_string()),
                good_token.rsplit('.').next().expect("sig")
            ),
        ),
        (
            "kid with path traversal",
            jws(&attacker, es256("../../../../etc/passwd"), &good),
        ),
        ("kid with SQL", jws(&attacker, es256("x' OR '1'='1"), &good)),
        (
            "jku to the attacker's keys",
            jws(
                &attacker,
                json!({ "alg": "ES256", "kid": "attacker-1", "jku": format!("{evil}/jwks.json") }),
                &good,
            ),
        ),
        (
            "x5u to the attacker's keys",
            jws(
                &attacker,
                json!({ "alg": "ES256", "kid": "attacker-1", "x5u": format!("{evil}/cert.pem") }),
                &good,
            ),
        ),
        (
            "embedded jwk, the attacker's, under the trusted kid",
            jws(
                &attacker,
                json!({ "alg": "ES256", "kid": "trusted-1", "jwk": attacker_jwk }),
                &good,
            ),
        ),
        (
            "signed by the attacker under the trusted kid",
            jws(&attacker, es256("trusted-1"), &good),
        ),
    ];
    for (what, token) in attacks {
        assert_eq!(get(token).await, StatusCode::UNAUTHORIZED, "{what}");
    }
    assert_eq!(upstream.count(), before, "no attack reached the upstream");
    assert_eq!(
        evil_hits.load(Ordering::SeqCst),
        0,
        "the attacker's key URLs were never fetched"
    );
    // Unknown kids make the gateway look for new keys at most once per 30 s, not per token.
    assert!(
        issuer_hits.load(Ordering::SeqCst) <= 2,
        "the issuer's JWKS was fetched {} times",
        issuer_hits.load(Ordering::SeqCst)
    );
    // And the good token still works.
    assert_eq!(get(good_token).await, StatusCode::OK);
}

/// `gateway.max_body`: a declared length over it is refused before anything is forwarded; a
/// chunked body that grows past it is cut off and answered 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_the_limit_are_refused() {
    let upstream = Upstream::start().await;
    let i = crate::harness::Instance::with_config(&format!(
        "[gateway]\nmax_body = 1024\n\n[[routes]]\npath = \"/public/**\"\nkind = \"public\"\nupstream = \"{}\"\n",
        upstream.base
    ));
    let server = i.serve();
    let raw = |request: String| raw_to(&server.base, &request);
    let small = "a".repeat(1000);
    let ok = raw(format!(
        "POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{small}"
    ));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(upstream.count(), 1);
    let big = "a".repeat(2000);
    let resp = raw(format!(
        "POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{big}"
    ));
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert_eq!(upstream.count(), 1, "nothing was forwarded");
    let resp = raw(format!(
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{big}\r\n0\r\n\r\n"
    ));
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let seen = upstream.seen.lock().expect("log").clone();
    assert!(
        seen.iter().skip(1).all(|r| r["body"] != big.as_str()),
        "the oversized body never reached the upstream whole"
    );
}

/// The third upstream timeout, `gateway.total_timeout`: a response body still trickling past it
/// is cut off. (Connect and response-header timeouts: `upstream_faults_are_502_and_504`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_that_outlasts_the_total_timeout_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends its headers and half the body at once, the rest 3 s later.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let trickle = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
                    .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = s.write_all(b"-last").await;
            });
        }
    });
    let i = crate::harness::Instance::with_config(&format!(
        "[gateway]\nupstream_timeout = \"1s\"\ntotal_timeout = \"1s\"\n\n[[routes]]\npath = \"/slow/**\"\nkind = \"public\"\nupstream = \"{trickle}\"\n\n[[routes]]\npath = \"/stream/**\"\nkind = \"public\"\nupstream = \"{trickle}\"\ntotal_timeout = \"10s\"\n"
    ));
    let server = i.serve();
    let started = Instant::now();
    let resp = reqwest::get(server.url("/slow/x")).await.expect("headers");
    assert_eq!(resp.status(), StatusCode::OK, "the headers came in time");
    let body = resp.bytes().await;
    let took = started.elapsed();
    assert!(
        body.is_err(),
        "the body is cut off, not completed: {body:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2800),
        "cut off after {took:?}"
    );
    // A route with its own, longer total_timeout gets the whole body.
    let resp = reqwest::get(server.url("/stream/x"))
        .await
        .expect("headers");
    assert_eq!(
        resp.bytes().await.expect("the whole body").as_ref(),
        b"first-last"
    );
}

/// Behind a trusted load balancer the client is the address it forwards for; from anyone
/// else `X-Forwarded-For` is ignored (see client_sent_identity_and_forwarding_headers…).
#[tokio::test]
async fn x_forwarded_for_is_believed_from_trusted_proxies_only() {
    let upstream = Upstream::start().await;
    let instance = |trusted: &str| {
        crate::harness::Instance::with_config(&format!(
            "[server]\ntrusted_proxies = \"{trusted}\"\n\n[[routes]]\npath = \"/public/**\"\nkind = \"public\"\nupstream = \"{}\"\n",
            upstream.base
        ))
    };
    let http = reqwest::Client::new();
    let forwarded_for = |server: String| {
        let http = http.clone();
        let upstream = &upstream;
        async move {
            let resp = http
                .get(format!("{server}/public/x"))
                .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
                .header("x-forwarded-for", "198.51.100.4")
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), StatusCode::OK);
            upstream.last()["headers"]["x-forwarded-for"].clone()
        }
    };
    // The test connects from 127.0.0.1: trusted, so its nearest untrusted hop is the client.
    let one = instance("127.0.0.1");
    let s = one.serve();
    assert_eq!(forwarded_for(s.base.clone()).await, json!(["198.51.100.4"]));
    // A chain of trusted proxies: the first hop outside them.
    let chain = instance("127.0.0.0/8, 198.51.100.0/24");
    let s = chain.serve();
    assert_eq!(forwarded_for(s.base.clone()).await, json!(["203.0.113.7"]));
    // Not trusted: the header is the client's word and is ignored.
    let other = instance("10.0.0.0/8");
    let s = other.serve();
    assert_eq!(forwarded_for(s.base.clone()).await, json!(["127.0.0.1"]));
    // A bad entry is a configuration error that names it.
    let bad = instance("10.0.0.0/8, 10.0.0.300");
    let err = bad.run(&["config", "check"]).user_error();
    assert!(
        err.contains("server.trusted_proxies") && err.contains("10.0.0.300"),
        "{err}"
    );
}

/// Hostile request targets and headers, generated: none gets a 500 or takes the server down,
/// and nothing ambiguous reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_hostile_requests_get_no_500_and_reach_nothing_ambiguous() {
    let e = env().await;
    // xorshift64*: deterministic, so a failure can be replayed from the seed it prints.
    let seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut state = seed;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let first = [
        "api", "API", "public", "Public", "app", "static", "spa", "admin",
    ];
    let plain = [
        "orders", "Orders", "admin", "x", "1", "a.b", "~u", "%41", "é",
    ];
    let hostile = [
        "..",
        ".",
        "%2e",
        "%2E%2e",
        "%2f",
        "%2F",
        "%5c",
        "%00",
        "%25",
        "%252e",
        "%20",
        ";",
        ";a=b",
        "\\",
        "%c0%ae",
        "%e2%80%ae",
        "%ff",
        "*",
        "?",
        "#",
        "%3f",
        "a.",
        "a%20",
        "%0d%0a",
        "",
    ];
    let heads = [
        "",
        "",
        "",
        "Authorization: Bearer x\r\n",
        "Authorization: Basic Zm9vOmJhcg==\r\n",
        "Authorization: Bearer\r\n",
        "X-Original-URL: /api/admin/x\r\n",
        "X-HTTP-Method-Override: DELETE\r\n",
        "Cookie: __Host-portcullis-access=\r\n",
        "Cookie: ;;;=;\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
    ];
    let methods = [
        "GET", "GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH",
    ];
    let before = e.upstream.count();
    for n in 0..300 {
        let mut pick = |list: &[&'static str]| list[(next() % list.len() as u64) as usize];
        let mut path = format!("/{}", pick(&first));
        for _ in 0..(pick(&["0", "1", "2", "3"]).len() + n % 3) {
            path.push(if n % 10 == 7 { '\\' } else { '/' });
            let list: &[&'static str] = if pick(&["h", "p", "p", "p"]) == "h" {
                &hostile
            } else {
                &plain
            };
            path.push_str(pick(list));
        }
        let method = pick(&methods);
        let head = pick(&heads);
        let token = if pick(&["t", "-"]) == "t" {
            format!("Authorization: Bearer {}\r\n", e.ada)
        } else {
            String::new()
        };
        // A chunked request carries its (empty) body; one that never sends it is below.
        let body = if head.contains("chunked") {
            "0\r\n\r\n"
        } else {
            ""
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{head}{token}Connection: close\r\n\r\n{body}"
        );
        let resp = raw_request(&e, &request);
        assert!(
            !resp.starts_with("HTTP/1.1 5"),
            "request {n} (seed {seed:#x}) {request:?} -> {resp}"
        );
    }
    let seen = e.upstream.seen.lock().expect("log").clone();
    let forwarded = seen.len() - before;
    eprintln!("{forwarded} of 300 generated requests were forwarded");
    assert!(
        forwarded > 10,
        "the generator should also make requests that pass"
    );
    for r in &seen[before..] {
        let uri = r["uri"].as_str().unwrap_or_default().to_ascii_lowercase();
        let path = uri.split('?').next().unwrap_or_default();
        for bad in ["/../", "/./", "//", "%2e", "%2f", "%5c", "\\", "%00", ";"] {
            assert!(
                !path.contains(bad) && !path.ends_with("/.."),
                "{uri} reached the upstream ({bad})"
            );
        }
    }
    // A body promised and never sent: the client's delay (408), not the upstream's (504).
    let resp = raw_request(
        &e,
        "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert_eq!(e.get("/public/x", None).await.status(), StatusCode::OK);
}
