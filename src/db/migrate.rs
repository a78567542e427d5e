//! Applying the embedded migrations: `shipshape migrate` (the release step) and
//! `RUN_MIGRATIONS_ON_START`. On PostgreSQL one process at a time holds a lock while it
//! migrates; waiting for it is bounded, so a release step never hangs.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;

use super::Db;
use crate::with_db;

/// Migrations from `migrations/`, embedded in the binary; the same files serve both backends.
/// Versions the database has but this binary lacks are allowed, so rolling back to an older
/// release still passes its `shipshape migrate` step (write migrations expand-then-contract).
/// sqlx's own lock waits forever; [`Db::migrate`] takes a bounded one instead.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    locking: false,
    ..sqlx::migrate!()
};

/// How long `migrate` waits for another process's migration lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(250);
/// The advisory lock key migrations hold ("shipshap" in ASCII).
const LOCK_KEY: i64 = 0x7368_6970_7368_6170;

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database is unreachable: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "another process has held the migration lock for {wait} s{holder}. If no migration is running, \
         a transaction pooler kept the lock of an earlier run: run migrations over a direct connection \
         (DATABASE_DIRECT_URL), or end that session with SELECT pg_terminate_backend(pid)",
        wait = LOCK_WAIT.as_secs()
    )]
    LockTimeout { holder: String },
}

impl Db {
    /// Applies pending migrations; returns the `(version, description)` of each one applied.
    pub async fn migrate(&self) -> Result<Vec<(i64, String)>, MigrationError> {
        self.apply_migrations(true).await
    }

    /// [`Db::migrate`] without the migration lock, which a transaction pooler cannot hold (it
    /// would stay taken on some server session). Each migration still runs in a transaction of
    /// its own, so a second process started at once fails on the first migration it repeats
    /// instead of applying anything twice.
    pub async fn migrate_through_transaction_pooler(&self) -> Result<Vec<(i64, String)>, MigrationError> {
        self.apply_migrations(false).await
    }

    async fn apply_migrations(&self, lock: bool) -> Result<Vec<(i64, String)>, MigrationError> {
        let before = self.applied_versions().await;
        match self {
            Db::Sqlite(pool) => MIGRATOR.run(pool).await?,
            Db::Postgres(pool) if !lock => MIGRATOR.run(pool).await?,
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                take_lock(&mut conn).await?;
                let result = MIGRATOR.run(&mut *conn).await;
                // Closing the session would release the lock too; unlock so the connection is clean.
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(LOCK_KEY)
                    .execute(&mut *conn)
                    .await;
                result?
            }
        }
        Ok(MIGRATOR
            .iter()
            .filter(|m| !before.contains(&m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect())
    }

    /// Versions already applied; empty when the migrations table does not exist yet.
    async fn applied_versions(&self) -> HashSet<i64> {
        let sql = "SELECT version FROM _sqlx_migrations WHERE success";
        let rows: Result<Vec<i64>, _> = with_db!(self, pool => sqlx::query_scalar(sql).fetch_all(pool).await);
        rows.unwrap_or_default().into_iter().collect()
    }
}

/// Takes the migration lock, polling, for at most [`LOCK_WAIT`]: two release machines started
/// together migrate one after the other, and a lock that is never released is reported.
async fn take_lock(conn: &mut PgConnection) -> Result<(), MigrationError> {
    let started = Instant::now();
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
        if taken {
            return Ok(());
        }
        if started.elapsed() >= LOCK_WAIT {
            return Err(MigrationError::LockTimeout {
                holder: lock_holder(conn).await,
            });
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
}

/// Who holds the lock, for the error message: ` (pid 123, application "pgbouncer")`.
async fn lock_holder(conn: &mut PgConnection) -> String {
    let sql = "SELECT a.pid, coalesce(a.application_name, '') FROM pg_locks l \
               JOIN pg_stat_activity a ON a.pid = l.pid \
               WHERE l.locktype = 'advisory' AND l.granted \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 LIMIT 1";
    match sqlx::query_as::<_, (i32, String)>(sql)
        .bind(LOCK_KEY)
        .fetch_optional(conn)
        .await
    {
        Ok(Some((pid, application))) => format!(" (pid {pid}, application {application:?})"),
        _ => String::new(),
    }
}
