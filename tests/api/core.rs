//! Health, readiness, OpenAPI, the error shape, request ids, panics, timeouts, shutdown and
//! database outages.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use serde_json::{Value, json};
use shipshape::state::AppState;

use crate::helpers::{Backend, Options, TEST_ITEMS, TestApp, assert_error, refused_fields, test_items};
use crate::on_both_databases;

on_both_databases!(
    health_and_readiness_answer,
    errors_have_one_shape,
    pool_exhausted_is_a_quick_503,
);

async fn health_and_readiness_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let health = app.get("/healthz", None).await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap(), json!({"status": "ok"}));

    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    assert!(body["checks"]["database"]["latency_ms"].as_f64().is_some());
    assert_eq!(body["checks"]["redis"]["status"], "disabled");
    app.stop().await;
}

async fn errors_have_one_shape(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| c.max_body_bytes = 1024).await;
    let login = "/api/v1/auth/login";

    assert_error(app.get("/api/v1/nope", None).await, 404, "not_found").await;

    let wrong_method = app.delete("/healthz", None).await;
    let allow = wrong_method
        .headers()
        .get("allow")
        .expect("Allow header")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(allow.contains("GET"), "Allow: {allow}");
    assert_error(wrong_method, 405, "method_not_allowed").await;
    let no_patch = app.patch_json("/api/v1/me", &serde_json::json!({}), None).await;
    assert_error(no_patch, 405, "method_not_allowed").await;

    let broken = app
        .client
        .post(app.url(login))
        .header("content-type", "application/json")
        .body("{\"email\":")
        .send();
    assert_error(broken.await.unwrap(), 400, "invalid_json").await;

    let no_type = app.client.post(app.url(login)).body("{}").send().await.unwrap();
    assert_error(no_type, 415, "unsupported_media_type").await;

    let oversize = json!({"email": "a@example.com", "password": "x".repeat(2048)});
    assert_error(app.post_json(login, &oversize, None).await, 413, "payload_too_large").await;

    let wrong_type = app.post_json(login, &json!({"email": 5, "password": "x"}), None).await;
    let body = assert_error(wrong_type, 422, "validation_failed").await;
    assert_eq!(body["error"]["details"][0]["field"], "email");

    let missing = app.post_json(login, &json!({"email": "a@example.com"}), None).await;
    let body = assert_error(missing, 422, "validation_failed").await;
    assert_eq!(body["error"]["details"][0]["field"], "password");
    app.stop().await;
}

async fn pool_exhausted_is_a_quick_503(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.database.max_connections = 1;
        c.database.acquire_timeout = Duration::from_secs(1);
    })
    .await;
    let token = app.signup("pool@example.com").await;
    // Hold the only connection, as a slow query would.
    let held = match &app.state.db {
        shipshape::db::Db::Postgres(pool) => (Some(pool.acquire().await.unwrap()), None),
        shipshape::db::Db::Sqlite(pool, _) => (None, Some(pool.acquire().await.unwrap())),
    };
    let started = Instant::now();
    let response = app.get("/api/v1/me", Some(&token)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered within the acquire timeout"
    );
    assert_eq!(
        response.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("5")
    );
    assert_error(response, 503, "service_unavailable").await;
    drop(held);
    assert_eq!(app.get("/api/v1/me", Some(&token)).await.status(), 200);
    app.stop().await;
}

/// utoipa takes a parameter's pattern only as a literal, so each list's query struct repeats the
/// cursor's; they must all be `PageParams`' (the one `Cursor::decode` accepts exactly).
#[tokio::test]
async fn every_list_documents_the_one_cursor_pattern() {
    use utoipa::IntoParams;
    let page_params = shipshape::pagination::PageParams::into_params(|| None);
    let cursor = page_params
        .iter()
        .find(|p| p.name == "cursor")
        .expect("PageParams has a cursor");
    let expected = serde_json::to_value(cursor).unwrap()["schema"]["pattern"].clone();
    assert!(expected.is_string(), "the cursor is documented with a pattern");

    let app = TestApp::spawn(Backend::Sqlite).await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let mut lists = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let parameters = operation["parameters"].as_array().into_iter().flatten();
            for parameter in parameters.filter(|p| p["name"] == "cursor") {
                assert_eq!(parameter["schema"]["pattern"], expected, "{method} {path}");
                lists.push(format!("{method} {path}"));
            }
        }
    }
    assert!(lists.contains(&"get /api/v1/admin/users".to_owned()), "{lists:?}");
}

