//! Federated identities: a user's accounts at upstream providers ("Sign in with …"), and what
//! each sign-in through one brings along (mapped attributes and groups), written at once.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::users::{NewUser, User, bump_revision_tx, insert_user_tx, name_key};
use crate::{Store, StoreError};

/// An identity at an upstream provider, linked to a local user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FederatedIdentity {
    /// The provider's id in the configuration (`[[idp.providers]]` `id`).
    pub provider: String,
    /// The provider's `sub` for the user (GitHub: its numeric user id).
    pub subject: String,
    pub user_id: String,
    /// The address the provider last asserted.
    pub email: Option<String>,
    pub created_at: i64,
    pub last_used_at: i64,
}

fn identity_from_row(r: &AnyRow) -> Result<FederatedIdentity, StoreError> {
    Ok(FederatedIdentity {
        provider: r.try_get("provider")?,
        subject: r.try_get("subject")?,
        user_id: r.try_get("user_id")?,
        email: r.try_get("email")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

/// What a federated sign-in writes to its user: attributes mapped from the provider's claims,
/// and the groups its rules decide.
#[derive(Clone, Debug, Default)]
pub struct FederatedProfile {
    /// Attributes to set (an empty value removes the attribute).
    pub attributes: BTreeMap<String, String>,
    /// The groups the provider's rules can grant: membership of each is made to match `groups`.
    pub managed_groups: Vec<String>,
    /// Of `managed_groups`, those the user must be in.
    pub groups: Vec<String>,
}

async fn insert_identity_tx(
    tx: &mut crate::WriteTx,
    id: &FederatedIdentity,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "INSERT INTO federated_identities (provider, subject, user_id, email, created_at, last_used_at)
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(&id.provider)
    .bind(&id.subject)
    .bind(&id.user_id)
    .bind(&id.email)
    .bind(id.created_at)
    .execute(&mut **tx)
    .await;
    match done {
        Err(e) if crate::error::is_unique_violation(&e) => Err(StoreError::AlreadyExists {
            kind: "federated identity",
            name: format!("{}:{}", id.provider, id.subject),
        }),
        other => other.map(|_| ()).map_err(StoreError::from),
    }
}

impl Store {
    /// The identity `subject` at `provider`, if linked.
    pub async fn federated_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<FederatedIdentity>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM federated_identities WHERE provider = $1 AND subject = $2")
                .bind(provider)
                .bind(subject)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(identity_from_row).transpose()
    }

    /// A user's linked identities, oldest first.
    pub async fn identities_of(&self, user_id: &str) -> Result<Vec<FederatedIdentity>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM federated_identities WHERE user_id = $1 ORDER BY created_at, provider, subject",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(identity_from_row).collect()
    }

    /// Links an identity to an existing user; [`StoreError::AlreadyExists`] when it is linked
    /// already (to anyone).
    pub async fn link_identity(&self, id: &FederatedIdentity) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert_identity_tx(&mut tx, id).await?;
        bump_revision_tx(&mut tx, &id.user_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates a user and links the identity to it, atomically: if the identity was linked by a
    /// concurrent first sign-in, nothing is written ([`StoreError::AlreadyExists`]).
    pub async fn create_federated_user(
        &self,
        new: &NewUser,
        id: &FederatedIdentity,
    ) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        insert_user_tx(&mut tx, new).await?;
        insert_identity_tx(&mut tx, id).await?;
        tx.commit().await?;
        self.user_by_id(&new.id).await?.ok_or(StoreError::NotFound {
            kind: "user",
            name: new.username.clone(),
        })
    }

    /// Unlinks one of a user's identities; false if it was not theirs.
    pub async fn unlink_identity(
        &self,
        user_id: &str,
        provider: &str,
        subject: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM federated_identities WHERE user_id = $1 AND provider = $2 AND subject = $3",
        )
        .bind(user_id)
        .bind(provider)
        .bind(subject)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            bump_revision_tx(&mut tx, user_id).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a sign-in through an identity and writes what it brings to its user, in one
    /// transaction: the identity's address and time, the mapped attributes, and membership of
    /// each managed group made to match. Groups that do not exist (any more) are skipped. The
    /// user's revision and `updated_at` move only if the user changed.
    pub async fn apply_federated_sign_in(
        &self,
        id: &FederatedIdentity,
        profile: &FederatedProfile,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE federated_identities SET email = $1, last_used_at = $2 WHERE provider = $3 AND subject = $4",
        )
        .bind(&id.email)
        .bind(now)
        .bind(&id.provider)
        .bind(&id.subject)
        .execute(&mut *tx)
        .await?;
        let mut changed = false;
        if !profile.attributes.is_empty() {
            let row = sqlx::query("SELECT attributes FROM users WHERE id = $1")
                .bind(&id.user_id)
                .fetch_one(&mut *tx)
                .await?;
            let text: String = row.try_get("attributes")?;
            let mut attributes: BTreeMap<String, String> = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("user attributes: {e}")))?;
            let before = attributes.clone();
            for (k, v) in &profile.attributes {
                if v.is_empty() {
                    attributes.remove(k);
                } else {
                    attributes.insert(k.clone(), v.clone());
                }
            }
            if attributes != before {
                let json = serde_json::to_string(&attributes)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query("UPDATE users SET attributes = $1 WHERE id = $2")
                    .bind(json)
                    .bind(&id.user_id)
                    .execute(&mut *tx)
                    .await?;
                changed = true;
            }
        }
        for group in &profile.managed_groups {
            let key = name_key(group);
            let exists = sqlx::query("SELECT 1 FROM user_groups WHERE name_key = $1")
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                continue;
            }
            let wanted = profile.groups.iter().any(|g| name_key(g) == key);
            let done = if wanted {
                sqlx::query(
                    "INSERT INTO group_members (user_id, group_key, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id, group_key) DO NOTHING",
                )
                .bind(&id.user_id)
                .bind(&key)
                .bind(now)
                .execute(&mut *tx)
                .await?
            } else {
                sqlx::query("DELETE FROM group_members WHERE user_id = $1 AND group_key = $2")
                    .bind(&id.user_id)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await?
            };
            changed |= done.rows_affected() == 1;
        }
        if changed {
            sqlx::query("UPDATE users SET updated_at = $1, revision = revision + 1 WHERE id = $2")
                .bind(now)
                .bind(&id.user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
