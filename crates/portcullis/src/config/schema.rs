//! The configuration file as types: one struct per section, each key with its type, default
//! and documentation written once. `config reference` (and so `docs/configuration.md`) is
//! generated from the same declarations, and every key may be overridden by the environment
//! variable `PORTCULLIS_<SECTION>_<KEY>`.

use std::net::SocketAddr;
use std::path::PathBuf;

use portcullis_store::SqliteSync;
use portcullis_token::Secret;
use serde::Deserialize;
use toml::Spanned;

use super::setting::{
    AccessAlg, Colour, Dur, FilePath, GroupScopes, HttpUrl, IdAlg, Int, KeyDoc, Lifetime, OneOf,
    Set,
};

/// Declares a section: a serde struct whose every key is a [`Set`] with a default (missing keys
/// take it, unknown keys are refused), and its [`KeyDoc`]s. `shown` is how the reference shows
/// a default that is computed from other settings.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident in $prefix:literal {
            $(
                $(#[doc = $doc:literal])+
                $field:ident : $ty:ty = $default:literal $(shown $shown:literal)? ;
            )+
            $(
                tables {
                    $( $(#[doc = $tdoc:literal])* $tfield:ident : $tty:ty ; )+
                }
            )?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: Set<$ty>, )+
            $( $( $(#[doc = $tdoc])* pub $tfield: $tty, )+ )?
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $( $field: Set::default_from($default), )+
                    $( $( $tfield: Default::default(), )+ )?
                }
            }
        }

        impl $name {
            pub const KEYS: &'static [KeyDoc] = &[
                $(
                    KeyDoc {
                        path: concat!($prefix, stringify!($field)),
                        kind: <$ty as super::setting::Setting>::kind,
                        default: section!(@shown $default $(, $shown)?),
                        doc: &[$($doc),+],
                    },
                )+
            ];
        }
    };
    (@shown $default:literal) => { $default };
    (@shown $default:literal, $shown:literal) => { $shown };
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct File {
    pub data_dir: Set<FilePath>,
    pub server: Server,
    pub store: Store,
    pub passwords: Passwords,
    pub secrets: Secrets,
    pub idp: Idp,
    pub mail: Mail,
    pub audit: Audit,
    pub telemetry: Telemetry,
    pub gateway: Gateway,
    pub sessions: Sessions,
    pub branding: Branding,
    /// `[[clients]]`: created or updated at every start.
    pub clients: Vec<Spanned<DeclaredClient>>,
    /// `[[resource_servers]]`.
    pub resource_servers: Vec<DeclaredResourceServer>,
    /// `[[routes]]`: the gateway's route table.
    pub routes: Vec<Spanned<portcullis_gateway::settings::RouteConfig>>,
    /// `[[policy]]`: seeded into an empty store.
    pub policy: Vec<Spanned<portcullis_policy::RawDocument>>,
}

impl Default for File {
    fn default() -> Self {
        File {
            data_dir: Set::default_from(DATA_DIR.default),
            server: Server::default(),
            store: Store::default(),
            passwords: Passwords::default(),
            secrets: Secrets::default(),
            idp: Idp::default(),
            mail: Mail::default(),
            audit: Audit::default(),
            telemetry: Telemetry::default(),
            gateway: Gateway::default(),
            sessions: Sessions::default(),
            branding: Branding::default(),
            clients: Vec::new(),
            resource_servers: Vec::new(),
            routes: Vec::new(),
            policy: Vec::new(),
        }
    }
}

const DATA_DIR: KeyDoc = KeyDoc {
    path: "data_dir",
    kind: <FilePath as super::setting::Setting>::kind,
    default: "./portcullis-data",
    doc: &["Directory for the SQLite database and other local state; created if missing."],
};

/// Every scalar key, in the order the reference lists them.
pub fn keys() -> impl Iterator<Item = &'static KeyDoc> {
    std::iter::once(&DATA_DIR)
        .chain(Server::KEYS)
        .chain(Acme::KEYS)
        .chain(Store::KEYS)
        .chain(Passwords::KEYS)
        .chain(Secrets::KEYS)
        .chain(Idp::KEYS)
        .chain(Mail::KEYS)
        .chain(Audit::KEYS)
        .chain(Telemetry::KEYS)
        .chain(Gateway::KEYS)
        .chain(Sessions::KEYS)
        .chain(Branding::KEYS)
}

