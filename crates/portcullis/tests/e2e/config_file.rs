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
