//! Wiring: configuration → store → user pool → identity provider → gateway.
//!
//! Two ways in. A CLI command opens an [`Admin`]: the store and the user pool, plus the identity
//! provider only for the commands that need the signing keys — and writes nothing it was not
//! asked to. `serve` and `demo` open an [`App`], whose start-up step also applies the declared
//! configuration (clients, resource servers, seeded policies) and builds the gateway.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use portcullis_gateway::Gateway;
use portcullis_gateway::authn::KeySource;
use portcullis_gateway::settings::GatewaySettings;
use portcullis_idp::{Accounts, PasswordHasher, Provider, UserPool, resolve_instance_secret};
use portcullis_store::Store;
use portcullis_token::{Clock, Secret};

use crate::config::{self, Config, Env};
use crate::failure::Failure;

/// Reads the configuration file (explicit, or ./portcullis.toml if present) and the environment.
pub fn load_config(explicit: Option<&Path>) -> Result<Config, Failure> {
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("portcullis.toml")).filter(|p| p.is_file()),
    };
    let text = match &path {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
            Failure::user(format!(
                "cannot read the configuration file {}: {e}",
                p.display()
            ))
        })?),
        None => None,
    };
    Ok(config::load(
        path.as_deref(),
        text.as_deref(),
        &Env::process(),
    )?)
}

/// What CLI commands work with: the store (migrated) and the user pool over it.
#[derive(Debug, Clone)]
pub struct Admin {
    pub config: Arc<Config>,
    pub store: Store,
    pub pool: UserPool,
    pub clock: Clock,
}

impl Admin {
    /// Opens the store and the user pool; resolves no instance secret, loads no keys, applies
    /// no declared configuration.
    pub async fn open(config: Config) -> Result<Admin, Failure> {
        let clock = Clock::system();
        create_private_dir(&config.data_dir).map_err(|e| {
            Failure::user(format!(
                "cannot create the data directory {}: {e}. Set data_dir (or PORTCULLIS_DATA_DIR) to a writable directory",
                config.data_dir.display()
            ))
        })?;
        let store = Store::open(&config.store).await?;
        let hasher = PasswordHasher::new(config.hash_concurrency)
            .map_err(|e| Failure::internal(e.to_string()))?;
        let pool = UserPool::new(
            store.clone(),
            hasher,
            config.password_policy.clone(),
            clock.clone(),
        );
        Ok(Admin {
            config: Arc::new(config),
            store,
            pool,
            clock,
        })
    }

    /// The instance secret: given (environment or file), else the stored one (generated on
    /// first use). A given secret that does not match the store's check value is refused.
    async fn instance_secret(&self) -> Result<Secret<String>, Failure> {
        let provided = match (
            &self.config.instance_secret,
            &self.config.instance_secret_file,
        ) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => Some(read_secret_file(path)?),
            (None, None) => None,
        };
        Ok(resolve_instance_secret(&self.store, provided, self.clock.now()).await?)
    }

    /// The identity provider, with its signing keys (for the commands that need them).
    pub async fn provider(&self) -> Result<Provider, Failure> {
        let secret = self.instance_secret().await?;
        self.open_provider(&secret).await
    }

    /// The account operations (invitations), with the hosted pages' templates. Links in mail
    /// point at `idp.issuer`; a CLI whose configuration leaves it to the listening port uses the
    /// issuer the server last started with.
    pub async fn accounts(&self) -> Result<Accounts, Failure> {
        let templates = portcullis_idp::Templates::load(self.config.idp.templates_dir.as_deref())
            .map_err(|e| Failure::user(format!("branding.templates_dir: {e}")))?;
        let mut settings = self.config.idp.clone();
        if !self.config.issuer_configured
            && let Some(served) = self.store.setting(SERVED_ISSUER).await?
        {
            settings.issuer = served;
        }
        Ok(Accounts::new(
            self.pool.clone(),
            settings,
            Arc::new(templates),
            self.clock.clone(),
        ))
    }

    async fn open_provider(&self, secret: &Secret<String>) -> Result<Provider, Failure> {
        Provider::open(
            self.store.clone(),
            self.pool.clone(),
            self.config.idp.clone(),
            secret,
            self.clock.clone(),
        )
        .await
        .map_err(|e| Failure::internal(format!("cannot load the signing keys: {e}")))
    }
}

