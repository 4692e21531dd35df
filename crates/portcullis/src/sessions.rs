//! Browser sessions (the backend-for-frontend, DESIGN.md §5): `/auth/login`, `/auth/callback`,
//! `/auth/logout` and `/auth/me`. Tokens live in httpOnly cookies the gateway reads; JavaScript
//! never sees them. This instance's own identity provider is the provider (in process: the code
//! exchange and refresh do not go over the network).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use portcullis_gateway::{RefreshError, Refreshed, Refresher};
use portcullis_idp::{NewClient, Provider, pkce_s256, random_token};
use portcullis_token::cookie::{CookiePolicy, SameSite};
use portcullis_token::jwt::{self, Expect, TokenUse};
use portcullis_token::{KeyEncryptionKey, Secret};
use serde_json::json;

/// The client the browser sessions use at our own provider.
pub const BFF_CLIENT: &str = "portcullis-browser";
/// Flow cookies kept at most (parallel sign-ins in several tabs); older ones are dropped.
const MAX_FLOWS: usize = 5;
/// How long a sign-in may take, seconds.
const FLOW_TTL: i64 = 600;
/// What a refresh cookie's sealed value is bound to (the sealing key also seals sign-in flows).
const REFRESH_COOKIE_CONTEXT: &str = "refresh cookie";

#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Provider,
    origin: String,
    redirect_uri: String,
    /// Names and attributes of the access, refresh and flow cookies.
    cookies: CookiePolicy,
    sealer: KeyEncryptionKey,
    /// Sign in at an external provider instead of this instance's.
    external: Option<External>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    exp: i64,
}

impl Sessions {
    /// Registers (or updates) the browser-session client and prepares the endpoints.
    pub async fn new(
        provider: Provider,
        origin: &str,
        cookies: CookiePolicy,
        instance_secret: &Secret<String>,
        external: Option<External>,
        access_ttl: i64,
    ) -> Result<Sessions, String> {
        let redirect_uri = format!("{origin}/auth/callback");
        if external.is_none() {
            provider
                .declare_client(NewClient {
                    client_id: Some(BFF_CLIENT.into()),
                    // Shown on the sign-in page ("Signing in to …").
                    name: provider.settings().branding.app_name.clone(),
                    redirect_uris: vec![redirect_uri.clone()],
                    logout_uris: vec![format!("{origin}/")],
                    grants: vec!["authorization_code".into(), "refresh_token".into()],
                    scopes: vec!["openid".into(), "email".into(), "profile".into()],
                    allow_insecure_http: !provider.settings().secure_cookies,
                    access_ttl: Some(access_ttl),
                    ..NewClient::default()
                })
                .await
                .map_err(|e| format!("cannot register the browser-session client: {e}"))?;
        }
        let sealer = KeyEncryptionKey::derive_for(instance_secret, "browser sign-in flow v1")
            .map_err(|e| e.to_string())?;
        Ok(Sessions {
            inner: Arc::new(Inner {
                provider,
                origin: origin.to_owned(),
                redirect_uri,
                cookies,
                sealer,
                external,
            }),
        })
    }

    fn issuer(&self) -> &str {
        match &self.inner.external {
            Some(x) => &x.issuer,
            None => &self.inner.provider.settings().issuer,
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/auth/login", get(login))
            .route("/auth/callback", get(callback))
            .route("/auth/logout", get(logout_page).post(logout))
            .route("/auth/me", get(me))
            .with_state(self.clone())
    }

    fn cookie(&self, name: &str, value: &str, max_age: i64) -> HeaderValue {
        let set = self
            .inner
            .cookies
            .set(name, value, Some(max_age), SameSite::Lax);
        HeaderValue::from_str(&set)
            .unwrap_or_else(|_| HeaderValue::from_static("portcullis-invalid=; Max-Age=0"))
    }

    async fn client(&self) -> Option<portcullis_store::Client> {
        self.inner
            .provider
            .store()
            .client(BFF_CLIENT)
            .await
            .ok()
            .flatten()
    }
}

impl Sessions {
    /// The refresh-cookie value for a refresh token: sealed (AES-256-GCM under a key derived from
    /// the instance secret), so a cookie we did not set is refused here — before a database read
    /// or a call to the provider — and the token itself never sits in the browser in the clear.
    fn seal_refresh(&self, refresh_token: &str) -> Option<String> {
        self.inner
            .sealer
            .seal(REFRESH_COOKIE_CONTEXT, refresh_token.as_bytes())
            .ok()
    }

