//! Configuration: a TOML file plus `PORTCULLIS_*` environment overrides.
//!
//! Raw → validated: the file is read into a spanned TOML tree, every key is checked against the
//! schema in [`KEYS`] (unknown keys, wrong types and out-of-range values are all collected, each
//! with its line and column), environment overrides are applied, and only then is a typed
//! [`Config`] built. `portcullis config check` prints every error at once.
//!
//! The process environment is read in exactly one place ([`Env::process`]); tests pass their
//! own [`Env`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_idp::{Branding, IdpSettings, PasswordPolicy};
use portcullis_store::{SqliteSync, StoreOptions};
use portcullis_token::Algorithm;
use portcullis_token::Secret;
use toml::de::{DeTable, DeValue};

/// The type a key's value must have.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Str,
    Path,
    Addr,
    Duration {
        min: Duration,
        max: Duration,
    },
    Int {
        min: i64,
        max: i64,
    },
    Enum(&'static [&'static str]),
    Bool,
    /// A table of string arrays, such as `admin = ["orders/admin"]`.
    ListMap,
    /// A URL (http or https).
    Url,
    /// A CSS hex colour such as "#1d4ed8".
    Colour,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Str => f.write_str("a string"),
            Kind::Path => f.write_str("a file path (string)"),
            Kind::Addr => f.write_str("an IP address and port such as \"127.0.0.1:8080\""),
            Kind::Duration { .. } => f.write_str("a duration such as \"5s\" or \"250ms\""),
            Kind::Int { min, max } => write!(f, "an integer from {min} to {max}"),
            Kind::Enum(options) => write!(f, "one of {}", options.join(", ")),
            Kind::Bool => f.write_str("true or false"),
            Kind::ListMap => f.write_str("a table of string arrays"),
            Kind::Url => f.write_str("an http(s) URL"),
            Kind::Colour => f.write_str("a hex colour such as \"#1d4ed8\""),
        }
    }
}

