//! Browser sessions (the backend-for-frontend, DESIGN.md §5): `/auth/login`, `/auth/callback`,
//! `/auth/logout` and `/auth/me`. Tokens live in httpOnly cookies the gateway reads; JavaScript
//! never sees them. Written once against [`SessionProvider`], with two implementations: this
//! instance's provider in process ([`OwnProvider`]) and a remote OpenID provider over HTTP
//! ([`RemoteProvider`]). [`Sessions`] also implements the gateway's [`Refresher`], so the gateway
//! renews a cookie session in line without knowing which provider it is.

mod own;
mod provider;
mod remote;

pub use own::{BFF_CLIENT, OwnProvider};
pub use provider::{BoxFuture, ExchangeError, Me, SessionProvider, Tokens};
pub use remote::RemoteProvider;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use portcullis_gateway::{RefreshError, Refreshed, Refresher};
use portcullis_idp::{pkce_s256, random_token};
use portcullis_token::cookie::{CookiePolicy, SameSite};
use portcullis_token::{KeyEncryptionKey, Secret};
use serde_json::json;

/// Flow cookies kept at most (parallel sign-ins in several tabs); older ones are dropped.
const MAX_FLOWS: usize = 5;
/// How long a sign-in may take, seconds.
const FLOW_TTL: i64 = 600;
/// What a refresh cookie's sealed value is bound to (the sealing key also seals sign-in flows).
const REFRESH_COOKIE_CONTEXT: &str = "refresh cookie";

/// The `/auth/*` endpoints and the gateway's session refresher.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("issuer", &self.inner.provider.issuer())
            .finish_non_exhaustive()
    }
}

struct Inner {
    provider: Arc<dyn SessionProvider>,
    origin: String,
    redirect_uri: String,
    /// Names and attributes of the access, refresh and flow cookies.
    cookies: CookiePolicy,
    sealer: KeyEncryptionKey,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
    exp: i64,
}

/// Whether an ID token carries the flow's nonce (compared in constant time).
pub(crate) fn nonce_matches(c: &portcullis_token::jwt::Claims, nonce: &str) -> bool {
    c.string("nonce")
        .is_some_and(|n| portcullis_token::constant_time_eq(n.as_bytes(), nonce.as_bytes()))
}

impl Sessions {
    /// The endpoints for sessions at `provider`, on the public `origin`; flows and refresh
    /// cookies are sealed under a key derived from the instance secret.
    pub fn new(
        provider: Arc<dyn SessionProvider>,
        origin: &str,
        cookies: CookiePolicy,
        instance_secret: &Secret<String>,
    ) -> Result<Sessions, String> {
        let sealer = KeyEncryptionKey::derive_for(instance_secret, "browser sign-in flow v1")
            .map_err(|e| e.to_string())?;
        Ok(Sessions {
            inner: Arc::new(Inner {
                provider,
                origin: origin.to_owned(),
                redirect_uri: format!("{origin}/auth/callback"),
                cookies,
                sealer,
            }),
        })
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

    /// The refresh-cookie value for a refresh token: sealed (AES-256-GCM under a key derived from
    /// the instance secret), so a cookie we did not set is refused here — before a database read
    /// or a call to the provider.
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
        let tokens = self.inner.provider.refresh(refresh_token).await?;
        Ok(Refreshed {
            access: tokens.access,
            refresh: self
                .seal_refresh(&tokens.refresh)
                .ok_or(RefreshError::Ended)?,
            max_age: tokens.max_age,
        })
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
    portcullis_http::redirect(StatusCode::FOUND, location)
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
    let state = format!("{id}.{}", flow.state);
    let challenge = pkce_s256(&flow.verifier);
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", s.inner.provider.client_id()),
        ("redirect_uri", &s.inner.redirect_uri),
        ("scope", "openid email profile"),
        ("state", &state),
        ("nonce", &flow.nonce),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    // A step-up from the gateway (a policy asked for a second factor or a recent sign-in):
    // passed on to the provider, only in the forms the gateway writes.
    if q.get("acr_values").is_some_and(|v| v == "mfa") {
        params.push(("acr_values", "mfa"));
    }
    let max_age = q
        .get("max_age")
        .filter(|v| !v.is_empty() && v.len() <= 9 && v.bytes().all(|b| b.is_ascii_digit()));
    if let Some(max_age) = max_age {
        params.push(("max_age", max_age));
    }
    let target = match s.inner.provider.authorize_url(&params) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "the authorization endpoint is not a URL");
            return (StatusCode::INTERNAL_SERVER_ERROR, "sign-in is unavailable").into_response();
        }
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
    if q.get("iss")
        .is_some_and(|iss| iss != s.inner.provider.issuer())
    {
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
    // The ID token's nonce proves the code is this flow's (a code injected from another flow
    // fails here).
    let tokens = match s
        .inner
        .provider
        .exchange_code(code, &flow.verifier, &flow.nonce)
        .await
    {
        Ok(t) => t,
        Err(ExchangeError::Refused) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "The sign-in could not be completed. Please try again.",
            );
        }
        Err(ExchangeError::Mismatch) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "The sign-in response did not match this attempt.",
            );
        }
    };
    let Some(refresh) = s.seal_refresh(&tokens.refresh) else {
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
        s.cookie(s.inner.cookies.access(), &tokens.access, tokens.max_age),
    );
    h.append(
        header::SET_COOKIE,
        s.cookie(s.inner.cookies.refresh(), &refresh, tokens.max_age),
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
    let access = jar
        .iter()
        .find(|(k, _)| *k == s.inner.cookies.access())
        .map(|(_, v)| *v);
    let refresh = jar
        .iter()
        .find(|(k, _)| *k == s.inner.cookies.refresh())
        .and_then(|(_, v)| s.open_refresh(v));
    let end_idp = s
        .inner
        .provider
        .sign_out(access, refresh.as_deref(), &home)
        .await;
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

async fn me(State(s): State<Sessions>, headers: HeaderMap) -> Response {
    let jar = cookies(&headers);
    let access = jar
        .iter()
        .find(|(k, _)| *k == s.inner.cookies.access())
        .map(|(_, v)| (*v).to_owned());
    let mut set = Vec::new();
    let mut who = match &access {
        Some(a) => s.inner.provider.whoami(a).await,
        None => None,
    };
    if who.is_none()
        && let Some((_, refresh)) = jar.iter().find(|(k, _)| *k == s.inner.cookies.refresh())
        && let Ok(new) = s.refresh_cookie(refresh).await
    {
        who = s.inner.provider.whoami(&new.access).await;
        set.push(s.cookie(s.inner.cookies.access(), &new.access, new.max_age));
        set.push(s.cookie(s.inner.cookies.refresh(), &new.refresh, new.max_age));
    }
    let Some(Me {
        sub,
        username,
        groups,
    }) = who
    else {
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
