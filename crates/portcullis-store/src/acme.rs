//! Automatic certificates: the ACME account, the certificates, the challenge answers any node can
//! serve, and the lease that lets one node order at a time. Secrets arrive sealed.

use sqlx::Row;

use crate::{Store, StoreError};

/// A certificate obtained by ACME.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeCertificate {
    /// The sorted, comma-separated DNS names.
    pub names: String,
    pub chain_pem: String,
    pub sealed_key: String,
    /// Unix seconds.
    pub not_after: i64,
    pub updated_at: i64,
}

/// A challenge answer in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeChallenge {
    /// `http-01` or `tls-alpn-01`.
    pub kind: String,
    /// The HTTP-01 token, or the TLS-ALPN-01 name.
    pub lookup: String,
    pub answer: String,
    pub expires_at: i64,
}

impl Store {
    /// The sealed account credentials for `directory`, storing `candidate` first if there are
    /// none: when several nodes create an account at once, every one ends up using the first.
    pub async fn acme_account_get_or_insert(
        &self,
        directory: &str,
        candidate: Option<&str>,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        if let Some(candidate) = candidate {
            let _turn = self.write_turn().await;
            sqlx::query(
                "INSERT INTO acme_accounts (directory, sealed_credentials, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (directory) DO NOTHING",
            )
            .bind(directory)
            .bind(candidate)
            .bind(now)
            .execute(&self.pool)
            .await?;
        }
        let row = sqlx::query("SELECT sealed_credentials FROM acme_accounts WHERE directory = $1")
            .bind(directory)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("sealed_credentials")).transpose()?)
    }

    pub async fn acme_certificate(
        &self,
        names: &str,
    ) -> Result<Option<AcmeCertificate>, StoreError> {
        let row = sqlx::query("SELECT * FROM acme_certificates WHERE names = $1")
            .bind(names)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(AcmeCertificate {
                names: r.try_get("names")?,
                chain_pem: r.try_get("chain_pem")?,
                sealed_key: r.try_get("sealed_key")?,
                not_after: r.try_get("not_after")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    /// Stores (or replaces) the certificate for `c.names`.
    pub async fn acme_certificate_put(&self, c: &AcmeCertificate) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO acme_certificates (names, chain_pem, sealed_key, not_after, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (names) DO UPDATE SET chain_pem = excluded.chain_pem,
                 sealed_key = excluded.sealed_key, not_after = excluded.not_after,
                 updated_at = excluded.updated_at",
        )
        .bind(&c.names)
        .bind(&c.chain_pem)
        .bind(&c.sealed_key)
        .bind(c.not_after)
        .bind(c.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn acme_challenge_put(&self, c: &AcmeChallenge) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO acme_challenges (kind, lookup, answer, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, lookup) DO UPDATE SET answer = excluded.answer,
                 expires_at = excluded.expires_at",
        )
        .bind(&c.kind)
        .bind(&c.lookup)
        .bind(&c.answer)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a challenge answer, and every expired one.
    pub async fn acme_challenge_delete(
        &self,
        kind: &str,
        lookup: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "DELETE FROM acme_challenges WHERE (kind = $1 AND lookup = $2) OR expires_at <= $3",
        )
        .bind(kind)
        .bind(lookup)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Challenge answers not expired at `now`.
    pub async fn acme_challenges(&self, now: i64) -> Result<Vec<AcmeChallenge>, StoreError> {
        let rows = sqlx::query("SELECT * FROM acme_challenges WHERE expires_at > $1")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AcmeChallenge {
                    kind: r.try_get("kind")?,
                    lookup: r.try_get("lookup")?,
                    answer: r.try_get("answer")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    /// Takes (or extends) the lease `name` for `holder` until `until`, unless another holder's
    /// lease is still running at `now`. True when `holder` has it.
    pub async fn acme_lease_take(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let done = sqlx::query(
            "INSERT INTO acme_leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE acme_leases.expires_at <= $4 OR acme_leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease back, if `holder` has it.
    pub async fn acme_lease_release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM acme_leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
