//! Groups and memberships. Group names are unique without regard to letter case, so a policy
//! for `group:admin` can never be met by a look-alike `Admin` group.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::is_unique_violation;
use crate::users::{add_member_tx, name_key};
use crate::{Store, StoreError};

/// A stored group.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Group {
    pub name: String,
    pub description: String,
    /// Lower wins when a caller needs one group (Cognito's rule); `None` sorts last.
    pub precedence: Option<i64>,
    pub members: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A group to create.
#[derive(Clone, Debug)]
pub struct NewGroup {
    pub name: String,
    pub description: String,
    pub precedence: Option<i64>,
    pub now: i64,
}

fn group_from_row(row: &AnyRow) -> Result<Group, StoreError> {
    Ok(Group {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        precedence: row.try_get("precedence")?,
        members: row.try_get("members")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const GROUP_SELECT: &str = "SELECT g.name, g.description, g.precedence, g.created_at, g.updated_at,
        (SELECT COUNT(*) FROM group_members m WHERE m.group_key = g.name_key) AS members
     FROM user_groups g";

impl Store {
    /// Creates a group; fails with [`StoreError::AlreadyExists`] if the name is taken in any case.
    pub async fn create_group(&self, new: &NewGroup) -> Result<Group, StoreError> {
        let _turn = self.write_turn().await;
        let inserted = sqlx::query(
            "INSERT INTO user_groups (name_key, name, description, precedence, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(name_key(&new.name))
        .bind(&new.name)
        .bind(&new.description)
        .bind(new.precedence)
        .bind(new.now)
        .execute(&self.pool)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists {
                kind: "group",
                name: new.name.clone(),
            }),
            Err(e) => Err(e.into()),
            Ok(_) => self
                .group(&new.name)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "group",
                    name: new.name.clone(),
                }),
        }
    }

    /// Looks a group up by name, in any letter case.
    pub async fn group(&self, name: &str) -> Result<Option<Group>, StoreError> {
        let sql = format!("{GROUP_SELECT} WHERE g.name_key = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name_key(name))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(group_from_row).transpose()
    }

    /// Every group, by precedence then name.
    pub async fn list_groups(&self) -> Result<Vec<Group>, StoreError> {
        let sql = format!("{GROUP_SELECT} ORDER BY g.precedence IS NULL, g.precedence, g.name_key");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(group_from_row).collect()
    }

    /// Deletes a group and its memberships (not its members).
    pub async fn delete_group(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Its members' documents change (one group fewer): their revisions rise.
        sqlx::query(
            "UPDATE users SET revision = revision + 1
             WHERE id IN (SELECT user_id FROM group_members WHERE group_key = $1)",
        )
        .bind(name_key(name))
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("DELETE FROM user_groups WHERE name_key = $1")
            .bind(name_key(name))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "group",
                name: name.to_owned(),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// Adds a user to a group. Returns false if the user was already a member.
    pub async fn add_member(
        &self,
        group: &str,
        username: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let user_id = user_id_tx(&mut tx, username).await?;
        let added = add_member_tx(&mut tx, &user_id, group, now).await?;
        tx.commit().await?;
        Ok(added)
    }

    /// Removes a user from a group. Returns false if the user was not a member.
    pub async fn remove_member(&self, group: &str, username: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let user_id = user_id_tx(&mut tx, username).await?;
        let exists = sqlx::query("SELECT 1 FROM user_groups WHERE name_key = $1")
            .bind(name_key(group))
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                kind: "group",
                name: group.to_owned(),
            });
        }
        let done = sqlx::query("DELETE FROM group_members WHERE user_id = $1 AND group_key = $2")
            .bind(&user_id)
            .bind(name_key(group))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 1 {
            crate::users::bump_revision_tx(&mut tx, &user_id).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// The usernames in a group, sorted.
    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, StoreError> {
        if self.group(group).await?.is_none() {
            return Err(StoreError::NotFound {
                kind: "group",
                name: group.to_owned(),
            });
        }
        let rows = sqlx::query(
            "SELECT u.username FROM group_members m JOIN users u ON u.id = m.user_id
             WHERE m.group_key = $1 ORDER BY u.username_key",
        )
        .bind(name_key(group))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("username").map_err(StoreError::from))
            .collect()
    }
}

async fn user_id_tx(tx: &mut crate::WriteTx, username: &str) -> Result<String, StoreError> {
    let row = sqlx::query("SELECT id FROM users WHERE username_key = $1")
        .bind(name_key(username))
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        Some(row) => Ok(row.try_get("id")?),
        None => Err(StoreError::NotFound {
            kind: "user",
            name: username.to_owned(),
        }),
    }
}
