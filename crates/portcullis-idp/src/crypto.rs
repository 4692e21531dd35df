//! Small cryptographic helpers: random tokens, digests, PKCE, and signed opaque values.

use aws_lc_rs::{digest, hmac, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_token::{Secret, constant_time_eq};

/// A random token of 32 bytes (256 bits), base64url: codes, refresh tokens, session cookies.
pub fn random_token() -> Secret<String> {
    let mut bytes = [0u8; 32];
    // aws-lc's RNG only fails if the OS has no entropy source; nothing sensible can continue then.
    #[allow(clippy::expect_used)]
    rand::fill(&mut bytes).expect("the system random number generator failed");
    Secret::new(B64.encode(bytes))
}

/// A random identifier (96 bits), base64url: key ids, session ids, token ids.
pub fn random_id() -> String {
    let mut bytes = [0u8; 12];
    #[allow(clippy::expect_used)]
    rand::fill(&mut bytes).expect("the system random number generator failed");
    B64.encode(bytes)
}

/// Hex SHA-256: how secrets, codes and refresh tokens are stored.
pub fn sha256_hex(value: &str) -> String {
    digest::digest(&digest::SHA256, value.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// base64url(SHA-256(verifier)) per RFC 7636 §4.2 (S256).
pub fn pkce_s256(verifier: &str) -> String {
    B64.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// A PKCE verifier or challenge: 43–128 characters of `[A-Za-z0-9-._~]` (RFC 7636 §4.1).
pub fn is_pkce_value(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// `at_hash`: base64url of the left half of SHA-256 of the access token (OIDC Core §3.1.3.6).
pub fn at_hash(access_token: &str) -> String {
    let d = digest::digest(&digest::SHA256, access_token.as_bytes());
    B64.encode(&d.as_ref()[..16])
}

/// Signs and checks values that travel through the browser (the pending authorization request,
/// CSRF tokens), with a key derived from the instance secret, so every node can check what any
/// node issued.
#[derive(Clone)]
pub struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    pub fn derive(instance_secret: &Secret<String>, purpose: &str) -> Self {
        let base = hmac::Key::new(hmac::HMAC_SHA256, instance_secret.expose().as_bytes());
        let derived = hmac::sign(&base, format!("portcullis signer v1: {purpose}").as_bytes());
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// `payload` + "." + MAC, all base64url.
    pub fn sign(&self, payload: &[u8]) -> String {
        let tag = hmac::sign(&self.key, payload);
        format!("{}.{}", B64.encode(payload), B64.encode(tag.as_ref()))
    }

    /// The payload, if the MAC is right.
    pub fn open(&self, signed: &str) -> Option<Vec<u8>> {
        let (payload, tag) = signed.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        let expected = hmac::sign(&self.key, &payload);
        constant_time_eq(expected.as_ref(), &tag).then_some(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_an_independent_computation() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mJ92IZtCKkpY6Q6CXMuhNNEDAWMfsP0"),
            "DFXps3i_qlqRZyeNV7RZ_-85sBHFqI1Ce25f8imVr2o"
        );
        assert!(is_pkce_value(
            "dBjftJeZ4CVP-mJ92IZtCKkpY6Q6CXMuhNNEDAWMfsP0"
        ));
        assert!(!is_pkce_value("short"));
        assert!(!is_pkce_value(&"a+".repeat(30)));
    }

    #[test]
    fn signed_values_resist_tampering() {
        let s = Signer::derive(&Secret::new("x".repeat(40)), "test");
        let signed = s.sign(b"hello");
        assert_eq!(s.open(&signed).as_deref(), Some(&b"hello"[..]));
        let other = Signer::derive(&Secret::new("x".repeat(40)), "other purpose");
        assert!(other.open(&signed).is_none(), "keys are per purpose");
        let (p, t) = signed.split_once('.').expect("two parts");
        assert!(s.open(&format!("{}.{t}", B64.encode(b"hellO"))).is_none());
        assert!(s.open(p).is_none());
        assert_eq!(random_token().expose().len(), 43);
    }
}
