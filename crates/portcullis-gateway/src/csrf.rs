//! Stage 6, CSRF: a cookie travels with requests other sites make, so an unsafe request (or a
//! WebSocket handshake) that authenticated with the cookie must come from our own origin.

use axum::http::{HeaderMap, Method, header};

use crate::authn::Identity;
use crate::reject::Reject;

/// The CSRF rule for cookie-authenticated unsafe requests, shared by the gateway and the
/// session endpoints: `Origin` equals `origin`, or (without `Origin`) `Sec-Fetch-Site:
/// same-origin`. A missing or `null` origin is not same-origin.
pub fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    match headers.get(header::ORIGIN) {
        Some(o) => o.to_str().is_ok_and(|o| o == origin),
        None => headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("same-origin"),
    }
}

/// Refuses a cross-site request that carried its credential in the cookie and could change
/// something: an unsafe method, or a WebSocket handshake (a GET that opens a channel both ways:
/// cross-site WebSocket hijacking). Bearer requests are exempt: no browser adds them by itself.
/// A route's CORS settings may invite credentialed calls from other origins: an unsafe request
/// whose `Origin` is one of them passes (never a WebSocket handshake, which CORS does not cover).
pub(crate) fn check(
    from_cookie: bool,
    method: &Method,
    headers: &HeaderMap,
    origin: &str,
    cors: Option<&crate::cors::Cors>,
    id: &Identity,
) -> Result<(), Reject> {
    let upgrade = headers.contains_key(header::UPGRADE);
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && !upgrade;
    if !from_cookie || safe || same_origin(headers, origin) {
        return Ok(());
    }
    if !upgrade && cors.is_some_and(|c| c.invites_credentials(headers)) {
        return Ok(());
    }
    Err(Reject::CrossSite {
        sub: id.sub.clone(),
    })
}
