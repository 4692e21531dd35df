//! Moving a live store (`store copy`) from SQLite to PostgreSQL and back, and an online SQLite
//! backup (`store backup`) restored: each time a token issued before still passes the gateway,
//! the users are all there, and the new store refuses to be copied into twice.

use reqwest::StatusCode;
use serde_json::Value;

use crate::gateway_upstream::Upstream;
use crate::harness::Instance;

fn config(upstream: &str) -> String {
    format!(
        r#"
# One issuer for every server of the test (they listen on ports of their own), as for nodes
# behind one address.
[idp]
issuer = "http://localhost:8080"

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

/// The gateway's answer to `token` at the instance `server`.
async fn gateway_status(base: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{}/api/orders", base.trim_end_matches('/')))
        .bearer_auth(token)
        .send()
        .await
        .expect("get")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_store_moves_to_postgres_and_back_and_a_backup_restores_with_its_tokens() {
    let Some(on_postgres) = Instance::postgres().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let source = Instance::with_config(&config(&upstream.base));
    let secret = source.add_machine_client();
    for name in ["ada", "grace"] {
        source
            .run_with_stdin(
                &["user", "add", name, "--password-stdin"],
                "a long enough password 1\n",
            )
            .ok();
    }
    let server = source.serve();
    let tokens: Value = reqwest::Client::new()
        .post(server.url("/oauth2/token"))
        .basic_auth("svc", Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("scope", "svc/read")])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    let token = tokens["access_token"].as_str().expect("token").to_owned();
    assert_eq!(gateway_status(&server.base, &token).await, StatusCode::OK);

    // Both while the server runs.
    let pg_url = on_postgres.store_url().expect("url").to_owned();
    let copied: Value = serde_json::from_str(
        &source
            .run(&["--json", "store", "copy", "--to", &pg_url])
            .ok(),
    )
    .expect("json");
    assert_eq!(copied["tables"]["users"], 2, "{copied}");
    assert!(
        copied["tables"]["signing_keys"].as_u64() >= Some(1),
        "{copied}"
    );
    assert!(
        copied["tables"]["audit_events"].as_u64() >= Some(1),
        "{copied}"
    );
    let backup = source.dir.path().join("backup.db");
    source
        .run(&["store", "backup", backup.to_str().expect("utf-8")])
        .ok();
    let again = source.run(&["store", "backup", backup.to_str().expect("utf-8")]);
    assert!(again.user_error().contains("exists"));
    let twice = source.run(&["store", "copy", "--to", &pg_url]);
    assert!(
        twice.user_error().contains("not empty"),
        "a copy never merges"
    );
    drop(server);

    // PostgreSQL: the same instance secret (it was generated, so it lives in the store and
    // moved with it), the same keys, users and client.
    let moved = Instance::with_config(&config(&upstream.base)).env("PORTCULLIS_STORE_URL", &pg_url);
    let mut names = moved.usernames();
    names.sort();
    assert_eq!(names, ["ada", "grace"]);
    let server = moved.serve();
    assert_eq!(
        gateway_status(&server.base, &token).await,
        StatusCode::OK,
        "a token issued on SQLite passes on PostgreSQL"
    );
    // And back into a new SQLite file.
    let back = moved.dir.path().join("back.db");
    moved
        .run(&[
            "store",
            "copy",
            "--to",
            &format!("sqlite://{}", back.display()),
        ])
        .ok();
    drop(server);
    for (what, file) in [("copied back", &back), ("restored backup", &backup)] {
        let restored = Instance::with_config(&config(&upstream.base)).env(
            "PORTCULLIS_STORE_URL",
            &format!("sqlite://{}", file.display()),
        );
        restored.run(&["store", "check"]).ok();
        let server = restored.serve();
        assert_eq!(
            gateway_status(&server.base, &token).await,
            StatusCode::OK,
            "{what}: the token issued before still passes"
        );
        assert_eq!(restored.usernames().len(), 2, "{what}");
    }
    // A backup of PostgreSQL is PostgreSQL's own job: the command says which.
    let refused = moved.run(&["store", "backup", "/tmp/never-written.db"]);
    assert!(refused.user_error().contains("pg_dump"));
}
