//! Request-target canonicalization: the one parse of the path that routing, authorization,
//! logging and forwarding all use.
//!
//! Anything a lenient backend might read differently from us is rejected (400) rather than
//! normalized: percent-encoded `.` `/` `\` `;` `%` `?` `#`, NUL and control characters, `//`,
//! `.` and `..` segments, `;` (path parameters), backslashes, segments ending in `.` or a space
//! (Windows and some frameworks drop those), invalid percent-encoding or UTF-8, and any target that
//! is not origin-form, and any non-ASCII text that Unicode compatibility folding (NFKC) or a
//! Windows "best-fit" code-page conversion would turn into other characters (fullwidth `／` `．`
//! `ａｄｍｉｎ`, `∕`, `¥`…). What remains has exactly one meaning, so the backend routes the
//! forwarded path to the same handler we authorized.

use std::fmt::Write;

/// Why a target was rejected. Every variant is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the request target is not a path (origin-form)")]
    NotOriginForm,
    #[error("the path contains an empty segment (//)")]
    EmptySegment,
    #[error("the path contains a dot segment")]
    DotSegment,
    #[error("the path contains a forbidden character")]
    ForbiddenCharacter,
    #[error("the path contains a forbidden percent-encoded character")]
    ForbiddenEncoding,
    #[error("the path has invalid percent-encoding")]
    BadEncoding,
    #[error("a path segment ends in a dot or a space")]
    BadSegmentEnd,
    #[error("the path is too long")]
    TooLong,
    #[error(
        "the path contains a character that Unicode compatibility folding changes (such as a fullwidth letter, solidus or full stop)"
    )]
    FoldableCharacter,
}

/// Longest path accepted, in bytes.
pub const MAX_PATH: usize = 4096;

/// A canonical request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    /// Decoded, original letter case: for logging.
    pub decoded: String,
    /// Decoded and lower-cased: for routing and authorization.
    pub lower: String,
    /// Re-encoded from `decoded`: what is forwarded.
    pub encoded: String,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Characters that never appear in a path we accept, raw or decoded.
fn forbidden(b: u8) -> bool {
    b < 0x20 || b == 0x7f || b == b'\\' || b == b';'
}

/// Characters that may appear raw but never percent-encoded (their encoded form is how path
/// confusion attacks hide them).
fn forbidden_encoded(b: u8) -> bool {
    forbidden(b) || matches!(b, b'.' | b'/' | b'%' | b'?' | b'#')
}

/// Stage 1: the canonical path of a request target, or the refusal (400) of one that is not an
/// origin-form path with exactly one meaning.
pub(crate) fn target(uri: &axum::http::Uri) -> Result<CanonicalPath, crate::reject::Reject> {
    let refuse = |reason: String| crate::reject::Reject::Target {
        reason,
        path: uri.path().to_owned(),
    };
    if uri.scheme().is_some() || uri.authority().is_some() {
        return Err(refuse("the request target must be a path".into()));
    }
    canonicalize(uri.path()).map_err(|e| refuse(e.to_string()))
}

/// Canonicalizes the path of an origin-form request target (the query is handled separately).
pub fn canonicalize(path: &str) -> Result<CanonicalPath, Rejection> {
    if path.len() > MAX_PATH {
        return Err(Rejection::TooLong);
    }
    if !path.starts_with('/') {
        return Err(Rejection::NotOriginForm);
    }
    let raw = path.as_bytes();
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(Rejection::BadEncoding);
            };
            let v = h * 16 + l;
            if forbidden_encoded(v) {
                return Err(Rejection::ForbiddenEncoding);
            }
            decoded.push(v);
            i += 3;
        } else {
            if forbidden(b) || b == b'#' || b == b'?' || b == b' ' {
                return Err(Rejection::ForbiddenCharacter);
            }
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| Rejection::BadEncoding)?;
    // Segment rules, on the decoded path (a `/` can only come from the raw path here).
    // Counted once: counting per segment made a path of many short segments quadratic.
    let segments = decoded.split('/').count();
    for (n, seg) in decoded.split('/').enumerate().skip(1) {
        let last = n == segments - 1;
        if seg.is_empty() {
            if last {
                continue; // a trailing slash is fine
            }
            return Err(Rejection::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(Rejection::DotSegment);
        }
        if seg.ends_with('.')
            || seg.ends_with(' ')
            || seg.chars().any(|c| c.is_control() || c == '\u{feff}')
        {
            return Err(Rejection::BadSegmentEnd);
        }
    }
    if !decoded.is_ascii() && foldable(&decoded) {
        return Err(Rejection::FoldableCharacter);
    }
    let lower = decoded.to_lowercase();
    let encoded = encode(&decoded);
    Ok(CanonicalPath {
        decoded,
        lower,
        encoded,
    })
}

