//! Federated sign-in ("Sign in with …"): users of upstream OpenID Connect and OAuth 2.0
//! providers arrive in this pool. The provider decides here who an upstream identity is
//! (linked, created, or linked by a verified e-mail address), what it brings (mapped attributes
//! and groups, applied at every sign-in) and how the session was authenticated (`amr`). The
//! HTTP side — discovery, the code exchange, ID-token verification — is an [`Upstream`],
//! implemented in the binary, so this crate stays free of an HTTP client.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use portcullis_store::{
    FederatedIdentity, FederatedProfile, NewUser, StoreError, User, UserStatus,
};
use portcullis_token::Secret;
use serde_json::Value;

use crate::provider::{OAuthError, Provider, SignIn};

/// A future an [`Upstream`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A group rule (`[[idp.providers.group_rules]]`): members of `group` are those whose `claim`
/// equals `value` or, for a list, contains it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    pub claim: String,
    pub value: String,
    pub group: String,
}

/// What the identity provider decides about one upstream provider.
#[derive(Clone, Debug, Default)]
pub struct FederationRules {
    /// The provider's id: 1–32 of `a-z 0-9 -`, in its redirect URI
    /// (`/login/federated/<id>/callback`) and in stored identities.
    pub id: String,
    /// What the button says: "Continue with <name>".
    pub name: String,
    /// A logo shown on the button (https URL or a path on this server).
    pub logo_url: Option<String>,
    /// A first sign-in of an unknown identity creates a user.
    pub create_users: bool,
    /// With `create_users`: only addresses in these domains (lower case; empty: any).
    pub domains: Vec<String>,
    /// A first sign-in links to the existing user with the same address, when the provider says
    /// it is verified and the user's is verified here too.
    pub link_by_email: bool,
    /// Groups a user created by this provider joins.
    pub groups: Vec<String>,
    /// Our attribute ← the provider's claim, applied at every sign-in.
    pub attributes: BTreeMap<String, String>,
    /// Group rules, applied at every sign-in: each group they name is granted or removed.
    pub group_rules: Vec<GroupRule>,
}

impl FederationRules {
    /// Checks an id: 1–32 of `a-z 0-9 -`, starting with a letter.
    pub fn validate_id(id: &str) -> Result<(), String> {
        let ok = (1..=32).contains(&id.len())
            && id.starts_with(|c: char| c.is_ascii_lowercase())
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{id:?}: a provider id is 1–32 lower-case letters, digits or `-`, starting with a letter"
            ))
        }
    }

    /// The groups the rules manage.
    fn managed_groups(&self) -> Vec<String> {
        let mut g: Vec<String> = self.group_rules.iter().map(|r| r.group.clone()).collect();
        g.sort();
        g.dedup();
        g
    }

    /// The groups the rules grant for these claims.
    pub fn mapped_groups(&self, claims: &serde_json::Map<String, Value>) -> Vec<String> {
        let mut out: Vec<String> = self
            .group_rules
            .iter()
            .filter(|r| claim_has(claims.get(&r.claim), &r.value))
            .map(|r| r.group.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The attributes mapped from these claims; a claim that is absent clears its attribute,
    /// one that is not printable text of at most 2048 bytes is left out.
    fn mapped_attributes(
        &self,
        claims: &serde_json::Map<String, Value>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (attribute, claim) in &self.attributes {
            let value = match claims.get(claim) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                None | Some(Value::Null) => String::new(),
                Some(_) => continue,
            };
            if value.len() > 2048 || value.chars().any(char::is_control) {
                continue;
            }
            out.insert(attribute.clone(), value);
        }
        out
    }
}

/// Whether a claim is `value`, or a list containing it (strings, or numbers written as such).
fn claim_has(claim: Option<&Value>, value: &str) -> bool {
    let is = |v: &Value| match v {
        Value::String(s) => s == value,
        Value::Number(n) => n.to_string() == value,
        Value::Bool(b) => b.to_string() == value,
        _ => false,
    };
    match claim {
        Some(Value::Array(items)) => items.iter().any(is),
        Some(v) => is(v),
        None => false,
    }
}

