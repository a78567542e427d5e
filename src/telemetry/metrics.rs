//! Prometheus metrics on their own listener (`METRICS_PORT`), never on the public port.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;

/// Latency buckets in seconds: fine below 100 ms where a healthy API lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> anyhow::Result<&'static PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_request_duration_seconds".to_owned()),
            LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    metrics::gauge!("build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(HANDLE.get_or_init(|| handle))
}

/// One finished request. `route` is the matched pattern or `unmatched`, so a scanner trying
/// random paths cannot create new series.
pub fn record_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..2]).record(elapsed.as_secs_f64());
}

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
                handle.run_upkeep();
                handle.render()
            }),
        )
        .with_state(state)
}
