//! `AppState`: what handlers reach through `State(state)`, built once at start.

use std::ops::Deref;
use std::sync::{Arc, RwLock};

use axum::extract::FromRef;
use redis::aio::ConnectionManager;

use crate::auth::{Auth, SessionDb};
use crate::config::Config;
use crate::db::{Db, PoolerGate, Schema, SharedPing};
use crate::error::ApiError;
use crate::lifecycle::Lifecycle;
use crate::rate_limit::RateLimiters;
use crate::redis_store;
use crate::storage::Storage;

/// Everything a handler or middleware may need, behind one `Arc` so cloning it per request is cheap.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

pub struct AppStateInner {
    pub config: Arc<Config>,
    pub db: Db,
    /// Closed while the database is behind a pooler that would mix up prepared statements.
    pub pooler_gate: PoolerGate,
    /// Where the schema stands for this binary, read before listening and refreshed by
    /// `server::spawn_schema_watch`: `/readyz` reads it without a query.
    pub schema: Arc<RwLock<Schema>>,
    /// The connection `/readyz` uses, kept apart from the request pool (see `Db::connect_serving`);
    /// `None` when the budget is one connection and readiness shares it.
    pub readiness_db: Option<Db>,
    /// The database check of `/readyz`, shared by concurrent calls.
    pub readiness_ping: SharedPing,
    /// Present when `REDIS_URL` is set; reconnects by itself.
    pub redis: Option<ConnectionManager>,
    /// For what needs a connection of its own (a subscriber); present with `redis`.
    pub redis_client: Option<redis::Client>,
    pub auth: Arc<Auth>,
    /// Every rate limit, by name; routes take theirs when the router is built.
    pub rate_limiters: Arc<RateLimiters>,
    pub lifecycle: Lifecycle,
    /// Where uploaded files go (docs/files.md).
    pub storage: Storage,
}

impl Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

impl AppState {
    /// Builds the shared state. Must run inside the Tokio runtime (it starts background tasks).
    pub fn new(config: Arc<Config>, db: Db, readiness_db: Option<Db>) -> anyhow::Result<AppState> {
        let client = redis_store::client(&config)?;
        let redis = client.as_ref().map(redis_store::connection_manager).transpose()?;
        let rate_limiters = RateLimiters::new(&config.rate_limits, redis.clone());
        let storage = Storage::open(&config.storage)?;
        storage.watch_health();
        Ok(AppState(Arc::new(AppStateInner {
            auth: Arc::new(Auth::from_config(&config)?),
            lifecycle: Lifecycle::default(),
            rate_limiters,
            storage,
            redis,
            redis_client: client,
            db,
            readiness_db,
            readiness_ping: SharedPing::default(),
            pooler_gate: PoolerGate::default(),
            schema: Arc::new(RwLock::new(Schema::Error)),
            config,
        })))
    }

    /// The database for a handler's queries, or 503 while the pooler in front of it would mix
    /// up prepared statements (see [`PoolerGate`]).
    pub fn database(&self) -> Result<&Db, ApiError> {
        if self.pooler_gate.is_closed() {
            return Err(ApiError::DatabaseUnavailable);
        }
        Ok(&self.db)
    }

    /// The pool for health checks: the connection kept aside for them, or the request pool
    /// when the budget is one connection.
    pub fn health_db(&self) -> &Db {
        self.readiness_db.as_ref().unwrap_or(&self.db)
    }

    /// The last schema state read (see [`Schema`]).
    pub fn schema(&self) -> Schema {
        self.schema.read().map(|s| s.clone()).unwrap_or(Schema::Error)
    }
}

// What extractors and middleware take from the state (`State<Arc<Auth>>`, `AuthUser`, a rate
// limit's `layer`), so they need not know the whole of it.

impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(state: &AppState) -> Arc<Auth> {
        state.auth.clone()
    }
}

impl FromRef<AppState> for SessionDb {
    fn from_ref(state: &AppState) -> SessionDb {
        SessionDb(state.database().ok().cloned())
    }
}

impl FromRef<AppState> for Arc<RateLimiters> {
    fn from_ref(state: &AppState) -> Arc<RateLimiters> {
        state.rate_limiters.clone()
    }
}
