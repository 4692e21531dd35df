//! HTTP endpoints of the identity provider: discovery, JWKS, authorize, the hosted sign-in page,
//! token, userinfo, revoke and logout. Parsing, cookies and response shapes live here; every
//! decision is the provider's.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use portcullis_token::cookie::{CookiePolicy, SameSite};
use portcullis_token::{Secret, constant_time_eq};
use serde_json::json;

use crate::crypto::random_token;
use crate::provider::{AuthorizeError, AuthorizeRequest, MAX_PARAM, OAuthError, Provider, SignIn};
use crate::templates::Templates;

/// Largest form body accepted by the token, revoke and sign-in endpoints.
const MAX_FORM: usize = 16 * 1024;

#[derive(Clone)]
struct Web {
    provider: Provider,
    templates: Arc<Templates>,
    cookies: Arc<CookiePolicy>,
    attempts: Arc<Mutex<Attempts>>,
}

/// Sign-in attempts per network in the current minute.
#[derive(Default)]
struct Attempts {
    by_network: HashMap<IpAddr, (Instant, u32)>,
    last_sweep: Option<Instant>,
}

/// How many networks the throttle remembers before it forgets the stale ones.
const ATTEMPTS_TRACKED: usize = 100_000;

/// The network an address counts for: itself for IPv4, its /64 for IPv6 (one subscriber line or
/// host gets a whole /64, so per-address counting would give an attacker 2^64 budgets).
fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The provider's routes, to be merged into the server's router. The server must be run with
/// `into_make_service_with_connect_info::<SocketAddr>()` so sign-in throttling sees addresses.
pub fn router(provider: Provider, templates: Templates, cookies: CookiePolicy) -> Router {
    let web = Web {
        provider,
        templates: Arc::new(templates),
        cookies: Arc::new(cookies),
        attempts: Arc::new(Mutex::new(Attempts::default())),
    };
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/oauth2/authorize", get(authorize).post(authorize))
        .route("/login", get(login_page).post(login_submit))
        .route("/oauth2/token", axum::routing::post(token))
        .route("/oauth2/userInfo", get(userinfo).post(userinfo))
        .route("/oauth2/revoke", axum::routing::post(revoke))
        .route("/logout", get(logout))
        .with_state(web)
}

// ---- parsing ------------------------------------------------------------------------------------

/// Form or query parameters; a repeated or oversized parameter is an error (RFC 6749 §3.1).
fn parse_params(raw: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        if v.len() > MAX_PARAM || k.len() > 64 {
            return Err(format!("parameter {k} is too long"));
        }
        if map.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(format!("parameter {k} is repeated"));
        }
    }
    Ok(map)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    portcullis_token::cookie::pairs(values)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Web {
    fn set_cookie(
        &self,
        name: &str,
        value: &str,
        max_age: Option<i64>,
        same_site: SameSite,
    ) -> HeaderValue {
        HeaderValue::from_str(&self.cookies.set(name, value, max_age, same_site))
            .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
    }

    fn page(&self, status: StatusCode, template: &str, ctx: serde_json::Value) -> Response {
        match self
            .templates
            .render(template, &self.provider.settings().branding, ctx)
        {
            Ok(html) => html_response(status, html),
            Err(e) => {
                tracing::error!(error = %e, template, "template failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The page could not be shown.",
                )
                    .into_response()
            }
        }
    }

    fn error_page(&self, status: StatusCode, message: &str) -> Response {
        self.page(status, "error.html", json!({ "message": message }))
    }

    /// Counts a sign-in attempt from `ip`; false when its network is over its budget.
    fn address_allowed(&self, ip: IpAddr) -> bool {
        let Ok(mut attempts) = self.attempts.lock() else {
            return false;
        };
        let now = Instant::now();
        // Forget stale networks when the map is large, at most once a second: a sweep is a
        // walk over the whole map, and must not happen on every attempt.
        if attempts.by_network.len() > ATTEMPTS_TRACKED
            && attempts
                .last_sweep
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            attempts
                .by_network
                .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
            attempts.last_sweep = Some(now);
        }
        let entry = attempts
            .by_network
            .entry(network_of(ip))
            .or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.provider.settings().signin_rate_per_address
    }
}

