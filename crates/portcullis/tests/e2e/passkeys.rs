//! Passkeys in Chromium with a virtual WebAuthn authenticator (the W3C WebDriver extension that
//! chromedriver implements): register one on the account page, sign in without a password, use
//! it as the second factor after a password. Attacks with assertions made here from the
//! authenticator's own key: another origin, a replayed challenge, a cloned authenticator's
//! counter.

use std::time::{Duration, Instant};

use base64::Engine;
use fantoccini::{Client, Locator};
use serde_json::{Value, json};

use crate::browser::{browser, driver, path_of, sign_in_as, sign_out_at, site_with, wait_for_path};
use crate::oidc::PASSWORD;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A virtual CTAP2 authenticator with resident keys and user verification, added to the
/// browser session; returns its id.
async fn authenticator(driver_url: &str, c: &Client) -> String {
    let session = c.session_id().await.expect("session").expect("an id");
    let resp: Value = reqwest::Client::new()
        .post(format!(
            "{driver_url}/session/{session}/webauthn/authenticator"
        ))
        .json(&json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserConsenting": true,
            "isUserVerified": true,
        }))
        .send()
        .await
        .expect("add a virtual authenticator")
        .json()
        .await
        .expect("json");
    resp["value"].as_str().expect("authenticator id").to_owned()
}

/// The authenticator's credentials (with their private keys, as PKCS#8).
async fn credentials(driver_url: &str, c: &Client, id: &str) -> Vec<Value> {
    let session = c.session_id().await.expect("session").expect("an id");
    let resp: Value = reqwest::Client::new()
        .get(format!(
            "{driver_url}/session/{session}/webauthn/authenticator/{id}/credentials"
        ))
        .send()
        .await
        .expect("credentials")
        .json()
        .await
        .expect("json");
    resp["value"].as_array().cloned().unwrap_or_default()
}

async fn wait_for_text(c: &Client, text: &str) {
    let started = Instant::now();
    loop {
        if c.source().await.expect("html").contains(text) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "expected {text:?} on {}: {}",
            path_of(c).await,
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn claims_of(jwt: &str) -> Value {
    crate::oidc::claims(jwt)
}

/// An assertion for `challenge` signed here with the authenticator's key, as a browser at
/// `origin` would send it.
fn forged_assertion(
    cred: &Value,
    challenge: &str,
    origin: &str,
    rp_id: &str,
    counter: u32,
) -> String {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let pkcs8 = B64
        .decode(cred["privateKey"].as_str().expect("private key"))
        .expect("base64url");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8).expect("P-256 key");
    let client_data = json!({ "type": "webauthn.get", "challenge": challenge, "origin": origin, "crossOrigin": false })
        .to_string();
    let mut auth_data = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rp_id.as_bytes())
        .as_ref()
        .to_vec();
    auth_data.push(0x05); // user present, user verified
    auth_data.extend_from_slice(&counter.to_be_bytes());
    let client_hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, client_data.as_bytes());
    let mut signed = auth_data.clone();
    signed.extend_from_slice(client_hash.as_ref());
    let signature = key
        .sign(&aws_lc_rs::rand::SystemRandom::new(), &signed)
        .expect("sign");
    let id = cred["credentialId"].as_str().expect("credential id");
    json!({
        "id": id,
        "rawId": id,
        "type": "public-key",
        "extensions": {},
        "response": {
            "authenticatorData": B64.encode(&auth_data),
            "clientDataJSON": B64.encode(client_data.as_bytes()),
            "signature": B64.encode(signature.as_ref()),
            "userHandle": cred["userHandle"],
        },
    })
    .to_string()
}

/// A sign-in form fetched over HTTP: its sealed request, CSRF token and cookie.
async fn sign_in_form(http: &reqwest::Client, origin: &str) -> (String, String, String) {
    let callback: String =
        url::form_urlencoded::byte_serialize(format!("{origin}/auth/callback").as_bytes())
            .collect();
    let resp = http
        .get(format!("{origin}/oauth2/authorize?response_type=code&client_id=portcullis-browser&redirect_uri={callback}&scope=openid&state=s&nonce=n&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"))
        .send()
        .await
        .expect("authorize");
    let login = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let resp = http
        .get(format!("{origin}{login}"))
        .send()
        .await
        .expect("login page");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.contains("csrf"))
        .and_then(|v| v.split(';').next())
        .expect("csrf cookie")
        .to_owned();
    let html = resp.text().await.expect("html");
    (
        crate::oidc::hidden(&html, "request"),
        crate::oidc::hidden(&html, "csrf"),
        cookie,
    )
}

/// Posts passkey ceremonies for one sign-in form.
struct Form<'a> {
    http: &'a reqwest::Client,
    origin: &'a str,
    request: &'a str,
    csrf: &'a str,
    cookie: &'a str,
}

