//! The HTTP server: binding, the accept loop (hyper-util, for the header-read timeout that
//! `axum::serve` lacks), signals, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::Version;
use futures_util::FutureExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::app;
use crate::checks;
use crate::config::Config;
use crate::db::{Db, Schema};
use crate::state::AppState;
use crate::telemetry;

/// How often a closed [`crate::db::PoolerGate`] is rechecked.
const POOLER_RECHECK: Duration = Duration::from_secs(60);

/// Says what is wrong with the database, in the background so that a slow or absent database
/// delays nothing: unreachable and why, pooler mode, `statement_timeout`. A transaction pooler
/// that loses prepared statements closes the gate (503s, not ready) until a recheck finds it fixed.
fn spawn_database_watch(state: AppState) {
    tokio::spawn(async move {
        let unsafe_pooler = |findings: &[checks::Finding]| findings.iter().any(|f| f.id == "E005");
        let findings = checks::database_findings(&state.config).await;
        for finding in &findings {
            tracing::warn!(id = finding.id, fix = finding.fix, "{}", finding.message);
        }
        if !unsafe_pooler(&findings) {
            return;
        }
        state.pooler_gate.close();
        while !state.lifecycle.is_draining() {
            tokio::time::sleep(POOLER_RECHECK).await;
            let findings = checks::database_findings(&state.config).await;
            if !findings.iter().any(|f| f.id == "E004") && !unsafe_pooler(&findings) {
                state.pooler_gate.open();
                tracing::info!("the database pooler carries prepared statements now: serving again");
                return;
            }
        }
    });
}

/// How long reading the schema state may take before listening; longer counts as unreadable.
const SCHEMA_READ_LIMIT: Duration = Duration::from_secs(1);
/// How often it is read again: soon while the instance is not ready because of it, rarely once it is.
const SCHEMA_RECHECK_NOT_READY: Duration = Duration::from_secs(5);
const SCHEMA_RECHECK_READY: Duration = Duration::from_secs(60);

/// Reads the schema state once (bounded: a database that is down does not hold up the start),
/// then keeps it fresh in the background, so `/readyz` answers without a query. A read that
/// fails later keeps the last state known: the database check reports the outage itself.
async fn spawn_schema_watch(state: AppState) {
    let first = state.health_db().schema(SCHEMA_READ_LIMIT).await;
    if let Ok(mut schema) = state.schema.write() {
        *schema = first;
    }
    tokio::spawn(async move {
        while !state.lifecycle.is_draining() {
            let wait = if state.schema().is_ready() {
                SCHEMA_RECHECK_READY
            } else {
                SCHEMA_RECHECK_NOT_READY
            };
            tokio::time::sleep(wait).await;
            let read = state.health_db().schema(SCHEMA_READ_LIMIT).await;
            if let Ok(mut schema) = state.schema.write()
                && (read != Schema::Error || *schema == Schema::Error)
            {
                *schema = read;
            }
        }
    });
}

/// A bound, ready-to-run server (zero2prod style: binding first lets tests use port 0).
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    /// The Prometheus listener and its router, when `METRICS_PORT` is set.
    metrics: Option<(TcpListener, Router)>,
}

