use std::path::PathBuf;

/// Everything that can go wrong in the store, phrased for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database server could not be reached or did not answer in time.
    #[error(
        "cannot reach the database at {host}: {reason}. Check that the server is running and that `store.url` names the right host and port"
    )]
    Unreachable { host: String, reason: String },

    /// The SQLite file (or its directory) cannot be created or written.
    #[error("the SQLite database {} is not writable: {reason}. Check the permissions of the file and of its directory, or point `store.url` elsewhere", path.display())]
    NotWritable { path: PathBuf, reason: String },

    /// The store URL is malformed or names an unsupported database.
    #[error("invalid store URL: {0}")]
    InvalidUrl(String),

    /// A unique name is already taken.
    #[error("{kind} {name:?} already exists (names are unique regardless of letter case)")]
    AlreadyExists { kind: &'static str, name: String },

    /// The named record does not exist.
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },

    /// A conditional write found the record changed since the caller read it.
    #[error(
        "{kind} {name:?} was changed by someone else since you read it; read it again and repeat the change"
    )]
    Changed { kind: &'static str, name: String },

    /// The record is still referred to and cannot be removed.
    #[error("{kind} {name:?} is still used by {by}; change those first")]
    InUse {
        kind: &'static str,
        name: String,
        by: String,
    },

    /// The operation cannot be done as asked (the message says what to do instead).
    #[error("{0}")]
    Refused(String),

    /// The schema is newer than this binary, or a migration failed.
    #[error("database migration failed: {0}")]
    Migration(String),

    /// A stored value could not be read back (corrupt row or schema mismatch).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),

    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// True when the error is the user's to fix (bad input, configuration, permissions) rather
    /// than a fault inside portcullis or the database.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. }
                | StoreError::NotWritable { .. }
                | StoreError::InvalidUrl(_)
                | StoreError::AlreadyExists { .. }
                | StoreError::NotFound { .. }
                | StoreError::Changed { .. }
                | StoreError::InUse { .. }
                | StoreError::Refused(_)
        )
    }
}

/// True when a database error is a unique-constraint violation.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}
