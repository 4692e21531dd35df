//! Versioned policy documents (stored as the policy file text; parsing is the policy crate's).

use sqlx::Row;

use crate::{Store, StoreError};

/// One stored version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: i64,
    pub document: String,
    pub comment: String,
    pub created_at: i64,
}

fn version_from_row(r: &sqlx::any::AnyRow) -> Result<PolicyVersion, StoreError> {
    Ok(PolicyVersion {
        version: r.try_get("version")?,
        document: r.try_get("document")?,
        comment: r.try_get("comment")?,
        created_at: r.try_get("created_at")?,
    })
}

impl Store {
    /// The version in force (the highest), if any.
    pub async fn current_policy(&self) -> Result<Option<PolicyVersion>, StoreError> {
        let row = sqlx::query("SELECT version, document, comment, created_at FROM policy_versions ORDER BY version DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// The number of the version in force (0 when none): cheap to poll.
    pub async fn policy_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM policy_versions")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("v")?)
    }

    /// A stored version.
    pub async fn policy_at(&self, version: i64) -> Result<Option<PolicyVersion>, StoreError> {
        let row = sqlx::query(
            "SELECT version, document, comment, created_at FROM policy_versions WHERE version = $1",
        )
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(version_from_row).transpose()
    }

    /// Every version, newest first, without documents.
    pub async fn policy_history(&self) -> Result<Vec<PolicyVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, comment, created_at FROM policy_versions ORDER BY version DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PolicyVersion {
                    version: r.try_get("version")?,
                    document: String::new(),
                    comment: r.try_get("comment")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Stores a new version and returns its number. `only_if_empty` stores it only when no version
    /// exists yet (seeding from configuration on first start); then `None` means "already seeded".
    /// Adds a version only if the one in force is still `expected` (0: none): of two edits
    /// made from the same version, one is stored and the other gets `None`. (Version numbers
    /// are the primary key, so two nodes inserting the same next version cannot both succeed.)
    pub async fn add_policy_version_if(
        &self,
        expected: i64,
        document: &str,
        comment: &str,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM policy_versions")
            .fetch_one(&mut *tx)
            .await?;
        let current: i64 = row.try_get("v")?;
        if current != expected {
            return Ok(None);
        }
        let inserted = sqlx::query("INSERT INTO policy_versions (version, document, comment, created_at) VALUES ($1, $2, $3, $4)")
            .bind(current + 1)
            .bind(document)
            .bind(comment)
            .bind(now)
            .execute(&mut *tx)
            .await;
        match inserted {
            Err(e) if crate::error::is_unique_violation(&e) => return Ok(None),
            other => {
                other?;
            }
        }
        crate::changes::notify_on(&mut tx, crate::Change::Policies).await?;
        tx.commit().await?;
        Ok(Some(current + 1))
    }

    pub async fn add_policy_version(
        &self,
        document: &str,
        comment: &str,
        now: i64,
        only_if_empty: bool,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM policy_versions")
            .fetch_one(&mut *tx)
            .await?;
        let current: i64 = row.try_get("v")?;
        if only_if_empty && current > 0 {
            return Ok(None);
        }
        let version = current + 1;
        sqlx::query("INSERT INTO policy_versions (version, document, comment, created_at) VALUES ($1, $2, $3, $4)")
            .bind(version)
            .bind(document)
            .bind(comment)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        crate::changes::notify_on(&mut tx, crate::Change::Policies).await?;
        tx.commit().await?;
        Ok(Some(version))
    }
}
