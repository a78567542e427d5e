//! The embedded migrations: applying them (`shipshape migrate`, the release step, and
//! `RUN_MIGRATIONS_ON_START`), seeing where a database stands (`migrate status`, `/readyz`)
//! and undoing them (`migrate revert`). One process at a time migrates: on PostgreSQL it holds
//! an advisory lock, on SQLite a lock file beside the database; waiting for either is bounded,
//! so a release step never hangs.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::migrate::{MigrateError, Migration, Migrator};
use sqlx::postgres::PgConnection;

use super::Db;

/// Migrations from `migrations/`, embedded in the binary; the same files serve both backends,
/// each an `.up.sql` with the `.down.sql` that undoes it. Versions the database has but this
/// binary lacks are allowed, so rolling back to an older release still passes its
/// `shipshape migrate` step (write migrations expand-then-contract). sqlx's own lock waits
/// forever; [`Db::migrate`] takes a bounded one instead.
pub static MIGRATOR: Migrator = Migrator {
    ignore_missing: true,
    locking: false,
    ..sqlx::migrate!()
};

/// How long `migrate` waits for another process's migration lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(250);
/// The advisory lock key migrations hold: any fixed 64-bit value (these are 8 ASCII bytes);
/// keep it once deployed, as every release must take the same lock.
const LOCK_KEY: i64 = 0x7368_6970_7368_6170;

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A migration failed; its transaction was rolled back, so nothing of it stays.
    #[error("{file} failed, nothing of it was applied: {error}")]
    Failed { file: String, error: String },
    #[error("{0}")]
    Migrate(MigrateError),
    #[error("{}", describe_database_error(.0))]
    Database(#[from] sqlx::Error),
    #[error("cannot open the migration lock file {0}")]
    LockFile(String),
    #[error(
        "another process has held the migration lock for {wait} s{holder}. If no migration is running, \
         a transaction pooler kept the lock of an earlier run: run migrations over a direct connection \
         (DATABASE_DIRECT_URL), or end that session with SELECT pg_terminate_backend(pid)",
        wait = LOCK_WAIT.as_secs()
    )]
    LockTimeout { holder: String },
    /// `revert` cannot undo this: no `.down.sql`, or a migration this binary does not know.
    #[error("cannot revert {0}")]
    Irreversible(String),
}

/// "Unreachable" only when it is: a file that is not a database says so instead.
fn describe_database_error(error: &sqlx::Error) -> String {
    let described = super::faults::describe(error);
    match super::faults::classify(error) {
        super::faults::Fault::Unavailable => format!("the database is unreachable: {described}"),
        _ => format!("the database failed: {described}"),
    }
}

impl MigrationError {
    fn from_migrate(error: MigrateError, migrator: &Migrator) -> MigrationError {
        match error {
            MigrateError::ExecuteMigration(error, version) => MigrationError::Failed {
                file: file_name(migrator, version),
                error: super::faults::describe(&error),
            },
            other => MigrationError::Migrate(other),
        }
    }
}

/// `20261122000001_initial.up.sql`, as in `migrations/`.
fn file_name(migrator: &Migrator, version: i64) -> String {
    match migrator
        .iter()
        .find(|m| m.version == version && !m.migration_type.is_down_migration())
    {
        Some(m) => format!(
            "{version}_{}{}",
            m.description.replace(' ', "_"),
            m.migration_type.suffix()
        ),
        None => format!("migration {version}"),
    }
}

/// Where one migration stands, for `migrate status` and `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum State {
    #[serde(rename = "applied")]
    Applied,
    #[serde(rename = "pending")]
    Pending,
    /// The database is ahead of this binary: a rolled-back release.
    #[serde(rename = "unknown to this binary")]
    Unknown,
    /// The file changed after it was applied.
    #[serde(rename = "checksum mismatch")]
    ChecksumMismatch,
}

#[derive(Clone, Debug, Serialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    /// RFC 3339 UTC, or null when not applied.
    pub applied_at: Option<String>,
    pub state: State,
}

/// What `_sqlx_migrations` says of one version.
struct Applied {
    description: String,
    applied_at: String,
    checksum: Vec<u8>,
}

impl Db {
    /// Applies pending migrations; returns the `(version, description)` of each one applied.
    pub async fn migrate(&self) -> Result<Vec<(i64, String)>, MigrationError> {
        self.migrate_with(&MIGRATOR, true).await
    }

    /// [`Db::migrate`] without the PostgreSQL lock, which a transaction pooler cannot hold (it
    /// would stay taken on some server session). Each migration still runs in a transaction
    /// of its own, so a second process started at once fails on the first migration it
    /// repeats instead of applying anything twice.
    pub async fn migrate_through_transaction_pooler(&self) -> Result<Vec<(i64, String)>, MigrationError> {
        self.migrate_with(&MIGRATOR, false).await
    }

