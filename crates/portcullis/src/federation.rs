//! Upstream providers for federated sign-in (`[[idp.providers]]`), over HTTP: OpenID Connect
//! discovery, the authorization-code exchange with PKCE, ID-token verification with the
//! provider's JWKS (the gateway's strict verifier), userinfo, and the presets' quirks — Google's
//! two issuer spellings, Entra ID's multi-tenant issuer, Apple's form post and generated client
//! secret, GitHub's plain OAuth 2.0 with the user from its API. The decisions about users are
//! the identity provider's ([`portcullis_idp::federation`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_gateway::issuers::{
    ExternalIssuer, IssuerConfig, get_json_capped, json_body_capped,
};
use portcullis_idp::federation::{
    Assertion, Attempt, BoxFuture, GroupRule, Upstream, UpstreamError,
};
use portcullis_idp::pkce_s256;
use portcullis_token::jwt::{self, Expect};
use portcullis_token::{Clock, Secret, SigningKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// One `[[idp.providers]]` entry, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredProvider {
    /// 1–32 of `a-z 0-9 -`: in the redirect URI `<issuer>/login/federated/<id>/callback`.
    pub id: String,
    /// The button says "Continue with <name>" (default: the preset's name, else the id).
    pub name: Option<String>,
    /// `google`, `entra`, `apple`, `github`, or none for any OpenID Connect provider.
    pub preset: Option<Preset>,
    /// The provider's issuer (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: Option<String>,
    pub client_id: String,
    /// A file holding the client secret (or `PORTCULLIS_IDP_PROVIDER_<ID>_CLIENT_SECRET`).
    pub client_secret_file: Option<PathBuf>,
    /// Scopes asked for (default `openid email profile`; GitHub `read:user user:email`).
    pub scopes: Option<Vec<String>>,
    pub logo_url: Option<String>,
    /// Unknown identities create a user (default: whether `idp.signup` is open to anyone or to
    /// `idp.signup_domains`).
    pub create_users: Option<bool>,
    /// With `create_users`: only these e-mail domains (default: `idp.signup_domains` with
    /// `idp.signup = "domains"`).
    pub domains: Option<Vec<String>>,
    /// Link a first sign-in to the user with the same verified address.
    #[serde(default)]
    pub link_by_email: bool,
    /// Groups a user created by this provider joins.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Our attribute = the provider's claim.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub group_rules: Vec<GroupRule>,
    /// Signing out here also signs out at the provider (RP-initiated logout).
    #[serde(default)]
    pub sign_out: bool,
    /// Entra ID: the tenant (a tenant id or domain, or `organizations`/`common` for any).
    pub tenant: Option<String>,
    /// Entra ID multi-tenant: the tenant ids whose users may sign in (empty: any).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Apple: the team id, the key id and the `.p8` key that sign the client secret.
    pub team_id: Option<String>,
    pub key_id: Option<String>,
    pub private_key_file: Option<PathBuf>,
    /// Plain OAuth 2.0 (`github`, or any provider without OpenID Connect): its endpoints.
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
}

/// Providers with quirks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Google,
    Entra,
    Apple,
    Github,
    /// Plain OAuth 2.0 with a userinfo endpoint, configured by hand.
    Oauth2,
}

/// How the provider's issuer is checked.
#[derive(Clone, Debug)]
enum IssuerCheck {
    /// Exactly this (Google also spells its issuer without `https://`).
    Exact(Vec<String>),
    /// Entra ID multi-tenant: `https://login.microsoftonline.com/{tenantid}/v2.0` with the
    /// token's `tid`, from these tenants (empty: any).
    EntraTenant(Vec<String>),
}

/// A checked provider: what [`HttpUpstream`] needs.
#[derive(Clone)]
pub struct ProviderConfig {
    pub id: String,
    pub rules: portcullis_idp::federation::FederationRules,
    kind: Kind,
    client_id: String,
    secret: Option<Secret<String>>,
    apple_key: Option<Arc<AppleKey>>,
    scopes: String,
    sign_out: bool,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
enum Kind {
    Oidc {
        /// Where discovery is read.
        discovery_base: String,
        check: IssuerCheck,
    },
    OAuth2 {
        authorization_endpoint: String,
        token_endpoint: String,
        userinfo_endpoint: String,
        /// GitHub: the address list at `<api>/user/emails` says which address is verified.
        github_emails: Option<String>,
        /// The provider's issuer identifier, if it has one: answers naming another (RFC 9207)
        /// are refused.
        issuer: Option<String>,
    },
}

struct AppleKey {
    team_id: String,
    key: SigningKey,
}

/// The environment variable that may hold a provider's client secret.
pub fn secret_env(id: &str) -> String {
    format!(
        "PORTCULLIS_IDP_PROVIDER_{}_CLIENT_SECRET",
        id.to_ascii_uppercase().replace('-', "_")
    )
}

fn https_or_loopback(url: &str) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if u.scheme() == "https" || (u.scheme() == "http" && loopback) {
        Ok(())
    } else {
        Err(format!("{url}: use https (plain http only on loopback)"))
    }
}