/// One configuration key: where it lives, its type, its environment variable and its default.
#[derive(Debug)]
pub struct KeySpec {
    pub path: &'static str,
    pub kind: Kind,
    pub env: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Every key portcullis reads. `docs/configuration.md` and `portcullis.example.toml` list the
/// same keys; a test keeps them in step.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        path: "data_dir",
        kind: Kind::Path,
        env: "PORTCULLIS_DATA_DIR",
        default: "./portcullis-data",
        doc: "Directory for the SQLite database and other local state; created if missing.",
    },
    KeySpec {
        path: "server.listen",
        kind: Kind::Addr,
        env: "PORTCULLIS_SERVER_LISTEN",
        default: "127.0.0.1:8080",
        doc: "Address and port the server listens on (`serve --listen` overrides it).",
    },
    KeySpec {
        path: "server.admin_listen",
        kind: Kind::Str,
        env: "PORTCULLIS_SERVER_ADMIN_LISTEN",
        default: "",
        doc: "Address of the admin listener that serves Prometheus `/metrics` (empty: no admin listener). Keep it off the public network.",
    },
    KeySpec {
        path: "server.trusted_proxies",
        kind: Kind::Str,
        env: "PORTCULLIS_SERVER_TRUSTED_PROXIES",
        default: "",
        doc: "Load balancers or proxies in front of portcullis, as comma-separated addresses or CIDR ranges (`10.0.0.0/8, 192.0.2.7`). A request from one of them is attributed to the address it puts in `X-Forwarded-For` (the nearest hop that is not itself trusted), for sign-in throttling and for the `X-Forwarded-For` sent upstream. Empty: `X-Forwarded-For` from clients is never believed.",
    },
    KeySpec {
        path: "server.allow_insecure_http",
        kind: Kind::Bool,
        env: "PORTCULLIS_SERVER_ALLOW_INSECURE_HTTP",
        default: "false",
        doc: "Development mode: allow a plain-http issuer other than localhost (say a LAN address). Cookies then lose `Secure` and the `__Host-` prefix, so anyone on the network can read them. Never in production.",
    },
    KeySpec {
        path: "server.shutdown_grace",
        kind: Kind::Duration {
            min: Duration::ZERO,
            max: Duration::from_secs(300),
        },
        env: "PORTCULLIS_SERVER_SHUTDOWN_GRACE",
        default: "10s",
        doc: "On SIGTERM or Ctrl-C, how long in-flight requests may take to finish.",
    },
    KeySpec {
        path: "server.header_timeout",
        kind: Kind::Duration {
            min: Duration::from_secs(1),
            max: Duration::from_secs(300),
        },
        env: "PORTCULLIS_SERVER_HEADER_TIMEOUT",
        default: "15s",
        doc: "How long a client has to send a request's headers, which is also how long an idle keep-alive connection stays open. Slow-header (slowloris) connections are closed after it.",
    },
    KeySpec {
        path: "server.request_timeout",
        kind: Kind::Duration {
            min: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        },
        env: "PORTCULLIS_SERVER_REQUEST_TIMEOUT",
        default: "30s",
        doc: "How long a request to portcullis' own endpoints (sign-in, OAuth 2.0, `/auth/*`) may take, reading its body included: 408 past it, so a client trickling a body cannot hold a connection. Gateway routes have `gateway.upstream_timeout` and `gateway.total_timeout` instead.",
    },
    KeySpec {
        path: "server.max_connections",
        kind: Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        env: "PORTCULLIS_SERVER_MAX_CONNECTIONS",
        default: "10000",
        doc: "Client connections served at once. At the limit new connections wait in the kernel's accept queue until one closes. Keep the process's open-file limit (`ulimit -n`) above it.",
    },
    KeySpec {
        path: "server.max_header_bytes",
        kind: Kind::Int {
            min: 8192,
            max: 1 << 20,
        },
        env: "PORTCULLIS_SERVER_MAX_HEADER_BYTES",
        default: "65536",
        doc: "Largest request head (request line and headers), in bytes: beyond it the answer is 431 and the connection is closed.",
    },
    KeySpec {
        path: "store.url",
        kind: Kind::Str,
        env: "PORTCULLIS_STORE_URL",
        default: "sqlite://<data_dir>/portcullis.db",
        doc: "`sqlite:///path/file.db` or `postgres://user:password@host:5432/db`. Prefer the environment variable when the URL holds a password.",
    },
    KeySpec {
        path: "store.max_connections",
        kind: Kind::Int { min: 1, max: 1000 },
        env: "PORTCULLIS_STORE_MAX_CONNECTIONS",
        default: "8",
        doc: "Upper bound on pooled database connections per process.",
    },
    KeySpec {
        path: "store.connect_timeout",
        kind: Kind::Duration {
            min: Duration::from_millis(100),
            max: Duration::from_secs(120),
        },
        env: "PORTCULLIS_STORE_CONNECT_TIMEOUT",
        default: "5s",
        doc: "How long to wait for the database at start-up (and in CLI commands) before reporting it unreachable.",
    },
    KeySpec {
        path: "store.acquire_timeout",
        kind: Kind::Duration {
            min: Duration::from_millis(50),
            max: Duration::from_secs(120),
        },
        env: "PORTCULLIS_STORE_ACQUIRE_TIMEOUT",
        default: "1s",
        doc: "How long a request waits for a database connection. Past it the store counts as unavailable and the request gets 503 with `Retry-After` (the gateway keeps serving Bearer tokens); while the database is known to be down, requests get that answer at once.",
    },
    KeySpec {
        path: "store.sqlite_synchronous",
        kind: Kind::Enum(&["normal", "full"]),
        env: "PORTCULLIS_STORE_SQLITE_SYNCHRONOUS",
        default: "normal",
        doc: "`normal`: commits survive a process crash. `full`: they also survive power loss, at one fsync per commit.",
    },
    KeySpec {
        path: "passwords.min_length",
        kind: Kind::Int { min: 8, max: 256 },
        env: "PORTCULLIS_PASSWORDS_MIN_LENGTH",
        default: "12",
        doc: "Minimum password length in characters.",
    },
    KeySpec {
        path: "passwords.max_bytes",
        kind: Kind::Int { min: 16, max: 1024 },
        env: "PORTCULLIS_PASSWORDS_MAX_BYTES",
        default: "256",
        doc: "Maximum password length in bytes (bounds hashing work).",
    },
    KeySpec {
        path: "passwords.min_strength",
        kind: Kind::Int { min: 0, max: 4 },
        env: "PORTCULLIS_PASSWORDS_MIN_STRENGTH",
        default: "2",
        doc: "Minimum zxcvbn score (0–4). 2 rejects common and dictionary passwords; 0 turns the check off.",
    },
    KeySpec {
        path: "passwords.hash_concurrency",
        kind: Kind::Int { min: 0, max: 256 },
        env: "PORTCULLIS_PASSWORDS_HASH_CONCURRENCY",
        default: "0",
        doc: "Argon2 hashes computed at once (19 MiB each); 0 means one per CPU.",
    },
    KeySpec {
        path: "secrets.instance_secret_file",
        kind: Kind::Path,
        env: "PORTCULLIS_SECRETS_INSTANCE_SECRET_FILE",
        default: "(none: generated and kept in the store)",
        doc: "File holding the instance secret (at least 32 bytes) that encrypts signing keys at rest. `PORTCULLIS_INSTANCE_SECRET` may hold it instead.",
    },
    KeySpec {
        path: "idp.issuer",
        kind: Kind::Url,
        env: "PORTCULLIS_IDP_ISSUER",
        default: "http://localhost:<port of server.listen>",
        doc: "The issuer URL: the public address of this server as clients reach it, without a trailing slash. Tokens carry it in `iss`.",
    },
    KeySpec {
        path: "idp.groups_claim",
        kind: Kind::Str,
        env: "PORTCULLIS_IDP_GROUPS_CLAIM",
        default: "groups",
        doc: "Name of the claim that lists the user's groups (`cognito:groups` for Cognito compatibility).",
    },
    KeySpec {
        path: "idp.cognito_compat",
        kind: Kind::Bool,
        env: "PORTCULLIS_IDP_COGNITO_COMPAT",
        default: "false",
        doc: "Also emit Cognito's claim names (`cognito:groups`, `cognito:username`) so code written for Cognito works unchanged.",
    },
    KeySpec {
        path: "idp.access_token_alg",
        kind: Kind::Enum(&["ES256", "RS256", "EdDSA"]),
        env: "PORTCULLIS_IDP_ACCESS_TOKEN_ALG",
        default: "ES256",
        doc: "Signature algorithm of access tokens. ES256 signs ~40x faster than RS256.",
    },
    KeySpec {
        path: "idp.id_token_alg",
        kind: Kind::Enum(&["RS256", "ES256"]),
        env: "PORTCULLIS_IDP_ID_TOKEN_ALG",
        default: "RS256",
        doc: "Default signature algorithm of ID tokens (OIDC's default is RS256; a client may choose ES256).",
    },
    KeySpec {
        path: "idp.key_rotation_delay",
        kind: Kind::Duration {
            min: Duration::ZERO,
            max: Duration::from_secs(30 * 86400),
        },
        env: "PORTCULLIS_IDP_KEY_ROTATION_DELAY",
        default: "1h",
        doc: "`keys rotate` publishes new keys at once and signs with them after this delay, so verifiers' caches learn them first.",
    },
    KeySpec {
        path: "idp.session_ttl",
        kind: Kind::Duration {
            min: Duration::from_secs(60),
            max: Duration::from_secs(90 * 86400),
        },
        env: "PORTCULLIS_IDP_SESSION_TTL",
        default: "12h",
        doc: "How long a sign-in at the hosted page lasts (a second application signs in without the password meanwhile).",
    },
    KeySpec {
        path: "idp.refresh_grace",
        kind: Kind::Duration {
            min: Duration::ZERO,
            max: Duration::from_secs(300),
        },
        env: "PORTCULLIS_IDP_REFRESH_GRACE",
        default: "30s",
        doc: "After a refresh token is rotated it still works this long, to the millisecond (parallel requests); used later, its whole family is revoked. `\"0s\"`: any second use is reuse.",
    },
    KeySpec {
        path: "idp.group_scopes",
        kind: Kind::ListMap,
        env: "PORTCULLIS_IDP_GROUP_SCOPES",
        default: "{}",
        doc: "Scopes a group grants its members, e.g. `admin = [\"orders/admin\"]`. In the environment: JSON, `{\"admin\":[\"orders/admin\"]}`.",
    },
    KeySpec {
        path: "idp.lockout_delay",
        kind: Kind::Duration {
            min: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        },
        env: "PORTCULLIS_IDP_LOCKOUT_DELAY",
        default: "1s",
        doc: "After 5 failed sign-ins an account waits this long before the next attempt, doubling with each further failure up to 15 minutes (Cognito's behaviour).",
    },
    KeySpec {
        path: "idp.signin_rate_per_address",
        kind: Kind::Int {
            min: 1,
            max: 1_000_000,
        },
        env: "PORTCULLIS_IDP_SIGNIN_RATE_PER_ADDRESS",
        default: "60",
        doc: "Sign-in attempts accepted per client address (per /64 network for IPv6) per minute on each node: a burst of that many, then one every 60/n seconds; more get \"try again in a minute\". Accounts are throttled separately: after 5 failures a delay that doubles, from 1 s up to 15 min.",
    },
    KeySpec {
        path: "gateway.login_url",
        kind: Kind::Str,
        env: "PORTCULLIS_GATEWAY_LOGIN_URL",
        default: "/auth/login",
        doc: "Where a signed-out visitor of a `page` route is sent, with `?return_to=` the path and query they asked for.",
    },
    KeySpec {
        path: "gateway.forbidden_url",
        kind: Kind::Str,
        env: "PORTCULLIS_GATEWAY_FORBIDDEN_URL",
        default: "/",
        doc: "Where a signed-in visitor of a `page` route they may not see is sent.",
    },
    KeySpec {
        path: "gateway.access_cookie",
        kind: Kind::Str,
        env: "PORTCULLIS_GATEWAY_ACCESS_COOKIE",
        default: "__Host-portcullis-access",
        doc: "Name of the httpOnly cookie that carries the access token (a route's `cookie` token source).",
    },
    KeySpec {
        path: "gateway.public_origin",
        kind: Kind::Url,
        env: "PORTCULLIS_GATEWAY_PUBLIC_ORIGIN",
        default: "(the origin of idp.issuer)",
        doc: "The origin browsers use (`https://app.example.com`): unsafe requests authenticated by cookie must carry it in `Origin`.",
    },
    KeySpec {
        path: "gateway.connect_timeout",
        kind: Kind::Duration {
            min: Duration::from_millis(10),
            max: Duration::from_secs(60),
        },
        env: "PORTCULLIS_GATEWAY_CONNECT_TIMEOUT",
        default: "2s",
        doc: "Connecting to an upstream; past it the client gets 502.",
    },
    KeySpec {
        path: "gateway.upstream_timeout",
        kind: Kind::Duration {
            min: Duration::from_millis(10),
            max: Duration::from_secs(3600),
        },
        env: "PORTCULLIS_GATEWAY_UPSTREAM_TIMEOUT",
        default: "30s",
        doc: "From sending a request upstream to the response headers; past it the client gets 504 (408 if the client had not finished sending its body). A route can set its own (`upstream_timeout` in `[[routes]]`).",
    },
    KeySpec {
        path: "gateway.total_timeout",
        kind: Kind::Duration {
            min: Duration::from_millis(10),
            max: Duration::from_secs(86400),
        },
        env: "PORTCULLIS_GATEWAY_TOTAL_TIMEOUT",
        default: "5m",
        doc: "The whole upstream exchange, response body included: a response still streaming past it is cut off and the connection closed. A route can set its own (`total_timeout` in `[[routes]]`) for long-lived streams such as server-sent events; WebSocket upgrades are not limited by it.",
    },
    KeySpec {
        path: "gateway.access_log",
        kind: Kind::Bool,
        env: "PORTCULLIS_GATEWAY_ACCESS_LOG",
        default: "true",
        doc: "One log line per gateway request (target `portcullis::access`; JSON with `--log-format json`): method, canonical path, route, principal, decision, status, duration. Never the query or a token.",
    },
    KeySpec {
        path: "gateway.max_body",
        kind: Kind::Int {
            min: 0,
            max: 1 << 34,
        },
        env: "PORTCULLIS_GATEWAY_MAX_BODY",
        default: "10485760",
        doc: "Largest request body forwarded, in bytes (413 beyond).",
    },
    KeySpec {
        path: "gateway.token_leeway",
        kind: Kind::Duration {
            min: Duration::ZERO,
            max: Duration::from_secs(300),
        },
        env: "PORTCULLIS_GATEWAY_TOKEN_LEEWAY",
        default: "0s",
        doc: "How long past its `exp` one of this instance's access tokens still counts. 0: strict, refused from the second of `exp` on, so a backend never sees an expired identity. (`nbf` and `iat` may be up to 5 s in the future, for clocks of several nodes. External issuers have their own `leeway`.)",
    },
    KeySpec {
        path: "gateway.refresh_margin",
        kind: Kind::Duration {
            min: Duration::ZERO,
            max: Duration::from_secs(3600),
        },
        env: "PORTCULLIS_GATEWAY_REFRESH_MARGIN",
        default: "30s",
        doc: "A browser session whose access-token cookie has less than this left (or has expired) is refreshed in line by the request that notices, so the backend never receives an identity whose token has expired. Keep it well under `sessions.access_ttl`.",
    },
    KeySpec {
        path: "gateway.strip_request_headers",
        kind: Kind::Str,
        env: "PORTCULLIS_GATEWAY_STRIP_REQUEST_HEADERS",
        default: "",
        doc: "Request headers removed before forwarding, in addition to the built-in list (identity headers of other gateways, path rewrites; see docs/gateway.md): comma-separated names, matched in any case and with `_` or `.` for `-`; a name ending in `*` is a prefix (`X-MyCorp-*`).",
    },
    KeySpec {
        path: "sessions.issuer",
        kind: Kind::Url,
        env: "PORTCULLIS_SESSIONS_ISSUER",
        default: "(this instance's identity provider)",
        doc: "Browser sessions sign in at this external OpenID provider (a Cognito user pool, say) instead of this instance. It must also be a `[[gateway.issuers]]` entry, so the gateway accepts its tokens. A client secret, if the client has one, comes from `PORTCULLIS_SESSIONS_CLIENT_SECRET`.",
    },
    KeySpec {
        path: "sessions.client_id",
        kind: Kind::Str,
        env: "PORTCULLIS_SESSIONS_CLIENT_ID",
        default: "",
        doc: "The app client registered at `sessions.issuer`, with the redirect URI `<origin>/auth/callback` and the sign-out URI `<origin>/`.",
    },
    KeySpec {
        path: "sessions.access_ttl",
        kind: Kind::Duration {
            min: Duration::from_secs(5),
            max: Duration::from_secs(86400),
        },
        env: "PORTCULLIS_SESSIONS_ACCESS_TTL",
        default: "1h",
        doc: "Lifetime of the access token in a browser session with this instance's provider. Short is fine: the gateway refreshes in line, so the browser never sees the expiry.",
    },
    KeySpec {
        path: "branding.app_name",
        kind: Kind::Str,
        env: "PORTCULLIS_BRANDING_APP_NAME",
        default: "portcullis",
        doc: "Name shown on the hosted pages.",
    },
    KeySpec {
        path: "branding.logo_url",
        kind: Kind::Str,
        env: "PORTCULLIS_BRANDING_LOGO_URL",
        default: "",
        doc: "Logo image shown on the hosted pages (https URL or a path on this server).",
    },
    KeySpec {
        path: "branding.primary_colour",
        kind: Kind::Colour,
        env: "PORTCULLIS_BRANDING_PRIMARY_COLOUR",
        default: "#1d4ed8",
        doc: "Colour of buttons, links and focus rings.",
    },
    KeySpec {
        path: "branding.templates_dir",
        kind: Kind::Path,
        env: "PORTCULLIS_BRANDING_TEMPLATES_DIR",
        default: "",
        doc: "Directory whose `base.html`, `login.html`, `error.html` or `signed_out.html` replace the embedded templates (minijinja syntax).",
    },
];

