//! Browser sessions without a browser: the backend-for-frontend flow over HTTP, cookies,
//! transparent refresh, sign-out, open redirects. (The Chromium suite is the browser-session
//! issue's next step.)

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::oidc::{Idp, PASSWORD, setup};

const ROUTES: &str = r#"
[[routes]]
path = "/admin/**"
kind = "page"
upstream = "UPSTREAM"

[[routes]]
path = "/api/**"
kind = "api"
upstream = "UPSTREAM"

[[policy]]
principal = "group:user"
statements = [{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/orders/**"] }]

[[policy]]
principal = "group:admin"
statements = [{ effect = "allow", methods = ["*"], paths = ["/**"] }]
"#;

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Runs the whole browser sign-in for `user`, starting at `/auth/login?return_to=…`; returns
/// where it lands.
pub(crate) async fn browser_sign_in(idp: &mut Idp, user: &str, return_to: &str) -> String {
    let start = idp
        .get(&idp.url(&format!(
            "/auth/login?return_to={}",
            url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect::<String>()
        )))
        .await;
    assert_eq!(start.status(), StatusCode::FOUND);
    let set = start
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>();
    assert!(
        set.iter().any(|c| c.starts_with("__Host-portcullis-flow-")
            && c.contains("HttpOnly")
            && c.contains("Secure")),
        "{set:?}"
    );
    let authorize = idp.get(&idp.url(&location(&start))).await;
    let mut next = location(&authorize);
    if next.starts_with("/login") {
        let html = idp.get(&idp.url(&next)).await.text().await.expect("html");
        let field = |name: &str| crate::oidc::hidden(&html, name);
        let (request, csrf) = (field("request"), field("csrf"));
        let posted = idp.post_form(&request, &csrf, user, PASSWORD).await;
        next = location(&posted);
    }
    assert!(next.contains("/auth/callback?"), "{next}");
    let back = idp.get(&next).await;
    assert_eq!(
        back.status(),
        StatusCode::FOUND,
        "{}",
        back.text().await.unwrap_or_default()
    );
    location(&back)
}

async fn env() -> (Idp, crate::gateway_upstream::Upstream) {
    let upstream = crate::gateway_upstream::Upstream::start().await;
    let idp = setup(&ROUTES.replace("UPSTREAM", &upstream.base));
    (idp, upstream)
}

#[tokio::test]
async fn sign_in_lands_on_the_page_asked_for_with_httponly_cookies() {
    let (mut idp, upstream) = env().await;
    let anon = idp
        .http
        .get(idp.url("/admin/settings?tab=2"))
        .send()
        .await
        .expect("send");
    assert_eq!(
        location(&anon),
        "/auth/login?return_to=%2Fadmin%2Fsettings%3Ftab%3D2"
    );
    let landed = browser_sign_in(&mut idp, "root", "/admin/settings?tab=2").await;
    assert_eq!(landed, "/admin/settings?tab=2");
    assert!(
        idp.cookies.contains_key("__Host-portcullis-access")
            && idp.cookies.contains_key("__Host-portcullis-refresh")
    );
    assert!(
        !idp.cookies
            .keys()
            .any(|k| k.starts_with("__Host-portcullis-flow-")),
        "the flow cookie is cleared"
    );
    let page = idp.get(&idp.url("/admin/settings")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let h = &upstream.last()["headers"];
    assert_eq!(h["x-auth-username"], serde_json::json!(["root"]));
    assert!(
        h.get("cookie").is_none(),
        "portcullis cookies are not forwarded: {h}"
    );
    let me: Value = idp
        .get(&idp.url("/auth/me"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["username"], "root");
    assert_eq!(me["groups"], serde_json::json!(["admin", "user"]));

    // A customer is sent home from admin pages, and gets 403 from the admin API.
    idp.cookies.clear();
    browser_sign_in(&mut idp, "ada", "/admin/").await;
    let admin = idp.get(&idp.url("/admin/")).await;
    assert_eq!(
        (admin.status(), location(&admin).as_str()),
        (StatusCode::FOUND, "/")
    );
    assert_eq!(
        idp.get(&idp.url("/api/admin/users")).await.status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn two_sign_ins_in_parallel_tabs_both_succeed() {
    let (mut idp, _upstream) = env().await;
    let a = idp
        .get(&idp.url("/auth/login?return_to=%2Fapi%2Forders%2F1"))
        .await;
    let b = idp
        .get(&idp.url("/auth/login?return_to=%2Fapi%2Forders%2F2"))
        .await;
    let flows = idp
        .cookies
        .keys()
        .filter(|k| k.starts_with("__Host-portcullis-flow-"))
        .count();
    assert_eq!(flows, 2, "one flow cookie per attempt");
    // Finish the second tab first, then the first.
    let mut ends = Vec::new();
    for start in [location(&b), location(&a)] {
        let authorize = idp.get(&idp.url(&start)).await;
        let mut next = location(&authorize);
        if next.starts_with("/login") {
            let html = idp.get(&idp.url(&next)).await.text().await.expect("html");
            let field = |name: &str| crate::oidc::hidden(&html, name);
            next = location(
                &idp.post_form(&field("request"), &field("csrf"), "ada", PASSWORD)
                    .await,
            );
        }
        ends.push(location(&idp.get(&next).await));
    }
    assert_eq!(ends, ["/api/orders/2", "/api/orders/1"]);
    for _ in 0..7 {
        idp.get(&idp.url("/auth/login")).await;
    }
    let flows = idp
        .cookies
        .keys()
        .filter(|k| k.starts_with("__Host-portcullis-flow-"))
        .count();
    assert!(flows <= 5, "flow cookies are bounded: {flows}");
}

#[tokio::test]
async fn an_expired_or_missing_access_cookie_is_refreshed_once_for_a_burst() {
    let (mut idp, _upstream) = env().await;
    browser_sign_in(&mut idp, "ada", "/").await;
    let refresh = idp.cookies["__Host-portcullis-refresh"].clone();
    // The browser dropped the access cookie (or it expired): ten parallel calls, one refresh.
    let calls: Vec<_> = (0..10)
        .map(|n| {
            let http = idp.http.clone();
            let url = idp.url(&format!("/api/orders/{n}"));
            let cookie = format!("__Host-portcullis-refresh={refresh}");
            tokio::spawn(async move {
                http.get(url)
                    .header("cookie", cookie)
                    .send()
                    .await
                    .expect("send")
            })
        })
        .collect();
    let mut new_access = std::collections::HashSet::new();
    for c in calls {
        let resp = c.await.expect("join");
        assert_eq!(resp.status(), StatusCode::OK);
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().expect("ascii");
            if let Some(rest) = v.strip_prefix("__Host-portcullis-access=") {
                new_access.insert(rest.split(';').next().expect("value").to_owned());
            }
        }
    }
    assert_eq!(new_access.len(), 1, "a burst shares one refresh");
}

#[tokio::test]
async fn sign_out_revokes_the_old_cookie_within_a_second() {
    let (mut idp, _upstream) = env().await;
    browser_sign_in(&mut idp, "ada", "/").await;
    let old = idp.cookies["__Host-portcullis-access"].clone();
    assert_eq!(
        idp.get(&idp.url("/api/orders/1")).await.status(),
        StatusCode::OK
    );
    let origin = idp.server.base.replace("127.0.0.1", "localhost");
    let forged = idp
        .http
        .post(idp.url("/auth/logout"))
        .header("cookie", idp.cookie_header())
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("send");
    assert_eq!(
        forged.status(),
        StatusCode::FORBIDDEN,
        "sign-out is CSRF-protected"
    );
    assert_eq!(
        idp.http
            .get(idp.url("/auth/logout"))
            .send()
            .await
            .expect("send")
            .status(),
        StatusCode::OK,
        "GET only shows a form"
    );
    let out = idp
        .http
        .post(idp.url("/auth/logout"))
        .header("cookie", idp.cookie_header())
        .header("origin", &origin)
        .send()
        .await
        .expect("send");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&out).starts_with("/logout?client_id=portcullis-browser"),
        "then the provider's session ends too"
    );
    let started = Instant::now();
    loop {
        let resp = idp
            .http
            .get(idp.url("/api/orders/1"))
            .header("cookie", format!("__Host-portcullis-access={old}"))
            .send()
            .await
            .expect("send");
        if resp.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "the old cookie still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let me = idp
        .http
        .get(idp.url("/auth/me"))
        .header("cookie", format!("__Host-portcullis-access={old}"))
        .send()
        .await
        .expect("send");
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn return_to_never_leaves_the_origin() {
    let (mut idp, _upstream) = env().await;
    for bad in [
        "//evil.example",
        "/\\evil.example",
        "/%09/evil.example",
        "https:evil.example",
        "https://evil.example/x",
        "/%2F%2Fevil.example",
    ] {
        idp.cookies.clear();
        let landed = browser_sign_in(&mut idp, "ada", bad).await;
        assert_eq!(landed, "/", "{bad}");
    }
}

#[tokio::test]
async fn cookies_stay_well_under_four_kilobytes() {
    let (mut idp, _upstream) = env().await;
    browser_sign_in(&mut idp, "root", "/").await;
    for name in ["__Host-portcullis-access", "__Host-portcullis-refresh"] {
        let size = name.len() + 1 + idp.cookies[name].len();
        eprintln!("{name}: {size} bytes");
        assert!(size < 4096, "{name} is {size} bytes");
    }
}

#[test]
fn plain_http_beyond_localhost_needs_the_development_switch() {
    let i = crate::harness::Instance::with_config("[idp]\nissuer = \"http://10.1.2.3:8080\"\n");
    let err = i.run(&["serve", "--listen", "127.0.0.1:0"]).user_error();
    assert!(
        err.contains("plain http") && err.contains("allow_insecure_http"),
        "{err}"
    );
}

#[tokio::test]
async fn development_mode_uses_plain_cookies() {
    let i = crate::harness::Instance::with_config(
        "[server]\nallow_insecure_http = true\n[idp]\nissuer = \"http://10.1.2.3:8080\"\n",
    );
    let server = i.serve();
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(server.url("/auth/login"))
        .send()
        .await
        .expect("send");
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie.starts_with("portcullis-flow-") && !cookie.contains("Secure"),
        "{cookie}"
    );
}

#[tokio::test]
async fn browser_sessions_at_an_external_provider() {
    // B: another portcullis standing in for a Cognito user pool.
    let mut b = setup("");
    let b_issuer = b.server.base.replace("127.0.0.1", "localhost");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let a_origin = format!("http://localhost:{port}");
    b._instance
        .run(&[
            "client",
            "add",
            "A",
            "--id",
            "a-web",
            "--redirect-uri",
            &format!("{a_origin}/auth/callback"),
            "--logout-uri",
            &format!("{a_origin}/"),
            "--scope",
            "openid",
            "--scope",
            "email",
            "--scope",
            "profile",
        ])
        .ok();
    let upstream = crate::gateway_upstream::Upstream::start().await;
    // A: the gateway, whose browser sessions sign in at B.
    let a = crate::harness::Instance::with_config(&format!(
        r#"
[sessions]
issuer = "{b_issuer}"
client_id = "a-web"

[[gateway.issuers]]
issuer = "{b_issuer}"
audiences = ["a-web"]

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{up}"

[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/orders/**"] }}]
"#,
        up = upstream.base
    ));
    let gateway = crate::harness::Server::start(a.command(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]));
    let start = b
        .get(&format!(
            "{a_origin}/auth/login?return_to=%2Fapi%2Forders%2F1"
        ))
        .await;
    let authorize = location(&start);
    assert!(
        authorize.starts_with(&format!("{b_issuer}/oauth2/authorize?")),
        "{authorize}"
    );
    let next = location(&b.get(&authorize).await);
    assert!(next.starts_with("/login"), "{next}");
    let html = b.get(&b.url(&next)).await.text().await.expect("html");
    let field = |name: &str| crate::oidc::hidden(&html, name);
    let callback = location(
        &b.post_form(&field("request"), &field("csrf"), "ada", PASSWORD)
            .await,
    );
    assert!(
        callback.starts_with(&format!("{a_origin}/auth/callback?")),
        "{callback}"
    );
    let back = b.get(&callback).await;
    assert_eq!(
        (back.status(), location(&back).as_str()),
        (StatusCode::FOUND, "/api/orders/1")
    );
    let api = b.get(&gateway.url("/api/orders/1")).await;
    assert_eq!(api.status(), StatusCode::OK);
    assert_eq!(
        upstream.last()["headers"]["x-auth-username"],
        serde_json::json!(["ada"])
    );
    let me: Value = b
        .get(&format!("{a_origin}/auth/me"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["username"], "ada");

    // Refresh at the external provider, in line.
    let refresh = b.cookies["__Host-portcullis-refresh"].clone();
    let resp = b
        .http
        .get(gateway.url("/api/orders/2"))
        .header("cookie", format!("__Host-portcullis-refresh={refresh}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK, "refreshed at the provider");

    // Sign-out revokes at the provider and ends its session there.
    let out = b
        .http
        .post(gateway.url("/auth/logout"))
        .header("cookie", b.cookie_header())
        .header("origin", &a_origin)
        .send()
        .await
        .expect("send");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&out).starts_with(&format!("{b_issuer}/logout?client_id=a-web")),
        "{}",
        location(&out)
    );
    let latest = b.cookies["__Host-portcullis-refresh"].clone();
    let (status, _) = b.refresh("a-web", &latest).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the refresh token was revoked at the provider"
    );
}

/// The refresh cookie is sealed by this instance: the browser never holds the refresh token in
/// the clear, and a cookie it did not set — made up or altered — is refused before any
/// database read or call to the provider.
#[tokio::test]
async fn refresh_cookies_are_sealed_and_forged_ones_refused() {
    let (mut idp, upstream) = env().await;
    browser_sign_in(&mut idp, "ada", "/").await;
    let sealed = idp.cookies["__Host-portcullis-refresh"].clone();
    assert!(sealed.starts_with("v1."), "sealed: {sealed}");
    let before = upstream.count();
    let mut altered = sealed.clone().into_bytes();
    let last = altered.len() - 2;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("ascii");
    for forged in [
        altered.as_str(),
        "v1.x.y.z",
        "a-refresh-token-we-never-issued",
    ] {
        let resp = idp
            .http
            .get(idp.url("/api/orders/1"))
            .header("cookie", format!("__Host-portcullis-refresh={forged}"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{forged}");
        assert!(resp.headers().get("set-cookie").is_none(), "{forged}");
    }
    assert_eq!(upstream.count(), before, "nothing reached the upstream");
    // The cookie we set still works.
    let resp = idp
        .http
        .get(idp.url("/api/orders/1"))
        .header("cookie", format!("__Host-portcullis-refresh={sealed}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
}
