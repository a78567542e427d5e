//! PostgreSQL as managed platforms hand it out: often behind a pooler (PgBouncer, Supavisor,
//! Neon's proxy), always with TLS. The URL is read the way libpq reads it, nothing in the
//! connection start-up is something a stock pooler refuses, and a pooler that cannot carry
//! this driver's prepared statements is detected instead of answering wrong.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

/// The `SET` run on every new connection: a simple-protocol query, so a pooler in transaction
/// mode accepts it like any other statement.
pub fn set_statement_timeout(timeout: Duration) -> String {
    format!("SET statement_timeout = {}", timeout.as_millis())
}

/// How the connections of a URL are pooled on the way to PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Directly to PostgreSQL, or through a session pooler: one server session per connection.
    Session,
    /// Through a transaction pooler: each transaction may run on another server session, so
    /// session state (SET, advisory locks, named prepared statements) does not carry over.
    Transaction { prepared_statements: bool },
}

/// What a test connection found; the startup log and `check --deploy --connect` report it.
#[derive(Clone, Debug)]
pub struct Diagnosis {
    pub pooling: Pooling,
    /// `statement_timeout` as a new connection gets it (the role's or database's default).
    pub default_statement_timeout: String,
    /// Whether `SET statement_timeout` on a connection is what its queries then get.
    pub statement_timeout_applies: bool,
}

/// Each probe step waits at most this long; a pooler with every server busy queues clients.
const STEP: Duration = Duration::from_secs(3);

/// Connects with two connections and finds how they are pooled (see [`Pooling`]), whether
/// prepared statements survive it, and what `statement_timeout` the service's queries get.
pub async fn diagnose(options: &PgConnectOptions, statement_timeout: Duration) -> Result<Diagnosis, String> {
    let mut a = step(PgConnection::connect_with(options)).await?;
    let default_statement_timeout = show_statement_timeout(&mut a).await?;
    let pooling = probe_pooling(options, &mut a).await?;
    let wanted = set_statement_timeout(statement_timeout);
    step(sqlx::raw_sql(sqlx::AssertSqlSafe(wanted)).execute(&mut a)).await?;
    let applied = show_statement_timeout(&mut a).await?;
    let _ = a.close().await;
    Ok(Diagnosis {
        pooling,
        statement_timeout_applies: pooling == Pooling::Session
            && parse_pg_duration(&applied) == Some(statement_timeout),
        default_statement_timeout,
    })
}

