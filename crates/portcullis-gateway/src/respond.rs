//! The gateway's own answers: JSON errors, redirects, and closing the connection after one.

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

/// A JSON answer, never cached.
pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON error answer: `{"error": code}`.
pub(crate) fn error(status: StatusCode, code: &'static str) -> Response<Body> {
    json(status, json!({ "error": code }))
}

/// `400 {"error":"bad_request","message":…}`.
pub(crate) fn bad_request(message: &str) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        json!({ "error": "bad_request", "message": message }),
    )
}

/// `302` to `location`, never cached.
pub(crate) fn redirect(location: &str) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `response`, with the connection closed after it: for requests whose framing or body cannot be
/// trusted to have ended where the server thinks.
pub(crate) fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
