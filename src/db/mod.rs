//! Database: one pool for SQLite or PostgreSQL, chosen by `DATABASE_URL`, and the migrations.
//!
//! The pool is typed (`PgPool` or `SqlitePool`) rather than sqlx's `Any` driver, which cannot
//! read several column types on either side. Queries are written once in portable SQL and run
//! on whichever pool is live through [`with_db!`].

pub mod faults;
mod migrate;
pub mod postgres;

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};

use crate::config::DatabaseConfig;

pub use faults::PoolerGate;
pub use migrate::{MIGRATOR, MigrationError, MigrationStatus, Schema, State, never_migrated};

#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs the same expression against whichever pool is live: `with_db!(db, pool => query.fetch_one(pool))`.
#[macro_export]
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::Sqlite($pool) => $body,
        }
    };
}

/// The pool settings of SPEC §2, the same for both backends.
fn pool_options<DB: sqlx::Database>(config: &DatabaseConfig) -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(config.idle_timeout)
        .max_lifetime(config.max_lifetime)
}

impl Db {
    /// Builds the pool without connecting: the server starts even while the database is down,
    /// and every acquire (bounded by the acquire timeout) retries until it is back.
    pub fn connect_lazy(config: &DatabaseConfig) -> Result<Db, sqlx::Error> {
        let url = config.url.expose();
        if config.is_sqlite() {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                // WAL lets readers run beside the one writer; NORMAL is durable enough under WAL.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(config.acquire_timeout);
            if let Some(folder) = options.get_filename().parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(folder)?;
            }
            let pool = pool_options(config).connect_lazy_with(options);
            Ok(Db::Sqlite(pool))
        } else {
            let options = postgres::connect_options(url).map_err(|reason| sqlx::Error::Configuration(reason.into()))?;
            // Set after connecting, as a plain statement, because poolers refuse it as a start-up
            // parameter. Behind a transaction pooler it cannot be relied on (each transaction may
            // reach another server session): `check --deploy --connect` says so.
            let set_timeout = postgres::set_statement_timeout(config.statement_timeout);
            let pool = pool_options(config)
                .after_connect(move |conn, _| {
                    let set_timeout = set_timeout.clone();
                    Box::pin(async move {
                        sqlx::Executor::execute(conn, sqlx::raw_sql(sqlx::AssertSqlSafe(set_timeout))).await?;
                        Ok(())
                    })
                })
                .connect_lazy_with(options);
            Ok(Db::Postgres(pool))
        }
    }

    /// The pools `serve` uses: one for requests, and a connection kept aside for `/readyz`, so
    /// that a pool busy with slow requests does not read as a database that is down. Both come
    /// out of `DATABASE_MAX_CONNECTIONS`; with a budget of 1, readiness shares the one.
    pub fn connect_serving(config: &DatabaseConfig) -> Result<(Db, Option<Db>), sqlx::Error> {
        if config.max_connections < 2 {
            return Ok((Db::connect_lazy(config)?, None));
        }
        let mut requests = config.clone();
        requests.max_connections -= 1;
        requests.min_connections = requests.min_connections.min(requests.max_connections);
        let mut readiness = config.clone();
        readiness.max_connections = 1;
        readiness.min_connections = 0;
        Ok((Db::connect_lazy(&requests)?, Some(Db::connect_lazy(&readiness)?)))
    }

    /// A round trip to the database (`SELECT 1`) bounded by `limit`. A plain statement, not a
    /// prepared one, so it means the same through any pooler.
    pub async fn ping(&self, limit: Duration) -> Result<Duration, sqlx::Error> {
        let started = std::time::Instant::now();
        let query = async { with_db!(self, pool => sqlx::raw_sql("SELECT 1").execute(pool).await.map(drop)) };
        tokio::time::timeout(limit, query)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(started.elapsed())
    }

    /// Open connections and idle ones, for metrics.
    pub fn pool_usage(&self) -> (u32, usize) {
        with_db!(self, pool => (pool.size(), pool.num_idle()))
    }

    pub async fn close(&self) {
        with_db!(self, pool => pool.close().await);
    }
}

/// Whether `config` names a SQLite file that does not exist yet (which connecting would create).
pub fn sqlite_file_missing(config: &DatabaseConfig) -> bool {
    config.is_sqlite()
        && SqliteConnectOptions::from_str(config.url.expose()).is_ok_and(|options| !options.get_filename().exists())
}

/// Timestamps are stored as unix microseconds (`BIGINT`), portable across both backends.
pub fn now_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// A stored timestamp as RFC 3339 UTC, e.g. `2026-11-22T10:00:00.123456Z`.
pub fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// True when an error is a unique-constraint violation (e.g. an email already registered).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Runs `$body` with `$tx` bound to a new transaction on whichever pool is live; the body
/// commits, and any early return or error rolls back. SQLite starts with `BEGIN IMMEDIATE`:
/// taking the write lock up front avoids "database is locked" when two deferred
/// transactions both try to upgrade to writing.
#[macro_export]
macro_rules! with_transaction {
    ($db:expr, $tx:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                $body
            }
            $crate::db::Db::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                $body
            }
        }
    };
}
