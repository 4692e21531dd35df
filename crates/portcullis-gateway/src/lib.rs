//! The gateway's request path (DESIGN.md §2): canonicalize → route → authenticate → authorize →
//! CSRF → respond or forward. The hot path reads no database: keys, routes, policies and
//! revocations live in memory and are refreshed from the store when they change.

pub mod canonical;
