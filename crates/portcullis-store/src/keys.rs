//! Signing keys, sealed by the caller.

use sqlx::Row;

use crate::{Store, StoreError};

/// A stored signing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    /// `access` or `id`.
    pub purpose: String,
    /// The sealed PKCS#8 private key.
    pub sealed: String,
    pub public_jwk: String,
    pub created_at: i64,
    pub activate_at: i64,
    pub retire_at: Option<i64>,
}

impl Store {
    pub async fn insert_signing_key(&self, k: &StoredKey) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, purpose, sealed, public_jwk, created_at, activate_at, retire_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&k.kid)
        .bind(&k.alg)
        .bind(&k.purpose)
        .bind(&k.sealed)
        .bind(&k.public_jwk)
        .bind(k.created_at)
        .bind(k.activate_at)
        .bind(k.retire_at)
        .execute(&self.pool)
        .await?;
        self.notify(crate::Change::Keys).await
    }

    /// Keys still published at `now` (not retired), oldest first.
    pub async fn signing_keys(&self, now: i64) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM signing_keys WHERE retire_at IS NULL OR retire_at > $1 ORDER BY activate_at, kid",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredKey {
                    kid: r.try_get("kid")?,
                    alg: r.try_get("alg")?,
                    purpose: r.try_get("purpose")?,
                    sealed: r.try_get("sealed")?,
                    public_jwk: r.try_get("public_jwk")?,
                    created_at: r.try_get("created_at")?,
                    activate_at: r.try_get("activate_at")?,
                    retire_at: r.try_get("retire_at")?,
                })
            })
            .collect()
    }

    /// Schedules a key's retirement (it stays published until then).
    pub async fn retire_signing_key(&self, kid: &str, at: i64) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("UPDATE signing_keys SET retire_at = $1 WHERE kid = $2 AND (retire_at IS NULL OR retire_at > $1)")
            .bind(at)
            .bind(kid)
            .execute(&self.pool)
            .await?;
        self.notify(crate::Change::Keys).await
    }

    /// A value that changes whenever the set of keys or their schedule changes: cheap to poll.
    pub async fn signing_keys_version(&self) -> Result<String, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COUNT(retire_at) AS r, COALESCE(MAX(activate_at), 0) AS a,
                    COALESCE(MAX(retire_at), 0) AS m FROM signing_keys",
        )
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        let r: i64 = row.try_get("r")?;
        let a: i64 = row.try_get("a")?;
        let m: i64 = row.try_get("m")?;
        Ok(format!("{n}:{r}:{a}:{m}"))
    }
}
