//! Keeping what the hot path reads fresh: the policy documents in force and the revocation set,
//! re-read from the store every `gateway.refresh_interval` (500 ms: a change reaches every node
//! within a second) and at once when another node announces a change (PostgreSQL
//! `LISTEN/NOTIFY`, [`Gateway::changed_elsewhere`]), and the external issuers' keys at start. The
//! request path itself never reads the store.

use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::{PolicySet, parse_file};
use portcullis_store::Store;

use crate::Gateway;
use crate::authn::RevokedSet;

/// Where the last reads left off.
#[derive(Default)]
struct RefreshState {
    policy_version: i64,
    revocations_since: Option<i64>,
    reads: u64,
}

impl Gateway {
    /// Loads policies and revocations now, then keeps them fresh (every 500 ms) in the background.
    pub async fn spawn_refresh(
        self: &Arc<Self>,
        store: Store,
    ) -> Result<(), portcullis_store::StoreError> {
        let mut state = RefreshState::default();
        self.refresh(&store, &mut state).await?;
        // External issuers' keys: fetched now if they answer; otherwise on first use.
        for ext in self.auth.external.values() {
            ext.refresh().await;
        }
        let gw = Arc::downgrade(self);
        let wake = self.wake.clone();
        let every = self
            .settings
            .refresh_interval
            .max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = wake.notified() => {}
                }
                let Some(gw) = gw.upgrade() else { return };
                if gw
                    .reread_all
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    state.revocations_since = None;
                }
                tracing::trace!("gateway refresh");
                if let Err(e) = gw.refresh(&store, &mut state).await {
                    // Keep serving with what is in memory; revocations are re-read in full next time.
                    tracing::warn!(error = %e, "gateway could not refresh policies or revocations");
                    state.revocations_since = None;
                }
            }
        });
        Ok(())
    }

    /// Adds the quota counts not yet in the store (at shutdown, after the last request: the
    /// refresh task adds them only every 500 ms).
    pub async fn flush_quotas(&self, store: &Store) {
        if let Err(e) = self.quotas.sync(store, self.clock.now()).await {
            tracing::warn!(error = %e, "the last quota counts could not be added to the store");
        }
    }

    async fn refresh(
        &self,
        store: &Store,
        state: &mut RefreshState,
    ) -> Result<(), portcullis_store::StoreError> {
        let version = store.policy_version().await?;
        if version != state.policy_version {
            if let Some(current) = store.current_policy().await? {
                match parse_file(&current.document) {
                    Ok(docs) => {
                        self.set_policies(PolicySet::new(docs, current.version));
                        tracing::info!(version = current.version, "policies in force");
                    }
                    Err(e) => {
                        tracing::error!(version = current.version, error = %e, "stored policy version is invalid; keeping the previous one")
                    }
                }
            }
            state.policy_version = version;
        }
        let now = self.clock.now();
        if let Err(e) = self.quotas.sync(store, now).await {
            tracing::warn!(error = %e, "quota counts could not be added to the store; retrying");
        }
        // Incremental reads, with a full re-read every minute to forget expired entries.
        let full = state.revocations_since.is_none() || state.reads.is_multiple_of(120);
        let since = if full {
            0
        } else {
            state.revocations_since.unwrap_or(0) - 2
        };
        let rows = store.revocations_since(since, now).await?;
        let mut set: RevokedSet = if full {
            RevokedSet::default()
        } else {
            (*self.auth.revocations.snapshot()).clone()
        };
        let mut latest = state.revocations_since.unwrap_or(0);
        let before = set.len();
        for (kind, value, _expires, created) in rows {
            if let Err(unknown) = set.insert(&kind, value) {
                // Written by a newer portcullis, perhaps: say so rather than drop it silently.
                tracing::warn!(kind = %unknown.0, "revocation of an unknown kind ignored; is a newer portcullis writing to this store?");
            }
            latest = latest.max(created);
        }
        if full || set.len() != before {
            tracing::debug!(revoked = set.len(), "revocation set updated");
            self.auth.revocations.replace(set);
        }
        state.revocations_since = Some(latest.max(now - 5));
        state.reads += 1;
        Ok(())
    }
}
