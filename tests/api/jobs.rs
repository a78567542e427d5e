//! Jobs, the scheduler and email (docs/jobs.md): password-reset emails through a real SMTP
//! server (aiosmtpd), retries while it is down, failed jobs put back by `jobs retry`, two
//! instances sharing one queue, a worker killed mid-job, and the queue's own guarantees.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use shipshape::config::{Config, SecretUrl};
use shipshape::db::Db;
use shipshape::jobs::{self, Job, Registry, Workers, queue};

use crate::helpers::{
    Backend, Options, PASSWORD, TestApp, assert_error, free_port, postgres_admin, spawn_behind_proxy, test_config,
};
use crate::infra::{Ca, Smtp, SmtpSecurity};

const BIN: &str = env!("CARGO_BIN_EXE_shipshape");
const NEW_PASSWORD: &str = "a brand new passphrase";
/// Long enough for a retry or two (about 1 s, then 2 s) on a loaded machine.
const DELIVERY: Duration = Duration::from_secs(30);

/// Sends email to `smtp` (plain SMTP on loopback).
fn email_to(config: &mut Config, port: u16) {
    config.email.url = Some(SecretUrl::new(format!("smtp://127.0.0.1:{port}")));
    config.email.from = Some("Acme <no-reply@acme.test>".to_owned());
    config.email.public_url = Some("https://app.acme.test/".to_owned());
}

/// The reset token of the link in a raw message, its quoted-printable encoding undone.
fn reset_token(message: &str) -> String {
    let body = message.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
    let start = body
        .find("https://app.acme.test/reset-password?token=")
        .unwrap_or_else(|| panic!("a reset link in: {message}"));
    body[start..]
        .trim_start_matches("https://app.acme.test/reset-password?token=")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

fn recipient(message: &str) -> String {
    message
        .lines()
        .find_map(|line| line.strip_prefix("To: "))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

async fn request_reset(app: &TestApp, email: &str) {
    let response = app
        .post_json("/api/v1/auth/password-reset", &json!({ "email": email }), None)
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "accepted"}));
}

/// Ada's login with `password`.
async fn login(app: &TestApp, password: &str) -> reqwest::Response {
    let body = json!({"email": "ada@example.com", "password": password});
    app.post_json("/api/v1/auth/login", &body, None).await
}

async fn status(db: &Db) -> queue::Status {
    queue::status(db).await.expect("queue status")
}

