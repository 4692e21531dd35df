//! The `portcullis` binary: command line, configuration and wiring. Everything it does is
//! implemented in the library crates; this crate only connects them.

mod acme;
mod admin_api;
mod app;
mod commands;
mod config;
mod console;
mod demo;
mod demo_app;
mod failure;
mod federation;
mod http_server;
mod import;
mod legacy;
mod mail;
mod otel;
mod request_id;
mod serve;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::failure::Failure;

/// mimalloc instead of glibc malloc: measured on the gateway path, where glibc's malloc and free
/// took ~12% of the CPU profile (`perf record` under `bench/gateway.sh` load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Identity provider and authorizing gateway in one binary.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, propagate_version = true)]
struct Cli {
    /// Configuration file (TOML). Default: ./portcullis.toml if it exists.
    #[arg(
        long,
        short,
        global = true,
        env = "PORTCULLIS_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    /// Print results as JSON for scripts.
    #[arg(long, global = true)]
    json: bool,

    /// Log filter, e.g. `info` or `portcullis=debug,sqlx=warn`.
    #[arg(long, global = true, env = "PORTCULLIS_LOG", value_name = "FILTER")]
    log_level: Option<String>,

    /// Log format.
    #[arg(long, global = true, env = "PORTCULLIS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,

    /// `serve`'s configuration, read before logging starts.
    #[arg(skip)]
    preloaded: Option<config::Config>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Run a demo instance with seeded users in a local directory.
    Demo(DemoArgs),
    /// Run the demo's backend (and its external order system) as a separate process, for the
    /// all-in-one guide: it verifies portcullis' signed assertions with the issuer's JWKS.
    DemoBackend {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
        /// The portcullis issuer whose assertions it trusts.
        #[arg(long, default_value = "http://localhost:8080")]
        issuer: String,
    },
    /// Validate configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage groups and memberships.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Inspect the store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Manage OAuth clients (applications).
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage resource servers and their custom scopes.
    #[command(subcommand, name = "resource-server")]
    ResourceServer(ResourceServerCommand),
    /// Inspect and rotate the signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage the gateway's policy documents (versioned in the store).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Inspect the mail outbox.
    #[command(subcommand)]
    Mail(MailCommand),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// List events, oldest first.
    List {
        /// Only events at most this long ago ("24h", "7d") or since this time (RFC 3339).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only events about this subject (a username, group, client id) or by this actor.
        #[arg(long, value_name = "WHO")]
        user: Option<String>,
        /// Only events whose kind starts with this ("signin.", "policy.set").
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Only events after this sequence number (to page, or to follow).
        #[arg(long)]
        after: Option<i64>,
    },
    /// Walk the hash chain: exits 1 naming the first event that was edited, inserted or
    /// follows a deleted one.
    Verify,
}