/// Characters a Windows best-fit conversion (or a lenient framework) maps onto path syntax although
/// NFKC leaves them alone: division and fraction slashes, set minus, big solidi, yen and won signs
/// (the backslash of Japanese and Korean code pages), the one-dot leader.
const BEST_FIT: &[char] = &[
    '\u{2215}', '\u{2044}', '\u{2216}', '\u{29F5}', '\u{29F8}', '\u{29F9}', '\u{00A5}', '\u{20A9}',
    '\u{2024}', '\u{FE52}', '\u{3002}', '\u{FF61}',
];

/// Whether a backend that applies NFKC (Python's and Java's normalizers, IIS, some routers) or a
/// best-fit conversion could read this text differently: fullwidth `ａｄｍｉｎ` would become `admin`
/// past a policy that saw another word, `／` a separator, `．．` a dot segment.
fn foldable(text: &str) -> bool {
    use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};
    text.chars().any(|c| BEST_FIT.contains(&c))
        || match is_nfkc_quick(text.chars()) {
            IsNormalized::Yes => false,
            IsNormalized::No => true,
            IsNormalized::Maybe => !text.nfkc().eq(text.chars()),
        }
}

/// Percent-encodes a decoded path for forwarding: unreserved characters and the sub-delims a
/// path may carry stay as they are, everything else is `%XX` (upper-case hex).
pub fn encode(decoded: &str) -> String {
    let mut out = String::with_capacity(decoded.len());
    for &b in decoded.as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,=:@".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepted_paths() {
        let c = canonicalize("/api/Orders/7").expect("ok");
        assert_eq!(
            (c.decoded.as_str(), c.lower.as_str(), c.encoded.as_str()),
            ("/api/Orders/7", "/api/orders/7", "/api/Orders/7")
        );
        assert_eq!(
            canonicalize("/files/my%20doc.pdf").expect("ok").decoded,
            "/files/my doc.pdf"
        );
        assert_eq!(
            canonicalize("/files/my%20doc.pdf").expect("ok").encoded,
            "/files/my%20doc.pdf"
        );
        assert_eq!(
            canonicalize("/%41pi").expect("ok").lower,
            "/api",
            "unreserved encodings decode"
        );
        assert_eq!(canonicalize("/caf%C3%A9").expect("ok").decoded, "/café");
        assert!(canonicalize("/").is_ok());
        assert!(canonicalize("/admin/").is_ok());
    }

    #[test]
    fn dotdot_segment_is_400() {
        for p in [
            "/api/../admin",
            "/api/./admin",
            "/..",
            "/api/%2e%2e/admin",
            "/api/%2E%2E/admin",
            "/api/.%2e/admin",
            "/api/%2e/admin",
        ] {
            assert!(canonicalize(p).is_err(), "{p}");
        }
    }

    #[test]
    fn encoded_separators_and_specials_are_400() {
        for p in [
            "/api%2fadmin",
            "/api%2Fadmin",
            "/api%5cadmin",
            "/api%5Cadmin",
            "/api\\admin",
            "/api;jsessionid=1/admin",
            "/api%3bx",
            "/api%00",
            "/api%0a",
            "/a%25%32%65",
            "/a%252e%252e/admin",
            "/a%3fb",
            "/a%23b",
            "/a%zz",
            "/a%2",
            "/a%C3",
            "/a%FF",
        ] {
            assert!(canonicalize(p).is_err(), "{p}");
        }
    }

    #[test]
    fn text_that_compatibility_folding_changes_is_400() {
        for p in [
            "/api\u{FF0F}admin/x",         // fullwidth solidus
            "/api/%EF%BC%8Fadmin",         // the same, percent-encoded
            "/api/\u{FF0E}\u{FF0E}/admin", // fullwidth full stops: a dot segment after NFKC
            "/api/%EF%BC%8E%EF%BC%8E/admin",
            "/api/\u{FF41}dmin/x",    // fullwidth letter: `admin` after NFKC
            "/api/\u{FF3C}admin",     // fullwidth reverse solidus
            "/api/a\u{2215}admin",    // division slash (best-fit `/`)
            "/api/a\u{00A5}admin",    // yen sign (backslash in code page 932)
            "/api/\u{FB01}le",        // the ligature `fi`
            "/api/x\u{2024}\u{2024}", // one-dot leaders
            "/api/\u{2460}",          // circled digit one
        ] {
            assert_eq!(
                canonicalize(p),
                Err(Rejection::FoldableCharacter),
                "{}",
                p.escape_unicode()
            );
        }
        for p in [
            "/caf%C3%A9",
            "/docs/\u{65E5}\u{672C}\u{8A9E}",
            "/\u{00FC}ber",
            "/\u{0430}pi",
        ] {
            assert!(canonicalize(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn empty_segments_and_lenient_endings_are_400() {
        for p in [
            "//admin",
            "/api//admin",
            "/admin.",
            "/admin./x",
            "/admin%20",
            "/admin%20/x",
            "/admin%2e",
            "*",
            "http://evil/admin",
            "admin",
            "",
        ] {
            assert!(canonicalize(p).is_err(), "{p}");
        }
    }

    /// What a lenient backend does with a path: decode until stable, fold compatibility
    /// characters (NFKC) and best-fit slashes, turn `\` into `/`, drop `;params`, collapse `//`,
    /// resolve dot segments, trim trailing dots and spaces, fold case.
    fn lenient(path: &str) -> String {
        use unicode_normalization::UnicodeNormalization;
        let mut p = path.to_owned();
        for _ in 0..3 {
            p = percent_decode_lossy(&p);
        }
        let p: String = p.nfkc().collect();
        let p = p
            .replace(['\u{2215}', '\u{2044}'], "/")
            .replace(['\\', '\u{00A5}'], "/");
        let mut out: Vec<String> = Vec::new();
        for seg in p.split('/') {
            let seg = seg.split(';').next().unwrap_or("");
            let seg = seg.trim_end_matches(['.', ' ']);
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s.to_lowercase()),
            }
        }
        format!("/{}", out.join("/"))
    }

    fn percent_decode_lossy(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                )
            {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A route table like the gateway's: the most specific prefix wins.
    fn route(path: &str) -> &'static str {
        let p = path.trim_end_matches('/');
        let p = if p.is_empty() { "/" } else { p };
        for (prefix, name) in [
            ("/api/admin", "admin-api"),
            ("/admin", "admin-pages"),
            ("/api", "api"),
        ] {
            if p == prefix || p.starts_with(&format!("{prefix}/")) {
                return name;
            }
        }
        "public"
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "/",
            "api",
            "admin",
            "API",
            "Admin",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%5c",
            "%25",
            "%20",
            "%41",
            ";",
            "\\",
            "x",
            " ",
            "%00",
            "%C3%A9",
            "orders",
            // Non-ASCII a folding backend turns into path syntax or ASCII letters.
            "\u{FF0F}",
            "%EF%BC%8F",
            "\u{FF0E}",
            "%EF%BC%8E",
            "\u{FF41}dmin",
            "\u{FF21}PI",
            "\u{2215}",
            "\u{00A5}",
            "\u{FF3C}",
            "\u{00E9}",
            "e\u{0301}",
            "\u{212A}",
        ]);
        prop::collection::vec(atoms, 1..8).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// An accepted path is canonical: canonicalizing what we forward gives the same result.
        #[test]
        fn canonical_is_a_fixed_point(path in path_strategy()) {
            if let Ok(c) = canonicalize(&path) {
                let again = canonicalize(&c.encoded);
                prop_assert_eq!(again, Ok(c));
            }
        }

        /// For every accepted path, our route is the route a lenient backend would pick.
        #[test]
        fn accepted_paths_route_like_a_lenient_backend(path in path_strategy()) {
            if let Ok(c) = canonicalize(&path) {
                prop_assert_eq!(route(&c.lower), route(&lenient(&path)), "path {:?} canonical {:?}", path, c.lower);
            }
        }
    }
}