/// The instance setting that records the issuer `serve` last started with.
const SERVED_ISSUER: &str = "served_issuer";

/// An opened instance: the store and the services built on it.
#[derive(Debug, Clone)]
pub struct App {
    /// Shared: the axum state is cloned for every request.
    pub config: Arc<Config>,
    pub store: Store,
    pub pool: UserPool,
    pub provider: Provider,
    /// Sign-up, verification, reset and invitations (and the outbox they fill).
    pub accounts: Accounts,
    pub gateway: Arc<Gateway>,
    /// Seals browser sign-in flows (`serve` builds the sessions with it).
    pub instance_secret: Arc<Secret<String>>,
    /// Shutting down: `/readyz` answers 503 while requests are still served.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The gateway verifies our own tokens with the identity provider's key ring, in memory.
struct ProviderKeys(Provider);

impl KeySource for ProviderKeys {
    fn keys(&self) -> Arc<portcullis_token::jwt::KeySet> {
        self.0.keys().verification_keys()
    }

    fn assertion_key(&self) -> Option<Arc<portcullis_token::SigningKey>> {
        self.0
            .keys()
            .signing_key(portcullis_idp::Purpose::Access, None, self.0.now())
            .ok()
    }

    fn reload(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            match self.0.keys().reload(self.0.now()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "could not re-read signing keys for a token naming an unknown key");
                    false
                }
            }
        })
    }
}

impl App {
    /// Opens the instance for serving. The start-up step: the instance secret is settled (so a
    /// node with the wrong secret stops here), the keys loaded, the declared clients and resource
    /// servers applied, the configured policies seeded into an empty store, the gateway built.
    pub async fn open(config: Config) -> Result<App, Failure> {
        let admin = Admin::open(config).await?;
        let instance_secret = admin.instance_secret().await?;
        let provider = admin.open_provider(&instance_secret).await?;
        admin
            .store
            .setting_put(SERVED_ISSUER, &admin.config.idp.issuer, admin.clock.now())
            .await?;
        let accounts = admin.accounts().await?;
        let Admin {
            config,
            store,
            pool,
            clock,
        } = admin;
        apply_declared(&provider, &config).await?;
        if !config.policies.is_empty()
            && let Some(v) = store
                .add_policy_version(
                    &portcullis_policy::export(&config.policies),
                    "seeded from the configuration file",
                    clock.now(),
                    true,
                )
                .await?
        {
            tracing::info!(version = v, "policies seeded from the configuration file");
        }
        let gateway = Gateway::new(
            gateway_settings(&config),
            config.routes.clone(),
            config.issuers.clone(),
            Arc::new(ProviderKeys(provider.clone())),
            clock.clone(),
        );
        Ok(App {
            config,
            store,
            pool,
            provider,
            accounts,
            gateway: Arc::new(gateway),
            instance_secret: Arc::new(instance_secret),
            draining: Arc::default(),
        })
    }
}

impl App {
    /// Refuses to serve when `idp.signup_groups` names a group that does not exist (every
    /// sign-up would fail after the visitor was told to check their mail).
    pub async fn check_signup_groups(&self) -> Result<(), Failure> {
        for group in &self.config.idp.accounts.signup_groups {
            if self.store.group(group).await?.is_none() {
                return Err(Failure::user(format!(
                    "idp.signup_groups names the group {group:?}, which does not exist; create it with `portcullis group add {group}`"
                )));
            }
        }
        Ok(())
    }
}

