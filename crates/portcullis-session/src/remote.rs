//! Sessions at an external OpenID provider (a Cognito user pool, Keycloak, another portcullis),
//! spoken to over HTTP: discovery (the gateway's typed [`discover`]), the token endpoint (code and
//! refresh grants), revocation and RP-initiated logout. Its keys come from its JWKS, cached like
//! the gateway's.

use portcullis_gateway::RefreshError;
use portcullis_gateway::issuers::{ExternalIssuer, IssuerConfig, discover, external};
use portcullis_token::jwt::{self, Expect, TokenUse};
use portcullis_token::{Clock, Secret};
use serde::Deserialize;

use crate::provider::{BoxFuture, ExchangeError, Me, SessionProvider, Tokens};

/// Sessions at an external provider last as long as its refresh token allows; the cookies are
/// kept this long (30 days) and the provider decides.
const EXTERNAL_COOKIE_AGE: i64 = 30 * 86400;

/// An external OpenID provider.
pub struct RemoteProvider {
    issuer: String,
    client_id: String,
    secret: Option<Secret<String>>,
    redirect_uri: String,
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
    keys: ExternalIssuer,
    groups_claim: String,
    http: reqwest::Client,
    clock: Clock,
}

/// Why a call to the provider failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    /// No answer, or a 5xx: the provider is unavailable.
    #[error("{0}")]
    Unreachable(String),
    /// A 4xx: the provider refused (an invalid grant, say).
    #[error("{0}")]
    Refused(String),
}

/// A token endpoint's answer (RFC 6749 §5.1): the fields read.
#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Providers that do not rotate refresh tokens (Cognito) return none on refresh.
    refresh_token: Option<String>,
    id_token: Option<String>,
}

/// An error answer (RFC 6749 §5.2).
#[derive(Debug, Default, Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: String,
}

impl RemoteProvider {
    /// Discovers `issuer` and prepares its keys; sessions come back to `<origin>/auth/callback`.
    pub async fn discover(
        issuer: &str,
        client_id: &str,
        secret: Option<Secret<String>>,
        groups_claim: &str,
        origin: &str,
    ) -> Result<RemoteProvider, String> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let doc = discover(&http, issuer).await.map_err(|e| e.to_string())?;
        let keys = external(&IssuerConfig {
            issuer: doc.issuer.clone(),
            jwks_uri: Some(doc.jwks_uri.clone()),
            audiences: vec![client_id.to_owned()],
            groups_claim: Some(groups_claim.to_owned()),
            token_use: Some("any".into()),
            leeway: None,
            // The sessions' provider is also a [[gateway.issuers]] entry, which decides how the
            // gateway matches its groups; these keys only check tokens at sign-in and /auth/me.
            fold_group_case: false,
        })
        .map_err(|e| e.to_string())?;
        keys.refresh().await;
        Ok(RemoteProvider {
            issuer: doc.issuer,
            client_id: client_id.to_owned(),
            secret,
            redirect_uri: format!("{origin}/auth/callback"),
            authorization_endpoint: doc
                .authorization_endpoint
                .ok_or("discovery has no authorization_endpoint")?,
            token_endpoint: doc
                .token_endpoint
                .ok_or("discovery has no token_endpoint")?,
            revocation_endpoint: doc.revocation_endpoint,
            end_session_endpoint: doc.end_session_endpoint,
            keys,
            groups_claim: groups_claim.to_owned(),
            http,
            clock: Clock::system(),
        })
    }

    /// POSTs a form with the client's authentication (HTTP Basic with a secret, else
    /// `client_id` in the form); the answer is read at most 256 KiB.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<T, PostError> {
        let mut form: Vec<(&str, &str)> = form.to_vec();
        let mut req = self.http.post(url);
        match &self.secret {
            Some(s) => req = req.basic_auth(&self.client_id, Some(s.expose())),
            None => form.push(("client_id", &self.client_id)),
        }
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| PostError::Unreachable(format!("{url}: {e}")))?;
        let status = resp.status();
        let body = portcullis_gateway::issuers::json_body_capped(resp, url)
            .await
            .unwrap_or_default();
        if status.is_server_error() {
            return Err(PostError::Unreachable(format!("{url}: HTTP {status}")));
        }
        if !status.is_success() {
            let error = serde_json::from_value::<ErrorAnswer>(body).unwrap_or_default();
            return Err(PostError::Refused(format!(
                "{url}: HTTP {status} {}",
                error.error
            )));
        }
        serde_json::from_value(body).map_err(|e| PostError::Refused(format!("{url}: {e}")))
    }

    /// Verifies a token of this provider (ID token: `nonce` checked by the caller).
    async fn verify(&self, token: &str, token_use: Option<TokenUse>) -> Option<jwt::Claims> {
        let aud = [self.client_id.clone()];
        let expect = Expect {
            issuer: &self.issuer,
            audiences: &aud,
            token_use,
            leeway: 30,
            exp_leeway: 30,
            now: self.clock.now(),
        };
        match jwt::verify(token, &self.keys.keys(), &expect) {
            Err(jwt::VerifyError::UnknownKey) if self.keys.refresh().await => {
                jwt::verify(token, &self.keys.keys(), &expect).ok()
            }
            other => other.ok(),
        }
    }
}

