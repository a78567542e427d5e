//! Rate limits (docs/api.md, "Rate limits"): each limit's 429 with `Retry-After`, the headers, per-user keys, and the
//! Redis-shared limiter (two instances, and Redis going away mid-test).

use serde_json::json;
use shipshape::config::{ClientIpSource, RateSetting, SecretUrl, parse_rate};
use shipshape::rate_limit::Limit;

use crate::helpers::{Backend, PASSWORD, RedisProcess, TEST_ITEMS, TestApp, assert_error, redis_url, test_items};

async fn login(app: &TestApp, client_ip: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": "who@example.com", "password": PASSWORD}));
    if let Some(ip) = client_ip {
        request = request.header("x-forwarded-for", ip);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_sixth_login_in_a_minute_waits_twelve_seconds() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.rate_limits.set("RATE_LIMIT_LOGIN", parse_rate("5/m").unwrap())
    })
    .await;
    for remaining in (0..5).rev() {
        let response = login(&app, None).await;
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["x-ratelimit-limit"], "5");
        assert_eq!(
            response.headers()["x-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let limited = login(&app, None).await;
    assert_eq!(limited.headers()["retry-after"], "12");
    assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
    assert_error(limited, 429, "rate_limited").await;
    app.stop().await;
}

/// A per-user limit of the tests' own, on [`test_items`]: each user's budget of creations.
const TEST_ITEM_LIMIT: Limit = Limit::per_user(
    "test_item_create",
    RateSetting {
        var: "RATE_LIMIT_TEST_ITEM_CREATE",
        default: "10/h",
        help: "Test items created per user",
    },
);

#[tokio::test]
async fn signup_global_and_per_user_limits() {
    let app = TestApp::start_with_state_routes(
        Backend::Sqlite,
        |c| {
            c.rate_limits.set("RATE_LIMIT_SIGNUP", parse_rate("3/h").unwrap());
            c.rate_limits
                .set("RATE_LIMIT_TEST_ITEM_CREATE", parse_rate("2/h").unwrap());
            c.rate_limits.set("RATE_LIMIT_GLOBAL", parse_rate("30/m").unwrap());
        },
        |state| test_items().route_layer(TEST_ITEM_LIMIT.layer(state)),
    )
    .await;
    let alice = app.signup("alice@example.com").await;
    let bob = app.signup("bob@example.com").await;
    app.signup("carol@example.com").await;
    let fourth = app.post_json(
        "/api/v1/auth/signup",
        &json!({"email": "dan@example.com", "password": PASSWORD}),
        None,
    );
    let fourth = fourth.await;
    assert_eq!(
        fourth.headers()["retry-after"],
        "1200",
        "3/h refills one every 20 minutes"
    );
    assert_error(fourth, 429, "rate_limited").await;

    let item = json!({"name": "A", "amount_cents": 1});
    for _ in 0..2 {
        assert_eq!(app.post_json(TEST_ITEMS, &item, Some(&alice)).await.status(), 201);
    }
    let third = app.post_json(TEST_ITEMS, &item, Some(&alice)).await;
    assert_eq!(
        third.headers()["retry-after"],
        "1800",
        "2/h refills one every 30 minutes"
    );
    assert_error(third, 429, "rate_limited").await;
    assert_eq!(
        app.post_json(TEST_ITEMS, &item, Some(&bob)).await.status(),
        201,
        "per user, not per IP"
    );

    // Global limit: 30 per minute per IP, health probes exempt. 8 requests so far.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(app.get("/api/v1/nope", None).await.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 22, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 3);
    let nope = app.get("/api/v1/nope", None).await;
    assert_eq!(nope.headers()["x-ratelimit-limit"], "30");
    assert_eq!(app.get("/healthz", None).await.status(), 200, "health is exempt");
    app.stop().await;
}

// example-domain:begin
#[tokio::test]
async fn invoice_creation_is_limited_per_user() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.rate_limits
            .set("RATE_LIMIT_INVOICE_CREATE", parse_rate("2/h").unwrap());
    })
    .await;
    let alice = app.signup("alice@example.com").await;
    let bob = app.signup("bob@example.com").await;
    let invoice = json!({"customer_name": "A", "amount_cents": 1, "currency": "USD"});
    for _ in 0..2 {
        assert_eq!(
            app.post_json("/api/v1/invoices", &invoice, Some(&alice)).await.status(),
            201
        );
    }
    assert_error(
        app.post_json("/api/v1/invoices", &invoice, Some(&alice)).await,
        429,
        "rate_limited",
    )
    .await;
    assert_eq!(
        app.post_json("/api/v1/invoices", &invoice, Some(&bob)).await.status(),
        201,
        "per user, not per IP"
    );
    app.stop().await;
}
// example-domain:end

/// Two instances with their own processes' worth of state, sharing one Redis.
async fn instance(redis: &str, login_rate: &str) -> TestApp {
    let redis = redis.to_owned();
    let rate = parse_rate(login_rate).unwrap();
    TestApp::spawn_with(Backend::Sqlite, move |c| {
        c.redis_url = Some(SecretUrl::new(redis));
        c.rate_limits.set("RATE_LIMIT_LOGIN", rate);
        c.client_ip_source = ClientIpSource::XForwardedFor;
    })
    .await
}

/// A client address no other test or run uses, so shared Redis keys never collide.
fn unique_ip() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    format!("10.{}.{}.{}", bytes[0], bytes[1], bytes[2])
}

#[cfg_attr(
    not(test_redis),
    ignore = "needs TEST_REDIS_URL (Redis, and redis-server to start private ones)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_allow_n_in_total() {
    let redis = redis_url();
    let a = instance(&redis, "5/m").await;
    let b = instance(&redis, "5/m").await;
    assert_eq!(
        a.get("/readyz", None).await.json::<serde_json::Value>().await.unwrap()["checks"]["redis"]["status"],
        "ok"
    );
    let ip = unique_ip();
    let mut passed = 0;
    for i in 0..10 {
        let app = if i % 2 == 0 { &a } else { &b };
        match login(app, Some(&ip)).await.status().as_u16() {
            401 => passed += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(passed, 5, "5 logins in total across both instances, not 10");
    a.stop().await;
    b.stop().await;
}

#[cfg_attr(
    not(test_redis),
    ignore = "needs TEST_REDIS_URL (Redis, and redis-server to start private ones)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_falls_back_and_never_500s() {
    let mut redis = RedisProcess::start();
    let app = instance(&redis.url(), "3/m").await;
    let ip = unique_ip();
    assert_eq!(login(&app, Some(&ip)).await.status(), 401);
    assert_eq!(login(&app, Some(&ip)).await.status(), 401);

    redis.stop();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(login(&app, Some(&ip)).await.status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "no 5xx while Redis is away: {statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "still limited, by the in-process fallback: {statuses:?}"
    );
    let ready: serde_json::Value = app.get("/readyz", None).await.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "Redis does not fail readiness");
    assert_eq!(ready["checks"]["redis"]["status"], "error");
    app.stop().await;
}