    /// The refresh token in a refresh cookie we set; `None` for anything else.
    fn open_refresh(&self, cookie: &str) -> Option<String> {
        let opened = self.inner.sealer.open(REFRESH_COOKIE_CONTEXT, cookie).ok();
        let token = opened.and_then(|t| String::from_utf8(t.expose().clone()).ok());
        if token.is_none() {
            tracing::info!("refresh cookie refused: not one this instance set");
        }
        token
    }

    /// Refreshes the session behind a refresh cookie; the answer carries the new cookie value.
    async fn refresh_cookie(&self, cookie: &str) -> Result<Refreshed, RefreshError> {
        let refresh_token = self.open_refresh(cookie).ok_or(RefreshError::Ended)?;
        let mut refreshed = self.refresh_token(refresh_token).await?;
        refreshed.refresh = self
            .seal_refresh(&refreshed.refresh)
            .ok_or(RefreshError::Ended)?;
        Ok(refreshed)
    }

    /// Runs the refresh grant at the session's provider. A provider or store that does not
    /// answer is `Unavailable` (the session may be alive); any refusal is `Ended`.
    async fn refresh_token(&self, refresh_token: String) -> Result<Refreshed, RefreshError> {
        if let Some(x) = &self.inner.external {
            let body = x
                .post(
                    &x.token_endpoint,
                    &[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &refresh_token),
                    ],
                )
                .await
                .map_err(|e| {
                    tracing::info!(error = %e, "browser session could not be refreshed");
                    match e {
                        PostError::Unreachable(_) => RefreshError::Unavailable,
                        PostError::Refused(_) => RefreshError::Ended,
                    }
                })?;
            // Providers that do not rotate refresh tokens (Cognito) return none: keep ours.
            let refresh = body["refresh_token"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or(refresh_token);
            return Ok(Refreshed {
                access: body["access_token"]
                    .as_str()
                    .ok_or(RefreshError::Ended)?
                    .to_owned(),
                refresh,
                max_age: EXTERNAL_COOKIE_AGE,
            });
        }
        let client = match self.inner.provider.store().client(BFF_CLIENT).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(RefreshError::Ended),
            Err(e) if e.is_unavailable() => return Err(RefreshError::Unavailable),
            Err(e) => {
                tracing::error!(error = %e, "browser session could not be refreshed");
                return Err(RefreshError::Ended);
            }
        };
        let params = BTreeMap::from([
            ("grant_type".to_owned(), "refresh_token".to_owned()),
            ("refresh_token".to_owned(), refresh_token),
        ]);
        match self.inner.provider.token(&client, &params).await {
            Ok(t) => Ok(Refreshed {
                access: t.access_token,
                refresh: t.refresh_token.ok_or(RefreshError::Ended)?,
                max_age: client.refresh_ttl,
            }),
            Err(portcullis_idp::OAuthError::TemporarilyUnavailable) => {
                Err(RefreshError::Unavailable)
            }
            Err(e) => {
                tracing::info!(error = e.code(), "browser session could not be refreshed");
                Err(RefreshError::Ended)
            }
        }
    }
}