/// Waits until `check` holds of the queue (at most `limit`).
async fn wait_for_queue(db: &Db, limit: Duration, check: impl Fn(&queue::Status) -> bool) -> queue::Status {
    let until = std::time::Instant::now() + limit;
    loop {
        let now = status(db).await;
        if check(&now) || std::time::Instant::now() >= until {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn reset_works_once_and_ends_every_session(backend: Backend) {
    let smtp = Smtp::start();
    let app = TestApp::spawn_with(backend, |c| email_to(c, smtp.port)).await;
    let first = app.sign_up("ada@example.com").await;
    let second: Value = login(&app, PASSWORD).await.json().await.unwrap();

    request_reset(&app, "Ada@Example.com").await;
    request_reset(&app, "nobody@example.com").await;
    let messages = smtp.wait_for(1, DELIVERY).await;
    assert_eq!(messages.len(), 1, "one email, to the account");
    assert_eq!(recipient(&messages[0]), "ada@example.com");
    assert!(
        messages[0].contains("From: Acme <no-reply@acme.test>"),
        "{}",
        messages[0]
    );
    let token = reset_token(&messages[0]);
    assert!(token.len() >= 43, "at least 256 bits: {token}");
    // The unknown address enqueued a job too; once the queue is empty, it has sent nothing.
    wait_for_queue(&app.state.db, DELIVERY, |s| s.queued + s.running == 0).await;
    assert_eq!(smtp.messages().len(), 1, "no email for an unknown address");

    let confirm = |token: String, password: &str| {
        app.post_json(
            "/api/v1/auth/password-reset/confirm",
            &json!({"token": token, "password": password}),
            None,
        )
    };
    assert_eq!(
        crate::helpers::refused_fields(confirm(token.clone(), "short").await).await,
        ["password"]
    );
    assert_eq!(confirm(token.clone(), NEW_PASSWORD).await.status(), 204);
    assert_error(confirm(token.clone(), NEW_PASSWORD).await, 400, "invalid_token").await;
    assert_error(confirm("nope".to_owned(), NEW_PASSWORD).await, 400, "invalid_token").await;

    for session in [&first, &second] {
        let me = app.get("/api/v1/me", session["token"].as_str()).await;
        assert_eq!(me.status(), 401, "every session ended");
        let refresh = app
            .post_json(
                "/api/v1/auth/refresh",
                &json!({"refresh_token": session["refresh_token"]}),
                None,
            )
            .await;
        assert_eq!(refresh.status(), 401);
    }
    assert_eq!(login(&app, PASSWORD).await.status(), 401);
    assert_eq!(login(&app, NEW_PASSWORD).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
#[cfg_attr(not(test_smtp), ignore = "needs aiosmtpd on PATH (.ci/run installs it)")]
async fn a_reset_email_arrives_and_its_link_works_once_ending_every_session_sqlite() {
    reset_works_once_and_ends_every_session(Backend::Sqlite).await;
}

#[tokio::test]
#[cfg_attr(
    not(all(test_smtp, test_postgres)),
    ignore = "needs aiosmtpd on PATH and TEST_DATABASE_URL"
)]
async fn a_reset_email_arrives_and_its_link_works_once_ending_every_session_postgres() {
    reset_works_once_and_ends_every_session(Backend::Postgres(postgres_admin())).await;
}

#[tokio::test]
#[cfg_attr(not(test_smtp), ignore = "needs aiosmtpd on PATH (.ci/run installs it)")]
async fn a_password_change_makes_a_reset_link_sent_before_it_useless() {
    let smtp = Smtp::start();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| email_to(c, smtp.port)).await;
    let token = app.signup("ada@example.com").await;
    request_reset(&app, "ada@example.com").await;
    let messages = smtp.wait_for(1, DELIVERY).await;
    let link = reset_token(&messages[0]);
    let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    assert_eq!(
        app.post_json("/api/v1/me/password", &change, Some(&token))
            .await
            .status(),
        204
    );
    let confirm = json!({"token": link, "password": "yet another passphrase"});
    let response = app
        .post_json("/api/v1/auth/password-reset/confirm", &confirm, None)
        .await;
    assert_error(response, 400, "invalid_token").await;
    app.stop().await;
}

#[tokio::test]
async fn a_reset_request_is_checked_and_answered_alike_for_known_and_unknown_emails() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.signup("ada@example.com").await;
    for body in [
        json!({}),
        json!({"email": "not-an-email"}),
        json!({"email": "a@b.co", "extra": 1}),
    ] {
        let response = app.post_json("/api/v1/auth/password-reset", &body, None).await;
        assert_error(response, 422, "validation_failed").await;
    }
    // The same work for either: one job each, whose handler finds out.
    let before = status(&app.state.db).await;
    request_reset(&app, "ada@example.com").await;
    request_reset(&app, "nobody@example.com").await;
    let after = wait_for_queue(&app.state.db, DELIVERY, |s| s.queued + s.running == 0).await;
    assert_eq!((before.failed, after.failed), (0, 0));
    app.stop().await;
}

#[tokio::test]
async fn password_reset_requests_are_rate_limited_per_ip() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.rate_limits.set(
            "RATE_LIMIT_PASSWORD_RESET",
            shipshape::config::parse_rate("2/h").unwrap(),
        );
    })
    .await;
    for _ in 0..2 {
        request_reset(&app, "ada@example.com").await;
    }
    let third = app
        .post_json(
            "/api/v1/auth/password-reset",
            &json!({"email": "ada@example.com"}),
            None,
        )
        .await;
    assert_error(third, 429, "rate_limited").await;
    app.stop().await;
}

