//! Instance-wide settings that every node must agree on, such as the instance secret.

use sqlx::Row;

use crate::{Store, StoreError};

impl Store {
    /// Returns the stored value of `name`, storing `candidate` first if there is none.
    ///
    /// Safe when several processes race on first start: exactly one candidate wins and every
    /// caller gets that one.
    pub async fn setting_get_or_insert(
        &self,
        name: &str,
        candidate: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO instance_settings (name, value, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.setting(name)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("setting {name} vanished")))
    }

    /// Sets `name` to `value`, replacing what was there.
    pub async fn setting_put(&self, name: &str, value: &str, now: i64) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO instance_settings (name, value, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Returns the stored value of `name`.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM instance_settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }
}
