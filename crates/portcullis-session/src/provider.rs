//! Where browser sessions sign in: one trait, two implementations — this instance's identity
//! provider in process ([`crate::OwnProvider`]) or a remote OpenID provider over HTTP
//! ([`crate::RemoteProvider`], a Cognito user pool, say).

use std::future::Future;
use std::pin::Pin;

use portcullis_gateway::RefreshError;

/// A boxed future (the trait is used as `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The tokens a browser session keeps in its cookies.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    /// How long the cookies live, seconds.
    pub max_age: i64,
}

/// Why a code exchange gave no session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The provider refused the code (expired, replayed, wrong verifier) or did not answer.
    #[error("the provider refused the code")]
    Refused,
    /// The answer is not this flow's: no valid ID token, or its nonce differs (an injected code).
    #[error("the answer does not match this sign-in")]
    Mismatch,
}

/// Who an access token says the user is (for `/auth/me`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Me {
    pub sub: Option<String>,
    pub username: Option<String>,
    pub groups: Vec<String>,
}

/// An OpenID provider as the browser-session endpoints use it.
pub trait SessionProvider: Send + Sync {
    /// Its `iss` (a callback's `iss` parameter must equal it, RFC 9207).
    fn issuer(&self) -> &str;

    /// Where the browser goes to sign in: the authorization endpoint with `query`.
    fn authorize_url(&self, query: &[(&str, &str)]) -> Result<String, String>;

    /// The client the sessions are registered as.
    fn client_id(&self) -> &str;

    /// Now, Unix seconds (the provider's clock, so tests can move it).
    fn now(&self) -> i64;

    /// Exchanges a code (with its PKCE verifier) and checks that the ID token carries `nonce`.
    fn exchange_code<'a>(
        &'a self,
        code: &'a str,
        verifier: &'a str,
        nonce: &'a str,
    ) -> BoxFuture<'a, Result<Tokens, ExchangeError>>;

    /// The refresh grant. `Unavailable` when the provider (or its store) does not answer.
    fn refresh(&self, refresh_token: String) -> BoxFuture<'_, Result<Tokens, RefreshError>>;

    /// Revokes what the browser held and returns where to send it to end the provider's own
    /// session (`home`: the URL-encoded address to come back to).
    fn sign_out<'a>(
        &'a self,
        access: Option<&'a str>,
        refresh: Option<&'a str>,
        home: &'a str,
    ) -> BoxFuture<'a, String>;

    /// Verifies an access token of this provider.
    fn whoami<'a>(&'a self, access: &'a str) -> BoxFuture<'a, Option<Me>>;
}
