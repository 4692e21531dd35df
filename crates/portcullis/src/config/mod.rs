//! Configuration: a TOML file plus `PORTCULLIS_*` environment overrides, read into types.
//!
//! Raw → validated, in one direction: [`schema`] declares the file as serde structs (each key's
//! type, default and documentation written once); [`document`] parses the text keeping spans,
//! inserts the environment overrides and deserializes, collecting every error with its line;
//! [`Config`]'s `TryFrom` checks what types cannot (cross-field rules, secrets, the route table,
//! the trusted issuers, the policies) and holds the built results. `portcullis config check`
//! prints every error at once.
//!
//! The process environment is read in exactly one place ([`Env::process`]); tests pass their
//! own [`Env`].

mod document;
pub mod schema;
pub mod setting;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_gateway::issuers::ExternalIssuer;
use portcullis_gateway::route::RouteTable;
use portcullis_idp::{Branding, IdpSettings, PasswordPolicy};
use portcullis_policy::PolicyDocument;
use portcullis_store::StoreOptions;
use portcullis_token::Secret;

use document::{Found, Origin};
pub use schema::{DeclaredClient, DeclaredResourceServer};

/// The environment variable that may carry the instance secret itself (never a config key, so it
/// cannot end up in a file that is committed).
pub const INSTANCE_SECRET_ENV: &str = "PORTCULLIS_INSTANCE_SECRET";

/// The environment variable that may carry the legacy verifier's bearer token.
pub const LEGACY_SECRET_ENV: &str = "PORTCULLIS_IDP_LEGACY_VERIFIER_SECRET";

/// The environment variable that may carry the SMTP password.
pub const SMTP_PASSWORD_ENV: &str = "PORTCULLIS_MAIL_SMTP_PASSWORD";

/// The environment variable with the client secret of browser sessions at an external provider.
pub const SESSIONS_CLIENT_SECRET_ENV: &str = "PORTCULLIS_SESSIONS_CLIENT_SECRET";

/// Where environment overrides come from.
#[derive(Clone, Debug, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        // All variables, not only PORTCULLIS_*: a declared client's `secret_env` may name any.
        Env(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Sets a variable in this view of the environment (not the process's).
    pub fn set(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_owned(), value.to_owned());
    }
}

impl<const N: usize> From<[(&str, &str); N]> for Env {
    fn from(pairs: [(&str, &str); N]) -> Self {
        Env(pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect())
    }
}

/// One problem in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `file:line:column`, an environment variable, or the key alone.
    pub location: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.location, self.key, self.message)
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "the configuration has {n} error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, if any.
    pub source: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Plain-http development mode for origins other than localhost.
    pub allow_insecure_http: bool,
    /// The admin listener (`/metrics`), if any.
    pub admin_listen: Option<SocketAddr>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: portcullis_gateway::forwarded::TrustedProxies,
    pub shutdown_grace: Duration,
    pub shutdown_drain: Duration,
    /// Time allowed for a request head, and for an idle keep-alive connection.
    pub header_timeout: Duration,
    /// The largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Time allowed for a request to portcullis' own endpoints.
    pub request_timeout: Duration,
    /// Client connections served at once.
    pub max_connections: usize,
    /// Threads serving client connections; 0: one per CPU.
    pub threads: usize,
    /// `[[server.certificates]]`, loaded and checked: with any, the listener speaks TLS.
    pub certificates: Vec<crate::tls::Loaded>,
    /// `[server.acme]`, when it names domains.
    pub acme: Option<crate::acme::AcmeConfig>,
    /// The plain-HTTP listener that redirects to https, if any.
    pub redirect_listen: Option<SocketAddr>,
    /// Redirect browser navigations on another host name to the public origin.
    pub canonical_redirect: bool,
    /// Offer HTTP/2 to TLS clients.
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    pub http2_max_streams: u32,
    /// `server.hsts_max_age` as set (`None`: one year on an https issuer that is not localhost).
    pub hsts_max_age: Option<Duration>,
    pub store: StoreOptions,
    pub password_policy: PasswordPolicy,
    pub hash_concurrency: usize,
    pub instance_secret: Option<Secret<String>>,
    pub instance_secret_file: Option<PathBuf>,
    /// The identity provider's settings. When `idp.issuer` is not set, the issuer is derived
    /// from the address the server listens on (see `issuer_configured`).
    pub idp: IdpSettings,
    pub issuer_configured: bool,
    pub clients: Vec<DeclaredClient>,
    pub resource_servers: Vec<DeclaredResourceServer>,
    /// Access-token lifetime of browser sessions at this instance's provider, seconds.
    pub sessions_access_ttl: i64,
    /// Browser sessions at an external provider.
    pub sessions_external: Option<ExternalSessions>,
    /// `[[gateway.issuers]]`: trusted external issuers, checked and ready (keys not fetched).
    pub issuers: Vec<Arc<ExternalIssuer>>,
    /// `[[routes]]`: the gateway's route table, built.
    pub routes: RouteTable,
    /// `[[policy]]` documents, seeded into an empty store.
    pub policies: Vec<PolicyDocument>,
    pub gateway: GatewayConfig,
    /// `[mail]`, checked.
    pub mail: crate::mail::MailConfig,
    /// `idp.legacy_verifier_*`, checked.
    pub legacy_verifier: Option<crate::legacy::LegacyConfig>,
    /// `[[idp.providers]]`, checked (secrets read).
    pub federation: Vec<crate::federation::ProviderConfig>,
    /// `audit.retention`.
    pub audit_retention: Duration,
    /// `telemetry.otlp_endpoint` (none: no traces exported) and `telemetry.service_name`.
    pub otlp: Option<(String, String)>,
}

