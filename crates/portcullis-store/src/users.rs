//! Users of the pool. Usernames are unique without regard to letter case.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::is_unique_violation;
use crate::{Store, StoreError};

/// Whether a user may sign in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    /// May sign in.
    Enabled,
    /// May not sign in; existing sessions are revoked by the caller.
    Disabled,
}

impl UserStatus {
    fn as_str(self) -> &'static str {
        match self {
            UserStatus::Enabled => "enabled",
            UserStatus::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "enabled" => Ok(UserStatus::Enabled),
            "disabled" => Ok(UserStatus::Disabled),
            other => Err(StoreError::Corrupt(format!(
                "unknown user status {other:?}"
            ))),
        }
    }
}

/// A stored user. The password hash is a PHC string and never leaves the crate boundary
/// except to be verified.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub attributes: BTreeMap<String, String>,
    pub status: UserStatus,
    #[serde(skip)]
    pub password_hash: Option<String>,
    /// Group names, sorted by precedence then name.
    pub groups: Vec<String>,
    /// The password was set by an operator (`--temporary`) and must be changed at the next
    /// sign-in.
    pub password_change_required: bool,
    /// Imported without a password hash: the legacy verifier checks the next sign-in.
    pub legacy_password: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// Raised by every change to the user (attributes, status, password, e-mail, groups): the
    /// admin API's ETag.
    pub revision: i64,
}

/// A user to create. Validation (username characters, email syntax, password policy) is the
/// caller's job; the store enforces uniqueness.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub attributes: BTreeMap<String, String>,
    pub password_hash: Option<String>,
    /// Groups to join at creation, in one transaction with the insert.
    pub groups: Vec<String>,
    /// The password must be changed at the first sign-in.
    pub password_change_required: bool,
    /// Imported without a hash; the legacy verifier checks the first sign-in.
    pub legacy_password: bool,
    /// Disabled from the start (an import of a disabled user).
    pub disabled: bool,
    pub now: i64,
}

/// The case-folded key under which a username or group name is unique.
pub(crate) fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

const USER_COLUMNS: &str = "id, username, email, email_verified, attributes, status, password_hash, password_change_required, legacy_password, created_at, updated_at, revision";

fn user_from_row(row: &AnyRow) -> Result<User, StoreError> {
    let attributes: String = row.try_get("attributes")?;
    let attributes = serde_json::from_str(&attributes)
        .map_err(|e| StoreError::Corrupt(format!("user attributes are not a JSON object: {e}")))?;
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        email_verified: row.try_get::<i64, _>("email_verified")? != 0,
        attributes,
        status: UserStatus::parse(&row.try_get::<String, _>("status")?)?,
        password_hash: row.try_get("password_hash")?,
        groups: Vec::new(),
        password_change_required: row.try_get::<i64, _>("password_change_required")? != 0,
        legacy_password: row.try_get::<i64, _>("legacy_password")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revision: row.try_get("revision")?,
    })
}

fn not_found(username: &str) -> StoreError {
    StoreError::NotFound {
        kind: "user",
        name: username.to_owned(),
    }
}

impl Store {
    /// Creates a user and its group memberships atomically. Fails with
    /// [`StoreError::AlreadyExists`] when the username is taken in any letter case, and with
    /// [`StoreError::NotFound`] when a group does not exist; nothing is written then.
    pub async fn create_user(&self, new: &NewUser) -> Result<User, StoreError> {
        let mut tx = self.begin_write().await?;
        insert_user_tx(&mut tx, new).await?;
        tx.commit().await?;
        self.user(&new.username)
            .await?
            .ok_or_else(|| not_found(&new.username))
    }

