//! The store suite: every test runs against SQLite and against PostgreSQL.
//!
//! PostgreSQL comes from `PORTCULLIS_TEST_POSTGRES_URL` (set by `scripts/test`, which starts a
//! private cluster); each test gets a database of its own. Without the variable the PostgreSQL
//! half is skipped with a note, unless `PORTCULLIS_REQUIRE_POSTGRES=1` (as in CI), where a
//! missing database fails the run instead of passing silently.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::Executor;

use crate::{
    AcmeCertificate, AcmeChallenge, AuthCode, Client, CodePurpose, CodeUse, NewCode, NewGroup,
    NewMail, NewUser, OutboxCounts, RefreshToken, ResourceServer, Rotation, Session, Store,
    StoreError, StoreOptions, StoredKey, UserStatus,
};

/// Keeps a test's database alive for the length of the test.
struct Fixture {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&StoreOptions::sqlite(&dir.path().join("test.db")))
        .await
        .expect("open sqlite");
    Fixture {
        store,
        _dir: Some(dir),
    }
}

async fn postgres() -> Option<Fixture> {
    let Ok(base) = std::env::var("PORTCULLIS_TEST_POSTGRES_URL") else {
        if std::env::var("PORTCULLIS_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
            panic!(
                "PORTCULLIS_REQUIRE_POSTGRES=1 but PORTCULLIS_TEST_POSTGRES_URL is not set; run scripts/test"
            );
        }
        eprintln!(
            "skipping the PostgreSQL half: PORTCULLIS_TEST_POSTGRES_URL is not set (scripts/test sets it)"
        );
        return None;
    };
    sqlx::any::install_default_drivers();
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("connect to the test PostgreSQL cluster");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create test database");
    let mut url = url::Url::parse(&base).expect("PORTCULLIS_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    let options = StoreOptions {
        url: url.to_string(),
        ..StoreOptions::sqlite("unused".as_ref())
    };
    let store = Store::open(&options).await.expect("open postgres");
    Some(Fixture { store, _dir: None })
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::sqlite().await.store).await }) *
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(f) = super::postgres().await { super::$name(f.store).await }
            }) *
        }
    };
}

both_backends!(
    user_round_trip,
    usernames_are_unique_in_any_case,
    unknown_group_at_creation_creates_nothing,
    memberships,
    deleting_cascades,
    status_and_password,
    concurrent_creates_of_one_name_admit_exactly_one,
    first_setting_wins_a_race,
    reopening_keeps_data_and_is_idempotent,
    clients_and_resource_servers,
    codes_are_single_use_even_when_raced,
    refresh_rotation_grace_and_reuse,
    refresh_grace_is_exact_to_the_millisecond,
    revoking_a_user_ends_every_session,
    login_failures_lock_with_doubling_delay,
    signing_keys_publish_and_retire,
    policy_versions,
    acme_state_is_shared_and_one_node_holds_the_lease,
    outbox_claims_once_retries_and_keeps_every_message,
    account_codes_are_single_use_newest_only_and_expire,
    email_lookup_and_verification_follow_the_current_address,
    totp_steps_are_accepted_once_and_recovery_codes_once,
    audit_chain_detects_edits_and_deletions_and_survives_pruning,
    revisions_rise_with_every_change_and_guard_writes,
    user_pages_follow_the_username_order_and_filter,
    live_sessions_of_every_user_page_newest_first,
    quota_usage_adds_up_across_writers,
    copy_moves_every_row_and_refuses_a_target_with_data,
    backup_is_a_consistent_store_of_its_own,
    attempts_spend_one_budget_whichever_node_counts_them,
    changes_reach_listeners_when_committed,
    federated_identities_link_once_and_sync_managed_groups,
);

async fn next(changes: &mut crate::Changes) -> crate::Change {
    tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("a change within 5 s")
}

async fn changes_reach_listeners_when_committed(store: Store) {
    let Some(mut changes) = store.listen().await else {
        assert_eq!(
            store.backend(),
            crate::Backend::Sqlite,
            "only SQLite has no listener"
        );
        return;
    };
    assert_eq!(
        next(&mut changes).await,
        crate::Change::Missed,
        "first: connected, re-read everything"
    );
    store
        .revoke_jti("jti-1", 1_700_000_600, 1_700_000_000)
        .await
        .expect("revoke");
    assert_eq!(next(&mut changes).await, crate::Change::Revocations);
    store
        .add_policy_version("principal = \"group:user\"\n", "", 1_700_000_000, false)
        .await
        .expect("policy");
    assert_eq!(next(&mut changes).await, crate::Change::Policies);
    store
        .retire_signing_key("nope", 1_700_000_000)
        .await
        .expect("retire");
    assert_eq!(next(&mut changes).await, crate::Change::Keys);
    // A write that rolls back announces nothing: the next change seen is the next real one.
    let _ = store
        .add_policy_version_if(999, "x", "", 1_700_000_000)
        .await
        .expect("no-op");
    store
        .revoke_jti("jti-2", 1_700_000_600, 1_700_000_000)
        .await
        .expect("revoke");
    assert_eq!(next(&mut changes).await, crate::Change::Revocations);
}

async fn attempts_spend_one_budget_whichever_node_counts_them(store: Store) {
    let rate = crate::ThrottleRate::per_minute(3);
    assert_eq!(rate.interval_ms, 20_000);
    let t = 1_700_000_000_000;
    let attempt = |net: &'static str, scope: &'static str, at: i64| {
        let store = store.clone();
        async move {
            store
                .throttle_attempt(scope, net, rate, at)
                .await
                .expect("count")
        }
    };
    for _ in 0..3 {
        assert!(attempt("192.0.2.1", "signin", t).await);
    }
    assert!(
        !attempt("192.0.2.1", "signin", t).await,
        "the burst is spent"
    );
    assert!(!attempt("192.0.2.1", "signin", t + 19_999).await);
    // Another network, or another kind of attempt, has its own budget.
    assert!(attempt("192.0.2.2", "signin", t).await);
    assert!(attempt("192.0.2.1", "account", t).await);
    // One interval refills one attempt, and a refusal spent nothing.
    assert!(attempt("192.0.2.1", "signin", t + 20_000).await);
    assert!(!attempt("192.0.2.1", "signin", t + 20_000).await);
    // Twenty at once, as from many nodes: exactly the burst gets through.
    let racers: Vec<_> = (0..20)
        .map(|_| tokio::spawn(attempt("198.51.100.7", "signin", t)))
        .collect();
    let mut allowed = 0;
    for r in racers {
        allowed += usize::from(r.await.expect("task"));
    }
    assert_eq!(allowed, 3);
    // Buckets full again are forgotten, and forgetting them changes nothing.
    assert!(store.prune_throttle(t + 200_000).await.expect("prune") >= 3);
    for _ in 0..3 {
        assert!(attempt("192.0.2.1", "signin", t + 200_000).await);
    }
    assert!(!attempt("192.0.2.1", "signin", t + 200_000).await);
}

/// Every row of every table, as text, in a stable order.
async fn dump(store: &Store) -> BTreeMap<&'static str, Vec<Vec<String>>> {
    use sqlx::Row;
    let mut out = BTreeMap::new();
    for table in crate::copy::TABLES {
        let columns = store.columns(table).await.expect("columns");
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM {table}",
            names.join(", ")
        )))
        .fetch_all(&store.pool)
        .await
        .expect("select");
        let mut rows: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, int))| {
                        if *int {
                            format!("{:?}", r.try_get::<Option<i64>, _>(i).expect("int"))
                        } else {
                            format!("{:?}", r.try_get::<Option<String>, _>(i).expect("text"))
                        }
                    })
                    .collect()
            })
            .collect();
        rows.sort();
        out.insert(*table, rows);
    }
    out
}