/// `sessions.issuer`: browser sessions sign in at another OpenID provider.
#[derive(Debug, Clone)]
pub struct ExternalSessions {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret<String>>,
    /// Its groups claim, from its `[[gateway.issuers]]` entry.
    pub groups_claim: String,
}

/// `[gateway]` settings (the issuer, groups claim and public origin come from elsewhere).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub login_url: String,
    pub forbidden_url: String,
    pub access_cookie: String,
    pub public_origin: Option<String>,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub total_timeout: Duration,
    pub max_body: usize,
    pub access_log: bool,
    pub token_leeway: Duration,
    pub refresh_margin: Duration,
    pub refresh_interval: Duration,
    pub strip_request_headers: Vec<portcullis_gateway::forward::HeaderPattern>,
    /// TLS to `https://` upstreams, built (roots from `gateway.upstream_ca_file` or the system).
    pub upstream_tls: Arc<rustls::ClientConfig>,
}

/// The Markdown table of every key: what `config reference` prints and what
/// `docs/configuration.md` contains.
pub fn reference() -> String {
    let mut out = String::from(
        "| key | type | default | environment | description |\n|---|---|---|---|---|\n",
    );
    for k in schema::keys() {
        out.push_str(&format!(
            "| `{}` | {} | `{}` | `{}` | {} |\n",
            k.path,
            (k.kind)(),
            k.default,
            k.env(),
            k.description()
        ));
    }
    out
}

/// What a configuration is read from: a file's path and text (both `None`: no file) and the
/// environment.
#[derive(Debug)]
pub struct Source<'a> {
    pub path: Option<&'a Path>,
    pub text: Option<&'a str>,
    pub env: &'a Env,
}

/// Reads and validates configuration. `text` is the file's content (`None`: no file).
pub fn load(source: Option<&Path>, text: Option<&str>, env: &Env) -> Result<Config, ConfigErrors> {
    Config::try_from(Source {
        path: source,
        text,
        env,
    })
}

impl TryFrom<Source<'_>> for Config {
    type Error = ConfigErrors;

    fn try_from(source: Source<'_>) -> Result<Config, ConfigErrors> {
        let mut origin = Origin {
            file: source
                .path
                .map_or_else(|| "<config>".to_owned(), |p| p.display().to_string()),
            text: source.text.unwrap_or(""),
            overrides: Vec::new(),
        };
        let mut found = Vec::new();
        let file = document::read(source.text, source.env, &mut origin, &mut found);
        let config = file.and_then(|file| {
            let mut check = Check {
                origin: &origin,
                found: &mut found,
            };
            validate(file, source.path, source.env, &mut check)
        });
        found.sort_by_key(|f| f.order);
        match config {
            Some(config) if found.is_empty() => Ok(config),
            _ => Err(ConfigErrors(found.into_iter().map(|f| f.error).collect())),
        }
    }
}

/// Collects validation errors, located by the span of the value they are about.
struct Check<'a, 'o> {
    origin: &'a Origin<'o>,
    found: &'a mut Vec<Found>,
}

impl Check<'_, '_> {
    /// An error about a value at `span` (`None`: a default, located by its section).
    fn error(&mut self, span: Option<&Range<usize>>, key: &str, message: impl Into<String>) {
        let (order, location) = match span {
            Some(s) => (s.start, self.origin.at(s)),
            None => (usize::MAX, key.split('.').next().unwrap_or(key).to_owned()),
        };
        self.found.push(Found {
            order,
            error: ConfigError {
                location,
                key: key.to_owned(),
                message: message.into(),
            },
        });
    }

    /// An error in the environment, not located in the file.
    fn env_error(&mut self, variable: &str, key: &str, message: impl Into<String>) {
        self.found.push(Found {
            order: usize::MAX,
            error: ConfigError {
                location: format!("environment variable {variable}"),
                key: key.to_owned(),
                message: message.into(),
            },
        });
    }
}