/// One sign-in attempt at an upstream provider: what the browser carries, sealed, from the
/// redirect to the callback.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// The provider's id.
    pub provider: String,
    pub state: String,
    pub nonce: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// The sealed authorization request the hosted page was showing (empty for a link).
    pub request: String,
    /// A link from the account page: the user the identity is to join.
    #[serde(default)]
    pub link_user: Option<String>,
    /// The application asked for a fresh sign-in (`prompt=login`) or one at most this many
    /// seconds old (`max_age`): asked of the provider in turn.
    #[serde(default)]
    pub prompt_login: bool,
    #[serde(default)]
    pub max_age: Option<i64>,
    pub expires_at: i64,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// What an upstream provider asserted about the user, once its answer is verified.
#[derive(Clone, Debug, Default)]
pub struct Assertion {
    /// The provider's stable id for the user (`sub`).
    pub subject: String,
    pub email: Option<String>,
    /// The provider vouches for the address.
    pub email_verified: bool,
    /// Every claim, for the attribute and group mappings.
    pub claims: serde_json::Map<String, Value>,
    /// How the provider authenticated the user (its `amr`), when it says.
    pub amr: Vec<String>,
    /// The ID token, kept for RP-initiated logout at the provider.
    pub id_token: Option<Secret<String>>,
}

/// Why an upstream sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The provider did not answer, or answered with a server error: try again later.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider answered the callback with an error (the user cancelled, say): its code.
    #[error("the provider answered {0}")]
    Denied(String),
    /// The answer is not acceptable: wrong issuer, a code that does not redeem, an ID token
    /// that fails verification or carries another nonce.
    #[error("{0}")]
    Invalid(String),
}

/// The HTTP side of one upstream provider.
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// The URL of the provider's authorization endpoint for this attempt.
    fn authorization_url<'a>(
        &'a self,
        attempt: &'a Attempt,
    ) -> BoxFuture<'a, Result<String, UpstreamError>>;
    /// Redeems the callback (its query or, with `form_post`, its form) and verifies the answer.
    /// The `state` is already checked.
    fn finish<'a>(
        &'a self,
        attempt: &'a Attempt,
        callback: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<Assertion, UpstreamError>>;
    /// Where to send the browser to sign out at the provider too (RP-initiated logout), if it
    /// offers it and the operator asked for it.
    fn logout_url<'a>(
        &'a self,
        id_token: Option<&'a str>,
        return_to: &'a str,
    ) -> BoxFuture<'a, Option<String>>;
    /// The provider answers with a cross-site form post (Apple): its flow cookie must be
    /// `SameSite=None`.
    fn form_post(&self) -> bool {
        false
    }
    /// Signing out here also signs out at the provider: its ID token is kept (in a cookie)
    /// for the logout hint. Off, nothing is kept — the cookie would ride on every request.
    fn signs_out(&self) -> bool {
        false
    }
}

/// A configured upstream provider: the rules and the HTTP side.
#[derive(Clone, Debug)]
pub struct FederatedProvider {
    pub rules: FederationRules,
    pub upstream: Arc<dyn Upstream>,
}

/// The outcome of a federated sign-in.
#[derive(Debug)]
pub enum Federated {
    /// Signed in, or on to the second factor: as after a password.
    SignIn(SignIn),
    /// No user here for this identity, and none may be created or linked: the message says why.
    NotAllowed(String),
    /// The user is disabled.
    Disabled,
}

