//! Every request gets an id and a place in a trace, at the edge, before any service sees it:
//!
//! - `X-Request-Id`: kept when a trusted proxy (`server.trusted_proxies`) sent a well-formed one
//!   (1–128 of `A-Z a-z 0-9 - _ . : /`), otherwise a new one (UUIDv7's layout: time-ordered, so
//!   logs sort). The request carries it on (so the upstream gets it), the answer returns it, and every
//!   log line written while the request is served names it (the `request` span).
//! - W3C `traceparent` (`00-<trace>-<parent>-<flags>`): a valid one is continued — the same trace
//!   id, this hop's own span id as the upstream's parent — and an invalid or missing one starts a
//!   new trace. `tracestate` passes on only with a valid `traceparent`.

use axum::http::{HeaderMap, HeaderValue, header::HeaderName};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// What the edge decided for one request.
pub struct RequestIds {
    pub request_id: HeaderValue,
    pub trace_id: TraceId,
}

/// The 32 lowercase hex digits of a trace id (no allocation per request).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn as_str(&self) -> &str {
        // Only ever filled with hex digits.
        std::str::from_utf8(&self.0).unwrap_or("-")
    }

    /// OpenTelemetry's id as it prints it (32 lowercase hex digits); anything else reads as
    /// all zeros.
    pub fn from_otel(s: &str) -> TraceId {
        let mut id = [b'0'; 32];
        if lower_hex(s, 32) {
            id.copy_from_slice(s.as_bytes());
        }
        TraceId(id)
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for TraceId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

fn well_formed_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/".contains(c))
}

/// Writes `bytes` as lowercase hex into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// A new request id: UUIDv7's layout (48 bits of Unix milliseconds, then random bits, so ids
/// sort by time) in 32 hex digits; `random` from the thread's generator (no system call per
/// request).
fn new_id(random: &[u8; 10]) -> [u8; 32] {
    let ms = std::time::UNIX_EPOCH
        .elapsed()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[6..].copy_from_slice(random);
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70 | (bytes[6] & 0x0f); // version 7
    bytes[8] = 0x80 | (bytes[8] & 0x3f); // the RFC 9562 variant
    let mut out = [0u8; 32];
    hex_into(&bytes, &mut out);
    out
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// `(trace id, flags)` of a valid version-00 `traceparent` (all-zero ids are invalid).
fn parse_traceparent(v: &HeaderValue) -> Option<([u8; 32], [u8; 2])> {
    let s = v.to_str().ok()?;
    let mut parts = s.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || version != "00"
        || !lower_hex(trace, 32)
        || !lower_hex(parent, 16)
        || !lower_hex(flags, 2)
        || trace.bytes().all(|c| c == b'0')
        || parent.bytes().all(|c| c == b'0')
    {
        return None;
    }
    Some((
        trace.as_bytes().try_into().ok()?,
        flags.as_bytes().try_into().ok()?,
    ))
}

/// Sets the request's `X-Request-Id` and `traceparent` (see the module doc); `trusted`: the
/// direct peer is a trusted proxy. With traces exported the trace is OpenTelemetry's
/// ([`crate::otel::continue_trace`]): only the id is set here, and `trace_id` is all zeros.
/// Per request: one draw from the thread's generator and one buffer per header set.
pub fn assign(headers: &mut HeaderMap, trusted: bool, exported: bool) -> RequestIds {
    // Random bits for the request id (10), this hop's span id (8) and a new trace id (16).
    let mut random = [0u8; 34];
    rand::fill(&mut random);
    let (for_id, rest) = random.split_at(10);
    let (for_span, for_trace) = rest.split_at(8);
    let request_id = match headers.get(&REQUEST_ID) {
        Some(v)
            if trusted && well_formed_id(v) && headers.get_all(&REQUEST_ID).iter().count() == 1 =>
        {
            v.clone()
        }
        _ => {
            let id = new_id(for_id.try_into().unwrap_or(&[0; 10]));
            HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("-"))
        }
    };
    headers.insert(REQUEST_ID, request_id.clone());
    if exported {
        return RequestIds {
            request_id,
            trace_id: TraceId([b'0'; 32]),
        };
    }
    let incoming = (headers.get_all(&TRACEPARENT).iter().count() == 1)
        .then(|| headers.get(&TRACEPARENT).and_then(parse_traceparent))
        .flatten();
    let (trace_id, flags) = match incoming {
        Some(t) => t,
        None => {
            headers.remove(&TRACESTATE);
            let mut trace = [0u8; 32];
            hex_into(for_trace, &mut trace);
            (trace, *b"00")
        }
    };
    // 00-<32 hex>-<16 hex>-<2 hex>
    let mut value = [b'-'; 55];
    value[..2].copy_from_slice(b"00");
    value[3..35].copy_from_slice(&trace_id);
    hex_into(for_span, &mut value[36..52]);
    value[53..].copy_from_slice(&flags);
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(TRACEPARENT, v);
    }
    RequestIds {
        request_id,
        trace_id: TraceId(trace_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn a_request_id_is_kept_only_from_a_trusted_proxy_and_only_when_well_formed() {
        let mut h = headers(&[("x-request-id", "lb-1234")]);
        assert_eq!(assign(&mut h, true, false).request_id, "lb-1234");
        let mut h = headers(&[("x-request-id", "lb-1234")]);
        let ids = assign(&mut h, false, false);
        assert_ne!(ids.request_id, "lb-1234", "a client cannot choose its id");
        assert_eq!(h["x-request-id"], ids.request_id);
        assert_eq!(ids.request_id.len(), 32);
        let parsed = uuid::Uuid::try_parse(ids.request_id.to_str().expect("ascii")).expect("uuid");
        assert_eq!(parsed.get_version_num(), 7);
        for bad in ["a b", "x\"y", &"a".repeat(129), "<script>"] {
            let mut h = headers(&[("x-request-id", bad)]);
            assert_ne!(assign(&mut h, true, false).request_id, bad);
        }
        let mut h = headers(&[("x-request-id", "a"), ("x-request-id", "b")]);
        let ids = assign(&mut h, true, false);
        assert!(ids.request_id != "a" && ids.request_id != "b");
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
    }

    #[test]
    fn a_valid_trace_is_continued_and_anything_else_restarted() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut h = headers(&[("traceparent", parent), ("tracestate", "congo=t61rcWkgMzE")]);
        let ids = assign(&mut h, false, false);
        assert_eq!(ids.trace_id, "0af7651916cd43dd8448eb211c80319c");
        let sent = h["traceparent"].to_str().expect("ascii");
        assert!(sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(sent.ends_with("-01"));
        assert!(!sent.contains("b7ad6b7169203331"), "this hop's own span id");
        assert_eq!(h["tracestate"], "congo=t61rcWkgMzE");
        for bad in [
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "garbage",
        ] {
            let mut h = headers(&[("traceparent", bad), ("tracestate", "x=y")]);
            let ids = assign(&mut h, false, false);
            assert_ne!(ids.trace_id, "0af7651916cd43dd8448eb211c80319c", "{bad}");
            assert!(lower_hex(ids.trace_id.as_str(), 32));
            assert!(!h.contains_key("tracestate"), "{bad}");
            assert!(parse_traceparent(&h["traceparent"]).is_some());
        }
    }
}