#[tokio::test]
#[cfg_attr(not(test_smtp), ignore = "needs aiosmtpd on PATH (.ci/run installs it)")]
async fn an_email_waits_for_a_mail_server_that_is_down_and_goes_once_it_is_back() {
    let mut smtp = Smtp::down_on(free_port());
    let app = TestApp::spawn_with(Backend::Sqlite, |c| email_to(c, smtp.port)).await;
    app.signup("ada@example.com").await;
    request_reset(&app, "ada@example.com").await;
    // The first attempt fails (connection refused) and waits for its retry.
    let waiting = wait_for_queue(&app.state.db, DELIVERY, |s| s.queued == 1 && s.running == 0).await;
    assert_eq!(waiting.queued, 1);
    let listed = queue::list(&app.state.db, Some("queued"), 10).await.unwrap();
    assert!(listed[0].attempts >= 1, "{listed:?}");
    assert!(
        listed[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("mail server"),
        "{listed:?}"
    );
    smtp.resume();
    assert_eq!(smtp.wait_for(1, DELIVERY).await.len(), 1, "delivered after a retry");
    app.stop().await;
}

#[tokio::test]
#[cfg_attr(not(test_smtp), ignore = "needs aiosmtpd on PATH (.ci/run installs it)")]
async fn an_email_queued_while_the_mail_server_is_down_survives_a_restart_of_the_service() {
    let mut smtp = Smtp::down_on(free_port());
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&Backend::Sqlite, &dir).await;
    email_to(&mut config, smtp.port);
    let first = TestApp::start_with_config(
        Options {
            backend: Backend::Sqlite,
            extra_routes: None,
        },
        config.clone(),
        tempfile::tempdir().unwrap(),
    )
    .await;
    first.signup("ada@example.com").await;
    request_reset(&first, "ada@example.com").await;
    wait_for_queue(&first.state.db, DELIVERY, |s| s.queued == 1 && s.running == 0).await;
    first.stop().await;

    smtp.resume();
    let second = TestApp::start_with_config(
        Options {
            backend: Backend::Sqlite,
            extra_routes: None,
        },
        config,
        tempfile::tempdir().unwrap(),
    )
    .await;
    let messages = smtp.wait_for(1, DELIVERY).await;
    assert_eq!(messages.len(), 1, "delivered by the restarted service");
    assert_eq!(recipient(&messages[0]), "ada@example.com");
    second.stop().await;
    drop(dir);
}

