//! `portcullis demo`: `serve` with the demo configuration (embedded from
//! `examples/demo/portcullis.toml`) in a local directory, with seeded groups and users.
//! Same code paths as `serve`; only the configuration and the seeding differ.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use portcullis_idp::{AddUser, generate_password};
use portcullis_token::Secret;

use crate::app::App;
use crate::config::{self, Env};
use crate::failure::Failure;

const DEMO_CONFIG: &str = include_str!("../../../examples/demo/portcullis.toml");
const CREDENTIALS: &str = "demo-credentials.txt";

/// Demo groups: name, description, precedence.
const GROUPS: &[(&str, &str, i64)] = &[("admin", "Administrators", 1), ("user", "Customers", 10)];
/// Demo users and their groups.
const USERS: &[(&str, &[&str])] = &[("customer", &["user"]), ("admin", &["user", "admin"])];

pub async fn run(data_dir: PathBuf, listen: SocketAddr, reset: bool) -> Result<(), Failure> {
    if reset {
        reset_dir(&data_dir)?;
    }
    let mut env = Env::process();
    env.set("PORTCULLIS_DATA_DIR", &data_dir.display().to_string());
    env.set("PORTCULLIS_SERVER_LISTEN", &listen.to_string());
    let source = Path::new("examples/demo/portcullis.toml (embedded)");
    let config = config::load(Some(source), Some(DEMO_CONFIG), &env)?;
    crate::serve::run_config(config, Some(listen), |app| {
        Box::pin(async move {
            let credentials = seed(app, &app.config.data_dir).await?;
            print_banner(app, &credentials);
            Ok(())
        })
    })
    .await
}

/// Refuses to delete a directory that does not look like a demo directory.
fn reset_dir(dir: &Path) -> Result<(), Failure> {
    if !dir.exists() {
        return Ok(());
    }
    let looks_like_demo = dir.join(CREDENTIALS).is_file() || dir.join("portcullis.db").is_file();
    let is_empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if !looks_like_demo && !is_empty {
        return Err(Failure::user(format!(
            "--reset refuses to delete {}: it does not look like a portcullis demo directory (no {CREDENTIALS} or portcullis.db)",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir)
        .map_err(|e| Failure::user(format!("cannot delete {}: {e}", dir.display())))
}

/// What seeding found or made: username → (password, created now).
type Credentials = BTreeMap<String, (Secret<String>, bool)>;

async fn seed(app: &App, data_dir: &Path) -> Result<Credentials, Failure> {
    let pool = &app.pool;
    let existing: Vec<String> = pool
        .list_groups()
        .await?
        .into_iter()
        .map(|g| g.name)
        .collect();
    for (name, description, precedence) in GROUPS {
        if !existing.iter().any(|g| g.eq_ignore_ascii_case(name)) {
            pool.add_group(name, description, Some(*precedence)).await?;
        }
    }
    let file = data_dir.join(CREDENTIALS);
    let saved = read_credentials(&file);
    let mut credentials = Credentials::new();
    for (username, groups) in USERS {
        match (pool.user(username).await, saved.get(*username)) {
            (Ok(_), Some(password)) => {
                credentials.insert((*username).to_owned(), (password.clone(), false));
            }
            (Ok(_), None) => {
                // The user exists but its password was lost (say, a crash before the file was
                // written): give it a new one rather than leave the demo unusable.
                let password = generate_password();
                pool.set_password(username, Some(password.clone())).await?;
                credentials.insert((*username).to_owned(), (password, true));
            }
            (Err(_), _) => {
                let password = generate_password();
                let req = AddUser {
                    username: (*username).to_owned(),
                    email: Some(format!("{username}@demo.portcullis.test")),
                    email_verified: true,
                    groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                    password: Some(password.clone()),
                    ..AddUser::default()
                };
                pool.add_user(req).await?;
                credentials.insert((*username).to_owned(), (password, true));
            }
        }
    }
    if credentials.values().any(|(_, new)| *new) {
        write_credentials(&file, &credentials)?;
    }
    Ok(credentials)
}

fn read_credentials(file: &Path) -> BTreeMap<String, Secret<String>> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(u, p)| (u.trim().to_owned(), Secret::new(p.trim().to_owned())))
        .collect()
}

fn write_credentials(file: &Path, credentials: &Credentials) -> Result<(), Failure> {
    let mut text = String::from(
        "# portcullis demo users (username=password). Delete with `portcullis demo --reset`.\n",
    );
    for (user, (password, _)) in credentials {
        text.push_str(&format!("{user}={}\n", password.expose()));
    }
    let tmp = file.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    };
    write().map_err(|e| Failure::user(format!("cannot write {}: {e}", file.display())))
}

fn print_banner(app: &App, credentials: &Credentials) {
    let url = &app.config.idp.issuer;
    let data_dir = &app.config.data_dir;
    println!(
        "portcullis demo at {url}   (data in {})",
        data_dir.display()
    );
    if credentials.values().any(|(_, new)| *new) {
        println!(
            "demo users (passwords shown now and kept in {}):",
            data_dir.join(CREDENTIALS).display()
        );
        for (user, (password, new)) in credentials {
            if *new {
                println!("  {user:<10} {}", password.expose());
            }
        }
    } else {
        println!(
            "demo users: {} (passwords in {})",
            credentials.keys().cloned().collect::<Vec<_>>().join(", "),
            data_dir.join(CREDENTIALS).display()
        );
    }
}
