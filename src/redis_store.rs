//! Redis, when `REDIS_URL` is set: shared state for every instance (the rate limits).
// example-domain:begin
//! The invoice events are relayed between instances through it too.
// example-domain:end
//! `rediss://` (TLS, as Upstash, Redis Cloud and most managed Redis require) verifies the
//! server against the operating system's roots, plus the private CA of `REDIS_CA_CERT`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use redis::TlsCertificates;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::Config;

/// A Redis call slower than this counts as Redis being away: callers fall back rather than
/// stall a request.
pub const TIMEOUT: Duration = Duration::from_millis(250);

/// The client for `REDIS_URL` (no connection is made yet), or `None` when it is unset.
pub fn client(config: &Config) -> anyhow::Result<Option<redis::Client>> {
    build_client(config)
        .map_err(anyhow::Error::msg)
        .context("REDIS_URL is not usable")
}

/// The shared connection the requests use: made on first use, reconnecting by itself, every
/// call bounded by [`TIMEOUT`].
pub fn connection_manager(client: &redis::Client) -> anyhow::Result<ConnectionManager> {
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(1);
    ConnectionManager::new_lazy_with_config(client.clone(), settings).context("cannot set up Redis")
}

/// `PING` on a connection that exists, within `limit`.
pub async fn ping(connection: &mut impl redis::aio::ConnectionLike, limit: Duration) -> Result<(), String> {
    let command = redis::cmd("PING");
    match tokio::time::timeout(limit, command.query_async::<String>(connection)).await {
        Ok(result) => result.map(drop).map_err(describe),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

fn build_client(config: &Config) -> Result<Option<redis::Client>, String> {
    let Some(url) = &config.redis_url else {
        return Ok(None);
    };
    let url = url.expose();
    let client = match &config.redis_ca_cert {
        Some(ca) if url.starts_with("rediss:") => {
            let certificates = TlsCertificates {
                client_tls: None,
                root_cert: Some(roots_with(ca)?),
            };
            redis::Client::build_with_tls(url, certificates)
        }
        _ => redis::Client::open(url),
    };
    client.map(Some).map_err(|e| e.to_string())
}

/// The system's roots and the certificates of `ca`, as one PEM bundle: the driver takes a
/// given root bundle instead of the system's, and public roots must stay trusted.
fn roots_with(ca: &Path) -> Result<Vec<u8>, String> {
    let ca = ca.to_string_lossy();
    let mut certificates = crate::config::read_pem_certificates(&ca)?;
    certificates.extend(rustls_native_certs::load_native_certs().certs);
    let mut pem = Vec::new();
    for certificate in certificates {
        let base64 = base64::engine::general_purpose::STANDARD.encode(certificate.as_ref());
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in base64.as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    Ok(pem)
}

/// Connects and sends `PING`, all within `limit` (for `check --deploy --connect`).
pub async fn connect_and_ping(config: &Config, limit: Duration) -> Result<(), String> {
    let attempt = async {
        let Some(client) = build_client(config)? else {
            return Ok(());
        };
        let mut connection = client.get_multiplexed_async_connection().await.map_err(describe)?;
        ping(&mut connection, limit).await
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", limit.as_secs())))
}

/// The driver's error with its cause: a TLS failure names the certificate problem.
fn describe(error: redis::RedisError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Whether a `redis://` URL (no TLS) points at a host outside private networks.
pub fn plain_to_public_host(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    if parsed.scheme() != "redis" {
        return None;
    }
    let host = parsed.host_str()?.trim_matches(|c| c == '[' || c == ']').to_owned();
    (!crate::config::is_private_host(&host)).then_some(host)
}
