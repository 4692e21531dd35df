//! `/login/federated/<id>`: "Continue with …" through an upstream provider, its callback, and
//! linking and unlinking identities on the account page. The attempt (state, nonce, PKCE
//! verifier, the pending authorization request) travels sealed in a cookie of its own; the
//! callback must bring the same state back to the same browser, from the provider's issuer
//! (checked by the [`crate::federation::Upstream`]), at this provider's own redirect URI.

use axum::extract::Path;
use portcullis_token::cookie::SameSite;

use super::account::signed_in;
use super::login::{csrf_token, finish_sign_in, read_form, with_csrf_cookie};
use super::*;
use crate::federation::{Attempt, Federated, FederatedProvider, upstream_message};

/// How long a round trip to the provider may take, seconds.
const ATTEMPT_TTL: i64 = 600;

/// What the attempt cookie's sealed value is bound to.
fn attempt_context(provider: &str) -> String {
    format!("federated attempt:{provider}")
}

impl Web {
    fn attempt_cookie(&self, sealed: &str, form_post: bool) -> HeaderValue {
        // A provider answering with a cross-site form post (Apple) needs SameSite=None for the
        // cookie to come back with it; the sealed state is what protects the callback.
        let same_site = if form_post {
            SameSite::None
        } else {
            SameSite::Lax
        };
        self.set_cookie(
            self.cookies.federation(),
            sealed,
            Some(ATTEMPT_TTL),
            same_site,
        )
    }

    fn clear_attempt_cookie(&self) -> HeaderValue {
        self.set_cookie(self.cookies.federation(), "", Some(0), SameSite::Lax)
    }

    /// Starts an attempt at `p` and redirects the browser there.
    async fn start_attempt(
        &self,
        p: &FederatedProvider,
        request: String,
        link_user: Option<String>,
    ) -> Response {
        let pending = self.provider.open_request(&request);
        let attempt = Attempt {
            prompt_login: pending
                .as_ref()
                .is_some_and(|r| r.prompt.as_deref() == Some("login")),
            max_age: pending.as_ref().and_then(|r| r.max_age),
            provider: p.rules.id.clone(),
            state: random_token().expose().clone(),
            nonce: random_token().expose().clone(),
            verifier: random_token().expose().clone(),
            request,
            link_user,
            expires_at: self.provider.now() + ATTEMPT_TTL,
        };
        let Ok(sealed) = self.provider.inner.attempt_kek.seal(
            &attempt_context(&p.rules.id),
            &serde_json::to_vec(&attempt).unwrap_or_default(),
        ) else {
            return self.error_page(StatusCode::INTERNAL_SERVER_ERROR, "Sign-in is unavailable.");
        };
        match p.upstream.authorization_url(&attempt).await {
            Ok(url) => {
                let mut r = redirect(&url);
                r.headers_mut().append(
                    header::SET_COOKIE,
                    self.attempt_cookie(&sealed, p.upstream.form_post()),
                );
                r
            }
            Err(e) => {
                tracing::warn!(provider = %p.rules.id, error = %e, "federated sign-in could not start");
                self.error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &upstream_message(&p.rules.name, &e),
                )
            }
        }
    }
}

/// `GET /login/federated/<id>?request=…`: the button on the sign-in page.
pub(super) async fn start(State(web): State<Web>, Path(id): Path<String>, uri: Uri) -> Response {
    let Some(p) = web.provider.federated_provider(&id).cloned() else {
        return web.error_page(StatusCode::NOT_FOUND, "There is no such sign-in provider.");
    };
    let params = parse_params(uri.query().unwrap_or_default().as_bytes()).unwrap_or_default();
    let Some(sealed) = params.get("request") else {
        return web.error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in starts from the application you want to use.",
        );
    };
    if web.provider.open_request(sealed).is_none() {
        return web.error_page(StatusCode::BAD_REQUEST, "This sign-in page has expired.");
    }
    web.start_attempt(&p, sealed.clone(), None).await
}

