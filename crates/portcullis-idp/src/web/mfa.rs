//! The second step of a sign-in (`/login/mfa`), enrolment when a factor is required and missing
//! (`/login/enrol`, then the recovery codes and `/login/continue`), and the account page's
//! management of factors (`/account/mfa/*`). Decisions are the provider's (`mfa.rs`).

use super::account::{posted, render_with};
use super::login::{finish_sign_in, read_form};
use super::*;
use crate::mfa::{Enrolment, SecondFactor};

const UNAVAILABLE: &str = "The sign-in service is unavailable. Try again shortly.";

/// The page for what follows a right password: the code form, or the enrolment form.
pub(super) async fn second_step_page(
    web: &Web,
    sealed: &str,
    csrf: &str,
    next: SignIn,
    error: Option<&str>,
) -> Response {
    match next {
        SignIn::SecondFactor { ticket, user } => {
            let passkey = web
                .provider
                .store()
                .credentials_of(&user.id)
                .await
                .is_ok_and(|c| !c.is_empty());
            code_form(web, sealed, csrf, &ticket, &user.username, passkey, error)
        }
        SignIn::Enrol {
            ticket,
            user,
            enrolment,
        } => enrol_form(
            web,
            sealed,
            csrf,
            &ticket,
            &user.username,
            &enrolment,
            error,
        ),
        _ => web.error_page(StatusCode::INTERNAL_SERVER_ERROR, UNAVAILABLE),
    }
}

fn status_for(error: Option<&str>) -> StatusCode {
    if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    }
}

#[allow(clippy::too_many_arguments)]
fn code_form(
    web: &Web,
    sealed: &str,
    csrf: &str,
    ticket: &str,
    username: &str,
    passkey: bool,
    error: Option<&str>,
) -> Response {
    web.page(
        status_for(error),
        "mfa.html",
        json!({
            "request": sealed, "csrf": csrf, "ticket": ticket, "username": username, "error": error,
            "passkey": passkey && web.provider.passkeys_available(),
        }),
    )
}

#[allow(clippy::too_many_arguments)]
fn enrol_form(
    web: &Web,
    sealed: &str,
    csrf: &str,
    ticket: &str,
    username: &str,
    enrolment: &Enrolment,
    error: Option<&str>,
) -> Response {
    web.page(
        status_for(error),
        "mfa_enrol.html",
        json!({
            "request": sealed, "csrf": csrf, "ticket": ticket, "username": username, "error": error,
            "action": "/login/enrol", "qr_svg": enrolment.qr_svg, "secret": enrolment.secret,
            "intro": "Your account must use a second factor. Add it to an authenticator app to continue.",
        }),
    )
}

fn recovery_page(web: &Web, codes: &[String], action: &str, sealed: &str, csrf: &str) -> Response {
    web.page(
        StatusCode::OK,
        "mfa_recovery.html",
        json!({ "codes": codes, "action": action, "request": sealed, "csrf": csrf }),
    )
}

fn locked_message(seconds: i64) -> String {
    format!(
        "Too many failed attempts. Try again in {seconds} second{}.",
        if seconds == 1 { "" } else { "s" }
    )
}

/// `POST /login/mfa` and `POST /login/enrol`.
async fn second_step_submit(
    web: Web,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
    enrol: bool,
) -> Response {
    let (form, csrf) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let sealed = field("request");
    let Some(req) = web.provider.open_request(sealed) else {
        return web.error_page(StatusCode::BAD_REQUEST, "This sign-in page has expired.");
    };
    let ticket = field("ticket");
    let expired = || {
        web.error_page(
            StatusCode::BAD_REQUEST,
            "This page has expired. Go back to the application and sign in again.",
        )
    };
    let user = match web.provider.mfa_ticket_user(ticket, enrol).await {
        Ok(Some(u)) => u,
        Ok(None) => return expired(),
        Err(_) => return web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    };
    let again = |message: String| form_again(&web, sealed, &csrf, ticket, &user, enrol, message);
    if !web.address_allowed(peer.ip()).await {
        return again(
            "Too many sign-in attempts from your network. Wait a minute and try again.".into(),
        )
        .await;
    }
    match web
        .provider
        .complete_second_factor(ticket, field("code"), enrol)
        .await
    {
        Ok(SecondFactor::Session {
            session,
            secret,
            recovery_codes,
        }) => {
            tracing::info!(client_id = %req.client_id, "second factor accepted");
            let actor = crate::audit::Actor::user(&user.id, &peer.ip().to_string());
            web.audit(
                "signin.success",
                &actor,
                &user.username,
                json!({ "client_id": req.client_id, "amr": session.amr }),
            )
            .await;
            if recovery_codes.is_empty() {
                return finish_sign_in(&web, &req, &session, &secret).await;
            }
            // The session cookie now; the application after the codes are saved.
            let mut r = recovery_page(&web, &recovery_codes, "/login/continue", sealed, &csrf);
            r.headers_mut()
                .append(header::SET_COOKIE, web.session_cookie(Some(&secret)));
            r
        }
        Ok(SecondFactor::Wrong) => {
            tracing::info!(client_id = %req.client_id, "second factor refused");
            let actor = crate::audit::Actor::user(&user.id, &peer.ip().to_string());
            web.audit(
                "mfa.failure",
                &actor,
                &user.username,
                json!({ "client_id": req.client_id }),
            )
            .await;
            again("That code is not right, or was already used. Try the next one.".into()).await
        }
        Ok(SecondFactor::Locked { seconds }) => again(locked_message(seconds)).await,
        Ok(SecondFactor::Expired) => expired(),
        Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    }
}

