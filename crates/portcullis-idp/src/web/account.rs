//! `/account`: the signed-in user's own page at the provider (the provider's session cookie
//! says who): change the password or the e-mail address (the current password required), see the
//! sessions and sign out of the others, delete the account when the operator allows it.

use portcullis_store::{Session, User};

use super::login::{csrf_token, read_form, sentence, with_csrf_cookie};
use super::*;
use crate::accounts::AccountError;

const UNAVAILABLE: &str = "The service is unavailable. Try again shortly.";

/// What the page says after an action.
#[derive(Default)]
struct Outcome<'a> {
    error: Option<&'a str>,
    message: Option<&'a str>,
    strength: Option<u8>,
}

fn when(unix: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// The signed-in user and session, or the page to answer with.
pub(super) async fn signed_in(
    web: &Web,
    headers: &HeaderMap,
) -> Result<(Session, User), Box<Response>> {
    let Some(secret) = cookie(headers, web.cookies.idp_session()) else {
        return Err(Box::new(signed_out(web)));
    };
    match web.provider.session_from_cookie(secret).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(Box::new(signed_out(web))),
        Err(_) => Err(Box::new(
            web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
        )),
    }
}

fn signed_out(web: &Web) -> Response {
    web.page(
        StatusCode::UNAUTHORIZED,
        "notice.html",
        json!({
            "title": "Sign in to manage your account",
            "message": "You are not signed in.",
            "link": "/auth/login?return_to=/account",
            "link_text": "Sign in",
        }),
    )
}

async fn render(
    web: &Web,
    session: &Session,
    user: &User,
    csrf: &str,
    outcome: Outcome<'_>,
) -> Response {
    let sessions = match web
        .provider
        .store()
        .user_sessions(&user.id, web.provider.now())
        .await
    {
        Ok(s) => s,
        Err(_) => return web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    };
    let sessions: Vec<Value> = sessions
        .iter()
        .map(|(s, clients)| {
            json!({ "created": when(s.created_at), "current": s.sid == session.sid, "clients": clients })
        })
        .collect();
    let passkeys = match web.provider.passkeys(user).await {
        Ok(p) => p,
        Err(_) => return web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    };
    let passkeys: Vec<Value> = passkeys
        .iter()
        .map(|p| {
            json!({
                "cred_id": p.cred_id, "name": p.name, "created": when(p.created_at),
                "last_used": p.last_used_at.map(when),
            })
        })
        .collect();
    let (mfa, recovery_left) = match (
        web.provider.has_mfa(user).await,
        web.provider.store().recovery_codes_left(&user.id).await,
    ) {
        (Ok(m), Ok(n)) => (m, n),
        _ => return web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    };
    let linked = match web.provider.store().identities_of(&user.id).await {
        Ok(l) => l,
        Err(_) => return web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    };
    let providers = web.provider.federated_providers();
    let name_of = |id: &str| {
        providers
            .iter()
            .find(|p| p.rules.id == id)
            .map_or_else(|| id.to_owned(), |p| p.rules.name.clone())
    };
    let identities: Vec<Value> = linked
        .iter()
        .map(|i| {
            json!({
                "provider": i.provider, "name": name_of(&i.provider), "subject": i.subject,
                "email": i.email, "linked": when(i.created_at), "last_used": when(i.last_used_at),
            })
        })
        .collect();
    let linkable: Vec<Value> = providers
        .iter()
        .filter(|p| !linked.iter().any(|i| i.provider == p.rules.id))
        .map(|p| json!({ "id": p.rules.id, "name": p.rules.name }))
        .collect();
    let a = &web.provider.settings().accounts;
    let status = if outcome.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    web.page(
        status,
        "account.html",
        json!({
            "username": user.username,
            "identities": identities,
            "linkable": linkable,
            "has_password": user.password_hash.is_some(),
            "email": user.email,
            "email_verified": user.email_verified,
            "mail": a.mail,
            "deletion": a.self_deletion,
            "csrf": csrf,
            "sessions": sessions,
            "error": outcome.error,
            "message": outcome.message,
            "strength": outcome.strength,
            "min_length": web.provider.pool().policy().min_chars,
            "mfa": mfa,
            "recovery_left": recovery_left,
            "session_mfa": session.amr.iter().any(|a| a == "mfa"),
            "passkeys": passkeys,
            "passkeys_available": web.provider.passkeys_available(),
            "totp": web.provider.has_totp(user).await.unwrap_or(false),
        }),
    )
}

