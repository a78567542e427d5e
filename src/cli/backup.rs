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
        BackupAction::Create { .. } => create(&config).await,
        BackupAction::List { format } => list(&config, format).await,
        BackupAction::Restore { name, to } => restore(&config, &name, &to).await,
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(Refusal::Config(message)) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Refusal::Failed(error)) => {
            eprintln!("backup failed: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Why a command did nothing: a configuration it cannot work with (exit 2), or a failure (1).
enum Refusal {
    Config(&'static str),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Refusal {
    fn from(error: anyhow::Error) -> Refusal {
        Refusal::Failed(error)
    }
}

async fn create(config: &Config) -> Result<(), Refusal> {
    if !config.database.is_sqlite() {
        return Err(Refusal::Config(
            "backup create is for SQLite: PostgreSQL is backed up by its provider (docs/backups.md; scripts/pg-restore-drill.sh proves a restore)",
        ));
    }
    let db = crate::db::Db::connect_lazy(&config.database).map_err(|e| Refusal::Failed(e.into()))?;
    let made = backup::create(config, &db).await;
    db.close().await;
    println!("{}", made?.name);
    Ok(())
}

async fn restore(config: &Config, name: &str, to: &std::path::Path) -> Result<(), Refusal> {
    let restored = backup::restore(config, name, to).await?;
    println!("{} restored to {}", restored.name, to.display());
    Ok(())
}

async fn list(config: &Config, format: Format) -> Result<(), Refusal> {
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
