//! openid-client (npm), a certified relying-party library, against the real binary.

use std::process::Command;

use crate::harness::Instance;

#[test]
fn openid_client_runs_every_flow() {
    run_interop("", None);
}

/// The same flows over https (and HTTP/2 where Node offers it), with openid-client's strict
/// defaults: no `allowInsecureRequests`, the certificate verified against a test authority.
#[test]
fn openid_client_runs_every_flow_over_https() {
    let certs = tempfile::tempdir().expect("dir");
    let ca = crate::tls::Ca::new();
    let (chain, key, _) = ca.leaf(certs.path(), "server", &["localhost"]);
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    run_interop(&crate::tls::certificates(&[(&chain, &key)]), Some(&ca_file));
}

/// Runs tests/interop/interop.mjs against an instance with `extra` configuration; `ca` is the
/// authority Node must trust for https.
fn run_interop(extra: &str, ca: Option<&std::path::Path>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop");
    if !dir.join("node_modules/openid-client").is_dir() {
        if std::env::var("PORTCULLIS_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
            panic!("tests/interop/node_modules is missing: run `npm ci` there (scripts/test does)");
        }
        eprintln!(
            "skipping: run `npm ci` in tests/interop to enable the openid-client interop test"
        );
        return;
    }
    let i = Instance::with_config(&format!("[idp]\nrefresh_grace = \"1s\"\n\n{extra}"));
    i.run(&["group", "add", "user"]).ok();
    i.run_with_stdin(
        &[
            "user",
            "add",
            "olivia",
            "--group",
            "user",
            "--email",
            "olivia@example.com",
            "--email-verified",
            "--password-stdin",
        ],
        "interop-passphrase-4711\n",
    )
    .ok();
    i.run(&[
        "resource-server",
        "add",
        "orders",
        "--scope",
        "read",
        "--scope",
        "admin",
    ])
    .ok();
    i.run(&[
        "client",
        "add",
        "Interop SPA",
        "--id",
        "spa",
        "--redirect-uri",
        "http://localhost:3000/callback",
        "--logout-uri",
        "http://localhost:3000/",
        "--scope",
        "openid",
        "--scope",
        "email",
        "--scope",
        "profile",
    ])
    .ok();
    let backend: serde_json::Value = serde_json::from_str(
        &i.run(&[
            "--json",
            "client",
            "add",
            "Interop backend",
            "--id",
            "backend",
            "--confidential",
            "--scope",
            "orders/read",
        ])
        .ok(),
    )
    .expect("json");
    let server = i.serve();
    // The server listens on 127.0.0.1; Node.js 18 (Debian's) resolves `localhost` to ::1 first
    // and, unlike Node.js 20, does not fall back to IPv4.
    let mut node = Command::new("node");
    if let Some(ca) = ca {
        node.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let out = node
        .arg("--dns-result-order=ipv4first")
        .arg("interop.mjs")
        .current_dir(&dir)
        .env("ISSUER", server.base.replace("127.0.0.1", "localhost"))
        .env("USERNAME", "olivia")
        .env("PASSWORD", "interop-passphrase-4711")
        .env("EMAIL", "olivia@example.com")
        .env("SPA_CLIENT_ID", "spa")
        .env("REDIRECT_URI", "http://localhost:3000/callback")
        .env("LOGOUT_URI", "http://localhost:3000/")
        .env("BACKEND_CLIENT_ID", "backend")
        .env(
            "BACKEND_SECRET",
            backend["client_secret"].as_str().expect("secret"),
        )
        .output()
        .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "interop failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("interop: all flows passed"), "{stdout}");
}
