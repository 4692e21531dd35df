//! Header hygiene: what a client may not send upstream (hop-by-hop, identity and rewrite headers
//! of every gateway in any spelling, our cookies), what the gateway sets instead (forwarding and
//! identity headers), and what an answer on a protected route may tell caches.

use std::net::IpAddr;
use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};

use portcullis_token::cookie::CookiePolicy;

use crate::authn::Identity;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and proxy credentials: never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Headers a client could use to make the backend see another path, method, host or address.
const UNTRUSTED: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-prefix",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-client-ip",
    "true-client-ip",
    // Path rewrites other proxies record (a backend may route on them).
    "x-replaced-path",
    "x-envoy-original-path",
    "x-envoy-original-url",
    "x-original-path",
    "x-original-uri",
    "x-original-host",
    "x-original-forwarded-for",
    // Identity headers other gateways and auth proxies set, which backends written for them
    // trust: oauth2-proxy, Authelia, Apache/nginx auth modules, Kong, Pomerium, Azure App
    // Service, AWS ALB, Cloudflare Access and the like.
    "x-remote-user",
    "x-remote-email",
    "x-remote-name",
    "x-remote-groups",
    "x-remote-group",
    "remote-user",
    "remote-email",
    "remote-name",
    "remote-groups",
    "x-user",
    "x-user-id",
    "x-user-name",
    "x-user-email",
    "x-user-groups",
    "x-user-roles",
    "x-username",
    "x-email",
    "x-preferred-username",
    "x-groups",
    "x-roles",
    "x-userinfo",
    "x-jwt-payload",
    "x-jwt-assertion",
    "x-id-token",
    "x-access-token",
    "x-anonymous-consumer",
    "x-pomerium-jwt-assertion",
];

/// Prefixes of the same families (every header whose name starts so is removed).
const UNTRUSTED_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-auth-",
    "x-auth-request-",
    "x-authenticated-",
    "x-consumer-",
    "x-credential-",
    "x-amzn-oidc-",
    "x-ms-client-principal",
    "x-ms-token-",
    "cf-access-",
    "x-goog-authenticated-",
    "x-pomerium-claim-",
];

/// A header-name pattern of `gateway.strip_request_headers`: a name, or a prefix (`X-Corp-*`),
/// normalized (lower case, `-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderPattern {
    Name(String),
    Prefix(String),
}

/// An entry of `gateway.strip_request_headers` that is not a header name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a header name (letters, digits and - _ . , with * only at the end)")]
pub struct NotAHeaderName(pub String);

/// Parses `gateway.strip_request_headers`: comma-separated header names, `*` ending a prefix.
pub fn parse_header_list(text: &str) -> Result<Vec<HeaderPattern>, NotAHeaderName> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, prefix) = match item.strip_suffix('*') {
            Some(p) => (p, true),
            None => (item, false),
        };
        if name.is_empty() || HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(NotAHeaderName(item.to_owned()));
        }
        let name = normalized(name);
        out.push(if prefix {
            HeaderPattern::Prefix(name)
        } else {
            HeaderPattern::Name(name)
        });
    }
    Ok(out)
}

