//! JWS compact serialization: signing, and verification with the checks of RFC 8725.
//!
//! Written on top of aws-lc-rs rather than taken from the `jsonwebtoken` crate, deliberately: that
//! crate re-parses the DER key on every signature and verification (its aws-lc backend has no
//! pre-parsed key type), needs PKCS#1 RSA keys that aws-lc-rs cannot export, and leaves the header
//! rules we need (`crit`, `kid` required, algorithm from the key) and strict claim types to the
//! caller anyway. The cryptography is aws-lc-rs; this module is framing and checks only.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value, json};

use crate::keys::{KeyError, SigningKey, VerifyingKey};

/// Longest token accepted. Real tokens are under 2 KiB; this bounds the work a hostile one costs.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The header `typ` of access tokens (RFC 9068); ID tokens use `JWT`.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Signs `claims` (a JSON object) with `key`; `typ` goes in the header.
pub fn sign(key: &SigningKey, typ: &str, claims: &Map<String, Value>) -> Result<String, KeyError> {
    let header = json!({ "alg": key.alg().as_str(), "kid": key.kid(), "typ": typ });
    let mut token = B64.encode(header.to_string());
    token.push('.');
    token.push_str(&B64.encode(Value::Object(claims.clone()).to_string()));
    let sig = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&B64.encode(sig));
    Ok(token)
}

/// Verifying keys by `kid`.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

impl KeySet {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        KeySet {
            keys: keys.into_iter().map(|k| (k.kid().to_owned(), k)).collect(),
        }
    }

    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.values()
    }
}

/// What a token is for (Cognito's `token_use`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenUse {
    Access,
    Id,
}

impl TokenUse {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenUse::Access => "access",
            TokenUse::Id => "id",
        }
    }
}

/// What a verified token must satisfy.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    /// The exact `iss`.
    pub issuer: &'a str,
    /// Accepted values of `aud` (any element) or `client_id`. Empty: not checked.
    pub audiences: &'a [String],
    /// Required `token_use`, if any.
    pub token_use: Option<TokenUse>,
    /// Clock skew allowed for `nbf` and `iat` (seconds): a token that becomes valid a little
    /// after our "now" by the issuer's clock.
    pub leeway: i64,
    /// How long past `exp` a token still counts (seconds); 0 is strict: refused from `exp` on.
    pub exp_leeway: i64,
    /// Now, Unix seconds.
    pub now: i64,
}

/// Why a token was refused. Deliberately coarse towards clients (every variant is a 401); the
/// variant is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("token is too large")]
    TooLarge,
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token header has `crit` extensions this verifier does not implement")]
    CriticalHeader,
    #[error("token is signed with an unknown key")]
    UnknownKey,
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token is not of the expected use")]
    WrongTokenUse,
    #[error("token claim `{0}` has the wrong type")]
    BadClaim(&'static str),
}

/// A token that passed every check.
#[derive(Clone, Debug)]
pub struct Claims {
    pub kid: String,
    pub sub: Option<String>,
    pub exp: i64,
    pub iat: Option<i64>,
    pub jti: Option<String>,
    pub sid: Option<String>,
    pub client_id: Option<String>,
    /// Space-separated `scope`, split.
    pub scopes: Vec<String>,
    pub raw: Map<String, Value>,
}

impl Claims {
    /// A claim holding a list of strings (such as `groups` or `cognito:groups`); a missing claim
    /// is an empty list, a claim of another type is an error.
    pub fn string_list(&self, name: &str) -> Result<Vec<String>, VerifyError> {
        match self.raw.get(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or(VerifyError::BadClaim("groups"))
                })
                .collect(),
            Some(_) => Err(VerifyError::BadClaim("groups")),
        }
    }

    /// A string claim, if present and a string.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.raw.get(name).and_then(Value::as_str)
    }
}

