//! The user pool's operations: validate, hash, store. The CLI and (later) the admin API and the
//! hosted pages call these, never the store directly, so every path applies the same rules.

use std::collections::BTreeMap;

use portcullis_store::{Group, NewGroup, NewUser, Store, StoreError, User, UserStatus};
use portcullis_token::{Clock, Secret};

use crate::names::{NameError, validate_email, validate_group_name, validate_username};
use crate::password::{
    HashError, PasswordError, PasswordHasher, PasswordPolicy, generate_password,
};

/// Most attributes a user may carry, longest key and longest value (bytes).
const MAX_ATTRIBUTES: usize = 50;
const MAX_ATTRIBUTE_KEY: usize = 64;
const MAX_ATTRIBUTE_VALUE: usize = 2048;
const MAX_DESCRIPTION: usize = 2048;

/// Why a user-pool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("invalid attribute: {0}")]
    Attribute(String),
    #[error("invalid group: {0}")]
    Group(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Hash(#[from] HashError),
}

impl PoolError {
    /// True when the caller can fix it (bad input, name taken, unknown user or group).
    pub fn is_user_error(&self) -> bool {
        match self {
            PoolError::Store(e) => e.is_user_error(),
            PoolError::Hash(_) => false,
            _ => true,
        }
    }
}

/// A user to add.
#[derive(Debug, Default)]
pub struct AddUser {
    pub username: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub attributes: BTreeMap<String, String>,
    pub groups: Vec<String>,
    /// `None`: generate one and return it (unless `no_password`).
    pub password: Option<Secret<String>>,
    /// The password must be changed at the first sign-in.
    pub temporary_password: bool,
    /// Create the user without a password (an invitation sets it).
    pub no_password: bool,
}

/// A user brought over from another pool (Cognito): its subject is kept as the user's id, so
/// tokens carry the same `sub` and the application's data stays linked. No password: the legacy
/// verifier checks the first sign-in.
#[derive(Clone, Debug, Default)]
pub struct ImportUser {
    /// The subject (`sub`) to keep.
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub attributes: BTreeMap<String, String>,
    pub groups: Vec<String>,
    pub enabled: bool,
}

/// What an import did with one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Imported {
    Created,
    /// The same user (username and subject) is already in the pool: left as it is.
    Unchanged,
    /// Not imported, and why.
    Skipped(String),
}

/// The user pool.
#[derive(Clone, Debug)]
pub struct UserPool {
    store: Store,
    hasher: PasswordHasher,
    policy: PasswordPolicy,
    clock: Clock,
}

