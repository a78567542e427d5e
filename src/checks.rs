//! `check --deploy`: judges a configuration by production rules (SPEC §9), in the spirit of
//! Django's `check --deploy`. `serve` in production runs the same checks before listening.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

use crate::config::{ClientIpSource, Config, Secret};
use crate::db::Db;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub message: String,
    pub fix: &'static str,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{} [{severity}] {} — {}", self.id, self.message, self.fix)
    }
}

#[derive(Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub errors: usize,
    pub warnings: usize,
}

impl Report {
    pub fn new(findings: Vec<Finding>) -> Report {
        let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
        Report {
            warnings: findings.len() - errors,
            errors,
            findings,
        }
    }
}

fn error(id: &'static str, message: impl Into<String>, fix: &'static str) -> Finding {
    Finding {
        id,
        severity: Severity::Error,
        message: message.into(),
        fix,
    }
}

fn warning(id: &'static str, message: impl Into<String>, fix: &'static str) -> Finding {
    Finding {
        id,
        severity: Severity::Warning,
        message: message.into(),
        fix,
    }
}

const ONE_YEAR_SECS: u64 = 31_536_000;
const SECRET_FIX: &str = "set SECRET_KEY to a long random string, e.g. `openssl rand -base64 48`";
/// Values copied from templates and tutorials: never secret, whatever their length.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "your-secret-key-here",
    "your_secret_key",
    "secret-key",
    "placeholder",
    "replace-me",
    "insecure",
    "example",
];

/// Why a signing key is unfit for production, if it is.
pub fn secret_key_problem(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    let distinct = {
        let mut chars: Vec<char> = key.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        chars.len()
    };
    if lower == "secret" || PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        Some("is a placeholder value")
    } else if key.chars().count() < 32 {
        Some("is shorter than 32 characters")
    } else if distinct < 8 {
        Some("has fewer than 8 distinct characters")
    } else {
        None
    }
}

/// The checks that need no network: every finding but E004 and W011.
pub fn check_config(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();

    match &config.secret_key {
        None => findings.push(error("E001", "SECRET_KEY is not set", SECRET_FIX)),
        Some(key) => {
            if let Some(problem) = secret_key_problem(key.expose()) {
                findings.push(error("E001", format!("SECRET_KEY {problem}"), SECRET_FIX));
            }
        }
    }
    for (i, key) in config.secret_key_fallbacks.iter().enumerate() {
        if let Some(problem) = secret_key_problem(Secret::expose(key)) {
            findings.push(error(
                "E001",
                format!("SECRET_KEY_FALLBACKS entry {} {problem}", i + 1),
                "remove weak keys from SECRET_KEY_FALLBACKS; tokens they signed can be forged",
            ));
        }
    }
    if config.debug {
        findings.push(error(
            "E002",
            "DEBUG=true exposes internal errors",
            "unset DEBUG (or set DEBUG=false)",
        ));
    }
    if config.allowed_hosts.is_empty() {
        findings.push(error(
            "E003",
            "ALLOWED_HOSTS is empty",
            "set ALLOWED_HOSTS to your domain(s), e.g. api.example.com",
        ));
    } else if config.allowed_hosts.iter().any(|h| h == "*") {
        findings.push(error(
            "E003",
            "ALLOWED_HOSTS contains *, so any Host header is accepted",
            "list your domain(s) instead of *, e.g. .example.com",
        ));
    }
    if config.database.is_sqlite() {
        findings.push(warning(
            "W001",
            "the database is SQLite: data lives on one machine's disk",
            "use a managed PostgreSQL with backups (DATABASE_URL=postgres://...)",
        ));
    }
    if !config.secure_ssl_redirect {
        findings.push(warning(
            "W002",
            "SECURE_SSL_REDIRECT is off",
            "set SECURE_SSL_REDIRECT=true",
        ));
    }
    if config.hsts.seconds < ONE_YEAR_SECS {
        findings.push(warning(
            "W003",
            format!(
                "HSTS is off or shorter than a year (SECURE_HSTS_SECONDS={})",
                config.hsts.seconds
            ),
            "set SECURE_HSTS_SECONDS=31536000 once HTTPS works everywhere",
        ));
    }
    if config.cors_allowed_origins.iter().any(|o| o == "*") {
        findings.push(warning(
            "W004",
            "CORS_ALLOWED_ORIGINS allows every origin (*)",
            "list the exact origins of your front-ends",
        ));
    }
    if let Some(host) = postgres_host_without_tls(config.database.url.expose()) {
        findings.push(warning(
            "W005",
            format!("PostgreSQL at {host} is reached without sslmode=require"),
            "add ?sslmode=require (or verify-full) to DATABASE_URL",
        ));
    }
    if config.sentry.dsn.is_none() {
        findings.push(warning(
            "W006",
            "SENTRY_DSN is not set: errors are not tracked",
            "set SENTRY_DSN",
        ));
    }
    if config.redis_url.is_none() {
        findings.push(warning(
            "W007",
            "REDIS_URL is not set: rate limits are per instance",
            "set REDIS_URL so every instance shares one limit",
        ));
    }
    match &config.webhook_secret {
        None => findings.push(warning(
            "W008",
            "WEBHOOK_SECRET is not set: the payment webhook is off",
            WEBHOOK_FIX,
        )),
        Some(s) if s.expose().chars().count() < 32 => findings.push(warning(
            "W008",
            "WEBHOOK_SECRET is shorter than 32 characters",
            WEBHOOK_FIX,
        )),
        Some(_) => {}
    }
    if config.client_ip_source == ClientIpSource::Connect {
        findings.push(warning(
            "W009",
            "CLIENT_IP_SOURCE=connect: behind a proxy every client shares the proxy's IP",
            "set CLIENT_IP_SOURCE to your platform's header (fly, x-forwarded-for, ...)",
        ));
    }
    if config.run_migrations_on_start {
        findings.push(warning(
            "W010",
            "RUN_MIGRATIONS_ON_START=true: every instance migrates as it starts",
            "run `shipshape migrate` as the release step and set RUN_MIGRATIONS_ON_START=false",
        ));
    }
    findings
}

