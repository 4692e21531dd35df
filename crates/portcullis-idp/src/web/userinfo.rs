//! `/oauth2/userInfo`.

use super::*;
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let v = first.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(super) async fn userinfo(State(web): State<Web>, headers: HeaderMap) -> Response {
    let unauthorized = || {
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            json!({ "error": "invalid_token" }),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        r
    };
    let Some(token) = bearer(&headers) else {
        return unauthorized();
    };
    match web.provider.userinfo(token).await {
        Ok(info) => json_response(StatusCode::OK, info),
        Err(e @ (OAuthError::ServerError | OAuthError::TemporarilyUnavailable)) => {
            oauth_error(&e, false)
        }
        Err(_) => unauthorized(),
    }
}
