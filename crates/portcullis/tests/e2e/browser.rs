//! A real browser: Debian's Chromium driven over WebDriver (chromedriver) with fantoccini,
//! against the real binary. Needs `chromium` and `chromium-driver` (`.ci/run` installs them).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::gateway_upstream::Upstream;
use crate::harness::{Instance, Server};
use crate::oidc::PASSWORD;

/// chromedriver on a free port; killed on drop.
pub(crate) struct Driver {
    child: Child,
    pub(crate) url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn driver() -> Option<Driver> {
    if !std::path::Path::new("/usr/bin/chromedriver").exists() {
        if std::env::var("PORTCULLIS_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!(
                "chromedriver is missing: apt-get install chromium chromium-driver (.ci/run does)"
            );
        }
        eprintln!("skipping: install chromium and chromium-driver for the browser tests");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver {
        child,
        url,
        _profile: tempfile::tempdir().ok()?,
    })
}

pub(crate) async fn browser(d: &Driver) -> Client {
    browser_with(d, &[]).await
}

/// [`browser`] with more command-line switches.
pub(crate) async fn browser_with(d: &Driver, extra: &[String]) -> Client {
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
    ];
    let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    args.push(format!("--user-data-dir={}", d._profile.path().display()));
    args.extend(extra.iter().cloned());
    let caps = json!({ "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args } });
    let caps = caps.as_object().cloned().unwrap_or_default();
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a Chromium session")
}

/// A site: `/` (home), `/admin/` (admin area), an API behind policies.
pub(crate) struct Site {
    _files: tempfile::TempDir,
    pub(crate) instance: Instance,
    pub(crate) server: Server,
    pub(crate) base: String,
    _upstream: Upstream,
}

async fn site() -> Site {
    site_with("").await
}

/// The default site's policies: customers use `/api/orders/**`, admins everything.
const SITE_POLICIES: &str = r#"
[[policy]]
principal = "group:user"
statements = [{ effect = "allow", methods = ["GET", "POST"], paths = ["/api/orders/**"] }]

[[policy]]
principal = "group:admin"
statements = [{ effect = "allow", methods = ["*"], paths = ["/**"] }]
"#;

pub(crate) async fn site_with(extra: &str) -> Site {
    site_with_policies(SITE_POLICIES, extra).await
}

/// [`site_with`] with other policies.
pub(crate) async fn site_with_policies(policies: &str, extra: &str) -> Site {
    let upstream = Upstream::start().await;
    let files = tempfile::tempdir().expect("dir");
    std::fs::write(
        files.path().join("index.html"),
        "<!doctype html><title>home</title><h1>Home</h1>",
    )
    .expect("write");
    std::fs::create_dir(files.path().join("admin")).expect("mkdir");
    std::fs::write(
        files.path().join("admin/index.html"),
        "<!doctype html><title>admin</title><h1>Admin area</h1>",
    )
    .expect("write");
    let f = files.path().display();
    let config = format!(
        r#"
[[routes]]
path = "/admin/**"
kind = "page"
static_dir = "{f}/admin"

[[routes]]
path = "/api/**"
kind = "api"
upstream = "{up}"

[[routes]]
path = "/**"
kind = "public"
static_dir = "{f}"
"#,
        up = upstream.base
    );
    let i = Instance::with_config(&format!("{config}{policies}{extra}"));
    crate::oidc::add_users(&i);
    let server = i.serve();
    // Browsers treat localhost as a secure context, so the __Host- cookies work over http here.
    let base = server.base.replace("127.0.0.1", "localhost");
    Site {
        _files: files,
        instance: i,
        server,
        base,
        _upstream: upstream,
    }
}

async fn sign_in_on_form(c: &Client, user: &str) {
    sign_in_as(c, user, PASSWORD).await;
}

/// Signs out with the button on `/auth/logout` and waits to land on the home page.
pub(crate) async fn sign_out_at(c: &Client, base: &str) {
    c.goto(&format!("{base}/auth/logout")).await.expect("goto");
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("sign out");
    wait_for_path(c, "/").await;
}

pub(crate) async fn path_of(c: &Client) -> String {
    let u = c.current_url().await.expect("url");
    format!(
        "{}{}",
        u.path(),
        u.query().map(|q| format!("?{q}")).unwrap_or_default()
    )
}

pub(crate) async fn wait_for_path(c: &Client, want: &str) {
    let started = Instant::now();
    loop {
        if path_of(c).await == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "expected {want}, at {}",
            path_of(c).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages_sign_in_come_back_and_sign_out_means_out() {
    let Some(d) = driver() else { return };
    let s = site().await;
    let c = browser(&d).await;
    c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
    assert!(
        path_of(&c).await.starts_with("/login?request="),
        "a signed-out visitor is asked to sign in"
    );
    sign_in_on_form(&c, "root").await;
    wait_for_path(&c, "/admin/").await;
    assert!(c.source().await.expect("html").contains("Admin area"));

    let visible: Value = c
        .execute("return document.cookie", vec![])
        .await
        .expect("js");
    assert!(
        !visible.as_str().unwrap_or_default().contains("portcullis"),
        "no token is readable by JavaScript: {visible}"
    );
    let me = c
        .execute_async(
            "const done = arguments[0]; fetch('/auth/me').then(r => r.json()).then(done);",
            vec![],
        )
        .await
        .expect("fetch /auth/me");
    assert_eq!(me["username"], "root");
    assert_eq!(me["groups"], json!(["admin", "user"]));

    // Parallel API calls right after the access cookie is gone all succeed (one refresh).
    c.delete_cookie("__Host-portcullis-access")
        .await
        .expect("delete");
    let statuses = c
        .execute_async(
            "const done = arguments[0]; Promise.all([1,2,3,4,5,6].map(i => fetch('/api/orders/' + i).then(r => r.status))).then(done);",
            vec![],
        )
        .await
        .expect("parallel fetches");
    assert_eq!(statuses, json!([200, 200, 200, 200, 200, 200]));

    let old = c
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("cookie")
        .value()
        .to_owned();
    sign_out_at(&c, &s.base).await;
    // Sign-out is enforced by revocation, which every node applies within a second.
    let started = Instant::now();
    loop {
        c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
        let after = path_of(&c).await;
        if after.starts_with("/login?request=") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "after sign-out the password is asked again, but the browser is at {after}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let resp = http
            .get(s.server.url("/api/orders/1"))
            .header("cookie", format!("__Host-portcullis-access={old}"))
            .send()
            .await
            .expect("send");
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "the captured token still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.close().await.expect("close");
}

/// A protected page whose file is a day old goes out with `Last-Modified`; without
/// `Cache-Control` a browser keeps it fresh for hours (a tenth of its age) and, after sign-out,
/// shows it from its cache to whoever sits at the machine. Protected answers are `private,
/// no-cache`: the browser asks again, and a signed-out visitor gets the sign-in page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_page_is_not_shown_from_the_cache_after_sign_out() {
    let Some(d) = driver() else { return };
    let s = site().await;
    let now = portcullis_token::Clock::system().now();
    let day_ago = std::time::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(now - 86_400).expect("after 1970"));
    std::fs::File::options()
        .write(true)
        .open(s._files.path().join("admin/index.html"))
        .expect("open")
        .set_modified(day_ago)
        .expect("a day-old file");
    let c = browser(&d).await;
    let admin = format!("{}/admin/", s.base);
    c.goto(&admin).await.expect("goto");
    sign_in_on_form(&c, "root").await;
    wait_for_path(&c, "/admin/").await;
    c.goto(&admin).await.expect("goto again");
    assert!(c.source().await.expect("html").contains("Admin area"));
    sign_out_at(&c, &s.base).await;
    c.goto(&admin).await.expect("goto after sign-out");
    let html = c.source().await.expect("html");
    assert!(
        path_of(&c).await.starts_with("/login?request=") && !html.contains("Admin area"),
        "after sign-out the admin page came from the cache: {} {html}",
        path_of(&c).await
    );
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_is_sent_home_and_the_admin_api_says_403() {
    let Some(d) = driver() else { return };
    let s = site().await;
    let c = browser(&d).await;
    c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
    sign_in_on_form(&c, "ada").await;
    wait_for_path(&c, "/").await;
    assert!(c.source().await.expect("html").contains("Home"));
    let status = c
        .execute_async(
            "const done = arguments[0]; fetch('/api/admin/users').then(r => done(r.status));",
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(status, json!(403));
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_signing_in_at_once_both_succeed_and_return_to_stays_home() {
    let Some(d) = driver() else { return };
    let s = site().await;
    let c = browser(&d).await;
    c.goto(&format!(
        "{}/auth/login?return_to=%2Fadmin%2F%3Ftab%3Da",
        s.base
    ))
    .await
    .expect("goto");
    c.wait()
        .for_element(Locator::Css("input#username"))
        .await
        .expect("form in tab A");
    let tab_a = c.window().await.expect("window");
    let tab_b = c.new_window(true).await.expect("new tab").handle;
    c.switch_to_window(tab_b).await.expect("switch");
    c.goto(&format!(
        "{}/auth/login?return_to=%2Fadmin%2F%3Ftab%3Db",
        s.base
    ))
    .await
    .expect("goto");
    sign_in_on_form(&c, "root").await;
    wait_for_path(&c, "/admin/?tab=b").await;
    c.switch_to_window(tab_a).await.expect("switch");
    sign_in_on_form(&c, "root").await;
    wait_for_path(&c, "/admin/?tab=a").await;

    for payload in [
        "//evil.example",
        "/\\evil.example",
        "/%09/evil.example",
        "https:evil.example",
        "%2F%2Fevil.example",
        "/%5Cevil.example",
    ] {
        let encoded: String = url::form_urlencoded::byte_serialize(payload.as_bytes()).collect();
        c.goto(&format!("{}/auth/login?return_to={encoded}", s.base))
            .await
            .expect("goto");
        let started = Instant::now();
        loop {
            let u = c.current_url().await.expect("url");
            if !u.path().starts_with("/auth/") && !u.path().starts_with("/oauth2/") {
                assert_eq!(
                    u.host_str(),
                    Some("localhost"),
                    "{payload} left the origin: {u}"
                );
                assert_eq!(u.path(), "/", "{payload}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{payload}: stuck at {u}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    c.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_calls_right_after_access_token_expiry_all_succeed() {
    let Some(d) = driver() else { return };
    let s = site_with("\n[sessions]\naccess_ttl = \"5s\"\n").await;
    let c = browser(&d).await;
    c.goto(&format!("{}/auth/login?return_to=%2F", s.base))
        .await
        .expect("goto");
    sign_in_on_form(&c, "ada").await;
    wait_for_path(&c, "/").await;
    let before = c
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("cookie")
        .value()
        .to_owned();
    let exp = crate::oidc::claims(&before)["exp"].as_i64().expect("exp");
    // Past the token's expiry and the verifier's leeway for our own tokens (5 s).
    loop {
        let now =
            i64::try_from(std::time::UNIX_EPOCH.elapsed().expect("clock").as_secs()).expect("i64");
        if now > exp + 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let statuses = c
        .execute_async(
            "const done = arguments[0]; Promise.all([1,2,3,4,5,6,7,8].map(i => fetch('/api/orders/' + i).then(r => r.status))).then(done);",
            vec![],
        )
        .await
        .expect("parallel fetches");
    assert_eq!(
        statuses,
        json!([200, 200, 200, 200, 200, 200, 200, 200]),
        "no request saw the expiry"
    );
    let after = c
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("cookie")
        .value()
        .to_owned();
    assert_ne!(before, after, "the session was refreshed in line");
    c.close().await.expect("close");
}

async fn wait_for_text(c: &Client, css: &str, text: &str) {
    let started = Instant::now();
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && el.text().await.unwrap_or_default().contains(text)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{css} never showed {text:?}; page: {}",
            c.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(c: &Client, name: &str) {
    if let Ok(dir) = std::env::var("PORTCULLIS_SCREENSHOTS_DIR") {
        let png = c.screenshot().await.expect("screenshot");
        std::fs::write(std::path::Path::new(&dir).join(name), png).expect("write screenshot");
    }
}

/// Signs out with the demo shop's own button.
async fn sign_out(c: &Client) {
    c.find(Locator::Css("#signed-in button[type=submit]"))
        .await
        .expect("sign-out button")
        .click()
        .await
        .expect("click");
    wait_for_path(c, "/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shop_customer_orders_admin_approves() {
    let Some(d) = driver() else { return };
    let dir = tempfile::tempdir().expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut cmd = Command::new(crate::harness::bin());
    cmd.args([
        "demo",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        dir.path().join("demo").to_str().expect("utf-8"),
    ]);
    cmd.env_remove("PORTCULLIS_STORE_URL")
        .env_remove("PORTCULLIS_CONFIG");
    let _server = Server::start(cmd);
    let base = format!("http://localhost:{port}");
    let creds =
        std::fs::read_to_string(dir.path().join("demo/demo-credentials.txt")).expect("credentials");
    let password = |user: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{user}=")))
            .expect("password")
            .to_owned()
    };
    let c = browser(&d).await;

    // A signed-out visitor to the admin area is asked to sign in; a customer then lands at home.
    c.goto(&format!("{base}/admin/")).await.expect("goto");
    c.wait()
        .for_element(Locator::Css("input#username"))
        .await
        .expect("sign-in form");
    screenshot(&c, "sign-in.png").await;
    sign_in_as(&c, "customer", &password("customer")).await;
    wait_for_path(&c, "/").await;
    let status = c
        .execute_async(
            "const done = arguments[0]; fetch('/api/admin/orders').then(r => done(r.status));",
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(status, json!(403), "a customer cannot use the admin API");

    // The customer orders.
    c.goto(&format!("{base}/orders/")).await.expect("goto");
    wait_for_text(&c, "#who", "customer").await;
    assert!(
        c.find(Locator::Css("a.admin-only"))
            .await
            .expect("link")
            .attr("hidden")
            .await
            .expect("attr")
            .is_some(),
        "no admin link for customers"
    );
    c.find(Locator::Css("#item"))
        .await
        .expect("item")
        .send_keys("Blue mug")
        .await
        .expect("type");
    c.find(Locator::Css("#new-order button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("order");
    wait_for_text(&c, "#orders", "Blue mug").await;
    wait_for_text(&c, "#orders", "pending").await;
    // A bad body gets a clear 400 from the gateway's validation, naming the field.
    let bad = c
        .execute_async("const done = arguments[0]; fetch('/api/orders', {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({item: '', quantity: 0})}).then(r => r.json().then(b => done([r.status, b.detail, b.errors.map(e => e.pointer)])));", vec![])
        .await
        .expect("fetch");
    assert_eq!(bad[0], json!(400));
    assert!(
        bad[1].as_str().unwrap_or_default().contains("/item"),
        "{bad}"
    );
    let mut pointers: Vec<&str> = bad[2]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str())
        .collect();
    pointers.dedup();
    assert_eq!(pointers, ["/item", "/quantity"], "{bad}");
    // A customer cannot order in someone else's name: the customer comes from the token.
    let forged = c
        .execute_async("const done = arguments[0]; fetch('/api/orders', {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({item: 'Red mug', quantity: 1, customerRef: 'someone-else'})}).then(r => done(r.status));", vec![])
        .await
        .expect("fetch");
    assert_eq!(
        forged,
        json!(400),
        "unknown fields are refused by the schema"
    );
    sign_out(&c).await;

    // The admin approves it, after setting up the second factor the demo requires of admins.
    c.goto(&format!("{base}/admin/")).await.expect("goto");
    sign_in_as(&c, "admin", &password("admin")).await;
    let secret = c
        .wait()
        .for_element(Locator::Css("#totp-secret"))
        .await
        .expect("admins enrol a second factor")
        .text()
        .await
        .expect("secret");
    let now = u64::try_from(portcullis_token::Clock::system().now()).expect("after 1970");
    c.find(Locator::Css("input#code"))
        .await
        .expect("code")
        .send_keys(&crate::mfa::totp(&secret, now))
        .await
        .expect("type");
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("confirm");
    c.wait()
        .for_element(Locator::Css("button#continue-after-codes"))
        .await
        .expect("recovery codes")
        .click()
        .await
        .expect("continue");
    wait_for_path(&c, "/admin/").await;
    wait_for_text(&c, "#orders", "Blue mug").await;
    c.find(Locator::Css("button.approve"))
        .await
        .expect("approve button")
        .click()
        .await
        .expect("approve");
    wait_for_text(&c, "#orders", "approved").await;
    screenshot(&c, "admin.png").await;
    // The admin opens the console.
    c.goto(&format!("{base}/portcullis/console/"))
        .await
        .expect("goto");
    wait_for_text(&c, "#users", "customer").await;
    c.goto(&format!("{base}/admin/")).await.expect("goto");
    wait_for_text(&c, "#orders", "approved").await;
    sign_out(&c).await;

    // The customer sees it approved.
    c.goto(&format!("{base}/orders/")).await.expect("goto");
    sign_in_as(&c, "customer", &password("customer")).await;
    wait_for_path(&c, "/orders/").await;
    wait_for_text(&c, "#orders", "approved").await;
    c.close().await.expect("close");
}

pub(crate) async fn sign_in_as(c: &Client, user: &str, password: &str) {
    c.wait()
        .for_element(Locator::Css("input#username"))
        .await
        .expect("the sign-in form");
    c.find(Locator::Css("input#username"))
        .await
        .expect("username")
        .send_keys(user)
        .await
        .expect("type");
    c.find(Locator::Css("input#password"))
        .await
        .expect("password")
        .send_keys(password)
        .await
        .expect("type");
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submit");
}

/// Over https with a test authority's certificate: Chromium speaks HTTP/2 (ALPN), signs in
/// through the hosted form, keeps `__Host-` cookies marked Secure and reads the API with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_over_https_and_http2() {
    use base64::Engine;
    use rcgen::PublicKeyData;
    let Some(d) = driver() else { return };
    let certs = tempfile::tempdir().expect("dir");
    let ca = crate::tls::Ca::new();
    let (chain, key, _) = ca.leaf(certs.path(), "site", &["localhost"]);
    // Chromium trusts this one key (not "any certificate"): the SPKI pin of the leaf.
    let pair = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key).expect("key")).expect("key");
    let spki =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &pair.subject_public_key_info());
    let pin = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    let s = site_with(&crate::tls::certificates(&[(&chain, &key)])).await;
    assert!(s.base.starts_with("https://localhost:"), "{}", s.base);
    let c = browser_with(
        &d,
        &[format!("--ignore-certificate-errors-spki-list={pin}")],
    )
    .await;
    c.goto(&format!("{}/admin/", s.base)).await.expect("goto");
    assert!(
        path_of(&c).await.starts_with("/login?request="),
        "a signed-out visitor is asked to sign in"
    );
    sign_in_on_form(&c, "root").await;
    wait_for_path(&c, "/admin/").await;
    assert!(c.source().await.expect("html").contains("Admin area"));
    let protocol = c
        .execute(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
            vec![],
        )
        .await
        .expect("js");
    assert_eq!(protocol, "h2", "Chromium chose HTTP/2");
    let cookie = c
        .get_named_cookie("__Host-portcullis-access")
        .await
        .expect("access cookie");
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.http_only(), Some(true));
    let me = c
        .execute_async(
            "const done = arguments[0]; fetch('/auth/me').then(r => r.json()).then(done);",
            vec![],
        )
        .await
        .expect("fetch /auth/me");
    assert_eq!(me["username"], "root");
    let status = c
        .execute_async(
            "const done = arguments[0]; fetch('/api/orders/1').then(r => r.status).then(done);",
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(status, 200);
}