impl DeclaredProvider {
    /// Checks the entry; `secret` is the client secret from the environment, if set; `signup`
    /// the pool's sign-up defaults (open to anyone or to some domains). Errors name the key.
    pub fn check(
        &self,
        secret_from_env: Option<&str>,
        signup: (bool, &[String]),
    ) -> Result<ProviderConfig, (String, String)> {
        let err = |key: &str, msg: String| (key.to_owned(), msg);
        portcullis_idp::federation::FederationRules::validate_id(&self.id)
            .map_err(|e| err("id", e))?;
        if self.client_id.is_empty() {
            return Err(err(
                "client_id",
                "the client id registered at the provider is required".into(),
            ));
        }
        let secret = match (secret_from_env, &self.client_secret_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "client_secret_file",
                    format!("{} is set too; keep one source", secret_env(&self.id)),
                ));
            }
            (Some(s), None) => Some(Secret::new(s.to_owned())),
            (None, Some(path)) => Some(Secret::new(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        err(
                            "client_secret_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            )),
            (None, None) => None,
        };
        let preset = self.preset;
        let default_name = match preset {
            Some(Preset::Google) => "Google",
            Some(Preset::Entra) => "Microsoft",
            Some(Preset::Apple) => "Apple",
            Some(Preset::Github) => "GitHub",
            _ => self.id.as_str(),
        };
        let oidc_scopes = "openid email profile";
        let (kind, default_scopes) = match preset {
            Some(Preset::Google) => (
                Kind::Oidc {
                    discovery_base: "https://accounts.google.com".into(),
                    check: IssuerCheck::Exact(vec![
                        "https://accounts.google.com".into(),
                        "accounts.google.com".into(),
                    ]),
                },
                oidc_scopes,
            ),
            Some(Preset::Entra) => {
                let tenant = self.tenant.clone().ok_or_else(|| {
                    err(
                        "tenant",
                        "Entra ID needs the tenant: its id or domain, or \"organizations\" for any work account".into(),
                    )
                })?;
                let base = format!("https://login.microsoftonline.com/{tenant}/v2.0");
                let multi = matches!(tenant.as_str(), "common" | "organizations" | "consumers");
                let check = if multi {
                    IssuerCheck::EntraTenant(self.tenants.clone())
                } else {
                    // A single tenant's discovery names its issuer with the tenant id; checked
                    // against discovery (which must agree with itself).
                    IssuerCheck::Exact(Vec::new())
                };
                (
                    Kind::Oidc {
                        discovery_base: base,
                        check,
                    },
                    oidc_scopes,
                )
            }
            Some(Preset::Apple) => (
                Kind::Oidc {
                    discovery_base: "https://appleid.apple.com".into(),
                    check: IssuerCheck::Exact(vec!["https://appleid.apple.com".into()]),
                },
                "openid email name",
            ),
            Some(Preset::Github) => (
                Kind::OAuth2 {
                    authorization_endpoint: self
                        .authorization_endpoint
                        .clone()
                        .unwrap_or_else(|| "https://github.com/login/oauth/authorize".into()),
                    token_endpoint: self
                        .token_endpoint
                        .clone()
                        .unwrap_or_else(|| "https://github.com/login/oauth/access_token".into()),
                    userinfo_endpoint: self
                        .userinfo_endpoint
                        .clone()
                        .unwrap_or_else(|| "https://api.github.com/user".into()),
                    github_emails: Some(
                        self.userinfo_endpoint
                            .clone()
                            .unwrap_or_else(|| "https://api.github.com/user".into())
                            + "/emails",
                    ),
                    issuer: None,
                },
                "read:user user:email",
            ),
            Some(Preset::Oauth2) => {
                let need = |v: &Option<String>, key: &str| {
                    v.clone()
                        .ok_or_else(|| err(key, format!("preset = \"oauth2\" needs {key}")))
                };
                (
                    Kind::OAuth2 {
                        authorization_endpoint: need(
                            &self.authorization_endpoint,
                            "authorization_endpoint",
                        )?,
                        token_endpoint: need(&self.token_endpoint, "token_endpoint")?,
                        userinfo_endpoint: need(&self.userinfo_endpoint, "userinfo_endpoint")?,
                        github_emails: None,
                        issuer: self.issuer.clone(),
                    },
                    "",
                )
            }
            None => {
                let issuer = self.issuer.clone().ok_or_else(|| {
                    err(
                        "issuer",
                        "the provider's issuer URL is required (or a preset)".into(),
                    )
                })?;
                let issuer = issuer.trim_end_matches('/').to_owned();
                (
                    Kind::Oidc {
                        discovery_base: issuer.clone(),
                        check: IssuerCheck::Exact(vec![issuer]),
                    },
                    oidc_scopes,
                )
            }
        };
        if preset.is_some() && preset != Some(Preset::Oauth2) && self.issuer.is_some() {
            return Err(err(
                "issuer",
                "a preset knows its issuer: leave issuer out".into(),
            ));
        }
        match &kind {
            Kind::Oidc { discovery_base, .. } => {
                https_or_loopback(discovery_base).map_err(|e| err("issuer", e))?
            }
            Kind::OAuth2 {
                authorization_endpoint,
                token_endpoint,
                userinfo_endpoint,
                ..
            } => {
                for (k, u) in [
                    ("authorization_endpoint", authorization_endpoint),
                    ("token_endpoint", token_endpoint),
                    ("userinfo_endpoint", userinfo_endpoint),
                ] {
                    https_or_loopback(u).map_err(|e| err(k, e))?;
                }
            }
        }
        let apple_key = if preset == Some(Preset::Apple) {
            let (Some(team_id), Some(key_id), Some(path)) =
                (&self.team_id, &self.key_id, &self.private_key_file)
            else {
                return Err(err(
                    "private_key_file",
                    "Apple signs in with a generated client secret: set team_id, key_id and private_key_file (the .p8 key)".into(),
                ));
            };
            let pem = std::fs::read_to_string(path).map_err(|e| {
                err(
                    "private_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let der = pem_body(&pem).ok_or_else(|| {
                err(
                    "private_key_file",
                    format!("{} is not a PEM private key", path.display()),
                )
            })?;
            let key =
                SigningKey::from_pkcs8(portcullis_token::Algorithm::ES256, key_id.clone(), &der)
                    .map_err(|e| err("private_key_file", format!("{}: {e}", path.display())))?;
            Some(Arc::new(AppleKey {
                team_id: team_id.clone(),
                key,
            }))
        } else {
            None
        };
        if secret.is_none() && apple_key.is_none() && matches!(kind, Kind::OAuth2 { .. }) {
            return Err(err(
                "client_secret_file",
                format!(
                    "a plain OAuth 2.0 provider needs the client secret: client_secret_file or {}",
                    secret_env(&self.id)
                ),
            ));
        }
        for g in self
            .groups
            .iter()
            .chain(self.group_rules.iter().map(|r| &r.group))
        {
            portcullis_idp::validate_group_name(g).map_err(|e| err("groups", e.to_string()))?;
        }
        if let Some(logo) = &self.logo_url
            && !(logo.starts_with("https://") || logo.starts_with('/'))
        {
            return Err(err(
                "logo_url",
                "an https URL or a path on this server".into(),
            ));
        }
        let scopes = self
            .scopes
            .clone()
            .map(|s| s.join(" "))
            .unwrap_or_else(|| default_scopes.to_owned());
        if matches!(kind, Kind::Oidc { .. }) && !scopes.split(' ').any(|s| s == "openid") {
            return Err(err(
                "scopes",
                "OpenID Connect needs the scope `openid`".into(),
            ));
        }
        let (signup_open, signup_domains) = signup;
        let rules = portcullis_idp::federation::FederationRules {
            id: self.id.clone(),
            name: self.name.clone().unwrap_or_else(|| default_name.to_owned()),
            logo_url: self.logo_url.clone(),
            create_users: self.create_users.unwrap_or(signup_open),
            domains: self
                .domains
                .clone()
                .map(|d| {
                    d.iter()
                        .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
                        .collect()
                })
                .unwrap_or_else(|| signup_domains.to_vec()),
            link_by_email: self.link_by_email,
            groups: self.groups.clone(),
            attributes: self.attributes.clone(),
            group_rules: self.group_rules.clone(),
        };
        Ok(ProviderConfig {
            id: self.id.clone(),
            rules,
            kind,
            client_id: self.client_id.clone(),
            secret,
            apple_key,
            scopes,
            sign_out: self.sign_out,
        })
    }
}

/// The DER inside a PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// What discovery said, kept for a day.
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
    /// RFC 9207: the provider puts `iss` in its answers, so a missing one is refused.
    iss_parameter: bool,
    keys: Option<ExternalIssuer>,
    fetched: Instant,
}

