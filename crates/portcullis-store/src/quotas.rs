//! Quota usage: every node adds the requests it served and reads back the total.

use sqlx::Row;

use crate::{Store, StoreError};

impl Store {
    /// Adds `used` requests to a client's count for one quota and period; returns the total.
    pub async fn add_quota_usage(
        &self,
        quota: &str,
        client_id: &str,
        period: &str,
        used: u64,
        now: i64,
    ) -> Result<i64, StoreError> {
        let _turn = self.write_turn().await;
        let row = sqlx::query(
            "INSERT INTO quota_usage (quota, client_id, period, used, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (quota, client_id, period)
             DO UPDATE SET used = quota_usage.used + excluded.used, updated_at = excluded.updated_at
             RETURNING used",
        )
        .bind(quota)
        .bind(client_id)
        .bind(period)
        .bind(i64::try_from(used).unwrap_or(i64::MAX))
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("used")?)
    }

    /// Every count in these periods: `(quota, client, period, used)`.
    pub async fn quota_usage_in(
        &self,
        periods: &[&str],
    ) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        let mut out = Vec::new();
        for period in periods {
            let rows = sqlx::query(
                "SELECT quota, client_id, period, used FROM quota_usage WHERE period = $1",
            )
            .bind(*period)
            .fetch_all(&self.pool)
            .await?;
            for r in &rows {
                out.push((
                    r.try_get("quota")?,
                    r.try_get("client_id")?,
                    r.try_get("period")?,
                    r.try_get("used")?,
                ));
            }
        }
        Ok(out)
    }

    /// Forgets counts not touched since `before` (periods long over). Returns how many.
    pub async fn prune_quota_usage(&self, before: i64) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query("DELETE FROM quota_usage WHERE updated_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
