//! Invoice events over server-sent events: delivery, isolation, limits, shutdown.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, RedisProcess, TestApp, assert_error};

/// Reads from an event stream until `count` events (not comments) have arrived.
async fn read_events(response: &mut reqwest::Response, count: usize) -> Vec<(String, String, Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the stream is still open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                    .unwrap_or_default()
            };
            if !field("event:").is_empty() {
                events.push((
                    field("event:"),
                    field("id:"),
                    serde_json::from_str(&field("data:")).unwrap(),
                ));
            }
        }
    }
    events
}

#[tokio::test]
async fn a_client_sees_its_invoice_created_sent_and_paid_and_nothing_else() {
    const SECRET: &str = "whsec_events_2b4d6f8a0c2e4a6c8e0a2c4e6a8c0e2a";
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.webhook_secret = Some(shipshape::config::Secret::new(SECRET));
    })
    .await;
    let alice = app.signup("alice@example.com").await;
    let bob = app.signup("bob@example.com").await;
    let mut stream = app.get("/api/v1/invoices/events", Some(&alice)).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    assert_eq!(stream.headers()["cache-control"], "no-cache");
    assert_eq!(stream.headers()["x-accel-buffering"], "no");

    app.create_invoice(&bob, 999).await; // another user's: must not appear
    let invoice = app.create_invoice(&alice, 2500).await;
    let id = invoice["id"].as_str().unwrap();
    app.post_json(&format!("/api/v1/invoices/{id}/send"), &json!({}), Some(&alice))
        .await;
    let event = json!({"event_id": "evt_sse", "type": "payment.succeeded", "invoice_id": id, "amount_cents": 2500});
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let paid = crate::helpers::deliver_webhook(&app, &event, timestamp, SECRET).await;
    assert_eq!(paid.status(), 200);

    let events = read_events(&mut stream, 3).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["invoice.created", "invoice.sent", "invoice.paid"]);
    let ids: Vec<u64> = events.iter().map(|(_, id, _)| id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert!(
        events.iter().all(|(_, _, data)| data["id"] == id),
        "all about alice's invoice"
    );
    assert_eq!(events[2].2["status"], "paid");
    app.stop().await;
}

#[tokio::test]
async fn streams_are_bounded_and_need_a_token() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.max_sse_streams = 2).await;
    let token = app.signup("streams@example.com").await;
    assert_error(app.get("/api/v1/invoices/events", None).await, 401, "unauthorized").await;
    let first = app.get("/api/v1/invoices/events", Some(&token)).await;
    let second = app.get("/api/v1/invoices/events", Some(&token)).await;
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    assert_error(
        app.get("/api/v1/invoices/events", Some(&token)).await,
        503,
        "service_unavailable",
    )
    .await;
    drop(first);
    // The closed stream's slot comes back once the server notices the disconnect.
    let mut reopened = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.create_invoice(&token, 1).await; // a write to the dead stream notices the disconnect
        if app.get("/api/v1/invoices/events", Some(&token)).await.status() == 200 {
            reopened = true;
            break;
        }
    }
    assert!(reopened, "a slot frees up when a client goes away");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_fifty_open_streams_finishes_at_once() {
    // One user holds all fifty: lift MAX_SSE_STREAMS_PER_USER above its default of 10.
    let mut app = TestApp::spawn_with(Backend::Sqlite, |c| c.max_sse_streams_per_user = 50).await;
    let token = app.signup("drain@example.com").await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let stream = app.get("/api/v1/invoices/events", Some(&token)).await;
        assert_eq!(stream.status(), 200);
        streams.push(stream);
    }
    let started = Instant::now();
    let server = app.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("drained within 2 s")
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "drain took {elapsed:?}");
    eprintln!("shutdown with 50 open event streams drained in {elapsed:?}");
    for stream in &mut streams {
        let end = tokio::time::timeout(Duration::from_secs(1), stream.chunk())
            .await
            .expect("stream ended");
        assert!(matches!(end, Ok(None) | Err(_)), "each stream is closed");
    }
}

