//! Two-step sign-in: enrolment when a group requires it, TOTP codes computed here (RFC 6238 with
//! HMAC-SHA1, written from the RFC rather than with the library the server uses), replays,
//! recovery codes, the lockout, `acr_values=mfa`, `amr` in tokens, the operator's reset.

use reqwest::StatusCode;
use serde_json::Value;

use crate::oidc::{Idp, claims, hidden, location, query, setup};

/// RFC 4648 base32 without padding, as authenticator apps read it.
fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u64;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .expect("base32") as u64;
        bits = (bits << 5) | v;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

/// The 6-digit TOTP code of `secret` for the 30-second step holding `unix` (RFC 6238, RFC 4226).
pub(crate) fn totp(secret_b32: &str, unix: u64) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(
        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        &base32_decode(secret_b32),
    );
    let tag = hmac::sign(&key, &(unix / 30).to_be_bytes());
    let h = tag.as_ref();
    let offset = usize::from(h[19] & 0x0f);
    let code = (u32::from(h[offset] & 0x7f) << 24)
        | (u32::from(h[offset + 1]) << 16)
        | (u32::from(h[offset + 2]) << 8)
        | u32::from(h[offset + 3]);
    format!("{:06}", code % 1_000_000)
}

fn now() -> u64 {
    u64::try_from(portcullis_token::Clock::system().now()).expect("after 1970")
}

#[test]
fn totp_matches_the_rfc_6238_test_vectors() {
    // RFC 6238 appendix B, SHA-1, secret "12345678901234567890", 8 digits there; the last 6 here.
    let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    assert_eq!(totp(secret, 59), "287082");
    assert_eq!(totp(secret, 1_111_111_109), "081804");
    assert_eq!(totp(secret, 2_000_000_000), "279037");
}

/// A sign-in at the form up to what follows the password: (status, page).
async fn password_step(
    idp: &mut Idp,
    client: &str,
    user: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, String, String, String) {
    let mut params = vec![("prompt", "login")];
    params.extend_from_slice(extra);
    let authorize = idp.authorize_url(client, &params);
    let (request, csrf) = idp.open_form(&authorize).await;
    let resp = idp
        .post_form(&request, &csrf, user, crate::oidc::PASSWORD)
        .await;
    let status = resp.status();
    let location = location(resp.headers());
    let body = resp.text().await.expect("body");
    (
        status,
        if body.is_empty() { location } else { body },
        request,
        csrf,
    )
}

async fn post(idp: &mut Idp, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let resp = idp
        .http
        .post(idp.url(path))
        .header("cookie", idp.cookie_header())
        .form(fields)
        .send()
        .await
        .expect("post");
    idp.remember_cookies(resp.headers());
    resp
}