    /// Applies `migrator`'s pending migrations (the embedded ones, or a folder read at run time).
    pub async fn migrate_with(&self, migrator: &Migrator, lock: bool) -> Result<Vec<(i64, String)>, MigrationError> {
        let fail = |e| MigrationError::from_migrate(e, migrator);
        // What was applied is read under the lock: a process that waited for another one's
        // run must not report that run's migrations as its own.
        let before = match self {
            Db::Sqlite(pool, _) => {
                let _lock = SqliteLock::take(self).await?;
                let before = self.applied().await?;
                migrator.run(pool).await.map_err(fail)?;
                before
            }
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                if lock {
                    take_lock(&mut conn).await?;
                }
                let before = applied_postgres(&mut conn).await;
                let result = match before {
                    Ok(before) => migrator.run(&mut *conn).await.map(|()| before).map_err(fail),
                    Err(e) => Err(e.into()),
                };
                if lock {
                    release_lock(&mut conn).await;
                }
                result?
            }
        };
        Ok(up_migrations(migrator)
            .filter(|m| !before.contains_key(&m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect())
    }

    /// Every migration this binary knows and every one the database records, by version.
    /// A database never migrated lists every migration pending.
    pub async fn migration_status(&self) -> Result<Vec<MigrationStatus>, MigrationError> {
        Ok(status_of(self.applied().await?))
    }

    /// Undoes the latest applied migration, or every one above `to`, newest first, with their
    /// down migrations; returns what it reverted. Refuses, before changing anything, when one
    /// of them has no `.down.sql` or is unknown to this binary. What is applied is read under
    /// the migration lock: a `migrate` that finished while this one waited is what it sees.
    pub async fn revert(&self, to: Option<i64>) -> Result<Vec<(i64, String)>, MigrationError> {
        let fail = |e| MigrationError::from_migrate(e, &MIGRATOR);
        match self {
            Db::Sqlite(pool, _) => {
                let _lock = SqliteLock::take(self).await?;
                let applied = self.applied().await?;
                let (target, reverting) = plan_revert(&applied, to)?;
                MIGRATOR.undo(pool, target).await.map_err(fail)?;
                Ok(reverting)
            }
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                take_lock(&mut conn).await?;
                let result = async {
                    let applied = applied_postgres(&mut conn).await?;
                    let (target, reverting) = plan_revert(&applied, to)?;
                    MIGRATOR.undo(&mut *conn, target).await.map_err(fail)?;
                    Ok(reverting)
                }
                .await;
                release_lock(&mut conn).await;
                result
            }
        }
    }

    /// The successfully applied migrations the database records; none when the table does
    /// not exist yet (or, for SQLite, the file does not).
    async fn applied(&self) -> Result<BTreeMap<i64, Applied>, sqlx::Error> {
        match self {
            Db::Postgres(pool) => applied_postgres(&mut *pool.acquire().await?).await,
            Db::Sqlite(pool, _) => {
                let sql = "SELECT version, description, checksum, strftime('%Y-%m-%dT%H:%M:%SZ', installed_on) \
                           FROM _sqlx_migrations WHERE success ORDER BY version";
                applied_from(sqlx::query_as(sql).fetch_all(pool).await)
            }
        }
    }
}

/// What `revert` undoes: every applied migration above the target (`to`, or the one before
/// the latest), newest first, each known to this binary and with a down migration.
fn plan_revert(applied: &BTreeMap<i64, Applied>, to: Option<i64>) -> Result<(i64, Vec<(i64, String)>), MigrationError> {
    let target = match to {
        Some(version) => version,
        // The latest one alone: everything above the one before it.
        None => applied.keys().rev().nth(1).copied().unwrap_or(0),
    };
    let mut reverting = Vec::new();
    for (version, migration) in applied.range((Bound::Excluded(target), Bound::Unbounded)).rev() {
        let known = MIGRATOR.iter().any(|m| m.version == *version);
        let down = MIGRATOR
            .iter()
            .any(|m| m.version == *version && m.migration_type.is_down_migration());
        if !known {
            return Err(MigrationError::Irreversible(format!(
                "{version}: this binary does not know it; revert it with the release that applied it"
            )));
        }
        if !down {
            return Err(MigrationError::Irreversible(format!(
                "{}: it has no down migration ({version}_<name>.down.sql)",
                file_name(&MIGRATOR, *version)
            )));
        }
        reverting.push((*version, migration.description.clone()));
    }
    Ok((target, reverting))
}

/// [`Db::applied`] on a given connection: the one holding the migration lock, as a pool of
/// one connection has no other.
async fn applied_postgres(conn: &mut PgConnection) -> Result<BTreeMap<i64, Applied>, sqlx::Error> {
    let sql = "SELECT version, description, checksum, \
               to_char(installed_on AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
               FROM _sqlx_migrations WHERE success ORDER BY version";
    applied_from(sqlx::query_as(sql).fetch_all(conn).await)
}

type AppliedRow = (i64, String, Vec<u8>, String);

fn applied_from(rows: Result<Vec<AppliedRow>, sqlx::Error>) -> Result<BTreeMap<i64, Applied>, sqlx::Error> {
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) if is_missing_table(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(rows
        .into_iter()
        .map(|(version, description, checksum, applied_at)| {
            let applied = Applied {
                description,
                applied_at,
                checksum,
            };
            (version, applied)
        })
        .collect())
}