/// A store with a little of everything: users in groups, a client, policies, audit, quotas.
async fn populate(store: &Store) {
    store
        .create_group(&new_group("user", Some(10)))
        .await
        .expect("group");
    store
        .create_group(&new_group("admin", None))
        .await
        .expect("group");
    store
        .create_user(&new_user("ada", &["user", "admin"]))
        .await
        .expect("user");
    let mut grace = new_user("grace", &[]);
    grace.email = None;
    grace.password_hash = None;
    store.create_user(&grace).await.expect("user");
    store
        .create_client(&client("app", Some("$argon2id$secret")))
        .await
        .expect("client");
    store
        .add_policy_version(
            "principal = \"group:user\"\n",
            "by ada",
            1_700_000_000,
            false,
        )
        .await
        .expect("policy");
    store
        .append_audit(&event("user.create", 1_700_000_001))
        .await
        .expect("audit");
    store
        .append_audit(&event("user.update", 1_700_000_002))
        .await
        .expect("audit");
    store
        .add_quota_usage("/api#0", "app", "d:2026-12-06", 7, 1_700_000_000)
        .await
        .expect("quota");
}

async fn copy_moves_every_row_and_refuses_a_target_with_data(store: Store) {
    // Into the other backend when there is one (SQLite → PostgreSQL, PostgreSQL → SQLite).
    let target = match store.backend() {
        crate::Backend::Sqlite => match postgres().await {
            Some(f) => f,
            None => sqlite().await,
        },
        crate::Backend::Postgres => sqlite().await,
    };
    populate(&store).await;
    let before = dump(&store).await;
    let counts = store.copy_into(&target.store).await.expect("copy");
    assert_eq!(counts.len(), crate::copy::TABLES.len());
    assert_eq!(
        counts.iter().find(|(t, _)| *t == "users").map(|(_, n)| *n),
        Some(2)
    );
    assert_eq!(dump(&target.store).await, before, "every row, every value");
    // The copy is a working store: the users, their groups, the audit chain.
    let ada = target.store.user("ada").await.expect("read").expect("ada");
    assert_eq!(ada.groups, ["user", "admin"]);
    assert!(
        matches!(
            target.store.verify_audit().await.expect("verify"),
            crate::AuditVerdict::Intact { events: 2, .. }
        ),
        "the audit chain still verifies"
    );
    // A second copy would mix two stores: refused, and nothing is written.
    let again = store.copy_into(&target.store).await.expect_err("not empty");
    assert!(
        matches!(again, StoreError::Refused(ref m) if m.contains("not empty")),
        "{again}"
    );
    assert_eq!(dump(&target.store).await, before);
}

async fn backup_is_a_consistent_store_of_its_own(store: Store) {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("backup.db");
    if store.backend() == crate::Backend::Postgres {
        let e = store.backup_to(&file).await.expect_err("sqlite only");
        assert!(e.to_string().contains("pg_dump"), "{e}");
        return;
    }
    populate(&store).await;
    let bytes = store.backup_to(&file).await.expect("backup");
    assert!(bytes > 0);
    assert!(
        store.backup_to(&file).await.is_err(),
        "never over an existing file"
    );
    // Written after the backup: not in it.
    store
        .create_user(&new_user("later", &[]))
        .await
        .expect("user");
    let copy = Store::open(&StoreOptions::sqlite(&file))
        .await
        .expect("open the backup");
    copy.integrity_check().await.expect("intact");
    assert!(copy.user("ada").await.expect("read").is_some());
    assert!(copy.user("later").await.expect("read").is_none());
    let mut original = dump(&store).await;
    original
        .get_mut("users")
        .expect("users")
        .retain(|r| !r.iter().any(|c| c.contains("later")));
    assert_eq!(dump(&copy).await, original);
}

#[tokio::test]
async fn every_table_is_listed_for_copies() {
    let f = sqlite().await;
    let mut tables = f.store.table_names().await.expect("tables");
    tables.sort();
    let mut listed: Vec<String> = crate::copy::TABLES
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        tables, listed,
        "copy::TABLES must name every table, parents first"
    );
}

async fn quota_usage_adds_up_across_writers(store: Store) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .add_quota_usage("/api/**#0", "billing", "d:2026-12-06", 5, 100)
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("add");
    }
    assert_eq!(
        store
            .add_quota_usage("/api/**#0", "billing", "d:2026-12-06", 0, 100)
            .await
            .expect("read"),
        40
    );
    assert_eq!(
        store
            .add_quota_usage("/api/**#0", "other", "d:2026-12-06", 1, 200)
            .await
            .expect("add"),
        1,
        "another client counts apart"
    );
    let all = store
        .quota_usage_in(&["d:2026-12-06", "m:2026-12"])
        .await
        .expect("read");
    assert_eq!(all.len(), 2);
    assert!(all.contains(&(
        "/api/**#0".into(),
        "billing".into(),
        "d:2026-12-06".into(),
        40
    )));
    assert_eq!(store.prune_quota_usage(150).await.expect("prune"), 1);
}

async fn revisions_rise_with_every_change_and_guard_writes(store: Store) {
    store
        .create_group(&new_group("user", None))
        .await
        .expect("group");
    let ada = store
        .create_user(&new_user("ada", &[]))
        .await
        .expect("user");
    let mut last = ada.revision;
    let mut rises = |now: i64, what: &str| {
        assert!(now > last, "{what} raises the revision ({last} -> {now})");
        last = now;
    };
    let rev = |store: Store| async move {
        store
            .user("ada")
            .await
            .expect("read")
            .expect("user")
            .revision
    };
    store.add_member("user", "ada", 2).await.expect("member");
    rises(rev(store.clone()).await, "joining a group");
    store
        .set_user_status("ada", UserStatus::Disabled, 3)
        .await
        .expect("status");
    rises(rev(store.clone()).await, "disabling");
    store
        .set_password_hash("ada", "$argon2id$x", false, 4)
        .await
        .expect("password");
    rises(rev(store.clone()).await, "a password");
    store.remove_member("user", "ada").await.expect("member");
    rises(rev(store.clone()).await, "leaving a group");
    store.add_member("user", "ada", 5).await.expect("member");
    rises(rev(store.clone()).await, "joining again");
    store.delete_group("user").await.expect("group");
    rises(
        rev(store.clone()).await,
        "the deletion of one of its groups",
    );
    let set_locale = |attrs: &mut BTreeMap<String, String>| -> Result<(), StoreError> {
        attrs.insert("locale".into(), "de".into());
        Ok(())
    };
    let err = store
        .edit_attributes(&ada.id, Some(last - 1), 6, set_locale)
        .await
        .expect_err("stale revision");
    assert!(
        matches!(err, StoreError::Changed { kind: "user", .. }),
        "{err}"
    );
    store
        .edit_attributes(&ada.id, Some(last), 6, set_locale)
        .await
        .expect("current revision");
    // Concurrent edits of different attributes all land.
    let edits: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let id = ada.id.clone();
            tokio::spawn(async move {
                store
                    .edit_attributes(&id, None, 7, |a: &mut BTreeMap<String, String>| {
                        a.insert(format!("k{i}"), "v".into());
                        Ok::<(), StoreError>(())
                    })
                    .await
            })
        })
        .collect();
    for e in edits {
        e.await.expect("task").expect("edit");
    }
    let attrs = store
        .user("ada")
        .await
        .expect("read")
        .expect("user")
        .attributes;
    assert_eq!(attrs.len(), 9, "{attrs:?}");
    let now = rev(store.clone()).await;
    assert!(now > last + 8);
    let err = store
        .delete_user("ada", Some(last))
        .await
        .expect_err("stale revision");
    assert!(matches!(err, StoreError::Changed { .. }), "{err}");
    assert!(store.user("ada").await.expect("read").is_some());
    store.delete_user("ada", Some(now)).await.expect("delete");
    let err = store.delete_user("ada", Some(now)).await.expect_err("gone");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    store
        .create_client(&client("spa", None))
        .await
        .expect("client");
    let spa = store.client("spa").await.expect("read").expect("client");
    let mut edited = spa.clone();
    edited.name = "Shop".into();
    store
        .update_client(&edited, spa.revision)
        .await
        .expect("update");
    let err = store
        .update_client(&edited, spa.revision)
        .await
        .expect_err("the second writer of the same copy");
    assert!(
        matches!(err, StoreError::Changed { kind: "client", .. }),
        "{err}"
    );
    let now = store.client("spa").await.expect("read").expect("client");
    assert_eq!(now.name, "Shop");
    assert_eq!(now.revision, spa.revision + 1);
    let err = store
        .delete_client("spa", Some(spa.revision))
        .await
        .expect_err("stale");
    assert!(matches!(err, StoreError::Changed { .. }), "{err}");
    store
        .delete_client("spa", Some(now.revision))
        .await
        .expect("delete");
    let err = store
        .update_client(&edited, now.revision)
        .await
        .expect_err("gone");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

    // A resource server whose scopes a client may still ask for stays.
    let rs = ResourceServer {
        identifier: "orders".into(),
        name: "Orders".into(),
        scopes: vec!["read".into()],
        created_at: 1,
    };
    store.create_resource_server(&rs).await.expect("rs");
    let mut backend = client("backend", Some("abc"));
    backend.scopes = vec!["orders/read".into()];
    store.create_client(&backend).await.expect("client");
    let err = store
        .delete_resource_server("orders")
        .await
        .expect_err("in use");
    assert!(
        matches!(err, StoreError::InUse { .. }) && err.to_string().contains("client backend"),
        "{err}"
    );
    store.delete_client("backend", None).await.expect("delete");
    store
        .delete_resource_server("orders")
        .await
        .expect("no longer used");
}

