//! Mail delivery: a worker that drains the store's outbox through SMTP (lettre over rustls), or
//! into a directory for development.
//!
//! The outbox is the source of truth: a message is sent at least once and lost never. A worker
//! claims due messages under a lease (so several nodes share the work without sending one
//! message twice at the same time), sends, and marks each sent or schedules a retry with
//! exponential backoff; while the mail server is down messages wait, and a restarted process
//! picks them up. A message is given up only after `mail.give_up_after`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use portcullis_store::{QueuedMail, Store};
use portcullis_token::{Clock, Secret};
use tokio::sync::Notify;

/// How long a claim lasts: a worker that dies mid-batch leaves its messages to another after it.
const LEASE_SECS: i64 = 300;
/// Messages claimed at once.
const BATCH: i64 = 10;
/// How often the outbox is looked at when nothing wakes the worker (messages queued by another
/// node, retries coming due).
const POLL: Duration = Duration::from_secs(5);
/// First retry delay, doubled per attempt up to MAX_BACKOFF.
const FIRST_BACKOFF: i64 = 15;
const MAX_BACKOFF: i64 = 30 * 60;
/// Sent and given-up messages are deleted this long after (their bodies hold links).
const KEEP_SECS: i64 = 7 * 86_400;

/// How mail leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// No mail: sign-up, reset and invitations are not offered.
    None,
    Smtp,
    /// Each message written to `mail.directory` as an `.eml` file (development, `demo`).
    Directory,
}

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only to a relay on this machine (loopback), such as a local Postfix.
    None,
}

/// `[mail]`, checked.
#[derive(Clone, Debug)]
pub struct MailConfig {
    pub transport: TransportKind,
    pub from: Mailbox,
    pub smtp: Option<SmtpConfig>,
    pub directory: PathBuf,
    pub give_up_after: Duration,
}

#[derive(Clone, Debug)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret<String>>,
    /// PEM roots instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
}

enum Sender {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Directory(PathBuf),
}

impl Sender {
    fn new(config: &MailConfig) -> Result<Option<Sender>, String> {
        match config.transport {
            TransportKind::None => Ok(None),
            TransportKind::Directory => {
                std::fs::create_dir_all(&config.directory)
                    .map_err(|e| format!("cannot create {}: {e}", config.directory.display()))?;
                Ok(Some(Sender::Directory(config.directory.clone())))
            }
            TransportKind::Smtp => {
                let smtp = config
                    .smtp
                    .as_ref()
                    .ok_or("mail.transport = \"smtp\" needs mail.smtp_host")?;
                Ok(Some(Sender::Smtp(smtp_transport(smtp)?)))
            }
        }
    }

    async fn send(&self, message: Message, mail: &QueuedMail) -> Result<(), String> {
        match self {
            Sender::Smtp(t) => t.send(message).await.map(|_| ()).map_err(|e| e.to_string()),
            Sender::Directory(dir) => {
                let path = dir.join(format!("{}.eml", mail.id));
                let tmp = dir.join(format!(".{}.eml.tmp", mail.id));
                tokio::fs::write(&tmp, message.formatted())
                    .await
                    .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
                tokio::fs::rename(&tmp, &path)
                    .await
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                // Development only: where to read it. The body (its link) stays out of the log.
                tracing::info!(to = %mail.recipient, subject = %mail.subject, file = %path.display(), "mail written to the outbox directory");
                Ok(())
            }
        }
    }
}

fn smtp_transport(smtp: &SmtpConfig) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls_parameters = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(smtp.host.clone());
        if let Some(pem) = &smtp.ca_pem {
            b = b.certificate_store(CertificateStore::None);
            for cert in split_pem(pem) {
                let cert = Certificate::from_pem(&cert).map_err(|e| e.to_string())?;
                b = b.add_root_certificate(cert);
            }
        }
        b.build_rustls().map_err(|e| e.to_string())
    };
    let tls = match smtp.tls {
        SmtpTls::Starttls => Tls::Required(tls_parameters()?),
        SmtpTls::Tls => Tls::Wrapper(tls_parameters()?),
        SmtpTls::None => Tls::None,
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)));
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        b = b.credentials(Credentials::new(user.clone(), password.expose().clone()));
    }
    Ok(b.build())
}

