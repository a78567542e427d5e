//! `check --deploy`: judges a configuration by production rules (docs/operations.md, "`check --deploy`"),
//! in the spirit of Django's `check --deploy`. `serve` in production runs the same checks before listening.

use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgConnectOptions;

use crate::config::postgres::{connect_options, requires_tls};
use crate::config::{ClientIpSource, Config, DatabaseConfig, Secret, StorageConfig, is_private_host};
use crate::db::postgres::{self, Pooling};
use crate::db::{self, Db};
use crate::email::Mailer;
use crate::redis_store;
use crate::storage::Storage;

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

/// The checks that need no network: every finding but those of [`check_connections`].
pub fn check_config(config: &Config) -> Vec<Finding> {
    RULES
        .iter()
        .flat_map(|rule| {
            let severity = match rule.code.starts_with('E') {
                true => Severity::Error,
                false => Severity::Warning,
            };
            (rule.problems)(config).into_iter().map(move |message| Finding {
                id: rule.code,
                severity,
                message,
                fix: rule.fix,
            })
        })
        .collect()
}

/// One production rule of the configuration: its finding's code (`E…` an error, `W…` a
/// warning) and fix, and the problems it finds (none when the configuration passes). Add your
/// own to [`RULES`].
struct Rule {
    code: &'static str,
    fix: &'static str,
    problems: fn(&Config) -> Vec<String>,
}

/// `problem` when `condition` holds.
fn when(condition: bool, problem: &str) -> Vec<String> {
    condition.then(|| problem.to_owned()).into_iter().collect()
}

