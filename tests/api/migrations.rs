//! Migrations an operator can see, trust and undo: `migrate status` and `migrate revert`
//! through the binary, every down migration restoring the schema exactly, a failed migration
//! leaving nothing behind, two `migrate` processes at once, and `/readyz` reading the schema.

use std::process::Output;

use serde_json::Value;
use shipshape::config::SecretUrl;
use shipshape::db::{Db, MIGRATOR};

use crate::cli::{check_deploy, ids, run};
use crate::helpers::{Backend, Options, TestApp, fresh_postgres_database, table_exists, test_config};
use crate::on_both_databases;

on_both_databases!(
    status_and_revert_through_the_binary,
    every_down_migration_restores_the_schema_before_it,
    a_failed_migration_leaves_nothing_behind,
    two_migrates_at_once_apply_each_migration_once,
    readiness_is_503_while_migrations_are_pending_and_200_when_the_database_is_ahead,
);

/// A database of this backend no one has touched yet: its URL (a SQLite file not created).
async fn blank_database(backend: &Backend, dir: &tempfile::TempDir) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}/data/app.db", dir.path().display()),
        Backend::Postgres(admin) => fresh_postgres_database(admin).await,
    }
}

async fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env)
    })
    .await
    .expect("binary ran")
}

async fn status(url: &str) -> Vec<Value> {
    let output = cli(&["migrate", "status", "--format", "json"], &[("DATABASE_URL", url)]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let body: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    body["migrations"].as_array().expect("migrations").clone()
}

fn states(status: &[Value]) -> Vec<String> {
    status.iter().map(|m| m["state"].as_str().unwrap().to_owned()).collect()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The pool on `url`, for poking at `_sqlx_migrations` as an operator (or a bug) would.
fn database(url: &str) -> Db {
    let mut config = shipshape::config::Config::development().database;
    config.url = SecretUrl::new(url);
    Db::connect_lazy(&config).expect("pool")
}

async fn execute(db: &Db, sql: &str) {
    shipshape::with_db!(db, pool => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(pool).await.map(drop))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A byte string literal in the backend's SQL.
fn blob(db: &Db, hex: &str) -> String {
    match db {
        Db::Sqlite(..) => format!("x'{hex}'"),
        Db::Postgres(_) => format!("decode('{hex}', 'hex')"),
    }
}

/// Records a migration this binary does not have, as a newer release would have.
fn newer_release(db: &Db) -> String {
    format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29990101000000, 'from a newer release', TRUE, {}, 0)",
        blob(db, "00")
    )
}

async fn status_and_revert_through_the_binary(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = blank_database(&backend, &dir).await;
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap();

    // Never migrated: everything pending, and a SQLite file is not created by looking.
    let before = status(&url).await;
    assert!(
        !before.is_empty() && states(&before).iter().all(|s| s == "pending"),
        "{before:?}"
    );
    assert!(before.iter().all(|m| m["applied_at"].is_null()));
    if matches!(backend, Backend::Sqlite) {
        assert!(
            !dir.path().join("data/app.db").exists(),
            "status created the database file"
        );
    }

    let applied = cli(&["migrate"], &[("DATABASE_URL", &url)]).await;
    assert!(applied.status.success(), "{:?}", text(&applied));
    let after = status(&url).await;
    assert!(states(&after).iter().all(|s| s == "applied"), "{after:?}");
    let applied_at = after[0]["applied_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(applied_at, &time::format_description::well_known::Rfc3339).is_ok(),
        "{applied_at}"
    );
    let table = cli(&["migrate", "status"], &[("DATABASE_URL", &url)]).await;
    assert!(text(&table).0.contains(&format!("{latest}")) && text(&table).0.contains("applied"));

    // Production asks for --yes, and changes nothing without it.
    let refused = cli(
        &["migrate", "revert"],
        &[("DATABASE_URL", &url), ("APP_ENV", "production")],
    )
    .await;
    assert_eq!(refused.status.code(), Some(2), "{:?}", text(&refused));
    assert!(text(&refused).1.contains("--yes"));
    assert!(states(&status(&url).await).iter().all(|s| s == "applied"));

    let db = database(&url);
    let before_revert = schema(&db).await;
    let reverted = cli(
        &["migrate", "revert", "--yes"],
        &[("DATABASE_URL", &url), ("APP_ENV", "production")],
    )
    .await;
    let (stdout, stderr) = text(&reverted);
    assert!(reverted.status.success(), "{stderr}");
    assert!(stdout.contains(&format!("reverted {latest}")), "{stdout}");
    assert_ne!(schema(&db).await, before_revert, "the down migration ran");
    assert_eq!(states(&status(&url).await).last().unwrap(), "pending");

    // Back up; then the database ahead of the binary, and a file changed after it was applied.
    assert!(cli(&["migrate"], &[("DATABASE_URL", &url)]).await.status.success());
    execute(&db, &newer_release(&db)).await;
    let changed = format!(
        "UPDATE _sqlx_migrations SET checksum = {} WHERE version = {latest}",
        blob(&db, "01")
    );
    execute(&db, &changed).await;
    let mixed = status(&url).await;
    let state_of = |version: i64| {
        mixed
            .iter()
            .find(|m| m["version"] == version)
            .map(|m| m["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state_of(29990101000000).as_deref(), Some("unknown to this binary"));
    assert_eq!(state_of(latest).as_deref(), Some("checksum mismatch"));
    let (_, report) = check_deploy(&[("DATABASE_URL", &url)], &["--connect"]);
    assert!(ids(&report).contains(&"W015".to_owned()), "{report}");

    // This binary cannot undo what it does not know.
    let unknown = cli(&["migrate", "revert"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown).1.contains("29990101000000"), "{:?}", text(&unknown));
    db.close().await;
}

/// The schema as the database describes it: tables, columns and their types, constraints,
/// indexes and triggers; the migrations table left out.
async fn schema(db: &Db) -> Vec<String> {
    let queries: &[&str] = match db {
        Db::Sqlite(..) => &[
            "SELECT type || ' ' || name || ' ' || tbl_name || ' ' || coalesce(sql, '') FROM sqlite_master \
             WHERE name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY type, name",
        ],
        Db::Postgres(_) => &[
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || \
             coalesce(column_default, '') FROM information_schema.columns WHERE table_schema = 'public' \
             AND table_name <> '_sqlx_migrations' ORDER BY table_name, column_name",
            "SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> '_sqlx_migrations' \
             ORDER BY 1",
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations' \
             ORDER BY indexname",
            "SELECT event_object_table || ' ' || trigger_name || ' ' || action_statement \
             FROM information_schema.triggers WHERE trigger_schema = 'public' ORDER BY 1",
        ],
    };
    let mut lines = Vec::new();
    for sql in queries {
        let rows: Vec<String> =
            shipshape::with_db!(db, pool => sqlx::query_scalar(*sql).fetch_all(pool).await).unwrap();
        lines.extend(rows);
    }
    lines
}

async fn every_down_migration_restores_the_schema_before_it(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = blank_database(&backend, &dir).await;
    let db = database(&url);
    let mut previous = 0;
    for migration in MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()) {
        let before = schema(&db).await;
        shipshape::with_db!(&db, pool => MIGRATOR.run_to(migration.version, pool).await).unwrap();
        let applied = schema(&db).await;
        assert_ne!(applied, before, "{} changes the schema", migration.version);
        shipshape::with_db!(&db, pool => MIGRATOR.undo(pool, previous).await)
            .unwrap_or_else(|e| panic!("{} reverts: {e}", migration.version));
        assert_eq!(
            schema(&db).await,
            before,
            "{}'s down migration restores the schema before it",
            migration.version
        );
        shipshape::with_db!(&db, pool => MIGRATOR.run_to(migration.version, pool).await).unwrap();
        previous = migration.version;
    }
    db.close().await;
}

async fn a_failed_migration_leaves_nothing_behind(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = blank_database(&backend, &dir).await;
    let db = database(&url);
    assert!(db.migrate().await.is_ok());
    // The real migrations, then one that breaks halfway through.
    let folder = dir.path().join("migrations");
    std::fs::create_dir_all(&folder).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    std::fs::write(
        folder.join("29990101000000_half_done.up.sql"),
        "CREATE TABLE half_done (id BIGINT);\nINSERT INTO half_done VALUES (1);\nCREATE TABLE broken (;\n",
    )
    .unwrap();
    std::fs::write(
        folder.join("29990101000000_half_done.down.sql"),
        "DROP TABLE half_done;\n",
    )
    .unwrap();
    let mut migrator = sqlx::migrate::Migrator::new(folder.as_path()).await.unwrap();
    migrator.set_locking(false);

    let error = db
        .migrate_with(&migrator, true)
        .await
        .expect_err("the broken migration fails");
    let message = error.to_string();
    assert!(message.contains("29990101000000_half_done.up.sql"), "{message}");
    assert!(message.contains("syntax"), "the database's error: {message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        !table_exists(&db, "half_done").await,
        "nothing of the failed migration stays"
    );
    let status = db.migration_status().await.unwrap();
    assert!(status.iter().all(|m| m.version != 29990101000000), "not recorded");
    assert!(table_exists(&db, "users").await, "the earlier migrations stay");
    db.close().await;
}

async fn two_migrates_at_once_apply_each_migration_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = blank_database(&backend, &dir).await;
    let env = [("DATABASE_URL", url.as_str())];
    let (first, second) = tokio::join!(cli(&["migrate"], &env), cli(&["migrate"], &env));
    let outputs = [text(&first), text(&second)];
    assert!(first.status.success() && second.status.success(), "{outputs:?}");
    let applied = outputs.iter().filter(|(out, _)| out.contains("applied")).count();
    let nothing = outputs
        .iter()
        .filter(|(out, _)| out.contains("no pending migrations"))
        .count();
    assert_eq!((applied, nothing), (1, 1), "{outputs:?}");
}

/// The app on a migrated database that `tamper` then changes, without migrating at start.
async fn app_after(backend: &Backend, tamper: impl Fn(&Db) -> String) -> (TestApp, Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(backend, &dir).await;
    let db = database(config.database.url.expose());
    db.migrate().await.unwrap();
    execute(&db, &tamper(&db)).await;
    db.close().await;
    config.run_migrations_on_start = false;
    let options = Options {
        backend: backend.clone(),
        extra_routes: None,
    };
    let app = TestApp::start_with_config(options, config, dir).await;
    let ready = app.get("/readyz", None).await;
    let status = ready.status().as_u16();
    let mut body: Value = ready.json().await.unwrap();
    body["http_status"] = status.into();
    (app, body)
}

async fn readiness_is_503_while_migrations_are_pending_and_200_when_the_database_is_ahead(backend: Backend) {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap();
    // One migration behind: the release step did not run.
    let (app, body) = app_after(&backend, |_| {
        format!("DELETE FROM _sqlx_migrations WHERE version = {latest}")
    })
    .await;
    assert_eq!(body["http_status"], 503, "{body}");
    assert_eq!(body["checks"]["migrations"]["status"], "pending", "{body}");
    assert_eq!(body["checks"]["migrations"]["pending"][0], latest, "{body}");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    app.stop().await;

    // Ahead: a rolled-back release; still ready (migrations are expand-then-contract).
    let (app, body) = app_after(&backend, newer_release).await;
    assert_eq!(body["http_status"], 200, "{body}");
    assert_eq!(body["checks"]["migrations"]["status"], "ahead", "{body}");
    app.stop().await;
}

#[test]
fn check_deploy_connect_reports_pending_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/app.db", dir.path().display());
    let (code, report) = check_deploy(&[("DATABASE_URL", &url)], &["--connect"]);
    assert!(ids(&report).contains(&"E006".to_owned()), "{report}");
    assert_eq!(code, Some(1));
}
