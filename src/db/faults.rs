//! What a database error means for the client. The database or the pooler in front of it is
//! away, full, refusing logins or shutting down: 503 `service_unavailable`, and recovery is
//! automatic. A statement cancelled by `statement_timeout`: 503 `timeout`. A transaction
//! pooler that cannot carry prepared statements: 503, with the cause and fix logged. Anything
//! else is a bug: 500. Lasting faults are logged (and sent to Sentry) once a minute, not once
//! per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::ApiError;
use crate::telemetry::{self, throttle::Throttle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Unavailable,
    StatementTimeout,
    PoolerWithoutPreparedStatements,
    Bug,
}

/// How often a lasting fault is logged and reported.
const REPORT_INTERVAL: Duration = Duration::from_secs(60);
static UNAVAILABLE: Throttle = Throttle::new(REPORT_INTERVAL);
static POOLER: Throttle = Throttle::new(REPORT_INTERVAL);

pub const POOLER_FIX: &str = "DATABASE_URL goes through a transaction pooler that does not support prepared \
     statements (PgBouncer before 1.21, or max_prepared_statements = 0): use the pooler's session mode \
     (Supabase: port 5432; Neon: the host without -pooler), set max_prepared_statements = 200 on \
     PgBouncer 1.21+, or connect directly";

/// Closed while the database is reached through a transaction pooler that mixes up prepared
/// statements: a statement bound on another client's session can run that client's query with
/// these arguments. While closed, handlers answer 503 before any query (`AppState::database`)
/// and `/readyz` fails, instead of risking a wrong answer. On PostgreSQL it starts closed and
/// opens when a diagnosis finds the pooler safe (rechecked until one does: `server.rs`).
#[derive(Clone, Debug, Default)]
pub struct PoolerGate(Arc<AtomicBool>);

impl PoolerGate {
    pub fn close(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn open(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub fn classify(error: &sqlx::Error) -> Fault {
    use sqlx::Error::*;
    match error {
        PoolTimedOut | PoolClosed | Io(_) | Tls(_) | WorkerCrashed | Protocol(_) => Fault::Unavailable,
        Database(e) => {
            let code = e.code().unwrap_or_default();
            match code.as_ref() {
                // query_canceled: statement_timeout (or an operator's pg_cancel_backend).
                "57014" => Fault::StatementTimeout,
                // A named statement missing on, or already on, the server session it reached.
                "26000" | "42P05" => Fault::PoolerWithoutPreparedStatements,
                // A Bind that reached another client's statement of the same name.
                "08P01" if e.message().contains("prepared statement") || e.message().contains("bind message") => {
                    Fault::PoolerWithoutPreparedStatements
                }
                // Connection exceptions (also what PgBouncer reports), shutdown, crash or start-up
                // in progress, insufficient resources (too many connections, out of memory or
                // disk), failed authentication; SQLite's busy and locked past busy_timeout.
                c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c.starts_with("28") => {
                    Fault::Unavailable
                }
                "5" | "6" | "517" => Fault::Unavailable,
                _ => Fault::Bug,
            }
        }
        _ => Fault::Bug,
    }
}

/// Logs a fault once a minute, with how many were held back, and reports it to Sentry under
/// one stable message so an outage is one grouped issue. Bugs are left to the caller.
pub fn report(fault: Fault, error: &sqlx::Error) {
    match fault {
        Fault::Unavailable => {
            if let Some(held_back) = UNAVAILABLE.due() {
                tracing::error!(
                    error = %error,
                    since_last = held_back,
                    "database unavailable: answering 503 until it is back (logged once a minute)"
                );
                telemetry::sentry::report_server_error("service_unavailable", "database unavailable");
            }
        }
        Fault::PoolerWithoutPreparedStatements => {
            if let Some(held_back) = POOLER.due() {
                tracing::error!(error = %error, since_last = held_back, fix = POOLER_FIX, "database pooler misconfigured: answering 503 (logged once a minute)");
                telemetry::sentry::report_server_error(
                    "service_unavailable",
                    "the database pooler does not support prepared statements",
                );
            }
        }
        Fault::StatementTimeout => tracing::warn!(error = %error, "statement cancelled by statement_timeout"),
        Fault::Bug => {}
    }
}

/// A connection error in words an operator can act on: refused, timed out, TLS, authentication,
/// too many clients, a database that is starting or stopping.
pub fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("connection refused: nothing listens at that host and port ({e})")
        }
        // The driver hands a failed TLS handshake back as an I/O error around rustls' own.
        sqlx::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
            format!("TLS failed: {e}")
        }
        sqlx::Error::Io(e) => format!("network error: {e}"),
        sqlx::Error::Tls(e) => format!("TLS failed: {e}"),
        sqlx::Error::PoolTimedOut => "no connection within the acquire timeout".to_owned(),
        sqlx::Error::Database(e) => {
            let code = e.code().unwrap_or_default();
            let what = match code.as_ref() {
                c if c.starts_with("28") => "authentication failed",
                "53300" => "too many clients",
                "08P01" if e.message().contains("no more connections") => "too many clients",
                "57P03" => "the database is starting up or shutting down",
                "57P01" | "57P02" => "the database is shutting down",
                "3D000" => "no such database",
                // SQLite's NOTADB and CANTOPEN: DATABASE_URL names the wrong file.
                "26" => "the file is not a SQLite database",
                "14" => "the database file cannot be opened (a directory, or no permission)",
                _ => "the database refused",
            };
            format!("{what}: {} (SQLSTATE {code})", e.message())
        }
        other => other.to_string(),
    }
}

/// Every database error a handler meets becomes the answer its fault calls for.
impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        let fault = classify(&error);
        report(fault, &error);
        match fault {
            Fault::Unavailable | Fault::PoolerWithoutPreparedStatements => ApiError::DatabaseUnavailable,
            Fault::StatementTimeout => ApiError::DatabaseTimeout,
            Fault::Bug => ApiError::Internal(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_faults_are_unavailable_and_bugs_are_not() {
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&refused), Fault::Unavailable);
        assert!(describe(&refused).starts_with("connection refused"));
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Fault::Unavailable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Fault::Bug);
        assert_eq!(classify(&sqlx::Error::ColumnNotFound("x".into())), Fault::Bug);
    }
}
