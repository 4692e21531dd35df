//! Opening a store: URL parsing, connection pool, SQLite pragmas, migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Executor;
use sqlx::any::AnyPoolOptions;

use crate::{Store, StoreError, migrate};

/// The database behind a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file in WAL mode: the default, nothing to install.
    Sqlite,
    /// A PostgreSQL server: for several portcullis nodes sharing one database.
    Postgres,
}

/// How hard SQLite syncs to disk on commit (`PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteSync {
    /// WAL + NORMAL: a committed transaction survives a crash of the process; the last few may
    /// be lost on power failure. The file is never corrupted.
    #[default]
    Normal,
    /// WAL + FULL: every commit is synced; survives power failure, costs an fsync per commit.
    Full,
}

/// Where and how to open the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `sqlite:PATH`, `sqlite://PATH`, `postgres://…` or `postgresql://…`.
    pub url: String,
    /// Upper bound on pooled connections.
    pub max_connections: u32,
    /// How long to wait for the database at start-up before reporting it unreachable.
    pub connect_timeout: Duration,
    /// How long a request waits for a pooled connection: past it, the store is unavailable
    /// (the request answers 503), so a database that goes away mid-request does not hold callers
    /// for the whole connect timeout.
    pub acquire_timeout: Duration,
    /// SQLite only.
    pub sqlite_sync: SqliteSync,
}

impl StoreOptions {
    /// Options for a SQLite file with default settings.
    pub fn sqlite(path: &Path) -> Self {
        StoreOptions {
            url: format!("sqlite://{}", path.display()),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(1),
            sqlite_sync: SqliteSync::Normal,
        }
    }
}

/// A store URL, understood.
enum Target {
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        url: String,
        host: String,
        location: String,
    },
}

fn parse_target(url: &str) -> Result<Target, StoreError> {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(StoreError::InvalidUrl(
                "`sqlite:` needs a file path, e.g. sqlite:///var/lib/portcullis/portcullis.db"
                    .into(),
            ));
        }
        if path.contains(['?', '#']) || path == ":memory:" {
            return Err(StoreError::InvalidUrl(format!(
                "{path:?} is not a plain file path; portcullis manages SQLite options itself"
            )));
        }
        return Ok(Target::Sqlite {
            path: PathBuf::from(path),
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let parsed = url::Url::parse(url)
            .map_err(|e| StoreError::InvalidUrl(format!("cannot parse the PostgreSQL URL: {e}")))?;
        let host_param = parsed
            .query_pairs()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| v.into_owned());
        let host = match (parsed.host_str(), host_param) {
            (Some(h), _) if !h.is_empty() => h.to_owned(),
            (_, Some(h)) => h,
            _ => "localhost".to_owned(),
        };
        let port = parsed.port().unwrap_or(5432);
        let host = format!("{host}:{port}");
        let location = format!("postgres://{host}{}", parsed.path());
        return Ok(Target::Postgres {
            url: url.to_owned(),
            host,
            location,
        });
    }
    let scheme = url.split(':').next().unwrap_or_default();
    Err(StoreError::InvalidUrl(format!(
        "unsupported scheme {scheme:?}: use sqlite:///path/to/file.db or postgres://user@host/db"
    )))
}

impl Store {
    /// Opens (creating if needed) the store and brings its schema up to date.
    ///
    /// Fails within `connect_timeout` when a database server does not answer, naming the host.
    pub async fn open(options: &StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        match parse_target(&options.url)? {
            Target::Sqlite { path } => open_sqlite(options, path).await,
            Target::Postgres {
                url,
                host,
                location,
            } => open_postgres(options, &url, host, location).await,
        }
    }
}