/// Every cookie's name and attributes: one policy for the gateway, the hosted pages and the
/// browser sessions. `__Host-` cookies require `Secure`; in plain-http development mode they
/// drop the prefix.
pub fn cookie_policy(config: &Config) -> portcullis_token::cookie::CookiePolicy {
    portcullis_token::cookie::CookiePolicy::new(
        config.idp.secure_cookies,
        &config.gateway.access_cookie,
    )
}

/// The gateway's settings from the configuration and the identity provider's.
fn gateway_settings(config: &Config) -> GatewaySettings {
    let g = &config.gateway;
    let origin = g.public_origin.clone().unwrap_or_else(|| {
        url::Url::parse(&config.idp.issuer)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    });
    GatewaySettings {
        issuer: config.idp.issuer.clone(),
        groups_claim: config.idp.groups_claim.clone(),
        login_url: g.login_url.clone(),
        forbidden_url: g.forbidden_url.clone(),
        cookies: cookie_policy(config),
        public_origin: origin,
        connect_timeout: g.connect_timeout,
        upstream_timeout: g.upstream_timeout,
        total_timeout: g.total_timeout,
        max_body: g.max_body,
        access_log: g.access_log,
        token_leeway: i64::try_from(g.token_leeway.as_secs()).unwrap_or(0),
        refresh_margin: i64::try_from(g.refresh_margin.as_secs()).unwrap_or(0),
        strip_request_headers: g.strip_request_headers.clone(),
        upstream_tls: g.upstream_tls.clone(),
        refresh_interval: g.refresh_interval,
    }
}

/// Creates or updates the resource servers and clients declared in the configuration file.
async fn apply_declared(provider: &Provider, config: &Config) -> Result<(), Failure> {
    for rs in &config.resource_servers {
        let stored = portcullis_store::ResourceServer {
            identifier: rs.identifier.clone(),
            name: rs.name.clone(),
            scopes: rs.scopes.clone(),
            created_at: provider.now(),
        };
        provider.store().upsert_resource_server(&stored).await?;
    }
    let secs = |v: &Option<crate::config::setting::Set<crate::config::setting::Lifetime>>| {
        v.as_ref().map(|d| d.value.secs())
    };
    for c in &config.clients {
        let secret = match (&c.secret, &c.secret_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => Some(Secret::new(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Failure::user(format!(
                            "client {}: cannot read secret_file {}: {e}",
                            c.id,
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_owned(),
            )),
            (None, None) => None,
        };
        let req = portcullis_idp::NewClient {
            client_id: Some(c.id.clone()),
            name: if c.name.is_empty() {
                c.id.clone()
            } else {
                c.name.clone()
            },
            confidential: c.confidential,
            redirect_uris: c.redirect_uris.clone(),
            logout_uris: c.logout_uris.clone(),
            grants: c.grants.clone(),
            scopes: c.scopes.clone(),
            access_ttl: secs(&c.access_ttl),
            id_ttl: secs(&c.id_ttl),
            refresh_ttl: secs(&c.refresh_ttl),
            id_token_alg: c.id_token_alg.clone(),
            secret,
            allow_insecure_http: false,
        };
        provider.declare_client(req).await.map_err(|e| match e {
            portcullis_idp::ClientError::Invalid(m) => {
                Failure::user(format!("client {} in the configuration: {m}", c.id))
            }
            portcullis_idp::ClientError::Store(s) => s.into(),
        })?;
    }
    Ok(())
}

/// Creates the data directory (and parents) accessible to its owner only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn read_secret_file(path: &Path) -> Result<Secret<String>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::user(format!(
            "cannot read secrets.instance_secret_file {}: {e}",
            path.display()
        ))
    })?;
    let secret = Secret::new(text.trim().to_owned());
    if secret.expose().len() < 32 {
        return Err(Failure::user(format!(
            "the instance secret in {} is shorter than 32 bytes; generate one with `openssl rand -base64 48`",
            path.display()
        )));
    }
    Ok(secret)
}
