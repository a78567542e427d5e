//! The stats summary reads per-user aggregates; these tests hold them to a full recomputation
//! from the invoices after random creates, sends and payments (some concurrent), and after
//! the migrations that backfill them.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use serde_json::{Value, json};
use shipshape::db::{Db, MIGRATOR};

use crate::helpers::{Backend, TestApp, deliver_webhook, table_exists};
use crate::on_both_databases;

on_both_databases!(
    the_summary_equals_a_recomputation_after_random_changes,
    the_backfill_gives_the_same_numbers,
);

const SECRET: &str = "whsec_stats";
const CURRENCIES: [&str; 3] = ["USD", "EUR", "JPY"];

/// splitmix64: a fixed seed replays the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

struct User {
    token: String,
    id: String,
    drafts: Vec<Value>,
    sent: Vec<Value>,
}

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |c| {
        c.webhook_secret = Some(shipshape::config::Secret::new(SECRET))
    })
    .await
}

async fn users(app: &TestApp, count: usize) -> Vec<User> {
    let mut users = Vec::new();
    for n in 0..count {
        let email = format!("stats{n}@example.com");
        let token = app.signup(&email).await;
        let id: String = shipshape::with_db!(&app.state.db, pool => {
            sqlx::query_scalar("SELECT id FROM users WHERE email = $1").bind(&email).fetch_one(pool).await
        })
        .unwrap();
        users.push(User {
            token,
            id,
            drafts: Vec::new(),
            sent: Vec::new(),
        });
    }
    users
}

async fn pay(app: &TestApp, invoice: &Value) {
    let event = json!({"event_id": format!("evt_{}", invoice["id"].as_str().unwrap()), "type": "payment.succeeded",
        "invoice_id": invoice["id"], "amount_cents": invoice["amount_cents"]});
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let response = deliver_webhook(app, &event, now, SECRET).await;
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "processed"}));
}

/// An unpaid invoice of `user`, drafts included (a draft can be paid), taken off its list.
fn take_unpaid(rng: &mut Rng, user: &mut User) -> Option<Value> {
    let unpaid = user.drafts.len() + user.sent.len();
    if unpaid == 0 {
        return None;
    }
    let pick = rng.below(unpaid);
    Some(if pick < user.drafts.len() {
        user.drafts.swap_remove(pick)
    } else {
        user.sent.swap_remove(pick - user.drafts.len())
    })
}

async fn create(app: &TestApp, user: &User, amount_cents: usize, currency: &str) -> Value {
    let body = json!({"customer_name": "Acme Ltd", "amount_cents": amount_cents, "currency": currency});
    let created = app.post_json("/api/v1/invoices", &body, Some(&user.token)).await;
    assert_eq!(created.status(), 201);
    created.json().await.unwrap()
}

/// `steps` random changes over `users`; every tenth pays several invoices of one user at once,
/// every tenth creates several at once.
async fn random_changes(app: &TestApp, rng: &mut Rng, users: &mut [User], steps: usize) {
    for step in 0..steps {
        let user = &mut users[rng.below(users.len())];
        if step % 10 == 9 {
            let batch: Vec<Value> = (0..4).filter_map(|_| take_unpaid(rng, user)).collect();
            join_all(batch.iter().map(|invoice| pay(app, invoice))).await;
            continue;
        }
        if step % 10 == 4 {
            let amounts: Vec<usize> = (0..4).map(|_| 1 + rng.below(1_000_000)).collect();
            let created = join_all(amounts.iter().map(|amount| create(app, user, *amount, "USD"))).await;
            user.drafts.extend(created);
            continue;
        }
        match rng.below(10) {
            0..=4 => {
                let currency = CURRENCIES[rng.below(CURRENCIES.len())];
                let invoice = create(app, user, 1 + rng.below(1_000_000), currency).await;
                user.drafts.push(invoice);
            }
            5..=7 if !user.drafts.is_empty() => {
                let invoice = user.drafts.swap_remove(rng.below(user.drafts.len()));
                let path = format!("/api/v1/invoices/{}/send", invoice["id"].as_str().unwrap());
                let sent = app.post_json(&path, &json!({}), Some(&user.token)).await;
                assert_eq!(sent.status(), 200);
                user.sent.push(invoice);
            }
            _ => {
                if let Some(invoice) = take_unpaid(rng, user) {
                    pay(app, &invoice).await;
                }
            }
        }
    }
}