/// Top-level arrays of tables, checked by serde rather than by the key schema.
const TABLE_ARRAYS: &[&str] = &[
    "clients",
    "resource_servers",
    "routes",
    "policy",
    "gateway.issuers",
];

/// A client declared in the configuration file (`[[clients]]`), created or updated at every start.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredClient {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub confidential: bool,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub logout_uris: Vec<String>,
    #[serde(default)]
    pub grants: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub access_ttl: Option<String>,
    pub id_ttl: Option<String>,
    pub refresh_ttl: Option<String>,
    pub id_token_alg: Option<String>,
    /// Name of an environment variable holding the secret of a confidential client.
    pub secret_env: Option<String>,
    /// A file holding the secret of a confidential client.
    pub secret_file: Option<PathBuf>,
    /// The secret read from `secret_env`, filled in by [`load`].
    #[serde(skip)]
    pub secret: Option<Secret<String>>,
}

/// A resource server declared in the configuration file (`[[resource_servers]]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredResourceServer {
    pub identifier: String,
    #[serde(default)]
    pub name: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Declared {
    #[serde(default)]
    clients: Vec<DeclaredClient>,
    #[serde(default)]
    resource_servers: Vec<DeclaredResourceServer>,
    #[serde(default)]
    routes: Vec<portcullis_gateway::settings::RouteConfig>,
    #[serde(default)]
    policy: Vec<toml::Table>,
    #[serde(default)]
    gateway: DeclaredGateway,
}

