//! Passkeys: stored credentials (opaque JSON from the caller) and ceremony states, used once.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError};

/// A stored passkey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCredential {
    pub cred_id: String,
    pub user_id: String,
    pub name: String,
    /// The verifier's own serialization (public key, counter, ...).
    pub passkey: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

fn credential_from_row(r: &AnyRow) -> Result<StoredCredential, StoreError> {
    Ok(StoredCredential {
        cred_id: r.try_get("cred_id")?,
        user_id: r.try_get("user_id")?,
        name: r.try_get("name")?,
        passkey: r.try_get("passkey")?,
        created_at: r.try_get("created_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

impl Store {
    pub async fn add_credential(&self, c: &StoredCredential) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "INSERT INTO webauthn_credentials (cred_id, user_id, name, passkey, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&c.cred_id)
        .bind(&c.user_id)
        .bind(&c.name)
        .bind(&c.passkey)
        .bind(c.created_at)
        .execute(&self.pool)
        .await;
        match done {
            Err(e) if crate::error::is_unique_violation(&e) => Err(StoreError::AlreadyExists {
                kind: "passkey",
                name: c.cred_id.clone(),
            }),
            other => other.map(|_| ()).map_err(StoreError::from),
        }
    }

    pub async fn credentials_of(&self, user_id: &str) -> Result<Vec<StoredCredential>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM webauthn_credentials WHERE user_id = $1 ORDER BY created_at, cred_id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential_from_row).collect()
    }

    pub async fn credential(&self, cred_id: &str) -> Result<Option<StoredCredential>, StoreError> {
        let row = sqlx::query("SELECT * FROM webauthn_credentials WHERE cred_id = $1")
            .bind(cred_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(credential_from_row).transpose()
    }

    /// Stores a credential's new state after a use (its counter), only if it is still `old`:
    /// two uses of one credential at once cannot both move it.
    pub async fn update_credential(
        &self,
        cred_id: &str,
        old: &str,
        new: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE webauthn_credentials SET passkey = $1, last_used_at = $2 WHERE cred_id = $3 AND passkey = $4",
        )
        .bind(new)
        .bind(now)
        .bind(cred_id)
        .bind(old)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes one of a user's credentials; false when it is not theirs.
    pub async fn remove_credential(
        &self,
        user_id: &str,
        cred_id: &str,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let done =
            sqlx::query("DELETE FROM webauthn_credentials WHERE cred_id = $1 AND user_id = $2")
                .bind(cred_id)
                .bind(user_id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes every credential of a user (an operator's reset).
    pub async fn remove_credentials(&self, user_id: &str) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query("DELETE FROM webauthn_credentials WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Stores a ceremony in progress.
    pub async fn put_ceremony(
        &self,
        id: &str,
        kind: &str,
        user_id: Option<&str>,
        state: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO webauthn_ceremonies (id, kind, user_id, state, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(kind)
        .bind(user_id)
        .bind(state)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes a ceremony's state: once, before it expires, of this kind. Returns (user id, state).
    pub async fn take_ceremony(
        &self,
        id: &str,
        kind: &str,
        now: i64,
    ) -> Result<Option<(Option<String>, String)>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT user_id, state FROM webauthn_ceremonies WHERE id = $1 AND kind = $2 AND expires_at > $3",
        )
        .bind(id)
        .bind(kind)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let done = sqlx::query("DELETE FROM webauthn_ceremonies WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some((row.try_get("user_id")?, row.try_get("state")?)))
    }
}
