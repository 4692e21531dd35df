//! `serve` over real sockets: health, readiness, two processes on one SQLite file, the demo.

use crate::harness::{BIN, Instance, Server};

async fn get(url: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::get(url).await.expect("request");
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap_or("")),
        Some("no-store")
    );
    (status, resp.json().await.expect("json body"))
}

#[tokio::test]
async fn healthz_and_readyz_answer_over_http() {
    let i = Instance::new();
    let server = i.serve();
    assert_eq!(
        get(&server.url("/healthz")).await,
        (200, serde_json::json!({"status": "ok"}))
    );
    assert_eq!(
        get(&server.url("/readyz")).await,
        (200, serde_json::json!({"status": "ready"}))
    );
    assert_eq!(get(&server.url("/nope")).await.0, 404);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");
}

#[tokio::test]
async fn readyz_is_ready_on_postgresql() {
    let Some(i) = Instance::postgres().await else {
        return;
    };
    let server = i.serve();
    assert_eq!(get(&server.url("/readyz")).await.0, 200);
}

#[tokio::test]
async fn two_servers_and_many_cli_writers_share_one_sqlite_file() {
    let i = Instance::new();
    i.run(&["group", "add", "user"]).ok();
    let a = i.serve();
    let b = i.serve();
    let writers: Vec<_> = (0..12)
        .map(|n| {
            i.command(&["user", "add", &format!("user{n:02}"), "--group", "user"])
                .output()
                .map(crate::harness::Run)
        })
        .collect();
    for (n, w) in writers.into_iter().enumerate() {
        let run = w.expect("spawn");
        assert_eq!(run.code(), 0, "writer {n}: {}", run.stderr());
    }
    // Concurrent processes this time, not one after another.
    let children: Vec<_> = (12..24)
        .map(|n| {
            i.command(&["user", "add", &format!("user{n:02}"), "--group", "user"])
                .spawn()
                .expect("spawn")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success());
    }
    assert_eq!(i.usernames().len(), 24);
    for s in [&a, &b] {
        assert_eq!(get(&s.url("/readyz")).await.0, 200);
    }
}

#[tokio::test]
async fn demo_seeds_users_once_and_reset_starts_fresh() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("demo");
    let port = free_port();
    let demo = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data.to_str().expect("utf-8"),
        ])
        .args(extra);
        cmd.env_remove("PORTCULLIS_STORE_URL")
            .env_remove("PORTCULLIS_CONFIG");
        Server::start(cmd)
    };
    let first = demo(&[]);
    let banner = first.banner.join("\n");
    assert!(
        banner.contains("customer") && banner.contains("admin"),
        "{banner}"
    );
    assert_eq!(get(&first.url("/readyz")).await.0, 200);
    drop(first);

    let creds =
        std::fs::read_to_string(data.join("demo-credentials.txt")).expect("credentials file");
    let password = creds
        .lines()
        .find_map(|l| l.strip_prefix("customer="))
        .expect("customer password")
        .to_owned();
    assert!(
        banner.contains(&password),
        "the first start prints the password it saved"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("demo-credentials.txt"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "credentials are private: {mode:o}");

    let show = |user: &str| {
        let out = std::process::Command::new(BIN)
            .args(["--json", "user", "show", user])
            .env("PORTCULLIS_DATA_DIR", &data)
            .env_remove("PORTCULLIS_STORE_URL")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    assert_eq!(show("customer")["groups"], serde_json::json!(["user"]));
    assert_eq!(
        show("admin")["groups"],
        serde_json::json!(["admin", "user"])
    );

    let second = demo(&[]);
    let banner = second.banner.join("\n");
    assert!(
        !banner.contains(&password),
        "later starts do not print passwords: {banner}"
    );
    assert!(banner.contains("demo-credentials.txt"), "{banner}");
    drop(second);

    let third = demo(&["--reset"]);
    drop(third);
    let creds =
        std::fs::read_to_string(data.join("demo-credentials.txt")).expect("credentials file");
    assert!(
        !creds.contains(&password),
        "--reset made new users with new passwords"
    );

    let not_demo = dir.path().join("precious");
    std::fs::create_dir(&not_demo).expect("mkdir");
    std::fs::write(not_demo.join("thesis.txt"), "do not delete").expect("write");
    let out = std::process::Command::new(BIN)
        .args([
            "demo",
            "--reset",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            not_demo.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        not_demo.join("thesis.txt").exists(),
        "--reset refuses to delete a directory that is not a demo's"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