async fn step<T>(work: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, String> {
    match tokio::time::timeout(STEP, work).await {
        Ok(result) => result.map_err(|e| super::faults::describe(&e)),
        Err(_) => Err(format!("no answer within {} s", STEP.as_secs())),
    }
}

async fn show_statement_timeout(conn: &mut PgConnection) -> Result<String, String> {
    let row = step(sqlx::raw_sql("SHOW statement_timeout").fetch_one(&mut *conn)).await?;
    row.try_get::<String, _>(0).map_err(|e| e.to_string())
}

/// Connections the probe holds in a transaction at most, beside `a`.
const HOLDERS: usize = 8;
/// Times the holders take their sessions, giving them all back in between.
const CYCLES: usize = 3;

/// Whether a connection keeps one server session (PostgreSQL itself, a session pooler) or its
/// statements move between sessions (a transaction pooler), and if so whether named prepared
/// statements move with them (PgBouncer 1.21+ with `max_prepared_statements`).
///
/// `a` notes its session, then other connections ("holders") each open a transaction, which
/// under a transaction pooler keeps a server session to itself until it ends. A session pooler
/// or the database never lets another connection have `a`'s session, nor moves `a`. So: a
/// holder given `a`'s session, or `a` answering from another one (or not at all, every session
/// being held), is a transaction pooler, whatever other clients of the pooler do meanwhile;
/// `a` on its own session after every holder is a session pooler. A holder's own session
/// stays taken until the probe ends, so `a`'s statement then runs elsewhere and shows whether
/// its prepared statement followed.
async fn probe_pooling(options: &PgConnectOptions, a: &mut PgConnection) -> Result<Pooling, String> {
    let plain = backend_pid(a).await?;
    // This probe's own: see `prepared_backend_pid`.
    let marker = i64::from_le_bytes(*uuid::Uuid::new_v4().as_bytes().first_chunk().unwrap_or(&[0; 8])) & i64::MAX;
    // `first`: the session where `a`'s statement is prepared, and the only one that has it.
    let first = match prepared_backend_pid(a, marker).await {
        Ok(pid) => pid,
        // On a fresh connection, a statement missing or "already existing" (another client's
        // of the same name) can only mean `a` was moved between sessions.
        Err(Prepared::Lost) => {
            return Ok(Pooling::Transaction {
                prepared_statements: false,
            });
        }
        Err(Prepared::Failed(reason)) => return Err(reason),
    };
    // Moved between its first two statements: a transaction pooler, which the holders may
    // still show to carry prepared statements; failing that, it is not trusted with them.
    let undecided = if plain == first {
        Pooling::Session
    } else {
        Pooling::Transaction {
            prepared_statements: false,
        }
    };
    // Connected all at once: over a slow link the probe costs one connection time, not eight.
    let connecting = (0..HOLDERS).map(|_| step(PgConnection::connect_with(options)));
    let mut holders = futures_util::future::join_all(connecting)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let mut verdict = Ok(None);
    for _ in 0..CYCLES {
        verdict = hold_sessions_until_moved(a, first, marker, &mut holders).await;
        if !matches!(verdict, Ok(None)) {
            break;
        }
    }
    for holder in holders {
        let _ = holder.close().await;
    }
    // No holder got `a`'s session and `a` never moved (after its first statement, at least).
    verdict.map(|found| found.unwrap_or(undecided))
}

/// The holders' part of [`probe_pooling`], one cycle; `None` when it found nothing. No holder
/// gives its session back before the cycle ends, so each one takes a session out of the
/// pooler's reach: `a` either moves, or its session goes to a holder, within as many holders
/// as the pooler has sessions. A pooler with more usually hands `a`'s session, the one it got
/// back last, to the very next holder, unless another client takes it just then: a busy
/// pooler may need another cycle.
async fn hold_sessions_until_moved(
    a: &mut PgConnection,
    first: i32,
    marker: i64,
    holders: &mut [PgConnection],
) -> Result<Option<Pooling>, String> {
    let verdict = hold_each(a, first, marker, holders).await;
    // Best effort: a holder that failed is closed with the others at the end.
    let rollbacks = holders
        .iter_mut()
        .map(|holder| step(sqlx::raw_sql("ROLLBACK").execute(holder)));
    futures_util::future::join_all(rollbacks).await;
    verdict
}

async fn hold_each(
    a: &mut PgConnection,
    first: i32,
    marker: i64,
    holders: &mut [PgConnection],
) -> Result<Option<Pooling>, String> {
    for holder in holders.iter_mut() {
        // One round trip: the transaction, then the session it holds.
        let held = step(sqlx::raw_sql("BEGIN; SELECT pg_backend_pid()").fetch_all(&mut *holder)).await;
        // A session pooler with every server session taken queues `holder`: not a transaction pooler.
        let Ok(rows) = held else {
            return Ok(Some(Pooling::Session));
        };
        let held_pid = rows.first().map(|row| row.try_get::<i32, _>(0));
        let held_first = held_pid.transpose().map_err(|e| e.to_string())? == Some(first);
        match prepared_backend_pid(a, marker).await {
            Ok(pid) if pid == first && !held_first => {}
            // Run on another session, with the statement it prepared: carried by the pooler.
            Ok(pid) if pid != first => {
                return Ok(Some(Pooling::Transaction {
                    prepared_statements: true,
                }));
            }
            // `a`'s session is held, yet `a` answered from it: impossible for any pooler.
            Ok(_) => return Err("the probe found one server session in two connections".to_owned()),
            // Lost, or waiting while every session is held: a transaction pooler, and one
            // that cannot be trusted with prepared statements.
            Err(_) => {
                return Ok(Some(Pooling::Transaction {
                    prepared_statements: false,
                }));
            }
        }
    }
    Ok(None)
}

async fn backend_pid(conn: &mut PgConnection) -> Result<i32, String> {
    let row = step(sqlx::raw_sql("SELECT pg_backend_pid()").fetch_one(&mut *conn)).await?;
    row.try_get::<i32, _>(0).map_err(|e| e.to_string())
}

/// Why a prepared statement did not answer.
enum Prepared {
    /// The pooler lost it, or bound another client's statement of the same name.
    Lost,
    /// Anything else (unreachable, no answer in time).
    Failed(String),
}

/// The server session's pid, through a named prepared statement (sqlx prepares it on first use
/// and binds it by name after). A pooler that loses it fails here, or binds another client's
/// statement of the same name, which answers another marker.
async fn prepared_backend_pid(conn: &mut PgConnection, marker: i64) -> Result<i32, Prepared> {
    // The marker is in the statement's text: a statement of the same name from another client
    // (sqlx names them `sqlx_s_1`, `sqlx_s_2`… on every connection), even an earlier probe's,
    // answers another number.
    let sql = format!("SELECT pg_backend_pid(), {marker}::int8");
    let query = sqlx::query_as::<_, (i32, i64)>(sqlx::AssertSqlSafe(sql));
    match tokio::time::timeout(STEP, query.fetch_one(&mut *conn)).await {
        Ok(Ok((pid, echoed))) if echoed == marker => Ok(pid),
        Ok(Ok(_)) => Err(Prepared::Lost),
        Ok(Err(e)) if super::faults::classify(&e) == super::faults::Fault::PoolerWithoutPreparedStatements => {
            Err(Prepared::Lost)
        }
        Ok(Err(e)) => Err(Prepared::Failed(super::faults::describe(&e))),
        Err(_) => Err(Prepared::Failed(format!("no answer within {} s", STEP.as_secs()))),
    }
}

/// `SHOW statement_timeout` answers like `30s`, `1500ms`, `2min` or `0`.
pub fn parse_pg_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "" | "ms" => n,
        "s" => n * 1000,
        "min" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_durations() {
        assert_eq!(parse_pg_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_pg_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_pg_duration("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("soon"), None);
    }
}
