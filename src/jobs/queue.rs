//! The queue's SQL, the same on SQLite and PostgreSQL (docs/jobs.md). Every write of a worker
//! names its claim (`claim`, which only grows): a worker that lost its lease (it stalled past
//! `JOB_LEASE_SECS` and another worker took the job) changes nothing.

use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::db::{self, Db, Tx};
use crate::{with_db, with_tx, with_write};

/// A job claimed by a worker.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub job: String,
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempts: i64,
    /// This claim's number: what the worker's writes are fenced on.
    pub claim: i64,
}

/// How an attempt ended, as the queue records it.
pub enum Outcome {
    /// Done: the row is deleted.
    Done,
    /// Failed; runs again at `run_at` (unix microseconds).
    RetryAt { run_at: i64, error: String },
    /// Failed for good: kept as `failed` until `jobs retry`.
    Failed { error: String },
    /// Cut off by a shutdown: back in the queue at once, the attempt not counted.
    Released,
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Adds a job inside the caller's transaction: it exists exactly when that transaction commits.
pub async fn insert(tx: &mut Tx, kind: &str, payload: &str, run_at: i64) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    let sql = "INSERT INTO jobs (id, job, payload, state, attempts, run_at, created_at) \
               VALUES ($1, $2, $3, 'queued', 0, $4, $5)";
    with_tx!(tx, conn => {
        sqlx::query(sql)
            .bind(id.to_string())
            .bind(kind)
            .bind(payload)
            .bind(run_at)
            .bind(db::now_micros())
            .execute(&mut **conn)
            .await
            .map(drop)
    })?;
    Ok(id)
}

/// Takes up to `limit` jobs, due longest first, or whose worker's lease ran out with attempts
/// left (see [`fail_abandoned`]), for `lease`. On PostgreSQL `FOR UPDATE SKIP LOCKED` lets any
/// number of workers claim at once without waiting on each other or taking the same row, in
/// one statement (its own transaction); on SQLite the one writer does the same.
pub async fn claim(db: &Db, lease: Duration, limit: usize, max_attempts: u32) -> Result<Vec<Claimed>, sqlx::Error> {
    let lock = match db {
        Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        Db::Sqlite(..) => "",
    };
    // MATERIALIZED: the rows are chosen (and locked) once, so no more than `limit` are taken.
    let sql = format!(
        "WITH due AS MATERIALIZED (SELECT id FROM jobs \
             WHERE (state = 'queued' AND run_at <= $2) \
                OR (state = 'running' AND leased_until <= $2 AND attempts < $4) \
             ORDER BY run_at LIMIT $3{lock}) \
         UPDATE jobs SET state = 'running', attempts = attempts + 1, claim = claim + 1, leased_until = $1 \
         WHERE id IN (SELECT id FROM due) \
         RETURNING id, job, payload, attempts, claim"
    );
    let now = db::now_micros();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    with_write!(db, conn => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(now.saturating_add(micros(lease)))
            .bind(now)
            .bind(limit)
            .bind(i64::from(max_attempts))
            .fetch_all(conn)
            .await
    })
}

/// Extends a running job's lease; `false` when the job is no longer this attempt's.
pub async fn renew(db: &Db, job: &Claimed, lease: Duration) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE jobs SET leased_until = $3 WHERE {fence}";
    let until = db::now_micros().saturating_add(micros(lease));
    Ok(write(db, sql, job, &[Arg::Int(until)]).await? == 1)
}

/// Records how an attempt ended; `false` when the job was no longer this attempt's.
pub async fn finish(db: &Db, job: &Claimed, outcome: Outcome) -> Result<bool, sqlx::Error> {
    let rows = match outcome {
        Outcome::Done => write(db, "DELETE FROM jobs WHERE {fence}", job, &[]).await?,
        Outcome::RetryAt { run_at, error } => {
            let sql =
                "UPDATE jobs SET state = 'queued', run_at = $3, leased_until = NULL, last_error = $4 WHERE {fence}";
            write(db, sql, job, &[Arg::Int(run_at), Arg::Text(error)]).await?
        }
        Outcome::Failed { error } => {
            let sql = "UPDATE jobs SET state = 'failed', leased_until = NULL, last_error = $3 WHERE {fence}";
            write(db, sql, job, &[Arg::Text(error)]).await?
        }
        Outcome::Released => {
            let sql = "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_at = $3, leased_until = NULL \
                       WHERE {fence}";
            write(db, sql, job, &[Arg::Int(db::now_micros())]).await?
        }
    };
    Ok(rows == 1)
}

/// A value bound to a statement, on either database.
enum Arg {
    Int(i64),
    Text(String),
}

/// Runs one write to `job` and says how many rows it changed: on PostgreSQL one statement
/// (its own transaction), on SQLite a transaction in the writer queue. `{fence}` in `sql`
/// becomes the condition that the job is still this claim's (`$1`, `$2`); `args` are `$3` on.
async fn write(db: &Db, sql: &str, job: &Claimed, args: &[Arg]) -> Result<u64, sqlx::Error> {
    let sql = sql.replace("{fence}", "id = $1 AND claim = $2 AND state = 'running'");
    with_write!(db, conn => {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(job.id.as_str())
            .bind(job.claim);
        for arg in args {
            query = match arg {
                Arg::Int(value) => query.bind(*value),
                Arg::Text(value) => query.bind(value.as_str()),
            };
        }
        query.execute(conn).await.map(|done| done.rows_affected())
    })
}

