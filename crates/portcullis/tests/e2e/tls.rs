//! TLS termination: certificates chosen by SNI, TLS 1.2 and 1.3 only, reloading without
//! dropping open connections, a bad replacement refused, the files checked by `config check`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::harness::{Instance, Server};

/// A test certificate authority.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

impl Ca {
    pub(crate) fn new() -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names for the authority and its leaves: OpenSSL takes a leaf whose issuer is
        // its own subject for self-signed.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names`, written to `dir/<file>.pem` and `dir/<file>.key`;
    /// returns the two paths and the leaf's DER.
    pub(crate) fn leaf(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
    ) -> (PathBuf, PathBuf, Vec<u8>) {
        self.leaf_with(dir, file, names, |_| {})
    }

    fn leaf_with(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("leaf"),
        );
        edit(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        let chain = dir.join(format!("{file}.pem"));
        let key_path = dir.join(format!("{file}.key"));
        std::fs::write(&chain, cert.pem()).expect("write chain");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (chain, key_path, cert.der().to_vec())
    }

    /// A client trusting this CA that sends `name` as SNI and resolves it to `addr`.
    fn client(&self, name: &str, addr: SocketAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).expect("CA"))
            .resolve(name, addr)
            .tls_info(true)
            .build()
            .expect("client")
    }
}

pub(crate) fn certificates(entries: &[(&Path, &Path)]) -> String {
    entries
        .iter()
        .map(|(chain, key)| format!("[[server.certificates]]\nchain = {chain:?}\nkey = {key:?}\n"))
        .collect()
}

pub(crate) fn address(server: &Server) -> SocketAddr {
    let rest = server
        .base
        .strip_prefix("https://")
        .expect("the server says https");
    rest.parse().expect("address")
}

