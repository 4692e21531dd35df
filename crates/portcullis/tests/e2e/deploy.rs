//! The files in `deploy/`: the systemd unit passes `systemd-analyze verify` and keeps its
//! hardening (`systemd-analyze security` rates it); the Dockerfile agrees with the workspace
//! (toolchain, entrypoint). Building the image needs a Docker daemon, which CI does not have.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The unit with `ExecStart` pointing at the binary under test (verify checks that it exists).
fn unit_under_test(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("deploy/portcullis.service")).expect("unit");
    assert!(text.contains("ExecStart=/usr/local/bin/portcullis "));
    let text = text.replace(
        "/usr/local/bin/portcullis",
        env!("CARGO_BIN_EXE_portcullis"),
    );
    let path = dir.join("portcullis.service");
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn the_systemd_unit_verifies_and_stays_hardened() {
    let dir = tempfile::tempdir().expect("dir");
    let unit = unit_under_test(dir.path());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (scripts/test-deps installs Debian's systemd)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{complaints}");
    assert!(
        !complaints.contains("portcullis.service"),
        "no warning about the unit: {complaints}"
    );
    for setting in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=portcullis",
    ] {
        assert!(
            std::fs::read_to_string(&unit)
                .expect("unit")
                .lines()
                .any(|l| l == setting),
            "{setting}"
        );
    }
    // systemd's own rating of the sandbox: 0 (locked down) to 10 (exposed); "OK" is below 2.
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for portcullis.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
}

#[test]
fn the_dockerfile_has_a_new_enough_toolchain_and_an_unprivileged_user() {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("Dockerfile");
    let rust_version = std::fs::read_to_string(repo().join("Cargo.toml"))
        .expect("Cargo.toml")
        .lines()
        .find_map(|l| {
            l.strip_prefix("rust-version = \"")
                .map(|v| v.trim_end_matches('"').to_owned())
        })
        .expect("rust-version");
    let builder = text
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("a rust builder stage");
    let image_version = builder.split('-').next().expect("version");
    let parse =
        |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().expect("number")).collect() };
    assert!(
        parse(image_version) >= parse(&rust_version),
        "the builder image ({image_version}) must have at least rust-version {rust_version}"
    );
    assert!(text.contains("cargo build --release --locked -p portcullis"));
    // `--build-arg PGO=1` builds with the production script, which must be there and runnable.
    assert!(text.contains("bin=$(scripts/build-pgo)"));
    let script = repo().join("scripts/build-pgo");
    let mode = std::fs::metadata(&script)
        .expect("scripts/build-pgo")
        .permissions();
    assert!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o111 != 0,
        "scripts/build-pgo is not executable"
    );
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash");
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("USER ") && !l.contains("root"))
    );
    assert!(text.contains("PORTCULLIS_SERVER_LISTEN=0.0.0.0:8080"));
    // The binary it installs answers the entrypoint's arguments.
    let help = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "--config",
            "/nonexistent/portcullis.toml",
            "serve",
            "--help",
        ])
        .output()
        .expect("run");
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
}
