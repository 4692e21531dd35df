//! Telling every node at once that shared state changed: PostgreSQL `LISTEN/NOTIFY` on the
//! channel `portcullis`, with the kind of change as the payload. Writers of revocations, policy
//! versions and signing keys notify (inside their transaction where they have one, so the
//! notification goes out with the commit); each node listens and re-reads at once instead of at
//! its next poll. Nodes keep polling as well: a notification sent while a listener was
//! reconnecting is lost, and the listener says so ([`Change::Missed`]) so the node re-reads
//! everything. SQLite has one node per file: nothing to tell.

use std::time::Duration;

use crate::{Backend, Store, StoreError};

/// The notification channel.
const CHANNEL: &str = "portcullis";

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Revocations,
    Policies,
    Keys,
    /// The listening connection was lost and made again: anything may have changed meanwhile.
    Missed,
}

impl Change {
    fn payload(self) -> &'static str {
        match self {
            Change::Revocations => "revocations",
            Change::Policies => "policies",
            Change::Keys => "keys",
            Change::Missed => "missed",
        }
    }
}

/// Notifies the other nodes of `change` on this connection (in its transaction, if one is open:
/// PostgreSQL sends it at commit, and not at all on rollback).
pub(crate) async fn notify_on(
    conn: &mut sqlx::AnyConnection,
    change: Change,
) -> Result<(), StoreError> {
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(change.payload())
            .execute(conn)
            .await?;
    }
    Ok(())
}

impl Store {
    /// Notifies the other nodes of `change` (after a write that had no transaction of its own).
    pub(crate) async fn notify(&self, change: Change) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(change.payload())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Listens for the changes other nodes announce; `None` on SQLite.
    pub async fn listen(&self) -> Option<Changes> {
        let url = self.listen_url.clone()?.0;
        Some(Changes {
            url,
            listener: None,
        })
    }
}

/// A node's subscription to changes, reconnecting by itself.
pub struct Changes {
    url: std::sync::Arc<str>,
    listener: Option<sqlx::postgres::PgListener>,
}

impl std::fmt::Debug for Changes {
    // Not the URL: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("listening", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl Changes {
    /// The next change. After a lost connection (or before the first one is made) it answers
    /// [`Change::Missed`] once the listener is connected again, then the changes that follow.
    pub async fn next(&mut self) -> Change {
        loop {
            let Some(listener) = &mut self.listener else {
                match sqlx::postgres::PgListener::connect(&self.url).await {
                    Ok(mut l) => match l.listen(CHANNEL).await {
                        Ok(()) => {
                            self.listener = Some(l);
                            return Change::Missed;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot LISTEN for changes; polling only, retrying")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot connect to listen for changes; polling only, retrying")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            match listener.try_recv().await {
                Ok(Some(n)) => match n.payload() {
                    "revocations" => return Change::Revocations,
                    "policies" => return Change::Policies,
                    "keys" => return Change::Keys,
                    _ => continue,
                },
                // The connection dropped and sqlx made it again: notifications were lost.
                Ok(None) => return Change::Missed,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection that listens for changes; polling only, reconnecting");
                    self.listener = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