/// After a failed discovery, how long sign-ins with the provider fail at once.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How long discovery is trusted before it is read again.
const METADATA_TTL: Duration = Duration::from_secs(24 * 3600);

/// An upstream provider over HTTP.
pub struct HttpUpstream {
    cfg: ProviderConfig,
    redirect_uri: String,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<Arc<Metadata>>>,
    /// When discovery last failed: for a few seconds after, sign-ins fail at once instead of
    /// each waiting for a provider that is down.
    failed_at: std::sync::Mutex<Option<Instant>>,
    clock: Clock,
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("id", &self.cfg.id)
            .finish_non_exhaustive()
    }
}

/// Reads a JSON answer; 5xx and unreachable are [`UpstreamError::Unavailable`].
async fn read_json(
    resp: Result<reqwest::Response, reqwest::Error>,
    url: &str,
) -> Result<(reqwest::StatusCode, Value), UpstreamError> {
    let resp = resp.map_err(|e| UpstreamError::Unavailable(format!("{url}: {e}")))?;
    let status = resp.status();
    if status.is_server_error() {
        return Err(UpstreamError::Unavailable(format!("{url}: HTTP {status}")));
    }
    let body = json_body_capped(resp, url)
        .await
        .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
    Ok((status, body))
}

impl HttpUpstream {
    pub fn new(
        cfg: ProviderConfig,
        issuer: &str,
        tls: rustls::ClientConfig,
    ) -> Result<HttpUpstream, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("portcullis")
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(HttpUpstream {
            redirect_uri: portcullis_idp::federation::redirect_uri(issuer, &cfg.id),
            cfg,
            http,
            metadata: tokio::sync::Mutex::new(None),
            failed_at: std::sync::Mutex::new(None),
            clock: Clock::system(),
        })
    }

    /// The provider's metadata: discovered (OpenID Connect) or configured (OAuth 2.0); read
    /// again after a day, and retried at the next sign-in after a failure.
    async fn metadata(&self) -> Result<Arc<Metadata>, UpstreamError> {
        let recently_failed = self
            .failed_at
            .lock()
            .ok()
            .and_then(|f| *f)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE);
        let mut slot = self.metadata.lock().await;
        if let Some(m) = slot.as_ref()
            && m.fetched.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        if recently_failed {
            return match slot.as_ref() {
                Some(stale) => Ok(stale.clone()),
                None => Err(UpstreamError::Unavailable(
                    "discovery failed moments ago".into(),
                )),
            };
        }
        let m = Arc::new(match &self.cfg.kind {
            Kind::OAuth2 {
                authorization_endpoint,
                token_endpoint,
                userinfo_endpoint,
                issuer,
                ..
            } => Metadata {
                issuer: issuer.clone().unwrap_or_default(),
                authorization_endpoint: authorization_endpoint.clone(),
                token_endpoint: token_endpoint.clone(),
                userinfo_endpoint: Some(userinfo_endpoint.clone()),
                end_session_endpoint: None,
                iss_parameter: false,
                keys: None,
                fetched: Instant::now(),
            },
            Kind::Oidc {
                discovery_base,
                check,
            } => match self.discover(discovery_base, check).await {
                Ok(m) => m,
                Err(e) => {
                    if let Ok(mut f) = self.failed_at.lock() {
                        *f = Some(Instant::now());
                    }
                    // A day-old document still beats none while the provider is unreachable.
                    if let Some(stale) = slot.as_ref() {
                        tracing::warn!(provider = %self.cfg.id, error = %e, "rediscovery failed; keeping the provider's metadata");
                        return Ok(stale.clone());
                    }
                    return Err(e);
                }
            },
        });
        *slot = Some(m.clone());
        Ok(m)
    }

    async fn discover(&self, base: &str, check: &IssuerCheck) -> Result<Metadata, UpstreamError> {
        let url = format!("{base}/.well-known/openid-configuration");
        let doc = get_json_capped(&self.http, &url)
            .await
            .map_err(|e| match e {
                portcullis_gateway::issuers::FetchError::Unreachable { .. }
                | portcullis_gateway::issuers::FetchError::Status { .. } => {
                    UpstreamError::Unavailable(e.to_string())
                }
                other => UpstreamError::Invalid(other.to_string()),
            })?;
        let text = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
        let issuer =
            text("issuer").ok_or_else(|| UpstreamError::Invalid(format!("{url}: no issuer")))?;
        let issuer_ok = match check {
            IssuerCheck::Exact(allowed) => allowed.is_empty() || allowed.contains(&issuer),
            IssuerCheck::EntraTenant(_) => issuer.contains("{tenantid}"),
        };
        if !issuer_ok {
            return Err(UpstreamError::Invalid(format!(
                "{url} names another issuer ({issuer})"
            )));
        }
        let need =
            |k: &str| text(k).ok_or_else(|| UpstreamError::Invalid(format!("{url}: no {k}")));
        let jwks_uri = need("jwks_uri")?;
        let keys = portcullis_gateway::issuers::external(&IssuerConfig {
            issuer: base.to_owned(),
            jwks_uri: Some(jwks_uri),
            audiences: vec![self.cfg.client_id.clone()],
            groups_claim: None,
            token_use: Some("any".into()),
            leeway: None,
            fold_group_case: false,
        })
        .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
        keys.refresh().await;
        Ok(Metadata {
            authorization_endpoint: need("authorization_endpoint")?,
            token_endpoint: need("token_endpoint")?,
            userinfo_endpoint: text("userinfo_endpoint"),
            end_session_endpoint: text("end_session_endpoint"),
            iss_parameter: doc
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            issuer,
            keys: Some(keys),
            fetched: Instant::now(),
        })
    }

    /// POSTs the code to the token endpoint with the client's authentication.
    async fn redeem(
        &self,
        m: &Metadata,
        code: &str,
        verifier: &str,
    ) -> Result<Value, UpstreamError> {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "authorization_code".into()),
            ("code", code.to_owned()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("code_verifier", verifier.to_owned()),
        ];
        let mut req = self
            .http
            .post(&m.token_endpoint)
            .header(reqwest::header::ACCEPT, "application/json");
        let post_secret = matches!(self.cfg.kind, Kind::OAuth2 { .. });
        match (&self.cfg.apple_key, &self.cfg.secret) {
            (Some(key), _) => {
                form.push(("client_id", self.cfg.client_id.clone()));
                form.push((
                    "client_secret",
                    apple_client_secret(&self.cfg, key, self.clock.now())?,
                ));
            }
            (None, Some(s)) if post_secret => {
                form.push(("client_id", self.cfg.client_id.clone()));
                form.push(("client_secret", s.expose().clone()));
            }
            (None, Some(s)) => {
                // RFC 6749 §2.3.1: both parts form-encoded before Basic.
                let enc = |v: &str| {
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                };
                req = req.basic_auth(enc(&self.cfg.client_id), Some(enc(s.expose())));
            }
            (None, None) => form.push(("client_id", self.cfg.client_id.clone())),
        }
        let (status, body) = read_json(req.form(&form).send().await, &m.token_endpoint).await?;
        if !status.is_success() || body.get("error").is_some() {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("?");
            return Err(UpstreamError::Invalid(format!(
                "the token endpoint refused the code: HTTP {status} {error}"
            )));
        }
        Ok(body)
    }

    /// Verifies an ID token: signature by the provider's keys, issuer, audience, expiry, nonce,
    /// and `azp` when there are several audiences.
    async fn verify_id_token(
        &self,
        m: &Metadata,
        token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, UpstreamError> {
        let keys = m
            .keys
            .as_ref()
            .ok_or_else(|| UpstreamError::Invalid("ID token: no keys".into()))?;
        let now = self.clock.now();
        match check_id_token(&self.cfg, now, &m.issuer, &keys.keys(), token, nonce) {
            // A key the provider rotated in since we last looked (refetched at most every 30 s).
            Err(IdTokenError::UnknownKey) if keys.refresh().await => {
                check_id_token(&self.cfg, now, &m.issuer, &keys.keys(), token, nonce)
            }
            other => other,
        }
        .map_err(|e| match e {
            IdTokenError::UnknownKey => {
                UpstreamError::Invalid("ID token: signed by an unknown key".into())
            }
            IdTokenError::Invalid(why) => UpstreamError::Invalid(format!("ID token: {why}")),
        })
    }

    async fn get_json(&self, url: &str, access_token: &str) -> Result<Value, UpstreamError> {
        let (status, body) = read_json(
            self.http
                .get(url)
                .bearer_auth(access_token)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await,
            url,
        )
        .await?;
        if !status.is_success() {
            return Err(UpstreamError::Invalid(format!("{url}: HTTP {status}")));
        }
        Ok(body)
    }

    async fn finish_oidc(
        &self,
        m: &Metadata,
        attempt: &Attempt,
        answer: &Value,
        callback: &BTreeMap<String, String>,
    ) -> Result<Assertion, UpstreamError> {
        let id_token = answer
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| UpstreamError::Invalid("the token endpoint sent no ID token".into()))?;
        let mut claims = self.verify_id_token(m, id_token, &attempt.nonce).await?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .ok_or_else(|| UpstreamError::Invalid("ID token: no sub".into()))?
            .to_owned();
        // Claims only in userinfo (providers that keep the ID token small); its `sub` must match.
        if let (Some(url), Some(access)) = (
            &m.userinfo_endpoint,
            answer.get("access_token").and_then(Value::as_str),
        ) && self.cfg.apple_key.is_none()
        {
            let info = self.get_json(url, access).await?;
            if info.get("sub").and_then(Value::as_str) != Some(sub.as_str()) {
                return Err(UpstreamError::Invalid(
                    "userinfo is about someone else".into(),
                ));
            }
            if let Value::Object(info) = info {
                for (k, v) in info {
                    claims.entry(k).or_insert(v);
                }
            }
        }
        // Apple posts the user's name once, on the first sign-in, outside the ID token.
        if let Some(user) = callback.get("user")
            && let Ok(Value::Object(u)) = serde_json::from_str::<Value>(user)
            && let Some(Value::Object(name)) = u.get("name")
        {
            for (ours, theirs) in [("given_name", "firstName"), ("family_name", "lastName")] {
                if let Some(v) = name.get(theirs) {
                    claims.entry(ours.to_owned()).or_insert(v.clone());
                }
            }
        }
        let amr = claims
            .get("amr")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(assertion(sub, claims, amr, Some(id_token.to_owned())))
    }

    async fn finish_oauth2(
        &self,
        m: &Metadata,
        answer: &Value,
    ) -> Result<Assertion, UpstreamError> {
        let access = answer
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                UpstreamError::Invalid("the token endpoint sent no access token".into())
            })?;
        let url = m.userinfo_endpoint.as_deref().unwrap_or_default();
        let Value::Object(mut claims) = self.get_json(url, access).await? else {
            return Err(UpstreamError::Invalid(format!("{url}: not an object")));
        };
        // `sub`, or GitHub's numeric `id` (stable; the login name can change).
        let sub = match claims.get("sub").or_else(|| claims.get("id")) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(UpstreamError::Invalid(format!("{url}: no user id"))),
        };
        if let Kind::OAuth2 {
            github_emails: Some(emails_url),
            ..
        } = &self.cfg.kind
        {
            // GitHub's profile address is whatever the user made public; the list says which
            // is primary and verified.
            claims.remove("email");
            claims.remove("email_verified");
            if let Ok(Value::Array(list)) = self.get_json(emails_url, access).await
                && let Some(primary) = list.iter().find(|e| e["primary"] == Value::Bool(true))
            {
                claims.insert("email".into(), primary["email"].clone());
                claims.insert("email_verified".into(), primary["verified"].clone());
            }
            if let Some(login) = claims.get("login").cloned() {
                claims.entry("preferred_username").or_insert(login);
            }
        }
        claims.insert("sub".into(), Value::String(sub.clone()));
        Ok(assertion(sub, claims, Vec::new(), None))
    }
}

