//! Backups (docs/backups.md): SQLite snapshots taken while writers run, restored to exactly
//! their moment and checked; damaged, unknown, newer and concurrent backups refused with
//! nothing written; retention; S3; the command line; the PostgreSQL restore drill.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shipshape::backup::{self, Backup};
use shipshape::config::{Config, StorageConfig};
use shipshape::db::Db;

use crate::helpers::*;
use crate::infra::{S3Server, files_under};

const BIN: &str = env!("CARGO_BIN_EXE_shipshape");

/// An app on SQLite whose backups go to a directory of the test's.
async fn app_with_backups(keep: usize) -> (TestApp, tempfile::TempDir) {
    let backups = tempfile::tempdir().unwrap();
    let location = StorageConfig::Local(backups.path().to_owned());
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.backups.location = location;
        c.backups.keep = keep;
    })
    .await;
    (app, backups)
}

fn database_file(app: &TestApp) -> PathBuf {
    let url = app.state.config.database.url.expose().to_owned();
    PathBuf::from(url.trim_start_matches("sqlite://"))
}

async fn emails(db: &Db) -> Vec<String> {
    shipshape::with_db!(db, pool => sqlx::query_scalar("SELECT email FROM users ORDER BY email").fetch_all(pool).await)
        .unwrap()
}

/// The emails in the database file at `path`.
async fn emails_in(path: &Path) -> Vec<String> {
    let config = shipshape::config::DatabaseConfig {
        url: shipshape::config::SecretUrl::new(format!("sqlite://{}", path.display())),
        ..Config::development().database
    };
    let db = Db::connect_lazy(&config).unwrap();
    let found = emails(&db).await;
    db.close().await;
    found
}

