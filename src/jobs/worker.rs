//! The workers: one dispatcher per process claims due jobs while a worker slot is free and
//! runs each on its own task; a scheduler enqueues the recurring jobs (docs/jobs.md).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::queue::{self, Claimed, Outcome};
use super::{Failure, Registry};
use crate::config::JobSettings;
use crate::db::{Db, PoolerGate, faults};

/// How often an idle dispatcher looks for due jobs: a job enqueued while all are idle starts
/// within this (plus one query). Measured in bench/RESULTS.md.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// The longest wait between claims while the database is away (doubling from `IDLE_POLL`).
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(30);
/// How often the scheduler looks for a recurring job that is due.
const SCHEDULER_TICK: Duration = Duration::from_secs(5);
/// A failed attempt's retry waits about 1 s, doubling with each attempt, at most an hour.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// Longest `last_error` kept.
const MAX_ERROR_LEN: usize = 2000;

/// Running workers and the scheduler; [`Workers::drain`] stops them.
pub struct Workers {
    /// `Some(deadline)` once draining: stop claiming, finish by then.
    stop: watch::Sender<Option<Instant>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What each job's task needs.
struct Shared {
    db: Db,
    registry: Registry,
    settings: JobSettings,
    /// Claimed and not finished: released if the drain cuts them off.
    in_flight: Mutex<HashMap<String, i64>>,
}

impl Workers {
    /// Starts `count` workers (and the scheduler) on `db`. They wait while `gate` is closed:
    /// a pooler that mixes up prepared statements is as unsafe for jobs as for requests.
    pub fn start(db: Db, gate: PoolerGate, registry: Registry, settings: &JobSettings, count: usize) -> Workers {
        let (stop, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            db,
            registry,
            settings: settings.clone(),
            in_flight: Mutex::new(HashMap::new()),
        });
        tracing::info!(workers = count, "job workers started");
        let tasks = vec![
            tokio::spawn(dispatch(shared.clone(), gate.clone(), count, stop.subscribe())),
            tokio::spawn(schedule(shared, gate, stop.subscribe())),
        ];
        Workers { stop, tasks }
    }

