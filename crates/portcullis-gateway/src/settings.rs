//! Routes and gateway settings, as declared in the configuration file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How a route answers a request it refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// JSON 401/403, never a redirect.
    Api,
    /// Redirect to sign in (signed out) or to the forbidden page (not allowed).
    Page,
    /// No authentication at all.
    Public,
}

/// Where a route's credential may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// `Authorization: Bearer`.
    Header,
    /// The access-token cookie.
    Cookie,
}

fn default_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header, TokenSource::Cookie]
}

/// One `[[routes]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path pattern: `/api/**`, `/admin/**`, `/`, `/assets/*/logo.png`.
    pub path: String,
    /// Methods (default: all).
    #[serde(default)]
    pub methods: Vec<String>,
    pub kind: RouteKind,
    /// An upstream base URL, `http://127.0.0.1:9000` (the canonical path is appended).
    pub upstream: Option<String>,
    /// A directory of static files.
    pub static_dir: Option<PathBuf>,
    /// One of portcullis' own services behind this route (`admin-api`): authenticated and
    /// authorized like any route, then answered in process.
    pub builtin: Option<String>,
    /// For static directories: answer unknown paths with `index.html` (single-page apps).
    #[serde(default)]
    pub spa_fallback: bool,
    /// For upstreams: send the client's `Host` rather than the upstream's own `host:port`
    /// (the client's is always in `X-Forwarded-Host`). Off by default: a backend that serves
    /// several virtual hosts must not let a caller pick one by sending another `Host`.
    #[serde(default)]
    pub preserve_host: bool,
    /// This route's `gateway.upstream_timeout` (`"30s"`), for an upstream slower to answer.
    pub upstream_timeout: Option<String>,
    /// This route's `gateway.total_timeout` (`"1h"`), for long streams such as server-sent events.
    pub total_timeout: Option<String>,
    #[serde(default = "default_sources")]
    pub token_sources: Vec<TokenSource>,
    /// Add `X-Auth-Assertion`: a 60-second JWT signed by portcullis that the upstream can verify
    /// with the JWKS, so it need not trust headers alone.
    #[serde(default)]
    pub assertion: bool,
    /// The assertion's audience (default: the upstream URL).
    pub audience: Option<String>,
    /// Let WebSocket upgrades through (after authentication and authorization like any request).
    /// Off by default; no other `Upgrade` protocol is ever forwarded.
    #[serde(default)]
    pub websocket: bool,
    /// On routes that need sign-in, let the upstream's `Cache-Control: public` and `s-maxage`
    /// through, so shared caches may store answers (only for content every signed-in caller may
    /// see). Off by default: such answers are made `private`.
    #[serde(default)]
    pub shared_cache: bool,
    /// Cross-origin calls from browsers (`[routes.cors]`): answered preflights and
    /// `Access-Control-*` headers for the origins listed.
    pub cors: Option<crate::cors::CorsConfig>,
    /// `[[routes.rate_limits]]`: requests per window by caller, client, group or network.
    #[serde(default)]
    pub rate_limits: Vec<crate::limits::RateLimitConfig>,
    /// `[[routes.quotas]]`: requests per day or month per client, counted in the store.
    #[serde(default)]
    pub quotas: Vec<crate::limits::QuotaConfig>,
    /// `[[routes.validation]]`: query, header and JSON body checks per method.
    #[serde(default)]
    pub validation: Vec<crate::validate::ValidationConfig>,
    /// `[routes.transform]`: path prefix, headers from claims, a body template, answer headers.
    pub transform: Option<crate::transform::TransformConfig>,
}

/// Gateway-wide settings.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    /// Our own issuer: tokens it signed are verified with the in-process key ring.
    pub issuer: String,
    pub groups_claim: String,
    /// Where signed-out page visitors go, with `?return_to=`.
    pub login_url: String,
    /// Where signed-in visitors without permission go.
    pub forbidden_url: String,
    /// Every cookie's name and attributes (the access cookie is a credential source).
    pub cookies: portcullis_token::cookie::CookiePolicy,
    /// Scheme + host (+ port) browsers use; unsafe cookie-authenticated requests must come from it.
    pub public_origin: String,
    pub connect_timeout: Duration,
    /// To the response headers.
    pub upstream_timeout: Duration,
    /// To the end of the response body.
    pub total_timeout: Duration,
    /// Largest request body forwarded.
    pub max_body: usize,
    /// One log line per request (target `portcullis::access`).
    pub access_log: bool,
    /// Our own access tokens: how long past `exp` one still counts, seconds (0: strict).
    pub token_leeway: i64,
    /// A cookie session is refreshed in line once its access token has fewer seconds than this
    /// left, so the upstream never receives an identity whose token has expired.
    pub refresh_margin: i64,
    /// Request headers removed before forwarding, besides the built-in identity and rewrite
    /// headers: names (any spelling of `-`, `_`, `.`), or prefixes ending in `*`.
    pub strip_request_headers: Vec<crate::forward::HeaderPattern>,
    /// TLS to `https://` upstreams (`forward::upstream_tls`).
    pub upstream_tls: std::sync::Arc<rustls::ClientConfig>,
    /// How often policies, revocations and quota totals are re-read from the store (the
    /// fallback: with PostgreSQL, changes also arrive at once by notification).
    pub refresh_interval: Duration,
}

/// Settings for unit tests.
#[cfg(test)]
pub(crate) fn test_settings() -> GatewaySettings {
    GatewaySettings {
        issuer: "http://localhost:8080".into(),
        groups_claim: "groups".into(),
        login_url: "/auth/login".into(),
        forbidden_url: "/".into(),
        cookies: portcullis_token::cookie::CookiePolicy::new(true, "__Host-portcullis-access"),
        public_origin: "http://localhost:8080".into(),
        connect_timeout: Duration::from_secs(1),
        upstream_timeout: Duration::from_secs(30),
        total_timeout: Duration::from_secs(300),
        max_body: 10 << 20,
        access_log: false,
        token_leeway: 0,
        refresh_margin: 30,
        strip_request_headers: Vec::new(),
        upstream_tls: crate::forward::upstream_tls(None, None).expect("default upstream TLS"),
        refresh_interval: Duration::from_millis(500),
    }
}
