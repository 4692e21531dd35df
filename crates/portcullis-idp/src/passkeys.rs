//! Passkeys (WebAuthn, through `webauthn-rs`): registration on the account page, passwordless
//! sign-in with discoverable credentials, and use as the second factor after a password.
//!
//! The relying party is the issuer: its host is the RP id and its origin the only origin
//! accepted, so an assertion made for another site (a phishing page) is refused. User
//! verification is required. Ceremony states stay on the server, keyed by a random id and used
//! once; a credential's signature counter must grow (a cloned authenticator is refused), and the
//! new counter is stored only if the credential was not changed meanwhile.

use portcullis_store::{StoredCredential, User, UserStatus};
use serde_json::Value;
use webauthn_rs::prelude::{
    AuthenticationResult, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid, Webauthn,
    WebauthnBuilder,
};

use crate::crypto::{random_token, sha256_hex};
use crate::provider::{OAuthError, Provider};

/// How long a ceremony may take (the browser's prompt included).
const CEREMONY_SECS: i64 = 300;
/// Most passkeys one user may register.
const MAX_PASSKEYS: usize = 20;
const MAX_NAME: usize = 64;

/// A passkey as the account page lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PasskeyInfo {
    pub cred_id: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// Why a passkey ceremony failed; the message is for the user.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Server(#[from] OAuthError),
}

impl From<portcullis_store::StoreError> for PasskeyError {
    fn from(e: portcullis_store::StoreError) -> Self {
        PasskeyError::Server(e.into())
    }
}

fn refused(message: &str) -> PasskeyError {
    PasskeyError::Refused(message.to_owned())
}

/// The WebAuthn relying party for an issuer URL; `None` when its host cannot be an RP id (an
/// IP address).
pub(crate) fn relying_party(issuer: &str, name: &str) -> Option<Webauthn> {
    let url = Url::parse(issuer).ok()?;
    let host = url.domain()?.to_owned();
    let origin = Url::parse(&url.origin().ascii_serialization()).ok()?;
    WebauthnBuilder::new(&host, &origin)
        .ok()?
        .rp_name(name)
        .build()
        .ok()
}

/// The WebAuthn user handle of a user: their id when it is a UUID (ours are), else a UUID
/// derived from it (imported subjects).
fn user_handle(user: &User) -> Uuid {
    Uuid::parse_str(&user.id).unwrap_or_else(|_| {
        let digest = sha256_hex(&format!("webauthn user handle:{}", user.id));
        let bytes: Vec<u8> = (0..16)
            .filter_map(|i| u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).ok())
            .collect();
        Uuid::from_slice(&bytes).unwrap_or_default()
    })
}

fn cred_key(passkey: &Passkey) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode::<&[u8]>(passkey.cred_id().as_ref())
}

/// RFC 8176: a key that can be synced (backup eligible) is a software key, else a hardware one.
fn key_amr(result: &AuthenticationResult) -> &'static str {
    if result.backup_eligible() {
        "swk"
    } else {
        "hwk"
    }
}

impl Provider {
    fn webauthn(&self) -> Result<&Webauthn, PasskeyError> {
        self.relying_party().ok_or_else(|| {
            refused("Passkeys need the service to be reached by a domain name, not an IP address.")
        })
    }

    /// Whether passkeys can be used with this issuer.
    pub fn passkeys_available(&self) -> bool {
        self.relying_party().is_some()
    }

    pub async fn passkeys(&self, user: &User) -> Result<Vec<PasskeyInfo>, OAuthError> {
        Ok(self
            .store()
            .credentials_of(&user.id)
            .await?
            .into_iter()
            .map(|c| PasskeyInfo {
                cred_id: c.cred_id,
                name: c.name,
                created_at: c.created_at,
                last_used_at: c.last_used_at,
            })
            .collect())
    }

    async fn stored_passkeys(
        &self,
        user: &User,
    ) -> Result<Vec<(StoredCredential, Passkey)>, OAuthError> {
        let mut out = Vec::new();
        for c in self.store().credentials_of(&user.id).await? {
            match serde_json::from_str::<Passkey>(&c.passkey) {
                Ok(p) => out.push((c, p)),
                Err(e) => tracing::error!(error = %e, "a stored passkey cannot be read"),
            }
        }
        Ok(out)
    }

    async fn put_ceremony(
        &self,
        kind: &str,
        user: Option<&User>,
        state: &impl serde::Serialize,
    ) -> Result<String, PasskeyError> {
        let id = random_token().expose().clone();
        let state = serde_json::to_string(state).map_err(|_| OAuthError::ServerError)?;
        let now = self.now();
        self.store()
            .put_ceremony(
                &id,
                kind,
                user.map(|u| u.id.as_str()),
                &state,
                now + CEREMONY_SECS,
                now,
            )
            .await?;
        Ok(id)
    }

