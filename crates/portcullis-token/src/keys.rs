//! Signing keys and verifying keys, with their JWK forms.
//!
//! Keys are parsed once, when loaded, and kept parsed: a signature or a verification touches no
//! DER or JSON. The algorithm belongs to the key, never to a token: a verifying key accepts only
//! the one algorithm it was created for (RFC 8725 §3.1), so `alg: none`, HS256-with-a-public-key
//! and RSA/EC confusion cannot even be expressed.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use crate::Secret;

/// A JWS algorithm portcullis signs or verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256: the default for access tokens (fast to sign).
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256: the default for ID tokens (OIDC's mandatory algorithm).
    RS256,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Parses a JOSE name, exactly (no case folding: `none`, `None` and `NONE` are all refused).
    pub fn parse(name: &str) -> Option<Algorithm> {
        match name {
            "ES256" => Some(Algorithm::ES256),
            "RS256" => Some(Algorithm::RS256),
            "EdDSA" => Some(Algorithm::EdDSA),
            _ => None,
        }
    }

    fn verification(self) -> &'static dyn signature::VerificationAlgorithm {
        match self {
            Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::EdDSA => &signature::ED25519,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key could not be created, parsed or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate a {0} key")]
    Generate(Algorithm),
    #[error("the {alg} private key is invalid: {reason}")]
    InvalidPrivate { alg: Algorithm, reason: String },
    #[error("the JWK is invalid or unsupported: {0}")]
    InvalidJwk(String),
    #[error("signing failed")]
    Sign,
}

enum Private {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private key that signs tokens.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    private: Private,
    pkcs8: Secret<Vec<u8>>,
    public: VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a new key (RSA keys are 2048-bit).
    pub fn generate(alg: Algorithm, kid: impl Into<String>) -> Result<SigningKey, KeyError> {
        let pkcs8: Vec<u8> = match alg {
            Algorithm::ES256 => EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| KeyError::Generate(alg))?,
            Algorithm::RS256 => RsaKeyPair::generate(KeySize::Rsa2048)
                .map_err(|_| KeyError::Generate(alg))
                .and_then(|k| k.as_der().map_err(|_| KeyError::Generate(alg)))
                .map(|d| d.as_ref().to_vec())?,
            Algorithm::EdDSA => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8v1())
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| KeyError::Generate(alg))?,
        };
        SigningKey::from_pkcs8(alg, kid, &pkcs8)
    }

    /// Loads a PKCS#8 private key.
    pub fn from_pkcs8(
        alg: Algorithm,
        kid: impl Into<String>,
        der: &[u8],
    ) -> Result<SigningKey, KeyError> {
        let kid = kid.into();
        let invalid = |e: String| KeyError::InvalidPrivate { alg, reason: e };
        let (private, public_bytes): (Private, Vec<u8>) = match alg {
            Algorithm::ES256 => {
                let k = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| invalid(e.to_string()))?;
                let public = k.public_key().as_ref().to_vec();
                (Private::Ec(k), public)
            }
            Algorithm::RS256 => {
                let k = RsaKeyPair::from_pkcs8(der).map_err(|e| invalid(e.to_string()))?;
                let public = k.public_key().as_ref().to_vec();
                (Private::Rsa(k), public)
            }
            Algorithm::EdDSA => {
                let k = Ed25519KeyPair::from_pkcs8(der).map_err(|e| invalid(e.to_string()))?;
                let public = k.public_key().as_ref().to_vec();
                (Private::Ed(k), public)
            }
        };
        let jwk = match &private {
            Private::Ec(_) => {
                ec_jwk(&public_bytes).ok_or_else(|| invalid("unexpected EC point".into()))?
            }
            Private::Rsa(k) => {
                let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({ "kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e) })
            }
            Private::Ed(_) => {
                json!({ "kty": "OKP", "crv": "Ed25519", "x": B64.encode(&public_bytes) })
            }
        };
        let public = VerifyingKey::new(kid.clone(), alg, &public_bytes, jwk)?;
        Ok(SigningKey {
            kid,
            alg,
            private,
            pkcs8: Secret::new(der.to_vec()),
            public,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The private key as PKCS#8 DER, for encrypted storage.
    pub fn pkcs8(&self) -> &Secret<Vec<u8>> {
        &self.pkcs8
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs `message` (the JWS signing input).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match &self.private {
            Private::Ec(k) => k
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            Private::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
            Private::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
        }
    }
}

fn ec_jwk(point: &[u8]) -> Option<Value> {
    // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
    if point.len() != 65 || point[0] != 4 {
        return None;
    }
    Some(
        json!({ "kty": "EC", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]) }),
    )
}

/// A public key that verifies signatures of one algorithm.
#[derive(Clone)]
pub struct VerifyingKey {
    kid: String,
    alg: Algorithm,
    key: ParsedPublicKey,
    jwk: Value,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    fn new(kid: String, alg: Algorithm, public: &[u8], mut jwk: Value) -> Result<Self, KeyError> {
        let key = ParsedPublicKey::new(alg.verification(), public)
            .map_err(|e| KeyError::InvalidJwk(format!("public key rejected: {e}")))?;
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg.as_str());
        jwk["use"] = json!("sig");
        Ok(VerifyingKey { kid, alg, key, jwk })
    }

    /// Reads one key of a JWKS document. Keys without a `kid`, for encryption (`use: enc`), or of
    /// an unsupported type are refused; the algorithm is the JWK's `alg`, or implied by its curve
    /// (RSA keys without `alg` are taken as RS256).
    pub fn from_jwk(jwk: &Value) -> Result<VerifyingKey, KeyError> {
        let bad = |m: &str| KeyError::InvalidJwk(m.to_owned());
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let b64 = |name: &str| -> Result<Vec<u8>, KeyError> {
            let v = field(name).ok_or_else(|| bad(&format!("missing `{name}`")))?;
            B64.decode(v)
                .map_err(|_| bad(&format!("`{name}` is not base64url")))
        };
        let kid = field("kid").ok_or_else(|| bad("missing `kid`"))?.to_owned();
        if field("use").is_some_and(|u| u != "sig") {
            return Err(bad("not a signature key (`use` is not `sig`)"));
        }
        let declared = match field("alg") {
            Some(a) => {
                Some(Algorithm::parse(a).ok_or_else(|| bad(&format!("unsupported alg {a:?}")))?)
            }
            None => None,
        };
        let (alg, public) = match (field("kty"), field("crv")) {
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (b64("x")?, b64("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("P-256 coordinates must be 32 bytes"));
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (Algorithm::ES256, point)
            }
            (Some("OKP"), Some("Ed25519")) => (Algorithm::EdDSA, b64("x")?),
            (Some("RSA"), _) => {
                let (n, e) = (b64("n")?, b64("e")?);
                let components = aws_lc_rs::rsa::PublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                };
                let der = components
                    .as_der()
                    .map_err(|_| bad("invalid RSA public key"))?;
                (Algorithm::RS256, der.as_ref().to_vec())
            }
            _ => {
                return Err(bad(
                    "unsupported key type (supported: EC P-256, RSA, OKP Ed25519)",
                ));
            }
        };
        if declared.is_some_and(|d| d != alg) {
            return Err(bad("`alg` does not match the key type"));
        }
        let mut public_jwk = jwk.clone();
        if let Some(obj) = public_jwk.as_object_mut() {
            obj.retain(|k, _| matches!(k.as_str(), "kty" | "crv" | "x" | "y" | "n" | "e"));
        }
        VerifyingKey::new(kid, alg, &public, public_jwk)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public JWK (`kty`, key material, `kid`, `alg`, `use`).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// Verifies a signature over `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        self.key.verify_sig(message, sig).is_ok()
    }
}