impl Application {
    /// Builds the pool (lazily: a database that is down does not stop the start), applies
    /// migrations when `RUN_MIGRATIONS_ON_START` says so, and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let config = Arc::new(config);
        let (db, readiness_db) = Db::connect_serving(&config.database).context("could not set up the database pool")?;
        if config.run_migrations_on_start {
            let applied = db
                .migrate()
                .await
                .context("could not apply migrations at start (is the database reachable?)")?;
            for (version, description) in applied {
                tracing::info!(version, description, "migration applied");
            }
        }
        let metrics_handle = config.metrics_port.map(|_| telemetry::metrics::install()).transpose()?;
        let state = AppState::new(config.clone(), db, readiness_db)?;
        spawn_database_watch(state.clone());
        spawn_schema_watch(state.clone()).await;
        let router = app::router(state.clone());
        let listener = TcpListener::bind((config.host, config.port))
            .await
            .with_context(|| format!("could not listen on {}:{}", config.host, config.port))?;
        let metrics = match (config.metrics_port, metrics_handle) {
            (Some(port), Some(handle)) => {
                let listener = TcpListener::bind((config.host, port))
                    .await
                    .with_context(|| format!("could not listen on {}:{port} (METRICS_PORT)", config.host))?;
                Some((listener, telemetry::metrics::router(state.clone(), handle)))
            }
            _ => None,
        };
        Ok(Application {
            listener,
            router,
            state,
            metrics,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Where `/metrics` is served, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Replaces the routes (tests mount extra ones inside the same middleware stack).
    pub fn with_router(self, router: Router) -> Application {
        Application { router, ..self }
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        if let Some((listener, router)) = self.metrics {
            let draining = self.state.lifecycle.draining();
            tokio::spawn(async move {
                let served = axum::serve(listener, router).with_graceful_shutdown(draining).await;
                if let Err(error) = served {
                    tracing::error!(%error, "metrics listener failed");
                }
            });
        }
        serve(self.listener, self.router, self.state, shutdown).await;
    }
}

/// Accepts connections until `shutdown`, then: `/readyz` turns 503, the listener closes, idle
/// and half-open connections close at once, in-flight requests finish (for at most
/// `SHUTDOWN_TIMEOUT_SECS`), and the pool closes.
pub async fn serve(listener: TcpListener, router: Router, state: AppState, shutdown: impl Future<Output = ()>) {
    let config = state.config.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Each connection's watchdog enforces HEADER_READ_TIMEOUT_SECS, for HTTP/1 and HTTP/2 and
    // before the protocol is known. hyper's own HTTP/1 timer would also run between requests,
    // from the end of each response, and close idle keep-alive connections after 10 s: a client
    // reusing one just then loses a request it has already sent.
    builder.http1().header_read_timeout(None);
    // Pings find HTTP/2 peers that went away without closing.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    // Every connection task holds a sender; the drain is over when the last one is dropped.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut accept_failures = AcceptFailures::default();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    if let Some(count) = accept_failures.record(Instant::now()) {
                        tracing::warn!(%error, count, "accept failed (logged at most once per {} s)", ACCEPT_LOG_INTERVAL.as_secs());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let router = router.clone();
        let service = hyper::service::service_fn({
            let activity = activity.clone();
            move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                let in_flight = InFlight::start(activity.clone(), request.version());
                router.clone().oneshot(request).map(move |result| {
                    result.map(|response| {
                        response.map(|body| TrackedBody {
                            body,
                            _in_flight: in_flight,
                        })
                    })
                })
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(TrackedIo {
                    io: stream,
                    activity: activity.clone(),
                }),
                service,
            )
            .into_owned();
        let draining = state.lifecycle.draining();
        let (alive, header_timeout) = (alive.clone(), config.header_read_timeout);
        tokio::spawn(async move {
            let _alive = alive;
            let mut connection = std::pin::pin!(connection);
            let mut draining = std::pin::pin!(draining);
            let mut shutting_down = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            note_connection_error(&*error, peer);
                        }
                        break;
                    }
                    // Silent, half-open or idle for too long: dropping the connection closes it.
                    () = activity.expired(header_timeout), if !shutting_down => break,
                    () = &mut draining, if !shutting_down => {
                        // Idle and half-open connections close at once. Busy ones finish their
                        // requests first, then HTTP/1 closes and HTTP/2 sends GOAWAY (hyper
                        // closes them itself, after the last response is written out).
                        if activity.in_flight.load(Ordering::Acquire) == 0 {
                            break;
                        }
                        connection.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                }
            }
        });
    }

    state.lifecycle.start_draining();
    drop(listener);
    drop(alive);
    tracing::info!(
        timeout_secs = config.shutdown_timeout.as_secs(),
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(config.shutdown_timeout, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("drain did not finish within SHUTDOWN_TIMEOUT_SECS; dropping the remaining connections");
    }
    state.db.close().await;
    tracing::info!("shutdown complete");
}

