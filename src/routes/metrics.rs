//! `GET /metrics` in Prometheus' text format, on the metrics listener only (`METRICS_PORT`),
//! never on the public port.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::jobs::queue;
use crate::state::AppState;

/// How long a scrape waits for the job queue's count.
const QUEUE_COUNT_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /metrics`, for the metrics listener only.
pub fn router(state: AppState, handle: &'static PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move |State(state): State<AppState>| async move {
                // Pool gauges are read when scraped: always current, and free between scrapes.
                let (open, idle) = state.db.pool_usage();
                metrics::gauge!("db_pool_connections", "state" => "idle").set(idle as f64);
                metrics::gauge!("db_pool_connections", "state" => "active")
                    .set(open.saturating_sub(idle as u32) as f64);
                metrics::gauge!("db_pool_connections", "state" => "max")
                    .set(state.config.database.max_connections as f64);
                // Counted when scraped too; with the database away the last value stays.
                if let Ok(db) = state.database()
                    && let Ok(Ok(status)) = tokio::time::timeout(QUEUE_COUNT_LIMIT, queue::status(db)).await
                {
                    metrics::gauge!("jobs_queued").set(status.queued as f64);
                }
                handle.run_upkeep();
                handle.render()
            }),
        )
        .with_state(state)
}
