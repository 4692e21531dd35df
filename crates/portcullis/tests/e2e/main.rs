//! End-to-end tests: they run the real `portcullis` binary (built by cargo for this test) as a
//! CLI and as a server on 127.0.0.1, each test in a fresh temporary directory.

mod accounts;
mod acme;
mod admin_api;
mod audit;
mod browser;
mod cli;
mod cluster;
mod config_file;
mod deploy;
mod durability;
mod federation;
mod gateway;
mod gateway_upstream;
mod h2wire;
mod hardening;
mod harness;
mod interop;
mod mfa;
mod migration;
mod oidc;
mod passkeys;
mod pgbouncer;
mod serve;
mod sessions;
mod smtp;
mod store_copy;
mod store_errors;
mod tls;
