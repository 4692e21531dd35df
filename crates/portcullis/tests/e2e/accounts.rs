//! Self-service accounts against a real SMTP conversation (STARTTLS with the test authority's
//! certificate, authentication) and Chromium: sign-up with e-mail verification, forgotten
//! passwords, invitations, temporary passwords; answers that do not tell whether an account
//! exists; mail that survives a mail-server outage and a restart.

use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::Value;

use crate::browser::{browser, driver, path_of, sign_in_as, sign_out_at, site_with, wait_for_path};
use crate::harness::Instance;
use crate::oidc::PASSWORD;
use crate::smtp::{SMTP_PASSWORD, SMTP_USER, Smtp};

const NEW_PASSWORD: &str = "a-brand-new-passphrase-for-tests";

/// The mail server and the `[mail]` (plus `extra`) configuration that uses it.
struct Mail {
    smtp: Smtp,
    _dir: tempfile::TempDir,
    config: String,
}

async fn mail(extra: &str) -> Mail {
    let dir = tempfile::tempdir().expect("dir");
    let ca = crate::tls::Ca::new();
    let smtp = Smtp::start(&ca, dir.path()).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    let password_file = dir.path().join("smtp-password");
    std::fs::write(&password_file, format!("{SMTP_PASSWORD}\n")).expect("write password");
    let config = format!(
        r#"
[mail]
transport = "smtp"
from = "Shop <shop@example.com>"
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_tls = "starttls"
smtp_username = "{SMTP_USER}"
smtp_password_file = "{pw}"
smtp_ca_file = "{ca}"
{extra}
"#,
        port = smtp.addr.port(),
        pw = password_file.display(),
        ca = ca_file.display(),
    );
    Mail {
        smtp,
        _dir: dir,
        config,
    }
}

async fn fill(c: &Client, css: &str, text: &str) {
    let field = c.find(Locator::Css(css)).await.expect(css);
    field.clear().await.expect("clear");
    field.send_keys(text).await.expect("type");
}

async fn submit(c: &Client) {
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
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

async fn me(c: &Client) -> Value {
    c.execute_async(
        "const done = arguments[0]; fetch('/auth/me').then(r => r.json()).then(done);",
        vec![],
    )
    .await
    .expect("fetch /auth/me")
}

/// Chromium signs up from the sign-in page, is told to verify before it may sign in, follows
/// the link in the mail (the newest: an older one stops working), and signs in; the account is
/// in the sign-up group and its address is verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_verify_by_mail_and_sign_in_in_chromium() {
    let Some(d) = driver() else { return };
    let m = mail(
        r#"
[idp]
signup = "open"
signup_groups = "user"
require_verified_email = true

[[idp.signup_attributes]]
name = "company"
label = "Company"
required = true
max_length = 40

[[idp.signup_attributes]]
name = "seats"
type = "number"
min = 1
max = 500
"#,
    )
    .await;
    let s = site_with(&m.config).await;
    let c = browser(&d).await;
    c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
    c.wait()
        .for_element(Locator::Css("a#signup"))
        .await
        .expect("a sign-up link on the sign-in page")
        .click()
        .await
        .expect("click");
    assert!(path_of(&c).await.starts_with("/signup?request="));
    let email = "New.Customer@example.org";
    fill(&c, "input#email", email).await;
    fill(&c, "input#name", "New Customer").await;
    fill(&c, "input#attr-company", "Acme Ltd").await;
    fill(&c, "input#attr-seats", "25").await;
    // A weak password: refused, with the strength shown (no JavaScript on these pages).
    fill(&c, "input#password", "password1234").await;
    submit(&c).await;
    wait_for_text(&c, "too easy to guess").await;
    let meter = c
        .find(Locator::Css("meter"))
        .await
        .expect("a strength meter")
        .attr("value")
        .await
        .expect("attr");
    assert!(meter.is_some_and(|v| v.parse::<u8>().is_ok_and(|v| v < 2)));
    fill(&c, "input#password", PASSWORD).await;
    submit(&c).await;
    wait_for_text(&c, "Check your mail").await;

    let first = m
        .smtp
        .wait_for(
            email,
            "Confirm your e-mail address",
            Duration::from_secs(10),
        )
        .await;
    assert!(first.tls, "sent after STARTTLS");
    assert!(first.authenticated, "sent with SMTP authentication");
    assert_eq!(first.from, "shop@example.com");
    let first_link = first.link("http://").expect("a link in the text part");
    assert!(first_link.contains("/verifyEmail?code="), "{first_link}");
    assert!(
        first.html().contains("Confirm my address"),
        "an HTML part too"
    );

    // Not verified yet: the password is right, but sign-in asks for the address first and
    // mails a new link.
    c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
    sign_in_as(&c, email, PASSWORD).await;
    wait_for_text(&c, "Confirm your e-mail address first").await;
    let started = Instant::now();
    while m.smtp.count() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a second link is mailed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = m.smtp.take().pop().expect("the newest mail");
    let link = second.link("http://").expect("a link");
    assert_ne!(link, first_link);

    // The older link stopped working when the newer was sent.
    c.goto(&first_link).await.expect("goto");
    submit(&c).await;
    wait_for_text(&c, "expired or was already used").await;

    c.goto(&link).await.expect("goto");
    submit(&c).await;
    wait_for_text(&c, "Address confirmed").await;
    c.find(Locator::Css("a#continue"))
        .await
        .expect("a way back to the sign-in")
        .click()
        .await
        .expect("click");
    assert!(path_of(&c).await.starts_with("/login?request="));
    sign_in_as(&c, email, PASSWORD).await;
    // A customer may not see /admin/: sent home, signed in.
    wait_for_path(&c, "/").await;
    let me = me(&c).await;
    assert_eq!(me["username"], email);
    assert_eq!(me["groups"], serde_json::json!(["user"]));
    let shown: Value =
        serde_json::from_str(&s.instance.run(&["--json", "user", "show", email]).ok())
            .expect("json");
    assert_eq!(shown["email_verified"], true);
    assert_eq!(shown["attributes"]["name"], "New Customer");
    assert_eq!(shown["attributes"]["custom:company"], "Acme Ltd");
    assert_eq!(shown["attributes"]["custom:seats"], "25");
    // A used link does nothing more.
    c.goto(&link).await.expect("goto");
    submit(&c).await;
    wait_for_text(&c, "expired or was already used").await;
    c.close().await.expect("close");
}