/// The part of `[gateway]` serde reads (its scalar keys go through the key schema).
#[derive(Debug, Default, serde::Deserialize)]
struct DeclaredGateway {
    #[serde(default)]
    issuers: Vec<portcullis_gateway::issuers::IssuerConfig>,
}

/// The environment variable that may carry the instance secret itself (never a config key, so it
/// cannot end up in a file that is committed).
pub const INSTANCE_SECRET_ENV: &str = "PORTCULLIS_INSTANCE_SECRET";

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
    /// Time allowed for a request head, and for an idle keep-alive connection.
    pub header_timeout: Duration,
    /// The largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Time allowed for a request to portcullis' own endpoints.
    pub request_timeout: Duration,
    /// Client connections served at once.
    pub max_connections: usize,
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
    /// Browser sessions at an external provider: issuer, client id, client secret.
    pub sessions_external: Option<(String, String, Option<Secret<String>>)>,
    /// `[[gateway.issuers]]`: trusted external issuers.
    pub issuers: Vec<portcullis_gateway::issuers::IssuerConfig>,
    /// `[[routes]]`: the gateway's route table.
    pub routes: Vec<portcullis_gateway::settings::RouteConfig>,
    /// `[[policy]]` documents as a policy file, seeded into the store on first start.
    pub policy_seed: Option<String>,
    pub gateway: GatewayConfig,
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
    pub strip_request_headers: Vec<portcullis_gateway::forward::HeaderPattern>,
}