/// Checks what the types cannot and builds the validated configuration; `None` when something
/// was wrong (the errors are in `check`).
fn validate(
    file: schema::File,
    path: Option<&Path>,
    env: &Env,
    check: &mut Check<'_, '_>,
) -> Option<Config> {
    let errors_before = check.found.len();
    let schema::File {
        data_dir,
        server,
        store,
        passwords,
        secrets,
        idp: idp_file,
        mail,
        audit,
        telemetry,
        gateway,
        sessions,
        branding,
        clients,
        resource_servers,
        routes,
        policy,
    } = file;
    let data_dir = data_dir.value.0;
    let listen = server.listen.value;

    let store = StoreOptions {
        url: store
            .url
            .value
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("portcullis.db").display())),
        max_connections: store.max_connections.value.get(),
        connect_timeout: store.connect_timeout.value.0,
        acquire_timeout: store.acquire_timeout.value.0,
        sqlite_sync: store.sqlite_synchronous.value.0,
    };
    let password_policy = PasswordPolicy {
        min_chars: passwords.min_length.value.get(),
        max_bytes: passwords.max_bytes.value.get(),
        min_strength: passwords.min_strength.value.get(),
    };
    if password_policy.min_chars > password_policy.max_bytes {
        check.error(
            passwords.min_length.span.as_ref(),
            "passwords.min_length",
            format!(
                "is {} but passwords.max_bytes is {}: no password could satisfy both",
                password_policy.min_chars, password_policy.max_bytes
            ),
        );
    }

    let instance_secret = env
        .get(INSTANCE_SECRET_ENV)
        .map(|s| Secret::new(s.to_owned()));
    if instance_secret
        .as_ref()
        .is_some_and(|s| s.expose().len() < 32)
    {
        check.env_error(
            INSTANCE_SECRET_ENV,
            "",
            "the instance secret must be at least 32 bytes; generate one with `openssl rand -base64 48`",
        );
    }
    let instance_secret_file = secrets.instance_secret_file.value.map(|p| p.0);
    if instance_secret.is_some() && instance_secret_file.is_some() {
        check.env_error(
            INSTANCE_SECRET_ENV,
            "secrets.instance_secret_file",
            "both are set; keep one source for the instance secret",
        );
    }

    let strip_request_headers =
        portcullis_gateway::forward::parse_header_list(&gateway.strip_request_headers.value)
            .unwrap_or_else(|e| {
                check.error(
                    gateway.strip_request_headers.span.as_ref(),
                    "gateway.strip_request_headers",
                    e.to_string(),
                );
                Vec::new()
            });
    let client_certificate = match (
        &gateway.upstream_client_cert.value,
        &gateway.upstream_client_key.value,
    ) {
        (Some(chain), Some(key)) => Some(portcullis_gateway::forward::ClientCertificate {
            chain: chain.0.clone(),
            key: key.0.clone(),
        }),
        (None, None) => None,
        _ => {
            let span = gateway
                .upstream_client_cert
                .span
                .as_ref()
                .or(gateway.upstream_client_key.span.as_ref());
            check.error(
                span,
                "gateway.upstream_client_cert",
                "needs gateway.upstream_client_key, and the other way round",
            );
            None
        }
    };
    let ca_file = gateway
        .upstream_ca_file
        .value
        .as_ref()
        .map(|p| p.0.as_path());
    let upstream_tls =
        portcullis_gateway::forward::upstream_tls(ca_file, client_certificate.as_ref())
            .map_err(|e| {
                // The bundle's own problems are located at its key, the rest at the client
                // certificate's.
                let about_bundle =
                    ca_file.is_some_and(|p| e.to_string().contains(&p.display().to_string()));
                let (span, key) = if about_bundle {
                    (
                        gateway.upstream_ca_file.span.as_ref(),
                        "gateway.upstream_ca_file",
                    )
                } else {
                    (
                        gateway.upstream_client_cert.span.as_ref(),
                        "gateway.upstream_client_cert",
                    )
                };
                check.error(span, key, e.to_string());
            })
            .ok();
    let trusted_proxies =
        portcullis_gateway::forwarded::TrustedProxies::parse(&server.trusted_proxies.value)
            .unwrap_or_else(|e| {
                check.error(
                    server.trusted_proxies.span.as_ref(),
                    "server.trusted_proxies",
                    e.to_string(),
                );
                Default::default()
            });

    let now = portcullis_token::Clock::system().now();
    let mut certificates = Vec::new();
    for entry in &server.certificates {
        match crate::tls::load(entry.get_ref(), now) {
            Ok(loaded) => certificates.push(loaded),
            Err(e) => check.error(Some(&entry.span()), "server.certificates", e.to_string()),
        }
    }

    let acme = acme_config(&server.acme, server.redirect_listen.value.is_some(), check);
    let legacy_verifier = legacy_config(&idp_file, env, check);
    let accounts = account_settings(
        &idp_file,
        mail.transport.value.0 != crate::mail::TransportKind::None,
        check,
    );
    let federation = federation_config(&idp_file, &accounts, env, check);
    let issuer = idp_file.issuer.value.map(|u| u.0);
    let tls = !server.certificates.is_empty() || acme.is_some();
    if !tls && server.redirect_listen.value.is_some() {
        check.error(
            server.redirect_listen.span.as_ref(),
            "server.redirect_listen",
            "redirects to https, so it needs [[server.certificates]] or [server.acme]",
        );
    }
    let mut idp = IdpSettings::new(
        issuer
            .clone()
            .unwrap_or_else(|| default_issuer(listen, tls, acme.as_ref())),
    );
    idp.groups_claim = idp_file.groups_claim.value;
    if idp.groups_claim.is_empty() {
        check.error(
            idp_file.groups_claim.span.as_ref(),
            "idp.groups_claim",
            "must not be empty",
        );
    }
    idp.cognito_compat = idp_file.cognito_compat.value;
    idp.access_alg = idp_file.access_token_alg.value.0.0;
    idp.id_alg = idp_file.id_token_alg.value.0.0;
    idp.key_rotation_delay = idp_file.key_rotation_delay.value.secs();
    idp.session_ttl = idp_file.session_ttl.value.secs();
    idp.refresh_grace_ms =
        i64::try_from(idp_file.refresh_grace.value.0.as_millis()).unwrap_or(i64::MAX);
    idp.lockout_base_delay = idp_file.lockout_delay.value.secs();
    idp.signin_rate_per_address = idp_file.signin_rate_per_address.value.get();
    idp.group_scopes = idp_file.group_scopes.value.0;
    idp.branding = Branding {
        app_name: branding.app_name.value,
        logo_url: Some(branding.logo_url.value).filter(|s| !s.is_empty()),
        primary_colour: branding.primary_colour.value.0,
    };
    idp.templates_dir = branding.templates_dir.value.map(|p| p.0);
    let mail = mail_config(&mail, &idp, &data_dir, env, check);
    idp.accounts = accounts;
    let names = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect()
    };
    idp.mfa_required_groups = names(&idp_file.mfa_required_groups.value);
    for g in &idp.mfa_required_groups {
        if let Err(e) = portcullis_idp::validate_group_name(g) {
            check.error(
                idp_file.mfa_required_groups.span.as_ref(),
                "idp.mfa_required_groups",
                e.to_string(),
            );
        }
    }
    idp.mfa_required_clients = names(&idp_file.mfa_required_clients.value);

    let clients = clients
        .into_iter()
        .enumerate()
        .map(|(n, c)| declared_client(n, c, env, check))
        .collect();

    let route_configs: Vec<_> = routes.iter().map(|r| r.get_ref().clone()).collect();
    let routes = RouteTable::new(&route_configs).unwrap_or_else(|e| {
        let span = routes.get(e.index).map(toml::Spanned::span);
        check.error(span.as_ref(), "routes", e.to_string());
        RouteTable::default()
    });

    let mut issuers = Vec::new();
    for entry in &gateway.issuers {
        match portcullis_gateway::issuers::external(entry.get_ref()) {
            Ok(i) => issuers.push(Arc::new(i)),
            Err(e) => check.error(Some(&entry.span()), "gateway.issuers", e.to_string()),
        }
    }

    let sessions_external = sessions.issuer.value.map(|u| u.0).and_then(|issuer| {
        let client_id = sessions.client_id.value.clone();
        let trusted = issuers
            .iter()
            .find(|i| i.issuer == issuer && i.audiences.contains(&client_id));
        match trusted {
            Some(trusted) if !client_id.is_empty() => Some(ExternalSessions {
                groups_claim: trusted.groups_claim.clone(),
                issuer,
                client_id,
                client_secret: env
                    .get(SESSIONS_CLIENT_SECRET_ENV)
                    .map(|s| Secret::new(s.to_owned())),
            }),
            _ => {
                check.error(
                    sessions.issuer.span.as_ref(),
                    "sessions.issuer",
                    format!(
                        "needs sessions.client_id, and a [[gateway.issuers]] entry for {issuer} whose audiences include that client id, so the gateway accepts the session's tokens"
                    ),
                );
                None
            }
        }
    });

    let policies = if policy.is_empty() {
        Vec::new()
    } else {
        let first = policy.first().map(toml::Spanned::span);
        portcullis_policy::build_documents(policy.into_iter().map(toml::Spanned::into_inner))
            .unwrap_or_else(|e| {
                check.error(first.as_ref(), "policy", e.to_string());
                Vec::new()
            })
    };

    if check.found.len() > errors_before {
        return None;
    }
    Some(Config {
        idp,
        issuer_configured: issuer.is_some(),
        clients,
        resource_servers,
        routes,
        issuers,
        policies,
        mail,
        legacy_verifier,
        federation,
        audit_retention: audit.retention.value.0,
        otlp: telemetry
            .otlp_endpoint
            .value
            .map(|u| (u.0, telemetry.service_name.value.clone())),
        sessions_access_ttl: sessions.access_ttl.value.secs(),
        sessions_external,
        gateway: GatewayConfig {
            login_url: gateway.login_url.value,
            forbidden_url: gateway.forbidden_url.value,
            access_cookie: gateway.access_cookie.value,
            public_origin: gateway.public_origin.value.map(|u| u.0),
            connect_timeout: gateway.connect_timeout.value.0,
            upstream_timeout: gateway.upstream_timeout.value.0,
            total_timeout: gateway.total_timeout.value.0,
            max_body: gateway.max_body.value.get(),
            access_log: gateway.access_log.value,
            token_leeway: gateway.token_leeway.value.0,
            refresh_margin: gateway.refresh_margin.value.0,
            refresh_interval: gateway.refresh_interval.value.0,
            strip_request_headers,
            upstream_tls: upstream_tls?,
        },
        source: path.map(Path::to_path_buf),
        data_dir,
        listen,
        admin_listen: server.admin_listen.value,
        trusted_proxies,
        allow_insecure_http: server.allow_insecure_http.value,
        shutdown_grace: server.shutdown_grace.value.0,
        shutdown_drain: server.shutdown_drain.value.0,
        header_timeout: server.header_timeout.value.0,
        max_header_bytes: server.max_header_bytes.value.get(),
        request_timeout: server.request_timeout.value.0,
        max_connections: server.max_connections.value.get(),
        threads: server.threads.value.get(),
        certificates,
        acme,
        redirect_listen: server.redirect_listen.value,
        http2: server.http2.value,
        canonical_redirect: server.canonical_redirect.value,
        http2_max_streams: server.http2_max_streams.value.get(),
        hsts_max_age: server.hsts_max_age.value.map(|d| d.0),
        store,
        password_policy,
        hash_concurrency: passwords.hash_concurrency.value.get(),
        instance_secret,
        instance_secret_file,
    })
}

