//! The OAuth 2.0 / OpenID Connect logic: clients, authorization requests, codes, tokens,
//! refresh rotation, revocation. HTTP framing lives in `web`; this module decides.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use portcullis_store::{
    AuthCode, Client, CodeUse, RefreshToken, Rotation, Session, Store, StoreError, User, UserStatus,
};
use portcullis_token::jwt::{self, ACCESS_TOKEN_TYP, Expect, TokenUse};
use portcullis_token::{Algorithm, Clock, KeyEncryptionKey, Secret, constant_time_eq};
use serde_json::{Map, Value, json};

use crate::crypto::{
    Signer, at_hash, is_pkce_value, pkce_s256, random_id, random_token, sha256_hex,
};
use crate::keyring::{KeyPolicy, KeyRing, KeyRingError, Purpose};
use crate::names::validate_username;
use crate::pool::UserPool;
use crate::settings::IdpSettings;

/// Grants a client may be allowed.
pub const GRANTS: &[&str] = &["authorization_code", "refresh_token", "client_credentials"];
/// Standard scopes every client may ask for.
pub const STANDARD_SCOPES: &[&str] = &["openid", "email", "profile"];
/// Longest accepted authorization or token parameter, in bytes.
pub const MAX_PARAM: usize = 2048;

/// An OAuth error, with its RFC 6749 code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    #[error("invalid_client")]
    InvalidClient,
    #[error("invalid_grant: {0}")]
    InvalidGrant(String),
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(String),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    #[error("server_error")]
    ServerError,
    /// The store does not answer: 503 with `Retry-After`, not a 500.
    #[error("temporarily_unavailable")]
    TemporarilyUnavailable,
}

impl OAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnauthorizedClient(_) => "unauthorized_client",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::ServerError => "server_error",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    /// A description safe to show the client.
    pub fn description(&self) -> String {
        match self {
            OAuthError::InvalidRequest(d)
            | OAuthError::InvalidGrant(d)
            | OAuthError::UnauthorizedClient(d)
            | OAuthError::InvalidScope(d) => d.clone(),
            OAuthError::InvalidClient => "client authentication failed".into(),
            OAuthError::UnsupportedGrantType => "the grant type is not supported".into(),
            OAuthError::ServerError => "the server could not complete the request".into(),
            OAuthError::TemporarilyUnavailable => {
                "the service cannot reach its database; try again shortly".into()
            }
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "the store is unavailable");
            return OAuthError::TemporarilyUnavailable;
        }
        tracing::error!(error = %e, "store error in the identity provider");
        OAuthError::ServerError
    }
}

impl From<KeyRingError> for OAuthError {
    fn from(e: KeyRingError) -> Self {
        tracing::error!(error = %e, "signing key error");
        OAuthError::ServerError
    }
}

/// The scopes of a space-separated `scope` value (RFC 6749 §3.3), in order, empty ones skipped.
pub fn split_scope(scope: &str) -> Vec<String> {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An access token's claims (RFC 9068, with Cognito's `client_id`, `token_use` and `username`).
#[derive(serde::Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    client_id: &'a str,
    token_use: &'static str,
    scope: String,
    iat: i64,
    exp: i64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<i64>,
    /// How the user signed in (RFC 8176); none for client-credentials tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    amr: Option<&'a [String]>,
    /// The groups under the configured claim name (`idp.groups_claim`), and `cognito:groups`
    /// in compatibility mode; none for client-credentials tokens.
    #[serde(flatten)]
    groups: BTreeMap<&'a str, &'a [String]>,
}

/// An ID token's claims (OpenID Connect Core §2, with Cognito's extras in compatibility mode).
#[derive(serde::Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    azp: &'a str,
    token_use: &'static str,
    auth_time: i64,
    iat: i64,
    exp: i64,
    sid: &'a str,
    at_hash: String,
    username: &'a str,
    amr: &'a [String],
    /// `mfa` when a second factor was used (the value `acr_values=mfa` asks for).
    #[serde(skip_serializing_if = "Option::is_none")]
    acr: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    /// With scope `email` (or in compatibility mode); `null` when the user has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<&'a str>,
    #[serde(rename = "cognito:username", skip_serializing_if = "Option::is_none")]
    cognito_username: Option<&'a str>,
    #[serde(flatten)]
    groups: BTreeMap<&'a str, &'a [String]>,
    /// With scope `profile`: `name` and the `custom:` attributes, as Cognito gives them.
    #[serde(flatten)]
    profile: BTreeMap<&'a str, &'a str>,
}

/// The profile claims of a user: `name` and every `custom:` attribute.
fn profile_claims(user: &User) -> BTreeMap<&str, &str> {
    user.attributes
        .iter()
        .filter(|(k, _)| *k == "name" || k.starts_with("custom:"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A claims set as the JSON object the signer takes.
fn claims_map(claims: &impl serde::Serialize) -> Result<Map<String, Value>, OAuthError> {
    match serde_json::to_value(claims) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(OAuthError::ServerError),
    }
}

/// What a sign-in attempt came to.
#[derive(Debug)]
pub enum SignIn {
    /// Signed in: a new session, and the secret of its cookie.
    Session {
        session: Box<Session>,
        secret: Secret<String>,
    },
    /// Unknown user, wrong password or disabled account: one answer for all.
    Refused,
    /// Too many failures: wait this many seconds.
    Locked { seconds: i64 },
    /// The password was right; the user's second factor is asked for next. The ticket
    /// (signed, 5 minutes) carries who through the form.
    SecondFactor { ticket: String, user: Box<User> },
    /// The password was right, but this user (by group, client or `acr_values`) must use a
    /// second factor and has none: they enrol now. The secret is pending in the store.
    Enrol {
        ticket: String,
        user: Box<User>,
        enrolment: Box<crate::mfa::Enrolment>,
    },
    /// The password was right but the address must be verified first
    /// (`idp.require_verified_email`).
    Unverified { user: Box<User> },
    /// An imported user without a password and no legacy verifier to check one: they must
    /// choose a password through "forgot password".
    ResetRequired,
    /// The password was right but was set by an operator as temporary: the user chooses a new
    /// one before being signed in. The ticket (signed, 10 minutes) carries who through the form.
    ChangePassword { ticket: String, user: Box<User> },
}

/// Whether an `acr_values` entry asks for multi-factor authentication: `mfa` (what our tokens
/// carry in `acr`), or the OpenID PAPE multi-factor policy URI.
fn is_mfa_acr(v: &str) -> bool {
    v == "mfa" || v == "http://schemas.openid.net/pape/policies/2007/06/multi-factor"
}

/// Checks the password of a user imported from another pool, the way Cognito's user-migration
/// trigger does: `Ok(true)` when the old system accepts it. An error is an outage, not a no.
pub trait LegacyVerifier: Send + Sync + std::fmt::Debug {
    fn verify<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + 'a>>;
}

/// The outcome of the forced password change that follows [`SignIn::ChangePassword`].
#[derive(Debug)]
pub enum PasswordChange {
    /// Changed; the sign-in goes on (a session, or the second factor).
    Done(Box<SignIn>),
    /// The new password was refused; the message says why.
    Invalid(String),
    /// The ticket is forged, expired or already used.
    Expired,
}

/// Who a forced-password-change form is for.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChangeTicket {
    user_id: String,
    /// The user's `updated_at` when it was issued: a ticket stops working once the user changes.
    updated_at: i64,
    expires_at: i64,
}

/// A grant at the token endpoint (RFC 6749 §4), typed: what each one needs, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `authorization_code` (with PKCE).
    AuthorizationCode {
        code: String,
        redirect_uri: Option<String>,
        code_verifier: Option<String>,
    },
    /// `refresh_token` (rotated on every use), optionally narrowing the scope.
    RefreshToken {
        refresh_token: String,
        scope: Option<String>,
    },
    /// `client_credentials` (confidential clients, custom scopes).
    ClientCredentials { scope: Option<String> },
}