/// `shipshape ARGS` on `database`: (exit code, stdout, stderr).
fn shipshape(database: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database)
        .envs(env.iter().copied())
        .output()
        .expect("binary runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

#[tokio::test]
#[cfg_attr(not(test_smtp), ignore = "needs aiosmtpd on PATH (.ci/run installs it)")]
async fn a_job_that_fails_its_attempts_is_kept_failed_and_jobs_retry_sends_it() {
    let mut smtp = Smtp::down_on(free_port());
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        email_to(c, smtp.port);
        c.jobs.max_attempts = 2;
    })
    .await;
    let database = app.state.config.database.url.expose().to_owned();
    app.signup("ada@example.com").await;
    request_reset(&app, "ada@example.com").await;
    let failed = wait_for_queue(&app.state.db, DELIVERY, |s| s.failed == 1).await;
    assert_eq!((failed.failed, failed.queued, failed.running), (1, 0, 0));

    let (code, out, err) = shipshape(&database, &["jobs", "status", "--format", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    let json: Value = serde_json::from_str(&out).expect("json status");
    assert_eq!(
        json,
        json!({"queued": 0, "running": 0, "failed": 1, "oldest_queued_seconds": null})
    );
    let (code, out, err) = shipshape(
        &database,
        &["jobs", "list", "--state", "failed", "--format", "json"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("json list");
    let job = &listed[0];
    assert_eq!(
        (job["job"].as_str(), job["state"].as_str(), job["attempts"].as_i64()),
        (Some("password_reset.email"), Some("failed"), Some(2))
    );
    assert!(job["run_at"].as_str().unwrap().ends_with('Z'), "{job}");
    assert!(job["last_error"].as_str().unwrap().contains("mail server"), "{job}");
    let id = job["id"].as_str().unwrap().to_owned();

    let (code, _, err) = shipshape(
        &database,
        &["jobs", "retry", "0190c2a0-0000-7000-8000-000000000000"],
        &[],
    );
    assert_eq!(code, 1, "an unknown id: {err}");
    assert!(err.contains("no failed job"), "{err}");

    smtp.resume();
    let (code, out, err) = shipshape(&database, &["jobs", "retry", "--failed"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    assert_eq!(smtp.wait_for(1, DELIVERY).await.len(), 1, "delivered after jobs retry");
    let done = wait_for_queue(&app.state.db, DELIVERY, |s| s.queued + s.running + s.failed == 0).await;
    assert_eq!(done.failed, 0);
    app.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(all(test_smtp, test_postgres)),
    ignore = "needs aiosmtpd on PATH and TEST_DATABASE_URL"
)]
async fn two_instances_on_one_postgres_send_twenty_emails_exactly_once() {
    let smtp = Smtp::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&Backend::Postgres(postgres_admin()), &dir).await;
    email_to(&mut config, smtp.port);
    let options = || Options {
        backend: Backend::Postgres(postgres_admin()),
        extra_routes: None,
    };
    let a = TestApp::start_with_config(options(), config.clone(), tempfile::tempdir().unwrap()).await;
    let b = TestApp::start_with_config(options(), config, tempfile::tempdir().unwrap()).await;
    let emails: Vec<String> = (0..20).map(|i| format!("user{i}@example.com")).collect();
    for (i, email) in emails.iter().enumerate() {
        let app = if i % 2 == 0 { &a } else { &b };
        app.signup(email).await;
    }
    let requests = emails.iter().enumerate().map(|(i, email)| {
        let app = if i % 2 == 0 { &a } else { &b };
        request_reset(app, email)
    });
    futures_util::future::join_all(requests).await;
    wait_for_queue(&a.state.db, DELIVERY, |s| s.queued + s.running == 0).await;
    let mut recipients: Vec<String> = smtp.wait_for(20, DELIVERY).await.iter().map(|m| recipient(m)).collect();
    recipients.sort();
    let mut expected = emails.clone();
    expected.sort();
    assert_eq!(recipients, expected, "exactly one email per request, none twice");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
#[cfg_attr(not(test_smtp), ignore = "needs aiosmtpd on PATH (.ci/run installs it)")]
async fn a_job_whose_worker_is_killed_runs_again_after_its_lease() {
    // A mail server that takes connections and never answers holds the job mid-conversation.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.jobs.concurrency = 0).await;
    let database = app.state.config.database.url.expose().to_owned();
    app.signup("ada@example.com").await;
    request_reset(&app, "ada@example.com").await;

    let worker = |smtp_port: u16, stdout: Stdio| {
        Command::new(BIN)
            .arg("worker")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &database)
            .env("JOB_LEASE_SECS", "5")
            .env("EMAIL_URL", format!("smtp://127.0.0.1:{smtp_port}"))
            .env("EMAIL_FROM", "Acme <no-reply@acme.test>")
            .env("PUBLIC_URL", "https://app.acme.test")
            .env("LOG_FORMAT", "json")
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts")
    };
    let mut first = worker(silent_port, Stdio::null());
    let running = wait_for_queue(&app.state.db, DELIVERY, |s| s.running == 1).await;
    assert_eq!(running.running, 1, "the first worker took the job");
    first.kill().expect("SIGKILL");
    first.wait().unwrap();

    let smtp = Smtp::start();
    let started = std::time::Instant::now();
    let second = worker(smtp.port, Stdio::piped());
    let messages = smtp.wait_for(1, DELIVERY).await;
    assert_eq!(messages.len(), 1, "the job ran again");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the lease ran out"
    );
    let listed = queue::list(&app.state.db, None, 10).await.unwrap();
    assert!(listed.is_empty(), "done: {listed:?}");
    let _ = Command::new("kill").args(["-TERM", &second.id().to_string()]).status();
    let output = second.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the worker drains and exits 0 on SIGTERM: {}",
        output.status
    );
    // Every line logged while the job ran names it.
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let sent = lines
        .iter()
        .find(|line| line["message"] == "email sent")
        .unwrap_or_else(|| panic!("an email sent line in {lines:?}"));
    assert_eq!(sent["job"], "password_reset.email", "{sent}");
    assert!(sent["job_id"].is_string(), "{sent}");
    assert!(
        !output.stdout.windows(16).any(|w| w == b"reset-password?t"),
        "no link in the log"
    );
    drop(silent);
    app.stop().await;
}

/// A job kind of the tests alone, run by workers started here.
#[derive(serde::Serialize, serde::Deserialize)]
struct Probe {
    action: String,
}

impl Job for Probe {
    const KIND: &'static str = "test.probe";
    const TIMEOUT: Duration = Duration::from_secs(2);
}

fn probe_registry(db: &Db, config: &Config, runs: Arc<AtomicUsize>) -> Registry {
    let context = jobs::Context {
        db: db.clone(),
        storage: shipshape::storage::Storage::open(&config.storage).expect("storage"),
        mailer: shipshape::email::Mailer::Log,
        config: Arc::new(config.clone()),
    };
    Registry::new(context).on(move |_, probe: Probe| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            match probe.action.as_str() {
                "panic" => panic!("the probe panics"),
                "sleep" => tokio::time::sleep(Duration::from_secs(60)).await,
                "hang" => std::future::pending::<()>().await,
                _ => {}
            }
            Ok(())
        }
    })
}