/// Checks a declared client's secret source and reads `secret_env`.
fn declared_client(
    n: usize,
    entry: toml::Spanned<DeclaredClient>,
    env: &Env,
    check: &mut Check<'_, '_>,
) -> DeclaredClient {
    let span = entry.span();
    let mut c = entry.into_inner();
    let key = format!("clients[{n}] ({})", c.id);
    match (c.confidential, &c.secret_env, &c.secret_file) {
        (true, Some(_), Some(_)) => {
            check.error(Some(&span), &key, "give secret_env or secret_file, not both");
        }
        (true, None, None) => check.error(
            Some(&span),
            &key,
            "a confidential client needs secret_env (an environment variable holding the secret) or secret_file",
        ),
        (true, Some(var), None) => match env.get(var) {
            Some(secret) => c.secret = Some(Secret::new(secret.to_owned())),
            None => check.env_error(var, &format!("{key}.secret_env"), "is not set"),
        },
        (false, Some(_), _) | (false, _, Some(_)) => check.error(
            Some(&span),
            &key,
            "a public client has no secret; remove secret_env/secret_file or set confidential = true",
        ),
        _ => {}
    }
    c
}

/// The issuer a server listening on `addr` has when none is configured: `http(s)://localhost:PORT`
/// for loopback and wildcard addresses, else `http(s)://ADDR`.
/// The issuer when none is configured: the first ACME domain (with the port unless 443), or
/// [`issuer_for`] the listening address.
pub fn default_issuer(
    addr: SocketAddr,
    tls: bool,
    acme: Option<&crate::acme::AcmeConfig>,
) -> String {
    match acme.and_then(|a| a.domains.first()) {
        Some(domain) if addr.port() == 443 => format!("https://{domain}"),
        Some(domain) => format!("https://{domain}:{}", addr.port()),
        None => issuer_for(addr, tls),
    }
}

