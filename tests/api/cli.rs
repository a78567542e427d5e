//! The binary itself: configuration errors, `--help`, `migrate`, the request log line,
//! signals, and `check --deploy` / production start-up checks.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{TEST_SECRET, free_port};
use crate::infra::S3Server;

const BIN: &str = env!("CARGO_BIN_EXE_shipshape");

/// Every setting (docs/configuration.md).
const SETTINGS: &[&str] = &[
    "APP_ENV",
    "DEBUG",
    "HOST",
    "PORT",
    "SECRET_KEY",
    "SECRET_KEY_FALLBACKS",
    "DATABASE_URL",
    "DATABASE_DIRECT_URL",
    "DATABASE_MAX_CONNECTIONS",
    "DATABASE_MIN_CONNECTIONS",
    "DATABASE_ACQUIRE_TIMEOUT_SECS",
    "DATABASE_IDLE_TIMEOUT_SECS",
    "DATABASE_MAX_LIFETIME_SECS",
    "DATABASE_STATEMENT_TIMEOUT_SECS",
    "RUN_MIGRATIONS_ON_START",
    "REDIS_URL",
    "REDIS_CA_CERT",
    "ALLOWED_HOSTS",
    "CORS_ALLOWED_ORIGINS",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "CONTENT_SECURITY_POLICY",
    "CLIENT_IP_SOURCE",
    "RATE_LIMIT_GLOBAL",
    "RATE_LIMIT_LOGIN",
    "RATE_LIMIT_SIGNUP",
    "RATE_LIMIT_PASSWORD_RESET",
    // example-domain:begin
    "RATE_LIMIT_INVOICE_CREATE",
    // example-domain:end
    "MAX_BODY_BYTES",
    "REQUEST_TIMEOUT_SECS",
    "HEADER_READ_TIMEOUT_SECS",
    "SHUTDOWN_TIMEOUT_SECS",
    "TOKEN_TTL_SECS",
    "REFRESH_TOKEN_TTL_SECS",
    "PASSWORD_HASH_CONCURRENCY",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "SENTRY_DSN",
    "SENTRY_ENVIRONMENT",
    "SENTRY_TRACES_SAMPLE_RATE",
    "METRICS_PORT",
    "API_DOCS",
    "WORKER_CONCURRENCY",
    "JOB_MAX_ATTEMPTS",
    "JOB_LEASE_SECS",
    "EMAIL_URL",
    "EMAIL_FROM",
    "PUBLIC_URL",
    "PASSWORD_RESET_TTL_SECS",
    "STATIC_DIR",
    "STATIC_MAX_AGE_SECS",
    // example-domain:begin
    "WEBHOOK_SECRET",
    "MAX_SSE_STREAMS",
    "MAX_SSE_STREAMS_PER_USER",
    // example-domain:end
];

/// The binary in a scratch directory with a clean environment (no `.env`, no inherited settings).
fn shipshape(dir: &tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    shipshape(&dir, args, env).output().expect("binary runs")
}

