//! A backup of a large SQLite database while writers run (bench/backup.sh; figures in
//! bench/RESULTS.md).
//!
//! Builds a database of about 1 GB (the service's schema plus a filler table of text rows),
//! then runs one writer doing what a request that writes does (a write transaction through
//! the service's writer queue: one insert) in a loop: first alone for a few seconds, then
//! while `backup::create` runs, and times each write. Then restores the backup. Prints one
//! JSON object: database and backup sizes, backup and restore times, and the writer's
//! p50/p99/longest wait in both phases.
//!
//! Run: `target/release/examples/backup_bench [WORK_DIR] [SIZE_MIB]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use shipshape::backup;
use shipshape::config::{Config, SecretUrl, StorageConfig};
use shipshape::db::Db;

/// One filler row: text that compresses about as an application's rows do.
fn filler(i: u64) -> String {
    const WORDS: [&str; 16] = [
        "invoice", "customer", "amount", "paid", "draft", "sent", "due", "acme", "ltd", "total", "note", "the", "for",
        "march", "order", "item",
    ];
    let mut state = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut text = String::with_capacity(4200);
    while text.len() < 4000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(WORDS[(state >> 60) as usize]);
        text.push(' ');
        text.push_str(&((state >> 20) % 100_000).to_string());
        text.push(' ');
    }
    text
}

/// Writes one row as a request would, for as long as `running`; the time of each write.
async fn writer(db: Db, running: Arc<AtomicBool>, tag: &'static str) -> (Vec<Duration>, usize) {
    let (mut times, mut failed, mut i) = (Vec::new(), 0, 0u64);
    while running.load(Ordering::Relaxed) {
        let started = Instant::now();
        let written = async {
            let mut tx = db.begin().await?;
            shipshape::with_tx!(&mut tx, conn => {
                sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, 'x', 0)")
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(format!("{tag}-{i}@example.com"))
                    .execute(&mut **conn)
                    .await?;
            });
            tx.commit().await
        }
        .await;
        match written {
            Ok(()) => times.push(started.elapsed()),
            Err(_) => failed += 1,
        }
        i += 1;
        // A request every millisecond or so, not a tight loop that would starve the backup.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (times, failed)
}

fn summary(mut times: Vec<Duration>, failed: usize) -> serde_json::Value {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    json!({"writes": times.len(), "failed": failed, "p50_ms": at(0.5), "p99_ms": at(0.99), "longest_ms": at(1.0)})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shipshape::install_crypto_provider();
    let work = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/backup-bench".to_owned()),
    );
    let size_mib: u64 = std::env::args().nth(2).map_or(Ok(1024), |s| s.parse())?;
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let work = std::fs::canonicalize(&work)?;
    let mut config = Config::development();
    config.database.url = SecretUrl::new(format!("sqlite://{}/bench.db", work.display()));
    config.backups.location = StorageConfig::Local(work.join("backups"));
    let db = Db::connect_lazy(&config.database)?;
    db.migrate().await?;

    let started = Instant::now();
    let Db::Sqlite(pool, _) = &db else { unreachable!() };
    sqlx::query("CREATE TABLE filler (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(pool)
        .await?;
    let rows = size_mib * 1024 * 1024 / 4100;
    for batch in (0..rows).step_by(5000) {
        let mut tx = pool.begin().await?;
        for i in batch..(batch + 5000).min(rows) {
            sqlx::query("INSERT INTO filler (id, body) VALUES ($1, $2)")
                .bind(i as i64)
                .bind(filler(i))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await?;
    let database_bytes = std::fs::metadata(work.join("bench.db"))?.len();
    eprintln!(
        "built {} MiB in {:.0} s",
        database_bytes >> 20,
        started.elapsed().as_secs_f64()
    );

    // The writer alone, then beside the backup.
    let running = Arc::new(AtomicBool::new(true));
    let alone = tokio::spawn(writer(db.clone(), running.clone(), "alone"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    running.store(false, Ordering::Relaxed);
    let (alone_times, alone_failed) = alone.await?;

    let running = Arc::new(AtomicBool::new(true));
    let beside = tokio::spawn(writer(db.clone(), running.clone(), "beside"));
    let started = Instant::now();
    let made = backup::create(&config, &db).await?;
    let backup_seconds = started.elapsed().as_secs_f64();
    running.store(false, Ordering::Relaxed);
    let (beside_times, beside_failed) = beside.await?;

    let started = Instant::now();
    backup::restore(&config, &made.name, &work.join("restored.db")).await?;
    let restore_seconds = started.elapsed().as_secs_f64();
    db.close().await;

    println!(
        "{}",
        json!({
            "database_mib": database_bytes as f64 / (1 << 20) as f64,
            "backup_mib": made.size_bytes as f64 / (1 << 20) as f64,
            "backup_seconds": backup_seconds,
            "restore_seconds": restore_seconds,
            "writer_alone": summary(alone_times, alone_failed),
            "writer_during_backup": summary(beside_times, beside_failed),
        })
    );
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