async fn user_pages_follow_the_username_order_and_filter(store: Store) {
    for name in ["carol", "Alice", "bob", "dave_x", "dave%y"] {
        store.create_user(&new_user(name, &[])).await.expect("user");
    }
    let names = |users: Vec<crate::User>| users.into_iter().map(|u| u.username).collect::<Vec<_>>();
    let first = store.users_page(None, None, 2).await.expect("page");
    assert_eq!(names(first), ["Alice", "bob"]);
    let second = store.users_page(Some("BOB"), None, 2).await.expect("page");
    assert_eq!(names(second), ["carol", "dave%y"]);
    let last = store
        .users_page(Some("dave%y"), None, 2)
        .await
        .expect("page");
    assert_eq!(names(last), ["dave_x"]);
    // The needle is literal text, any case, in the username or the e-mail address.
    assert_eq!(
        names(store.users_page(None, Some("_"), 10).await.expect("page")),
        ["dave_x"]
    );
    assert_eq!(
        names(store.users_page(None, Some("%"), 10).await.expect("page")),
        ["dave%y"]
    );
    assert_eq!(
        names(
            store
                .users_page(None, Some("ALICE@EXAMPLE"), 10)
                .await
                .expect("page")
        ),
        ["Alice"]
    );
    assert!(
        store
            .users_page(None, Some("nobody"), 10)
            .await
            .expect("page")
            .is_empty()
    );
}

async fn live_sessions_of_every_user_page_newest_first(store: Store) {
    let mut ids = Vec::new();
    for (i, name) in ["ann", "ben", "cat"].iter().enumerate() {
        let user = store.create_user(&new_user(name, &[])).await.expect("user");
        for j in 0..2 {
            let s = Session {
                sid: format!("{name}-{j}"),
                user_id: user.id.clone(),
                auth_time: 100,
                created_at: 100 + i64::try_from(i).expect("small"),
                expires_at: if *name == "cat" && j == 1 {
                    150
                } else {
                    100_000
                },
                revoked_at: None,
                amr: vec!["pwd".into()],
            };
            store
                .create_session(&s, &format!("secret-{name}-{j}"))
                .await
                .expect("session");
            ids.push(s.sid);
        }
    }
    store.revoke_session("ben-0", 200).await.expect("revoke");
    let mut seen = Vec::new();
    let mut after: Option<(i64, String)> = None;
    loop {
        let page = store
            .live_sessions_page(
                200,
                after.as_ref().map(|(at, sid)| (*at, sid.as_str())),
                None,
                2,
            )
            .await
            .expect("page");
        let Some((last, _)) = page.last() else { break };
        after = Some((last.created_at, last.sid.clone()));
        seen.extend(
            page.into_iter()
                .map(|(s, user)| format!("{user}:{}", s.sid)),
        );
    }
    assert_eq!(seen, ["cat:cat-0", "ben:ben-1", "ann:ann-0", "ann:ann-1"]);
    let bens = store
        .live_sessions_page(200, None, Some("BEN"), 10)
        .await
        .expect("page");
    assert_eq!(bens.len(), 1);
    assert_eq!(bens[0].0.sid, "ben-1");
}

fn event(kind: &str, at: i64) -> crate::AuditEvent {
    crate::AuditEvent {
        kind: kind.into(),
        actor: "cli:root".into(),
        source: "cli".into(),
        subject: "ada".into(),
        detail: serde_json::json!({ "groups": ["user"] }),
        at,
    }
}