    /// Looks a user up by username, in any letter case.
    pub async fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username_key = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name_key(username))
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let mut user = user_from_row(&row)?;
                user.groups = self.groups_of(&user.id).await?;
                Ok(Some(user))
            }
        }
    }

    /// Looks a user up by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let mut user = user_from_row(&row)?;
                user.groups = self.groups_of(&user.id).await?;
                Ok(Some(user))
            }
        }
    }

    /// Every user, ordered by username, with their groups.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY username_key");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        let mut users = rows
            .iter()
            .map(user_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let memberships = sqlx::query(
            "SELECT m.user_id, g.name FROM group_members m JOIN user_groups g ON g.name_key = m.group_key
             ORDER BY g.precedence IS NULL, g.precedence, g.name_key",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in &memberships {
            by_user
                .entry(row.try_get("user_id")?)
                .or_default()
                .push(row.try_get("name")?);
        }
        for user in &mut users {
            user.groups = by_user.remove(&user.id).unwrap_or_default();
        }
        Ok(users)
    }

    /// Deletes a user and its memberships; with `revision`, only if the user is still at it
    /// ([`StoreError::Changed`] otherwise).
    pub async fn delete_user(
        &self,
        username: &str,
        revision: Option<i64>,
    ) -> Result<(), StoreError> {
        let turn = self.write_turn().await;
        let done = match revision {
            None => {
                sqlx::query("DELETE FROM users WHERE username_key = $1")
                    .bind(name_key(username))
                    .execute(&self.pool)
                    .await?
            }
            Some(r) => {
                sqlx::query("DELETE FROM users WHERE username_key = $1 AND revision = $2")
                    .bind(name_key(username))
                    .bind(r)
                    .execute(&self.pool)
                    .await?
            }
        };
        if done.rows_affected() == 0 {
            drop(turn);
            return match (revision, self.user(username).await?) {
                (Some(_), Some(_)) => Err(StoreError::Changed {
                    kind: "user",
                    name: username.to_owned(),
                }),
                _ => Err(not_found(username)),
            };
        }
        Ok(())
    }

    /// A page of users ordered by username: those after `after` (a username, any case) whose
    /// username or e-mail address contains `needle` (any case), at most `limit`.
    pub async fn users_page(
        &self,
        after: Option<&str>,
        needle: Option<&str>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let pattern = needle.map(|n| {
            let escaped = name_key(n)
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users
             WHERE username_key > $1
               AND ($2 = '' OR username_key LIKE $3 ESCAPE '\\' OR email_key LIKE $3 ESCAPE '\\')
             ORDER BY username_key LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.map(name_key).unwrap_or_default())
            .bind(pattern.clone().unwrap_or_default())
            .bind(pattern.unwrap_or_default())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut user = user_from_row(row)?;
            user.groups = self.groups_of(&user.id).await?;
            users.push(user);
        }
        Ok(users)
    }

    /// Replaces a user's password hash; `change_required`: the user must choose a new one at the
    /// next sign-in.
    pub async fn set_password_hash(
        &self,
        username: &str,
        hash: &str,
        change_required: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE users SET password_hash = $1, password_change_required = $2, legacy_password = 0, updated_at = $3, revision = revision + 1 WHERE username_key = $4",
        )
        .bind(hash)
        .bind(i64::from(change_required))
        .bind(now)
        .bind(name_key(username))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found(username));
        }
        Ok(())
    }

    /// Sets a user's e-mail address and whether it is verified. Fails with
    /// [`StoreError::NotFound`] for an unknown user id.
    pub async fn set_email(
        &self,
        user_id: &str,
        email: Option<&str>,
        verified: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE users SET email = $1, email_key = $2, email_verified = $3, updated_at = $4, revision = revision + 1 WHERE id = $5",
        )
        .bind(email)
        .bind(email.map(name_key))
        .bind(i64::from(verified))
        .bind(now)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found(user_id));
        }
        Ok(())
    }

    /// Marks `email` verified for a user, if it is still their address (a code mailed to an
    /// address they have since changed proves nothing). Returns whether it was.
    pub async fn verify_email(
        &self,
        user_id: &str,
        email: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE users SET email_verified = 1, updated_at = $1, revision = revision + 1 WHERE id = $2 AND email_key = $3",
        )
        .bind(now)
        .bind(user_id)
        .bind(name_key(email))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Changes a user's attributes with `edit` (which validates them) in one transaction that
    /// first locks the user's row, so concurrent edits of different attributes all land; with
    /// `revision` (an `If-Match`), only if the user is still at it ([`StoreError::Changed`]).
    pub async fn edit_attributes<E: From<StoreError>>(
        &self,
        user_id: &str,
        revision: Option<i64>,
        now: i64,
        edit: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut tx = self.begin_write().await?;
        let locked = sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if locked.rows_affected() == 0 {
            return Err(not_found(user_id).into());
        }
        let row = sqlx::query("SELECT username, attributes, revision FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        let current: i64 = row.try_get("revision").map_err(StoreError::from)?;
        if revision.is_some_and(|r| r != current) {
            return Err(StoreError::Changed {
                kind: "user",
                name: row.try_get("username").map_err(StoreError::from)?,
            }
            .into());
        }
        let text: String = row.try_get("attributes").map_err(StoreError::from)?;
        let mut attributes: BTreeMap<String, String> = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("user attributes: {e}")))?;
        edit(&mut attributes)?;
        let json =
            serde_json::to_string(&attributes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "UPDATE users SET attributes = $1, updated_at = $2, revision = revision + 1 WHERE id = $3",
        )
        .bind(json)
        .bind(now)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Enables or disables a user.
    pub async fn set_user_status(
        &self,
        username: &str,
        status: UserStatus,
        now: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let done =
            sqlx::query("UPDATE users SET status = $1, updated_at = $2, revision = revision + 1 WHERE username_key = $3")
                .bind(status.as_str())
                .bind(now)
                .bind(name_key(username))
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(not_found(username));
        }
        Ok(())
    }

    /// The names of a user's groups, by precedence then name.
    async fn groups_of(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.name FROM group_members m JOIN user_groups g ON g.name_key = m.group_key
             WHERE m.user_id = $1 ORDER BY g.precedence IS NULL, g.precedence, g.name_key",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("name").map_err(StoreError::from))
            .collect()
    }
}