/// A header name as a lenient backend may read it: lower case, `_` and `.` as `-`.
fn normalized(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// `name` equals `target` (lower case, `-`) as a lenient backend reads it.
fn same_header(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name
            .bytes()
            .zip(target.bytes())
            .all(|(a, b)| norm_byte(a) == b)
}

/// `name` starts with `prefix` (lower case, `-`) as a lenient backend reads it.
fn header_starts_with(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name
            .bytes()
            .zip(prefix.bytes())
            .all(|(a, b)| norm_byte(a) == b)
}

fn norm_byte(b: u8) -> u8 {
    match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

/// The names a client may never send upstream, looked up by length, and the first bytes of
/// [`UNTRUSTED_PREFIXES`]: a header is compared with the few names of its own length and, only
/// when its first byte allows, with the prefixes — not with all eighty.
struct Denied {
    by_length: Vec<Vec<&'static str>>,
    prefix_first: [bool; 256],
}

static DENIED: LazyLock<Denied> = LazyLock::new(|| {
    let mut by_length: Vec<Vec<&'static str>> = Vec::new();
    let names = HOP_BY_HOP
        .iter()
        .chain(UNTRUSTED)
        .chain(&["authorization", "http2-settings"]);
    for &name in names {
        if by_length.len() <= name.len() {
            by_length.resize(name.len() + 1, Vec::new());
        }
        by_length[name.len()].push(name);
    }
    let mut prefix_first = [false; 256];
    for p in UNTRUSTED_PREFIXES {
        prefix_first[usize::from(p.as_bytes()[0])] = true;
    }
    Denied {
        by_length,
        prefix_first,
    }
});

/// Whether a client-sent header must be dropped before forwarding. (No allocation: this runs
/// for every header of every request.)
fn strip(name: &str, connection_listed: &[String], extra: &[HeaderPattern]) -> bool {
    let denied = &*DENIED;
    let first = name.as_bytes().first().map_or(0, |&b| norm_byte(b));
    denied
        .by_length
        .get(name.len())
        .is_some_and(|names| names.iter().any(|h| same_header(name, h)))
        || denied.prefix_first[usize::from(first)]
            && UNTRUSTED_PREFIXES
                .iter()
                .any(|p| header_starts_with(name, p))
        || connection_listed.iter().any(|c| same_header(name, c))
        || extra.iter().any(|p| match p {
            HeaderPattern::Name(n) => same_header(name, n),
            HeaderPattern::Prefix(n) => header_starts_with(name, n),
        })
}

/// Removes portcullis' own cookies from a Cookie header value; `None` when nothing is left.
fn without_our_cookies(value: &str, cookies: &CookiePolicy) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| !cookies.is_ours(c.split('=').next().unwrap_or_default().trim()))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// What the proxy adds about the request.
#[derive(Debug)]
pub struct Forwarding<'a> {
    pub client_ip: IpAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    pub host: Option<HeaderValue>,
    /// Keep the caller's `Host`; otherwise the pooled upstream client sets the upstream's own.
    pub preserve_host: bool,
    pub identity: Option<&'a Identity>,
    /// `gateway.strip_request_headers`.
    pub strip: &'a [HeaderPattern],
    /// Which cookies are ours: never forwarded.
    pub cookies: &'a CookiePolicy,
}

/// Builds the upstream request: `base` (an absolute URL, or the path of one for an origin-form
/// target) + canonical encoded path + the query as sent.
pub fn upstream_request(
    mut req: Request<Body>,
    base: &str,
    encoded_path: &str,
    fwd: &Forwarding<'_>,
) -> Result<Request<Body>, String> {
    let query = req.uri().query();
    let mut target =
        String::with_capacity(base.len() + encoded_path.len() + query.map_or(0, |q| q.len() + 1));
    target.push_str(base);
    target.push_str(encoded_path);
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    let uri = Uri::try_from(target).map_err(|e| format!("upstream URI: {e}"))?;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    let connection_listed = connection_listed(headers);
    remove_where(headers, |n| strip(n, &connection_listed, fwd.strip));
    if headers.contains_key(header::COOKIE) {
        let cookies: Vec<String> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        headers.remove(header::COOKIE);
        if let Some(kept) = without_our_cookies(&cookies.join("; "), fwd.cookies)
            && let Ok(v) = HeaderValue::from_str(&kept)
        {
            headers.insert(header::COOKIE, v);
        }
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-for"),
        address_value(fwd.client_ip)?,
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(fwd.proto),
    );
    if let Some(host) = &fwd.host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    if !fwd.preserve_host {
        // The pooled client sets `Host` from the upstream URL when the request has none.
        headers.remove(header::HOST);
    }
    if let Some(id) = fwd.identity {
        for (name, value) in &id.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
    Ok(req)
}

/// A client address as a header value. A keep-alive client sends request after request from
/// one address, so each thread remembers the last one it wrote (formatting an address and
/// copying it into a header value is otherwise done per request).
fn address_value(ip: IpAddr) -> Result<HeaderValue, String> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, value)) = &*last
            && *seen == ip
        {
            return Ok(value.clone());
        }
        let value = HeaderValue::try_from(ip.to_string()).map_err(|e| e.to_string())?;
        *last = Some((ip, value.clone()));
        Ok(value)
    })
}

