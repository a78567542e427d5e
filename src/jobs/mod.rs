//! Jobs: work done outside requests — sending email, cleaning up — as rows in the
//! application's own database (docs/jobs.md).
//!
//! A job is a type that implements [`Job`]: its payload is the type itself, as JSON. Enqueue
//! it with [`enqueue`] inside the transaction of the change that causes it; handle it with
//! [`Registry::on`] in `app::jobs`; run it every so often with [`Registry::every`]. Workers
//! ([`Workers`]) claim due jobs, run them at least once, retry failures with backoff, and
//! keep the ones that fail `JOB_MAX_ATTEMPTS` times as `failed` for `shipshape jobs retry`.

pub mod queue;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::config::Config;
use crate::db::{self, Db, Tx};
use crate::email::Mailer;
use crate::error::ApiError;
use crate::storage::Storage;

pub use worker::Workers;

/// A kind of job. Its name is stored with each job, so renaming it strands the queued ones:
/// keep it, or handle both names for one deploy. A handler must be idempotent: a job runs at
/// least once, and again when its worker dies mid-way.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// Stored in `jobs.job`, shown by `shipshape jobs list`, logged as `job`.
    const KIND: &'static str;
    /// The longest an attempt may run; past it the attempt fails (and is retried). Without a
    /// bound, a handler that hangs would hold its worker for ever, renewing its lease.
    const TIMEOUT: Duration = Duration::from_secs(600);
}

/// Adds `job` inside the caller's transaction: committed, it will run; rolled back, it never existed.
pub async fn enqueue<J: Job>(tx: &mut Tx, job: &J) -> Result<Uuid, ApiError> {
    let payload = serde_json::to_string(job).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(queue::insert(tx, J::KIND, &payload, db::now_micros()).await?)
}

/// Why an attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// Worth another attempt (a mail server down, a database away).
    Retry(String),
    /// No attempt can succeed (a payload this binary cannot read): `failed` at once.
    Permanent(String),
}

/// What handlers work with.
pub struct Context {
    pub db: Db,
    pub mailer: Mailer,
    pub storage: Storage,
    pub config: Arc<Config>,
}

/// Runs one payload: its decoding, then its handler.
type Handler = Arc<dyn Fn(Arc<Context>, &str) -> BoxFuture<'static, Result<(), Failure>> + Send + Sync>;

/// A job enqueued every `every`, once across all instances.
struct Schedule {
    kind: &'static str,
    payload: String,
    every: Duration,
}

/// What the workers know how to run, and what the scheduler enqueues.
pub struct Registry {
    context: Arc<Context>,
    handlers: HashMap<&'static str, Handler>,
    schedules: Vec<Schedule>,
}

impl Registry {
    pub fn new(context: Context) -> Registry {
        Registry {
            context: Arc::new(context),
            handlers: HashMap::new(),
            schedules: Vec::new(),
        }
    }

    /// Runs `handler` for each job of kind `J`. An error is retried; a payload that no longer
    /// decodes as `J` (its type changed in a deploy) fails the job at once, with the reason.
    pub fn on<J, F, Fut>(mut self, handler: F) -> Registry
    where
        J: Job,
        F: Fn(Arc<Context>, J) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let run: Handler = Arc::new(move |context, payload: &str| match serde_json::from_str::<J>(payload) {
            Ok(job) => tokio::time::timeout(J::TIMEOUT, handler(context, job))
                .map(|done| match done {
                    Ok(done) => done.map_err(|e| Failure::Retry(format!("{e:#}"))),
                    Err(_) => Err(Failure::Retry(format!("timed out after {} s", J::TIMEOUT.as_secs()))),
                })
                .boxed(),
            Err(e) => {
                let reason = format!("the payload does not decode as {}: {e}", J::KIND);
                async move { Err(Failure::Permanent(reason)) }.boxed()
            }
        });
        self.handlers.insert(J::KIND, run);
        self
    }

    /// Enqueues `job` every `every`, once across all instances (give it a handler with `on`).
    /// The schedule is named by the job's kind: one schedule per kind.
    pub fn every<J: Job>(mut self, every: Duration, job: J) -> Registry {
        let payload = serde_json::to_string(&job).unwrap_or_else(|_| "null".to_owned());
        self.schedules.push(Schedule {
            kind: J::KIND,
            payload,
            every,
        });
        self
    }

    /// The future that runs `payload` as a job of `kind`; `None` for a kind without a handler.
    fn start(&self, kind: &str, payload: &str) -> Option<BoxFuture<'static, Result<(), Failure>>> {
        let handler = self.handlers.get(kind)?;
        Some(handler(self.context.clone(), payload))
    }
}
