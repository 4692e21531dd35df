//! Second factors: TOTP secrets (sealed by the caller) with the last accepted step, and
//! recovery codes (SHA-256 digests). The replay and single-use rules are enforced here, by
//! conditional updates, so they hold across nodes.

use sqlx::Row;

use crate::{Store, StoreError};

/// A user's TOTP enrolment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotpFactor {
    pub sealed: String,
    pub confirmed: bool,
    pub last_step: i64,
    pub created_at: i64,
}

impl Store {
    pub async fn totp(&self, user_id: &str) -> Result<Option<TotpFactor>, StoreError> {
        let row = sqlx::query("SELECT * FROM mfa_totp WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(TotpFactor {
                sealed: r.try_get("sealed")?,
                confirmed: r.try_get::<i64, _>("confirmed")? != 0,
                last_step: r.try_get("last_step")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// Starts (or restarts) an enrolment: a new secret, not confirmed. A confirmed factor is
    /// not replaced (`false`): remove it first.
    pub async fn totp_begin(
        &self,
        user_id: &str,
        sealed: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "INSERT INTO mfa_totp (user_id, sealed, confirmed, last_step, created_at) VALUES ($1, $2, 0, 0, $3)
             ON CONFLICT (user_id) DO UPDATE SET sealed = excluded.sealed, created_at = excluded.created_at, last_step = 0
             WHERE mfa_totp.confirmed = 0",
        )
        .bind(user_id)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Accepts a time step for a user: only once, and only a step later than any accepted
    /// before (RFC 6238 §5.2). `confirm` also completes an enrolment. Returns whether accepted.
    pub async fn totp_accept_step(
        &self,
        user_id: &str,
        step: i64,
        confirm: bool,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let sql = if confirm {
            "UPDATE mfa_totp SET last_step = $1, confirmed = 1 WHERE user_id = $2 AND confirmed = 0 AND last_step < $1"
        } else {
            "UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND confirmed = 1 AND last_step < $1"
        };
        let done = sqlx::query(sql)
            .bind(step)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a user's recovery codes with these digests.
    pub async fn set_recovery_codes(
        &self,
        user_id: &str,
        hashes: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for h in hashes {
            sqlx::query(
                "INSERT INTO mfa_recovery_codes (code_hash, user_id, created_at) VALUES ($1, $2, $3)",
            )
            .bind(h)
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Uses a recovery code of this user: once. Returns whether it was unused and theirs.
    pub async fn use_recovery_code(
        &self,
        user_id: &str,
        hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE mfa_recovery_codes SET used_at = $1 WHERE code_hash = $2 AND user_id = $3 AND used_at IS NULL",
        )
        .bind(now)
        .bind(hash)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Unused recovery codes of a user.
    pub async fn recovery_codes_left(&self, user_id: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Removes every second factor of a user (TOTP and recovery codes). Returns whether there
    /// was any.
    pub async fn reset_mfa(&self, user_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let a = sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let b = sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(a + b > 0)
    }
}