/// On a route that needs sign-in, an answer must not outlive the session in a cache: with no
/// `Cache-Control` it gets `private, no-cache` (a browser revalidates, so after sign-out it gets
/// the sign-in redirect instead of its heuristic copy); `public` and `s-maxage` (shared caches)
/// are removed and `private` added unless the route opts into shared caching.
pub fn protect_cache(headers: &mut HeaderMap, shared_cache: bool) {
    const PRIVATE: HeaderValue = HeaderValue::from_static("private, no-cache");
    let values: Vec<HeaderValue> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .cloned()
        .collect();
    if values.is_empty() {
        headers.insert(header::CACHE_CONTROL, PRIVATE);
        return;
    }
    if shared_cache {
        return;
    }
    let mut kept: Vec<String> = Vec::new();
    let mut private = false;
    for v in &values {
        let Ok(v) = v.to_str() else {
            headers.insert(header::CACHE_CONTROL, PRIVATE);
            return;
        };
        for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let name = d
                .split('=')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            match name.as_str() {
                "public" | "s-maxage" | "proxy-revalidate" => {}
                "private" | "no-store" => {
                    private = true;
                    kept.push(d.to_owned());
                }
                _ => kept.push(d.to_owned()),
            }
        }
    }
    if !private {
        kept.insert(0, "private".into());
    }
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(v) => {
            headers.insert(header::CACHE_CONTROL, v);
        }
        Err(_) => {
            headers.insert(header::CACHE_CONTROL, PRIVATE);
        }
    }
}

/// Strips hop-by-hop headers from an upstream response.
pub fn clean_response(resp: &mut Response<Body>) {
    let headers = resp.headers_mut();
    let listed = connection_listed(headers);
    remove_where(headers, |n| {
        HOP_BY_HOP.contains(&n) || listed.iter().any(|l| l == n)
    });
}

/// The header names a message's `Connection` header lists, normalized.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| normalized(t.trim()))
        .collect()
}