/// "Forgot password" in Chromium: the mail's link sets a new password, the old password and
/// every token of the old sessions stop working (the gateway refuses them within a second), and
/// the link works once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_password_is_reset_by_mail_and_old_sessions_end() {
    let Some(d) = driver() else { return };
    let m = mail("").await;
    let s = site_with(&m.config).await;
    let c = browser(&d).await;
    c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
    sign_in_as(&c, "root", PASSWORD).await;
    wait_for_path(&c, "/admin/").await;
    let old = c
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("cookie")
        .value()
        .to_owned();
    let http = reqwest::Client::new();
    let api = s.server.url("/api/orders/1");
    let with_old = || http.get(&api).bearer_auth(&old).send();
    assert_eq!(with_old().await.expect("send").status(), 200);

    // A second browser (a profile and cookies of its own) asks for the reset.
    let d2 = driver().expect("chromedriver");
    let other = browser(&d2).await;
    other
        .goto(&format!("{}/admin/", s.base))
        .await
        .expect("goto");
    other
        .wait()
        .for_element(Locator::Css("a#forgot-password"))
        .await
        .expect("a forgot-password link")
        .click()
        .await
        .expect("click");
    fill(&other, "input#username", "root").await;
    submit(&other).await;
    wait_for_text(&other, "Check your mail").await;
    let mail = m
        .smtp
        .wait_for("root@example.com", "Reset your", Duration::from_secs(10))
        .await;
    let link = mail.link("http://").expect("a link");
    assert!(link.contains("/resetPassword?code="), "{link}");
    other.goto(&link).await.expect("goto");
    fill(&other, "input#password", "qwertyuiop12").await;
    submit(&other).await;
    wait_for_text(&other, "too easy to guess").await;
    fill(&other, "input#password", NEW_PASSWORD).await;
    submit(&other).await;
    wait_for_text(&other, "Password changed").await;

    let started = Instant::now();
    loop {
        if with_old().await.expect("send").status() == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "a token of a session from before the reset still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The owner is told at the address on file.
    m.smtp
        .wait_for(
            "root@example.com",
            "password was changed",
            Duration::from_secs(10),
        )
        .await;
    // The link works once.
    other.goto(&link).await.expect("goto");
    wait_for_text(&other, "expired or was already used").await;
    // The continue link takes the browser back into the sign-in it started from.
    other
        .goto(&format!("{}/admin/", s.base))
        .await
        .expect("goto");
    sign_in_as(&other, "root", PASSWORD).await;
    wait_for_text(&other, "Incorrect username or password").await;
    fill(&other, "input#username", "root").await;
    fill(&other, "input#password", NEW_PASSWORD).await;
    submit(&other).await;
    wait_for_path(&other, "/admin/").await;
    other.close().await.expect("close");
    c.close().await.expect("close");
}