/// The second-step form again, with a message.
async fn form_again(
    web: &Web,
    sealed: &str,
    csrf: &str,
    ticket: &str,
    user: &portcullis_store::User,
    enrol: bool,
    message: String,
) -> Response {
    if !enrol {
        let passkey = web
            .provider
            .store()
            .credentials_of(&user.id)
            .await
            .is_ok_and(|c| !c.is_empty());
        return code_form(
            web,
            sealed,
            csrf,
            ticket,
            &user.username,
            passkey,
            Some(&message),
        );
    }
    match web.provider.pending_enrolment(user).await {
        Ok(Some(e)) => enrol_form(
            web,
            sealed,
            csrf,
            ticket,
            &user.username,
            &e,
            Some(&message),
        ),
        _ => web.error_page(
            StatusCode::BAD_REQUEST,
            "This page has expired. Go back to the application and sign in again.",
        ),
    }
}

pub(super) async fn mfa_submit(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    second_step_submit(web, peer, headers, body, false).await
}

pub(super) async fn enrol_submit(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    second_step_submit(web, peer, headers, body, true).await
}

/// `POST /login/continue`: after the recovery codes of an enrolment at sign-in, back to the
/// application with the session that enrolment started (it must be that fresh).
pub(super) async fn continue_submit(
    State(web): State<Web>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (form, _) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let sealed = form.get("request").map(String::as_str).unwrap_or_default();
    let Some(req) = web.provider.open_request(sealed) else {
        return web.error_page(StatusCode::BAD_REQUEST, "This sign-in page has expired.");
    };
    let Some(secret) = cookie(&headers, web.cookies.idp_session()) else {
        return web.error_page(StatusCode::BAD_REQUEST, "This sign-in page has expired.");
    };
    let session = match web.provider.session_from_cookie(secret).await {
        Ok(Some((session, _))) => session,
        Ok(None) => {
            return web.error_page(StatusCode::BAD_REQUEST, "This sign-in page has expired.");
        }
        Err(_) => return web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    };
    let fresh = web.provider.now() - session.auth_time <= 15 * 60;
    if !fresh || !session.amr.iter().any(|a| a == "mfa") {
        return web.error_page(StatusCode::BAD_REQUEST, "This sign-in page has expired.");
    }
    match web.provider.issue_code(&req, &session).await {
        Ok(location) => redirect(&location),
        Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    }
}

// ---- the account page ----------------------------------------------------------------------

/// `POST /account/mfa/begin`: a new TOTP secret to scan.
pub(super) async fn account_begin(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, _, csrf) = match posted(&web, peer, &headers, &body, true).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    match web.provider.begin_totp(&user).await {
        Ok(Some(e)) => web.page(
            StatusCode::OK,
            "mfa_enrol.html",
            json!({
                "request": "", "csrf": csrf, "ticket": "", "username": user.username,
                "action": "/account/mfa/confirm", "qr_svg": e.qr_svg, "secret": e.secret,
                "intro": "Scan the code with an authenticator app, then type the code it shows.",
            }),
        ),
        Ok(None) => {
            render_with(
                &web,
                &session,
                &user,
                &csrf,
                Some("An authenticator app is already set up; remove it first."),
                None,
            )
            .await
        }
        Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    }
}

/// `POST /account/mfa/confirm`: the first code; then the recovery codes, once.
pub(super) async fn account_confirm(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, form, csrf) = match posted(&web, peer, &headers, &body, false).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let code = form.get("code").map(String::as_str).unwrap_or_default();
    match web.provider.confirm_totp(&user, code).await {
        Ok(Some(codes)) => recovery_page(&web, &codes, "", "", &csrf),
        Ok(None) => match web.provider.pending_enrolment(&user).await {
            Ok(Some(e)) => web.page(
                StatusCode::BAD_REQUEST,
                "mfa_enrol.html",
                json!({
                    "request": "", "csrf": csrf, "ticket": "", "username": user.username,
                    "action": "/account/mfa/confirm", "qr_svg": e.qr_svg, "secret": e.secret,
                    "error": "That code is not right. Check the time on your phone and try the next one.",
                }),
            ),
            Ok(None) => render_with(&web, &session, &user, &csrf, Some("Start again: the setup expired."), None).await,
            Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
        },
        Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    }
}

/// `POST /account/mfa/recovery`: ten new recovery codes (the password is required).
pub(super) async fn account_recovery(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, _, csrf) = match posted(&web, peer, &headers, &body, true).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    match web.provider.has_mfa(&user).await {
        Ok(true) => match web.provider.new_recovery_codes(&user).await {
            Ok(codes) => recovery_page(&web, &codes, "", "", &csrf),
            Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
        },
        Ok(false) => {
            render_with(
                &web,
                &session,
                &user,
                &csrf,
                Some("Set up an authenticator app first."),
                None,
            )
            .await
        }
        Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    }
}

/// `POST /account/mfa/remove`: removes the second factors (the password is required). A user
/// who must use one enrols again at the next sign-in.
pub(super) async fn account_remove(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, _, csrf) = match posted(&web, peer, &headers, &body, true).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    match web.provider.remove_mfa(&user, "user").await {
        Ok(_) => {
            render_with(
                &web,
                &session,
                &user,
                &csrf,
                None,
                Some("The authenticator app and the recovery codes are removed."),
            )
            .await
        }
        Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    }
}
