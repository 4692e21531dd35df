//! The identity provider over HTTP: flows, and every bad input and attack of the issue, each
//! answered with the right error and no tokens.

use std::collections::HashMap;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION};
use serde_json::Value;

use crate::harness::{Instance, Server};

pub(crate) const REDIRECT: &str = "http://localhost:3000/callback";
pub(crate) const PASSWORD: &str = "e2e-passphrase-that-is-long";
/// A PKCE verifier and its S256 challenge (computed independently with Python's hashlib).
const VERIFIER: &str = "dBjftJeZ4CVP-mJ92IZtCKkpY6Q6CXMuhNNEDAWMfsP0";
const CHALLENGE: &str = "DFXps3i_qlqRZyeNV7RZ_-85sBHFqI1Ce25f8imVr2o";

/// A provider with users `ada` (user) and `root` (user, admin), a public client `spa`, a second
/// public client `other`, and a confidential client `backend`.
pub(crate) struct Idp {
    pub(crate) _instance: Instance,
    pub(crate) server: Server,
    pub(crate) http: reqwest::Client,
    pub(crate) backend_secret: String,
    pub(crate) cookies: HashMap<String, String>,
}

/// Groups `user` and `admin`; `ada` (a customer, with an email) and `root` (in both groups).
pub(crate) fn add_users(i: &Instance) {
    i.run(&["group", "add", "user"]).ok();
    i.run(&["group", "add", "admin"]).ok();
    i.run_with_stdin(
        &[
            "user",
            "add",
            "ada",
            "--group",
            "user",
            "--email",
            "ada@example.com",
            "--password-stdin",
        ],
        PASSWORD,
    )
    .ok();
    i.run_with_stdin(
        &[
            "user",
            "add",
            "root",
            "--group",
            "user",
            "--group",
            "admin",
            "--email",
            "root@example.com",
            "--password-stdin",
        ],
        PASSWORD,
    )
    .ok();
}

pub(crate) fn setup(extra_config: &str) -> Idp {
    setup_on(Instance::with_config(extra_config))
}

/// [`setup`] on an instance made by the caller (PostgreSQL, say).
pub(crate) fn setup_on(i: Instance) -> Idp {
    setup_with(i, reqwest::Client::builder())
}

/// [`setup`] on an instance serving https with a certificate from the test authority whose
/// PEM is `ca`.
pub(crate) fn setup_tls(extra_config: &str, ca: &str) -> Idp {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA"));
    setup_with(Instance::with_config(extra_config), http)
}

fn setup_with(i: Instance, http: reqwest::ClientBuilder) -> Idp {
    add_users(&i);
    i.run(&[
        "resource-server",
        "add",
        "orders",
        "--scope",
        "read",
        "--scope",
        "admin",
    ])
    .ok();
    for id in ["spa", "other"] {
        i.run(&[
            "client",
            "add",
            id,
            "--id",
            id,
            "--redirect-uri",
            REDIRECT,
            "--scope",
            "openid",
            "--scope",
            "email",
            "--scope",
            "orders/read",
        ])
        .ok();
    }
    let out = i
        .run(&[
            "--json",
            "client",
            "add",
            "Backend",
            "--id",
            "backend",
            "--confidential",
            "--scope",
            "orders/read",
        ])
        .ok();
    let backend: Value = serde_json::from_str(&out).expect("json");
    let server = i.serve();
    let http = http
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    Idp {
        backend_secret: backend["client_secret"]
            .as_str()
            .expect("secret")
            .to_owned(),
        _instance: i,
        server,
        http,
        cookies: HashMap::new(),
    }
}

