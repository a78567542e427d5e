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