async fn audit_chain_detects_edits_and_deletions_and_survives_pruning(store: Store) {
    use crate::{AuditFilter, AuditVerdict};
    assert_eq!(
        store.verify_audit().await.expect("verify"),
        AuditVerdict::Intact {
            events: 0,
            head: None
        }
    );
    // Appended from several tasks at once: one chain, no gaps.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append_audit(&event("user.create", 100 + i)).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("append");
    }
    let verdict = store.verify_audit().await.expect("verify");
    assert!(
        matches!(verdict, AuditVerdict::Intact { events: 8, .. }),
        "{verdict:?}"
    );
    let all = store
        .audit_events(&AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(all[0].prev_hash, crate::GENESIS);
    assert_eq!(all[1].prev_hash, all[0].hash);
    // Filters: kind prefix, who, cursor.
    store
        .append_audit(&event("signin.failure", 200))
        .await
        .expect("append");
    let signins = store
        .audit_events(&AuditFilter {
            kind_prefix: Some("signin.".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(signins.len(), 1);
    let page = store
        .audit_events(&AuditFilter {
            after: Some(7),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [8, 9]);
    let newest = store
        .audit_events(&AuditFilter {
            newest_first: true,
            before: Some(9),
            limit: 3,
            ..AuditFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), [8, 7, 6]);
    assert!(
        store
            .audit_events(&AuditFilter {
                who: Some("nobody".into()),
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .expect("list")
            .is_empty()
    );
    // An edited row is named.
    sqlx::query("UPDATE audit_events SET subject = 'mallory' WHERE seq = 4")
        .execute(&store.pool)
        .await
        .expect("tamper");
    assert!(matches!(
        store.verify_audit().await.expect("verify"),
        AuditVerdict::Broken { seq: 4, .. }
    ));
    sqlx::query("UPDATE audit_events SET subject = 'ada' WHERE seq = 4")
        .execute(&store.pool)
        .await
        .expect("undo");
    // A deleted row is noticed at the next one.
    sqlx::query("DELETE FROM audit_events WHERE seq = 6")
        .execute(&store.pool)
        .await
        .expect("tamper");
    assert!(matches!(
        store.verify_audit().await.expect("verify"),
        AuditVerdict::Broken { seq: 7, .. }
    ));
    // Pruning (retention) keeps the chain verifiable from its anchor: everything before 200
    // (the broken part included) goes, event 9 continues from event 8's hash.
    assert_eq!(store.prune_audit(200).await.expect("prune"), 7);
    assert!(matches!(
        store.verify_audit().await.expect("verify"),
        AuditVerdict::Intact { events: 1, .. }
    ));
    let next = store
        .append_audit(&event("policy.set", 300))
        .await
        .expect("append");
    assert_eq!(next.seq, 10);
    assert!(matches!(
        store.verify_audit().await.expect("verify"),
        AuditVerdict::Intact { events: 2, .. }
    ));
    // Deleting the oldest remaining row is still detected (the next no longer meets the anchor).
    sqlx::query("DELETE FROM audit_events WHERE seq = 9")
        .execute(&store.pool)
        .await
        .expect("tamper");
    assert!(matches!(
        store.verify_audit().await.expect("verify"),
        AuditVerdict::Broken { seq: 10, .. }
    )); // A prefix is literal text: `_` matches only itself.
    store
        .append_audit(&event("user.set_password", 300))
        .await
        .expect("append");
    for (prefix, n) in [
        ("user.set_", 1),
        ("user.set", 1),
        ("user_", 0),
        ("user.", 1),
    ] {
        let found = store
            .audit_events(&AuditFilter {
                kind_prefix: Some(prefix.into()),
                limit: 100,
                ..AuditFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(found.len(), n, "{prefix}");
    }
}

async fn totp_steps_are_accepted_once_and_recovery_codes_once(store: Store) {
    let (user_id, session) = session_for(&store, "otto").await;
    let stored = store
        .session(&session.sid)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        stored.amr,
        ["pwd", "otp", "mfa"],
        "sessions keep how the user signed in"
    );
    assert!(
        store
            .totp_begin(&user_id, "sealed-1", 10)
            .await
            .expect("begin")
    );
    // Not confirmed yet: a sign-in step is refused, the confirming one accepted.
    assert!(
        !store
            .totp_accept_step(&user_id, 100, false)
            .await
            .expect("step")
    );
    assert!(
        store
            .totp_accept_step(&user_id, 100, true)
            .await
            .expect("confirm")
    );
    assert!(
        !store
            .totp_begin(&user_id, "sealed-2", 11)
            .await
            .expect("begin"),
        "a confirmed factor is kept"
    );
    assert_eq!(
        store
            .totp(&user_id)
            .await
            .expect("read")
            .expect("factor")
            .sealed,
        "sealed-1"
    );
    // Each step once, and never an older one; raced, one wins.
    assert!(
        !store
            .totp_accept_step(&user_id, 100, false)
            .await
            .expect("replay")
    );
    assert!(
        !store
            .totp_accept_step(&user_id, 99, false)
            .await
            .expect("older")
    );
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (store, user_id) = (store.clone(), user_id.clone());
            tokio::spawn(async move { store.totp_accept_step(&user_id, 101, false).await })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        accepted += usize::from(t.await.expect("task").expect("step"));
    }
    assert_eq!(accepted, 1, "a code is accepted once");
    store
        .set_recovery_codes(&user_id, &["h1".into(), "h2".into()], 20)
        .await
        .expect("codes");
    assert_eq!(store.recovery_codes_left(&user_id).await.expect("count"), 2);
    assert!(
        store
            .use_recovery_code(&user_id, "h1", 21)
            .await
            .expect("use")
    );
    assert!(
        !store
            .use_recovery_code(&user_id, "h1", 22)
            .await
            .expect("again")
    );
    assert!(
        !store
            .use_recovery_code("someone-else", "h2", 22)
            .await
            .expect("another user's")
    );
    assert_eq!(store.recovery_codes_left(&user_id).await.expect("count"), 1);
    assert!(store.reset_mfa(&user_id).await.expect("reset"));
    assert!(store.totp(&user_id).await.expect("read").is_none());
    assert_eq!(store.recovery_codes_left(&user_id).await.expect("count"), 0);
    assert!(
        !store.reset_mfa(&user_id).await.expect("reset"),
        "nothing left"
    );
}

fn mail(id: &str, now: i64) -> NewMail {
    NewMail {
        id: id.into(),
        recipient: format!("{id}@example.com"),
        subject: "Hello".into(),
        text_body: "text".into(),
        html_body: "<p>html</p>".into(),
        kind: "verify".into(),
        now,
    }
}

async fn outbox_claims_once_retries_and_keeps_every_message(store: Store) {
    for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
        store
            .enqueue_mail(&mail(id, 100 + i64::try_from(i).expect("small")))
            .await
            .expect("enqueue");
    }
    // Two workers at once: each message goes to exactly one of them.
    let (a, b) = tokio::join!(store.claim_mail(200, 60, 10), store.claim_mail(200, 60, 10));
    let (a, b) = (a.expect("claim"), b.expect("claim"));
    let mut ids: Vec<_> = a.iter().chain(&b).map(|m| m.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["m1", "m2", "m3"], "each message claimed once");
    // Leased: nobody else gets them until the lease ends.
    assert!(
        store
            .claim_mail(259, 60, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    store.mail_sent("m1", 210).await.expect("sent");
    store
        .mail_failed("m2", "connection refused", Some(400), 210)
        .await
        .expect("retry");
    store
        .mail_failed("m3", "550 no such user", None, 210)
        .await
        .expect("give up");
    assert_eq!(
        store.outbox_counts().await.expect("counts"),
        OutboxCounts {
            pending: 1,
            retrying: 1,
            sent: 1,
            failed: 1
        }
    );
    // The retry is due at 400, not before; then it comes back with its attempt counted.
    assert!(
        store
            .claim_mail(399, 60, 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let again = store.claim_mail(400, 60, 10).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id.as_str(), again[0].attempts), ("m2", 1));
    assert_eq!(again[0].html_body, "<p>html</p>");
    // A worker that died mid-send: its lease ends and the message is claimed again.
    let later = store.claim_mail(461, 60, 10).await.expect("claim");
    assert_eq!(later.len(), 1, "an expired lease frees the message");
    store.mail_sent("m2", 462).await.expect("sent");
    assert_eq!(
        store.prune_mail(300).await.expect("prune"),
        2,
        "m1 and m3 are old"
    );
    assert_eq!(
        store.outbox_counts().await.expect("counts"),
        OutboxCounts {
            pending: 0,
            retrying: 0,
            sent: 1,
            failed: 0
        }
    );
}

async fn account_codes_are_single_use_newest_only_and_expire(store: Store) {
    let user = store
        .create_user(&new_user("lena", &[]))
        .await
        .expect("user");
    let code = |hash: &str, purpose, now| NewCode {
        code_hash: hash.into(),
        purpose,
        user_id: user.id.clone(),
        email: "lena@example.com".into(),
        now,
        expires_at: now + 3600,
    };
    for (hash, purpose, now) in [
        ("r1", CodePurpose::Reset, 100),
        ("v1", CodePurpose::Verify, 100),
        // A newer reset code replaces the older; the verification code is untouched.
        ("r2", CodePurpose::Reset, 110),
    ] {
        assert!(
            store
                .insert_account_code(&code(hash, purpose, now), 3)
                .await
                .expect("insert")
        );
    }
    assert_eq!(
        store
            .use_account_code("r1", CodePurpose::Reset, 120)
            .await
            .expect("use"),
        None
    );
    assert_eq!(
        store
            .account_codes_since(&user.id, CodePurpose::Reset, 100)
            .await
            .expect("count"),
        2
    );
    // The wrong purpose does not use it.
    assert_eq!(
        store
            .use_account_code("r2", CodePurpose::Verify, 120)
            .await
            .expect("use"),
        None
    );
    assert!(
        store
            .peek_account_code("r2", CodePurpose::Reset, 120)
            .await
            .expect("peek")
            .is_some()
    );
    // Raced: exactly one use wins.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.use_account_code("r2", CodePurpose::Reset, 130).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        if let Some(used) = t.await.expect("task").expect("use") {
            assert_eq!(used.user_id, user.id);
            assert_eq!(used.email, "lena@example.com");
            won += 1;
        }
    }
    assert_eq!(won, 1, "a code is used once");
    // Expired codes do nothing and are pruned.
    assert_eq!(
        store
            .use_account_code("v1", CodePurpose::Verify, 100 + 3600)
            .await
            .expect("use"),
        None
    );
    assert_eq!(store.prune_account_codes(10_000).await.expect("prune"), 3);
    // At most n an hour per user and purpose, even when asked for at once.
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let (store, c) = (
                store.clone(),
                code(&format!("burst{n}"), CodePurpose::Reset, 20_000),
            );
            tokio::spawn(async move { store.insert_account_code(&c, 3).await })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        stored += usize::from(t.await.expect("task").expect("insert"));
    }
    assert_eq!(stored, 3, "three codes an hour");
    assert!(
        store
            .insert_account_code(&code("later", CodePurpose::Reset, 20_000 + 3601), 3)
            .await
            .expect("insert"),
        "an hour later there is room again"
    );
}

async fn email_lookup_and_verification_follow_the_current_address(store: Store) {
    let mut first = new_user("mo", &[]);
    first.email = Some("Shared@Example.com".into());
    first.email_verified = false;
    let first = store.create_user(&first).await.expect("user");
    let mut second = new_user("noor", &[]);
    second.email = Some("shared@example.COM".into());
    second.now += 1;
    store.create_user(&second).await.expect("user");
    assert_eq!(
        store
            .usernames_by_email("SHARED@example.com")
            .await
            .expect("lookup"),
        ["mo", "noor"]
    );
    assert!(
        store
            .usernames_by_email("nobody@example.com")
            .await
            .expect("lookup")
            .is_empty()
    );
    // A code sent to the old address proves nothing once the address changed.
    store
        .set_email(&first.id, Some("new@example.com"), false, 200)
        .await
        .expect("set");
    assert!(
        !store
            .verify_email(&first.id, "shared@example.com", 201)
            .await
            .expect("verify")
    );
    assert!(
        store
            .verify_email(&first.id, "NEW@example.com", 202)
            .await
            .expect("verify")
    );
    let mo = store.user("mo").await.expect("read").expect("exists");
    assert_eq!(mo.email.as_deref(), Some("new@example.com"));
    assert!(mo.email_verified);
    assert_eq!(
        store
            .usernames_by_email("new@example.com")
            .await
            .expect("lookup"),
        ["mo"]
    );
    assert!(matches!(
        store.set_email("no-such-id", None, false, 1).await,
        Err(StoreError::NotFound { .. })
    ));
    // The forced password change is stored and cleared with the next password.
    store
        .set_password_hash("mo", "$argon2id$temp", true, 300)
        .await
        .expect("set");
    assert!(
        store
            .user("mo")
            .await
            .expect("read")
            .expect("exists")
            .password_change_required
    );
    store
        .set_password_hash("mo", "$argon2id$own", false, 301)
        .await
        .expect("set");
    assert!(
        !store
            .user("mo")
            .await
            .expect("read")
            .expect("exists")
            .password_change_required
    );
}

async fn acme_state_is_shared_and_one_node_holds_the_lease(store: Store) {
    let dir = "https://acme.example/directory";
    assert_eq!(
        store
            .acme_account_get_or_insert(dir, None, 1)
            .await
            .expect("get"),
        None
    );
    let first = store
        .acme_account_get_or_insert(dir, Some("sealed-a"), 1)
        .await
        .expect("put");
    let second = store
        .acme_account_get_or_insert(dir, Some("sealed-b"), 2)
        .await
        .expect("put");
    assert_eq!(
        (first.as_deref(), second.as_deref()),
        (Some("sealed-a"), Some("sealed-a")),
        "the first account wins"
    );

    let mut cert = AcmeCertificate {
        names: "a.example,b.example".into(),
        chain_pem: "chain-1".into(),
        sealed_key: "key-1".into(),
        not_after: 100,
        updated_at: 10,
    };
    store.acme_certificate_put(&cert).await.expect("put");
    cert.chain_pem = "chain-2".into();
    cert.updated_at = 20;
    store.acme_certificate_put(&cert).await.expect("replace");
    assert_eq!(
        store
            .acme_certificate("a.example,b.example")
            .await
            .expect("get"),
        Some(cert)
    );
    assert_eq!(
        store.acme_certificate("a.example").await.expect("get"),
        None
    );

    let challenge = |lookup: &str, expires_at| AcmeChallenge {
        kind: "http-01".into(),
        lookup: lookup.into(),
        answer: format!("{lookup}.thumbprint"),
        expires_at,
    };
    store
        .acme_challenge_put(&challenge("t1", 50))
        .await
        .expect("put");
    store
        .acme_challenge_put(&challenge("t2", 5))
        .await
        .expect("put");
    assert_eq!(
        store.acme_challenges(10).await.expect("list"),
        vec![challenge("t1", 50)]
    );
    store
        .acme_challenge_delete("http-01", "t1", 10)
        .await
        .expect("delete");
    assert!(
        store.acme_challenges(0).await.expect("list").is_empty(),
        "t1 removed, t2 expired"
    );

    assert!(
        store
            .acme_lease_take("order", "node-a", 100, 200)
            .await
            .expect("take")
    );
    assert!(
        !store
            .acme_lease_take("order", "node-b", 150, 250)
            .await
            .expect("take"),
        "node-a holds it"
    );
    assert!(
        store
            .acme_lease_take("order", "node-a", 150, 300)
            .await
            .expect("extend")
    );
    assert!(
        store
            .acme_lease_take("order", "node-b", 300, 400)
            .await
            .expect("take"),
        "expired"
    );
    store
        .acme_lease_release("order", "node-a")
        .await
        .expect("release");
    assert!(
        !store
            .acme_lease_take("order", "node-a", 310, 400)
            .await
            .expect("take"),
        "not node-a's to release"
    );
    store
        .acme_lease_release("order", "node-b")
        .await
        .expect("release");
    assert!(
        store
            .acme_lease_take("order", "node-a", 310, 400)
            .await
            .expect("take")
    );
}

async fn federated_identities_link_once_and_sync_managed_groups(store: Store) {
    use crate::{FederatedIdentity, FederatedProfile};
    for g in ["admin", "staff", "user"] {
        store
            .create_group(&new_group(g, None))
            .await
            .expect("group");
    }
    let identity = |user_id: &str, subject: &str| FederatedIdentity {
        provider: "corp".into(),
        subject: subject.into(),
        user_id: user_id.into(),
        email: Some("erin@example.com".into()),
        created_at: 10,
        last_used_at: 10,
    };
    let mut new = new_user("corp_erin", &["user"]);
    new.password_hash = None;
    let erin = store
        .create_federated_user(&new, &identity(&new.id, "s-1"))
        .await
        .expect("create");
    assert_eq!(erin.groups, ["user"]);
    // A second first sign-in of the same identity (a race) creates nothing.
    let again = new_user("corp_erin2", &[]);
    let err = store
        .create_federated_user(&again, &identity(&again.id, "s-1"))
        .await
        .expect_err("identity taken");
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    assert!(store.user("corp_erin2").await.expect("read").is_none());
    let found = store
        .federated_identity("corp", "s-1")
        .await
        .expect("read")
        .expect("linked");
    assert_eq!(found.user_id, erin.id);
    assert!(
        store
            .federated_identity("other", "s-1")
            .await
            .expect("read")
            .is_none()
    );

    // Managed groups follow the rules; unmanaged ones (user) are left alone.
    let profile = FederatedProfile {
        attributes: BTreeMap::from([("name".to_owned(), "Erin".to_owned())]),
        managed_groups: vec!["admin".into(), "staff".into(), "gone".into()],
        groups: vec!["ADMIN".into(), "gone".into()],
    };
    store
        .apply_federated_sign_in(&found, &profile, 20)
        .await
        .expect("apply");
    let u = store
        .user_by_id(&erin.id)
        .await
        .expect("read")
        .expect("user");
    assert_eq!(u.groups, ["admin", "user"]);
    assert_eq!(u.attributes.get("name").map(String::as_str), Some("Erin"));
    assert_eq!(u.updated_at, 20);
    let revision = u.revision;
    // The same sign-in again changes nothing about the user.
    store
        .apply_federated_sign_in(&found, &profile, 30)
        .await
        .expect("apply");
    let u = store
        .user_by_id(&erin.id)
        .await
        .expect("read")
        .expect("user");
    assert_eq!((u.revision, u.updated_at), (revision, 20));
    // Removed upstream: removed here.
    let profile = FederatedProfile {
        groups: vec!["staff".into()],
        ..profile
    };
    store
        .apply_federated_sign_in(&found, &profile, 40)
        .await
        .expect("apply");
    let u = store
        .user_by_id(&erin.id)
        .await
        .expect("read")
        .expect("user");
    assert_eq!(u.groups, ["staff", "user"]);
    let ids = store.identities_of(&erin.id).await.expect("list");
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].last_used_at, 40);

    // A second identity links to the same user; only its owner can unlink it.
    let second = FederatedIdentity {
        provider: "other".into(),
        ..identity(&erin.id, "s-9")
    };
    store.link_identity(&second).await.expect("link");
    assert!(matches!(
        store.link_identity(&second).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(
        !store
            .unlink_identity("someone-else", "other", "s-9")
            .await
            .expect("unlink")
    );
    assert!(
        store
            .unlink_identity(&erin.id, "other", "s-9")
            .await
            .expect("unlink")
    );
    assert_eq!(store.identities_of(&erin.id).await.expect("list").len(), 1);
    // Deleting the user forgets its identities.
    store.delete_user("corp_erin", None).await.expect("delete");
    assert!(
        store
            .federated_identity("corp", "s-1")
            .await
            .expect("read")
            .is_none()
    );
}

fn new_user(name: &str, groups: &[&str]) -> NewUser {
    NewUser {
        id: uuid::Uuid::now_v7().to_string(),
        username: name.to_owned(),
        email: Some(format!("{name}@example.com")),
        email_verified: true,
        attributes: BTreeMap::from([("locale".to_owned(), "en".to_owned())]),
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned()),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        password_change_required: false,
        legacy_password: false,
        disabled: false,
        now: 1_700_000_000,
    }
}

fn new_group(name: &str, precedence: Option<i64>) -> NewGroup {
    NewGroup {
        name: name.to_owned(),
        description: format!("the {name}s"),
        precedence,
        now: 1_700_000_000,
    }
}

async fn user_round_trip(store: Store) {
    store
        .create_group(&new_group("user", Some(10)))
        .await
        .expect("group");
    store
        .create_group(&new_group("admin", Some(1)))
        .await
        .expect("group");
    let created = store
        .create_user(&new_user("Alice", &["user", "ADMIN"]))
        .await
        .expect("create");
    assert_eq!(created.username, "Alice");
    assert_eq!(
        created.groups,
        ["admin", "user"],
        "ordered by precedence, canonical names"
    );
    let fetched = store
        .user("alice")
        .await
        .expect("read")
        .expect("found in any case");
    assert_eq!(fetched, created);
    assert_eq!(
        fetched.attributes.get("locale").map(String::as_str),
        Some("en")
    );
    assert!(fetched.email_verified);
    assert_eq!(fetched.status, UserStatus::Enabled);
    let all = store.list_users().await.expect("list");
    assert_eq!(all, vec![created]);
}

async fn usernames_are_unique_in_any_case(store: Store) {
    store
        .create_user(&new_user("bob", &[]))
        .await
        .expect("create");
    for dup in ["bob", "BOB", "Bob"] {
        let err = store
            .create_user(&new_user(dup, &[]))
            .await
            .expect_err("duplicate");
        assert!(
            matches!(err, StoreError::AlreadyExists { kind: "user", .. }),
            "{err}"
        );
    }
    assert_eq!(store.list_users().await.expect("list").len(), 1);
    store
        .create_group(&new_group("staff", None))
        .await
        .expect("group");
    let err = store
        .create_group(&new_group("STAFF", None))
        .await
        .expect_err("duplicate group");
    assert!(
        matches!(err, StoreError::AlreadyExists { kind: "group", .. }),
        "{err}"
    );
}

async fn unknown_group_at_creation_creates_nothing(store: Store) {
    store
        .create_group(&new_group("user", None))
        .await
        .expect("group");
    let err = store
        .create_user(&new_user("carol", &["user", "nope"]))
        .await
        .expect_err("unknown group");
    assert!(
        matches!(err, StoreError::NotFound { kind: "group", .. }),
        "{err}"
    );
    assert!(
        store.user("carol").await.expect("read").is_none(),
        "the insert was rolled back"
    );
    assert_eq!(
        store
            .group("user")
            .await
            .expect("read")
            .expect("group")
            .members,
        0
    );
}

async fn memberships(store: Store) {
    store
        .create_group(&new_group("user", None))
        .await
        .expect("group");
    store
        .create_user(&new_user("dave", &[]))
        .await
        .expect("user");
    assert!(store.add_member("user", "DAVE", 1).await.expect("add"));
    assert!(
        !store
            .add_member("USER", "dave", 1)
            .await
            .expect("add again"),
        "idempotent"
    );
    assert_eq!(
        store.group_members("user").await.expect("members"),
        ["dave"]
    );
    let err = store
        .add_member("user", "nobody", 1)
        .await
        .expect_err("unknown user");
    assert!(
        matches!(err, StoreError::NotFound { kind: "user", .. }),
        "{err}"
    );
    let err = store
        .add_member("ghosts", "dave", 1)
        .await
        .expect_err("unknown group");
    assert!(
        matches!(err, StoreError::NotFound { kind: "group", .. }),
        "{err}"
    );
    let err = store
        .remove_member("ghosts", "dave")
        .await
        .expect_err("unknown group");
    assert!(
        matches!(err, StoreError::NotFound { kind: "group", .. }),
        "{err}"
    );
    assert!(store.remove_member("user", "dave").await.expect("remove"));
    assert!(
        !store
            .remove_member("user", "dave")
            .await
            .expect("remove again")
    );
    assert!(
        store
            .user("dave")
            .await
            .expect("read")
            .expect("user")
            .groups
            .is_empty()
    );
}

async fn deleting_cascades(store: Store) {
    store
        .create_group(&new_group("user", None))
        .await
        .expect("group");
    store
        .create_group(&new_group("admin", None))
        .await
        .expect("group");
    store
        .create_user(&new_user("erin", &["user", "admin"]))
        .await
        .expect("user");
    store
        .create_user(&new_user("frank", &["user"]))
        .await
        .expect("user");
    store.delete_group("admin").await.expect("delete group");
    assert_eq!(
        store
            .user("erin")
            .await
            .expect("read")
            .expect("user")
            .groups,
        ["user"]
    );
    store.delete_user("ERIN", None).await.expect("delete user");
    assert!(store.user("erin").await.expect("read").is_none());
    assert_eq!(
        store.group_members("user").await.expect("members"),
        ["frank"]
    );
    let err = store
        .delete_user("erin", None)
        .await
        .expect_err("already gone");
    assert!(
        matches!(err, StoreError::NotFound { kind: "user", .. }),
        "{err}"
    );
    let err = store.delete_group("admin").await.expect_err("already gone");
    assert!(
        matches!(err, StoreError::NotFound { kind: "group", .. }),
        "{err}"
    );
    let groups = store.list_groups().await.expect("list");
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].members, 1);
}

async fn status_and_password(store: Store) {
    store
        .create_user(&new_user("gina", &[]))
        .await
        .expect("user");
    store
        .set_user_status("gina", UserStatus::Disabled, 5)
        .await
        .expect("disable");
    let gina = store.user("gina").await.expect("read").expect("user");
    assert_eq!(gina.status, UserStatus::Disabled);
    assert_eq!(gina.updated_at, 5);
    store
        .set_password_hash("GINA", "$argon2id$new", false, 6)
        .await
        .expect("password");
    let gina = store.user("gina").await.expect("read").expect("user");
    assert_eq!(gina.password_hash.as_deref(), Some("$argon2id$new"));
    assert!(matches!(
        store
            .set_user_status("nobody", UserStatus::Enabled, 7)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.set_password_hash("nobody", "x", false, 7).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn concurrent_creates_of_one_name_admit_exactly_one(store: Store) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let name = if i % 2 == 0 { "Heidi" } else { "heidi" };
            tokio::spawn(async move { store.create_user(&new_user(name, &[])).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => ok += 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(store.list_users().await.expect("list").len(), 1);
}

async fn first_setting_wins_a_race(store: Store) {
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .setting_get_or_insert("secret", &format!("candidate-{i}"), 1)
                    .await
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.expect("task").expect("setting"));
    }
    seen.dedup();
    assert_eq!(
        seen.len(),
        1,
        "every caller sees the one stored value: {seen:?}"
    );
    assert_eq!(
        store.setting("secret").await.expect("read"),
        Some(seen[0].clone())
    );
    assert_eq!(store.setting("absent").await.expect("read"), None);
}

async fn reopening_keeps_data_and_is_idempotent(store: Store) {
    store
        .create_user(&new_user("ivan", &[]))
        .await
        .expect("user");
    // Run the embedded migrations again on the live database: nothing to do, nothing lost.
    crate::migrate::run(&store)
        .await
        .expect("migrations are idempotent");
    assert!(store.user("ivan").await.expect("read").is_some());
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn sqlite_file_survives_reopen_by_a_second_pool() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shared.db");
    let a = Store::open(&StoreOptions::sqlite(&path))
        .await
        .expect("open a");
    let b = Store::open(&StoreOptions::sqlite(&path))
        .await
        .expect("open b");
    a.create_user(&new_user("judy", &[]))
        .await
        .expect("create via a");
    assert!(b.user("judy").await.expect("read via b").is_some());
    let err = b
        .create_user(&new_user("JUDY", &[]))
        .await
        .expect_err("duplicate via b");
    assert!(matches!(err, StoreError::AlreadyExists { .. }));
}

#[tokio::test]
async fn sqlite_path_under_a_file_is_not_writable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let err = Store::open(&StoreOptions::sqlite(&file.join("db.sqlite")))
        .await
        .expect_err("must fail");
    assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
    assert!(err.to_string().contains("not writable"), "{err}");
    let err = Store::open(&StoreOptions::sqlite(dir.path()))
        .await
        .expect_err("a directory");
    assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
}

#[tokio::test]
async fn unreachable_postgres_fails_fast_naming_the_host() {
    // A port nobody listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let options = StoreOptions {
        url: format!("postgres://u:secretpw@127.0.0.1:{port}/db"),
        ..StoreOptions::sqlite("unused".as_ref())
    };
    let err = Store::open(&options).await.expect_err("refused");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(!msg.contains("secretpw"), "never echo the password: {msg}");

    // A server that accepts and never speaks: the timeout must still fire.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let options = StoreOptions {
        url: format!("postgres://u@127.0.0.1:{port}/db"),
        connect_timeout: Duration::from_millis(800),
        ..StoreOptions::sqlite("unused".as_ref())
    };
    let started = std::time::Instant::now();
    let err = Store::open(&options).await.expect_err("silent server");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

fn client(id: &str, secret: Option<&str>) -> Client {
    Client {
        client_id: id.to_owned(),
        name: format!("{id} app"),
        secret_hash: secret.map(str::to_owned),
        redirect_uris: vec!["https://app.example.com/cb".into()],
        logout_uris: vec![],
        grants: vec!["authorization_code".into(), "refresh_token".into()],
        scopes: vec!["openid".into()],
        access_ttl: 300,
        id_ttl: 300,
        refresh_ttl: 86400,
        id_token_alg: "RS256".into(),
        created_at: 1,
        updated_at: 1,
        revision: 1,
    }
}

async fn clients_and_resource_servers(store: Store) {
    store
        .create_client(&client("spa", None))
        .await
        .expect("create");
    store
        .create_client(&client("backend", Some("abc")))
        .await
        .expect("create");
    let err = store
        .create_client(&client("spa", None))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(
        store.client("spa").await.expect("read"),
        Some(client("spa", None))
    );
    assert!(
        store.set_client_secret("spa", "x", 2).await.is_err(),
        "a public client has no secret to rotate"
    );
    store
        .set_client_secret("backend", "def", 2)
        .await
        .expect("rotate");
    assert_eq!(
        store
            .client("backend")
            .await
            .expect("read")
            .expect("client")
            .secret_hash
            .as_deref(),
        Some("def")
    );
    assert_eq!(store.list_clients().await.expect("list").len(), 2);
    store.delete_client("spa", None).await.expect("delete");
    assert!(store.delete_client("spa", None).await.is_err());
    let rs = ResourceServer {
        identifier: "orders".into(),
        name: "Orders".into(),
        scopes: vec!["read".into(), "admin".into()],
        created_at: 1,
    };
    store.create_resource_server(&rs).await.expect("rs");
    assert!(store.create_resource_server(&rs).await.is_err());
    assert_eq!(store.list_resource_servers().await.expect("list"), vec![rs]);
    store
        .delete_resource_server("orders")
        .await
        .expect("delete");
}

async fn session_for(store: &Store, username: &str) -> (String, Session) {
    let user = store
        .create_user(&new_user(username, &[]))
        .await
        .expect("user");
    let session = Session {
        sid: format!("sid-{username}"),
        user_id: user.id.clone(),
        auth_time: 100,
        created_at: 100,
        expires_at: 100_000,
        revoked_at: None,
        amr: vec!["pwd".into(), "otp".into(), "mfa".into()],
    };
    store
        .create_session(&session, &format!("secret-{username}"))
        .await
        .expect("session");
    (user.id, session)
}

async fn codes_are_single_use_even_when_raced(store: Store) {
    let (user_id, session) = session_for(&store, "kate").await;
    let code = AuthCode {
        code_hash: "c1".into(),
        client_id: "spa".into(),
        user_id,
        sid: session.sid.clone(),
        redirect_uri: "https://app.example.com/cb".into(),
        scope: "openid".into(),
        nonce: Some("n".into()),
        code_challenge: Some("ch".into()),
        auth_time: 100,
        expires_at: 160,
    };
    store.insert_code(&code).await.expect("insert");
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.consume_code("c1", 110).await })
        })
        .collect();
    let mut fresh = 0;
    for t in tasks {
        match t.await.expect("task").expect("consume") {
            CodeUse::Fresh(c) => {
                assert_eq!(c, code);
                fresh += 1;
            }
            CodeUse::Replayed(_) => {}
            CodeUse::Unknown => panic!("the code exists"),
        }
    }
    assert_eq!(fresh, 1, "exactly one redemption wins");
    assert_eq!(
        store.consume_code("nope", 110).await.expect("consume"),
        CodeUse::Unknown
    );
}