/// `count` workers on the app's database running probes, each tried at most `max_attempts`
/// times; `runs` counts the attempts.
fn probe_workers(app: &TestApp, max_attempts: u32, count: usize, runs: Arc<AtomicUsize>) -> Workers {
    let db = &app.state.db;
    let mut settings = app.state.config.jobs.clone();
    settings.max_attempts = max_attempts;
    Workers::start(
        db.clone(),
        Default::default(),
        probe_registry(db, &app.state.config, runs),
        &settings,
        count,
    )
}

async fn enqueue_probe(db: &Db, action: &str) {
    let mut tx = db.begin().await.unwrap();
    jobs::enqueue(
        &mut tx,
        &Probe {
            action: action.to_owned(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_job_exists_exactly_when_its_transaction_commits() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.jobs.concurrency = 0).await;
    let db = &app.state.db;
    let mut tx = db.begin().await.unwrap();
    jobs::enqueue(
        &mut tx,
        &Probe {
            action: "ok".to_owned(),
        },
    )
    .await
    .unwrap();
    drop(tx);
    assert_eq!(status(db).await.queued, 0, "rolled back: no job");
    enqueue_probe(db, "ok").await;
    assert_eq!(status(db).await.queued, 1, "committed: its job");
    app.stop().await;
}

#[tokio::test]
async fn a_panicking_or_hanging_handler_fails_its_attempt_and_the_worker_goes_on() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.jobs.concurrency = 0).await;
    let db = app.state.db.clone();
    let runs = Arc::new(AtomicUsize::new(0));
    let workers = probe_workers(&app, 1, 1, runs.clone());
    enqueue_probe(&db, "panic").await;
    enqueue_probe(&db, "hang").await;
    enqueue_probe(&db, "ok").await;
    // A payload an older binary wrote, that this one cannot read: failed at once, with why.
    let mut tx = db.begin().await.unwrap();
    queue::insert(&mut tx, Probe::KIND, r#"{"act":1}"#, 0).await.unwrap();
    tx.commit().await.unwrap();
    let end = wait_for_queue(&db, DELIVERY, |s| s.failed == 3 && s.queued + s.running == 0).await;
    assert_eq!(
        (end.failed, end.queued),
        (3, 0),
        "the panic, the hang (past its TIMEOUT) and the bad payload failed; the other ran"
    );
    let failed = queue::list(&db, Some("failed"), 10).await.unwrap();
    let errors: Vec<&str> = failed.iter().filter_map(|j| j.last_error.as_deref()).collect();
    assert!(
        errors.iter().any(|e| e.contains("panicked: the probe panics")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("does not decode as test.probe")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("timed out after 2 s")), "{errors:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "the bad payload never reached the handler"
    );
    workers.drain(std::time::Instant::now()).await;
    app.stop().await;
}

#[tokio::test]
async fn a_job_whose_worker_died_runs_again_unless_that_was_its_last_attempt() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.jobs.concurrency = 0).await;
    let db = app.state.db.clone();
    // Two jobs left `running` by a worker that died: one on attempt 1, one on its last (2).
    for (attempts, action) in [(1, "first"), (2, "last")] {
        let mut tx = db.begin().await.unwrap();
        let payload = format!("{{\"action\":\"{action}\"}}");
        let id = queue::insert(&mut tx, Probe::KIND, &payload, 0).await.unwrap();
        shipshape::with_tx!(&mut tx, conn => {
            sqlx::query("UPDATE jobs SET state = 'running', attempts = $1, claim = $1, leased_until = 1 WHERE id = $2")
                .bind(attempts)
                .bind(id.to_string())
                .execute(&mut **conn)
                .await
                .map(drop)
        })
        .unwrap();
        tx.commit().await.unwrap();
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let workers = probe_workers(&app, 2, 2, runs.clone());
    let end = wait_for_queue(&db, DELIVERY, |s| s.failed == 1 && s.queued + s.running == 0).await;
    assert_eq!((end.failed, end.queued, end.running), (1, 0, 0));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the one with an attempt left ran again");
    let failed = queue::list(&db, Some("failed"), 10).await.unwrap();
    assert_eq!(failed[0].attempts, 2);
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("worker stopped"),
        "{failed:?}"
    );
    workers.drain(std::time::Instant::now()).await;
    app.stop().await;
}

