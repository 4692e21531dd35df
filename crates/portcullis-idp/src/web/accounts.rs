//! The self-service pages: `/signup`, `/verifyEmail`, `/forgotPassword`, `/resetPassword` and
//! `/invitation`. Decisions are [`Accounts`](crate::Accounts)'; this module turns forms into
//! calls and answers into pages, and never lets an answer depend on whether an account exists.

use portcullis_store::CodePurpose;

use super::login::{csrf_token, read_form, sentence, with_csrf_cookie};
use super::*;
use crate::accounts::{AccountError, SignUp};

const UNAVAILABLE: &str = "The service is unavailable. Try again shortly.";

/// The `request` parameter, if it is a live sealed authorization request (else empty: links
/// back to the sign-in are then left out).
fn live_request(web: &Web, sealed: Option<&String>) -> String {
    sealed
        .filter(|s| web.provider.open_request(s).is_some())
        .cloned()
        .unwrap_or_default()
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    parse_params(uri.query().unwrap_or_default().as_bytes()).unwrap_or_default()
}

fn notice(web: &Web, title: &str, message: &str, request: &str) -> Response {
    let link = (!request.is_empty()).then(|| {
        format!(
            "/login?request={}",
            url::form_urlencoded::byte_serialize(request.as_bytes()).collect::<String>()
        )
    });
    web.page(
        StatusCode::OK,
        "notice.html",
        json!({ "title": title, "message": message, "link": link, "link_text": "Continue to sign in" }),
    )
}

fn throttled(web: &Web) -> Response {
    let mut r = web.error_page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests from your network. Wait a while and try again.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    r
}

// ---- sign-up ------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn signup_form(
    web: &Web,
    request: &str,
    csrf: &str,
    email: &str,
    name: &str,
    custom: &BTreeMap<String, String>,
    error: Option<&str>,
    strength: Option<u8>,
) -> Response {
    let attributes: Vec<Value> = web
        .accounts
        .settings()
        .accounts
        .signup_attributes
        .iter()
        .map(|a| {
            json!({
                "name": a.name,
                "label": a.label(),
                "required": a.required,
                "number": a.kind == crate::settings::AttributeKind::Number,
                "max_length": a.max_length.unwrap_or(256),
                "min": a.min,
                "max": a.max,
                "value": custom.get(&a.name).cloned().unwrap_or_default(),
            })
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    web.page(
        status,
        "signup.html",
        json!({
            "request": request, "csrf": csrf, "email": email, "name": name, "error": error,
            "strength": strength, "attributes": attributes,
            "min_length": web.provider.pool().policy().min_chars,
        }),
    )
}

pub(super) async fn signup_page(State(web): State<Web>, uri: Uri, headers: HeaderMap) -> Response {
    if !web.accounts.settings().accounts.signup_open() {
        return web.error_page(
            StatusCode::NOT_FOUND,
            "Accounts cannot be created here. Ask the application's administrator for an invitation.",
        );
    }
    let params = query(&uri);
    let request = live_request(&web, params.get("request"));
    let (csrf, set) = csrf_token(&web, &headers);
    let none = BTreeMap::new();
    with_csrf_cookie(
        signup_form(&web, &request, &csrf, "", "", &none, None, None),
        set,
    )
}

pub(super) async fn signup_submit(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !web.accounts.settings().accounts.signup_open() {
        return web.error_page(
            StatusCode::NOT_FOUND,
            "Accounts cannot be created here. Ask the application's administrator for an invitation.",
        );
    }
    let (form, csrf) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let request = live_request(&web, form.get("request"));
    let (email, name) = (field("email").trim().to_owned(), field("name"));
    if !web.account_action_allowed(peer.ip()).await {
        return throttled(&web);
    }
    let password = Secret::new(field("password"));
    let strength = web.provider.pool().policy().strength(
        password.expose(),
        &[email.as_str(), email.split('@').next().unwrap_or_default()],
    );
    let custom: BTreeMap<String, String> = form
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("custom:")?.to_owned(), v.clone())))
        .collect();
    let sign_up = SignUp {
        email: email.clone(),
        name: name.clone(),
        password,
        request: Some(request.clone()).filter(|r| !r.is_empty()),
        custom: custom.clone(),
    };
    match web.accounts.check_sign_up(&sign_up) {
        Ok(()) => {}
        Err(AccountError::Invalid(message)) => {
            return signup_form(
                &web,
                &request,
                &csrf,
                &email,
                &name,
                &custom,
                Some(&message),
                Some(strength),
            );
        }
        Err(_) => return web.error_page(StatusCode::NOT_FOUND, "Sign-up is closed."),
    }
    // Answered now; whether the address was taken decides only what the mail says.
    let accounts = web.accounts.clone();
    tokio::spawn(async move {
        if let Err(e) = accounts.complete_sign_up(sign_up).await {
            tracing::error!(error = %e, "sign-up failed after it was answered");
        }
    });
    web.page(
        StatusCode::OK,
        "notice.html",
        json!({
            "title": "Check your mail",
            "message": format!("We sent a message to {email} with the next step. If it does not arrive in a few minutes, check your spam folder."),
        }),
    )
}