async fn refresh_rotation_grace_and_reuse(store: Store) {
    let (user_id, session) = session_for(&store, "liam").await;
    let first = RefreshToken {
        token_hash: "r1".into(),
        family: "f1".into(),
        client_id: "spa".into(),
        user_id,
        sid: session.sid.clone(),
        scope: "openid".into(),
        auth_time: 100,
        created_at: 100,
        expires_at: 10_000,
    };
    store.insert_refresh_token(&first).await.expect("insert");
    let next = |hash: &'static str| {
        move |old: &RefreshToken| RefreshToken {
            token_hash: hash.into(),
            ..old.clone()
        }
    };
    assert!(
        matches!(
            store
                .rotate_refresh_token("r1", "other", next("x"), 200_000, 30_000)
                .await
                .expect("rotate"),
            Rotation::Invalid
        ),
        "another client's token"
    );
    assert!(matches!(
        store
            .rotate_refresh_token("r1", "spa", next("r2"), 200_000, 30_000)
            .await
            .expect("rotate"),
        Rotation::Rotated(_)
    ));
    assert!(
        matches!(
            store
                .rotate_refresh_token("r1", "spa", next("r2b"), 220_000, 30_000)
                .await
                .expect("rotate"),
            Rotation::Grace(_)
        ),
        "parallel use within the grace window"
    );
    assert!(matches!(
        store
            .rotate_refresh_token("r2", "spa", next("r3"), 240_000, 30_000)
            .await
            .expect("rotate"),
        Rotation::Rotated(_)
    ));
    // The first token again, long after: theft. The whole family and the session end.
    assert!(matches!(
        store
            .rotate_refresh_token("r1", "spa", next("x"), 400_000, 30_000)
            .await
            .expect("rotate"),
        Rotation::Reused(_)
    ));
    assert!(matches!(
        store
            .rotate_refresh_token("r3", "spa", next("r4"), 401_000, 30_000)
            .await
            .expect("rotate"),
        Rotation::Invalid
    ));
    assert!(
        store
            .is_revoked("sid", &session.sid, 402)
            .await
            .expect("read")
    );
    assert!(
        store
            .session_by_secret("secret-liam", 402)
            .await
            .expect("read")
            .is_none()
    );
    // A token past its family's absolute lifetime is refused and changes nothing.
    let (_, other) = session_for(&store, "liam2").await;
    let old_family = RefreshToken {
        token_hash: "old".into(),
        family: "f2".into(),
        sid: other.sid.clone(),
        expires_at: 1_000,
        ..first.clone()
    };
    store
        .insert_refresh_token(&old_family)
        .await
        .expect("insert");
    assert!(matches!(
        store
            .rotate_refresh_token("old", "spa", next("x2"), 1_000_000, 30_000)
            .await
            .expect("rotate"),
        Rotation::Invalid
    ));
    assert!(store.refresh_token("x2").await.expect("read").is_none());
    assert!(matches!(
        store
            .rotate_refresh_token("zzz", "spa", next("x"), 401_000, 30_000)
            .await
            .expect("rotate"),
        Rotation::Unknown
    ));
    let revs = store.revocations_since(0, 402).await.expect("read");
    assert!(
        revs.iter()
            .any(|(k, v, _, _)| k == "sid" && v == &session.sid)
    );
}