/// Verifies an ID token against `keys`: signature, issuer (discovery's; Entra's with the
/// token's tenant; Google's either spelling), audience, expiry, nonce, and `azp` when present
/// or when there are several audiences.
fn check_id_token(
    cfg: &ProviderConfig,
    now: i64,
    issuer: &str,
    keys: &portcullis_token::jwt::KeySet,
    token: &str,
    nonce: &str,
) -> Result<Map<String, Value>, IdTokenError> {
    let invalid = |why: &str| IdTokenError::Invalid(why.to_owned());
    let expected_issuer = match &cfg.kind {
        Kind::Oidc {
            check: IssuerCheck::EntraTenant(allowed),
            ..
        } => {
            // The issuer names the tenant; the signature (checked next) vouches for both.
            let tid = unverified_claim(token, "tid").ok_or_else(|| invalid("no tid"))?;
            if !allowed.is_empty() && !allowed.contains(&tid) {
                return Err(invalid("tenant not allowed"));
            }
            if tid.is_empty() || !tid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(invalid("tid is not a tenant id"));
            }
            issuer.replace("{tenantid}", &tid)
        }
        _ => match unverified_claim(token, "iss") {
            // Google's tokens may say `accounts.google.com` without the scheme.
            Some(iss)
                if iss == "accounts.google.com" && issuer == "https://accounts.google.com" =>
            {
                iss
            }
            _ => issuer.to_owned(),
        },
    };
    let aud = [cfg.client_id.clone()];
    let expect = Expect {
        issuer: &expected_issuer,
        audiences: &aud,
        token_use: None,
        leeway: 60,
        exp_leeway: 0,
        now,
    };
    let raw = match jwt::verify(token, keys, &expect) {
        Ok(c) => c.raw,
        Err(jwt::VerifyError::UnknownKey) => return Err(IdTokenError::UnknownKey),
        Err(e) => return Err(invalid(&e.to_string())),
    };
    let sent_nonce = raw.get("nonce").and_then(Value::as_str).unwrap_or_default();
    if !portcullis_token::constant_time_eq(sent_nonce.as_bytes(), nonce.as_bytes()) {
        return Err(invalid("the nonce is not this attempt's"));
    }
    let several = raw
        .get("aud")
        .and_then(Value::as_array)
        .is_some_and(|a| a.len() > 1);
    let azp = raw.get("azp").and_then(Value::as_str);
    if (several || azp.is_some()) && azp != Some(cfg.client_id.as_str()) {
        return Err(invalid("issued to another client (azp)"));
    }
    Ok(raw)
}

