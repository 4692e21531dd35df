//! The legacy password verifier: an HTTPS endpoint of the old system (a Lambda behind a
//! function URL, say) that says whether an imported user's password is right, the way
//! Cognito's user-migration trigger works. Asked once per user: on success the password's
//! Argon2id hash is stored and the user is an ordinary user from then on.
//!
//! The request is `POST <url>` with `{"username": …, "password": …}` as JSON and, when a secret
//! is configured, `Authorization: Bearer <secret>`; the answer must be 200 with
//! `{"valid": true}` or `{"valid": false}`. Anything else (another status, another body, a
//! timeout) is an outage: the sign-in gets "try again shortly", never a wrong-password answer.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use portcullis_token::Secret;
use serde_json::{Value, json};

/// `idp.legacy_verifier_*`, checked.
#[derive(Clone, Debug)]
pub struct LegacyConfig {
    pub url: String,
    pub secret: Option<Secret<String>>,
}

#[derive(Debug)]
pub struct HttpVerifier {
    http: reqwest::Client,
    config: LegacyConfig,
}

impl HttpVerifier {
    /// A verifier whose TLS trusts what the gateway trusts for upstreams.
    pub fn new(config: LegacyConfig, tls: rustls::ClientConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the legacy verifier's HTTP client: {e}"))?;
        Ok(HttpVerifier { http, config })
    }
}

impl portcullis_idp::LegacyVerifier for HttpVerifier {
    fn verify<'a>(
        &'a self,
        username: &'a str,
        password: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>> {
        Box::pin(async move {
            let mut req = self
                .http
                .post(&self.config.url)
                .json(&json!({ "username": username, "password": password }));
            if let Some(secret) = &self.config.secret {
                req = req.bearer_auth(secret.expose());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("{}: {}", self.config.url, e.without_url()))?;
            let status = resp.status();
            if status != reqwest::StatusCode::OK {
                return Err(format!("{} answered {status}", self.config.url));
            }
            let body: Value = resp.json().await.map_err(|e| {
                format!(
                    "{}: the answer is not JSON: {}",
                    self.config.url,
                    e.without_url()
                )
            })?;
            body.get("valid")
                .and_then(Value::as_bool)
                .ok_or_else(|| format!("{}: the answer has no boolean \"valid\"", self.config.url))
        })
    }
}