/// The arrays of tables (`[[...]]`), by path.
pub const TABLE_ARRAYS: &[&str] = &[
    "server.certificates",
    "clients",
    "resource_servers",
    "routes",
    "policy",
    "gateway.issuers",
    "idp.signup_attributes",
    "idp.providers",
];

/// The sections (`[...]`).
pub const SECTIONS: &[&str] = &[
    "server",
    "server.acme",
    "store",
    "passwords",
    "secrets",
    "idp",
    "mail",
    "audit",
    "telemetry",
    "gateway",
    "sessions",
    "branding",
];

/// A client declared in the configuration file (`[[clients]]`), created or updated at every start.
#[derive(Debug, Clone, Deserialize)]
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
    pub access_ttl: Option<Set<Lifetime>>,
    pub id_ttl: Option<Set<Lifetime>>,
    pub refresh_ttl: Option<Set<Lifetime>>,
    pub id_token_alg: Option<String>,
    /// Name of an environment variable holding the secret of a confidential client.
    pub secret_env: Option<String>,
    /// A file holding the secret of a confidential client.
    pub secret_file: Option<PathBuf>,
    /// The secret read from `secret_env`, filled in by validation.
    #[serde(skip)]
    pub secret: Option<Secret<String>>,
}

/// A resource server declared in the configuration file (`[[resource_servers]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredResourceServer {
    pub identifier: String,
    #[serde(default)]
    pub name: String,
    pub scopes: Vec<String>,
}

section! {
    /// `[server]`
    pub struct Server in "server." {
        /// Address and port the server listens on (`serve --listen` overrides it).
        listen: SocketAddr = "127.0.0.1:8080";
        /// Address of the admin listener that serves Prometheus `/metrics` (empty: no admin
        /// listener, and no request metrics are recorded). Keep it off the public network.
        admin_listen: Option<SocketAddr> = "";
        /// Load balancers or proxies in front of portcullis, as comma-separated addresses or CIDR
        /// ranges (`10.0.0.0/8, 192.0.2.7`). A request from one of them is attributed to the address
        /// it puts in `X-Forwarded-For` (the nearest hop that is not itself trusted), for sign-in
        /// throttling and for the `X-Forwarded-For` sent upstream. Empty: `X-Forwarded-For` from
        /// clients is never believed.
        trusted_proxies: String = "";
        /// Development mode: allow a plain-http issuer other than localhost (say a LAN address).
        /// Cookies then lose `Secure` and the `__Host-` prefix, so anyone on the network can read
        /// them. Never in production.
        allow_insecure_http: bool = "false";
        /// On SIGTERM or Ctrl-C, how long the node keeps serving while `/readyz` answers 503
        /// ("draining"), so a load balancer's health check takes it out of rotation before it
        /// stops accepting connections. Behind a load balancer, set it above the check's interval
        /// times its fall count (HAProxy `inter 1s fall 2`: "3s").
        shutdown_drain: Dur<0, 300_000> = "0s";
        /// On SIGTERM or Ctrl-C (after `shutdown_drain`), how long in-flight requests may take to
        /// finish.
        shutdown_grace: Dur<0, 300_000> = "10s";
        /// How long a client has to send a request's headers, which is also how long an idle
        /// keep-alive connection stays open. Slow-header (slowloris) connections are closed after it.
        header_timeout: Dur<1_000, 300_000> = "15s";
        /// How long a request to portcullis' own endpoints (sign-in, OAuth 2.0, `/auth/*`) may take,
        /// reading its body included: 408 past it, so a client trickling a body cannot hold a
        /// connection. Gateway routes have `gateway.upstream_timeout` and `gateway.total_timeout`
        /// instead.
        request_timeout: Dur<1_000, 3_600_000> = "30s";
        /// Client connections served at once. At the limit new connections wait in the kernel's
        /// accept queue until one closes. Keep the process's open-file limit (`ulimit -n`) above it.
        max_connections: Int<1, 1_000_000> = "10000";
        /// Threads that serve client connections, each with its own event loop (a connection
        /// stays on one thread from accept to close); 0 means one per CPU.
        threads: Int<0, 1024> = "0";
        /// Largest request head (request line and headers), in bytes: beyond it the answer is 431 and
        /// the connection is closed.
        max_header_bytes: Int<8192, 1_048_576> = "65536";
        /// With TLS: a plain-HTTP listener (such as "0.0.0.0:80") that answers every request
        /// with a permanent redirect (308) to the same path on the https public origin. Empty:
        /// none.
        redirect_listen: Option<SocketAddr> = "";
        /// Send a browser that navigates to this server under another name (`127.0.0.1` when the
        /// issuer is `localhost`, an IP address) to the same path on the public origin, where its
        /// cookies work. Turn it off behind a load balancer that rewrites `Host` without sending
        /// `X-Forwarded-Host`, which would make every page redirect to itself.
        canonical_redirect: bool = "true";
        /// With TLS: offer HTTP/2 to clients (by ALPN, HTTP/1.1 on the same port). Every HTTP/2
        /// request is checked exactly as an HTTP/1.1 one and forwarded to upstreams as HTTP/1.1.
        http2: bool = "true";
        /// Requests one HTTP/2 connection may have in progress at once.
        http2_max_streams: Int<1, 10_000> = "100";
        /// With TLS: `Strict-Transport-Security: max-age=…` on every answer, so browsers use
        /// https only. "0s" turns it off. By default one year when the issuer is https and not
        /// localhost (pinning localhost would follow a developer to every local project).
        hsts_max_age: Option<Dur<0, 63_072_000_000>> = "" shown "1y (https, not localhost)";
        tables {
            /// `[[server.certificates]]`: PEM certificate chains and keys; with any, the listener
            /// speaks TLS (docs/tls.md).
            certificates: Vec<Spanned<crate::tls::CertificateFiles>>;
            /// `[server.acme]`: certificates obtained and renewed automatically.
            acme: Acme;
        }
    }
}

