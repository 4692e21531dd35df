//! Whether the database answers, known without waiting for it.
//!
//! When PostgreSQL goes away, every query waits for a pool connection until `acquire_timeout`
//! (sqlx keeps retrying the connect). A request path that asked the database each time would hang
//! for seconds and then fail; instead a monitor probes the database over a connection of its own
//! (outside the pool, so a busy pool never looks like an outage) a few times a second, and callers
//! ask [`Store::is_available`] first: while the store is known to be down they answer "try again
//! later" at once, and they recover by themselves when the probe succeeds again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{ConnectOptions, Connection};

use crate::{Backend, Store, StoreError};

/// How often the monitor probes, and how long one probe may take.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Shared by every clone of a [`Store`].
#[derive(Debug, Default)]
pub(crate) struct Availability {
    down: AtomicBool,
    monitored: AtomicBool,
}

impl Store {
    /// False while the monitor (see [`Store::monitor_availability`]) finds the database
    /// unreachable. Without a monitor (SQLite, CLI commands) always true.
    pub fn is_available(&self) -> bool {
        !self.availability.down.load(Ordering::Acquire)
    }

    /// Starts probing the database in the background (PostgreSQL only: a SQLite file does not go
    /// away). Idempotent; the task ends with the process.
    pub fn monitor_availability(&self) {
        if self.backend != Backend::Postgres
            || self.availability.monitored.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let options = self.pool.connect_options();
        let availability: Arc<Availability> = self.availability.clone();
        let location = self.location.clone();
        tokio::spawn(async move {
            let mut conn: Option<sqlx::AnyConnection> = None;
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ok = tokio::time::timeout(PROBE_TIMEOUT, async {
                    if conn.is_none() {
                        conn = Some(options.connect().await?);
                    }
                    match conn.as_mut() {
                        Some(c) => c.ping().await,
                        None => Ok(()),
                    }
                })
                .await
                .is_ok_and(|r| r.is_ok());
                if !ok {
                    // Reconnect from scratch next time: the old connection may be half dead.
                    if let Some(c) = conn.take() {
                        drop(tokio::time::timeout(PROBE_TIMEOUT, c.close()).await);
                    }
                }
                let was_down = availability.down.swap(!ok, Ordering::AcqRel);
                match (was_down, ok) {
                    (false, false) => {
                        tracing::error!(store = %location, "the database does not answer; portcullis' own endpoints answer 503 until it does (the gateway keeps serving Bearer tokens)")
                    }
                    (true, true) => tracing::info!(store = %location, "the database answers again"),
                    _ => {}
                }
            }
        });
    }
}

impl StoreError {
    /// True when the database could not be reached or stopped answering (the store is down, not
    /// the request wrong): callers answer 503 "try again later", not 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } => true,
            StoreError::Database(e) => match e {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_) => true,
                // SQLSTATE class 08 (connection exception) and 57P0x (server shutting down,
                // cannot connect now).
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
                _ => false,
            },
            _ => false,
        }
    }
}