pub(crate) fn location(headers: &HeaderMap) -> String {
    headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

pub(crate) fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .expect("absolute URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub(crate) fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .map(|i| i + marker.len())
        .expect("hidden field");
    let end = html[start..].find('"').expect("closing quote") + start;
    html[start..end]
        .replace("&#x2f;", "/")
        .replace("&amp;", "&")
}

/// A `Cookie` header from a jar.
pub(crate) fn cookie_header(jar: &HashMap<String, String>) -> String {
    jar.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Keeps a response's `Set-Cookie`s in a jar (a deletion removes the cookie).
pub(crate) fn remember_cookies(jar: &mut HashMap<String, String>, headers: &HeaderMap) {
    for v in headers.get_all(reqwest::header::SET_COOKIE) {
        let v = v.to_str().expect("ascii");
        let pair = v.split(';').next().expect("pair");
        let (k, val) = pair.split_once('=').expect("name=value");
        if val.is_empty() || v.contains("Max-Age=0") {
            jar.remove(k);
        } else {
            jar.insert(k.to_owned(), val.to_owned());
        }
    }
}

impl Idp {
    pub(crate) fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub(crate) fn cookie_header(&self) -> String {
        cookie_header(&self.cookies)
    }

    pub(crate) fn remember_cookies(&mut self, headers: &HeaderMap) {
        self.remember(headers)
    }

    fn remember(&mut self, headers: &HeaderMap) {
        remember_cookies(&mut self.cookies, headers);
    }

    pub(crate) async fn get(&mut self, url: &str) -> reqwest::Response {
        let resp = self
            .http
            .get(url)
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("GET");
        self.remember(resp.headers());
        resp
    }

    pub(crate) fn authorize_url(&self, client: &str, extra: &[(&str, &str)]) -> String {
        let mut u = url::Url::parse(&self.url("/oauth2/authorize")).expect("url");
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in [
                ("response_type", "code"),
                ("client_id", client),
                ("redirect_uri", REDIRECT),
                ("scope", "openid email"),
                ("state", "st-1"),
                ("nonce", "n-1"),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
            ] {
                if !extra.iter().any(|(ek, _)| *ek == k) {
                    q.append_pair(k, v);
                }
            }
            for (k, v) in extra {
                if !v.is_empty() {
                    q.append_pair(k, v);
                }
            }
        }
        u.to_string()
    }

    /// Opens the sign-in form for an authorization URL; returns (request, csrf).
    pub(crate) async fn open_form(&mut self, authorize: &str) -> (String, String) {
        let resp = self.get(authorize).await;
        assert_eq!(
            resp.status(),
            StatusCode::SEE_OTHER,
            "authorize redirects to the form"
        );
        let login = location(resp.headers());
        assert!(login.starts_with("/login?request="), "{login}");
        let resp = self.get(&self.url(&login)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let html = resp.text().await.expect("html");
        (hidden(&html, "request"), hidden(&html, "csrf"))
    }

    pub(crate) async fn post_form(
        &mut self,
        request: &str,
        csrf: &str,
        username: &str,
        password: &str,
    ) -> reqwest::Response {
        let resp = self
            .http
            .post(self.url("/login"))
            .header("cookie", self.cookie_header())
            .form(&[
                ("request", request),
                ("csrf", csrf),
                ("username", username),
                ("password", password),
            ])
            .send()
            .await
            .expect("POST /login");
        self.remember(resp.headers());
        resp
    }

    /// Signs in through the form and returns the callback's query.
    /// (If the provider's session cookie already signs the user in, no form is shown.)
    pub(crate) async fn sign_in(
        &mut self,
        client: &str,
        username: &str,
    ) -> HashMap<String, String> {
        let resp = self.get(&self.authorize_url(client, &[])).await;
        let next = location(resp.headers());
        if next.starts_with(REDIRECT) {
            return query(&next);
        }
        let (request, csrf) = self
            .open_form(&self.authorize_url(client, &[("prompt", "login")]))
            .await;
        let resp = self.post_form(&request, &csrf, username, PASSWORD).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let back = location(resp.headers());
        assert!(back.starts_with(REDIRECT), "{back}");
        query(&back)
    }

    pub(crate) async fn token(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.post(self.url("/oauth2/token")).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        let resp = req.send().await.expect("token");
        assert_eq!(
            resp.headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap_or("")),
            Some("no-store")
        );
        (resp.status(), resp.json().await.expect("json"))
    }

    pub(crate) async fn exchange(&self, client: &str, code: &str) -> (StatusCode, Value) {
        self.token(
            &[
                ("grant_type", "authorization_code"),
                ("client_id", client),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", VERIFIER),
            ],
            None,
        )
        .await
    }

    pub(crate) async fn refresh(&self, client: &str, token: &str) -> (StatusCode, Value) {
        self.token(
            &[
                ("grant_type", "refresh_token"),
                ("client_id", client),
                ("refresh_token", token),
            ],
            None,
        )
        .await
    }

    pub(crate) async fn userinfo(&self, access: &str) -> StatusCode {
        self.http
            .get(self.url("/oauth2/userInfo"))
            .bearer_auth(access)
            .send()
            .await
            .expect("userinfo")
            .status()
    }
}

pub(crate) fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("b64"),
    )
    .expect("json")
}

