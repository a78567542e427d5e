//! `shipshape jobs …`: the queue seen and mended from the command line (docs/jobs.md).

use std::io::Write;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use super::{EXIT_FAILURE, Format};
use crate::config::Config;
use crate::db::Db;
use crate::jobs::queue;

/// The most jobs `jobs list` prints.
const LIST_LIMIT: i64 = 1000;

#[derive(Subcommand)]
pub enum JobsAction {
    /// How many jobs are queued (retries included), running and failed, and the age of the oldest queued one
    Status {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Each job (at most 1000), due first
    List {
        /// Only the jobs in this state
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Put failed jobs back in the queue with their attempts reset; exit 1 if an id is not a failed job
    Retry {
        /// The jobs to retry
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        ids: Vec<String>,
        /// Every failed job
        #[arg(long)]
        failed: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StateArg {
    Queued,
    Running,
    Failed,
}

impl StateArg {
    fn as_str(self) -> &'static str {
        match self {
            StateArg::Queued => "queued",
            StateArg::Running => "running",
            StateArg::Failed => "failed",
        }
    }
}

pub async fn run(config: Config, action: JobsAction) -> ExitCode {
    let db = match super::open_database(&config) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let code = match action {
        JobsAction::Status { format } => status(&db, format).await,
        JobsAction::List { state, format } => list(&db, state, format).await,
        JobsAction::Retry { ids, failed } => retry(&db, (!failed).then_some(ids)).await,
    };
    db.close().await;
    code
}

fn unreadable(error: sqlx::Error) -> ExitCode {
    eprintln!("cannot read the job queue: {}", crate::db::faults::describe(&error));
    ExitCode::from(EXIT_FAILURE)
}

async fn status(db: &Db, format: Format) -> ExitCode {
    let status = match queue::status(db).await {
        Ok(status) => status,
        Err(error) => return unreadable(error),
    };
    let mut out = std::io::stdout().lock();
    let _ = match format {
        Format::Json => writeln!(out, "{}", serde_json::json!(status)),
        Format::Text => writeln!(
            out,
            "queued {}\nrunning {}\nfailed {}\noldest queued {}",
            status.queued,
            status.running,
            status.failed,
            status
                .oldest_queued_seconds
                .map_or("-".to_owned(), |s| format!("{s:.1} s")),
        ),
    };
    ExitCode::SUCCESS
}

async fn list(db: &Db, state: Option<StateArg>, format: Format) -> ExitCode {
    let jobs = match queue::list(db, state.map(StateArg::as_str), LIST_LIMIT).await {
        Ok(jobs) => jobs,
        Err(error) => return unreadable(error),
    };
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let _ = writeln!(out, "{}", serde_json::json!(jobs));
        }
        Format::Text => {
            let _ = writeln!(
                out,
                "{:<36} {:<24} {:<8} {:>8} {:<27} LAST ERROR",
                "ID", "JOB", "STATE", "ATTEMPTS", "RUN AT"
            );
            for job in &jobs {
                let run_at = crate::db::rfc3339(job.run_at);
                let error = job.last_error.as_deref().unwrap_or("-").replace('\n', " ");
                let _ = writeln!(
                    out,
                    "{:<36} {:<24} {:<8} {:>8} {:<27} {error}",
                    job.id, job.job, job.state, job.attempts, run_at
                );
            }
        }
    }
    ExitCode::SUCCESS
}

async fn retry(db: &Db, ids: Option<Vec<String>>) -> ExitCode {
    let retried = match queue::retry(db, ids.as_deref()).await {
        Ok(retried) => retried,
        Err(error) => return unreadable(error),
    };
    let mut out = std::io::stdout().lock();
    for id in &retried {
        let _ = writeln!(out, "retried {id}");
    }
    let missing: Vec<&String> = ids.iter().flatten().filter(|id| !retried.contains(id)).collect();
    if missing.is_empty() {
        if retried.is_empty() {
            let _ = writeln!(out, "no failed jobs");
        }
        return ExitCode::SUCCESS;
    }
    for id in missing {
        eprintln!("no failed job with id {id}");
    }
    ExitCode::from(EXIT_FAILURE)
}