    async fn take_ceremony<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        kind: &str,
        user: Option<&User>,
    ) -> Result<T, PasskeyError> {
        let expired = || refused("This attempt expired. Try again.");
        let (owner, state) = self
            .store()
            .take_ceremony(id, kind, self.now())
            .await?
            .ok_or_else(expired)?;
        if owner.as_deref() != user.map(|u| u.id.as_str()) {
            return Err(expired());
        }
        serde_json::from_str(&state).map_err(|_| expired())
    }

    /// Starts adding a passkey: the options for `navigator.credentials.create` and the
    /// ceremony id.
    pub async fn begin_passkey_registration(
        &self,
        user: &User,
    ) -> Result<(String, Value), PasskeyError> {
        let webauthn = self.webauthn()?;
        let existing = self.stored_passkeys(user).await?;
        if existing.len() >= MAX_PASSKEYS {
            return Err(refused(
                "You have as many passkeys as an account may have. Remove one first.",
            ));
        }
        let exclude = existing.iter().map(|(_, p)| p.cred_id().clone()).collect();
        let display = user
            .attributes
            .get("name")
            .cloned()
            .unwrap_or_else(|| user.username.clone());
        let (options, state) = webauthn
            .start_passkey_registration(user_handle(user), &user.username, &display, Some(exclude))
            .map_err(|e| {
                tracing::error!(error = %e, "passkey registration could not start");
                PasskeyError::Server(OAuthError::ServerError)
            })?;
        let id = self.put_ceremony("register", Some(user), &state).await?;
        let options = serde_json::to_value(options).map_err(|_| OAuthError::ServerError)?;
        Ok((id, options))
    }

    /// Completes adding a passkey with the browser's answer. Returns new recovery codes when
    /// this is the user's first second factor (shown once), else none.
    pub async fn finish_passkey_registration(
        &self,
        user: &User,
        ceremony: &str,
        credential: &str,
        name: &str,
    ) -> Result<Vec<String>, PasskeyError> {
        let webauthn = self.webauthn()?;
        let name = name.trim();
        if name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(refused(
                "A passkey's name is at most 64 characters of printable text.",
            ));
        }
        let state: PasskeyRegistration =
            self.take_ceremony(ceremony, "register", Some(user)).await?;
        let credential: RegisterPublicKeyCredential = serde_json::from_str(credential)
            .map_err(|_| refused("The browser's answer could not be read. Try again."))?;
        let passkey = webauthn
            .finish_passkey_registration(&credential, &state)
            .map_err(|e| {
                tracing::info!(error = %e, "passkey registration refused");
                refused("The passkey could not be verified. Try again.")
            })?;
        let first = !self.has_mfa(user).await?;
        let stored = StoredCredential {
            cred_id: cred_key(&passkey),
            user_id: user.id.clone(),
            name: if name.is_empty() {
                "Passkey".into()
            } else {
                name.to_owned()
            },
            passkey: serde_json::to_string(&passkey).map_err(|_| OAuthError::ServerError)?,
            created_at: self.now(),
            last_used_at: None,
        };
        match self.store().add_credential(&stored).await {
            Ok(()) => {}
            Err(portcullis_store::StoreError::AlreadyExists { .. }) => {
                return Err(refused("This passkey is already registered."));
            }
            Err(e) => return Err(e.into()),
        }
        crate::audit::record(
            self.store(),
            self.now(),
            "mfa.passkey.register",
            &crate::audit::Actor::user(&user.id, "server"),
            &user.username,
            serde_json::json!({ "name": stored.name, "credential": stored.cred_id }),
        )
        .await;
        let codes = if first && self.store().recovery_codes_left(&user.id).await? == 0 {
            self.new_recovery_codes(user).await?
        } else {
            Vec::new()
        };
        Ok(codes)
    }

    pub async fn remove_passkey(&self, user: &User, cred_id: &str) -> Result<bool, OAuthError> {
        let removed = self.store().remove_credential(&user.id, cred_id).await?;
        if removed {
            crate::audit::record(
                self.store(),
                self.now(),
                "mfa.passkey.remove",
                &crate::audit::Actor::user(&user.id, "server"),
                &user.username,
                serde_json::json!({ "credential": cred_id }),
            )
            .await;
        }
        Ok(removed)
    }

    /// Starts a sign-in with a passkey: any of the user's (the second factor after a password),
    /// or, with no user, a discoverable one (passwordless).
    pub async fn begin_passkey_sign_in(
        &self,
        user: Option<&User>,
    ) -> Result<(String, Value), PasskeyError> {
        let webauthn = self.webauthn()?;
        let (options, id) = match user {
            Some(user) => {
                let passkeys: Vec<Passkey> = self
                    .stored_passkeys(user)
                    .await?
                    .into_iter()
                    .map(|(_, p)| p)
                    .collect();
                if passkeys.is_empty() {
                    return Err(refused("This account has no passkey."));
                }
                let (options, state) =
                    webauthn
                        .start_passkey_authentication(&passkeys)
                        .map_err(|e| {
                            tracing::error!(error = %e, "passkey sign-in could not start");
                            PasskeyError::Server(OAuthError::ServerError)
                        })?;
                (
                    options,
                    self.put_ceremony("second_factor", Some(user), &state)
                        .await?,
                )
            }
            None => {
                let (mut options, state) =
                    webauthn.start_discoverable_authentication().map_err(|e| {
                        tracing::error!(error = %e, "passkey sign-in could not start");
                        PasskeyError::Server(OAuthError::ServerError)
                    })?;
                // A button asks for it: the modal prompt, not the autofill-only mediation.
                options.mediation = None;
                (
                    options,
                    self.put_ceremony("discoverable", None, &state).await?,
                )
            }
        };
        let options = serde_json::to_value(options).map_err(|_| OAuthError::ServerError)?;
        Ok((id, options))
    }

    /// Completes a passkey sign-in. Returns the user and the `amr` of the key (`hwk`/`swk`).
    /// A failed assertion counts towards the account's lockout when the account is known.
    pub async fn finish_passkey_sign_in(
        &self,
        user: Option<&User>,
        ceremony: &str,
        credential: &str,
    ) -> Result<(User, &'static str), PasskeyError> {
        let webauthn = self.webauthn()?;
        let credential: PublicKeyCredential = serde_json::from_str(credential)
            .map_err(|_| refused("The browser's answer could not be read. Try again."))?;
        let not_accepted = || refused("That passkey was not accepted.");
        let (owner, stored, result) = match user {
            Some(user) => {
                let state: PasskeyAuthentication = self
                    .take_ceremony(ceremony, "second_factor", Some(user))
                    .await?;
                let result = webauthn
                    .finish_passkey_authentication(&credential, &state)
                    .map_err(|e| {
                        tracing::info!(error = %e, "passkey assertion refused");
                        not_accepted()
                    });
                let result = match result {
                    Ok(r) => r,
                    Err(e) => {
                        self.count_failure(user).await?;
                        return Err(e);
                    }
                };
                let key = {
                    use base64::Engine;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode::<&[u8]>(result.cred_id().as_ref())
                };
                let stored = self
                    .store()
                    .credential(&key)
                    .await?
                    .filter(|c| c.user_id == user.id)
                    .ok_or_else(not_accepted)?;
                (user.clone(), stored, result)
            }
            None => {
                let state: DiscoverableAuthentication =
                    self.take_ceremony(ceremony, "discoverable", None).await?;
                let (handle, cred_id) = webauthn
                    .identify_discoverable_authentication(&credential)
                    .map_err(|_| not_accepted())?;
                let key = {
                    use base64::Engine;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cred_id)
                };
                let stored = self
                    .store()
                    .credential(&key)
                    .await?
                    .ok_or_else(not_accepted)?;
                let owner = self
                    .store()
                    .user_by_id(&stored.user_id)
                    .await?
                    .filter(|u| user_handle(u) == handle)
                    .ok_or_else(not_accepted)?;
                let passkey: Passkey =
                    serde_json::from_str(&stored.passkey).map_err(|_| not_accepted())?;
                let result = webauthn
                    .finish_discoverable_authentication_v2(&credential, state, &passkey)
                    .map_err(|e| {
                        tracing::info!(error = %e, "passkey assertion refused");
                        not_accepted()
                    });
                let result = match result {
                    Ok(r) => r,
                    Err(e) => {
                        self.count_failure(&owner).await?;
                        return Err(e);
                    }
                };
                (owner, stored, result)
            }
        };
        if owner.status != UserStatus::Enabled {
            return Err(not_accepted());
        }
        let locked_until = self
            .store()
            .login_locked_until(&owner.username.to_ascii_lowercase())
            .await?;
        if locked_until > self.now() {
            return Err(refused("Too many failed attempts. Try again later."));
        }
        // The new counter; stored only if nobody used the credential meanwhile.
        let mut passkey: Passkey =
            serde_json::from_str(&stored.passkey).map_err(|_| not_accepted())?;
        passkey.update_credential(&result);
        let updated = serde_json::to_string(&passkey).map_err(|_| OAuthError::ServerError)?;
        if !self
            .store()
            .update_credential(&stored.cred_id, &stored.passkey, &updated, self.now())
            .await?
        {
            return Err(not_accepted());
        }
        self.store()
            .clear_login_failures(&owner.username.to_ascii_lowercase())
            .await?;
        Ok((owner, key_amr(&result)))
    }

    async fn count_failure(&self, user: &User) -> Result<(), OAuthError> {
        let s = self.settings();
        self.store()
            .record_login_failure(
                &user.username.to_ascii_lowercase(),
                self.now(),
                s.lockout_threshold,
                s.lockout_base_delay,
                s.lockout_max_delay,
            )
            .await?;
        Ok(())
    }
}