/// Checks `[server.acme]`; `None` when it names no domain.
/// `[mail]`: the transport, its server and credentials, the sender.
fn mail_config(
    mail: &schema::Mail,
    idp: &IdpSettings,
    data_dir: &Path,
    env: &Env,
    check: &mut Check<'_, '_>,
) -> crate::mail::MailConfig {
    use crate::mail::{SmtpConfig, SmtpTls, TransportKind};
    let transport = mail.transport.value.0;
    let from_text = if mail.from.value.is_empty() {
        let host = url::Url::parse(&idp.issuer)
            .ok()
            .and_then(|u| u.domain().map(str::to_owned))
            .unwrap_or_else(|| "localhost".into());
        let name = idp.branding.app_name.replace(['"', '\\'], "");
        format!("\"{name}\" <no-reply@{host}>")
    } else {
        mail.from.value.clone()
    };
    let from = from_text.parse::<lettre::message::Mailbox>().unwrap_or_else(|e| {
        check.error(
            mail.from.span.as_ref(),
            "mail.from",
            format!("{from_text:?} is not a mailbox ({e}); write `Name <address@example.com>` or an address"),
        );
        lettre::message::Mailbox::new(None, lettre::Address::new("no-reply", "localhost").expect("a valid address"))
    });
    let tls = mail.smtp_tls.value.0;
    let smtp = (transport == TransportKind::Smtp).then(|| {
        let host = mail.smtp_host.value.trim().to_owned();
        if host.is_empty() {
            check.error(
                mail.transport.span.as_ref(),
                "mail.smtp_host",
                "mail.transport = \"smtp\" needs the SMTP server's host name in mail.smtp_host",
            );
        }
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if tls == SmtpTls::None && !loopback && !host.is_empty() {
            check.error(
                mail.smtp_tls.span.as_ref(),
                "mail.smtp_tls",
                format!("\"none\" sends passwords and reset links in clear text: allowed only for a relay on loopback, not {host}; use \"starttls\" or \"tls\""),
            );
        }
        let password = match (env.get(SMTP_PASSWORD_ENV), &mail.smtp_password_file.value) {
            (Some(p), None) => Some(Secret::new(p.to_owned())),
            (None, Some(path)) => match std::fs::read_to_string(&path.0) {
                Ok(p) => Some(Secret::new(p.trim_end_matches(['\r', '\n']).to_owned())),
                Err(e) => {
                    check.error(
                        mail.smtp_password_file.span.as_ref(),
                        "mail.smtp_password_file",
                        format!("cannot read {}: {e}", path.0.display()),
                    );
                    None
                }
            },
            (Some(_), Some(_)) => {
                check.env_error(
                    SMTP_PASSWORD_ENV,
                    "mail.smtp_password_file",
                    "both are set; keep one source for the SMTP password",
                );
                None
            }
            (None, None) => None,
        };
        let username = Some(mail.smtp_username.value.clone()).filter(|u| !u.is_empty());
        if username.is_some() != password.is_some() {
            check.error(
                mail.smtp_username.span.as_ref(),
                "mail.smtp_username",
                format!("SMTP authentication needs both mail.smtp_username and a password ({SMTP_PASSWORD_ENV} or mail.smtp_password_file)"),
            );
        }
        let ca_pem = mail.smtp_ca_file.value.as_ref().and_then(|path| {
            match std::fs::read(&path.0) {
                Ok(pem) if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") => {
                    Some(pem)
                }
                Ok(_) => {
                    check.error(
                        mail.smtp_ca_file.span.as_ref(),
                        "mail.smtp_ca_file",
                        format!("{} holds no PEM certificate", path.0.display()),
                    );
                    None
                }
                Err(e) => {
                    check.error(
                        mail.smtp_ca_file.span.as_ref(),
                        "mail.smtp_ca_file",
                        format!("cannot read {}: {e}", path.0.display()),
                    );
                    None
                }
            }
        });
        let port = mail.smtp_port.value.map_or(
            match tls {
                SmtpTls::Starttls => 587,
                SmtpTls::Tls => 465,
                SmtpTls::None => 25,
            },
            |p| p.get(),
        );
        SmtpConfig {
            host,
            port,
            tls,
            username,
            password,
            ca_pem,
        }
    });
    crate::mail::MailConfig {
        transport,
        from,
        smtp,
        directory: mail
            .directory
            .value
            .as_ref()
            .map_or_else(|| data_dir.join("outbox"), |p| p.0.clone()),
        give_up_after: mail.give_up_after.value.0,
    }
}