impl Refresher for Sessions {
    fn refresh(
        &self,
        refresh_cookie: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Refreshed, RefreshError>> + Send + '_>,
    > {
        Box::pin(async move { self.refresh_cookie(&refresh_cookie).await })
    }
}

fn cookies(headers: &HeaderMap) -> Vec<(&str, &str)> {
    let values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    portcullis_token::cookie::pairs(values).collect()
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// Only a same-origin path may be returned to: anything else (`//host`, `/\host`, `https:…`,
/// control characters, encoded tricks) becomes `/`.
pub fn safe_return_to(raw: Option<&str>) -> String {
    let Some(p) = raw else { return "/".into() };
    let ok = p.starts_with('/')
        && !p.starts_with("//")
        && !p.starts_with("/\\")
        && !p
            .chars()
            .any(|c| c.is_control() || c == '\\' || c.is_whitespace())
        && portcullis_gateway::canonical::canonicalize(p.split(['?', '#']).next().unwrap_or("/"))
            .is_ok();
    if ok { p.to_owned() } else { "/".into() }
}

fn found(location: &str) -> Response {
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn login(State(s): State<Sessions>, uri: Uri, headers: HeaderMap) -> Response {
    let q = query(&uri);
    let return_to = safe_return_to(q.get("return_to").map(String::as_str));
    let now = s.inner.provider.now();
    let id: String = random_token().expose().chars().take(12).collect();
    let flow = Flow {
        state: random_token().expose().clone(),
        nonce: random_token().expose().clone(),
        verifier: random_token().expose().clone(),
        return_to,
        exp: now + FLOW_TTL,
    };
    let Ok(sealed) = s.inner.sealer.seal(
        &format!("flow:{id}"),
        &serde_json::to_vec(&flow).unwrap_or_default(),
    ) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "sign-in is unavailable").into_response();
    };
    let (endpoint, client_id) = match &s.inner.external {
        Some(x) => (x.authorization_endpoint.clone(), x.client_id.clone()),
        None => (
            format!("{}/oauth2/authorize", s.inner.origin),
            BFF_CLIENT.to_owned(),
        ),
    };
    let Ok(mut authorize) = url::Url::parse(&endpoint) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "sign-in is unavailable").into_response();
    };
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", &s.inner.redirect_uri)
        .append_pair("scope", "openid email profile")
        .append_pair("state", &format!("{id}.{}", flow.state))
        .append_pair("nonce", &flow.nonce)
        .append_pair("code_challenge", &pkce_s256(&flow.verifier))
        .append_pair("code_challenge_method", "S256");
    // Our own provider is on this origin: a relative redirect. An external one: its URL.
    let target = if s.inner.external.is_some() {
        authorize.to_string()
    } else {
        format!(
            "{}{}",
            authorize.path(),
            authorize
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        )
    };
    let mut r = found(&target);
    // Keep at most MAX_FLOWS - 1 older flows: drop the ones closest to expiry.
    let mut older: Vec<(i64, String)> = cookies(&headers)
        .into_iter()
        .filter_map(|(k, v)| {
            let fid = k.strip_prefix(s.inner.cookies.flow_prefix())?;
            let exp = s
                .inner
                .sealer
                .open(&format!("flow:{fid}"), v)
                .ok()
                .and_then(|b| serde_json::from_slice::<Flow>(b.expose()).ok())
                .map(|f| f.exp)
                .unwrap_or(0);
            Some((exp, k.to_owned()))
        })
        .collect();
    older.sort();
    let excess = older.len().saturating_sub(MAX_FLOWS - 1);
    for (_, name) in older.into_iter().take(excess) {
        r.headers_mut()
            .append(header::SET_COOKIE, s.cookie(&name, "", 0));
    }
    r.headers_mut().append(
        header::SET_COOKIE,
        s.cookie(
            &format!("{}{id}", s.inner.cookies.flow_prefix()),
            &sealed,
            FLOW_TTL,
        ),
    );
    r
}