#[tokio::test]
async fn openapi_documents_every_api_route() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/auth/signup", "post"),
        ("/api/v1/auth/login", "post"),
        ("/api/v1/me", "get"),
        // example-domain:begin
        ("/api/v1/invoices", "post"),
        ("/api/v1/invoices", "get"),
        ("/api/v1/invoices/{id}", "get"),
        ("/api/v1/invoices/{id}/send", "post"),
        ("/api/v1/invoices/events", "get"),
        ("/api/v1/stats/summary", "get"),
        // example-domain:end
    ] {
        let operation = &paths[path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        assert!(
            operation["responses"].as_object().unwrap().len() >= 2,
            "{method} {path} lists its errors"
        );
    }
    for probe in ["/healthz", "/readyz"] {
        assert!(paths[probe]["get"].is_object(), "GET {probe} is documented");
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    // The schema states the rules the server applies, from the same constants.
    let new_account = &doc["components"]["schemas"]["NewAccount"]["properties"];
    assert_eq!(new_account["email"]["maxLength"], 254);
    assert_eq!(new_account["password"]["minLength"], 12);
    assert_eq!(new_account["password"]["maxLength"], 128);
    // example-domain:begin
    let new_invoice = &doc["components"]["schemas"]["NewInvoice"]["properties"];
    assert_eq!(new_invoice["customer_name"]["maxLength"], 200);
    assert_eq!(new_invoice["amount_cents"]["maximum"], 100_000_000_000_i64);
    assert_eq!(new_invoice["amount_cents"]["minimum"], 1);
    // example-domain:end
    // No property is an `allOf` of a typed schema and another type: no value could match it.
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        for (field, property) in schema["properties"].as_object().into_iter().flatten() {
            let types: Vec<&Value> = property["allOf"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| &s["type"])
                .collect();
            assert!(
                types
                    .windows(2)
                    .all(|pair| pair[0] == pair[1] || pair[0].is_null() || pair[1].is_null()),
                "{name}.{field}: {property}"
            );
        }
    }
    app.stop().await;
}

// example-domain:begin
#[tokio::test]
async fn openapi_documents_the_payment_webhook_when_it_is_mounted() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.webhook_secret = Some(shipshape::config::Secret::new("whsec_openapi_0123456789abcdef0123"))
    })
    .await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    let operation = &doc["paths"]["/api/v1/webhooks/payments"]["post"];
    assert!(operation.is_object(), "post /api/v1/webhooks/payments is documented");
    assert!(
        operation["responses"].as_object().unwrap().len() >= 2,
        "post /api/v1/webhooks/payments lists its errors"
    );
    app.stop().await;
}
// example-domain:end

// One 422 names every bad field: wrongly typed, missing, out of range and unknown at once.
#[tokio::test]
async fn one_422_names_every_bad_field_wrongly_typed_ones_included() {
    let options = Options {
        backend: Backend::Sqlite,
        extra_routes: Some(test_items()),
    };
    let app = TestApp::start(options, |_| {}).await;
    let token = app.signup("every-field@example.com").await;
    let bad = json!({"name": 5, "description": {"text": "x"}, "due_date": 20261231, "colour": "red"});
    let response = app.post_json(TEST_ITEMS, &bad, Some(&token)).await;
    assert_eq!(
        refused_fields(response).await,
        ["name", "description", "amount_cents", "due_date", "colour"]
    );
    let nothing_valid = json!({"name": null, "amount_cents": 100_000_000_001_i64, "due_date": "2026-02-30"});
    let response = app.post_json(TEST_ITEMS, &nothing_valid, Some(&token)).await;
    assert_eq!(refused_fields(response).await, ["name", "amount_cents", "due_date"]);
    for amount in [json!(0), json!("100"), json!(1.5)] {
        let body = json!({"name": "A", "amount_cents": amount});
        let response = app.post_json(TEST_ITEMS, &body, Some(&token)).await;
        assert_eq!(refused_fields(response).await, ["amount_cents"], "{amount}");
    }
    app.stop().await;
}