async fn tokens_from(idp: &Idp, client: &str, redirect: &str) -> Value {
    let code = query(redirect)["code"].clone();
    let (status, tokens) = idp.exchange(client, &code).await;
    assert_eq!(status, 200, "{tokens}");
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_enrol_then_sign_in_with_codes_that_work_once() {
    let mut idp = setup("[idp]\nmfa_required_groups = \"admin\"\n");

    // root is in `admin`, has no factor: the password leads to enrolment.
    let (status, page, request, csrf) = password_step(&mut idp, "spa", "root", &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("Set up two-step sign-in"), "{page}");
    assert!(page.contains("<svg"), "a QR code rendered by the server");
    let secret = page
        .split("id=\"totp-secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("the secret as text")
        .to_owned();
    let ticket = hidden(&page, "ticket");
    let wrong = post(
        &mut idp,
        "/login/enrol",
        &[
            ("request", &request),
            ("csrf", &csrf),
            ("ticket", &ticket),
            ("code", "000000"),
        ],
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let code = totp(&secret, now());
    let enrolled = post(
        &mut idp,
        "/login/enrol",
        &[
            ("request", &request),
            ("csrf", &csrf),
            ("ticket", &ticket),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(enrolled.status(), 200);
    let page = enrolled.text().await.expect("body");
    let recovery: Vec<String> = page
        .split("<li><code>")
        .skip(1)
        .filter_map(|s| s.split('<').next().map(str::to_owned))
        .collect();
    assert_eq!(recovery.len(), 10, "ten recovery codes, shown once: {page}");
    let cont = post(
        &mut idp,
        "/login/continue",
        &[("request", &request), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(cont.status(), 303);
    let tokens = tokens_from(&idp, "spa", &location(cont.headers())).await;
    let id = claims(tokens["id_token"].as_str().expect("id token"));
    assert_eq!(id["amr"], serde_json::json!(["pwd", "otp", "mfa"]));
    assert_eq!(id["acr"], "mfa");
    let access = claims(tokens["access_token"].as_str().expect("access token"));
    assert_eq!(access["amr"], serde_json::json!(["pwd", "otp", "mfa"]));
    assert!(access["auth_time"].is_i64());

    // The same code again (same step): refused, a replay.
    let (status, page, request, csrf) = password_step(&mut idp, "spa", "root", &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("Two-step sign-in"), "{page}");
    let ticket = hidden(&page, "ticket");
    let replay = post(
        &mut idp,
        "/login/mfa",
        &[
            ("request", &request),
            ("csrf", &csrf),
            ("ticket", &ticket),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(replay.status(), 401);
    assert!(replay.text().await.expect("body").contains("already used"));
    // A code of another secret (another user's app): refused.
    let foreign = totp("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", now());
    let resp = post(
        &mut idp,
        "/login/mfa",
        &[
            ("request", &request),
            ("csrf", &csrf),
            ("ticket", &ticket),
            ("code", &foreign),
        ],
    )
    .await;
    assert_eq!(resp.status(), 401);
    // The next step's code is within the ±1 tolerance and newer: accepted.
    let next = totp(&secret, now() + 30);
    let ok = post(
        &mut idp,
        "/login/mfa",
        &[
            ("request", &request),
            ("csrf", &csrf),
            ("ticket", &ticket),
            ("code", &next),
        ],
    )
    .await;
    assert_eq!(ok.status(), 303);
    // A ticket is bound to its user and purpose: reusing it after success starts nothing new
    // (the session exists; the form would just sign in again with a fresh code only).

    // A recovery code works once.
    for (expect, label) in [(303, "first use"), (401, "second use")] {
        let (_, page, request, csrf) = password_step(&mut idp, "spa", "root", &[]).await;
        let ticket = hidden(&page, "ticket");
        let resp = post(
            &mut idp,
            "/login/mfa",
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("ticket", &ticket),
                ("code", &recovery[0].to_uppercase()),
            ],
        )
        .await;
        assert_eq!(resp.status().as_u16(), expect, "recovery code, {label}");
    }

    // Guessing: wrong codes count towards the account's lockout, like wrong passwords.
    let (_, page, request, csrf) = password_step(&mut idp, "spa", "root", &[]).await;
    let ticket = hidden(&page, "ticket");
    let mut locked = false;
    for guess in 0..8 {
        let resp = post(
            &mut idp,
            "/login/mfa",
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("ticket", &ticket),
                ("code", &format!("{:06}", 100_000 + guess)),
            ],
        )
        .await;
        if resp
            .text()
            .await
            .expect("body")
            .contains("Too many failed attempts")
        {
            locked = true;
            break;
        }
    }
    assert!(locked, "the lockout stops guessing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acr_values_asks_for_a_factor_and_operators_can_reset_one() {
    let mut idp = setup("");
    // ada needs no factor: a password session, amr pwd.
    let (status, redirect, ..) = password_step(&mut idp, "spa", "ada", &[]).await;
    assert_eq!(status, 303);
    let tokens = tokens_from(&idp, "spa", &redirect).await;
    let access = claims(tokens["access_token"].as_str().expect("access token"));
    assert_eq!(access["amr"], serde_json::json!(["pwd"]));
    // The application asks for MFA: ada enrols now.
    let (status, page, request, csrf) =
        password_step(&mut idp, "spa", "ada", &[("acr_values", "mfa")]).await;
    assert_eq!(status, 200);
    assert!(page.contains("Set up two-step sign-in"), "{page}");
    let secret = page
        .split("id=\"totp-secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("secret")
        .to_owned();
    let ticket = hidden(&page, "ticket");
    let code = totp(&secret, now());
    let resp = post(
        &mut idp,
        "/login/enrol",
        &[
            ("request", &request),
            ("csrf", &csrf),
            ("ticket", &ticket),
            ("code", &code),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    // A password-only session does not satisfy acr_values=mfa: the form is shown again.
    let user: Value =
        serde_json::from_str(&idp._instance.run(&["--json", "user", "show", "ada"]).ok())
            .expect("json");
    assert_eq!(user["username"], "ada");
    // The operator resets the factor (lost phone): the next sign-in enrols again.
    let out = idp._instance.run(&["user", "reset-mfa", "ada"]).ok();
    assert!(out.contains("removed the second factors"), "{out}");
    let (status, page, ..) = password_step(&mut idp, "spa", "ada", &[("acr_values", "mfa")]).await;
    assert_eq!(status, 200);
    assert!(page.contains("Set up two-step sign-in"), "{page}");
}

/// Admins may use `/admin/**` and `/api/admin/**` only with a second factor from the last
/// 15 minutes; customers use the orders API with a password.
const STEP_UP_POLICIES: &str = r#"
[[policy]]
principal = "group:user"
statements = [{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/orders/**"] }]

[[policy]]
principal = "group:admin"
statements = [{ effect = "allow", methods = ["*"], paths = ["/admin/**", "/api/admin/**"], mfa = true, auth_age = "15m" }]
"#;

/// In Chromium: an admin signed in with a password only is stepped up on the admin page —
/// asked for the password and a second factor (enrolling one, with codes computed here) — and
/// lands back on the page; the API answers a password-only token per RFC 9470; the explain
/// command names the condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_requiring_mfa_steps_pages_up_and_answers_apis_per_rfc_9470() {
    use fantoccini::Locator;

    use crate::browser::{browser, driver, path_of, sign_in_as, site_with_policies, wait_for_path};
    let Some(d) = driver() else { return };
    let s = site_with_policies(STEP_UP_POLICIES, "").await;
    let c = browser(&d).await;
    // A password-only session (the home page is public; the API decides per token).
    c.goto(&format!("{}/auth/login?return_to=/", s.base))
        .await
        .expect("goto");
    sign_in_as(&c, "root", crate::oidc::PASSWORD).await;
    wait_for_path(&c, "/").await;
    let weak = c
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("cookie")
        .value()
        .to_owned();
    let http = reqwest::Client::new();
    let resp = http
        .get(s.server.url("/api/admin/users"))
        .bearer_auth(&weak)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\""),
        "{challenge}"
    );
    assert!(challenge.contains("acr_values=\"mfa\""), "{challenge}");
    assert!(challenge.contains("max_age=900"), "{challenge}");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "insufficient_user_authentication");

    // The page steps up: sign in again, enrol a factor, come back.
    c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
    c.wait()
        .for_element(Locator::Css("input#username"))
        .await
        .expect("the sign-in form again");
    sign_in_as(&c, "root", crate::oidc::PASSWORD).await;
    let secret = c
        .wait()
        .for_element(Locator::Css("#totp-secret"))
        .await
        .expect("enrolment")
        .text()
        .await
        .expect("secret");
    assert!(c.find(Locator::Css("#qr svg")).await.is_ok(), "a QR code");
    c.find(Locator::Css("input#code"))
        .await
        .expect("code")
        .send_keys(&totp(&secret, now()))
        .await
        .expect("type");
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
    let codes = c
        .wait()
        .for_element(Locator::Css("#recovery-codes"))
        .await
        .expect("recovery codes")
        .text()
        .await
        .expect("text");
    assert_eq!(
        codes.lines().filter(|l| !l.trim().is_empty()).count(),
        10,
        "{codes}"
    );
    c.find(Locator::Css("button#continue-after-codes"))
        .await
        .expect("continue")
        .click()
        .await
        .expect("click");
    wait_for_path(&c, "/admin/").await;
    assert!(c.source().await.expect("html").contains("Admin area"));
    let strong = c
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("cookie")
        .value()
        .to_owned();
    let resp = http
        .get(s.server.url("/api/admin/users"))
        .bearer_auth(&strong)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "the stepped-up token is allowed");
    assert!(path_of(&c).await.starts_with("/admin/"));

    let explain = s
        .instance
        .run(&[
            "policy",
            "explain",
            "--group",
            "admin",
            "POST",
            "/api/admin/users",
        ])
        .ok();
    assert!(
        explain.contains("only with mfa = true, auth_age = \"15m\""),
        "{explain}"
    );
    let explain = s
        .instance
        .run(&[
            "policy",
            "explain",
            "--group",
            "admin",
            "--mfa",
            "--signed-in",
            "20m",
            "POST",
            "/api/admin/users",
        ])
        .ok();
    assert!(explain.contains("does not meet"), "too long ago: {explain}");
    let explain = s
        .instance
        .run(&[
            "policy",
            "explain",
            "--group",
            "admin",
            "--mfa",
            "--signed-in",
            "5m",
            "POST",
            "/api/admin/users",
        ])
        .ok();
    assert!(
        explain.contains("allowed by statement 1 of group:admin"),
        "{explain}"
    );
    c.close().await.expect("close");
}