/// hyper answers a request it cannot parse itself (400, or 431 for too many or too large
/// headers) and closes the connection; the request never reaches the middleware, so it has
/// no request id, security headers or log line of its own. This is the line and count it gets.
fn note_connection_error(error: &(dyn std::error::Error + 'static), peer: SocketAddr) {
    let reason = match error.downcast_ref::<hyper::Error>() {
        Some(e) if e.is_parse_too_large() => "too_large",
        Some(e) if e.is_parse() => "malformed",
        _ => {
            tracing::debug!(error = %error, "connection closed with an error");
            return;
        }
    };
    tracing::info!(target: "http", client_ip = %peer.ip(), reason, error = %error, "request refused by the HTTP parser");
    metrics::counter!("http_parse_errors_total", "reason" => reason).increment(1);
}

/// An idle keep-alive connection is closed after this long without a request: long enough
/// that clients' pools rarely pick a connection just as it closes (nginx's default too).
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// While accept keeps failing (out of file descriptors: ~50 times a second), one line per interval.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counts accept failures between log lines.
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    /// Records one failure; `Some(count of failures since the last line)` when a line is due.
    fn record(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|last| now.duration_since(last) < ACCEPT_LOG_INTERVAL)
        {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Marks "no time recorded" in [`Activity`]'s millisecond fields.
const NEVER: u64 = u64::MAX;

/// One connection's progress, shared by its I/O, its service and its watchdog.
struct Activity {
    started: Instant,
    /// Requests whose head has arrived and whose response is not finished yet.
    in_flight: AtomicUsize,
    /// Milliseconds since `started` when the head being read began ([`NEVER`]: none is).
    head_since: AtomicU64,
    /// Milliseconds since `started` when the connection last became idle.
    idle_since: AtomicU64,
    /// HTTP/2 reads frames (pings, window updates) that are no request head.
    http2: AtomicBool,
    /// Wakes the watchdog when its deadline moves earlier.
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            // The first request head is due from the moment of accept, whatever the protocol.
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Bytes arrived: on an idle HTTP/1 connection they begin the next request head.
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.http2.load(Ordering::Relaxed)
            && self
                .head_since
                .compare_exchange(NEVER, self.now_ms(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    /// When the connection must close, or `None` while requests are in flight.
    fn deadline(&self, header_timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |ms: u64| self.started + Duration::from_millis(ms);
        Some(match self.head_since.load(Ordering::Acquire) {
            NEVER => at(self.idle_since.load(Ordering::Acquire)) + KEEP_ALIVE_IDLE,
            since => at(since) + header_timeout,
        })
    }

    /// Completes when the connection has been silent, half-open or idle for too long.
    async fn expired(&self, header_timeout: Duration) {
        // One timer for the connection, moved when the deadline does: cheaper than a new one
        // registered, and the old one dropped, twice a request.
        let timer = tokio::time::sleep(Duration::MAX);
        let mut timer = std::pin::pin!(timer);
        loop {
            let changed = self.changed.notified();
            let Some(deadline) = self.deadline(header_timeout) else {
                changed.await;
                continue;
            };
            if deadline <= Instant::now() {
                return;
            }
            if timer.deadline() != deadline.into() {
                timer.as_mut().reset(deadline.into());
            }
            tokio::select! {
                () = timer.as_mut() => {}
                () = changed => {}
            }
        }
    }
}

/// Counts one request as in flight from its head until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            activity.http2.store(true, Ordering::Relaxed);
        }
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_since.store(NEVER, Ordering::Release);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now_ms(), Ordering::Release);
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.changed.notify_one();
        }
    }
}

/// A response body that keeps its request counted in flight until hyper is done with it.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the connection's [`Activity`] when bytes arrive.
struct TrackedIo {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Completes at the first SIGTERM (platforms, `docker stop`) or SIGINT (Ctrl-C, Fly's default).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_logged_once_per_interval_with_their_count() {
        let mut failures = AcceptFailures::default();
        let start = Instant::now();
        assert_eq!(failures.record(start), Some(1), "the first one at once");
        let burst: Vec<_> = (0..49)
            .map(|_| failures.record(start + Duration::from_secs(1)))
            .collect();
        assert!(burst.iter().all(Option::is_none), "then silence for the interval");
        assert_eq!(
            failures.record(start + ACCEPT_LOG_INTERVAL),
            Some(50),
            "then one line with the count"
        );
    }
}
