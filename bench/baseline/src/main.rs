//! The ceiling shipshape is measured against: bare axum, no middleware at all, doing the same
//! work on each benchmarked path.
//!
//! - `/healthz`: a constant JSON body.
//! - `/readyz`: `SELECT 1` on a connection of its own, as shipshape keeps one aside for it.
//! - `/static/*`: a default `tower_http::services::ServeDir` over the same folder.
//! - `GET /api/v1/invoices`: an HS256 bearer token verified as shipshape verifies it (same
//!   secret, same required claims), then shipshape's keyset query (`LIST_SQL`, or
//!   `LIST_BY_STATUS_SQL` with `?status=`) for 20 items (`?limit=`, `?cursor=` as shipshape's),
//!   answered in the same JSON shape.
//! - `GET /api/v1/me`: the same token check, then shipshape's read of the user (its columns,
//!   by id), answered in the same JSON shape. shipshape also checks the session, from a cache
//!   it keeps per instance (docs/accounts.md), so this is the same work but for that lookup.
//! - `POST /api/v1/invoices`: the same token check and shipshape's SQL word for word: the
//!   invoice and its first count in the owner's aggregates (`user_stats_shards`), one statement
//!   on PostgreSQL, `BEGIN IMMEDIATE; ...; COMMIT` in one call on SQLite; answered 201 with the
//!   invoice. Unlike shipshape it neither validates the input's rules nor queues SQLite writers
//!   (SQLite's busy handler decides who writes next).
//!
//! The database, its schema and its indexes are shipshape's own: bench.py starts shipshape on
//! the database first (which migrates it), then points this binary at it. Pool and SQLite
//! settings are shipshape's defaults (src/db/mod.rs): `DATABASE_MAX_CONNECTIONS` (10) split into
//! N-1 for requests and 1 for `/readyz`; WAL, `synchronous=NORMAL`, foreign keys, a 5 s busy
//! timeout; on PostgreSQL the same `statement_timeout` after connecting. The runtime caps its
//! blocking pool as shipshape's does (`PASSWORD_HASH_CONCURRENCY` + 16 threads), which is what
//! `ServeDir`'s file reads run on, and sockets are `TCP_NODELAY` as shipshape's are.
//!
//! Usage: `SECRET_KEY=... shipshape-baseline PORT DATABASE_URL STATIC_DIR`

use std::str::FromStr;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use tower_http::services::ServeDir;
use uuid::Uuid;

#[derive(Clone)]
enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Postgres($pool) => $body,
            Db::Sqlite($pool) => $body,
        }
    };
}

#[derive(Clone)]
struct App {
    db: Db,
    readiness: Db,
    key: DecodingKey,
    validation: Validation,
}

fn pool_options<DB: sqlx::Database>(max: u32) -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(600))
        .max_lifetime(Duration::from_secs(1800))
}

fn connect(url: &str, max: u32) -> Db {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .expect("DATABASE_URL")
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        Db::Sqlite(pool_options(max).connect_lazy_with(options))
    } else {
        let options = PgConnectOptions::from_str(url).expect("DATABASE_URL").extra_float_digits(None);
        let pool = pool_options(max)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(conn, sqlx::raw_sql("SET statement_timeout = 30000")).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Db::Postgres(pool)
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port = args.next().unwrap_or_else(|| "8090".into());
    let database = args.next().unwrap_or_else(|| "sqlite::memory:".into());
    let static_dir = args.next().unwrap_or_else(|| "static".into());
    let secret = std::env::var("SECRET_KEY").unwrap_or_default();
    let max: u32 = std::env::var("DATABASE_MAX_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let hash_concurrency = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(hash_concurrency + 16)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        validation.leeway = 5;
        let app = App {
            db: connect(&database, max.saturating_sub(1).max(1)),
            readiness: connect(&database, 1),
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        };
        let router = Router::new()
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/readyz", get(readyz))
            .route("/api/v1/invoices", get(list_invoices).post(create_invoice))
            .route("/api/v1/me", get(me))
            .nest_service("/static", ServeDir::new(static_dir))
            .with_state(app);
        // TCP_NODELAY, as shipshape's server sets it: without it a response written in more
        // than one piece (a file's headers, then its body) waits on the client's delayed ACK.
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
            .await
            .expect("bind")
            .tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
        axum::serve(listener, router).await.expect("serve");
    });
}