/// A hosted form fetched over HTTP: its CSRF cookie and token.
async fn form(http: &reqwest::Client, url: &str) -> (String, String) {
    let resp = http.get(url).send().await.expect("get form");
    assert_eq!(resp.status(), 200, "{url}");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.contains("csrf"))
        .and_then(|v| v.split(';').next())
        .expect("a CSRF cookie")
        .to_owned();
    let html = resp.text().await.expect("html");
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF field")
        .to_owned();
    (cookie, token)
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    csrf: &(String, String),
    fields: &[(&str, &str)],
) -> (u16, String, Duration) {
    let mut body: Vec<(&str, &str)> = vec![("csrf", csrf.1.as_str())];
    body.extend_from_slice(fields);
    let started = Instant::now();
    let resp = http
        .post(url)
        .header("cookie", &csrf.0)
        .form(&body)
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, text, started.elapsed())
}

/// Sign-up and reset answer identically, in status, body and time, whether the address or
/// username is taken; the difference is only in who gets which mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_do_not_reveal_whether_an_account_exists() {
    let m = mail(
        r#"
[idp]
signup = "open"
account_rate_per_address = 1000

[[idp.signup_attributes]]
name = "seats"
label = "Seats"
type = "number"
min = 1
max = 500
"#,
    )
    .await;
    let i = Instance::with_config(&m.config);
    crate::oidc::add_users(&i);
    let server = i.serve();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let csrf = form(&http, &server.url("/signup")).await;
    let signup = |email: &'static str| {
        let (http, url, csrf) = (http.clone(), server.url("/signup"), csrf.clone());
        async move {
            post(
                &http,
                &url,
                &csrf,
                &[("email", email), ("name", ""), ("password", PASSWORD)],
            )
            .await
        }
    };
    // Custom attributes are checked by the server too (a browser's own checks can be skipped).
    let (status, body, _) = post(
        &http,
        &server.url("/signup"),
        &csrf,
        &[
            ("email", "attr@example.com"),
            ("password", PASSWORD),
            ("custom:seats", "9999"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("Seats must be between 1 and 500"), "{body}");
    let (status, body, _) = post(
        &http,
        &server.url("/signup"),
        &csrf,
        &[
            ("email", "attr@example.com"),
            ("password", PASSWORD),
            ("custom:seats", "x"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("must be a whole number"), "{body}");
    let taken = signup("ada@example.com").await;
    let fresh = signup("fresh@example.com").await;
    assert_eq!(taken.0, 200);
    assert_eq!(taken.0, fresh.0);
    assert_eq!(
        taken.1.replace("ada@example.com", "X"),
        fresh.1.replace("fresh@example.com", "X"),
        "one page for a taken and a new address"
    );
    let told = m
        .smtp
        .wait_for(
            "ada@example.com",
            "Someone tried to sign up",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        told.link("http://")
            .is_some_and(|l| l.contains("/forgotPassword"))
    );
    m.smtp
        .wait_for(
            "fresh@example.com",
            "Confirm your e-mail",
            Duration::from_secs(10),
        )
        .await;
    assert!(i.usernames().contains(&"fresh@example.com".to_owned()));
    // Signing up with a taken address again and again tells its owner at most 3 times an hour.
    for _ in 0..4 {
        assert_eq!(signup("ada@example.com").await.0, 200);
    }
    let tried = || {
        m.smtp
            .received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.subject().contains("Someone tried to sign up"))
            .count()
    };
    let started = Instant::now();
    while tried() < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "three notices");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tried(), 3, "sign-up notices are limited per account");

    let csrf = form(&http, &server.url("/forgotPassword")).await;
    let reset = |who: &'static str| {
        let (http, url, csrf) = (http.clone(), server.url("/forgotPassword"), csrf.clone());
        async move { post(&http, &url, &csrf, &[("username", who)]).await }
    };
    let known = reset("ada").await;
    let unknown = reset("nobody-by-this-name").await;
    assert_eq!((known.0, &known.1), (unknown.0, &unknown.1), "one answer");
    m.smtp
        .wait_for("ada@example.com", "Reset your", Duration::from_secs(10))
        .await;
    // Timing: the answer is given before the lookup. Medians of interleaved requests.
    let (mut k, mut u) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        k.push(reset("root").await.2);
        u.push(reset("nobody-by-this-name").await.2);
    }
    k.sort();
    u.sort();
    let (k, u) = (k[3], u[3]);
    let gap = k.abs_diff(u);
    assert!(
        gap < Duration::from_millis(30),
        "median answer for a known user {k:?}, unknown {u:?}"
    );
    // Each account gets at most 3 reset mails an hour, however often it is asked for.
    let to_root = || {
        m.smtp
            .received
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.to.iter().any(|t| t == "root@example.com"))
            .count()
    };
    let started = Instant::now();
    while to_root() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "three reset mails"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(to_root(), 3, "reset mails per account are throttled");
    // Nobody signed up as the taken address.
    let out = i.run(&["--json", "user", "list"]).ok();
    assert_eq!(out.matches("ada@example.com").count(), 1);
}