/// The grace window is measured in milliseconds: a rotated token works for exactly `grace`, and
/// at a grace of 0 even a replay in the same millisecond is reuse.
async fn refresh_grace_is_exact_to_the_millisecond(store: Store) {
    let next = |hash: String| {
        move |old: &RefreshToken| RefreshToken {
            token_hash: hash,
            ..old.clone()
        }
    };
    for (n, (grace_ms, replay_after_ms, reused)) in [
        (0, 0, true),
        (0, 999, true),
        (1_000, 900, false),
        (1_000, 1_000, true),
        (1_000, 1_100, true),
    ]
    .into_iter()
    .enumerate()
    {
        let (user_id, session) = session_for(&store, &format!("grace{n}")).await;
        let hash = format!("g{n}");
        store
            .insert_refresh_token(&RefreshToken {
                token_hash: hash.clone(),
                family: format!("gf{n}"),
                client_id: "spa".into(),
                user_id,
                sid: session.sid.clone(),
                scope: "openid".into(),
                auth_time: 100,
                created_at: 100,
                expires_at: 10_000,
            })
            .await
            .expect("insert");
        // Rotated 400 ms into second 200, so a whole-second clock would see the same second.
        let rotated = 200_400;
        assert!(matches!(
            store
                .rotate_refresh_token(&hash, "spa", next(format!("{hash}-1")), rotated, grace_ms)
                .await
                .expect("rotate"),
            Rotation::Rotated(_)
        ));
        let replay = store
            .rotate_refresh_token(
                &hash,
                "spa",
                next(format!("{hash}-2")),
                rotated + replay_after_ms,
                grace_ms,
            )
            .await
            .expect("rotate");
        assert_eq!(
            matches!(replay, Rotation::Reused(_)),
            reused,
            "grace {grace_ms} ms, replay after {replay_after_ms} ms: {replay:?}"
        );
    }
}

