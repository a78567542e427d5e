//! Database: one pool for SQLite or PostgreSQL, chosen by `DATABASE_URL`, and the migrations.
//!
//! The pool is typed (`PgPool` or `SqlitePool`) rather than sqlx's `Any` driver, which cannot
//! read several column types on either side. Queries are written once in portable SQL and run
//! on whichever pool is live through [`with_db!`].

pub mod faults;
mod migrate;
pub mod postgres;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use sqlx::pool::PoolOptions;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqliteSynchronous};

use crate::config::DatabaseConfig;
use crate::config::postgres::connect_options;
use crate::error::ApiError;

pub use faults::PoolerGate;
pub use migrate::{MIGRATOR, MigrationError, MigrationStatus, Schema, State, never_migrated};

/// Opens (creating it if needed) the lock file `<database><suffix>` beside a SQLite
/// database, for an exclusive `flock` by one process (migrations, backups). Never through a
/// symbolic link: whoever can write the folder could otherwise make this create or truncate a
/// file elsewhere.
pub fn lock_file(database: &std::path::Path, suffix: &str) -> std::io::Result<std::fs::File> {
    let mut path = database.as_os_str().to_owned();
    path.push(suffix);
    let path = std::path::PathBuf::from(path);
    if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)?;
    }
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new().create(true).truncate(false).write(true),
        libc::O_NOFOLLOW,
    )
    .open(&path)
    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool, WriterQueue),
}

/// SQLite has one writer at a time. Transactions of this process wait for it here, in order,
/// instead of in SQLite's busy handler, which sleeps 1, 2, 5, 10... ms between attempts and
/// leaves the lock idle meanwhile (under a burst of writes: lower throughput, a long p99 tail).
/// Other processes (`shipshape migrate`) still meet the busy timeout.
///
/// The writer keeps a connection of its own, opened at the first write, beside the pool: a
/// write neither acquires a pooled connection nor gives one back (sqlx pings each connection
/// given back, one more hop to its thread), and its prepared statements stay cached
/// (bench/RESULTS.md, "The writer's own connection"). Like a pooled one, it is replaced once
/// older than `DATABASE_MAX_LIFETIME_SECS`.
pub type WriterQueue = Arc<tokio::sync::Mutex<Option<WriterConnection>>>;

/// The writer's connection, and when it was opened.
#[derive(Debug)]
pub struct WriterConnection {
    connection: SqliteConnection,
    opened: std::time::Instant,
}

/// Runs the same expression against whichever pool is live: `with_db!(db, pool => query.fetch_one(pool))`.
#[macro_export]
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::Sqlite($pool, _) => $body,
        }
    };
}

/// A pooled connection used less than this long ago is handed out without a ping first.
/// sqlx's default pings before every acquire: one more round trip per query on PostgreSQL (a
/// hop to the connection's thread on SQLite) to ask a connection that answered a moment ago.
/// sqlx still pings each connection as it goes back to the pool and drops a broken one there,
/// so what this skips is a second check of a connection that passed one less than this long
/// ago. HikariCP's `aliveBypassWindowMs` does the same (bench/RESULTS.md, "Static files and
/// the ping before each query").
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// The pool settings (docs/configuration.md), the same for both backends.
fn pool_options<DB: sqlx::Database>(config: &DatabaseConfig) -> PoolOptions<DB> {
    PoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(config.idle_timeout)
        .max_lifetime(config.max_lifetime)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
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
            Ok(Db::Sqlite(pool, WriterQueue::default()))
        } else {
            let options = connect_options(url).map_err(|reason| sqlx::Error::Configuration(reason.into()))?;
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
        match self {
            Db::Postgres(pool) => pool.close().await,
            Db::Sqlite(pool, writers) => {
                pool.close().await;
                // Last: the last connection to close folds the write-ahead log into the file.
                if let Some(writer) = writers.lock().await.take()
                    && let Err(error) = sqlx::Connection::close(writer.connection).await
                {
                    tracing::warn!(%error, "closing the SQLite writer's connection failed");
                }
            }
        }
    }
}

/// `/readyz`'s database check: one ping at a time, which every call that arrives while it is
/// in flight joins. A flood of probes then costs one query per round trip, instead of queueing
/// for the readiness connection until the 2 s bound makes a healthy database look down; and
/// the joined calls are all woken at once when it ends, not handed a lock one after another.
#[derive(Default)]
pub struct SharedPing(std::sync::Mutex<Option<PingInFlight>>);

/// A ping any number of calls can await; each gets a copy of its answer.
type PingInFlight = Shared<BoxFuture<'static, Result<Duration, String>>>;