#[tokio::test]
async fn redirect_uri_must_match_exactly_and_a_mismatch_never_redirects() {
    let mut idp = setup("");
    for bad in [
        "http://localhost:3000/callback/",
        "http://localhost:3000/callback/extra",
        "http://localhost:3001/callback",
        "http://LOCALHOST:3000/callback",
        "http://localhost:3000/Callback",
        "http://evil@localhost:3000/callback",
        "http://localhost:3000/%63allback",
        "http://localhost:3000/callback?x=1",
        "https://evil.example/callback",
    ] {
        let resp = idp
            .get(&idp.authorize_url("spa", &[("redirect_uri", bad)]))
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            resp.headers().get(LOCATION).is_none(),
            "{bad} must not redirect"
        );
        let html = resp.text().await.expect("html");
        assert!(html.contains("not registered"), "{bad}: {html}");
    }
}

#[tokio::test]
async fn unknown_client_and_oversized_or_repeated_parameters_get_an_error_page() {
    let mut idp = setup("");
    let resp = idp.get(&idp.authorize_url("nobody", &[])).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get(LOCATION).is_none());
    let big = "x".repeat(5000);
    let resp = idp.get(&idp.authorize_url("spa", &[("state", &big)])).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get(LOCATION).is_none());
    let repeated = format!("{}&client_id=other", idp.authorize_url("spa", &[]));
    let resp = idp.get(&repeated).await;
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "a repeated parameter is refused"
    );
}

#[tokio::test]
async fn errors_go_back_to_a_registered_uri_with_state_and_iss() {
    let mut idp = setup("");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("response_type", "token")], "unsupported_response_type"),
        (&[("code_challenge", "")], "invalid_request"),
        (&[("code_challenge_method", "plain")], "invalid_request"),
        (&[("scope", "openid orders/admin")], "invalid_scope"),
        (&[("prompt", "none")], "login_required"),
    ];
    for (extra, error) in cases {
        let resp = idp.get(&idp.authorize_url("spa", extra)).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{extra:?}");
        let q = query(&location(resp.headers()));
        assert_eq!(
            q.get("error").map(String::as_str),
            Some(*error),
            "{extra:?}"
        );
        assert_eq!(q.get("state").map(String::as_str), Some("st-1"));
        assert_eq!(
            q.get("iss"),
            Some(&idp.server.base.replace("127.0.0.1", "localhost"))
        );
    }
}

#[tokio::test]
async fn code_flow_with_and_without_state_and_claims() {
    let mut idp = setup("");
    let q = idp.sign_in("spa", "ada").await;
    assert_eq!(q.get("state").map(String::as_str), Some("st-1"));
    let (status, tokens) = idp.exchange("spa", &q["code"]).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = claims(tokens["access_token"].as_str().expect("access"));
    assert_eq!(access["token_use"], "access");
    assert_eq!(access["groups"], serde_json::json!(["user"]));
    assert_eq!(access["username"], "ada");
    assert!(access["sid"].is_string() && access["jti"].is_string());
    let id = claims(tokens["id_token"].as_str().expect("id"));
    assert_eq!(id["token_use"], "id");
    assert_eq!(id["nonce"], "n-1");
    assert_eq!(id["email"], "ada@example.com");
    assert!(id["at_hash"].is_string());

    // No state: none comes back, and the flow still works (the IdP session answers at once).
    let resp = idp.get(&idp.authorize_url("spa", &[("state", "")])).await;
    let q = query(&location(resp.headers()));
    assert!(q.contains_key("code") && !q.contains_key("state"), "{q:?}");
}

#[tokio::test]
async fn a_second_client_signs_in_without_the_password_and_prompt_login_asks_again() {
    let mut idp = setup("");
    idp.sign_in("spa", "ada").await;
    let resp = idp.get(&idp.authorize_url("other", &[])).await;
    let back = location(resp.headers());
    assert!(
        back.starts_with(REDIRECT) && back.contains("code="),
        "{back}"
    );
    let resp = idp
        .get(&idp.authorize_url("other", &[("prompt", "login")]))
        .await;
    assert!(
        location(resp.headers()).starts_with("/login?"),
        "prompt=login shows the form"
    );
}