section! {
    /// `[server.acme]`
    pub struct Acme in "server.acme." {
        /// Domain names, comma-separated ("example.com, www.example.com"), to get one certificate
        /// for from an ACME CA such as Let's Encrypt, renewed automatically (docs/tls.md). Empty:
        /// no ACME. Each name must resolve to this server (or its load balancer).
        domains: String = "";
        /// E-mail address the CA writes to about the account and expiring certificates.
        contact: String = "";
        /// The CA's ACME directory URL. Let's Encrypt's staging directory, for trying things out
        /// without its rate limits, is "https://acme-staging-v02.api.letsencrypt.org/directory".
        directory: HttpUrl = "https://acme-v02.api.letsencrypt.org/directory";
        /// How the CA checks that the names are ours: `tls-alpn-01` on the https listener itself
        /// (which must be reachable on port 443), or `http-01` on `server.redirect_listen` (port
        /// 80).
        challenge: OneOf<crate::acme::ChallengeKind> = "tls-alpn-01";
        /// PEM file of the authorities that sign the directory's own https certificate, for a
        /// private CA. Empty: the system's roots.
        directory_ca_file: Option<FilePath> = "";
        /// Renew this long before the certificate expires (or once a third of its lifetime is
        /// left, if that is sooner: short-lived certificates).
        renew_before: Dur<86_400_000, 7_776_000_000> = "30d";
    }
}

section! {
    /// `[store]`
    pub struct Store in "store." {
        /// `sqlite:///path/file.db` or `postgres://user:password@host:5432/db`. Prefer the
        /// environment variable when the URL holds a password.
        url: Option<String> = "" shown "sqlite://<data_dir>/portcullis.db";
        /// Upper bound on pooled database connections per process.
        max_connections: Int<1, 1000> = "8";
        /// How long to wait for the database at start-up (and in CLI commands) before reporting it
        /// unreachable.
        connect_timeout: Dur<100, 120_000> = "5s";
        /// How long a request waits for a database connection. Past it the store counts as
        /// unavailable and the request gets 503 with `Retry-After` (the gateway keeps serving Bearer
        /// tokens); while the database is known to be down, requests get that answer at once.
        acquire_timeout: Dur<50, 120_000> = "1s";
        /// `normal`: commits survive a process crash. `full`: they also survive power loss, at one
        /// fsync per commit.
        sqlite_synchronous: OneOf<SqliteSync> = "normal";
    }
}

section! {
    /// `[passwords]`
    pub struct Passwords in "passwords." {
        /// Minimum password length in characters.
        min_length: Int<8, 256> = "12";
        /// Maximum password length in bytes (bounds hashing work).
        max_bytes: Int<16, 1024> = "256";
        /// Minimum zxcvbn score (0–4). 2 rejects common and dictionary passwords; 0 turns the check
        /// off.
        min_strength: Int<0, 4> = "2";
        /// Argon2 hashes computed at once (19 MiB each); 0 means one per CPU.
        hash_concurrency: Int<0, 256> = "0";
    }
}

