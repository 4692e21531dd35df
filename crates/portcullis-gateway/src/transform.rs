//! Transformation per route (`[routes.transform]`): what the upstream receives is shaped to what
//! it expects — a path prefix replaced, headers set from the verified token's claims, the JSON
//! body remapped by a template (like API Gateway's mapping templates) — and headers set on or
//! removed from the answer. Authorization and policies always see the path the client asked
//! for; only the upstream sees the rewritten one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::authn::Identity;
use crate::reject::Reject;

/// `{ from = "/api/orders", to = "/v1/purchase-orders" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRewrite {
    pub from: String,
    pub to: String,
}

/// `[routes.transform]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Replace a leading path prefix (whole segments); `to = ""` strips it.
    pub path_prefix: Option<PrefixRewrite>,
    /// Request headers to set, replacing any the client sent: literal text with `{claims.NAME}`
    /// placeholders (`"{claims.custom:tenant}"`).
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// Request headers to remove.
    #[serde(default)]
    pub remove_request_headers: Vec<String>,
    /// Answer headers to set (replacing the upstream's).
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// Answer headers to remove.
    #[serde(default)]
    pub remove_response_headers: Vec<String>,
    /// A template file (minijinja) whose output, which must be JSON, replaces the request body.
    /// It sees `body` (the client's JSON body, or none), `claims`, `query` and `path`.
    pub body_template: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Claim(String),
}

/// Headers the transformation may not set or remove: framing, routing and the gateway's own
/// identity headers (which the upstream must be able to trust).
fn reserved(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("x-auth-")
        || n.starts_with("x-forwarded-")
        || matches!(
            n,
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "upgrade"
                | "te"
                | "trailer"
                | "keep-alive"
                | "proxy-connection"
                | "forwarded"
                | "x-request-id"
                | "traceparent"
                | "set-cookie"
        )
}

fn header_name(name: &str, what: &str) -> Result<HeaderName, String> {
    let h = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("transform.{what}: {name:?} is not a header name"))?;
    if reserved(&h) {
        return Err(format!(
            "transform.{what}: {name:?} is the gateway's to set (framing, forwarding or identity)"
        ));
    }
    Ok(h)
}

/// `"Bearer {claims.sub} v2"` → pieces; `{{` and `}}` are literal braces.
fn parse_template(t: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = t;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(r) = tail.strip_prefix("{{") {
            text.push('{');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("}}") {
            text.push('}');
            rest = r;
        } else if let Some(r) = tail.strip_prefix("{claims.") {
            let end = r
                .find('}')
                .ok_or_else(|| format!("{t:?}: a {{claims.NAME}} is not closed"))?;
            let name = &r[..end];
            if name.is_empty() || name.contains(['{', ' ']) {
                return Err(format!("{t:?}: {{claims.{name}}} does not name a claim"));
            }
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            out.push(Piece::Claim(name.to_owned()));
            rest = &r[end + 1..];
        } else {
            return Err(format!(
                "{t:?}: only {{claims.NAME}} may stand in braces (write {{{{ and }}}} for literal braces)"
            ));
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    if out
        .iter()
        .any(|p| matches!(p, Piece::Text(s) if HeaderValue::from_str(s).is_err()))
    {
        return Err(format!("{t:?} is not a valid header value"));
    }
    Ok(out)
}

/// A claim as header text: strings as they are, numbers and booleans written out, lists of
/// strings joined with `,`; anything else (objects, nulls) has no header form.
fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
    }
}

/// One route's transformation, ready.
pub struct Transform {
    prefix: Option<(String, String)>,
    request_headers: Vec<(HeaderName, Vec<Piece>)>,
    remove_request: Vec<HeaderName>,
    response_headers: Vec<(HeaderName, HeaderValue)>,
    remove_response: Vec<HeaderName>,
    body: Option<minijinja::Environment<'static>>,
}

impl Transform {
    /// Whether it reads the caller's claims: a `{claims.NAME}` header, or a body template.
    pub fn uses_claims(&self) -> bool {
        self.body.is_some()
            || self
                .request_headers
                .iter()
                .any(|(_, pieces)| pieces.iter().any(|p| matches!(p, Piece::Claim(_))))
    }
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transform")
            .field("prefix", &self.prefix)
            .field("body", &self.body.is_some())
            .finish_non_exhaustive()
    }
}

/// The template's name in its environment.
const BODY: &str = "body";

