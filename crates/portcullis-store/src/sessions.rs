//! Sign-in sessions, authorization codes, refresh tokens, revocations and sign-in throttling.
//! Every token and secret arrives here already hashed.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Store, StoreError};

/// A sign-in session at the identity provider (`sid` in tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub sid: String,
    pub user_id: String,
    pub auth_time: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// How the user signed in (RFC 8176 values: `pwd`, `otp`, `hwk`, `mfa`, ...).
    pub amr: Vec<String>,
}

/// An authorization code's grant, bound to client, redirect URI and PKCE challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthCode {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: String,
    pub sid: String,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub auth_time: i64,
    pub expires_at: i64,
}

/// What presenting a code found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeUse {
    /// First use: the grant.
    Fresh(AuthCode),
    /// Already used: a replay. The caller revokes what the first use issued.
    Replayed(AuthCode),
    Unknown,
}

/// A refresh token (its hash) and its grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshToken {
    pub token_hash: String,
    pub family: String,
    pub client_id: String,
    pub user_id: String,
    pub sid: String,
    pub scope: String,
    pub auth_time: i64,
    pub created_at: i64,
    pub expires_at: i64,
}

/// What presenting a refresh token found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Valid and rotated: the new token is stored.
    Rotated(RefreshToken),
    /// Already rotated, but within the grace window (parallel requests): the new token is stored.
    Grace(RefreshToken),
    /// Already rotated and outside the grace window: a stolen token is being replayed. The whole
    /// family and its session are now revoked.
    Reused(RefreshToken),
    /// Revoked, expired, of another client, or its session ended. Nothing changed.
    Invalid,
    Unknown,
}

fn session_from_row(r: &AnyRow) -> Result<Session, StoreError> {
    Ok(Session {
        sid: r.try_get("sid")?,
        user_id: r.try_get("user_id")?,
        auth_time: r.try_get("auth_time")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        amr: r
            .try_get::<String, _>("amr")?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    })
}

fn code_from_row(r: &AnyRow) -> Result<AuthCode, StoreError> {
    Ok(AuthCode {
        code_hash: r.try_get("code_hash")?,
        client_id: r.try_get("client_id")?,
        user_id: r.try_get("user_id")?,
        sid: r.try_get("sid")?,
        redirect_uri: r.try_get("redirect_uri")?,
        scope: r.try_get("scope")?,
        nonce: r.try_get("nonce")?,
        code_challenge: r.try_get("code_challenge")?,
        auth_time: r.try_get("auth_time")?,
        expires_at: r.try_get("expires_at")?,
    })
}