/// Apple's client secret: an ES256 JWT signed by the team's key (its `kid`), valid for five
/// minutes — made for each code exchange.
fn apple_client_secret(
    cfg: &ProviderConfig,
    key: &AppleKey,
    now: i64,
) -> Result<String, UpstreamError> {
    let claims = serde_json::json!({
        "iss": key.team_id, "iat": now, "exp": now + 300,
        "aud": "https://appleid.apple.com", "sub": cfg.client_id,
    });
    let Value::Object(claims) = claims else {
        return Err(UpstreamError::Invalid("claims".into()));
    };
    jwt::sign(&key.key, "JWT", &claims).map_err(|e| UpstreamError::Invalid(e.to_string()))
}

/// Why an ID token was refused.
#[derive(Debug)]
enum IdTokenError {
    /// Signed by a key not (yet) in the provider's JWKS.
    UnknownKey,
    Invalid(String),
}

/// A claim of a JWT's payload, read without verification (to choose what to verify against).
fn unverified_claim(token: &str, name: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get(name)?.as_str().map(str::to_owned)
}

fn assertion(
    sub: String,
    claims: Map<String, Value>,
    amr: Vec<String>,
    id_token: Option<String>,
) -> Assertion {
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // Apple writes booleans as strings.
    let email_verified = match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    };
    Assertion {
        subject: sub,
        email,
        email_verified,
        claims,
        amr,
        id_token: id_token.map(Secret::new),
    }
}

