//! Persistence for portcullis: one [`Store`] over SQLite (default, one file) or PostgreSQL
//! (several nodes sharing one database).
//!
//! This crate owns the schema, its embedded migrations and every SQL statement. It knows nothing
//! of HTTP, passwords or tokens: callers validate input and pass in the current time, so the
//! store never reads a clock of its own. The SQL is written once, in the subset both backends
//! share, and runs through sqlx's `Any` driver; backend-specific set-up (SQLite pragmas, the
//! migration lock) lives in [`open`](Store::open) only.

mod accounts;
mod acme;
mod audit;
mod availability;
mod changes;
mod clients;
mod copy;
mod error;
mod federation;
mod groups;
mod keys;
mod mfa;
mod migrate;
mod open;
mod policies;
mod quotas;
mod sessions;
mod settings;
mod throttle;
mod users;
mod webauthn;

#[cfg(test)]
mod tests;

pub use accounts::{CodePurpose, NewCode, NewMail, OutboxCounts, QueuedMail, UsedCode};
pub use acme::{AcmeCertificate, AcmeChallenge};
pub use audit::{AuditEvent, AuditFilter, AuditRecord, AuditVerdict, GENESIS};
pub use changes::{Change, Changes};
pub use clients::{Client, ResourceServer};
pub use error::StoreError;
pub use federation::{FederatedIdentity, FederatedProfile};
pub use groups::{Group, NewGroup};
pub use keys::StoredKey;
pub use mfa::TotpFactor;
pub use open::{Backend, SqliteSync, StoreOptions};
pub use policies::PolicyVersion;
pub use sessions::{AuthCode, CodeUse, RefreshToken, Rotation, Session};
pub use throttle::ThrottleRate;
pub use users::{NewUser, User, UserStatus};
pub use webauthn::StoredCredential;

use std::sync::Arc;

use sqlx::AnyPool;

/// A handle on the database. Cheap to clone; all clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Where the data lives, with any password removed: safe to log.
    location: String,
    /// SQLite allows one writer at a time. Writers of this process queue here instead of
    /// contending inside SQLite, whose busy handler sleeps in steps of up to 100 ms: measured,
    /// queueing raised refresh-token throughput and cut its p99 (see bench/README.md).
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// Whether the database answers (see [`Store::monitor_availability`]).
    availability: Arc<availability::Availability>,
    /// PostgreSQL: the URL a listener for other nodes' changes connects to ([`Store::listen`]).
    listen_url: Option<ListenUrl>,
}

/// A database URL, which may hold a password: never shown by `Debug`.
#[derive(Clone)]
struct ListenUrl(Arc<str>);

impl std::fmt::Debug for ListenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenUrl(..)")
    }
}

/// A write transaction; on SQLite it also holds this process's write turn.
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

impl WriteTx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl Store {
    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database location (a file path or a `postgres://host:port/db` URL without
    /// credentials), safe to show to users and logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Answers when the database answers a trivial query: what `/readyz` reports.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection. Further use returns errors.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a transaction that is going to write.
    ///
    /// SQLite's default `BEGIN` takes the write lock only at the first write; a transaction that
    /// reads first and another process that writes in between then fail with `SQLITE_BUSY`
    /// without waiting. `BEGIN IMMEDIATE` takes the lock up front and waits for it instead.
    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let turn = self.write_turn().await;
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// On SQLite, waits for this process's write turn (hold it while writing).
    async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_lock.clone().lock_owned().await),
            Backend::Postgres => None,
        }
    }
}

impl Store {
    /// Verifies the database: SQLite's `PRAGMA integrity_check`, or a round trip to PostgreSQL.
    pub async fn integrity_check(&self) -> Result<(), StoreError> {
        use sqlx::Row;
        match self.backend {
            Backend::Sqlite => {
                let rows = sqlx::query("PRAGMA integrity_check")
                    .fetch_all(&self.pool)
                    .await?;
                let report: Vec<String> = rows
                    .iter()
                    .map(|r| r.try_get::<String, _>(0))
                    .collect::<Result<_, _>>()?;
                if report == ["ok"] {
                    Ok(())
                } else {
                    Err(StoreError::Corrupt(report.join("; ")))
                }
            }
            Backend::Postgres => self.ping().await,
        }
    }
}