/// A typed value read from the file or the environment.
#[derive(Debug, Clone)]
enum Value {
    Str(String),
    Int(i64),
    Duration(Duration),
    Addr(SocketAddr),
    Bool(bool),
    ListMap(BTreeMap<String, Vec<String>>),
}

/// The Markdown table of every key: what `config reference` prints and what
/// `docs/configuration.md` contains.
pub fn reference() -> String {
    let mut out = String::from(
        "| key | type | default | environment | description |\n|---|---|---|---|---|\n",
    );
    for k in KEYS {
        out.push_str(&format!(
            "| `{}` | {} | `{}` | `{}` | {} |\n",
            k.path, k.kind, k.default, k.env, k.doc
        ));
    }
    out
}

/// Reads and validates configuration. `text` is the file's content (`None`: no file).
pub fn load(source: Option<&Path>, text: Option<&str>, env: &Env) -> Result<Config, ConfigErrors> {
    let file_label = source.map_or_else(|| "<config>".to_owned(), |p| p.display().to_string());
    let mut errors = Vec::new();
    let mut values: BTreeMap<&'static str, Value> = BTreeMap::new();

    if let Some(text) = text {
        let (doc, syntax) = DeTable::parse_recoverable(text);
        for e in syntax {
            let location = e
                .span()
                .map_or_else(|| file_label.clone(), |s| at(&file_label, text, s.start));
            errors.push(ConfigError {
                location,
                key: String::new(),
                message: first_line(e.message()),
            });
        }
        walk(
            doc.get_ref(),
            "",
            text,
            &file_label,
            &mut values,
            &mut errors,
        );
    }
    let mut declared = Declared::default();
    if let Some(text) = text.filter(|_| errors.is_empty()) {
        match toml::from_str::<Declared>(text) {
            Ok(d) => declared = d,
            Err(e) => {
                let location = e
                    .span()
                    .map_or_else(|| file_label.clone(), |s| at(&file_label, text, s.start));
                errors.push(ConfigError {
                    location,
                    key: "clients / resource_servers".into(),
                    message: first_line(e.message()),
                });
            }
        }
        for (n, c) in declared.clients.iter_mut().enumerate() {
            let key = format!("clients[{n}] ({})", c.id);
            for (field, value) in [
                ("access_ttl", &c.access_ttl),
                ("id_ttl", &c.id_ttl),
                ("refresh_ttl", &c.refresh_ttl),
            ] {
                if let Some(v) = value
                    && humantime::parse_duration(v).is_err()
                {
                    errors.push(ConfigError {
                        location: file_label.clone(),
                        key: format!("{key}.{field}"),
                        message: format!("{v:?} is not a duration such as \"1h\""),
                    });
                }
            }
            match (c.confidential, &c.secret_env, &c.secret_file) {
                (true, Some(_), Some(_)) => errors.push(ConfigError { location: file_label.clone(), key: key.clone(), message: "give secret_env or secret_file, not both".into() }),
                (true, None, None) => errors.push(ConfigError { location: file_label.clone(), key: key.clone(), message: "a confidential client needs secret_env (an environment variable holding the secret) or secret_file".into() }),
                (true, Some(var), None) => match env.get(var) {
                    Some(secret) => c.secret = Some(Secret::new(secret.to_owned())),
                    None => errors.push(ConfigError { location: format!("environment variable {var}"), key: format!("{key}.secret_env"), message: "is not set".into() }),
                },
                (false, Some(_), _) | (false, _, Some(_)) => errors.push(ConfigError { location: file_label.clone(), key: key.clone(), message: "a public client has no secret; remove secret_env/secret_file or set confidential = true".into() }),
                _ => {}
            }
        }
    }

    for spec in KEYS {
        if let Some(raw) = env.get(spec.env) {
            match parse_str(spec, raw) {
                Ok(v) => {
                    values.insert(spec.path, v);
                }
                Err(message) => errors.push(ConfigError {
                    location: format!("environment variable {}", spec.env),
                    key: spec.path.to_owned(),
                    message,
                }),
            }
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut config = build(source, values, env)?;
    config.clients = declared.clients;
    config.resource_servers = declared.resource_servers;
    let file_label = source.map_or_else(|| "<config>".to_owned(), |p| p.display().to_string());
    if let Err(e) = portcullis_gateway::route::RouteTable::new(&declared.routes) {
        return Err(ConfigErrors(vec![ConfigError {
            location: file_label,
            key: "routes".into(),
            message: e.to_string(),
        }]));
    }
    config.routes = declared.routes;
    for issuer in &declared.gateway.issuers {
        if let Err(e) = portcullis_gateway::issuers::external(issuer) {
            return Err(ConfigErrors(vec![ConfigError {
                location: file_label.clone(),
                key: "gateway.issuers".into(),
                message: e.to_string(),
            }]));
        }
    }
    config.issuers = declared.gateway.issuers;
    if let Some((issuer, client_id, _)) = &config.sessions_external {
        let trusted = config
            .issuers
            .iter()
            .any(|i| i.issuer.trim_end_matches('/') == issuer && i.audiences.contains(client_id));
        if client_id.is_empty() || !trusted {
            return Err(ConfigErrors(vec![ConfigError {
                location: file_label.clone(),
                key: "sessions.issuer".into(),
                message: format!(
                    "needs sessions.client_id, and a [[gateway.issuers]] entry for {issuer} whose audiences include that client id, so the gateway accepts the session's tokens"
                ),
            }]));
        }
    }
    if !declared.policy.is_empty() {
        let mut doc = toml::Table::new();
        doc.insert(
            "policy".into(),
            toml::Value::Array(
                declared
                    .policy
                    .into_iter()
                    .map(toml::Value::Table)
                    .collect(),
            ),
        );
        let text = toml::to_string(&doc).unwrap_or_default();
        if let Err(e) = portcullis_policy::parse_file(&text) {
            return Err(ConfigErrors(vec![ConfigError {
                location: file_label,
                key: "policy".into(),
                message: e.to_string(),
            }]));
        }
        config.policy_seed = Some(text);
    }
    Ok(config)
}

fn build(
    source: Option<&Path>,
    values: BTreeMap<&'static str, Value>,
    env: &Env,
) -> Result<Config, ConfigErrors> {
    let value = |path: &str| -> Value {
        if let Some(v) = values.get(path) {
            return v.clone();
        }
        let spec = KEYS.iter().find(|k| k.path == path);
        // Defaults are written in the same syntax as the file, so they go through the same parser.
        spec.and_then(|s| parse_str(s, s.default).ok())
            .unwrap_or(Value::Str(String::new()))
    };
    let string = |path: &str| match value(path) {
        Value::Str(s) => s,
        _ => String::new(),
    };
    let int = |path: &str| match value(path) {
        Value::Int(i) => i,
        _ => 0,
    };
    let duration = |path: &str| match value(path) {
        Value::Duration(d) => d,
        _ => Duration::ZERO,
    };
    let mut errors = Vec::new();

    let data_dir = PathBuf::from(string("data_dir"));
    let listen = match value("server.listen") {
        Value::Addr(a) => a,
        _ => SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let url = match values.get("store.url") {
        Some(Value::Str(u)) if !u.is_empty() => u.clone(),
        _ => format!("sqlite://{}", data_dir.join("portcullis.db").display()),
    };
    let store = StoreOptions {
        url,
        max_connections: u32::try_from(int("store.max_connections")).unwrap_or(8),
        connect_timeout: duration("store.connect_timeout"),
        acquire_timeout: duration("store.acquire_timeout"),
        sqlite_sync: if string("store.sqlite_synchronous") == "full" {
            SqliteSync::Full
        } else {
            SqliteSync::Normal
        },
    };
    let password_policy = PasswordPolicy {
        min_chars: usize::try_from(int("passwords.min_length")).unwrap_or(12),
        max_bytes: usize::try_from(int("passwords.max_bytes")).unwrap_or(256),
        min_strength: u8::try_from(int("passwords.min_strength")).unwrap_or(2),
    };
    if password_policy.min_chars > password_policy.max_bytes {
        errors.push(ConfigError {
            location: "passwords".into(),
            key: "passwords.min_length".into(),
            message: format!(
                "is {} but passwords.max_bytes is {}: no password could satisfy both",
                password_policy.min_chars, password_policy.max_bytes
            ),
        });
    }
    let instance_secret = env
        .get(INSTANCE_SECRET_ENV)
        .map(|s| Secret::new(s.to_owned()));
    if let Some(secret) = &instance_secret
        && secret.expose().len() < 32
    {
        errors.push(ConfigError {
            location: format!("environment variable {INSTANCE_SECRET_ENV}"),
            key: String::new(),
            message: "the instance secret must be at least 32 bytes; generate one with `openssl rand -base64 48`".into(),
        });
    }
    let instance_secret_file = match values.get("secrets.instance_secret_file") {
        Some(Value::Str(p)) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => None,
    };
    if instance_secret.is_some() && instance_secret_file.is_some() {
        errors.push(ConfigError {
            location: format!("environment variable {INSTANCE_SECRET_ENV}"),
            key: "secrets.instance_secret_file".into(),
            message: "both are set; keep one source for the instance secret".into(),
        });
    }
    let boolean = |path: &str| matches!(value(path), Value::Bool(true));
    let strip_request_headers = match portcullis_gateway::forward::parse_header_list(&string(
        "gateway.strip_request_headers",
    )) {
        Ok(list) => list,
        Err(message) => {
            errors.push(ConfigError {
                location: "gateway".into(),
                key: "gateway.strip_request_headers".into(),
                message: message.to_string(),
            });
            Vec::new()
        }
    };
    let trusted_proxies = match portcullis_gateway::forwarded::TrustedProxies::parse(&string(
        "server.trusted_proxies",
    )) {
        Ok(t) => t,
        Err(message) => {
            errors.push(ConfigError {
                location: "server".into(),
                key: "server.trusted_proxies".into(),
                message: message.to_string(),
            });
            portcullis_gateway::forwarded::TrustedProxies::default()
        }
    };
    let admin_listen = match string("server.admin_listen").as_str() {
        "" => None,
        a => match a.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errors.push(ConfigError {
                    location: "server".into(),
                    key: "server.admin_listen".into(),
                    message: format!(
                        "{a:?} is not an IP address and port such as \"127.0.0.1:9464\""
                    ),
                });
                None
            }
        },
    };
    let issuer = match values.get("idp.issuer") {
        Some(Value::Str(i)) if !i.is_empty() => Some(i.clone()),
        _ => None,
    };
    let mut idp = IdpSettings::new(issuer.clone().unwrap_or_else(|| issuer_for(listen)));
    idp.groups_claim = string("idp.groups_claim");
    if idp.groups_claim.is_empty() {
        errors.push(ConfigError {
            location: "idp".into(),
            key: "idp.groups_claim".into(),
            message: "must not be empty".into(),
        });
    }
    idp.cognito_compat = boolean("idp.cognito_compat");
    idp.access_alg = Algorithm::parse(&string("idp.access_token_alg")).unwrap_or(Algorithm::ES256);
    idp.id_alg = Algorithm::parse(&string("idp.id_token_alg")).unwrap_or(Algorithm::RS256);
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    idp.key_rotation_delay = secs(duration("idp.key_rotation_delay"));
    idp.session_ttl = secs(duration("idp.session_ttl"));
    idp.refresh_grace_ms =
        i64::try_from(duration("idp.refresh_grace").as_millis()).unwrap_or(i64::MAX);
    idp.lockout_base_delay = secs(duration("idp.lockout_delay"));
    idp.signin_rate_per_address = u32::try_from(int("idp.signin_rate_per_address")).unwrap_or(60);
    if let Value::ListMap(m) = value("idp.group_scopes") {
        idp.group_scopes = m;
    }
    idp.branding = Branding {
        app_name: string("branding.app_name"),
        logo_url: Some(string("branding.logo_url")).filter(|s| !s.is_empty()),
        primary_colour: string("branding.primary_colour"),
    };
    idp.templates_dir = Some(string("branding.templates_dir"))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        idp,
        issuer_configured: issuer.is_some(),
        clients: Vec::new(),
        resource_servers: Vec::new(),
        routes: Vec::new(),
        sessions_access_ttl: i64::try_from(duration("sessions.access_ttl").as_secs())
            .unwrap_or(3600),
        sessions_external: match string("sessions.issuer").as_str() {
            "" => None,
            i => Some((
                i.to_owned(),
                string("sessions.client_id"),
                env.get("PORTCULLIS_SESSIONS_CLIENT_SECRET")
                    .map(|s| Secret::new(s.to_owned())),
            )),
        },
        issuers: Vec::new(),
        policy_seed: None,
        gateway: GatewayConfig {
            login_url: string("gateway.login_url"),
            forbidden_url: string("gateway.forbidden_url"),
            access_cookie: string("gateway.access_cookie"),
            public_origin: Some(string("gateway.public_origin")).filter(|s| !s.is_empty()),
            connect_timeout: duration("gateway.connect_timeout"),
            upstream_timeout: duration("gateway.upstream_timeout"),
            total_timeout: duration("gateway.total_timeout"),
            max_body: usize::try_from(int("gateway.max_body")).unwrap_or(10 << 20),
            access_log: boolean("gateway.access_log"),
            token_leeway: duration("gateway.token_leeway"),
            refresh_margin: duration("gateway.refresh_margin"),
            strip_request_headers,
        },
        source: source.map(Path::to_path_buf),
        data_dir,
        listen,
        admin_listen,
        trusted_proxies,
        allow_insecure_http: boolean("server.allow_insecure_http"),
        shutdown_grace: duration("server.shutdown_grace"),
        header_timeout: duration("server.header_timeout"),
        max_header_bytes: usize::try_from(int("server.max_header_bytes")).unwrap_or(65536),
        request_timeout: duration("server.request_timeout"),
        max_connections: usize::try_from(int("server.max_connections")).unwrap_or(10_000),
        store,
        password_policy,
        hash_concurrency: usize::try_from(int("passwords.hash_concurrency")).unwrap_or(0),
        instance_secret,
        instance_secret_file,
    })
}

