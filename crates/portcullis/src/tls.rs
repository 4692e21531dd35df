//! TLS termination: certificates from PEM files, chosen by SNI, reloaded when their files change
//! or on SIGHUP without dropping open connections.
//!
//! rustls on the aws-lc-rs provider, TLS 1.2 and 1.3 with rustls' safe defaults (no RSA key
//! exchange, no CBC suites in 1.3, forward secrecy only), session resumption by tickets and by
//! the server-side cache. A certificate is checked when it is loaded — readable, the key matches
//! the leaf, not expired, DNS names present — so `config check` catches what would fail a
//! handshake, and a bad replacement file is logged and the previous certificate kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// One `[[server.certificates]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The certificate chain, leaf first, as PEM.
    pub chain: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 RSA or SEC1 EC), as PEM.
    pub key: PathBuf,
}

/// Why a certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("{path}: unsupported private key: {reason}")]
    Key { path: String, reason: String },
    #[error("the key in {key} does not belong to the certificate in {chain}")]
    Mismatch { chain: String, key: String },
    #[error("{path}: the certificate cannot be parsed: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: the certificate expired on {expired}; renew it")]
    Expired { path: String, expired: String },
    #[error("{path}: the certificate names no DNS name (subjectAltName); browsers refuse it")]
    NoNames { path: String },
}

/// A loaded certificate: the key rustls serves, the names it is valid for, and the files'
/// modification times (to notice a change).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub files: CertificateFiles,
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    modified: (Option<SystemTime>, Option<SystemTime>),
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> CertificateError {
    CertificateError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Loads and checks a certificate and its key; `now` is Unix seconds.
pub fn load(files: &CertificateFiles, now: i64) -> Result<Loaded, CertificateError> {
    let display = |p: &Path| p.display().to_string();
    let modified = (mtime(&files.chain), mtime(&files.key));
    let chain_pem = std::fs::read(&files.chain).map_err(|e| read_err(&files.chain, e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(&files.chain, e))?;
    let key_pem = std::fs::read(&files.key).map_err(|e| read_err(&files.key, e))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => CertificateError::NoKey {
            path: display(&files.key),
        },
        e => read_err(&files.key, e),
    })?;
    let (key, names, not_after) = check(
        chain,
        key,
        now,
        &display(&files.chain),
        &display(&files.key),
    )?;
    Ok(Loaded {
        files: files.clone(),
        key,
        names,
        not_after,
        modified,
    })
}

/// Checks a parsed chain and key (`chain_label`, `key_label` name them in errors): the leaf
/// parses, is not expired at `now`, names DNS names, and the key belongs to it.
fn check(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    now: i64,
    chain_label: &str,
    key_label: &str,
) -> Result<(Arc<CertifiedKey>, Vec<String>, i64), CertificateError> {
    let display = |p: &str| p.to_owned();
    let Some(leaf) = chain.first() else {
        return Err(CertificateError::NoCertificate {
            path: display(chain_label),
        });
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| CertificateError::Parse {
            path: display(chain_label),
            reason: e.to_string(),
        })?;
    let not_after = cert.validity().not_after.timestamp();
    if not_after < now {
        return Err(CertificateError::Expired {
            path: display(chain_label),
            expired: cert.validity().not_after.to_string(),
        });
    }
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err(CertificateError::NoNames {
            path: display(chain_label),
        });
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertificateError::Mismatch {
            chain: display(chain_label),
            key: display(key_label),
        },
        e => CertificateError::Key {
            path: display(key_label),
            reason: e.to_string(),
        },
    })?;
    Ok((Arc::new(certified), names, not_after))
}

/// A chain and key from PEM text (an ACME certificate from the store): the checks of [`load`].
/// Returns the key rustls serves, the DNS names and `notAfter`.
pub fn parse(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Arc<CertifiedKey>, Vec<String>, i64), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the key: {e}"))?;
    check(chain, key, 0, "the certificate", "the key").map_err(|e| e.to_string())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Picks the certificate for a handshake by SNI: an exact name, then a wildcard one label deep
/// (`*.example.com`); without SNI, or for a name no certificate has, the first certificate.
/// The certificate obtained by ACME, if any, comes after the files' certificates, and with
/// ACME a validation handshake (ALPN `acme-tls/1`) gets the TLS-ALPN-01 answer for its name.
#[derive(Debug)]
pub struct Resolver {
    certs: ArcSwap<Vec<Loaded>>,
    issued: ArcSwap<Option<crate::acme::Issued>>,
    answers: Option<Arc<crate::acme::Answers>>,
}

