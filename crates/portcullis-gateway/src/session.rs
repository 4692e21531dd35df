//! Stage 4, authentication of a request, with browser sessions refreshed in line: the route's
//! credential is verified; an access cookie that has expired (or is about to, within
//! `gateway.refresh_margin`) is renewed with the refresh cookie — once for a burst of parallel
//! requests — so neither the browser nor the backend ever sees an expired identity.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Uri, header};
use portcullis_token::Clock;
use portcullis_token::jwt::VerifyError;

use crate::authn::{AuthError, Authenticator, Identity};
use crate::reject::Reject;
use crate::route::Route;
use crate::settings::{GatewaySettings, TokenSource};

/// New tokens for a browser session whose access token expired.
#[derive(Debug, Clone)]
pub struct Refreshed {
    pub access: String,
    pub refresh: String,
    /// Cookie lifetime, seconds.
    pub max_age: i64,
}

/// Why a browser session could not be refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    /// The session is over (signed out, revoked, expired, or the cookie is not ours): sign in
    /// again (401, or the sign-in page).
    #[error("the session has ended")]
    Ended,
    /// The store or the session's provider does not answer: try again shortly (503). The
    /// session may well be alive, so the browser is not sent to sign in.
    #[error("the session cannot be refreshed now: its store or provider does not answer")]
    Unavailable,
}

/// Refreshes a browser session (the identity provider's refresh grant, in process, or a remote
/// provider's token endpoint).
pub trait Refresher: Send + Sync {
    fn refresh(
        &self,
        refresh_cookie: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Refreshed, RefreshError>> + Send + '_>,
    >;
}

/// Why a session refresh gave no identity.
#[derive(Debug)]
enum SessionError {
    Auth(AuthError),
    Unavailable,
}

/// Who a request is, and whether the credential came from the cookie (CSRF applies then).
#[derive(Debug)]
pub(crate) struct Authenticated {
    pub identity: Arc<Identity>,
    pub from_cookie: bool,
}

/// Browser sessions as the gateway sees them.
pub(crate) struct Sessions {
    refresher: std::sync::OnceLock<Arc<dyn Refresher>>,
    /// One refresh per refresh token at a time: parallel requests of a burst share its result.
    flights: moka::sync::Cache<String, Arc<tokio::sync::OnceCell<Result<Refreshed, RefreshError>>>>,
    cookies: portcullis_token::cookie::CookiePolicy,
    /// Seconds before `exp` from which a cookie session is refreshed.
    margin: i64,
    clock: Clock,
}

impl Sessions {
    pub(crate) fn new(settings: &GatewaySettings, clock: Clock) -> Sessions {
        Sessions {
            refresher: std::sync::OnceLock::new(),
            flights: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            cookies: settings.cookies.clone(),
            margin: settings.refresh_margin,
            clock,
        }
    }

    pub(crate) fn set_refresher(&self, refresher: Arc<dyn Refresher>) {
        let _ = self.refresher.set(refresher);
    }

