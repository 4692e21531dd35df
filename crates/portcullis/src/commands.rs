//! The administrative commands: users, groups, configuration and store checks.
//! Human-readable output by default, one JSON document with `--json`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use portcullis_idp::AddUser;
use portcullis_store::{Group, User};
use portcullis_token::Secret;
use serde_json::json;

use crate::app::Admin;
use crate::failure::Failure;
use crate::{
    AuditCommand, ClientCommand, GroupCommand, KeysCommand, PolicyCommand, ResourceServerCommand,
    UserCommand, config,
};

/// Reads a password from standard input: everything up to EOF, minus one trailing newline.
fn password_from_stdin() -> Result<Secret<String>, Failure> {
    let mut raw = Vec::new();
    // Bounded: a password longer than this is refused by any policy anyway.
    std::io::stdin()
        .take(64 * 1024)
        .read_to_end(&mut raw)
        .map_err(|e| Failure::user(format!("cannot read the password from standard input: {e}")))?;
    let mut text = String::from_utf8(raw)
        .map_err(|_| Failure::user("the password on standard input is not valid UTF-8"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(Failure::user(
            "--password-stdin was given but standard input was empty; pipe the password in, e.g. `printf '%s' \"$PW\" | portcullis user add NAME --password-stdin`",
        ));
    }
    Ok(Secret::new(text))
}

fn parse_attributes(pairs: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Failure::user(format!(
                "--attr {pair:?}: expected NAME=VALUE"
            )));
        };
        if map.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(Failure::user(format!("--attr {k:?} is given twice")));
        }
    }
    Ok(map)
}

