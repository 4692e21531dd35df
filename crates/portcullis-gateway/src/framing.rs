//! Stage 0, message framing: what must hold before anything reads the request, because two
//! parsers could otherwise disagree about where it ends or whom it is for (RFC 9112 §3.2, §6.3).

use axum::body::Body;
use axum::http::{Request, header};

use crate::reject::Reject;

/// The most options a request's `Connection` headers may name together.
const MAX_CONNECTION_OPTIONS: usize = 16;

/// Refuses ambiguous framing, an unreasonable `Connection` header and a missing, repeated or
/// malformed `Host`. Every refusal closes the connection.
pub(crate) fn check(req: &Request<Body>) -> Result<(), Reject> {
    // hyper already refuses conflicting Content-Length values; a request with both
    // Content-Length and Transfer-Encoding, or a coding other than chunked, is how requests are
    // smuggled past a proxy (RFC 9112 §6.3).
    let te = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .count();
    if te > 0 {
        let only_chunked = te == 1
            && req
                .headers()
                .get(header::TRANSFER_ENCODING)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        if !only_chunked || req.headers().contains_key(header::CONTENT_LENGTH) {
            return Err(Reject::Framing(
                "ambiguous message framing (Content-Length with Transfer-Encoding)",
            ));
        }
    }
    // A real `Connection` header names a few options; thousands of them would make header
    // hygiene (each header checked against each option) the attacker's lever on our CPU.
    let options: usize = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .map(|v| v.as_bytes().split(|b| *b == b',').count())
        .sum();
    if options > MAX_CONNECTION_OPTIONS {
        return Err(Reject::Framing("too many options in the Connection header"));
    }
    // An HTTP/1.1 request carries exactly one Host, and a valid one. Two Hosts are how a request
    // means one thing to the gateway and another to the backend.
    if !valid_host(req) {
        return Err(Reject::Framing(
            "the request needs exactly one valid Host header",
        ));
    }
    Ok(())
}

/// Exactly one `Host` (none is allowed before HTTP/1.1), holding a bare `host[:port]`.
fn valid_host(req: &Request<Body>) -> bool {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => {
            let v = h.as_bytes();
            !v.is_empty()
                && !v.contains(&b'@')
                && axum::http::uri::Authority::try_from(v)
                    .is_ok_and(|a| a.as_str().len() == v.len())
        }
        (None, None) => req.version() < axum::http::Version::HTTP_11,
        _ => false,
    }
}
