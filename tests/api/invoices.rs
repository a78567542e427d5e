//! Invoices: validation, ownership, the send transition, and keyset pagination.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, refused_fields};
use crate::on_both_databases;

on_both_databases!(
    create_get_and_send,
    validation_names_each_field,
    users_see_only_their_own,
    pagination_is_stable_under_equal_timestamps
);

async fn create_get_and_send(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.signup("invoices@example.com").await;
    let request = json!({
        "customer_name": "Acme Ltd", "customer_phone": "+14155550100", "amount_cents": 12500,
        "currency": "EUR", "due_date": "2026-12-31", "description": "Consulting, November"
    });
    let created = app.post_json("/api/v1/invoices", &request, Some(&token)).await;
    assert_eq!(created.status(), 201);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let invoice: Value = created.json().await.unwrap();
    for field in [
        "customer_name",
        "customer_phone",
        "amount_cents",
        "currency",
        "due_date",
        "description",
    ] {
        assert_eq!(invoice[field], request[field], "{field}");
    }
    assert_eq!(invoice["status"], "draft");
    assert!(invoice["sent_at"].is_null() && invoice["paid_at"].is_null());
    let id = invoice["id"].as_str().unwrap();

    let fetched = app.get(&format!("/api/v1/invoices/{id}"), Some(&token)).await;
    assert_eq!(fetched.json::<Value>().await.unwrap(), invoice);

    let sent = app
        .post_json(&format!("/api/v1/invoices/{id}/send"), &json!({}), Some(&token))
        .await;
    assert_eq!(sent.status(), 200);
    let sent: Value = sent.json().await.unwrap();
    assert_eq!(sent["status"], "sent");
    assert!(sent["sent_at"].as_str().unwrap().ends_with('Z'));

    let again = app
        .post_json(&format!("/api/v1/invoices/{id}/send"), &json!({}), Some(&token))
        .await;
    assert_error(again, 409, "invalid_transition").await;
    app.stop().await;
}

async fn validation_names_each_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.signup("validation@example.com").await;
    let bad = json!({
        "customer_name": "", "customer_phone": "555-1234", "amount_cents": 0,
        "currency": "usd", "due_date": "31/12/2026", "description": "x".repeat(2001)
    });
    let body = assert_error(
        app.post_json("/api/v1/invoices", &bad, Some(&token)).await,
        422,
        "validation_failed",
    )
    .await;
    let fields: HashSet<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    let expected: HashSet<&str> = [
        "customer_name",
        "customer_phone",
        "amount_cents",
        "currency",
        "due_date",
        "description",
    ]
    .into();
    assert_eq!(fields, expected);

    let base = json!({"customer_name": "A", "amount_cents": 100, "currency": "USD"});
    for (field, value) in [
        ("amount_cents", json!(100_000_000_001_i64)),
        ("amount_cents", json!("100")),
        ("amount_cents", json!(1.5)),
        ("customer_name", json!("n".repeat(201))),
        ("customer_phone", json!("+123456")),
        ("currency", json!("US")),
        ("extra", json!(true)),
    ] {
        let mut request = base.clone();
        request[field] = value.clone();
        let response = app.post_json("/api/v1/invoices", &request, Some(&token)).await;
        let body = assert_error(response, 422, "validation_failed").await;
        assert_eq!(body["error"]["details"][0]["field"], field, "{field} = {value}");
    }
    let missing = app.post_json(
        "/api/v1/invoices",
        &json!({"customer_name": "A", "currency": "USD"}),
        Some(&token),
    );
    let body = assert_error(missing.await, 422, "validation_failed").await;
    assert_eq!(body["error"]["details"][0]["field"], "amount_cents");
    assert_error(
        app.post_json("/api/v1/invoices", &base, None).await,
        401,
        "unauthorized",
    )
    .await;
    app.stop().await;
}