impl std::fmt::Debug for RemoteProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteProvider")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl SessionProvider for RemoteProvider {
    fn issuer(&self) -> &str {
        &self.issuer
    }

    fn authorize_url(&self, query: &[(&str, &str)]) -> Result<String, String> {
        let mut url = url::Url::parse(&self.authorization_endpoint).map_err(|e| e.to_string())?;
        url.query_pairs_mut().extend_pairs(query);
        Ok(url.to_string())
    }

    fn client_id(&self) -> &str {
        &self.client_id
    }

    fn now(&self) -> i64 {
        self.clock.now()
    }

    fn exchange_code<'a>(
        &'a self,
        code: &'a str,
        verifier: &'a str,
        nonce: &'a str,
    ) -> BoxFuture<'a, Result<Tokens, ExchangeError>> {
        Box::pin(async move {
            let answer: TokenAnswer = self
                .post(
                    &self.token_endpoint,
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", code),
                        ("redirect_uri", &self.redirect_uri),
                        ("code_verifier", verifier),
                    ],
                )
                .await
                .map_err(|e| {
                    tracing::info!(error = %e, "browser sign-in: code exchange refused");
                    ExchangeError::Refused
                })?;
            let id_ok = match answer.id_token.as_deref() {
                Some(t) => self
                    .verify(t, None)
                    .await
                    .is_some_and(|c| crate::nonce_matches(&c, nonce)),
                None => false,
            };
            match (id_ok, answer.refresh_token) {
                (true, Some(refresh)) => Ok(Tokens {
                    access: answer.access_token,
                    refresh,
                    max_age: EXTERNAL_COOKIE_AGE,
                }),
                _ => Err(ExchangeError::Mismatch),
            }
        })
    }

    fn refresh(&self, refresh_token: String) -> BoxFuture<'_, Result<Tokens, RefreshError>> {
        Box::pin(async move {
            let answer: TokenAnswer = self
                .post(
                    &self.token_endpoint,
                    &[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &refresh_token),
                    ],
                )
                .await
                .map_err(|e| {
                    tracing::info!(error = %e, "browser session could not be refreshed");
                    match e {
                        PostError::Unreachable(_) => RefreshError::Unavailable,
                        PostError::Refused(_) => RefreshError::Ended,
                    }
                })?;
            Ok(Tokens {
                access: answer.access_token,
                // A provider that does not rotate (Cognito) keeps the one we have.
                refresh: answer.refresh_token.unwrap_or(refresh_token),
                max_age: EXTERNAL_COOKIE_AGE,
            })
        })
    }

    fn sign_out<'a>(
        &'a self,
        _access: Option<&'a str>,
        refresh: Option<&'a str>,
        home: &'a str,
    ) -> BoxFuture<'a, String> {
        Box::pin(async move {
            if let (Some(endpoint), Some(refresh)) = (&self.revocation_endpoint, refresh)
                && let Err(e) = self
                    .post::<serde_json::Value>(
                        endpoint,
                        &[("token", refresh), ("token_type_hint", "refresh_token")],
                    )
                    .await
            {
                tracing::warn!(error = %e, "sign-out could not revoke the refresh token at the provider");
            }
            // Cognito reads client_id + logout_uri; OpenID providers post_logout_redirect_uri.
            match &self.end_session_endpoint {
                Some(e) => format!(
                    "{e}?client_id={}&logout_uri={home}&post_logout_redirect_uri={home}",
                    self.client_id
                ),
                None => "/".to_owned(),
            }
        })
    }

    fn whoami<'a>(&'a self, access: &'a str) -> BoxFuture<'a, Option<Me>> {
        Box::pin(async move {
            let c = self.verify(access, Some(TokenUse::Access)).await?;
            Some(Me {
                sub: c.sub.clone(),
                username: c.string("username").map(str::to_owned),
                groups: c.string_list(&self.groups_claim).unwrap_or_default(),
            })
        })
    }
}
