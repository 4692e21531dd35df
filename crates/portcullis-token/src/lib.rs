//! Tokens and the secrets behind them: JWT signing and verification, keys and JWKS documents
//! (see [`jwt`]), the encryption of private keys at rest ([`KeyEncryptionKey`]), a [`Secret`]
//! that cannot be logged by accident, a [`Clock`] that tests can drive, and the [`cookie`] parser
//! that reads tokens from browsers.
//!
//! Pure library: no I/O and no global state.

mod clock;
pub mod cookie;
pub mod jwt;
mod keys;
mod sealed;
mod secret;
pub mod strict_json;

#[cfg(test)]
mod jwt_tests;

pub use clock::Clock;
pub use keys::{Algorithm, KeyError, SigningKey, VerifyingKey, jwks};
pub use sealed::{KeyEncryptionKey, SealError};
pub use secret::{Secret, constant_time_eq};