impl SharedPing {
    /// The latency of a ping that ended after this call began, or why it failed.
    pub async fn ping(&self, db: &Db, limit: Duration) -> Result<Duration, String> {
        let in_flight = {
            let mut slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match &*slot {
                Some(ping) if ping.peek().is_none() => ping.clone(),
                _ => {
                    let db = db.clone();
                    let ping = async move {
                        let result = db.ping(limit).await.map_err(|e| faults::describe(&e));
                        if let Err(error) = &result {
                            tracing::warn!(%error, "readiness: database check failed");
                        }
                        result
                    }
                    .boxed()
                    .shared();
                    *slot = Some(ping.clone());
                    ping
                }
            }
        };
        in_flight.await
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

/// An open transaction on whichever database is live. Dropping it without [`Tx::commit`]
/// (an early return, an error) rolls it back.
pub enum Tx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    /// On the writer's connection, for its turn in the [`WriterQueue`].
    Sqlite(WriterTurn),
}

/// Runs the same expression on a transaction's connection, whichever database it is on:
/// `with_tx!(tx, conn => query.execute(&mut **conn).await)`.
#[macro_export]
macro_rules! with_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Postgres($conn) => $body,
            $crate::db::Tx::Sqlite($conn) => $body,
        }
    };
}

impl Db {
    /// Starts a transaction. SQLite's is `BEGIN IMMEDIATE`: taking the write lock up front
    /// avoids "database is locked" when another process's deferred transaction upgrades too.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Db::Sqlite(pool, writers) => {
                let mut turn = WriterTurn::take(pool, writers).await?;
                sqlx::query("BEGIN IMMEDIATE").execute(turn.opening()).await?;
                Tx::Sqlite(turn)
            }
        })
    }
}

/// This process's turn at SQLite's one writer, and the writer's connection for it. A turn
/// that ends inside a transaction (a [`Tx`] dropped without commit, a failed or cancelled
/// call) rolls it back before the next turn begins, so no open transaction reaches the next
/// write; a connection that cannot roll back is closed, and the next turn opens another.
pub struct WriterTurn {
    /// `None` only once dropped.
    held: Option<tokio::sync::OwnedMutexGuard<Option<WriterConnection>>>,
    in_transaction: bool,
}

const HELD: &str = "a writer's turn holds its connection until it ends";

impl WriterTurn {
    /// Waits for the turn, in order, bounded as acquiring a pooled connection is.
    pub async fn take(pool: &SqlitePool, writers: &WriterQueue) -> Result<WriterTurn, sqlx::Error> {
        let take = async {
            let mut held = Arc::clone(writers).lock_owned().await;
            let max_lifetime = pool.options().get_max_lifetime();
            if held
                .as_ref()
                .is_some_and(|writer| max_lifetime.is_some_and(|max| writer.opened.elapsed() > max))
            {
                *held = None;
            }
            if held.is_none() {
                *held = Some(WriterConnection {
                    connection: sqlx::ConnectOptions::connect(&*pool.connect_options()).await?,
                    opened: std::time::Instant::now(),
                });
            }
            Ok(WriterTurn {
                held: Some(held),
                in_transaction: false,
            })
        };
        tokio::time::timeout(pool.options().get_acquire_timeout(), take)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// The connection, for a call that opens a transaction: from here until [`Self::committed`],
    /// the end of the turn rolls back.
    pub fn opening(&mut self) -> &mut SqliteConnection {
        self.in_transaction = true;
        self
    }

    /// The transaction opened ended with its `COMMIT`.
    pub fn committed(&mut self) {
        self.in_transaction = false;
    }
}

impl std::ops::Deref for WriterTurn {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        self.held
            .as_ref()
            .and_then(|held| held.as_ref())
            .map(|writer| &writer.connection)
            .expect(HELD)
    }
}

impl std::ops::DerefMut for WriterTurn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.held
            .as_mut()
            .and_then(|held| held.as_mut())
            .map(|writer| &mut writer.connection)
            .expect(HELD)
    }
}

impl Drop for WriterTurn {
    /// Inside a transaction: the rollback runs in a task that keeps the turn until it is done.
    /// Without a runtime to run it (the process is ending), closing the connection rolls back.
    fn drop(&mut self) {
        let Some(mut held) = self.held.take().filter(|_| self.in_transaction) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            *held = None;
            return;
        };
        runtime.spawn(async move {
            if let Some(writer) = held.as_mut()
                && sqlx::query("ROLLBACK").execute(&mut writer.connection).await.is_err()
            {
                *held = None;
            }
        });
    }
}

