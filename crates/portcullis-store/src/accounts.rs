//! Self-service accounts: the mail outbox and the single-use codes mailed to users.
//!
//! The outbox is how mail survives outages and restarts: a message is a row from the moment it
//! is queued until it is sent or given up, and a worker on any node claims due rows under a lease,
//! so two nodes never send one message at the same time (a node that dies mid-send leaves the
//! lease to expire, and the message is sent again: at least once, never zero times).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::users::name_key;
use crate::{Store, StoreError};

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMail {
    pub id: String,
    pub recipient: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    /// The template it came from (`verify`, `reset`, ...).
    pub kind: String,
    pub now: i64,
}

/// A queued message, claimed for sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMail {
    pub id: String,
    pub recipient: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    pub kind: String,
    pub created_at: i64,
    /// Attempts before this one.
    pub attempts: i64,
}

/// What the outbox holds (for `mail status` and the readiness of tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: i64,
    /// Of the pending, those that failed at least once (waiting for a retry).
    pub retrying: i64,
    pub sent: i64,
    pub failed: i64,
}

/// Why a code was mailed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodePurpose {
    /// Proves the user receives mail at an address.
    Verify,
    /// Lets the user choose a new password.
    Reset,
    /// Lets an invited user choose their first password.
    Invite,
    /// Not a usable code: records a notice mailed to the user (someone tried to sign up with
    /// their address), so such notices are limited per hour like codes.
    Notice,
}

impl CodePurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            CodePurpose::Verify => "verify",
            CodePurpose::Reset => "reset",
            CodePurpose::Invite => "invite",
            CodePurpose::Notice => "notice",
        }
    }
}

/// A code to store (its digest; the code itself is only ever in the mail).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCode {
    pub code_hash: String,
    pub purpose: CodePurpose,
    pub user_id: String,
    pub email: String,
    pub now: i64,
    pub expires_at: i64,
}

/// A code that was just used: whose it was and the address it was sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedCode {
    pub user_id: String,
    pub email: String,
}

fn mail_from_row(r: &AnyRow) -> Result<QueuedMail, StoreError> {
    Ok(QueuedMail {
        id: r.try_get("id")?,
        recipient: r.try_get("recipient")?,
        subject: r.try_get("subject")?,
        text_body: r.try_get("text_body")?,
        html_body: r.try_get("html_body")?,
        kind: r.try_get("kind")?,
        created_at: r.try_get("created_at")?,
        attempts: r.try_get("attempts")?,
    })
}

