//! The identity provider's signing keys: created on first start, sealed in the store, rotated
//! with overlap, and cached in memory (re-read when the store's key version changes, so every
//! node follows a rotation made on any of them).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use portcullis_store::{Store, StoredKey};
use portcullis_token::jwt::KeySet;
use portcullis_token::{Algorithm, KeyEncryptionKey, SigningKey, VerifyingKey, jwks};
use serde_json::Value;

use crate::crypto::random_id;

/// What a key signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Access,
    Id,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Access => "access",
            Purpose::Id => "id",
        }
    }
}

/// A key ring could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error(transparent)]
    Store(#[from] portcullis_store::StoreError),
    #[error("signing key {kid}: {reason}")]
    Key { kid: String, reason: String },
    #[error("no active {0} signing key")]
    NoActiveKey(&'static str),
}

#[derive(Debug)]
struct Loaded {
    version: String,
    /// (purpose, activate_at, key), oldest first.
    keys: Vec<(Purpose, i64, Arc<SigningKey>)>,
    verify: Arc<KeySet>,
    jwks: Value,
}

/// Key configuration.
#[derive(Clone, Copy, Debug)]
pub struct KeyPolicy {
    pub access_alg: Algorithm,
    pub id_alg: Algorithm,
    /// A new key is published this long before it signs.
    pub rotation_delay: i64,
    /// An old key stays published this long after its successor starts signing (the longest
    /// token lifetime).
    pub retire_after: i64,
}

/// The signing keys.
#[derive(Debug, Clone)]
pub struct KeyRing {
    store: Store,
    kek: Arc<KeyEncryptionKey>,
    policy: KeyPolicy,
    loaded: Arc<RwLock<Arc<Loaded>>>,
    checked: Arc<RwLock<Instant>>,
}

/// How often the store is asked whether keys changed.
const RECHECK: Duration = Duration::from_secs(1);

impl KeyRing {
    /// Loads the keys, creating the first ones if there are none.
    pub async fn open(
        store: Store,
        kek: KeyEncryptionKey,
        policy: KeyPolicy,
        now: i64,
    ) -> Result<KeyRing, KeyRingError> {
        let kek = Arc::new(kek);
        let mut loaded = load(&store, &kek, now).await?;
        let mut created = false;
        for (purpose, alg) in [
            (Purpose::Access, policy.access_alg),
            (Purpose::Id, policy.id_alg),
        ] {
            if !loaded
                .keys
                .iter()
                .any(|(p, at, k)| *p == purpose && *at <= now && k.alg() == alg)
            {
                insert_new(&store, &kek, purpose, alg, now, now).await?;
                created = true;
            }
        }
        if created {
            loaded = load(&store, &kek, now).await?;
        }
        Ok(KeyRing {
            store,
            kek,
            policy,
            loaded: Arc::new(RwLock::new(Arc::new(loaded))),
            checked: Arc::new(RwLock::new(Instant::now())),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the keys if the store says they changed (at most once a second).
    pub async fn refresh(&self, now: i64) -> Result<(), KeyRingError> {
        let due = self
            .checked
            .read()
            .map(|t| t.elapsed() >= RECHECK)
            .unwrap_or(true);
        if !due {
            return Ok(());
        }
        if let Ok(mut t) = self.checked.write() {
            *t = Instant::now();
        }
        self.reload_if_changed(now).await
    }

    /// Re-reads the keys now if the store says they changed, however recently they were last
    /// checked: another node announced a change (a rotation it published must be verifiable
    /// here before it starts signing).
    pub async fn reload(&self, now: i64) -> Result<(), KeyRingError> {
        if let Ok(mut t) = self.checked.write() {
            *t = Instant::now();
        }
        self.reload_if_changed(now).await
    }

    async fn reload_if_changed(&self, now: i64) -> Result<(), KeyRingError> {
        let version = self.store.signing_keys_version().await?;
        if version != self.current().version {
            let fresh = Arc::new(load(&self.store, &self.kek, now).await?);
            if let Ok(mut l) = self.loaded.write() {
                *l = fresh;
            }
        }
        Ok(())
    }

    /// The key that signs `purpose` tokens now: the most recently activated one.
    pub fn signing_key(
        &self,
        purpose: Purpose,
        alg: Option<Algorithm>,
        now: i64,
    ) -> Result<Arc<SigningKey>, KeyRingError> {
        let alg = alg.unwrap_or(match purpose {
            Purpose::Access => self.policy.access_alg,
            Purpose::Id => self.policy.id_alg,
        });
        let loaded = self.current();
        // A key of the purpose first; an ES256 ID token (per-client choice) may use the access key.
        let pick = |same_purpose: bool| {
            loaded
                .keys
                .iter()
                .filter(|(p, at, k)| {
                    *at <= now && k.alg() == alg && (!same_purpose || *p == purpose)
                })
                .max_by_key(|(_, at, _)| *at)
                .map(|(_, _, k)| k.clone())
        };
        pick(true)
            .or_else(|| pick(false))
            .ok_or(KeyRingError::NoActiveKey(purpose.as_str()))
    }

    /// Every published public key, for verification.
    pub fn verification_keys(&self) -> Arc<KeySet> {
        self.current().verify.clone()
    }

    /// The JWKS document.
    pub fn jwks(&self) -> Value {
        self.current().jwks.clone()
    }

    /// Publishes new keys that start signing after the rotation delay, and schedules the
    /// retirement of the keys they replace. Returns the new key ids.
    pub async fn rotate(&self, now: i64) -> Result<Vec<String>, KeyRingError> {
        let current = self.current();
        // Strictly after every existing key, so "the newest active key signs" is never a tie.
        let latest = current
            .keys
            .iter()
            .map(|(_, at, _)| *at)
            .max()
            .unwrap_or(i64::MIN);
        let activate_at = (now + self.policy.rotation_delay).max(latest.saturating_add(1));
        let mut new = Vec::new();
        for (purpose, alg) in [
            (Purpose::Access, self.policy.access_alg),
            (Purpose::Id, self.policy.id_alg),
        ] {
            for (p, _, k) in &current.keys {
                if *p == purpose {
                    self.store
                        .retire_signing_key(k.kid(), activate_at + self.policy.retire_after)
                        .await?;
                }
            }
            new.push(insert_new(&self.store, &self.kek, purpose, alg, activate_at, now).await?);
        }
        self.reload_if_changed(now).await?;
        Ok(new)
    }

    /// The stored keys with their schedule, for `keys list`.
    pub async fn list(&self, now: i64) -> Result<Vec<StoredKey>, KeyRingError> {
        Ok(self.store.signing_keys(now).await?)
    }
}

async fn insert_new(
    store: &Store,
    kek: &KeyEncryptionKey,
    purpose: Purpose,
    alg: Algorithm,
    activate_at: i64,
    now: i64,
) -> Result<String, KeyRingError> {
    let kid = random_id();
    let key = SigningKey::generate(alg, kid.clone()).map_err(|e| KeyRingError::Key {
        kid: kid.clone(),
        reason: e.to_string(),
    })?;
    let sealed = kek
        .seal(&kid, key.pkcs8().expose())
        .map_err(|e| KeyRingError::Key {
            kid: kid.clone(),
            reason: e.to_string(),
        })?;
    store
        .insert_signing_key(&StoredKey {
            kid: kid.clone(),
            alg: alg.as_str().to_owned(),
            purpose: purpose.as_str().to_owned(),
            sealed,
            public_jwk: key.verifying_key().jwk().to_string(),
            created_at: now,
            activate_at,
            retire_at: None,
        })
        .await?;
    Ok(kid)
}

async fn load(store: &Store, kek: &KeyEncryptionKey, now: i64) -> Result<Loaded, KeyRingError> {
    let version = store.signing_keys_version().await?;
    let mut keys = Vec::new();
    for stored in store.signing_keys(now).await? {
        let err = |reason: String| KeyRingError::Key {
            kid: stored.kid.clone(),
            reason,
        };
        let alg = Algorithm::parse(&stored.alg)
            .ok_or_else(|| err(format!("unknown algorithm {}", stored.alg)))?;
        let der = kek
            .open(&stored.kid, &stored.sealed)
            .map_err(|e| err(e.to_string()))?;
        let key = SigningKey::from_pkcs8(alg, stored.kid.clone(), der.expose())
            .map_err(|e| err(e.to_string()))?;
        let purpose = if stored.purpose == "id" {
            Purpose::Id
        } else {
            Purpose::Access
        };
        keys.push((purpose, stored.activate_at, Arc::new(key)));
    }
    let public: Vec<VerifyingKey> = keys
        .iter()
        .map(|(_, _, k)| k.verifying_key().clone())
        .collect();
    Ok(Loaded {
        version,
        jwks: jwks(&public),
        verify: Arc::new(KeySet::new(public)),
        keys,
    })
}
