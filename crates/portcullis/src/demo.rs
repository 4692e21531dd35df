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
    if listen.port() == 0 {
        return Err(Failure::user(
            "the demo needs a fixed port (its backend is configured with it); pass --listen 127.0.0.1:PORT",
        ));
    }
    // The front end, embedded in the binary, is served from files like any static site.
    let site = data_dir.join("site");
    write_site(&site)?;
    // The demo backend fetches portcullis' JWKS to verify the gateway's assertions.
    let issuer = crate::config::issuer_for(listen, false);
    let jwks = format!("http://127.0.0.1:{}/.well-known/jwks.json", listen.port());
    let backend = crate::demo_app::start(&issuer, &jwks)
        .await
        .map_err(|e| Failure::internal(format!("cannot start the demo backend: {e}")))?;
    let site_abs = std::fs::canonicalize(&site).unwrap_or(site);
    let gateway = data_dir.join("gateway");
    write_files(&gateway, GATEWAY_FILES)?;
    let gateway_abs = std::fs::canonicalize(&gateway).unwrap_or(gateway);
    let toml_str = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let text = DEMO_CONFIG
        .replace("{backend}", &toml_str(&backend))
        .replace("{site}", &toml_str(&site_abs.display().to_string()))
        .replace("{gateway}", &toml_str(&gateway_abs.display().to_string()));
    let source = Path::new("examples/demo/portcullis.toml (embedded)");
    let config = config::load(Some(source), Some(&text), &env)?;
    crate::serve::run_config(config, Some(listen), |app| {
        Box::pin(async move {
            let credentials = seed(app, &app.config.data_dir).await?;
            print_banner(app, &credentials);
            Ok(())
        })
    })
    .await
}

const SITE: &[(&str, &str)] = &[
    (
        "index.html",
        include_str!("../../../examples/demo/site/index.html"),
    ),
    (
        "app.css",
        include_str!("../../../examples/demo/site/app.css"),
    ),
    ("app.js", include_str!("../../../examples/demo/site/app.js")),
    (
        "orders/index.html",
        include_str!("../../../examples/demo/site/orders/index.html"),
    ),
    (
        "admin/index.html",
        include_str!("../../../examples/demo/site/admin/index.html"),
    ),
];

/// The order route's schema and body template (`[[routes.validation]]`, `[routes.transform]`).
const GATEWAY_FILES: &[(&str, &str)] = &[
    (
        "order.schema.json",
        include_str!("../../../examples/demo/gateway/order.schema.json"),
    ),
    (
        "order.json.j2",
        include_str!("../../../examples/demo/gateway/order.json.j2"),
    ),
];

/// Writes the embedded front end (every start: the binary's version wins).
fn write_site(dir: &Path) -> Result<(), Failure> {
    // The data directory holds the database: private, as `App::open` would create it.
    if let Some(data_dir) = dir.parent().filter(|d| !d.exists()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(data_dir)
            .map_err(|e| Failure::user(format!("cannot create {}: {e}", data_dir.display())))?;
    }
    write_files(dir, SITE)
}

/// Writes embedded files under `dir` (every start: the binary's version wins).
fn write_files(dir: &Path, files: &[(&str, &str)]) -> Result<(), Failure> {
    for (name, content) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Failure::user(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&path, content)
            .map_err(|e| Failure::user(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
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
                pool.set_password(username, Some(password.clone()), false)
                    .await?;
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
    println!(
        "sign-up and password reset are open; their mail is written to {} instead of being sent",
        app.config.mail.directory.display()
    );
    println!(
        "admin signs in with a second factor: at the first sign-in, scan the QR code with any authenticator app (or type the key shown under it)"
    );
    println!("the admin console is at {url}/portcullis/console/ (for admin)");
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
