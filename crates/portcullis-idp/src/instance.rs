//! The instance secret: the key that encrypts signing keys at rest.
//!
//! It comes from the operator (environment or file) or, when none is given, is generated on first
//! start and kept in the store so every node of a cluster shares it. Either way the store keeps a
//! check value, so a node started with a different secret refuses to run instead of failing to
//! decrypt keys later.

use aws_lc_rs::digest;
use portcullis_store::{Store, StoreError};
use portcullis_token::{Secret, constant_time_eq};
use rand::distr::{Alphanumeric, SampleString};

const GENERATED: &str = "instance_secret";
const CHECK: &str = "instance_secret_check";

/// The instance secret could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "the instance secret given does not match the one this database was set up with; start with the original secret (PORTCULLIS_INSTANCE_SECRET or secrets.instance_secret_file), or use a new database"
    )]
    Mismatch,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn check_value(secret: &str) -> String {
    let d = digest::digest(
        &digest::SHA256,
        format!("portcullis instance secret check v1\0{secret}").as_bytes(),
    );
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Returns the instance secret to use, generating and storing one if the operator gave none.
pub async fn resolve_instance_secret(
    store: &Store,
    provided: Option<Secret<String>>,
    now: i64,
) -> Result<Secret<String>, InstanceError> {
    let secret = match provided {
        Some(secret) => secret,
        None => {
            let candidate = Secret::new(Alphanumeric.sample_string(&mut rand::rng(), 64));
            Secret::new(
                store
                    .setting_get_or_insert(GENERATED, candidate.expose(), now)
                    .await?,
            )
        }
    };
    let check = check_value(secret.expose());
    let stored = store.setting_get_or_insert(CHECK, &check, now).await?;
    if !constant_time_eq(stored.as_bytes(), check.as_bytes()) {
        return Err(InstanceError::Mismatch);
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_store::StoreOptions;

    #[tokio::test]
    async fn generated_once_then_stable_and_checked() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&StoreOptions::sqlite(&dir.path().join("s.db")))
            .await
            .expect("open");
        let first = resolve_instance_secret(&store, None, 1)
            .await
            .expect("generate");
        assert_eq!(first.expose().len(), 64);
        let again = resolve_instance_secret(&store, None, 2)
            .await
            .expect("reuse");
        assert_eq!(first.expose(), again.expose());
        let other = Secret::new("another secret that is long enough for us!".to_owned());
        assert!(matches!(
            resolve_instance_secret(&store, Some(other), 3).await,
            Err(InstanceError::Mismatch)
        ));
        let same = Secret::new(first.expose().clone());
        assert!(resolve_instance_secret(&store, Some(same), 4).await.is_ok());
    }

    #[tokio::test]
    async fn an_external_secret_is_never_stored() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&StoreOptions::sqlite(&dir.path().join("s.db")))
            .await
            .expect("open");
        let given = Secret::new("operator-provided-secret-0123456789abcdef".to_owned());
        resolve_instance_secret(&store, Some(given.clone()), 1)
            .await
            .expect("accept");
        assert_eq!(store.setting(GENERATED).await.expect("read"), None);
        assert_ne!(
            store.setting(CHECK).await.expect("read").as_deref(),
            Some(given.expose().as_str())
        );
        // Dropping the external secret later is refused rather than silently generating a new one.
        assert!(matches!(
            resolve_instance_secret(&store, None, 2).await,
            Err(InstanceError::Mismatch)
        ));
    }
}
