//! The embedded schema migrations, shared by both backends.

use sqlx::SqlSafeStr;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};

use crate::{Store, StoreError};

/// Every migration, in order. Each file is portable SQL that runs on SQLite and PostgreSQL.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "user pool",
        include_str!("../migrations/0001_user_pool.sql"),
    ),
    (
        2,
        "identity provider",
        include_str!("../migrations/0002_identity_provider.sql"),
    ),
    (
        3,
        "policies",
        include_str!("../migrations/0003_policies.sql"),
    ),
    (
        4,
        "refresh rotation in milliseconds",
        include_str!("../migrations/0004_refresh_rotation_ms.sql"),
    ),
    (5, "acme", include_str!("../migrations/0005_acme.sql")),
    (
        6,
        "accounts",
        include_str!("../migrations/0006_accounts.sql"),
    ),
    (7, "mfa", include_str!("../migrations/0007_mfa.sql")),
    (
        8,
        "webauthn",
        include_str!("../migrations/0008_webauthn.sql"),
    ),
    (9, "audit", include_str!("../migrations/0009_audit.sql")),
    (
        10,
        "revisions",
        include_str!("../migrations/0010_revisions.sql"),
    ),
    (11, "quotas", include_str!("../migrations/0011_quotas.sql")),
    (
        12,
        "attempt throttle",
        include_str!("../migrations/0012_throttle.sql"),
    ),
    (
        13,
        "federation",
        include_str!("../migrations/0013_federation.sql"),
    ),
];

pub(crate) async fn run(store: &Store) -> Result<(), StoreError> {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                description.into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    let migrator = Migrator::with_migrations(migrations);
    migrator.run(&store.pool).await.map_err(|e| match e {
        MigrateError::Execute(db) | MigrateError::ExecuteMigration(db, _) => StoreError::Database(db),
        MigrateError::VersionMissing(v) => StoreError::Migration(format!(
            "the database has migration {v}, which this binary does not know: it was written by a newer portcullis. Upgrade this binary"
        )),
        MigrateError::VersionMismatch(v) => StoreError::Migration(format!(
            "migration {v} in the database differs from the one embedded in this binary"
        )),
        other => StoreError::Migration(other.to_string()),
    })
}
