//! OAuth clients and resource servers (with their custom scopes).

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::is_unique_violation;
use crate::{Store, StoreError};

/// A registered client. `secret_hash` is the hex SHA-256 of the secret; `None` for a public
/// client (a browser or mobile app that cannot keep a secret).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    pub logout_uris: Vec<String>,
    pub grants: Vec<String>,
    pub scopes: Vec<String>,
    pub access_ttl: i64,
    pub id_ttl: i64,
    pub refresh_ttl: i64,
    pub id_token_alg: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Raised by every change (the admin API's ETag).
    pub revision: i64,
}

impl Client {
    pub fn is_confidential(&self) -> bool {
        self.secret_hash.is_some()
    }

    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grants.iter().any(|g| g == grant)
    }
}

/// A resource server and the scopes it defines (`identifier/scope`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ResourceServer {
    pub identifier: String,
    pub name: String,
    /// Scope names without the identifier prefix.
    pub scopes: Vec<String>,
    pub created_at: i64,
}

fn json_list(row: &AnyRow, column: &str) -> Result<Vec<String>, StoreError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds every column of a client, in the order the INSERT statements list them.
fn bind_client<'q>(q: AnyQuery<'q>, c: &'q Client) -> AnyQuery<'q> {
    q.bind(&c.client_id)
        .bind(&c.name)
        .bind(&c.secret_hash)
        .bind(to_json(&c.redirect_uris))
        .bind(to_json(&c.logout_uris))
        .bind(to_json(&c.grants))
        .bind(to_json(&c.scopes))
        .bind(c.access_ttl)
        .bind(c.id_ttl)
        .bind(c.refresh_ttl)
        .bind(&c.id_token_alg)
        .bind(c.created_at)
        .bind(c.updated_at)
}

fn client_from_row(row: &AnyRow) -> Result<Client, StoreError> {
    Ok(Client {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        redirect_uris: json_list(row, "redirect_uris")?,
        logout_uris: json_list(row, "logout_uris")?,
        grants: json_list(row, "grants")?,
        scopes: json_list(row, "scopes")?,
        access_ttl: row.try_get("access_ttl")?,
        id_ttl: row.try_get("id_ttl")?,
        refresh_ttl: row.try_get("refresh_ttl")?,
        id_token_alg: row.try_get("id_token_alg")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revision: row.try_get("revision")?,
    })
}

