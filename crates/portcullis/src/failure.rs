//! How the binary fails: exit code 1 for the user's mistake (with a message saying what to do),
//! 2 for an internal error.

use std::process::ExitCode;

use portcullis_idp::{InstanceError, PoolError};
use portcullis_store::StoreError;

use crate::config::ConfigErrors;

/// A failed command.
#[derive(Debug)]
pub enum Failure {
    /// The user can fix it: bad input, bad configuration, unreachable database.
    User(String),
    /// Something broke inside portcullis or its environment.
    Internal(String),
}

impl Failure {
    pub fn user(message: impl Into<String>) -> Self {
        Failure::User(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Failure::Internal(message.into())
    }

    /// Prints the message to standard error and returns the exit code.
    pub fn report(self) -> ExitCode {
        match self {
            Failure::User(m) => {
                eprintln!("error: {}", m.trim_end());
                ExitCode::from(1)
            }
            Failure::Internal(m) => {
                eprintln!("internal error: {}", m.trim_end());
                ExitCode::from(2)
            }
        }
    }
}

impl From<ConfigErrors> for Failure {
    fn from(e: ConfigErrors) -> Self {
        Failure::User(e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        if e.is_user_error() {
            Failure::User(e.to_string())
        } else {
            Failure::Internal(e.to_string())
        }
    }
}

impl From<PoolError> for Failure {
    fn from(e: PoolError) -> Self {
        if e.is_user_error() {
            Failure::User(e.to_string())
        } else {
            Failure::Internal(e.to_string())
        }
    }
}

impl From<InstanceError> for Failure {
    fn from(e: InstanceError) -> Self {
        match e {
            InstanceError::Mismatch => Failure::User(e.to_string()),
            InstanceError::Store(s) => s.into(),
        }
    }
}
