//! HTTP endpoints of the identity provider, one module per endpoint: discovery and JWKS,
//! authorize, the hosted sign-in page, token and revoke, userinfo, logout. This module holds what
//! they share (state, parsing, cookies, response shapes); every decision is the provider's.

mod account;
mod accounts;
mod authorize;
mod discovery;
pub mod federated;
mod login;
mod logout;
mod mfa;
mod passkeys;
mod token;
mod userinfo;

use std::collections::BTreeMap;
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
use serde_json::{Value, json};

use crate::accounts::Accounts;
use crate::crypto::random_token;
use crate::provider::{
    AuthorizeError, AuthorizeRequest, MAX_PARAM, OAuthError, PasswordChange, Provider, SignIn,
};
use crate::templates::Templates;

/// Largest form body accepted by the token, revoke and sign-in endpoints.
const MAX_FORM: usize = 16 * 1024;

#[derive(Clone)]
struct Web {
    provider: Provider,
    accounts: Accounts,
    templates: Arc<Templates>,
    cookies: Arc<CookiePolicy>,
    attempts: Arc<Attempts>,
    /// Sign-ups, resets, verifications and resends per network (`idp.account_rate_per_address`
    /// per hour).
    account_attempts: Arc<Attempts>,
}

/// Attempts per network — sign-ins at `idp.signin_rate_per_address` a minute, account actions
/// at `idp.account_rate_per_address` an hour (a burst of that many, refilled evenly) — counted
/// for the whole cluster in the store, so spreading guesses over nodes gains nothing. Each node
/// also counts in memory with the same budget first (governor's keyed GCRA): no node can allow
/// more than the budget by itself, so a flood from one network is refused there without a
/// write to the database.
struct Attempts {
    scope: &'static str,
    rate: portcullis_store::ThrottleRate,
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// When stale networks were last forgotten.
    last_sweep: Mutex<Option<Instant>>,
}

impl Attempts {
    fn new(per_minute: u32) -> Attempts {
        let per_minute = std::num::NonZeroU32::new(per_minute).unwrap_or(std::num::NonZeroU32::MIN);
        Attempts::with_quota(
            "signin",
            portcullis_store::ThrottleRate::per_minute(per_minute.get()),
            governor::Quota::per_minute(per_minute),
        )
    }

    fn per_hour(per_hour: u32) -> Attempts {
        let per_hour = std::num::NonZeroU32::new(per_hour).unwrap_or(std::num::NonZeroU32::MIN);
        Attempts::with_quota(
            "account",
            portcullis_store::ThrottleRate::per_hour(per_hour.get()),
            governor::Quota::per_hour(per_hour),
        )
    }

    fn with_quota(
        scope: &'static str,
        rate: portcullis_store::ThrottleRate,
        quota: governor::Quota,
    ) -> Attempts {
        Attempts {
            scope,
            rate,
            limiter: governor::RateLimiter::keyed(quota),
            last_sweep: Mutex::new(None),
        }
    }

