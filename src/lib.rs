//! shipshape: a production-ready web service to fork. See the README for the map of `src/`.

pub mod app;
pub mod auth;
pub mod backup;
pub mod checks;
pub mod cli;
pub mod config;
pub mod db;
pub mod email;
pub mod error;
pub mod extract;
pub mod input;
// example-domain:begin
pub mod invoices;
// example-domain:end
pub mod jobs;
pub mod lifecycle;
pub mod middleware;
pub mod observe;
pub mod pagination;
pub mod password_reset;
pub mod rate_limit;
pub mod redis_store;
pub mod routes;
pub mod security;
pub mod server;
pub mod sessions;
pub mod state;
pub mod static_files;
pub mod storage;
pub mod telemetry;
pub mod tokens;
pub mod uploads;
pub mod users;

/// Installs rustls' ring crypto provider for the whole process. Must run before any TLS
/// client (Sentry, reqwest, Postgres with TLS) is built; later calls do nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Makes glibc return large freed blocks to the OS at once. Its default raises the mmap
/// threshold after the first large free, after which each 19 MiB Argon2 block stays in the
/// heap: RSS grew by one block per login up to ~150 MB per hashing thread. With a fixed
/// 1 MiB threshold, 64 concurrent logins peak near the base size plus one block per hash.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called first thing in main, before
    // any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