#[tokio::test]
async fn pkce_verifier_is_checked() {
    let mut idp = setup("");
    for bad in [
        None,
        Some("wrong-verifier-wrong-verifier-wrong-verifier-00"),
    ] {
        let q = idp.sign_in("spa", "ada").await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", "spa"),
            ("code", q["code"].as_str()),
            ("redirect_uri", REDIRECT),
        ];
        if let Some(v) = bad {
            form.push(("code_verifier", v));
        }
        let (status, body) = idp.token(&form, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(body["error"], "invalid_grant", "{bad:?}");
        assert!(body.get("access_token").is_none());
    }
}

#[tokio::test]
async fn a_replayed_code_fails_and_revokes_what_it_issued() {
    let mut idp = setup("");
    let q = idp.sign_in("spa", "ada").await;
    let (status, first) = idp.exchange("spa", &q["code"]).await;
    assert_eq!(status, StatusCode::OK);
    let access = first["access_token"].as_str().expect("access");
    assert_eq!(idp.userinfo(access).await, StatusCode::OK);
    let (status, replay) = idp.exchange("spa", &q["code"]).await;
    assert_eq!(
        (status, replay["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (status, _) = idp
        .refresh("spa", first["refresh_token"].as_str().expect("refresh"))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the refresh token from the first use is revoked"
    );
    assert_eq!(
        idp.userinfo(access).await,
        StatusCode::UNAUTHORIZED,
        "so is its access token"
    );
}

#[tokio::test]
async fn client_authentication_and_grant_rules() {
    let mut idp = setup("");
    // Wrong secret, unknown client, secret for a public client.
    let (status, body) = idp
        .token(
            &[("grant_type", "client_credentials")],
            Some(("backend", "wrong")),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let (status, _) = idp
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "nobody"),
                ("client_secret", "x"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = idp
        .token(
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "spa"),
                ("client_secret", "x"),
            ],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Two authentication methods at once.
    let secret = idp.backend_secret.clone();
    let (status, body) = idp
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("client_secret", &secret),
            ],
            Some(("backend", &secret)),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    // A public client may not use client credentials; unknown grants are named as such.
    let (_, body) = idp
        .token(
            &[("grant_type", "client_credentials"), ("client_id", "spa")],
            None,
        )
        .await;
    assert_eq!(body["error"], "unauthorized_client");
    let (_, body) = idp
        .token(&[("grant_type", "password"), ("client_id", "spa")], None)
        .await;
    assert_eq!(body["error"], "unsupported_grant_type");
    // Client credentials: custom scopes only.
    let (status, body) = idp
        .token(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders/read"),
            ],
            Some(("backend", &secret)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().expect("token"))["scope"],
        "orders/read"
    );
    let (_, body) = idp
        .token(
            &[("grant_type", "client_credentials"), ("scope", "openid")],
            Some(("backend", &secret)),
        )
        .await;
    assert_eq!(body["error"], "invalid_scope");
    // Another client's refresh token.
    let q = idp.sign_in("spa", "ada").await;
    let (_, tokens) = idp.exchange("spa", &q["code"]).await;
    let (status, body) = idp
        .refresh("other", tokens["refresh_token"].as_str().expect("refresh"))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // The same token still works for its own client: a failed theft changes nothing.
    let (status, _) = idp
        .refresh("spa", tokens["refresh_token"].as_str().expect("refresh"))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_token_endpoint_requires_a_form_body() {
    let idp = setup("");
    let secret = idp.backend_secret.clone();
    let json = idp
        .http
        .post(idp.url("/oauth2/token"))
        .basic_auth("backend", Some(&secret))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("send");
    assert_eq!(json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json.json::<Value>().await.expect("json")["error"],
        "invalid_request"
    );
    let multipart = idp
        .http
        .post(idp.url("/oauth2/token"))
        .basic_auth("backend", Some(&secret))
        .header("content-type", "multipart/form-data; boundary=x")
        .body("--x\r\nContent-Disposition: form-data; name=\"grant_type\"\r\n\r\nclient_credentials\r\n--x--\r\n")
        .send()
        .await
        .expect("send");
    assert_eq!(multipart.status(), StatusCode::BAD_REQUEST);
    let huge = "a".repeat(20_000);
    let (status, _) = idp
        .token(
            &[("grant_type", "client_credentials"), ("scope", &huge)],
            Some(("backend", &secret)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn sign_in_failures_look_the_same_and_lock_the_account() {
    let mut idp = setup("[idp]\nlockout_delay = \"60s\"\n");
    idp.post_form("x", "y", "ada", "z").await; // no CSRF cookie yet: refused below
    let (request, csrf) = idp.open_form(&idp.authorize_url("spa", &[])).await;
    let unknown = idp.post_form(&request, &csrf, "nobody", PASSWORD).await;
    let (s1, b1) = (unknown.status(), unknown.text().await.expect("html"));
    let wrong = idp
        .post_form(&request, &csrf, "root", "not-the-password")
        .await;
    let (s2, b2) = (wrong.status(), wrong.text().await.expect("html"));
    assert_eq!(s1, StatusCode::UNAUTHORIZED);
    assert_eq!(s1, s2);
    let strip = |b: &str| b.replace("nobody", "").replace("root", "");
    assert_eq!(
        strip(&b1),
        strip(&b2),
        "the same page for an unknown user and a wrong password"
    );
    assert!(b1.contains("Incorrect username or password."));
    for _ in 0..4 {
        idp.post_form(&request, &csrf, "root", "still-wrong-password")
            .await;
    }
    let locked = idp.post_form(&request, &csrf, "root", PASSWORD).await;
    assert_eq!(
        locked.status(),
        StatusCode::UNAUTHORIZED,
        "locked even with the right password"
    );
    assert!(
        locked
            .text()
            .await
            .expect("html")
            .contains("Too many failed attempts")
    );
    // CSRF: a form without the cookie's token is refused.
    let forged = idp
        .post_form(&request, "forged-token", "ada", PASSWORD)
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn hosted_pages_carry_protective_headers() {
    let mut idp = setup("");
    let resp = idp.get(&idp.authorize_url("spa", &[])).await;
    let resp = idp.get(&idp.url(&location(resp.headers()))).await;
    let h = resp.headers();
    let csp = h
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        !csp.contains("form-action"),
        "form-action breaks the redirect back to the client in Chromium"
    );
    assert_eq!(
        h.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    assert_eq!(
        h.get("x-frame-options").and_then(|v| v.to_str().ok()),
        Some("DENY")
    );
    let cookie = h
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        cookie.starts_with("__Host-") && cookie.contains("HttpOnly") && cookie.contains("Secure"),
        "{cookie}"
    );
    let html = resp.text().await.expect("html");
    assert!(html.contains("<label for=\"username\">") && html.contains("<label for=\"password\">"));
}

#[tokio::test]
async fn disabling_a_user_or_changing_groups_ends_their_sessions() {
    let mut idp = setup("");
    let q = idp.sign_in("spa", "ada").await;
    let (_, tokens) = idp.exchange("spa", &q["code"]).await;
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    assert_eq!(idp.userinfo(&access).await, StatusCode::OK);
    idp._instance.run(&["user", "disable", "ada"]).ok();
    assert_eq!(idp.userinfo(&access).await, StatusCode::UNAUTHORIZED);
    let (status, _) = idp
        .refresh("spa", tokens["refresh_token"].as_str().expect("refresh"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Disabled users cannot sign in; the answer is the usual one.
    let (request, csrf) = idp
        .open_form(&idp.authorize_url("spa", &[("prompt", "login")]))
        .await;
    let resp = idp.post_form(&request, &csrf, "ada", PASSWORD).await;
    assert!(
        resp.text()
            .await
            .expect("html")
            .contains("Incorrect username or password.")
    );

    let q = idp.sign_in("spa", "root").await;
    let (_, tokens) = idp.exchange("spa", &q["code"]).await;
    idp._instance
        .run(&["group", "remove-member", "admin", "root"])
        .ok();
    let (status, _) = idp
        .refresh("spa", tokens["refresh_token"].as_str().expect("refresh"))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a group change ends the session"
    );
}

#[tokio::test]
async fn groups_grant_scopes_and_cognito_claims() {
    let mut idp =
        setup("[idp]\ncognito_compat = true\n[idp.group_scopes]\nadmin = [\"orders/admin\"]\n");
    let q = idp.sign_in("spa", "root").await;
    let (_, tokens) = idp.exchange("spa", &q["code"]).await;
    let access = claims(tokens["access_token"].as_str().expect("access"));
    assert!(
        access["scope"]
            .as_str()
            .expect("scope")
            .split(' ')
            .any(|s| s == "orders/admin"),
        "{access}"
    );
    assert_eq!(
        access["cognito:groups"],
        serde_json::json!(["admin", "user"])
    );
    let id = claims(tokens["id_token"].as_str().expect("id"));
    assert_eq!(id["cognito:username"], "root");
}

#[tokio::test]
async fn key_rotation_publishes_first_and_old_tokens_keep_working() {
    let mut idp = setup("[idp]\nkey_rotation_delay = \"0s\"\n");
    let q = idp.sign_in("spa", "ada").await;
    let (_, before) = idp.exchange("spa", &q["code"]).await;
    let old_access = before["access_token"].as_str().expect("access").to_owned();
    let jwks = |idp: &Idp| {
        let url = idp.url("/.well-known/jwks.json");
        let http = idp.http.clone();
        async move {
            http.get(url)
                .send()
                .await
                .expect("jwks")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    assert_eq!(jwks(&idp).await["keys"].as_array().map(Vec::len), Some(2));
    idp._instance.run(&["keys", "rotate"]).ok();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the server re-reads keys once a second
    let keys = jwks(&idp).await;
    assert_eq!(
        keys["keys"].as_array().map(Vec::len),
        Some(4),
        "old and new keys are both published"
    );
    let q = idp.sign_in("spa", "ada").await;
    let (_, after) = idp.exchange("spa", &q["code"]).await;
    let kid = |t: &str| {
        use base64::Engine;
        let h: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t.split('.').next().expect("h"))
                .expect("b64"),
        )
        .expect("json");
        h["kid"].as_str().expect("kid").to_owned()
    };
    assert_ne!(
        kid(&old_access),
        kid(after["access_token"].as_str().expect("access")),
        "new tokens use the new key"
    );
    assert_eq!(
        idp.userinfo(&old_access).await,
        StatusCode::OK,
        "tokens signed by the old key still verify"
    );
}

#[tokio::test]
async fn cognito_style_logout_redirects_only_to_a_registered_uri() {
    let i = Instance::new();
    i.run(&["group", "add", "user"]).ok();
    i.run_with_stdin(
        &["user", "add", "ada", "--group", "user", "--password-stdin"],
        PASSWORD,
    )
    .ok();
    i.run(&[
        "client",
        "add",
        "spa",
        "--id",
        "spa",
        "--redirect-uri",
        REDIRECT,
        "--logout-uri",
        "http://localhost:3000/bye",
    ])
    .ok();
    let server = i.serve();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let ok = http
        .get(server.url("/logout?client_id=spa&logout_uri=http%3A%2F%2Flocalhost%3A3000%2Fbye"))
        .send()
        .await
        .expect("logout");
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(ok.headers()), "http://localhost:3000/bye");
    let cleared = ok
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        cleared.contains("Max-Age=0"),
        "the session cookie is cleared: {cleared}"
    );
    for bad in [
        "https%3A%2F%2Fevil.example%2F",
        "http%3A%2F%2Flocalhost%3A3000%2Fbye%2F",
    ] {
        let resp = http
            .get(server.url(&format!("/logout?client_id=spa&logout_uri={bad}")))
            .send()
            .await
            .expect("logout");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(resp.headers().get(LOCATION).is_none());
    }
    let page = http
        .get(server.url("/logout"))
        .send()
        .await
        .expect("logout");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.text()
            .await
            .expect("html")
            .contains("You are signed out")
    );
}

/// The refresh grace is exact to the millisecond: at `"0s"` a rotated token replayed at once is
/// reuse (the family and the session end); at `"1s"` it works at once and is reuse 100 ms after
/// the second has passed (whole-second timestamps let it work up to a second longer).
#[tokio::test]
async fn the_refresh_grace_window_is_exact() {
    for (grace, wait_ms, reused) in [("0s", 0, true), ("1s", 0, false), ("1s", 1_100, true)] {
        let mut idp = setup(&format!("[idp]\nrefresh_grace = \"{grace}\"\n"));
        let q = idp.sign_in("spa", "ada").await;
        let (_, tokens) = idp.exchange("spa", &q["code"]).await;
        let first = tokens["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_owned();
        let (status, rotated) = idp.refresh("spa", &first).await;
        assert_eq!(status, StatusCode::OK, "{rotated}");
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        let (status, replay) = idp.refresh("spa", &first).await;
        let what = format!("grace {grace}, replayed after {wait_ms} ms: {replay}");
        if reused {
            assert_eq!(
                (status, replay["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_grant")),
                "{what}"
            );
            let next = rotated["refresh_token"].as_str().expect("refresh");
            assert_eq!(
                idp.refresh("spa", next).await.0,
                StatusCode::BAD_REQUEST,
                "{what}: reuse revokes the whole family"
            );
        } else {
            assert_eq!(status, StatusCode::OK, "{what}");
        }
    }
}

/// The budget per network is the cluster's: attempts spread over two nodes of one PostgreSQL
/// store spend one budget (and a sign-in started on one node continues on the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_attempts_spread_over_nodes_spend_one_budget() {
    let Some(i) = Instance::postgres().await else {
        return;
    };
    let mut text = std::fs::read_to_string(&i.config).expect("config");
    // One issuer for both nodes, as behind one load balancer.
    text.push_str("[idp]\nissuer = \"http://localhost:8080\"\nsignin_rate_per_address = 3\n");
    std::fs::write(&i.config, text).expect("config");
    let mut idp = setup_on(i);
    let second = idp._instance.serve();
    let (request, csrf) = idp.open_form(&idp.authorize_url("spa", &[])).await;
    let on_second = |idp: &Idp, username: &str, password: &str| {
        idp.http
            .post(second.url("/login"))
            .header("cookie", idp.cookie_header())
            .form(&[
                ("request", request.as_str()),
                ("csrf", csrf.as_str()),
                ("username", username),
                ("password", password),
            ])
            .send()
    };
    let first = idp
        .post_form(&request, &csrf, "sprayed-1", "some-guess-0000")
        .await;
    assert!(
        first
            .text()
            .await
            .expect("html")
            .contains("Incorrect username or password.")
    );
    let other = on_second(&idp, "sprayed-2", "some-guess-0000")
        .await
        .expect("post");
    let body = other.text().await.expect("html");
    assert!(
        body.contains("Incorrect username or password."),
        "the other node continues the sign-in: {body}"
    );
    let third = idp
        .post_form(&request, &csrf, "sprayed-3", "some-guess-0000")
        .await;
    assert!(
        third
            .text()
            .await
            .expect("html")
            .contains("Incorrect username or password.")
    );
    // The second node has seen one attempt itself, but the network's budget of 3 is spent.
    let throttled = on_second(&idp, "ada", PASSWORD).await.expect("post");
    let body = throttled.text().await.expect("html");
    assert!(
        body.contains("Too many sign-in attempts from your network"),
        "the fourth attempt in a minute is refused on any node: {body}"
    );
}

/// The sign-in page counts attempts per client network (per /64 for IPv6): past
/// `idp.signin_rate_per_address` a minute — whatever the usernames, so account lockout cannot
/// be sidestepped by spraying many accounts — even the right password gets "wait a minute".
#[tokio::test]
async fn sign_in_attempts_are_throttled_per_network() {
    let mut idp = setup("[idp]\nsignin_rate_per_address = 3\n");
    let (request, csrf) = idp.open_form(&idp.authorize_url("spa", &[])).await;
    for user in ["sprayed-1", "sprayed-2", "sprayed-3"] {
        let resp = idp
            .post_form(&request, &csrf, user, "some-guess-0000")
            .await;
        let body = resp.text().await.expect("html");
        assert!(body.contains("Incorrect username or password."), "{body}");
    }
    let throttled = idp.post_form(&request, &csrf, "ada", PASSWORD).await;
    let body = throttled.text().await.expect("html");
    assert!(
        body.contains("Too many sign-in attempts from your network"),
        "the fourth attempt in a minute is refused, right password or not: {body}"
    );
}