    /// Counts an attempt from `ip`; false when its network is over its budget, here or in the
    /// cluster. A store that cannot count refuses (fails closed).
    async fn allowed(&self, ip: IpAddr, store: &portcullis_store::Store, now_ms: i64) -> bool {
        // Forget networks whose budget is full again when many are tracked, at most once a
        // second: a sweep walks the whole map and must not happen on every attempt.
        if self.limiter.len() > ATTEMPTS_TRACKED
            && let Ok(mut last) = self.last_sweep.lock()
            && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.limiter.retain_recent();
            *last = Some(Instant::now());
        }
        let network = network_of(ip);
        if self.limiter.check_key(&network).is_err() {
            return false;
        }
        match store
            .throttle_attempt(self.scope, &network.to_string(), self.rate, now_ms)
            .await
        {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::warn!(error = %e, scope = self.scope, "attempt not counted in the store; refused");
                false
            }
        }
    }
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
pub fn router(provider: Provider, accounts: Accounts, cookies: CookiePolicy) -> Router {
    let provider_rate = provider.settings().signin_rate_per_address;
    let account_rate = provider.settings().accounts.rate_per_address;
    let web = Web {
        provider,
        templates: accounts.templates().clone(),
        accounts,
        cookies: Arc::new(cookies),
        attempts: Arc::new(Attempts::new(provider_rate)),
        account_attempts: Arc::new(Attempts::per_hour(account_rate)),
    };
    Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(discovery::discovery),
        )
        .route("/.well-known/jwks.json", get(discovery::jwks))
        .route(
            "/oauth2/authorize",
            get(authorize::authorize).post(authorize::authorize),
        )
        .route("/login", get(login::login_page).post(login::login_submit))
        .route("/login/password", axum::routing::post(login::change_submit))
        .route("/login/mfa", axum::routing::post(mfa::mfa_submit))
        .route("/portcullis/passkeys.js", get(passkeys::script))
        .route(
            "/login/passkey/begin",
            axum::routing::post(passkeys::login_begin),
        )
        .route(
            "/login/passkey/finish",
            axum::routing::post(passkeys::login_finish),
        )
        .route(
            "/login/mfa/passkey/begin",
            axum::routing::post(passkeys::mfa_begin),
        )
        .route(
            "/login/mfa/passkey/finish",
            axum::routing::post(passkeys::mfa_finish),
        )
        .route(
            "/account/passkeys/begin",
            axum::routing::post(passkeys::account_begin),
        )
        .route(
            "/account/passkeys/finish",
            axum::routing::post(passkeys::account_finish),
        )
        .route(
            "/account/passkeys/remove",
            axum::routing::post(account::remove_passkey),
        )
        .route("/login/enrol", axum::routing::post(mfa::enrol_submit))
        .route("/login/continue", axum::routing::post(mfa::continue_submit))
        .route(
            "/account/mfa/begin",
            axum::routing::post(mfa::account_begin),
        )
        .route(
            "/account/mfa/confirm",
            axum::routing::post(mfa::account_confirm),
        )
        .route(
            "/account/mfa/recovery",
            axum::routing::post(mfa::account_recovery),
        )
        .route(
            "/account/mfa/remove",
            axum::routing::post(mfa::account_remove),
        )
        .route("/account", get(account::account_page))
        .route(
            "/account/password",
            axum::routing::post(account::change_password),
        )
        .route("/account/email", axum::routing::post(account::change_email))
        .route(
            "/account/verify",
            axum::routing::post(account::resend_verification),
        )
        .route(
            "/account/sessions",
            axum::routing::post(account::sign_out_others),
        )
        .route(
            "/account/delete",
            axum::routing::post(account::delete_account),
        )
        .route(
            "/signup",
            get(accounts::signup_page).post(accounts::signup_submit),
        )
        .route(
            "/verifyEmail",
            get(accounts::verify_page).post(accounts::verify_submit),
        )
        .route(
            "/forgotPassword",
            get(accounts::forgot_page).post(accounts::forgot_submit),
        )
        .route(
            "/resetPassword",
            get(accounts::reset_page).post(accounts::reset_submit),
        )
        .route(
            "/invitation",
            get(accounts::invitation_page).post(accounts::invitation_submit),
        )
        .route("/login/federated/{id}", get(federated::start))
        .route(
            "/login/federated/{id}/callback",
            get(federated::callback).post(federated::callback),
        )
        .route(
            "/login/federated/{id}/signed-out",
            get(federated::signed_out),
        )
        .route(
            "/account/federated/{id}/link",
            axum::routing::post(federated::link),
        )
        .route(
            "/account/federated/unlink",
            axum::routing::post(federated::unlink),
        )
        .route("/oauth2/token", axum::routing::post(token::token))
        .route(
            "/oauth2/userInfo",
            get(userinfo::userinfo).post(userinfo::userinfo),
        )
        .route("/oauth2/revoke", axum::routing::post(token::revoke))
        .route("/logout", get(logout::logout))
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

    /// The provider's session cookie for a new sign-in (`None`: the one that clears it).
    fn session_cookie(&self, secret: Option<&Secret<String>>) -> HeaderValue {
        match secret {
            Some(s) => self.set_cookie(
                self.cookies.idp_session(),
                s.expose(),
                Some(self.provider.settings().session_ttl),
                SameSite::Lax,
            ),
            None => self.set_cookie(self.cookies.idp_session(), "", Some(0), SameSite::Lax),
        }
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

    /// Records an audit event (see [`crate::audit`]).
    async fn audit(
        &self,
        kind: &str,
        actor: &crate::audit::Actor,
        subject: &str,
        detail: serde_json::Value,
    ) {
        crate::audit::record(
            self.provider.store(),
            self.provider.now(),
            kind,
            actor,
            subject,
            detail,
        )
        .await;
    }

    /// Counts a sign-in attempt from `ip`; false when its network is over its budget.
    async fn address_allowed(&self, ip: IpAddr) -> bool {
        self.attempts
            .allowed(ip, self.provider.store(), self.now_ms())
            .await
    }

    /// Counts a sign-up, reset, verification or resend from `ip`.
    async fn account_action_allowed(&self, ip: IpAddr) -> bool {
        self.account_attempts
            .allowed(ip, self.provider.store(), self.now_ms())
            .await
    }

    fn now_ms(&self) -> i64 {
        self.provider.now_millis()
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
        HeaderValue::from_static("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' https: data:; frame-ancestors 'none'; base-uri 'none'"),
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
    portcullis_http::redirect(StatusCode::SEE_OTHER, location)
}

/// JSON, never cached; `Pragma: no-cache` too, as RFC 6749 §5.1 asks of token responses.
fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut r = portcullis_http::json(status, body);
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
