//! `check --deploy`: judges a configuration by production rules (docs/operations.md, "`check --deploy`"),
//! in the spirit of Django's `check --deploy`. `serve` in production runs the same checks before listening.

use std::time::Duration;

use serde::Serialize;

use crate::config::postgres::{connect_options, requires_tls};
use crate::config::{ClientIpSource, Config, Secret, is_private_host};
use crate::db::postgres::{self, Pooling};
use crate::db::{self, Db};

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
    if let Some(host) = config
        .redis_url
        .as_ref()
        .and_then(|url| crate::redis_store::plain_to_public_host(url.expose()))
    {
        findings.push(warning(
            "W014",
            format!("Redis at {host} is reached without TLS (redis://)"),
            "use the provider's rediss:// URL",
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
    // example-domain:begin
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
    // example-domain:end
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

// example-domain:begin
const WEBHOOK_FIX: &str = "set WEBHOOK_SECRET to the 32+ character secret your payment provider gives you";
// example-domain:end

/// The host of a `postgres://` URL that is public and reached without `sslmode=require` or
/// stricter, read as the driver reads the URL (the last `sslmode` wins, in any case).
fn postgres_host_without_tls(url: &str) -> Option<String> {
    if !url.starts_with("postgres") {
        return None;
    }
    let options = connect_options(url).ok()?;
    if requires_tls(&options) || options.get_socket().is_some() {
        return None;
    }
    let host = options.get_host().trim_matches(|c| c == '[' || c == ']').to_owned();
    (!is_private_host(&host)).then_some(host)
}

/// `--connect`: reaches the database (and the direct URL migrations use) and Redis, and says
/// what is wrong in words an operator can act on.
pub async fn check_connections(config: &Config) -> Vec<Finding> {
    let mut findings = database_findings(config).await;
    if let Err(reason) = crate::redis_store::connect_and_ping(config, CONNECT_LIMIT).await {
        findings.push(warning(
            "W011",
            format!("Redis is unreachable: {reason}"),
            "check REDIS_URL (and REDIS_CA_CERT for a private CA); until Redis answers, rate limits fall back to per instance",
        ));
    }
    findings
}

const CONNECT_LIMIT: Duration = Duration::from_secs(3);
const UNREACHABLE_FIX: &str = "check the URL, and that the database accepts connections from here";

/// E004 (unreachable, with the cause), E005 (a transaction pooler that loses prepared
/// statements), E006 and W015 (migrations), W012 (`statement_timeout` not what the service's
/// queries get) and W013 (migrations would go through a transaction pooler). Also logged by
/// `serve` at start.
pub async fn database_findings(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let database = &config.database;
    if database.is_sqlite() {
        let mut database = database.clone();
        database.acquire_timeout = CONNECT_LIMIT;
        match Db::connect_lazy(&database) {
            Ok(db) => {
                match db.ping(CONNECT_LIMIT).await {
                    Ok(_) => findings.extend(migration_findings(&db).await),
                    Err(e) => findings.push(error(
                        "E004",
                        format!("the database is unreachable: {}", db::faults::describe(&e)),
                        UNREACHABLE_FIX,
                    )),
                }
                db.close().await;
            }
            Err(e) => findings.push(error(
                "E004",
                format!("the database is unreachable: {e}"),
                UNREACHABLE_FIX,
            )),
        }
        return findings;
    }
    let Ok(options) = connect_options(database.url.expose()) else {
        return findings; // refused when the configuration was read
    };
    let diagnosis = match postgres::diagnose(&options, database.statement_timeout).await {
        Ok(diagnosis) => diagnosis,
        Err(reason) => {
            findings.push(error(
                "E004",
                format!("the database (DATABASE_URL) is unreachable: {reason}"),
                UNREACHABLE_FIX,
            ));
            return findings;
        }
    };
    if let Pooling::Transaction { prepared_statements } = diagnosis.pooling {
        if !prepared_statements {
            findings.push(error(
                "E005",
                "DATABASE_URL goes through a transaction pooler that loses prepared statements: \
                 queries would fail with prepared-statement errors (answered 503)",
                db::faults::POOLER_FIX,
            ));
        }
        if database.direct_url.is_none() {
            findings.push(warning(
                "W013",
                "DATABASE_URL goes through a transaction pooler and DATABASE_DIRECT_URL is not set: \
                 migrations need one session for their lock",
                "set DATABASE_DIRECT_URL to the provider's direct (non-pooled) URL",
            ));
        }
    }
    let effective = postgres::parse_pg_duration(&diagnosis.default_statement_timeout);
    if !diagnosis.statement_timeout_applies && effective != Some(database.statement_timeout) {
        findings.push(warning(
            "W012",
            format!(
                "statement_timeout is {} for the service's queries, not DATABASE_STATEMENT_TIMEOUT_SECS={}: \
                 a transaction pooler does not keep a per-connection SET",
                diagnosis.default_statement_timeout,
                database.statement_timeout.as_secs()
            ),
            "set it on the role: ALTER ROLE <user> SET statement_timeout = '30s'",
        ));
    }
    if let Some(direct) = &database.direct_url
        && let Ok(direct) = connect_options(direct.expose())
        && let Err(reason) = postgres::diagnose(&direct, database.statement_timeout).await
    {
        findings.push(error(
            "E004",
            format!("the database (DATABASE_DIRECT_URL) is unreachable: {reason}"),
            UNREACHABLE_FIX,
        ));
    }
    let mut database = database.clone();
    database.acquire_timeout = CONNECT_LIMIT;
    if let Ok(db) = Db::connect_lazy(&database) {
        findings.extend(migration_findings(&db).await);
        db.close().await;
    }
    findings
}

/// E006 (migrations this binary needs are not applied: instances will not be ready) and W015
/// (an applied migration's file changed since).
async fn migration_findings(db: &Db) -> Vec<Finding> {
    let Ok(Ok(status)) = tokio::time::timeout(CONNECT_LIMIT, db.migration_status()).await else {
        return Vec::new();
    };
    let versions = |state| {
        status
            .iter()
            .filter(|m| m.state == state)
            .map(|m| m.version.to_string())
            .collect::<Vec<_>>()
    };
    let mut findings = Vec::new();
    let pending = versions(db::State::Pending);
    if !pending.is_empty() {
        findings.push(error(
            "E006",
            format!(
                "migrations not applied: {} (instances of this build report not ready until they are)",
                pending.join(", ")
            ),
            "run `shipshape migrate` (the release step); `shipshape migrate status` lists them",
        ));
    }
    let changed = versions(db::State::ChecksumMismatch);
    if !changed.is_empty() {
        findings.push(warning(
            "W015",
            format!("migrations changed after they were applied: {}", changed.join(", ")),
            "never edit an applied migration: restore its file and add a new migration for the change",
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
        // Read as the driver reads it: the last sslmode wins, in any case.
        assert_eq!(
            postgres_host_without_tls("postgres://u@db.example.com/app?sslmode=require&sslmode=disable").as_deref(),
            Some("db.example.com")
        );
        assert_eq!(
            postgres_host_without_tls("postgres://u@db.example.com/app?sslmode=REQUIRE"),
            None
        );
        // Shared (CGNAT) addresses and platform-internal names are private.
        for host in [
            "100.64.0.7",
            "100.127.255.1",
            "app-db.flympg.net",
            "db.railway.internal",
            "[fdaa::3]",
        ] {
            assert_eq!(
                postgres_host_without_tls(&format!("postgres://u@{host}/app")),
                None,
                "{host}"
            );
        }
        assert_eq!(
            postgres_host_without_tls("postgres://u@100.128.0.1/app").as_deref(),
            Some("100.128.0.1")
        );
    }

    #[test]
    fn plain_redis_to_a_public_host_is_flagged() {
        let mut config = Config::development();
        config.redis_url = Some(crate::config::SecretUrl::new(
            "redis://default:pw@eu1-cache.upstash.io:6379",
        ));
        assert!(check_config(&config).iter().any(|f| f.id == "W014"));
        config.redis_url = Some(crate::config::SecretUrl::new(
            "rediss://default:pw@eu1-cache.upstash.io:6379",
        ));
        assert!(!check_config(&config).iter().any(|f| f.id == "W014"));
        config.redis_url = Some(crate::config::SecretUrl::new("redis://redis.railway.internal:6379"));
        assert!(!check_config(&config).iter().any(|f| f.id == "W014"));
    }
}
