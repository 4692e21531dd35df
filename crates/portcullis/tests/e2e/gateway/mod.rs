//! The gateway over real sockets, one module per stage of the request path, and the helpers they
//! share: route rules from group policies, credentials from header or cookie, responses per
//! route kind, header hygiene, revocation and policy changes within a second, and the attacks of
//! the gateway issue — each proving nothing reached the upstream.

mod authn;
mod authz;
mod cors;
mod forward;
mod http2;
mod limits;
mod paths;
mod telemetry;
mod transform;
mod validation;

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
    let files = site_files();
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

/// [`env`] over https with a certificate for `localhost` and `127.0.0.1` from a test authority
/// (HTTP/2 on, as by default); the authority's PEM comes along.
async fn env_tls() -> (Env, String) {
    let upstream = Upstream::start().await;
    let files = site_files();
    let ca = crate::tls::Ca::new();
    let (chain, key, _) = ca.leaf(files.path(), "server", &["localhost", "127.0.0.1"]);
    let config = format!(
        "{}\n{}",
        config(&upstream.base, files.path()),
        crate::tls::certificates(&[(&chain, &key)])
    );
    let mut idp = crate::oidc::setup_tls(&config, &ca.pem);
    let ada = token_for(&mut idp, "ada").await;
    let root = token_for(&mut idp, "root").await;
    let env = Env {
        _files: files,
        idp,
        upstream,
        ada,
        root,
    };
    (env, ca.pem)
}

/// The static files the routes of [`config`] serve.
fn site_files() -> tempfile::TempDir {
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
    files
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

/// Polls `check` until it holds, failing with `what` after 1.5 s (the 1 s propagation the
/// issue allows, plus one poll interval of slack).
async fn within_a_second<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_millis(1500), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
