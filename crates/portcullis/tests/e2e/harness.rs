//! Starting the binary: commands, servers, temporary instances.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The binary under test: the one cargo built for this test, or `PORTCULLIS_E2E_BIN` (to run the
/// suite against another build, say the last release, and see which tests it fails).
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("PORTCULLIS_E2E_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_portcullis").into())
}

/// A portcullis instance: a temporary directory with a config file and a data directory.
pub struct Instance {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    env: Vec<(String, String)>,
}

impl Instance {
    /// A fresh SQLite-backed instance.
    pub fn new() -> Self {
        Self::with_config("")
    }

    /// A fresh instance whose config file has `extra` appended.
    pub fn with_config(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("portcullis.toml");
        let data = dir.path().join("data");
        std::fs::write(
            &config,
            format!("data_dir = {:?}\n{extra}", data.display().to_string()),
        )
        .expect("write config");
        Instance {
            dir,
            config,
            env: Vec::new(),
        }
    }

    /// A fresh instance on its own PostgreSQL database, if the test cluster is available.
    pub async fn postgres() -> Option<Self> {
        let base = match std::env::var("PORTCULLIS_TEST_POSTGRES_URL") {
            Ok(url) => url,
            Err(_) if std::env::var("PORTCULLIS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") => {
                panic!("PORTCULLIS_REQUIRE_POSTGRES=1 but PORTCULLIS_TEST_POSTGRES_URL is not set")
            }
            Err(_) => {
                eprintln!(
                    "skipping: PORTCULLIS_TEST_POSTGRES_URL is not set (scripts/test sets it)"
                );
                return None;
            }
        };
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("e2e_{}_{n}", std::process::id());
        let status = Command::new("psql")
            .args([
                base.as_str(),
                "-q",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ])
            .status()
            .expect("psql is installed with PostgreSQL");
        assert!(status.success(), "create database {name}");
        let (prefix, _) = base.rsplit_once('/').expect("URL has a database path");
        let mut instance = Instance::new();
        instance
            .env
            .push(("PORTCULLIS_STORE_URL".into(), format!("{prefix}/{name}")));
        Some(instance)
    }

    /// The `PORTCULLIS_STORE_URL` this instance runs with, if it names one (PostgreSQL).
    pub fn store_url(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == "PORTCULLIS_STORE_URL")
            .map(|(_, v)| v.as_str())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Sets an environment variable for every command this instance runs.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A command for the binary with this instance's config and environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("PORTCULLIS_STORE_URL")
            .env_remove("PORTCULLIS_INSTANCE_SECRET");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs a command to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        Run(self.command(args).output().expect("run portcullis"))
    }

    /// Runs a command with `input` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        Run(child.wait_with_output().expect("wait"))
    }

    /// Starts `serve` on a free loopback port.
    pub fn serve(&self) -> Server {
        Server::start(self.command(&["serve", "--listen", "127.0.0.1:0"]))
    }

    /// Adds the resource server `svc` (scope `read`) and the confidential client `svc` allowed
    /// `svc/read`; returns the client's secret.
    pub fn add_machine_client(&self) -> String {
        self.run(&["resource-server", "add", "svc", "--scope", "read"])
            .ok();
        let created: serde_json::Value = serde_json::from_str(
            &self
                .run(&[
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
        created["client_secret"]
            .as_str()
            .expect("secret")
            .to_owned()
    }

    /// The usernames in the store.
    pub fn usernames(&self) -> Vec<String> {
        let out = self.run(&["--json", "user", "list"]).ok();
        let users: serde_json::Value =
            serde_json::from_str(&out).expect("user list --json is JSON");
        users
            .as_array()
            .expect("array")
            .iter()
            .map(|u| u["username"].as_str().expect("username").to_owned())
            .collect()
    }
}

/// A finished command.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
    /// Asserts exit code 1 (the user's mistake) and returns stderr.
    #[track_caller]
    pub fn user_error(&self) -> String {
        assert_eq!(
            self.code(),
            1,
            "expected exit 1\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self.stderr()
    }
}

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    /// Lines the server printed on stdout after the "listening" line.
    pub banner: Vec<String>,
}

impl Server {
    pub fn start(cmd: Command) -> Server {
        Self::start_with_stderr(cmd, Stdio::inherit())
    }

    /// Starts a server whose standard error goes to `stderr` (a file, to read its logs).
    pub fn start_with_stderr(mut cmd: Command, stderr: Stdio) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        return Server {
                            child,
                            base: addr.trim().to_owned(),
                            banner,
                        };
                    }
                    banner.push(line);
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    panic!(
                        "server did not report its address ({e}); exit status {status:?}; output so far: {banner:?}"
                    );
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's resident memory, in kilobytes (Linux `VmRSS`).
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The names of the server process's threads (Linux `/proc`).
    pub fn thread_names(&self) -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id()))
            .expect("the server's /proc tasks");
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`) to the server.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this process runs as root (then file permissions do not stop it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Makes a path and its parents traversable by other users (for tests that run as `nobody`).
pub fn open_up(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A PostgreSQL cluster of one test's own, which the test may stop and start (the shared test
/// cluster must stay up for every other test). Stopped and removed on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    /// Starts a cluster with Debian's `initdb`/`pg_ctl`; `None` (the test is skipped) when they
    /// are not installed, unless `PORTCULLIS_REQUIRE_POSTGRES=1` (then a missing server fails).
    pub fn start() -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|v| v.path().join("bin"))
                    .filter(|b| b.join("initdb").exists())
                    .max()
            });
        let Some(bin) = bin else {
            if std::env::var("PORTCULLIS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                panic!("PostgreSQL server binaries are missing (scripts/test-deps installs them)");
            }
            eprintln!("skipping: PostgreSQL server binaries are not installed");
            return None;
        };
        let dir = tempfile::tempdir().expect("dir");
        open_up(dir.path(), 0o755);
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pg = PrivatePostgres { bin, dir, port };
        let data = pg.dir.path().join("data");
        let out = pg
            .as_postgres(&pg.bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "portcullis", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.up();
        Some(pg)
    }

    fn as_postgres(&self, program: &Path) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    /// `postgres://portcullis@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://portcullis@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn up(&self) {
        let out = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .arg("start")
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server at once (`-m immediate`: as if it crashed or its host went away).
    pub fn down(&self) {
        let _ = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.down();
    }
}
