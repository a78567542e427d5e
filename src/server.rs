//! The HTTP server: binding, the accept loop (hyper-util, for the header-read timeout that
//! `axum::serve` lacks), signals, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

use crate::checks::{self, DatabaseCheck, Verdict};
use crate::config::Config;
use crate::db::{Db, Schema};
use crate::email::Mailer;
use crate::jobs::{self, Workers};
use crate::state::AppState;
use crate::telemetry;
use crate::{app, routes};

/// How often the database is diagnosed again while the pooler is known to lose prepared
/// statements, and while no verdict could be reached (the database unreachable).
const POOLER_RECHECK: Duration = Duration::from_secs(60);
const POOLER_RECHECK_UNDECIDED: Duration = Duration::from_secs(2);
/// How long the start waits for the first verdict before listening with the gate closed.
const POOLER_FIRST_VERDICT: Duration = Duration::from_secs(3);

/// Says what is wrong with the database (unreachable and why, pooler mode, `statement_timeout`),
/// in the background, so an absent database delays the start by [`POOLER_FIRST_VERDICT`] at
/// most. On PostgreSQL the [`crate::db::PoolerGate`] stays closed (503s, not ready) until a
/// diagnosis finds the way to the database safe: a pooler that mixes up prepared statements
/// must never answer, and one not diagnosed yet might be one. Returns once the first verdict
/// is in, or after [`POOLER_FIRST_VERDICT`].
async fn watch_database(state: AppState) {
    if state.config.database.is_sqlite() {
        tokio::spawn(async move { log_findings(&checks::check_database(&state.config).await.findings) });
        return;
    }
    state.pooler_gate.close();
    let (first_verdict, verdict_in) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut first_verdict = Some(first_verdict);
        let mut last = None;
        while !state.lifecycle.is_draining() {
            let DatabaseCheck { findings, verdict } = checks::check_database(&state.config).await;
            // Logged when something changed, not at every recheck of a database that is down.
            if last != Some(verdict) {
                log_findings(&findings);
            }
            if verdict != Verdict::Unreachable
                && let Some(sender) = first_verdict.take()
            {
                let _ = sender.send(());
            }
            match verdict {
                Verdict::Usable => {
                    state.pooler_gate.open();
                    if last.is_some() {
                        tracing::info!("the database pooler is safe for prepared statements: serving");
                    }
                    return;
                }
                Verdict::UnsafePooler => tokio::time::sleep(POOLER_RECHECK).await,
                Verdict::Unreachable => tokio::time::sleep(POOLER_RECHECK_UNDECIDED).await,
            }
            last = Some(verdict);
        }
    });
    let _ = tokio::time::timeout(POOLER_FIRST_VERDICT, verdict_in).await;
}

fn log_findings(findings: &[checks::Finding]) {
    for finding in findings {
        tracing::warn!(id = finding.id, fix = finding.fix, "{}", finding.message);
    }
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

/// The job workers of this process (`WORKER_CONCURRENCY`, docs/jobs.md), on the request
/// pool and behind the same pooler gate.
fn start_workers(state: &AppState, count: usize) -> anyhow::Result<Workers> {
    let context = jobs::Context {
        db: state.db.clone(),
        mailer: Mailer::from_config(&state.config).context("could not set up email (EMAIL_URL)")?,
        storage: state.storage.clone(),
        config: state.config.clone(),
    };
    Ok(Workers::start(
        state.db.clone(),
        state.pooler_gate.clone(),
        app::jobs(context),
        &state.config.jobs,
        count,
    ))
}

/// A bound, ready-to-run server (zero2prod style: binding first lets tests use port 0).
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    /// The Prometheus listener and its router, when `METRICS_PORT` is set.
    metrics: Option<(TcpListener, Router)>,
    /// The job workers, unless `WORKER_CONCURRENCY=0`.
    workers: Option<Workers>,
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
        let state = AppState::new(config.clone(), db, readiness_db)?;
        let metrics = bind_metrics(&state).await?;
        watch_database(state.clone()).await;
        spawn_schema_watch(state.clone()).await;
        let workers = match config.jobs.concurrency {
            0 => None,
            count => Some(start_workers(&state, count)?),
        };
        let router = app::router(state.clone());
        let listener = TcpListener::bind((config.host, config.port))
            .await
            .with_context(|| format!("could not listen on {}:{}", config.host, config.port))?;
        Ok(Application {
            listener,
            router,
            state,
            metrics,
            workers,
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
        if let Some(metrics) = self.metrics {
            spawn_metrics_listener(metrics, &self.state);
        }
        serve(self.listener, self.router, self.state, self.workers, shutdown).await;
    }
}

/// The Prometheus recorder, and the listener and router of `/metrics`, when `METRICS_PORT` is set.
async fn bind_metrics(state: &AppState) -> anyhow::Result<Option<(TcpListener, Router)>> {
    let config = &state.config;
    let Some(port) = config.metrics_port else {
        return Ok(None);
    };
    let handle = telemetry::metrics::install()?;
    // From the first scrape: the newest backup's time (0 when there is none).
    tokio::spawn(crate::backup::export_last_success(config.clone()));
    let listener = TcpListener::bind((config.host, port))
        .await
        .with_context(|| format!("could not listen on {}:{port} (METRICS_PORT)", config.host))?;
    Ok(Some((listener, routes::metrics::router(state.clone(), handle))))
}

fn spawn_metrics_listener((listener, router): (TcpListener, Router), state: &AppState) {
    let draining = state.lifecycle.draining();
    tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(draining).await;
        if let Err(error) = served {
            tracing::error!(%error, "metrics listener failed");
        }
    });
}