/// Removes every header whose (lower-case) name matches, with all its values. Allocates only
/// when something is removed.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| doomed(n.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_are_stripped_in_every_spelling() {
        for name in [
            "X-Auth-User",
            "x_auth_user",
            "X.Auth.User",
            "x-auth-groups",
            "X_AUTH_SUBJECT",
            "Authorization",
            "Forwarded",
            "X-Forwarded-For",
            "x_forwarded_host",
            "X-Original-URL",
            "X-HTTP-Method-Override",
            "X-Real-IP",
            "Connection",
            "Transfer-Encoding",
        ] {
            assert!(strip(name, &[], &[]), "{name}");
        }
        assert!(
            strip("x-custom", &["x-custom".into()], &[]),
            "Connection-listed headers"
        );
        for name in ["content-type", "accept", "x-request-id", "user-agent"] {
            assert!(!strip(name, &[], &[]), "{name}");
        }
    }

    #[test]
    fn every_listed_name_and_prefix_is_stripped_in_every_spelling() {
        let spellings = |n: &str| {
            [
                n.to_owned(),
                n.to_ascii_uppercase(),
                n.replace('-', "_"),
                n.replace('-', "."),
            ]
        };
        for name in HOP_BY_HOP
            .iter()
            .chain(UNTRUSTED)
            .chain(&["authorization", "http2-settings"])
        {
            // A longer name is a name of its own, stripped only for a listed prefix.
            let prefixed = UNTRUSTED_PREFIXES.iter().any(|p| name.starts_with(p));
            for s in spellings(name) {
                assert!(strip(&s, &[], &[]), "{s}");
                assert_eq!(strip(&format!("{s}z"), &[], &[]), prefixed, "{s}z");
            }
        }
        for prefix in UNTRUSTED_PREFIXES {
            for s in spellings(&format!("{prefix}anything")) {
                assert!(strip(&s, &[], &[]), "{s}");
            }
        }
    }

    #[test]
    fn other_gateways_identity_and_rewrite_headers_are_stripped() {
        for name in [
            "X-Remote-User",
            "Remote-User",
            "remote_user",
            "X-Forwarded-User",
            "X-Forwarded-Email",
            "X-Forwarded-Groups",
            "X-Auth-Request-User",
            "X-Auth-Request-Email",
            "X-User",
            "X-User-Id",
            "X-Groups",
            "X-Roles",
            "X-Authenticated-User",
            "X-Authenticated-Userid",
            "X-Userinfo",
            "X-Jwt-Payload",
            "X-Consumer-Username",
            "X-Consumer-Custom-Id",
            "X-Credential-Identifier",
            "X-Amzn-Oidc-Identity",
            "X-Amzn-Oidc-Data",
            "X-Ms-Client-Principal",
            "X-Ms-Client-Principal-Name",
            "Cf-Access-Authenticated-User-Email",
            "Cf-Access-Jwt-Assertion",
            "X-Replaced-Path",
            "X-Envoy-Original-Path",
            "X-Original-Path",
            "x_replaced_path",
            "X.Ms.Client.Principal.Id",
            "HTTP2-Settings",
        ] {
            assert!(strip(name, &[], &[]), "{name}");
        }
        let extra = parse_header_list("X-Tenant, x-corp-*").expect("valid");
        assert!(strip("x_tenant", &[], &extra));
        assert!(strip("X-Corp-Role", &[], &extra));
        assert!(!strip("x-tenants", &[], &extra));
        assert!(!strip("x-userid-hint", &[], &[]), "names, not prefixes");
        assert!(parse_header_list("X Bad").is_err());
        assert!(parse_header_list("*").is_err());
    }

    #[test]
    fn cache_control_on_protected_answers() {
        let run = |values: &[&str], shared: bool| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    header::CACHE_CONTROL,
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            protect_cache(&mut h, shared);
            h.get_all(header::CACHE_CONTROL)
                .iter()
                .map(|v| v.to_str().expect("ascii").to_owned())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        assert_eq!(run(&[], false), "private, no-cache");
        assert_eq!(run(&[], true), "private, no-cache");
        assert_eq!(run(&["public, max-age=60"], false), "private, max-age=60");
        assert_eq!(
            run(&["max-age=60", "s-maxage=600"], false),
            "private, max-age=60"
        );
        assert_eq!(run(&["no-store"], false), "no-store");
        assert_eq!(run(&["private, max-age=5"], false), "private, max-age=5");
        assert_eq!(run(&["public, s-maxage=600"], true), "public, s-maxage=600");
    }

    #[test]
    fn our_cookies_are_removed() {
        let ours = CookiePolicy::new(true, "session");
        assert_eq!(
            without_our_cookies("a=1; __Host-portcullis-access=tok; b=2", &ours).as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(
            without_our_cookies("__Host-portcullis-access=tok", &ours),
            None
        );
        assert_eq!(
            without_our_cookies("portcullis-refresh=x; theme=dark", &ours).as_deref(),
            Some("theme=dark")
        );
        assert_eq!(
            without_our_cookies("session=tok; theme=dark", &ours).as_deref(),
            Some("theme=dark"),
            "an access cookie named by the operator"
        );
    }
}