impl Grant {
    /// The grant's `grant_type`.
    pub fn name(&self) -> &'static str {
        match self {
            Grant::AuthorizationCode { .. } => "authorization_code",
            Grant::RefreshToken { .. } => "refresh_token",
            Grant::ClientCredentials { .. } => "client_credentials",
        }
    }

    /// Reads the token endpoint's form parameters.
    pub fn from_params(params: &BTreeMap<String, String>) -> Result<Grant, OAuthError> {
        let get = |k: &str| params.get(k).cloned();
        let required =
            |k: &str| get(k).ok_or_else(|| OAuthError::InvalidRequest(format!("{k} is required")));
        match params.get("grant_type").map(String::as_str) {
            None | Some("") => Err(OAuthError::InvalidRequest("grant_type is required".into())),
            Some("authorization_code") => Ok(Grant::AuthorizationCode {
                code: required("code")?,
                redirect_uri: get("redirect_uri"),
                code_verifier: get("code_verifier"),
            }),
            Some("refresh_token") => Ok(Grant::RefreshToken {
                refresh_token: required("refresh_token")?,
                scope: get("scope"),
            }),
            Some("client_credentials") => Ok(Grant::ClientCredentials {
                scope: get("scope"),
            }),
            Some(_) => Err(OAuthError::UnsupportedGrantType),
        }
    }
}

/// A validated authorization request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<i64>,
    pub login_hint: Option<String>,
    /// A second factor is needed: `acr_values` asked for `mfa`, or the client requires it.
    #[serde(default)]
    pub mfa: bool,
    /// When this pending request stops being accepted by the sign-in form.
    pub expires_at: i64,
}

/// Why an authorization request failed, and where the answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// The client or redirect URI cannot be trusted: show an error page, never redirect.
    Page(String),
    /// Tell the client, at its registered redirect URI.
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

/// A successful token response.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
}

/// A client to register.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub client_id: Option<String>,
    pub name: String,
    pub confidential: bool,
    pub redirect_uris: Vec<String>,
    pub logout_uris: Vec<String>,
    pub grants: Vec<String>,
    pub scopes: Vec<String>,
    pub access_ttl: Option<i64>,
    pub id_ttl: Option<i64>,
    pub refresh_ttl: Option<i64>,
    pub id_token_alg: Option<String>,
    /// A confidential client's secret, when the operator supplies it (declared clients);
    /// otherwise one is generated.
    pub secret: Option<Secret<String>>,
    /// Accept plain-http redirect URIs beyond localhost (development mode only).
    pub allow_insecure_http: bool,
}

/// Changes to a client's settings; `None` keeps what it has.
#[derive(Debug, Clone, Default)]
pub struct ClientChanges {
    pub name: Option<String>,
    pub redirect_uris: Option<Vec<String>>,
    pub logout_uris: Option<Vec<String>>,
    pub grants: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub access_ttl: Option<i64>,
    pub id_ttl: Option<i64>,
    pub refresh_ttl: Option<i64>,
    pub id_token_alg: Option<String>,
}

/// Why a client could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClientError {
    pub fn is_user_error(&self) -> bool {
        match self {
            ClientError::Invalid(_) => true,
            ClientError::Store(e) => e.is_user_error(),
        }
    }
}

pub(crate) struct Inner {
    store: Store,
    pool: UserPool,
    keys: KeyRing,
    settings: IdpSettings,
    clock: Clock,
    request_signer: Signer,
    change_signer: Signer,
    mfa_signer: Signer,
    /// Seals TOTP secrets at rest.
    totp_kek: KeyEncryptionKey,
    /// The WebAuthn relying party (the issuer's host), unless the issuer is an IP address.
    relying_party: Option<webauthn_rs::prelude::Webauthn>,
    legacy: std::sync::OnceLock<Arc<dyn LegacyVerifier>>,
    /// Upstream providers for federated sign-in (set once at start).
    pub(crate) federation: std::sync::OnceLock<Vec<crate::federation::FederatedProvider>>,
    /// Seals federated sign-in attempts into their browser cookie.
    pub(crate) attempt_kek: KeyEncryptionKey,
}

/// The identity provider. Cheap to clone.
#[derive(Clone)]
pub struct Provider {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.inner.settings.issuer)
            .finish_non_exhaustive()
    }
}

/// Validates a redirect or sign-out URI for registration: absolute http(s) without fragment or
/// userinfo; plain http only for loopback hosts (RFC 8252 §7.3).
pub fn validate_registered_uri(uri: &str) -> Result<(), UriError> {
    let u = url::Url::parse(uri).map_err(|e| UriError::NotAbsolute {
        uri: uri.to_owned(),
        reason: e.to_string(),
    })?;
    if u.fragment().is_some() {
        return Err(UriError::Fragment(uri.to_owned()));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(UriError::UserInfo(uri.to_owned()));
    }
    match u.scheme() {
        "https" => Ok(()),
        "http" if crate::settings::is_localhost(uri) => Ok(()),
        "http" => Err(UriError::PlainHttp(uri.to_owned())),
        other => Err(UriError::Scheme {
            uri: uri.to_owned(),
            scheme: other.to_owned(),
        }),
    }
}

/// Why a redirect or sign-out URI cannot be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("{uri:?} is not an absolute URL: {reason}")]
    NotAbsolute { uri: String, reason: String },
    #[error("{0:?} must not contain a fragment")]
    Fragment(String),
    #[error("{0:?} must not contain user information")]
    UserInfo(String),
    #[error("{0:?}: plain http is allowed only for localhost")]
    PlainHttp(String),
    #[error("{uri:?}: scheme {scheme} is not allowed")]
    Scheme { uri: String, scheme: String },
}

