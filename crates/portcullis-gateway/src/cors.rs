//! CORS per route (`[routes.cors]`): preflights answered here, before authentication and
//! without reaching the upstream; actual answers get `Access-Control-Allow-Origin` (and the rest)
//! only for an allowed origin, and `Vary: Origin` always, so no cache serves one origin's answer
//! to another. The upstream's own `Access-Control-*` headers are dropped on such routes: the
//! route's settings are the one source of truth.
//!
//! Origins are exact (`https://app.example.com`) or a wildcard over subdomains
//! (`https://*.example.com`), matched on the parsed origin — scheme, host and port — never on
//! text, so `https://example.com.evil.net` or `https://evilexample.com` match nothing.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde::Deserialize;

/// `[routes.cors]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// `https://app.example.com`, `https://*.example.com` (subdomains only), or `*` (any origin;
    /// not with `credentials`).
    pub origins: Vec<String>,
    /// Methods a cross-origin caller may use (default: the route's methods, or GET, HEAD, POST,
    /// PUT, PATCH and DELETE).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers it may send (default: `authorization`, `content-type`).
    pub headers: Option<Vec<String>>,
    /// Answer headers its scripts may read besides the CORS-safelisted ones.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Let it send cookies and `Authorization` and read the answer (`credentials: "include"`).
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may cache a preflight (default `"10m"`, at most `"24h"`).
    pub max_age: Option<String>,
}

/// An allowed origin pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum OriginPattern {
    /// `scheme://host[:port]`, serialized as browsers send it.
    Exact(String),
    /// `scheme://*.suffix[:port]`: any host that ends in `.suffix`.
    Subdomains {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

/// A route's CORS settings, checked and pre-rendered.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    patterns: Vec<OriginPattern>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// Lower case; empty with `any_header`.
    headers: Vec<String>,
    any_header: bool,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The origin a browser sends, parsed: `(scheme, host, port)`, or `None` for anything that is not
/// exactly `scheme://host[:port]` in its serialized form (`null`, paths, user info, upper case).
fn parse_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let url = url::Url::parse(origin).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let serialized = url.origin().ascii_serialization();
    if serialized != origin {
        return None;
    }
    Some((
        url.scheme().to_owned(),
        url.host_str()?.to_owned(),
        url.port(),
    ))
}

