//! `serve` over real sockets: health, readiness, two processes on one SQLite file, the demo.

use crate::harness::{Instance, Server, bin};

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
        let mut cmd = std::process::Command::new(bin());
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
        let out = std::process::Command::new(bin())
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
    let out = std::process::Command::new(bin())
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

/// Reads from `s` until the server closes the connection; returns what came and how long it took.
fn read_until_closed(s: &mut std::net::TcpStream) -> (String, std::time::Duration) {
    use std::io::Read;
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// A client that sends its headers slowly (slowloris), an idle keep-alive connection and an
/// oversized request head are all cut off; well-behaved requests on the same server are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_idle_connections_and_oversized_heads_are_cut_off() {
    use std::io::Write;
    use std::time::Duration;
    let i = Instance::with_config("[server]\nheader_timeout = \"1s\"\nmax_header_bytes = 16384\n");
    let server = i.serve();
    let addr = server.base.trim_start_matches("http://").to_owned();
    let connect = || std::net::TcpStream::connect(&addr).expect("connect");

    // Half a request head, then nothing: closed after the header timeout, unanswered.
    let mut slow = connect();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("write");
    let (answer, took) = read_until_closed(&mut slow);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    assert!(
        !answer.contains(" 200 "),
        "a partial head is never served: {answer}"
    );

    // A complete request is answered; the idle connection after it is closed by the server.
    let mut idle = connect();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let (answer, took) = read_until_closed(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(5), "idle for {took:?}");

    // A head over server.max_header_bytes: 431, then closed.
    let mut big = connect();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: c={}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = big.write_all(head.as_bytes());
    let (answer, _) = read_until_closed(&mut big);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // The server itself is fine.
    assert_eq!(get(&server.url("/healthz")).await.0, 200);
}

/// SIGTERM stops accepting, lets a request in flight finish, then exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let upstream = crate::gateway_upstream::Upstream::start().await;
    let i = Instance::with_config(&format!(
        "[[routes]]\npath = \"/api/**\"\nkind = \"public\"\nupstream = \"{}\"\n",
        upstream.base
    ));
    let server = i.serve();
    let url = server.url("/api/slow");
    // The upstream takes 3 s to answer /api/slow.
    let in_flight = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let base = server.base.clone();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    assert!(status.success(), "clean exit: {status:?}");
    assert_eq!(
        in_flight
            .await
            .expect("join")
            .expect("the request in flight was answered"),
        reqwest::StatusCode::OK
    );
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "no longer listening"
    );
}

/// With `server.shutdown_drain`, SIGTERM first takes the node out of rotation — `/readyz`
/// answers 503 "draining" while every request is still served — and only then stops accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_reporting_not_ready_before_it_stops_accepting() {
    use std::time::{Duration, Instant};
    let upstream = crate::gateway_upstream::Upstream::start().await;
    let i = Instance::with_config(&format!(
        "[server]\nshutdown_drain = \"2s\"\n[[routes]]\npath = \"/api/**\"\nkind = \"public\"\nupstream = \"{}\"\n",
        upstream.base
    ));
    let server = i.serve();
    let (ready, api) = (server.url("/readyz"), server.url("/api/x"));
    assert_eq!(reqwest::get(&ready).await.expect("ready").status(), 200);
    server.signal("TERM");
    let signalled = Instant::now();
    let mut saw_draining = false;
    // Inside the drain: not ready, still serving, on new connections too.
    while signalled.elapsed() < Duration::from_millis(1500) {
        let r = reqwest::Client::new()
            .get(&ready)
            .send()
            .await
            .expect("still accepting");
        if r.status() == 503 {
            let body: serde_json::Value = r.json().await.expect("json");
            assert_eq!(body["status"], "draining");
            saw_draining = true;
            assert_eq!(
                reqwest::Client::new()
                    .get(&api)
                    .send()
                    .await
                    .expect("served")
                    .status(),
                200
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_draining, "/readyz said draining");
    let base = server.base.clone();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "not before the drain ended"
    );
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "stopped"
    );
}

/// A body trickled to portcullis' own endpoints is cut off by `server.request_timeout` (408).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_to_the_sign_in_endpoints_times_out() {
    use std::io::Write;
    use std::time::Duration;
    let i = Instance::with_config("[server]\nrequest_timeout = \"1s\"\n");
    let server = i.serve();
    let mut s =
        std::net::TcpStream::connect(server.base.trim_start_matches("http://")).expect("connect");
    // Promise 100 bytes, send 10.
    s.write_all(
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type",
    )
    .expect("write");
    let (answer, took) = read_until_closed(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
}

/// At `server.max_connections` a new connection waits, unserved, until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let i = Instance::with_config("[server]\nmax_connections = 2\n");
    let server = i.serve();
    let addr = server.base.trim_start_matches("http://").to_owned();
    let first = std::net::TcpStream::connect(&addr).expect("connect");
    let second = std::net::TcpStream::connect(&addr).expect("connect");
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = std::net::TcpStream::connect(&addr).expect("the kernel queues it");
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert!(
        third.read(&mut byte).is_err(),
        "no answer while both slots are taken"
    );
    drop(first);
    let (answer, _) = read_until_closed(&mut third);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "served once a slot is free: {answer}"
    );
    drop(second);
}

/// A browser that navigates to the server under another name than the public origin's
/// (127.0.0.1 when the issuer is localhost) is sent to the public origin, path and query kept;
/// API calls, other methods and the public name itself are answered where they are.
#[tokio::test]
async fn browser_navigations_on_another_host_name_go_to_the_public_origin() {
    let i = Instance::new();
    let server = i.serve();
    let addr: std::net::SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve("localhost", addr)
        .build()
        .expect("client");
    let public = format!("http://localhost:{}", addr.port());
    let ip = format!("http://127.0.0.1:{}", addr.port());
    let target = "/oauth2/authorize?client_id=x&state=a%20b";
    let navigate = |url: String| http.get(url).header("sec-fetch-mode", "navigate").send();

    let resp = navigate(format!("{ip}{target}")).await.expect("request");
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        format!("{public}{target}").as_str()
    );
    assert_eq!(resp.headers()["cache-control"], "no-store");
    // A client without fetch metadata that asks for HTML is a browser too.
    let resp = http
        .get(format!("{ip}/healthz"))
        .header("accept", "text/html,*/*")
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.headers()["location"],
        format!("{public}/healthz").as_str()
    );
    // Not navigations: answered on the name they used.
    for resp in [
        http.get(format!("{ip}/healthz"))
            .header("sec-fetch-mode", "cors")
            .send()
            .await,
        http.get(format!("{ip}/healthz")).send().await,
        http.post(format!("{ip}/oauth2/token"))
            .header("sec-fetch-mode", "navigate")
            .send()
            .await,
        navigate(format!("{public}/healthz")).await,
    ] {
        let resp = resp.expect("request");
        assert!(resp.headers().get("location").is_none(), "{resp:?}");
    }
    drop(server);

    let i = Instance::with_config("[server]\ncanonical_redirect = false\n");
    let server = i.serve();
    let resp = navigate(format!("{}/healthz", server.base))
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "off: answered where asked");
}