/// The PEM blocks of a bundle, each on its own (lettre takes one certificate at a time).
fn split_pem(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END CERTIFICATE-----") {
            out.push(current.clone().into_bytes());
            current.clear();
        }
    }
    out
}

fn build_message(from: &Mailbox, mail: &QueuedMail) -> Result<Message, String> {
    let to: Mailbox = mail
        .recipient
        .parse()
        .map_err(|e| format!("the recipient address is not valid: {e}"))?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject.clone())
        .multipart(MultiPart::alternative_plain_html(
            mail.text_body.clone(),
            mail.html_body.clone(),
        ))
        .map_err(|e| e.to_string())
}

/// Starts the delivery worker (none when `mail.transport = "none"`).
pub fn spawn(
    config: MailConfig,
    store: Store,
    queued: Arc<Notify>,
    clock: Clock,
) -> Result<(), String> {
    let Some(sender) = Sender::new(&config)? else {
        return Ok(());
    };
    tokio::spawn(async move {
        let mut last_prune = 0;
        loop {
            let now = clock.now();
            if now - last_prune >= 3600 {
                last_prune = now;
                if let Err(e) = store.prune_mail(now - KEEP_SECS).await {
                    tracing::warn!(error = %e, "pruning the outbox failed");
                }
                if let Err(e) = store.prune_account_codes(now - 86_400).await {
                    tracing::warn!(error = %e, "pruning expired account codes failed");
                }
            }
            let batch = match store.claim_mail(now, LEASE_SECS, BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "the outbox cannot be read; retrying");
                    Vec::new()
                }
            };
            let full = batch.len() as i64 == BATCH;
            for mail in batch {
                deliver(&sender, &config, &store, &clock, &mail).await;
            }
            if !full {
                tokio::select! {
                    () = queued.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
    });
    Ok(())
}

async fn deliver(
    sender: &Sender,
    config: &MailConfig,
    store: &Store,
    clock: &Clock,
    mail: &QueuedMail,
) {
    let kind = mail.kind.clone();
    let result = match build_message(&config.from, mail) {
        Ok(message) => sender.send(message, mail).await,
        Err(e) => Err(e),
    };
    let now = clock.now();
    let outcome = match result {
        Ok(()) => {
            metrics::counter!("portcullis_mail_sent_total", "kind" => kind).increment(1);
            store.mail_sent(&mail.id, now).await
        }
        Err(error) => {
            let give_up_at =
                mail.created_at + i64::try_from(config.give_up_after.as_secs()).unwrap_or(i64::MAX);
            let backoff = FIRST_BACKOFF
                .saturating_mul(1_i64 << mail.attempts.clamp(0, 20))
                .min(MAX_BACKOFF);
            let retry_at = Some(now + backoff).filter(|at| *at < give_up_at);
            if retry_at.is_some() {
                metrics::counter!("portcullis_mail_retries_total", "kind" => kind).increment(1);
                tracing::warn!(id = %mail.id, attempts = mail.attempts + 1, retry_in_s = backoff, %error, "mail not sent; will retry");
            } else {
                metrics::counter!("portcullis_mail_failed_total", "kind" => kind).increment(1);
                tracing::error!(id = %mail.id, attempts = mail.attempts + 1, %error, "mail given up (mail.give_up_after passed)");
            }
            store.mail_failed(&mail.id, &error, retry_at, now).await
        }
    };
    if let Err(e) = outcome {
        // The lease runs out and the message is tried again: at least once, never lost.
        tracing::warn!(id = %mail.id, error = %e, "the outbox could not record a delivery");
    }
}

#[cfg(test)]
mod tests {
    use super::split_pem;

    #[test]
    fn bundles_split_into_certificates() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let parts = split_pem(pem);
        assert_eq!(parts.len(), 2);
        assert!(String::from_utf8_lossy(&parts[1]).contains("BBB"));
    }
}
