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
    let secret = i.add_machine_client();
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

/// Three nodes on one PostgreSQL behind Debian's HAProxy (health checks on `/readyz`), all on
/// loopback, with a steady load through the balancer: a rolling restart of every node fails no
/// request (each node drains: not ready first, then stops); a node killed with SIGKILL costs at
/// most the requests it had in flight; a key rotation made on one node fails no verification on
/// the others; PostgreSQL crashing and coming back is recovered from by every node without a
/// restart, and no revocation a node acknowledged is lost.
mod behind_haproxy {
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use reqwest::StatusCode;
    use serde_json::Value;

    use crate::gateway_upstream::Upstream;
    use crate::harness::{Instance, Server};

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    }

    struct Haproxy(Child);

    impl Drop for Haproxy {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn haproxy(dir: &std::path::Path, front: u16, nodes: &[u16]) -> Haproxy {
        let servers: String = nodes
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server n{i} 127.0.0.1:{p} check\n"))
            .collect();
        let cfg = format!(
            "global\n    nbthread 2\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    retries 3\n    option redispatch 1\n    retry-on conn-failure\nfrontend fe\n    bind 127.0.0.1:{front}\n    default_backend nodes\nbackend nodes\n    balance roundrobin\n    option httpchk GET /readyz\n    http-check expect status 200\n    default-server inter 200ms fall 2 rise 2\n{servers}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (scripts/test-deps installs Debian's haproxy)");
        Haproxy(child)
    }

    fn node(i: &Instance, port: u16) -> Server {
        Server::start(i.command(&[
            "--log-level",
            "warn",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]))
    }

    /// Steady load: `workers` callers in a loop through the balancer, counting answers.
    struct Load {
        ok: Arc<AtomicU64>,
        failed: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Load {
        fn start(url: String, token: String, workers: usize) -> Load {
            let (ok, failed, stop) = (
                Arc::new(AtomicU64::new(0)),
                Arc::new(AtomicU64::new(0)),
                Arc::new(AtomicBool::new(false)),
            );
            let tasks = (0..workers)
                .map(|_| {
                    let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                    let (url, token) = (url.clone(), token.clone());
                    tokio::spawn(async move {
                        let http = reqwest::Client::new();
                        while !stop.load(Ordering::Relaxed) {
                            match http.get(&url).bearer_auth(&token).send().await {
                                Ok(r) if r.status() == StatusCode::OK => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    })
                })
                .collect();
            Load {
                ok,
                failed,
                stop,
                tasks,
            }
        }

        fn counts(&self) -> (u64, u64) {
            (
                self.ok.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
            )
        }

        async fn stop(self) -> (u64, u64) {
            self.stop.store(true, Ordering::Relaxed);
            let counts = (self.ok.clone(), self.failed.clone());
            for t in self.tasks {
                t.await.expect("worker");
            }
            (
                counts.0.load(Ordering::Relaxed),
                counts.1.load(Ordering::Relaxed),
            )
        }
    }

    /// Until the balancer has the node back (its own /readyz, then two checks' worth).
    async fn until_ready(port: u16) {
        let url = format!("http://127.0.0.1:{port}/readyz");
        for _ in 0..100 {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                tokio::time::sleep(Duration::from_millis(600)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node on {port} never became ready");
    }

    /// A token for the `svc` client through `base`, or the status that refused it.
    async fn mint(http: &reqwest::Client, base: &str, secret: &str) -> Result<String, StatusCode> {
        let r = http
            .post(format!("{base}/oauth2/token"))
            .basic_auth("svc", Some(secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "svc/read")])
            .send()
            .await
            .map_err(|_| StatusCode::BAD_GATEWAY)?;
        if r.status() != StatusCode::OK {
            return Err(r.status());
        }
        let v: Value = r.json().await.map_err(|_| StatusCode::BAD_GATEWAY)?;
        Ok(v["access_token"].as_str().unwrap_or_default().to_owned())
    }

    fn kid(token: &str) -> String {
        use base64::Engine;
        let head = token.split('.').next().unwrap_or_default();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap_or_default();
        serde_json::from_slice::<Value>(&bytes).unwrap_or_default()["kid"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Chromium signs in through the balancer, which sends each request to the next of three
    /// nodes: the flow (the protected page, the form, its submission, the callback, the page
    /// again) crosses nodes at every step and ends signed in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_browser_sign_in_crosses_nodes_and_ends_signed_in() {
        let Some(d) = crate::browser::driver() else {
            return;
        };
        let Some(i) = Instance::postgres().await else {
            return;
        };
        let pages = tempfile::tempdir().expect("dir");
        std::fs::write(
            pages.path().join("index.html"),
            "<!doctype html><title>admin</title><h1>Admin area</h1>",
        )
        .expect("write");
        let front = free_port();
        let ports = [free_port(), free_port(), free_port()];
        let mut text = std::fs::read_to_string(&i.config).expect("config");
        text.push_str(&format!(
            r#"
[idp]
issuer = "http://localhost:{front}"
[[routes]]
path = "/admin/**"
kind = "page"
static_dir = "{dir}"
[[policy]]
principal = "group:admin"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/admin/**"] }}]
"#,
            dir = pages.path().display()
        ));
        std::fs::write(&i.config, text).expect("config");
        crate::oidc::add_users(&i);
        let _nodes: Vec<Server> = ports.iter().map(|p| node(&i, *p)).collect();
        let _balancer = haproxy(i.dir.path(), front, &ports);
        for p in ports {
            until_ready(p).await;
        }
        let base = format!("http://localhost:{front}");
        let c = crate::browser::browser(&d).await;
        c.goto(&format!("{base}/admin/")).await.expect("goto");
        assert!(
            crate::browser::path_of(&c)
                .await
                .starts_with("/login?request="),
            "a signed-out visitor is asked to sign in"
        );
        crate::browser::sign_in_as(&c, "root", crate::oidc::PASSWORD).await;
        crate::browser::wait_for_path(&c, "/admin/").await;
        assert!(c.source().await.expect("html").contains("Admin area"));
        // Signed in on every node: three loads of the page, one per node, all shown.
        for _ in 0..3 {
            c.goto(&format!("{base}/admin/")).await.expect("goto");
            assert_eq!(crate::browser::path_of(&c).await, "/admin/");
        }
        c.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rolling_restart_kill_key_rotation_and_a_database_crash_under_load() {
        let Some(pg) = crate::harness::PrivatePostgres::start() else {
            return;
        };
        let i = Instance::new().env("PORTCULLIS_STORE_URL", &pg.url());
        let upstream = Upstream::start().await;
        let front = free_port();
        let ports = [free_port(), free_port(), free_port()];
        let mut text = std::fs::read_to_string(&i.config).expect("config");
        text.push_str(&format!(
            r#"
[server]
shutdown_drain = "1s"
[idp]
issuer = "http://localhost:{front}"
key_rotation_delay = "1s"
[gateway]
access_log = false
[[routes]]
path = "/api/**"
kind = "api"
upstream = "{up}"
[[policy]]
principal = "scope:svc/read"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/**"] }}]
"#,
            up = upstream.base
        ));
        std::fs::write(&i.config, text).expect("config");
        let secret = i.add_machine_client();
        let mut nodes: Vec<Option<Server>> = ports.iter().map(|p| Some(node(&i, *p))).collect();
        let _balancer = haproxy(i.dir.path(), front, &ports);
        for p in ports {
            until_ready(p).await;
        }
        let base = format!("http://127.0.0.1:{front}");
        let issued: Value = reqwest::Client::new()
            .post(format!("{base}/oauth2/token"))
            .basic_auth("svc", Some(&secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "svc/read")])
            .send()
            .await
            .expect("token through the balancer")
            .json()
            .await
            .expect("json");
        let token = issued["access_token"].as_str().expect("token").to_owned();

        // A rolling restart under load: every node drains, stops, starts again.
        let load = Load::start(format!("{base}/api/orders"), token.clone(), 8);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (n, port) in ports.iter().enumerate() {
            let old = nodes[n].take().expect("running");
            let status = tokio::task::spawn_blocking(move || old.terminate())
                .await
                .expect("join");
            assert!(status.success(), "node {n} stopped cleanly: {status:?}");
            nodes[n] = Some(node(&i, *port));
            until_ready(*port).await;
        }
        let (ok, failed) = load.stop().await;
        eprintln!("rolling restart of 3 nodes under load: {ok} answered, {failed} failed");
        assert!(ok > 100, "the load ran: {ok} answered");
        assert_eq!(
            failed,
            0,
            "a rolling restart failed {failed} of {} requests",
            ok + failed
        );

        // SIGKILL under load: at most the killed node's requests in flight fail (8 callers: at
        // most 8 at once), and the other nodes serve the rest.
        let load = Load::start(format!("{base}/api/orders"), token, 8);
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(nodes[1].take());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (ok_before, failed_at_kill) = load.counts();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ok, failed) = load.stop().await;
        eprintln!("SIGKILL of one node under load: {ok} answered, {failed} failed");
        assert!(failed <= 8, "SIGKILL of one node failed {failed} requests");
        assert_eq!(
            failed, failed_at_kill,
            "nothing failed once the node was out"
        );
        assert!(ok > ok_before, "the other nodes kept serving");
        nodes[1] = Some(node(&i, ports[1]));
        until_ready(ports[1]).await;

        // A key rotation on one node while tokens are minted and used through the balancer
        // (each pair usually on two different nodes): no verification fails, and the new key
        // is signing by the end.
        let http = reqwest::Client::new();
        let first_kid = kid(&mint(&http, &base, &secret).await.expect("mint"));
        let stop = Arc::new(AtomicBool::new(false));
        let pairs: Vec<_> = (0..4)
            .map(|_| {
                let (http, base, secret, stop) =
                    (http.clone(), base.clone(), secret.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut used, mut refused) = (0u64, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let token = mint(&http, &base, &secret).await.expect("mint");
                        let status = http
                            .get(format!("{base}/api/orders"))
                            .bearer_auth(&token)
                            .send()
                            .await
                            .expect("get")
                            .status();
                        if status == StatusCode::OK {
                            used += 1;
                        } else {
                            refused.push((kid(&token), status));
                        }
                    }
                    (used, refused)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        i.run(&["keys", "rotate"]).ok();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let mut used = 0;
        for p in pairs {
            let (n, refused) = p.await.expect("worker");
            assert!(
                refused.is_empty(),
                "refused across the rotation: {refused:?}"
            );
            used += n;
        }
        let token = mint(&http, &base, &secret).await.expect("mint");
        eprintln!("key rotation under load: {used} tokens minted and used, none refused");
        assert_ne!(
            first_kid,
            kid(&token),
            "the new key signs after key_rotation_delay"
        );

        // PostgreSQL crashes under load and comes back. Every node keeps answering Bearer
        // requests from memory; revocations acknowledged before the crash are kept; every node
        // serves token requests again without being restarted, and the balancer has them all
        // back. (While the database is down `/readyz` fails on every node, so HAProxy has no
        // server to send to: see docs/guide-postgresql.md on health checks.)
        let load = Load::start(format!("{base}/api/orders"), token.clone(), 4);
        let mut acknowledged = Vec::new();
        for _ in 0..5 {
            let t = mint(&http, &base, &secret).await.expect("mint");
            let r = http
                .post(format!("{base}/oauth2/revoke"))
                .basic_auth("svc", Some(&secret))
                .form(&[("token", t.as_str()), ("token_type_hint", "access_token")])
                .send()
                .await
                .expect("revoke");
            if r.status() == StatusCode::OK {
                acknowledged.push(t);
            }
        }
        assert_eq!(acknowledged.len(), 5);
        pg.down();
        tokio::time::sleep(Duration::from_secs(2)).await;
        for port in ports {
            let direct = format!("http://127.0.0.1:{port}");
            assert_eq!(
                mint(&http, &direct, &secret).await,
                Err(StatusCode::SERVICE_UNAVAILABLE),
                "while the database is down, token requests are told so"
            );
            let status = http
                .get(format!("{direct}/api/orders"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("get")
                .status();
            assert_eq!(status, StatusCode::OK, "the gateway answers from memory");
        }
        pg.up();
        for port in ports {
            let direct = format!("http://127.0.0.1:{port}");
            let mut back = false;
            for _ in 0..100 {
                if mint(&http, &direct, &secret).await.is_ok() {
                    back = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(back, "node on {port} serves tokens again without a restart");
        }
        for port in ports {
            until_ready(port).await;
        }
        let (ok_before, failed_before) = load.counts();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ok, failed) = load.stop().await;
        eprintln!(
            "PostgreSQL down 2 s under load: {ok} API answers through the balancer, {failed} refused while no node was ready"
        );
        assert!(ok > ok_before, "the balancer serves again");
        assert_eq!(
            failed, failed_before,
            "nothing fails once the nodes are back"
        );
        // A node started now knows only what the database kept.
        let fresh = i.serve();
        for t in &acknowledged {
            let status = http
                .get(fresh.url("/api/orders"))
                .bearer_auth(t)
                .send()
                .await
                .expect("get")
                .status();
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "an acknowledged revocation survived the crash"
            );
        }
    }
}

/// A browser sign-in started on one node finishes on another, and refresh-token rotation and
/// reuse detection hold across nodes: the family a reused token belongs to is revoked on every
/// node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_and_refresh_rotation_span_nodes() {
    let Some(i) = Instance::postgres().await else {
        return;
    };
    let mut text = std::fs::read_to_string(&i.config).expect("config");
    text.push_str("[idp]\nissuer = \"http://localhost:8080\"\nrefresh_grace = \"0s\"\n");
    std::fs::write(&i.config, text).expect("config");
    let mut idp = crate::oidc::setup_on(i);
    let mut other = idp._instance.serve();
    // The authorization request and the sign-in form on node A...
    let code = idp.sign_in("spa", "ada").await["code"].clone();
    // ...the code redeemed at node B.
    std::mem::swap(&mut idp.server, &mut other);
    let (status, tokens) = idp.exchange("spa", &code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let first = tokens["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    // Rotated at node A.
    std::mem::swap(&mut idp.server, &mut other);
    let (status, rotated) = idp.refresh("spa", &first).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let second = rotated["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    assert_ne!(first, second);
    // The old one replayed at node B (no grace configured): reuse.
    std::mem::swap(&mut idp.server, &mut other);
    let (status, body) = idp.refresh("spa", &first).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    // ...which revoked the whole family: the newest token is refused at node A too.
    std::mem::swap(&mut idp.server, &mut other);
    let (status, body) = idp.refresh("spa", &second).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// A sign-out on one node, and a user disabled with the CLI, are enforced by every node within a
/// second (polling slowed to a minute: only the announcement can make it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_and_a_disabled_user_reach_every_node_at_once() {
    let Some(i) = Instance::postgres().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let mut text = std::fs::read_to_string(&i.config).expect("config");
    text.push_str(&format!(
        r#"
[idp]
issuer = "http://localhost:8080"
[gateway]
refresh_interval = "60s"
[[routes]]
path = "/api/**"
kind = "api"
upstream = "{up}"
[[policy]]
principal = "group:user"
statements = [{{ effect = "allow", methods = ["GET"], paths = ["/api/**"] }}]
"#,
        up = upstream.base
    ));
    std::fs::write(&i.config, text).expect("config");
    let mut idp = crate::oidc::setup_on(i);
    let other = idp._instance.serve();
    // Ada signs in on node A, then signs out there.
    let access = access_token(&mut idp, "ada").await;
    for node in [&idp.server, &other] {
        assert!(
            until(node, &access, StatusCode::OK, Duration::from_secs(5))
                .await
                .is_some()
        );
    }
    let out = idp
        .http
        .get(idp.url("/logout"))
        .header("cookie", idp.cookie_header())
        .send()
        .await
        .expect("logout");
    assert!(
        out.status().is_success() || out.status().is_redirection(),
        "{}",
        out.status()
    );
    idp.cookies.clear();
    for node in [&idp.server, &other] {
        let took = until(
            node,
            &access,
            StatusCode::UNAUTHORIZED,
            Duration::from_secs(5),
        )
        .await
        .expect("the signed-out session's token is refused");
        assert!(took < Duration::from_secs(1), "refused after {took:?}");
    }
    // Root signs in; an administrator disables the account with the CLI.
    let access = access_token(&mut idp, "root").await;
    for node in [&idp.server, &other] {
        assert!(
            until(node, &access, StatusCode::OK, Duration::from_secs(5))
                .await
                .is_some()
        );
    }
    idp._instance.run(&["user", "disable", "root"]).ok();
    for node in [&idp.server, &other] {
        let took = until(
            node,
            &access,
            StatusCode::UNAUTHORIZED,
            Duration::from_secs(5),
        )
        .await
        .expect("the disabled user's token is refused");
        assert!(took < Duration::from_secs(1), "refused after {took:?}");
    }
}

/// Signs `user` in (authorization code + PKCE) and returns the access token.
async fn access_token(idp: &mut crate::oidc::Idp, user: &str) -> String {
    let code = idp.sign_in("spa", user).await["code"].clone();
    let (status, tokens) = idp.exchange("spa", &code).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens["access_token"].as_str().expect("access").to_owned()
}
