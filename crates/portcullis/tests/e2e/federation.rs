//! Federated sign-in against two real upstream providers started here: a second portcullis
//! instance and npm's oidc-provider (OpenID Certified). In Chromium: a first sign-in creates
//! the user with mapped groups and reaches a group-protected page through the gateway; a
//! second provider links to an existing user by verified address; a group removed upstream is
//! removed here at the next sign-in; signing out also signs out at the provider. Over HTTP:
//! forged and replayed callbacks (no attempt, wrong state, wrong issuer, wrong nonce, a code of
//! another client, a replay) fail with a clear page and sign nobody in; a provider that is down
//! leaves password sign-in working.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::browser::{browser, driver, path_of, sign_in_as, wait_for_path};
use crate::harness::{Instance, Server};
use crate::oidc::{PASSWORD, hidden, location, query};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop")
}

/// npm's oidc-provider on a port of its own; killed on drop.
struct NodeProvider {
    child: Child,
    issuer: String,
    accounts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for NodeProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProvider {
    /// Starts it with one client, or `None` (skipped) when `npm ci` has not run in
    /// tests/interop.
    fn start(client: &Value, accounts: &Value) -> Option<NodeProvider> {
        let dir = interop_dir();
        if !dir.join("node_modules/oidc-provider").is_dir() {
            if std::env::var("PORTCULLIS_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
                panic!(
                    "tests/interop/node_modules is missing: run `npm ci` there (scripts/test does)"
                );
            }
            eprintln!("skipping: run `npm ci` in tests/interop to enable the federation tests");
            return None;
        }
        let files = tempfile::tempdir().expect("dir");
        let accounts_file = files.path().join("accounts.json");
        std::fs::write(&accounts_file, accounts.to_string()).expect("write accounts");
        let port = free_port();
        let child = Command::new("node")
            .arg(dir.join("upstream.mjs"))
            .arg(port.to_string())
            .arg(client.to_string())
            .arg(&accounts_file)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node is installed (scripts/test-deps)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "oidc-provider did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(NodeProvider {
            child,
            issuer: format!("http://localhost:{port}"),
            accounts: accounts_file,
            _dir: files,
        })
    }

    fn set_accounts(&self, accounts: &Value) {
        std::fs::write(&self.accounts, accounts.to_string()).expect("write accounts");
    }
}

/// The second portcullis: user `uma` (group `staff`), and the client `fed` for the main site.
struct PortcullisUpstream {
    _instance: Instance,
    server: Server,
    secret: String,
}

fn portcullis_upstream(base: &str) -> PortcullisUpstream {
    // On 127.0.0.1, not localhost: another host for the browser, so the two instances' cookies
    // (the same names; cookies ignore ports) do not overwrite each other.
    let port = free_port();
    let i = Instance::with_config(&format!("[idp]\nissuer = \"http://127.0.0.1:{port}\"\n"));
    i.run(&["group", "add", "staff"]).ok();
    i.run_with_stdin(
        &[
            "user",
            "add",
            "uma",
            "--group",
            "staff",
            "--email",
            "uma@corp.example",
            "--email-verified",
            "--password-stdin",
        ],
        PASSWORD,
    )
    .ok();
    let mut secret = String::new();
    for id in ["fed", "other"] {
        let created: Value = serde_json::from_str(
            &i.run(&[
                "--json",
                "client",
                "add",
                id,
                "--id",
                id,
                "--confidential",
                "--redirect-uri",
                &format!("{base}/login/federated/corp/callback"),
                "--redirect-uri",
                &format!("{base}/login/federated/plain/callback"),
                "--scope",
                "openid",
                "--scope",
                "email",
                "--scope",
                "profile",
            ])
            .ok(),
        )
        .expect("json");
        if id == "fed" {
            secret = created["client_secret"]
                .as_str()
                .expect("secret")
                .to_owned();
        }
    }
    let server = Server::start(i.command(&["serve", "--listen", &format!("127.0.0.1:{port}")]));
    PortcullisUpstream {
        _instance: i,
        server,
        secret,
    }
}