const WEBHOOK_FIX: &str = "set WEBHOOK_SECRET to the 32+ character secret your payment provider gives you";

/// The host of a `postgres://` URL that is public and lacks `sslmode=require` or stricter.
fn postgres_host_without_tls(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return None;
    }
    let sslmode = parsed
        .query_pairs()
        .find(|(k, _)| k == "sslmode")
        .map(|(_, v)| v.into_owned());
    if matches!(sslmode.as_deref(), Some("require" | "verify-ca" | "verify-full")) {
        return None;
    }
    let host = parsed
        .host_str()
        .unwrap_or("localhost")
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    (!is_private_host(&host)).then_some(host)
}

/// Loopback, private ranges, and names that only resolve inside a private network.
fn is_private_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Ok(IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        Err(_) => {
            host == "localhost"
                || !host.contains('.')
                || [".internal", ".flycast", ".local", ".localhost"]
                    .iter()
                    .any(|s| host.ends_with(s))
        }
    }
}

/// `--connect`: E004 when the database does not answer, W011 when Redis does not.
pub async fn check_connections(config: &Config) -> Vec<Finding> {
    const LIMIT: Duration = Duration::from_secs(3);
    let mut findings = Vec::new();
    let mut database = config.database.clone();
    database.acquire_timeout = LIMIT;
    let reachable = match Db::connect_lazy(&database) {
        Ok(db) => {
            let result = db.ping(LIMIT).await;
            db.close().await;
            result.map(drop).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(reason) = reachable {
        findings.push(error(
            "E004",
            format!("the database is unreachable: {reason}"),
            "check DATABASE_URL and that the database accepts connections from here",
        ));
    }
    if let Some(url) = &config.redis_url
        && let Err(reason) = crate::redis_store::ping(url.expose(), LIMIT).await
    {
        findings.push(warning(
            "W011",
            format!("Redis is unreachable: {reason}"),
            "check REDIS_URL; until Redis answers, rate limits fall back to per instance",
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_rules() {
        assert!(secret_key_problem("change-me-change-me-change-me-change-me").is_some());
        assert!(secret_key_problem("secret").is_some());
        assert!(secret_key_problem("short-but-random-Xy7").is_some());
        assert!(secret_key_problem("abababababababababababababababababab").is_some());
        assert_eq!(secret_key_problem("q8Zf1rT0pLw3nV7bXc2mKd9sHj4gYe6a"), None);
    }

    #[test]
    fn postgres_tls_rule() {
        assert_eq!(
            postgres_host_without_tls("postgres://u:p@db.example.com/app").as_deref(),
            Some("db.example.com")
        );
        assert_eq!(
            postgres_host_without_tls("postgres://u:p@db.example.com/app?sslmode=require"),
            None
        );
        assert_eq!(postgres_host_without_tls("postgres://u:p@10.1.2.3/app"), None);
        assert_eq!(
            postgres_host_without_tls("postgres://u:p@myapp-db.flycast:5432/app"),
            None
        );
        assert_eq!(postgres_host_without_tls("postgres://u:p@postgres/app"), None);
        assert_eq!(postgres_host_without_tls("sqlite://data/app.db"), None);
    }
}