/// Marks `failed` the running jobs whose lease ran out on their last attempt: their worker
/// died during it (a job that kills its process, say), and no attempt is left to claim.
/// Returns their ids and kinds.
pub async fn fail_abandoned(db: &Db, max_attempts: u32) -> Result<Vec<(String, String)>, sqlx::Error> {
    let sql = "UPDATE jobs SET state = 'failed', leased_until = NULL, \
                 last_error = 'the worker stopped during the last attempt (killed, out of memory, or its machine lost)' \
               WHERE state = 'running' AND leased_until <= $1 AND attempts >= $2 RETURNING id, job";
    let now = db::now_micros();
    with_write!(db, conn => sqlx::query_as(sql).bind(now).bind(i64::from(max_attempts)).fetch_all(conn).await)
}

/// The queue at a glance (`shipshape jobs status`).
#[derive(Debug, Serialize)]
pub struct Status {
    /// Waiting to run, retries included.
    pub queued: i64,
    pub running: i64,
    pub failed: i64,
    /// The age of the oldest queued job, since it was enqueued; `None` when none is queued.
    pub oldest_queued_seconds: Option<f64>,
}

pub async fn status(db: &Db) -> Result<Status, sqlx::Error> {
    let sql = "SELECT \
                 COALESCE(SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), 0), \
                 COALESCE(SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 0), \
                 COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0), \
                 MIN(CASE WHEN state = 'queued' THEN created_at END) \
               FROM jobs";
    let (queued, running, failed, oldest): (i64, i64, i64, Option<i64>) =
        with_db!(db, pool => sqlx::query_as(sql).fetch_one(pool).await)?;
    Ok(Status {
        queued,
        running,
        failed,
        oldest_queued_seconds: oldest.map(|at| (db::now_micros() - at).max(0) as f64 / 1e6),
    })
}

/// One job as `jobs list` shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Listed {
    pub id: String,
    pub job: String,
    pub state: String,
    pub attempts: i64,
    #[serde(serialize_with = "as_rfc3339")]
    pub run_at: i64,
    pub last_error: Option<String>,
}

fn as_rfc3339<S: serde::Serializer>(micros: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&db::rfc3339(*micros))
}

/// The jobs in `state` (all when `None`), due first; at most `limit`.
pub async fn list(db: &Db, state: Option<&str>, limit: i64) -> Result<Vec<Listed>, sqlx::Error> {
    let sql = "SELECT id, job, state, attempts, run_at, last_error FROM jobs \
               WHERE $1 = '' OR state = $1 ORDER BY run_at, id LIMIT $2";
    with_db!(db, pool => {
        sqlx::query_as(sql).bind(state.unwrap_or_default()).bind(limit).fetch_all(pool).await
    })
}

/// Puts failed jobs back in the queue, due now, attempts reset: those named by `ids`, or
/// every failed one when `ids` is `None`. Returns the ids put back.
pub async fn retry(db: &Db, ids: Option<&[String]>) -> Result<Vec<String>, sqlx::Error> {
    let sql = "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $1 \
               WHERE state = 'failed' AND ($2 = '' OR id = $2) RETURNING id";
    let now = db::now_micros();
    let wanted: Vec<&str> = match ids {
        Some(ids) => ids.iter().map(String::as_str).collect(),
        None => vec![""],
    };
    let mut tx = db.begin().await?;
    let mut retried = Vec::new();
    for id in wanted {
        let ids: Vec<String> = with_tx!(&mut tx, conn => {
            sqlx::query_scalar(sql).bind(now).bind(id).fetch_all(&mut **conn).await
        })?;
        retried.extend(ids);
    }
    tx.commit().await?;
    Ok(retried)
}

/// Moves a schedule forward when it is due, and then enqueues its job, in one transaction:
/// of all instances ticking at once, one moves it and the others find it moved. `true` when
/// this call enqueued.
pub async fn take_schedule(
    db: &Db,
    name: &str,
    every: Duration,
    kind: &str,
    payload: &str,
) -> Result<bool, sqlx::Error> {
    let now = db::now_micros();
    let mut tx = db.begin().await?;
    let moved = with_tx!(&mut tx, conn => {
        sqlx::query("INSERT INTO job_schedules (name, next_run_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(now)
            .execute(&mut **conn)
            .await?;
        sqlx::query("UPDATE job_schedules SET next_run_at = $1 WHERE name = $2 AND next_run_at <= $3")
            .bind(now.saturating_add(micros(every)))
            .bind(name)
            .bind(now)
            .execute(&mut **conn)
            .await?
            .rows_affected()
    });
    if moved == 1 {
        insert(&mut tx, kind, payload, now).await?;
    }
    tx.commit().await?;
    Ok(moved == 1)
}