/// The main site: `/admin/**` for group admin, a public home, and two upstream providers —
/// `corp` (the second portcullis; links by verified address, `staff` → `user`) and `node`
/// (oidc-provider; creates users, `admins` → `admin`, signs out there too).
struct Site {
    instance: Instance,
    _server: Server,
    _files: tempfile::TempDir,
}

fn site(
    port: u16,
    corp: &PortcullisUpstream,
    corp_issuer: &str,
    node_issuer: &str,
    extra: &str,
) -> Site {
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
    let secret_file = files.path().join("corp.secret");
    std::fs::write(&secret_file, format!("{}\n", corp.secret)).expect("write");
    let f = files.path().display();
    let config = format!(
        r#"
[idp]
issuer = "http://localhost:{port}"
{extra}

[[idp.providers]]
id = "corp"
name = "Corp"
issuer = "{corp_issuer}"
client_id = "fed"
client_secret_file = "{secret}"
create_users = false
link_by_email = true
group_rules = [{{ claim = "groups", value = "staff", group = "user" }}]
attributes = {{ "custom:corp_user" = "username" }}

[[idp.providers]]
id = "node"
name = "Node Corp"
issuer = "{node_issuer}"
client_id = "portcullis"
scopes = ["openid", "email", "profile", "groups"]
create_users = true
groups = ["customer"]
attributes = {{ name = "name" }}
group_rules = [{{ claim = "groups", value = "admins", group = "admin" }}]
sign_out = true

# The second portcullis again, as plain OAuth 2.0 (no ID token: the user from its userinfo
# endpoint, as for GitHub).
[[idp.providers]]
id = "plain"
name = "Plain"
preset = "oauth2"
issuer = "{corp_issuer}"
authorization_endpoint = "{corp_issuer}/oauth2/authorize"
token_endpoint = "{corp_issuer}/oauth2/token"
userinfo_endpoint = "{corp_issuer}/oauth2/userInfo"
client_id = "fed"
client_secret_file = "{secret}"
scopes = ["email"]
create_users = true

[[routes]]
path = "/admin/**"
kind = "page"
static_dir = "{f}/admin"

[[routes]]
path = "/**"
kind = "public"
static_dir = "{f}"

[[policy]]
principal = "group:admin"
statements = [{{ effect = "allow", methods = ["*"], paths = ["/**"] }}]
"#,
        secret = secret_file.display(),
    );
    let i = Instance::with_config(&config)
        .env("PORTCULLIS_IDP_PROVIDER_NODE_CLIENT_SECRET", NODE_SECRET);
    for g in ["user", "admin", "customer"] {
        i.run(&["group", "add", g]).ok();
    }
    // A local user with the same verified address as `uma` at corp.
    i.run_with_stdin(
        &[
            "user",
            "add",
            "uma",
            "--email",
            "uma@corp.example",
            "--email-verified",
            "--password-stdin",
        ],
        PASSWORD,
    )
    .ok();
    let server = Server::start(i.command(&["serve", "--listen", &format!("127.0.0.1:{port}")]));
    Site {
        instance: i,
        _server: server,
        _files: files,
    }
}

const NODE_SECRET: &str = "node-client-secret-0123456789-abcdefghij";

fn node_client(base: &str) -> Value {
    json!({
        "client_id": "portcullis",
        "client_secret": NODE_SECRET,
        "redirect_uris": [format!("{base}/login/federated/node/callback")],
        "post_logout_redirect_uris": [format!("{base}/login/federated/node/signed-out")],
    })
}

fn user(site: &Site, name: &str) -> Value {
    serde_json::from_str(&site.instance.run(&["--json", "user", "show", name]).ok()).expect("json")
}

fn groups(u: &Value) -> Vec<String> {
    u["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g.as_str().expect("name").to_owned())
        .collect()
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .expect("click");
}

/// oidc-provider's development login form (any password).
async fn node_login(c: &Client, login: &str) {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("input[name=login]"))
        .await
        .expect("oidc-provider's login form");
    c.find(Locator::Css("input[name=login]"))
        .await
        .expect("login")
        .send_keys(login)
        .await
        .expect("type");
    c.find(Locator::Css("input[name=password]"))
        .await
        .expect("password")
        .send_keys("anything")
        .await
        .expect("type");
    click(c, "button[type=submit]").await;
}

