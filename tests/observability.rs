//! Observability (docs/operations.md) in its own process (Sentry's client is process-wide): Sentry events against a
//! local fake ingest, and logs that never contain a secret.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use serde_json::{Value, json};
use shipshape::error::ApiError;

use helpers::{Backend, Options, PASSWORD, TEST_SECRET, TestApp, free_port};

/// A real HTTP listener that accepts Sentry envelopes and keeps them.
#[derive(Clone, Default)]
struct FakeIngest {
    envelopes: Arc<Mutex<Vec<String>>>,
}

impl FakeIngest {
    async fn start() -> (FakeIngest, SocketAddr) {
        let ingest = FakeIngest::default();
        let store = ingest.clone();
        let router = Router::new().route(
            "/api/{project}/envelope/",
            post(move |headers: HeaderMap, body: Bytes| {
                let store = store.clone();
                async move {
                    let raw = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                        let mut text = String::new();
                        flate2::read::GzDecoder::new(&body[..])
                            .read_to_string(&mut text)
                            .unwrap();
                        text
                    } else {
                        String::from_utf8_lossy(&body).into_owned()
                    };
                    store.envelopes.lock().unwrap().push(raw);
                    "{}"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (ingest, addr)
    }

    /// Error events (not sessions or other items) in everything received so far.
    fn events(&self) -> Vec<Value> {
        let envelopes = self.envelopes.lock().unwrap();
        envelopes
            .iter()
            .flat_map(|e| e.lines())
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|item| {
                item["event_id"].is_string()
                    && (item["exception"].is_object() || item["message"].is_string() || item["logentry"].is_object())
            })
            .collect()
    }

    fn events_for(&self, request_id: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["tags"]["request_id"] == request_id)
            .collect()
    }

    fn raw(&self) -> String {
        self.envelopes.lock().unwrap().join("\n")
    }
}

async fn explode() -> &'static str {
    panic!("exploded while handling")
}

async fn fail() -> Result<&'static str, ApiError> {
    Err(ApiError::Internal(anyhow::anyhow!("the ledger is out of balance")))
}