// ---- verification -------------------------------------------------------------------------------

fn verify_form(web: &Web, request: &str, csrf: &str, code: &str, error: Option<&str>) -> Response {
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    web.page(
        status,
        "verify_email.html",
        json!({ "request": request, "csrf": csrf, "code": code, "error": error }),
    )
}

/// `GET /verifyEmail?code=…`: a button, not the verification itself, so that mail scanners
/// that open links do not use the code.
pub(super) async fn verify_page(State(web): State<Web>, uri: Uri, headers: HeaderMap) -> Response {
    let params = query(&uri);
    let request = live_request(&web, params.get("request"));
    let code = params.get("code").cloned().unwrap_or_default();
    let (csrf, set) = csrf_token(&web, &headers);
    with_csrf_cookie(verify_form(&web, &request, &csrf, &code, None), set)
}

pub(super) async fn verify_submit(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (form, csrf) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let request = live_request(&web, form.get("request"));
    let code = form.get("code").map(|c| c.trim()).unwrap_or_default();
    if !web.account_action_allowed(peer.ip()).await {
        return throttled(&web);
    }
    match web.accounts.verify_email(code).await {
        Ok(_) => notice(
            &web,
            "Address confirmed",
            if request.is_empty() {
                "Your e-mail address is confirmed. Go back to the application and sign in."
            } else {
                "Your e-mail address is confirmed."
            },
            &request,
        ),
        Err(AccountError::BadCode) => verify_form(
            &web,
            &request,
            &csrf,
            code,
            Some("This link has expired or was already used. Sign in to get a new one."),
        ),
        Err(e) => {
            tracing::error!(error = %e, "verification failed");
            web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
        }
    }
}

// ---- forgotten passwords ------------------------------------------------------------------------

fn mail_off(web: &Web) -> Option<Response> {
    (!web.accounts.settings().accounts.mail).then(|| {
        web.error_page(
            StatusCode::NOT_FOUND,
            "Passwords cannot be reset here. Ask the application's administrator.",
        )
    })
}

pub(super) async fn forgot_page(State(web): State<Web>, uri: Uri, headers: HeaderMap) -> Response {
    if let Some(r) = mail_off(&web) {
        return r;
    }
    let params = query(&uri);
    let request = live_request(&web, params.get("request"));
    let (csrf, set) = csrf_token(&web, &headers);
    let r = web.page(
        StatusCode::OK,
        "forgot_password.html",
        json!({ "request": request, "csrf": csrf, "username": "" }),
    );
    with_csrf_cookie(r, set)
}

pub(super) async fn forgot_submit(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = mail_off(&web) {
        return r;
    }
    let (form, _csrf) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let request = live_request(&web, form.get("request"));
    let identifier = form
        .get("username")
        .map(|u| u.trim().to_owned())
        .unwrap_or_default();
    if !web.account_action_allowed(peer.ip()).await {
        return throttled(&web);
    }
    // Answered before the lookup, so neither the answer nor its timing says whether the
    // account exists.
    let accounts = web.accounts.clone();
    let carried = Some(request.clone()).filter(|r| !r.is_empty());
    tokio::spawn(async move {
        if let Err(e) = accounts
            .forgot_password(&identifier, carried.as_deref())
            .await
        {
            tracing::error!(error = %e, "password reset mail failed");
        }
    });
    let ttl = web.accounts.settings().accounts.reset_ttl / 60;
    web.page(
        StatusCode::OK,
        "notice.html",
        json!({
            "title": "Check your mail",
            "message": format!("If that is the username or e-mail address of an account, we sent a link to choose a new password to the account's address. The link works for {ttl} minutes."),
        }),
    )
}

