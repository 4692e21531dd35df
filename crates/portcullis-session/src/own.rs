//! Sessions at this instance's own identity provider, in process: the code exchange, refresh and
//! revocation call the provider directly (typed grants), never over the network.

use portcullis_gateway::RefreshError;
use portcullis_idp::{Grant, NewClient, OAuthError, Provider};
use portcullis_token::jwt::{self, Expect, TokenUse};

use crate::provider::{BoxFuture, ExchangeError, Me, SessionProvider, Tokens};

/// The client the browser sessions use at our own provider.
pub const BFF_CLIENT: &str = "portcullis-browser";

/// This instance's provider, spoken to in process.
pub struct OwnProvider {
    provider: Provider,
    redirect_uri: String,
}

impl OwnProvider {
    /// Registers (or updates) the browser-session client: redirect `<origin>/auth/callback`,
    /// sign-out back to `<origin>/`, access tokens of `access_ttl` seconds.
    pub async fn register(
        provider: Provider,
        origin: &str,
        access_ttl: i64,
    ) -> Result<OwnProvider, String> {
        let redirect_uri = format!("{origin}/auth/callback");
        provider
            .declare_client(NewClient {
                client_id: Some(BFF_CLIENT.into()),
                // Shown on the sign-in page ("Signing in to …").
                name: provider.settings().branding.app_name.clone(),
                redirect_uris: vec![redirect_uri.clone()],
                logout_uris: vec![format!("{origin}/")],
                grants: vec!["authorization_code".into(), "refresh_token".into()],
                scopes: vec!["openid".into(), "email".into(), "profile".into()],
                allow_insecure_http: !provider.settings().secure_cookies,
                access_ttl: Some(access_ttl),
                ..NewClient::default()
            })
            .await
            .map_err(|e| format!("cannot register the browser-session client: {e}"))?;
        Ok(OwnProvider {
            provider,
            redirect_uri,
        })
    }

    /// The session client as stored (its lifetimes); `Unavailable` when the store does not
    /// answer.
    async fn client(&self) -> Result<portcullis_store::Client, RefreshError> {
        match self.provider.store().client(BFF_CLIENT).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(RefreshError::Ended),
            Err(e) if e.is_unavailable() => Err(RefreshError::Unavailable),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the browser-session client");
                Err(RefreshError::Ended)
            }
        }
    }
}

impl std::fmt::Debug for OwnProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnProvider")
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl SessionProvider for OwnProvider {
    fn issuer(&self) -> &str {
        &self.provider.settings().issuer
    }

    fn authorize_url(&self, query: &[(&str, &str)]) -> Result<String, String> {
        // Our own provider is on this origin: a relative redirect.
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        Ok(format!("/oauth2/authorize?{query}"))
    }

    fn client_id(&self) -> &str {
        BFF_CLIENT
    }

    fn now(&self) -> i64 {
        self.provider.now()
    }

    fn exchange_code<'a>(
        &'a self,
        code: &'a str,
        verifier: &'a str,
        nonce: &'a str,
    ) -> BoxFuture<'a, Result<Tokens, ExchangeError>> {
        Box::pin(async move {
            let client = self.client().await.map_err(|_| ExchangeError::Refused)?;
            let grant = Grant::AuthorizationCode {
                code: code.to_owned(),
                redirect_uri: Some(self.redirect_uri.clone()),
                code_verifier: Some(verifier.to_owned()),
            };
            let tokens = self.provider.grant(&client, grant).await.map_err(|e| {
                tracing::info!(error = e.code(), "browser sign-in: code exchange refused");
                ExchangeError::Refused
            })?;
            let keys = self.provider.keys().verification_keys();
            let aud = [BFF_CLIENT.to_owned()];
            let expect = Expect {
                issuer: &self.provider.settings().issuer,
                audiences: &aud,
                token_use: Some(TokenUse::Id),
                leeway: 30,
                exp_leeway: 30,
                now: self.provider.now(),
            };
            let id_ok = tokens
                .id_token
                .as_deref()
                .and_then(|t| jwt::verify(t, &keys, &expect).ok())
                .is_some_and(|c| crate::nonce_matches(&c, nonce));
            match (id_ok, tokens.refresh_token) {
                (true, Some(refresh)) => Ok(Tokens {
                    access: tokens.access_token,
                    refresh,
                    max_age: client.refresh_ttl,
                }),
                _ => Err(ExchangeError::Mismatch),
            }
        })
    }

    fn refresh(&self, refresh_token: String) -> BoxFuture<'_, Result<Tokens, RefreshError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let grant = Grant::RefreshToken {
                refresh_token,
                scope: None,
            };
            match self.provider.grant(&client, grant).await {
                Ok(t) => Ok(Tokens {
                    access: t.access_token,
                    refresh: t.refresh_token.ok_or(RefreshError::Ended)?,
                    max_age: client.refresh_ttl,
                }),
                Err(OAuthError::TemporarilyUnavailable) => Err(RefreshError::Unavailable),
                Err(e) => {
                    tracing::info!(error = e.code(), "browser session could not be refreshed");
                    Err(RefreshError::Ended)
                }
            }
        })
    }

    fn sign_out<'a>(
        &'a self,
        access: Option<&'a str>,
        refresh: Option<&'a str>,
        home: &'a str,
    ) -> BoxFuture<'a, String> {
        Box::pin(async move {
            // Revoking the refresh token ends the whole session: its access tokens are rejected
            // by the gateway within a second, on every node.
            if let Ok(client) = self.client().await {
                for token in [refresh, access].into_iter().flatten() {
                    if let Err(e) = self.provider.revoke(&client, token).await {
                        tracing::warn!(error = e.code(), "sign-out could not revoke a token");
                    }
                }
            }
            format!("/logout?client_id={BFF_CLIENT}&logout_uri={home}")
        })
    }

    fn whoami<'a>(&'a self, access: &'a str) -> BoxFuture<'a, Option<Me>> {
        Box::pin(async move {
            let c = self.provider.verify_access_token(access).await.ok()?;
            let groups = c
                .string_list(&self.provider.settings().groups_claim)
                .unwrap_or_default();
            Some(Me {
                sub: c.sub.clone(),
                username: c.string("username").map(str::to_owned),
                groups,
            })
        })
    }
}