/// `shipshape worker`: job workers and the scheduler without the public server (the metrics
/// listener runs when `METRICS_PORT` is set), until `shutdown`; then they drain as in `serve`.
pub async fn work(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let db = Db::connect_lazy(&config.database).context("could not set up the database pool")?;
    let state = AppState::new(config.clone(), db, None)?;
    if let Some(metrics) = bind_metrics(&state).await? {
        spawn_metrics_listener(metrics, &state);
    }
    watch_database(state.clone()).await;
    let workers = start_workers(&state, config.jobs.concurrency.max(1))?;
    shutdown.await;
    state.lifecycle.start_draining();
    tracing::info!(
        timeout_secs = config.shutdown_timeout.as_secs(),
        "shutting down: draining running jobs"
    );
    workers.drain(Instant::now() + config.shutdown_timeout).await;
    close_pool(&state).await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Accepts connections until `shutdown`, then: `/readyz` turns 503, the listener closes, idle
/// and half-open connections close at once, in-flight requests finish (for at most
/// `SHUTDOWN_TIMEOUT_SECS`), and the pool closes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: AppState,
    workers: Option<Workers>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = connection_builder();
    // Every connection task holds a sender; the drain is over when the last one is dropped.
    let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut accept_failures = AcceptFailures::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    accept_failures.back_off(&error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let watch = Watch {
            alive: alive.clone(),
            draining: state.lifecycle.draining(),
            header_timeout: state.config.header_read_timeout,
        };
        spawn_connection(&builder, stream, peer, router.clone(), watch);
    }

    state.lifecycle.start_draining();
    drop(listener);
    drop(alive);
    let config = &state.config;
    tracing::info!(
        timeout_secs = config.shutdown_timeout.as_secs(),
        "shutting down: draining in-flight requests and running jobs"
    );
    // Requests and jobs drain side by side, within the same limit.
    let jobs = async {
        if let Some(workers) = workers {
            workers.drain(Instant::now() + config.shutdown_timeout).await;
        }
    };
    let (requests, ()) = tokio::join!(tokio::time::timeout(config.shutdown_timeout, all_closed.recv()), jobs);
    if requests.is_err() {
        tracing::warn!("drain did not finish within SHUTDOWN_TIMEOUT_SECS; dropping the remaining connections");
    }
    close_pool(&state).await;
    tracing::info!("shutdown complete");
}

/// Closes the pools. Closing waits for every connection to come back, and a query waiting on
/// a lock may hold one for DATABASE_STATEMENT_TIMEOUT_SECS: platforms SIGKILL long before that.
async fn close_pool(state: &AppState) {
    let close = async {
        state.db.close().await;
        // The connection kept aside for /readyz, so the server sees every session end.
        if let Some(readiness) = &state.readiness_db {
            readiness.close().await;
        }
    };
    if tokio::time::timeout(POOL_CLOSE_LIMIT, close).await.is_err() {
        tracing::warn!("database connections still busy at exit; their queries are abandoned");
    }
}