/// The issuer a server listening on `addr` has when none is configured: `http://localhost:PORT`
/// for loopback and wildcard addresses, else `http://ADDR`.
pub fn issuer_for(addr: SocketAddr) -> String {
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        format!("http://localhost:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// Checks every entry of a (sub)table against the schema.
fn walk(
    table: &DeTable<'_>,
    prefix: &str,
    text: &str,
    file: &str,
    values: &mut BTreeMap<&'static str, Value>,
    errors: &mut Vec<ConfigError>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let location = at(file, text, key.span().start);
        if TABLE_ARRAYS.contains(&path.as_str()) {
            if !matches!(value.get_ref(), DeValue::Array(_)) {
                errors.push(ConfigError {
                    location,
                    key: path,
                    message: "must be an array of tables ([[...]])".into(),
                });
            }
            continue;
        }
        if let Some(spec) = KEYS.iter().find(|k| k.path == path) {
            match parse_toml(spec, value.get_ref()) {
                Ok(v) => {
                    values.insert(spec.path, v);
                }
                Err(message) => errors.push(ConfigError {
                    location: at(file, text, value.span().start),
                    key: path,
                    message,
                }),
            }
            continue;
        }
        let is_section = KEYS.iter().any(|k| k.path.starts_with(&format!("{path}.")));
        match value.get_ref() {
            DeValue::Table(sub) if is_section => walk(sub, &path, text, file, values, errors),
            _ if is_section => errors.push(ConfigError {
                location,
                key: path,
                message: "must be a table (a [section])".into(),
            }),
            _ => errors.push(ConfigError {
                location,
                key: path.clone(),
                message: unknown_key_message(&path),
            }),
        }
    }
}

fn unknown_key_message(path: &str) -> String {
    let section = path.rsplit_once('.').map_or("", |(s, _)| s);
    let siblings: Vec<&str> = KEYS
        .iter()
        .filter(|k| k.path.rsplit_once('.').map_or("", |(s, _)| s) == section)
        .map(|k| k.path)
        .collect();
    format!("unknown key; the keys here are: {}", siblings.join(", "))
}

fn parse_toml(spec: &KeySpec, value: &DeValue<'_>) -> Result<Value, String> {
    let wrong = |found: &str| format!("expected {}, found {found}", spec.kind);
    match (spec.kind, value) {
        (Kind::Int { .. }, DeValue::Integer(i)) => {
            let digits = i.as_str().replace('_', "");
            let n = i64::from_str_radix(&digits, i.radix())
                .map_err(|e| format!("invalid integer: {e}"))?;
            check_int(spec, n)
        }
        (Kind::Int { .. }, other) => Err(wrong(type_name(other))),
        (Kind::Bool, DeValue::Boolean(b)) => Ok(Value::Bool(*b)),
        (Kind::Bool, other) => Err(wrong(type_name(other))),
        (Kind::ListMap, DeValue::Table(t)) => {
            let mut map = BTreeMap::new();
            for (k, v) in t {
                let DeValue::Array(items) = v.get_ref() else {
                    return Err(format!("`{}` must be an array of strings", k.get_ref()));
                };
                let mut list = Vec::new();
                for item in items {
                    match item.get_ref() {
                        DeValue::String(s) => list.push(s.to_string()),
                        other => {
                            return Err(format!(
                                "`{}` must hold strings, found {}",
                                k.get_ref(),
                                type_name(other)
                            ));
                        }
                    }
                }
                map.insert(k.get_ref().to_string(), list);
            }
            Ok(Value::ListMap(map))
        }
        (Kind::ListMap, other) => Err(wrong(type_name(other))),
        (_, DeValue::String(s)) => parse_str(spec, s),
        (_, other) => Err(wrong(type_name(other))),
    }
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn check_int(spec: &KeySpec, n: i64) -> Result<Value, String> {
    match spec.kind {
        Kind::Int { min, max } if !(min..=max).contains(&n) => {
            Err(format!("{n} is out of range: expected {}", spec.kind))
        }
        _ => Ok(Value::Int(n)),
    }
}

/// Parses a value given as a string (an environment variable, a default, or a TOML string).
fn parse_str(spec: &KeySpec, raw: &str) -> Result<Value, String> {
    match spec.kind {
        Kind::Str | Kind::Path => {
            if raw.contains('\0') {
                return Err("must not contain NUL".into());
            }
            Ok(Value::Str(raw.to_owned()))
        }
        Kind::Enum(options) => {
            if options.contains(&raw) {
                Ok(Value::Str(raw.to_owned()))
            } else {
                Err(format!("{raw:?} is not {}", spec.kind))
            }
        }
        Kind::Addr => raw
            .parse::<SocketAddr>()
            .map(Value::Addr)
            .map_err(|_| format!("{raw:?} is not {}", spec.kind)),
        Kind::Int { .. } => {
            let n = raw
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("{raw:?} is not {}", spec.kind))?;
            check_int(spec, n)
        }
        Kind::Bool => match raw {
            "true" | "1" | "yes" => Ok(Value::Bool(true)),
            "false" | "0" | "no" => Ok(Value::Bool(false)),
            _ => Err(format!("{raw:?} is not {}", spec.kind)),
        },
        Kind::ListMap => serde_json::from_str::<BTreeMap<String, Vec<String>>>(raw)
            .map(Value::ListMap)
            .map_err(|e| format!("expected a JSON object of string arrays: {e}")),
        Kind::Url => match url::Url::parse(raw) {
            _ if raw.is_empty() => Ok(Value::Str(String::new())),
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                Ok(Value::Str(raw.trim_end_matches('/').to_owned()))
            }
            _ => Err(format!(
                "{raw:?} is not {} (no query or fragment)",
                spec.kind
            )),
        },
        Kind::Colour => {
            let hex = raw.strip_prefix('#').unwrap_or("");
            if matches!(hex.len(), 3 | 4 | 6 | 8) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(Value::Str(raw.to_owned()))
            } else {
                Err(format!("{raw:?} is not {}", spec.kind))
            }
        }
        Kind::Duration { min, max } => {
            let d = humantime::parse_duration(raw)
                .map_err(|_| format!("{raw:?} is not {}", spec.kind))?;
            if d < min || d > max {
                return Err(format!(
                    "{raw} is out of range: expected between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ));
            }
            Ok(Value::Duration(d))
        }
    }
}

/// `file:line:column` for a byte offset.
fn at(file: &str, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{file}:{line}:{column}")
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
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
    fn defaults_parse_and_match_kinds() {
        for spec in KEYS {
            if spec.default.starts_with('(') || spec.default.contains('<') {
                continue;
            }
            parse_str(spec, spec.default)
                .unwrap_or_else(|e| panic!("default of {}: {e}", spec.path));
        }
    }
}