/// Whether `name` (lowercase) is one of `names`, exactly or by a one-label wildcard.
fn covers(names: &[String], name: &str) -> bool {
    names.iter().any(|pattern| {
        pattern == name
            || pattern
                .strip_prefix("*.")
                .is_some_and(|suffix| name.split_once('.').is_some_and(|(_, rest)| rest == suffix))
    })
}

impl Resolver {
    /// The files' certificates, and with ACME its challenge answers.
    pub fn new(certs: Vec<Loaded>, answers: Option<Arc<crate::acme::Answers>>) -> Arc<Resolver> {
        Arc::new(Resolver {
            certs: ArcSwap::from_pointee(certs),
            issued: ArcSwap::from_pointee(None),
            answers,
        })
    }

    /// The certificate obtained by ACME that is served now.
    pub fn issued(&self) -> Option<crate::acme::Issued> {
        self.issued.load().as_ref().clone()
    }

    pub fn set_issued(&self, issued: Option<crate::acme::Issued>) {
        self.issued.store(Arc::new(issued));
    }

    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let issued = self.issued.load();
        let name = name.map(str::to_ascii_lowercase);
        if let Some(name) = name.as_deref() {
            if let Some(c) = certs.iter().find(|c| covers(&c.names, name)) {
                return Some(c.key.clone());
            }
            if let Some(i) = issued.as_ref().as_ref().filter(|i| covers(&i.names, name)) {
                return Some(i.key.clone());
            }
        }
        certs
            .first()
            .map(|c| c.key.clone())
            .or_else(|| issued.as_ref().as_ref().map(|i| i.key.clone()))
    }

    /// Reloads every certificate whose files changed (`force`: every certificate). A file that
    /// fails to load is logged and its previous certificate kept. Returns how many changed.
    pub fn reload(&self, force: bool, now: i64) -> usize {
        let current = self.certs.load();
        let mut next = Vec::with_capacity(current.len());
        let mut changed = 0;
        for old in current.iter() {
            let modified = (mtime(&old.files.chain), mtime(&old.files.key));
            if !force && modified == old.modified {
                next.push(old.clone());
                continue;
            }
            match load(&old.files, now) {
                Ok(new) => {
                    tracing::info!(chain = %old.files.chain.display(), names = ?new.names, "certificate reloaded");
                    changed += 1;
                    next.push(new);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reload a certificate; still serving the previous one");
                    // Remember the new modification times so a bad file is reported once.
                    let mut kept = old.clone();
                    kept.modified = modified;
                    next.push(kept);
                }
            }
        }
        self.certs.store(Arc::new(next));
        changed
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737 §3: a validation offers `acme-tls/1` and nothing else. A client offering it
        // among others gets the ordinary certificate (and, by our preference, h2 or HTTP/1.1).
        let validating = hello.alpn().is_some_and(|offered| {
            let offered: Vec<&[u8]> = offered.take(2).collect();
            offered == [crate::acme::ACME_TLS_ALPN]
        });
        if validating {
            // Only the answer, never a real certificate, and nothing without ACME on.
            return self.answers.as_ref()?.tls_alpn01(hello.server_name()?);
        }
        self.pick(hello.server_name())
    }
}

/// The server's TLS configuration: TLS 1.2 and 1.3, HTTP/2 (when `http2`) and HTTP/1.1 by
/// ALPN, resumption by tickets and by a session cache.
pub fn server_config(
    resolver: Arc<Resolver>,
    http2: bool,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let acme = resolver.answers.is_some();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if acme {
        config
            .alpn_protocols
            .push(crate::acme::ACME_TLS_ALPN.to_vec());
    }
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// How often the certificate files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Reloads changed certificates every [`RELOAD_INTERVAL`], and all of them on SIGHUP.
pub fn spawn_reload(resolver: Arc<Resolver>, clock: portcullis_token::Clock) {
    tokio::spawn(async move {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload on change only");
                None
            }
        };
        let now = clock.now();
        for cert in resolver.certs.load().iter() {
            let days = (cert.not_after - now) / 86_400;
            if days < 30 {
                tracing::warn!(chain = %cert.files.chain.display(), days, "a certificate expires in less than 30 days; renew it");
            }
        }
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.tick().await;
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            resolver.reload(force, clock.now());
        }
    });
}