/// Runs one write statement, `$conn` its executor: on PostgreSQL straight on the pool (a
/// statement is its own transaction, one round trip), on SQLite in a transaction that waits
/// its turn in the [`WriterQueue`]. Use inside an async fn whose error converts from
/// `sqlx::Error`: `with_write!(db, conn => query.execute(conn).await)`.
#[macro_export]
macro_rules! with_write {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres(pool) => {
                let $conn = pool;
                Ok($body?)
            }
            db @ $crate::db::Db::Sqlite(..) => {
                let mut tx = db.begin().await?;
                let done = $crate::with_tx!(&mut tx, c => {
                    let $conn = &mut **c;
                    $body
                })?;
                tx.commit().await?;
                Ok(done)
            }
        }
    };
}

/// Runs one write of several statements as a single call to the database, atomically: the
/// shortest hold of SQLite's one writer lock, one round trip on PostgreSQL (docs/code-layout.md,
/// "Writes in one call"). The SQL differs per database, so pick it by matching the [`Db`]:
/// on PostgreSQL one statement (a data-modifying `WITH` is its own transaction), run on the
/// pool; on SQLite `BEGIN IMMEDIATE; ...; COMMIT` in one text, run on the writer's connection
/// in its turn ([`WriterTurn`]), which rolls back what a failed call left open. Fetch with
/// `fetch_all`: `fetch_one` stops SQLite at the first row, before the `COMMIT`.
#[macro_export]
macro_rules! with_one_write_call {
    ($db:expr, $conn:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres(pool) => {
                let $conn = pool;
                $body
            }
            $crate::db::Db::Sqlite(pool, writers) => match $crate::db::WriterTurn::take(pool, writers).await {
                Ok(mut turn) => {
                    let done = {
                        let $conn = turn.opening();
                        $body
                    };
                    if done.is_ok() {
                        turn.committed();
                    }
                    done
                }
                Err(error) => Err(error),
            },
        }
    };
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Sqlite(mut turn) => {
                sqlx::query("COMMIT").execute(&mut *turn).await?;
                turn.committed();
                Ok(())
            }
        }
    }
}

/// A named constraint of the schema, so the statement that can break it says what that
/// means for the client (`.on_constraint(EMAIL_TAKEN, ...)`) and every other violation stays
/// a 500. PostgreSQL reports the name; SQLite reports a unique violation by its columns and
/// a foreign-key violation by nothing at all.
#[derive(Clone, Copy, Debug)]
pub struct Constraint {
    /// The name in the migration (PostgreSQL's default for `REFERENCES` is `{table}_{column}_fkey`).
    pub name: &'static str,
    kind: ConstraintKind,
}

#[derive(Clone, Copy, Debug)]
enum ConstraintKind {
    /// With SQLite's `table.column[, table.column]` list.
    Unique(&'static str),
    /// SQLite names none: any foreign-key violation of the statement matches.
    ForeignKey,
}

impl Constraint {
    pub const fn unique(name: &'static str, sqlite_columns: &'static str) -> Constraint {
        Constraint {
            name,
            kind: ConstraintKind::Unique(sqlite_columns),
        }
    }

    pub const fn foreign_key(name: &'static str) -> Constraint {
        Constraint {
            name,
            kind: ConstraintKind::ForeignKey,
        }
    }

    fn is_violated_by(&self, error: &sqlx::Error) -> bool {
        let sqlx::Error::Database(error) = error else {
            return false;
        };
        let kind_matches = match self.kind {
            ConstraintKind::Unique(_) => error.is_unique_violation(),
            ConstraintKind::ForeignKey => error.is_foreign_key_violation(),
        };
        kind_matches
            && match (error.constraint(), self.kind) {
                (Some(name), _) => name == self.name,
                (None, ConstraintKind::Unique(columns)) => error.message().ends_with(columns),
                (None, ConstraintKind::ForeignKey) => true,
            }
    }
}

/// `.on_constraint(c, || error)` on a query's result: a violation of `c` becomes `error`, and
/// any other database error converts as usual (see `From<sqlx::Error> for ApiError`).
pub trait OnConstraint<T> {
    fn on_constraint(self, constraint: Constraint, error: impl FnOnce() -> ApiError) -> Result<T, ApiError>;
}

impl<T> OnConstraint<T> for Result<T, sqlx::Error> {
    fn on_constraint(self, constraint: Constraint, error: impl FnOnce() -> ApiError) -> Result<T, ApiError> {
        self.map_err(|e| {
            if constraint.is_violated_by(&e) {
                error()
            } else {
                e.into()
            }
        })
    }
}
