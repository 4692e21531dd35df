//! The audit log: every administrative change and security event, append-only and
//! hash-chained. Row `n`'s hash is SHA-256 over row `n - 1`'s hash and row `n`'s fields, so an
//! edited, inserted or deleted row breaks the chain from there on and [`Store::verify_audit`]
//! names it. Pruning old rows (retention) keeps the last pruned hash as the anchor the first
//! remaining row must continue from.
//!
//! A chain in the same database cannot stop someone who can rewrite all of it; every event is
//! also one JSON log line with its hash (see the idp crate's `audit` module), which is the copy
//! to keep elsewhere.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError};

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Where the hash of the last pruned event is kept.
const ANCHOR: &str = "audit_anchor";

/// An event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub kind: String,
    pub actor: String,
    pub source: String,
    pub subject: String,
    /// A JSON object.
    pub detail: serde_json::Value,
    pub at: i64,
}

/// A recorded event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub actor: String,
    pub source: String,
    pub subject: String,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// Which events to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Events about this subject, or by this actor.
    pub who: Option<String>,
    /// Kinds starting with this (`signin.`, `user.create`).
    pub kind_prefix: Option<String>,
    /// Only events after this sequence number (cursor).
    pub after: Option<i64>,
    /// Only events before this sequence number (cursor of a newest-first listing).
    pub before: Option<i64>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    pub limit: i64,
}

/// What [`Store::verify_audit`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Every row continues the chain; the head's sequence number and hash.
    Intact {
        events: i64,
        head: Option<(i64, String)>,
    },
    /// The chain breaks at this row (edited, inserted, or a row before it deleted).
    Broken { seq: i64, reason: String },
}

