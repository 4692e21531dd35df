//! PostgreSQL through Debian's PgBouncer: in session pooling a node works end to end (the store
//! opens and migrates, tokens are issued); in
//! transaction pooling it cannot, and the error says why — sqlx prepares named statements on a
//! server connection, and PgBouncer 1.18 (Debian 12) hands the next transaction another one.
//! docs/guide-postgresql.md states both.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Instance, is_root, open_up};

struct Bouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // Under runuser the child is runuser, not PgBouncer: stop PgBouncer by its pid file.
        if let Ok(pid) = std::fs::read_to_string(self._dir.path().join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PgBouncer in `mode` in front of the test cluster, or `None` when there is no cluster.
fn bouncer(mode: &str) -> Option<Bouncer> {
    let base = std::env::var("PORTCULLIS_TEST_POSTGRES_URL").ok()?;
    let url = url::Url::parse(&base).expect("URL");
    let (host, pg_port) = (
        url.host_str().expect("host").to_owned(),
        url.port().unwrap_or(5432),
    );
    let dir = tempfile::tempdir().expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let ini = dir.path().join("pgbouncer.ini");
    // Transaction pooling shares one server connection among all clients, so the test meets
    // its failure every time rather than when two clients happen to land on one connection.
    let size = if mode == "transaction" { 1 } else { 20 };
    std::fs::write(
        dir.path().join("users.txt"),
        format!("\"{}\" \"\"\n", url.username()),
    )
    .expect("users");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n* = host={host} port={pg_port}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\npidfile = {}\nauth_type = trust\nauth_file = {}\npool_mode = {mode}\nmax_client_conn = 200\ndefault_pool_size = {size}\nignore_startup_parameters = extra_float_digits,options\n",
            dir.path().join("pgbouncer.pid").display(),
            dir.path().join("users.txt").display()
        ),
    )
    .expect("ini");
    // PgBouncer refuses to run as root: as postgres, then, who must be able to read the files.
    let mut cmd = if is_root() {
        open_up(dir.path(), 0o755);
        // It writes its pid file here.
        let owned = Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(owned.success());
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "pgbouncer"]);
        c
    } else {
        Command::new("pgbouncer")
    };
    let child = cmd
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbouncer (scripts/test-deps installs Debian's pgbouncer)");
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Bouncer {
        child,
        port,
        _dir: dir,
    })
}

/// An instance whose store URL goes through `b` to a database of its own.
async fn through(b: &Bouncer) -> Option<Instance> {
    let direct = Instance::postgres().await?;
    let url = direct.store_url().expect("url").to_owned();
    let mut via = url::Url::parse(&url).expect("URL");
    via.set_port(Some(b.port)).expect("port");
    Some(Instance::new().env("PORTCULLIS_STORE_URL", via.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_works_and_transaction_pooling_is_refused_with_the_reason() {
    let Some(session) = bouncer("session") else {
        // No test cluster: skipped, unless PORTCULLIS_REQUIRE_POSTGRES=1 (then this fails).
        assert!(Instance::postgres().await.is_none());
        return;
    };
    let i = through(&session).await.expect("instance");
    let secret = i.add_machine_client();
    let server = i.serve();
    let token = reqwest::Client::new()
        .post(server.url("/oauth2/token"))
        .basic_auth("svc", Some(secret))
        .form(&[("grant_type", "client_credentials"), ("scope", "svc/read")])
        .send()
        .await
        .expect("token");
    assert_eq!(token.status(), 200, "a node works through session pooling");
    i.run(&["store", "check"]).ok();

    let transaction = bouncer("transaction").expect("bouncer");
    let t = through(&transaction).await.expect("instance");
    // One server connection for every client (transaction pooling's point): a second process
    // meets the statements the first prepared there, and so would two connections of one node
    // in production. A first process alone may get through, so two run.
    let first = t.run(&["store", "check"]);
    let refused = t.run(&["store", "check"]);
    let said = format!(
        "{}{}{}{}",
        first.stdout(),
        first.stderr(),
        refused.stdout(),
        refused.stderr()
    );
    assert!(
        first.code() != 0 || refused.code() != 0,
        "transaction pooling does not work: {said}"
    );
    assert!(said.contains("prepared statement"), "{said}");
}