impl Cors {
    /// Checks `[routes.cors]`; `route_methods` are the route's (upper case, empty: all).
    pub fn new(c: &CorsConfig, route_methods: &[String]) -> Result<Cors, String> {
        if c.origins.is_empty() {
            return Err("cors.origins: name at least one origin".into());
        }
        let mut any_origin = false;
        let mut patterns = Vec::new();
        for o in &c.origins {
            if o == "*" {
                any_origin = true;
                continue;
            }
            if let Some((scheme, rest)) = o.split_once("://*.") {
                let candidate = format!("{scheme}://x.{rest}");
                let (scheme, host, port) = parse_origin(&candidate).ok_or_else(|| {
                    format!("cors.origins: {o:?} is not scheme://*.domain[:port]")
                })?;
                let suffix = host.trim_start_matches("x.").to_owned();
                if !suffix.contains('.') || suffix.parse::<std::net::IpAddr>().is_ok() {
                    return Err(format!(
                        "cors.origins: {o:?} is too broad; a wildcard covers the subdomains of a domain with at least two labels"
                    ));
                }
                patterns.push(OriginPattern::Subdomains {
                    scheme,
                    suffix,
                    port,
                });
                continue;
            }
            if parse_origin(o).is_none() {
                return Err(format!(
                    "cors.origins: {o:?} is not an origin; write scheme://host[:port] in lower case, without a path"
                ));
            }
            patterns.push(OriginPattern::Exact(o.clone()));
        }
        if any_origin && c.credentials {
            return Err(
                "cors: `*` cannot be combined with credentials; list the origins that may send them".into(),
            );
        }
        if any_origin && !patterns.is_empty() {
            return Err("cors.origins: `*` already allows every origin; list nothing else".into());
        }
        let methods: Vec<String> = if !c.methods.is_empty() {
            c.methods.iter().map(|m| m.to_ascii_uppercase()).collect()
        } else if !route_methods.is_empty() {
            route_methods.to_vec()
        } else {
            DEFAULT_METHODS.iter().map(|m| (*m).to_owned()).collect()
        };
        let methods = methods
            .iter()
            .map(|m| {
                if m == "*" || !token(m) {
                    return Err(format!("cors.methods: {m:?} is not a method"));
                }
                Method::from_bytes(m.as_bytes()).map_err(|_| format!("cors.methods: {m:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allow_methods = HeaderValue::from_str(
            &methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        )
        .map_err(|e| e.to_string())?;
        let configured = c
            .headers
            .clone()
            .unwrap_or_else(|| vec!["authorization".into(), "content-type".into()]);
        let any_header = configured.iter().any(|h| h == "*");
        if any_header && c.credentials {
            return Err(
                "cors.headers: `*` cannot be combined with credentials; list the headers".into(),
            );
        }
        let mut headers = Vec::new();
        for h in configured.iter().filter(|h| *h != "*") {
            if !token(h) {
                return Err(format!("cors.headers: {h:?} is not a header name"));
            }
            headers.push(h.to_ascii_lowercase());
        }
        for h in &c.expose_headers {
            if !token(h) {
                return Err(format!("cors.expose_headers: {h:?} is not a header name"));
            }
        }
        let expose = (!c.expose_headers.is_empty())
            .then(|| HeaderValue::from_str(&c.expose_headers.join(", ")))
            .transpose()
            .map_err(|e| e.to_string())?;
        let max_age = match &c.max_age {
            None => Duration::from_secs(600),
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if d <= Duration::from_secs(86400) => d,
                _ => {
                    return Err(format!(
                        "cors.max_age: {text:?} must be a duration of at most 24h, such as \"10m\""
                    ));
                }
            },
        };
        Ok(Cors {
            any_origin,
            patterns,
            methods,
            allow_methods,
            headers,
            any_header,
            expose,
            credentials: c.credentials,
            max_age: HeaderValue::from(max_age.as_secs()),
        })
    }

    /// Whether `origin` (an `Origin` header's value) is allowed.
    pub fn allows_origin(&self, origin: &str) -> bool {
        // Listed origins are stored as browsers send them: equal text is the common case, and
        // needs no parse.
        if self
            .patterns
            .iter()
            .any(|p| matches!(p, OriginPattern::Exact(o) if o == origin))
        {
            return true;
        }
        if !self.any_origin
            && !self
                .patterns
                .iter()
                .any(|p| matches!(p, OriginPattern::Subdomains { .. }))
        {
            return false;
        }
        let Some((scheme, host, port)) = parse_origin(origin) else {
            return false;
        };
        if self.any_origin {
            return true;
        }
        self.patterns.iter().any(|p| match p {
            OriginPattern::Exact(o) => o == origin,
            OriginPattern::Subdomains {
                scheme: s,
                suffix,
                port: want,
            } => {
                *s == scheme
                    && *want == port
                    && host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        })
    }

    /// Whether a cookie-authenticated unsafe request from `headers`' origin is one this route
    /// invites (an allowed origin, with `credentials`): the CSRF rule lets it through.
    pub fn invites_credentials(&self, headers: &HeaderMap) -> bool {
        self.credentials
            && headers
                .get(header::ORIGIN)
                .and_then(|o| o.to_str().ok())
                .is_some_and(|o| self.allows_origin(o))
    }

    /// The answer to a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`).
    /// Refused (403, no CORS headers, so the browser stops) when the origin, the method or a
    /// requested header is not allowed.
    pub fn preflight(&self, headers: &HeaderMap) -> Response<Body> {
        let origin = headers.get(header::ORIGIN);
        let refuse = |why: &str| {
            let mut r = Response::new(Body::from(
                serde_json::json!({ "error": "cors_refused", "message": why }).to_string(),
            ));
            *r.status_mut() = StatusCode::FORBIDDEN;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            vary(h, true);
            r
        };
        let Some(origin) = origin.filter(|o| o.to_str().is_ok_and(|o| self.allows_origin(o)))
        else {
            return refuse("this origin may not call this route");
        };
        let method = headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        if !method.is_some_and(|m| self.methods.contains(&m)) {
            return refuse("this method is not allowed cross-origin on this route");
        }
        let requested = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect::<Vec<_>>();
        if !self.any_header
            && let Some(h) = requested.iter().find(|h| !self.headers.contains(h))
        {
            return refuse(&format!(
                "the request header {h:?} is not allowed cross-origin on this route"
            ));
        }
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        self.allow_origin(h, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        if !requested.is_empty()
            && let Ok(v) = HeaderValue::from_str(&requested.join(", "))
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        vary(h, true);
        r
    }

    /// CORS headers on an actual answer (allowed or refused): the upstream's own are dropped,
    /// `Vary: Origin` is added, and an allowed origin is told it may read the answer.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        // One look at the names first: most answers carry none of these, and six removals
        // are six hash lookups.
        if headers
            .keys()
            .any(|name| name.as_str().starts_with("access-control-"))
        {
            for name in [
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                header::ACCESS_CONTROL_ALLOW_METHODS,
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                header::ACCESS_CONTROL_MAX_AGE,
            ] {
                headers.remove(name);
            }
        }
        vary(headers, false);
        if let Some(origin) = origin.filter(|o| o.to_str().is_ok_and(|o| self.allows_origin(o))) {
            self.allow_origin(headers, origin);
            if let Some(e) = &self.expose {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
            }
        }
    }

    fn allow_origin(&self, h: &mut HeaderMap, origin: &HeaderValue) {
        if self.any_origin {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// Adds `Origin` (and for preflights the request-method and -headers) to `Vary`.
fn vary(h: &mut HeaderMap, preflight: bool) {
    let names: &[&str] = if preflight {
        &[
            "origin",
            "access-control-request-method",
            "access-control-request-headers",
        ]
    } else {
        &["origin"]
    };
    let has = |h: &HeaderMap, name: &str| {
        h.get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(name))
    };
    if !h.contains_key(header::VARY) {
        for n in names {
            h.append(header::VARY, HeaderValue::from_static(n));
        }
        return;
    }
    if has(h, "*") {
        return;
    }
    for n in names {
        if !has(h, n) {
            h.append(header::VARY, HeaderValue::from_static(n));
        }
    }
}

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Returns the method it asks about.
pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<String> {
    if *method != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| m.to_str().ok())
        .filter(|m| token(m))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderName;

    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(
            &CorsConfig {
                origins: origins.iter().map(|o| (*o).to_owned()).collect(),
                methods: vec![],
                headers: None,
                expose_headers: vec!["x-request-id".into()],
                credentials,
                max_age: None,
            },
            &[],
        )
        .expect("valid")
    }

    #[test]
    fn origins_match_exactly_or_as_subdomains_never_as_text() {
        let c = cors(&["https://app.example.com", "https://*.example.org"], true);
        for ok in [
            "https://app.example.com",
            "https://a.example.org",
            "https://a.b.example.org",
        ] {
            assert!(c.allows_origin(ok), "{ok}");
        }
        for bad in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.net",
            "https://evilapp.example.com",
            "https://example.org",
            "https://evilexample.org",
            "https://example.org.evil.net",
            "https://a.example.org:444",
            "https://APP.example.com",
            "https://app.example.com/",
            "https://user@app.example.com",
            "null",
            "",
            "file://",
            "https://a.example.org\u{0}",
        ] {
            assert!(!c.allows_origin(bad), "{bad:?}");
        }
    }

    #[test]
    fn unsafe_or_broad_settings_are_refused() {
        let new = |origins: &[&str], credentials: bool, headers: Option<Vec<String>>| {
            Cors::new(
                &CorsConfig {
                    origins: origins.iter().map(|o| (*o).to_owned()).collect(),
                    methods: vec![],
                    headers,
                    expose_headers: vec![],
                    credentials,
                    max_age: None,
                },
                &[],
            )
        };
        assert!(new(&["*"], true, None).is_err(), "* with credentials");
        assert!(new(&["https://*.com"], false, None).is_err(), "a whole TLD");
        assert!(new(&["https://app.example.com/path"], false, None).is_err());
        assert!(new(&["app.example.com"], false, None).is_err());
        assert!(new(&[], false, None).is_err());
        assert!(new(&["https://a.example.com"], true, Some(vec!["*".into()])).is_err());
        assert!(new(&["*"], false, Some(vec!["*".into()])).is_ok());
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
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
    fn preflights_allow_what_is_configured_and_nothing_else() {
        let c = cors(&["https://app.example.com"], true);
        let ok = c.preflight(&request(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PUT"),
            (
                "access-control-request-headers",
                "Content-Type, authorization",
            ),
        ]));
        assert_eq!(ok.status(), 204);
        let h = ok.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(
            h["access-control-allow-headers"],
            "content-type, authorization"
        );
        assert_eq!(h["access-control-max-age"], "600");
        assert!(
            h["access-control-allow-methods"]
                .to_str()
                .expect("ascii")
                .contains("PUT")
        );
        for refused in [
            request(&[
                ("origin", "https://evil.example.com"),
                ("access-control-request-method", "GET"),
            ]),
            request(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "TRACE"),
            ]),
            request(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-admin"),
            ]),
        ] {
            let r = c.preflight(&refused);
            assert_eq!(r.status(), 403);
            assert!(!r.headers().contains_key("access-control-allow-origin"));
            assert!(r.headers().get_all("vary").iter().any(|v| v == "origin"));
        }
    }

    #[test]
    fn answers_say_vary_and_only_allowed_origins_may_read_them() {
        let c = cors(&["https://app.example.com"], false);
        let mut h = request(&[
            ("access-control-allow-origin", "*"),
            ("vary", "accept-encoding"),
        ]);
        c.decorate(
            Some(&HeaderValue::from_static("https://evil.example.com")),
            &mut h,
        );
        assert!(
            !h.contains_key("access-control-allow-origin"),
            "the upstream's own CORS header is dropped"
        );
        assert_eq!(
            h.get_all("vary").iter().collect::<Vec<_>>(),
            ["accept-encoding", "origin"]
        );
        let mut h = HeaderMap::new();
        c.decorate(
            Some(&HeaderValue::from_static("https://app.example.com")),
            &mut h,
        );
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-expose-headers"], "x-request-id");
        assert!(!h.contains_key("access-control-allow-credentials"));
    }
}