    /// Authenticates `req` with the credential its route accepts. Cookies to set on the answer
    /// (a session refreshed in line) are pushed onto `set_cookies`.
    /// (The request's parts, not the request: its body is not `Sync`, and this future must be
    /// `Send`.)
    pub(crate) async fn authenticate(
        &self,
        auth: &Authenticator,
        route: &Route,
        (headers, uri): (&HeaderMap, &Uri),
        set_cookies: &mut Vec<HeaderValue>,
    ) -> Result<Authenticated, Reject> {
        let unauthenticated = |error| Reject::Unauthenticated {
            error,
            return_to: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        };
        let refreshed = |fresh: Result<Arc<Identity>, SessionError>| match fresh {
            Ok(identity) => Ok(Authenticated {
                identity,
                from_cookie: true,
            }),
            Err(SessionError::Auth(e)) => Err(unauthenticated(e)),
            Err(SessionError::Unavailable) => Err(Reject::SessionUnavailable),
        };
        match auth.credential(headers, &route.sources) {
            Ok((token, from_cookie)) => match auth.authenticate(token).await {
                // An expired access cookie with a live refresh cookie: refresh in line, so the
                // browser never sees an expiry while its session is alive.
                Err(AuthError::Invalid(VerifyError::Expired)) if from_cookie => {
                    refreshed(Box::pin(self.refresh(auth, headers, set_cookies)).await)
                }
                // About to expire: refresh now, so the upstream does not get an identity that
                // expires while it works; if that fails, the token is still valid.
                Ok(identity)
                    if from_cookie
                        && self.expires_soon(&identity)
                        && self.refresh_cookie(headers).is_some() =>
                {
                    let identity = match Box::pin(self.refresh(auth, headers, set_cookies)).await {
                        Ok(fresh) => fresh,
                        Err(e) => {
                            tracing::debug!(reason = ?e, "early session refresh failed; the access token is still valid");
                            identity
                        }
                    };
                    Ok(Authenticated {
                        identity,
                        from_cookie: true,
                    })
                }
                Ok(identity) => Ok(Authenticated {
                    identity,
                    from_cookie,
                }),
                Err(e) => Err(unauthenticated(e)),
            },
            Err(AuthError::Missing)
                if route.sources.contains(&TokenSource::Cookie)
                    && self.refresh_cookie(headers).is_some() =>
            {
                refreshed(Box::pin(self.refresh(auth, headers, set_cookies)).await)
            }
            Err(e) => Err(unauthenticated(e)),
        }
    }

    /// Whether a cookie session's access token is within `gateway.refresh_margin` of its end
    /// (at most half its lifetime, so a short-lived token is not refreshed on every request).
    fn expires_soon(&self, id: &Identity) -> bool {
        let lifetime = id.iat.map_or(i64::MAX, |iat| id.exp - iat);
        let margin = self.margin.min(lifetime / 2);
        id.exp - self.clock.now() <= margin
    }

    /// The refresh cookie's value, if exactly one is present.
    fn refresh_cookie<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let values = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        portcullis_token::cookie::single(values, self.cookies.refresh())
            .ok()
            .flatten()
    }

    /// Refreshes a cookie session once for a burst of parallel requests, and returns the
    /// identity of the new access token; the new cookies go onto `set_cookies`.
    async fn refresh(
        &self,
        auth: &Authenticator,
        headers: &HeaderMap,
        set_cookies: &mut Vec<HeaderValue>,
    ) -> Result<Arc<Identity>, SessionError> {
        let refresher = self
            .refresher
            .get()
            .ok_or(SessionError::Auth(AuthError::Missing))?;
        let refresh = self
            .refresh_cookie(headers)
            .ok_or(SessionError::Auth(AuthError::Missing))?
            .to_owned();
        let flight = self
            .flights
            .get_with(refresh.clone(), || Arc::new(tokio::sync::OnceCell::new()));
        let result = flight
            .get_or_init(|| refresher.refresh(refresh.clone()))
            .await
            .clone();
        let refreshed = match result {
            Ok(r) => r,
            Err(RefreshError::Ended) => return Err(SessionError::Auth(AuthError::Revoked)),
            Err(RefreshError::Unavailable) => {
                // Not remembered: the next request tries again, so the session heals as soon
                // as the store answers.
                self.flights.invalidate(&refresh);
                return Err(SessionError::Unavailable);
            }
        };
        let id = auth
            .authenticate(&refreshed.access)
            .await
            .map_err(SessionError::Auth)?;
        set_cookies.extend(self.cookie(
            self.cookies.access(),
            &refreshed.access,
            refreshed.max_age,
        ));
        set_cookies.extend(self.cookie(
            self.cookies.refresh(),
            &refreshed.refresh,
            refreshed.max_age,
        ));
        metrics::counter!("portcullis_gateway_session_refreshes_total").increment(1);
        Ok(id)
    }

    fn cookie(&self, name: &str, value: &str, max_age: i64) -> Option<HeaderValue> {
        let set = self.cookies.set(
            name,
            value,
            Some(max_age),
            portcullis_token::cookie::SameSite::Lax,
        );
        HeaderValue::from_str(&set).ok()
    }
}