impl Store {
    /// Queues a message, due at once.
    pub async fn enqueue_mail(&self, m: &NewMail) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO mail_outbox (id, recipient, subject, text_body, html_body, kind, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&m.id)
        .bind(&m.recipient)
        .bind(&m.subject)
        .bind(&m.text_body)
        .bind(&m.html_body)
        .bind(&m.kind)
        .bind(m.now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Claims up to `limit` due messages for `lease` seconds: no other worker gets them until the
    /// lease ends or they are marked. Oldest first.
    pub async fn claim_mail(
        &self,
        now: i64,
        lease: i64,
        limit: i64,
    ) -> Result<Vec<QueuedMail>, StoreError> {
        let candidates = sqlx::query(
            "SELECT id FROM mail_outbox
             WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1 AND lease_until <= $1
             ORDER BY next_attempt_at, created_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::new();
        for row in candidates {
            let id: String = row.try_get("id")?;
            // The conditional update is the claim: of two workers only one changes the row.
            let won = {
                let _turn = self.write_turn().await;
                sqlx::query(
                    "UPDATE mail_outbox SET lease_until = $1
                     WHERE id = $2 AND sent_at IS NULL AND failed_at IS NULL AND lease_until <= $3",
                )
                .bind(now + lease)
                .bind(&id)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1
            };
            if won {
                let row = sqlx::query("SELECT * FROM mail_outbox WHERE id = $1")
                    .bind(&id)
                    .fetch_one(&self.pool)
                    .await?;
                claimed.push(mail_from_row(&row)?);
            }
        }
        Ok(claimed)
    }

    /// Marks a claimed message sent.
    pub async fn mail_sent(&self, id: &str, now: i64) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "UPDATE mail_outbox SET sent_at = $1, attempts = attempts + 1, lease_until = 0, last_error = NULL WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed attempt: retried at `retry_at`, or given up when `retry_at` is `None`.
    pub async fn mail_failed(
        &self,
        id: &str,
        error: &str,
        retry_at: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let error: String = error.chars().take(1000).collect();
        match retry_at {
            Some(at) => sqlx::query(
                "UPDATE mail_outbox SET attempts = attempts + 1, next_attempt_at = $1, lease_until = 0, last_error = $2 WHERE id = $3",
            )
            .bind(at)
            .bind(&error)
            .bind(id),
            None => sqlx::query(
                "UPDATE mail_outbox SET attempts = attempts + 1, failed_at = $1, lease_until = 0, last_error = $2 WHERE id = $3",
            )
            .bind(now)
            .bind(&error)
            .bind(id),
        }
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many messages wait, were sent, were given up.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let row = sqlx::query(
            "SELECT
               COALESCE(SUM(CASE WHEN sent_at IS NULL AND failed_at IS NULL THEN 1 ELSE 0 END), 0) AS pending,
               COALESCE(SUM(CASE WHEN sent_at IS NULL AND failed_at IS NULL AND attempts > 0 THEN 1 ELSE 0 END), 0) AS retrying,
               COALESCE(SUM(CASE WHEN sent_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS sent,
               COALESCE(SUM(CASE WHEN failed_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS failed
             FROM mail_outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxCounts {
            pending: row.try_get("pending")?,
            retrying: row.try_get("retrying")?,
            sent: row.try_get("sent")?,
            failed: row.try_get("failed")?,
        })
    }

    /// Forgets sent and given-up messages older than `before` (their bodies hold links).
    pub async fn prune_mail(&self, before: i64) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "DELETE FROM mail_outbox WHERE (sent_at IS NOT NULL AND sent_at < $1) OR (failed_at IS NOT NULL AND failed_at < $1)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Stores a code, unless `max_per_hour` codes of this user and purpose were stored in the
    /// hour before `c.now` (then `false`, and nothing changes). Earlier unused codes of the same
    /// user and purpose stop working: only the newest link in the user's mailbox counts. The
    /// count and the insert are one transaction that first locks the user's row, so concurrent
    /// requests cannot both slip under the limit.
    pub async fn insert_account_code(
        &self,
        c: &NewCode,
        max_per_hour: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let locked = sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
            .bind(&c.user_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "user",
                name: c.user_id.clone(),
            });
        }
        let recent: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM account_codes WHERE user_id = $1 AND purpose = $2 AND created_at > $3",
        )
        .bind(&c.user_id)
        .bind(c.purpose.as_str())
        .bind(c.now - 3600)
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
        if recent >= max_per_hour {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE account_codes SET used_at = $1 WHERE user_id = $2 AND purpose = $3 AND used_at IS NULL",
        )
        .bind(c.now)
        .bind(&c.user_id)
        .bind(c.purpose.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO account_codes (code_hash, purpose, user_id, email, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&c.code_hash)
        .bind(c.purpose.as_str())
        .bind(&c.user_id)
        .bind(&c.email)
        .bind(c.now)
        .bind(c.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The live code with this digest and purpose, without using it (to show a form).
    pub async fn peek_account_code(
        &self,
        code_hash: &str,
        purpose: CodePurpose,
        now: i64,
    ) -> Result<Option<UsedCode>, StoreError> {
        let row = sqlx::query(
            "SELECT user_id, email FROM account_codes
             WHERE code_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
        )
        .bind(code_hash)
        .bind(purpose.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(UsedCode {
                user_id: r.try_get("user_id")?,
                email: r.try_get("email")?,
            })
        })
        .transpose()
    }

    /// Uses a code: at most once, before it expires. `None` when it is unknown, used, expired or
    /// for another purpose.
    pub async fn use_account_code(
        &self,
        code_hash: &str,
        purpose: CodePurpose,
        now: i64,
    ) -> Result<Option<UsedCode>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT user_id, email FROM account_codes
             WHERE code_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
        )
        .bind(code_hash)
        .bind(purpose.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let done = sqlx::query(
            "UPDATE account_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL",
        )
        .bind(now)
        .bind(code_hash)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(UsedCode {
            user_id: row.try_get("user_id")?,
            email: row.try_get("email")?,
        }))
    }

    /// Codes of one purpose created for a user since `since` (for resend throttling).
    pub async fn account_codes_since(
        &self,
        user_id: &str,
        purpose: CodePurpose,
        since: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM account_codes WHERE user_id = $1 AND purpose = $2 AND created_at >= $3",
        )
        .bind(user_id)
        .bind(purpose.as_str())
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Forgets codes that expired before `before`.
    pub async fn prune_account_codes(&self, before: i64) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query("DELETE FROM account_codes WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Usernames of the users with this e-mail address (any letter case), oldest first.
    pub async fn usernames_by_email(&self, email: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT username FROM users WHERE email_key = $1 ORDER BY created_at, username_key",
        )
        .bind(name_key(email))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("username").map_err(StoreError::from))
            .collect()
    }
}