impl UserPool {
    pub fn new(store: Store, hasher: PasswordHasher, policy: PasswordPolicy, clock: Clock) -> Self {
        UserPool {
            store,
            hasher,
            policy,
            clock,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn policy(&self) -> &PasswordPolicy {
        &self.policy
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// Adds a user. Returns the generated password when none was given; it is shown once and
    /// never stored in clear.
    pub async fn add_user(
        &self,
        req: AddUser,
    ) -> Result<(User, Option<Secret<String>>), PoolError> {
        validate_username(&req.username)?;
        if let Some(email) = &req.email {
            validate_email(email)?;
        }
        validate_attributes(&req.attributes)?;
        for group in &req.groups {
            validate_group_name(group)?;
        }
        let (password_hash, generated) = match (req.password, req.no_password) {
            (_, true) => (None, None),
            (Some(pw), false) => {
                self.policy
                    .check(pw.expose(), &context(&req.username, req.email.as_deref()))?;
                (Some(self.hasher.hash(pw).await?), None)
            }
            (None, false) => {
                let pw = generate_password();
                (Some(self.hasher.hash(pw.clone()).await?), Some(pw))
            }
        };
        let new = NewUser {
            id: uuid_v7(),
            username: req.username,
            email: req.email,
            email_verified: req.email_verified,
            attributes: req.attributes,
            password_hash,
            groups: req.groups,
            password_change_required: req.temporary_password,
            legacy_password: false,
            disabled: false,
            now: self.clock.now(),
        };
        let user = self.store.create_user(&new).await?;
        Ok((user, generated))
    }

    /// Imports one user (see [`ImportUser`]); groups it names are created when missing. Safe to
    /// repeat: a user already imported is left unchanged.
    pub async fn import_user(&self, u: ImportUser) -> Result<Imported, PoolError> {
        if let Err(e) = validate_username(&u.username) {
            return Ok(Imported::Skipped(e.to_string()));
        }
        let id_ok =
            !u.id.is_empty() && u.id.len() <= 128 && u.id.chars().all(|c| c.is_ascii_graphic());
        if !id_ok {
            return Ok(Imported::Skipped(
                "its sub is empty, longer than 128 bytes or not printable ASCII".into(),
            ));
        }
        if let Some(email) = &u.email
            && let Err(e) = validate_email(email)
        {
            return Ok(Imported::Skipped(e.to_string()));
        }
        if let Err(e) = validate_attributes(&u.attributes) {
            return Ok(Imported::Skipped(e.to_string()));
        }
        for group in &u.groups {
            if let Err(e) = validate_group_name(group) {
                return Ok(Imported::Skipped(format!("group {group:?}: {e}")));
            }
        }
        if let Some(existing) = self.store.user(&u.username).await? {
            return Ok(if existing.id == u.id {
                Imported::Unchanged
            } else {
                Imported::Skipped(format!(
                    "the username is taken by another user (sub {})",
                    existing.id
                ))
            });
        }
        if let Some(existing) = self.store.user_by_id(&u.id).await? {
            return Ok(Imported::Skipped(format!(
                "its sub already belongs to the user {}",
                existing.username
            )));
        }
        let now = self.clock.now();
        for group in &u.groups {
            if self.store.group(group).await?.is_none() {
                let created = self
                    .store
                    .create_group(&NewGroup {
                        name: group.clone(),
                        description: String::new(),
                        precedence: None,
                        now,
                    })
                    .await;
                match created {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let new = NewUser {
            id: u.id,
            username: u.username,
            email: u.email,
            email_verified: u.email_verified,
            attributes: u.attributes,
            password_hash: None,
            groups: u.groups,
            password_change_required: false,
            legacy_password: true,
            disabled: !u.enabled,
            now,
        };
        match self.store.create_user(&new).await {
            Ok(_) => Ok(Imported::Created),
            Err(StoreError::AlreadyExists { .. }) => Ok(Imported::Skipped(
                "the username or sub was taken while importing".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores the hash of a password the legacy verifier accepted, ending the user's migration.
    pub async fn adopt_legacy_password(
        &self,
        user: &User,
        password: Secret<String>,
    ) -> Result<(), PoolError> {
        let hash = self.hasher.hash(password).await?;
        self.store
            .set_password_hash(&user.username, &hash, false, self.clock.now())
            .await?;
        Ok(())
    }

    /// Looks a user up (any letter case).
    pub async fn user(&self, username: &str) -> Result<User, PoolError> {
        self.store.user(username).await?.ok_or_else(|| {
            StoreError::NotFound {
                kind: "user",
                name: username.to_owned(),
            }
            .into()
        })
    }

    pub async fn list_users(&self) -> Result<Vec<User>, PoolError> {
        Ok(self.store.list_users().await?)
    }

    /// Deletes a user, first ending their sessions (so the gateway rejects their tokens). With
    /// `revision` (an `If-Match`), only if the user is still at it.
    pub async fn delete_user(
        &self,
        username: &str,
        revision: Option<i64>,
    ) -> Result<(), PoolError> {
        let user = self.user(username).await?;
        if revision.is_some_and(|r| r != user.revision) {
            return Err(changed(username));
        }
        self.store
            .revoke_user_sessions(&user.id, self.clock.now())
            .await?;
        Ok(self.store.delete_user(username, revision).await?)
    }

    /// Ends every session of a user; their refresh tokens stop working and their access tokens
    /// are listed as revoked.
    pub async fn end_sessions(&self, username: &str) -> Result<usize, PoolError> {
        let user = self.user(username).await?;
        Ok(self
            .store
            .revoke_user_sessions(&user.id, self.clock.now())
            .await?)
    }

    /// Sets a new password (generated when `None`, and returned). `temporary`: the user must
    /// choose another at the next sign-in.
    pub async fn set_password(
        &self,
        username: &str,
        password: Option<Secret<String>>,
        temporary: bool,
    ) -> Result<Option<Secret<String>>, PoolError> {
        let user = self.user(username).await?;
        let (password, generated) = match password {
            Some(pw) => {
                self.policy
                    .check(pw.expose(), &context(&user.username, user.email.as_deref()))?;
                (pw, None)
            }
            None => {
                let pw = generate_password();
                (pw.clone(), Some(pw))
            }
        };
        let hash = self.hasher.hash(password).await?;
        self.store
            .set_password_hash(&user.username, &hash, temporary, self.clock.now())
            .await?;
        // A changed password ends every session: whoever knew the old one is signed out.
        self.store
            .revoke_user_sessions(&user.id, self.clock.now())
            .await?;
        Ok(generated)
    }

    /// The user's own password change (account page): the policy applies, and every session
    /// but `keep` (the one they act from) ends.
    pub async fn change_password(
        &self,
        user: &User,
        password: Secret<String>,
        keep: &str,
    ) -> Result<(), PoolError> {
        self.policy.check(
            password.expose(),
            &context(&user.username, user.email.as_deref()),
        )?;
        let hash = self.hasher.hash(password).await?;
        let now = self.clock.now();
        self.store
            .set_password_hash(&user.username, &hash, false, now)
            .await?;
        self.store
            .revoke_other_sessions(&user.id, keep, now)
            .await?;
        Ok(())
    }

    /// Changes a user's attributes: `set` adds or replaces, `remove` deletes (names). Returns
    /// the user as stored.
    pub async fn update_attributes(
        &self,
        username: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
        revision: Option<i64>,
    ) -> Result<User, PoolError> {
        // Merged in one transaction: two concurrent edits of different attributes both land;
        // with `revision` (an `If-Match`) the caller's copy must still be current.
        let user = self.user(username).await?;
        self.store
            .edit_attributes(&user.id, revision, self.clock.now(), |attributes| {
                for name in remove {
                    attributes.remove(name);
                }
                for (k, v) in set {
                    attributes.insert(k.clone(), v.clone());
                }
                validate_attributes(attributes)
            })
            .await?;
        self.user(username).await
    }

    /// Enables or disables a user.
    pub async fn set_enabled(&self, username: &str, enabled: bool) -> Result<(), PoolError> {
        let status = if enabled {
            UserStatus::Enabled
        } else {
            UserStatus::Disabled
        };
        self.store
            .set_user_status(username, status, self.clock.now())
            .await?;
        if !enabled {
            self.end_sessions(username).await?;
        }
        Ok(())
    }

    /// Checks a username and password. Unknown users, users without a password and disabled
    /// users all cost one Argon2 verification and yield `None`.
    pub async fn authenticate(
        &self,
        username: &str,
        password: Secret<String>,
    ) -> Result<Option<User>, PoolError> {
        let user = match validate_username(username) {
            Ok(()) => self.store.user(username).await?,
            Err(_) => None,
        };
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        let ok = self.hasher.verify(password, stored).await?;
        Ok(user.filter(|u| ok && u.status == UserStatus::Enabled))
    }

    pub async fn add_group(
        &self,
        name: &str,
        description: &str,
        precedence: Option<i64>,
    ) -> Result<Group, PoolError> {
        validate_group_name(name)?;
        if description.len() > MAX_DESCRIPTION || description.chars().any(char::is_control) {
            return Err(PoolError::Group(format!(
                "the description must be at most {MAX_DESCRIPTION} bytes of printable text"
            )));
        }
        if let Some(p) = precedence
            && !(0..=i64::from(i32::MAX)).contains(&p)
        {
            return Err(PoolError::Group(format!(
                "precedence must be between 0 and {}, got {p}",
                i32::MAX
            )));
        }
        let new = NewGroup {
            name: name.to_owned(),
            description: description.to_owned(),
            precedence,
            now: self.clock.now(),
        };
        Ok(self.store.create_group(&new).await?)
    }

    pub async fn list_groups(&self) -> Result<Vec<Group>, PoolError> {
        Ok(self.store.list_groups().await?)
    }

    pub async fn delete_group(&self, name: &str) -> Result<(), PoolError> {
        Ok(self.store.delete_group(name).await?)
    }

    /// Adds a member; returns false when the user already was one.
    /// Group changes end the user's sessions: tokens carry groups, so old tokens must not
    /// outlive a change of permissions.
    pub async fn add_member(&self, group: &str, username: &str) -> Result<bool, PoolError> {
        let added = self
            .store
            .add_member(group, username, self.clock.now())
            .await?;
        if added {
            self.end_sessions(username).await?;
        }
        Ok(added)
    }

    /// Removes a member; returns false when the user was not one.
    pub async fn remove_member(&self, group: &str, username: &str) -> Result<bool, PoolError> {
        let removed = self.store.remove_member(group, username).await?;
        if removed {
            self.end_sessions(username).await?;
        }
        Ok(removed)
    }

    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, PoolError> {
        Ok(self.store.group_members(group).await?)
    }
}

/// Words a password must not be built from.
fn context<'a>(username: &'a str, email: Option<&'a str>) -> Vec<&'a str> {
    let mut words = vec![username];
    if let Some(email) = email {
        words.push(email);
        words.extend(email.split('@').next());
    }
    words
}

fn validate_attributes(attributes: &BTreeMap<String, String>) -> Result<(), PoolError> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(PoolError::Attribute(format!(
            "at most {MAX_ATTRIBUTES} attributes per user"
        )));
    }
    for (key, value) in attributes {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_ATTRIBUTE_KEY
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if !key_ok {
            return Err(PoolError::Attribute(format!(
                "{key:?}: names are 1–{MAX_ATTRIBUTE_KEY} ASCII letters, digits or `_ - . :`"
            )));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE || value.chars().any(char::is_control) {
            return Err(PoolError::Attribute(format!(
                "{key}: values are at most {MAX_ATTRIBUTE_VALUE} bytes of printable text"
            )));
        }
    }
    Ok(())
}

fn uuid_v7() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn changed(username: &str) -> PoolError {
    PoolError::Store(StoreError::Changed {
        kind: "user",
        name: username.to_owned(),
    })
}