fn problem(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Sign-in problem</title><body style=\"font-family:system-ui;max-width:32rem;margin:4rem auto\"><h1>Sign-in did not complete</h1><p>{}</p><p><a href=\"/auth/login\">Try again</a></p></body></html>",
        message
    );
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn callback(State(s): State<Sessions>, uri: Uri, headers: HeaderMap) -> Response {
    let q = query(&uri);
    let Some((id, state)) = q.get("state").and_then(|st| st.split_once('.')) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "The sign-in response is missing its state.",
        );
    };
    let cookie_name = format!("{}{id}", s.inner.cookies.flow_prefix());
    let flow = cookies(&headers)
        .into_iter()
        .find(|(k, _)| *k == cookie_name)
        .and_then(|(_, v)| s.inner.sealer.open(&format!("flow:{id}"), v).ok())
        .and_then(|b| serde_json::from_slice::<Flow>(b.expose()).ok());
    let now = s.inner.provider.now();
    let Some(flow) = flow.filter(|f| {
        f.exp > now && portcullis_token::constant_time_eq(f.state.as_bytes(), state.as_bytes())
    }) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "This sign-in attempt expired or belongs to another browser.",
        );
    };
    let clear_flow = s.cookie(&cookie_name, "", 0);
    if q.get("iss").is_some_and(|iss| iss != s.issuer()) {
        return problem(
            StatusCode::BAD_REQUEST,
            "The sign-in response came from an unexpected issuer.",
        );
    }
    if let Some(error) = q.get("error") {
        tracing::info!(error = %error, "sign-in was not completed at the identity provider");
        let mut r = found("/");
        r.headers_mut().append(header::SET_COOKIE, clear_flow);
        return r;
    }
    let Some(code) = q.get("code") else {
        return problem(StatusCode::BAD_REQUEST, "The sign-in response has no code.");
    };
    let failed = || {
        problem(
            StatusCode::BAD_REQUEST,
            "The sign-in could not be completed. Please try again.",
        )
    };
    let mismatch = || {
        problem(
            StatusCode::BAD_REQUEST,
            "The sign-in response did not match this attempt.",
        )
    };
    let nonce_matches = |c: &jwt::Claims| {
        c.string("nonce").is_some_and(|n| {
            portcullis_token::constant_time_eq(n.as_bytes(), flow.nonce.as_bytes())
        })
    };
    // (access, refresh, cookie lifetime), once the ID token's nonce proves the code is this
    // flow's (a code injected from another flow fails here).
    let (access, refresh, max_age) = if let Some(x) = &s.inner.external {
        let body = match x
            .post(
                &x.token_endpoint,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &s.inner.redirect_uri),
                    ("code_verifier", &flow.verifier),
                ],
            )
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::info!(error = %e, "browser sign-in: code exchange refused");
                return failed();
            }
        };
        let id_ok = match body["id_token"].as_str() {
            Some(t) => x
                .verify(t, None, now)
                .await
                .is_some_and(|c| nonce_matches(&c)),
            None => false,
        };
        match (
            id_ok,
            body["access_token"].as_str(),
            body["refresh_token"].as_str(),
        ) {
            (true, Some(a), Some(r)) => (a.to_owned(), r.to_owned(), EXTERNAL_COOKIE_AGE),
            _ => return mismatch(),
        }
    } else {
        let Some(client) = s.client().await else {
            return failed();
        };
        let params = BTreeMap::from([
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.clone()),
            ("redirect_uri".to_owned(), s.inner.redirect_uri.clone()),
            ("code_verifier".to_owned(), flow.verifier.clone()),
        ]);
        let tokens = match s.inner.provider.token(&client, &params).await {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(error = e.code(), "browser sign-in: code exchange refused");
                return failed();
            }
        };
        let keys = s.inner.provider.keys().verification_keys();
        let aud = [BFF_CLIENT.to_owned()];
        let expect = Expect {
            issuer: &s.inner.provider.settings().issuer,
            audiences: &aud,
            token_use: Some(TokenUse::Id),
            leeway: 30,
            exp_leeway: 30,
            now,
        };
        let id_ok = tokens
            .id_token
            .as_deref()
            .and_then(|t| jwt::verify(t, &keys, &expect).ok())
            .is_some_and(|c| nonce_matches(&c));
        match (id_ok, tokens.refresh_token) {
            (true, Some(r)) => (tokens.access_token, r, client.refresh_ttl),
            _ => return mismatch(),
        }
    };
    let Some(refresh) = s.seal_refresh(&refresh) else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The session could not be started. Try signing in again.",
        );
    };
    let mut r = found(&flow.return_to);
    let h = r.headers_mut();
    h.append(header::SET_COOKIE, clear_flow);
    h.append(
        header::SET_COOKIE,
        s.cookie(s.inner.cookies.access(), &access, max_age),
    );
    h.append(
        header::SET_COOKIE,
        s.cookie(s.inner.cookies.refresh(), &refresh, max_age),
    );
    r
}

