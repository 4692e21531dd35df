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
    let a = &web.provider.settings().accounts;
    let providers: Vec<Value> = web
        .provider
        .federated_providers()
        .iter()
        .map(|p| json!({ "id": p.rules.id, "name": p.rules.name, "logo_url": p.rules.logo_url }))
        .collect();
    web.page(status, "login.html", json!({ "providers": providers, "request": sealed, "csrf": csrf, "username": username, "error": error, "client_name": client_name, "_hint": req.login_hint, "forgot_password": a.mail, "signup": a.signup_open(), "passkeys": web.provider.passkeys_available() }))
}

/// The double-submit CSRF token of a hosted form: the browser's cookie, or a new one to set.
pub(super) fn csrf_token(web: &Web, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    match cookie(headers, web.cookies.csrf()) {
        Some(c) if c.len() == 43 => (c.to_owned(), None),
        _ => {
            let c = random_token().expose().clone();
            let set = web.set_cookie(web.cookies.csrf(), &c, None, SameSite::Strict);
            (c, Some(set))
        }
    }
}

/// Adds the CSRF cookie to a form page when it is new.
pub(super) fn with_csrf_cookie(mut r: Response, set: Option<HeaderValue>) -> Response {
    if let Some(c) = set {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

/// A posted hosted form: its fields, once its type, size and CSRF token are right; otherwise the
/// error page to answer with.
pub(super) fn read_form(
    web: &Web,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(BTreeMap<String, String>, String), Box<Response>> {
    if !is_form(headers) || body.len() > MAX_FORM {
        return Err(Box::new(web.error_page(
            StatusCode::BAD_REQUEST,
            "The form was not sent correctly.",
        )));
    }
    let Ok(form) = parse_params(body) else {
        return Err(Box::new(web.error_page(
            StatusCode::BAD_REQUEST,
            "The form was not sent correctly.",
        )));
    };
    let csrf_cookie = cookie(headers, web.cookies.csrf()).unwrap_or_default();
    let sent = form.get("csrf").map(String::as_str).unwrap_or_default();
    if csrf_cookie.is_empty() || !constant_time_eq(csrf_cookie.as_bytes(), sent.as_bytes()) {
        return Err(Box::new(web.error_page(StatusCode::FORBIDDEN, "The form expired or was sent from another site. Go back to the application and try again.")));
    }
    Ok((form, csrf_cookie.to_owned()))
}

/// A signed-in user goes back to the application with a code, and gets the provider's session
/// cookie.
pub(super) async fn finish_sign_in(
    web: &Web,
    req: &AuthorizeRequest,
    session: &portcullis_store::Session,
    secret: &Secret<String>,
) -> Response {
    tracing::info!(client_id = %req.client_id, sid = %session.sid, "signed in");
    match web.provider.issue_code(req, session).await {
        Ok(location) => {
            let mut r = redirect(&location);
            r.headers_mut()
                .append(header::SET_COOKIE, web.session_cookie(Some(secret)));
            r
        }
        Err(_) => web.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The sign-in service is unavailable. Try again shortly.",
        ),
    }
}

/// The form that replaces a temporary password before the sign-in completes.
fn change_form(
    web: &Web,
    sealed: &str,
    ticket: &str,
    csrf: &str,
    user: &portcullis_store::User,
    error: Option<&str>,
    strength: Option<u8>,
) -> Response {
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    web.page(
        status,
        "new_password.html",
        json!({
            "title": "Choose a new password",
            "intro": "Your password was set by an administrator. Choose your own to continue.",
            "action": "/login/password",
            "code": ticket,
            "request": sealed,
            "csrf": csrf,
            "username": user.username,
            "error": error,
            "strength": strength,
            "min_length": web.provider.pool().policy().min_chars,
            "button": "Change password and continue",
        }),
    )
}

/// `POST /login/password`: the new password after a temporary one.
pub(super) async fn change_submit(
    State(web): State<Web>,
    headers: HeaderMap,
    body: Bytes,
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
    let ticket = field("code");
    let password = Secret::new(field("password").to_owned());
    let user = match web.provider.change_ticket_user(ticket).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            return web.error_page(
                StatusCode::BAD_REQUEST,
                "This page has expired. Sign in again with the password you were given.",
            );
        }
        Err(_) => {
            return web.error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The sign-in service is unavailable. Try again shortly.",
            );
        }
    };
    let mut context = vec![user.username.as_str()];
    context.extend(user.email.as_deref());
    let strength = web
        .provider
        .pool()
        .policy()
        .strength(password.expose(), &context);
    match web
        .provider
        .complete_password_change(ticket, password, req.mfa)
        .await
    {
        Ok(PasswordChange::Done(next)) => match *next {
            SignIn::Session { session, secret } => {
                finish_sign_in(&web, &req, &session, &secret).await
            }
            other => super::mfa::second_step_page(&web, sealed, &csrf, other, None).await,
        },
        Ok(PasswordChange::Invalid(message)) => change_form(
            &web,
            sealed,
            ticket,
            &csrf,
            &user,
            Some(&sentence(&message)),
            Some(strength),
        ),
        Ok(PasswordChange::Expired) => web.error_page(
            StatusCode::BAD_REQUEST,
            "This page has expired. Sign in again with the password you were given.",
        ),
        Err(_) => web.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The sign-in service is unavailable. Try again shortly.",
        ),
    }
}