async fn users_see_only_their_own(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.signup("alice@example.com").await;
    let bob = app.signup("bob@example.com").await;
    let invoice = app.create_invoice(&alice, 500).await;
    let id = invoice["id"].as_str().unwrap();

    assert_error(
        app.get(&format!("/api/v1/invoices/{id}"), Some(&bob)).await,
        404,
        "not_found",
    )
    .await;
    let send = app
        .post_json(&format!("/api/v1/invoices/{id}/send"), &json!({}), Some(&bob))
        .await;
    assert_error(send, 404, "not_found").await;
    assert_error(
        app.get("/api/v1/invoices/not-a-uuid", Some(&alice)).await,
        404,
        "not_found",
    )
    .await;
    let bobs: Value = app.get("/api/v1/invoices", Some(&bob)).await.json().await.unwrap();
    assert_eq!(bobs["items"], json!([]));
    let stats: Value = app.get("/api/v1/stats/summary", Some(&bob)).await.json().await.unwrap();
    assert_eq!(stats["invoices"]["total"], 0);
    app.stop().await;
}

async fn pagination_is_stable_under_equal_timestamps(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.signup("pages@example.com").await;
    let me: Value = app.get("/api/v1/me", Some(&token)).await.json().await.unwrap();
    let user = me["id"].as_str().unwrap().to_owned();
    // 45 invoices with one identical timestamp: only the id breaks the ties.
    let sql = "INSERT INTO invoices (id, user_id, customer_name, amount_cents, currency, status, created_at) \
               VALUES ($1, $2, 'Same time', 100, 'USD', $3, 1700000000000000)";
    for i in 0..45 {
        let status = if i % 3 == 0 { "sent" } else { "draft" };
        let id = uuid::Uuid::new_v4().to_string();
        shipshape::with_db!(&app.state.db, pool => {
            sqlx::query(sql).bind(&id).bind(&user).bind(status).execute(pool).await.unwrap();
        });
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/invoices?limit=10&cursor={c}"),
            None => "/api/v1/invoices?limit=10".to_owned(),
        };
        let page: Value = app.get(&path, Some(&token)).await.json().await.unwrap();
        pages += 1;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen.len(), 45);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        45,
        "no duplicates across pages"
    );
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first, ties by id");

    let sent: Value = app
        .get("/api/v1/invoices?status=sent&limit=100", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(sent["items"].as_array().unwrap().len(), 15);
    assert!(sent["next_cursor"].is_null());
    for bad in ["limit=0", "limit=101", "limit=abc", "status=void"] {
        let response = app.get(&format!("/api/v1/invoices?{bad}"), Some(&token)).await;
        assert_error(response, 422, "validation_failed").await;
    }
    for bad in ["garbage!", "MTIzfG5vdC1hLXV1aWQ"] {
        assert_error(
            app.get(&format!("/api/v1/invoices?cursor={bad}"), Some(&token)).await,
            400,
            "invalid_cursor",
        )
        .await;
    }
    app.stop().await;
}

// One 422 names every bad field: wrongly typed, missing, out of range and unknown at once.
#[tokio::test]
async fn one_422_names_every_bad_field_wrongly_typed_ones_included() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.signup("every-field@example.com").await;
    let bad = json!({
        "customer_name": 5, "customer_phone": ["+14155550100"], "amount_cents": "100",
        "due_date": 20261231, "description": {"text": "x"}, "colour": "red"
    });
    let response = app.post_json("/api/v1/invoices", &bad, Some(&token)).await;
    assert_eq!(
        refused_fields(response).await,
        [
            "customer_name",
            "customer_phone",
            "amount_cents",
            "currency",
            "due_date",
            "description",
            "colour"
        ]
    );
    let nothing_valid = json!({"customer_name": null, "amount_cents": 1.5, "currency": "usd"});
    let response = app.post_json("/api/v1/invoices", &nothing_valid, Some(&token)).await;
    assert_eq!(
        refused_fields(response).await,
        ["customer_name", "amount_cents", "currency"]
    );
    app.stop().await;
}
