//! Automatic certificates (ACME, RFC 8555) with `instant-acme`: one certificate for
//! `server.acme.domains`, obtained with a TLS-ALPN-01 (RFC 8737) or HTTP-01 challenge, kept in
//! the store with the account (private keys sealed with the instance secret) so every node
//! serves the same certificate, and renewed `renew_before` its expiry.
//!
//! Several nodes: every node reads the certificate and the challenge answers from the store (the
//! CA may reach any node behind the load balancer); one node at a time orders, holding a lease
//! in the store. A node that cannot order keeps serving the certificate it has and tries again
//! with a growing delay.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use portcullis_store::{AcmeCertificate, AcmeChallenge, Store};
use portcullis_token::{Clock, KeyEncryptionKey};

/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How often every node reads the challenge answers in progress from the store.
const ANSWERS_EVERY: Duration = Duration::from_secs(2);
/// How often every node looks for a certificate another node renewed.
const CERTIFICATE_EVERY: Duration = Duration::from_secs(60);
/// How long an order may hold the lease.
const LEASE: Duration = Duration::from_secs(600);
/// How long a challenge answer stays in the store.
const ANSWER_TTL: i64 = 3600;
/// Waits between failed orders: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_LAST: Duration = Duration::from_secs(3600);

/// The challenge the CA is asked to validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A TLS handshake on the https port with ALPN `acme-tls/1` (RFC 8737).
    TlsAlpn01,
    /// `GET /.well-known/acme-challenge/<token>` on port 80 (`server.redirect_listen`).
    Http01,
}

impl ChallengeKind {
    fn name(self) -> &'static str {
        match self {
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Http01 => "http-01",
        }
    }
}

/// `[server.acme]`, checked.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// Lowercase DNS names, sorted, without duplicates.
    pub domains: Vec<String>,
    pub contact: String,
    pub directory: String,
    pub challenge: ChallengeKind,
    pub directory_ca_file: Option<PathBuf>,
    pub renew_before: Duration,
}

impl AcmeConfig {
    /// How the certificate is keyed in the store.
    fn names(&self) -> String {
        self.domains.join(",")
    }
}

/// A certificate obtained by ACME, ready to serve.
#[derive(Clone, Debug)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    pub names: Vec<String>,
    pub not_after: i64,
    /// When it was stored (to notice a newer one).
    pub updated_at: i64,
}

/// The challenge answers this node gives now.
#[derive(Debug, Default)]
pub struct Answers {
    /// HTTP-01: token → key authorization.
    http: ArcSwap<HashMap<String, String>>,
    /// TLS-ALPN-01: name → the validation certificate.
    tls: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl Answers {
    /// The key authorization for an HTTP-01 `token`.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http.load().get(token).cloned()
    }

    /// The validation certificate for a TLS-ALPN-01 handshake for `name`.
    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls.load().get(&name.to_ascii_lowercase()).cloned()
    }

    /// Replaces the answers with `challenges` (from the store).
    fn set(&self, challenges: &[AcmeChallenge]) {
        let mut http = HashMap::new();
        let mut tls = HashMap::new();
        let current = self.tls.load();
        for c in challenges {
            match c.kind.as_str() {
                "http-01" => {
                    http.insert(c.lookup.clone(), c.answer.clone());
                }
                "tls-alpn-01" => {
                    // The same digest keeps its certificate: no new key every refresh.
                    let key = current
                        .get(&c.lookup)
                        .filter(|k| digest_of(k).as_deref() == Some(c.answer.as_str()))
                        .cloned()
                        .or_else(|| validation_certificate(&c.lookup, &c.answer).ok());
                    if let Some(key) = key {
                        tls.insert(c.lookup.clone(), key);
                    }
                }
                _ => {}
            }
        }
        self.http.store(Arc::new(http));
        self.tls.store(Arc::new(tls));
    }
}