/// Adds a membership inside a transaction; both the user id and the group must exist.
/// Returns whether a membership was added (false: it already existed).
pub(crate) async fn add_member_tx(
    tx: &mut crate::WriteTx,
    user_id: &str,
    group: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let exists = sqlx::query("SELECT 1 FROM user_groups WHERE name_key = $1")
        .bind(name_key(group))
        .fetch_optional(&mut **tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound {
            kind: "group",
            name: group.to_owned(),
        });
    }
    let done = sqlx::query(
        "INSERT INTO group_members (user_id, group_key, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, group_key) DO NOTHING",
    )
    .bind(user_id)
    .bind(name_key(group))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 1 {
        bump_revision_tx(tx, user_id).await?;
    }
    Ok(done.rows_affected() == 1)
}

/// Raises a user's revision inside a transaction (a change the users table does not see, such
/// as a group membership).
pub(crate) async fn bump_revision_tx(
    tx: &mut crate::WriteTx,
    user_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET revision = revision + 1 WHERE id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts a user and its group memberships in `tx` (see [`Store::create_user`]).
pub(crate) async fn insert_user_tx(
    tx: &mut crate::WriteTx,
    new: &NewUser,
) -> Result<(), StoreError> {
    let attributes =
        serde_json::to_string(&new.attributes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, username, username_key, email, email_key, email_verified, attributes, status, password_hash, password_change_required, legacy_password, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
    )
    .bind(&new.id)
    .bind(&new.username)
    .bind(name_key(&new.username))
    .bind(&new.email)
    .bind(new.email.as_deref().map(name_key))
    .bind(i64::from(new.email_verified))
    .bind(&attributes)
    .bind(if new.disabled {
        UserStatus::Disabled.as_str()
    } else {
        UserStatus::Enabled.as_str()
    })
    .bind(&new.password_hash)
    .bind(i64::from(new.password_change_required))
    .bind(i64::from(new.legacy_password))
    .bind(new.now)
    .execute(&mut **tx)
    .await;
    match inserted {
        Err(e) if is_unique_violation(&e) => {
            return Err(StoreError::AlreadyExists {
                kind: "user",
                name: new.username.clone(),
            });
        }
        other => {
            other?;
        }
    }
    for group in &new.groups {
        add_member_tx(tx, &new.id, group, new.now).await?;
    }
    Ok(())
}
