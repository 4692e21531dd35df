//! One place that records what each request came to: the request metrics and the access log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderValue, Method};

/// What one request came to, for the access log and metrics (bounded label values only).
#[derive(Default)]
pub(crate) struct Outcome {
    /// Cookies to set on the response (a session refreshed in line).
    pub set_cookies: Vec<HeaderValue>,
    /// The canonical path, when access logging is on.
    pub path: Option<String>,
    pub route: Option<Arc<str>>,
    /// The caller's `sub`, when access logging is on.
    pub principal: Option<String>,
    pub decision: &'static str,
    /// The matched route's CORS settings and the request's `Origin`, for the answer's headers
    /// (a refusal's too, so the caller's script can read why).
    pub cors: Option<(Arc<crate::cors::Cors>, Option<HeaderValue>)>,
    /// What the route's rate limits have left, for the answer's `RateLimit` headers.
    pub limit: Option<crate::limits::LimitHeaders>,
}

/// Records one request: counters and latency by route, status and decision, and (when
/// `access_log` is on) one log line — the canonical path only, never the query (it may carry
/// secrets), never a token.
pub(crate) fn record(
    outcome: &Outcome,
    route: &Arc<str>,
    peer: SocketAddr,
    method: &Method,
    status: u16,
    started: Option<Instant>,
    access_log: bool,
) {
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    if crate::metrics_on() {
        metrics::counter!("portcullis_gateway_requests_total", "route" => route.clone(), "status" => status_label(status), "decision" => outcome.decision).increment(1);
        metrics::histogram!("portcullis_gateway_request_duration_seconds", "decision" => outcome.decision).record(elapsed.as_secs_f64());
    }
    if access_log {
        tracing::info!(
            target: "portcullis::access",
            client = %peer.ip(),
            method = %method,
            path = outcome.path.as_deref().unwrap_or("-"),
            route = &**route,
            principal = outcome.principal.as_deref().unwrap_or("-"),
            decision = outcome.decision,
            status,
            micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }
}

/// The status label of a metric: no allocation for the statuses a gateway answers with.
fn status_label(status: u16) -> metrics::SharedString {
    let s = match status {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        303 => "303",
        304 => "304",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(s)
}