/// The page's text; empty while a navigation has no body yet.
async fn text_of(c: &Client) -> String {
    match c.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_for_text(c: &Client, want: &str) {
    let started = Instant::now();
    loop {
        if text_of(c).await.contains(want) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "expected {want:?} at {}: {}",
            path_of(c).await,
            text_of(c).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_two_upstream_providers_in_chromium() {
    let Some(d) = driver() else { return };
    let port = free_port();
    let base = format!("http://localhost:{port}");
    let accounts = json!({ "otto": { "email": "otto@example.org", "email_verified": true,
        "groups": ["admins", "other"], "name": "Otto Node" } });
    let Some(node) = NodeProvider::start(&node_client(&base), &accounts) else {
        return;
    };
    let corp = portcullis_upstream(&base);
    let corp_issuer = discovery_issuer(&corp.server.base).await;
    let site = site(port, &corp, &corp_issuer, &node.issuer, "");
    let c = browser(&d).await;

    // 1. A first sign-in with oidc-provider creates the user, in `admin` by the group rule and
    //    `customer` by the provider's groups, and reaches the admin page through the gateway.
    c.goto(&format!("{base}/admin/")).await.expect("goto");
    click(&c, "#provider-node").await;
    node_login(&c, "otto").await;
    wait_for_path(&c, "/admin/").await;
    wait_for_text(&c, "Admin area").await;
    let otto = user(&site, "node_otto");
    assert_eq!(groups(&otto), ["admin", "customer"], "{otto}");
    assert_eq!(otto["email"], "otto@example.org");
    assert_eq!(otto["email_verified"], true);
    assert_eq!(otto["attributes"]["name"], "Otto Node");
    // The session says how it was made: federated.
    c.goto(&format!("{base}/auth/me")).await.expect("goto");
    wait_for_text(&c, "node_otto").await;
    let me: Value = serde_json::from_str(&text_of(&c).await).expect("json");
    assert_eq!(me["username"], "node_otto", "{me}");

    // 2. Removed from `admins` upstream: signing out here also signs out at oidc-provider
    //    (its confirmation page), and the next sign-in there removes `admin` here.
    node.set_accounts(
        &json!({ "otto": { "email": "otto@example.org", "email_verified": true,
        "groups": ["other"], "name": "Otto Node" } }),
    );
    c.goto(&format!("{base}/auth/logout")).await.expect("goto");
    click(&c, "button[type=submit]").await;
    // oidc-provider asks whether to sign out of it too.
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("button[autofocus], button[name=logout]"))
        .await
        .expect("oidc-provider's sign-out confirmation")
        .click()
        .await
        .expect("confirm");
    wait_for_path(&c, "/").await;
    c.goto(&format!("{base}/admin/")).await.expect("goto");
    click(&c, "#provider-node").await;
    // Signed out at the provider: its login form again.
    node_login(&c, "otto").await;
    // Signed in, but no longer an admin: the page sends them home.
    wait_for_path(&c, "/").await;
    assert_eq!(groups(&user(&site, "node_otto")), ["customer"]);

    // 3. A first sign-in with the second portcullis links to the local `uma` by her verified
    //    address (no new user), and its rule puts her in `user`.
    c.delete_all_cookies().await.expect("cookies");
    c.goto(&format!("{base}/auth/login?return_to=/account"))
        .await
        .expect("goto");
    click(&c, "#provider-corp").await;
    sign_in_as(&c, "uma", PASSWORD).await;
    wait_for_path(&c, "/account").await;
    let uma = user(&site, "uma");
    assert_eq!(groups(&uma), ["user"], "{uma}");
    assert_eq!(uma["attributes"]["custom:corp_user"], "uma");
    assert!(
        !site
            .instance
            .usernames()
            .iter()
            .any(|u| u.starts_with("corp_")),
        "linked, not created"
    );
    // The account page lists the identity; she has a password, so she may unlink it.
    wait_for_text(&c, "Sign-in providers").await;
    wait_for_text(&c, "Corp (uma@corp.example)").await;
    click(&c, "#unlink-corp").await;
    wait_for_text(&c, "The sign-in provider was unlinked.").await;
    assert!(c.find(Locator::Css("#unlink-corp")).await.is_err());
    // ... and link it again from the account page (corp still knows her: no form).
    click(&c, "#link-corp").await;
    wait_for_text(&c, "You can now sign in with Corp.").await;
    c.close().await.expect("close");
    drop(corp);
}

/// The issuer a server's discovery names.
async fn discovery_issuer(base: &str) -> String {
    let doc: Value = reqwest::get(format!("{base}/.well-known/openid-configuration"))
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    doc["issuer"].as_str().expect("issuer").to_owned()
}

/// A cookie jar over reqwest for one "browser".
struct Jar {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
    /// Where relative redirects (`/oauth2/authorize?…`) point.
    base: String,
}

impl Jar {
    fn new(base: &str) -> Jar {
        Jar {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: HashMap::new(),
        }
    }

    fn absolute(&self, url: &str) -> String {
        if url.starts_with('/') {
            format!("{}{url}", self.base)
        } else {
            url.to_owned()
        }
    }

    fn header(&self) -> String {
        crate::oidc::cookie_header(&self.cookies)
    }

    fn remember(&mut self, headers: &HeaderMap) {
        crate::oidc::remember_cookies(&mut self.cookies, headers);
    }

    async fn get(&mut self, url: &str) -> reqwest::Response {
        let resp = self
            .http
            .get(self.absolute(url))
            .header("cookie", self.header())
            .send()
            .await
            .expect("GET");
        self.remember(resp.headers());
        resp
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let resp = self
            .http
            .post(url)
            .header("cookie", self.header())
            .form(form)
            .send()
            .await
            .expect("POST");
        self.remember(resp.headers());
        resp
    }
}

/// Starts a sign-in at the site and clicks "Continue with Corp": the redirect to corp.
async fn start_corp_attempt(jar: &mut Jar, base: &str) -> String {
    start_attempt(jar, base, "corp").await
}

/// Starts a sign-in at the site and clicks "Continue with <provider>".
async fn start_attempt(jar: &mut Jar, base: &str, provider: &str) -> String {
    let resp = jar.get(&format!("{base}/auth/login?return_to=/")).await;
    let authorize = location(resp.headers());
    let resp = click_provider(jar, base, &authorize, provider).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to_corp = location(resp.headers());
    assert!(to_corp.contains("/oauth2/authorize?"), "{to_corp}");
    to_corp
}

/// Follows an authorization URL of the site to its sign-in page and clicks the provider's
/// button there: the button's answer.
async fn click_provider(
    jar: &mut Jar,
    base: &str,
    authorize: &str,
    provider: &str,
) -> reqwest::Response {
    let resp = jar.get(authorize).await;
    let login = location(resp.headers());
    assert!(login.starts_with("/login?request="), "{login}");
    let request = query(&format!("{base}{login}"))["request"].clone();
    jar.get(&format!(
        "{base}/login/federated/{provider}?request={}",
        url::form_urlencoded::byte_serialize(request.as_bytes()).collect::<String>()
    ))
    .await
}

/// Signs `uma` in at corp for an authorization URL (its own jar): the callback URL corp sends
/// the browser to.
async fn corp_code(corp_authorize: &str) -> String {
    let mut jar = Jar::new("");
    let resp = jar.get(corp_authorize).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{corp_authorize}");
    let login = location(resp.headers());
    let origin = url::Url::parse(corp_authorize).expect("url");
    let origin = origin.origin().ascii_serialization();
    let html = jar
        .get(&format!("{origin}{login}"))
        .await
        .text()
        .await
        .expect("html");
    let (request, csrf) = (hidden(&html, "request"), hidden(&html, "csrf"));
    let resp = jar
        .post(
            &format!("{origin}/login"),
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("username", "uma"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    location(resp.headers())
}

/// `url` with the query parameter `name` set to `value`.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).expect("url");
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair(name, value);
    u.to_string()
}

async fn page(jar: &mut Jar, url: &str) -> (StatusCode, String) {
    let resp = jar.get(url).await;
    let status = resp.status();
    (status, resp.text().await.expect("text"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_callbacks_fail_cleanly() {
    let port = free_port();
    let base = format!("http://localhost:{port}");
    let corp = portcullis_upstream(&base);
    let corp_issuer = discovery_issuer(&corp.server.base).await;
    // `node` points at a port nobody listens on: a provider that is down.
    let dead = format!("http://localhost:{}", free_port());
    let site = site(port, &corp, &corp_issuer, &dead, "");
    let signed_in = |jar: &Jar| jar.cookies.keys().any(|k| k.contains("portcullis-idp"));

    // No attempt at all (a callback sent to someone else's browser).
    let mut jar = Jar::new(&base);
    let (status, html) = page(
        &mut jar,
        &format!("{base}/login/federated/corp/callback?code=x&state=y"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("started in another browser"), "{html}");

    // An application asking for a fresh sign-in (`prompt=login`, `max_age`) asks it of the
    // provider in turn.
    let authorize = format!(
        "{base}/oauth2/authorize?response_type=code&client_id=portcullis-browser&redirect_uri={}&scope=openid&state=s1&nonce=n1&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&prompt=login&max_age=60",
        url::form_urlencoded::byte_serialize(format!("{base}/auth/callback").as_bytes())
            .collect::<String>()
    );
    let resp = click_provider(&mut jar, &base, &authorize, "corp").await;
    let q = query(&location(resp.headers()));
    assert_eq!(
        (q["prompt"].as_str(), q["max_age"].as_str()),
        ("login", "60")
    );

    // A real code, with the wrong state.
    let to_corp = start_corp_attempt(&mut jar, &base).await;
    let callback = corp_code(&to_corp).await;
    assert!(
        callback.starts_with(&format!("{base}/login/federated/corp/callback?")),
        "{callback}"
    );
    let (status, _) = page(&mut jar, &with_param(&callback, "state", "forged")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!signed_in(&jar));

    // The provider's own refusal (the user cancelled): a clear page, nobody signed in.
    let to_corp = start_corp_attempt(&mut jar, &base).await;
    let state = query(&to_corp)["state"].clone();
    let cancelled = format!(
        "{base}/login/federated/corp/callback?error=access_denied&error_description=%3Cscript%3E&state={state}&iss={}",
        url::form_urlencoded::byte_serialize(corp_issuer.as_bytes()).collect::<String>()
    );
    let (status, html) = page(&mut jar, &cancelled).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        html.contains("Signing in with Corp was cancelled."),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    assert!(!signed_in(&jar));

    // From another issuer (RFC 9207 mix-up): refused although state and code are right.
    let to_corp = start_corp_attempt(&mut jar, &base).await;
    let callback = corp_code(&to_corp).await;
    assert!(
        query(&callback).contains_key("iss"),
        "corp names its issuer: {callback}"
    );
    let (status, html) = page(
        &mut jar,
        &with_param(&callback, "iss", "https://evil.example"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("could not be accepted"), "{html}");
    assert!(!signed_in(&jar));

    // A code made for this attempt's PKCE challenge but another nonce: the ID token is refused.
    let to_corp = start_corp_attempt(&mut jar, &base).await;
    let callback = corp_code(&with_param(&to_corp, "nonce", "someone-elses-nonce")).await;
    let (status, _) = page(&mut jar, &callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!signed_in(&jar));

    // A code issued to another client of corp (same redirect URI, same challenge and nonce).
    let to_corp = start_corp_attempt(&mut jar, &base).await;
    let callback = corp_code(&with_param(&to_corp, "client_id", "other")).await;
    let (status, _) = page(&mut jar, &callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!signed_in(&jar));

    // The real thing signs in; replayed, the same answer is refused (the attempt is spent).
    let to_corp = start_corp_attempt(&mut jar, &base).await;
    let callback = corp_code(&to_corp).await;
    let attempt = jar
        .cookies
        .iter()
        .find(|(k, _)| k.contains("portcullis-federation"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .expect("the attempt cookie");
    let resp = jar.get(&callback).await;
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert!(signed_in(&jar));
    // corp has no `sign_out`: its ID token is not kept in a cookie.
    assert!(
        !jar.cookies
            .keys()
            .any(|k| k.contains("portcullis-upstream"))
    );
    // Back at the application, its tokens say how: federated, after corp's password.
    let to_app = location(resp.headers());
    let resp = jar.get(&to_app).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let access = jar
        .cookies
        .iter()
        .find(|(k, _)| k.ends_with("portcullis-access") || k.contains("access"))
        .map(|(_, v)| v.clone())
        .expect("the access cookie");
    let claims = crate::oidc::claims(&access);
    assert_eq!(claims["amr"], json!(["fed", "pwd"]), "{claims}");
    assert_eq!(claims["username"], "uma");
    assert_eq!(claims["groups"], json!(["user"]));
    let (status, _) = page(&mut jar, &callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Even with the attempt cookie kept (copied before), the code does not redeem twice.
    let mut thief = Jar::new(&base);
    thief.cookies.insert(attempt.0, attempt.1);
    let (status, html) = page(&mut thief, &callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("could not be accepted"), "{html}");
    assert!(!signed_in(&thief));

    // Every refusal left the pool as it was: one `uma`, linked once.
    assert!(
        !site
            .instance
            .usernames()
            .iter()
            .any(|u| u.starts_with("corp_"))
    );

    // Plain OAuth 2.0 (GitHub's way): no nonce, no ID token; the user comes from userinfo and
    // is created with corp's verified address.
    let mut jar = Jar::new(&base);
    let to_plain = start_attempt(&mut jar, &base, "plain").await;
    let q = query(&to_plain);
    assert!(
        !q.contains_key("nonce") && q["scope"] == "email",
        "{to_plain}"
    );
    let callback = corp_code(&to_plain).await;
    let resp = jar.get(&callback).await;
    assert_eq!(
        resp.status(),
        StatusCode::SEE_OTHER,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let created: Vec<String> = site
        .instance
        .usernames()
        .into_iter()
        .filter(|u| u.starts_with("plain_"))
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    let plain = user(&site, &created[0]);
    assert_eq!(plain["email"], "uma@corp.example");
    assert_eq!(plain["email_verified"], true);
    // Her only way to sign in: the account page will not unlink it.
    let html = jar
        .get(&format!("{base}/account"))
        .await
        .text()
        .await
        .expect("html");
    assert!(html.contains("Unlink Plain"), "{html}");
    // No password to ask for: the page says how she signs in instead of showing forms that
    // would ask for one.
    assert!(
        html.contains("You sign in through Plain; there is no password here."),
        "{html}"
    );
    assert!(!html.contains("id=\"change-password\""), "{html}");
    let form = [
        ("csrf", hidden(&html, "csrf")),
        ("provider", hidden(&html, "provider")),
        ("subject", hidden(&html, "subject")),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let resp = jar
        .post(&format!("{base}/account/federated/unlink"), &form)
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(
        resp.text()
            .await
            .expect("html")
            .contains("only way to sign in")
    );
    // The operator sees the identity and can unlink it (the audit log says who did).
    let shown = user(&site, &created[0]);
    assert_eq!(shown["identities"][0]["provider"], "plain", "{shown}");
    assert_eq!(shown["identities"][0]["email"], "uma@corp.example");
    site.instance
        .run(&["user", "unlink", &created[0], "plain"])
        .ok();
    assert_eq!(user(&site, &created[0])["identities"], json!([]));
    let again = site
        .instance
        .run(&["user", "unlink", &created[0], "plain"])
        .user_error();
    assert!(again.contains("has no identity at \"plain\""), "{again}");

    // A provider that is down: its button answers 503 with a clear page, and the password
    // form beside it still signs in.
    let mut jar = Jar::new(&base);
    let resp = jar.get(&format!("{base}/auth/login?return_to=/")).await;
    let resp = jar.get(&location(resp.headers())).await;
    let login = location(resp.headers());
    let html = jar
        .get(&format!("{base}{login}"))
        .await
        .text()
        .await
        .expect("html");
    assert!(html.contains("Continue with Node Corp"), "{html}");
    let request = hidden(&html, "request");
    let csrf = hidden(&html, "csrf");
    let (status, html) = page(
        &mut jar,
        &format!(
            "{base}/login/federated/node?request={}",
            url::form_urlencoded::byte_serialize(request.as_bytes()).collect::<String>()
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        html.contains("Node Corp is not reachable right now"),
        "{html}"
    );
    let resp = jar
        .post(
            &format!("{base}/login"),
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("username", "uma"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(location(resp.headers()).starts_with(&format!("{base}/auth/callback")));
    drop(corp);
}

#[test]
fn provider_configuration_errors_name_the_key() {
    let i = Instance::with_config(
        r#"
[[idp.providers]]
id = "Bad Id"
issuer = "https://id.example.com"
client_id = "x"

[[idp.providers]]
id = "plain"
issuer = "http://id.example.com"
client_id = "x"

[[idp.providers]]
id = "entra"
preset = "entra"
client_id = "x"

[[idp.providers]]
id = "gh"
preset = "github"
client_id = "x"
"#,
    );
    let err = i.run(&["config", "check"]).user_error();
    assert!(err.contains("idp.providers.id"), "{err}");
    assert!(
        err.contains("plain: http://id.example.com: use https"),
        "{err}"
    );
    assert!(err.contains("idp.providers.tenant"), "{err}");
    assert!(
        err.contains("PORTCULLIS_IDP_PROVIDER_GH_CLIENT_SECRET"),
        "{err}"
    );
}

/// A provider that did no multi-factor sign-in does not satisfy a second-factor requirement
/// here: the user enrols (or uses) their own, and the session says both how the first step was
/// passed and the second: `fed`, `otp`, `mfa`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_second_factor_follows_a_federated_first_step() {
    let port = free_port();
    let base = format!("http://localhost:{port}");
    let corp = portcullis_upstream(&base);
    let corp_issuer = discovery_issuer(&corp.server.base).await;
    let dead = format!("http://localhost:{}", free_port());
    let _site = site(
        port,
        &corp,
        &corp_issuer,
        &dead,
        "mfa_required_groups = \"user\"",
    );
    let mut jar = Jar::new(&base);
    let to_corp = start_corp_attempt(&mut jar, &base).await;
    let callback = corp_code(&to_corp).await;
    // Linked by address and put in `user` by the rule, which requires a second factor: she has
    // none, so she sets one up now.
    let resp = jar.get(&callback).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page = resp.text().await.expect("html");
    assert!(page.contains("Set up two-step sign-in"), "{page}");
    let secret = page
        .split("id=\"totp-secret\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("the secret")
        .to_owned();
    let (request, csrf, ticket) = (
        hidden(&page, "request"),
        hidden(&page, "csrf"),
        hidden(&page, "ticket"),
    );
    let now = u64::try_from(portcullis_token::Clock::system().now()).expect("after 1970");
    let code = crate::mfa::totp(&secret, now);
    let resp = jar
        .post(
            &format!("{base}/login/enrol"),
            &[
                ("request", &request),
                ("csrf", &csrf),
                ("ticket", &ticket),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "recovery codes shown");
    let resp = jar
        .post(
            &format!("{base}/login/continue"),
            &[("request", &request), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = jar.get(&location(resp.headers())).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let access = jar
        .cookies
        .iter()
        .find(|(k, _)| k.ends_with("portcullis-access"))
        .map(|(_, v)| v.clone())
        .expect("the access cookie");
    let claims = crate::oidc::claims(&access);
    assert_eq!(claims["amr"], json!(["fed", "otp", "mfa"]), "{claims}");
    drop(corp);
}
