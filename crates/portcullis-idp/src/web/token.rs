//! `/oauth2/token` and `/oauth2/revoke`: client authentication, then the provider's grant or
//! revocation.

use super::*;

/// Client credentials from `Authorization: Basic` or the form; both at once is an error.
/// Returns (client_id, secret, basic_used).
pub(super) fn client_credentials(
    headers: &HeaderMap,
    form: &BTreeMap<String, String>,
) -> Result<(String, Option<String>, bool), OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method".into(),
        )),
        (Some(b64), None) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| OAuthError::InvalidClient)?;
            let text = String::from_utf8(decoded).map_err(|_| OAuthError::InvalidClient)?;
            let (id, secret) = text.split_once(':').ok_or(OAuthError::InvalidClient)?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let id = decode(id);
            if form.get("client_id").is_some_and(|f| f != &id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id differs from the authenticated client".into(),
                ));
            }
            Ok((id, Some(decode(secret)), true))
        }
        (None, secret) => {
            let id = form
                .get("client_id")
                .cloned()
                .ok_or(OAuthError::InvalidClient)?;
            Ok((id, secret.cloned(), false))
        }
    }
}

pub(super) async fn authenticated_client(
    web: &Web,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(portcullis_store::Client, BTreeMap<String, String>, bool), Response> {
    if !is_form(headers) {
        return Err(oauth_error(
            &OAuthError::InvalidRequest(
                "the body must be application/x-www-form-urlencoded".into(),
            ),
            false,
        ));
    }
    if body.len() > MAX_FORM {
        return Err(oauth_error(
            &OAuthError::InvalidRequest("the request body is too large".into()),
            false,
        ));
    }
    let form =
        parse_params(body).map_err(|e| oauth_error(&OAuthError::InvalidRequest(e), false))?;
    let (id, secret, basic) = client_credentials(headers, &form)
        .map_err(|e| oauth_error(&e, headers.contains_key(header::AUTHORIZATION)))?;
    let client = web
        .provider
        .authenticate_client(&id, secret.as_deref())
        .await
        .map_err(|e| oauth_error(&e, basic))?;
    Ok((client, form, basic))
}

pub(super) async fn token(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let (client, form, _) = match authenticated_client(&web, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match web.provider.token(&client, &form).await {
        Ok(t) => json_response(StatusCode::OK, serde_json::to_value(t).unwrap_or_default()),
        Err(e) => {
            tracing::info!(client_id = %client.client_id, error = e.code(), "token request refused");
            oauth_error(&e, false)
        }
    }
}

pub(super) async fn revoke(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let (client, form, _) = match authenticated_client(&web, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(token) = form.get("token") else {
        return oauth_error(
            &OAuthError::InvalidRequest("token is required".into()),
            false,
        );
    };
    match web.provider.revoke(&client, token).await {
        Ok(()) => json_response(StatusCode::OK, json!({})),
        Err(e) => oauth_error(&e, false),
    }
}
