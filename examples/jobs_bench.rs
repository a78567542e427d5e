//! The job queue's figures for bench/RESULTS.md (run by `bench/jobs.sh`, release build):
//! no-op jobs per second at 4 and 16 workers, how soon an idle worker starts a new job, and
//! what an enqueue adds to the transaction that makes it.
//!
//! `jobs_bench sqlite` uses a fresh SQLite file; `jobs_bench postgres URL` a fresh database
//! created on the server at URL (and dropped after).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shipshape::config::{Config, SecretUrl};
use shipshape::db::Db;
use shipshape::email::Mailer;
use shipshape::jobs::{self, Job, Registry, Workers, queue};
use sqlx::{Connection, Executor};

/// Jobs in each throughput run.
const JOBS: usize = 5000;
/// Idle pickups measured.
const PICKUPS: usize = 200;
/// Transactions timed with and without an enqueue.
const WRITES: usize = 1000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Noop {
    /// When it was enqueued, as microseconds since the run began (for the pickup latency).
    at: u64,
}

impl Job for Noop {
    const KIND: &'static str = "bench.noop";
}

fn registry(db: &Db, config: &Config, started: Instant, pickups: Arc<Mutex<Vec<f64>>>) -> Registry {
    let context = jobs::Context {
        db: db.clone(),
        storage: shipshape::storage::Storage::open(&config.storage).expect("storage"),
        mailer: Mailer::Log,
        config: Arc::new(config.clone()),
    };
    Registry::new(context).on(move |_, job: Noop| {
        let waited = started.elapsed().as_micros() as f64 - job.at as f64;
        if let Ok(mut pickups) = pickups.lock() {
            pickups.push(waited / 1000.0);
        }
        async { Ok(()) }
    })
}

async fn wait_until_empty(db: &Db) {
    loop {
        let status = queue::status(db).await.expect("status");
        if status.queued + status.running == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(config: Config) {
    let db = Db::connect_lazy(&config.database).expect("pool");
    db.migrate().await.expect("migrations");
    let started = Instant::now();
    let pickups = Arc::new(Mutex::new(Vec::new()));
    let mut figures = serde_json::Map::new();

    // Throughput: JOBS queued up front, then as many workers as asked drain them.
    for workers in [4, 16] {
        let mut tx = db.begin().await.expect("begin");
        for _ in 0..JOBS {
            jobs::enqueue(&mut tx, &Noop { at: 0 }).await.expect("enqueue");
        }
        tx.commit().await.expect("commit");
        let begun = Instant::now();
        let running = Workers::start(
            db.clone(),
            Default::default(),
            registry(&db, &config, started, pickups.clone()),
            &config.jobs,
            workers,
        );
        wait_until_empty(&db).await;
        let per_second = JOBS as f64 / begun.elapsed().as_secs_f64();
        running.drain(Instant::now()).await;
        figures.insert(format!("jobs_per_second_{workers}"), (per_second.round() as i64).into());
    }

    // Idle pickup: one job at a time into an idle queue, at random moments.
    pickups.lock().expect("lock").clear();
    let running = Workers::start(
        db.clone(),
        Default::default(),
        registry(&db, &config, started, pickups.clone()),
        &config.jobs,
        4,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..PICKUPS {
        // The clock starts as the enqueuing transaction begins: its commit is part of the wait.
        let at = started.elapsed().as_micros() as u64;
        let mut tx = db.begin().await.expect("begin");
        jobs::enqueue(&mut tx, &Noop { at }).await.expect("enqueue");
        tx.commit().await.expect("commit");
        wait_until_empty(&db).await;
        tokio::time::sleep(Duration::from_millis(50 + (i as u64 * 37) % 250)).await;
    }
    running.drain(Instant::now()).await;
    let mut waits = pickups.lock().expect("lock").clone();
    waits.sort_by(f64::total_cmp);
    let tenths = |ms: f64| (ms * 10.0).round() / 10.0;
    figures.insert("pickup_ms_p50".into(), tenths(percentile(&waits, 0.5)).into());
    figures.insert("pickup_ms_p99".into(), tenths(percentile(&waits, 0.99)).into());

    // An enqueue's cost: a write transaction (one small insert) alone, and with one enqueue.
    let mut alone = Vec::with_capacity(WRITES);
    let mut with_job = Vec::with_capacity(WRITES);
    for i in 0..WRITES * 2 {
        let begun = Instant::now();
        let mut tx = db.begin().await.expect("begin");
        shipshape::with_tx!(&mut tx, conn => {
            sqlx::query("INSERT INTO job_schedules (name, next_run_at) VALUES ($1, 0)")
                .bind(format!("bench-{i}"))
                .execute(&mut **conn)
                .await
                .map(drop)
        })
        .expect("write");
        if i % 2 == 1 {
            jobs::enqueue(&mut tx, &Noop { at: 0 }).await.expect("enqueue");
        }
        tx.commit().await.expect("commit");
        let micros = begun.elapsed().as_secs_f64() * 1e6;
        if i % 2 == 1 {
            with_job.push(micros)
        } else {
            alone.push(micros)
        }
    }
    alone.sort_by(f64::total_cmp);
    with_job.sort_by(f64::total_cmp);
    figures.insert("write_us_p50".into(), percentile(&alone, 0.5).round().into());
    figures.insert(
        "write_with_enqueue_us_p50".into(),
        percentile(&with_job, 0.5).round().into(),
    );
    db.close().await;
    println!("{}", serde_json::Value::Object(figures));
}

fn main() {
    shipshape::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile_dir();
    let mut config = Config::development();
    let postgres = match args.get(1).map(String::as_str) {
        Some("postgres") => {
            let admin = args.get(2).expect("jobs_bench postgres URL").clone();
            let name = format!("shipshape_jobs_bench_{}", std::process::id());
            runtime.block_on(admin_execute(&admin, &format!("CREATE DATABASE {name}")));
            let mut url = url::Url::parse(&admin).expect("URL");
            url.set_path(&name);
            config.database.url = SecretUrl::new(url.to_string());
            Some((admin, name))
        }
        _ => {
            config.database.url = SecretUrl::new(format!("sqlite://{}/bench.db", dir.display()));
            None
        }
    };
    runtime.block_on(run(config));
    if let Some((admin, name)) = postgres {
        runtime.block_on(admin_execute(&admin, &format!("DROP DATABASE {name}")));
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shipshape-jobs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn admin_execute(admin: &str, sql: &str) {
    let mut connection = sqlx::PgConnection::connect(admin).await.expect("PostgreSQL");
    connection
        .execute(sqlx::AssertSqlSafe(sql.to_owned()))
        .await
        .expect(sql);
}