/// Every rule, in the order `check --deploy` reports them.
const RULES: &[Rule] = &[
    Rule {
        code: "E001",
        fix: SECRET_FIX,
        problems: |c| match &c.secret_key {
            None => vec!["SECRET_KEY is not set".to_owned()],
            Some(key) => secret_key_problem(key.expose())
                .map(|problem| format!("SECRET_KEY {problem}"))
                .into_iter()
                .collect(),
        },
    },
    Rule {
        code: "E001",
        fix: "remove weak keys from SECRET_KEY_FALLBACKS; tokens they signed can be forged",
        problems: |c| {
            let weak = c.secret_key_fallbacks.iter().enumerate();
            weak.filter_map(|(i, key)| {
                secret_key_problem(Secret::expose(key)).map(|p| format!("SECRET_KEY_FALLBACKS entry {} {p}", i + 1))
            })
            .collect()
        },
    },
    Rule {
        code: "E002",
        fix: "unset DEBUG (or set DEBUG=false)",
        problems: |c| when(c.debug, "DEBUG=true exposes internal errors"),
    },
    Rule {
        code: "E003",
        fix: "set ALLOWED_HOSTS to your domain(s), e.g. api.example.com",
        problems: |c| when(c.allowed_hosts.is_empty(), "ALLOWED_HOSTS is empty"),
    },
    Rule {
        code: "E003",
        fix: "list your domain(s) instead of *, e.g. .example.com",
        problems: |c| {
            let any_host = c.allowed_hosts.iter().any(|h| h == "*");
            when(any_host, "ALLOWED_HOSTS contains *, so any Host header is accepted")
        },
    },
    Rule {
        code: "W001",
        fix: "use a managed PostgreSQL with backups (DATABASE_URL=postgres://...)",
        problems: |c| {
            let sqlite = c.database.is_sqlite();
            when(sqlite, "the database is SQLite: data lives on one machine's disk")
        },
    },
    Rule {
        code: "W002",
        fix: "set SECURE_SSL_REDIRECT=true",
        problems: |c| when(!c.secure_ssl_redirect, "SECURE_SSL_REDIRECT is off"),
    },
    Rule {
        code: "W003",
        fix: "set SECURE_HSTS_SECONDS=31536000 once HTTPS works everywhere",
        problems: |c| {
            let problem = format!(
                "HSTS is off or shorter than a year (SECURE_HSTS_SECONDS={})",
                c.hsts.seconds
            );
            when(c.hsts.seconds < ONE_YEAR_SECS, &problem)
        },
    },
    Rule {
        code: "W004",
        fix: "list the exact origins of your front-ends",
        problems: |c| {
            let any_origin = c.cors_allowed_origins.iter().any(|o| o == "*");
            when(any_origin, "CORS_ALLOWED_ORIGINS allows every origin (*)")
        },
    },
    Rule {
        code: "W005",
        fix: "add ?sslmode=require (or verify-full) to DATABASE_URL",
        problems: |c| {
            let host = postgres_host_without_tls(c.database.url.expose());
            host.map(|host| format!("PostgreSQL at {host} is reached without sslmode=require"))
                .into_iter()
                .collect()
        },
    },
    Rule {
        code: "W014",
        fix: "use the provider's rediss:// URL",
        problems: |c| {
            let host = c
                .redis_url
                .as_ref()
                .and_then(|url| redis_store::plain_to_public_host(url.expose()));
            host.map(|host| format!("Redis at {host} is reached without TLS (redis://)"))
                .into_iter()
                .collect()
        },
    },
    Rule {
        code: "W006",
        fix: "set SENTRY_DSN",
        problems: |c| when(c.sentry.dsn.is_none(), "SENTRY_DSN is not set: errors are not tracked"),
    },
    Rule {
        code: "W007",
        fix: "set REDIS_URL so every instance shares one limit",
        problems: |c| {
            when(
                c.redis_url.is_none(),
                "REDIS_URL is not set: rate limits are per instance",
            )
        },
    },
    // example-domain:begin
    Rule {
        code: "W008",
        fix: "set WEBHOOK_SECRET to the 32+ character secret your payment provider gives you",
        problems: |c| match &c.webhook_secret {
            None => vec!["WEBHOOK_SECRET is not set: the payment webhook is off".to_owned()],
            Some(s) => when(
                s.expose().chars().count() < 32,
                "WEBHOOK_SECRET is shorter than 32 characters",
            ),
        },
    },
    // example-domain:end
    Rule {
        code: "W009",
        fix: "set CLIENT_IP_SOURCE to your platform's header (fly, x-forwarded-for, ...)",
        problems: |c| {
            let connect = c.client_ip_source == ClientIpSource::Connect;
            when(
                connect,
                "CLIENT_IP_SOURCE=connect: behind a proxy every client shares the proxy's IP",
            )
        },
    },
    Rule {
        code: "W010",
        fix: "run `shipshape migrate` as the release step and set RUN_MIGRATIONS_ON_START=false",
        problems: |c| {
            let on_start = c.run_migrations_on_start;
            when(
                on_start,
                "RUN_MIGRATIONS_ON_START=true: every instance migrates as it starts",
            )
        },
    },
    Rule {
        code: "E007",
        fix: "set BUCKET_NAME (or STORAGE_URL=s3://BUCKET), AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; `fly storage create` sets them all",
        problems: |c| {
            let StorageConfig::S3(s3) = &c.storage else {
                return Vec::new();
            };
            let mut problems = when(s3.bucket.is_empty(), "s3:// storage without a bucket name");
            if s3.access_key_id.is_none() || s3.secret_access_key.is_none() {
                problems.push("s3:// storage without AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned());
            }
            problems
        },
    },
    Rule {
        code: "W016",
        fix: "use object storage (`fly storage create`, or STORAGE_URL=s3://BUCKET), or keep STORAGE_URL on a mounted volume",
        problems: |c| match &c.storage {
            StorageConfig::Local(dir) => vec![format!(
                "uploads live in the local directory {}: a redeploy loses them unless it is a mounted volume",
                dir.display()
            )],
            StorageConfig::S3(_) => Vec::new(),
        },
    },
    Rule {
        code: "E008",
        fix: "set EMAIL_FROM (e.g. `Acme <no-reply@acme.com>`) and PUBLIC_URL=https://your-frontend beside EMAIL_URL",
        problems: |c| {
            let email = &c.email;
            let Some(_) = email.url else { return Vec::new() };
            let mut problems = when(email.from.is_none(), "EMAIL_URL is set without EMAIL_FROM");
            if !email
                .public_url
                .as_deref()
                .is_some_and(|url| url.starts_with("https://"))
            {
                problems.push(
                    "EMAIL_URL is set without an https:// PUBLIC_URL: links in emails would not work or not be private"
                        .to_owned(),
                );
            }
            problems
        },
    },
    Rule {
        code: "W017",
        fix: "set EMAIL_URL to your mail provider's SMTP URL (smtps://USER:PASS@HOST or smtp://... with STARTTLS)",
        problems: |c| {
            when(
                c.email.url.is_none(),
                "EMAIL_URL is not set: emails (password-reset links) are dropped",
            )
        },
    },
    Rule {
        code: "W018",
        fix: "set BACKUP_INTERVAL_HOURS (e.g. 6), and check `shipshape backup list` after a day; or add Litestream (docs/backups.md)",
        problems: |c| {
            when(
                c.database.is_sqlite() && c.backups.interval.is_none(),
                "SQLite without BACKUP_INTERVAL_HOURS: nothing backs the database up, and a lost volume is lost data",
            )
        },
    },
];

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
    let mut findings = check_database(config).await.findings;
    if let Err(reason) = redis_store::connect_and_ping(config, CONNECT_LIMIT).await {
        findings.push(warning(
            "W011",
            format!("Redis is unreachable: {reason}"),
            "check REDIS_URL (and REDIS_CA_CERT for a private CA); until Redis answers, rate limits fall back to per instance",
        ));
    }
    let probe = async {
        let storage = Storage::open(&config.storage).map_err(|e| format!("{e:#}"))?;
        tokio::time::timeout(CONNECT_LIMIT * 3, storage.probe())
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|e| format!("{e:#}"))
    };
    if let Err(reason) = probe.await {
        findings.push(warning(
            "W019",
            format!("the file storage is unreachable: {reason}"),
            "check STORAGE_URL (or BUCKET_NAME), AWS_ENDPOINT_URL_S3 and the credentials; until it answers, uploads and downloads are 503",
        ));
    }
    if config.email.url.is_some() {
        let probe = async {
            let mailer = Mailer::from_config(config).map_err(|e| format!("{e:#}"))?;
            tokio::time::timeout(CONNECT_LIMIT * 3, mailer.probe())
                .await
                .map_err(|_| "no answer in time".to_owned())?
        };
        if let Err(reason) = probe.await {
            findings.push(warning(
                "W020",
                format!("the mail server is unreachable: {reason}"),
                "check EMAIL_URL's host, port and credentials; until it answers, emails wait in the job queue",
            ));
        }
    }
    findings
}

