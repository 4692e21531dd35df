//! An SMTP server for the tests (RFC 5321 submission, enough of it for a real client): EHLO,
//! STARTTLS with a certificate from the test CA, AUTH PLAIN/LOGIN with one account, MAIL, RCPT,
//! DATA with dot-unstuffing, RSET, NOOP, QUIT. It keeps what it receives, and can be stopped and
//! started again on the same port to play a mail-server outage.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

pub const SMTP_USER: &str = "portcullis";
pub const SMTP_PASSWORD: &str = "smtp-secret-for-tests";

/// One message as delivered.
#[derive(Clone, Debug)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent (headers and MIME body).
    pub raw: String,
    /// Whether the session was encrypted (STARTTLS) and authenticated when it was sent.
    pub tls: bool,
    pub authenticated: bool,
}

impl Received {
    fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(self.raw.as_bytes())
            .expect("a MIME message")
    }

    pub fn subject(&self) -> String {
        self.parsed().subject().unwrap_or_default().to_owned()
    }

    /// The plain-text part, decoded.
    pub fn text(&self) -> String {
        self.parsed()
            .body_text(0)
            .map(|t| t.into_owned())
            .unwrap_or_default()
    }

    /// The HTML part, decoded.
    pub fn html(&self) -> String {
        self.parsed()
            .body_html(0)
            .map(|t| t.into_owned())
            .unwrap_or_default()
    }

    /// The first URL in the text part starting with `prefix`.
    pub fn link(&self, prefix: &str) -> Option<String> {
        let text = self.text();
        let at = text.find(prefix)?;
        let rest = &text[at..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '<' || c == '"')
            .unwrap_or(rest.len());
        Some(rest[..end].to_owned())
    }
}

/// The server.
pub struct Smtp {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    acceptor: tokio_rustls::TlsAcceptor,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Smtp {
    /// Starts on a free port with a certificate for `localhost`/`127.0.0.1` from `ca`, files in
    /// `dir`.
    pub async fn start(ca: &crate::tls::Ca, dir: &Path) -> Smtp {
        use rustls_pki_types::pem::PemObject;
        let (chain, key, _) = ca.leaf(dir, "smtp", &["localhost", "127.0.0.1"]);
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&chain)
            .expect("chain")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut smtp = Smtp {
            addr: listener.local_addr().expect("addr"),
            received: Arc::new(Mutex::new(Vec::new())),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            task: None,
        };
        smtp.serve(listener);
        smtp
    }

    fn serve(&mut self, listener: TcpListener) {
        let received = self.received.clone();
        let acceptor = self.acceptor.clone();
        self.task = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let received = received.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = session(stream, acceptor, received).await;
                });
            }
        }));
    }

    /// Stops listening (the port refuses connections until [`Smtp::resume`]).
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        let started = Instant::now();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(started.elapsed() < Duration::from_secs(10), "rebind: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.serve(listener);
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    /// Waits for a message to `to` whose subject contains `subject`, beyond the first `skip`
    /// such messages.
    pub async fn wait_for(&self, to: &str, subject: &str, timeout: Duration) -> Received {
        let started = Instant::now();
        loop {
            let found = self
                .received
                .lock()
                .expect("lock")
                .iter()
                .find(|m| {
                    m.to.iter().any(|t| t.eq_ignore_ascii_case(to)) && m.subject().contains(subject)
                })
                .cloned();
            if let Some(m) = found {
                return m;
            }
            assert!(
                started.elapsed() < timeout,
                "no mail to {to} about {subject:?} within {timeout:?}; received: {:?}",
                self.received
                    .lock()
                    .expect("lock")
                    .iter()
                    .map(|m| (m.to.clone(), m.subject()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Removes and returns everything received so far.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().expect("lock"))
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.stop();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn session(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    received: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let mut io: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
    let mut tls = false;
    let mut authenticated = false;
    let mut from = String::new();
    let mut to = Vec::new();
    io.get_mut()
        .write_all(b"220 test-smtp ESMTP ready\r\n")
        .await?;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            let mut r = String::from("250-test-smtp\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n");
            if !tls {
                r.push_str("250-STARTTLS\r\n");
            }
            r.push_str("250 AUTH PLAIN LOGIN\r\n");
            r
        } else if upper == "STARTTLS" && !tls {
            io.get_mut().write_all(b"220 go ahead\r\n").await?;
            let plain = io.into_inner();
            // The only Io before TLS is the TCP stream; wrap whatever it is.
            let upgraded = acceptor.accept(plain).await?;
            io = BufReader::new(Box::new(upgraded));
            tls = true;
            continue;
        } else if let Some(rest) = upper.strip_prefix("AUTH PLAIN") {
            let arg = if rest.trim().is_empty() {
                io.get_mut().write_all(b"334 \r\n").await?;
                let mut l = String::new();
                io.read_line(&mut l).await?;
                l.trim().to_owned()
            } else {
                command[10..].trim().to_owned()
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(arg)
                .unwrap_or_default();
            let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
            if parts.len() == 3
                && parts[1] == SMTP_USER.as_bytes()
                && parts[2] == SMTP_PASSWORD.as_bytes()
            {
                authenticated = true;
                "235 authenticated\r\n".into()
            } else {
                "535 bad credentials\r\n".into()
            }
        } else if upper.starts_with("AUTH LOGIN") {
            let b64 = base64::engine::general_purpose::STANDARD;
            io.get_mut().write_all(b"334 VXNlcm5hbWU6\r\n").await?;
            let mut user = String::new();
            io.read_line(&mut user).await?;
            io.get_mut().write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
            let mut pass = String::new();
            io.read_line(&mut pass).await?;
            if b64.decode(user.trim()).unwrap_or_default() == SMTP_USER.as_bytes()
                && b64.decode(pass.trim()).unwrap_or_default() == SMTP_PASSWORD.as_bytes()
            {
                authenticated = true;
                "235 authenticated\r\n".into()
            } else {
                "535 bad credentials\r\n".into()
            }
        } else if upper.starts_with("MAIL FROM:") {
            from = command[10..].trim().trim_matches(['<', '>']).to_owned();
            from = from
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_matches(['<', '>'])
                .to_owned();
            to.clear();
            "250 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            to.push(command[8..].trim().trim_matches(['<', '>']).to_owned());
            "250 ok\r\n".into()
        } else if upper == "DATA" {
            io.get_mut()
                .write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                .await?;
            let mut data = String::new();
            loop {
                let mut l = String::new();
                if io.read_line(&mut l).await? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" || l == ".\n" {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
            }
            received.lock().expect("lock").push(Received {
                from: from.clone(),
                to: std::mem::take(&mut to),
                raw: data,
                tls,
                authenticated,
            });
            "250 queued\r\n".into()
        } else if upper == "RSET" {
            to.clear();
            "250 ok\r\n".into()
        } else if upper == "NOOP" {
            "250 ok\r\n".into()
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 not implemented\r\n".into()
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}
