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
    /// How long past `exp` its tokens still count (`"30s"`); default `"0s"`, strict.
    pub leeway: Option<String>,
    /// Compare its group names case-insensitively, as for this instance's own groups. Off by
    /// default: providers such as Cognito treat `Admin` and `admin` as two groups.
    #[serde(default)]
    pub fold_group_case: bool,
}

/// The fields of an OpenID provider's discovery document portcullis reads (OpenID Connect
/// Discovery 1.0 §3).
#[derive(Clone, Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
}

/// Why a document could not be read from an issuer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No answer (connection refused, timeout, TLS), or the body broke off.
    #[error("{url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    /// Not JSON, or not the expected shape.
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("{url} names another issuer ({found})")]
    WrongIssuer { url: String, found: String },
}

/// Reads `ISSUER/.well-known/openid-configuration` (at most [`MAX_DOCUMENT_BYTES`]); its
/// `issuer` must be exactly the one asked for (OpenID Connect Discovery §4.3).
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovery, FetchError> {
    let issuer = issuer.trim_end_matches('/');
    let url = format!("{issuer}/.well-known/openid-configuration");
    let doc: Discovery =
        serde_json::from_value(get_json_capped(http, &url).await?).map_err(|e| {
            FetchError::Invalid {
                url: url.clone(),
                reason: e.to_string(),
            }
        })?;
    if doc.issuer != issuer {
        return Err(FetchError::WrongIssuer {
            url,
            found: doc.issuer,
        });
    }
    Ok(doc)
}

/// The largest discovery document or JWKS read from an issuer. Real ones are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// GETs a JSON document from an issuer, reading at most [`MAX_DOCUMENT_BYTES`]: a bigger one is
/// refused as soon as it passes the limit (announced by `Content-Length` or streamed), so a
/// hostile or broken issuer cannot make us buffer an endless body.
pub async fn get_json_capped(
    http: &reqwest::Client,
    url: &str,
) -> Result<serde_json::Value, FetchError> {
    let resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| FetchError::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    if !resp.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: resp.status().as_u16(),
        });
    }
    json_body_capped(resp, url).await
}

/// Reads a response's JSON body, at most [`MAX_DOCUMENT_BYTES`] of it (see [`get_json_capped`]).
pub async fn json_body_capped(
    mut resp: reqwest::Response,
    url: &str,
) -> Result<serde_json::Value, FetchError> {
    let too_large = || FetchError::TooLarge {
        url: url.to_owned(),
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| FetchError::Unreachable {
        url: url.to_owned(),
        reason: e.to_string(),
    })? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| FetchError::Invalid {
        url: url.to_owned(),
        reason: e.to_string(),
    })
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
    /// Seconds past `exp` its tokens still count.
    pub leeway: i64,
    pub fold_group_case: bool,
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

/// A trusted issuer the configuration declares but the gateway cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("gateway.issuers ({issuer}): {problem}")]
pub struct IssuerError {
    pub issuer: String,
    pub problem: IssuerProblem,
}

/// What is wrong with an issuer entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssuerProblem {
    #[error("{url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("{0:?} must be https (plain http only for localhost)")]
    NotHttps(String),
    #[error("audiences must list the client ids or audiences to accept")]
    NoAudiences,
    #[error("token_use {0:?}: use access, id or any")]
    TokenUse(String),
    #[error("leeway {0:?} must be a duration up to 5m, such as \"0s\" or \"30s\"")]
    Leeway(String),
    #[error("cannot build its HTTP client: {0}")]
    Client(String),
}

/// Checks an issuer entry; returns it ready to use (keys not fetched yet).
pub fn external(cfg: &IssuerConfig) -> Result<ExternalIssuer, IssuerError> {
    let at = |problem: IssuerProblem| IssuerError {
        issuer: cfg.issuer.clone(),
        problem,
    };
    for url in std::iter::once(&cfg.issuer).chain(cfg.jwks_uri.iter()) {
        let u = url::Url::parse(url).map_err(|e| {
            at(IssuerProblem::Url {
                url: url.clone(),
                reason: e.to_string(),
            })
        })?;
        let local = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
        if u.scheme() != "https" && !(u.scheme() == "http" && local) {
            return Err(at(IssuerProblem::NotHttps(url.clone())));
        }
    }
    if cfg.audiences.is_empty() {
        return Err(at(IssuerProblem::NoAudiences));
    }
    let token_use = match cfg.token_use.as_deref().unwrap_or("access") {
        "access" => Some(TokenUse::Access),
        "id" => Some(TokenUse::Id),
        "any" => None,
        other => return Err(at(IssuerProblem::TokenUse(other.to_owned()))),
    };
    let leeway = match cfg.leeway.as_deref() {
        None => 0,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if d <= Duration::from_secs(300) => i64::try_from(d.as_secs()).unwrap_or(0),
            _ => return Err(at(IssuerProblem::Leeway(text.to_owned()))),
        },
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| at(IssuerProblem::Client(e.to_string())))?;
    Ok(ExternalIssuer {
        issuer: cfg.issuer.trim_end_matches('/').to_owned(),
        audiences: cfg.audiences.clone(),
        groups_claim: cfg.groups_claim.clone().unwrap_or_else(|| "groups".into()),
        token_use,
        leeway,
        fold_group_case: cfg.fold_group_case,
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

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let jwks_uri = match &self.jwks_uri {
            Some(u) => u.clone(),
            None => discover(&self.http, &self.issuer).await?.jwks_uri,
        };
        let jwks = get_json_capped(&self.http, &jwks_uri).await?;
        let keys = jwks["keys"].as_array().ok_or_else(|| FetchError::Invalid {
            url: jwks_uri.clone(),
            reason: "the JWKS has no keys array".into(),
        })?;
        // Keys we cannot use (encryption keys, unsupported types) are skipped, not fatal.
        let usable: Vec<VerifyingKey> = keys
            .iter()
            .filter_map(|k| VerifyingKey::from_jwk(k).ok())
            .collect();
        Ok(KeySet::new(usable))
    }
}