    /// Stops claiming; running jobs get until `deadline`, then the ones not done are released
    /// to run again later (on another instance, or this one's successor).
    pub async fn drain(self, deadline: Instant) {
        self.stop.send_replace(Some(deadline));
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Resolves once draining starts, with the deadline.
async fn stopping(stop: &mut watch::Receiver<Option<Instant>>) -> Instant {
    match stop.wait_for(Option::is_some).await {
        Ok(deadline) => deadline.unwrap_or_else(Instant::now),
        Err(_) => Instant::now(),
    }
}

/// Claims jobs while a worker slot is free, each run on a task of its own.
async fn dispatch(shared: Arc<Shared>, gate: PoolerGate, count: usize, mut stop: watch::Receiver<Option<Instant>>) {
    let slots = Arc::new(Semaphore::new(count.max(1)));
    let mut running = JoinSet::new();
    let mut wait = IDLE_POLL;
    let deadline = loop {
        let first = tokio::select! {
            // Checked first: once draining, nothing more is claimed.
            biased;
            deadline = stopping(&mut stop) => break deadline,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(first) = first else { break Instant::now() };
        // Every free slot at once: one claim takes several jobs when a backlog waits.
        let mut free = vec![first];
        while let Ok(slot) = slots.clone().try_acquire_owned() {
            free.push(slot);
        }
        // Reap finished tasks so the set does not grow.
        while running.try_join_next().is_some() {}
        let settings = &shared.settings;
        let claimed = match gate.is_closed() {
            true => Ok(Vec::new()),
            false => queue::claim(&shared.db, settings.lease, free.len(), settings.max_attempts).await,
        };
        match claimed {
            Ok(jobs) if !jobs.is_empty() => {
                wait = IDLE_POLL;
                for job in jobs {
                    let Some(slot) = free.pop() else {
                        // Never more than asked for (the claim's LIMIT); should it happen, the
                        // job goes back rather than wait for its lease.
                        release(&shared, &job).await;
                        continue;
                    };
                    lock(&shared.in_flight).insert(job.id.clone(), job.claim);
                    let shared = shared.clone();
                    running.spawn(async move {
                        run(&shared, job).await;
                        drop(slot);
                    });
                }
                continue;
            }
            Ok(_) => wait = IDLE_POLL,
            Err(error) => {
                wait = (wait * 2).min(MAX_ERROR_BACKOFF);
                tracing::warn!(error = %faults::describe(&error), retry_in_ms = wait.as_millis() as u64, "jobs: cannot claim");
            }
        }
        drop(free);
        tokio::select! {
            biased;
            deadline = stopping(&mut stop) => break deadline,
            () = tokio::time::sleep(wait) => {}
        }
    };
    let finished =
        tokio::time::timeout_at(deadline.into(), async { while running.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        running.shutdown().await;
        let cut_off: Vec<(String, i64)> = lock(&shared.in_flight).drain().collect();
        for (id, claim) in cut_off {
            let job = Claimed {
                id,
                job: String::new(),
                payload: String::new(),
                attempts: 0,
                claim,
            };
            release(&shared, &job).await;
        }
    }
}

/// Puts a claimed job back in the queue at once, its attempt not counted.
async fn release(shared: &Shared, job: &Claimed) {
    match queue::finish(&shared.db, job, Outcome::Released).await {
        Ok(true) => tracing::warn!(job_id = %job.id, "job released unfinished: it runs again soon"),
        Ok(false) => {}
        Err(error) => tracing::warn!(
            job_id = %job.id,
            error = %faults::describe(&error),
            "job not released: it runs again when its lease ends"
        ),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forgets a job this claim ran (not a later claim of the same job in this process).
fn forget(shared: &Shared, job: &Claimed) {
    let mut in_flight = lock(&shared.in_flight);
    if in_flight.get(&job.id) == Some(&job.claim) {
        in_flight.remove(&job.id);
    }
}

/// Runs one claimed job to its outcome, renewing its lease meanwhile; every line it logs
/// carries `job_id` and `job`.
async fn run(shared: &Shared, job: Claimed) {
    let span = tracing::info_span!("job", job_id = %job.id, job = %job.job);
    async {
        let started = Instant::now();
        let result = match shared.registry.start(&job.job, &job.payload) {
            // A job of a newer binary, met during a rolling deploy: another instance may know it.
            None => Err(Failure::Retry(format!("no handler for job kind {:?} in this binary", job.job))),
            Some(work) => {
                let work = AssertUnwindSafe(work).catch_unwind();
                tokio::select! {
                    done = work => done.unwrap_or_else(|panic| Err(Failure::Retry(panic_message(&panic)))),
                    () = keep_lease(shared, &job) => {
                        tracing::warn!("job lease lost (not renewed within JOB_LEASE_SECS): the job is left to whichever worker claims it next");
                        forget(shared, &job);
                        return;
                    }
                }
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        metrics::histogram!("job_duration_seconds", "job" => job.job.clone()).record(elapsed);
        let (outcome, label) = judge(shared, &job, result);
        metrics::counter!("jobs_total", "job" => job.job.clone(), "outcome" => label).increment(1);
        match queue::finish(&shared.db, &job, outcome).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("job outcome not recorded: another worker claimed the job after this lease ran out"),
            Err(error) => {
                tracing::warn!(error = %faults::describe(&error), "job outcome not recorded: it runs again when its lease ends")
            }
        }
        forget(shared, &job);
    }
    .instrument(span)
    .await;
}

/// The queue's outcome of an attempt, and its `jobs_total` label. Each failed attempt logs
/// one WARN line; the last one also an ERROR line and a Sentry event tagged with the job.
fn judge(shared: &Shared, job: &Claimed, result: Result<(), Failure>) -> (Outcome, &'static str) {
    let max_attempts = i64::from(shared.settings.max_attempts);
    let (error, retry) = match result {
        Ok(()) => {
            tracing::debug!(attempt = job.attempts, "job done");
            return (Outcome::Done, "success");
        }
        Err(Failure::Retry(error)) => (error, job.attempts < max_attempts),
        Err(Failure::Permanent(error)) => (error, false),
    };
    if retry {
        let delay = retry_delay(job.attempts);
        tracing::warn!(attempt = job.attempts, max_attempts, retry_in_secs = delay.as_secs_f64(), %error, "job attempt failed");
        let run_at = crate::db::now_micros().saturating_add(delay.as_micros() as i64);
        let error = cut(error);
        return (Outcome::RetryAt { run_at, error }, "retry");
    }
    tracing::warn!(attempt = job.attempts, max_attempts, %error, "job attempt failed: no retry");
    report_failure(&job.id, &job.job, &error);
    (Outcome::Failed { error: cut(error) }, "failed")
}

/// A job failed for good: one ERROR line, and one Sentry event tagged with the job.
fn report_failure(id: &str, kind: &str, error: &str) {
    tracing::error!(%error, "job failed for good: kept as failed (see `shipshape jobs list --state failed`)");
    sentry::with_scope(
        |scope| {
            scope.set_tag("job_id", id);
            scope.set_tag("job", kind);
        },
        || sentry::capture_message(&format!("job {kind} failed: {error}"), sentry::Level::Error),
    );
}

fn cut(mut error: String) -> String {
    if error.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    error
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("the handler panicked: {text}")
}

/// About 1 s doubling with each attempt, at most an hour, times a random 0.5 to 1.5 so
/// that jobs failing together do not retry together.
fn retry_delay(attempt: i64) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX).min(20);
    let delay = RETRY_BASE.saturating_mul(1 << exponent).min(RETRY_MAX);
    let mut byte = [0u8; 2];
    let jitter = match getrandom::fill(&mut byte) {
        Ok(()) => 0.5 + f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX),
        Err(_) => 1.0,
    };
    delay.mul_f64(jitter).min(RETRY_MAX)
}

/// Renews the job's lease every third of it; returns when the job is no longer this claim's,
/// or when no renewal has been confirmed for a whole lease (the database away): past that,
/// another worker may have claimed the job, so this one stops rather than run it twice at once.
async fn keep_lease(shared: &Shared, job: &Claimed) {
    let lease = shared.settings.lease;
    let mut confirmed_until = Instant::now() + lease;
    loop {
        tokio::time::sleep(lease / 3).await;
        match queue::renew(&shared.db, job, lease).await {
            Ok(true) => confirmed_until = Instant::now() + lease,
            Ok(false) => return,
            Err(error) => tracing::warn!(error = %faults::describe(&error), "job lease not renewed"),
        }
        // The next renewal would come too late to be sure of the lease.
        if Instant::now() + lease / 3 >= confirmed_until {
            return;
        }
    }
}

/// Enqueues each recurring job when it is due (once across all instances), and fails the
/// jobs whose worker died during their last attempt.
async fn schedule(shared: Arc<Shared>, gate: PoolerGate, mut stop: watch::Receiver<Option<Instant>>) {
    let mut tick = tokio::time::interval(SCHEDULER_TICK);
    loop {
        tokio::select! {
            biased;
            _ = stopping(&mut stop) => return,
            _ = tick.tick() => {}
        }
        if gate.is_closed() {
            continue;
        }
        for s in &shared.registry.schedules {
            match queue::take_schedule(&shared.db, s.kind, s.every, s.kind, &s.payload).await {
                Ok(true) => tracing::debug!(job = s.kind, "scheduled job enqueued"),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(job = s.kind, error = %faults::describe(&error), "scheduled job not enqueued")
                }
            }
        }
        match queue::fail_abandoned(&shared.db, shared.settings.max_attempts).await {
            Ok(failed) => {
                for (id, kind) in failed {
                    let span = tracing::info_span!("job", job_id = %id, job = %kind);
                    span.in_scope(|| report_failure(&id, &kind, "the worker stopped during the last attempt"));
                }
            }
            Err(error) => tracing::warn!(error = %faults::describe(&error), "abandoned jobs not checked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_about_a_second_doubling_up_to_an_hour() {
        for (attempt, nominal) in [(1, 1.0), (2, 2.0), (5, 16.0), (12, 2048.0)] {
            let delay = retry_delay(attempt).as_secs_f64();
            assert!(
                (nominal * 0.5..=nominal * 1.5).contains(&delay),
                "attempt {attempt}: {delay}"
            );
        }
        assert!(retry_delay(40) <= RETRY_MAX);
        assert!(retry_delay(40) >= RETRY_MAX / 2);
    }
}
