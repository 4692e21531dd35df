//! Moving off Cognito: `user import` of a `list-users` export (10,000 users, twice), and the
//! lazy password migration through a legacy verifier on first sign-in.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::Instance;
use crate::oidc::{claims, location, query};

/// A `list-users` export of `n` users (`user00000`…), ten of them in `admin` (embedded, as some
/// scripts do), plus two entries that cannot be imported.
fn export(n: usize) -> Value {
    let mut users: Vec<Value> = (0..n)
        .map(|i| {
            let mut u = json!({
                "Username": format!("user{i:05}"),
                "Enabled": i % 100 != 7,
                "UserStatus": "CONFIRMED",
                "UserCreateDate": "2024-05-01T10:00:00.000000+00:00",
                "Attributes": [
                    { "Name": "sub", "Value": format!("{i:08x}-1c2d-4e5f-8a9b-0123456789ab") },
                    { "Name": "email", "Value": format!("user{i:05}@example.com") },
                    { "Name": "email_verified", "Value": if i % 2 == 0 { "true" } else { "false" } },
                    { "Name": "custom:tenant", "Value": format!("t{}", i % 13) },
                ],
            });
            if i < 10 {
                u["Groups"] = json!([{ "GroupName": "admin" }]);
            }
            u
        })
        .collect();
    users.push(
        json!({ "Username": "has space", "Attributes": [{ "Name": "sub", "Value": "s-1" }] }),
    );
    users.push(
        json!({ "Username": "Google_1234", "UserStatus": "EXTERNAL_PROVIDER",
                       "Attributes": [{ "Name": "sub", "Value": "s-2" }] }),
    );
    json!({ "Users": users })
}

#[test]
fn ten_thousand_cognito_users_import_quickly_and_a_second_import_changes_nothing() {
    let i = Instance::new();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("users.json");
    std::fs::write(&file, export(10_000).to_string()).expect("write");
    let groups = dir.path().join("groups.json");
    std::fs::write(
        &groups,
        json!({ "user00011": { "Groups": [{ "GroupName": "support" }] } }).to_string(),
    )
    .expect("write");
    let path = file.to_str().expect("utf-8");
    let started = Instant::now();
    let out = i
        .run(&[
            "--json",
            "user",
            "import",
            path,
            "--groups",
            groups.to_str().expect("utf-8"),
        ])
        .ok();
    let took = started.elapsed();
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["created"], 10_000, "{report}");
    assert_eq!(report["unchanged"], 0);
    let skipped = report["skipped"].as_array().expect("skipped");
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped.iter().any(|s| s["username"] == "has space"));
    assert!(skipped.iter().any(|s| {
        s["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("external")
    }));
    assert!(took < Duration::from_secs(60), "10,000 users took {took:?}");
    eprintln!("imported 10,000 users in {took:?}");

    let user: Value =
        serde_json::from_str(&i.run(&["--json", "user", "show", "user00004"]).ok()).expect("json");
    assert_eq!(
        user["id"], "00000004-1c2d-4e5f-8a9b-0123456789ab",
        "the sub is kept"
    );
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["groups"], json!(["admin"]));
    assert_eq!(user["attributes"]["custom:tenant"], "t4");
    assert_eq!(user["password_set"], false);
    let disabled: Value =
        serde_json::from_str(&i.run(&["--json", "user", "show", "user00107"]).ok()).expect("json");
    assert_eq!(disabled["status"], "disabled");
    let support: Value =
        serde_json::from_str(&i.run(&["--json", "user", "show", "user00011"]).ok()).expect("json");
    assert_eq!(
        support["groups"],
        json!(["support"]),
        "groups from --groups"
    );

    let again: Value =
        serde_json::from_str(&i.run(&["--json", "user", "import", path]).ok()).expect("json");
    assert_eq!(again["created"], 0);
    assert_eq!(again["unchanged"], 10_000);
    let after: Value =
        serde_json::from_str(&i.run(&["--json", "user", "show", "user00004"]).ok()).expect("json");
    assert_eq!(after, user, "nothing changed");

    // A different user under a taken name is reported, not merged.
    let clash = dir.path().join("clash.json");
    std::fs::write(
        &clash,
        json!({ "Users": [{ "Username": "user00001", "Attributes": [{ "Name": "sub", "Value": "another-sub" }] }] })
            .to_string(),
    )
    .expect("write");
    let report: Value = serde_json::from_str(
        &i.run(&["--json", "user", "import", clash.to_str().expect("utf-8")])
            .ok(),
    )
    .expect("json");
    assert!(
        report["skipped"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("taken by another user"),
        "{report}"
    );
    let bad = i
        .run(&["user", "import", "/nonexistent/users.json"])
        .user_error();
    assert!(bad.contains("cannot read"), "{bad}");
}

/// A stand-in for the old system's verifier: `alice` / `old-cognito-password`, counting calls
/// and checking the bearer token.
async fn verifier() -> (String, Arc<AtomicUsize>) {
    use axum::routing::post;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/verify",
        post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                let calls = counted.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    if auth != "Bearer verifier-token" {
                        return (axum::http::StatusCode::UNAUTHORIZED, axum::Json(json!({})));
                    }
                    let valid =
                        body["username"] == "alice" && body["password"] == "old-cognito-password";
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({ "valid": valid })),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{}/verify", addr.port()), calls)
}