impl Provider {
    pub async fn open(
        store: Store,
        pool: UserPool,
        settings: IdpSettings,
        instance_secret: &Secret<String>,
        clock: Clock,
    ) -> Result<Provider, KeyRingError> {
        let kek = KeyEncryptionKey::derive(instance_secret).map_err(|e| KeyRingError::Key {
            kid: "-".into(),
            reason: e.to_string(),
        })?;
        let policy = KeyPolicy {
            access_alg: settings.access_alg,
            id_alg: settings.id_alg,
            rotation_delay: settings.key_rotation_delay,
            retire_after: settings.max_token_lifetime(),
        };
        let keys = KeyRing::open(store.clone(), kek, policy, clock.now()).await?;
        let request_signer = Signer::derive(instance_secret, "authorization request");
        let change_signer = Signer::derive(instance_secret, "forced password change");
        let mfa_signer = Signer::derive(instance_secret, "second factor");
        let relying_party =
            crate::passkeys::relying_party(&settings.issuer, &settings.branding.app_name);
        let totp_kek = KeyEncryptionKey::derive_for(instance_secret, "totp v1").map_err(|e| {
            KeyRingError::Key {
                kid: "totp".into(),
                reason: e.to_string(),
            }
        })?;
        let attempt_kek = KeyEncryptionKey::derive_for(instance_secret, "federated sign-in v1")
            .map_err(|e| KeyRingError::Key {
                kid: "federation".into(),
                reason: e.to_string(),
            })?;
        Ok(Provider {
            inner: Arc::new(Inner {
                federation: std::sync::OnceLock::new(),
                attempt_kek,
                store,
                pool,
                keys,
                settings,
                clock,
                request_signer,
                change_signer,
                mfa_signer,
                totp_kek,
                relying_party,
                legacy: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn settings(&self) -> &IdpSettings {
        &self.inner.settings
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn pool(&self) -> &UserPool {
        &self.inner.pool
    }

    pub fn keys(&self) -> &KeyRing {
        &self.inner.keys
    }

    pub fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// The time in milliseconds (for rates finer than a second).
    pub fn now_millis(&self) -> i64 {
        self.inner.clock.now_millis()
    }

    pub(crate) fn totp_kek(&self) -> &KeyEncryptionKey {
        &self.inner.totp_kek
    }

    pub(crate) fn relying_party(&self) -> Option<&webauthn_rs::prelude::Webauthn> {
        self.inner.relying_party.as_ref()
    }

    pub(crate) fn ticket_signer(&self) -> &Signer {
        &self.inner.mfa_signer
    }

    // ---- clients -------------------------------------------------------------------------

    /// Registers a client. Confidential clients get a random secret, returned once and stored
    /// as a SHA-256 digest.
    pub async fn create_client(
        &self,
        req: NewClient,
    ) -> Result<(Client, Option<Secret<String>>), ClientError> {
        let (client, secret) = self.build_client(req).await?;
        self.inner.store.create_client(&client).await?;
        Ok((client, secret))
    }

    /// Creates or updates a client declared in the configuration (the file wins over earlier
    /// state, so editing it and restarting applies the change).
    pub async fn declare_client(&self, req: NewClient) -> Result<Client, ClientError> {
        let (mut client, _) = self.build_client(req).await?;
        if let Some(existing) = self.inner.store.client(&client.client_id).await? {
            client.created_at = existing.created_at;
        }
        self.inner.store.upsert_client(&client).await?;
        Ok(client)
    }

    async fn build_client(
        &self,
        req: NewClient,
    ) -> Result<(Client, Option<Secret<String>>), ClientError> {
        let invalid = |m: String| ClientError::Invalid(m);
        let client_id = req.client_id.unwrap_or_else(random_id);
        if client_id.is_empty()
            || client_id.len() > 128
            || !client_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(invalid(
                "a client id is 1-128 ASCII letters, digits or `- . _`".into(),
            ));
        }
        let grants = match (
            req.grants.is_empty(),
            req.redirect_uris.is_empty() && req.confidential,
        ) {
            (false, _) => req.grants,
            // A confidential client with no redirect URI is a machine client.
            (true, true) => vec!["client_credentials".into()],
            (true, false) => vec!["authorization_code".into(), "refresh_token".into()],
        };
        for g in &grants {
            if !GRANTS.contains(&g.as_str()) {
                return Err(invalid(format!(
                    "unknown grant {g:?}; use {}",
                    GRANTS.join(", ")
                )));
            }
        }
        if grants.iter().any(|g| g == "client_credentials") && !req.confidential {
            return Err(invalid(
                "client_credentials needs a confidential client (--confidential)".into(),
            ));
        }
        if grants.iter().any(|g| g == "authorization_code") && req.redirect_uris.is_empty() {
            return Err(invalid(
                "the authorization_code grant needs at least one --redirect-uri".into(),
            ));
        }
        for uri in req.redirect_uris.iter().chain(&req.logout_uris) {
            if let Err(e) = validate_registered_uri(uri)
                && !(req.allow_insecure_http && uri.starts_with("http://"))
            {
                return Err(invalid(e.to_string()));
            }
        }
        let custom: BTreeSet<String> = self.custom_scopes().await?;
        for s in &req.scopes {
            if !STANDARD_SCOPES.contains(&s.as_str()) && !custom.contains(s) {
                return Err(invalid(format!(
                    "unknown scope {s:?}: define it with `resource-server add` first"
                )));
            }
        }
        let scopes = if req.scopes.is_empty() {
            STANDARD_SCOPES.iter().map(|s| (*s).to_owned()).collect()
        } else {
            req.scopes
        };
        let ttl = |v: Option<i64>,
                   default: i64,
                   min: i64,
                   max: i64,
                   what: &str|
         -> Result<i64, ClientError> {
            let v = v.unwrap_or(default);
            if !(min..=max).contains(&v) {
                return Err(ClientError::Invalid(format!(
                    "{what} must be between {min} and {max} seconds"
                )));
            }
            Ok(v)
        };
        let id_token_alg = req
            .id_token_alg
            .unwrap_or_else(|| self.inner.settings.id_alg.as_str().to_owned());
        if !matches!(id_token_alg.as_str(), "RS256" | "ES256") {
            return Err(invalid("the ID token algorithm is RS256 or ES256".into()));
        }
        let secret = match (req.confidential, req.secret) {
            (true, Some(given)) if given.expose().len() < 32 => {
                return Err(invalid(
                    "a client secret must be at least 32 characters".into(),
                ));
            }
            (true, Some(given)) => Some(given),
            (true, None) => Some(random_token()),
            (false, Some(_)) => return Err(invalid("a public client has no secret".into())),
            (false, None) => None,
        };
        let now = self.now();
        let client = Client {
            client_id,
            name: if req.name.is_empty() {
                "unnamed client".into()
            } else {
                req.name
            },
            secret_hash: secret.as_ref().map(|s| sha256_hex(s.expose())),
            redirect_uris: req.redirect_uris,
            logout_uris: req.logout_uris,
            grants,
            scopes,
            // Short access tokens are legitimate (revocation by expiry); 5 s is the floor.
            access_ttl: ttl(req.access_ttl, 3600, 5, 86400, "the access token lifetime")?,
            id_ttl: ttl(req.id_ttl, 3600, 60, 86400, "the ID token lifetime")?,
            refresh_ttl: ttl(
                req.refresh_ttl,
                30 * 86400,
                60,
                3650 * 86400,
                "the refresh token lifetime",
            )?,
            id_token_alg,
            created_at: now,
            updated_at: now,
            revision: 1,
        };
        Ok((client, secret))
    }

    /// Gives a confidential client a new secret; the old one stops working at once.
    pub async fn rotate_client_secret(
        &self,
        client_id: &str,
    ) -> Result<Secret<String>, ClientError> {
        let secret = random_token();
        self.inner
            .store
            .set_client_secret(client_id, &sha256_hex(secret.expose()), self.now())
            .await?;
        Ok(secret)
    }

    /// Changes a client's settings (not its secret); `revision` (an `If-Match`): only if the
    /// client is still at it. Concurrent edits without one are merged field by field.
    pub async fn update_client(
        &self,
        client_id: &str,
        changes: &ClientChanges,
        revision: Option<i64>,
        allow_insecure_http: bool,
    ) -> Result<Client, ClientError> {
        let changed = || {
            ClientError::Store(StoreError::Changed {
                kind: "client",
                name: client_id.to_owned(),
            })
        };
        for _ in 0..5 {
            let existing =
                self.inner
                    .store
                    .client(client_id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound {
                        kind: "client",
                        name: client_id.to_owned(),
                    })?;
            if revision.is_some_and(|r| r != existing.revision) {
                return Err(changed());
            }
            let pick = |new: &Option<Vec<String>>, old: &Vec<String>| {
                new.clone().unwrap_or_else(|| old.clone())
            };
            let req = NewClient {
                client_id: Some(existing.client_id.clone()),
                name: changes
                    .name
                    .clone()
                    .unwrap_or_else(|| existing.name.clone()),
                confidential: existing.is_confidential(),
                redirect_uris: pick(&changes.redirect_uris, &existing.redirect_uris),
                logout_uris: pick(&changes.logout_uris, &existing.logout_uris),
                grants: pick(&changes.grants, &existing.grants),
                scopes: pick(&changes.scopes, &existing.scopes),
                access_ttl: Some(changes.access_ttl.unwrap_or(existing.access_ttl)),
                id_ttl: Some(changes.id_ttl.unwrap_or(existing.id_ttl)),
                refresh_ttl: Some(changes.refresh_ttl.unwrap_or(existing.refresh_ttl)),
                id_token_alg: Some(
                    changes
                        .id_token_alg
                        .clone()
                        .unwrap_or_else(|| existing.id_token_alg.clone()),
                ),
                // Validation only: the stored secret stays.
                secret: None,
                allow_insecure_http,
            };
            let (mut client, _) = self.build_client(req).await?;
            client.secret_hash = existing.secret_hash.clone();
            client.created_at = existing.created_at;
            match self
                .inner
                .store
                .update_client(&client, existing.revision)
                .await
            {
                Ok(()) => {
                    return Ok(self.inner.store.client(client_id).await?.unwrap_or(client));
                }
                Err(StoreError::Changed { .. }) if revision.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(changed())
    }

    async fn custom_scopes(&self) -> Result<BTreeSet<String>, StoreError> {
        Ok(self
            .inner
            .store
            .list_resource_servers()
            .await?
            .into_iter()
            .flat_map(|rs| {
                rs.scopes
                    .into_iter()
                    .map(move |s| format!("{}/{s}", rs.identifier))
            })
            .collect())
    }

    /// Authenticates a client at the token or revocation endpoint.
    pub async fn authenticate_client(
        &self,
        client_id: &str,
        secret: Option<&str>,
    ) -> Result<Client, OAuthError> {
        let client = self.inner.store.client(client_id).await?;
        // Compare against a digest even for an unknown client, so timing does not reveal which
        // client ids exist.
        let presented = secret.map(sha256_hex).unwrap_or_default();
        let stored = client
            .as_ref()
            .and_then(|c| c.secret_hash.clone())
            .unwrap_or_else(|| sha256_hex("portcullis: no secret"));
        let matches = constant_time_eq(presented.as_bytes(), stored.as_bytes());
        match client {
            Some(c) if c.is_confidential() && secret.is_some() && matches => Ok(c),
            Some(c) if !c.is_confidential() && secret.is_none() => Ok(c),
            _ => Err(OAuthError::InvalidClient),
        }
    }

    // ---- authorization --------------------------------------------------------------------

    /// Validates `/oauth2/authorize` parameters (already checked for duplicates and size).
    pub async fn validate_authorize(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<AuthorizeRequest, AuthorizeError> {
        let get = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
        let client_id = get("client_id")
            .ok_or_else(|| AuthorizeError::Page("The request has no client_id.".into()))?;
        let client = self
            .inner
            .store
            .client(&client_id)
            .await
            .map_err(|_| {
                AuthorizeError::Page(
                    "The sign-in service is unavailable. Try again shortly.".into(),
                )
            })?
            .ok_or_else(|| {
                AuthorizeError::Page("The application that sent you here is not registered.".into())
            })?;
        let redirect_uri = get("redirect_uri")
            .ok_or_else(|| AuthorizeError::Page("The request has no redirect_uri.".into()))?;
        // Exact string comparison (RFC 9700 §4.1.3): no normalization, no prefix or case folding.
        if !client.redirect_uris.iter().any(|r| r == &redirect_uri) {
            return Err(AuthorizeError::Page(
                "The address to return to is not registered for this application.".into(),
            ));
        }
        let state = get("state");
        let fail = |error: &'static str, description: &str| AuthorizeError::Redirect {
            redirect_uri: redirect_uri.clone(),
            error,
            description: description.to_owned(),
            state: state.clone(),
        };
        match get("response_type").as_deref() {
            Some("code") => {}
            Some(_) => {
                return Err(fail(
                    "unsupported_response_type",
                    "only response_type=code is supported",
                ));
            }
            None => return Err(fail("invalid_request", "response_type is required")),
        }
        if !client.allows_grant("authorization_code") {
            return Err(fail(
                "unauthorized_client",
                "this client may not use the authorization code grant",
            ));
        }
        if let Some(mode) = get("response_mode")
            && mode != "query"
        {
            return Err(fail(
                "invalid_request",
                "only response_mode=query is supported",
            ));
        }
        let scope = split_scope(&get("scope").unwrap_or_default());
        if let Some(bad) = scope.iter().find(|s| !client.scopes.contains(s)) {
            return Err(fail(
                "invalid_scope",
                &format!("scope {bad} is not allowed for this client"),
            ));
        }
        let code_challenge = get("code_challenge");
        match (get("code_challenge_method").as_deref(), &code_challenge) {
            (_, None) if !client.is_confidential() => {
                return Err(fail(
                    "invalid_request",
                    "PKCE (code_challenge with S256) is required",
                ));
            }
            (Some("S256"), Some(c)) if is_pkce_value(c) => {}
            (Some("S256"), Some(_)) => {
                return Err(fail("invalid_request", "code_challenge is malformed"));
            }
            (None, Some(_)) | (Some("plain"), _) => {
                return Err(fail(
                    "invalid_request",
                    "code_challenge_method must be S256",
                ));
            }
            (Some(_), _) => {
                return Err(fail(
                    "invalid_request",
                    "code_challenge_method must be S256",
                ));
            }
            (None, None) => {}
        }
        let prompt = get("prompt");
        if let Some(p) = &prompt
            && !matches!(p.as_str(), "none" | "login" | "consent" | "select_account")
        {
            return Err(fail("invalid_request", "prompt must be none or login"));
        }
        let max_age = match get("max_age") {
            Some(v) => Some(v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                fail("invalid_request", "max_age must be a non-negative integer")
            })?),
            None => None,
        };
        let client_id_for_mfa = client_id.clone();
        Ok(AuthorizeRequest {
            client_id,
            redirect_uri,
            scope,
            state,
            nonce: get("nonce"),
            code_challenge,
            prompt,
            max_age,
            login_hint: get("login_hint"),
            mfa: get("acr_values").is_some_and(|v| v.split_whitespace().any(is_mfa_acr))
                || self
                    .inner
                    .settings
                    .mfa_required_clients
                    .contains(&client_id_for_mfa),
            expires_at: self.now() + 15 * 60,
        })
    }

    /// Whether an existing session may answer this request without a password.
    pub fn session_satisfies(&self, req: &AuthorizeRequest, session: &Session) -> bool {
        if req.prompt.as_deref() == Some("login") {
            return false;
        }
        if req.mfa && !session.amr.iter().any(|a| a == "mfa") {
            return false;
        }
        match req.max_age {
            Some(max) => self.now() - session.auth_time <= max,
            None => true,
        }
    }

    /// Signs a pending request so the sign-in form can carry it through the browser.
    pub fn seal_request(&self, req: &AuthorizeRequest) -> String {
        self.inner
            .request_signer
            .sign(&serde_json::to_vec(req).unwrap_or_default())
    }

    /// The pending request, if untampered and not expired.
    pub fn open_request(&self, sealed: &str) -> Option<AuthorizeRequest> {
        let bytes = self.inner.request_signer.open(sealed)?;
        let req: AuthorizeRequest = serde_json::from_slice(&bytes).ok()?;
        (req.expires_at > self.now()).then_some(req)
    }

    /// The hosted sign-in's decision for a username and password: the per-account lockout
    /// (failures doubling the wait, Cognito's behaviour), the password check (the same answer
    /// and the same work for an unknown user, a wrong password and a disabled account), and a
    /// new session on success.
    pub async fn sign_in(
        &self,
        username: &str,
        password: Secret<String>,
        need_mfa: bool,
    ) -> Result<SignIn, OAuthError> {
        let key = username.to_ascii_lowercase();
        let now = self.now();
        let store = &self.inner.store;
        let until = store.login_locked_until(&key).await?;
        if until > now {
            return Ok(SignIn::Locked {
                seconds: until - now,
            });
        }
        // A user imported without a password hash: the legacy verifier decides, once.
        let legacy = match validate_username(username) {
            Ok(()) => store
                .user(username)
                .await?
                .filter(|u| u.legacy_password && u.password_hash.is_none()),
            Err(_) => None,
        };
        let user = match legacy {
            Some(candidate) => self.legacy_sign_in(candidate, password).await?,
            None => self
                .inner
                .pool
                .authenticate(username, password)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "password check failed");
                    OAuthError::TemporarilyUnavailable
                })
                .map(Ok)?,
        };
        let user = match user {
            Err(reset) => return Ok(reset),
            Ok(user) => user,
        };
        let Some(user) = user else {
            let s = &self.inner.settings;
            store
                .record_login_failure(
                    &key,
                    now,
                    s.lockout_threshold,
                    s.lockout_base_delay,
                    s.lockout_max_delay,
                )
                .await?;
            return Ok(SignIn::Refused);
        };
        store.clear_login_failures(&key).await?;
        if self.must_verify_email(&user) {
            return Ok(SignIn::Unverified {
                user: Box::new(user),
            });
        }
        if user.password_change_required {
            let ticket = ChangeTicket {
                user_id: user.id.clone(),
                updated_at: user.updated_at,
                expires_at: now + 600,
            };
            let ticket = self
                .inner
                .change_signer
                .sign(&serde_json::to_vec(&ticket).unwrap_or_default());
            return Ok(SignIn::ChangePassword {
                ticket,
                user: Box::new(user),
            });
        }
        self.second_step(user, need_mfa).await
    }

    /// Checks an imported user's password with the legacy verifier; on success the password's
    /// hash is stored and the verifier is never asked about this user again. `Err` carries the
    /// answer when there is no verifier (the user must reset their password).
    async fn legacy_sign_in(
        &self,
        user: User,
        password: Secret<String>,
    ) -> Result<Result<Option<User>, SignIn>, OAuthError> {
        if user.status != UserStatus::Enabled {
            return Ok(Ok(None));
        }
        let Some(verifier) = self.inner.legacy.get() else {
            return Ok(Err(SignIn::ResetRequired));
        };
        let valid = verifier
            .verify(&user.username, password.expose())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "the legacy password verifier failed");
                OAuthError::TemporarilyUnavailable
            })?;
        if !valid {
            return Ok(Ok(None));
        }
        self.inner
            .pool
            .adopt_legacy_password(&user, password)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "storing a migrated password failed");
                OAuthError::TemporarilyUnavailable
            })?;
        tracing::info!(user_id = %user.id, "password migrated from the legacy verifier");
        metrics::counter!("portcullis_legacy_migrations_total").increment(1);
        Ok(Ok(self.inner.store.user_by_id(&user.id).await?))
    }

    /// Sets the verifier that checks the first sign-in of imported users (once).
    pub fn set_legacy_verifier(&self, verifier: Arc<dyn LegacyVerifier>) {
        let _ = self.inner.legacy.set(verifier);
    }

    /// Whether `idp.require_verified_email` keeps this user from signing in (by password or
    /// passkey) until their address is confirmed.
    pub fn must_verify_email(&self, user: &User) -> bool {
        self.inner.settings.accounts.require_verified_email
            && user.email.is_some()
            && !user.email_verified
    }

    /// The user a forced-password-change ticket is for, while it is valid.
    pub async fn change_ticket_user(&self, ticket: &str) -> Result<Option<User>, OAuthError> {
        let Some(bytes) = self.inner.change_signer.open(ticket) else {
            return Ok(None);
        };
        let Ok(t) = serde_json::from_slice::<ChangeTicket>(&bytes) else {
            return Ok(None);
        };
        if t.expires_at <= self.now() {
            return Ok(None);
        }
        let user = self.inner.store.user_by_id(&t.user_id).await?;
        Ok(user.filter(|u| {
            u.status == UserStatus::Enabled
                && u.password_change_required
                && u.updated_at == t.updated_at
        }))
    }

    /// Completes a sign-in that had to change a temporary password: the new password replaces
    /// it (ending every other session) and a session starts.
    pub async fn complete_password_change(
        &self,
        ticket: &str,
        password: Secret<String>,
        need_mfa: bool,
    ) -> Result<PasswordChange, OAuthError> {
        let Some(user) = self.change_ticket_user(ticket).await? else {
            return Ok(PasswordChange::Expired);
        };
        let mut context = vec![user.username.as_str()];
        context.extend(user.email.as_deref());
        if let Err(e) = self.inner.pool.policy().check(password.expose(), &context) {
            return Ok(PasswordChange::Invalid(e.to_string()));
        }
        let pool = &self.inner.pool;
        let same = pool
            .hasher()
            .verify(password.clone(), user.password_hash.clone())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "password check failed");
                OAuthError::TemporarilyUnavailable
            })?;
        if same {
            return Ok(PasswordChange::Invalid(
                "choose a password of your own, not the one you were given".into(),
            ));
        }
        match pool
            .set_password(&user.username, Some(password), false)
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_user_error() => return Ok(PasswordChange::Invalid(e.to_string())),
            Err(e) => {
                tracing::error!(error = %e, "password change failed");
                return Err(OAuthError::TemporarilyUnavailable);
            }
        }
        let user = self
            .inner
            .store
            .user_by_id(&user.id)
            .await?
            .ok_or(OAuthError::TemporarilyUnavailable)?;
        Ok(PasswordChange::Done(Box::new(
            self.second_step(user, need_mfa).await?,
        )))
    }

    /// How the user of a session signed in (`pwd` for sessions older than the column).
    async fn session_amr(&self, sid: &str) -> Result<Vec<String>, OAuthError> {
        Ok(self
            .inner
            .store
            .session(sid)
            .await?
            .map(|s| s.amr)
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| vec!["pwd".to_owned()]))
    }

    /// Starts a session for a user who just signed in, by the methods in `amr`. Returns the
    /// cookie secret.
    pub async fn start_session(
        &self,
        user: &User,
        amr: &[&str],
    ) -> Result<(Session, Secret<String>), OAuthError> {
        let now = self.now();
        let secret = random_token();
        let session = Session {
            sid: random_id(),
            user_id: user.id.clone(),
            auth_time: now,
            created_at: now,
            expires_at: now + self.inner.settings.session_ttl,
            revoked_at: None,
            amr: amr.iter().map(|a| (*a).to_owned()).collect(),
        };
        self.inner
            .store
            .create_session(&session, &sha256_hex(secret.expose()))
            .await?;
        Ok((session, secret))
    }

    /// The live session behind a session cookie, with its user if still enabled.
    pub async fn session_from_cookie(
        &self,
        secret: &str,
    ) -> Result<Option<(Session, User)>, OAuthError> {
        let Some(session) = self
            .inner
            .store
            .session_by_secret(&sha256_hex(secret), self.now())
            .await?
        else {
            return Ok(None);
        };
        let user = self.inner.store.user_by_id(&session.user_id).await?;
        Ok(user
            .filter(|u| u.status == UserStatus::Enabled)
            .map(|u| (session, u)))
    }

    /// Issues a code for a signed-in user and returns the redirect URL.
    pub async fn issue_code(
        &self,
        req: &AuthorizeRequest,
        session: &Session,
    ) -> Result<String, OAuthError> {
        let code = random_token();
        self.inner
            .store
            .insert_code(&AuthCode {
                code_hash: sha256_hex(code.expose()),
                client_id: req.client_id.clone(),
                user_id: session.user_id.clone(),
                sid: session.sid.clone(),
                redirect_uri: req.redirect_uri.clone(),
                scope: req.scope.join(" "),
                nonce: req.nonce.clone(),
                code_challenge: req.code_challenge.clone(),
                auth_time: session.auth_time,
                expires_at: self.now() + self.inner.settings.code_ttl,
            })
            .await?;
        Ok(self.redirect_with(
            &req.redirect_uri,
            &[("code", code.expose())],
            req.state.as_deref(),
        ))
    }

    /// `redirect_uri` with response parameters, `state` and the RFC 9207 `iss`.
    pub fn redirect_with(
        &self,
        redirect_uri: &str,
        params: &[(&str, &str)],
        state: Option<&str>,
    ) -> String {
        let mut url = match url::Url::parse(redirect_uri) {
            Ok(u) => u,
            Err(_) => return redirect_uri.to_owned(),
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(s) = state {
                q.append_pair("state", s);
            }
            q.append_pair("iss", &self.inner.settings.issuer);
        }
        url.to_string()
    }

    // ---- tokens -----------------------------------------------------------------------------

    /// `/oauth2/token` for an authenticated client: the form parameters read into a [`Grant`].
    pub async fn token(
        &self,
        client: &Client,
        params: &BTreeMap<String, String>,
    ) -> Result<TokenResponse, OAuthError> {
        self.grant(client, Grant::from_params(params)?).await
    }

    /// Runs a grant for an authenticated client (the token endpoint, and the browser sessions
    /// in process).
    pub async fn grant(&self, client: &Client, grant: Grant) -> Result<TokenResponse, OAuthError> {
        let name = grant.name();
        if !client.allows_grant(name) {
            return Err(OAuthError::UnauthorizedClient(format!(
                "this client may not use the {name} grant"
            )));
        }
        self.inner.keys.refresh(self.now()).await?;
        match grant {
            Grant::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            } => {
                self.code_grant(
                    client,
                    &code,
                    redirect_uri.as_deref(),
                    code_verifier.as_deref(),
                )
                .await
            }
            Grant::RefreshToken {
                refresh_token,
                scope,
            } => {
                self.refresh_grant(client, &refresh_token, scope.as_deref())
                    .await
            }
            Grant::ClientCredentials { scope } => {
                self.client_credentials_grant(client, scope.as_deref())
                    .await
            }
        }
    }

    async fn code_grant(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let now = self.now();
        let grant = match self
            .inner
            .store
            .consume_code(&sha256_hex(code), now)
            .await?
        {
            CodeUse::Unknown => return Err(OAuthError::InvalidGrant("the code is invalid".into())),
            CodeUse::Replayed(first) => {
                // RFC 6749 §10.5: a code used twice was stolen; revoke what the first use issued.
                tracing::warn!(client_id = %first.client_id, "authorization code replayed; revoking its session");
                self.inner.store.revoke_session(&first.sid, now).await?;
                return Err(OAuthError::InvalidGrant("the code was already used".into()));
            }
            CodeUse::Fresh(g) => g,
        };
        if grant.client_id != client.client_id {
            return Err(OAuthError::InvalidGrant(
                "the code was issued to another client".into(),
            ));
        }
        if grant.expires_at < now {
            return Err(OAuthError::InvalidGrant("the code has expired".into()));
        }
        if redirect_uri != Some(grant.redirect_uri.as_str()) {
            return Err(OAuthError::InvalidGrant(
                "redirect_uri does not match the authorization request".into(),
            ));
        }
        match (&grant.code_challenge, code_verifier) {
            (Some(challenge), Some(verifier))
                if is_pkce_value(verifier)
                    && constant_time_eq(pkce_s256(verifier).as_bytes(), challenge.as_bytes()) => {}
            (Some(_), _) => {
                return Err(OAuthError::InvalidGrant(
                    "code_verifier does not match the code challenge".into(),
                ));
            }
            // A verifier without a challenge is a downgrade attempt (RFC 9700 §2.1.1).
            (None, Some(_)) => {
                return Err(OAuthError::InvalidGrant(
                    "no code challenge was sent for this code".into(),
                ));
            }
            (None, None) => {}
        }
        let user = self.live_user(&grant.user_id, Some(&grant.sid)).await?;
        let refresh = if client.allows_grant("refresh_token") {
            let token = random_token();
            self.inner
                .store
                .insert_refresh_token(&RefreshToken {
                    token_hash: sha256_hex(token.expose()),
                    family: random_id(),
                    client_id: client.client_id.clone(),
                    user_id: user.id.clone(),
                    sid: grant.sid.clone(),
                    scope: grant.scope.clone(),
                    auth_time: grant.auth_time,
                    created_at: now,
                    expires_at: now + client.refresh_ttl,
                })
                .await?;
            Some(token)
        } else {
            None
        };
        let scope = split_scope(&grant.scope);
        let amr = self.session_amr(&grant.sid).await?;
        self.user_tokens(
            client,
            &user,
            &grant.sid,
            grant.auth_time,
            &amr,
            &scope,
            grant.nonce.as_deref(),
            refresh,
        )
    }

    async fn refresh_grant(
        &self,
        client: &Client,
        presented: &str,
        requested_scope: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let now = self.now();
        let next = random_token();
        let next_hash = sha256_hex(next.expose());
        let outcome = self
            .inner
            .store
            .rotate_refresh_token(
                &sha256_hex(presented),
                &client.client_id,
                |old| RefreshToken {
                    token_hash: next_hash.clone(),
                    created_at: now,
                    ..old.clone()
                },
                self.inner.clock.now_millis(),
                self.inner.settings.refresh_grace_ms,
            )
            .await?;
        let old = match outcome {
            Rotation::Rotated(old) | Rotation::Grace(old) => old,
            Rotation::Reused(old) => {
                tracing::warn!(client_id = %old.client_id, "rotated refresh token reused; revoked its family and session");
                crate::audit::record(
                    &self.inner.store,
                    now,
                    "token.refresh_reuse",
                    &crate::audit::Actor::client(&old.client_id),
                    &old.user_id,
                    json!({ "session": old.sid, "family": old.family, "action": "family and session revoked" }),
                )
                .await;
                return Err(OAuthError::InvalidGrant(
                    "the refresh token was already used".into(),
                ));
            }
            Rotation::Invalid | Rotation::Unknown => {
                return Err(OAuthError::InvalidGrant(
                    "the refresh token is invalid, expired or revoked".into(),
                ));
            }
        };
        let granted = split_scope(&old.scope);
        let scope = match requested_scope {
            Some(requested) => {
                let requested = split_scope(requested);
                if let Some(extra) = requested.iter().find(|s| !granted.contains(s)) {
                    return Err(OAuthError::InvalidScope(format!(
                        "scope {extra} was not granted"
                    )));
                }
                requested
            }
            None => granted,
        };
        let user = self.live_user(&old.user_id, None).await?;
        let amr = self.session_amr(&old.sid).await?;
        self.user_tokens(
            client,
            &user,
            &old.sid,
            old.auth_time,
            &amr,
            &scope,
            None,
            Some(next),
        )
    }

    async fn client_credentials_grant(
        &self,
        client: &Client,
        requested_scope: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        let allowed: Vec<&String> = client.scopes.iter().filter(|s| s.contains('/')).collect();
        let scope: Vec<String> = match requested_scope {
            Some(s) => {
                let requested = split_scope(s);
                if let Some(bad) = requested.iter().find(|r| !allowed.contains(r)) {
                    return Err(OAuthError::InvalidScope(format!(
                        "scope {bad} is not a custom scope allowed for this client"
                    )));
                }
                requested
            }
            None => allowed.into_iter().cloned().collect(),
        };
        if scope.is_empty() {
            return Err(OAuthError::InvalidScope(
                "client_credentials needs a custom scope (resource-server/scope)".into(),
            ));
        }
        let now = self.now();
        let claims = AccessClaims {
            iss: &self.inner.settings.issuer,
            sub: &client.client_id,
            aud: &client.client_id,
            client_id: &client.client_id,
            token_use: "access",
            scope: scope.join(" "),
            iat: now,
            exp: now + client.access_ttl,
            jti: random_id(),
            username: None,
            sid: None,
            auth_time: None,
            amr: None,
            groups: BTreeMap::new(),
        };
        let key = self.inner.keys.signing_key(Purpose::Access, None, now)?;
        let access_token = jwt::sign(&key, ACCESS_TOKEN_TYP, &claims_map(&claims)?)
            .map_err(|_| OAuthError::ServerError)?;
        Ok(TokenResponse {
            access_token,
            id_token: None,
            refresh_token: None,
            token_type: "Bearer",
            expires_in: client.access_ttl,
            scope: scope.join(" "),
        })
    }

    /// The user behind a grant, if their session (when `sid` is given) is live and they are
    /// enabled. The refresh path passes no `sid`: its rotation already checked the session in
    /// the same transaction.
    async fn live_user(&self, user_id: &str, sid: Option<&str>) -> Result<User, OAuthError> {
        if let Some(sid) = sid {
            let revoked = || OAuthError::InvalidGrant("the session has ended".into());
            let session = self.inner.store.session(sid).await?.ok_or_else(revoked)?;
            if session.revoked_at.is_some() {
                return Err(revoked());
            }
        }
        let user = self.inner.store.user_by_id(user_id).await?;
        user.filter(|u| u.status == UserStatus::Enabled)
            .ok_or_else(|| OAuthError::InvalidGrant("the user is disabled or deleted".into()))
    }

    #[allow(clippy::too_many_arguments)]
    fn user_tokens(
        &self,
        client: &Client,
        user: &User,
        sid: &str,
        auth_time: i64,
        amr: &[String],
        scope: &[String],
        nonce: Option<&str>,
        refresh: Option<Secret<String>>,
    ) -> Result<TokenResponse, OAuthError> {
        let s = &self.inner.settings;
        let now = self.now();
        let mut scopes: Vec<String> = scope.to_vec();
        for group in &user.groups {
            for granted in s.group_scopes.get(group).into_iter().flatten() {
                if !scopes.contains(granted) {
                    scopes.push(granted.clone());
                }
            }
        }
        // The groups under the configured claim name, and Cognito's too in compatibility mode.
        let mut groups = BTreeMap::from([(s.groups_claim.as_str(), user.groups.as_slice())]);
        if s.cognito_compat {
            groups.insert("cognito:groups", user.groups.as_slice());
        }
        let access = AccessClaims {
            iss: &s.issuer,
            sub: &user.id,
            aud: &client.client_id,
            client_id: &client.client_id,
            token_use: "access",
            scope: scopes.join(" "),
            iat: now,
            exp: now + client.access_ttl,
            jti: random_id(),
            username: Some(&user.username),
            sid: Some(sid),
            auth_time: Some(auth_time),
            amr: Some(amr),
            groups: groups.clone(),
        };
        let key = self.inner.keys.signing_key(Purpose::Access, None, now)?;
        let access_token = jwt::sign(&key, ACCESS_TOKEN_TYP, &claims_map(&access)?)
            .map_err(|_| OAuthError::ServerError)?;

        let id_token = if scope.iter().any(|x| x == "openid") {
            let email = scope.iter().any(|x| x == "email") || s.cognito_compat;
            let profile = scope.iter().any(|x| x == "profile");
            let id = IdClaims {
                iss: &s.issuer,
                sub: &user.id,
                aud: &client.client_id,
                azp: &client.client_id,
                token_use: "id",
                auth_time,
                iat: now,
                exp: now + client.id_ttl,
                sid,
                at_hash: at_hash(&access_token),
                username: &user.username,
                amr,
                acr: amr.iter().any(|a| a == "mfa").then_some("mfa"),
                nonce,
                email: email.then_some(&user.email),
                email_verified: email.then_some(user.email_verified),
                preferred_username: scope
                    .iter()
                    .any(|x| x == "profile")
                    .then_some(user.username.as_str()),
                cognito_username: s.cognito_compat.then_some(user.username.as_str()),
                groups,
                profile: if profile {
                    profile_claims(user)
                } else {
                    BTreeMap::new()
                },
            };
            let alg = Algorithm::parse(&client.id_token_alg);
            let key = self.inner.keys.signing_key(Purpose::Id, alg, now)?;
            Some(jwt::sign(&key, "JWT", &claims_map(&id)?).map_err(|_| OAuthError::ServerError)?)
        } else {
            None
        };
        Ok(TokenResponse {
            access_token,
            id_token,
            refresh_token: refresh.map(|r| r.expose().clone()),
            token_type: "Bearer",
            expires_in: client.access_ttl,
            scope: scopes.join(" "),
        })
    }

    /// Verifies one of our own access tokens (userinfo, revocation) including revocation state.
    pub async fn verify_access_token(&self, token: &str) -> Result<jwt::Claims, OAuthError> {
        let now = self.now();
        self.inner.keys.refresh(now).await?;
        let keys = self.inner.keys.verification_keys();
        let expect = Expect {
            issuer: &self.inner.settings.issuer,
            audiences: &[],
            token_use: Some(TokenUse::Access),
            // Strict exp, as at the gateway; nbf/iat may be a little ahead (several nodes).
            leeway: 5,
            exp_leeway: 0,
            now,
        };
        let claims = jwt::verify(token, &keys, &expect)
            .map_err(|e| OAuthError::InvalidGrant(e.to_string()))?;
        if let Some(jti) = &claims.jti
            && self.inner.store.is_revoked("jti", jti, now).await?
        {
            return Err(OAuthError::InvalidGrant("the token was revoked".into()));
        }
        if let Some(sid) = &claims.sid
            && self.inner.store.is_revoked("sid", sid, now).await?
        {
            return Err(OAuthError::InvalidGrant("the session has ended".into()));
        }
        Ok(claims)
    }

    /// `/oauth2/userInfo`.
    pub async fn userinfo(&self, token: &str) -> Result<Value, OAuthError> {
        let claims = self.verify_access_token(token).await?;
        let sub = claims.sub.clone().unwrap_or_default();
        let user = self.inner.store.user_by_id(&sub).await?;
        let user = user
            .filter(|u| u.status == UserStatus::Enabled)
            .ok_or_else(|| OAuthError::InvalidGrant("the user no longer exists".into()))?;
        let mut info = json!({ "sub": user.id, "username": user.username, "groups": user.groups });
        if claims.scopes.iter().any(|s| s == "email") {
            info["email"] = json!(user.email);
            info["email_verified"] = json!(user.email_verified);
        }
        if claims.scopes.iter().any(|s| s == "profile") {
            info["preferred_username"] = json!(user.username);
            for (k, v) in profile_claims(&user) {
                info[k] = json!(v);
            }
        }
        Ok(info)
    }

    /// `/oauth2/revoke` (RFC 7009). Unknown tokens succeed silently.
    pub async fn revoke(&self, client: &Client, token: &str) -> Result<(), OAuthError> {
        let now = self.now();
        if let Some(refresh) = self.inner.store.refresh_token(&sha256_hex(token)).await? {
            if refresh.client_id != client.client_id {
                return Err(OAuthError::UnauthorizedClient(
                    "the token was issued to another client".into(),
                ));
            }
            self.inner.store.revoke_session(&refresh.sid, now).await?;
            crate::audit::record(
                &self.inner.store,
                now,
                "token.revoke",
                &crate::audit::Actor::client(&client.client_id),
                &refresh.user_id,
                json!({ "session": refresh.sid, "token": "refresh" }),
            )
            .await;
            return Ok(());
        }
        let keys = self.inner.keys.verification_keys();
        // An expired access token needs no revocation; any other verified one is listed by jti.
        let expect = Expect {
            issuer: &self.inner.settings.issuer,
            audiences: &[],
            token_use: Some(TokenUse::Access),
            // nbf/iat: another node's clock may be a little ahead.
            leeway: 5,
            exp_leeway: 0,
            now,
        };
        if let Ok(claims) = jwt::verify(token, &keys, &expect) {
            if claims.client_id.as_deref() != Some(client.client_id.as_str()) {
                return Err(OAuthError::UnauthorizedClient(
                    "the token was issued to another client".into(),
                ));
            }
            if let Some(jti) = claims.jti {
                self.inner.store.revoke_jti(&jti, claims.exp, now).await?;
            }
        }
        Ok(())
    }

    /// Ends a session (sign-out).
    pub async fn end_session(&self, sid: &str) -> Result<(), OAuthError> {
        self.inner.store.revoke_session(sid, self.now()).await?;
        let user = self
            .inner
            .store
            .session(sid)
            .await?
            .map(|s| s.user_id)
            .unwrap_or_default();
        crate::audit::record(
            &self.inner.store,
            self.now(),
            "session.end",
            &crate::audit::Actor::user(&user, "server"),
            &user,
            json!({ "session": sid }),
        )
        .await;
        Ok(())
    }

    /// The subject and client of an ID token we issued, for `id_token_hint` (expiry ignored).
    pub fn id_token_hint(&self, token: &str) -> Option<(String, String)> {
        let keys = self.inner.keys.verification_keys();
        let expect = Expect {
            issuer: &self.inner.settings.issuer,
            audiences: &[],
            token_use: Some(TokenUse::Id),
            leeway: i64::MAX / 4,
            exp_leeway: i64::MAX / 4,
            now: self.now(),
        };
        let claims = jwt::verify(token, &keys, &expect).ok()?;
        let aud = claims.string("aud")?.to_owned();
        Some((claims.sub?, aud))
    }
}
