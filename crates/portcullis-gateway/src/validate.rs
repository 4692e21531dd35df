//! Request validation per route and method (`[[routes.validation]]`): declared types for query
//! parameters and headers, and a JSON Schema (draft 2020-12) for the body. An invalid request is
//! answered `400 application/problem+json`, naming each failing JSON pointer, and never reaches
//! the upstream. The body is read whole (up to `gateway.max_body`), checked while it is parsed
//! when the schema allows ([`stream`]), otherwise parsed flat ([`tape`]: no tree, the nesting
//! depth enforced as it is read, repeated member names refused) and checked by `jsonschema`;
//! either way it is forwarded byte for byte as it came.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;

use crate::reject::Reject;

mod stream;
mod tape;

use stream::Plan;
use tape::{Tape, TapeError, TapeJson};

/// A declared parameter type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    Uuid,
}

impl ParamType {
    fn accepts(self, v: &str) -> bool {
        match self {
            ParamType::String => true,
            ParamType::Integer => v.parse::<i64>().is_ok(),
            ParamType::Number => v.parse::<f64>().is_ok_and(f64::is_finite),
            ParamType::Boolean => v == "true" || v == "false",
            ParamType::Uuid => uuid::Uuid::try_parse(v).is_ok(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Integer => "an integer",
            ParamType::Number => "a number",
            ParamType::Boolean => "true or false",
            ParamType::Uuid => "a UUID",
        }
    }
}

/// A parameter: `"integer"`, or `{ type = "integer", required = true }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ParamSpec {
    Type(ParamType),
    Full {
        #[serde(rename = "type")]
        kind: ParamType,
        #[serde(default)]
        required: bool,
        /// At most this many characters.
        max_length: Option<usize>,
    },
}

/// `[[routes.validation]]` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// The methods it applies to (default: every method).
    #[serde(default)]
    pub methods: Vec<String>,
    /// A JSON Schema file (draft 2020-12) the body must satisfy; the body must then be JSON.
    pub body_schema: Option<PathBuf>,
    /// The deepest nesting of arrays and objects a body may have (default 32), checked before
    /// the body is parsed.
    pub max_depth: Option<usize>,
    #[serde(default)]
    pub query: BTreeMap<String, ParamSpec>,
    #[serde(default)]
    pub headers: BTreeMap<String, ParamSpec>,
    /// Refuse query parameters not declared in `query`.
    #[serde(default)]
    pub strict_query: bool,
}

#[derive(Debug)]
struct Param {
    kind: ParamType,
    required: bool,
    max_length: Option<usize>,
}

impl From<&ParamSpec> for Param {
    fn from(s: &ParamSpec) -> Param {
        match s {
            ParamSpec::Type(kind) => Param {
                kind: *kind,
                required: false,
                max_length: None,
            },
            ParamSpec::Full {
                kind,
                required,
                max_length,
            } => Param {
                kind: *kind,
                required: *required,
                max_length: *max_length,
            },
        }
    }
}

/// One validation rule, ready.
pub struct Validation {
    methods: Vec<Method>,
    body: Option<jsonschema::Validator<TapeJson>>,
    /// The schema compiled for validation while parsing, when it can be ([`stream`]).
    plan: Option<Plan>,
    max_depth: usize,
    query: Vec<(String, Param)>,
    headers: Vec<(HeaderName, Param)>,
    strict_query: bool,
}

impl std::fmt::Debug for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validation")
            .field("methods", &self.methods)
            .field("body", &self.body.is_some())
            .finish_non_exhaustive()
    }
}

/// The deepest `max_depth` allowed: `serde_json`'s parser refuses past 127 levels on its own.
const MAX_DEPTH: usize = 100;

/// At most this many problems are listed in one answer.
const MAX_ERRORS: usize = 10;

