//! The user and group commands: happy paths, and every bad input refused with exit 1, a message
//! that says what to do, and no change to the store.

use crate::harness::Instance;

fn seeded() -> Instance {
    let i = Instance::new();
    i.run(&["group", "add", "user", "--precedence", "10"]).ok();
    i.run(&[
        "group",
        "add",
        "admin",
        "--precedence",
        "1",
        "--description",
        "Administrators",
    ])
    .ok();
    i
}

#[test]
fn user_lifecycle_in_human_and_json_output() {
    let i = seeded();
    let out = i
        .run(&[
            "user",
            "add",
            "alice",
            "--email",
            "alice@example.com",
            "--email-verified",
            "--group",
            "user",
            "--attr",
            "locale=fr",
        ])
        .ok();
    assert!(out.contains("added user alice"), "{out}");
    let generated = out
        .lines()
        .find_map(|l| l.rsplit_once(": ").map(|(_, p)| p.to_owned()))
        .expect("generated password shown");
    assert_eq!(generated.len(), 24, "{out}");

    let shown: serde_json::Value =
        serde_json::from_str(&i.run(&["--json", "user", "show", "ALICE"]).ok()).expect("json");
    assert_eq!(shown["username"], "alice");
    assert_eq!(shown["email_verified"], true);
    assert_eq!(shown["groups"], serde_json::json!(["user"]));
    assert_eq!(shown["attributes"]["locale"], "fr");
    assert_eq!(shown["status"], "enabled");
    let raw = i.run(&["--json", "user", "show", "alice"]).ok();
    assert!(
        !raw.contains("argon2") && !raw.contains(&generated),
        "no hash or password in output: {raw}"
    );

    i.run(&["group", "add-member", "admin", "alice"]).ok();
    let human = i.run(&["user", "show", "alice"]).ok();
    assert!(
        human.contains("groups:         admin, user"),
        "ordered by precedence: {human}"
    );

    i.run(&["user", "disable", "alice"]).ok();
    let shown: serde_json::Value =
        serde_json::from_str(&i.run(&["--json", "user", "show", "alice"]).ok()).expect("json");
    assert_eq!(shown["status"], "disabled");
    i.run(&["user", "enable", "alice"]).ok();

    let out = i
        .run_with_stdin(
            &["user", "set-password", "alice", "--password-stdin"],
            "a-much-better-passphrase-7\n",
        )
        .ok();
    assert!(out.contains("password changed"), "{out}");
    assert!(
        !out.contains("a-much-better"),
        "a given password is never echoed"
    );

    let listed = i.run(&["user", "list"]).ok();
    assert!(
        listed.contains("alice") && listed.contains("alice@example.com"),
        "{listed}"
    );
    let groups: serde_json::Value =
        serde_json::from_str(&i.run(&["--json", "group", "list"]).ok()).expect("json");
    assert_eq!(groups[0]["name"], "admin");
    assert_eq!(groups[0]["members"], 1);

    i.run(&["group", "remove-member", "admin", "alice"]).ok();
    i.run(&["user", "delete", "alice"]).ok();
    assert!(i.usernames().is_empty());
    i.run(&["group", "delete", "admin"]).ok();
}

#[test]
fn password_from_stdin_is_accepted_and_never_echoed() {
    let i = seeded();
    let out = i
        .run_with_stdin(
            &["user", "add", "bob", "--password-stdin"],
            "correct-horse-battery-staple\n",
        )
        .ok();
    assert!(
        out.contains("added user bob") && !out.contains("correct-horse"),
        "{out}"
    );
}

#[test]
fn duplicate_username_in_any_case_changes_nothing() {
    let i = seeded();
    i.run(&["user", "add", "Carol", "--email", "carol@example.com"])
        .ok();
    let before = i.run(&["--json", "user", "show", "carol"]).ok();
    for dup in ["carol", "CAROL", "cArOl"] {
        let err = i
            .run(&[
                "user",
                "add",
                dup,
                "--email",
                "other@example.com",
                "--group",
                "admin",
            ])
            .user_error();
        assert!(err.contains("already exists"), "{err}");
    }
    assert_eq!(i.usernames(), ["Carol"]);
    assert_eq!(
        i.run(&["--json", "user", "show", "carol"]).ok(),
        before,
        "the existing user is untouched"
    );
}