/// The account page with an error or a message (for the second-factor handlers).
pub(super) async fn render_with(
    web: &Web,
    session: &Session,
    user: &User,
    csrf: &str,
    error: Option<&str>,
    message: Option<&str>,
) -> Response {
    let outcome = Outcome {
        error,
        message,
        ..Outcome::default()
    };
    render(web, session, user, csrf, outcome).await
}

pub(super) async fn account_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let (session, user) = match signed_in(&web, &headers).await {
        Ok(found) => found,
        Err(r) => return *r,
    };
    let (csrf, set) = csrf_token(&web, &headers);
    with_csrf_cookie(
        render(&web, &session, &user, &csrf, Outcome::default()).await,
        set,
    )
}

/// A posted account form: the user, their session, the fields and the CSRF token, once the
/// form is well-formed, the network is within its budget and, where `password` is asked for,
/// the current password is right.
pub(super) async fn posted(
    web: &Web,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
    password: bool,
) -> Result<(Session, User, BTreeMap<String, String>, String), Box<Response>> {
    let (form, csrf) = read_form(web, headers, body)?;
    let (session, user) = signed_in(web, headers).await?;
    if !web.account_action_allowed(peer.ip()).await {
        let mut r = web.error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests from your network. Wait a while and try again.",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return Err(Box::new(r));
    }
    if password {
        let current = Secret::new(form.get("current_password").cloned().unwrap_or_default());
        match web
            .provider
            .pool()
            .authenticate(&user.username, current)
            .await
        {
            Ok(Some(u)) if u.id == user.id => {}
            Ok(_) => {
                let outcome = Outcome {
                    error: Some("The current password is not right."),
                    ..Outcome::default()
                };
                return Err(Box::new(render(web, &session, &user, &csrf, outcome).await));
            }
            Err(_) => {
                return Err(Box::new(
                    web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
                ));
            }
        }
    }
    Ok((session, user, form, csrf))
}

pub(super) async fn change_password(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, form, csrf) = match posted(&web, peer, &headers, &body, true).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let password = Secret::new(form.get("password").cloned().unwrap_or_default());
    let mut context = vec![user.username.as_str()];
    context.extend(user.email.as_deref());
    let strength = web
        .provider
        .pool()
        .policy()
        .strength(password.expose(), &context);
    match web
        .provider
        .pool()
        .change_password(&user, password, &session.sid)
        .await
    {
        Ok(()) => {
            tracing::info!(user_id = %user.id, "password changed on the account page");
            let actor = crate::audit::Actor::user(&user.id, &peer.ip().to_string());
            web.audit(
                "account.password_change",
                &actor,
                &user.username,
                json!({ "other sessions": "revoked" }),
            )
            .await;
            let outcome = Outcome {
                message: Some("Your password is changed. Every other session is signed out."),
                ..Outcome::default()
            };
            render(&web, &session, &user, &csrf, outcome).await
        }
        Err(e) if e.is_user_error() => {
            let message = sentence(&e.to_string());
            let outcome = Outcome {
                error: Some(&message),
                strength: Some(strength),
                ..Outcome::default()
            };
            render(&web, &session, &user, &csrf, outcome).await
        }
        Err(e) => {
            tracing::error!(error = %e, "password change failed");
            web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
        }
    }
}

