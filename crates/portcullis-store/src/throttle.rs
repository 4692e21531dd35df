//! Attempts per client network, counted for the whole cluster (sign-in throttling): governor's
//! algorithm (GCRA) with its state — one time per bucket — in the store, so every node spends
//! from the same budget.

use sqlx::Row;

use crate::{Store, StoreError};

/// A budget: `burst` attempts at once, then one every `interval_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleRate {
    pub burst: u32,
    pub interval_ms: i64,
}

impl ThrottleRate {
    /// `n` attempts a minute (a burst of `n`, refilled evenly).
    pub fn per_minute(n: u32) -> ThrottleRate {
        ThrottleRate::spread(n, 60_000)
    }

    /// `n` attempts an hour.
    pub fn per_hour(n: u32) -> ThrottleRate {
        ThrottleRate::spread(n, 3_600_000)
    }

    fn spread(n: u32, window_ms: i64) -> ThrottleRate {
        let n = n.max(1);
        ThrottleRate {
            burst: n,
            interval_ms: (window_ms / i64::from(n)).max(1),
        }
    }
}

impl Store {
    /// Counts one attempt from `network` in `scope` at `now_ms`; false (and nothing counted)
    /// when its bucket is empty. One statement: atomic on both backends, whichever node asks.
    pub async fn throttle_attempt(
        &self,
        scope: &str,
        network: &str,
        rate: ThrottleRate,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        // GCRA: the bucket's time moves `interval` ahead per attempt and may run ahead of now by
        // at most (burst − 1) intervals.
        let tolerance = rate.interval_ms * (i64::from(rate.burst) - 1);
        let _turn = self.write_turn().await;
        let row = sqlx::query(
            "INSERT INTO attempt_throttle (scope, network, tat_ms) VALUES ($1, $2, $3 + $4)
             ON CONFLICT (scope, network) DO UPDATE
             SET tat_ms = (CASE WHEN attempt_throttle.tat_ms > $3 THEN attempt_throttle.tat_ms ELSE $3 END) + $4
             WHERE (CASE WHEN attempt_throttle.tat_ms > $3 THEN attempt_throttle.tat_ms ELSE $3 END) - $3 <= $5
             RETURNING tat_ms",
        )
        .bind(scope)
        .bind(network)
        .bind(now_ms)
        .bind(rate.interval_ms)
        .bind(tolerance)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.is_some())
    }

    /// Forgets buckets that are full again (their time has passed): they mean the same as none.
    pub async fn prune_throttle(&self, now_ms: i64) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query("DELETE FROM attempt_throttle WHERE tat_ms < $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