#[test]
fn each_kind_of_bad_value_exits_2_with_one_line_naming_the_variable() {
    for (var, value) in [
        ("PORT", "abc"),
        ("RATE_LIMIT_LOGIN", "5/x"),
        ("DATABASE_URL", "mysql://root@localhost/app"),
        ("DEBUG", "maybe"),
        ("APP_ENV", "staging"),
        ("HOST", "not-an-ip"),
        ("CLIENT_IP_SOURCE", "leftmost"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "info,[bad"),
        ("MAX_BODY_BYTES", "-1"),
        ("DATABASE_ACQUIRE_TIMEOUT_SECS", "0"),
        ("SENTRY_TRACES_SAMPLE_RATE", "2"),
        ("METRICS_PORT", "99999"),
        ("REDIS_URL", "http://user:hunter2@cache:6379"),
        // Read as the driver will: an sslmode it does not know, a root certificate that is not there.
        (
            "DATABASE_URL",
            "postgres://app:hunter2@db.example.com/app?sslmode=no-verify",
        ),
        (
            "DATABASE_URL",
            "postgres://app:hunter2@db.example.com/app?sslmode=verify-full&sslrootcert=/nope/ca.pem",
        ),
        (
            "DATABASE_DIRECT_URL",
            "postgres://app:hunter2@db.example.com/app?sslmode=prefered",
        ),
        ("REDIS_CA_CERT", "/nope/redis-ca.pem"),
    ] {
        let output = run(&["serve"], &[(var, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{var}: one line, got {stderr}");
        assert!(stderr.contains(var), "{var} named in {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("hunter2"), "{stderr}");
    }
}

#[test]
fn check_deploy_refuses_a_database_url_the_driver_cannot_use() {
    let output = run(
        &["check", "--deploy"],
        &[(
            "DATABASE_URL",
            "postgres://app:hunter2@db.example.com/app?sslmode=no-verify",
        )],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("no-verify") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

#[test]
fn help_lists_every_setting_and_hides_secret_values() {
    let output = run(&["--help"], &[("SECRET_KEY", "do-not-print-this-key-1234567890abcdef")]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for var in SETTINGS {
        assert!(help.contains(&format!("env: {var}")), "--help lists {var}");
    }
    assert!(help.contains("[default: 8080]"), "defaults are shown");
    assert!(!help.contains("do-not-print-this-key"), "secret values are hidden");
}

#[test]
fn version_prints_the_package_version() {
    let output = run(&["--version"], &[]);
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn migrate_applies_then_finds_nothing_pending() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/app.db", dir.path().display());
    let first = shipshape(&dir, &["migrate"], &[("DATABASE_URL", &url)])
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("applied"),
        "folder created, migrations applied"
    );
    let second = shipshape(&dir, &["migrate"], &[("DATABASE_URL", &url)])
        .output()
        .unwrap();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("no pending migrations"));
}

#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
#[test]
fn migrate_on_postgres_is_idempotent() {
    let admin = crate::helpers::postgres_admin();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = runtime.block_on(crate::helpers::fresh_postgres_database(&admin));
    let first = run(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied"));
    let second = run(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(String::from_utf8_lossy(&second.stdout).contains("no pending migrations"));
}

#[test]
fn unreachable_database_with_migrations_on_start_exits_1_with_a_clear_line() {
    let port = free_port().to_string();
    let output = run(
        &["serve"],
        &[
            ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
            ("DATABASE_ACQUIRE_TIMEOUT_SECS", "1"),
            ("PORT", &port),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("could not apply migrations at start"));
}

/// A running server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_server(env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let port_text = port.to_string();
    let mut all_env = vec![("PORT", port_text.as_str()), ("SECRET_KEY", TEST_SECRET)];
    all_env.extend_from_slice(env);
    let child = shipshape(&dir, &["serve"], &all_env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server = Server { child, port, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn json_log_has_exactly_one_line_per_request_with_the_listed_fields() {
    let mut server = start_server(&[("LOG_FORMAT", "json")]);
    let response = blocking_get(
        &format!("http://127.0.0.1:{}/api/v1/nope", server.port),
        &[("x-request-id", "log-test-1")],
    );
    assert_eq!(response, 404);
    let health = blocking_get(
        &format!("http://127.0.0.1:{}/healthz", server.port),
        &[("x-request-id", "probe-1")],
    );
    assert_eq!(health, 200);
    sigterm(&server.child);
    let status = wait_with_deadline(&mut server.child, Duration::from_secs(10));
    assert!(status.success(), "SIGTERM exits 0");

    let stdout = BufReader::new(server.child.stdout.take().unwrap());
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).expect("every stdout line is one JSON object"))
        .collect();
    let request_lines: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == "log-test-1").collect();
    assert_eq!(request_lines.len(), 1, "exactly one line for the request");
    let line = request_lines[0];
    for field in [
        "timestamp",
        "level",
        "message",
        "request_id",
        "method",
        "route",
        "status",
        "latency_ms",
        "client_ip",
    ] {
        assert!(!line[field].is_null(), "{field} in {line}");
    }
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["route"], "unmatched");
    assert_eq!(line["status"], 404);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert!(
        !lines.iter().any(|l| l["request_id"] == "probe-1"),
        "a 200 health probe is not logged at INFO"
    );
}

#[test]
fn sigint_also_drains_and_exits_0() {
    let mut server = start_server(&[]);
    let status = Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_with_deadline(&mut server.child, Duration::from_secs(10)).success());
}

/// A blocking GET for the process tests (which drive child processes, not a runtime): the status.
fn blocking_get(url: &str, headers: &[(&str, &str)]) -> u16 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = crate::helpers::http_client().get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap().status().as_u16()
    })
}

#[test]
fn a_repeated_program_name_is_ignored_for_platform_release_commands() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/app.db", dir.path().display());
    let output = shipshape(&dir, &["shipshape", "migrate"], &[("DATABASE_URL", &url)])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("applied"));
}