impl Validation {
    /// Checks a `[[routes.validation]]` entry and compiles its schema.
    pub fn new(c: &ValidationConfig) -> Result<Validation, String> {
        let methods = c
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("validation.methods: {m:?} is not a method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (body, plan) = match &c.body_schema {
            None => (None, None),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "validation.body_schema: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    format!(
                        "validation.body_schema: {} is not JSON: {e}",
                        path.display()
                    )
                })?;
                let validator = jsonschema::options_for::<TapeJson>()
                    .with_draft(jsonschema::Draft::Draft202012)
                    .should_validate_formats(true)
                    .build(&schema)
                    .map_err(|e| {
                        format!(
                            "validation.body_schema: {} is not a valid JSON Schema (draft 2020-12): {e}",
                            path.display()
                        )
                    })?;
                (Some(validator), Plan::new(&schema))
            }
        };
        let max_depth = c.max_depth.unwrap_or(32);
        if !(1..=MAX_DEPTH).contains(&max_depth) {
            return Err(format!("validation.max_depth: between 1 and {MAX_DEPTH}"));
        }
        let headers = c
            .headers
            .iter()
            .map(|(name, spec)| {
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map(|n| (n, Param::from(spec)))
                    .map_err(|_| format!("validation.headers: {name:?} is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Validation {
            methods,
            body,
            plan,
            max_depth,
            query: c
                .query
                .iter()
                .map(|(k, v)| (k.clone(), Param::from(v)))
                .collect(),
            headers,
            strict_query: c.strict_query,
        })
    }

    /// Whether the rule applies to `method`.
    pub fn covers(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    /// Checks a request: its query and headers at once, its body (read whole) when the rule
    /// has a schema; the request comes back with the same body to forward.
    pub async fn check(
        &self,
        req: Request<Body>,
        max_body: usize,
        read_timeout: Duration,
    ) -> Result<Request<Body>, Reject> {
        let mut problems = Vec::new();
        self.check_query(req.uri().query().unwrap_or(""), &mut problems);
        for (name, p) in &self.headers {
            let values: Vec<_> = req.headers().get_all(name).iter().collect();
            let at = format!("header {name}");
            match values.as_slice() {
                [] if p.required => problems.push((at, "is required".to_owned())),
                [] => {}
                [v] => match v.to_str() {
                    Ok(v) => check_value(p, v, &at, &mut problems),
                    Err(_) => problems.push((at, "is not printable ASCII".to_owned())),
                },
                _ => problems.push((at, "is given more than once".to_owned())),
            }
        }
        if !problems.is_empty() {
            return Err(invalid("The request's parameters are invalid", problems));
        }
        let Some(schema) = &self.body else {
            return Ok(req);
        };
        // A read (GET, HEAD, OPTIONS, DELETE) that carries no body has none to check; one that
        // does is checked like any other.
        if matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
        ) && !carries_body(req.headers())
        {
            return Ok(req);
        }
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .is_some_and(|v| {
                let v = v.as_bytes();
                v.eq_ignore_ascii_case(b"application/json")
                    || v.len() > 5 && v[v.len() - 5..].eq_ignore_ascii_case(b"+json")
            });
        if !json {
            return Err(Reject::Invalid {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                title: "Unsupported media type",
                problems: vec![("header content-type".into(), "send application/json".into())],
            });
        }
        if req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > max_body as u64)
        {
            return Err(Reject::BodyTooLarge { streaming: false });
        }
        let (parts, body) = req.into_parts();
        let bytes = read_body(body, max_body, read_timeout).await?;
        // Checked while parsing when the schema allows; the full path decides anything else.
        if self
            .plan
            .as_ref()
            .is_some_and(|p| p.accepts(&bytes, self.max_depth))
        {
            return Ok(crate::forward::received(parts, bytes));
        }
        let tape = Tape::parse(&bytes, self.max_depth).map_err(|e| {
            let problem = match e {
                TapeError::Syntax(e) => (String::new(), format!("is not JSON: {e}")),
                TapeError::TooDeep { pointer, max } => {
                    (pointer, format!("nests deeper than {max} levels"))
                }
                TapeError::Duplicate { pointer, name } => (
                    pointer,
                    bounded(&format!("has the member {name:?} more than once")),
                ),
            };
            invalid("The request body is invalid", vec![problem])
        })?;
        // The fast check first; the errors are collected only for a body that fails it.
        if schema.is_valid(tape.root()) {
            drop(tape);
            return Ok(crate::forward::received(parts, bytes));
        }
        let problems: Vec<(String, String)> = schema
            .iter_errors(tape.root())
            .take(MAX_ERRORS)
            .map(|e| (e.instance_path().to_string(), bounded(&e.to_string())))
            .collect();
        if !problems.is_empty() {
            return Err(invalid("The request body is invalid", problems));
        }
        drop(tape);
        Ok(crate::forward::received(parts, bytes))
    }

    fn check_query(&self, query: &str, problems: &mut Vec<(String, String)>) {
        if self.query.is_empty() && !self.strict_query {
            return;
        }
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (name, p) in &self.query {
            let values: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect();
            let at = format!("query {name}");
            match values.as_slice() {
                [] if p.required => problems.push((at, "is required".into())),
                [] => {}
                [v] => check_value(p, v, &at, problems),
                _ => problems.push((at, "is given more than once".into())),
            }
        }
        if self.strict_query {
            for (k, _) in &pairs {
                if !self.query.iter().any(|(n, _)| n == k) {
                    problems.push((
                        format!("query {}", bounded(k)),
                        "is not a parameter of this route".into(),
                    ));
                }
            }
        }
    }
}

