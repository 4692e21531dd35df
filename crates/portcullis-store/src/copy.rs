//! Moving a store to another database (`portcullis store copy`) and taking an online backup of
//! a SQLite store (`portcullis store backup`).
//!
//! A copy reads the source from one snapshot (a read transaction: SQLite's WAL snapshot,
//! PostgreSQL's `REPEATABLE READ`), so a live store copies consistently while it serves, and
//! writes the target in one transaction: the target holds all of it or none of it. Then every
//! table is counted on both sides. Every column of the schema is `TEXT` or `BIGINT` (the
//! portable subset the migrations keep to), which is what makes one copy routine serve both
//! directions.

// The only names spliced into SQL here are the tables of `TABLES` and column names read from
// the schema's catalog, each checked to be a plain identifier; every value is a bind parameter.
use sqlx::{AssertSqlSafe, Row};

use crate::{Backend, Store, StoreError};

/// Every table, parents before children: foreign keys only point back up this list. The
/// store's tests check it against a freshly migrated database, so a new table cannot be
/// forgotten here.
pub(crate) const TABLES: &[&str] = &[
    "instance_settings",
    "users",
    "user_groups",
    "group_members",
    "clients",
    "resource_servers",
    "signing_keys",
    "sessions",
    "auth_codes",
    "refresh_tokens",
    "revocations",
    "login_failures",
    "policy_versions",
    "acme_accounts",
    "acme_certificates",
    "acme_challenges",
    "acme_leases",
    "mail_outbox",
    "account_codes",
    "mfa_totp",
    "mfa_recovery_codes",
    "webauthn_credentials",
    "webauthn_ceremonies",
    "federated_identities",
    "audit_events",
    "quota_usage",
    "attempt_throttle",
];

/// Rows per `INSERT` (parameters stay far below both backends' limits).
const BATCH: usize = 200;

/// A column's name and whether it holds integers (else text).
type Column = (String, bool);

/// One value on its way from one database to the other.
enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
}

impl Store {
    /// Copies every row of this store into `target`, which must be migrated and hold no rows.
    /// Returns each table with its row count, checked equal on both sides after the commit.
    pub async fn copy_into(&self, target: &Store) -> Result<Vec<(&'static str, u64)>, StoreError> {
        let mut source = match self.backend {
            Backend::Sqlite => self.pool.begin().await?,
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        };
        let mut tx = target.begin_write().await?;
        // Opening a store writes one marker row (`schema_owner`, see `open`); the source has
        // its own, which the copy brings.
        sqlx::query("DELETE FROM instance_settings WHERE name = 'schema_owner'")
            .execute(&mut *tx)
            .await?;
        for table in TABLES {
            let rows: i64 = sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if rows > 0 {
                return Err(StoreError::Refused(format!(
                    "the target database is not empty ({table} has {rows} rows): copy into a new, empty database"
                )));
            }
        }
        let mut counts = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let columns = target.columns(table).await?;
            if columns.is_empty() {
                return Err(StoreError::Migration(format!(
                    "the target database has no table {table}"
                )));
            }
            let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
            let select = format!("SELECT {} FROM {table}", names.join(", "));
            let rows = sqlx::query(AssertSqlSafe(select))
                .fetch_all(&mut *source)
                .await?;
            let mut copied = 0u64;
            for batch in rows.chunks(BATCH) {
                let mut cells = Vec::with_capacity(batch.len() * columns.len());
                for row in batch {
                    for (i, (_, int)) in columns.iter().enumerate() {
                        cells.push(if *int {
                            Cell::Int(row.try_get::<Option<i64>, _>(i)?)
                        } else {
                            Cell::Text(row.try_get::<Option<String>, _>(i)?)
                        });
                    }
                }
                let insert = insert_sql(table, &names, batch.len());
                let mut query = sqlx::query(AssertSqlSafe(insert));
                for cell in cells {
                    query = match cell {
                        Cell::Int(v) => query.bind(v),
                        Cell::Text(v) => query.bind(v),
                    };
                }
                query.execute(&mut *tx).await?;
                copied += batch.len() as u64;
            }
            counts.push((*table, copied));
        }
        tx.commit().await?;
        source.commit().await?;
        for (table, copied) in &counts {
            let rows: i64 = sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&target.pool)
                .await?
                .try_get(0)?;
            if u64::try_from(rows).ok() != Some(*copied) {
                return Err(StoreError::Corrupt(format!(
                    "after the copy {table} holds {rows} rows in the target, {copied} were copied"
                )));
            }
        }
        Ok(counts)
    }

    /// The columns of `table` in this database, in their order.
    pub(crate) async fn columns(&self, table: &str) -> Result<Vec<Column>, StoreError> {
        let rows = match self.backend {
            Backend::Sqlite => {
                sqlx::query("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
                    .bind(table)
                    .fetch_all(&self.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::query(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1
                     ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                let name: String = r.try_get(0)?;
                let kind: String = r.try_get(1)?;
                let kind = kind.to_ascii_lowercase();
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(StoreError::Migration(format!(
                        "{table} has a column named {name:?}, which is not one of portcullis' own"
                    )));
                }
                let int = matches!(kind.as_str(), "bigint" | "integer" | "int8");
                if !int && kind != "text" {
                    return Err(StoreError::Migration(format!(
                        "{table}.{name} has type {kind}; a copy knows only text and bigint columns"
                    )));
                }
                Ok((name, int))
            })
            .collect()
    }

    /// Writes a consistent copy of this SQLite store to `path`, a file that must not exist,
    /// while the store stays in use (`VACUUM INTO`: one read snapshot, compacted). The copy is
    /// a complete store: point `store.url` at it (with the same instance secret, if one is
    /// configured) to restore.
    pub async fn backup_to(&self, path: &std::path::Path) -> Result<u64, StoreError> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Refused(
                "`store backup` copies SQLite stores; for PostgreSQL use its own tools: pg_dump --format=custom --file=portcullis.dump DBNAME (restore with pg_restore into an empty database)".into(),
            ));
        }
        if path.exists() {
            return Err(StoreError::Refused(format!(
                "{} exists; a backup is written to a new file only",
                path.display()
            )));
        }
        let target = path.to_str().ok_or_else(|| {
            StoreError::Refused(format!("{} is not a UTF-8 path", path.display()))
        })?;
        sqlx::query("VACUUM INTO $1")
            .bind(target)
            .execute(&self.pool)
            .await?;
        Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
    }

    /// The tables a freshly migrated database has (besides sqlx's own bookkeeping).
    #[cfg(test)]
    pub(crate) async fn table_names(&self) -> Result<Vec<String>, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations'"
            }
            Backend::Postgres => {
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'"
            }
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }
}

/// `INSERT INTO table (a, b) VALUES ($1, $2), ($3, $4), …` for `rows` rows.
fn insert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns.len() {
            if c > 0 {
                sql.push_str(", ");
            }
            n += 1;
            sql.push_str(&format!("${n}"));
        }
        sql.push(')');
    }
    sql
}