impl Upstream for HttpUpstream {
    fn authorization_url<'a>(
        &'a self,
        attempt: &'a Attempt,
    ) -> BoxFuture<'a, Result<String, UpstreamError>> {
        Box::pin(async move {
            let m = self.metadata().await?;
            let mut url = url::Url::parse(&m.authorization_endpoint)
                .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
            let challenge = pkce_s256(&attempt.verifier);
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("response_type", "code")
                    .append_pair("client_id", &self.cfg.client_id)
                    .append_pair("redirect_uri", &self.redirect_uri)
                    .append_pair("state", &attempt.state)
                    .append_pair("code_challenge", &challenge)
                    .append_pair("code_challenge_method", "S256");
                if !self.cfg.scopes.is_empty() {
                    q.append_pair("scope", &self.cfg.scopes);
                }
                if matches!(self.cfg.kind, Kind::Oidc { .. }) {
                    q.append_pair("nonce", &attempt.nonce);
                }
                if self.form_post() {
                    q.append_pair("response_mode", "form_post");
                }
                // The application's demand for a fresh sign-in reaches the provider too.
                if attempt.prompt_login {
                    q.append_pair("prompt", "login");
                }
                if let Some(max_age) = attempt.max_age {
                    q.append_pair("max_age", &max_age.to_string());
                }
            }
            Ok(url.to_string())
        })
    }

    fn finish<'a>(
        &'a self,
        attempt: &'a Attempt,
        callback: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<Assertion, UpstreamError>> {
        Box::pin(async move {
            let m = self.metadata().await?;
            // RFC 9207: an answer names its issuer; a provider that says it does must.
            let entra = matches!(
                self.cfg.kind,
                Kind::Oidc {
                    check: IssuerCheck::EntraTenant(_),
                    ..
                }
            );
            match callback.get("iss") {
                // Entra's issuer names the tenant; the ID token's is checked exactly.
                Some(iss) if entra && !iss.starts_with("https://login.microsoftonline.com/") => {
                    return Err(UpstreamError::Invalid(format!(
                        "the answer came from {iss}"
                    )));
                }
                // (A plain OAuth 2.0 provider configured without an issuer cannot be checked.)
                Some(iss) if !entra && !m.issuer.is_empty() && *iss != m.issuer => {
                    return Err(UpstreamError::Invalid(format!(
                        "the answer came from another issuer ({iss})"
                    )));
                }
                None if m.iss_parameter => {
                    return Err(UpstreamError::Invalid(
                        "the answer does not name its issuer".into(),
                    ));
                }
                _ => {}
            }
            if let Some(error) = callback.get("error") {
                let code: String = error
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(64)
                    .collect();
                return Err(UpstreamError::Denied(code));
            }
            let code = callback
                .get("code")
                .filter(|c| !c.is_empty())
                .ok_or_else(|| UpstreamError::Invalid("the answer has no code".into()))?;
            let answer = self.redeem(&m, code, &attempt.verifier).await?;
            match self.cfg.kind {
                Kind::Oidc { .. } => self.finish_oidc(&m, attempt, &answer, callback).await,
                Kind::OAuth2 { .. } => self.finish_oauth2(&m, &answer).await,
            }
        })
    }

    fn logout_url<'a>(
        &'a self,
        id_token: Option<&'a str>,
        return_to: &'a str,
    ) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            if !self.cfg.sign_out {
                return None;
            }
            let m = self.metadata().await.ok()?;
            let mut url = url::Url::parse(m.end_session_endpoint.as_deref()?).ok()?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("client_id", &self.cfg.client_id)
                    .append_pair("post_logout_redirect_uri", return_to);
                if let Some(t) = id_token {
                    q.append_pair("id_token_hint", t);
                }
            }
            Some(url.to_string())
        })
    }

    fn form_post(&self) -> bool {
        self.cfg.apple_key.is_some()
    }

    fn signs_out(&self) -> bool {
        self.cfg.sign_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_token::jwt::KeySet;

    fn provider(toml_text: &str) -> ProviderConfig {
        let declared: DeclaredProvider = toml::from_str(toml_text).expect("toml");
        declared.check(None, (false, &[])).expect("valid")
    }

    fn signer() -> (SigningKey, KeySet) {
        let key = SigningKey::generate(portcullis_token::Algorithm::ES256, "k1").expect("key");
        let keys = KeySet::new([key.verifying_key().clone()]);
        (key, keys)
    }

    const NOW: i64 = 1_800_000_000;

    fn token(key: &SigningKey, claims: Value) -> String {
        let Value::Object(mut claims) = claims else {
            panic!("object")
        };
        claims.entry("iat").or_insert(json(NOW));
        claims.entry("exp").or_insert(json(NOW + 300));
        claims.entry("sub").or_insert(json("user-1"));
        claims.entry("nonce").or_insert(json("n-1"));
        jwt::sign(key, "JWT", &claims).expect("sign")
    }

    fn json<T: serde::Serialize>(v: T) -> Value {
        serde_json::to_value(v).expect("json")
    }

    const TID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
    const TEMPLATE: &str = "https://login.microsoftonline.com/{tenantid}/v2.0";

    #[test]
    fn entra_multi_tenant_tokens_are_checked_against_their_own_tenant() {
        let cfg = provider(&format!(
            "id = \"entra\"\npreset = \"entra\"\ntenant = \"organizations\"\nclient_id = \"app\"\ntenants = [\"{TID}\"]"
        ));
        let (key, keys) = signer();
        let iss = TEMPLATE.replace("{tenantid}", TID);
        let check = |t: &str| check_id_token(&cfg, NOW, TEMPLATE, &keys, t, "n-1");
        let good = token(
            &key,
            serde_json::json!({ "iss": iss, "aud": "app", "tid": TID }),
        );
        assert_eq!(check(&good).expect("valid")["tid"], TID);
        // Another tenant than the allowed one.
        let other = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let t = token(
            &key,
            serde_json::json!({ "iss": TEMPLATE.replace("{tenantid}", other), "aud": "app", "tid": other }),
        );
        assert!(check(&t).is_err());
        // `tid` saying the allowed tenant while the issuer is another's.
        let t = token(
            &key,
            serde_json::json!({ "iss": TEMPLATE.replace("{tenantid}", other), "aud": "app", "tid": TID }),
        );
        assert!(check(&t).is_err());
        // Not for this client, or for another attempt.
        let t = token(
            &key,
            serde_json::json!({ "iss": iss, "aud": "someone-else", "tid": TID }),
        );
        assert!(check(&t).is_err());
        let t = token(
            &key,
            serde_json::json!({ "iss": iss, "aud": "app", "tid": TID, "nonce": "n-2" }),
        );
        assert!(check(&t).is_err());
        // Several audiences need azp = this client.
        let t = token(
            &key,
            serde_json::json!({ "iss": iss, "aud": ["app", "x"], "tid": TID }),
        );
        assert!(check(&t).is_err());
        let t = token(
            &key,
            serde_json::json!({ "iss": iss, "aud": ["app", "x"], "azp": "app", "tid": TID }),
        );
        assert!(check(&t).is_ok());
        // Expired; signed by a key the provider does not publish.
        let t = token(
            &key,
            serde_json::json!({ "iss": iss, "aud": "app", "tid": TID, "exp": NOW - 1 }),
        );
        assert!(check(&t).is_err());
        let (stranger, _) = signer();
        let t = token(
            &stranger,
            serde_json::json!({ "iss": iss, "aud": "app", "tid": TID }),
        );
        assert!(check(&t).is_err());
    }

    #[test]
    fn google_tokens_may_name_the_issuer_without_its_scheme_and_nothing_else() {
        let cfg = provider("id = \"google\"\npreset = \"google\"\nclient_id = \"app\"");
        let (key, keys) = signer();
        let check =
            |t: &str| check_id_token(&cfg, NOW, "https://accounts.google.com", &keys, t, "n-1");
        for iss in ["https://accounts.google.com", "accounts.google.com"] {
            let t = token(
                &key,
                serde_json::json!({ "iss": iss, "aud": "app", "azp": "app" }),
            );
            assert!(check(&t).is_ok(), "{iss}");
        }
        for iss in ["https://evil.example", "accounts.google.com.evil.example"] {
            let t = token(&key, serde_json::json!({ "iss": iss, "aud": "app" }));
            assert!(check(&t).is_err(), "{iss}");
        }
        let t = token(
            &key,
            serde_json::json!({ "iss": "accounts.google.com", "aud": "app", "azp": "other" }),
        );
        assert!(check(&t).is_err());
    }

    #[test]
    fn apple_client_secret_is_a_short_lived_es256_jwt_of_the_team() {
        let key = SigningKey::generate(portcullis_token::Algorithm::ES256, "ignored").expect("key");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("AuthKey_ABC123.p8");
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.pkcs8().expose());
        std::fs::write(
            &path,
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
        )
        .expect("write");
        let cfg = provider(&format!(
            "id = \"apple\"\npreset = \"apple\"\nclient_id = \"com.example.web\"\nteam_id = \"TEAM123\"\nkey_id = \"ABC123\"\nprivate_key_file = {:?}",
            path.display().to_string()
        ));
        let apple = cfg.apple_key.clone().expect("apple key");
        let secret = apple_client_secret(&cfg, &apple, NOW).expect("secret");
        let keys = KeySet::new([apple.key.verifying_key().clone()]);
        let aud = ["https://appleid.apple.com".to_owned()];
        let claims = jwt::verify(
            &secret,
            &keys,
            &Expect {
                issuer: "TEAM123",
                audiences: &aud,
                token_use: None,
                leeway: 0,
                exp_leeway: 0,
                now: NOW,
            },
        )
        .expect("a valid JWT");
        assert_eq!(claims.kid, "ABC123");
        assert_eq!(claims.sub.as_deref(), Some("com.example.web"));
        assert_eq!(claims.exp, NOW + 300);
        // Apple answers with a form post.
        assert!(
            HttpUpstream::new(
                cfg,
                "https://id.example.com",
                crate::federation::tests::tls()
            )
            .expect("upstream")
            .form_post()
        );
    }

    fn tls() -> rustls::ClientConfig {
        let roots = rustls::RootCertStore::empty();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}
