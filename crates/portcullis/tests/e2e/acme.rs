//! Automatic certificates against a real ACME server: Debian's `pebble`, with
//! `pebble-challtestsrv` as the DNS server that sends every name to 127.0.0.1. Pebble validates
//! for real: it connects to portcullis for TLS-ALPN-01 (the https port) and HTTP-01 (the plain
//! listener).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Instance, Server};
use crate::tls::Ca;

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running pebble and its DNS server.
struct Pebble {
    _processes: Vec<Killed>,
    directory: String,
    management: String,
    /// The authority of pebble's own https certificate.
    ca_file: PathBuf,
    http: reqwest::Client,
}

impl Pebble {
    /// Pebble validating on `https_port` (TLS-ALPN-01) and `http_port` (HTTP-01), issuing
    /// certificates valid for `validity`.
    async fn start(dir: &Path, https_port: u16, http_port: u16, validity: Duration) -> Pebble {
        let ca = Ca::new();
        let (chain, key, _) = ca.leaf(dir, "pebble", &["localhost", "127.0.0.1"]);
        let ca_file = dir.join("pebble-ca.pem");
        std::fs::write(&ca_file, &ca.pem).expect("write CA");
        let (listen, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)");
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": chain,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": https_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity.as_secs(),
            }
        });
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).expect("write pebble config");
        let log = std::fs::File::create(dir.join("pebble.log")).expect("log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random validation delays, no nonces refused on purpose: the test is about
            // portcullis, not about pebble's chaos.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("pebble (apt-get install pebble)");
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("CA"))
            .build()
            .expect("client");
        let pebble = Pebble {
            _processes: vec![Killed(dns_server), Killed(pebble)],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: format!("https://127.0.0.1:{management}"),
            ca_file,
            http,
        };
        let started = Instant::now();
        while pebble.http.get(&pebble.directory).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pebble did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pebble
    }

    /// The root pebble signs certificates with (a new one each run).
    async fn root(&self) -> String {
        self.http
            .get(format!("{}/roots/0", self.management))
            .send()
            .await
            .expect("pebble root")
            .text()
            .await
            .expect("PEM")
    }
}

/// `[server.acme]` for `domains` against `pebble`.
fn acme_config(pebble: &Pebble, https: u16, http: u16, domains: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{https}\"\nredirect_listen = \"127.0.0.1:{http}\"\n\n\
         [server.acme]\ndomains = \"{domains}\"\ncontact = \"ops@portcullis.test\"\n\
         directory = \"{}\"\ndirectory_ca_file = {:?}\n{extra}",
        pebble.directory, pebble.ca_file
    )
}

fn serve_on(i: &Instance, port: u16) -> Server {
    Server::start(i.command(&["serve", "--listen", &format!("127.0.0.1:{port}")]))
}

/// The certificate `name` gets on `port`, verified against `root` (the chain must lead to
/// pebble's root), once there is one; fails after `within`.
async fn certificate(root: &str, name: &str, port: u16, within: Duration) -> Vec<u8> {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).expect("root"))
        .resolve(name, SocketAddr::from(([127, 0, 0, 1], port)))
        .tls_info(true)
        .build()
        .expect("client");
    let started = Instant::now();
    loop {
        match client
            .get(format!("https://{name}:{port}/healthz"))
            .send()
            .await
        {
            Ok(resp) => {
                assert_eq!(resp.status(), 200);
                let info = resp
                    .extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .expect("TLS info");
                return info.peer_certificate().expect("certificate").to_vec();
            }
            Err(e) => {
                assert!(
                    started.elapsed() < within,
                    "no valid certificate for {name} within {within:?}: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_by_tls_alpn_01_kept_in_the_store_and_served_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let (https, http) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), https, http, Duration::from_secs(40 * 86_400)).await;
    let root = pebble.root().await;
    let i = Instance::with_config(&acme_config(
        &pebble,
        https,
        http,
        "portcullis.test, www.portcullis.test",
        "",
    ));
    let server = serve_on(&i, https);
    let first = certificate(&root, "portcullis.test", https, Duration::from_secs(60)).await;
    let www = certificate(&root, "www.portcullis.test", https, Duration::from_secs(5)).await;
    assert_eq!(first, www, "one certificate for both names");
    // The issuer defaults to the first name.
    let discovery: serde_json::Value = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).expect("root"))
        .resolve("portcullis.test", SocketAddr::from(([127, 0, 0, 1], https)))
        .build()
        .expect("client")
        .get(format!(
            "https://portcullis.test:{https}/.well-known/openid-configuration"
        ))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(
        discovery["issuer"],
        format!("https://portcullis.test:{https}")
    );
    // A validation handshake for a name with no challenge in progress gets nothing.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{https}")])
        .args(["-servername", "portcullis.test", "-alpn", "acme-tls/1"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"),
        "no certificate on acme-tls/1 outside a validation"
    );
    // Offering acme-tls/1 among other protocols is not a validation (RFC 8737 §3): the real
    // certificate and HTTP/1.1.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{https}")])
        .args([
            "-servername",
            "portcullis.test",
            "-alpn",
            "acme-tls/1,http/1.1",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BEGIN CERTIFICATE") && text.contains("ALPN protocol: http/1.1"),
        "{text}"
    );
    drop(server);
    // The CA gone, a restart serves the stored certificate at once.
    drop(pebble);
    let _server = serve_on(&i, https);
    let again = certificate(&root, "portcullis.test", https, Duration::from_secs(5)).await;
    assert_eq!(again, first, "the same certificate, from the store");
}

/// HTTP-01 on the plain listener; and renewal: pebble issues certificates valid for 15 s, so
/// each is due a third of its lifetime before expiry and is replaced while the old one is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_obtains_a_certificate_and_one_due_for_renewal_is_replaced() {
    let dir = tempfile::tempdir().expect("dir");
    let (https, http) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), https, http, Duration::from_secs(15)).await;
    let root = pebble.root().await;
    let config = acme_config(
        &pebble,
        https,
        http,
        "api.portcullis.test",
        "challenge = \"http-01\"\n",
    );
    let i = Instance::with_config(&config);
    let _server = serve_on(&i, https);
    let first = certificate(&root, "api.portcullis.test", https, Duration::from_secs(60)).await;
    let started = Instant::now();
    loop {
        let now = certificate(&root, "api.portcullis.test", https, Duration::from_secs(5)).await;
        if now != first {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the certificate due for renewal was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn config_check_explains_what_is_wrong_with_server_acme() {
    let i = Instance::with_config(
        "[server.acme]\ndomains = \"*.example.com, bad_name.example.com, ok.example.com\"\ncontact = \"mailto:ops\"\nchallenge = \"http-01\"\ndirectory_ca_file = \"/nonexistent/ca.pem\"\n",
    );
    let out = i.run(&["config", "check"]).user_error();
    for expected in [
        "wildcard needs the DNS-01 challenge",
        "\"bad_name.example.com\" is not a DNS name",
        "server.acme.contact",
        "set server.redirect_listen",
        "/nonexistent/ca.pem",
    ] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
    let i = Instance::with_config("[server.acme]\ndomains = \"ok.example.com\"\n");
    assert!(
        i.run(&["config", "check"])
            .ok()
            .contains("configuration is valid")
    );
}
