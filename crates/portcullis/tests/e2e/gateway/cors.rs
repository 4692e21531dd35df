//! CORS per route over real sockets: preflights answered by the gateway (never the upstream),
//! answers readable only by the origins listed, `Vary: Origin` always, and the cookie CSRF rule
//! relaxed only for origins invited with credentials.

use reqwest::StatusCode;

use super::token_for;
use crate::gateway_upstream::Upstream;
use crate::oidc::{Idp, setup};

fn config(upstream: &str) -> String {
    format!(
        r#"
[[routes]]
path = "/api/**"
kind = "api"
upstream = "{upstream}"

[routes.cors]
origins = ["https://app.example.com", "https://*.shop.example"]
methods = ["GET", "POST"]
headers = ["authorization", "content-type", "x-trace"]
expose_headers = ["x-served-by"]
credentials = true
max_age = "5m"

[[routes]]
path = "/open/**"
kind = "api"
upstream = "{upstream}"

[routes.cors]
origins = ["https://app.example.com"]

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/**", "/open/**"] }}]
"#
    )
}

async fn env() -> (Idp, Upstream, String) {
    let upstream = Upstream::start().await;
    let mut idp = setup(&config(&upstream.base));
    let ada = token_for(&mut idp, "ada").await;
    (idp, upstream, ada)
}

fn vary(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_by_the_gateway_for_listed_origins_only() {
    let (idp, upstream, _) = env().await;
    let preflight = |origin: &str, method: &str, headers: Option<&str>| {
        let mut r = idp
            .http
            .request(reqwest::Method::OPTIONS, idp.url("/api/orders"))
            .header("origin", origin)
            .header("access-control-request-method", method);
        if let Some(h) = headers {
            r = r.header("access-control-request-headers", h);
        }
        r.send()
    };
    let ok = preflight(
        "https://app.example.com",
        "POST",
        Some("content-type,x-trace"),
    )
    .await
    .expect("preflight");
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-trace");
    assert_eq!(h["access-control-max-age"], "300");
    assert!(vary(&ok).contains(&"origin".to_owned()));
    let sub = preflight("https://eu.shop.example", "GET", None)
        .await
        .expect("preflight");
    assert_eq!(sub.status(), StatusCode::NO_CONTENT, "a listed subdomain");
    for (origin, method, headers) in [
        ("https://evil.example", "GET", None),
        ("https://app.example.com.evil.example", "GET", None),
        ("https://shop.example", "GET", None),
        ("https://evilshop.example", "GET", None),
        ("http://app.example.com", "GET", None),
        ("null", "GET", None),
        ("https://app.example.com", "DELETE", None),
        ("https://app.example.com", "GET", Some("x-admin")),
    ] {
        let r = preflight(origin, method, headers).await.expect("preflight");
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{origin} {method} {headers:?}"
        );
        assert!(
            !r.headers().contains_key("access-control-allow-origin"),
            "{origin}: no CORS header, so the browser stops"
        );
    }
    assert_eq!(upstream.count(), 0, "no preflight reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_readable_by_listed_origins_and_refusals_too() {
    let (idp, upstream, ada) = env().await;
    let get = |origin: &str, token: Option<&str>| {
        let mut r = idp
            .http
            .get(idp.url("/api/orders"))
            .header("origin", origin)
            .header("x-test-own-cors", "1");
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let ok = get("https://app.example.com", Some(&ada))
        .await
        .expect("get");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com",
        "the origin itself, not the upstream's `*`"
    );
    assert_eq!(ok.headers()["access-control-allow-credentials"], "true");
    assert_eq!(ok.headers()["access-control-expose-headers"], "x-served-by");
    assert!(vary(&ok).contains(&"origin".to_owned()));
    let other = get("https://evil.example", Some(&ada)).await.expect("get");
    assert_eq!(other.status(), StatusCode::OK, "CORS is not authorization");
    assert!(
        !other.headers().contains_key("access-control-allow-origin"),
        "but another origin's script cannot read it (the upstream's own `*` is dropped)"
    );
    assert!(vary(&other).contains(&"origin".to_owned()));
    let refused = get("https://app.example.com", None).await.expect("get");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.headers()["access-control-allow-origin"],
        "https://app.example.com",
        "the app's script can read why it was refused"
    );
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_writes_from_other_origins_pass_only_when_invited_with_credentials() {
    let (idp, upstream, ada) = env().await;
    let post = |path: &str, origin: &str| {
        idp.http
            .post(idp.url(path))
            .header("cookie", format!("__Host-portcullis-access={ada}"))
            .header("origin", origin)
            .body("{}")
            .send()
    };
    assert_eq!(
        post("/api/orders", "https://eu.shop.example")
            .await
            .expect("post")
            .status(),
        StatusCode::OK,
        "a listed origin, with credentials: invited"
    );
    assert_eq!(
        post("/api/orders", "https://evil.example")
            .await
            .expect("post")
            .status(),
        StatusCode::FORBIDDEN,
        "an origin not listed: the CSRF rule holds"
    );
    assert_eq!(
        post("/open/orders", "https://app.example.com")
            .await
            .expect("post")
            .status(),
        StatusCode::FORBIDDEN,
        "listed, but without credentials: not invited to use the cookie"
    );
    assert_eq!(upstream.count(), 1);
}

/// A page on its own origin (any path answers it).
async fn origin_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().fallback(|| async {
        axum::response::Html("<!doctype html><title>another origin</title><p>shop</p>")
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, task)
}

/// Chromium on a page of a second origin calls the API with credentials (a preflighted call
/// with `Authorization`): allowed when the route lists that origin, blocked by the browser when
/// it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_calls_across_origins_only_where_the_route_allows() {
    use crate::browser::{browser, driver, site_with};
    let Some(d) = driver() else { return };
    let (allowed, _a) = origin_server().await;
    let (other, _b) = origin_server().await;
    let s = site_with(&format!(
        r#"
[[routes]]
path = "/api/shop/**"
kind = "api"
upstream = "{up}"

[routes.cors]
origins = ["{allowed}"]
credentials = true
expose_headers = ["x-served-by"]

[[policy]]
principal = "scope:shop/read"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/shop/**"] }}]
"#,
        up = crate::gateway_upstream::Upstream::start().await.base,
    ))
    .await;
    s.instance
        .run(&["resource-server", "add", "shop", "--scope", "read"])
        .ok();
    let client: serde_json::Value = serde_json::from_str(
        &s.instance
            .run(&[
                "--json",
                "client",
                "add",
                "Shop front",
                "--id",
                "shopfront",
                "--confidential",
                "--grant",
                "client_credentials",
                "--scope",
                "shop/read",
            ])
            .ok(),
    )
    .expect("json");
    let tokens: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/oauth2/token", s.base))
        .basic_auth("shopfront", client["client_secret"].as_str())
        .form(&[("grant_type", "client_credentials"), ("scope", "shop/read")])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = tokens["access_token"].as_str().expect("token").to_owned();
    let c = browser(&d).await;
    let call = format!(
        "const done = arguments[0];
         fetch('{}/api/shop/items', {{ credentials: 'include', headers: {{ authorization: 'Bearer {token}' }} }})
           .then(r => r.text().then(t => done({{ status: r.status, body: t }})))
           .catch(e => done({{ error: String(e) }}));",
        s.base
    );
    c.goto(&format!("{allowed}/")).await.expect("goto");
    let answer = c.execute_async(&call, vec![]).await.expect("fetch");
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(
        answer["body"]
            .as_str()
            .unwrap_or_default()
            .contains("/api/shop/items"),
        "{answer}"
    );
    c.goto(&format!("{other}/")).await.expect("goto");
    let blocked = c.execute_async(&call, vec![]).await.expect("fetch");
    assert!(
        blocked["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Failed to fetch"),
        "the browser refuses to call (or read) from an origin not listed: {blocked}"
    );
    c.close().await.expect("close");
}