#[test]
fn unknown_group_or_user_in_membership_commands() {
    let i = seeded();
    i.run(&["user", "add", "dave"]).ok();
    let err = i
        .run(&["group", "add-member", "ghosts", "dave"])
        .user_error();
    assert!(err.contains("group \"ghosts\" does not exist"), "{err}");
    let err = i
        .run(&["group", "add-member", "user", "nobody"])
        .user_error();
    assert!(err.contains("user \"nobody\" does not exist"), "{err}");
    let err = i
        .run(&["group", "remove-member", "ghosts", "dave"])
        .user_error();
    assert!(err.contains("does not exist"), "{err}");
    let err = i
        .run(&[
            "user", "add", "erin", "--group", "user", "--group", "ghosts",
        ])
        .user_error();
    assert!(err.contains("group \"ghosts\" does not exist"), "{err}");
    assert_eq!(i.usernames(), ["dave"], "erin was not created half-way");
    for cmd in [
        &["user", "show", "nobody"][..],
        &["user", "delete", "nobody"],
        &["user", "disable", "nobody"],
        &["group", "delete", "ghosts"],
    ] {
        let err = i.run(cmd).user_error();
        assert!(err.contains("does not exist"), "{cmd:?}: {err}");
    }
    let err = i.run(&["group", "add", "ADMIN"]).user_error();
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn invalid_email_is_refused() {
    let i = seeded();
    for bad in [
        "not-an-email",
        "a@b",
        "Bob <bob@example.com>",
        "a b@example.com",
        "@example.com",
    ] {
        let err = i
            .run(&["user", "add", "frank", "--email", bad])
            .user_error();
        assert!(err.contains("not a valid email address"), "{bad}: {err}");
    }
    assert!(i.usernames().is_empty());
}

#[test]
fn empty_overlong_and_confusable_usernames_are_refused() {
    let i = seeded();
    let long = "a".repeat(129);
    let cases: &[(&str, &str)] = &[
        ("", "must not be empty"),
        (&long, "too long"),
        ("аdmin", "not allowed"),         // Cyrillic а
        ("ad\u{200b}min", "not allowed"), // zero-width space
        ("admin\u{202e}", "not allowed"), // right-to-left override
        ("ad min", "not allowed"),
        ("-admin", "start and end with a letter or digit"),
    ];
    for (name, expected) in cases {
        // `--` so that a name starting with `-` reaches the validator instead of clap.
        let err = i.run(&["user", "add", "--", name]).user_error();
        assert!(err.contains(expected), "{name:?}: {err}");
    }
    assert!(i.usernames().is_empty());
}

#[test]
fn weak_or_overlong_passwords_are_refused() {
    let i = seeded();
    let long = "Zq8!".repeat(65); // 260 bytes
    let cases: &[(&str, &str)] = &[
        ("short\n", "too short"),
        ("password1234\n", "too easy to guess"),
        ("qwertyuiopasdf\n", "too easy to guess"),
        (&long, "too long"),
        ("\n", "standard input was empty"),
    ];
    for (pw, expected) in cases {
        let err = i
            .run_with_stdin(&["user", "add", "gina", "--password-stdin"], pw)
            .user_error();
        assert!(err.contains(expected), "{pw:?}: {err}");
    }
    assert!(i.usernames().is_empty());
    i.run(&["user", "add", "gina"]).ok();
    let err = i
        .run_with_stdin(
            &["user", "set-password", "gina", "--password-stdin"],
            "gina12345678\n",
        )
        .user_error();
    assert!(err.contains("too easy to guess"), "{err}");
}

#[test]
fn the_password_is_never_taken_as_an_argument() {
    let i = seeded();
    let err = i
        .run(&["user", "add", "hank", "--password", "hunter2hunter2"])
        .user_error();
    assert!(err.contains("unexpected argument '--password'"), "{err}");
    assert!(i.usernames().is_empty());
}

#[test]
fn the_same_commands_work_on_postgresql() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(i) = rt.block_on(Instance::postgres()) else {
        return;
    };
    i.run(&["group", "add", "user"]).ok();
    i.run(&["user", "add", "Ivy", "--group", "user"]).ok();
    let err = i.run(&["user", "add", "IVY"]).user_error();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(i.usernames(), ["Ivy"]);
    let out = i.run(&["store", "check"]).ok();
    assert!(out.contains("postgres://127.0.0.1"), "{out}");
}

