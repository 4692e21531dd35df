//! `/oauth2/authorize`: the request checked, then the hosted sign-in (or a code at once for a
//! live session).

use super::*;

pub(super) async fn authorize(
    State(web): State<Web>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw: Vec<u8> = if method == Method::POST {
        if !is_form(&headers) {
            return web.error_page(StatusCode::BAD_REQUEST, "The sign-in request is malformed.");
        }
        body.to_vec()
    } else {
        uri.query().unwrap_or_default().as_bytes().to_vec()
    };
    let params = match parse_params(&raw) {
        Ok(p) => p,
        Err(e) => {
            return web.error_page(
                StatusCode::BAD_REQUEST,
                &format!("The sign-in request is malformed: {e}."),
            );
        }
    };
    let req = match web.provider.validate_authorize(&params).await {
        Ok(r) => r,
        Err(AuthorizeError::Page(message)) => {
            return web.error_page(StatusCode::BAD_REQUEST, &message);
        }
        Err(AuthorizeError::Redirect {
            redirect_uri,
            error,
            description,
            state,
        }) => {
            return redirect(&web.provider.redirect_with(
                &redirect_uri,
                &[("error", error), ("error_description", &description)],
                state.as_deref(),
            ));
        }
    };
    let session = match cookie(&headers, web.cookies.idp_session()) {
        Some(secret) => match web.provider.session_from_cookie(secret).await {
            Ok(s) => s,
            Err(_) => {
                return web.error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The sign-in service is unavailable. Try again shortly.",
                );
            }
        },
        None => None,
    };
    if let Some((session, _user)) = session.filter(|(s, _)| web.provider.session_satisfies(&req, s))
    {
        return match web.provider.issue_code(&req, &session).await {
            Ok(location) => redirect(&location),
            Err(_) => web.error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The sign-in service is unavailable. Try again shortly.",
            ),
        };
    }
    if req.prompt.as_deref() == Some("none") {
        return redirect(&web.provider.redirect_with(
            &req.redirect_uri,
            &[
                ("error", "login_required"),
                ("error_description", "the user is not signed in"),
            ],
            req.state.as_deref(),
        ));
    }
    let sealed = web.provider.seal_request(&req);
    redirect(&format!(
        "/login?request={}",
        url::form_urlencoded::byte_serialize(sealed.as_bytes()).collect::<String>()
    ))
}
