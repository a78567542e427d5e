//! Prometheus metrics: the recorder, and what each request records (scraped from `routes::metrics`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use axum::http::Method;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: fine below 100 ms where a healthy API lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Job durations in seconds: from a quick cleanup to a long export.
const JOB_BUCKETS: &[f64] = &[0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0];

const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

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
        .set_buckets_for_metric(Matcher::Full("job_duration_seconds".to_owned()), JOB_BUCKETS)?
        .install_recorder()?;
    metrics::gauge!("build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Present from the start, so an alert on its rate has a series to watch.
    metrics::counter!("log_lines_dropped_total").increment(0);
    let handle = HANDLE.get_or_init(|| handle);
    // Histogram samples are kept one by one until upkeep folds them into the buckets; without
    // it, a server nobody scrapes grows by 8 bytes per request. A thread, not a task, so it
    // outlives any one runtime (tests start many).
    std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(|| {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        })
        .context("could not start the metrics upkeep thread")?;
    Ok(handle)
}

/// One finished request. `route` is the matched pattern or `unmatched`, so a scanner trying
/// random paths cannot create new series; likewise any method outside the standard nine is
/// counted as `OTHER`.
pub fn record_request(method: &Method, route: &str, status: u16, elapsed: Duration) {
    let method = method_label(method);
    HANDLES.with_borrow_mut(|routes| {
        // Handles are looked up once per route, method and status on each thread: resolving a
        // labelled metric through the recorder hashes and allocates its labels every time.
        let handles = match routes.get_mut(route) {
            Some(handles) => handles,
            None => routes.entry(route.into()).or_default(),
        };
        let counter = cached(&mut handles.counters, (method, status), || {
            let labels = [
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("status", status.to_string()),
            ];
            metrics::counter!("http_requests_total", &labels)
        });
        counter.increment(1);
        let histogram = cached(&mut handles.histograms, method, || {
            let labels = [("method", method.to_owned()), ("route", route.to_owned())];
            metrics::histogram!("http_request_duration_seconds", &labels)
        });
        histogram.record(elapsed.as_secs_f64());
    });
}

/// The metric handles of one route on one thread.
#[derive(Default)]
struct RouteHandles {
    counters: Vec<((&'static str, u16), Counter)>,
    histograms: Vec<(&'static str, Histogram)>,
}

thread_local! {
    static HANDLES: RefCell<HashMap<Box<str>, RouteHandles>> = RefCell::new(HashMap::new());
}

/// The handle stored under `key`, made and stored on first use (a route has only a few).
fn cached<K: PartialEq, V>(handles: &mut Vec<(K, V)>, key: K, make: impl FnOnce() -> V) -> &V {
    let index = match handles.iter().position(|(k, _)| *k == key) {
        Some(index) => index,
        None => {
            handles.push((key, make()));
            handles.len() - 1
        }
    };
    &handles[index].1
}

fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD
        .iter()
        .find(|standard| *standard == method)
        .map_or("OTHER", |standard| standard.as_str())
}
