//! Fault drills under load (issue: performance and resilience). Loopback only, bounded in
//! count and time; they assert outcomes (statuses, bounds, recovery), never throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use shipshape::config::{SecretUrl, parse_rate};

use crate::helpers::{Backend, Options, RedisProcess, TestApp};

/// `workers` clients each sending `per_worker` requests on its own keep-alive connection.
async fn hammer(app: &TestApp, path: &str, workers: usize, per_worker: usize) -> Vec<Result<u16, String>> {
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let client = crate::helpers::http_client();
        let url = app.url(path);
        tasks.push(tokio::spawn(async move {
            let mut results = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                results.push(
                    client
                        .get(&url)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .map_err(|e| e.to_string()),
                );
            }
            results
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_at_256_connections_without_a_5xx_or_socket_error() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let results = hammer(&app, "/readyz", 256, 40).await;
    assert_eq!(results.len(), 10_240);
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "socket errors: {:?}", &errors[..errors.len().min(3)]);
    assert!(
        results.iter().all(|r| r.as_ref().is_ok_and(|s| *s == 200)),
        "every answer 200"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_every_started_request() {
    let slow = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        }),
    );
    let mut app = TestApp::start(
        Options {
            backend: Backend::Sqlite,
            extra_routes: Some(slow),
        },
        |_| {},
    )
    .await;
    let mut in_flight = Vec::new();
    for _ in 0..32 {
        let request = app.client.get(app.url("/slow")).send();
        in_flight.push(tokio::spawn(request));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let server = app.begin_shutdown();
    for request in in_flight {
        let response = request.await.unwrap().expect("a request that began is answered");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "done");
    }
    tokio::time::timeout(Duration::from_secs(25), server)
        .await
        .expect("drained within SHUTDOWN_TIMEOUT_SECS")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// PostgreSQL disappears for a while under load: only quick 503s meanwhile, then full recovery.
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_gives_only_quick_503s_and_recovers() {
    let admin = crate::helpers::postgres_admin();
    let acquire_timeout = Duration::from_secs(1);
    let (app, proxy) = crate::helpers::spawn_behind_proxy(&admin, acquire_timeout).await;
    let token = app.signup("drill@example.com").await;

    // Load: 8 clients calling a database route until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (client, url, token, stop) = (app.client.clone(), app.url("/api/v1/me"), token.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let response = client.get(&url).bearer_auth(&token).send().await.expect("answered");
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                seen.push((Instant::now(), status, started.elapsed(), body));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_at = Instant::now();
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore().await;
    let restored_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let mut last_failure = None;
    for client in clients {
        for (at, status, took, body) in client.await.unwrap() {
            assert!(status == 200 || status == 503, "only 200 or 503, got {status}: {body}");
            if status == 503 {
                assert!(body.contains("service_unavailable"), "{body}");
                assert!(at >= cut_at, "no failure before the outage");
                last_failure = Some(last_failure.map_or(at, |l: Instant| l.max(at)));
            }
            assert!(
                took < acquire_timeout + Duration::from_secs(1),
                "answered within the acquire timeout + 1 s: {took:?}"
            );
        }
    }
    let last_failure = last_failure.expect("the outage was noticed");
    assert!(
        last_failure < restored_at + Duration::from_secs(2),
        "recovered within 2 s of the database's return"
    );
    app.stop().await;
}

/// Redis disappears under load with REDIS_URL set: limits fall back, nothing is a 5xx.
#[cfg_attr(
    not(test_redis),
    ignore = "needs TEST_REDIS_URL (Redis, and redis-server to start private ones)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_under_load_gives_no_5xx() {
    let mut redis = RedisProcess::start();
    let redis_url_text = redis.url();
    let app = TestApp::spawn_with(Backend::Sqlite, move |c| {
        c.redis_url = Some(SecretUrl::new(redis_url_text));
        c.rate_limits.set("RATE_LIMIT_GLOBAL", parse_rate("100000/s").unwrap());
    })
    .await;
    let load = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/api/v1/nope"));
        async move {
            let mut statuses = Vec::new();
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                statuses.push(client.get(&url).send().await.expect("answered").status().as_u16());
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    let statuses = load.await.unwrap();
    assert!(statuses.len() > 50, "load ran: {}", statuses.len());
    assert!(
        statuses.iter().all(|s| *s == 404),
        "only the route's own 404, never a 5xx"
    );
    app.stop().await;
}