fn import_alice(i: &Instance) {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("alice.json");
    std::fs::write(
        &file,
        json!({ "Users": [{ "Username": "alice", "Enabled": true, "Attributes": [
            { "Name": "sub", "Value": "a1b2c3d4-cognito-sub-of-alice" },
            { "Name": "email", "Value": "alice@example.com" },
            { "Name": "email_verified", "Value": "true" },
            { "Name": "name", "Value": "Alice Liddell" },
            { "Name": "custom:tenant", "Value": "wonderland" } ],
            "Groups": ["user"] }] })
        .to_string(),
    )
    .expect("write");
    i.run(&["user", "import", file.to_str().expect("utf-8")])
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_passwords_move_on_first_sign_in_through_the_legacy_verifier() {
    let (url, calls) = verifier().await;
    let mut idp = crate::oidc::setup(&format!("[idp]\nlegacy_verifier_url = \"{url}\"\n"));
    import_alice(&idp._instance);
    // The server reads its secret at start: restart it with the secret in its environment.
    drop(std::mem::replace(&mut idp.server, {
        let cmd = {
            let mut c = idp._instance.command(&["serve", "--listen", "127.0.0.1:0"]);
            c.env("PORTCULLIS_IDP_LEGACY_VERIFIER_SECRET", "verifier-token");
            c
        };
        crate::harness::Server::start(cmd)
    }));
    idp._instance
        .run(&[
            "client",
            "add",
            "profiled",
            "--id",
            "profiled",
            "--redirect-uri",
            crate::oidc::REDIRECT,
            "--scope",
            "openid",
            "--scope",
            "profile",
        ])
        .ok();
    let authorize = idp.authorize_url(
        "profiled",
        &[("prompt", "login"), ("scope", "openid profile")],
    );

    let (request, csrf) = idp.open_form(&authorize).await;
    let wrong = idp
        .post_form(&request, &csrf, "alice", "not-her-password")
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(
        wrong
            .text()
            .await
            .expect("body")
            .contains("Incorrect username or password")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the verifier said no");

    let (request, csrf) = idp.open_form(&authorize).await;
    let right = idp
        .post_form(&request, &csrf, "alice", "old-cognito-password")
        .await;
    assert_eq!(right.status(), 303);
    let code = query(&location(right.headers()))["code"].clone();
    let (status, tokens) = idp.exchange("profiled", &code).await;
    assert_eq!(status, 200, "{tokens}");
    let id = claims(tokens["id_token"].as_str().expect("id token"));
    assert_eq!(
        id["sub"], "a1b2c3d4-cognito-sub-of-alice",
        "the Cognito sub is the subject"
    );
    // With the profile scope, name and custom attributes, as Cognito gives them.
    assert_eq!(id["name"], "Alice Liddell");
    assert_eq!(id["custom:tenant"], "wonderland");
    let info: Value = idp
        .http
        .get(idp.url("/oauth2/userInfo"))
        .bearer_auth(tokens["access_token"].as_str().expect("access token"))
        .send()
        .await
        .expect("userinfo")
        .json()
        .await
        .expect("json");
    assert_eq!(info["custom:tenant"], "wonderland", "{info}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // From now on the stored hash answers; the verifier is not asked again.
    let (request, csrf) = idp.open_form(&authorize).await;
    let again = idp
        .post_form(&request, &csrf, "alice", "old-cognito-password")
        .await;
    assert_eq!(again.status(), 303);
    let (request, csrf) = idp.open_form(&authorize).await;
    let wrong = idp
        .post_form(&request, &csrf, "alice", "not-her-password")
        .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "never asked again");
    let shown: Value =
        serde_json::from_str(&idp._instance.run(&["--json", "user", "show", "alice"]).ok())
            .expect("json");
    assert_eq!(shown["password_set"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_verifier_imported_users_are_sent_to_reset_and_a_broken_verifier_fails_closed() {
    let mut idp = crate::oidc::setup("");
    import_alice(&idp._instance);
    let authorize = idp.authorize_url("spa", &[("prompt", "login")]);
    let (request, csrf) = idp.open_form(&authorize).await;
    let resp = idp
        .post_form(&request, &csrf, "alice", "old-cognito-password")
        .await;
    assert_eq!(resp.status(), 401);
    assert!(
        resp.text()
            .await
            .expect("body")
            .contains("moved to a new sign-in service")
    );

    // A verifier that answers nonsense (or is down) is an outage: 503, not a wrong password,
    // and nothing is stored.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().route("/verify", axum::routing::post(|| async { "yes" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut idp = crate::oidc::setup(&format!(
        "[idp]\nlegacy_verifier_url = \"http://127.0.0.1:{port}/verify\"\n"
    ));
    import_alice(&idp._instance);
    let (request, csrf) = idp.open_form(&authorize_for(&idp)).await;
    let resp = idp
        .post_form(&request, &csrf, "alice", "old-cognito-password")
        .await;
    assert_eq!(resp.status(), 503);
    let shown: Value =
        serde_json::from_str(&idp._instance.run(&["--json", "user", "show", "alice"]).ok())
            .expect("json");
    assert_eq!(shown["password_set"], false);
    let bad = Instance::with_config(
        "[idp]\nlegacy_verifier_url = \"http://verifier.example.com/verify\"\n",
    )
    .run(&["config", "check"])
    .user_error();
    assert!(bad.contains("use https"), "{bad}");
}

fn authorize_for(idp: &crate::oidc::Idp) -> String {
    idp.authorize_url("spa", &[("prompt", "login")])
}