/// `idp.legacy_verifier_url` and its secret.
fn legacy_config(
    idp: &schema::Idp,
    env: &Env,
    check: &mut Check<'_, '_>,
) -> Option<crate::legacy::LegacyConfig> {
    let url = idp.legacy_verifier_url.value.as_ref()?.0.clone();
    let parsed = url::Url::parse(&url).ok();
    let loopback = parsed
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    if parsed.as_ref().is_some_and(|u| u.scheme() == "http") && !loopback {
        check.error(
            idp.legacy_verifier_url.span.as_ref(),
            "idp.legacy_verifier_url",
            "passwords are sent to it: use https (plain http only on loopback)",
        );
    }
    let secret = match (
        env.get(LEGACY_SECRET_ENV),
        &idp.legacy_verifier_secret_file.value,
    ) {
        (Some(s), None) => Some(Secret::new(s.to_owned())),
        (None, Some(path)) => match std::fs::read_to_string(&path.0) {
            Ok(s) => Some(Secret::new(s.trim_end_matches(['\r', '\n']).to_owned())),
            Err(e) => {
                check.error(
                    idp.legacy_verifier_secret_file.span.as_ref(),
                    "idp.legacy_verifier_secret_file",
                    format!("cannot read {}: {e}", path.0.display()),
                );
                None
            }
        },
        (Some(_), Some(_)) => {
            check.env_error(
                LEGACY_SECRET_ENV,
                "idp.legacy_verifier_secret_file",
                "both are set; keep one source for the legacy verifier's secret",
            );
            None
        }
        (None, None) => None,
    };
    Some(crate::legacy::LegacyConfig { url, secret })
}

/// `[[idp.providers]]`: each checked, ids unique, secrets read from their file or the
/// environment.
fn federation_config(
    idp: &schema::Idp,
    accounts: &portcullis_idp::AccountSettings,
    env: &Env,
    check: &mut Check<'_, '_>,
) -> Vec<crate::federation::ProviderConfig> {
    use portcullis_idp::SignupMode;
    let open = matches!(accounts.signup, SignupMode::Open | SignupMode::Domains);
    let domains: &[String] = if accounts.signup == SignupMode::Domains {
        &accounts.signup_domains
    } else {
        &[]
    };
    let mut out: Vec<crate::federation::ProviderConfig> = Vec::new();
    for entry in &idp.providers {
        let p = entry.get_ref();
        let secret = env.get(&crate::federation::secret_env(&p.id));
        match p.check(secret, (open, domains)) {
            Ok(c) if out.iter().any(|o| o.id == c.id) => check.error(
                Some(&entry.span()),
                "idp.providers",
                format!("the id {:?} is used twice", c.id),
            ),
            Ok(c) => out.push(c),
            Err((key, message)) => check.error(
                Some(&entry.span()),
                &format!("idp.providers.{key}"),
                format!("{}: {message}", p.id),
            ),
        }
    }
    out
}