section! {
    /// `[secrets]`
    pub struct Secrets in "secrets." {
        /// File holding the instance secret (at least 32 bytes) that encrypts signing keys at rest.
        /// `PORTCULLIS_INSTANCE_SECRET` may hold it instead.
        instance_secret_file: Option<FilePath> = "" shown "(none: generated and kept in the store)";
    }
}

section! {
    /// `[idp]`
    pub struct Idp in "idp." {
        /// The issuer URL: the public address of this server as clients reach it, without a trailing
        /// slash. Tokens carry it in `iss`.
        issuer: Option<HttpUrl> = "" shown "http://localhost:<port of server.listen>";
        /// Name of the claim that lists the user's groups (`cognito:groups` for Cognito
        /// compatibility).
        groups_claim: String = "groups";
        /// Also emit Cognito's claim names (`cognito:groups`, `cognito:username`) so code written for
        /// Cognito works unchanged.
        cognito_compat: bool = "false";
        /// Signature algorithm of access tokens. ES256 signs ~40x faster than RS256.
        access_token_alg: OneOf<AccessAlg> = "ES256";
        /// Default signature algorithm of ID tokens (OIDC's default is RS256; a client may choose
        /// ES256).
        id_token_alg: OneOf<IdAlg> = "RS256";
        /// `keys rotate` publishes new keys at once and signs with them after this delay, so
        /// verifiers' caches learn them first.
        key_rotation_delay: Dur<0, 2_592_000_000> = "1h";
        /// How long a sign-in at the hosted page lasts (a second application signs in without the
        /// password meanwhile).
        session_ttl: Dur<60_000, 7_776_000_000> = "12h";
        /// After a refresh token is rotated it still works this long, to the millisecond (parallel
        /// requests); used later, its whole family is revoked. `"0s"`: any second use is reuse.
        refresh_grace: Dur<0, 300_000> = "30s";
        /// Scopes a group grants its members, e.g. `admin = ["orders/admin"]`. In the environment:
        /// JSON, `{"admin":["orders/admin"]}`.
        group_scopes: GroupScopes = "{}";
        /// After 5 failed sign-ins an account waits this long before the next attempt, doubling with
        /// each further failure up to 15 minutes (Cognito's behaviour).
        lockout_delay: Dur<1_000, 3_600_000> = "1s";
        /// Sign-in attempts accepted per client address (per /64 network for IPv6) per minute,
        /// counted in the store for every node together: a burst of that many, then one every 60/n
        /// seconds; more get "try again in a minute". Accounts are throttled separately: after 5
        /// failures a delay that doubles, from 1 s up to 15 min.
        signin_rate_per_address: Int<1, 1_000_000> = "60";
        /// Who may create an account on the hosted `/signup` page: `closed` (operators only),
        /// `open` (anyone with an e-mail address), `domains` (addresses in `idp.signup_domains`),
        /// or `invite` (only people invited with `user add --invite`). Needs `mail.transport`.
        signup: OneOf<portcullis_idp::SignupMode> = "closed";
        /// With `idp.signup = "domains"`: the e-mail domains that may sign up, comma-separated
        /// ("example.com, example.org").
        signup_domains: String = "";
        /// Groups a new account from `/signup` joins, comma-separated (each must exist).
        signup_groups: String = "";
        /// Users with an e-mail address that is not verified may not sign in; the sign-in page
        /// mails them a new link instead. `email_verified` in tokens always tells the truth.
        require_verified_email: bool = "false";
        /// How long an e-mail verification link works.
        verify_link_ttl: Dur<60_000, 2_592_000_000> = "24h";
        /// How long a password-reset link works.
        reset_link_ttl: Dur<60_000, 86_400_000> = "1h";
        /// How long an invitation link works.
        invite_link_ttl: Dur<60_000, 2_592_000_000> = "7d";
        /// Sign-ups, password-reset requests, verifications and new passwords accepted per client
        /// address (per /64 network for IPv6) per hour, counted in the store for every node
        /// together. Each account also gets at most 3 mails of a kind per hour.
        account_rate_per_address: Int<1, 1_000_000> = "20";
        /// Users may delete their own account on the account page (`/account`), with their
        /// password.
        account_deletion: bool = "false";
        /// An HTTPS endpoint of the system users were imported from (`user import`) that checks
        /// an imported user's first sign-in: `POST {"username", "password"}` → `{"valid": true}`
        /// (docs/guide-cognito.md). The password's hash is then stored and the endpoint never asked
        /// about that user again. Plain http only on loopback. Empty: imported users reset their
        /// password.
        legacy_verifier_url: Option<HttpUrl> = "";
        /// A file with the bearer token sent to `idp.legacy_verifier_url`
        /// (`PORTCULLIS_IDP_LEGACY_VERIFIER_SECRET` may hold it instead).
        legacy_verifier_secret_file: Option<FilePath> = "";
        /// Groups whose members must sign in with a second factor, comma-separated ("admin").
        /// A member without one sets up an authenticator app right after the password
        /// (docs/mfa.md).
        mfa_required_groups: String = "";
        /// Client ids whose sign-ins must use a second factor, comma-separated.
        mfa_required_clients: String = "";
        tables {
            /// `[[idp.signup_attributes]]`: custom attributes the sign-up page asks for
            /// (docs/accounts.md).
            signup_attributes: Vec<Spanned<portcullis_idp::CustomAttribute>>;
            /// `[[idp.providers]]`: upstream OpenID Connect and OAuth 2.0 providers for
            /// "Continue with …" (docs/federation.md).
            providers: Vec<Spanned<crate::federation::DeclaredProvider>>;
        }
    }
}