/// Too many account requests from one network get 429; a form without its CSRF token is
/// refused; sign-up closed (the default) has no page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_pages_are_throttled_protected_and_closed_by_default() {
    let m = mail("[idp]\naccount_rate_per_address = 3\n").await;
    let i = Instance::with_config(&m.config);
    crate::oidc::add_users(&i);
    let server = i.serve();
    let http = reqwest::Client::new();
    let signup = http.get(server.url("/signup")).send().await.expect("get");
    assert_eq!(
        signup.status(),
        404,
        "sign-up is closed unless idp.signup opens it"
    );
    let csrf = form(&http, &server.url("/forgotPassword")).await;
    let no_token = http
        .post(server.url("/forgotPassword"))
        .header("cookie", &csrf.0)
        .form(&[("username", "ada")])
        .send()
        .await
        .expect("post");
    assert_eq!(no_token.status(), 403);
    for _ in 0..3 {
        let (status, ..) = post(
            &http,
            &server.url("/forgotPassword"),
            &csrf,
            &[("username", "x")],
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, body, _) = post(
        &http,
        &server.url("/forgotPassword"),
        &csrf,
        &[("username", "x")],
    )
    .await;
    assert_eq!(status, 429, "{body}");
    // A forged or unknown code changes nothing and says so.
    let bad = http
        .get(server.url("/resetPassword?code=not-a-real-code"))
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .expect("body")
            .contains("expired or was already used")
    );
}

