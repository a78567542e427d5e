//! SQLite backups (docs/backups.md): a consistent snapshot taken while the service keeps
//! serving, compressed, stored with its SHA-256 in `BACKUP_URL`; the list; a restore that
//! checks everything before a file appears at its target. PostgreSQL is backed up by its
//! provider (`scripts/pg-restore-drill.sh` proves a restore).

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use axum::body::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, Connection};
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::db::{self, Db, MIGRATOR};
use crate::storage::Storage;

/// A backup's compressed snapshot is `NAME.sqlite.gz`; `NAME.json` beside it (written last,
/// so a listed backup is a complete one) holds what `backup list` shows.
const DATA: &str = ".sqlite.gz";
const MANIFEST: &str = ".json";
/// Read and written a chunk at a time: a backup of any size takes this much memory.
const CHUNK: usize = 1 << 20;

/// A backup as `backup list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Backup {
    /// Its UTC time, `YYYYMMDDTHHMMSSZ`: names sort as times do.
    pub name: String,
    /// Of the stored, compressed file.
    pub size_bytes: u64,
    /// SHA-256 of the stored, compressed file, lower-case hex.
    pub sha256: String,
    pub created_at: String,
}

/// What is stored beside each backup.
#[derive(Serialize, Deserialize)]
struct Manifest {
    #[serde(flatten)]
    backup: Backup,
    /// The newest migration applied in the snapshot: an older release refuses to restore it.
    schema_version: i64,
}

/// The scheduled backup (`BACKUP_INTERVAL_HOURS`, `app::jobs`).
#[derive(Serialize, Deserialize)]
pub struct CreateBackup;

impl crate::jobs::Job for CreateBackup {
    const KIND: &'static str = "backup.create";
    // A snapshot of a large database, compressed and uploaded, takes minutes, not hours.
    const TIMEOUT: Duration = Duration::from_secs(2 * 3600);
}

/// Takes a backup of the SQLite database `db` into `BACKUP_URL`, then keeps the newest
/// `BACKUP_KEEP`. Writers go on meanwhile: the snapshot is one read transaction. A second
/// backup while one runs is refused (one lock file beside the database).
pub async fn create(config: &Config, db: &Db) -> anyhow::Result<Backup> {
    let Db::Sqlite(pool, _) = db else {
        bail!("PostgreSQL is backed up by its provider: see docs/backups.md");
    };
    let database = pool.connect_options().get_filename().to_owned();
    // Held, not read: closing the file releases the lock.
    let lock = db::lock_file(&database, "-backup.lock")
        .with_context(|| format!("cannot open the backup lock beside {}", database.display()))?;
    lock.try_lock()
        .map_err(|_| anyhow!("another backup of {} is running", database.display()))?;
    let store = Storage::open(&config.backups.location)?;
    let name = free_name(&store).await?;
    let folder = database.parent().map(FsPath::to_path_buf).unwrap_or_default();
    let snapshot = Scratch::new(&folder, &name, "snapshot")?;
    let compressed = Scratch::new(&folder, &name, "gz")?;

    sqlx::query("VACUUM INTO $1")
        .bind(snapshot.path.to_string_lossy().into_owned())
        .execute(pool)
        .await
        .context("the snapshot (VACUUM INTO) failed")?;
    let schema_version: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?;
    let (from, to) = (snapshot.path.clone(), compressed.path.clone());
    let (size_bytes, sha256) = tokio::task::spawn_blocking(move || gzip(&from, &to)).await??;
    drop(snapshot);

    let mut writer = store.writer(Path::from(format!("{name}{DATA}")));
    let mut file = tokio::fs::File::open(&compressed.path).await?;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        if (&mut file).take(CHUNK as u64).read_to_end(&mut chunk).await? == 0 {
            break;
        }
        writer.write(Bytes::from(chunk)).await?;
    }
    writer.finish().await?;
    let backup = Backup {
        created_at: crate::db::rfc3339(crate::db::now_micros()),
        name,
        size_bytes,
        sha256,
    };
    let manifest = serde_json::to_vec(&Manifest {
        backup: backup.clone(),
        schema_version,
    })?;
    store.put(&manifest_key(&backup.name), manifest).await?;
    record_success();
    prune(&store, config.backups.keep).await?;
    Ok(backup)
}

/// Every complete backup in `BACKUP_URL`, newest first.
pub async fn list(config: &Config) -> anyhow::Result<Vec<Backup>> {
    Ok(manifests(&Storage::open(&config.backups.location)?)
        .await?
        .into_iter()
        .map(|m| m.backup)
        .collect())
}