/// A JWKS document for a set of keys.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a VerifyingKey>) -> Value {
    json!({ "keys": keys.into_iter().map(|k| k.jwk().clone()).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_signs_verifies_and_round_trips_through_jwk_and_pkcs8() {
        for alg in [Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA] {
            let key = SigningKey::generate(alg, format!("k-{alg}")).expect("generate");
            let sig = key.sign(b"message").expect("sign");
            assert!(key.verifying_key().verify(b"message", &sig), "{alg}");
            assert!(!key.verifying_key().verify(b"messagE", &sig), "{alg}");
            let from_jwk = VerifyingKey::from_jwk(key.verifying_key().jwk()).expect("from jwk");
            assert_eq!(from_jwk.alg(), alg);
            assert!(from_jwk.verify(b"message", &sig), "{alg} via JWK");
            let reloaded =
                SigningKey::from_pkcs8(alg, "again", key.pkcs8().expose()).expect("reload");
            assert!(
                reloaded
                    .verifying_key()
                    .verify(b"m2", &key.sign(b"m2").expect("sign"))
            );
            let jwk = key.verifying_key().jwk();
            assert_eq!(jwk["use"], "sig");
            assert!(
                jwk.get("d").is_none() && jwk.get("p").is_none(),
                "no private parts in a JWK: {jwk}"
            );
        }
    }

    #[test]
    fn algorithm_names_are_exact() {
        for bad in [
            "none", "None", "NONE", "nOnE", "HS256", "es256", "RS512", "",
        ] {
            assert_eq!(Algorithm::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_jwks_are_refused() {
        let key = SigningKey::generate(Algorithm::ES256, "k").expect("generate");
        let mut jwk = key.verifying_key().jwk().clone();
        jwk["alg"] = json!("RS256");
        assert!(
            VerifyingKey::from_jwk(&jwk).is_err(),
            "alg must match the key type"
        );
        let mut jwk = key.verifying_key().jwk().clone();
        jwk["use"] = json!("enc");
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
        let mut jwk = key.verifying_key().jwk().clone();
        jwk.as_object_mut().expect("object").remove("kid");
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
        assert!(
            VerifyingKey::from_jwk(&json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"})).is_err(),
            "no symmetric keys"
        );
        let mut jwk = key.verifying_key().jwk().clone();
        jwk["x"] = json!(B64.encode([0u8; 32]));
        assert!(
            VerifyingKey::from_jwk(&jwk).is_err(),
            "a point not on the curve"
        );
    }
}