/// The `idp.signup*` and link settings.
fn account_settings(
    idp: &schema::Idp,
    has_mail: bool,
    check: &mut Check<'_, '_>,
) -> portcullis_idp::AccountSettings {
    use portcullis_idp::SignupMode;
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect()
    };
    let signup = idp.signup.value.0;
    if signup != SignupMode::Closed && !has_mail {
        check.error(
            idp.signup.span.as_ref(),
            "idp.signup",
            "sign-up mails each new user a verification link: set mail.transport (docs/accounts.md)",
        );
    }
    let domains: Vec<String> = list(&idp.signup_domains.value)
        .into_iter()
        .map(|d| d.trim_start_matches('@').to_ascii_lowercase())
        .collect();
    if signup == SignupMode::Domains && domains.is_empty() {
        check.error(
            idp.signup.span.as_ref(),
            "idp.signup_domains",
            "idp.signup = \"domains\" needs the allowed e-mail domains in idp.signup_domains",
        );
    }
    for d in &domains {
        if !valid_dns_name(d) {
            check.error(
                idp.signup_domains.span.as_ref(),
                "idp.signup_domains",
                format!("{d:?} is not a domain name"),
            );
        }
    }
    let mut attributes: Vec<portcullis_idp::CustomAttribute> = Vec::new();
    for entry in &idp.signup_attributes {
        let a = entry.get_ref();
        if let Err(e) = a.validate() {
            check.error(Some(&entry.span()), "idp.signup_attributes", e);
        } else if attributes
            .iter()
            .any(|b| b.name.eq_ignore_ascii_case(&a.name))
        {
            check.error(
                Some(&entry.span()),
                "idp.signup_attributes",
                format!("{} is declared twice", a.name),
            );
        } else {
            attributes.push(a.clone());
        }
    }
    let groups = list(&idp.signup_groups.value);
    for g in &groups {
        if let Err(e) = portcullis_idp::validate_group_name(g) {
            check.error(
                idp.signup_groups.span.as_ref(),
                "idp.signup_groups",
                e.to_string(),
            );
        }
    }
    portcullis_idp::AccountSettings {
        signup,
        signup_domains: domains,
        signup_groups: groups,
        signup_attributes: attributes,
        require_verified_email: idp.require_verified_email.value,
        verify_ttl: idp.verify_link_ttl.value.secs(),
        reset_ttl: idp.reset_link_ttl.value.secs(),
        invite_ttl: idp.invite_link_ttl.value.secs(),
        mail: has_mail,
        rate_per_address: idp.account_rate_per_address.value.get(),
        self_deletion: idp.account_deletion.value,
    }
}

fn acme_config(
    acme: &schema::Acme,
    redirect_listener: bool,
    check: &mut Check<'_, '_>,
) -> Option<crate::acme::AcmeConfig> {
    let mut domains: Vec<String> = acme
        .domains
        .value
        .split([',', ' '])
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    domains.sort();
    domains.dedup();
    if domains.is_empty() {
        return None;
    }
    let span = acme.domains.span.as_ref();
    for d in &domains {
        if d.starts_with("*.") {
            check.error(
                span,
                "server.acme.domains",
                format!("{d}: a wildcard needs the DNS-01 challenge, which portcullis does not answer; list each name"),
            );
        } else if !valid_dns_name(d) {
            check.error(
                span,
                "server.acme.domains",
                format!(
                    "{d:?} is not a DNS name (letters, digits and hyphens, in dot-separated labels)"
                ),
            );
        }
    }
    if domains.len() > 100 {
        check.error(
            span,
            "server.acme.domains",
            "at most 100 names in one certificate",
        );
    }
    let contact = acme.contact.value.trim().to_owned();
    if !contact.is_empty()
        && (!contact.contains('@')
            || contact.contains(char::is_whitespace)
            || contact.starts_with("mailto:"))
    {
        check.error(
            acme.contact.span.as_ref(),
            "server.acme.contact",
            "an e-mail address such as ops@example.com (without mailto:)",
        );
    }
    let directory_ca_file = acme.directory_ca_file.value.clone().map(|f| f.0);
    if let Some(file) = &directory_ca_file
        && let Err(e) = portcullis_gateway::forward::upstream_tls(Some(file), None)
    {
        check.error(
            acme.directory_ca_file.span.as_ref(),
            "server.acme.directory_ca_file",
            e.to_string(),
        );
    }
    let challenge = acme.challenge.value.0;
    if challenge == crate::acme::ChallengeKind::Http01 && !redirect_listener {
        check.error(
            acme.challenge.span.as_ref(),
            "server.acme.challenge",
            "http-01 is answered on the plain-HTTP listener: set server.redirect_listen (port 80), or use tls-alpn-01",
        );
    }
    Some(crate::acme::AcmeConfig {
        domains,
        contact,
        directory: acme.directory.value.0.clone(),
        challenge,
        directory_ca_file,
        renew_before: acme.renew_before.value.0,
    })
}

