//! Prometheus metrics on their own port, with bounded label sets.

use std::collections::HashSet;

use serde_json::json;

use crate::helpers::{Backend, Options, PASSWORD, TEST_ITEMS, TestApp, test_items};

fn series(text: &str, metric: &str) -> HashSet<String> {
    text.lines()
        .filter(|l| l.starts_with(metric))
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_list_every_series_on_their_own_port_with_route_labels() {
    let options = Options {
        backend: Backend::Sqlite,
        extra_routes: Some(test_items()),
    };
    let app = TestApp::start(options, |c| {
        c.metrics_port = Some(0);
        c.rate_limits
            .set("RATE_LIMIT_LOGIN", shipshape::config::parse_rate("1/m").unwrap());
    })
    .await;
    let metrics_url = format!("http://{}/metrics", app.metrics_addr.expect("metrics listener"));
    let token = app.signup("metrics@example.com").await;
    let item = app
        .post_json(
            TEST_ITEMS,
            &json!({"name": "metered", "amount_cents": 10}),
            Some(&token),
        )
        .await;
    assert_eq!(item.status(), 201);
    let item: serde_json::Value = item.json().await.unwrap();
    let read = app
        .get(&format!("{TEST_ITEMS}/{}", item["id"].as_str().unwrap()), Some(&token))
        .await;
    assert_eq!(read.status(), 200);
    // example-domain:begin
    let invoice = app.create_invoice(&token, 10).await;
    app.get(
        &format!("/api/v1/invoices/{}", invoice["id"].as_str().unwrap()),
        Some(&token),
    )
    .await;
    // example-domain:end
    let login = json!({"email": "metrics@example.com", "password": PASSWORD});
    app.post_json("/api/v1/auth/login", &login, None).await;
    app.post_json("/api/v1/auth/login", &login, None).await; // 429

    app.get("/api/v1/me", Some(&token)).await;
    // A job run to its end (a password-reset email, to the log in development).
    let reset = json!({"email": "metrics@example.com"});
    assert_eq!(
        app.post_json("/api/v1/auth/password-reset", &reset, None)
            .await
            .status(),
        202
    );
    for _ in 0..200 {
        let status = shipshape::jobs::queue::status(&app.state.db).await.unwrap();
        if status.queued + status.running == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    let text = app.client.get(&metrics_url).send().await.unwrap().text().await.unwrap();
    for expected in [
        r#"http_requests_total{method="GET",route="/api/v1/me",status="200"}"#,
        r#"http_requests_total{method="POST",route="/api/v1/test-items",status="201"}"#,
        r#"http_requests_total{method="GET",route="/api/v1/test-items/{id}",status="200"}"#,
        r#"http_request_duration_seconds_bucket{method="GET",route="/api/v1/test-items/{id}",le="0.005"}"#,
        // example-domain:begin
        r#"http_requests_total{method="POST",route="/api/v1/invoices",status="201"}"#,
        r#"http_requests_total{method="GET",route="/api/v1/invoices/{id}",status="200"}"#,
        r#"http_request_duration_seconds_bucket{method="GET",route="/api/v1/invoices/{id}",le="0.005"}"#,
        // example-domain:end
        r#"db_pool_connections{state="idle"}"#,
        r#"db_pool_connections{state="active"}"#,
        r#"rate_limited_total{limit="login"}"#,
        &format!(r#"build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION")),
        "log_lines_dropped_total 0",
        r#"jobs_total{job="password_reset.email",outcome="success"}"#,
        r#"job_duration_seconds_bucket{job="password_reset.email",le="0.005"}"#,
        "jobs_queued ",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    assert!(!text.contains("/api/v1/test-items/0"), "no raw paths in labels");
    // example-domain:begin
    assert!(!text.contains("/api/v1/invoices/0"), "no raw paths in labels");
    // example-domain:end

    let before = series(&text, "http_requests_total");
    for n in 0..1000 {
        app.get(&format!("/scan/{n}/wp-admin.php"), None).await;
    }
    let text = app.client.get(&metrics_url).send().await.unwrap().text().await.unwrap();
    let added: Vec<String> = series(&text, "http_requests_total")
        .difference(&before)
        .cloned()
        .collect();
    assert!(added.len() <= 1, "1000 unknown paths share one label: {added:?}");
    assert!(text.contains(r#"route="unmatched""#));

    let before = series(&text, "http_requests_total");
    for n in 0..50 {
        let method = reqwest::Method::from_bytes(format!("SCAN{n}").as_bytes()).unwrap();
        app.client.request(method, app.url("/healthz")).send().await.unwrap();
    }
    let text = app.client.get(&metrics_url).send().await.unwrap().text().await.unwrap();
    let added: Vec<String> = series(&text, "http_requests_total")
        .difference(&before)
        .cloned()
        .collect();
    assert_eq!(
        added,
        [r#"http_requests_total{method="OTHER",route="/healthz",status="405"}"#],
        "50 made-up methods share one label"
    );

    // Histogram samples are folded into buckets by a background thread, not only when scraped.
    let threads = std::fs::read_dir("/proc/self/task").unwrap();
    let names: Vec<String> = threads
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap_or_default())
        .collect();
    assert!(names.iter().any(|n| n.trim() == "metrics-upkeep"), "{names:?}");

    assert_eq!(
        app.get("/metrics", None).await.status(),
        404,
        "never on the public port"
    );
    app.stop().await;
}