/// What a handler sees while the database is away.
async fn database_down() -> Result<&'static str, ApiError> {
    Err(sqlx::Error::PoolTimedOut.into())
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_gets_one_event_per_panic_and_500_and_none_for_4xx() {
    shipshape::install_crypto_provider();
    let (ingest, addr) = FakeIngest::start().await;
    let mut config = shipshape::config::Config::development();
    config.sentry.dsn = Some(shipshape::config::SecretUrl::new(format!("http://publickey@{addr}/1")));
    let guard = shipshape::telemetry::sentry::init(&config).expect("sentry starts");

    let routes = Router::new()
        .route("/boom", get(explode))
        .route("/fail", get(fail))
        .route("/database-down", get(database_down));
    let app = TestApp::start(
        Options {
            backend: Backend::Sqlite,
            extra_routes: Some(routes),
        },
        |_| {},
    )
    .await;
    let token = app.signup("sentry@example.com").await;

    let panic = app
        .client
        .get(app.url("/boom?token=QUERYTOKEN123"))
        .header("authorization", "Bearer AUTHSECRET456")
        .header("cookie", "session=COOKIESECRET789")
        .send()
        .await
        .unwrap();
    assert_eq!(panic.status(), 500);
    let panic_id = panic.headers()["x-request-id"].to_str().unwrap().to_owned();
    let failure = app.get("/fail", Some(&token)).await;
    assert_eq!(failure.status(), 500);
    let failure_id = failure.headers()["x-request-id"].to_str().unwrap().to_owned();
    let not_found = app.get("/api/v1/nope", None).await;
    let not_found_id = not_found.headers()["x-request-id"].to_str().unwrap().to_owned();
    let invalid = app.post_json("/api/v1/auth/signup", &json!({"email": 5}), None).await;
    assert_eq!(invalid.status(), 422);
    let invalid_id = invalid.headers()["x-request-id"].to_str().unwrap().to_owned();
    // example-domain:begin
    let invalid_invoice = app
        .post_json("/api/v1/invoices", &json!({"amount_cents": "x"}), Some(&token))
        .await;
    assert_eq!(invalid_invoice.status(), 422);
    let invalid_invoice_id = invalid_invoice.headers()["x-request-id"].to_str().unwrap().to_owned();
    // example-domain:end

    wait_for(|| !ingest.events_for(&panic_id).is_empty() && !ingest.events_for(&failure_id).is_empty()).await;
    // Give a second event (a double report) time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let panic_events = ingest.events_for(&panic_id);
    assert_eq!(panic_events.len(), 1, "one event per panic: {panic_events:?}");
    assert!(panic_events[0].to_string().contains("exploded while handling"));
    let failure_events = ingest.events_for(&failure_id);
    assert_eq!(failure_events.len(), 1, "one event per 500");
    assert!(failure_events[0].to_string().contains("ledger is out of balance"));
    assert!(ingest.events_for(&not_found_id).is_empty(), "a 404 is not reported");
    assert!(ingest.events_for(&invalid_id).is_empty(), "a 422 is not reported");
    // example-domain:begin
    assert!(
        ingest.events_for(&invalid_invoice_id).is_empty(),
        "an invoice's 422 is not reported"
    );
    // example-domain:end
    for event in [&panic_events[0], &failure_events[0]] {
        assert_eq!(event["environment"], "development");
        assert!(
            event["release"]
                .as_str()
                .is_some_and(|r| r.contains(env!("CARGO_PKG_VERSION")))
        );
    }
    // A database outage: every request a 503, one grouped event for the outage, not one each.
    let before = ingest.events().len();
    for _ in 0..20 {
        assert_eq!(app.get("/database-down", None).await.status(), 503);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outage: Vec<Value> = ingest.events().into_iter().skip(before).collect();
    assert_eq!(outage.len(), 1, "one event per outage: {outage:?}");
    assert!(outage[0].to_string().contains("database unavailable"), "{outage:?}");
    assert!(!outage[0].to_string().contains("internal_error"));

    let raw = ingest.raw();
    for forbidden in ["QUERYTOKEN123", "AUTHSECRET456", "COOKIESECRET789", PASSWORD, &token] {
        assert!(!raw.contains(forbidden), "{forbidden} reached Sentry");
    }

    // A job's final failure (here a payload this binary cannot read): one event, tagged with the job.
    let mut tx = app.state.db.begin().await.unwrap();
    let job = shipshape::jobs::queue::insert(&mut tx, "password_reset.email", r#"{"mail":1}"#, 0)
        .await
        .unwrap()
        .to_string();
    tx.commit().await.unwrap();
    wait_for(|| ingest.events().iter().any(|e| e["tags"]["job_id"] == job.as_str())).await;
    let job_events: Vec<Value> = ingest
        .events()
        .into_iter()
        .filter(|e| e["tags"]["job_id"] == job.as_str())
        .collect();
    assert_eq!(job_events.len(), 1, "{job_events:?}");
    assert_eq!(job_events[0]["tags"]["job"], "password_reset.email");
    assert!(job_events[0].to_string().contains("does not decode"), "{job_events:?}");

    // An event raised just before shutdown still arrives: dropping the guard flushes.
    let last = app.get("/fail", None).await;
    let last_id = last.headers()["x-request-id"].to_str().unwrap().to_owned();
    app.stop().await;
    drop(guard);
    assert_eq!(ingest.events_for(&last_id).len(), 1, "flushed on shutdown");
}

/// The binary with a distinctive value for every secret and `LOG_LEVEL=debug`, driven
/// through signup, login, a bad token, a signup the database fails (a 500) and shutdown: no
/// secret in any line.
// example-domain:begin
/// Before shutdown, also an invoice, a signed payment webhook the database fails (a 500) and
/// one with a forged signature.
// example-domain:end
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_any_log_line() {
    // example-domain:begin
    const WEBHOOK: &str = "whsec_Distinctive_Webhook_Secret_9f8e7d6c5b4a";
    // example-domain:end
    const REDIS_PASSWORD: &str = "RedisPassw0rd_Distinctive_77";
    const SENTRY_KEY: &str = "sentrykeydistinctive0123456789ab";
    const FALLBACK: &str = "old-key-Distinctive-Fallback-abcdef0123456789";
    const USER_PASSWORD: &str = "User Passw0rd Distinctive!";
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("app.db");
    let port = free_port();
    let (_ingest, ingest_addr) = FakeIngest::start().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shipshape"))
        .current_dir(dir.path())
        .env_clear()
        .envs([
            ("PORT", port.to_string()),
            ("LOG_LEVEL", "debug".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("SECRET_KEY", TEST_SECRET.to_owned()),
            ("SECRET_KEY_FALLBACKS", FALLBACK.to_owned()),
            // example-domain:begin
            ("WEBHOOK_SECRET", WEBHOOK.to_owned()),
            // example-domain:end
            ("DATABASE_URL", format!("sqlite://{}", db_path.display())),
            (
                "REDIS_URL",
                format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}", free_port()),
            ),
            ("SENTRY_DSN", format!("http://{SENTRY_KEY}@{ingest_addr}/1")),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read while it runs: debug lines fill a pipe's buffer, and a log writer blocked on a full
    // pipe loses the lines it holds at exit.
    let read_all = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            from.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = helpers::http_client();
    let credentials = json!({"email": "logs@example.com", "password": USER_PASSWORD});
    let signup: Value = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&credentials)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = signup["token"].as_str().unwrap().to_owned();
    let login = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&credentials)
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let bad = client
        .get(format!("{base}/api/v1/me"))
        .bearer_auth("BadTokenDistinctive.abc.def")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    // A real 500: the database refuses the next account, whose password is in the body.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    sqlx::query("CREATE TRIGGER refuse_signup BEFORE INSERT ON users BEGIN SELECT RAISE(ABORT, 'boom'); END")
        .execute(&pool)
        .await
        .unwrap();
    let refused = client
        .post(format!("{base}/api/v1/auth/signup"))
        .json(&json!({"email": "refused@example.com", "password": USER_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 500);
    // example-domain:begin
    let invoice: Value = client
        .post(format!("{base}/api/v1/invoices"))
        .bearer_auth(&token)
        .json(&json!({"customer_name": "Log Co", "amount_cents": 300, "currency": "USD"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Another real 500: the database refuses the payment update.
    sqlx::query("CREATE TRIGGER fail BEFORE UPDATE ON invoices BEGIN SELECT RAISE(ABORT, 'boom'); END")
        .execute(&pool)
        .await
        .unwrap();
    let event =
        json!({"event_id": "evt_logs", "type": "payment.succeeded", "invoice_id": invoice["id"], "amount_cents": 300})
            .to_string();
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let signature = helpers::webhook_signature(WEBHOOK, timestamp, &event);
    let webhook = client
        .post(format!("{base}/api/v1/webhooks/payments"))
        .header("content-type", "application/json")
        .header("x-webhook-timestamp", timestamp.to_string())
        .header("x-webhook-signature", &signature)
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 500);
    let bad_sig = client
        .post(format!("{base}/api/v1/webhooks/payments"))
        .header("x-webhook-timestamp", timestamp.to_string())
        .header("x-webhook-signature", "v1=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_sig.status(), 401);
    // example-domain:end

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        (status, stdout.join().unwrap() + &stderr.join().unwrap())
    })
    .await
    .unwrap();
    assert!(output.0.success());
    let logs = output.1;
    assert!(logs.lines().count() > 20, "debug logging was on");
    assert!(logs.contains("\"status\":500"), "the 500 was logged");
    // example-domain:begin
    assert!(
        logs.matches("\"status\":500").count() >= 2,
        "the webhook's 500 was logged too"
    );
    // example-domain:end
    for secret in [
        TEST_SECRET,
        FALLBACK,
        // example-domain:begin
        WEBHOOK,
        // example-domain:end
        REDIS_PASSWORD,
        SENTRY_KEY,
        USER_PASSWORD,
        &token,
        // example-domain:begin
        &signature,
        // example-domain:end
        "BadTokenDistinctive",
    ] {
        assert!(!logs.contains(secret), "{secret} appeared in the logs");
    }
    assert!(
        !logs.to_ascii_lowercase().contains("bearer "),
        "no Authorization value in the logs"
    );
}
