//! `/login`: the hosted sign-in page and its form; the decision is the provider's
//! ([`Provider::sign_in`]).

use super::*;
pub(super) fn login_form(
    web: &Web,
    req: &AuthorizeRequest,
    sealed: &str,
    csrf: &str,
    username: &str,
    error: Option<&str>,
    client_name: &str,
) -> Response {
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    web.page(status, "login.html", json!({ "request": sealed, "csrf": csrf, "username": username, "error": error, "client_name": client_name, "_hint": req.login_hint }))
}

pub(super) async fn client_name(web: &Web, client_id: &str) -> String {
    match web.provider.store().client(client_id).await {
        Ok(Some(c)) => c.name,
        _ => "the application".into(),
    }
}

pub(super) async fn login_page(State(web): State<Web>, uri: Uri, headers: HeaderMap) -> Response {
    let params = parse_params(uri.query().unwrap_or_default().as_bytes()).unwrap_or_default();
    let Some(sealed) = params.get("request") else {
        return web.error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in starts from the application you want to use.",
        );
    };
    let Some(req) = web.provider.open_request(sealed) else {
        return web.error_page(StatusCode::BAD_REQUEST, "This sign-in page has expired.");
    };
    // Double-submit CSRF token: a random cookie, echoed in the form.
    let (csrf, new_cookie) = match cookie(&headers, web.cookies.csrf()) {
        Some(c) if c.len() == 43 => (c.to_owned(), None),
        _ => {
            let c = random_token().expose().clone();
            (c.clone(), Some(c))
        }
    };
    let name = client_name(&web, &req.client_id).await;
    let mut r = login_form(
        &web,
        &req,
        sealed,
        &csrf,
        req.login_hint.as_deref().unwrap_or_default(),
        None,
        &name,
    );
    if let Some(c) = new_cookie {
        r.headers_mut().append(
            header::SET_COOKIE,
            web.set_cookie(web.cookies.csrf(), &c, None, SameSite::Strict),
        );
    }
    r
}

pub(super) async fn login_submit(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_form(&headers) || body.len() > MAX_FORM {
        return web.error_page(
            StatusCode::BAD_REQUEST,
            "The sign-in form was not sent correctly.",
        );
    }
    let Ok(form) = parse_params(&body) else {
        return web.error_page(
            StatusCode::BAD_REQUEST,
            "The sign-in form was not sent correctly.",
        );
    };
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let csrf_cookie = cookie(&headers, web.cookies.csrf()).unwrap_or_default();
    if csrf_cookie.is_empty() || !constant_time_eq(csrf_cookie.as_bytes(), field("csrf").as_bytes())
    {
        return web.error_page(StatusCode::FORBIDDEN, "The sign-in form expired or was sent from another site. Go back to the application and try again.");
    }
    let sealed = field("request");
    let Some(req) = web.provider.open_request(sealed) else {
        return web.error_page(StatusCode::BAD_REQUEST, "This sign-in page has expired.");
    };
    let username = field("username").trim().to_owned();
    let name = client_name(&web, &req.client_id).await;
    // The form again, with a message.
    let again = |message: &str| {
        login_form(
            &web,
            &req,
            sealed,
            csrf_cookie,
            &username,
            Some(message),
            &name,
        )
    };
    if !web.address_allowed(peer.ip()) {
        return again("Too many sign-in attempts from your network. Wait a minute and try again.");
    }
    let password = Secret::new(field("password").to_owned());
    let (session, secret) = match web.provider.sign_in(&username, password).await {
        Ok(SignIn::Session { session, secret }) => (*session, secret),
        Ok(SignIn::Locked { seconds }) => {
            let msg = format!(
                "Too many failed attempts. Try again in {seconds} second{}.",
                if seconds == 1 { "" } else { "s" }
            );
            return again(&msg);
        }
        Ok(SignIn::Refused) => {
            tracing::info!(client_id = %req.client_id, "sign-in failed");
            // One message for an unknown user, a wrong password and a disabled account.
            return again("Incorrect username or password.");
        }
        Err(_) => {
            return web.error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The sign-in service is unavailable. Try again shortly.",
            );
        }
    };
    tracing::info!(client_id = %req.client_id, sid = %session.sid, "signed in");
    match web.provider.issue_code(&req, &session).await {
        Ok(location) => {
            let mut r = redirect(&location);
            let ttl = web.provider.settings().session_ttl;
            r.headers_mut().append(
                header::SET_COOKIE,
                web.set_cookie(
                    web.cookies.idp_session(),
                    secret.expose(),
                    Some(ttl),
                    SameSite::Lax,
                ),
            );
            r
        }
        Err(_) => web.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The sign-in service is unavailable. Try again shortly.",
        ),
    }
}