impl Provider {
    /// The configured upstream providers, in configuration order.
    pub fn federated_providers(&self) -> &[FederatedProvider] {
        self.inner
            .federation
            .get()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Sets the upstream providers (once, at start).
    pub fn set_federated_providers(&self, providers: Vec<FederatedProvider>) {
        let _ = self.inner.federation.set(providers);
    }

    /// One upstream provider by id.
    pub fn federated_provider(&self, id: &str) -> Option<&FederatedProvider> {
        self.federated_providers().iter().find(|p| p.rules.id == id)
    }

    /// Decides a federated sign-in: finds the user linked to the identity, or links one by a
    /// verified address, or creates one; writes the mapped attributes and groups; then goes on
    /// as after a right password (a second factor if the user has one and the provider did not
    /// do multi-factor authentication).
    pub async fn federated_sign_in(
        &self,
        rules: &FederationRules,
        assertion: &Assertion,
        need_mfa: bool,
    ) -> Result<Federated, OAuthError> {
        let store = self.store();
        let now = self.now();
        let email = assertion
            .email
            .as_deref()
            .filter(|e| crate::names::validate_email(e).is_ok())
            .map(str::to_owned);
        let identity = FederatedIdentity {
            provider: rules.id.clone(),
            subject: assertion.subject.clone(),
            user_id: String::new(),
            email: email.clone(),
            created_at: now,
            last_used_at: now,
        };
        let user = match store
            .federated_identity(&rules.id, &assertion.subject)
            .await?
        {
            Some(linked) => store.user_by_id(&linked.user_id).await?,
            None => match self
                .first_sign_in(rules, assertion, &identity, email.as_deref())
                .await?
            {
                Ok(user) => Some(user),
                Err(refusal) => return Ok(refusal),
            },
        };
        let Some(user) = user else {
            return Ok(Federated::NotAllowed(
                "Your account could not be found. Try again.".into(),
            ));
        };
        if user.status != UserStatus::Enabled {
            return Ok(Federated::Disabled);
        }
        let identity = FederatedIdentity {
            user_id: user.id.clone(),
            ..identity
        };
        let profile = FederatedProfile {
            attributes: rules.mapped_attributes(&assertion.claims),
            managed_groups: rules.managed_groups(),
            groups: rules.mapped_groups(&assertion.claims),
        };
        store
            .apply_federated_sign_in(&identity, &profile, now)
            .await?;
        // The provider vouching for the user's own address verifies it here too.
        if assertion.email_verified
            && !user.email_verified
            && let (Some(theirs), Some(ours)) = (&email, &user.email)
            && theirs.eq_ignore_ascii_case(ours)
        {
            store.verify_email(&user.id, ours, now).await?;
        }
        let user = store
            .user_by_id(&user.id)
            .await?
            .ok_or(OAuthError::TemporarilyUnavailable)?;
        if self.must_verify_email(&user) {
            return Ok(Federated::NotAllowed(
                "Your e-mail address here is not verified yet. Confirm it with the link we sent, or sign in with your password.".into(),
            ));
        }
        let amr = session_amr(&assertion.amr);
        let amr: Vec<&str> = amr.iter().map(String::as_str).collect();
        Ok(Federated::SignIn(
            self.second_step_after(user, need_mfa, &amr).await?,
        ))
    }

    /// The first sign-in of an identity: link by address, or create, or say why not.
    async fn first_sign_in(
        &self,
        rules: &FederationRules,
        assertion: &Assertion,
        identity: &FederatedIdentity,
        email: Option<&str>,
    ) -> Result<Result<User, Federated>, OAuthError> {
        let store = self.store();
        if rules.link_by_email
            && assertion.email_verified
            && let Some(email) = email
        {
            let names = store.usernames_by_email(email).await?;
            if names.len() == 1
                && let Some(user) = store.user(&names[0]).await?
                && user.email_verified
            {
                let linked = FederatedIdentity {
                    user_id: user.id.clone(),
                    ..identity.clone()
                };
                match store.link_identity(&linked).await {
                    Ok(()) => {}
                    // Linked meanwhile (a concurrent first sign-in): to whoever it was linked.
                    Err(StoreError::AlreadyExists { .. }) => {
                        let owner = store
                            .federated_identity(&rules.id, &assertion.subject)
                            .await?
                            .ok_or(OAuthError::TemporarilyUnavailable)?;
                        return Ok(Ok(store
                            .user_by_id(&owner.user_id)
                            .await?
                            .ok_or(OAuthError::TemporarilyUnavailable)?));
                    }
                    Err(e) => return Err(e.into()),
                }
                crate::audit::record(
                    store,
                    self.now(),
                    "federation.link",
                    &crate::audit::Actor::user(&user.id, "server"),
                    &user.username,
                    serde_json::json!({ "provider": rules.id, "by": "email" }),
                )
                .await;
                return Ok(Ok(user));
            }
        }
        if !rules.create_users {
            return Ok(Err(Federated::NotAllowed(format!(
                "There is no account here for your {} account. Ask the administrator to invite you, or sign in with your password and link {} on your account page.",
                rules.name, rules.name
            ))));
        }
        if !rules.domains.is_empty() {
            let domain = email
                .filter(|_| assertion.email_verified)
                .and_then(|e| e.rsplit_once('@'))
                .map(|(_, d)| d.to_ascii_lowercase());
            if !domain.is_some_and(|d| rules.domains.contains(&d)) {
                return Ok(Err(Federated::NotAllowed(
                    "Accounts here are for addresses of certain organisations only, and your provider did not give one.".into(),
                )));
            }
        }
        let mut groups = rules.groups.clone();
        groups.extend(rules.mapped_groups(&assertion.claims));
        groups.sort();
        groups.dedup();
        // Only groups that exist: a rule naming a deleted group must not stop sign-in.
        let mut existing = Vec::new();
        for g in groups {
            if store.group(&g).await?.is_some() {
                existing.push(g);
            }
        }
        let mut attributes = rules.mapped_attributes(&assertion.claims);
        attributes.retain(|_, v| !v.is_empty());
        let new = NewUser {
            id: uuid::Uuid::now_v7().to_string(),
            username: federated_username(&rules.id, &assertion.subject),
            email: email.map(str::to_owned),
            email_verified: email.is_some() && assertion.email_verified,
            attributes,
            password_hash: None,
            groups: existing,
            password_change_required: false,
            legacy_password: false,
            disabled: false,
            now: self.now(),
        };
        let linked = FederatedIdentity {
            user_id: new.id.clone(),
            ..identity.clone()
        };
        match store.create_federated_user(&new, &linked).await {
            Ok(user) => {
                crate::audit::record(
                    store,
                    self.now(),
                    "federation.signup",
                    &crate::audit::Actor::user(&user.id, "server"),
                    &user.username,
                    serde_json::json!({ "provider": rules.id }),
                )
                .await;
                tracing::info!(provider = %rules.id, user_id = %user.id, "user created by a federated sign-in");
                Ok(Ok(user))
            }
            // A concurrent first sign-in of the same identity won: use its user.
            Err(StoreError::AlreadyExists { .. }) => {
                match store
                    .federated_identity(&rules.id, &assertion.subject)
                    .await?
                {
                    Some(l) => Ok(Ok(store
                        .user_by_id(&l.user_id)
                        .await?
                        .ok_or(OAuthError::TemporarilyUnavailable)?)),
                    None => Ok(Err(Federated::NotAllowed(
                        "An account with your name exists already. Ask the administrator.".into(),
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Links an identity to a signed-in user (from the account page). `Ok(false)`: it belongs
    /// to someone already.
    pub async fn link_federated(
        &self,
        user: &User,
        rules: &FederationRules,
        assertion: &Assertion,
    ) -> Result<bool, OAuthError> {
        let now = self.now();
        let identity = FederatedIdentity {
            provider: rules.id.clone(),
            subject: assertion.subject.clone(),
            user_id: user.id.clone(),
            email: assertion.email.clone(),
            created_at: now,
            last_used_at: now,
        };
        match self.store().link_identity(&identity).await {
            Ok(()) => {
                crate::audit::record(
                    self.store(),
                    now,
                    "federation.link",
                    &crate::audit::Actor::user(&user.id, "server"),
                    &user.username,
                    serde_json::json!({ "provider": rules.id, "by": "account page" }),
                )
                .await;
                Ok(true)
            }
            Err(StoreError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Unlinks one of a user's identities, unless it is their last way to sign in (no password,
    /// no passkey, no other identity). `Ok(false)`: refused for that reason or not theirs.
    pub async fn unlink_federated(
        &self,
        user: &User,
        provider: &str,
        subject: &str,
    ) -> Result<bool, OAuthError> {
        let store = self.store();
        let identities = store.identities_of(&user.id).await?;
        if !identities
            .iter()
            .any(|i| i.provider == provider && i.subject == subject)
        {
            return Ok(false);
        }
        let others = identities.len() > 1
            || user.password_hash.is_some()
            || !store.credentials_of(&user.id).await?.is_empty();
        if !others {
            return Ok(false);
        }
        let done = store.unlink_identity(&user.id, provider, subject).await?;
        if done {
            crate::audit::record(
                store,
                self.now(),
                "federation.unlink",
                &crate::audit::Actor::user(&user.id, "server"),
                &user.username,
                serde_json::json!({ "provider": provider }),
            )
            .await;
        }
        Ok(done)
    }
}

/// The `amr` of a federated session: `fed` (RFC 8176), then what the provider reported among
/// the registered values, so a provider's multi-factor sign-in counts as one here.
fn session_amr(upstream: &[String]) -> Vec<String> {
    const KNOWN: &[&str] = &[
        "face", "fpt", "geo", "hwk", "iris", "kba", "mca", "mfa", "otp", "pin", "pwd", "rba",
        "retina", "sc", "sms", "swk", "tel", "user", "vbm", "wia",
    ];
    let mut amr = vec!["fed".to_owned()];
    for a in upstream {
        if KNOWN.contains(&a.as_str()) && !amr.contains(a) {
            amr.push(a.clone());
        }
    }
    amr
}

/// The redirect URI to register at the provider for `id`: one per provider (the mix-up defence
/// of RFC 9700 §4.4.2 — an answer is only accepted at the address of the provider it was sent to).
pub fn redirect_uri(issuer: &str, id: &str) -> String {
    format!("{issuer}/login/federated/{id}/callback")
}

/// The address to register at the provider for coming back after signing out there.
pub fn post_logout_uri(issuer: &str, id: &str) -> String {
    format!("{issuer}/login/federated/{id}/signed-out")
}

/// The username of a user created by a federated sign-in: `<provider>_<subject>` when that is a
/// valid username, else `<provider>_` and a hash of the subject (Cognito names them
/// `Google_<sub>` likewise).
pub fn federated_username(provider: &str, subject: &str) -> String {
    let plain = format!("{provider}_{subject}");
    if plain.len() <= 64 && crate::names::validate_username(&plain).is_ok() {
        return plain;
    }
    format!("{provider}_{}", &crate::crypto::sha256_hex(subject)[..32])
}

/// The error page's words for a failed upstream sign-in.
pub fn upstream_message(name: &str, e: &UpstreamError) -> String {
    match e {
        UpstreamError::Unavailable(_) => format!(
            "{name} is not reachable right now. Try again in a moment, or sign in another way."
        ),
        UpstreamError::Denied(code) if code == "access_denied" => {
            format!("Signing in with {name} was cancelled.")
        }
        UpstreamError::Denied(_) => {
            format!("{name} could not sign you in. Try again, or sign in another way.")
        }
        UpstreamError::Invalid(_) => format!(
            "The answer from {name} could not be accepted. Start again from the sign-in page."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_rules_match_values_and_lists() {
        let rules = FederationRules {
            group_rules: vec![
                GroupRule {
                    claim: "groups".into(),
                    value: "9f1c".into(),
                    group: "admin".into(),
                },
                GroupRule {
                    claim: "dept".into(),
                    value: "ops".into(),
                    group: "staff".into(),
                },
                GroupRule {
                    claim: "level".into(),
                    value: "3".into(),
                    group: "staff".into(),
                },
            ],
            ..FederationRules::default()
        };
        let claims = |v: Value| v.as_object().cloned().expect("object");
        assert_eq!(
            rules.mapped_groups(&claims(serde_json::json!({"groups": ["a", "9f1c"]}))),
            ["admin"]
        );
        assert_eq!(
            rules.mapped_groups(&claims(serde_json::json!({"groups": "9f1c", "level": 3}))),
            ["admin", "staff"]
        );
        assert!(
            rules
                .mapped_groups(&claims(
                    serde_json::json!({"groups": {"9f1c": true}, "dept": "OPS"})
                ))
                .is_empty()
        );
        assert_eq!(rules.managed_groups(), ["admin", "staff"]);
    }

    #[test]
    fn usernames_and_amr() {
        assert_eq!(federated_username("google", "1234567"), "google_1234567");
        let odd = federated_username(
            "entra",
            "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ/with space",
        );
        assert!(odd.starts_with("entra_") && odd.len() == 38, "{odd}");
        assert_eq!(
            session_amr(&["pwd".into(), "mfa".into(), "x-custom".into()]),
            ["fed", "pwd", "mfa"]
        );
        assert_eq!(session_amr(&[]), ["fed"]);
        assert!(FederationRules::validate_id("entra-corp").is_ok());
        assert!(FederationRules::validate_id("Google").is_err());
        assert!(FederationRules::validate_id("a/b").is_err());
        assert!(FederationRules::validate_id("").is_err());
    }
}