#[tokio::test]
async fn request_id_is_kept_when_sane_and_replaced_when_not() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let kept = app
        .client
        .get(app.url("/api/v1/nope"))
        .header("x-request-id", "abc.DEF_123-x")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc.DEF_123-x");
    let body = assert_error(kept, 404, "not_found").await;
    assert_eq!(body["error"]["request_id"], "abc.DEF_123-x");

    for bad in ["has space", "semi;colon", &"x".repeat(129)] {
        let replaced = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = replaced.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(id, bad);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a new UUID replaces {bad:?}");
    }
    app.stop().await;
}

fn test_routes() -> Router<AppState> {
    Router::new()
        .route("/boom", get(explode))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(700)).await;
                "finished"
            }),
        )
        .route(
            "/stuck",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "too late"
            }),
        )
}

async fn app_with_test_routes() -> TestApp {
    let options = Options {
        backend: Backend::Sqlite,
        extra_routes: Some(test_routes()),
    };
    TestApp::start(options, |c| c.request_timeout = Duration::from_secs(1)).await
}

#[tokio::test]
async fn a_panic_is_a_500_and_the_server_keeps_serving() {
    let app = app_with_test_routes().await;
    for _ in 0..3 {
        let body = assert_error(app.get("/boom", None).await, 500, "internal_error").await;
        assert!(
            !body.to_string().contains("exploded"),
            "no panic text reaches the client"
        );
    }
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_request_over_the_timeout_is_a_503() {
    let app = app_with_test_routes().await;
    let started = Instant::now();
    assert_error(app.get("/stuck", None).await, 503, "timeout").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    app.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_and_readiness_fail() {
    let mut app = app_with_test_routes().await;
    let client = app.client.clone();
    let url = app.url("/slow");
    let in_flight = tokio::spawn(async move { client.post(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(app.state.lifecycle.is_draining(), "draining starts at once");
    let (status, body) = shipshape::routes::health::readyz(axum::extract::State(app.state.clone())).await;
    assert_eq!(status, 503);
    assert_eq!(serde_json::to_value(&body.0).unwrap()["status"], "unavailable");

    let response = in_flight.await.unwrap().expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("drain ends")
        .unwrap();
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "the listener is closed"
    );
}

/// The server closes the pool's connections while they sit idle, as a pooler's or a managed
/// database's idle timeout does: the next request still succeeds, because a connection idle
/// for a second or more is pinged, and replaced, before it is used (docs/operations.md).
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_while_idle_are_replaced_unseen() {
    use sqlx::Connection;
    let admin = crate::helpers::postgres_admin();
    let app = TestApp::spawn(Backend::Postgres(admin.clone())).await;
    let token = app.signup("idle@example.com").await;
    assert_eq!(app.get("/api/v1/me", Some(&token)).await.status(), 200);

    let url = url::Url::parse(app.state.config.database.url.expose()).expect("database URL");
    let database = url.path().trim_start_matches('/').to_owned();
    let mut server = sqlx::PgConnection::connect(&admin).await.expect("admin connection");
    let closed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()) AS ended",
    )
    .bind(&database)
    .fetch_one(&mut server)
    .await
    .expect("end the app's sessions");
    assert!(closed >= 1, "the app held at least one connection");

    // Past the idle time after which a connection is checked before use.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        assert_eq!(app.get("/api/v1/me", Some(&token)).await.status(), 200);
        assert_eq!(app.get("/readyz", None).await.status(), 200);
    }
    app.stop().await;
}

/// SQLite's writes take turns on one connection kept for them (docs/code-layout.md, "Writes in
/// one call"). A turn that ends inside a transaction (a `Tx` dropped without commit, as by an
/// early return or a cancelled request; a call of several statements that fails half-way) is
/// rolled back before the next turn, on the same connection, which goes on serving.
#[tokio::test]
async fn a_write_turn_left_inside_a_transaction_is_rolled_back_before_the_next() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let db = &app.state.db;
    let run = |sql: &'static str| async move {
        let mut tx = db.begin().await.expect("the writer's turn");
        shipshape::with_tx!(&mut tx, conn => sqlx::raw_sql(sql).execute(&mut **conn).await.map(drop)).expect(sql);
        tx
    };
    // A temporary table lives as long as its connection: it shows the writer's is the same.
    run("CREATE TEMP TABLE marks (n INTEGER)").await.commit().await.unwrap();
    drop(run("INSERT INTO marks VALUES (1)").await);

    let failed: Result<_, sqlx::Error> = shipshape::with_one_write_call!(db, conn => {
        sqlx::raw_sql("BEGIN IMMEDIATE; INSERT INTO marks VALUES (2); SELECT * FROM no_such_table; COMMIT")
            .execute(conn)
            .await
            .map(drop)
    });
    assert!(failed.is_err(), "the call stops at the missing table");

    // Inside a transaction still, this would fail: SQLite cannot begin one in another.
    let mut tx = run("INSERT INTO marks VALUES (3)").await;
    let marks: Vec<i64> = shipshape::with_tx!(&mut tx, conn => {
        sqlx::query_scalar("SELECT n FROM marks").fetch_all(&mut **conn).await.expect("the marks")
    });
    assert_eq!(
        marks,
        [3],
        "both unfinished writes were rolled back, on the same connection"
    );
    tx.commit().await.unwrap();
    app.stop().await;
}