/// A GET never signs out (a link or an image could trigger it): it shows a form that POSTs.
async fn logout_page() -> Response {
    let body = "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>Sign out</title><body style=\"font-family:system-ui;max-width:32rem;margin:4rem auto\"><h1>Sign out?</h1><form method=\"post\" action=\"/auth/logout\"><button type=\"submit\">Sign out</button></form></body></html>";
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn logout(State(s): State<Sessions>, headers: HeaderMap) -> Response {
    if !portcullis_gateway::same_origin(&headers, &s.inner.origin) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({ "error": "forbidden", "message": "cross-site request" })),
        )
            .into_response();
    }
    let jar = cookies(&headers);
    let home: String =
        url::form_urlencoded::byte_serialize(format!("{}/", s.inner.origin).as_bytes()).collect();
    let end_idp = if let Some(x) = &s.inner.external {
        let refresh = jar
            .iter()
            .find(|(k, _)| *k == s.inner.cookies.refresh())
            .and_then(|(_, v)| s.open_refresh(v));
        if let (Some(endpoint), Some(refresh)) = (&x.revocation_endpoint, refresh)
            && let Err(e) = x
                .post(
                    endpoint,
                    &[
                        ("token", refresh.as_str()),
                        ("token_type_hint", "refresh_token"),
                    ],
                )
                .await
        {
            tracing::warn!(error = %e, "sign-out could not revoke the refresh token at the provider");
        }
        // Cognito reads client_id + logout_uri; OpenID providers post_logout_redirect_uri.
        match &x.end_session_endpoint {
            Some(e) => format!(
                "{e}?client_id={}&logout_uri={home}&post_logout_redirect_uri={home}",
                x.client_id
            ),
            None => "/".to_owned(),
        }
    } else {
        if let Some(client) = s.client().await {
            // Revoking the refresh token ends the whole session: its access tokens are rejected
            // by the gateway within a second, on every node.
            for (name, value) in &jar {
                let token = if *name == s.inner.cookies.refresh() {
                    s.open_refresh(value)
                } else if *name == s.inner.cookies.access() {
                    Some((*value).to_owned())
                } else {
                    None
                };
                if let Some(token) = token
                    && let Err(e) = s.inner.provider.revoke(&client, &token).await
                {
                    tracing::warn!(error = e.code(), "sign-out could not revoke a token");
                }
            }
        }
        format!("/logout?client_id={BFF_CLIENT}&logout_uri={home}")
    };
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&end_idp) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().append(
        header::SET_COOKIE,
        s.cookie(s.inner.cookies.access(), "", 0),
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        s.cookie(s.inner.cookies.refresh(), "", 0),
    );
    r
}

/// Verifies an access token of the session's provider: (sub, username, groups).
async fn whoami(
    s: &Sessions,
    access: &str,
) -> Option<(Option<String>, Option<String>, Vec<String>)> {
    match &s.inner.external {
        Some(x) => {
            let c = x
                .verify(access, Some(TokenUse::Access), s.inner.provider.now())
                .await?;
            let groups = c.string_list(&x.groups_claim).unwrap_or_default();
            Some((
                c.sub.clone(),
                c.string("username").map(str::to_owned),
                groups,
            ))
        }
        None => {
            let c = s.inner.provider.verify_access_token(access).await.ok()?;
            let groups = c
                .string_list(&s.inner.provider.settings().groups_claim)
                .unwrap_or_default();
            Some((
                c.sub.clone(),
                c.string("username").map(str::to_owned),
                groups,
            ))
        }
    }
}

async fn me(State(s): State<Sessions>, headers: HeaderMap) -> Response {
    let jar = cookies(&headers);
    let access = jar
        .iter()
        .find(|(k, _)| *k == s.inner.cookies.access())
        .map(|(_, v)| (*v).to_owned());
    let mut set = Vec::new();
    let mut who = match &access {
        Some(a) => whoami(&s, a).await,
        None => None,
    };
    if who.is_none()
        && let Some((_, refresh)) = jar.iter().find(|(k, _)| *k == s.inner.cookies.refresh())
        && let Ok(new) = s.refresh_cookie(refresh).await
    {
        who = whoami(&s, &new.access).await;
        set.push(s.cookie(s.inner.cookies.access(), &new.access, new.max_age));
        set.push(s.cookie(s.inner.cookies.refresh(), &new.refresh, new.max_age));
    }
    let Some((sub, username, groups)) = who else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(json!({ "error": "unauthorized" })),
        )
            .into_response();
    };
    let mut r = (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({ "sub": sub, "username": username, "groups": groups })),
    )
        .into_response();
    for c in set {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

/// An external OpenID provider for browser sessions (a Cognito user pool, another portcullis),
/// spoken to over HTTP: discovery, the token endpoint (code and refresh grants), revocation and
/// RP-initiated logout. Its keys come from its JWKS, cached like the gateway's.
pub struct External {
    issuer: String,
    client_id: String,
    secret: Option<Secret<String>>,
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
    keys: portcullis_gateway::issuers::ExternalIssuer,
    groups_claim: String,
    http: reqwest::Client,
}

/// Sessions at an external provider last as long as its refresh token allows; the cookies are
/// kept this long (30 days) and the provider decides.
const EXTERNAL_COOKIE_AGE: i64 = 30 * 86400;

/// Why a call to the external provider failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// No answer, or a 5xx: the provider is unavailable.
    #[error("{0}")]
    Unreachable(String),
    /// A 4xx: the provider refused (an invalid grant, say).
    #[error("{0}")]
    Refused(String),
}