/// The mail server is down when a reset is asked for; portcullis is restarted meanwhile; the
/// server comes back and the message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_out_an_smtp_outage_and_a_restart() {
    let mut m = mail("").await;
    let i = Instance::with_config(&m.config);
    crate::oidc::add_users(&i);
    m.smtp.stop();
    let server = i.serve();
    let http = reqwest::Client::new();
    let csrf = form(&http, &server.url("/forgotPassword")).await;
    let (status, ..) = post(
        &http,
        &server.url("/forgotPassword"),
        &csrf,
        &[("username", "ada")],
    )
    .await;
    assert_eq!(status, 200);
    // The first attempt fails (connection refused) and the message stays queued.
    let started = Instant::now();
    loop {
        let status: Value =
            serde_json::from_str(&i.run(&["--json", "mail", "status"]).ok()).expect("json");
        if status["pending"] == 1 && status["retrying"] == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "one message pending after a failed attempt: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.terminate();
    m.smtp.resume().await;
    let server = i.serve();
    // The retry is due 15 s after the failed attempt.
    let mail = m
        .smtp
        .wait_for("ada@example.com", "Reset your", Duration::from_secs(40))
        .await;
    assert!(
        mail.link("http://")
            .is_some_and(|l| l.contains("/resetPassword?code="))
    );
    let started = Instant::now();
    loop {
        let status: Value =
            serde_json::from_str(&i.run(&["--json", "mail", "status"]).ok()).expect("json");
        if status["pending"] == 0 && status["sent"] == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(m.smtp.count(), 1, "sent once");
    drop(server);
}

/// An operator invites a user from the CLI; the mail's link sets the first password; the user
/// signs in. A temporary password set by an operator must be replaced at the next sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_and_temporary_passwords_in_chromium() {
    let Some(d) = driver() else { return };
    let m = mail("").await;
    let s = site_with(&m.config).await;
    let added = s.instance.run(&[
        "--json",
        "user",
        "add",
        "ines",
        "--email",
        "ines@example.com",
        "--group",
        "admin",
        "--invite",
    ]);
    let added: Value = serde_json::from_str(&added.ok()).expect("json");
    assert_eq!(
        added["password_set"], false,
        "an invited user has no password yet"
    );
    let invitation = m
        .smtp
        .wait_for(
            "ines@example.com",
            "You are invited",
            Duration::from_secs(15),
        )
        .await;
    let link = invitation.link("http://").expect("a link");
    assert!(link.contains("/invitation?code="), "{link}");
    let c = browser(&d).await;
    c.goto(&link).await.expect("goto");
    fill(&c, "input#password", NEW_PASSWORD).await;
    submit(&c).await;
    wait_for_text(&c, "Password changed").await;
    c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
    wait_for_text(&c, "id=\"username\"").await;
    sign_in_as(&c, "ines", NEW_PASSWORD).await;
    wait_for_path(&c, "/admin/").await;
    // Used: the link is dead; the operator can send a new one.
    c.goto(&link).await.expect("goto");
    wait_for_text(&c, "invitation has expired or was already used").await;
    s.instance.run(&["user", "invite", "ines"]).ok();
    m.smtp.take();
    m.smtp
        .wait_for(
            "ines@example.com",
            "You are invited",
            Duration::from_secs(15),
        )
        .await;

    // A temporary password, after signing out.
    s.instance
        .run_with_stdin(
            &[
                "user",
                "set-password",
                "ada",
                "--temporary",
                "--password-stdin",
            ],
            "temporary-password-from-support",
        )
        .ok();
    sign_out_at(&c, &s.base).await;
    // Sign-out reaches the gateway by revocation, within a second.
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
    sign_in_as(&c, "ada", "temporary-password-from-support").await;
    wait_for_text(&c, "Choose a new password").await;
    // The password that was given is not a password of one's own.
    fill(&c, "input#password", "temporary-password-from-support").await;
    submit(&c).await;
    wait_for_text(&c, "not the one you were given").await;
    fill(&c, "input#password", NEW_PASSWORD).await;
    submit(&c).await;
    wait_for_path(&c, "/").await;
    let shown: Value =
        serde_json::from_str(&s.instance.run(&["--json", "user", "show", "ada"]).ok())
            .expect("json");
    assert_eq!(shown["password_change_required"], false);
    c.close().await.expect("close");
}

/// `config check` explains what the account settings need.
#[test]
fn account_settings_are_checked() {
    let i = Instance::with_config("[idp]\nsignup = \"open\"\n");
    let out = i.run(&["config", "check"]).user_error();
    assert!(out.contains("idp.signup"), "{out}");
    assert!(out.contains("mail.transport"), "{out}");
    let i = Instance::with_config(
        "[mail]\ntransport = \"smtp\"\nsmtp_host = \"mail.example.com\"\nsmtp_tls = \"none\"\n",
    );
    let out = i.run(&["config", "check"]).user_error();
    assert!(out.contains("mail.smtp_tls"), "{out}");
    assert!(out.contains("clear text"), "{out}");
    let i =
        Instance::with_config("[idp]\nsignup = \"domains\"\n[mail]\ntransport = \"directory\"\n");
    let out = i.run(&["config", "check"]).user_error();
    assert!(out.contains("idp.signup_domains"), "{out}");
    let i = Instance::with_config(
        "[mail]\ntransport = \"smtp\"\nsmtp_host = \"mail.example.com\"\nsmtp_username = \"me\"\n",
    );
    let out = i.run(&["config", "check"]).user_error();
    assert!(out.contains("PORTCULLIS_MAIL_SMTP_PASSWORD"), "{out}");
}