// ---- new passwords from a mailed code -----------------------------------------------------------

struct CodeForm {
    purpose: CodePurpose,
    action: &'static str,
    title: &'static str,
    button: &'static str,
}

const RESET: CodeForm = CodeForm {
    purpose: CodePurpose::Reset,
    action: "/resetPassword",
    title: "Choose a new password",
    button: "Change password",
};

const INVITE: CodeForm = CodeForm {
    purpose: CodePurpose::Invite,
    action: "/invitation",
    title: "Welcome: choose your password",
    button: "Set password",
};

#[allow(clippy::too_many_arguments)]
fn password_form(
    web: &Web,
    kind: &CodeForm,
    code: &str,
    request: &str,
    csrf: &str,
    username: &str,
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
            "title": kind.title, "action": kind.action, "button": kind.button,
            "code": code, "request": request, "csrf": csrf, "username": username,
            "error": error, "strength": strength,
            "min_length": web.provider.pool().policy().min_chars,
        }),
    )
}

fn bad_code(web: &Web, kind: &CodeForm) -> Response {
    let message = match kind.purpose {
        CodePurpose::Invite => {
            "This invitation has expired or was already used. Ask the administrator to send a new one."
        }
        _ => "This link has expired or was already used. Ask for a new one on the sign-in page.",
    };
    web.error_page(StatusCode::BAD_REQUEST, message)
}

async fn code_page(web: Web, kind: &CodeForm, uri: Uri, headers: HeaderMap) -> Response {
    let params = query(&uri);
    let request = live_request(&web, params.get("request"));
    let code = params.get("code").cloned().unwrap_or_default();
    match web.accounts.code_user(&code, kind.purpose).await {
        Ok(user) => {
            let (csrf, set) = csrf_token(&web, &headers);
            let r = password_form(
                &web,
                kind,
                &code,
                &request,
                &csrf,
                &user.username,
                None,
                None,
            );
            with_csrf_cookie(r, set)
        }
        Err(AccountError::BadCode) => bad_code(&web, kind),
        Err(e) => {
            tracing::error!(error = %e, "code lookup failed");
            web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
        }
    }
}

async fn code_submit(
    web: Web,
    kind: &CodeForm,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (form, csrf) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let request = live_request(&web, form.get("request"));
    let code = field("code");
    if !web.account_action_allowed(peer.ip()).await {
        return throttled(&web);
    }
    let password = Secret::new(field("password"));
    let user = match web.accounts.code_user(&code, kind.purpose).await {
        Ok(u) => u,
        Err(AccountError::BadCode) => return bad_code(&web, kind),
        Err(e) => {
            tracing::error!(error = %e, "code lookup failed");
            return web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE);
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
        .accounts
        .set_password_with_code(&code, kind.purpose, password)
        .await
    {
        Ok(_) => notice(
            &web,
            "Password changed",
            if request.is_empty() {
                "Your new password is set, and every earlier session is signed out. Go back to the application and sign in."
            } else {
                "Your new password is set, and every earlier session is signed out."
            },
            &request,
        ),
        Err(AccountError::Invalid(message)) => password_form(
            &web,
            kind,
            &code,
            &request,
            &csrf,
            &user.username,
            Some(&sentence(&message)),
            Some(strength),
        ),
        Err(AccountError::BadCode) => bad_code(&web, kind),
        Err(e) => {
            tracing::error!(error = %e, "password change with a code failed");
            web.error_page(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
        }
    }
}

pub(super) async fn reset_page(State(web): State<Web>, uri: Uri, headers: HeaderMap) -> Response {
    code_page(web, &RESET, uri, headers).await
}

pub(super) async fn reset_submit(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    code_submit(web, &RESET, peer, headers, body).await
}

pub(super) async fn invitation_page(
    State(web): State<Web>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    code_page(web, &INVITE, uri, headers).await
}

pub(super) async fn invitation_submit(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    code_submit(web, &INVITE, peer, headers, body).await
}