fn refresh_from_row(r: &AnyRow) -> Result<RefreshToken, StoreError> {
    Ok(RefreshToken {
        token_hash: r.try_get("token_hash")?,
        family: r.try_get("family")?,
        client_id: r.try_get("client_id")?,
        user_id: r.try_get("user_id")?,
        sid: r.try_get("sid")?,
        scope: r.try_get("scope")?,
        auth_time: r.try_get("auth_time")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// How long a session revocation is remembered after the session's own end: access tokens of
/// the session may live a little past it.
const REVOCATION_MARGIN: i64 = 24 * 3600;

type Tx = crate::WriteTx;

async fn revoke_session_tx(tx: &mut Tx, sid: &str, now: i64) -> Result<(), StoreError> {
    let row = sqlx::query("SELECT expires_at FROM sessions WHERE sid = $1")
        .bind(sid)
        .fetch_optional(&mut **tx)
        .await?;
    let expires_at: i64 = match row {
        Some(r) => r.try_get("expires_at")?,
        None => now,
    };
    sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE sid = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(sid)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE sid = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(sid)
        .execute(&mut **tx)
        .await?;
    insert_revocation_tx(tx, "sid", sid, expires_at.max(now) + REVOCATION_MARGIN, now).await
}

async fn insert_revocation_tx(
    tx: &mut Tx,
    kind: &str,
    value: &str,
    expires_at: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revocations (kind, value, expires_at, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (kind, value) DO NOTHING",
    )
    .bind(kind)
    .bind(value)
    .bind(expires_at)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    crate::changes::notify_on(tx, crate::Change::Revocations).await
}

impl Store {
    pub async fn create_session(&self, s: &Session, secret_hash: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO sessions (sid, secret_hash, user_id, auth_time, created_at, expires_at, amr) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&s.sid)
        .bind(secret_hash)
        .bind(&s.user_id)
        .bind(s.auth_time)
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(if s.amr.is_empty() {
            "pwd".to_owned()
        } else {
            s.amr.join(" ")
        })
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live session whose cookie secret hashes to `secret_hash`.
    pub async fn session_by_secret(
        &self,
        secret_hash: &str,
        now: i64,
    ) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE secret_hash = $1 AND revoked_at IS NULL AND expires_at > $2")
            .bind(secret_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    pub async fn session(&self, sid: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query("SELECT * FROM sessions WHERE sid = $1")
            .bind(sid)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Ends a session: its refresh tokens stop working and its access tokens are listed for the
    /// gateway to reject.
    pub async fn revoke_session(&self, sid: &str, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        revoke_session_tx(&mut tx, sid, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends every live session of a user (disabled, deleted, groups or password changed).
    /// Returns how many were ended.
    pub async fn revoke_user_sessions(&self, user_id: &str, now: i64) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        let rows =
            sqlx::query("SELECT sid FROM sessions WHERE user_id = $1 AND revoked_at IS NULL")
                .bind(user_id)
                .fetch_all(&mut *tx)
                .await?;
        for row in &rows {
            let sid: String = row.try_get("sid")?;
            revoke_session_tx(&mut tx, &sid, now).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Revokes every live session of a user but `keep` (the one the user is acting from).
    pub async fn revoke_other_sessions(
        &self,
        user_id: &str,
        keep: &str,
        now: i64,
    ) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "SELECT sid FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND sid <> $2",
        )
        .bind(user_id)
        .bind(keep)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let sid: String = row.try_get("sid")?;
            revoke_session_tx(&mut tx, &sid, now).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// A user's live sessions, newest first, each with the clients that hold refresh tokens
    /// in it.
    pub async fn user_sessions(
        &self,
        user_id: &str,
        now: i64,
    ) -> Result<Vec<(Session, Vec<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
             ORDER BY created_at DESC, sid LIMIT 100",
        )
        .bind(user_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let session = session_from_row(row)?;
            let clients = sqlx::query(
                "SELECT DISTINCT client_id FROM refresh_tokens
                 WHERE sid = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY client_id",
            )
            .bind(&session.sid)
            .bind(now)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("client_id").map_err(StoreError::from))
            .collect::<Result<Vec<String>, _>>()?;
            out.push((session, clients));
        }
        Ok(out)
    }

    /// Live sessions of every user (or of `username`), newest first, with their usernames:
    /// those after `after` (the `(created_at, sid)` of the previous page's last), at most
    /// `limit`.
    pub async fn live_sessions_page(
        &self,
        now: i64,
        after: Option<(i64, &str)>,
        username: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(Session, String)>, StoreError> {
        let (before_at, after_sid) = after.unwrap_or((i64::MAX, ""));
        let rows = sqlx::query(
            "SELECT s.*, u.username FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.revoked_at IS NULL AND s.expires_at > $1
               AND (s.created_at < $2 OR (s.created_at = $2 AND s.sid > $3))
               AND ($4 = '' OR u.username_key = $4)
             ORDER BY s.created_at DESC, s.sid LIMIT $5",
        )
        .bind(now)
        .bind(before_at)
        .bind(after_sid)
        .bind(username.map(str::to_ascii_lowercase).unwrap_or_default())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((session_from_row(row)?, row.try_get("username")?)))
            .collect()
    }

    pub async fn insert_code(&self, c: &AuthCode) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, client_id, user_id, sid, redirect_uri, scope, nonce, code_challenge, auth_time, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&c.code_hash)
        .bind(&c.client_id)
        .bind(&c.user_id)
        .bind(&c.sid)
        .bind(&c.redirect_uri)
        .bind(&c.scope)
        .bind(&c.nonce)
        .bind(&c.code_challenge)
        .bind(c.auth_time)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a code used, atomically: of two concurrent redemptions exactly one is `Fresh`.
    pub async fn consume_code(&self, code_hash: &str, now: i64) -> Result<CodeUse, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT * FROM auth_codes WHERE code_hash = $1")
            .bind(code_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(CodeUse::Unknown);
        };
        let code = code_from_row(&row)?;
        let used: Option<i64> = row.try_get("used_at")?;
        let outcome = if used.is_some() {
            CodeUse::Replayed(code)
        } else {
            let marked = sqlx::query(
                "UPDATE auth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL",
            )
            .bind(now)
            .bind(code_hash)
            .execute(&mut *tx)
            .await?;
            // On PostgreSQL two redemptions can both read "unused"; the conditional update lets
            // exactly one of them mark it. The loser is a replay.
            if marked.rows_affected() == 1 {
                CodeUse::Fresh(code)
            } else {
                CodeUse::Replayed(code)
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    pub async fn insert_refresh_token(&self, t: &RefreshToken) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert_refresh_tx(&mut tx, t).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rotates a refresh token: checks it, and stores `next` (same family) when it may be used.
    /// A token already rotated still works for `grace_ms` milliseconds after its rotation
    /// (parallel requests); from then on its use is reuse. Times are Unix milliseconds.
    pub async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        client_id: &str,
        next: impl FnOnce(&RefreshToken) -> RefreshToken,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<Rotation, StoreError> {
        let now = now_ms.div_euclid(1000);
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT * FROM refresh_tokens WHERE token_hash = $1")
            .bind(presented_hash)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(Rotation::Unknown);
        };
        let old = refresh_from_row(&row)?;
        let rotated_at_ms: Option<i64> = match row.try_get::<Option<i64>, _>("rotated_at_ms")? {
            Some(ms) => Some(ms),
            None => row
                .try_get::<Option<i64>, _>("rotated_at")?
                .map(|s| s.saturating_mul(1000)),
        };
        let revoked_at: Option<i64> = row.try_get("revoked_at")?;
        let session_live =
            sqlx::query("SELECT 1 FROM sessions WHERE sid = $1 AND revoked_at IS NULL")
                .bind(&old.sid)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        if old.client_id != client_id
            || revoked_at.is_some()
            || old.expires_at <= now
            || !session_live
        {
            return Ok(Rotation::Invalid);
        }
        let outcome = match rotated_at_ms {
            Some(at) if now_ms - at >= grace_ms => {
                sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(&old.family)
                    .execute(&mut *tx)
                    .await?;
                revoke_session_tx(&mut tx, &old.sid, now).await?;
                Rotation::Reused(old)
            }
            Some(_) => {
                insert_refresh_tx(&mut tx, &next(&old)).await?;
                Rotation::Grace(old)
            }
            None => {
                let marked = sqlx::query(
                    "UPDATE refresh_tokens SET rotated_at = $1, rotated_at_ms = $2 WHERE token_hash = $3 AND rotated_at IS NULL",
                )
                .bind(now)
                .bind(now_ms)
                .bind(presented_hash)
                .execute(&mut *tx)
                .await?;
                insert_refresh_tx(&mut tx, &next(&old)).await?;
                // Lost a race with a parallel rotation (PostgreSQL): that one just happened, so
                // this is the grace case.
                if marked.rows_affected() == 1 {
                    Rotation::Rotated(old)
                } else {
                    Rotation::Grace(old)
                }
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// The grant behind a refresh token, if any (revoked or not).
    pub async fn refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshToken>, StoreError> {
        let row = sqlx::query("SELECT * FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(refresh_from_row).transpose()
    }

    /// Records that one access token (by `jti`) must be rejected until `expires_at`.
    pub async fn revoke_jti(&self, jti: &str, expires_at: i64, now: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert_revocation_tx(&mut tx, "jti", jti, expires_at, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revocations recorded at or after `since` that have not expired: `(kind, value, expires_at, created_at)`.
    pub async fn revocations_since(
        &self,
        since: i64,
        now: i64,
    ) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, value, expires_at, created_at FROM revocations WHERE created_at >= $1 AND expires_at > $2",
        )
        .bind(since)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("kind")?,
                    r.try_get("value")?,
                    r.try_get("expires_at")?,
                    r.try_get("created_at")?,
                ))
            })
            .collect()
    }

    /// Whether a session or token id is revoked (for endpoints that may read the store).
    pub async fn is_revoked(&self, kind: &str, value: &str, now: i64) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 FROM revocations WHERE kind = $1 AND value = $2 AND expires_at > $3",
        )
        .bind(kind)
        .bind(value)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Counts a failed sign-in. After `threshold` failures the account is locked for a delay that
    /// doubles with each further failure, from `base` up to `max` seconds. Returns `locked_until`.
    pub async fn record_login_failure(
        &self,
        username_key: &str,
        now: i64,
        threshold: i64,
        base: i64,
        max: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT failures FROM login_failures WHERE username_key = $1")
            .bind(username_key)
            .fetch_optional(&mut *tx)
            .await?;
        let failures: i64 = match row {
            Some(r) => r.try_get::<i64, _>("failures")? + 1,
            None => 1,
        };
        let locked_until = if failures >= threshold {
            let doublings = u32::try_from((failures - threshold).min(30)).unwrap_or(30);
            now + base.saturating_mul(1_i64 << doublings).min(max)
        } else {
            0
        };
        sqlx::query(
            "INSERT INTO login_failures (username_key, failures, locked_until) VALUES ($1, $2, $3)
             ON CONFLICT (username_key) DO UPDATE SET failures = excluded.failures, locked_until = excluded.locked_until",
        )
        .bind(username_key)
        .bind(failures)
        .bind(locked_until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(locked_until)
    }

    /// Until when an account is locked (0: not locked).
    pub async fn login_locked_until(&self, username_key: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT locked_until FROM login_failures WHERE username_key = $1")
            .bind(username_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get("locked_until"))
            .transpose()?
            .unwrap_or(0))
    }

    pub async fn clear_login_failures(&self, username_key: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM login_failures WHERE username_key = $1")
            .bind(username_key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

async fn insert_refresh_tx(tx: &mut Tx, t: &RefreshToken) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family, client_id, user_id, sid, scope, auth_time, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&t.token_hash)
    .bind(&t.family)
    .bind(&t.client_id)
    .bind(&t.user_id)
    .bind(&t.sid)
    .bind(&t.scope)
    .bind(t.auth_time)
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