#[derive(Debug, Subcommand)]
enum MailCommand {
    /// Messages waiting (and of those, waiting for a retry), sent and given up.
    Status,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Print the policy documents in force, as a policy file.
    Show,
    /// Replace the policies with a file's documents (a new version).
    Set {
        file: PathBuf,
        /// Why (kept in the history).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Same as `set`: import a policy file (for example from git).
    Import {
        file: PathBuf,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Write the documents in force to a file (or standard output).
    Export { file: Option<PathBuf> },
    /// List every version.
    History,
    /// Make an earlier version current again (as a new version).
    Rollback {
        #[arg(value_name = "VERSION")]
        target: i64,
    },
    /// Explain the decision for a caller, a method and a path.
    Explain {
        /// A group the caller is in (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A scope the caller's token carries (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The caller's client id.
        #[arg(long)]
        client: Option<String>,
        /// A signed-in user (their groups are read from the store).
        #[arg(long)]
        user: Option<String>,
        /// The caller signed in with a second factor (for `mfa = true` statements).
        #[arg(long)]
        mfa: bool,
        /// How long ago the caller signed in, e.g. "10m" (for `auth_age` statements; default:
        /// just now).
        #[arg(long, value_name = "DURATION")]
        signed_in: Option<humantime::Duration>,
        method: String,
        path: String,
    },
    /// Print the access matrix: routes × principals.
    Matrix,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Register a client. A confidential client's secret is printed once.
    Add {
        /// Display name.
        name: String,
        /// Client id (default: random).
        #[arg(long)]
        id: Option<String>,
        /// A confidential client (a server that can keep a secret).
        #[arg(long)]
        confidential: bool,
        /// An exact redirect URI (repeatable).
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
        /// An exact sign-out URI (repeatable).
        #[arg(long = "logout-uri", value_name = "URI")]
        logout_uris: Vec<String>,
        /// Allowed grant (repeatable): authorization_code, refresh_token, client_credentials.
        #[arg(long = "grant", value_name = "GRANT")]
        grants: Vec<String>,
        /// Allowed scope (repeatable): openid, email, profile, or a resource-server scope.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Access token lifetime in seconds (default 3600).
        #[arg(long)]
        access_ttl: Option<i64>,
        /// ID token lifetime in seconds (default 3600).
        #[arg(long)]
        id_ttl: Option<i64>,
        /// Refresh token absolute lifetime in seconds (default 30 days).
        #[arg(long)]
        refresh_ttl: Option<i64>,
        /// ID token algorithm: RS256 (default) or ES256.
        #[arg(long)]
        id_token_alg: Option<String>,
    },
    /// List clients.
    List,
    /// Show one client.
    Show { client_id: String },
    /// Change a client's settings (not its secret). A list option, when given, replaces the
    /// whole list; what is not given stays. The result is validated like a new client.
    Update {
        client_id: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// An exact redirect URI (repeatable; replaces the list).
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
        /// An exact sign-out URI (repeatable; replaces the list).
        #[arg(long = "logout-uri", value_name = "URI")]
        logout_uris: Vec<String>,
        /// Allowed grant (repeatable; replaces the list).
        #[arg(long = "grant", value_name = "GRANT")]
        grants: Vec<String>,
        /// Allowed scope (repeatable; replaces the list).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Access token lifetime in seconds.
        #[arg(long)]
        access_ttl: Option<i64>,
        /// ID token lifetime in seconds.
        #[arg(long)]
        id_ttl: Option<i64>,
        /// Refresh token absolute lifetime in seconds.
        #[arg(long)]
        refresh_ttl: Option<i64>,
        /// ID token algorithm: RS256 or ES256.
        #[arg(long)]
        id_token_alg: Option<String>,
    },
    /// Delete a client.
    Delete { client_id: String },
    /// Give a confidential client a new secret (printed once); the old one stops working.
    RotateSecret { client_id: String },
}

#[derive(Debug, Subcommand)]
enum ResourceServerCommand {
    /// Define a resource server and its scopes (`IDENTIFIER/SCOPE` in tokens).
    Add {
        identifier: String,
        #[arg(long, default_value = "")]
        name: String,
        /// A scope name (repeatable).
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
    },
    /// List resource servers.
    List,
    /// Delete a resource server.
    Delete { identifier: String },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// List the published signing keys and their schedule.
    List,
    /// Publish new keys now; they sign after `idp.key_rotation_delay`, and the old keys stay
    /// published until every token they signed has expired.
    Rotate,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Listen address, overriding `server.listen` (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Listen address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Directory for the demo's database and credentials.
    #[arg(long, value_name = "DIR", default_value = "./portcullis-demo")]
    data_dir: PathBuf,
    /// Delete the demo directory first and start fresh.
    #[arg(long)]
    reset: bool,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a configuration file and the environment; report every error.
    Check {
        /// The file to check (default: --config or ./portcullis.toml).
        file: Option<PathBuf>,
    },
    /// Print the reference of every key (Markdown), as in docs/configuration.md.
    Reference,
    /// Apply the declared configuration to the store without serving: create or update the
    /// [[clients]] and [[resource_servers]], seed [[policy]] into an empty store (what `serve`
    /// does at start).
    Apply,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user. Without --password-stdin a strong password is generated and printed once.
    Add {
        username: String,
        #[arg(long)]
        email: Option<String>,
        /// Mark the email address as verified.
        #[arg(long)]
        email_verified: bool,
        /// An attribute, `name=value` (repeatable).
        #[arg(long = "attr", value_name = "NAME=VALUE")]
        attributes: Vec<String>,
        /// A group to join (repeatable).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The user must choose a new password at the first sign-in.
        #[arg(long, conflicts_with = "invite")]
        temporary: bool,
        /// Create the user without a password and mail them a link to choose one (needs
        /// --email and mail.transport; the running server's mail worker sends it).
        #[arg(long, requires = "email", conflicts_with = "password_stdin")]
        invite: bool,
    },
    /// Mail an invitation again (a new link; earlier ones stop working).
    Invite { username: String },
    /// Remove a user's second factors (authenticator app, recovery codes) and end their
    /// sessions: for a user who lost their phone and their codes. Logged as an audit event.
    ResetMfa { username: String },
    /// Import users from a Cognito user pool: the JSON of `aws cognito-idp list-users` (or an
    /// array of its pages). Each user keeps its `sub`; passwords move on first sign-in through
    /// idp.legacy_verifier_url (docs/guide-cognito.md). Safe to run again.
    Import {
        file: std::path::PathBuf,
        /// A JSON object mapping usernames to `aws cognito-idp admin-list-groups-for-user`
        /// output (or to arrays of group names).
        #[arg(long, value_name = "FILE")]
        groups: Option<std::path::PathBuf>,
    },
    /// List users.
    List,
    /// Show one user.
    Show { username: String },
    /// Delete a user.
    Delete { username: String },
    /// Set a new password (generated and printed once unless --password-stdin).
    SetPassword {
        username: String,
        #[arg(long)]
        password_stdin: bool,
        /// The user must choose a new password at the next sign-in.
        #[arg(long)]
        temporary: bool,
    },
    /// Unlink a user's identities at an upstream provider (`[[idp.providers]]` id): they no
    /// longer sign in through it (a next sign-in there may link or create again, by the
    /// provider's rules).
    Unlink { username: String, provider: String },
    /// Stop a user from signing in.
    Disable { username: String },
    /// Allow a disabled user to sign in again.
    Enable { username: String },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Add a group.
    Add {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Lower wins when one group must be chosen (0 and up).
        #[arg(long)]
        precedence: Option<i64>,
    },
    /// List groups.
    List,
    /// Delete a group (its members stay, without it).
    Delete { name: String },
    /// Add a user to a group.
    AddMember { group: String, username: String },
    /// Remove a user from a group.
    RemoveMember { group: String, username: String },
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Open the store, apply migrations and check its integrity.
    Check,
    /// Copy every row of the store into another, empty database (SQLite → PostgreSQL when one
    /// node is no longer enough, or back), from one consistent snapshot, while it serves.
    Copy {
        /// The target: `postgres://user@host/db` or `sqlite:///path/new.db`. It is migrated
        /// first and must hold no rows. A password is better given in PGPASSWORD.
        #[arg(long)]
        to: String,
    },
    /// Write a consistent online backup of a SQLite store to a new file (PostgreSQL: use
    /// pg_dump). Restore by pointing `store.url` at the file.
    Backup {
        /// The new file.
        file: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; a usage mistake is the user's
            // to fix, so it exits 1 like every other user error (clap's own default is 2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let default_level = match cli.command {
        Command::Serve(_) | Command::Demo(_) | Command::DemoBackend { .. } => "info",
        _ => "warn",
    };
    // `serve` reads its configuration first: where traces go is part of setting up logging,
    // and the exporter's HTTP client is built before the async runtime starts.
    let mut cli = cli;
    let serve_config = match &cli.command {
        Command::Serve(_) => match app::load_config(cli.config.as_deref()) {
            Ok(c) => Some(c),
            Err(failure) => return failure.report(),
        },
        _ => None,
    };
    init_logging(
        cli.log_level.as_deref().unwrap_or(default_level),
        cli.log_format,
        serve_config.as_ref().and_then(|c| c.otlp.as_ref()),
    );
    cli.preloaded = serve_config;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Failure::internal(format!("cannot start the async runtime: {e}")).report();
        }
    };
    let outcome = runtime.block_on(run(cli));
    otel::shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let json = cli.json;
    match cli.command {
        Command::Serve(args) => {
            let config = match cli.preloaded {
                Some(c) => c,
                None => app::load_config(cli.config.as_deref())?,
            };
            serve::run(config, args.listen).await
        }
        Command::Demo(args) => demo::run(args.data_dir, args.listen, args.reset).await,
        Command::DemoBackend { listen, issuer } => {
            let issuer = issuer.trim_end_matches('/').to_owned();
            let url = demo_app::serve(listen, &issuer, &format!("{issuer}/.well-known/jwks.json"))
                .await
                .map_err(|e| {
                    failure::Failure::user(format!(
                        "cannot start the demo backend on {listen}: {e}"
                    ))
                })?;
            println!("demo backend listening on {url}, trusting {issuer}");
            let _ = tokio::signal::ctrl_c().await;
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            commands::config_check(file.as_deref().or(cli.config.as_deref()), json)
        }
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", config::reference());
            Ok(())
        }
        Command::Config(ConfigCommand::Apply) => {
            let app = app::App::open(app::load_config(cli.config.as_deref())?).await?;
            commands::config_applied(&app, json).await
        }
        Command::User(cmd) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::user(&app, cmd, json).await
        }
        Command::Group(cmd) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::group(&app, cmd, json).await
        }
        Command::Client(cmd) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::client(&app, cmd, json).await
        }
        Command::ResourceServer(cmd) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::resource_server(&app, cmd, json).await
        }
        Command::Audit(cmd) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::audit_command(&app, cmd, json).await
        }
        Command::Mail(MailCommand::Status) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::mail_status(&app, json).await
        }
        Command::Keys(cmd) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::keys(&app, cmd, json).await
        }
        Command::Policy(cmd) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::policy(&app, cmd, json).await
        }
        Command::Store(StoreCommand::Check) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::store_check(&app, json).await
        }
        Command::Store(StoreCommand::Copy { to }) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::store_copy(&app, &to, json).await
        }
        Command::Store(StoreCommand::Backup { file }) => {
            let app = app::Admin::open(app::load_config(cli.config.as_deref())?).await?;
            commands::store_backup(&app, &file, json).await
        }
    }
}

fn init_logging(filter: &str, format: LogFormat, otlp: Option<&(String, String)>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // rustls warns about what clients send in their handshakes (an IP address as SNI, say):
    // any client could fill the log with them. Its errors only, unless the filter names it.
    let mut filter = if filter.contains("rustls") {
        filter.to_owned()
    } else {
        format!("{filter},rustls=error")
    };
    // The gateway stages' spans are for trace export, not for log lines.
    if !filter.contains("portcullis::otel") {
        filter.push_str(",portcullis::otel=off");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
        match format {
            LogFormat::Text => fmt.with_filter(filter).boxed(),
            LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        };
    // Traces: the request span and the stages' spans only, whatever the log level.
    let traces = otlp.and_then(
        |(endpoint, service)| match otel::tracer(endpoint, service) {
            Ok(tracer) => Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(
                        tracing_subscriber::filter::Targets::new()
                            .with_target("portcullis::request", tracing::Level::INFO)
                            .with_target("portcullis::otel", tracing::Level::INFO),
                    ),
            ),
            Err(e) => {
                eprintln!("portcullis: traces are not exported: {e}");
                None
            }
        },
    );
    tracing_subscriber::registry().with(fmt).with(traces).init();
}