/// The hex SHA-256 digest a validation certificate was made for (kept beside it).
fn digest_of(key: &CertifiedKey) -> Option<String> {
    let der = key.end_entity_cert().ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
        .and_then(|e| e.value.get(2..))
        .map(hex)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The self-signed certificate of RFC 8737 §3 for `name`: the name as its only SAN and the
/// critical acmeIdentifier extension holding the SHA-256 of the key authorization.
fn validation_certificate(name: &str, digest_hex: &str) -> Result<Arc<CertifiedKey>, String> {
    let digest = unhex(digest_hex)
        .filter(|d| d.len() == 32)
        .ok_or("a TLS-ALPN-01 answer is not a SHA-256 digest")?;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(&digest));
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate with webpki,
    // which refuses the critical acmeIdentifier extension that is the point of this one.
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Starts the certificate manager: it installs the stored certificate in `resolver` at once
/// (if there is one), keeps the challenge answers current, and orders or renews when due.
pub async fn start(
    config: AcmeConfig,
    store: Store,
    sealer: KeyEncryptionKey,
    resolver: Arc<crate::tls::Resolver>,
    answers: Arc<Answers>,
    clock: Clock,
) {
    let manager = Manager {
        http: match AcmeHttp::new(config.directory_ca_file.as_deref()) {
            Ok(http) => http,
            Err(e) => {
                tracing::error!(error = %e, "ACME is off: cannot set up TLS to the ACME directory");
                return;
            }
        },
        holder: uuid::Uuid::now_v7().to_string(),
        config,
        store,
        sealer,
        resolver,
        answers,
        clock,
    };
    let issued = manager.load_stored().await;
    tokio::spawn(manager.run(issued));
}

struct Manager {
    config: AcmeConfig,
    store: Store,
    sealer: KeyEncryptionKey,
    resolver: Arc<crate::tls::Resolver>,
    answers: Arc<Answers>,
    clock: Clock,
    http: AcmeHttp,
    /// Who this node is, for the lease.
    holder: String,
}

impl Manager {
    /// Installs the stored certificate if it is newer than what is served; returns what is
    /// served.
    async fn load_stored(&self) -> Option<Issued> {
        let served = self.resolver.issued();
        let stored = match self.store.acme_certificate(&self.config.names()).await {
            Ok(stored) => stored?,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the ACME certificate from the store");
                return served;
            }
        };
        if served
            .as_ref()
            .is_some_and(|s| s.updated_at >= stored.updated_at)
        {
            return served;
        }
        match self.open(&stored) {
            Ok(issued) => {
                tracing::info!(names = ?issued.names, not_after = issued.not_after, "serving the ACME certificate from the store");
                self.resolver.set_issued(Some(issued.clone()));
                Some(issued)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the stored ACME certificate cannot be used");
                served
            }
        }
    }

    fn open(&self, stored: &AcmeCertificate) -> Result<Issued, String> {
        let key_pem = self
            .sealer
            .open(
                &format!("acme certificate {}", stored.names),
                &stored.sealed_key,
            )
            .map_err(|e| e.to_string())?;
        let (key, names, not_after) =
            crate::tls::parse(stored.chain_pem.as_bytes(), key_pem.expose())?;
        Ok(Issued {
            key,
            names,
            not_after,
            updated_at: stored.updated_at,
        })
    }

    /// Whether to order: no certificate, or one within `renew_before` of its expiry — or within
    /// a third of its lifetime, when that is shorter (short-lived certificates are not renewed
    /// the moment they arrive).
    fn due(&self, issued: Option<&Issued>) -> bool {
        issued.is_none_or(|i| {
            let lifetime = (i.not_after - i.updated_at / 1000).max(0);
            let renew_before =
                i64::try_from(self.config.renew_before.as_secs()).unwrap_or(i64::MAX);
            i.not_after - renew_before.min(lifetime / 3) <= self.clock.now()
        })
    }

    async fn run(self, mut issued: Option<Issued>) {
        let mut answers_tick = tokio::time::interval(ANSWERS_EVERY);
        answers_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check = tokio::time::Instant::now();
        let mut next_order = tokio::time::Instant::now();
        let mut retry = RETRY_FIRST;
        loop {
            answers_tick.tick().await;
            self.refresh_answers().await;
            if last_check.elapsed() >= CERTIFICATE_EVERY {
                last_check = tokio::time::Instant::now();
                issued = self.load_stored().await;
            }
            if !self.due(issued.as_ref()) || tokio::time::Instant::now() < next_order {
                continue;
            }
            match self.order_under_lease().await {
                Ok(true) => {
                    issued = self.load_stored().await;
                    retry = RETRY_FIRST;
                }
                // Another node is ordering: its certificate arrives through the store.
                Ok(false) => {
                    next_order = tokio::time::Instant::now() + ANSWERS_EVERY * 5;
                    last_check = tokio::time::Instant::now() - CERTIFICATE_EVERY;
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        names = %self.config.names(),
                        directory = %self.config.directory,
                        retry_in = %humantime::format_duration(retry),
                        "cannot get a certificate from the ACME directory"
                    );
                    next_order = tokio::time::Instant::now() + retry;
                    retry = (retry * 2).min(RETRY_LAST);
                }
            }
        }
    }

    async fn refresh_answers(&self) {
        match self.store.acme_challenges(self.clock.now()).await {
            Ok(challenges) => self.answers.set(&challenges),
            Err(e) => tracing::debug!(error = %e, "cannot read ACME challenge answers"),
        }
    }

    /// Orders under the store's lease; `Ok(false)` when another node holds it.
    async fn order_under_lease(&self) -> Result<bool, String> {
        let lease = format!("acme {}", self.config.names());
        let now = self.clock.now();
        let until = now + i64::try_from(LEASE.as_secs()).unwrap_or(600);
        if !self
            .store
            .acme_lease_take(&lease, &self.holder, now, until)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        // Another node may have finished an order just before this one took the lease.
        let fresh = self.load_stored().await;
        let result = if self.due(fresh.as_ref()) {
            tokio::time::timeout(LEASE, self.order())
                .await
                .unwrap_or_else(|_| Err("the order took longer than 10 minutes".into()))
        } else {
            Ok(())
        };
        let _ = self.store.acme_lease_release(&lease, &self.holder).await;
        result.map(|()| true)
    }

    async fn account(&self) -> Result<instant_acme::Account, String> {
        let directory = &self.config.directory;
        let context = format!("acme account {directory}");
        let builder = || instant_acme::Account::builder_with_http(Box::new(self.http.clone()));
        let stored = self
            .store
            .acme_account_get_or_insert(directory, None, self.clock.now())
            .await
            .map_err(|e| e.to_string())?;
        let sealed = match stored {
            Some(sealed) => sealed,
            None => {
                let contact = format!("mailto:{}", self.config.contact);
                let (_, credentials) = builder()
                    .create(
                        &instant_acme::NewAccount {
                            contact: &[&contact],
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("cannot create an ACME account: {e}"))?;
                let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
                let sealed = self
                    .sealer
                    .seal(&context, &json)
                    .map_err(|e| e.to_string())?;
                tracing::info!(%directory, "created an ACME account");
                // If another node stored one meanwhile, everyone uses that one.
                self.store
                    .acme_account_get_or_insert(directory, Some(&sealed), self.clock.now())
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or(sealed)
            }
        };
        let json = self
            .sealer
            .open(&context, &sealed)
            .map_err(|e| format!("the stored ACME account cannot be opened: {e}"))?;
        let credentials: instant_acme::AccountCredentials =
            serde_json::from_slice(json.expose()).map_err(|e| e.to_string())?;
        builder()
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("cannot use the ACME account: {e}"))
    }

    /// One order, from the account to the stored certificate.
    async fn order(&self) -> Result<(), String> {
        use instant_acme::{AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus};
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("the order was refused: {e}"))?;
        tracing::info!(names = %self.config.names(), challenge = self.config.challenge.name(), "ordering a certificate");
        let kind = self.config.challenge.name();
        let wanted = match self.config.challenge {
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Http01 => ChallengeType::Http01,
        };
        let mut placed: Vec<(String, String)> = Vec::new();
        let result: Result<(), String> = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| e.to_string())?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(format!("an authorization is {other:?}")),
                }
                let mut challenge = authz.challenge(wanted.clone()).ok_or_else(|| {
                    format!(
                        "the CA offers no {kind} challenge; choose another server.acme.challenge"
                    )
                })?;
                let name = challenge.identifier().to_string().to_ascii_lowercase();
                let key_auth = challenge.key_authorization();
                let (lookup, answer) = match self.config.challenge {
                    ChallengeKind::Http01 => {
                        (challenge.token.clone(), key_auth.as_str().to_owned())
                    }
                    ChallengeKind::TlsAlpn01 => (name, hex(key_auth.digest().as_ref())),
                };
                self.store
                    .acme_challenge_put(&AcmeChallenge {
                        kind: kind.to_owned(),
                        lookup: lookup.clone(),
                        answer,
                        expires_at: self.clock.now() + ANSWER_TTL,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                placed.push((kind.to_owned(), lookup));
                self.refresh_answers().await;
                // Every node reads the answers within one refresh interval.
                tokio::time::sleep(ANSWERS_EVERY + Duration::from_millis(500)).await;
                challenge.set_ready().await.map_err(|e| e.to_string())?;
            }
            let retries = instant_acme::RetryPolicy::default().timeout(Duration::from_secs(120));
            let status = order
                .poll_ready(&retries)
                .await
                .map_err(|e| e.to_string())?;
            if status != OrderStatus::Ready {
                let detail = order
                    .state()
                    .error
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                return Err(format!(
                    "the CA did not validate the order ({status:?}) {detail}"
                ));
            }
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let mut params = rcgen::CertificateParams::new(self.config.domains.clone())
                .map_err(|e| e.to_string())?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
            order
                .finalize_csr(csr.der())
                .await
                .map_err(|e| format!("finalizing the order failed: {e}"))?;
            let chain = order
                .poll_certificate(&retries)
                .await
                .map_err(|e| format!("the certificate did not arrive: {e}"))?;
            let key_pem = key.serialize_pem();
            let (_, names, not_after) = crate::tls::parse(chain.as_bytes(), key_pem.as_bytes())?;
            let stored_names = self.config.names();
            let sealed_key = self
                .sealer
                .seal(
                    &format!("acme certificate {stored_names}"),
                    key_pem.as_bytes(),
                )
                .map_err(|e| e.to_string())?;
            self.store
                .acme_certificate_put(&AcmeCertificate {
                    names: stored_names,
                    chain_pem: chain,
                    sealed_key,
                    not_after,
                    updated_at: self.clock.now_millis(),
                })
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(?names, not_after, "obtained a certificate by ACME");
            Ok(())
        }
        .await;
        for (kind, lookup) in placed {
            let _ = self
                .store
                .acme_challenge_delete(&kind, &lookup, self.clock.now())
                .await;
        }
        self.refresh_answers().await;
        result
    }
}