/// Headers every hosted page carries. No `form-action`: Chromium applies it to the redirect back
/// to the client after the sign-in form is posted, which breaks sign-in on other origins.
fn html_response(status: StatusCode, html: String) -> Response {
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn redirect(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

fn oauth_error(e: &OAuthError, basic_auth_used: bool) -> Response {
    let status = match e {
        OAuthError::InvalidClient => StatusCode::UNAUTHORIZED,
        OAuthError::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
        OAuthError::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut r = json_response(
        status,
        json!({ "error": e.code(), "error_description": e.description() }),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if status == StatusCode::UNAUTHORIZED && basic_auth_used {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"portcullis\""),
        );
    }
    r
}

// ---- discovery and keys ---------------------------------------------------------------------------

async fn discovery(State(web): State<Web>) -> Response {
    let iss = &web.provider.settings().issuer;
    let body = json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth2/authorize"),
        "token_endpoint": format!("{iss}/oauth2/token"),
        "userinfo_endpoint": format!("{iss}/oauth2/userInfo"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "end_session_endpoint": format!("{iss}/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "email", "profile"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "sid", "email", "email_verified", "preferred_username", "username", web.provider.settings().groups_claim],
        "prompt_values_supported": ["none", "login"],
        "authorization_response_iss_parameter_supported": true,
    });
    let mut r = (StatusCode::OK, axum::Json(body)).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

async fn jwks(State(web): State<Web>) -> Response {
    if let Err(e) = web.provider.keys().refresh(web.provider.now()).await {
        tracing::warn!(error = %e, "could not re-read signing keys; serving the cached set");
    }
    let mut r = (StatusCode::OK, axum::Json(web.provider.keys().jwks())).into_response();
    // Short enough that a key published by a rotation reaches caches well before it signs.
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

// ---- authorization and sign-in ------------------------------------------------------------------

async fn authorize(
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

fn login_form(
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

async fn client_name(web: &Web, client_id: &str) -> String {
    match web.provider.store().client(client_id).await {
        Ok(Some(c)) => c.name,
        _ => "the application".into(),
    }
}

async fn login_page(State(web): State<Web>, uri: Uri, headers: HeaderMap) -> Response {
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

async fn login_submit(
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
    if !web.address_allowed(peer.ip()) {
        return login_form(
            &web,
            &req,
            sealed,
            csrf_cookie,
            &username,
            Some("Too many sign-in attempts from your network. Wait a minute and try again."),
            &name,
        );
    }
    let password = Secret::new(field("password").to_owned());
    let (session, secret) = match web.provider.sign_in(&username, password).await {
        Ok(SignIn::Session { session, secret }) => (*session, secret),
        Ok(SignIn::Locked { seconds }) => {
            let msg = format!(
                "Too many failed attempts. Try again in {seconds} second{}.",
                if seconds == 1 { "" } else { "s" }
            );
            return login_form(
                &web,
                &req,
                sealed,
                csrf_cookie,
                &username,
                Some(&msg),
                &name,
            );
        }
        Ok(SignIn::Refused) => {
            tracing::info!(client_id = %req.client_id, "sign-in failed");
            // One message for an unknown user, a wrong password and a disabled account.
            return login_form(
                &web,
                &req,
                sealed,
                csrf_cookie,
                &username,
                Some("Incorrect username or password."),
                &name,
            );
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

// ---- token, userinfo, revoke --------------------------------------------------------------------

/// Client credentials from `Authorization: Basic` or the form; both at once is an error.
/// Returns (client_id, secret, basic_used).
fn client_credentials(
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<(String, Option<String>, bool), OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method".into(),
        )),
        (Some(b64), None) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| OAuthError::InvalidClient)?;
            let text = String::from_utf8(decoded).map_err(|_| OAuthError::InvalidClient)?;
            let (id, secret) = text.split_once(':').ok_or(OAuthError::InvalidClient)?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let id = decode(id);
            if form.get("client_id").is_some_and(|f| f != &id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id differs from the authenticated client".into(),
                ));
            }
            Ok((id, Some(decode(secret)), true))
        }
        (None, secret) => {
            let id = form
                .get("client_id")
                .cloned()
                .ok_or(OAuthError::InvalidClient)?;
            Ok((id, secret.cloned(), false))
        }
    }
}

async fn authenticated_client(
    web: &Web,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(portcullis_store::Client, BTreeMap<String, String>, bool), Response> {
    if !is_form(headers) {
        return Err(oauth_error(
            &OAuthError::InvalidRequest(
                "the body must be application/x-www-form-urlencoded".into(),
            ),
            false,
        ));
    }
    if body.len() > MAX_FORM {
        return Err(oauth_error(
            &OAuthError::InvalidRequest("the request body is too large".into()),
            false,
        ));
    }
    let form =
        parse_params(body).map_err(|e| oauth_error(&OAuthError::InvalidRequest(e), false))?;
    let (id, secret, basic) = client_credentials(headers, &form)
        .map_err(|e| oauth_error(&e, headers.contains_key(header::AUTHORIZATION)))?;
    let client = web
        .provider
        .authenticate_client(&id, secret.as_deref())
        .await
        .map_err(|e| oauth_error(&e, basic))?;
    Ok((client, form, basic))
}

async fn token(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let (client, form, _) = match authenticated_client(&web, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match web.provider.token(&client, &form).await {
        Ok(t) => json_response(StatusCode::OK, serde_json::to_value(t).unwrap_or_default()),
        Err(e) => {
            tracing::info!(client_id = %client.client_id, error = e.code(), "token request refused");
            oauth_error(&e, false)
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let v = first.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn userinfo(State(web): State<Web>, headers: HeaderMap) -> Response {
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

async fn revoke(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let (client, form, _) = match authenticated_client(&web, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(token) = form.get("token") else {
        return oauth_error(
            &OAuthError::InvalidRequest("token is required".into()),
            false,
        );
    };
    match web.provider.revoke(&client, token).await {
        Ok(()) => json_response(StatusCode::OK, json!({})),
        Err(e) => oauth_error(&e, false),
    }
}

// ---- sign-out ------------------------------------------------------------------------------------

async fn logout(State(web): State<Web>, uri: Uri, headers: HeaderMap) -> Response {
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
    let mut r = match location {
        Some(l) => redirect(&l),
        None => web.page(StatusCode::OK, "signed_out.html", json!({})),
    };
    r.headers_mut().append(
        header::SET_COOKIE,
        web.set_cookie(web.cookies.idp_session(), "", Some(0), SameSite::Lax),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::network_of;

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let net = |s: &str| network_of(s.parse().expect("ip"));
        assert_eq!(net("2001:db8:1:2:aaaa::1"), net("2001:db8:1:2:ffff::9"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("::ffff:192.0.2.7"), net("192.0.2.7"));
        assert_ne!(net("192.0.2.7"), net("192.0.2.8"));
    }
}
