//! Encryption at rest for private keys: AES-256-GCM under a key derived from the instance secret
//! with HKDF-SHA256. The key id is bound as associated data, so a sealed key cannot be swapped
//! for another row's; the sealed form names the encryption key it was made with, so the instance
//! secret can later rotate with old and new both readable.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{digest, hkdf, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::Secret;

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value was made with another instance secret (key {0})")]
    OtherKey(String),
    #[error("sealed value does not decrypt: wrong key, wrong key id, or tampered")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

/// The key that seals private keys.
pub struct KeyEncryptionKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEncryptionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

impl KeyEncryptionKey {
    /// Derives the key that seals private keys from the instance secret.
    pub fn derive(instance_secret: &Secret<String>) -> Result<Self, SealError> {
        Self::derive_for(instance_secret, "signing-key-encryption v1")
    }

    /// Derives a key for another purpose (each purpose gets its own key).
    pub fn derive_for(instance_secret: &Secret<String>, purpose: &str) -> Result<Self, SealError> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"portcullis")
            .extract(instance_secret.expose().as_bytes());
        let mut raw = [0u8; 32];
        prk.expand(&[purpose.as_bytes()], Len32)
            .and_then(|okm| okm.fill(&mut raw))
            .map_err(|_| SealError::Encrypt)?;
        let id_digest = digest::digest(&digest::SHA256, &[b"kek-id v1:".as_slice(), &raw].concat());
        let id = id_digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| SealError::Encrypt)?;
        zeroize::Zeroize::zeroize(&mut raw);
        Ok(KeyEncryptionKey {
            key: LessSafeKey::new(key),
            id,
        })
    }

    /// Which encryption key this is (not secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext`, bound to `context` (such as the key id).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).map_err(|_| SealError::Encrypt)?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Encrypt)?;
        Ok(format!(
            "v1.{}.{}.{}",
            self.id,
            B64.encode(nonce),
            B64.encode(buf)
        ))
    }

    /// Decrypts a value sealed with [`seal`](Self::seal) under the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Secret<Vec<u8>>, SealError> {
        let mut parts = sealed.split('.');
        let (Some("v1"), Some(id), Some(nonce), Some(body), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(SealError::Malformed);
        };
        if id != self.id {
            return Err(SealError::OtherKey(id.to_owned()));
        }
        let nonce: [u8; NONCE_LEN] = B64
            .decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(SealError::Malformed)?;
        let mut buf = B64.decode(body).map_err(|_| SealError::Malformed)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Decrypt)?
            .to_vec();
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(Secret::new(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let kek =
            KeyEncryptionKey::derive(&Secret::new("an instance secret of enough length!!".into()))
                .expect("derive");
        let sealed = kek.seal("kid-1", b"private key bytes").expect("seal");
        assert!(!sealed.contains("private"));
        assert_eq!(
            kek.open("kid-1", &sealed).expect("open").expose(),
            b"private key bytes"
        );
        assert!(
            matches!(kek.open("kid-2", &sealed), Err(SealError::Decrypt)),
            "bound to its key id"
        );
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            kek.open("kid-1", &String::from_utf8(tampered).expect("utf8"))
                .is_err()
        );
        let other = KeyEncryptionKey::derive(&Secret::new(
            "a different instance secret, also long".into(),
        ))
        .expect("derive");
        assert!(matches!(
            other.open("kid-1", &sealed),
            Err(SealError::OtherKey(_))
        ));
        assert!(matches!(
            kek.open("kid-1", "v1.x"),
            Err(SealError::Malformed)
        ));
    }
}