/// The hash of event `seq`: over the previous hash and the event's fields (`text` is kind,
/// actor, source, subject and detail).
fn chain_hash(prev: &str, seq: i64, at: i64, text: [&str; 5]) -> String {
    let [kind, actor, source, subject, detail] = text;
    let fields = serde_json::json!([seq, at, kind, actor, source, subject, detail]).to_string();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(b"\n");
    ctx.update(fields.as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn record_from_row(r: &AnyRow) -> Result<AuditRecord, StoreError> {
    let detail: String = r.try_get("detail")?;
    Ok(AuditRecord {
        seq: r.try_get("seq")?,
        at: r.try_get("at")?,
        kind: r.try_get("kind")?,
        actor: r.try_get("actor")?,
        source: r.try_get("source")?,
        subject: r.try_get("subject")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

impl Store {
    /// Appends an event to the chain and returns it as recorded. Concurrent appenders (several
    /// nodes) race for the next sequence number; the loser retries.
    pub async fn append_audit(&self, e: &AuditEvent) -> Result<AuditRecord, StoreError> {
        let detail = e.detail.to_string();
        let mut last_error = None;
        for _ in 0..20 {
            let mut tx = self.begin_write().await?;
            let head = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
            let (seq, prev) = match head {
                Some(r) => (
                    r.try_get::<i64, _>("seq")? + 1,
                    r.try_get::<String, _>("hash")?,
                ),
                None => {
                    // An empty table after pruning continues from the anchor.
                    let anchor = sqlx::query("SELECT value FROM instance_settings WHERE name = $1")
                        .bind(ANCHOR)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get::<String, _>("value"))
                        .transpose()?;
                    match anchor.as_deref().and_then(|a| a.split_once(':')) {
                        Some((s, h)) => (s.parse::<i64>().unwrap_or(0) + 1, h.to_owned()),
                        None => (1, GENESIS.to_owned()),
                    }
                }
            };
            let hash = chain_hash(
                &prev,
                seq,
                e.at,
                [&e.kind, &e.actor, &e.source, &e.subject, &detail],
            );
            let inserted = sqlx::query(
                "INSERT INTO audit_events (seq, at, kind, actor, source, subject, detail, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(seq)
            .bind(e.at)
            .bind(&e.kind)
            .bind(&e.actor)
            .bind(&e.source)
            .bind(&e.subject)
            .bind(&detail)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *tx)
            .await;
            match inserted {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(AuditRecord {
                        seq,
                        at: e.at,
                        kind: e.kind.clone(),
                        actor: e.actor.clone(),
                        source: e.source.clone(),
                        subject: e.subject.clone(),
                        detail: e.detail.clone(),
                        prev_hash: prev,
                        hash,
                    });
                }
                Err(err) if crate::error::is_unique_violation(&err) => {
                    last_error = Some(err);
                    continue;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(last_error.map_or_else(
            || StoreError::Corrupt("the audit log could not be appended to".into()),
            StoreError::from,
        ))
    }

    /// Events matching `filter`, oldest first.
    pub async fn audit_events(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = format!(
            "SELECT * FROM audit_events
             WHERE at >= $1 AND at <= $2 AND seq > $3 AND seq < $8
               AND ($4 = '' OR subject = $4 OR actor = $4)
               AND ($5 = '' OR kind = $5 OR kind LIKE $6 ESCAPE '\\')
             ORDER BY seq {} LIMIT $7",
            if f.newest_first { "DESC" } else { "ASC" }
        );
        let prefix = f.kind_prefix.clone().unwrap_or_default();
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(f.since.unwrap_or(i64::MIN))
            .bind(f.until.unwrap_or(i64::MAX))
            .bind(f.after.unwrap_or(0))
            .bind(f.who.clone().unwrap_or_default())
            .bind(prefix.clone())
            .bind(format!(
                "{}%",
                prefix
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            ))
            .bind(f.limit.clamp(1, 10_000))
            .bind(f.before.unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Walks the whole chain.
    pub async fn verify_audit(&self) -> Result<AuditVerdict, StoreError> {
        let anchor = self.setting(ANCHOR).await?;
        let (mut expect_seq, mut prev) = match anchor.as_deref().and_then(|a| a.split_once(':')) {
            Some((s, h)) => (s.parse::<i64>().unwrap_or(0) + 1, h.to_owned()),
            None => (1, GENESIS.to_owned()),
        };
        let mut events = 0;
        let mut head = None;
        let mut after = 0;
        loop {
            let rows =
                sqlx::query("SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT 1000")
                    .bind(after)
                    .fetch_all(&self.pool)
                    .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                let broken = |reason: &str| AuditVerdict::Broken {
                    seq,
                    reason: reason.to_owned(),
                };
                if seq != expect_seq {
                    return Ok(broken(&format!(
                        "expected event {expect_seq} next: an event was deleted or inserted"
                    )));
                }
                let stored_prev: String = row.try_get("prev_hash")?;
                if stored_prev != prev {
                    return Ok(broken("it does not continue the previous event's hash"));
                }
                let detail: String = row.try_get("detail")?;
                let (kind, actor, source, subject): (String, String, String, String) = (
                    row.try_get("kind")?,
                    row.try_get("actor")?,
                    row.try_get("source")?,
                    row.try_get("subject")?,
                );
                let hash = chain_hash(
                    &prev,
                    seq,
                    row.try_get("at")?,
                    [&kind, &actor, &source, &subject, &detail],
                );
                if hash != row.try_get::<String, _>("hash")? {
                    return Ok(broken(
                        "its fields do not match its hash: the row was edited",
                    ));
                }
                prev = hash;
                expect_seq = seq + 1;
                events += 1;
                head = Some((seq, prev.clone()));
                after = seq;
            }
        }
        Ok(AuditVerdict::Intact { events, head })
    }

    /// Deletes events older than `before`, keeping the newest deleted event's hash as the
    /// anchor the rest continue from. Returns how many were deleted.
    pub async fn prune_audit(&self, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let last = sqlx::query(
            "SELECT seq, hash FROM audit_events WHERE at < $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(before)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(last) = last else {
            return Ok(0);
        };
        let seq: i64 = last.try_get("seq")?;
        let hash: String = last.try_get("hash")?;
        let done = sqlx::query("DELETE FROM audit_events WHERE seq <= $1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO instance_settings (name, value, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(ANCHOR)
        .bind(format!("{seq}:{hash}"))
        .bind(before)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}