/// A production configuration with no finding at all.
const CLEAN: &[(&str, &str)] = &[
    ("SECRET_KEY", "q8Zf1rT0pLw3nV7bXc2mKd9sHj4gYe6aR5tU"),
    ("ALLOWED_HOSTS", "api.example.com"),
    ("DATABASE_URL", "postgres://app:pw@db.internal:5432/app?sslmode=require"),
    ("SENTRY_DSN", "https://publickey@o0.ingest.sentry.io/1"),
    ("REDIS_URL", "redis://cache.internal:6379"),
    // example-domain:begin
    ("WEBHOOK_SECRET", "whsec_0123456789abcdef0123456789abcdef"),
    // example-domain:end
    ("CLIENT_IP_SOURCE", "fly"),
    // Nothing listens there: only `--connect` finds out (W020).
    ("EMAIL_URL", "smtps://mailer:pw@127.0.0.1:1"),
    ("EMAIL_FROM", "Acme <no-reply@example.com>"),
    ("PUBLIC_URL", "https://app.example.com"),
    // As `fly storage create` leaves it; nothing listens there either (W019).
    ("BUCKET_NAME", "acme-uploads"),
    ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
    ("AWS_SECRET_ACCESS_KEY", "aws-secret-0123456789"),
    ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1"),
    // Scheduled backups, for when DATABASE_URL is SQLite (W018 without).
    ("BACKUP_INTERVAL_HOURS", "24"),
];

/// `check --deploy --format json` with CLEAN, `changes` applied (an empty value unsets).
pub fn check_deploy(changes: &[(&str, &str)], extra_args: &[&str]) -> (Option<i32>, Value) {
    let mut env: Vec<(&str, &str)> = CLEAN
        .iter()
        .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
        .copied()
        .collect();
    env.extend(changes.iter().filter(|(_, v)| !v.is_empty()));
    let mut args = vec!["check", "--deploy", "--format", "json"];
    args.extend_from_slice(extra_args);
    let output = run(&args, &env);
    let report = serde_json::from_slice(&output.stdout).expect("JSON report");
    (output.status.code(), report)
}

