//! `/logout`: Cognito-style and OpenID RP-initiated sign-out.

use super::*;

pub(super) async fn logout(State(web): State<Web>, uri: Uri, headers: HeaderMap) -> Response {
    let Ok(params) = parse_params(uri.query().unwrap_or_default().as_bytes()) else {
        return web.error_page(
            StatusCode::BAD_REQUEST,
            "The sign-out request is malformed.",
        );
    };
    // Where to go afterwards: Cognito's client_id + logout_uri, or OIDC's id_token_hint (or
    // client_id) + post_logout_redirect_uri. Only an exactly registered sign-out URI is used.
    let hinted_client = params
        .get("id_token_hint")
        .and_then(|t| web.provider.id_token_hint(t))
        .map(|(_, aud)| aud);
    let client_id = params.get("client_id").cloned().or(hinted_client);
    let target = params
        .get("logout_uri")
        .or_else(|| params.get("post_logout_redirect_uri"));
    let mut location = None;
    if let (Some(client_id), Some(target)) = (&client_id, target) {
        match web.provider.store().client(client_id).await {
            Ok(Some(c)) if c.logout_uris.iter().any(|u| u == target) => {
                let mut url = target.clone();
                if let Some(state) = params.get("state") {
                    url = match url::Url::parse(target) {
                        Ok(mut u) => {
                            u.query_pairs_mut().append_pair("state", state);
                            u.to_string()
                        }
                        Err(_) => url,
                    };
                }
                location = Some(url);
            }
            Ok(_) => return web.error_page(StatusCode::BAD_REQUEST, "The address to return to after signing out is not registered for this application."),
            Err(_) => return web.error_page(StatusCode::SERVICE_UNAVAILABLE, "The sign-in service is unavailable. Try again shortly."),
        }
    }
    if let Some(secret) = cookie(&headers, web.cookies.idp_session())
        && let Ok(Some((session, _))) = web.provider.session_from_cookie(secret).await
        && let Err(e) = web.provider.end_session(&session.sid).await
    {
        tracing::error!(error = %e, "could not end the session");
        return web.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Signing out failed. Try again shortly.",
        );
    }
    let upstream = super::federated::upstream_logout(&web, &headers, location.as_deref()).await;
    let mut r = match (upstream, location) {
        (Some(u), _) => redirect(&u),
        (None, Some(l)) => redirect(&l),
        (None, None) => web.page(StatusCode::OK, "signed_out.html", json!({})),
    };
    r.headers_mut()
        .append(header::SET_COOKIE, web.session_cookie(None));
    r.headers_mut().append(
        header::SET_COOKIE,
        web.set_cookie(
            web.cookies.upstream_session(),
            "",
            Some(0),
            portcullis_token::cookie::SameSite::Lax,
        ),
    );
    r
}
