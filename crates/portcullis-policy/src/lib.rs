//! Policy documents: who may call which method on which path (DESIGN.md §4). Parse, validate,
//! compile, evaluate, explain. Pure: no I/O, no clock, no global state, so it can be fuzzed and
//! benchmarked alone.
//!
//! A document is attached to a principal — `group:NAME`, `scope:NAME`, `client:ID` or
//! `authenticated` — and holds statements `{ effect, methods, paths }`. For a request, every
//! statement of every principal the caller holds is considered: an explicit deny wins, then an
//! allow, and anything else is denied. An allow may carry a condition on how the caller signed
//! in (`mfa = true`, `auth_age = "15m"`); unmet, it does not allow, and the decision says so.
//!
//! Paths are matched case-insensitively against the canonical path (the gateway canonicalizes
//! first), segment by segment: a literal, `*` for exactly one segment, and a final `**` for any
//! number of segments including none, so `/api/admin/**` covers `/api/admin` itself.

mod document;
mod engine;
mod pattern;

pub use document::{
    AuthContext, Condition, Effect, PolicyDocument, PolicyError, Principal, PrincipalError,
    RawDocument, Statement, build_documents, export, parse_file,
};
pub use engine::{Decision, PolicySet, Reason};
pub use pattern::{PathPattern, PatternError, path_segments};