pub(super) async fn change_email(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !web.provider.settings().accounts.mail {
        return web.error_page(StatusCode::NOT_FOUND, "Addresses cannot be changed here.");
    }
    let (session, user, form, csrf) = match posted(&web, peer, &headers, &body, true).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let email = form.get("email").cloned().unwrap_or_default();
    match web.accounts.change_email(&user, &email).await {
        Ok(updated) => {
            let message = format!(
                "Your address is now {}. We sent a link to it to confirm it.",
                updated.email.as_deref().unwrap_or_default()
            );
            let outcome = Outcome {
                message: Some(&message),
                ..Outcome::default()
            };
            render(&web, &session, &updated, &csrf, outcome).await
        }
        Err(AccountError::Invalid(message)) => {
            let outcome = Outcome {
                error: Some(&message),
                ..Outcome::default()
            };
            render(&web, &session, &user, &csrf, outcome).await
        }
        Err(e) => {
            tracing::error!(error = %e, "address change failed");
            web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
        }
    }
}

pub(super) async fn resend_verification(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, _, csrf) = match posted(&web, peer, &headers, &body, false).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let message = match web.accounts.send_verification(&user, None).await {
        Ok(true) => "We sent a new confirmation link to your address.",
        Ok(false) => {
            "No link was sent: your address is confirmed, or several links were sent in the last hour."
        }
        Err(e) => {
            tracing::error!(error = %e, "verification mail not queued");
            return web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
        }
    };
    let outcome = Outcome {
        message: Some(message),
        ..Outcome::default()
    };
    render(&web, &session, &user, &csrf, outcome).await
}

pub(super) async fn sign_out_others(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, _, csrf) = match posted(&web, peer, &headers, &body, false).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    match web
        .provider
        .store()
        .revoke_other_sessions(&user.id, &session.sid, web.provider.now())
        .await
    {
        Ok(n) => {
            tracing::info!(user_id = %user.id, sessions = n, "other sessions signed out");
            let actor = crate::audit::Actor::user(&user.id, &peer.ip().to_string());
            web.audit(
                "session.end_others",
                &actor,
                &user.username,
                json!({ "sessions": n }),
            )
            .await;
            let outcome = Outcome {
                message: Some("Every other session is signed out."),
                ..Outcome::default()
            };
            render(&web, &session, &user, &csrf, outcome).await
        }
        Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    }
}

pub(super) async fn delete_account(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !web.provider.settings().accounts.self_deletion {
        return web.error_page(
            StatusCode::NOT_FOUND,
            "Accounts cannot be deleted here. Ask the application's administrator.",
        );
    }
    let (session, user, form, csrf) = match posted(&web, peer, &headers, &body, true).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if form.get("confirm").map(String::as_str) != Some("yes") {
        let outcome = Outcome {
            error: Some("Tick the box to confirm that you want to delete your account."),
            ..Outcome::default()
        };
        return render(&web, &session, &user, &csrf, outcome).await;
    }
    if let Err(e) = web.provider.pool().delete_user(&user.username, None).await {
        tracing::error!(error = %e, "account deletion failed");
        return web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
    }
    tracing::info!(user_id = %user.id, "account deleted by its user");
    let actor = crate::audit::Actor::user(&user.id, &peer.ip().to_string());
    web.audit(
        "account.delete",
        &actor,
        &user.username,
        json!({ "email": user.email, "groups": user.groups }),
    )
    .await;
    let mut r = web.page(
        StatusCode::OK,
        "notice.html",
        json!({ "title": "Account deleted", "message": "Your account is deleted and you are signed out everywhere." }),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, web.session_cookie(None));
    r
}

/// `POST /account/passkeys/remove`: removes one passkey (the password is required).
pub(super) async fn remove_passkey(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (session, user, form, csrf) = match posted(&web, peer, &headers, &body, true).await {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let cred_id = form.get("cred_id").map(String::as_str).unwrap_or_default();
    match web.provider.remove_passkey(&user, cred_id).await {
        Ok(true) => {
            let outcome = Outcome {
                message: Some("The passkey is removed."),
                ..Outcome::default()
            };
            render(&web, &session, &user, &csrf, outcome).await
        }
        Ok(false) => {
            let outcome = Outcome {
                error: Some("That passkey is not one of yours."),
                ..Outcome::default()
            };
            render(&web, &session, &user, &csrf, outcome).await
        }
        Err(_) => web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE),
    }
}