fn check_value(p: &Param, v: &str, at: &str, problems: &mut Vec<(String, String)>) {
    if !p.kind.accepts(v) {
        problems.push((at.to_owned(), format!("must be {}", p.kind.name())));
    } else if p.max_length.is_some_and(|m| v.chars().count() > m) {
        problems.push((
            at.to_owned(),
            format!("is longer than {} characters", p.max_length.unwrap_or(0)),
        ));
    }
}

/// A request body read whole, up to `max_body` (413 past it), within `read_timeout` (408). A
/// small body is usually all in its first frame and already received: that frame is taken as
/// it is, without collecting frames into a queue or arming a timer (the timer wheel is shared
/// by every request); the rest, if any, is collected within the limit and the timeout.
pub(crate) async fn read_body(
    mut body: Body,
    max_body: usize,
    read_timeout: Duration,
) -> Result<Bytes, Reject> {
    use axum::body::HttpBody as _;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};
    let first = Pin::new(&mut body).poll_frame(&mut Context::from_waker(Waker::noop()));
    let head = match first {
        Poll::Ready(None) => return Ok(Bytes::new()),
        Poll::Ready(Some(Err(_))) => return Err(Reject::BadBody),
        // Trailers are not part of the body that is checked and forwarded.
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        Poll::Pending => Bytes::new(),
    };
    if head.len() > max_body {
        return Err(Reject::BodyTooLarge { streaming: true });
    }
    if body.is_end_stream() {
        return Ok(head);
    }
    let rest = http_body_util::Limited::new(body, max_body - head.len()).collect();
    let collected = match tokio::time::timeout(read_timeout, rest).await {
        Err(_) => return Err(Reject::BodyTooSlow),
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(Reject::BodyTooLarge { streaming: true });
        }
        Ok(Err(_)) => return Err(Reject::BadBody),
    };
    if head.is_empty() {
        return Ok(collected);
    }
    let mut whole = Vec::with_capacity(head.len() + collected.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(&collected);
    Ok(Bytes::from(whole))
}

/// Whether a request's headers announce a body (a non-zero `Content-Length`, or any
/// `Transfer-Encoding`).
fn carries_body(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// A message cut to a length fit for an answer (they can quote the client's own values).
fn bounded(s: &str) -> String {
    if s.chars().count() <= 200 {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(200).collect();
        cut.push('…');
        cut
    }
}

fn invalid(title: &'static str, problems: Vec<(String, String)>) -> Reject {
    Reject::Invalid {
        status: StatusCode::BAD_REQUEST,
        title,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_announced_by_its_length_or_its_encoding() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = axum::http::HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                );
            }
            m
        };
        assert!(!carries_body(&h(&[])));
        assert!(!carries_body(&h(&[("content-length", "0")])));
        assert!(carries_body(&h(&[("content-length", "2")])));
        assert!(carries_body(&h(&[("transfer-encoding", "chunked")])));
    }

    #[test]
    fn parameter_types() {
        assert!(ParamType::Integer.accepts("-12"));
        assert!(!ParamType::Integer.accepts("1.5"));
        assert!(ParamType::Number.accepts("1.5e3"));
        assert!(!ParamType::Number.accepts("NaN"));
        assert!(!ParamType::Number.accepts("inf"));
        assert!(ParamType::Boolean.accepts("false"));
        assert!(!ParamType::Boolean.accepts("yes"));
        assert!(ParamType::Uuid.accepts("67e55044-10b1-426f-9247-bb680e5fe0c8"));
        assert!(!ParamType::Uuid.accepts("67e55044"));
    }
}