/// `POST /account/federated/<id>/link`: link another provider to the signed-in account.
pub(super) async fn link(
    State(web): State<Web>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = read_form(&web, &headers, &body) {
        return *r;
    }
    let (_, user) = match signed_in(&web, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let Some(p) = web.provider.federated_provider(&id).cloned() else {
        return web.error_page(StatusCode::NOT_FOUND, "There is no such sign-in provider.");
    };
    web.start_attempt(&p, String::new(), Some(user.id)).await
}

/// `POST /account/federated/unlink`: unlink one of the signed-in user's identities.
pub(super) async fn unlink(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let (form, csrf) = match read_form(&web, &headers, &body) {
        Ok(f) => f,
        Err(r) => return *r,
    };
    let (session, user) = match signed_in(&web, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    match web
        .provider
        .unlink_federated(&user, field("provider"), field("subject"))
        .await
    {
        Ok(true) => {
            super::account::render_with(
                &web,
                &session,
                &user,
                &csrf,
                None,
                Some("The sign-in provider was unlinked."),
            )
            .await
        }
        Ok(false) => {
            super::account::render_with(
                &web,
                &session,
                &user,
                &csrf,
                Some("This is your only way to sign in: set a password, add a passkey or link another provider first."),
                None,
            )
            .await
        }
        Err(_) => web.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is unavailable. Try again shortly.",
        ),
    }
}

/// `GET|POST /login/federated/<id>/callback`: the provider's answer (query, or a form post).
pub(super) async fn callback(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut r = callback_inner(&web, peer, &id, &method, &uri, &headers, &body).await;
    // The attempt is over whatever happened: its cookie goes.
    r.headers_mut()
        .append(header::SET_COOKIE, web.clear_attempt_cookie());
    r
}

async fn callback_inner(
    web: &Web,
    peer: SocketAddr,
    id: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(p) = web.provider.federated_provider(id).cloned() else {
        return web.error_page(StatusCode::NOT_FOUND, "There is no such sign-in provider.");
    };
    let raw: &[u8] = if method == Method::POST {
        if !is_form(headers) || body.len() > MAX_FORM {
            return web.error_page(
                StatusCode::BAD_REQUEST,
                "The answer from the provider was not sent correctly.",
            );
        }
        body
    } else {
        uri.query().unwrap_or_default().as_bytes()
    };
    let Ok(params) = parse_params(raw) else {
        return web.error_page(
            StatusCode::BAD_REQUEST,
            "The answer from the provider is malformed.",
        );
    };
    let expired = || {
        web.error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in attempt expired or was started in another browser. Start again from the sign-in page.",
        )
    };
    let attempt = cookie(headers, web.cookies.federation())
        .and_then(|v| {
            web.provider
                .inner
                .attempt_kek
                .open(&attempt_context(id), v)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Attempt>(b.expose()).ok());
    let sent_state = params.get("state").map(String::as_str).unwrap_or_default();
    let Some(attempt) = attempt.filter(|a| {
        a.provider == id
            && a.expires_at > web.provider.now()
            && constant_time_eq(a.state.as_bytes(), sent_state.as_bytes())
    }) else {
        tracing::info!(provider = %id, "federated callback without its attempt (expired, replayed or forged)");
        return expired();
    };
    if !web.address_allowed(peer.ip()).await {
        return web.error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts from your network. Wait a minute and try again.",
        );
    }
    let assertion = match p.upstream.finish(&attempt, &params).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(provider = %id, error = %e, "federated sign-in refused");
            web.audit(
                "signin.failure",
                &crate::audit::Actor::anonymous(peer.ip()),
                id,
                json!({ "provider": id, "reason": e.to_string() }),
            )
            .await;
            let status = match e {
                crate::federation::UpstreamError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                crate::federation::UpstreamError::Denied(_) => StatusCode::FORBIDDEN,
                crate::federation::UpstreamError::Invalid(_) => StatusCode::BAD_REQUEST,
            };
            return web.error_page(status, &upstream_message(&p.rules.name, &e));
        }
    };
    if let Some(user_id) = &attempt.link_user {
        return link_callback(web, headers, &p, user_id, &assertion).await;
    }
    let Some(req) = web.provider.open_request(&attempt.request) else {
        return web.error_page(StatusCode::BAD_REQUEST, "This sign-in page has expired.");
    };
    let outcome = match web
        .provider
        .federated_sign_in(&p.rules, &assertion, req.mfa)
        .await
    {
        Ok(o) => o,
        Err(_) => {
            return web.error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The sign-in service is unavailable. Try again shortly.",
            );
        }
    };
    let sign_in = match outcome {
        Federated::SignIn(s) => s,
        Federated::NotAllowed(message) => {
            web.audit(
                "signin.failure",
                &crate::audit::Actor::anonymous(peer.ip()),
                &assertion.subject,
                json!({ "client_id": req.client_id, "provider": id, "reason": "no account" }),
            )
            .await;
            return web.error_page(StatusCode::FORBIDDEN, &message);
        }
        Federated::Disabled => {
            return web.error_page(
                StatusCode::FORBIDDEN,
                "This account is disabled. Ask the administrator.",
            );
        }
    };
    match sign_in {
        SignIn::Session { session, secret } => {
            let actor = crate::audit::Actor::user(&session.user_id, &peer.ip().to_string());
            web.audit(
                "signin.success",
                &actor,
                &assertion.subject,
                json!({ "client_id": req.client_id, "amr": session.amr, "provider": id }),
            )
            .await;
            let mut r = finish_sign_in(web, &req, &session, &secret).await;
            if let Some(token) = assertion
                .id_token
                .as_ref()
                .filter(|_| p.upstream.signs_out())
            {
                remember_upstream(web, &mut r, id, token.expose());
            }
            r
        }
        other @ (SignIn::SecondFactor { .. } | SignIn::Enrol { .. }) => {
            let (csrf, new_cookie) = csrf_token(web, headers);
            let mut r =
                super::mfa::second_step_page(web, &attempt.request, &csrf, other, None).await;
            // Kept now: the second step ends in the MFA handlers, which know no provider.
            if let Some(token) = assertion
                .id_token
                .as_ref()
                .filter(|_| p.upstream.signs_out())
            {
                remember_upstream(web, &mut r, id, token.expose());
            }
            with_csrf_cookie(r, new_cookie)
        }
        _ => web.error_page(
            StatusCode::FORBIDDEN,
            "Signing in this way is not possible for this account.",
        ),
    }
}

