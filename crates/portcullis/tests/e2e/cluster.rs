//! Two nodes on one PostgreSQL store: what one node (or the CLI) changes is enforced by the
//! other at once — announced by `LISTEN/NOTIFY` — even with polling slowed to once a minute.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::gateway_upstream::Upstream;
use crate::harness::{Instance, Server};

fn config(upstream: &str) -> String {
    format!(
        r#"
[idp]
issuer = "http://localhost:8080"

[gateway]
# Polling alone would take up to a minute: only a notification can make the deadlines below.
refresh_interval = "60s"

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{upstream}"

[[policy]]
principal = "scope:svc/read"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/**"] }}]
"#
    )
}

/// How long until `node` answers `want` to `token` (polling every 20 ms, for at most `limit`).
async fn until(node: &Server, token: &str, want: StatusCode, limit: Duration) -> Option<Duration> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    while start.elapsed() < limit {
        let status = http
            .get(node.url("/api/orders"))
            .bearer_auth(token)
            .send()
            .await
            .expect("get")
            .status();
        if status == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_and_a_policy_change_reach_the_other_node_at_once() {
    let Some(i) = Instance::postgres().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut text = std::fs::read_to_string(&i.config).expect("config");
    text.push_str(&config(&upstream.base));
    std::fs::write(&i.config, text).expect("config");
    i.run(&["resource-server", "add", "svc", "--scope", "read"])
        .ok();
    let created: Value = serde_json::from_str(
        &i.run(&[
            "--json",
            "client",
            "add",
            "Svc",
            "--id",
            "svc",
            "--confidential",
            "--scope",
            "svc/read",
        ])
        .ok(),
    )
    .expect("json");
    let secret = created["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    let (a, b) = (i.serve(), i.serve());
    let http = reqwest::Client::new();
    let token = |node: &Server| {
        http.post(node.url("/oauth2/token"))
            .basic_auth("svc", Some(&secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "svc/read")])
            .send()
    };
    let issued: Value = token(&a).await.expect("token").json().await.expect("json");
    let first = issued["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        until(&b, &first, StatusCode::OK, Duration::from_secs(5))
            .await
            .map(|_| ()),
        Some(()),
        "a token from one node is good at the other"
    );

    // Revoked at node A: node B refuses it within a second (polling would take up to 60 s).
    let revoked = http
        .post(a.url("/oauth2/revoke"))
        .basic_auth("svc", Some(&secret))
        .form(&[
            ("token", first.as_str()),
            ("token_type_hint", "access_token"),
        ])
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), StatusCode::OK);
    let took = until(&b, &first, StatusCode::UNAUTHORIZED, Duration::from_secs(5))
        .await
        .expect("node B refuses the revoked token");
    assert!(
        took < Duration::from_secs(1),
        "revocation reached node B in {took:?}"
    );

    // A policy change made with the CLI (a third writer): both nodes deny within a second.
    let issued: Value = token(&b).await.expect("token").json().await.expect("json");
    let second = issued["access_token"].as_str().expect("token").to_owned();
    assert!(
        until(&a, &second, StatusCode::OK, Duration::from_secs(5))
            .await
            .is_some()
    );
    let deny = i.dir.path().join("deny.toml");
    std::fs::write(
        &deny,
        "[[policy]]\nprincipal = \"scope:svc/read\"\nstatements = [{ effect = \"allow\", methods = [\"GET\"], paths = [\"/other/**\"] }]\n",
    )
    .expect("write");
    i.run(&[
        "policy",
        "set",
        deny.to_str().expect("utf-8"),
        "--comment",
        "lock down",
    ])
    .ok();
    for node in [&a, &b] {
        let took = until(node, &second, StatusCode::FORBIDDEN, Duration::from_secs(5))
            .await
            .expect("the new policy is enforced");
        assert!(
            took < Duration::from_secs(1),
            "policy reached a node in {took:?}"
        );
    }
}
