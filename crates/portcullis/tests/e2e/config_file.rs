//! Configuration errors: every one reported with its key and line, exit 1, nothing started.

use crate::harness::Instance;

#[test]
fn config_check_reports_every_error_with_key_and_line() {
    let i = Instance::with_config(
        "[store]\nmax_connections = \"lots\"\nurll = \"sqlite:///x.db\"\n[server]\nlisten = 8080\n",
    );
    let err = i.run(&["config", "check"]).user_error();
    assert!(err.contains("3 errors"), "{err}");
    assert!(
        err.contains(
            ":3:19: `store.max_connections`: expected an integer from 1 to 1000, found a string"
        ),
        "{err}"
    );
    assert!(err.contains(":4:1: `store.urll`: unknown key"), "{err}");
    assert!(
        err.contains(":6:10: `server.listen`: expected an IP address and port"),
        "{err}"
    );
}

#[test]
fn every_command_refuses_a_bad_config_and_changes_nothing() {
    let i = Instance::with_config("[passwords]\nmin_lenght = 20\n");
    let err = i.run(&["user", "add", "alice"]).user_error();
    assert!(
        err.contains("`passwords.min_lenght`: unknown key") && err.contains("passwords.min_length"),
        "{err}"
    );
    assert!(!i.data_dir().exists(), "nothing was created");
}

#[test]
fn config_check_json_lists_errors() {
    let i = Instance::with_config("[store]\nconnect_timeout = \"forever\"\n");
    let run = i.run(&["--json", "config", "check"]);
    assert_eq!(run.code(), 1);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout()).expect("json");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["errors"][0]["key"], "store.connect_timeout");
}

#[test]
fn environment_errors_name_the_variable() {
    let i = Instance::new().env("PORTCULLIS_STORE_MAX_CONNECTIONS", "0");
    let err = i.run(&["config", "check"]).user_error();
    assert!(err.contains("environment variable PORTCULLIS_STORE_MAX_CONNECTIONS: `store.max_connections`: 0 is out of range"), "{err}");
}

#[test]
fn a_valid_config_checks_clean_and_hides_database_passwords() {
    let i = Instance::new().env(
        "PORTCULLIS_STORE_URL",
        "postgres://app:s3cret-pw@db.example:5432/portcullis",
    );
    let out = i.run(&["config", "check"]).ok();
    assert!(out.contains("configuration is valid"), "{out}");
    assert!(!out.contains("s3cret-pw"), "{out}");
}

#[test]
fn the_example_config_is_valid_and_documents_every_key() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = root.join("portcullis.example.toml");
    let i = Instance::new();
    let out = i
        .run(&["config", "check", example.to_str().expect("utf-8 path")])
        .ok();
    assert!(out.contains("configuration is valid"), "{out}");
    let example_text = std::fs::read_to_string(&example).expect("example config");
    let docs =
        std::fs::read_to_string(root.join("docs/configuration.md")).expect("docs/configuration.md");
    let reference = i.run(&["config", "reference"]).ok();
    assert!(
        docs.contains(reference.trim()),
        "docs/configuration.md must contain the output of `portcullis config reference`"
    );
    for line in reference.lines().skip(2) {
        let key = line.split('`').nth(1).expect("key column");
        let leaf = key.rsplit('.').next().expect("leaf");
        let present = example_text.contains(&format!("{leaf} ="))
            || example_text.contains(&format!("[{key}]"));
        assert!(present, "portcullis.example.toml lacks {key}");
    }
}

const DECLARED: &str = r#"
[[resource_servers]]
identifier = "orders"
name = "Orders"
scopes = ["read", "admin"]

[[clients]]
id = "web"
name = "Web app"
redirect_uris = ["https://app.example.com/auth/callback"]
scopes = ["openid", "email"]
access_ttl = "15m"

[[clients]]
id = "billing"
confidential = true
secret_env = "BILLING_SECRET"
scopes = ["orders/read"]
"#;

#[tokio::test]
async fn clients_and_resource_servers_declared_in_the_config_file_are_applied() {
    let secret = "declared-billing-secret-0123456789abcdef";
    let i = Instance::with_config(DECLARED).env("BILLING_SECRET", secret);
    // Declared clients are applied by serve's start-up step, or by `config apply`; another
    // command (a read above all) changes nothing.
    i.run(&["client", "show", "web"]).user_error();
    i.run(&["config", "apply"]).ok();
    let web: serde_json::Value =
        serde_json::from_str(&i.run(&["--json", "client", "show", "web"]).ok()).expect("json");
    assert_eq!(web["access_ttl"], 900);
    assert_eq!(web["type"], "public");
    let server = i.serve();
    let resp = reqwest::Client::new()
        .post(server.url("/oauth2/token"))
        .basic_auth("billing", Some(secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "orders/read"),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status(), 200, "the secret from the environment works");
    drop(server);
    // Editing the file and restarting applies the change.
    let edited = DECLARED.replace("access_ttl = \"15m\"", "access_ttl = \"30m\"");
    std::fs::write(
        &i.config,
        format!(
            "data_dir = {:?}\n{edited}",
            i.data_dir().display().to_string()
        ),
    )
    .expect("write");
    i.run(&["config", "apply"]).ok();
    let web: serde_json::Value =
        serde_json::from_str(&i.run(&["--json", "client", "show", "web"]).ok()).expect("json");
    assert_eq!(web["access_ttl"], 1800);
}

#[test]
fn declared_client_errors_name_the_client_and_the_problem() {
    let i = Instance::with_config(DECLARED);
    let err = i.run(&["config", "check"]).user_error();
    assert!(
        err.contains(
            "environment variable BILLING_SECRET: `clients[1] (billing).secret_env`: is not set"
        ),
        "{err}"
    );
    let i =
        Instance::with_config("[[clients]]\nid = \"x\"\nredirect_uri = \"https://a.example/cb\"\n");
    let err = i.run(&["config", "check"]).user_error();
    assert!(
        err.contains("unknown field `redirect_uri`") && err.contains("portcullis.toml:4:"),
        "{err}"
    );
    let i = Instance::with_config(
        "[[clients]]\nid = \"x\"\nredirect_uris = [\"http://evil.example/cb\"]\n",
    );
    let err = i.run(&["config", "apply"]).user_error();
    assert!(
        err.contains("client x in the configuration") && err.contains("plain http"),
        "{err}"
    );
    // (serve runs the same start-up step, App::open, before it listens.)
}