/// The writer's connection is replaced once older than `DATABASE_MAX_LIFETIME_SECS`, as a
/// pooled one is (a database file swapped under a running server is not written through an old
/// handle forever).
#[tokio::test]
async fn the_writers_connection_is_replaced_past_its_max_lifetime() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.database.max_lifetime = Duration::from_secs(2)).await;
    let db = &app.state.db;
    let has_marks = || async {
        let mut tx = db.begin().await.expect("the writer's turn");
        let found: i64 = shipshape::with_tx!(&mut tx, conn => {
            sqlx::query_scalar("SELECT count(*) FROM sqlite_temp_master WHERE name = 'marks'")
                .fetch_one(&mut **conn)
                .await
                .expect("the temporary tables")
        });
        tx.commit().await.unwrap();
        found == 1
    };
    let mut tx = db.begin().await.unwrap();
    shipshape::with_tx!(&mut tx, conn => sqlx::raw_sql("CREATE TEMP TABLE marks (n INTEGER)").execute(&mut **conn).await.map(drop))
        .unwrap();
    tx.commit().await.unwrap();
    assert!(has_marks().await, "the same connection, within its lifetime");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(!has_marks().await, "another connection, past it");
    app.stop().await;
}

/// PostgreSQL goes away while serving (a proxy in front of it is cut), then comes back.
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_503_and_recovers_without_restart() {
    let admin = crate::helpers::postgres_admin();
    let (app, proxy) = crate::helpers::spawn_behind_proxy(&admin, Duration::from_secs(1)).await;
    let token = app.signup("outage@example.com").await;
    assert_eq!(app.get("/readyz", None).await.status(), 200);

    proxy.cut();
    let started = Instant::now();
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("\"status\":\"unavailable\""), "{body}");
    assert_error(app.get("/api/v1/me", Some(&token)).await, 503, "service_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answers are bounded, never a hang"
    );
    assert_eq!(
        app.get("/healthz", None).await.status(),
        200,
        "liveness does not depend on the database"
    );

    proxy.restore().await;
    let mut recovered = false;
    for _ in 0..50 {
        if app.get("/api/v1/me", Some(&token)).await.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "requests succeed again without a restart");
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    app.stop().await;
}

async fn explode() -> &'static str {
    panic!("handler exploded")
}