/// Writes backup `name` as a database file at `to`, which must not exist. The file appears
/// only once the checksum, the decompression and `PRAGMA integrity_check` have passed, and
/// only if this binary knows every migration in it.
pub async fn restore(config: &Config, name: &str, to: &FsPath) -> anyhow::Result<Backup> {
    ensure!(
        !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.'),
        "{name:?} is not a backup name (see `shipshape backup list`)"
    );
    ensure!(
        std::fs::symlink_metadata(to).is_err(),
        "{} exists: a restore writes a new file, never over one",
        to.display()
    );
    let store = Storage::open(&config.backups.location)?;
    let manifest = match store.get(&manifest_key(name)).await {
        Ok(bytes) => serde_json::from_slice::<Manifest>(&bytes).context("the backup's manifest is damaged")?,
        Err(crate::error::ApiError::NotFound) => bail!("no backup named {name} (see `shipshape backup list`)"),
        Err(e) => bail!("cannot read the backup: {e}"),
    };
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    ensure!(
        manifest.schema_version <= known,
        "backup {name} was made by a newer release: its database has migration {}, and this binary knows up to {known}. \
         Restore it with that release (or a later one)",
        manifest.schema_version
    );

    let folder = match to.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let compressed = Scratch::new(&folder, name, "restore.gz")?;
    let database = Scratch::new(&folder, name, "restore")?;
    let (_, mut bytes) = store.read(&Path::from(format!("{name}{DATA}"))).await?;
    let mut file = tokio::fs::File::create(&compressed.path).await?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = bytes.try_next().await? {
        hasher.update(&chunk);
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    drop(file);
    let sha256 = format!("{:x}", hasher.finalize());
    ensure!(
        sha256 == manifest.backup.sha256,
        "backup {name} is damaged: its SHA-256 is {sha256}, not the {} recorded when it was made",
        manifest.backup.sha256
    );
    let (from, into) = (compressed.path.clone(), database.path.clone());
    tokio::task::spawn_blocking(move || gunzip(&from, &into))
        .await?
        .with_context(|| format!("backup {name} is damaged: it does not decompress"))?;
    integrity_check(&database.path)
        .await
        .with_context(|| format!("backup {name} is damaged"))?;
    // A hard link fails if `to` appeared meanwhile: never an overwrite.
    std::fs::hard_link(&database.path, to).with_context(|| format!("cannot create {}", to.display()))?;
    Ok(manifest.backup)
}

/// Sets `backup_last_success_timestamp_seconds` from the newest backup there is (0 when
/// none): called at start, so an alert on the metric sees a value from the first scrape.
pub async fn export_last_success(config: Arc<Config>) {
    if !config.database.is_sqlite() {
        metrics::gauge!("backup_last_success_timestamp_seconds").set(0.0);
        return;
    }
    let newest = match list(&config).await {
        Ok(backups) => backups.first().and_then(|b| {
            time::OffsetDateTime::parse(&b.created_at, &time::format_description::well_known::Rfc3339).ok()
        }),
        Err(e) => {
            tracing::warn!(error = format!("{e:#}"), "could not list the backups");
            None
        }
    };
    metrics::gauge!("backup_last_success_timestamp_seconds")
        .set(newest.map_or(0.0, |time| time.unix_timestamp() as f64));
}

fn record_success() {
    metrics::gauge!("backup_last_success_timestamp_seconds").set(crate::db::now_micros() as f64 / 1e6);
}

fn manifest_key(name: &str) -> Path {
    Path::from(format!("{name}{MANIFEST}"))
}

/// The manifests of every complete backup, newest first. A manifest that does not read is
/// left out with a warning, so one damaged backup does not hide the others.
async fn manifests(store: &Storage) -> anyhow::Result<Vec<Manifest>> {
    let mut found = Vec::new();
    for key in store.keys().await? {
        if key.as_ref().ends_with(MANIFEST) {
            let bytes = store.get(&key).await?;
            match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(manifest) => found.push(manifest),
                Err(e) => tracing::warn!(%key, error = %e, "a backup's manifest is damaged: left out"),
            }
        }
    }
    found.sort_by(|a, b| b.backup.name.cmp(&a.backup.name));
    Ok(found)
}

/// Deletes every backup but the newest `keep`: its manifest first, so a half-deleted backup
/// is never listed.
async fn prune(store: &Storage, keep: usize) -> anyhow::Result<()> {
    for old in manifests(store).await?.into_iter().skip(keep) {
        store.delete(&manifest_key(&old.backup.name)).await?;
        store.delete(&Path::from(format!("{}{DATA}", old.backup.name))).await?;
    }
    Ok(())
}

/// This second's name, or the next second's if a backup already has this one.
async fn free_name(store: &Storage) -> anyhow::Result<String> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    loop {
        let name = time::OffsetDateTime::now_utc().format(format)?;
        if !store.exists(&manifest_key(&name)).await? {
            return Ok(name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Compresses `from` into `to`; the size and SHA-256 of what it wrote.
fn gzip(from: &FsPath, to: &FsPath) -> anyhow::Result<(u64, String)> {
    /// Hashes and counts what goes through it.
    struct Hashing<W> {
        inner: W,
        hasher: Sha256,
        written: u64,
    }
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let output = Hashing {
        inner: std::io::BufWriter::new(std::fs::File::create(to)?),
        hasher: Sha256::new(),
        written: 0,
    };
    // The fastest level: a SQLite file's pages compress well at any level, and a faster
    // backup holds its snapshot's disk space for less time.
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::fast());
    std::io::copy(&mut std::fs::File::open(from)?, &mut encoder)?;
    let mut output = encoder.finish()?;
    output.flush()?;
    output.inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((output.written, format!("{:x}", output.hasher.finalize())))
}

fn gunzip(from: &FsPath, to: &FsPath) -> anyhow::Result<()> {
    let mut decoder = flate2::read::GzDecoder::new(std::io::BufReader::new(std::fs::File::open(from)?));
    let mut output = std::io::BufWriter::new(std::fs::File::create(to)?);
    std::io::copy(&mut decoder, &mut output)?;
    output.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// `PRAGMA integrity_check` on the file at `path`, opened read-only.
async fn integrity_check(path: &FsPath) -> anyhow::Result<()> {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await
        .context("it is not a SQLite database")?;
    let problems: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await?;
    ensure!(problems == ["ok"], "PRAGMA integrity_check: {}", problems.join("; "));
    Ok(())
}

/// A work file beside the database or the restore's target (so a rename or link stays on one
/// filesystem), deleted when dropped, whatever happened.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(folder: &FsPath, name: &str, what: &str) -> anyhow::Result<Scratch> {
        std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
        let path = folder.join(format!(".backup-{name}-{}.{what}", uuid::Uuid::new_v4().simple()));
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