/// hyper's settings for every connection, HTTP/1 or HTTP/2.
fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Each connection's watchdog enforces HEADER_READ_TIMEOUT_SECS, for HTTP/1 and HTTP/2 and
    // before the protocol is known. hyper's own HTTP/1 timer would also run between requests,
    // from the end of each response, and close idle keep-alive connections after 10 s: a client
    // reusing one just then loses a request it has already sent.
    builder.http1().header_read_timeout(None);
    // Pings find HTTP/2 peers that went away without closing. Each open stream holds its
    // request's memory: 100 per connection is what RFC 9113 asks a server to allow at least.
    builder
        .http2()
        .max_concurrent_streams(H2_MAX_STREAMS)
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// What a connection's watchdog needs from the server.
struct Watch<D> {
    /// Dropped when the connection ends: the drain waits for every one.
    alive: tokio::sync::mpsc::Sender<()>,
    /// Resolves when the drain starts.
    draining: D,
    header_timeout: Duration,
}

/// Serves one connection on its own task, under its watchdog.
fn spawn_connection<D>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    watch: Watch<D>,
) where
    D: Future<Output = ()> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let service = hyper::service::service_fn({
        let activity = activity.clone();
        move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = InFlight::start(activity.clone(), request.version());
            router
                .clone()
                .oneshot(request)
                .map(move |result| result.map(|response| response.map(|body| TrackedBody::new(body, in_flight))))
        }
    });
    let io = TrackedIo {
        io: stream,
        activity: activity.clone(),
    };
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    tokio::spawn(async move {
        let _alive = watch.alive;
        let mut connection = std::pin::pin!(connection);
        let mut draining = std::pin::pin!(watch.draining);
        let mut shutting_down = false;
        loop {
            tokio::select! {
                // The connection first: the deadline is read after what it did (`expired`).
                biased;
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        note_connection_error(&*error, peer);
                    }
                    break;
                }
                // Silent, half-open, idle, or not reading a response for too long: dropping
                // the connection closes it (while draining too: a stalled response never ends).
                () = activity.expired(watch.header_timeout) => break,
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

/// How long closing the pool may take once the drain is over.
const POOL_CLOSE_LIMIT: Duration = Duration::from_millis(500);

/// An idle keep-alive connection is closed after this long without a request: long enough
/// that clients' pools rarely pick a connection just as it closes (nginx's default too).
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
const H2_MAX_STREAMS: u32 = 100;
/// While accept keeps failing (out of file descriptors: ~50 times a second), one line per interval.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counts accept failures between log lines.
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    /// Out of file descriptors and the like: logs (at most once per interval) and backs off
    /// rather than spin.
    async fn back_off(&mut self, error: &std::io::Error) {
        if let Some(count) = self.record(Instant::now()) {
            tracing::warn!(%error, count, "accept failed (logged at most once per {} s)", ACCEPT_LOG_INTERVAL.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
    /// The responses being written, by id: since when (ms) each has waited for the client to
    /// take its last frame, or [`NEVER`] while it waits for the service to make the next one.
    responses: Mutex<Vec<(u64, u64)>>,
    next_response: AtomicU64,
    /// Milliseconds since `started` when the head being read began ([`NEVER`]: none is).
    head_since: AtomicU64,
    /// Milliseconds since `started` when the connection last became idle.
    idle_since: AtomicU64,
    /// HTTP/2 reads frames (pings, window updates) that are no request head.
    http2: AtomicBool,
    /// Wakes the watchdog when an HTTP/2 stream, in a task of its own, has ended.
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            responses: Mutex::new(Vec::new()),
            next_response: AtomicU64::new(0),
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

    /// Bytes arrived: on an idle HTTP/1 connection they begin the next request head. Called
    /// while the connection's task is polled, which looks at the deadline next (`expired`).
    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && !self.http2.load(Ordering::Relaxed) {
            let _ = self
                .head_since
                .compare_exchange(NEVER, self.now_ms(), Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn responses(&self) -> MutexGuard<'_, Vec<(u64, u64)>> {
        self.responses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets since when response `id` has waited for the client ([`NEVER`]: it does not).
    fn response_waits(&self, id: u64, since: u64) {
        if let Some(response) = self.responses().iter_mut().find(|r| r.0 == id) {
            response.1 = since;
        }
    }

    /// When the connection must close (or, while requests are in flight and every response
    /// makes progress, when to look again). A response the client does not take within
    /// `header_timeout` — a socket nobody reads, an HTTP/2 stream with a zero window — closes
    /// the connection: hyper stops polling such a body, so nothing else would ever end it.
    fn deadline(&self, header_timeout: Duration) -> Instant {
        let at = |ms: u64| self.started + Duration::from_millis(ms);
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Handlers still running are bounded by the request timeout.
            return match self.responses().iter().map(|r| r.1).min() {
                Some(since) if since != NEVER => at(since) + header_timeout,
                _ => Instant::now() + header_timeout,
            };
        }
        match self.head_since.load(Ordering::Acquire) {
            NEVER => at(self.idle_since.load(Ordering::Acquire)) + KEEP_ALIVE_IDLE,
            since => at(since) + header_timeout,
        }
    }

    /// Completes when the connection has been silent, half-open, idle or not reading a
    /// response for too long. The deadline is worked out again at every poll: on HTTP/1 all
    /// that moves it happens while the connection's task is polled, and the connection is
    /// polled just before this (`biased`), so a request costs the task no wake-up of its own.
    /// HTTP/2 streams run in tasks of their own: a finished one wakes it through `changed`.
    async fn expired(&self, header_timeout: Duration) {
        // One timer for the connection, moved when the deadline does: cheaper than a new one
        // registered, and the old one dropped, twice a request. No wake-up per response frame:
        // while requests are in flight the timer looks at their progress every `header_timeout`.
        let timer = tokio::time::sleep(Duration::MAX);
        let mut timer = std::pin::pin!(timer);
        let changed = self.changed.notified();
        let mut changed = std::pin::pin!(changed);
        std::future::poll_fn(|cx| {
            loop {
                while changed.as_mut().poll(cx).is_ready() {
                    changed.set(self.changed.notified());
                }
                let deadline = self.deadline(header_timeout);
                if deadline <= Instant::now() {
                    return Poll::Ready(());
                }
                if timer.deadline() != deadline.into() {
                    timer.as_mut().reset(deadline.into());
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        })
        .await
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
        // An HTTP/2 stream ends in a task of its own; on HTTP/1 this runs in the connection's.
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 && activity.http2.load(Ordering::Relaxed) {
            activity.changed.notify_one();
        }
    }
}

/// A response body that keeps its request counted in flight until hyper is done with it, and
/// tells the connection's [`Activity`] whether it waits for the client or for the service.
struct TrackedBody {
    body: Body,
    id: u64,
    in_flight: InFlight,
}

impl TrackedBody {
    fn new(body: Body, in_flight: InFlight) -> TrackedBody {
        let activity = &in_flight.0;
        let id = activity.next_response.fetch_add(1, Ordering::Relaxed);
        // The head is there for hyper to write: from now on it waits for the client.
        activity.responses().push((id, activity.now_ms()));
        TrackedBody { body, id, in_flight }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        let mut responses = self.in_flight.0.responses();
        if let Some(at) = responses.iter().position(|r| r.0 == self.id) {
            responses.swap_remove(at);
        }
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let activity = &self.in_flight.0;
        match &polled {
            // hyper asks for the next frame once this one is written: until then, the client's turn.
            Poll::Ready(Some(_)) => activity.response_waits(self.id, activity.now_ms()),
            Poll::Pending => activity.response_waits(self.id, NEVER),
            Poll::Ready(None) => {}
        }
        polled
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
/// The handlers are installed when this is called, not when it is first awaited: call it
/// before binding, so a signal that arrives while the server starts still drains it rather
/// than kill it (the default action).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        let received = |signal: io::Result<tokio::signal::unix::Signal>, name: &'static str| async move {
            match signal {
                Ok(mut signal) => {
                    signal.recv().await;
                    name
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for {name}");
                    std::future::pending().await
                }
            }
        };
        let name = tokio::select! {
            name = received(interrupt, "SIGINT") => name,
            name = received(terminate, "SIGTERM") => name,
        };
        tracing::info!("{name} received");
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
