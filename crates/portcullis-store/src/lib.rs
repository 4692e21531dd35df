//! Persistence for portcullis: one [`Store`] over SQLite (default, one file) or PostgreSQL
//! (several nodes sharing one database).
//!
//! This crate owns the schema, its embedded migrations and every SQL statement. It knows nothing
//! of HTTP, passwords or tokens: callers validate input and pass in the current time, so the
//! store never reads a clock of its own. The SQL is written once, in the subset both backends
//! share, and runs through sqlx's `Any` driver; backend-specific set-up (SQLite pragmas, the
//! migration lock) lives in [`open`](Store::open) only.

mod clients;
mod error;
mod groups;
mod keys;
mod migrate;
mod open;
mod sessions;
mod settings;
mod users;

#[cfg(test)]
mod tests;

pub use clients::{Client, ResourceServer};
pub use error::StoreError;
pub use groups::{Group, NewGroup};
pub use keys::StoredKey;
pub use open::{Backend, SqliteSync, StoreOptions};
pub use sessions::{AuthCode, CodeUse, RefreshToken, Rotation, Session};
pub use users::{NewUser, User, UserStatus};

use sqlx::AnyPool;

/// A handle on the database. Cheap to clone; all clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Where the data lives, with any password removed: safe to log.
    location: String,
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
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
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
