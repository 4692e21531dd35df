//! The answers portcullis builds itself — JSON errors, redirects, closing the connection — one
//! set shared by the gateway, the identity provider's pages and the browser sessions. None of
//! them may be cached: they are about one caller at one moment.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// `response` with `Cache-Control: no-store`.
pub fn no_store(response: impl IntoResponse) -> Response {
    let mut r = response.into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A JSON answer, never cached.
pub fn json(status: StatusCode, body: serde_json::Value) -> Response {
    no_store((status, axum::Json(body)))
}

/// A JSON error answer: `{"error": code}`.
pub fn error(status: StatusCode, code: &'static str) -> Response {
    json(status, serde_json::json!({ "error": code }))
}

/// A redirect (`302 Found` or `303 See Other`) to `location`, never cached. A location that
/// cannot be a header value gives the redirect without one (a bug upstream of this function).
pub fn redirect(status: StatusCode, location: &str) -> Response {
    let mut r = no_store(status);
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `response`, with the connection closed after it: for requests whose framing or body cannot
/// be trusted to have ended where the server thinks.
pub fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_never_cached_and_say_what_they_are() {
        let r = error(StatusCode::FORBIDDEN, "forbidden");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = redirect(StatusCode::SEE_OTHER, "/home?x=1");
        assert_eq!(
            (r.status(), r.headers()[header::LOCATION].to_str().ok()),
            (StatusCode::SEE_OTHER, Some("/home?x=1"))
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let r = closing(redirect(StatusCode::FOUND, "/"));
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }
}
