//! One refusal type for the whole request path. Every stage returns `Result<_, Reject>`; a
//! refusal knows its stage, whose fault it is, its metric label, how it is logged and how it
//! becomes an answer for each route kind — all here, in one place (as linkerd2-proxy turns an
//! authorization error into a response in one layer).

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::authn::AuthError;
use crate::respond::{bad_request, closing, error, json, redirect};
use crate::settings::{GatewaySettings, RouteKind};

/// Whose fault a refusal is: what decides its status class and its log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request is malformed, unauthenticated or not allowed: 4xx, INFO.
    Client,
    /// The upstream failed, was too slow or misbehaved: 5xx, WARN.
    Upstream,
    /// A bug of ours: 500, ERROR.
    Us,
}

/// Why a request was not forwarded or served.
#[derive(Debug)]
pub enum Reject {
    /// Framing, `Host` or `Connection` that could mean two things to two parsers: 400, closed.
    Framing(&'static str),
    /// A request target that is not a canonical origin-form path: 400.
    Target { reason: String, path: String },
    /// No route matches: 404.
    NoRoute,
    /// No valid credential: 401 (APIs) or a sign-in redirect back to `return_to` (pages).
    Unauthenticated { error: AuthError, return_to: String },
    /// A browser session needed refreshing and its store or provider does not answer: 503 with
    /// `Retry-After` (not a sign-in page: the session may be alive).
    SessionUnavailable,
    /// The policies do not allow it: 403 (APIs) or the forbidden page (pages).
    Denied { sub: String, decision: String },
    /// The policies allow it only with a stronger or more recent sign-in (a second factor,
    /// `auth_age`): 401 with `error="insufficient_user_authentication"` (RFC 9470) for APIs, a
    /// sign-in that asks for it and comes back for pages.
    StepUp {
        sub: String,
        decision: String,
        mfa: bool,
        max_age: Option<i64>,
        return_to: String,
    },
    /// An unsafe cookie-authenticated request from another origin: 403.
    CrossSite { sub: String },
    /// A WebSocket handshake the route does not allow, or a malformed one: 400.
    Upgrade(&'static str),
    /// A body over `gateway.max_body`: 413 (closed when it was streaming).
    BodyTooLarge { streaming: bool },
    /// The client did not finish its body before the upstream gave up: 408, closed.
    BodyTooSlow,
    /// The client's body broke off or was badly framed: 400, closed.
    BadBody,
    /// The upstream could not be reached or broke off: 502.
    UpstreamFailed { upstream: String, error: String },
    /// No answer from the upstream in time: 504.
    UpstreamTimeout { upstream: String },
    /// The upstream switched protocols unasked (or to another than WebSocket): 502, closed.
    UpstreamSwitched { upstream: String },
    /// A route's rate limit: 429 with `Retry-After` and the `RateLimit` headers.
    RateLimited {
        retry_after: u64,
        headers: crate::limits::LimitHeaders,
        /// The limit's name, for the log.
        limit: String,
    },
    /// A client's quota for the day or month is used up: 429 until the period ends.
    QuotaExceeded {
        retry_after: u64,
        limit: u64,
        period: crate::limits::QuotaPeriod,
    },
    /// A request the route's validation refuses: 400 (415 for a body that is not JSON), as
    /// `application/problem+json` naming each failing JSON pointer or parameter.
    Invalid {
        status: StatusCode,
        title: &'static str,
        /// `(where, what)`: a JSON pointer into the body (`""` is the whole body), or
        /// `query NAME` / `header NAME`.
        problems: Vec<(String, String)>,
    },
    /// A bug: 500.
    Internal(&'static str),
}

impl Reject {
    /// The stage that refused.
    pub fn stage(&self) -> &'static str {
        match self {
            Reject::Framing(_) => "framing",
            Reject::Target { .. } => "canonical",
            Reject::NoRoute => "route",
            Reject::Unauthenticated { .. } | Reject::SessionUnavailable => "authn",
            Reject::Denied { .. } | Reject::StepUp { .. } => "authz",
            Reject::CrossSite { .. } => "csrf",
            Reject::RateLimited { .. } | Reject::QuotaExceeded { .. } => "limits",
            Reject::Invalid { .. } => "validation",
            Reject::Upgrade(_)
            | Reject::BodyTooLarge { .. }
            | Reject::BodyTooSlow
            | Reject::BadBody
            | Reject::UpstreamFailed { .. }
            | Reject::UpstreamTimeout { .. }
            | Reject::UpstreamSwitched { .. }
            | Reject::Internal(_) => "forward",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Reject::UpstreamFailed { .. }
            | Reject::UpstreamTimeout { .. }
            | Reject::UpstreamSwitched { .. }
            | Reject::SessionUnavailable => Fault::Upstream,
            Reject::Internal(_) => Fault::Us,
            _ => Fault::Client,
        }
    }

    /// The `decision` label of the request metrics (a bounded set).
    pub fn label(&self) -> &'static str {
        match self {
            Reject::NoRoute => "no_route",
            Reject::Unauthenticated { .. } => "unauthenticated",
            Reject::Denied { .. } => "denied",
            Reject::StepUp { .. } => "step_up",
            Reject::CrossSite { .. } => "cross_site",
            Reject::SessionUnavailable => "unavailable",
            Reject::RateLimited { .. } => "rate_limited",
            Reject::QuotaExceeded { .. } => "quota_exceeded",
            Reject::Invalid { .. } => "invalid",
            _ => match self.fault() {
                Fault::Client => "bad_request",
                Fault::Upstream => "upstream_error",
                Fault::Us => "internal_error",
            },
        }
    }

    /// The one log line of a refusal (`path`: the canonical path when there is one). Never a
    /// token or a query.
    pub(crate) fn log(&self, path: &str) {
        let stage = self.stage();
        match self {
            Reject::NoRoute => {}
            Reject::Unauthenticated { error, .. } => {
                metrics::counter!("portcullis_gateway_auth_failures_total", "reason" => auth_reason(*error)).increment(1);
                tracing::info!(path, stage, reason = %error, "request refused: not authenticated");
            }
            Reject::Denied { sub, decision } => {
                tracing::info!(path, stage, sub, decision, "request denied");
            }
            Reject::StepUp { sub, decision, .. } => {
                tracing::info!(
                    path,
                    stage,
                    sub,
                    decision,
                    "request needs a stronger sign-in"
                );
            }
            Reject::CrossSite { sub } => {
                tracing::info!(
                    path,
                    stage,
                    sub,
                    "request refused: cross-site request with a cookie credential"
                );
            }
            Reject::Target { reason, path } => {
                tracing::info!(path = %path.escape_debug(), stage, reason, "request refused: bad path");
            }
            Reject::Framing(reason) | Reject::Upgrade(reason) => {
                tracing::info!(path, stage, reason, "request refused");
            }
            Reject::BodyTooLarge { .. } => {
                tracing::info!(path, stage, "request refused: body over gateway.max_body");
            }
            Reject::RateLimited {
                limit, retry_after, ..
            } => {
                metrics::counter!("portcullis_gateway_rate_limited_total").increment(1);
                tracing::debug!(
                    path,
                    stage,
                    limit,
                    retry_after,
                    "request refused: rate limit"
                );
            }
            Reject::QuotaExceeded { limit, .. } => {
                metrics::counter!("portcullis_gateway_quota_exceeded_total").increment(1);
                tracing::info!(path, stage, limit, "request refused: quota used up");
            }
            Reject::Invalid { problems, .. } => {
                let at = problems.first().map(|(w, _)| w.as_str()).unwrap_or("");
                tracing::info!(path, stage, at, "request refused: invalid");
            }
            Reject::BodyTooSlow => {
                tracing::info!(
                    path,
                    stage,
                    "request refused: the client did not send its body in time"
                );
            }
            Reject::BadBody => {
                tracing::info!(
                    path,
                    stage,
                    "request refused: malformed or incomplete request body"
                );
            }
            Reject::SessionUnavailable => {
                tracing::warn!(
                    path,
                    stage,
                    "session refresh unavailable: its store or provider does not answer"
                );
            }
            Reject::UpstreamFailed { upstream, error } => {
                tracing::warn!(path, upstream, error, "upstream failed");
            }
            Reject::UpstreamTimeout { upstream } => {
                tracing::warn!(path, upstream, "upstream timed out");
            }
            Reject::UpstreamSwitched { upstream } => {
                tracing::warn!(
                    path,
                    upstream,
                    "upstream switched protocols unasked; refused"
                );
            }
            Reject::Internal(what) => tracing::error!(path, stage, what, "request failed: a bug"),
        }
    }

    /// The answer, for a route of `kind` (`None`: before a route was found).
    pub(crate) fn render(
        self,
        kind: Option<RouteKind>,
        settings: &GatewaySettings,
    ) -> Response<Body> {
        let page = kind == Some(RouteKind::Page);
        match self {
            Reject::Framing(message) => closing(bad_request(message)),
            Reject::Target { reason, .. } => bad_request(&reason),
            Reject::NoRoute => error(StatusCode::NOT_FOUND, "not_found"),
            Reject::Unauthenticated { return_to, .. } if page => {
                let encoded: String =
                    url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
                redirect(&format!("{}?return_to={encoded}", settings.login_url))
            }
            Reject::Unauthenticated { error: e, .. } => {
                let challenge = if e == AuthError::Missing {
                    "Bearer realm=\"portcullis\""
                } else {
                    "Bearer realm=\"portcullis\", error=\"invalid_token\""
                };
                let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
                r
            }
            Reject::StepUp {
                mfa,
                max_age,
                return_to,
                ..
            } if page => {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                q.append_pair("return_to", &return_to);
                if mfa {
                    q.append_pair("acr_values", "mfa");
                }
                if let Some(age) = max_age {
                    q.append_pair("max_age", &age.to_string());
                }
                redirect(&format!("{}?{}", settings.login_url, q.finish()))
            }
            Reject::StepUp { mfa, max_age, .. } => {
                let mut challenge = String::from(
                    "Bearer realm=\"portcullis\", error=\"insufficient_user_authentication\", error_description=\"",
                );
                challenge.push_str(match (mfa, max_age) {
                    (true, Some(_)) => "A recent sign-in with a second factor is required",
                    (true, None) => "A sign-in with a second factor is required",
                    _ => "A more recent sign-in is required",
                });
                challenge.push('"');
                if mfa {
                    challenge.push_str(", acr_values=\"mfa\"");
                }
                if let Some(age) = max_age {
                    challenge.push_str(&format!(", max_age={age}"));
                }
                let mut r = json(
                    StatusCode::UNAUTHORIZED,
                    json!({ "error": "insufficient_user_authentication", "acr_values": if mfa { Some("mfa") } else { None }, "max_age": max_age }),
                );
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                r
            }
            Reject::Denied { .. } if page => redirect(&settings.forbidden_url),
            Reject::Denied { .. } => error(StatusCode::FORBIDDEN, "forbidden"),
            Reject::CrossSite { .. } => json(
                StatusCode::FORBIDDEN,
                json!({ "error": "forbidden", "message": "cross-site request" }),
            ),
            Reject::Upgrade(message) => bad_request(message),
            Reject::BodyTooLarge { streaming } => {
                let r = error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
                if streaming { closing(r) } else { r }
            }
            Reject::BodyTooSlow => closing(error(StatusCode::REQUEST_TIMEOUT, "request_timeout")),
            Reject::BadBody => closing(bad_request("the request body is malformed or incomplete")),
            Reject::UpstreamFailed { .. } => error(StatusCode::BAD_GATEWAY, "bad_gateway"),
            Reject::UpstreamTimeout { .. } => error(StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
            Reject::UpstreamSwitched { .. } => {
                closing(error(StatusCode::BAD_GATEWAY, "bad_gateway"))
            }
            Reject::SessionUnavailable => {
                let mut r = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "error": "temporarily_unavailable", "message": "the session cannot be renewed right now; try again shortly" }),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                r
            }
            Reject::RateLimited {
                retry_after,
                headers,
                ..
            } => {
                let mut r = json(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({ "error": "rate_limited", "message": format!("too many requests; try again in {retry_after} s") }),
                );
                let h = r.headers_mut();
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                h.insert(crate::limits::RATELIMIT_POLICY, headers.policy);
                h.insert(crate::limits::RATELIMIT, headers.state);
                r
            }
            Reject::QuotaExceeded {
                retry_after,
                limit,
                period,
            } => {
                let period = match period {
                    crate::limits::QuotaPeriod::Day => "day",
                    crate::limits::QuotaPeriod::Month => "month",
                };
                let mut r = json(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({ "error": "quota_exceeded", "message": format!("this client's quota of {limit} requests per {period} is used up") }),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                r
            }
            Reject::Invalid {
                status,
                title,
                problems,
            } => {
                let detail = problems
                    .first()
                    .map(|(w, m)| {
                        if w.is_empty() {
                            format!("the body {m}")
                        } else {
                            format!("{w} {m}")
                        }
                    })
                    .unwrap_or_default();
                let errors: Vec<serde_json::Value> = problems
                    .iter()
                    .map(|(w, m)| {
                        if w.starts_with("query ") || w.starts_with("header ") {
                            json!({ "parameter": w, "message": m })
                        } else {
                            json!({ "pointer": w, "message": m })
                        }
                    })
                    .collect();
                let mut r = json(
                    status,
                    json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail, "errors": errors }),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                );
                r
            }
            Reject::Internal(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

fn auth_reason(e: AuthError) -> &'static str {
    match e {
        AuthError::Missing => "missing",
        AuthError::Ambiguous => "ambiguous",
        AuthError::MalformedHeader => "malformed",
        AuthError::Invalid(_) => "invalid",
        AuthError::Revoked => "revoked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GatewaySettings {
        crate::settings::test_settings()
    }

    #[test]
    fn each_refusal_has_its_status_label_and_fault() {
        let s = settings();
        let cases: Vec<(Reject, Option<RouteKind>, u16, &str, Fault)> = vec![
            (
                Reject::Framing("two Hosts"),
                None,
                400,
                "bad_request",
                Fault::Client,
            ),
            (
                Reject::Target {
                    reason: "dot segment".into(),
                    path: "/a/../b".into(),
                },
                None,
                400,
                "bad_request",
                Fault::Client,
            ),
            (Reject::NoRoute, None, 404, "no_route", Fault::Client),
            (
                Reject::Unauthenticated {
                    error: AuthError::Missing,
                    return_to: "/a?b=1".into(),
                },
                Some(RouteKind::Api),
                401,
                "unauthenticated",
                Fault::Client,
            ),
            (
                Reject::Unauthenticated {
                    error: AuthError::Revoked,
                    return_to: "/a?b=1".into(),
                },
                Some(RouteKind::Page),
                302,
                "unauthenticated",
                Fault::Client,
            ),
            (
                Reject::Denied {
                    sub: "u".into(),
                    decision: "no".into(),
                },
                Some(RouteKind::Api),
                403,
                "denied",
                Fault::Client,
            ),
            (
                Reject::Denied {
                    sub: "u".into(),
                    decision: "no".into(),
                },
                Some(RouteKind::Page),
                302,
                "denied",
                Fault::Client,
            ),
            (
                Reject::CrossSite { sub: "u".into() },
                Some(RouteKind::Page),
                403,
                "cross_site",
                Fault::Client,
            ),
            (
                Reject::Upgrade("no"),
                Some(RouteKind::Api),
                400,
                "bad_request",
                Fault::Client,
            ),
            (
                Reject::BodyTooLarge { streaming: true },
                Some(RouteKind::Api),
                413,
                "bad_request",
                Fault::Client,
            ),
            (
                Reject::BodyTooSlow,
                Some(RouteKind::Api),
                408,
                "bad_request",
                Fault::Client,
            ),
            (
                Reject::BadBody,
                Some(RouteKind::Api),
                400,
                "bad_request",
                Fault::Client,
            ),
            (
                Reject::UpstreamFailed {
                    upstream: "u".into(),
                    error: "refused".into(),
                },
                Some(RouteKind::Api),
                502,
                "upstream_error",
                Fault::Upstream,
            ),
            (
                Reject::UpstreamTimeout {
                    upstream: "u".into(),
                },
                Some(RouteKind::Api),
                504,
                "upstream_error",
                Fault::Upstream,
            ),
            (
                Reject::UpstreamSwitched {
                    upstream: "u".into(),
                },
                Some(RouteKind::Api),
                502,
                "upstream_error",
                Fault::Upstream,
            ),
            (
                Reject::Internal("bug"),
                Some(RouteKind::Api),
                500,
                "internal_error",
                Fault::Us,
            ),
        ];
        for (reject, kind, status, label, fault) in cases {
            let what = format!("{reject:?}");
            assert_eq!((reject.label(), reject.fault()), (label, fault), "{what}");
            let r = reject.render(kind, &s);
            assert_eq!(r.status().as_u16(), status, "{what}");
            assert_eq!(
                r.headers().get(header::CACHE_CONTROL).map(|v| v.as_bytes()),
                Some(b"no-store".as_slice()),
                "refusals are never cached: {what}"
            );
        }
    }

    #[test]
    fn pages_go_to_sign_in_with_their_path_and_apis_get_a_challenge() {
        let s = settings();
        let page = Reject::Unauthenticated {
            error: AuthError::Missing,
            return_to: "/admin/x?tab=2".into(),
        }
        .render(Some(RouteKind::Page), &s);
        assert_eq!(
            page.headers()[header::LOCATION],
            "/auth/login?return_to=%2Fadmin%2Fx%3Ftab%3D2"
        );
        let api = Reject::Unauthenticated {
            error: AuthError::Revoked,
            return_to: String::new(),
        }
        .render(Some(RouteKind::Api), &s);
        assert_eq!(
            api.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"portcullis\", error=\"invalid_token\""
        );
        let closed = Reject::Framing("x").render(None, &s);
        assert_eq!(closed.headers()[header::CONNECTION], "close");
    }
}
