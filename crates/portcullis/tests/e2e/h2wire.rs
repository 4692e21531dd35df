//! A bare HTTP/2 client that writes frames exactly as told: header names and values that real
//! clients refuse to send (uppercase, CR/LF, connection headers), repeated pseudo-headers,
//! lying `content-length`, floods of resets and CONTINUATION frames. HPACK comes from the
//! `hpack` crate; the framing (RFC 9113 §4) is small enough to write here, which is the point:
//! no library between the test and the bytes on the wire.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;

/// `CANCEL`, the code browsers reset streams with.
pub(crate) const CANCEL: u32 = 0x8;
/// The code a server closes a connection with when its peer is abusive.
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// What the server did with one request.
#[derive(Debug)]
pub(crate) enum Answer {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// The stream was reset with this error code.
    Reset(u32),
    /// The connection was closed with GOAWAY and this error code.
    GoAway(u32),
    /// The connection ended without a word.
    Closed,
}

impl Answer {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Answer::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// One line about the answer, for a test's log.
    pub(crate) fn summary(&self) -> String {
        match self {
            Answer::Response { status, .. } => format!("{status}"),
            Answer::Reset(code) => format!("stream reset ({code:#x})"),
            Answer::GoAway(code) => format!("connection closed with GOAWAY ({code:#x})"),
            Answer::Closed => "connection closed".to_owned(),
        }
    }

    pub(crate) fn body(&self) -> &[u8] {
        match self {
            Answer::Response { body, .. } => body,
            _ => &[],
        }
    }

    /// Whether the server refused the request: a 4xx answer, the stream reset or the
    /// connection closed with an error, or the connection closed.
    pub(crate) fn refused(&self) -> bool {
        match self {
            Answer::Response { status, .. } => (400..500).contains(status),
            Answer::Reset(code) | Answer::GoAway(code) => *code != 0,
            Answer::Closed => true,
        }
    }
}

/// One frame as read.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) payload: Vec<u8>,
}

pub(crate) struct H2 {
    io: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    encoder: hpack::Encoder<'static>,
    decoder: hpack::Decoder<'static>,
    next: u32,
}

impl H2 {
    /// Connects to `addr` over TLS (trusting the PEM authority `ca`, sending SNI `localhost`),
    /// offers only `h2`, and sends the connection preface and an empty SETTINGS frame.
    pub(crate) async fn connect(addr: SocketAddr, ca: &str) -> H2 {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let io = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        assert_eq!(
            io.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the server chose HTTP/2"
        );
        let mut h2 = H2 {
            io,
            encoder: hpack::Encoder::new(),
            decoder: hpack::Decoder::new(),
            next: 1,
        };
        h2.io
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        h2.send(SETTINGS, 0, 0, &[]).await;
        h2
    }

    /// Writes one frame; false once the server has closed the connection.
    pub(crate) async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> bool {
        let len = u32::try_from(payload.len()).expect("frame length");
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&len.to_be_bytes()[1..]);
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await.is_ok()
    }

    /// An HPACK header block for `fields`, in order, as given.
    pub(crate) fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.encoder
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// The next client stream id.
    pub(crate) fn stream(&mut self) -> u32 {
        let id = self.next;
        self.next += 2;
        id
    }

    /// Sends a request with `fields` and, if given, `body` in one DATA frame; returns what the
    /// server did with it.
    pub(crate) async fn request(&mut self, fields: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
        let id = self.stream();
        let block = self.block(fields);
        let flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
        if !self.send(HEADERS, flags, id, &block).await {
            return Answer::Closed;
        }
        if let Some(body) = body
            && !self.send(DATA, END_STREAM, id, body).await
        {
            return Answer::Closed;
        }
        self.answer(id).await
    }

    /// Reads one frame; `None` when the connection has ended.
    pub(crate) async fn read_frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads frames, answering SETTINGS and PING, until stream `id` ends (or is reset, or the
    /// connection goes away).
    pub(crate) async fn answer(&mut self, id: u32) -> Answer {
        let mut status = None;
        let mut headers = Vec::new();
        let mut body = Vec::new();
        let mut block = Vec::new();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.read_frame())
                .await
                .expect("the server answers within 10 s");
            let Some(frame) = frame else {
                return Answer::Closed;
            };
            let code = |at: usize| {
                frame
                    .payload
                    .get(at..at + 4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    self.send(SETTINGS, ACK, 0, &[]).await;
                }
                PING if frame.flags & ACK == 0 => {
                    self.send(PING, ACK, 0, &frame.payload).await;
                }
                GOAWAY => {
                    let (last, error) = (code(0) & 0x7fff_ffff, code(4));
                    if error != 0 || last < id {
                        return Answer::GoAway(error);
                    }
                }
                RST_STREAM if frame.stream == id => return Answer::Reset(code(0)),
                HEADERS | CONTINUATION if frame.stream == id => {
                    assert_eq!(frame.flags & 0x28, 0, "no padding or priority from servers");
                    block.extend_from_slice(&frame.payload);
                    if frame.flags & END_HEADERS != 0 {
                        let fields = self.decoder.decode(&block).expect("HPACK from the server");
                        block.clear();
                        let fields: Vec<(String, String)> = fields
                            .into_iter()
                            .map(|(n, v)| {
                                (
                                    String::from_utf8_lossy(&n).into_owned(),
                                    String::from_utf8_lossy(&v).into_owned(),
                                )
                            })
                            .collect();
                        let code = fields
                            .iter()
                            .find(|(n, _)| n == ":status")
                            .and_then(|(_, v)| v.parse::<u16>().ok());
                        // 1xx answers come before the final one; trailers after it.
                        if status.is_none() && code.is_some_and(|c| c >= 200) {
                            status = code;
                            headers = fields;
                        }
                    }
                    if frame.flags & END_STREAM != 0 {
                        break;
                    }
                }
                DATA if frame.stream == id => {
                    body.extend_from_slice(&frame.payload);
                    if !frame.payload.is_empty() {
                        let n = u32::try_from(frame.payload.len())
                            .expect("len")
                            .to_be_bytes();
                        self.send(WINDOW_UPDATE, 0, 0, &n).await;
                        self.send(WINDOW_UPDATE, 0, id, &n).await;
                    }
                    if frame.flags & END_STREAM != 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        Answer::Response {
            status: status.expect("a final status"),
            headers,
            body,
        }
    }
}

/// The pseudo-headers of a request for `path` with `method`, on `authority`.
pub(crate) fn pseudo<'a>(
    method: &'a str,
    path: &'a str,
    authority: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", method),
        (":scheme", "https"),
        (":authority", authority),
        (":path", path),
    ]
}