impl External {
    pub async fn discover(
        issuer: &str,
        client_id: &str,
        secret: Option<Secret<String>>,
        groups_claim: &str,
    ) -> Result<External, String> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let doc = portcullis_gateway::issuers::get_json_capped(&http, &url).await?;
        if doc["issuer"].as_str() != Some(issuer.trim_end_matches('/')) {
            return Err(format!("{url} names another issuer"));
        }
        let field = |k: &str| doc[k].as_str().map(str::to_owned);
        let keys =
            portcullis_gateway::issuers::external(&portcullis_gateway::issuers::IssuerConfig {
                issuer: issuer.to_owned(),
                jwks_uri: field("jwks_uri"),
                audiences: vec![client_id.to_owned()],
                groups_claim: Some(groups_claim.to_owned()),
                token_use: Some("any".into()),
                leeway: None,
                // The sessions' provider is also a [[gateway.issuers]] entry, which decides how
                // the gateway matches its groups; these keys only check ID tokens at sign-in.
                fold_group_case: false,
            })?;
        keys.refresh().await;
        Ok(External {
            issuer: issuer.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            secret,
            authorization_endpoint: field("authorization_endpoint")
                .ok_or("discovery has no authorization_endpoint")?,
            token_endpoint: field("token_endpoint").ok_or("discovery has no token_endpoint")?,
            revocation_endpoint: field("revocation_endpoint"),
            end_session_endpoint: field("end_session_endpoint"),
            keys,
            groups_claim: groups_claim.to_owned(),
            http,
        })
    }

    async fn post(&self, url: &str, form: &[(&str, &str)]) -> Result<serde_json::Value, PostError> {
        let mut form: Vec<(&str, &str)> = form.to_vec();
        let mut req = self.http.post(url);
        match &self.secret {
            Some(s) => req = req.basic_auth(&self.client_id, Some(s.expose())),
            None => form.push(("client_id", &self.client_id)),
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| PostError::Unreachable(format!("{url}: {e}")))?;
        let status = resp.status();
        let body = portcullis_gateway::issuers::json_body_capped(resp, url)
            .await
            .unwrap_or_default();
        if status.is_server_error() {
            return Err(PostError::Unreachable(format!("{url}: HTTP {status}")));
        }
        if !status.is_success() {
            return Err(PostError::Refused(format!(
                "{url}: HTTP {status} {}",
                body["error"].as_str().unwrap_or("")
            )));
        }
        Ok(body)
    }

    /// Verifies a token of this provider (ID token: `nonce` checked by the caller).
    async fn verify(
        &self,
        token: &str,
        token_use: Option<TokenUse>,
        now: i64,
    ) -> Option<jwt::Claims> {
        let aud = [self.client_id.clone()];
        let expect = Expect {
            issuer: &self.issuer,
            audiences: &aud,
            token_use,
            leeway: 30,
            exp_leeway: 30,
            now,
        };
        match jwt::verify(token, &self.keys.keys(), &expect) {
            Err(jwt::VerifyError::UnknownKey) if self.keys.refresh().await => {
                jwt::verify(token, &self.keys.keys(), &expect).ok()
            }
            other => other.ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::safe_return_to;

    #[test]
    fn open_redirect_payloads_fall_back_to_the_home_page() {
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/%09/evil.example",
            "https:evil.example",
            "https://evil.example",
            "evil.example",
            "/%2F%2Fevil.example",
            "/\t/evil",
            "/..//evil",
            "/%5Cevil.example",
            " /x",
            "",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/", "{bad:?}");
        }
        for good in ["/admin/", "/orders?id=7", "/", "/a/b#frag"] {
            assert_eq!(safe_return_to(Some(good)), good, "{good}");
        }
        assert_eq!(safe_return_to(None), "/");
    }
}