async fn revoking_a_user_ends_every_session(store: Store) {
    let (user_id, session) = session_for(&store, "mia").await;
    let second = Session {
        sid: "sid-mia-2".into(),
        ..session.clone()
    };
    store
        .create_session(&second, "secret-mia-2")
        .await
        .expect("session");
    let third = Session {
        sid: "sid-mia-3".into(),
        ..session.clone()
    };
    store
        .create_session(&third, "secret-mia-3")
        .await
        .expect("session");
    let live = store.user_sessions(&user_id, 150).await.expect("list");
    assert_eq!(live.len(), 3, "{live:?}");
    // Signing out of the others keeps the one the user acts from.
    assert_eq!(
        store
            .revoke_other_sessions(&user_id, "sid-mia-3", 400)
            .await
            .expect("revoke"),
        2
    );
    let live = store.user_sessions(&user_id, 450).await.expect("list");
    assert_eq!(
        live.iter().map(|(s, _)| s.sid.as_str()).collect::<Vec<_>>(),
        ["sid-mia-3"]
    );
    assert!(
        store
            .is_revoked("sid", "sid-mia-2", 401)
            .await
            .expect("read")
    );
    assert_eq!(
        store
            .revoke_user_sessions(&user_id, 500)
            .await
            .expect("revoke"),
        1
    );
    assert!(store.is_revoked("sid", "sid-mia", 501).await.expect("read"));
    assert!(
        store
            .is_revoked("sid", "sid-mia-2", 501)
            .await
            .expect("read")
    );
    assert_eq!(
        store
            .revoke_user_sessions(&user_id, 502)
            .await
            .expect("again"),
        0
    );
    store.revoke_jti("jti-1", 600, 500).await.expect("jti");
    assert!(store.is_revoked("jti", "jti-1", 599).await.expect("read"));
    assert!(
        !store.is_revoked("jti", "jti-1", 600).await.expect("read"),
        "forgotten once the token has expired"
    );
}