/// The certificate the server presented, and the answer's status.
async fn handshake(client: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let resp = client.get(url).send().await.expect("https request");
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    let cert = info.peer_certificate().expect("peer certificate").to_vec();
    (resp.status().as_u16(), cert)
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_and_only_tls_1_2_and_1_3_are_spoken() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let (a_chain, a_key, a_der) = ca.leaf(dir.path(), "a", &["a.test"]);
    let (b_chain, b_key, b_der) = ca.leaf(dir.path(), "b", &["*.b.test"]);
    let i = Instance::with_config(&certificates(&[(&a_chain, &a_key), (&b_chain, &b_key)]));
    let server = i.serve();
    let addr = address(&server);
    let port = addr.port();

    let (status, cert) = handshake(
        &ca.client("a.test", addr),
        &format!("https://a.test:{port}/healthz"),
    )
    .await;
    assert_eq!(
        (status, cert == a_der),
        (200, true),
        "a.test gets its certificate"
    );
    let (status, cert) = handshake(
        &ca.client("app.b.test", addr),
        &format!("https://app.b.test:{port}/healthz"),
    )
    .await;
    assert_eq!(
        (status, cert == b_der),
        (200, true),
        "the wildcard matches one label"
    );
    // A name no certificate has: the first certificate, which the client then refuses.
    let err = ca
        .client("other.test", addr)
        .get(format!("https://other.test:{port}/healthz"))
        .send()
        .await
        .expect_err("a certificate for another name");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    // The issuer, and so the cookies, follow the listener: https.
    let discovery: serde_json::Value = ca
        .client("a.test", addr)
        .get(format!(
            "https://a.test:{port}/.well-known/openid-configuration"
        ))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert!(
        discovery["issuer"]
            .as_str()
            .is_some_and(|i| i.starts_with("https://")),
        "{discovery}"
    );

    // A real TLS client library nobody here wrote: OpenSSL's s_client. 1.2 and 1.3 succeed;
    // 1.1 and 1.0 are refused by the server (the client is allowed them explicitly).
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr.to_string(),
                "-servername",
                "a.test",
            ])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client (apt-get install openssl)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for version in ["-tls1_2", "-tls1_3"] {
        let (ok, out) = openssl(&[version]);
        assert!(ok && out.contains("BEGIN CERTIFICATE"), "{version}: {out}");
    }
    for version in ["-tls1_1", "-tls1"] {
        let (ok, out) = openssl(&[version, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(
            !ok && !out.contains("BEGIN CERTIFICATE"),
            "{version} must fail: {out}"
        );
    }
    // Session resumption: a TLS 1.2 session saved by one connection is resumed by the next.
    let session = dir.path().join("session");
    let session = session.to_str().expect("utf-8");
    let (ok, _) = openssl(&["-tls1_2", "-sess_out", session]);
    assert!(ok);
    let (ok, out) = openssl(&["-tls1_2", "-sess_in", session]);
    assert!(ok && out.contains("Reused, TLSv1.2"), "resumed: {out}");
    // Plain HTTP on the TLS port is not served.
    let plain = reqwest::get(format!("http://{addr}/healthz")).await;
    assert!(plain.map(|r| r.status().as_u16() != 200).unwrap_or(true));
}

/// A scanner nobody here wrote (sslscan) against an RSA and an ECDSA certificate: nothing below
/// TLS 1.2, only forward-secret AEAD suites, no renegotiation, no compression.
#[tokio::test]
async fn sslscan_finds_no_old_protocol_and_no_weak_suite() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let (ec_chain, ec_key, _) = ca.leaf(dir.path(), "ec", &["ec.test"]);
    // An RSA key from OpenSSL, signed by the test authority.
    let (rsa_chain, rsa_key) = (dir.path().join("rsa.pem"), dir.path().join("rsa.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&rsa_key)
        .output()
        .expect("openssl genpkey");
    assert!(out.status.success(), "{out:?}");
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(&rsa_key).expect("read key")).expect("RSA key");
    let mut params = CertificateParams::new(vec!["rsa.test".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rsa.test");
    let cert = params.signed_by(&key, &ca.issuer).expect("RSA leaf");
    std::fs::write(&rsa_chain, cert.pem()).expect("write chain");
    let i = Instance::with_config(&certificates(&[
        (&ec_chain, &ec_key),
        (&rsa_chain, &rsa_key),
    ]));
    let server = i.serve();
    let addr = address(&server);
    for name in ["ec.test", "rsa.test"] {
        let out = std::process::Command::new("sslscan")
            .args([
                "--no-colour",
                "--no-check-certificate",
                "--no-heartbleed",
                "--no-groups",
            ])
            .args(["--no-fallback", "--no-compression", "--sni-name", name])
            .arg(addr.to_string())
            .output()
            .expect("sslscan (apt-get install sslscan)");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{report}");
        for old in ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"] {
            assert!(
                report
                    .lines()
                    .any(|l| l.starts_with(old) && l.ends_with("disabled")),
                "{name}: {old} must be disabled: {report}"
            );
        }
        for new in ["TLSv1.2", "TLSv1.3"] {
            assert!(
                report
                    .lines()
                    .any(|l| l.starts_with(new) && l.ends_with("enabled")),
                "{name}: {new} must be enabled: {report}"
            );
        }
        let suites: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with("Preferred") || l.starts_with("Accepted"))
            .collect();
        assert!(suites.len() >= 3, "{name}: {report}");
        for line in &suites {
            let suite = line.split_whitespace().nth(4).unwrap_or_default();
            let forward_secret = suite.starts_with("TLS_") || suite.starts_with("ECDHE-");
            let aead = suite.contains("GCM")
                || suite.contains("CHACHA20-POLY1305")
                || suite.contains("CHACHA20_POLY1305");
            assert!(forward_secret && aead, "{name}: weak suite {line}");
        }
        assert!(
            report.contains("Session renegotiation not supported"),
            "{name}: {report}"
        );
        eprintln!(
            "{name}: {} suites, all TLS 1.2/1.3 ECDHE AEAD",
            suites.len()
        );
    }
}

#[tokio::test]
async fn certificates_reload_on_sighup_and_on_change_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let (chain, key, first) = ca.leaf(dir.path(), "a", &["a.test"]);
    let i = Instance::with_config(&certificates(&[(&chain, &key)]));
    let server = i.serve();
    let addr = address(&server);
    let url = format!("https://a.test:{}/healthz", addr.port());
    let kept = ca.client("a.test", addr);
    assert_eq!(handshake(&kept, &url).await, (200, first.clone()));

    // New files, then SIGHUP: new connections get the new certificate at once...
    let (_, _, second) = ca.leaf(dir.path(), "a", &["a.test"]);
    server.signal("HUP");
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = handshake(&ca.client("a.test", addr), &url).await.1;
        if seen == second {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen == second, "a new connection sees the new certificate");
    // ...while the open keep-alive connection carries on with the old one.
    assert_eq!(handshake(&kept, &url).await, (200, first));

    // A broken replacement is logged and the last good certificate kept.
    std::fs::write(&chain, "not a certificate").expect("break the chain");
    server.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        handshake(&ca.client("a.test", addr), &url).await,
        (200, second)
    );

    // Without a signal, a changed file is noticed within the reload interval (5 s).
    let (_, _, third) = ca.leaf(dir.path(), "a", &["a.test"]);
    let mut seen = Vec::new();
    for _ in 0..80 {
        seen = handshake(&ca.client("a.test", addr), &url).await.1;
        if seen == third {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen == third,
        "a changed file is picked up without a signal"
    );
}

