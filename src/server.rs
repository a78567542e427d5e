//! The HTTP server: binding, the accept loop (hyper-util, for the header-read timeout that
//! `axum::serve` lacks), signals, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::app::{self, AppState};
use crate::checks;
use crate::config::Config;
use crate::db::{Db, Schema};
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
    let db = || state.readiness_db.clone().unwrap_or_else(|| state.db.clone());
    let first = db().schema(SCHEMA_READ_LIMIT).await;
    if let Ok(mut schema) = state.schema.write() {
        *schema = first;
    }
    let state = state.clone();
    tokio::spawn(async move {
        while !state.lifecycle.is_draining() {
            let wait = if state.schema().is_ready() {
                SCHEMA_RECHECK_READY
            } else {
                SCHEMA_RECHECK_NOT_READY
            };
            tokio::time::sleep(wait).await;
            let db = state.readiness_db.clone().unwrap_or_else(|| state.db.clone());
            let read = db.schema(SCHEMA_READ_LIMIT).await;
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
        let router = app::build_router(state.clone());
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

/// Accepts connections until `shutdown`, then: `/readyz` turns 503, the listener closes,
/// in-flight requests finish (for at most `SHUTDOWN_TIMEOUT_SECS`), and the pool closes.
pub async fn serve(listener: TcpListener, router: Router, state: AppState, shutdown: impl Future<Output = ()>) {
    let config = state.config.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that dribbles its headers is cut off instead of holding a connection forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection closed with an error");
            }
        });
    }

    state.lifecycle.start_draining();
    drop(listener);
    tracing::info!(
        timeout_secs = config.shutdown_timeout.as_secs(),
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain did not finish within SHUTDOWN_TIMEOUT_SECS; dropping the remaining connections");
    }
    state.db.close().await;
    tracing::info!("shutdown complete");
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