/// `shipshape migrate status` on the database file at `path`: its output, after asserting it
/// exits 0 with nothing pending.
fn migrate_status(path: &Path) -> String {
    let output = Command::new(BIN)
        .args(["migrate", "status"])
        .env_clear()
        .env("DATABASE_URL", format!("sqlite://{}", path.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!text.contains("pending"), "{text}");
    text
}

async fn seed(db: &Db, rows: usize) {
    // Filler accounts straight into the table: a database of some megabytes, so the snapshot
    // takes long enough for the writers to run beside it.
    let mut tx = db.begin().await.unwrap();
    shipshape::with_tx!(&mut tx, conn => {
        for i in 0..rows {
            sqlx::query("INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)")
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(format!("seed-{i:06}@example.com"))
                .bind("x".repeat(400))
                .bind(i as i64)
                .execute(&mut **conn)
                .await
                .unwrap();
        }
    });
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_writers_run_restores_to_exactly_its_moment() {
    let (app, _backups) = app_with_backups(14).await;
    let db = app.state.database().unwrap().clone();
    seed(&db, 50_000).await;
    let before = emails(&db).await;

    // Writers: signups through the API, one after another, for as long as the backup runs.
    let running = Arc::new(AtomicBool::new(true));
    let writer = {
        let (client, url, running) = (app.client.clone(), app.url("/api/v1/auth/signup"), running.clone());
        tokio::spawn(async move {
            let (mut statuses, mut longest) = (Vec::new(), Duration::ZERO);
            let mut i = 0;
            while running.load(Ordering::SeqCst) || i < 3 {
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .json(&json!({"email": format!("writer-{i}@example.com"), "password": PASSWORD}))
                    .send()
                    .await
                    .unwrap();
                longest = longest.max(started.elapsed());
                statuses.push(response.status().as_u16());
                i += 1;
            }
            (statuses, longest)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let made: Backup = backup::create(&app.state.config, &db).await.expect("backup");
    let after_backup = emails(&db).await;
    running.store(false, Ordering::SeqCst);
    let (statuses, longest) = writer.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 201),
        "every write succeeded: {statuses:?}"
    );
    eprintln!(
        "{} signups ran beside the backup; the longest took {} ms",
        statuses.len(),
        longest.as_millis()
    );

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("restored.db");
    backup::restore(&app.state.config, &made.name, &target)
        .await
        .expect("restore");
    let restored = emails_in(&target).await;
    // Everything written before the backup began, nothing written after it returned, and
    // every row it has is a row the live database has.
    assert!(before.iter().all(|e| restored.contains(e)));
    assert!(restored.iter().all(|e| after_backup.contains(e)));
    assert!(restored.len() >= before.len() && restored.len() <= after_backup.len());
    let writes_after = emails(&db).await;
    assert!(
        writes_after.len() > restored.len(),
        "the writers went on after the backup"
    );
    migrate_status(&target);
    assert_eq!(
        files_under(dir.path()),
        ["restored.db"],
        "no work file left beside the target"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_restore_is_exactly_the_backup_and_damage_is_refused_with_nothing_written() {
    let (app, backups) = app_with_backups(14).await;
    let db = app.state.database().unwrap().clone();
    app.signup("kept@example.com").await;
    let made = backup::create(&app.state.config, &db).await.unwrap();
    app.signup("later@example.com").await;
    let config = &app.state.config;
    let dir = tempfile::tempdir().unwrap();

    let exact = dir.path().join("exact.db");
    backup::restore(config, &made.name, &exact).await.unwrap();
    assert_eq!(emails_in(&exact).await, ["kept@example.com"]);
    assert!(migrate_status(&exact).contains("applied"));

    // The target must not exist, even as a dangling link.
    let error = backup::restore(config, &made.name, &exact).await.unwrap_err();
    assert!(format!("{error:#}").contains("exists"), "{error:#}");
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
    assert!(backup::restore(config, &made.name, &link).await.is_err());

    for (what, name) in [("unknown", "20000101T000000Z"), ("a path", "../etc/passwd")] {
        let error = backup::restore(config, name, &dir.path().join("x.db"))
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("backup"), "{what}: {error:#}");
    }

    // One flipped byte, then a truncated file: refused by the checksum, nothing at the target.
    let data = backups.path().join(format!("{}.sqlite.gz", made.name));
    let original = std::fs::read(&data).unwrap();
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    for damaged in [flipped, original[..original.len() / 2].to_vec()] {
        std::fs::write(&data, damaged).unwrap();
        let target = dir.path().join("damaged.db");
        let error = backup::restore(config, &made.name, &target).await.unwrap_err();
        assert!(format!("{error:#}").contains("damaged"), "{error:#}");
        assert!(!target.exists(), "nothing at the target");
    }
    let mut left: Vec<String> = files_under(dir.path());
    left.sort();
    assert_eq!(left, ["exact.db", "link.db"], "no work file left");
    app.stop().await;
}

#[tokio::test]
async fn retention_keeps_the_newest_and_a_second_backup_at_once_is_refused() {
    let (app, backups) = app_with_backups(2).await;
    let db = app.state.database().unwrap().clone();
    let config = &app.state.config;
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(backup::create(config, &db).await.unwrap().name);
    }
    let listed: Vec<String> = backup::list(config)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(
        listed,
        [names[2].clone(), names[1].clone()],
        "the newest two, newest first"
    );
    assert_eq!(
        files_under(backups.path()).len(),
        4,
        "two backups, each a file and its manifest"
    );
    // A damaged manifest hides no other backup.
    std::fs::write(backups.path().join("20000101T000000Z.json"), b"{not json").unwrap();
    assert_eq!(backup::list(config).await.unwrap().len(), 2);
    std::fs::remove_file(backups.path().join("20000101T000000Z.json")).unwrap();

    // A backup running (its lock held): the second is refused, and leaves nothing.
    let lock = shipshape::db::lock_file(&database_file(&app), "-backup.lock").unwrap();
    lock.try_lock().unwrap();
    let error = backup::create(config, &db).await.unwrap_err();
    assert!(format!("{error:#}").contains("another backup"), "{error:#}");
    drop(lock);
    assert_eq!(files_under(backups.path()).len(), 4);
    app.stop().await;
}

#[tokio::test]
async fn a_backup_made_by_a_newer_release_is_refused_and_says_so() {
    let (app, backups) = app_with_backups(14).await;
    let db = app.state.database().unwrap().clone();
    let made = backup::create(&app.state.config, &db).await.unwrap();
    let manifest = backups.path().join(format!("{}.json", made.name));
    let mut fields: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    fields["schema_version"] = json!(99_991_231_000_000i64);
    std::fs::write(&manifest, fields.to_string()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let error = backup::restore(&app.state.config, &made.name, &dir.path().join("new.db"))
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("newer release"), "{error:#}");
    assert!(files_under(dir.path()).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn backups_go_through_s3_and_an_unreachable_target_fails_keeping_the_old_ones() {
    let mut server = S3Server::start().await;
    let location = server.storage("backups");
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.backups.location = location).await;
    let db = app.state.database().unwrap().clone();
    app.signup("s3@example.com").await;
    let made = backup::create(&app.state.config, &db).await.unwrap();
    assert_eq!(
        server.objects(),
        [
            format!("backups/{}.json", made.name),
            format!("backups/{}.sqlite.gz", made.name)
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    backup::restore(&app.state.config, &made.name, &dir.path().join("s3.db"))
        .await
        .unwrap();
    assert_eq!(emails_in(&dir.path().join("s3.db")).await, ["s3@example.com"]);

    server.stop();
    let started = Instant::now();
    assert!(backup::create(&app.state.config, &db).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        app.get("/readyz", None).await.status(),
        200,
        "the service is unaffected"
    );
    server.resume().await;
    let listed = backup::list(&app.state.config).await.unwrap();
    assert_eq!(listed.len(), 1, "the old backup stays");
    assert_eq!(listed[0].name, made.name);
    app.stop().await;
}

#[test]
fn the_command_line_creates_lists_and_restores_and_postgres_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(dir.path()).env_clear();
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let backups = dir.path().join("elsewhere");
    let to = format!("file://{}", backups.display());
    assert!(run(&["migrate"], &[]).status.success());
    let created = run(&["backup", "create", "--to", &to], &[]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let name = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    assert_eq!(name.len(), "20261207T120000Z".len(), "{name}");

    let listed = run(&["backup", "list", "--format", "json"], &[("BACKUP_URL", &to)]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["name"], name.as_str());
    let keys: Vec<&str> = listed[0].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["created_at", "name", "sha256", "size_bytes"]);

    let restored = run(
        &["backup", "restore", &name, "--to", "restored.db"],
        &[("BACKUP_URL", &to)],
    );
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(dir.path().join("restored.db").exists());
    let again = run(
        &["backup", "restore", &name, "--to", "restored.db"],
        &[("BACKUP_URL", &to)],
    );
    assert_eq!(again.status.code(), Some(1));

    let postgres = run(
        &["backup", "create"],
        &[("DATABASE_URL", "postgres://app@127.0.0.1:1/app")],
    );
    assert_eq!(postgres.status.code(), Some(2));
    let said = String::from_utf8_lossy(&postgres.stderr);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains("provider"), "{said}");
}

#[tokio::test]
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL")]
async fn the_postgres_restore_drill_restores_counts_and_drops_its_scratch_database() {
    let app = TestApp::spawn(Backend::Postgres(postgres_admin())).await;
    app.signup("drill@example.com").await;
    // example-domain:begin
    let token = app.signup("drill2@example.com").await;
    app.create_invoice(&token, 100).await;
    // example-domain:end
    let users = emails(app.state.database().unwrap()).await.len();
    let url = app.state.config.database.url.expose().to_owned();
    let output = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-restore-drill.sh"))
        .arg(&url)
        .env("SHIPSHAPE_BIN", BIN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.lines().any(|l| l == format!("users {users}")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("_sqlx_migrations ")), "{text}");
    let admin = postgres_admin();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE 'shipshape_drill_%'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "the scratch database is dropped");
    app.stop().await;
}