async fn open_sqlite(options: &StoreOptions, path: PathBuf) -> Result<Store, StoreError> {
    let not_writable = |reason: String| StoreError::NotWritable {
        path: path.clone(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| not_writable(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    if path.is_dir() {
        return Err(not_writable("it is a directory".into()));
    }
    create_private(&path).map_err(|e| not_writable(e.to_string()))?;
    let sync = options.sqlite_sync;
    let url = format!("sqlite://{}?mode=rwc", path.display());
    // One direct connection first, so a read-only file is reported at once with SQLite's own
    // words; the pool would retry the failing set-up until its timeout.
    let mut probe = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
        .await
        .map_err(|e| sqlite_error(&path, e))?;
    let probed = sqlite_setup(&mut probe, sync).await;
    let _ = sqlx::Connection::close(probe).await;
    probed.map_err(|e| sqlite_error(&path, e))?;
    let pool = AnyPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .after_connect(move |conn, _meta| Box::pin(sqlite_setup(conn, sync)))
        .connect(&url)
        .await
        .map_err(|e| sqlite_error(&path, e))?;

    let store = Store {
        pool,
        backend: super::Backend::Sqlite,
        location: path.display().to_string(),
        write_lock: Default::default(),
        availability: Default::default(),
        listen_url: None,
    };
    // Two processes starting on one new file must not both create the schema: an exclusive
    // lock on a file beside the database serializes migrations (SQLite has no advisory locks).
    let lock_path = path.with_extension("migrate.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| not_writable(format!("cannot open {}: {e}", lock_path.display())))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| StoreError::Migration(format!("migration lock task failed: {e}")))?
        .map_err(|e| not_writable(format!("cannot lock {}: {e}", lock_path.display())))?;
    let migrated = migrate::run(&store).await;
    drop(lock);
    migrated.map_err(|e| match e {
        StoreError::Database(db) => sqlite_error(&path, db),
        other => other,
    })?;
    store.probe_write().await.map_err(|e| match e {
        StoreError::Database(db) => sqlite_error(&path, db),
        other => other,
    })?;
    Ok(store)
}

/// Per-connection SQLite settings.
async fn sqlite_setup(conn: &mut sqlx::AnyConnection, sync: SqliteSync) -> Result<(), sqlx::Error> {
    // WAL lets readers and one writer work at once, across processes too.
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute(match sync {
        SqliteSync::Normal => "PRAGMA synchronous = NORMAL",
        SqliteSync::Full => "PRAGMA synchronous = FULL",
    })
    .await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    // Another process may hold the write lock briefly: wait rather than fail.
    conn.execute("PRAGMA busy_timeout = 5000").await?;
    Ok(())
}

/// Creates the database file readable by its owner only (it holds password hashes and the
/// instance secret); SQLite gives its -wal and -shm files the same mode. An existing file is
/// left as it is.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Turns SQLite's "cannot open" and "read-only" failures into a message about the file.
fn sqlite_error(path: &Path, err: sqlx::Error) -> StoreError {
    const SQLITE_READONLY: i32 = 8;
    const SQLITE_CANTOPEN: i32 = 14;
    const SQLITE_PERM: i32 = 3;
    if let sqlx::Error::Database(db) = &err {
        let primary = db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff);
        if matches!(
            primary,
            Some(SQLITE_READONLY | SQLITE_CANTOPEN | SQLITE_PERM)
        ) {
            return StoreError::NotWritable {
                path: path.to_owned(),
                reason: db.message().to_owned(),
            };
        }
    }
    if let sqlx::Error::Io(io) = &err {
        return StoreError::NotWritable {
            path: path.to_owned(),
            reason: io.to_string(),
        };
    }
    StoreError::Database(err)
}

async fn open_postgres(
    options: &StoreOptions,
    url: &str,
    host: String,
    location: String,
) -> Result<Store, StoreError> {
    let unreachable = |reason: String| StoreError::Unreachable {
        host: host.clone(),
        reason,
    };
    let timed_out = || {
        unreachable(format!(
            "no answer within {} s",
            options.connect_timeout.as_secs_f32()
        ))
    };
    // One direct connection first: the pool retries failed connects until its timeout, which
    // would turn "connection refused" or "password authentication failed" into a vague
    // "timed out". The outer timeout also covers a server that accepts and never speaks.
    let probe = <sqlx::AnyConnection as sqlx::Connection>::connect(url);
    match tokio::time::timeout(options.connect_timeout, probe).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => return Err(unreachable(describe_connect_error(&e))),
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
    let connect = AnyPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .connect(url);
    let pool = match tokio::time::timeout(options.connect_timeout, connect).await {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => return Err(unreachable(describe_connect_error(&e))),
        Ok(Ok(pool)) => pool,
    };
    let store = Store {
        pool,
        backend: Backend::Postgres,
        location,
        write_lock: Default::default(),
        availability: Default::default(),
        listen_url: Some(crate::ListenUrl(url.into())),
    };
    migrate::run(&store).await?;
    store.probe_write().await?;
    Ok(store)
}

/// A connection error in words, never including the URL (it may hold a password).
fn describe_connect_error(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        sqlx::Error::Tls(e) => format!("TLS failed: {e}"),
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Configuration(e) => format!("bad connection settings: {e}"),
        other => other.to_string(),
    }
}

impl Store {
    /// One real write, so a read-only file or a read-only database role is reported at start
    /// rather than at the first sign-in.
    async fn probe_write(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instance_settings (name, value, created_at) VALUES ('schema_owner', 'portcullis', 0)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn postgres_location_hides_password() {
        let Ok(Target::Postgres { host, location, .. }) =
            parse_target("postgres://bob:hunter2@db.internal:6543/portcullis")
        else {
            panic!("expected a postgres target");
        };
        assert_eq!(host, "db.internal:6543");
        assert_eq!(location, "postgres://db.internal:6543/portcullis");
    }

    #[test]
    fn unknown_scheme_is_rejected() {
        assert!(matches!(
            parse_target("mysql://x/y"),
            Err(StoreError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_target("sqlite:"),
            Err(StoreError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_target("sqlite::memory:"),
            Err(StoreError::InvalidUrl(_))
        ));
    }

    #[test]
    fn sqlite_forms() {
        for url in ["sqlite:///tmp/a.db", "sqlite:/tmp/a.db"] {
            let Ok(Target::Sqlite { path }) = parse_target(url) else {
                panic!("{url}")
            };
            assert_eq!(path, PathBuf::from("/tmp/a.db"));
        }
    }
}
