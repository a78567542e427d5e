//! shipshape: a production-ready web service to fork. See the README for the map of `src/`.

pub mod app;
pub mod auth;
pub mod checks;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod lifecycle;
pub mod rate_limit;
pub mod redis_store;
pub mod routes;
pub mod security;
pub mod server;
pub mod static_files;
pub mod telemetry;

/// Installs rustls' ring crypto provider for the whole process. Must run before any TLS
/// client (Sentry, reqwest, Postgres with TLS) is built; later calls do nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