/// Every migration this binary knows, in the state `applied` gives it, and every one only the
/// database knows.
fn status_of(applied: BTreeMap<i64, Applied>) -> Vec<MigrationStatus> {
    let mut status: BTreeMap<i64, MigrationStatus> = BTreeMap::new();
    for m in up_migrations(&MIGRATOR) {
        let recorded = applied.get(&m.version);
        status.insert(
            m.version,
            MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                applied_at: recorded.map(|a| a.applied_at.clone()),
                state: match recorded {
                    None => State::Pending,
                    Some(a) if a.checksum != *m.checksum => State::ChecksumMismatch,
                    Some(_) => State::Applied,
                },
            },
        );
    }
    for (version, a) in applied {
        status.entry(version).or_insert(MigrationStatus {
            version,
            description: a.description,
            applied_at: Some(a.applied_at),
            state: State::Unknown,
        });
    }
    status.into_values().collect()
}

/// A database never migrated: every migration pending.
pub fn never_migrated() -> Vec<MigrationStatus> {
    status_of(BTreeMap::new())
}

fn up_migrations(migrator: &Migrator) -> impl Iterator<Item = &Migration> {
    migrator.iter().filter(|m| !m.migration_type.is_down_migration())
}

/// "no such table" (SQLite) or `undefined_table` (PostgreSQL): never migrated.
fn is_missing_table(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e.code().as_deref() == Some("42P01") || e.message().contains("no such table"),
        _ => false,
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

/// Closing the session would release the lock too; releasing it leaves the pooled connection clean.
async fn release_lock(conn: &mut PgConnection) {
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(conn)
        .await;
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

/// An exclusive `flock` on `<database file>-migrate.lock`, released when dropped (or when the
/// process dies). SQLite lives on one machine, so a lock file there serializes its migrators.
struct SqliteLock {
    /// Held, not read: closing the file releases the lock.
    _file: Option<std::fs::File>,
}

impl SqliteLock {
    async fn take(db: &Db) -> Result<SqliteLock, MigrationError> {
        let Db::Sqlite(pool, _) = db else {
            return Ok(SqliteLock { _file: None });
        };
        let database = pool.connect_options().get_filename().to_owned();
        if database.as_os_str().is_empty() || database.to_string_lossy().contains(":memory:") {
            return Ok(SqliteLock { _file: None });
        }
        let file = super::lock_file(&database, "-migrate.lock").map_err(|e| MigrationError::LockFile(e.to_string()))?;
        let started = Instant::now();
        loop {
            if file.try_lock().is_ok() {
                return Ok(SqliteLock { _file: Some(file) });
            }
            if started.elapsed() >= LOCK_WAIT {
                return Err(MigrationError::LockTimeout {
                    holder: format!(" ({}-migrate.lock is locked)", database.display()),
                });
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }
}

/// Where the database stands for this binary, as `/readyz` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Schema {
    /// Every migration this binary has is applied.
    Ok,
    /// The database has migrations this binary does not know (a rolled-back release). Ready:
    /// migrations are written expand-then-contract.
    Ahead { unknown: Vec<i64> },
    /// Migrations this binary needs are missing: the release step did not run, or failed.
    Pending { pending: Vec<i64> },
    /// The migrations table could not be read.
    Error,
}

impl Schema {
    pub fn of(status: &[MigrationStatus]) -> Schema {
        let versions = |state| {
            status
                .iter()
                .filter(|m| m.state == state)
                .map(|m| m.version)
                .collect::<Vec<_>>()
        };
        let (pending, unknown) = (versions(State::Pending), versions(State::Unknown));
        if !pending.is_empty() {
            Schema::Pending { pending }
        } else if !unknown.is_empty() {
            Schema::Ahead { unknown }
        } else {
            Schema::Ok
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Schema::Ok | Schema::Ahead { .. })
    }
}

impl Db {
    /// [`Schema`] read within `limit`; unreadable (or too slow) is [`Schema::Error`].
    pub async fn schema(&self, limit: Duration) -> Schema {
        match tokio::time::timeout(limit, self.migration_status()).await {
            Ok(Ok(status)) => Schema::of(&status),
            _ => Schema::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // example-domain:begin
    /// Splitting the first migration into `.up.sql`/`.down.sql` kept its content, so databases
    /// that applied the single file see it applied, not changed (sqlx checksums are SHA-384).
    #[test]
    fn the_initial_migration_keeps_the_checksum_deployed_databases_have() {
        let initial = up_migrations(&MIGRATOR)
            .find(|m| m.version == 20261122000001)
            .expect("the initial migration");
        let hex: String = initial.checksum.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0f602c3dcd3498bfc09dd39e8050070b0888ad7aa3b779e2913519db728a69f14c84597acdb41a4ac6457e3eb6bcd011"
        );
    }
    // example-domain:end

    #[test]
    fn every_migration_can_be_undone() {
        for up in up_migrations(&MIGRATOR) {
            assert!(
                MIGRATOR
                    .iter()
                    .any(|m| m.version == up.version && m.migration_type.is_down_migration()),
                "{} has a .down.sql",
                up.version
            );
        }
    }
}