/// The user and group commands open the store and nothing else: on a store whose instance secret
/// came from the environment they work without it (they failed with "the instance secret given
/// does not match" although none was given), and a read command writes nothing — no declared
/// client applied, no policy seeded, no signing key made.
#[test]
fn user_and_group_commands_need_no_secret_and_read_commands_write_nothing() {
    let declared = r#"
[[clients]]
id = "declared-app"
redirect_uris = ["https://app.example.com/callback"]

[[policy]]
principal = "group:user"
statements = [{ effect = "allow", paths = ["/api/**"] }]
"#;
    let i = Instance::with_config(declared);
    let secret = "env-secret-0123456789abcdef-0123456789ab";
    let with_secret = |args: &[&str], secret: &str| {
        i.command(args)
            .env("PORTCULLIS_INSTANCE_SECRET", secret)
            .output()
            .expect("run")
    };
    // The store is set up with a secret from the environment (a key command settles it)…
    let out = with_secret(&["keys", "list"], secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // …and the user and group commands run without it.
    for read in [
        &["user", "list"][..],
        &["group", "list"],
        &["--json", "user", "list"],
        &["store", "check"],
    ] {
        i.run(read).ok();
    }
    i.run(&["group", "add", "user"]).ok();
    i.run(&["user", "add", "ann", "--group", "user"]).ok();
    let history = i.run(&["--json", "policy", "history"]).ok();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&history).expect("json"),
        serde_json::json!([]),
        "no policy was seeded by a CLI command"
    );
    let clients = i.run(&["client", "list"]).ok();
    assert!(!clients.contains("declared-app"), "{clients}");
    // The commands that use the keys still settle the secret and refuse a wrong one.
    let out = i
        .command(&["keys", "list"])
        .env("PORTCULLIS_INSTANCE_SECRET", secret)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = i
        .command(&["keys", "list"])
        .env(
            "PORTCULLIS_INSTANCE_SECRET",
            "wrong-secret-0123456789abcdef-012345678",
        )
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn client_update_changes_settings_validates_and_leaves_declared_clients_to_the_file() {
    let i = Instance::with_config(
        "[[clients]]\nid = \"declared\"\nredirect_uris = [\"https://app.example.com/cb\"]\n",
    );
    i.run(&[
        "client",
        "add",
        "Shop",
        "--id",
        "shop",
        "--redirect-uri",
        "https://shop.example.com/cb",
    ])
    .ok();
    let show = || -> serde_json::Value {
        serde_json::from_str(&i.run(&["--json", "client", "show", "shop"]).ok()).expect("json")
    };
    let before = show();
    let updated: serde_json::Value = serde_json::from_str(
        &i.run(&[
            "--json",
            "client",
            "update",
            "shop",
            "--name",
            "The shop",
            "--access-ttl",
            "600",
        ])
        .ok(),
    )
    .expect("json");
    assert_eq!(updated["name"], "The shop");
    assert_eq!(updated["access_ttl"], 600);
    assert_eq!(
        updated["redirect_uris"], before["redirect_uris"],
        "what is not given stays"
    );
    assert_eq!(show(), updated);
    for (args, says) in [
        (
            &["--redirect-uri", "http://evil.example.com/cb"][..],
            "plain http",
        ),
        (&["--grant", "password"][..], "unknown grant"),
        (&["--scope", "nowhere/read"][..], "unknown scope"),
        (&["--access-ttl", "1"][..], "between"),
    ] {
        let mut cmd = vec!["client", "update", "shop"];
        cmd.extend_from_slice(args);
        let err = i.run(&cmd).user_error();
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(show(), updated, "a refused change changes nothing");
    }
    let err = i
        .run(&["client", "update", "declared", "--name", "x"])
        .user_error();
    assert!(err.contains("configuration file"), "{err}");
    let err = i
        .run(&["client", "update", "nobody", "--name", "x"])
        .user_error();
    assert!(err.contains("does not exist"), "{err}");
    let events: serde_json::Value = serde_json::from_str(
        &i.run(&["--json", "audit", "list", "--kind", "client.update"])
            .ok(),
    )
    .expect("json");
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
    assert_eq!(events[0]["subject"], "shop");
}