section! {
    /// `[audit]`
    pub struct Audit in "audit." {
        /// How long audit events are kept. Older ones are deleted hourly; the chain stays
        /// verifiable from the last deleted event's hash (docs/admin.md).
        retention: Dur<86_400_000, 315_360_000_000> = "400d";
    }
}

section! {
    /// `[telemetry]`
    pub struct Telemetry in "telemetry." {
        /// Export traces over OTLP/HTTP (protobuf) to this URL, such as
        /// `http://127.0.0.1:4318/v1/traces`: a span per request continuing the caller's
        /// `traceparent`, with spans for authentication, authorization and the upstream call
        /// (docs/gateway.md). Empty: no traces are exported.
        otlp_endpoint: Option<HttpUrl> = "";
        /// The `service.name` of the exported spans.
        service_name: String = "portcullis";
    }
}

section! {
    /// `[mail]`
    pub struct Mail in "mail." {
        /// How mail leaves: `none` (sign-up, password reset and invitations are not offered),
        /// `smtp`, or `directory` (each message is written to `mail.directory` as an `.eml`
        /// file, for development; `demo` uses it).
        transport: OneOf<crate::mail::TransportKind> = "none";
        /// The sender, as `Name <address>` or an address.
        from: String = "" shown "\"<branding.app_name>\" <no-reply@<issuer host>>";
        /// The SMTP server (submission relay) to send through.
        smtp_host: String = "";
        /// Its port. Empty: 587 for `starttls`, 465 for `tls`, 25 for `none`.
        smtp_port: Option<Int<1, 65_535>> = "" shown "587 / 465 / 25";
        /// `starttls` (required, never opportunistic), `tls` (TLS from the first byte), or `none`
        /// (only for a relay on loopback, such as a local Postfix). The server's certificate is
        /// verified for `mail.smtp_host`.
        smtp_tls: OneOf<crate::mail::SmtpTls> = "starttls";
        /// User name for SMTP authentication; the password comes from
        /// `PORTCULLIS_MAIL_SMTP_PASSWORD` or `mail.smtp_password_file`. Empty: no authentication.
        smtp_username: String = "";
        /// A file holding the SMTP password.
        smtp_password_file: Option<FilePath> = "";
        /// PEM file of the authorities trusted for the SMTP server's certificate, instead of the
        /// system's roots (a private CA).
        smtp_ca_file: Option<FilePath> = "";
        /// Where `transport = "directory"` writes messages.
        directory: Option<FilePath> = "" shown "<data_dir>/outbox";
        /// A message that could not be sent is retried with growing delays (15 s doubling up to
        /// 30 min) for this long, then given up and logged.
        give_up_after: Dur<60_000, 2_592_000_000> = "3d";
    }
}

