//! Databases that cannot be used: each fails fast, exit 1, with a message naming the problem.

use std::time::{Duration, Instant};

use crate::harness::{Instance, is_root, open_up};

#[test]
fn unreachable_database_fails_within_five_seconds_naming_the_host() {
    // Accepts TCP connections and never answers: the slowest way for a database to fail.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let i = Instance::new().env(
        "PORTCULLIS_STORE_URL",
        &format!("postgres://app:pw-not-shown@127.0.0.1:{port}/portcullis"),
    );
    let started = Instant::now();
    let err = i.run(&["user", "list"]).user_error();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(7), "took {took:?}");
    assert!(
        err.contains(&format!("cannot reach the database at 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("pw-not-shown"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let i = Instance::new().env(
        "PORTCULLIS_STORE_URL",
        &format!("postgres://app@127.0.0.1:{port}/portcullis"),
    );
    let err = i.run(&["serve", "--listen", "127.0.0.1:0"]).user_error();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("refused"),
        "{err}"
    );
}

#[test]
fn sqlite_file_under_a_regular_file_is_not_writable() {
    let i = Instance::new();
    let blocker = i.dir.path().join("blocker");
    std::fs::write(&blocker, "x").expect("write");
    let i = i.env(
        "PORTCULLIS_STORE_URL",
        &format!("sqlite://{}/db/portcullis.db", blocker.display()),
    );
    let err = i.run(&["user", "list"]).user_error();
    assert!(
        err.contains("is not writable") && err.contains("Check the permissions"),
        "{err}"
    );
}

#[test]
fn read_only_sqlite_file_is_reported_not_writable() {
    let i = Instance::new();
    i.run(&["group", "add", "user"]).ok();
    let data = i.data_dir();
    let db = data.join("portcullis.db");
    if is_root() {
        // Root ignores permission bits, so run the command as `nobody`, who may read the file
        // but write neither it nor its directory.
        open_up(i.dir.path(), 0o755);
        open_up(&data, 0o755);
        open_up(&i.config, 0o644);
        for entry in std::fs::read_dir(&data).expect("ls") {
            open_up(&entry.expect("entry").path(), 0o644);
        }
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(crate::harness::bin())
            .args([
                "--config",
                i.config.to_str().expect("utf-8"),
                "group",
                "add",
                "admin",
            ])
            .output()
            .expect("setpriv (util-linux)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("not writable"), "{err}");
    } else {
        open_up(&db, 0o444);
        let err = i.run(&["group", "add", "admin"]).user_error();
        assert!(err.contains("not writable"), "{err}");
        open_up(&db, 0o600);
    }
    let groups = i.run(&["--json", "group", "list"]).ok();
    assert!(!groups.contains("admin"), "nothing changed: {groups}");
}

#[test]
fn the_database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let i = Instance::new();
    i.run(&["user", "list"]).ok();
    let mode = std::fs::metadata(i.data_dir().join("portcullis.db"))
        .expect("db")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "database mode {mode:o} must not be readable by others"
    );
    let mode = std::fs::metadata(i.data_dir())
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "data dir mode {mode:o}");
}

/// (Commands that use the signing keys settle the secret — `keys`, `client add`, `serve`; the
/// user and group commands never read it, see `cli::user_and_group_commands_need_no_secret…`.)
#[test]
fn a_changed_instance_secret_is_refused() {
    let i = Instance::new().env(
        "PORTCULLIS_INSTANCE_SECRET",
        "first-secret-0123456789abcdef-0123456789",
    );
    i.run(&["keys", "list"]).ok();
    let i = i.env(
        "PORTCULLIS_INSTANCE_SECRET",
        "other-secret-0123456789abcdef-0123456789",
    );
    let err = i.run(&["keys", "list"]).user_error();
    assert!(err.contains("does not match"), "{err}");
    assert!(
        !err.contains("other-secret") && !err.contains("first-secret"),
        "never print secrets: {err}"
    );
}