impl Store {
    /// Registers a client; fails if the id is taken.
    pub async fn create_client(&self, c: &Client) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let done = bind_client(sqlx::query(
            "INSERT INTO clients (client_id, name, secret_hash, redirect_uris, logout_uris, grants, scopes,
                access_ttl, id_ttl, refresh_ttl, id_token_alg, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"), c)
        .execute(&self.pool)
        .await;
        match done {
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists {
                kind: "client",
                name: c.client_id.clone(),
            }),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }

    /// Creates or replaces a client (clients declared in the configuration file).
    pub async fn upsert_client(&self, c: &Client) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        bind_client(sqlx::query(
            "INSERT INTO clients (client_id, name, secret_hash, redirect_uris, logout_uris, grants, scopes,
                access_ttl, id_ttl, refresh_ttl, id_token_alg, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (client_id) DO UPDATE SET name = excluded.name, secret_hash = excluded.secret_hash,
                redirect_uris = excluded.redirect_uris, logout_uris = excluded.logout_uris, grants = excluded.grants,
                scopes = excluded.scopes, access_ttl = excluded.access_ttl, id_ttl = excluded.id_ttl,
                refresh_ttl = excluded.refresh_ttl, id_token_alg = excluded.id_token_alg, updated_at = excluded.updated_at,
                revision = clients.revision + 1"), c)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Creates or replaces a resource server.
    pub async fn upsert_resource_server(&self, rs: &ResourceServer) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO resource_servers (identifier, name, scopes, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (identifier) DO UPDATE SET name = excluded.name, scopes = excluded.scopes",
        )
        .bind(&rs.identifier)
        .bind(&rs.name)
        .bind(to_json(&rs.scopes))
        .bind(rs.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        let row = sqlx::query("SELECT * FROM clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(client_from_row).transpose()
    }

    pub async fn list_clients(&self) -> Result<Vec<Client>, StoreError> {
        let rows = sqlx::query("SELECT * FROM clients ORDER BY client_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(client_from_row).collect()
    }

    /// Deletes a client; with `revision`, only if it is still at it ([`StoreError::Changed`]
    /// otherwise).
    pub async fn delete_client(
        &self,
        client_id: &str,
        revision: Option<i64>,
    ) -> Result<(), StoreError> {
        let turn = self.write_turn().await;
        let done =
            sqlx::query("DELETE FROM clients WHERE client_id = $1 AND ($2 < 0 OR revision = $2)")
                .bind(client_id)
                .bind(revision.unwrap_or(-1))
                .execute(&self.pool)
                .await?;
        drop(turn);
        if done.rows_affected() == 0 {
            return Err(self.client_write_failed(client_id).await);
        }
        Ok(())
    }

    /// Replaces a client's settings (not its secret or creation time) if it is still at
    /// `revision`: [`StoreError::Changed`] otherwise.
    pub async fn update_client(&self, c: &Client, revision: i64) -> Result<(), StoreError> {
        let turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE clients SET name = $1, redirect_uris = $2, logout_uris = $3, grants = $4,
                scopes = $5, access_ttl = $6, id_ttl = $7, refresh_ttl = $8, id_token_alg = $9,
                updated_at = $10, revision = revision + 1
             WHERE client_id = $11 AND revision = $12",
        )
        .bind(&c.name)
        .bind(to_json(&c.redirect_uris))
        .bind(to_json(&c.logout_uris))
        .bind(to_json(&c.grants))
        .bind(to_json(&c.scopes))
        .bind(c.access_ttl)
        .bind(c.id_ttl)
        .bind(c.refresh_ttl)
        .bind(&c.id_token_alg)
        .bind(c.updated_at)
        .bind(&c.client_id)
        .bind(revision)
        .execute(&self.pool)
        .await?;
        drop(turn);
        if done.rows_affected() == 0 {
            return Err(self.client_write_failed(&c.client_id).await);
        }
        Ok(())
    }

    /// Why a conditional write to a client touched no row: it changed, or it does not exist.
    async fn client_write_failed(&self, client_id: &str) -> StoreError {
        match self.client(client_id).await {
            Ok(Some(_)) => StoreError::Changed {
                kind: "client",
                name: client_id.to_owned(),
            },
            Ok(None) => StoreError::NotFound {
                kind: "client",
                name: client_id.to_owned(),
            },
            Err(e) => e,
        }
    }

    /// Replaces a confidential client's secret digest.
    pub async fn set_client_secret(
        &self,
        client_id: &str,
        secret_hash: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "UPDATE clients SET secret_hash = $1, updated_at = $2, revision = revision + 1 WHERE client_id = $3 AND secret_hash IS NOT NULL",
        )
        .bind(secret_hash)
        .bind(now)
        .bind(client_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "confidential client",
                name: client_id.to_owned(),
            });
        }
        Ok(())
    }

    pub async fn create_resource_server(&self, rs: &ResourceServer) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "INSERT INTO resource_servers (identifier, name, scopes, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&rs.identifier)
        .bind(&rs.name)
        .bind(to_json(&rs.scopes))
        .bind(rs.created_at)
        .execute(&self.pool)
        .await;
        match done {
            Err(e) if is_unique_violation(&e) => Err(StoreError::AlreadyExists {
                kind: "resource server",
                name: rs.identifier.clone(),
            }),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }

    pub async fn list_resource_servers(&self) -> Result<Vec<ResourceServer>, StoreError> {
        let rows = sqlx::query("SELECT * FROM resource_servers ORDER BY identifier")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ResourceServer {
                    identifier: row.try_get("identifier")?,
                    name: row.try_get("name")?,
                    scopes: json_list(row, "scopes")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Deletes a resource server, unless a client may still ask for one of its scopes
    /// ([`StoreError::InUse`]: tokens would keep carrying a scope nobody defines).
    pub async fn delete_resource_server(&self, identifier: &str) -> Result<(), StoreError> {
        let prefix = format!("{identifier}/");
        let users: Vec<String> = self
            .list_clients()
            .await?
            .into_iter()
            .filter(|c| c.scopes.iter().any(|s| s.starts_with(&prefix)))
            .map(|c| format!("client {}", c.client_id))
            .collect();
        if !users.is_empty() {
            return Err(StoreError::InUse {
                kind: "resource server",
                name: identifier.to_owned(),
                by: users.join(", "),
            });
        }
        let _turn = self.write_turn().await;
        let done = sqlx::query("DELETE FROM resource_servers WHERE identifier = $1")
            .bind(identifier)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "resource server",
                name: identifier.to_owned(),
            });
        }
        Ok(())
    }
}