/// A DNS name of at least two labels, each 1–63 letters, digits or inner hyphens.
fn valid_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub fn issuer_for(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        format!("{scheme}://localhost:{}", addr.port())
    } else {
        format!("{scheme}://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, ConfigErrors> {
        load(Some(Path::new("p.toml")), Some(text), &Env::default())
    }

    #[test]
    fn defaults() {
        let c = load(None, None, &Env::default()).expect("defaults load");
        assert_eq!(c.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(c.store.url, "sqlite://./portcullis-data/portcullis.db");
        assert_eq!(c.store.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.password_policy, PasswordPolicy::default());
    }

    #[test]
    fn every_error_is_reported_with_key_and_line() {
        let text = "data_dir = 7\n[store]\nurll = \"x\"\nmax_connections = \"ten\"\n[passwords]\nmin_length = 3\n";
        let errs = load_str(text).expect_err("invalid").0;
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("p.toml:1:12: `data_dir`: expected a file path"),
            "{}",
            shown[0]
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("p.toml:3:1: `store.urll`: unknown key")),
            "{shown:#?}"
        );
        assert!(shown.iter().any(|s| s.contains("p.toml:4:")
            && s.contains("`store.max_connections`: expected an integer")));
        assert!(
            shown
                .iter()
                .any(|s| s.contains("p.toml:6:") && s.contains("3 is out of range"))
        );
    }

    #[test]
    fn unknown_section_and_syntax_errors() {
        let errs = load_str("[nope]\nx = 1\n").expect_err("unknown").0;
        assert_eq!(errs[0].key, "nope");
        let errs = load_str("[store\nurl = 1").expect_err("syntax").0;
        assert!(errs[0].location.starts_with("p.toml:1:"), "{:?}", errs[0]);
    }

    #[test]
    fn environment_overrides_the_file_and_names_itself_in_errors() {
        let env = Env::from([
            ("PORTCULLIS_STORE_URL", "postgres://db/x"),
            ("PORTCULLIS_SERVER_LISTEN", "0.0.0.0:9000"),
        ]);
        let c = load(None, Some("[store]\nurl = \"sqlite:///a.db\"\n"), &env).expect("loads");
        assert_eq!(c.store.url, "postgres://db/x");
        assert_eq!(c.listen.port(), 9000);
        let env = Env::from([("PORTCULLIS_STORE_CONNECT_TIMEOUT", "soon")]);
        let errs = load(None, None, &env).expect_err("bad duration").0;
        assert_eq!(
            errs[0].location,
            "environment variable PORTCULLIS_STORE_CONNECT_TIMEOUT"
        );
    }

    #[test]
    fn instance_secret_rules() {
        let env = Env::from([(INSTANCE_SECRET_ENV, "short")]);
        assert!(load(None, None, &env).is_err());
        let env = Env::from([(INSTANCE_SECRET_ENV, "0123456789abcdef0123456789abcdef")]);
        let c = load(None, None, &env).expect("ok");
        assert_eq!(format!("{:?}", c.instance_secret), "Some(<redacted>)");
    }

    #[test]
    fn defaults_parse_and_every_key_is_documented() {
        // Every default goes through its type's parser (a bad one panics here, not in use).
        let file = schema::File::default();
        assert_eq!(file.server.max_connections.value.0, 10_000);
        let keys: Vec<_> = schema::keys().collect();
        let mut envs: Vec<String> = keys.iter().map(|k| k.env()).collect();
        envs.sort();
        envs.dedup();
        assert_eq!(envs.len(), keys.len(), "environment variables are unique");
        for k in keys {
            assert!(!k.description().is_empty(), "{} is documented", k.path);
        }
    }

    #[test]
    fn errors_in_arrays_of_tables_are_all_reported_with_the_scalars() {
        let text = "[server]\nlisten = 1\n[[clients]]\nid = \"a\"\nredirect_uri = \"x\"\n[[clients]]\nid = \"b\"\nconfidential = true\n[[routes]]\npath = 7\n";
        let errs = load_str(text).expect_err("invalid").0;
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("p.toml:2:10: `server.listen`"),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with(
                "p.toml:5:1: `clients[0] (a).redirect_uri`: unknown field `redirect_uri`"
            ),
            "{shown:#?}"
        );
        assert!(
            shown[2].contains("`clients[1] (b)`: a confidential client needs secret_env"),
            "{shown:#?}"
        );
        assert!(
            shown[3].starts_with("p.toml:10:8: `routes[0].path`"),
            "{shown:#?}"
        );
    }

    #[test]
    fn environment_overrides_reach_every_type() {
        let env = Env::from([
            (
                "PORTCULLIS_IDP_GROUP_SCOPES",
                r#"{"admin": ["orders/admin"]}"#,
            ),
            ("PORTCULLIS_GATEWAY_ACCESS_LOG", "no"),
            ("PORTCULLIS_IDP_ACCESS_TOKEN_ALG", "RS256"),
            ("PORTCULLIS_SERVER_MAX_CONNECTIONS", "77"),
        ]);
        // The variable replaces the file's value before it is checked.
        let c = load(None, Some("[gateway]\naccess_log = \"maybe\"\n"), &env).expect("loads");
        assert_eq!(c.idp.group_scopes["admin"], vec!["orders/admin".to_owned()]);
        assert!(!c.gateway.access_log);
        assert_eq!(c.idp.access_alg, portcullis_token::Algorithm::RS256);
        assert_eq!(c.max_connections, 77);
        let env = Env::from([("PORTCULLIS_IDP_ACCESS_TOKEN_ALG", "none")]);
        let errs = load(None, None, &env).expect_err("bad algorithm").0;
        assert_eq!(
            errs[0].to_string(),
            "environment variable PORTCULLIS_IDP_ACCESS_TOKEN_ALG: `idp.access_token_alg`: \"none\" is not one of ES256, RS256, EdDSA"
        );
    }
}