async fn readyz(State(app): State<App>) -> Json<Value> {
    let ok = with_db!(&app.readiness, pool => sqlx::raw_sql("SELECT 1").execute(pool).await.is_ok());
    Json(json!({"status": if ok { "ready" } else { "unavailable" }}))
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

fn user(app: &App, headers: &HeaderMap) -> Result<Uuid, Response> {
    let unauthorized = || (StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized"}))).into_response();
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let token = value.strip_prefix("Bearer ").ok_or_else(unauthorized)?;
    let data = jsonwebtoken::decode::<Claims>(token.trim(), &app.key, &app.validation).map_err(|_| unauthorized())?;
    Uuid::parse_str(&data.claims.sub).map_err(|_| unauthorized())
}

fn internal(error: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response()
}

/// shipshape's `LIST_SQL` and `LIST_BY_STATUS_SQL`, word for word.
const LIST_SQL: &str = "SELECT id, user_id, customer_name, customer_phone, amount_cents, currency, due_date, \
     description, status, created_at, sent_at, paid_at FROM invoices WHERE user_id = $1 AND (created_at, id) < ($2, $3) \
     ORDER BY created_at DESC, id DESC LIMIT CAST($4 AS BIGINT)";
const LIST_BY_STATUS_SQL: &str = "SELECT id, user_id, customer_name, customer_phone, amount_cents, currency, \
     due_date, description, status, created_at, sent_at, paid_at FROM invoices WHERE user_id = $1 AND status = $5 \
     AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT CAST($4 AS BIGINT)";

#[derive(sqlx::FromRow)]
struct InvoiceRow {
    id: String,
    #[allow(dead_code)]
    user_id: String,
    customer_name: String,
    customer_phone: Option<String>,
    amount_cents: i64,
    currency: String,
    due_date: Option<String>,
    description: Option<String>,
    status: String,
    created_at: i64,
    sent_at: Option<i64>,
    paid_at: Option<i64>,
}

/// shipshape's JSON shape of an invoice.
#[derive(Serialize)]
struct Invoice {
    id: Uuid,
    customer_name: String,
    customer_phone: Option<String>,
    amount_cents: i64,
    currency: String,
    due_date: Option<String>,
    description: Option<String>,
    status: String,
    created_at: String,
    sent_at: Option<String>,
    paid_at: Option<String>,
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

impl InvoiceRow {
    fn into_invoice(self) -> Result<Invoice, Response> {
        Ok(Invoice {
            id: Uuid::parse_str(&self.id).map_err(internal)?,
            customer_name: self.customer_name,
            customer_phone: self.customer_phone,
            amount_cents: self.amount_cents,
            currency: self.currency,
            due_date: self.due_date,
            description: self.description,
            status: self.status,
            created_at: rfc3339(self.created_at),
            sent_at: self.sent_at.map(rfc3339),
            paid_at: self.paid_at.map(rfc3339),
        })
    }
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct InvoicePage {
    items: Vec<Invoice>,
    next_cursor: Option<String>,
}

async fn list_invoices(
    State(app): State<App>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Result<Json<InvoicePage>, Response> {
    let user = user(&app, &headers)?;
    let limit = params.limit.unwrap_or(20).clamp(1, 100);
    let (after_created, after_id) = match params.cursor.as_deref().and_then(|c| c.split_once('_')) {
        Some((created, id)) => (created.parse().unwrap_or(i64::MAX), id.to_owned()),
        None => (i64::MAX, String::new()),
    };
    let sql = if params.status.is_some() { LIST_BY_STATUS_SQL } else { LIST_SQL };
    let mut rows: Vec<InvoiceRow> = with_db!(&app.db, pool => {
        let query = sqlx::query_as(sql)
            .bind(user.to_string())
            .bind(after_created)
            .bind(&after_id)
            .bind(i64::from(limit) + 1);
        match &params.status {
            Some(status) => query.bind(status),
            None => query,
        }
        .fetch_all(pool)
        .await
    })
    .map_err(internal)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| format!("{}_{}", r.created_at, r.id))
    } else {
        None
    };
    let items = rows.into_iter().map(InvoiceRow::into_invoice).collect::<Result<_, _>>()?;
    Ok(Json(InvoicePage { items, next_cursor }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInvoice {
    customer_name: String,
    customer_phone: Option<String>,
    amount_cents: i64,
    currency: String,
    due_date: Option<String>,
    description: Option<String>,
}

fn now_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

async fn create_invoice(State(app): State<App>, headers: HeaderMap, Json(body): Json<NewInvoice>) -> Response {
    match create(app, headers, body).await {
        Ok(response) | Err(response) => response,
    }
}

/// shipshape's create, word for word (`src/invoices/store.rs`): the invoice and its first
/// count in the owner's aggregates, in one statement on PostgreSQL and one call on SQLite.
const INSERT_POSTGRES: &str = "WITH invoice AS (INSERT INTO invoices (id, user_id, customer_name, customer_phone, \
     amount_cents, currency, due_date, description, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     RETURNING id, user_id, customer_name, customer_phone, amount_cents, currency, due_date, description, status, \
     created_at, sent_at, paid_at), counted AS (INSERT INTO user_stats_shards (user_id, shard, draft, sent, paid, \
     paid_after_send, paid_after_send_seconds, paid_after_send_micros) SELECT user_id, $11, $12, $13, $14, $15, $16, $17 \
     FROM invoice ON CONFLICT (user_id, shard) DO UPDATE SET draft = user_stats_shards.draft + excluded.draft, \
     sent = user_stats_shards.sent + excluded.sent, paid = user_stats_shards.paid + excluded.paid, \
     paid_after_send = user_stats_shards.paid_after_send + excluded.paid_after_send, \
     paid_after_send_seconds = user_stats_shards.paid_after_send_seconds + excluded.paid_after_send_seconds, \
     paid_after_send_micros = user_stats_shards.paid_after_send_micros + excluded.paid_after_send_micros) \
     SELECT * FROM invoice";
const INSERT_SQLITE: &str = "BEGIN IMMEDIATE; INSERT INTO invoices (id, user_id, customer_name, customer_phone, \
     amount_cents, currency, due_date, description, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     RETURNING id, user_id, customer_name, customer_phone, amount_cents, currency, due_date, description, status, \
     created_at, sent_at, paid_at; INSERT INTO user_stats_shards (user_id, shard, draft, sent, paid, paid_after_send, \
     paid_after_send_seconds, paid_after_send_micros) VALUES ($2, $11, $12, $13, $14, $15, $16, $17) \
     ON CONFLICT (user_id, shard) DO UPDATE SET draft = user_stats_shards.draft + excluded.draft, \
     sent = user_stats_shards.sent + excluded.sent, paid = user_stats_shards.paid + excluded.paid, \
     paid_after_send = user_stats_shards.paid_after_send + excluded.paid_after_send, \
     paid_after_send_seconds = user_stats_shards.paid_after_send_seconds + excluded.paid_after_send_seconds, \
     paid_after_send_micros = user_stats_shards.paid_after_send_micros + excluded.paid_after_send_micros; COMMIT";

async fn insert(db: Db, id: String, user: Uuid, body: NewInvoice, shard: i16) -> Result<Vec<InvoiceRow>, sqlx::Error> {
    let sql = match &db {
        Db::Postgres(_) => INSERT_POSTGRES,
        Db::Sqlite(_) => INSERT_SQLITE,
    };
    with_db!(&db, pool => {
        sqlx::query_as(sql)
            .bind(&id)
            .bind(user.to_string())
            .bind(&body.customer_name)
            .bind(&body.customer_phone)
            .bind(body.amount_cents)
            .bind(&body.currency)
            .bind(&body.due_date)
            .bind(&body.description)
            .bind("draft")
            .bind(now_micros())
            .bind(shard)
            .bind(1_i64)
            .bind(0_i64)
            .bind(0_i64)
            .bind(0_i64)
            .bind(0_i64)
            .bind(0_i64)
            .fetch_all(pool)
            .await
    })
}

async fn create(app: App, headers: HeaderMap, body: NewInvoice) -> Result<Response, Response> {
    let user = user(&app, &headers)?;
    let id = Uuid::now_v7().to_string();
    // shipshape's shard: the id's last hex digit, of 16.
    let shard = id.chars().last().and_then(|c| c.to_digit(16)).map_or(0, |d| (d % 16) as i16);
    // Spawned, so a client that leaves cannot stop SQLite between `BEGIN` and `COMMIT` and
    // leave the connection holding the write lock (shipshape closes such a connection instead).
    let rows = tokio::spawn(insert(app.db.clone(), id, user, body, shard))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let row = rows.into_iter().next().ok_or_else(|| internal("no row"))?;
    let json = serde_json::to_string(&row.into_invoice()?).map_err(internal)?;
    Ok((StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    #[allow(dead_code)]
    password_hash: String,
    role: String,
    #[allow(dead_code)]
    disabled_at: Option<i64>,
    created_at: i64,
}

async fn me(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, Response> {
    let user = user(&app, &headers)?;
    let sql = "SELECT id, email, password_hash, role, disabled_at, created_at FROM users WHERE id = $1";
    let row: UserRow = with_db!(&app.db, pool => sqlx::query_as(sql).bind(user.to_string()).fetch_one(pool).await)
        .map_err(internal)?;
    let id = Uuid::parse_str(&row.id).map_err(internal)?;
    Ok(Json(json!({"id": id, "email": row.email, "role": row.role, "created_at": rfc3339(row.created_at)})))
}
