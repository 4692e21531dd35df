//! The audit log through the binary: operators' changes and security events are recorded with
//! who and from where, `audit verify` walks the chain, and editing or deleting a row in the
//! database is detected.

use serde_json::Value;

use crate::oidc::{PASSWORD, setup};

fn events(i: &crate::harness::Instance, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "audit", "list", "--limit", "1000"];
    all.extend_from_slice(args);
    serde_json::from_str::<Value>(&i.run(&all).ok())
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_sign_ins_are_recorded_and_tampering_is_detected() {
    let mut idp = setup("");
    let i = &idp._instance;
    i.run(&["group", "add", "auditors"]).ok();
    i.run(&["group", "add-member", "auditors", "ada"]).ok();
    i.run(&["user", "disable", "root"]).ok();
    i.run(&["user", "enable", "root"]).ok();
    i.run(&["keys", "rotate"]).ok();
    let dir = tempfile::tempdir().expect("dir");
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "[[policy]]\nprincipal = \"group:admin\"\nstatements = [{ effect = \"allow\", paths = [\"/**\"] }]\n",
    )
    .expect("write");
    i.run(&[
        "policy",
        "set",
        policy.to_str().expect("utf-8"),
        "--comment",
        "admins",
    ])
    .ok();

    // Sign-ins through the hosted form: one wrong password, one right.
    let authorize = idp.authorize_url("spa", &[("prompt", "login")]);
    let (request, csrf) = idp.open_form(&authorize).await;
    let wrong = idp
        .post_form(&request, &csrf, "ada", "not-the-password")
        .await;
    assert_eq!(wrong.status(), 401);
    let (request, csrf) = idp.open_form(&authorize).await;
    let right = idp.post_form(&request, &csrf, "ada", PASSWORD).await;
    assert_eq!(right.status(), 303);

    let i = &idp._instance;
    let all = events(i, &[]);
    let k = kinds(&all);
    for expected in [
        "user.create",
        "group.create",
        "group.add_member",
        "user.disable",
        "user.enable",
        "keys.rotate",
        "policy.set",
        "signin.failure",
        "signin.success",
    ] {
        assert!(
            k.iter().any(|x| x == expected),
            "{expected} missing from {k:?}"
        );
    }
    let cli = all
        .iter()
        .find(|e| e["kind"] == "user.disable")
        .expect("event");
    assert_eq!(cli["subject"], "root");
    assert_eq!(cli["source"], "cli");
    assert!(
        cli["actor"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cli:")
    );
    let failure = all
        .iter()
        .find(|e| e["kind"] == "signin.failure")
        .expect("event");
    assert_eq!(failure["subject"], "ada");
    assert_eq!(failure["source"], "127.0.0.1", "from where");
    assert!(
        !failure.to_string().contains("not-the-password"),
        "no password in the log"
    );
    let set = all
        .iter()
        .find(|e| e["kind"] == "policy.set")
        .expect("event");
    assert!(
        set["detail"]["after"]["document"]
            .as_str()
            .unwrap_or_default()
            .contains("group:admin"),
        "the policy change carries its after state: {set}"
    );
    // Filters.
    assert!(
        kinds(&events(i, &["--kind", "signin."]))
            .iter()
            .all(|k| k.starts_with("signin."))
    );
    assert!(
        events(i, &["--user", "root"])
            .iter()
            .all(|e| e["subject"] == "root" || e["actor"] == "root")
    );
    assert!(!events(i, &["--since", "1h"]).is_empty());

    let verify = i.run(&["audit", "verify"]).ok();
    assert!(verify.contains("intact"), "{verify}");

    // Tampering in the database, as someone with file access would: named by `audit verify`.
    let db = i.data_dir().join("portcullis.db");
    let edit = |sql: &str| {
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()",
                db.to_str().expect("utf-8"),
                sql,
            ])
            .status()
            .expect("python3");
        assert!(status.success());
    };
    let target = all
        .iter()
        .find(|e| e["kind"] == "signin.failure")
        .expect("event")["seq"]
        .as_i64()
        .expect("seq");
    edit(&format!(
        "UPDATE audit_events SET subject = 'someone-else' WHERE seq = {target}"
    ));
    let broken = i.run(&["audit", "verify"]).user_error();
    assert!(broken.contains(&format!("event {target}")), "{broken}");
    assert!(broken.contains("edited"), "{broken}");
    edit(&format!(
        "UPDATE audit_events SET subject = 'ada' WHERE seq = {target}"
    ));
    assert!(i.run(&["audit", "verify"]).ok().contains("intact"));
    edit(&format!("DELETE FROM audit_events WHERE seq = {target}"));
    let broken = i.run(&["audit", "verify"]).user_error();
    assert!(
        broken.contains(&format!("event {}", target + 1)),
        "{broken}"
    );
    assert!(broken.contains("deleted"), "{broken}");
}