#[test]
fn config_check_names_what_is_wrong_with_a_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let (chain, key, _) = ca.leaf(dir.path(), "good", &["a.test"]);
    let (other_chain, _, _) = ca.leaf(dir.path(), "other", &["b.test"]);
    let (old_chain, old_key, _) = ca.leaf_with(dir.path(), "old", &["a.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let missing = dir.path().join("missing.pem");
    let i = Instance::with_config(&certificates(&[
        (&chain, &key),
        (&other_chain, &key),
        (&old_chain, &old_key),
        (&missing, &key),
    ]));
    let err = i.run(&["config", "check"]).user_error();
    assert!(err.contains("3 errors"), "{err}");
    assert!(
        err.contains("`server.certificates`: the key in")
            && err.contains("does not belong to the certificate"),
        "{err}"
    );
    assert!(
        err.contains("expired on") && err.contains("renew it"),
        "{err}"
    );
    assert!(
        err.contains("cannot read") && err.contains("missing.pem"),
        "{err}"
    );
    // Every error names its line.
    assert_eq!(err.matches("portcullis.toml:").count(), 3, "{err}");

    let ok = Instance::with_config(&certificates(&[(&chain, &key)]));
    assert!(
        ok.run(&["config", "check"])
            .ok()
            .contains("configuration is valid")
    );
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_and_https_answers_carry_hsts() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let (chain, key, _) = ca.leaf(dir.path(), "a", &["a.test"]);
    let i = Instance::with_config(&format!(
        "[server]\nredirect_listen = \"127.0.0.1:0\"\nhsts_max_age = \"1d\"\n{}",
        certificates(&[(&chain, &key)])
    ));
    let server = i.serve();
    let addr = address(&server);
    let line = server
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("redirecting http://"))
        .expect("the redirect listener is announced");
    let (plain, origin) = line.split_once(" to ").expect("redirecting A to B");
    assert_eq!(origin, format!("https://localhost:{}", addr.port()));

    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for (target, expected) in [("/orders?page=2", "/orders?page=2"), ("/", "/")] {
        let resp = no_follow
            .post(format!("http://{plain}{target}"))
            .body("ignored")
            .send()
            .await
            .expect("plain http");
        assert_eq!(resp.status(), 308, "{target}");
        assert_eq!(
            resp.headers()["location"],
            format!("{origin}{expected}").as_str(),
            "the same path on the https origin, whatever Host says"
        );
        assert!(resp.headers().get("strict-transport-security").is_none());
    }
    // An absolute-form target does not choose where the redirect goes.
    let raw = crate::gateway::raw_to(
        plain,
        "GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert!(
        raw.starts_with("HTTP/1.1 308") || raw.starts_with("HTTP/1.1 400"),
        "{raw}"
    );
    assert!(
        !raw.to_ascii_lowercase().contains("location: https://evil"),
        "{raw}"
    );

    // Every https answer carries HSTS: our endpoints, and a gateway refusal.
    let client = ca.client("a.test", addr);
    for path in ["/healthz", "/no/such/route"] {
        let resp = client
            .get(format!("https://a.test:{}{path}", addr.port()))
            .send()
            .await
            .expect("https");
        assert_eq!(
            resp.headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().ok()),
            Some(Some("max-age=86400")),
            "{path}"
        );
    }

    // A redirect listener without TLS is a configuration error.
    let bad = Instance::with_config("[server]\nredirect_listen = \"127.0.0.1:0\"\n");
    let err = bad.run(&["config", "check"]).user_error();
    assert!(
        err.contains("`server.redirect_listen`") && err.contains("[[server.certificates]]"),
        "{err}"
    );
}