/// "the password is too short" → "The password is too short."
pub(super) fn sentence(s: &str) -> String {
    let mut c = s.chars();
    let mut out: String = c
        .next()
        .map(|f| f.to_uppercase().collect())
        .unwrap_or_default();
    out.push_str(c.as_str());
    if !out.ends_with('.') {
        out.push('.');
    }
    out
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
    let (csrf, new_cookie) = csrf_token(&web, &headers);
    let name = client_name(&web, &req.client_id).await;
    let r = login_form(
        &web,
        &req,
        sealed,
        &csrf,
        req.login_hint.as_deref().unwrap_or_default(),
        None,
        &name,
    );
    with_csrf_cookie(r, new_cookie)
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
    if !web.address_allowed(peer.ip()).await {
        return again("Too many sign-in attempts from your network. Wait a minute and try again.");
    }
    let password = Secret::new(field("password").to_owned());
    let outcome = web.provider.sign_in(&username, password, req.mfa).await;
    let typed: String = username.chars().take(128).collect();
    let from = crate::audit::Actor::anonymous(peer.ip());
    match &outcome {
        Ok(SignIn::Session { session, .. }) => {
            let actor = crate::audit::Actor::user(&session.user_id, &peer.ip().to_string());
            web.audit(
                "signin.success",
                &actor,
                &typed,
                json!({ "client_id": req.client_id, "amr": session.amr }),
            )
            .await;
        }
        Ok(SignIn::Refused) => {
            web.audit(
                "signin.failure",
                &from,
                &typed,
                json!({ "client_id": req.client_id }),
            )
            .await;
        }
        Ok(SignIn::Locked { seconds }) => {
            web.audit(
                "signin.locked",
                &from,
                &typed,
                json!({ "client_id": req.client_id, "seconds": seconds }),
            )
            .await;
        }
        Ok(SignIn::SecondFactor { user, .. } | SignIn::Enrol { user, .. }) => {
            let actor = crate::audit::Actor::user(&user.id, &peer.ip().to_string());
            web.audit(
                "signin.password_ok",
                &actor,
                &typed,
                json!({ "client_id": req.client_id, "next": "second factor" }),
            )
            .await;
        }
        _ => {}
    }
    let (session, secret) = match outcome {
        Ok(SignIn::Session { session, secret }) => (*session, secret),
        Ok(other @ (SignIn::SecondFactor { .. } | SignIn::Enrol { .. })) => {
            return super::mfa::second_step_page(&web, sealed, csrf_cookie, other, None).await;
        }
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
        Ok(SignIn::Unverified { user }) => {
            // The password was right, so telling its owner about their address reveals nothing.
            if let Err(e) = web.accounts.send_verification(&user, Some(sealed)).await {
                tracing::error!(error = %e, "verification mail not queued");
            }
            return again(
                "Confirm your e-mail address first: we sent a link to it (check your spam folder too).",
            );
        }
        Ok(SignIn::ResetRequired) => {
            return again(if web.provider.settings().accounts.mail {
                "Your account was moved to a new sign-in service: choose a new password with “Forgot your password?” below."
            } else {
                "Your account was moved to a new sign-in service and needs a new password: ask the application's administrator."
            });
        }
        Ok(SignIn::ChangePassword { ticket, user }) => {
            return change_form(&web, sealed, &ticket, csrf_cookie, &user, None, None);
        }
        Err(_) => {
            return web.error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The sign-in service is unavailable. Try again shortly.",
            );
        }
    };
    finish_sign_in(&web, &req, &session, &secret).await
}
