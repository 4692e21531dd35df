//! One place that records what each request came to: the request metrics and the access log.

use std::cell::RefCell;
use std::collections::HashMap;
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
        HANDLES.with(|h| {
            let mut h = h.borrow_mut();
            h.request(route, status, outcome.decision).increment(1);
            h.duration(outcome.decision).record(elapsed.as_secs_f64());
        });
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

/// Records how long the upstream took (`portcullis_gateway_upstream_seconds`).
pub(crate) fn upstream_seconds(seconds: f64) {
    HANDLES.with(|h| {
        h.borrow_mut()
            .upstream
            .get_or_insert_with(|| metrics::histogram!("portcullis_gateway_upstream_seconds"))
            .record(seconds);
    });
}

type Fast = foldhash::fast::RandomState;
type ByStatus = HashMap<(u16, &'static str), metrics::Counter, Fast>;

/// This thread's handles to the request metrics. The `metrics` macros build a labelled key
/// (allocating its list of labels) and look it up in the recorder's registry — a map behind
/// locks shared by every thread — on every call; a handle once found is kept here instead.
#[derive(Default)]
struct Handles {
    /// By route, then by (status, decision).
    requests: HashMap<Box<str>, ByStatus, Fast>,
    durations: HashMap<&'static str, metrics::Histogram, Fast>,
    upstream: Option<metrics::Histogram>,
    /// Handles in `requests`; past [`MAX_HANDLES`] they are dropped and found again.
    kept: usize,
}

/// Routes come from the configuration and decisions are a fixed set, but an upstream may answer
/// with any status: a bound on what one thread keeps.
const MAX_HANDLES: usize = 4096;

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::new(Handles::default());
}

impl Handles {
    fn request(
        &mut self,
        route: &Arc<str>,
        status: u16,
        decision: &'static str,
    ) -> &metrics::Counter {
        if self.kept >= MAX_HANDLES {
            self.requests.clear();
            self.kept = 0;
        }
        if !self.requests.contains_key(&**route) {
            self.requests
                .insert(Box::from(&**route), HashMap::default());
        }
        let by_status = self.requests.get_mut(&**route).expect("inserted above");
        let kept = &mut self.kept;
        by_status.entry((status, decision)).or_insert_with(|| {
            *kept += 1;
            metrics::counter!("portcullis_gateway_requests_total", "route" => route.clone(), "status" => status_label(status), "decision" => decision)
        })
    }

    fn duration(&mut self, decision: &'static str) -> &metrics::Histogram {
        self.durations.entry(decision).or_insert_with(|| {
            metrics::histogram!("portcullis_gateway_request_duration_seconds", "decision" => decision)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_metric_handles_stay_bounded() {
        let mut h = Handles::default();
        let routes: Vec<Arc<str>> = (0..8).map(|i| Arc::from(format!("/r{i}/**"))).collect();
        for route in &routes {
            for status in 100..999 {
                h.request(route, status, "allowed");
                h.request(route, status, "allowed");
            }
        }
        let held: usize = h.requests.values().map(|m| m.len()).sum();
        assert_eq!(held, h.kept);
        assert!(h.kept <= MAX_HANDLES, "{} handles", h.kept);
        // The same labels find the same handle.
        h.request(&routes[0], 200, "public");
        let before = h.kept;
        h.request(&routes[0], 200, "public");
        assert_eq!(h.kept, before);
    }
}
