//! Trusted external issuers (a Cognito user pool, Keycloak, another portcullis): their keys come
//! from their JWKS, discovered or configured, cached in memory, refetched when a token names an
//! unknown `kid` — at most once per 30 s per issuer — and kept while the issuer is unreachable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use portcullis_token::VerifyingKey;
use portcullis_token::jwt::{KeySet, TokenUse};
use serde::Deserialize;

/// One `[[gateway.issuers]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Its JWKS; default: `jwks_uri` from `ISSUER/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values or `client_id`s (Cognito access tokens carry `client_id`, no `aud`).
    pub audiences: Vec<String>,
    /// Name of its groups claim (default `groups`; Cognito: `cognito:groups`).
    pub groups_claim: Option<String>,
    /// The `token_use` its tokens must have: `access` (default), `id`, or `any` for issuers
    /// that do not set the claim.
    pub token_use: Option<String>,
}

/// Minimum time between two JWKS fetches of one issuer (unknown `kid` cannot be used to make
/// the gateway hammer an issuer).
const REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// An external issuer and its cached keys.
pub struct ExternalIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub groups_claim: String,
    pub token_use: Option<TokenUse>,
    jwks_uri: Option<String>,
    keys: ArcSwap<KeySet>,
    last_fetch: Mutex<Option<Instant>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ExternalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalIssuer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Checks an issuer entry; returns it ready to use (keys not fetched yet).
pub fn external(cfg: &IssuerConfig) -> Result<ExternalIssuer, String> {
    let at = |m: String| format!("gateway.issuers ({}): {m}", cfg.issuer);
    for url in std::iter::once(&cfg.issuer).chain(cfg.jwks_uri.iter()) {
        let u = url::Url::parse(url).map_err(|e| at(format!("{url:?}: {e}")))?;
        let local = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if u.scheme() != "https" && !(u.scheme() == "http" && local) {
            return Err(at(format!(
                "{url:?} must be https (plain http only for localhost)"
            )));
        }
    }
    if cfg.audiences.is_empty() {
        return Err(at(
            "audiences must list the client ids or audiences to accept".into(),
        ));
    }
    let token_use = match cfg.token_use.as_deref().unwrap_or("access") {
        "access" => Some(TokenUse::Access),
        "id" => Some(TokenUse::Id),
        "any" => None,
        other => return Err(at(format!("token_use {other:?}: use access, id or any"))),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| at(e.to_string()))?;
    Ok(ExternalIssuer {
        issuer: cfg.issuer.trim_end_matches('/').to_owned(),
        audiences: cfg.audiences.clone(),
        groups_claim: cfg.groups_claim.clone().unwrap_or_else(|| "groups".into()),
        token_use,
        jwks_uri: cfg.jwks_uri.clone(),
        keys: ArcSwap::from_pointee(KeySet::default()),
        last_fetch: Mutex::new(None),
        http,
    })
}

impl ExternalIssuer {
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Fetches the JWKS unless it was fetched less than 30 s ago. On failure the cached keys stay.
    /// Returns whether new keys were loaded.
    pub async fn refresh(&self) -> bool {
        {
            let Ok(mut last) = self.last_fetch.lock() else {
                return false;
            };
            if last.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "fetched the issuer's keys");
                self.keys.store(Arc::new(keys));
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "cannot fetch the issuer's keys; keeping the cached ones");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let jwks_uri = match &self.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                let doc: serde_json::Value = self.get_json(&url).await?;
                if doc["issuer"].as_str() != Some(self.issuer.as_str()) {
                    return Err("the discovery document names another issuer".into());
                }
                doc["jwks_uri"]
                    .as_str()
                    .ok_or("the discovery document has no jwks_uri")?
                    .to_owned()
            }
        };
        let jwks: serde_json::Value = self.get_json(&jwks_uri).await?;
        let keys = jwks["keys"]
            .as_array()
            .ok_or("the JWKS has no keys array")?;
        // Keys we cannot use (encryption keys, unsupported types) are skipped, not fatal.
        let usable: Vec<VerifyingKey> = keys
            .iter()
            .filter_map(|k| VerifyingKey::from_jwk(k).ok())
            .collect();
        Ok(KeySet::new(usable))
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if bytes.len() > 1 << 20 {
            return Err(format!("{url}: document too large"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{url}: {e}"))
    }
}