/// The stats summary (docs/example-domain.md) computed from every invoice of the user, as plain SQL over `invoices`,
/// and written as the server writes it: compared as text, since parsing JSON numbers back
/// (serde_json's default) may move a float by its last bit.
async fn recomputed(db: &Db, user_id: &str) -> String {
    let counts_sql = "SELECT \
        CAST(COALESCE(SUM(CASE WHEN status = 'draft' THEN 1 ELSE 0 END), 0) AS BIGINT), \
        CAST(COALESCE(SUM(CASE WHEN status = 'sent' THEN 1 ELSE 0 END), 0) AS BIGINT), \
        CAST(COALESCE(SUM(CASE WHEN status = 'paid' THEN 1 ELSE 0 END), 0) AS BIGINT), \
        CAST(COUNT(*) AS BIGINT), \
        CAST(AVG(CASE WHEN status = 'paid' AND sent_at IS NOT NULL THEN paid_at - sent_at END) AS DOUBLE PRECISION) \
        FROM invoices WHERE user_id = $1";
    let totals_sql = "SELECT currency, CAST(SUM(amount_cents) AS BIGINT) FROM invoices \
        WHERE user_id = $1 AND status = 'paid' GROUP BY currency";
    let (draft, sent, paid, total, average_micros): (i64, i64, i64, i64, Option<f64>) =
        shipshape::with_db!(db, pool => sqlx::query_as(counts_sql).bind(user_id).fetch_one(pool).await).unwrap();
    let totals: BTreeMap<String, i64> =
        shipshape::with_db!(db, pool => sqlx::query_as(totals_sql).bind(user_id).fetch_all(pool).await)
            .unwrap()
            .into_iter()
            .collect();
    let settled = sent + paid;
    let conversion_rate = (settled > 0).then(|| paid as f64 / settled as f64);
    let average_payment_seconds = average_micros.map(|micros| micros / 1_000_000.0);
    format!(
        r#"{{"invoices":{{"draft":{draft},"sent":{sent},"paid":{paid},"total":{total}}},"conversion_rate":{},"average_payment_seconds":{},"total_paid_cents":{}}}"#,
        json!(conversion_rate),
        json!(average_payment_seconds),
        json!(totals)
    )
}

/// Each user's summary, as the bytes of the response.
async fn summaries(app: &TestApp, users: &[User]) -> Vec<String> {
    let mut summaries = Vec::new();
    for user in users {
        let response = app.get("/api/v1/stats/summary", Some(&user.token)).await;
        assert_eq!(response.status(), 200);
        summaries.push(response.text().await.unwrap());
    }
    summaries
}

async fn assert_recomputed(app: &TestApp, users: &[User], summaries: &[String]) {
    for (user, summary) in users.iter().zip(summaries) {
        assert_eq!(summary, &recomputed(&app.state.db, &user.id).await, "user {}", user.id);
    }
}

async fn the_summary_equals_a_recomputation_after_random_changes(backend: Backend) {
    let app = spawn(backend).await;
    // The last user never creates anything: zeros and nulls, as recomputed.
    let mut users = users(&app, 4).await;
    let mut rng = Rng(18);
    random_changes(&app, &mut rng, &mut users[..3], 120).await;
    let summaries = summaries(&app, &users).await;
    let parsed: Vec<Value> = summaries.iter().map(|s| serde_json::from_str(s).unwrap()).collect();
    assert!(
        parsed
            .iter()
            .any(|s| s["average_payment_seconds"].is_f64() && s["total_paid_cents"]["EUR"].is_i64()),
        "the sequence pays sent invoices: {summaries:?}"
    );
    assert_recomputed(&app, &users, &summaries).await;
    app.stop().await;
}

/// The version of the migration named `description`.
fn migration(description: &str) -> i64 {
    MIGRATOR
        .iter()
        .find(|m| m.description == description)
        .unwrap_or_else(|| panic!("the {description} migration"))
        .version
}

async fn the_backfill_gives_the_same_numbers(backend: Backend) {
    let app = spawn(backend).await;
    let mut users = users(&app, 3).await;
    random_changes(&app, &mut Rng(1812), &mut users, 60).await;
    let maintained = summaries(&app, &users).await;
    let db = &app.state.db;

    // Reverting the shards rebuilds the one-row-per-user table the release before them reads.
    db.revert(Some(migration("user stats")))
        .await
        .expect("revert the shards");
    assert!(
        !table_exists(db, "user_stats_shards").await,
        "the down migration dropped the shards"
    );
    for (user, summary) in users.iter().zip(&maintained) {
        let (draft, sent, paid): (i64, i64, i64) = shipshape::with_db!(db, pool => {
            sqlx::query_as("SELECT draft, sent, paid FROM user_stats WHERE user_id = $1").bind(&user.id).fetch_one(pool).await
        })
        .expect("the rebuilt user_stats row");
        let counts = &serde_json::from_str::<Value>(summary).unwrap()["invoices"];
        assert_eq!(
            json!({"draft": draft, "sent": sent, "paid": paid}),
            json!({"draft": counts["draft"],
            "sent": counts["sent"], "paid": counts["paid"]}),
            "user {}",
            user.id
        );
    }

    let before_aggregates = MIGRATOR
        .iter()
        .map(|m| m.version)
        .filter(|v| *v < migration("user stats"))
        .max()
        .expect("an earlier migration");
    db.revert(Some(before_aggregates)).await.expect("revert the aggregates");
    assert!(
        !table_exists(db, "user_stats").await,
        "the down migration dropped the aggregates"
    );
    db.migrate().await.expect("re-apply with the backfill");

    let backfilled = summaries(&app, &users).await;
    assert_eq!(backfilled, maintained);
    assert_recomputed(&app, &users, &backfilled).await;
    app.stop().await;
}
