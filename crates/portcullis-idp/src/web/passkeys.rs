//! Passkey ceremonies over HTTP: small JSON endpoints for the one script of the hosted pages
//! (`/portcullis/passkeys.js`). Every POST is a form with the CSRF token; decisions are the
//! provider's (`passkeys.rs`).

use super::account::signed_in;
use super::login::read_form;
use super::*;
use crate::passkeys::PasskeyError;

const SCRIPT: &str = include_str!("../../assets/passkeys.js");

pub(super) async fn script() -> Response {
    let mut r = (StatusCode::OK, SCRIPT).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn failed(e: PasskeyError) -> Response {
    match e {
        PasskeyError::Refused(message) => {
            json_response(StatusCode::BAD_REQUEST, json!({ "message": message }))
        }
        PasskeyError::Server(e) => {
            tracing::error!(error = %e, "passkey ceremony failed");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "message": "The service is unavailable. Try again shortly." }),
            )
        }
    }
}

fn message(status: StatusCode, text: &str) -> Response {
    json_response(status, json!({ "message": text }))
}

fn begun((ceremony, options): (String, Value)) -> Response {
    json_response(
        StatusCode::OK,
        json!({ "ceremony": ceremony, "options": options }),
    )
}

// ---- the account page ----------------------------------------------------------------------

pub(super) async fn account_begin(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = read_form(&web, &headers, &body) {
        return *r;
    }
    let Ok((_, user)) = signed_in(&web, &headers).await else {
        return message(StatusCode::UNAUTHORIZED, "Sign in again to add a passkey.");
    };
    if !web.account_action_allowed(peer.ip()).await {
        return message(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests. Wait a while.",
        );
    }
    match web.provider.begin_passkey_registration(&user).await {
        Ok(b) => begun(b),
        Err(e) => failed(e),
    }
}

pub(super) async fn account_finish(
    State(web): State<Web>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (form, _) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let Ok((_, user)) = signed_in(&web, &headers).await else {
        return message(StatusCode::UNAUTHORIZED, "Sign in again to add a passkey.");
    };
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    match web
        .provider
        .finish_passkey_registration(&user, field("ceremony"), field("credential"), field("name"))
        .await
    {
        Ok(_) => json_response(
            StatusCode::OK,
            json!({ "location": "/account?added=passkey" }),
        ),
        Err(e) => failed(e),
    }
}

// ---- sign-in -------------------------------------------------------------------------------

/// The sealed request of a sign-in form, or the JSON answer when it has expired.
fn request_of(
    web: &Web,
    form: &BTreeMap<String, String>,
) -> Result<(String, AuthorizeRequest), Box<Response>> {
    let sealed = form.get("request").cloned().unwrap_or_default();
    match web.provider.open_request(&sealed) {
        Some(req) => Ok((sealed, req)),
        None => Err(Box::new(message(
            StatusCode::BAD_REQUEST,
            "This sign-in page has expired. Go back to the application and start again.",
        ))),
    }
}

/// `POST /login/passkey/begin` (passwordless) and `/login/mfa/passkey/begin` (second factor).
async fn sign_in_begin(
    web: Web,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
    second: bool,
) -> Response {
    let (form, _) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    if let Err(r) = request_of(&web, &form) {
        return *r;
    }
    if !web.address_allowed(peer.ip()).await {
        return message(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts from your network. Wait a minute.",
        );
    }
    let user = if second {
        let ticket = form.get("ticket").map(String::as_str).unwrap_or_default();
        match web.provider.mfa_ticket_user(ticket, false).await {
            Ok(Some(u)) => Some(u),
            Ok(None) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    "This page has expired. Sign in again.",
                );
            }
            Err(e) => return failed(PasskeyError::Server(e)),
        }
    } else {
        None
    };
    match web.provider.begin_passkey_sign_in(user.as_ref()).await {
        Ok(b) => begun(b),
        Err(e) => failed(e),
    }
}

async fn sign_in_finish(
    web: Web,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
    second: bool,
) -> Response {
    let (form, _) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let (_, req) = match request_of(&web, &form) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if !web.address_allowed(peer.ip()).await {
        return message(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts from your network. Wait a minute.",
        );
    }
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let expected = if second {
        match web.provider.mfa_ticket_user(field("ticket"), false).await {
            Ok(Some(u)) => Some(u),
            Ok(None) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    "This page has expired. Sign in again.",
                );
            }
            Err(e) => return failed(PasskeyError::Server(e)),
        }
    } else {
        None
    };
    let (user, key) = match web
        .provider
        .finish_passkey_sign_in(expected.as_ref(), field("ceremony"), field("credential"))
        .await
    {
        Ok(found) => found,
        Err(e) => {
            if matches!(e, PasskeyError::Refused(_)) {
                let actor = crate::audit::Actor::anonymous(peer.ip());
                let subject = expected
                    .as_ref()
                    .map(|u| u.username.clone())
                    .unwrap_or_default();
                web.audit(
                    "passkey.failure",
                    &actor,
                    &subject,
                    json!({ "client_id": req.client_id, "reason": e.to_string() }),
                )
                .await;
            }
            return failed(e);
        }
    };
    if !second && web.provider.must_verify_email(&user) {
        if let Err(e) = web.accounts.send_verification(&user, None).await {
            tracing::error!(error = %e, "verification mail not queued");
        }
        return message(
            StatusCode::FORBIDDEN,
            "Confirm your e-mail address first: we sent a link to it (check your spam folder too).",
        );
    }
    let amr: Vec<&str> = if second {
        vec![
            web.provider.ticket_first_factor(field("ticket")),
            key,
            "mfa",
        ]
    } else {
        vec![key, "mfa"]
    };
    let (session, secret) = match web.provider.start_session(&user, &amr).await {
        Ok(s) => s,
        Err(e) => return failed(PasskeyError::Server(e)),
    };
    tracing::info!(client_id = %req.client_id, sid = %session.sid, "signed in with a passkey");
    let actor = crate::audit::Actor::user(&user.id, &peer.ip().to_string());
    web.audit(
        "signin.success",
        &actor,
        &user.username,
        json!({ "client_id": req.client_id, "amr": session.amr }),
    )
    .await;
    match web.provider.issue_code(&req, &session).await {
        Ok(location) => {
            let mut r = json_response(StatusCode::OK, json!({ "location": location }));
            r.headers_mut()
                .append(header::SET_COOKIE, web.session_cookie(Some(&secret)));
            r
        }
        Err(e) => failed(PasskeyError::Server(e)),
    }
}

pub(super) async fn login_begin(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sign_in_begin(web, peer, headers, body, false).await
}

pub(super) async fn login_finish(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sign_in_finish(web, peer, headers, body, false).await
}

pub(super) async fn mfa_begin(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sign_in_begin(web, peer, headers, body, true).await
}

pub(super) async fn mfa_finish(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sign_in_finish(web, peer, headers, body, true).await
}