pub fn ids(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn check_deploy_is_clean_for_a_good_configuration() {
    let (code, report) = check_deploy(&[], &[]);
    assert_eq!(ids(&report), Vec::<String>::new(), "{report}");
    assert_eq!(
        (report["errors"].as_u64(), report["warnings"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(code, Some(0));
}

#[test]
fn check_deploy_reports_every_finding_and_clears_it() {
    for (var, value, id, is_error) in [
        ("SECRET_KEY", "", "E001", true),
        ("SECRET_KEY", "change-me-change-me-change-me-change-me", "E001", true),
        ("SECRET_KEY", "tooshort", "E001", true),
        (
            "SECRET_KEY",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "E001",
            true,
        ),
        ("DEBUG", "true", "E002", true),
        ("ALLOWED_HOSTS", "", "E003", true),
        ("ALLOWED_HOSTS", "*", "E003", true),
        ("DATABASE_URL", "sqlite://data/app.db", "W001", false),
        ("SECURE_SSL_REDIRECT", "false", "W002", false),
        ("SECURE_HSTS_SECONDS", "0", "W003", false),
        ("SECURE_HSTS_SECONDS", "86400", "W003", false),
        ("CORS_ALLOWED_ORIGINS", "*", "W004", false),
        ("DATABASE_URL", "postgres://app:pw@db.example.com/app", "W005", false),
        (
            "DATABASE_URL",
            "postgres://app:pw@db.example.com/app?sslmode=prefer",
            "W005",
            false,
        ),
        ("SENTRY_DSN", "", "W006", false),
        ("REDIS_URL", "", "W007", false),
        // example-domain:begin
        ("WEBHOOK_SECRET", "", "W008", false),
        ("WEBHOOK_SECRET", "short-secret", "W008", false),
        // example-domain:end
        ("CLIENT_IP_SOURCE", "connect", "W009", false),
        ("RUN_MIGRATIONS_ON_START", "true", "W010", false),
        ("EMAIL_FROM", "", "E008", true),
        ("PUBLIC_URL", "", "E008", true),
        ("PUBLIC_URL", "http://app.example.com", "E008", true),
        ("EMAIL_URL", "", "W017", false),
        ("AWS_ACCESS_KEY_ID", "", "E007", true),
        ("AWS_SECRET_ACCESS_KEY", "", "E007", true),
        ("STORAGE_URL", "s3://", "E007", true),
        ("BUCKET_NAME", "", "W016", false),
    ] {
        let (code, report) = check_deploy(&[(var, value)], &[]);
        assert_eq!(ids(&report), [id], "{var}={value:?}: {report}");
        let finding = &report["findings"][0];
        assert_eq!(finding["severity"], if is_error { "error" } else { "warning" });
        assert!(!finding["message"].as_str().unwrap().is_empty() && !finding["fix"].as_str().unwrap().is_empty());
        assert_eq!(code, Some(if is_error { 1 } else { 0 }), "{var}={value:?}");
        assert!(!report.to_string().contains("pw@"), "no credentials in the report");
        assert!(
            !report.to_string().contains("aws-secret"),
            "no credentials in the report"
        );
    }
    // SQLite with nothing backing it up.
    let sqlite_alone = [("DATABASE_URL", "sqlite://data/app.db"), ("BACKUP_INTERVAL_HOURS", "")];
    let (code, report) = check_deploy(&sqlite_alone, &[]);
    assert_eq!(ids(&report), ["W001", "W018"], "{report}");
    assert_eq!(code, Some(0));
}

#[test]
fn check_deploy_connect_reports_unreachable_database_and_redis() {
    let changes = [
        ("DATABASE_URL", "postgres://app:pw@127.0.0.1:1/app"),
        ("REDIS_URL", "redis://127.0.0.1:1"),
    ];
    let (code, report) = check_deploy(&changes, &["--connect"]);
    assert_eq!(ids(&report), ["E004", "W011", "W019", "W020"], "{report}");
    assert_eq!(code, Some(1));
    let (_, without_connect) = check_deploy(&changes, &[]);
    assert_eq!(
        ids(&without_connect),
        Vec::<String>::new(),
        "nothing is tried without --connect"
    );
}

#[test]
fn check_deploy_judges_production_rules_whatever_app_env_says_and_prints_text() {
    let output = run(&["check", "--deploy"], &[("APP_ENV", "development")]);
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    for id in ["E001", "E003", "W001", "W006", "W007", "W009"] {
        assert!(text.contains(&format!("{id} [")), "{id} in\n{text}");
    }
    // example-domain:begin
    assert!(text.contains("W008 ["), "W008 in\n{text}");
    // example-domain:end
    assert!(
        text.contains("E001 [error] SECRET_KEY is not set — "),
        "ID, severity, message and fix: {text}"
    );
    assert!(
        !text.contains("W002") && !text.contains("W003"),
        "production defaults apply: {text}"
    );
}

#[test]
fn production_refuses_to_start_on_each_error_finding() {
    for (var, value, id) in [
        ("SECRET_KEY", "", "E001"),
        ("DEBUG", "true", "E002"),
        ("ALLOWED_HOSTS", "*", "E003"),
    ] {
        let mut env: Vec<(&str, &str)> = vec![("APP_ENV", "production"), ("DATABASE_URL", "sqlite://app.db")];
        env.extend(CLEAN.iter().filter(|(k, _)| *k != var && *k != "DATABASE_URL").copied());
        if !value.is_empty() {
            env.push((var, value));
        }
        let output = run(&["serve"], &env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}: {stderr}");
        assert!(
            stderr.lines().any(|l| l.starts_with(id)),
            "a line naming {id}: {stderr}"
        );
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn production_with_a_good_configuration_serves() {
    let mut env: Vec<(&str, &str)> = vec![
        ("APP_ENV", "production"),
        ("HOST", "127.0.0.1"),
        ("METRICS_PORT", "off"),
        ("RUN_MIGRATIONS_ON_START", "true"),
    ];
    env.extend(
        CLEAN
            .iter()
            .filter(|(k, _)| !matches!(*k, "DATABASE_URL" | "REDIS_URL" | "SENTRY_DSN"))
            .copied(),
    );
    let server = start_server(&env);
    let status = blocking_get(&format!("http://127.0.0.1:{}/healthz", server.port), &[]);
    assert_eq!(status, 200);
}

#[tokio::test]
async fn check_deploy_connect_writes_reads_and_deletes_a_probe_object_in_the_storage() {
    let mut server = S3Server::start().await;
    let env: Vec<(&'static str, String)> = server.env();
    let check = |env: Vec<(&'static str, String)>| {
        tokio::task::spawn_blocking(move || {
            let changes: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            check_deploy(&changes, &["--connect"]).1
        })
    };
    let report = check(env.clone()).await.unwrap();
    assert!(!ids(&report).contains(&"W019".to_owned()), "{report}");
    assert_eq!(server.objects(), Vec::<String>::new(), "the probe object is deleted");
    server.stop();
    let report = check(env).await.unwrap();
    assert!(ids(&report).contains(&"W019".to_owned()), "{report}");
}