/// An HTTPS upstream in this process with the certificate in `chain`/`key`: answers every
/// request with 200 and `tls upstream <path>`. With `client_ca`, clients must present a
/// certificate that CA issued (mTLS).
async fn tls_upstream(chain: &Path, key: &Path, client_ca: Option<&str>) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(chain)
        .expect("chain")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions");
    let config = match client_ca {
        None => config.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.expect("CA")).expect("root");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            )
            .build()
            .expect("client verifier");
            config.with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(format!(
                            "tls upstream {}",
                            req.uri().path()
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_authorities() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let (chain, key, _) = ca.leaf(dir.path(), "upstream", &["localhost"]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    let upstream = tls_upstream(&chain, &key, None).await;
    let routes = format!(
        "[[routes]]\npath = \"/secure/**\"\nkind = \"public\"\nupstream = \"https://localhost:{port}\"\n\
         [[routes]]\npath = \"/wrong-name/**\"\nkind = \"public\"\nupstream = \"https://127.0.0.1:{port}\"\n",
        port = upstream.port()
    );
    let trusting = Instance::with_config(&format!(
        "[gateway]\nupstream_ca_file = {ca_file:?}\n{routes}"
    ));
    let server = trusting.serve();
    let resp = reqwest::get(server.url("/secure/orders"))
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.expect("body"),
        "tls upstream /secure/orders"
    );
    // The certificate is checked against the URL's host: issued to localhost, not 127.0.0.1.
    let resp = reqwest::get(server.url("/wrong-name/x"))
        .await
        .expect("request");
    assert_eq!(resp.status(), 502);

    // Without the test CA (the system's roots only) the same upstream is refused.
    let system = Instance::with_config(&routes);
    let server = system.serve();
    let resp = reqwest::get(server.url("/secure/orders"))
        .await
        .expect("request");
    assert_eq!(resp.status(), 502);

    // A bundle that is not one is a configuration error.
    std::fs::write(&ca_file, "junk").expect("write");
    let bad = Instance::with_config(&format!("[gateway]\nupstream_ca_file = {ca_file:?}\n"));
    let err = bad.run(&["config", "check"]).user_error();
    assert!(
        err.contains("`gateway.upstream_ca_file`") && err.contains("no PEM certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_upstreams_that_require_one() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new();
    let (chain, key, _) = ca.leaf(dir.path(), "upstream", &["localhost"]);
    let (client_chain, client_key, _) = ca.leaf(dir.path(), "gateway", &["gateway.test"]);
    let (_, other_key, _) = ca.leaf(dir.path(), "other", &["other.test"]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    let upstream = tls_upstream(&chain, &key, Some(&ca.pem)).await;
    let route = format!(
        "[[routes]]\npath = \"/secure/**\"\nkind = \"public\"\nupstream = \"https://localhost:{}\"\n",
        upstream.port()
    );
    // Without a client certificate the upstream refuses the handshake: 502.
    let without = Instance::with_config(&format!(
        "[gateway]\nupstream_ca_file = {ca_file:?}\n{route}"
    ));
    let server = without.serve();
    let resp = reqwest::get(server.url("/secure/x"))
        .await
        .expect("request");
    assert_eq!(resp.status(), 502);
    drop(server);
    // With one it is let through.
    let with = Instance::with_config(&format!(
        "[gateway]\nupstream_ca_file = {ca_file:?}\nupstream_client_cert = {client_chain:?}\nupstream_client_key = {client_key:?}\n{route}"
    ));
    let server = with.serve();
    let resp = reqwest::get(server.url("/secure/x"))
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "tls upstream /secure/x");
    // A key that is not the certificate's, or a certificate without a key: configuration errors.
    let bad = Instance::with_config(&format!(
        "[gateway]\nupstream_client_cert = {client_chain:?}\nupstream_client_key = {other_key:?}\n"
    ));
    let err = bad.run(&["config", "check"]).user_error();
    assert!(err.contains("`gateway.upstream_client_cert`"), "{err}");
    let half = Instance::with_config(&format!(
        "[gateway]\nupstream_client_cert = {client_chain:?}\n"
    ));
    let err = half.run(&["config", "check"]).user_error();
    assert!(err.contains("needs gateway.upstream_client_key"), "{err}");
}