#[tokio::test]
async fn a_job_cut_off_by_the_shutdown_is_released_not_lost() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.jobs.concurrency = 0).await;
    let db = app.state.db.clone();
    let runs = Arc::new(AtomicUsize::new(0));
    let workers = probe_workers(&app, app.state.config.jobs.max_attempts, 2, runs.clone());
    enqueue_probe(&db, "sleep").await;
    wait_for_queue(&db, DELIVERY, |s| s.running == 1).await;
    workers
        .drain(std::time::Instant::now() + Duration::from_millis(300))
        .await;
    let listed = queue::list(&db, None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].state.as_str(), listed[0].attempts),
        ("queued", 0),
        "released, the attempt not counted"
    );
    app.stop().await;
}

async fn a_schedule_is_taken_once_per_interval(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.jobs.concurrency = 0).await;
    let db = &app.state.db;
    let every = Duration::from_secs(3600);
    let payload = "{\"action\":\"ok\"}";
    let take = || queue::take_schedule(db, "probe", every, Probe::KIND, payload);
    let takes = futures_util::future::join_all((0..5).map(|_| take())).await;
    let enqueued = takes.into_iter().filter(|t| *t.as_ref().unwrap()).count();
    assert_eq!(enqueued, 1, "five instances ticking at once enqueue one run");
    assert!(!take().await.unwrap(), "not again within the interval");
    assert_eq!(status(db).await.queued, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_scheduled_job_runs_once_per_interval_across_instances_sqlite() {
    a_schedule_is_taken_once_per_interval(Backend::Sqlite).await;
}

#[tokio::test]
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
async fn a_scheduled_job_runs_once_per_interval_across_instances_postgres() {
    a_schedule_is_taken_once_per_interval(Backend::Postgres(postgres_admin())).await;
}

#[tokio::test]
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
async fn workers_wait_out_a_database_outage_and_readiness_does_not_hang_on_the_queue() {
    let (app, proxy) = spawn_behind_proxy(&postgres_admin(), Duration::from_secs(1)).await;
    let ready = || async { app.get("/readyz", None).await.status().as_u16() };
    for _ in 0..100 {
        if ready().await == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.signup("ada@example.com").await;
    // A failed job in the queue: nothing of the queue counts for readiness.
    enqueue_probe(&app.state.db, "no handler in the app for this kind").await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ready().await, 503, "the database is away");
    proxy.restore().await;
    let mut readiness = 0;
    for _ in 0..100 {
        readiness = ready().await;
        if readiness == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readiness, 200, "ready again, with a job of the queue retrying");
    request_reset(&app, "ada@example.com").await;
    // The job without a handler is left, queued or still running: an attempt that ended while
    // the database was away is not recorded, and runs again once its lease ends.
    let done = wait_for_queue(&app.state.db, DELIVERY, |s| s.queued + s.running == 1).await;
    let left = queue::list(&app.state.db, None, 10).await.unwrap();
    assert_eq!(
        done.queued + done.running,
        1,
        "the reset email went once the workers resumed: {left:?}"
    );
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].job, Probe::KIND, "only the job without a handler is left");
    app.stop().await;
}