impl Transform {
    pub fn new(c: &TransformConfig) -> Result<Transform, String> {
        let prefix = match &c.path_prefix {
            None => None,
            Some(p) => {
                let ok = |s: &str| {
                    s.starts_with('/')
                        && !s.ends_with('/')
                        && crate::canonical::canonicalize(s).is_ok_and(|c| c.encoded == s)
                };
                if !ok(&p.from) || !(p.to.is_empty() || ok(&p.to)) {
                    return Err(format!(
                        "transform.path_prefix: from ({:?}) and to ({:?}) are canonical paths without a trailing slash (to may be \"\" to strip)",
                        p.from, p.to
                    ));
                }
                Some((p.from.clone(), p.to.clone()))
            }
        };
        let request_headers = c
            .request_headers
            .iter()
            .map(|(k, v)| Ok((header_name(k, "request_headers")?, parse_template(v)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let remove_request = c
            .remove_request_headers
            .iter()
            .map(|h| header_name(h, "remove_request_headers"))
            .collect::<Result<Vec<_>, _>>()?;
        let response_headers = c
            .response_headers
            .iter()
            .map(|(k, v)| {
                let name = header_name(k, "response_headers")?;
                let value = HeaderValue::from_str(v).map_err(|_| {
                    format!("transform.response_headers: {v:?} is not a header value")
                })?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let remove_response = c
            .remove_response_headers
            .iter()
            .map(|h| header_name(h, "remove_response_headers"))
            .collect::<Result<Vec<_>, _>>()?;
        let body = match &c.body_template {
            None => None,
            Some(path) => {
                let source = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "transform.body_template: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                let mut env = minijinja::Environment::new();
                env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
                // A template runs on every request: bounded work, whatever its loops.
                env.set_fuel(Some(100_000));
                env.add_template_owned(BODY, source)
                    .map_err(|e| format!("transform.body_template: {}: {e}", path.display()))?;
                Some(env)
            }
        };
        Ok(Transform {
            prefix,
            request_headers,
            remove_request,
            response_headers,
            remove_response,
            body,
        })
    }

    /// The path the upstream receives for the canonical `encoded` path.
    pub fn path<'a>(&self, encoded: &'a str) -> std::borrow::Cow<'a, str> {
        let Some((from, to)) = &self.prefix else {
            return encoded.into();
        };
        match encoded.strip_prefix(from.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                let out = format!("{to}{rest}");
                if out.is_empty() {
                    "/".into()
                } else {
                    out.into()
                }
            }
            _ => encoded.into(),
        }
    }

    /// Shapes the request for the upstream: headers from the caller's claims, removals, and the
    /// body template. A header whose claim the token lacks refuses the request (403): the
    /// upstream must never be left to guess.
    pub async fn request(
        &self,
        req: Request<Body>,
        identity: Option<&Identity>,
        max_body: usize,
        read_timeout: Duration,
    ) -> Result<Request<Body>, Reject> {
        let mut req = req;
        let empty = Map::new();
        let claims = identity.map_or(&empty, |i| &*i.claims);
        for name in &self.remove_request {
            req.headers_mut().remove(name);
        }
        for (name, pieces) in &self.request_headers {
            let mut value = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => value.push_str(t),
                    Piece::Claim(c) => match claims.get(c).and_then(claim_text) {
                        Some(t) => value.push_str(&t),
                        None => return Err(missing_claim(identity, c, name)),
                    },
                }
            }
            let value =
                HeaderValue::from_str(&value).map_err(|_| missing_claim(identity, "", name))?;
            req.headers_mut().insert(name.clone(), value);
        }
        let Some(env) = &self.body else {
            return Ok(req);
        };
        let (mut parts, body) = req.into_parts();
        let bytes = crate::validate::read_body(body, max_body, read_timeout).await?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| Reject::Invalid {
                status: axum::http::StatusCode::BAD_REQUEST,
                title: "The request body is invalid",
                problems: vec![(String::new(), format!("is not JSON: {e}"))],
            })?
        };
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        let rendered = env
            .get_template(BODY)
            .and_then(|t| {
                t.render(minijinja::context! {
                    body => minijinja::Value::from(minijinja::value::Serde(&body)),
                    claims => minijinja::Value::from(minijinja::value::Serde(claims)),
                    query => query,
                    path => parts.uri.path(),
                })
            })
            .map_err(|e| {
                tracing::error!(error = %e, "the route's body template failed");
                Reject::Internal("the route's body template failed")
            })?;
        // The template's output must be JSON: a template that writes something else is caught
        // here, not by the upstream.
        if serde_json::from_str::<serde::de::IgnoredAny>(&rendered).is_err() {
            tracing::error!("the route's body template did not produce JSON");
            return Err(Reject::Internal(
                "the route's body template did not produce JSON",
            ));
        }
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(rendered.len()));
        Ok(crate::forward::received(parts, rendered))
    }

    /// Sets and removes the answer's headers.
    pub fn response(&self, headers: &mut HeaderMap) {
        for name in &self.remove_response {
            headers.remove(name);
        }
        for (name, value) in &self.response_headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

fn missing_claim(identity: Option<&Identity>, claim: &str, header: &HeaderName) -> Reject {
    Reject::Denied {
        sub: identity.map(|i| i.sub.clone()).unwrap_or_default(),
        decision: format!("the token has no usable claim {claim:?} for the header {header}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_claim_headers_and_body_templates_read_claims() {
        let with = |headers: &[(&str, &str)]| {
            Transform::new(&TransformConfig {
                request_headers: headers
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect(),
                ..TransformConfig::default()
            })
            .expect("valid")
        };
        assert!(!with(&[]).uses_claims());
        assert!(!with(&[("x-api-version", "2")]).uses_claims());
        assert!(with(&[("x-tenant", "t-{claims.custom:tenant}")]).uses_claims());
    }

    #[test]
    fn header_templates_parse_claims_and_escapes() {
        assert_eq!(
            parse_template("{claims.custom:tenant}").expect("ok"),
            [Piece::Claim("custom:tenant".into())]
        );
        assert_eq!(
            parse_template("t={claims.sub};{{x}}").expect("ok"),
            [
                Piece::Text("t=".into()),
                Piece::Claim("sub".into()),
                Piece::Text(";{x}".into())
            ]
        );
        for bad in ["{sub}", "{claims.sub", "{claims.}", "a}b", "x\ny"] {
            assert!(parse_template(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_replaced_on_whole_segments_only() {
        let t = Transform::new(&TransformConfig {
            path_prefix: Some(PrefixRewrite {
                from: "/api/orders".into(),
                to: "/v1/purchase-orders".into(),
            }),
            ..TransformConfig::default()
        })
        .expect("valid");
        assert_eq!(t.path("/api/orders"), "/v1/purchase-orders");
        assert_eq!(t.path("/api/orders/7"), "/v1/purchase-orders/7");
        assert_eq!(t.path("/api/ordersX"), "/api/ordersX");
        let strip = Transform::new(&TransformConfig {
            path_prefix: Some(PrefixRewrite {
                from: "/api".into(),
                to: String::new(),
            }),
            ..TransformConfig::default()
        })
        .expect("valid");
        assert_eq!(strip.path("/api"), "/");
        assert_eq!(strip.path("/api/x"), "/x");
        for (from, to) in [("api", ""), ("/api/", ""), ("/a/../b", ""), ("/api", "v1")] {
            assert!(
                Transform::new(&TransformConfig {
                    path_prefix: Some(PrefixRewrite {
                        from: from.into(),
                        to: to.into()
                    }),
                    ..TransformConfig::default()
                })
                .is_err(),
                "{from} -> {to}"
            );
        }
    }

    #[test]
    fn the_gateway_s_own_headers_cannot_be_set() {
        for name in [
            "X-Auth-Subject",
            "host",
            "content-length",
            "x-forwarded-for",
            "x-request-id",
        ] {
            let c = TransformConfig {
                request_headers: BTreeMap::from([(name.to_owned(), "x".to_owned())]),
                ..TransformConfig::default()
            };
            assert!(Transform::new(&c).is_err(), "{name}");
        }
    }

    #[test]
    fn claims_become_header_text() {
        assert_eq!(claim_text(&serde_json::json!("a")), Some("a".into()));
        assert_eq!(claim_text(&serde_json::json!(42)), Some("42".into()));
        assert_eq!(
            claim_text(&serde_json::json!(["a", "b"])),
            Some("a,b".into())
        );
        assert_eq!(claim_text(&serde_json::json!({"a": 1})), None);
        assert_eq!(claim_text(&serde_json::json!([1])), None);
    }
}