/// The account page in Chromium: the current password guards every change; a new password ends
/// the other browser's session but not this one; a new address is confirmed by mail and the old
/// one is told; the user deletes the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_page_changes_password_and_address_and_deletes() {
    let Some(d) = driver() else { return };
    let m = mail("[idp]\naccount_deletion = true\n").await;
    let s = site_with(&m.config).await;
    let sign_in_ada = |c: Client| {
        let base = s.base.clone();
        async move {
            c.goto(&format!("{base}/admin/")).await.expect("goto");
            sign_in_as(&c, "ada", PASSWORD).await;
            wait_for_path(&c, "/").await;
            c
        }
    };
    let c = sign_in_ada(browser(&d).await).await;
    let d2 = driver().expect("chromedriver");
    let other = sign_in_ada(browser(&d2).await).await;
    let other_token = other
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("cookie")
        .value()
        .to_owned();

    c.goto(&format!("{}/account", s.base)).await.expect("goto");
    wait_for_text(&c, "Signed in as").await;
    let sessions = c
        .find_all(Locator::Css("#sessions li"))
        .await
        .expect("sessions");
    assert_eq!(sessions.len(), 2, "both browsers' sessions are listed");
    assert!(c.source().await.expect("html").contains("this browser"));

    // Wrong current password: nothing changes.
    fill(&c, "input#current_password", "not-the-password").await;
    fill(&c, "input#password", NEW_PASSWORD).await;
    c.find(Locator::Css("button#change-password"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    wait_for_text(&c, "current password is not right").await;
    fill(&c, "input#current_password", PASSWORD).await;
    fill(&c, "input#password", NEW_PASSWORD).await;
    c.find(Locator::Css("button#change-password"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    wait_for_text(&c, "Your password is changed").await;
    // The other browser's tokens die; this browser stays signed in.
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let status = http
            .get(s.server.url("/api/orders/1"))
            .bearer_auth(&other_token)
            .send()
            .await
            .expect("send")
            .status();
        if status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "the other session's token still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (On an app page: the hosted pages' CSP allows no script to fetch.)
    c.goto(&format!("{}/", s.base)).await.expect("goto");
    assert_eq!(
        me(&c).await["username"],
        "ada",
        "this browser is still signed in"
    );
    c.goto(&format!("{}/account", s.base)).await.expect("goto");
    assert_eq!(
        c.find_all(Locator::Css("#sessions li"))
            .await
            .expect("sessions")
            .len(),
        1
    );

    // A new address: confirmed by mail, the old one told.
    fill(&c, "input#email", "ada.new@example.com").await;
    fill(&c, "input#email_password", NEW_PASSWORD).await;
    c.find(Locator::Css("button#change-email"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    wait_for_text(&c, "Your address is now ada.new@example.com").await;
    m.smtp
        .wait_for("ada@example.com", "was changed", Duration::from_secs(10))
        .await;
    let confirm = m
        .smtp
        .wait_for(
            "ada.new@example.com",
            "Confirm your e-mail",
            Duration::from_secs(10),
        )
        .await;
    c.goto(&confirm.link("http://").expect("link"))
        .await
        .expect("goto");
    submit(&c).await;
    wait_for_text(&c, "Address confirmed").await;
    c.goto(&format!("{}/account", s.base)).await.expect("goto");
    wait_for_text(&c, "(confirmed)").await;

    // Deleting needs the password and the box ticked.
    fill(&c, "input#delete_password", NEW_PASSWORD).await;
    c.find(Locator::Css("input#delete-confirm"))
        .await
        .expect("box")
        .click()
        .await
        .expect("tick");
    c.find(Locator::Css("button#delete-account"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    wait_for_text(&c, "Account deleted").await;
    assert!(!s.instance.usernames().contains(&"ada".to_owned()));
    c.goto(&format!("{}/account", s.base)).await.expect("goto");
    wait_for_text(&c, "Sign in to manage your account").await;
    other.close().await.expect("close");
    c.close().await.expect("close");
}