/// The callback of a link started on the account page: the identity joins the signed-in user
/// (the same user who started it, still signed in).
async fn link_callback(
    web: &Web,
    headers: &HeaderMap,
    p: &FederatedProvider,
    user_id: &str,
    assertion: &crate::federation::Assertion,
) -> Response {
    let (session, user) = match signed_in(web, headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if user.id != user_id {
        return web.error_page(
            StatusCode::BAD_REQUEST,
            "You signed in as someone else meanwhile. Start again from your account page.",
        );
    }
    let (csrf, new_cookie) = csrf_token(web, headers);
    let r = match web
        .provider
        .link_federated(&user, &p.rules, assertion)
        .await
    {
        Ok(true) => {
            let message = format!("You can now sign in with {}.", p.rules.name);
            super::account::render_with(web, &session, &user, &csrf, None, Some(&message)).await
        }
        Ok(false) => {
            let message = format!(
                "That {} account is linked to another account here already.",
                p.rules.name
            );
            super::account::render_with(web, &session, &user, &csrf, Some(&message), None).await
        }
        Err(_) => web.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is unavailable. Try again shortly.",
        ),
    };
    with_csrf_cookie(r, new_cookie)
}

/// Keeps the provider's ID token (sealed, for the session's length) so that signing out here can
/// also sign out at the provider when it offers RP-initiated logout.
fn remember_upstream(web: &Web, r: &mut Response, provider: &str, id_token: &str) {
    let value = json!({ "provider": provider, "id_token": id_token }).to_string();
    if value.len() > 3000 {
        return; // too large for a cookie: sign-out at the provider will go without a hint
    }
    if let Ok(sealed) = web
        .provider
        .inner
        .attempt_kek
        .seal("upstream session", value.as_bytes())
    {
        r.headers_mut().append(
            header::SET_COOKIE,
            web.set_cookie(
                web.cookies.upstream_session(),
                &sealed,
                Some(web.provider.settings().session_ttl),
                SameSite::Lax,
            ),
        );
    }
}

/// The upstream session remembered at sign-in: the provider and its ID token.
pub(super) fn upstream_session(web: &Web, headers: &HeaderMap) -> Option<(String, String)> {
    let v = cookie(headers, web.cookies.upstream_session())?;
    let opened = web
        .provider
        .inner
        .attempt_kek
        .open("upstream session", v)
        .ok()?;
    let v: Value = serde_json::from_slice(opened.expose()).ok()?;
    Some((
        v["provider"].as_str()?.to_owned(),
        v["id_token"].as_str()?.to_owned(),
    ))
}

/// Where the browser goes after signing out here, when the session came from an upstream
/// provider that offers RP-initiated logout: there first, coming back to
/// `/login/federated/<id>/signed-out` with `then` (sealed) for the final destination.
pub(super) async fn upstream_logout(
    web: &Web,
    headers: &HeaderMap,
    then: Option<&str>,
) -> Option<String> {
    let (id, id_token) = upstream_session(web, headers)?;
    let p = web.provider.federated_provider(&id)?;
    let back = format!(
        "{}/login/federated/{id}/signed-out",
        web.provider.settings().issuer
    );
    let state = web
        .provider
        .inner
        .attempt_kek
        .seal("signed out", then.unwrap_or_default().as_bytes())
        .ok()?;
    let url = p.upstream.logout_url(Some(&id_token), &back).await?;
    let mut url = url::Url::parse(&url).ok()?;
    url.query_pairs_mut().append_pair("state", &state);
    Some(url.to_string())
}

/// `GET /login/federated/<id>/signed-out`: back from signing out at the provider.
pub(super) async fn signed_out(State(web): State<Web>, uri: Uri) -> Response {
    let params = parse_params(uri.query().unwrap_or_default().as_bytes()).unwrap_or_default();
    let then = params
        .get("state")
        .and_then(|s| web.provider.inner.attempt_kek.open("signed out", s).ok())
        .and_then(|b| String::from_utf8(b.expose().clone()).ok())
        .filter(|t| !t.is_empty());
    match then {
        // Sealed by /logout after checking it is a registered sign-out address.
        Some(t) => redirect(&t),
        None => web.page(StatusCode::OK, "signed_out.html", json!({})),
    }
}
