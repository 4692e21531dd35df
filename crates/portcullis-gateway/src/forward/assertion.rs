//! `X-Auth-Assertion`: a short JWT about the caller that the upstream can verify with the JWKS,
//! so it need not trust headers alone.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use portcullis_token::Clock;
use serde_json::json;

use crate::authn::{Identity, KeySource};

/// Signs assertions with the access-token key and keeps each for 30 of its 60 seconds per token
/// and audience, so signing is not per request.
pub(crate) struct Assertions {
    issuer: String,
    keys: Arc<dyn KeySource>,
    clock: Clock,
    cache: moka::sync::Cache<String, HeaderValue>,
}

impl Assertions {
    pub(crate) fn new(issuer: String, keys: Arc<dyn KeySource>, clock: Clock) -> Assertions {
        Assertions {
            issuer,
            keys,
            clock,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
        }
    }

    /// The assertion about `id` for audience `aud`; `None` when there is no signing key.
    pub(crate) fn for_caller(&self, id: &Identity, aud: &str) -> Option<HeaderValue> {
        let key = format!(
            "{}\u{0}{}\u{0}{}",
            id.jti.as_deref().unwrap_or(&id.sub),
            id.exp,
            aud
        );
        if let Some(v) = self.cache.get(&key) {
            return Some(v);
        }
        let signing = self.keys.assertion_key()?;
        let now = self.clock.now();
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("aud".into(), json!(aud));
        claims.insert("sub".into(), json!(id.sub));
        claims.insert("token_use".into(), json!("assertion"));
        claims.insert("groups".into(), json!(id.groups));
        claims.insert("scope".into(), json!(id.scopes.join(" ")));
        if let Some(u) = &id.username {
            claims.insert("username".into(), json!(u));
        }
        if let Some(c) = &id.client_id {
            claims.insert("client_id".into(), json!(c));
        }
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + 60));
        let token = portcullis_token::jwt::sign(&signing, "JWT", &claims).ok()?;
        let value = HeaderValue::from_str(&token).ok()?;
        self.cache.insert(key, value.clone());
        Some(value)
    }
}
