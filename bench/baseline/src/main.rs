//! Bare axum: `/healthz`, `/readyz` (SQLite `SELECT 1`) and static files, nothing else.
//! Usage: shipshape-baseline PORT SQLITE_URL STATIC_DIR

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use sqlx::SqlitePool;
use tower_http::services::ServeDir;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port = args.next().unwrap_or_else(|| "8090".into());
    let database = args.next().unwrap_or_else(|| "sqlite::memory:".into());
    let static_dir = args.next().unwrap_or_else(|| "static".into());
    let pool = SqlitePool::connect(&database).await.expect("database");
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .nest_service("/static", ServeDir::new(static_dir))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

async fn readyz(State(pool): State<SqlitePool>) -> Json<Value> {
    let ok = sqlx::query("SELECT 1").execute(&pool).await.is_ok();
    Json(json!({"status": if ok { "ready" } else { "unavailable" }}))
}