#[tokio::test]
#[cfg_attr(not(test_smtp), ignore = "needs aiosmtpd on PATH (.ci/run installs it)")]
async fn a_mail_server_that_hangs_fails_the_attempt_within_the_smtp_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        email_to(c, port);
        c.jobs.max_attempts = 1;
    })
    .await;
    app.signup("ada@example.com").await;
    let started = std::time::Instant::now();
    request_reset(&app, "ada@example.com").await;
    let end = wait_for_queue(&app.state.db, Duration::from_secs(60), |s| s.failed == 1).await;
    assert_eq!(end.failed, 1, "the attempt ended");
    assert!(started.elapsed() < Duration::from_secs(40), "{:?}", started.elapsed());
    let failed = queue::list(&app.state.db, Some("failed"), 10).await.unwrap();
    let error = failed[0].last_error.as_deref().unwrap_or_default();
    assert!(error.contains("the mail server did not answer in time"), "{error}");
    drop(silent);
    app.stop().await;
}

#[test]
fn jobs_retry_of_an_unknown_id_exits_1_and_status_reads_an_empty_queue() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/app.db", dir.path().display());
    let (code, _, err) = shipshape(&database, &["migrate"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = shipshape(&database, &["jobs", "status", "--format", "json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"queued": 0, "running": 0, "failed": 0, "oldest_queued_seconds": null})
    );
    let (code, _, err) = shipshape(&database, &["jobs", "retry", "nope"], &[]);
    assert_eq!(code, 1, "{err}");
    let (code, out, _) = shipshape(&database, &["jobs", "list", "--format", "json"], &[]);
    assert_eq!((code, out.trim()), (0, "[]"));
}

#[tokio::test]
#[cfg_attr(not(test_smtp), ignore = "needs aiosmtpd on PATH (.ci/run installs it)")]
async fn email_goes_over_starttls_and_implicit_tls_checked_against_the_ca() {
    let ca = Ca::new("shipshape test mail CA");
    for (security, scheme) in [(SmtpSecurity::StartTls, "smtp"), (SmtpSecurity::Implicit, "smtps")] {
        let smtp = Smtp::tls(&ca, security);
        let dir = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}/app.db", dir.path().display());
        let email_url = format!("{scheme}://localhost:{}", smtp.port);
        let cert = ca.cert.display().to_string();
        let env = [
            ("EMAIL_URL", email_url.as_str()),
            ("EMAIL_FROM", "Acme <no-reply@acme.test>"),
            ("PUBLIC_URL", "https://app.acme.test"),
            ("SSL_CERT_FILE", cert.as_str()),
        ];
        let (code, out, err) = shipshape(&database, &["check", "--deploy", "--connect", "--format", "json"], &env);
        let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{code} {out} {err}"));
        let ids: Vec<&str> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["id"].as_str())
            .collect();
        assert!(
            !ids.contains(&"W020") && !ids.contains(&"E008") && !ids.contains(&"W017"),
            "{scheme}: {ids:?}"
        );
        // Without the CA the server's certificate is refused: the mail server counts as unreachable.
        let untrusted: Vec<(&str, &str)> = env.iter().copied().filter(|(k, _)| *k != "SSL_CERT_FILE").collect();
        let (_, out, _) = shipshape(
            &database,
            &["check", "--deploy", "--connect", "--format", "json"],
            &untrusted,
        );
        assert!(out.contains("\"W020\""), "{scheme} without the CA: {out}");

        let (code, _, err) = shipshape(&database, &["migrate"], &[]);
        assert_eq!(code, 0, "{err}");
        let mut child = Command::new(BIN)
            .args(["user", "create", "ada@example.com"])
            .env_clear()
            .env("DATABASE_URL", &database)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let db = Db::connect_lazy(&{
            let mut config = Config::development();
            config.database.url = SecretUrl::new(database.clone());
            config.database
        })
        .unwrap();
        let mut tx = db.begin().await.unwrap();
        jobs::enqueue(
            &mut tx,
            &shipshape::password_reset::SendLink {
                email: "ada@example.com".to_owned(),
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let mut worker = Command::new(BIN)
            .arg("worker")
            .env_clear()
            .env("DATABASE_URL", &database)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let messages = smtp.wait_for(1, DELIVERY).await;
        let _ = worker.kill();
        let _ = worker.wait();
        assert_eq!(messages.len(), 1, "{scheme}: delivered over TLS");
        db.close().await;
    }
}

#[test]
fn check_deploy_names_the_email_findings() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}/app.db", dir.path().display());
    let ids = |env: &[(&str, &str)], connect: bool| -> Vec<String> {
        let mut args = vec!["check", "--deploy", "--format", "json"];
        if connect {
            args.push("--connect");
        }
        let (_, out, err) = shipshape(&database, &args, env);
        let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out} {err}"));
        crate::cli::ids(&report)
    };
    assert!(ids(&[], false).contains(&"W017".to_owned()), "no EMAIL_URL: W017");
    let closed = format!("smtp://user:hunter2@127.0.0.1:{}", free_port());
    let found = ids(&[("EMAIL_URL", closed.as_str())], false);
    assert_eq!(
        found.iter().filter(|id| *id == "E008").count(),
        2,
        "no EMAIL_FROM, no https PUBLIC_URL: {found:?}"
    );
    let set = [
        ("EMAIL_URL", closed.as_str()),
        ("EMAIL_FROM", "Acme <no-reply@acme.test>"),
        ("PUBLIC_URL", "https://app.acme.test"),
    ];
    let found = ids(&set, true);
    assert!(
        !found.contains(&"E008".to_owned()) && !found.contains(&"W017".to_owned()),
        "{found:?}"
    );
    assert!(
        found.contains(&"W020".to_owned()),
        "a mail server that is down: W020 {found:?}"
    );
    let (_, out, err) = shipshape(&database, &["check", "--deploy", "--connect"], &set);
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "the password never shows: {out}{err}"
    );
}
