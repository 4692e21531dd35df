//! The identity provider: the user pool today (input validation, password policy and hashing,
//! and the operations the CLI and admin API perform on users and groups); the OpenID Connect
//! endpoints and hosted pages arrive with the identity-provider issue.
//!
//! Every rule about what a valid username, email, group name or password is lives here, so the
//! CLI, the admin API and the hosted sign-up page cannot drift apart.

mod accounts;
pub mod audit;
mod crypto;
pub mod federation;
mod instance;
mod keyring;
mod mfa;
mod names;
mod passkeys;
mod password;
mod pool;
mod provider;
mod settings;
mod templates;
mod web;

pub use accounts::{AccountError, Accounts, SignUp};
pub use crypto::{pkce_s256, random_token, sha256_hex};
pub use instance::{InstanceError, resolve_instance_secret};
pub use keyring::{KeyRing, KeyRingError, Purpose};
pub use mfa::{Enrolment, RECOVERY_CODES, SecondFactor};
pub use names::{NameError, validate_email, validate_group_name, validate_username};
pub use passkeys::{PasskeyError, PasskeyInfo};
pub use password::{HashError, PasswordError, PasswordHasher, PasswordPolicy, generate_password};
pub use pool::{AddUser, ImportUser, Imported, PoolError, UserPool};
pub use provider::{
    AuthorizeError, AuthorizeRequest, ClientChanges, ClientError, Grant, LegacyVerifier, NewClient,
    OAuthError, PasswordChange, Provider, SignIn, TokenResponse, UriError, validate_registered_uri,
};
pub use settings::{
    AccountSettings, AttributeKind, Branding, CustomAttribute, IdpSettings, SignupMode,
    is_localhost,
};
pub use templates::{RenderedMail, TemplateError, Templates};
pub use web::router;