section! {
    /// `[gateway]`
    pub struct Gateway in "gateway." {
        /// Where a signed-out visitor of a `page` route is sent, with `?return_to=` the path and
        /// query they asked for.
        login_url: String = "/auth/login";
        /// Where a signed-in visitor of a `page` route they may not see is sent.
        forbidden_url: String = "/";
        /// Name of the httpOnly cookie that carries the access token (a route's `cookie` token
        /// source).
        access_cookie: String = "__Host-portcullis-access";
        /// The origin browsers use (`https://app.example.com`): unsafe requests authenticated by
        /// cookie must carry it in `Origin`.
        public_origin: Option<HttpUrl> = "" shown "(the origin of idp.issuer)";
        /// Connecting to an upstream; past it the client gets 502.
        connect_timeout: Dur<10, 60_000> = "2s";
        /// From sending a request upstream to the response headers; past it the client gets 504 (408
        /// if the client had not finished sending its body). A route can set its own
        /// (`upstream_timeout` in `[[routes]]`).
        upstream_timeout: Dur<10, 3_600_000> = "30s";
        /// The whole upstream exchange, response body included: a response still streaming past it is
        /// cut off and the connection closed. A route can set its own (`total_timeout` in
        /// `[[routes]]`) for long-lived streams such as server-sent events; WebSocket upgrades are
        /// not limited by it.
        total_timeout: Dur<10, 86_400_000> = "5m";
        /// One log line per gateway request (target `portcullis::access`; JSON with `--log-format
        /// json`): method, canonical path, route, principal, decision, status, duration. Never the
        /// query or a token.
        access_log: bool = "true";
        /// Largest request body forwarded, in bytes (413 beyond).
        max_body: Int<0, 17_179_869_184> = "10485760";
        /// How long past its `exp` one of this instance's access tokens still counts. 0: strict,
        /// refused from the second of `exp` on, so a backend never sees an expired identity. (`nbf`
        /// and `iat` may be up to 5 s in the future, for clocks of several nodes. External issuers
        /// have their own `leeway`.)
        token_leeway: Dur<0, 300_000> = "0s";
        /// A browser session whose access-token cookie has less than this left (or has expired) is
        /// refreshed in line by the request that notices, so the backend never receives an identity
        /// whose token has expired. Keep it well under `sessions.access_ttl`.
        refresh_margin: Dur<0, 3_600_000> = "30s";
        /// How often each node re-reads the policies in force, the revoked tokens and sessions,
        /// and quota totals from the store (signing keys: every other time, at least every
        /// second). With PostgreSQL a change made on any node also reaches every node at once by
        /// `LISTEN/NOTIFY`; this poll is the fallback for a notification that was missed.
        refresh_interval: Dur<100, 300_000> = "500ms";
        /// Request headers removed before forwarding, in addition to the built-in list (identity
        /// headers of other gateways, path rewrites; see docs/gateway.md): comma-separated names,
        /// matched in any case and with `_` or `.` for `-`; a name ending in `*` is a prefix
        /// (`X-MyCorp-*`).
        strip_request_headers: String = "";
        /// A PEM bundle of the certificate authorities trusted for `https://` upstreams,
        /// instead of the system's. Empty: the system's roots.
        upstream_ca_file: Option<FilePath> = "";
        /// A PEM certificate chain portcullis presents to `https://` upstreams that ask for a
        /// client certificate (mTLS); with `gateway.upstream_client_key`.
        upstream_client_cert: Option<FilePath> = "";
        /// The private key of `gateway.upstream_client_cert`, as PEM.
        upstream_client_key: Option<FilePath> = "";
        tables {
            /// `[[gateway.issuers]]`: trusted external issuers.
            issuers: Vec<Spanned<portcullis_gateway::issuers::IssuerConfig>>;
        }
    }
}

section! {
    /// `[sessions]`
    pub struct Sessions in "sessions." {
        /// Browser sessions sign in at this external OpenID provider (a Cognito user pool, say)
        /// instead of this instance. It must also be a `[[gateway.issuers]]` entry, so the gateway
        /// accepts its tokens. A client secret, if the client has one, comes from
        /// `PORTCULLIS_SESSIONS_CLIENT_SECRET`.
        issuer: Option<HttpUrl> = "" shown "(this instance's identity provider)";
        /// The app client registered at `sessions.issuer`, with the redirect URI
        /// `<origin>/auth/callback` and the sign-out URI `<origin>/`.
        client_id: String = "";
        /// Lifetime of the access token in a browser session with this instance's provider. Short is
        /// fine: the gateway refreshes in line, so the browser never sees the expiry.
        access_ttl: Dur<5_000, 86_400_000> = "1h";
    }
}

section! {
    /// `[branding]`
    pub struct Branding in "branding." {
        /// Name shown on the hosted pages.
        app_name: String = "portcullis";
        /// Logo image shown on the hosted pages (https URL or a path on this server).
        logo_url: String = "";
        /// Colour of buttons, links and focus rings.
        primary_colour: Colour = "#1d4ed8";
        /// Directory whose `base.html`, `login.html`, `error.html` or `signed_out.html` replace the
        /// embedded templates (minijinja syntax).
        templates_dir: Option<FilePath> = "";
    }
}
