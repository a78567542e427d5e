//! The signed payment webhook: signatures, replay window, idempotency, atomicity, and stats.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, assert_error, deliver_webhook, webhook_signature};
use crate::on_both_databases;

const SECRET: &str = "whsec_test_7d9f2a4c6e8b0d1f3a5c7e9b1d3f5a7c";

on_both_databases!(
    signed_payment_marks_invoice_paid_once,
    bad_signatures_and_stale_timestamps_are_refused,
    mismatch_unknown_and_already_paid,
    concurrent_duplicates_record_one_payment,
    a_failure_inside_the_transaction_leaves_nothing,
);

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |c| {
        c.webhook_secret = Some(shipshape::config::Secret::new(SECRET))
    })
    .await
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn payment(event_id: &str, invoice: &Value) -> Value {
    json!({"event_id": event_id, "type": "payment.succeeded", "invoice_id": invoice["id"], "amount_cents": invoice["amount_cents"]})
}

async fn recorded_events(app: &TestApp) -> i64 {
    shipshape::with_db!(&app.state.db, pool => {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM webhook_events").fetch_one(pool).await.unwrap()
    })
}

async fn signed_payment_marks_invoice_paid_once(backend: Backend) {
    let app = spawn(backend).await;
    let token = app.signup("payee@example.com").await;
    let invoice = app.create_invoice(&token, 4200).await;
    let id = invoice["id"].as_str().unwrap();
    app.post_json(&format!("/api/v1/invoices/{id}/send"), &json!({}), Some(&token))
        .await;
    app.create_invoice(&token, 100).await;

    let first = deliver_webhook(&app, &payment("evt_1", &invoice), now(), SECRET).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.json::<Value>().await.unwrap(), json!({"status": "processed"}));
    let paid: Value = app
        .get(&format!("/api/v1/invoices/{id}"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(paid["status"], "paid");
    assert!(paid["paid_at"].as_str().is_some());

    let again = deliver_webhook(&app, &payment("evt_1", &invoice), now(), SECRET).await;
    assert_eq!(again.json::<Value>().await.unwrap(), json!({"status": "duplicate"}));
    assert_eq!(recorded_events(&app).await, 1, "one payment recorded");

    let stats: Value = app
        .get("/api/v1/stats/summary", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["invoices"], json!({"draft": 1, "sent": 0, "paid": 1, "total": 2}));
    assert_eq!(stats["conversion_rate"], 1.0);
    assert!(stats["average_payment_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(stats["total_paid_cents"], json!({"USD": 4200}));
    app.stop().await;
}

async fn bad_signatures_and_stale_timestamps_are_refused(backend: Backend) {
    let app = spawn(backend).await;
    let token = app.signup("sigs@example.com").await;
    let invoice = app.create_invoice(&token, 700).await;
    let event = payment("evt_sig", &invoice);
    assert_error(
        deliver_webhook(&app, &event, now(), "not-the-secret").await,
        401,
        "invalid_signature",
    )
    .await;
    assert_error(
        deliver_webhook(&app, &event, now() - 301, SECRET).await,
        401,
        "invalid_signature",
    )
    .await;
    assert_error(
        deliver_webhook(&app, &event, now() + 301, SECRET).await,
        401,
        "invalid_signature",
    )
    .await;
    let unsigned = app
        .client
        .post(app.url("/api/v1/webhooks/payments"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_error(unsigned, 401, "invalid_signature").await;
    // A valid signature over a different body: the raw bytes are what is signed.
    let timestamp = now();
    let tampered = app
        .client
        .post(app.url("/api/v1/webhooks/payments"))
        .header("content-type", "application/json")
        .header("x-webhook-timestamp", timestamp.to_string())
        .header(
            "x-webhook-signature",
            webhook_signature(SECRET, timestamp, &event.to_string()),
        )
        .body(event.to_string().replace("700", "1"))
        .send()
        .await
        .unwrap();
    assert_error(tampered, 401, "invalid_signature").await;
    assert_eq!(recorded_events(&app).await, 0);
    assert_eq!(
        deliver_webhook(&app, &event, now() - 250, SECRET).await.status(),
        200,
        "inside the window"
    );
    app.stop().await;

    let off = TestApp::spawn(Backend::Sqlite).await;
    assert_error(deliver_webhook(&off, &event, now(), SECRET).await, 404, "not_found").await;
    off.stop().await;
}

async fn mismatch_unknown_and_already_paid(backend: Backend) {
    let app = spawn(backend).await;
    let token = app.signup("mismatch@example.com").await;
    let invoice = app.create_invoice(&token, 900).await;
    let mut wrong_amount = payment("evt_amount", &invoice);
    wrong_amount["amount_cents"] = json!(901);
    let body = assert_error(
        deliver_webhook(&app, &wrong_amount, now(), SECRET).await,
        422,
        "validation_failed",
    )
    .await;
    assert_eq!(body["error"]["details"][0]["field"], "amount_cents");

    let mut unknown = payment("evt_unknown", &invoice);
    unknown["invoice_id"] = json!(uuid::Uuid::new_v4());
    assert_error(deliver_webhook(&app, &unknown, now(), SECRET).await, 404, "not_found").await;
    assert_eq!(recorded_events(&app).await, 0, "nothing recorded for refused events");

    assert_eq!(
        deliver_webhook(&app, &payment("evt_first", &invoice), now(), SECRET)
            .await
            .status(),
        200
    );
    let second = deliver_webhook(&app, &payment("evt_second", &invoice), now(), SECRET).await;
    assert_error(second, 409, "invalid_transition").await;
    assert_eq!(recorded_events(&app).await, 1);
    app.stop().await;
}

async fn concurrent_duplicates_record_one_payment(backend: Backend) {
    let app = spawn(backend).await;
    let token = app.signup("race@example.com").await;
    let invoice = app.create_invoice(&token, 1234).await;
    let event = payment("evt_race", &invoice);
    let deliveries = (0..8).map(|_| deliver_webhook(&app, &event, now(), SECRET));
    let responses = futures_util::future::join_all(deliveries).await;
    let mut outcomes = Vec::new();
    for response in responses {
        assert_eq!(response.status(), 200);
        outcomes.push(
            response.json::<Value>().await.unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(outcomes.iter().filter(|o| *o == "processed").count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "duplicate").count(), 7);
    assert_eq!(recorded_events(&app).await, 1);
    app.stop().await;
}

async fn a_failure_inside_the_transaction_leaves_nothing(backend: Backend) {
    let app = spawn(backend).await;
    let token = app.signup("atomic@example.com").await;
    let invoice = app.create_invoice(&token, 5000).await;
    let id = invoice["id"].as_str().unwrap();
    // A real database error at the last statement of the transaction: marking the invoice paid.
    match &app.state.db {
        shipshape::db::Db::Sqlite(pool, _) => {
            sqlx::query(
                "CREATE TRIGGER fail_payment BEFORE UPDATE OF status ON invoices WHEN NEW.status = 'paid' \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            )
            .execute(pool)
            .await
            .unwrap();
        }
        shipshape::db::Db::Postgres(pool) => {
            sqlx::query(
                "CREATE FUNCTION fail_payment() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ \
                 LANGUAGE plpgsql",
            )
            .execute(pool)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER fail_payment BEFORE UPDATE OF status ON invoices FOR EACH ROW \
                 WHEN (NEW.status = 'paid') EXECUTE FUNCTION fail_payment()",
            )
            .execute(pool)
            .await
            .unwrap();
        }
    }
    let failed = deliver_webhook(&app, &payment("evt_atomic", &invoice), now(), SECRET).await;
    let body = assert_error(failed, 500, "internal_error").await;
    assert!(
        !body.to_string().contains("injected"),
        "no SQL error text reaches the client"
    );
    assert_eq!(recorded_events(&app).await, 0, "the event was not recorded");
    let unchanged: Value = app
        .get(&format!("/api/v1/invoices/{id}"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged["status"], "draft");

    shipshape::with_db!(&app.state.db, pool => {
        sqlx::query("DROP TRIGGER fail_payment ON invoices").execute(pool).await.ok();
        sqlx::query("DROP TRIGGER IF EXISTS fail_payment").execute(pool).await.ok();
    });
    let retried = deliver_webhook(&app, &payment("evt_atomic", &invoice), now(), SECRET).await;
    assert_eq!(
        retried.json::<Value>().await.unwrap()["status"],
        "processed",
        "the provider's retry succeeds"
    );
    app.stop().await;
}
