//! Tokens and the secrets behind them: JWT signing and verification, keys and JWKS documents
//! (the identity-provider and gateway issues grow this crate), plus the two primitives every
//! other crate needs from it today: a [`Secret`] that cannot be logged by accident and a
//! [`Clock`] that tests can drive.
//!
//! Pure library: no I/O and no global state.

mod clock;
mod secret;

pub use clock::Clock;
pub use secret::{Secret, constant_time_eq};