impl Form<'_> {
    /// (ceremony id, challenge)
    async fn begin(&self) -> (String, String) {
        let v: Value = self
            .http
            .post(format!("{}/login/passkey/begin", self.origin))
            .header("cookie", self.cookie)
            .form(&[("request", self.request), ("csrf", self.csrf)])
            .send()
            .await
            .expect("begin")
            .json()
            .await
            .expect("json");
        (
            v["ceremony"].as_str().expect("ceremony").to_owned(),
            v["options"]["publicKey"]["challenge"]
                .as_str()
                .expect("challenge")
                .to_owned(),
        )
    }

    async fn finish(&self, ceremony: &str, credential: &str) -> u16 {
        self.http
            .post(format!("{}/login/passkey/finish", self.origin))
            .header("cookie", self.cookie)
            .form(&[
                ("request", self.request),
                ("csrf", self.csrf),
                ("ceremony", ceremony),
                ("credential", credential),
            ])
            .send()
            .await
            .expect("finish")
            .status()
            .as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_register_sign_in_without_a_password_and_serve_as_second_factor() {
    let Some(d) = driver() else { return };
    let s = site_with("").await;
    let c = browser(&d).await;
    let aid = authenticator(&d.url, &c).await;

    // Register on the account page, signed in with a password.
    c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
    sign_in_as(&c, "root", PASSWORD).await;
    wait_for_path(&c, "/admin/").await;
    c.goto(&format!("{}/account", s.base)).await.expect("goto");
    c.wait()
        .for_element(Locator::Css("input#passkey-name"))
        .await
        .expect("the passkeys section")
        .send_keys("Laptop")
        .await
        .expect("type");
    c.find(Locator::Css("button#add-passkey"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    wait_for_text(&c, "<strong>Laptop</strong>").await;
    let creds = credentials(&d.url, &c, &aid).await;
    assert_eq!(creds.len(), 1, "{creds:?}");
    assert_eq!(creds[0]["isResidentCredential"], true);
    assert_eq!(
        creds[0]["rpId"], "localhost",
        "the RP id is the issuer's host"
    );

    // Passwordless: signed out, the sign-in page's passkey button signs in.
    sign_out_at(&c, &s.base).await;
    let started = Instant::now();
    loop {
        c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
        if path_of(&c).await.starts_with("/login?request=") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "signed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait()
        .for_element(Locator::Css("button#passkey-sign-in"))
        .await
        .expect("a passkey button")
        .click()
        .await
        .expect("click");
    wait_for_path(&c, "/admin/").await;
    let token = c
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("cookie")
        .value()
        .to_owned();
    let amr = claims_of(&token)["amr"].clone();
    assert_eq!(
        amr,
        json!(["hwk", "mfa"]),
        "a device-bound key, user-verified"
    );

    // A password now needs the second factor, and the passkey is one.
    sign_out_at(&c, &s.base).await;
    let started = Instant::now();
    loop {
        c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
        if path_of(&c).await.starts_with("/login?request=") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "signed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sign_in_as(&c, "root", PASSWORD).await;
    c.wait()
        .for_element(Locator::Css("button#passkey-second-factor"))
        .await
        .expect("the second step offers the passkey")
        .click()
        .await
        .expect("click");
    wait_for_path(&c, "/admin/").await;
    let token = c
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("cookie")
        .value()
        .to_owned();
    assert_eq!(claims_of(&token)["amr"], json!(["pwd", "hwk", "mfa"]));

    // Attacks, with assertions signed here by the authenticator's own key.
    let cred = credentials(&d.url, &c, &aid).await.remove(0);
    let count = u32::try_from(cred["signCount"].as_u64().expect("count")).expect("small");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let origin = s.base.clone();
    let (request, csrf, cookie) = sign_in_form(&http, &origin).await;
    let f = Form {
        http: &http,
        origin: &origin,
        request: &request,
        csrf: &csrf,
        cookie: &cookie,
    };

    // Made for another origin (a phishing page relaying our challenge): refused.
    let (ceremony, challenge) = f.begin().await;
    let phished = forged_assertion(
        &cred,
        &challenge,
        "https://login.examp1e.com",
        "localhost",
        count + 1,
    );
    assert_eq!(f.finish(&ceremony, &phished).await, 400);
    // The same, for our origin: accepted (so the refusal above was the origin's doing).
    let (ceremony, challenge) = f.begin().await;
    let good = forged_assertion(&cred, &challenge, &origin, "localhost", count + 2);
    assert_eq!(f.finish(&ceremony, &good).await, 200);
    // Replayed: the ceremony was used.
    assert_eq!(f.finish(&ceremony, &good).await, 400);
    // A cloned authenticator: a counter that does not grow.
    let (ceremony, challenge) = f.begin().await;
    let cloned = forged_assertion(&cred, &challenge, &origin, "localhost", count + 1);
    assert_eq!(f.finish(&ceremony, &cloned).await, 400);
    // Signed for another RP id (a look-alike domain): refused.
    let (ceremony, challenge) = f.begin().await;
    let other_rp = forged_assertion(&cred, &challenge, &origin, "examp1e.com", count + 10);
    assert_eq!(f.finish(&ceremony, &other_rp).await, 400);

    // Removing the passkey (with the password) ends its use.
    c.goto(&format!("{}/account", s.base)).await.expect("goto");
    c.wait()
        .for_element(Locator::Css("input#remove-passkey-password-1"))
        .await
        .expect("remove form")
        .send_keys(PASSWORD)
        .await
        .expect("type");
    c.find(Locator::Css("button.remove-passkey"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    wait_for_text(&c, "The passkey is removed").await;
    c.close().await.expect("close");
}
