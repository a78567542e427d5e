//! `shipshape backup …`: SQLite backups from the command line (docs/backups.md).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{EXIT_CONFIG, EXIT_FAILURE, Format};
use crate::backup;
use crate::config::Config;

#[derive(Subcommand)]
pub enum BackupAction {
    /// Snapshot the SQLite database into BACKUP_URL, print the backup's name, keep the newest BACKUP_KEEP
    Create {
        /// Where to write instead of BACKUP_URL: a directory, file:///PATH or s3://BUCKET[/PREFIX]
        #[arg(long)]
        to: Option<String>,
    },
    /// The backups in BACKUP_URL, newest first
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write backup NAME as a new database file at PATH, checked (SHA-256, integrity_check) before it appears
    Restore {
        /// The backup, as `backup list` names it
        name: String,
        /// The database file to create; it must not exist
        #[arg(long)]
        to: PathBuf,
    },
}

impl BackupAction {
    /// `--to` of `create` stands for BACKUP_URL: it is read with the other settings.
    pub fn backup_url(&self) -> Option<&str> {
        match self {
            BackupAction::Create { to } => to.as_deref(),
            _ => None,
        }
    }
}

pub async fn run(config: Config, action: BackupAction) -> ExitCode {
    crate::telemetry::init_for_command(&config);
    let done = match action {
        BackupAction::Create { .. } => {
            if !config.database.is_sqlite() {
                eprintln!(
                    "backup create is for SQLite: PostgreSQL is backed up by its provider (docs/backups.md; \
                     scripts/pg-restore-drill.sh proves a restore)"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            let db = match super::open_database(&config) {
                Ok(db) => db,
                Err(code) => return code,
            };
            let made = backup::create(&config, &db).await;
            db.close().await;
            made.map(|made| println!("{}", made.name))
        }
        BackupAction::List { format } => list(&config, format).await,
        BackupAction::Restore { name, to } => backup::restore(&config, &name, &to)
            .await
            .map(|restored| println!("{} restored to {}", restored.name, to.display())),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("backup failed: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn list(config: &Config, format: Format) -> anyhow::Result<()> {
    let backups = backup::list(config).await?;
    let mut out = std::io::stdout().lock();
    let _ = match format {
        Format::Json => writeln!(out, "{}", serde_json::json!(backups)),
        Format::Text => backups.iter().try_for_each(|b| {
            writeln!(
                out,
                "{}  {:>12} bytes  {}  sha256:{}",
                b.name, b.size_bytes, b.created_at, b.sha256
            )
        }),
    };
    Ok(())
}