async fn login_failures_lock_with_doubling_delay(store: Store) {
    let mut locks = Vec::new();
    for _ in 0..8 {
        locks.push(
            store
                .record_login_failure("nina", 1000, 5, 1, 900)
                .await
                .expect("record"),
        );
    }
    assert_eq!(locks, [0, 0, 0, 0, 1001, 1002, 1004, 1008]);
    assert_eq!(store.login_locked_until("nina").await.expect("read"), 1008);
    store.clear_login_failures("nina").await.expect("clear");
    assert_eq!(store.login_locked_until("nina").await.expect("read"), 0);
}

async fn signing_keys_publish_and_retire(store: Store) {
    let key = |kid: &str, activate_at| StoredKey {
        kid: kid.into(),
        alg: "ES256".into(),
        purpose: "access".into(),
        sealed: "v1.x.y.z".into(),
        public_jwk: "{}".into(),
        created_at: 1,
        activate_at,
        retire_at: None,
    };
    let v0 = store.signing_keys_version().await.expect("version");
    store
        .insert_signing_key(&key("a", 10))
        .await
        .expect("insert");
    store
        .insert_signing_key(&key("b", 20))
        .await
        .expect("insert");
    let v1 = store.signing_keys_version().await.expect("version");
    assert_ne!(v0, v1);
    store.retire_signing_key("a", 50).await.expect("retire");
    assert_ne!(store.signing_keys_version().await.expect("version"), v1);
    let kids = |keys: Vec<StoredKey>| keys.into_iter().map(|k| k.kid).collect::<Vec<_>>();
    assert_eq!(
        kids(store.signing_keys(49).await.expect("read")),
        ["a", "b"]
    );
    assert_eq!(kids(store.signing_keys(50).await.expect("read")), ["b"]);
}

async fn policy_versions(store: Store) {
    assert_eq!(store.policy_version().await.expect("v"), 0);
    assert_eq!(
        store
            .add_policy_version("a", "seed", 1, true)
            .await
            .expect("seed"),
        Some(1)
    );
    assert_eq!(
        store
            .add_policy_version("ignored", "seed", 2, true)
            .await
            .expect("seed"),
        None,
        "seeded only once"
    );
    assert_eq!(
        store
            .add_policy_version("b", "edit", 3, false)
            .await
            .expect("edit"),
        Some(2)
    );
    let current = store.current_policy().await.expect("read").expect("some");
    assert_eq!((current.version, current.document.as_str()), (2, "b"));
    assert_eq!(
        store
            .policy_at(1)
            .await
            .expect("read")
            .expect("v1")
            .document,
        "a"
    );
    let history: Vec<i64> = store
        .policy_history()
        .await
        .expect("history")
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(history, [2, 1]);
}