/// A base64url JSON object with unique member names: a header or claims set naming a member
/// twice is refused, so no other parser can read a different `sub`, `groups` or `alg` from it.
fn decode_json(part: &str, what: &'static str) -> Result<Map<String, Value>, VerifyError> {
    let bytes = B64.decode(part).map_err(|_| VerifyError::Malformed(what))?;
    match crate::strict_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Err(e) if crate::strict_json::is_repeated_member(&e) => {
            Err(VerifyError::Malformed(if what == "header" {
                "header member repeated"
            } else {
                "claim repeated"
            }))
        }
        _ => Err(VerifyError::Malformed(what)),
    }
}

fn int_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        // NumericDate as an integer; a string ("exp": "9999999999") or a float is refused.
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(VerifyError::BadClaim(name)),
        Some(_) => Err(VerifyError::BadClaim(name)),
    }
}

fn str_claim(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, VerifyError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(VerifyError::BadClaim(name)),
    }
}

/// Verifies a compact JWS and its claims.
///
/// Header rules: `kid` is required and selects the key; the key decides the algorithm and the
/// header's `alg` must name exactly that one; `jku`, `x5u`, `jwk` and `x5c` are ignored (keys only
/// ever come from the key set); any `crit` is refused.
pub fn verify(token: &str, keys: &KeySet, expect: &Expect<'_>) -> Result<Claims, VerifyError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("not three dot-separated parts"));
    };
    let header = decode_json(h, "header")?;
    if header.contains_key("crit") {
        return Err(VerifyError::CriticalHeader);
    }
    let kid = match header.get("kid") {
        Some(Value::String(k)) => k,
        _ => return Err(VerifyError::UnknownKey),
    };
    let key = keys.get(kid).ok_or(VerifyError::UnknownKey)?;
    if header.get("alg").and_then(Value::as_str) != Some(key.alg().as_str()) {
        return Err(VerifyError::AlgorithmMismatch);
    }
    let sig = B64
        .decode(s)
        .map_err(|_| VerifyError::Malformed("signature"))?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    if !key.verify(signing_input.as_bytes(), &sig) {
        return Err(VerifyError::BadSignature);
    }
    let claims = decode_json(p, "payload")?;
    check_claims(kid, claims, expect)
}

fn check_claims(
    kid: &str,
    claims: Map<String, Value>,
    expect: &Expect<'_>,
) -> Result<Claims, VerifyError> {
    let exp = int_claim(&claims, "exp")?.ok_or(VerifyError::BadClaim("exp"))?;
    let nbf = int_claim(&claims, "nbf")?;
    let iat = int_claim(&claims, "iat")?;
    if expect.now >= exp.saturating_add(expect.exp_leeway) {
        return Err(VerifyError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > expect.now.saturating_add(expect.leeway)) {
        return Err(VerifyError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > expect.now.saturating_add(expect.leeway)) {
        return Err(VerifyError::IssuedInFuture);
    }
    if str_claim(&claims, "iss")?.as_deref() != Some(expect.issuer) {
        return Err(VerifyError::WrongIssuer);
    }
    let client_id = str_claim(&claims, "client_id")?;
    if !expect.audiences.is_empty() {
        let aud: Vec<&str> = match claims.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().ok_or(VerifyError::BadClaim("aud")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(VerifyError::BadClaim("aud")),
        };
        let accepted = |v: &str| expect.audiences.iter().any(|a| a == v);
        if !aud.iter().any(|a| accepted(a)) && !client_id.as_deref().is_some_and(accepted) {
            return Err(VerifyError::WrongAudience);
        }
    }
    if let Some(want) = expect.token_use
        && str_claim(&claims, "token_use")?.as_deref() != Some(want.as_str())
    {
        return Err(VerifyError::WrongTokenUse);
    }
    let scopes = str_claim(&claims, "scope")?
        .map(|s| {
            s.split(' ')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(Claims {
        kid: kid.to_owned(),
        sub: str_claim(&claims, "sub")?,
        exp,
        iat,
        jti: str_claim(&claims, "jti")?,
        sid: str_claim(&claims, "sid")?,
        client_id,
        scopes,
        raw: claims,
    })
}
