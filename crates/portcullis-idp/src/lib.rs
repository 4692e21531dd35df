//! The identity provider: the user pool today (input validation, password policy and hashing,
//! and the operations the CLI and admin API perform on users and groups); the OpenID Connect
//! endpoints and hosted pages arrive with the identity-provider issue.
//!
//! Every rule about what a valid username, email, group name or password is lives here, so the
//! CLI, the admin API and the hosted sign-up page cannot drift apart.

mod instance;
mod names;
mod password;
mod pool;

pub use instance::{InstanceError, resolve_instance_secret};
pub use names::{NameError, validate_email, validate_group_name, validate_username};
pub use password::{HashError, PasswordError, PasswordHasher, PasswordPolicy, generate_password};
pub use pool::{AddUser, PoolError, UserPool};