const CONNECT_LIMIT: Duration = Duration::from_secs(3);
const UNREACHABLE_FIX: &str = "check the URL, and that the database accepts connections from here";

/// What the database checks found, and what it means for serving.
pub struct DatabaseCheck {
    pub findings: Vec<Finding>,
    pub verdict: Verdict,
}

/// Whether requests may use the database: `server::watch_database` keeps the pooler gate
/// closed until it is [`Verdict::Usable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `DATABASE_URL` does not answer: nothing is known of the way to it yet.
    Unreachable,
    /// Through a transaction pooler that loses prepared statements (E005).
    UnsafePooler,
    Usable,
}

/// E004 (unreachable, with the cause), E005 (a transaction pooler that loses prepared
/// statements), E006 and W015 (migrations), W012 (`statement_timeout` not what the service's
/// queries get) and W013 (migrations would go through a transaction pooler). Also logged by
/// `serve` at start.
pub async fn check_database(config: &Config) -> DatabaseCheck {
    let mut database = config.database.clone();
    database.acquire_timeout = CONNECT_LIMIT;
    if database.is_sqlite() {
        return sqlite_findings(&database).await;
    }
    let Ok(options) = connect_options(database.url.expose()) else {
        // Refused when the configuration was read.
        return DatabaseCheck {
            findings: Vec::new(),
            verdict: Verdict::Unreachable,
        };
    };
    let mut check = postgres_findings(&database, &options).await;
    if check.verdict != Verdict::Unreachable
        && let Ok(db) = Db::connect_lazy(&database)
    {
        check.findings.extend(migration_findings(&db).await);
        db.close().await;
    }
    check
}

/// E004 when the SQLite file cannot be opened, else what its migrations say.
async fn sqlite_findings(database: &DatabaseConfig) -> DatabaseCheck {
    let unreachable_because = |reason: String| DatabaseCheck {
        findings: vec![unreachable(format!("the database is unreachable: {reason}"))],
        verdict: Verdict::Unreachable,
    };
    let db = match Db::connect_lazy(database) {
        Ok(db) => db,
        Err(e) => return unreachable_because(e.to_string()),
    };
    let check = match db.ping(CONNECT_LIMIT).await {
        Ok(_) => DatabaseCheck {
            findings: migration_findings(&db).await,
            verdict: Verdict::Usable,
        },
        Err(e) => unreachable_because(db::faults::describe(&e)),
    };
    db.close().await;
    check
}

fn unreachable(message: String) -> Finding {
    error("E004", message, UNREACHABLE_FIX)
}

/// What connecting to PostgreSQL finds, before the migrations: E004 when `DATABASE_URL` is
/// unreachable (nothing else can be known then), E005 and W013 behind a transaction pooler,
/// W012 for a statement timeout that does not apply, E004 for `DATABASE_DIRECT_URL` (which
/// only `migrate` uses, so serving does not wait for it).
async fn postgres_findings(database: &DatabaseConfig, options: &PgConnectOptions) -> DatabaseCheck {
    let diagnosis = match postgres::diagnose(options, database.statement_timeout).await {
        Ok(diagnosis) => diagnosis,
        Err(reason) => {
            let message = format!("the database (DATABASE_URL) is unreachable: {reason}");
            return DatabaseCheck {
                findings: vec![unreachable(message)],
                verdict: Verdict::Unreachable,
            };
        }
    };
    let mut findings = Vec::new();
    let mut verdict = Verdict::Usable;
    if let Pooling::Transaction { prepared_statements } = diagnosis.pooling {
        if !prepared_statements {
            verdict = Verdict::UnsafePooler;
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
        findings.push(unreachable(format!(
            "the database (DATABASE_DIRECT_URL) is unreachable: {reason}"
        )));
    }
    DatabaseCheck { findings, verdict }
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
