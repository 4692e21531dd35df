//! The gateway's own answers: the shared set (`portcullis-http`), plus its 400 shape.

use axum::body::Body;
use axum::http::{Response, StatusCode};
use serde_json::json;

pub(crate) use portcullis_http::{closing, error, json};

/// `400 {"error":"bad_request","message":…}`.
pub(crate) fn bad_request(message: &str) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        json!({ "error": "bad_request", "message": message }),
    )
}

/// `302` to `location`, never cached.
pub(crate) fn redirect(location: &str) -> Response<Body> {
    portcullis_http::redirect(StatusCode::FOUND, location)
}