fn account_failure(e: portcullis_idp::AccountError) -> Failure {
    match e {
        portcullis_idp::AccountError::Pool(e) => e.into(),
        portcullis_idp::AccountError::Store(e) => e.into(),
        e if e.is_user_error() => Failure::user(e.to_string()),
        e => Failure::internal(e.to_string()),
    }
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn user_json(user: &User) -> serde_json::Value {
    json!({
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "email_verified": user.email_verified,
        "status": user.status,
        "password_set": user.password_hash.is_some(),
        "password_change_required": user.password_change_required,
        "groups": user.groups,
        "attributes": user.attributes,
        "created_at": rfc3339(user.created_at),
        "updated_at": rfc3339(user.updated_at),
    })
}

fn group_json(group: &Group) -> serde_json::Value {
    json!({
        "name": group.name,
        "description": group.description,
        "precedence": group.precedence,
        "members": group.members,
        "created_at": rfc3339(group.created_at),
    })
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn print_user(user: &User) {
    println!("username:       {}", user.username);
    println!("id:             {}", user.id);
    println!("email:          {}", user.email.as_deref().unwrap_or("-"));
    println!(
        "email verified: {}",
        if user.email_verified { "yes" } else { "no" }
    );
    println!(
        "status:         {}",
        if user.status == portcullis_store::UserStatus::Enabled {
            "enabled"
        } else {
            "disabled"
        }
    );
    println!(
        "groups:         {}",
        if user.groups.is_empty() {
            "-".to_owned()
        } else {
            user.groups.join(", ")
        }
    );
    for (k, v) in &user.attributes {
        println!("attribute:      {k}={v}");
    }
    println!("created:        {}", rfc3339(user.created_at));
    println!("updated:        {}", rfc3339(user.updated_at));
}

fn announce_password(username: &str, password: &Secret<String>) {
    println!(
        "password for {username} (shown once; it is stored only as a hash): {}",
        password.expose()
    );
}

async fn user_inner(app: &Admin, cmd: UserCommand, json: bool) -> Result<(), Failure> {
    let pool = &app.pool;
    match cmd {
        UserCommand::Add {
            username,
            email,
            email_verified,
            attributes,
            groups,
            password_stdin,
            temporary,
            invite,
        } => {
            let password = if password_stdin {
                Some(password_from_stdin()?)
            } else {
                None
            };
            // Checked before the user exists, so a refused invitation leaves nothing behind.
            let accounts = if invite {
                let accounts = app.accounts().await?;
                if !accounts.settings().accounts.mail {
                    return Err(Failure::user(
                        "--invite mails a link: set mail.transport first (docs/accounts.md)",
                    ));
                }
                Some(accounts)
            } else {
                None
            };
            let req = AddUser {
                username,
                email,
                email_verified,
                attributes: parse_attributes(&attributes)?,
                groups,
                password,
                temporary_password: temporary,
                no_password: invite,
            };
            let (user, generated) = pool.add_user(req).await?;
            if let Some(accounts) = accounts {
                accounts
                    .invite(&user.username, &portcullis_idp::audit::Actor::cli())
                    .await
                    .map_err(account_failure)?;
            }
            if json {
                let mut doc = user_json(&user);
                if let Some(pw) = &generated {
                    doc["password"] = json!(pw.expose());
                }
                print_json(&doc);
            } else {
                println!("added user {}", user.username);
                if let Some(pw) = &generated {
                    announce_password(&user.username, pw);
                }
                if invite {
                    println!(
                        "invitation queued for {}; the running server's mail worker sends it",
                        user.email.as_deref().unwrap_or_default()
                    );
                }
            }
        }
        UserCommand::List => {
            let users = pool.list_users().await?;
            if json {
                print_json(&json!(users.iter().map(user_json).collect::<Vec<_>>()));
            } else if users.is_empty() {
                println!("no users yet; add one with `portcullis user add NAME`");
            } else {
                println!("{:<32} {:<9} {:<32} GROUPS", "USERNAME", "STATUS", "EMAIL");
                for u in &users {
                    let status = if u.status == portcullis_store::UserStatus::Enabled {
                        "enabled"
                    } else {
                        "disabled"
                    };
                    println!(
                        "{:<32} {:<9} {:<32} {}",
                        u.username,
                        status,
                        u.email.as_deref().unwrap_or("-"),
                        u.groups.join(",")
                    );
                }
            }
        }
        UserCommand::Show { username } => {
            let user = pool.user(&username).await?;
            let identities = app.store.identities_of(&user.id).await?;
            if json {
                let mut doc = user_json(&user);
                doc["identities"] = identities
                    .iter()
                    .map(|i| {
                        json!({
                            "provider": i.provider,
                            "subject": i.subject,
                            "email": i.email,
                            "linked_at": rfc3339(i.created_at),
                            "last_used_at": rfc3339(i.last_used_at),
                        })
                    })
                    .collect();
                print_json(&doc)
            } else {
                print_user(&user);
                for i in &identities {
                    println!(
                        "signs in with:  {} ({}){}",
                        i.provider,
                        i.subject,
                        i.email
                            .as_deref()
                            .map(|e| format!(", {e}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        UserCommand::Unlink { username, provider } => {
            let user = pool.user(&username).await?;
            let mut unlinked = 0;
            for i in app.store.identities_of(&user.id).await? {
                if i.provider == provider
                    && app
                        .store
                        .unlink_identity(&user.id, &i.provider, &i.subject)
                        .await?
                {
                    unlinked += 1;
                }
            }
            if unlinked == 0 {
                return Err(Failure::user(format!(
                    "{username} has no identity at {provider:?} (`user show {username}` lists them)"
                )));
            }
            done(json, &format!("unlinked {username} from {provider}"));
        }
        UserCommand::Delete { username } => {
            pool.delete_user(&username, None).await?;
            done(json, &format!("deleted user {username}"));
        }
        UserCommand::Import { file, groups } => {
            let read = |p: &Path| {
                std::fs::read_to_string(p)
                    .map_err(|e| Failure::user(format!("cannot read {}: {e}", p.display())))
            };
            let export = read(&file)?;
            let groups = groups.as_deref().map(read).transpose()?;
            let entries =
                crate::import::parse(&export, groups.as_deref()).map_err(Failure::user)?;
            let started = std::time::Instant::now();
            let (mut created, mut unchanged) = (0, 0);
            let mut skipped = Vec::new();
            for entry in entries {
                match entry {
                    crate::import::Entry::Invalid { username, reason } => {
                        skipped.push((username, reason));
                    }
                    crate::import::Entry::User(u) => {
                        let username = u.username.clone();
                        match pool.import_user(*u).await? {
                            portcullis_idp::Imported::Created => created += 1,
                            portcullis_idp::Imported::Unchanged => unchanged += 1,
                            portcullis_idp::Imported::Skipped(reason) => {
                                skipped.push((username, reason));
                            }
                        }
                    }
                }
            }
            if json {
                print_json(&json!({
                    "created": created,
                    "unchanged": unchanged,
                    "skipped": skipped.iter().map(|(u, r)| json!({ "username": u, "reason": r })).collect::<Vec<_>>(),
                    "seconds": started.elapsed().as_secs_f64(),
                }));
            } else {
                println!(
                    "imported {created} users, {unchanged} already there, {} skipped ({:.1} s)",
                    skipped.len(),
                    started.elapsed().as_secs_f64()
                );
                for (u, r) in &skipped {
                    println!("  skipped {u:?}: {r}");
                }
                if created > 0 {
                    println!(
                        "imported users have no password yet: they sign in through idp.legacy_verifier_url, or reset it"
                    );
                }
            }
        }
        UserCommand::ResetMfa { username } => {
            let user = pool.user(&username).await?;
            let removed = app.store.reset_mfa(&user.id).await?
                | (app.store.remove_credentials(&user.id).await? > 0);
            pool.end_sessions(&username).await?;
            done(
                json,
                &if removed {
                    format!("removed the second factors of {username} and ended their sessions")
                } else {
                    format!("{username} had no second factor; their sessions were ended")
                },
            );
        }
        UserCommand::Invite { username } => {
            let accounts = app.accounts().await?;
            accounts
                .invite(&username, &portcullis_idp::audit::Actor::cli())
                .await
                .map_err(account_failure)?;
            done(json, &format!("invitation queued for {username}"));
        }
        UserCommand::SetPassword {
            username,
            password_stdin,
            temporary,
        } => {
            let password = if password_stdin {
                Some(password_from_stdin()?)
            } else {
                None
            };
            let generated = pool.set_password(&username, password, temporary).await?;
            if json {
                print_json(
                    &json!({ "ok": true, "password": generated.as_ref().map(|p| p.expose().clone()) }),
                );
            } else {
                println!("password changed for {username}");
                if let Some(pw) = &generated {
                    announce_password(&username, pw);
                }
            }
        }
        UserCommand::Disable { username } => {
            pool.set_enabled(&username, false).await?;
            done(json, &format!("disabled user {username}"));
        }
        UserCommand::Enable { username } => {
            pool.set_enabled(&username, true).await?;
            done(json, &format!("enabled user {username}"));
        }
    }
    Ok(())
}

/// `mail status`: what the outbox holds.
pub async fn mail_status(app: &Admin, json: bool) -> Result<(), Failure> {
    let c = app.store.outbox_counts().await?;
    if json {
        print_json(&json!({
            "transport": format!("{:?}", app.config.mail.transport).to_lowercase(),
            "pending": c.pending,
            "retrying": c.retrying,
            "sent": c.sent,
            "failed": c.failed,
        }));
    } else {
        println!(
            "transport: {}",
            format!("{:?}", app.config.mail.transport).to_lowercase()
        );
        println!(
            "pending:   {} ({} waiting for a retry)",
            c.pending, c.retrying
        );
        println!("sent:      {} (kept 7 days)", c.sent);
        println!("given up:  {} (kept 7 days; see the server log)", c.failed);
    }
    Ok(())
}

async fn group_inner(app: &Admin, cmd: GroupCommand, json: bool) -> Result<(), Failure> {
    let pool = &app.pool;
    match cmd {
        GroupCommand::Add {
            name,
            description,
            precedence,
        } => {
            let group = pool.add_group(&name, &description, precedence).await?;
            if json {
                print_json(&group_json(&group))
            } else {
                println!("added group {}", group.name)
            }
        }
        GroupCommand::List => {
            let groups = pool.list_groups().await?;
            if json {
                print_json(&json!(groups.iter().map(group_json).collect::<Vec<_>>()));
            } else if groups.is_empty() {
                println!("no groups yet; add one with `portcullis group add NAME`");
            } else {
                println!(
                    "{:<24} {:>10} {:>8}  DESCRIPTION",
                    "NAME", "PRECEDENCE", "MEMBERS"
                );
                for g in &groups {
                    let p = g
                        .precedence
                        .map_or_else(|| "-".to_owned(), |p| p.to_string());
                    println!(
                        "{:<24} {:>10} {:>8}  {}",
                        g.name, p, g.members, g.description
                    );
                }
            }
        }
        GroupCommand::Delete { name } => {
            pool.delete_group(&name).await?;
            done(json, &format!("deleted group {name}"));
        }
        GroupCommand::AddMember { group, username } => {
            let added = pool.add_member(&group, &username).await?;
            let msg = if added {
                format!("added {username} to {group}")
            } else {
                format!("{username} was already in {group}")
            };
            if json {
                print_json(&json!({ "ok": true, "changed": added }))
            } else {
                println!("{msg}")
            }
        }
        GroupCommand::RemoveMember { group, username } => {
            let removed = pool.remove_member(&group, &username).await?;
            let msg = if removed {
                format!("removed {username} from {group}")
            } else {
                format!("{username} was not in {group}")
            };
            if json {
                print_json(&json!({ "ok": true, "changed": removed }))
            } else {
                println!("{msg}")
            }
        }
    }
    Ok(())
}

fn done(json: bool, message: &str) {
    if json {
        print_json(&json!({ "ok": true }));
    } else {
        println!("{message}");
    }
}

/// `config check`: exit 0 and a summary, or exit 1 and every error.
pub fn config_check(file: Option<&Path>, json: bool) -> Result<(), Failure> {
    let path = file
        .map(Path::to_path_buf)
        .or_else(|| Some("portcullis.toml".into()).filter(|p: &std::path::PathBuf| p.is_file()));
    let text = match &path {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| Failure::user(format!("cannot read {}: {e}", p.display())))?,
        ),
        None => None,
    };
    match config::load(path.as_deref(), text.as_deref(), &config::Env::process()) {
        Ok(c) => {
            let source = c.source.as_ref().map_or_else(
                || "defaults and environment".to_owned(),
                |p| p.display().to_string(),
            );
            if json {
                print_json(&json!({ "ok": true, "source": source, "errors": [] }));
            } else {
                println!("{source}: configuration is valid");
                println!("  store:  {}", redact_url(&c.store.url));
                println!("  listen: {}", c.listen);
            }
            Ok(())
        }
        Err(errors) => {
            if json {
                let list: Vec<_> = errors
                    .0
                    .iter()
                    .map(|e| json!({ "location": e.location, "key": e.key, "message": e.message }))
                    .collect();
                print_json(&json!({ "ok": false, "errors": list }));
                Err(Failure::user(format!(
                    "{} configuration error(s)",
                    errors.0.len()
                )))
            } else {
                Err(errors.into())
            }
        }
    }
}

/// A store URL without its password.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("<redacted>"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// After `config apply`: what the store now holds of the declared configuration.
pub async fn config_applied(app: &crate::app::App, json: bool) -> Result<(), Failure> {
    let clients = app.config.clients.len();
    let servers = app.config.resource_servers.len();
    let policy = app.store.policy_version().await?;
    if json {
        print_json(&json!({
            "clients": clients,
            "resource_servers": servers,
            "policy_version": policy,
        }));
    } else {
        println!(
            "declared configuration applied: {clients} client(s), {servers} resource server(s); policy version in force: {policy}"
        );
    }
    Ok(())
}

pub async fn store_check(app: &Admin, json: bool) -> Result<(), Failure> {
    app.store.integrity_check().await?;
    let counts = (
        app.pool.list_users().await?.len(),
        app.pool.list_groups().await?.len(),
    );
    if json {
        print_json(
            &json!({ "ok": true, "location": app.store.location(), "users": counts.0, "groups": counts.1 }),
        );
    } else {
        println!(
            "{}: ok ({} users, {} groups)",
            app.store.location(),
            counts.0,
            counts.1
        );
    }
    Ok(())
}

pub async fn store_copy(app: &Admin, to: &str, json: bool) -> Result<(), Failure> {
    let options = portcullis_store::StoreOptions {
        url: to.to_owned(),
        ..app.config.store.clone()
    };
    let target = portcullis_store::Store::open(&options).await?;
    if target.location() == app.store.location() {
        return Err(Failure::user(format!(
            "--to names the store itself ({}); give another database",
            target.location()
        )));
    }
    let counts = app.store.copy_into(&target).await?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if json {
        print_json(&json!({
            "from": app.store.location(),
            "to": target.location(),
            "rows": total,
            "tables": counts.iter().map(|(t, n)| (t.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        }));
    } else {
        for (table, n) in &counts {
            println!("{table:<24} {n:>10}");
        }
        println!(
            "copied {total} rows from {} to {}, every table counted on both sides. Point store.url at the new database (with the same instance secret, if one is configured) and restart.",
            app.store.location(),
            target.location()
        );
    }
    target.close().await;
    Ok(())
}

pub async fn store_backup(app: &Admin, file: &std::path::Path, json: bool) -> Result<(), Failure> {
    let bytes = app.store.backup_to(file).await?;
    if json {
        print_json(&json!({ "file": file.display().to_string(), "bytes": bytes }));
    } else {
        println!(
            "backed up {} to {} ({bytes} bytes). To restore, stop portcullis and point store.url at that file (or copy it over the database, removing the -wal and -shm files beside it).",
            app.store.location(),
            file.display()
        );
    }
    Ok(())
}

fn client_json(c: &portcullis_store::Client) -> serde_json::Value {
    json!({
        "client_id": c.client_id,
        "name": c.name,
        "type": if c.is_confidential() { "confidential" } else { "public" },
        "redirect_uris": c.redirect_uris,
        "logout_uris": c.logout_uris,
        "grants": c.grants,
        "scopes": c.scopes,
        "access_ttl": c.access_ttl,
        "id_ttl": c.id_ttl,
        "refresh_ttl": c.refresh_ttl,
        "id_token_alg": c.id_token_alg,
        "created_at": rfc3339(c.created_at),
    })
}

fn client_error(e: portcullis_idp::ClientError) -> Failure {
    if e.is_user_error() {
        Failure::user(e.to_string())
    } else {
        Failure::internal(e.to_string())
    }
}

async fn client_inner(app: &Admin, cmd: ClientCommand, json: bool) -> Result<(), Failure> {
    let store = &app.store;
    if let ClientCommand::Update { client_id, .. }
    | ClientCommand::Delete { client_id }
    | ClientCommand::RotateSecret { client_id } = &cmd
        && app.config.clients.iter().any(|c| &c.id == client_id)
    {
        return Err(Failure::user(format!(
            "client {client_id:?} is declared in the configuration file ([[clients]]), which is applied at every start; change it there"
        )));
    }
    match cmd {
        ClientCommand::Add {
            name,
            id,
            confidential,
            redirect_uris,
            logout_uris,
            grants,
            scopes,
            access_ttl,
            id_ttl,
            refresh_ttl,
            id_token_alg,
        } => {
            let req = portcullis_idp::NewClient {
                client_id: id,
                name,
                confidential,
                redirect_uris,
                logout_uris,
                grants,
                scopes,
                access_ttl,
                id_ttl,
                refresh_ttl,
                id_token_alg,
                secret: None,
                allow_insecure_http: false,
            };
            let (client, secret) = app
                .provider()
                .await?
                .create_client(req)
                .await
                .map_err(client_error)?;
            if json {
                let mut doc = client_json(&client);
                if let Some(s) = &secret {
                    doc["client_secret"] = json!(s.expose());
                }
                print_json(&doc);
            } else {
                println!("added client {} ({})", client.client_id, client.name);
                if let Some(s) = &secret {
                    println!(
                        "client secret (shown once; it is stored only as a digest): {}",
                        s.expose()
                    );
                }
            }
        }
        ClientCommand::List => {
            let clients = store.list_clients().await?;
            if json {
                print_json(&json!(clients.iter().map(client_json).collect::<Vec<_>>()));
            } else if clients.is_empty() {
                println!(
                    "no clients yet; add one with `portcullis client add NAME --redirect-uri URI`"
                );
            } else {
                println!("{:<28} {:<13} {:<28} GRANTS", "CLIENT ID", "TYPE", "NAME");
                for c in &clients {
                    let kind = if c.is_confidential() {
                        "confidential"
                    } else {
                        "public"
                    };
                    println!(
                        "{:<28} {:<13} {:<28} {}",
                        c.client_id,
                        kind,
                        c.name,
                        c.grants.join(",")
                    );
                }
            }
        }
        ClientCommand::Show { client_id } => {
            let c = store
                .client(&client_id)
                .await?
                .ok_or_else(|| Failure::user(format!("client {client_id:?} does not exist")))?;
            print_json(&client_json(&c));
        }
        ClientCommand::Update {
            client_id,
            name,
            redirect_uris,
            logout_uris,
            grants,
            scopes,
            access_ttl,
            id_ttl,
            refresh_ttl,
            id_token_alg,
        } => {
            let given = |v: Vec<String>| (!v.is_empty()).then_some(v);
            let changes = portcullis_idp::ClientChanges {
                name,
                redirect_uris: given(redirect_uris),
                logout_uris: given(logout_uris),
                grants: given(grants),
                scopes: given(scopes),
                access_ttl,
                id_ttl,
                refresh_ttl,
                id_token_alg,
            };
            let client = app
                .provider()
                .await?
                .update_client(&client_id, &changes, None, false)
                .await
                .map_err(client_error)?;
            if json {
                print_json(&client_json(&client));
            } else {
                println!("updated client {} ({})", client.client_id, client.name);
            }
        }
        ClientCommand::Delete { client_id } => {
            store.delete_client(&client_id, None).await?;
            done(json, &format!("deleted client {client_id}"));
        }
        ClientCommand::RotateSecret { client_id } => {
            let secret = app
                .provider()
                .await?
                .rotate_client_secret(&client_id)
                .await
                .map_err(client_error)?;
            if json {
                print_json(&json!({ "client_id": client_id, "client_secret": secret.expose() }));
            } else {
                println!(
                    "new client secret for {client_id} (shown once): {}",
                    secret.expose()
                );
            }
        }
    }
    Ok(())
}

fn valid_scope_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
}

async fn resource_server_inner(
    app: &Admin,
    cmd: ResourceServerCommand,
    json: bool,
) -> Result<(), Failure> {
    let store = &app.store;
    match cmd {
        ResourceServerCommand::Add {
            identifier,
            name,
            scopes,
        } => {
            if !valid_scope_name(&identifier) {
                return Err(Failure::user(
                    "a resource-server identifier is 1-64 ASCII letters, digits or `- . _ :`",
                ));
            }
            if let Some(bad) = scopes.iter().find(|s| !valid_scope_name(s)) {
                return Err(Failure::user(format!(
                    "scope {bad:?}: a scope name is 1-64 ASCII letters, digits or `- . _ :`"
                )));
            }
            let rs = portcullis_store::ResourceServer {
                identifier,
                name,
                scopes,
                created_at: app.clock.now(),
            };
            store.create_resource_server(&rs).await?;
            let full: Vec<String> = rs
                .scopes
                .iter()
                .map(|s| format!("{}/{s}", rs.identifier))
                .collect();
            if json {
                print_json(&json!({ "identifier": rs.identifier, "scopes": full }))
            } else {
                println!(
                    "added resource server {} with scopes {}",
                    rs.identifier,
                    full.join(" ")
                )
            }
        }
        ResourceServerCommand::List => {
            let list = store.list_resource_servers().await?;
            if json {
                print_json(&json!(list));
            } else {
                for rs in &list {
                    println!(
                        "{:<24} {}",
                        rs.identifier,
                        rs.scopes
                            .iter()
                            .map(|s| format!("{}/{s}", rs.identifier))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                }
            }
        }
        ResourceServerCommand::Delete { identifier } => {
            store.delete_resource_server(&identifier).await?;
            done(json, &format!("deleted resource server {identifier}"));
        }
    }
    Ok(())
}

async fn keys_inner(app: &Admin, cmd: KeysCommand, json: bool) -> Result<(), Failure> {
    let provider = app.provider().await?;
    let now = provider.now();
    let ring = provider.keys();
    if let KeysCommand::Rotate = cmd {
        let new = ring
            .rotate(now)
            .await
            .map_err(|e| Failure::internal(e.to_string()))?;
        if !json {
            println!(
                "published new keys {}; they start signing in {}",
                new.join(", "),
                humantime::format_duration(std::time::Duration::from_secs(
                    app.config.idp.key_rotation_delay.max(0) as u64
                ))
            );
        }
    }
    let keys = ring
        .list(now)
        .await
        .map_err(|e| Failure::internal(e.to_string()))?;
    let state = |k: &portcullis_store::StoredKey| match (k.activate_at <= now, k.retire_at) {
        (false, _) => "next",
        (true, Some(_)) => "retiring",
        (true, None) => "active",
    };
    if json {
        print_json(&json!(
            keys.iter()
                .map(|k| json!({
                    "kid": k.kid, "alg": k.alg, "purpose": k.purpose, "state": state(k),
                    "activate_at": rfc3339(k.activate_at), "retire_at": k.retire_at.map(rfc3339),
                }))
                .collect::<Vec<_>>()
        ));
    } else {
        println!(
            "{:<18} {:<6} {:<7} {:<9} {:<22} RETIRES",
            "KID", "ALG", "FOR", "STATE", "SIGNS FROM"
        );
        for k in &keys {
            println!(
                "{:<18} {:<6} {:<7} {:<9} {:<22} {}",
                k.kid,
                k.alg,
                k.purpose,
                state(k),
                rfc3339(k.activate_at),
                k.retire_at.map(rfc3339).unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(())
}

async fn set_policy(app: &Admin, file: &Path, comment: &str, json: bool) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::user(format!("cannot read {}: {e}", file.display())))?;
    let docs = portcullis_policy::parse_file(&text)
        .map_err(|e| Failure::user(format!("{}: {e}", file.display())))?;
    // Stored in the canonical file format, so `show` and `export` print what is in force.
    let canonical = portcullis_policy::export(&docs);
    let comment = if comment.is_empty() {
        format!("set from {}", file.display())
    } else {
        comment.to_owned()
    };
    let version = app
        .store
        .add_policy_version(&canonical, &comment, app.clock.now(), false)
        .await?
        .unwrap_or_default();
    if json {
        print_json(&json!({ "version": version }))
    } else {
        println!(
            "policy version {version} is in force ({} documents)",
            docs.len()
        )
    }
    Ok(())
}

/// The access matrix: for each route (or, without routes, each path the documents mention) and
/// method, what each principal's document decides — `allow`, `deny`, `allow if <condition>` or
/// `public`. The CLI's `policy matrix` and the admin API share it.
pub(crate) fn access_matrix(
    routes: &portcullis_gateway::route::RouteTable,
    docs: &[portcullis_policy::PolicyDocument],
    version: i64,
) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let set = portcullis_policy::PolicySet::new(docs.to_vec(), version);
    let principals: Vec<portcullis_policy::Principal> =
        docs.iter().map(|d| d.principal.clone()).collect();
    let mut targets: Vec<(String, Vec<String>, bool)> = routes
        .routes()
        .iter()
        .map(|r| {
            (
                r.pattern.as_str().to_owned(),
                r.methods.clone(),
                r.kind == portcullis_gateway::settings::RouteKind::Public,
            )
        })
        .collect();
    if targets.is_empty() {
        for d in docs {
            for st in &d.statements {
                for p in &st.paths {
                    if !targets.iter().any(|(t, _, _)| t == p.as_str()) {
                        targets.push((p.as_str().to_owned(), Vec::new(), false));
                    }
                }
            }
        }
    }
    let mut rows = Vec::new();
    for (pattern, route_methods, public) in &targets {
        let path = sample_path(pattern);
        let methods = if route_methods.is_empty() {
            vec!["GET".to_owned(), "POST".to_owned(), "DELETE".to_owned()]
        } else {
            route_methods.clone()
        };
        for m in methods {
            let cells: Vec<String> = principals
                .iter()
                .map(|p| {
                    if *public {
                        return "public".to_owned();
                    }
                    let d = set.decide(&principal_row(p), &m, &path);
                    match d.reason {
                        _ if d.allowed => "allow".to_owned(),
                        portcullis_policy::Reason::ConditionFailed { condition, .. } => {
                            format!("allow if {condition}")
                        }
                        _ => "deny".to_owned(),
                    }
                })
                .collect();
            rows.push((format!("{m} {pattern}"), cells));
        }
    }
    (principals.iter().map(ToString::to_string).collect(), rows)
}

fn principal_row(p: &portcullis_policy::Principal) -> Vec<portcullis_policy::Principal> {
    vec![p.clone(), portcullis_policy::Principal::Authenticated]
}

/// A concrete path a route pattern covers, for the matrix: `**` dropped, `*` as `x`.
fn sample_path(pattern: &str) -> String {
    let p = pattern.trim_end_matches("/**").replace("/*/", "/x/");
    let p = p.strip_suffix("/*").map(|s| format!("{s}/x")).unwrap_or(p);
    if p.is_empty() { "/".into() } else { p }
}

async fn policy_inner(app: &Admin, cmd: PolicyCommand, json: bool) -> Result<(), Failure> {
    let store = &app.store;
    let current = || async {
        let v = store.current_policy().await?;
        let docs = match &v {
            Some(v) => portcullis_policy::parse_file(&v.document).map_err(|e| {
                Failure::internal(format!(
                    "stored policy version {} is invalid: {e}",
                    v.version
                ))
            })?,
            None => Vec::new(),
        };
        Ok::<_, Failure>((v.map(|v| v.version).unwrap_or(0), docs))
    };
    match cmd {
        PolicyCommand::Show => {
            let (version, docs) = current().await?;
            if json {
                print_json(
                    &json!({ "version": version, "document": portcullis_policy::export(&docs) }),
                );
            } else if version == 0 {
                println!(
                    "# no policies yet: everything behind the gateway is denied. Add some with `portcullis policy set FILE`."
                );
            } else {
                println!(
                    "# policy version {version}\n{}",
                    portcullis_policy::export(&docs)
                );
            }
        }
        PolicyCommand::Set { file, comment } | PolicyCommand::Import { file, comment } => {
            set_policy(app, &file, &comment, json).await?
        }
        PolicyCommand::Export { file } => {
            let (version, docs) = current().await?;
            let text = format!(
                "# exported policy version {version}\n{}",
                portcullis_policy::export(&docs)
            );
            match file {
                Some(f) => std::fs::write(&f, text)
                    .map_err(|e| Failure::user(format!("cannot write {}: {e}", f.display())))?,
                None => print!("{text}"),
            }
        }
        PolicyCommand::History => {
            let history = store.policy_history().await?;
            if json {
                print_json(&json!(history.iter().map(|v| json!({ "version": v.version, "comment": v.comment, "created_at": rfc3339(v.created_at) })).collect::<Vec<_>>()));
            } else {
                for v in &history {
                    println!("{:>5}  {}  {}", v.version, rfc3339(v.created_at), v.comment);
                }
            }
        }
        PolicyCommand::Rollback { target: version } => {
            let old = store.policy_at(version).await?.ok_or_else(|| {
                Failure::user(format!(
                    "policy version {version} does not exist; see `portcullis policy history`"
                ))
            })?;
            let new = store
                .add_policy_version(
                    &old.document,
                    &format!("rollback to version {version}"),
                    app.clock.now(),
                    false,
                )
                .await?
                .unwrap_or_default();
            if json {
                print_json(&json!({ "version": new }))
            } else {
                println!("policy version {new} is in force (the documents of version {version})")
            }
        }
        PolicyCommand::Explain {
            groups,
            scopes,
            client,
            user,
            mfa,
            signed_in,
            method,
            path,
        } => {
            let (version, docs) = current().await?;
            let set = portcullis_policy::PolicySet::new(docs, version);
            let mut principals: Vec<portcullis_policy::Principal> = groups
                .iter()
                .map(|g| portcullis_policy::Principal::Group(g.to_ascii_lowercase()))
                .collect();
            if let Some(u) = &user {
                let u = app.pool.user(u).await?;
                principals.extend(
                    u.groups
                        .iter()
                        .map(|g| portcullis_policy::Principal::Group(g.to_ascii_lowercase())),
                );
            }
            principals.extend(
                scopes
                    .iter()
                    .map(|s| portcullis_policy::Principal::Scope(s.clone())),
            );
            principals.extend(
                client
                    .iter()
                    .map(|c| portcullis_policy::Principal::Client(c.clone())),
            );
            principals.push(portcullis_policy::Principal::Authenticated);
            let canonical = portcullis_gateway::canonical::canonicalize(&path)
                .map_err(|e| Failure::user(format!("{path}: {e} (the gateway answers 400)")))?;
            let now = app.clock.now();
            let ago = signed_in.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let auth = portcullis_policy::AuthContext {
                mfa,
                auth_time: Some(now.saturating_sub(ago)),
            };
            let decision = set.decide_as(&principals, &method, &canonical.lower, &auth, now);
            if json {
                print_json(
                    &json!({ "allowed": decision.allowed, "explanation": decision.to_string() }),
                )
            } else {
                println!(
                    "{} {}: {decision}",
                    method.to_ascii_uppercase(),
                    canonical.decoded
                )
            }
        }
        PolicyCommand::Matrix => {
            let (version, docs) = current().await?;
            let (principals, rows) = access_matrix(&app.config.routes, &docs, version);
            if json {
                print_json(
                    &json!({ "version": version, "principals": principals, "rows": rows.iter().map(|(r, c)| json!({ "route": r, "decisions": c })).collect::<Vec<_>>() }),
                );
            } else {
                // Columns as wide as their widest entry ("allow if mfa = true, ...").
                let first = rows
                    .iter()
                    .map(|(r, _)| r.len())
                    .chain([28])
                    .max()
                    .unwrap_or(28);
                let widths: Vec<usize> = principals
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        rows.iter()
                            .map(|(_, c)| c.get(i).map_or(0, String::len))
                            .chain([p.len(), 16])
                            .max()
                            .unwrap_or(16)
                    })
                    .collect();
                print!("{:<first$}", format!("policy version {version}"));
                for (p, w) in principals.iter().zip(&widths) {
                    print!(" {p:>w$}");
                }
                println!();
                for (route, cells) in &rows {
                    print!("{route:<first$}");
                    for (c, w) in cells.iter().zip(&widths) {
                        print!(" {c:>w$}");
                    }
                    println!();
                }
                println!(
                    "(each column holds one principal alone, plus `authenticated`; a user in several groups gets the union, and any deny wins)"
                );
            }
        }
    }
    Ok(())
}

// ---- audit ----------------------------------------------------------------------------------

/// Records an administrative change made at the command line.
async fn audit(app: &Admin, kind: &str, subject: &str, detail: serde_json::Value) {
    portcullis_idp::audit::record(
        &app.store,
        app.clock.now(),
        kind,
        &portcullis_idp::audit::Actor::cli(),
        subject,
        detail,
    )
    .await;
}

/// Runs a command and, when it changed something and succeeded, records it.
async fn audited(
    app: &Admin,
    event: Option<(&'static str, String, serde_json::Value)>,
    run: impl std::future::Future<Output = Result<(), Failure>>,
) -> Result<(), Failure> {
    run.await?;
    if let Some((kind, subject, detail)) = event {
        audit(app, kind, &subject, detail).await;
    }
    Ok(())
}

pub async fn user(app: &Admin, cmd: UserCommand, json: bool) -> Result<(), Failure> {
    let event = match &cmd {
        UserCommand::Add {
            username,
            email,
            groups,
            invite,
            temporary,
            ..
        } => Some((
            "user.create",
            username.clone(),
            json!({ "email": email, "groups": groups, "invite": invite, "temporary_password": temporary }),
        )),
        UserCommand::Delete { username } => Some(("user.delete", username.clone(), json!({}))),
        UserCommand::SetPassword {
            username,
            temporary,
            ..
        } => Some((
            "user.set_password",
            username.clone(),
            json!({ "temporary": temporary, "sessions": "all revoked" }),
        )),
        UserCommand::Disable { username } => Some(("user.disable", username.clone(), json!({}))),
        UserCommand::Unlink { username, provider } => Some((
            "federation.unlink",
            username.clone(),
            json!({ "provider": provider, "by": "operator" }),
        )),
        UserCommand::Enable { username } => Some(("user.enable", username.clone(), json!({}))),
        UserCommand::ResetMfa { username } => Some((
            "mfa.reset",
            username.clone(),
            json!({ "sessions": "all revoked" }),
        )),
        UserCommand::Import { file, .. } => Some((
            "user.import",
            String::new(),
            json!({ "file": file.display().to_string() }),
        )),
        _ => None,
    };
    audited(app, event, user_inner(app, cmd, json)).await
}

pub async fn group(app: &Admin, cmd: GroupCommand, json: bool) -> Result<(), Failure> {
    let event = match &cmd {
        GroupCommand::Add {
            name,
            description,
            precedence,
        } => Some((
            "group.create",
            name.clone(),
            json!({ "description": description, "precedence": precedence }),
        )),
        GroupCommand::Delete { name } => Some(("group.delete", name.clone(), json!({}))),
        GroupCommand::AddMember { group, username } => Some((
            "group.add_member",
            username.clone(),
            json!({ "group": group }),
        )),
        GroupCommand::RemoveMember { group, username } => Some((
            "group.remove_member",
            username.clone(),
            json!({ "group": group }),
        )),
        _ => None,
    };
    audited(app, event, group_inner(app, cmd, json)).await
}

pub async fn client(app: &Admin, cmd: ClientCommand, json: bool) -> Result<(), Failure> {
    let event = match &cmd {
        ClientCommand::Add {
            name,
            id,
            confidential,
            redirect_uris,
            scopes,
            grants,
            ..
        } => Some((
            "client.create",
            id.clone().unwrap_or_else(|| name.clone()),
            json!({ "name": name, "confidential": confidential, "redirect_uris": redirect_uris, "scopes": scopes, "grants": grants }),
        )),
        ClientCommand::Update {
            client_id,
            name,
            redirect_uris,
            logout_uris,
            grants,
            scopes,
            access_ttl,
            id_ttl,
            refresh_ttl,
            id_token_alg,
        } => Some((
            "client.update",
            client_id.clone(),
            json!({ "changes": {
                "name": name, "redirect_uris": redirect_uris, "logout_uris": logout_uris,
                "grants": grants, "scopes": scopes, "access_ttl": access_ttl, "id_ttl": id_ttl,
                "refresh_ttl": refresh_ttl, "id_token_alg": id_token_alg,
            } }),
        )),
        ClientCommand::Delete { client_id } => {
            Some(("client.delete", client_id.clone(), json!({})))
        }
        ClientCommand::RotateSecret { client_id } => {
            Some(("client.rotate_secret", client_id.clone(), json!({})))
        }
        _ => None,
    };
    audited(app, event, client_inner(app, cmd, json)).await
}

pub async fn resource_server(
    app: &Admin,
    cmd: ResourceServerCommand,
    json: bool,
) -> Result<(), Failure> {
    let event = match &cmd {
        ResourceServerCommand::Add {
            identifier,
            name,
            scopes,
        } => Some((
            "resource_server.create",
            identifier.clone(),
            json!({ "name": name, "scopes": scopes }),
        )),
        ResourceServerCommand::Delete { identifier } => {
            Some(("resource_server.delete", identifier.clone(), json!({})))
        }
        _ => None,
    };
    audited(app, event, resource_server_inner(app, cmd, json)).await
}

pub async fn keys(app: &Admin, cmd: KeysCommand, json: bool) -> Result<(), Failure> {
    let event = match &cmd {
        KeysCommand::Rotate => Some(("keys.rotate", String::new(), json!({}))),
        _ => None,
    };
    audited(app, event, keys_inner(app, cmd, json)).await
}

pub async fn policy(app: &Admin, cmd: PolicyCommand, json: bool) -> Result<(), Failure> {
    let before = app.store.current_policy().await.ok().flatten();
    let event = match &cmd {
        PolicyCommand::Set { file, comment } | PolicyCommand::Import { file, comment } => Some((
            "policy.set",
            String::new(),
            json!({ "file": file.display().to_string(), "comment": comment }),
        )),
        PolicyCommand::Rollback { target } => {
            Some(("policy.rollback", String::new(), json!({ "to": target })))
        }
        _ => None,
    };
    policy_inner(app, cmd, json).await?;
    if let Some((kind, subject, mut detail)) = event {
        let after = app.store.current_policy().await.ok().flatten();
        detail["before"] =
            json!(before.map(|v| json!({ "version": v.version, "document": v.document })));
        detail["after"] =
            json!(after.map(|v| json!({ "version": v.version, "document": v.document })));
        audit(app, kind, &subject, detail).await;
    }
    Ok(())
}

/// `audit list` and `audit verify`.
pub async fn audit_command(app: &Admin, cmd: AuditCommand, json: bool) -> Result<(), Failure> {
    match cmd {
        AuditCommand::List {
            since,
            user,
            kind,
            limit,
            after,
        } => {
            let since = match since.as_deref() {
                None => None,
                Some(text) => Some(parse_since(text, app.clock.now())?),
            };
            let events = app
                .store
                .audit_events(&portcullis_store::AuditFilter {
                    since,
                    until: None,
                    who: user,
                    kind_prefix: kind,
                    after,
                    limit,
                    ..Default::default()
                })
                .await?;
            if json {
                print_json(&json!(
                    events
                        .iter()
                        .map(|e| json!({
                            "seq": e.seq, "at": rfc3339(e.at), "kind": e.kind, "actor": e.actor,
                            "source": e.source, "subject": e.subject, "detail": e.detail, "hash": e.hash,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else if events.is_empty() {
                println!("no events");
            } else {
                for e in &events {
                    println!(
                        "{:>6}  {}  {:<24} {:<28} {:<16} {} {}",
                        e.seq,
                        rfc3339(e.at),
                        e.kind,
                        e.actor,
                        e.source,
                        e.subject,
                        e.detail
                    );
                }
            }
            Ok(())
        }
        AuditCommand::Verify => match app.store.verify_audit().await? {
            portcullis_store::AuditVerdict::Intact { events, head } => {
                if json {
                    print_json(
                        &json!({ "intact": true, "events": events, "head": head.as_ref().map(|(s, h)| json!({ "seq": s, "hash": h })) }),
                    );
                } else {
                    match head {
                        Some((seq, hash)) => println!(
                            "the audit log is intact: {events} events, the last is {seq} with hash {hash}"
                        ),
                        None => println!("the audit log is intact and empty"),
                    }
                }
                Ok(())
            }
            portcullis_store::AuditVerdict::Broken { seq, reason } => Err(Failure::user(format!(
                "the audit log was tampered with: event {seq}: {reason}. Compare with the audit lines in the server's log (target portcullis::audit), which carry each event's hash"
            ))),
        },
    }
}

/// "24h", "7d", "90m" ago, or an RFC 3339 time.
fn parse_since(text: &str, now: i64) -> Result<i64, Failure> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(now - i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| {
            Failure::user(format!(
                "--since {text:?}: give a duration such as \"24h\" or \"7d\", or a time such as 2026-12-01T00:00:00Z"
            ))
        })
}