/// The HTTP client that talks to the ACME directory: hyper over rustls, verifying the
/// directory against the system roots or `server.acme.directory_ca_file`.
#[derive(Clone)]
struct AcmeHttp(
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<bytes::Bytes>,
    >,
);

impl AcmeHttp {
    fn new(ca_file: Option<&std::path::Path>) -> Result<Self, String> {
        let tls =
            portcullis_gateway::forward::upstream_tls(ca_file, None).map_err(|e| e.to_string())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_only()
            .enable_http1()
            .build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(AcmeHttp(client))
    }
}

impl instant_acme::HttpClient for AcmeHttp {
    fn request(
        &self,
        req: axum::http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        let sent = self.0.request(req);
        Box::pin(async move {
            let response = tokio::time::timeout(Duration::from_secs(30), sent)
                .await
                .map_err(|_| {
                    instant_acme::Error::Other(
                        "the ACME directory did not answer within 30 s".into(),
                    )
                })?
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            Ok(instant_acme::BytesResponse::from(response))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_certificate_carries_the_digest_and_is_recognised_again() {
        let digest = hex(&[7u8; 32]);
        let key = validation_certificate("app.example.com", &digest).expect("certificate");
        assert_eq!(digest_of(&key), Some(digest.clone()));
        let answers = Answers::default();
        let challenge = AcmeChallenge {
            kind: "tls-alpn-01".into(),
            lookup: "app.example.com".into(),
            answer: digest,
            expires_at: 10,
        };
        answers.set(std::slice::from_ref(&challenge));
        let first = answers.tls_alpn01("APP.example.com").expect("answer");
        answers.set(std::slice::from_ref(&challenge));
        let again = answers.tls_alpn01("app.example.com").expect("answer");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same digest keeps its certificate"
        );
        assert!(answers.tls_alpn01("other.example.com").is_none());
        assert!(validation_certificate("x.example", "abc").is_err());
        assert_eq!(unhex("0aff"), Some(vec![10, 255]));
        assert_eq!(unhex("0g"), None);
    }
}