/// Two instances sharing Redis: a change on A reaches a stream held on B.
#[cfg_attr(
    not(test_redis),
    ignore = "needs TEST_REDIS_URL (Redis, and redis-server to start private ones)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_on_one_instance_reaches_a_stream_on_another() {
    let redis = crate::helpers::redis_url();
    let shared = tempfile::tempdir().unwrap();
    let a = redis_instance(&redis, &shared).await;
    let b = redis_instance(&redis, &shared).await;
    let token = a.signup(&format!("{}@example.com", uuid::Uuid::new_v4())).await;
    let mut stream_on_b = b.get("/api/v1/invoices/events", Some(&token)).await;
    assert_eq!(stream_on_b.status(), 200);
    // The subscription is asynchronous: repeat until B has subscribed.
    let mut delivered = Vec::new();
    for _ in 0..20 {
        a.create_invoice(&token, 77).await;
        if let Ok(events) = tokio::time::timeout(Duration::from_millis(500), read_events(&mut stream_on_b, 1)).await {
            delivered = events;
            break;
        }
    }
    assert_eq!(delivered.len(), 1, "an invoice created on A reached B");
    assert_eq!(delivered[0].0, "invoice.created");
    assert_eq!(delivered[0].2["amount_cents"], 77);
    a.stop().await;
    b.stop().await;
}

/// An instance on Redis `url`, sharing the database file in `shared` as real instances do.
async fn redis_instance(url: &str, shared: &tempfile::TempDir) -> TestApp {
    let url = url.to_owned();
    let database = format!("sqlite://{}/shared.db", shared.path().display());
    TestApp::spawn_with(Backend::Sqlite, move |c| {
        c.redis_url = Some(shipshape::config::SecretUrl::new(url));
        c.database.url = shipshape::config::SecretUrl::new(database);
    })
    .await
}

/// Redis stops mid-stream: same-instance events keep flowing; when Redis is back, so are
/// other instances' events, without a restart.
#[cfg_attr(
    not(test_redis),
    ignore = "needs TEST_REDIS_URL (Redis, and redis-server to start private ones)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_survive_redis_stopping_and_resume_sharing_when_it_returns() {
    let mut redis = RedisProcess::start();
    let url = redis.url();
    let shared = tempfile::tempdir().unwrap();
    let a = redis_instance(&url, &shared).await;
    let b = redis_instance(&url, &shared).await;
    let token = a.signup("resilient@example.com").await;
    let mut stream = a.get("/api/v1/invoices/events", Some(&token)).await;

    redis.stop();
    a.create_invoice(&token, 1).await;
    let local = read_events(&mut stream, 1).await;
    assert_eq!(local[0].0, "invoice.created", "same-instance events flow without Redis");

    let _restarted = RedisProcess::start_on(redis.port);
    let mut resumed = false;
    for _ in 0..40 {
        b.create_invoice(&token, 2).await;
        if let Ok(events) = tokio::time::timeout(Duration::from_millis(250), read_events(&mut stream, 1)).await {
            resumed = events[0].2["amount_cents"] == 2;
            break;
        }
    }
    assert!(resumed, "B's events reach A again once Redis is back");
    a.stop().await;
    b.stop().await;
}

// An open stream outlived its session: a logout now ends it within 5 s, as a new request
// would be refused.
#[tokio::test]
async fn a_logout_ends_the_sessions_open_stream_within_5_s() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.signup("stream-logout@example.com").await;
    let mut stream = app.get("/api/v1/invoices/events", Some(&token)).await;
    assert_eq!(stream.status(), 200);
    let out = app.post_json("/api/v1/auth/logout", &json!({}), Some(&token)).await;
    assert_eq!(out.status(), 204);
    let ended = Instant::now();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(6), stream.chunk())
            .await
            .expect("the stream ends within 6 s");
        match chunk {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    assert!(
        ended.elapsed() < Duration::from_secs(5),
        "ended after {:?}",
        ended.elapsed()
    );
    app.stop().await;
}
