//! The command line: `serve` (default), `migrate`, `check --deploy`, `healthcheck`,
//! `compress-static`, `worker`, `jobs` (in `cli/jobs.rs`), `user` (in `cli/user.rs`). Parses the configuration once and hands it to
//! the command.

mod backup;
mod jobs;
mod user;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::app;
use crate::checks::{self, Report, Severity};
use crate::config::DatabaseConfig;
use crate::config::postgres::connect_options;
use crate::config::{AppEnv, Config, RateSetting, Settings};
use crate::db::postgres::{self, Pooling};
use crate::db::{self, Db};
use crate::server::{self, Application};
use crate::telemetry;

#[derive(Parser)]
#[command(
    name = "shipshape",
    version,
    about = "A production-ready web service: HTTP API, migrations and deploy checks."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

/// The command line with a flag for every rate limit (declared beside their routes, listed
/// by `app::rate_limits`), each also read from its environment variable.
fn parse_arguments() -> Cli {
    let limits = app::rate_limits();
    let matches = Cli::command()
        .args(limits.iter().map(RateSetting::arg))
        .get_matches_from(arguments());
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    for limit in &limits {
        if let Some(value) = matches.get_one::<String>(limit.var) {
            cli.settings.rate_limits.insert(limit.var, value.clone());
        }
    }
    cli
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP server (the default)
    Serve,
    /// Apply pending database migrations, print them, and exit (the release step); or see or undo them
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Judge the configuration by production rules; exit 1 if any error is found
    Check {
        /// Run the deployment checks (required; kept for familiarity with Django)
        #[arg(long, required = true)]
        deploy: bool,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Also try to reach the database and Redis
        #[arg(long)]
        connect: bool,
    },
    /// GET /healthz on this machine's port; exit 0 on 200 within 2 s (for Docker HEALTHCHECK)
    Healthcheck,
    /// Write .gz and .br copies beside each text asset (default dir: STATIC_DIR)
    CompressStatic {
        /// Folder to compress
        dir: Option<std::path::PathBuf>,
    },
    /// Run the job workers and the scheduler without the public HTTP server
    Worker,
    /// See the job queue, and put failed jobs back in it
    Jobs {
        #[command(subcommand)]
        action: jobs::JobsAction,
    },
    /// Back up the SQLite database, list the backups, restore one (docs/backups.md)
    Backup {
        #[command(subcommand)]
        action: backup::BackupAction,
    },
    /// Create an account (the first admin), change its role, disable or enable it
    User {
        #[command(subcommand)]
        action: user::UserAction,
    },
}

/// `migrate status` and `migrate revert`; plain `migrate` applies. All use DATABASE_DIRECT_URL when set.
#[derive(Subcommand)]
pub enum MigrateAction {
    /// List every migration the binary or the database knows, with its state; exit 1 if the database cannot be read
    Status {
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Undo the latest applied migration (or every one above --to) with its down migration
    Revert {
        /// Undo every migration above this version instead of the latest one alone (0: all)
        #[arg(long)]
        to: Option<i64>,
        /// Confirm, required in production (there is no prompt: release steps have no terminal)
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Exit codes: 0 success, 1 failure at run time, 2 bad configuration or usage.
const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

pub fn run() -> ExitCode {
    if let Err(error) = dotenvy::dotenv()
        && !error.not_found()
    {
        eprintln!("invalid .env file: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut cli = parse_arguments();
    let command = cli.command.take().unwrap_or(Command::Serve);
    if let Command::Backup { action } = &command
        && let Some(url) = action.backup_url()
    {
        cli.settings.backup_url = Some(url.to_owned());
    }
    // `check --deploy` judges production defaults whatever APP_ENV says.
    let force_env = matches!(command, Command::Check { .. }).then_some(AppEnv::Production);
    let config = match Config::from_settings(&cli.settings, force_env) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Password hashing and static file reads run on the blocking pool; tokio's default of
        // 512 threads let a burst of static requests start hundreds of them, each with its stack.
        .max_blocking_threads(config.password_hash_concurrency + FILE_IO_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(async move {
        match command {
            Command::Serve => serve(config).await,
            Command::Migrate { action: None } => migrate(config).await,
            Command::Migrate {
                action: Some(MigrateAction::Status { format }),
            } => migrate_status(config, format).await,
            Command::Migrate {
                action: Some(MigrateAction::Revert { to, yes }),
            } => migrate_revert(config, to, yes).await,
            Command::Check { format, connect, .. } => check(config, format, connect).await,
            Command::Healthcheck => healthcheck(config).await,
            Command::CompressStatic { dir } => {
                let dir = dir.unwrap_or_else(|| config.static_dir.clone());
                crate::static_files::compress_dir_command(&dir)
            }
            Command::Worker => worker(config).await,
            Command::Jobs { action } => jobs::run(config, action).await,
            Command::User { action } => user::run(config, action).await,
            Command::Backup { action } => backup::run(config, action).await,
        }
    });
    // Tasks still running (a request cut off by the drain limit, a password hash on the blocking
    // pool) are abandoned rather than waited for: the exit stays within SHUTDOWN_TIMEOUT_SECS.
    runtime.shutdown_timeout(RUNTIME_EXIT_LIMIT);
    code
}

/// How long the runtime waits at exit for blocking work still running.
const RUNTIME_EXIT_LIMIT: std::time::Duration = std::time::Duration::from_millis(300);

/// Blocking threads for file reads, beside one per concurrent password hash.
const FILE_IO_THREADS: usize = 16;

/// The process arguments, minus a repeated program name: platforms that hand a release
/// command such as `shipshape migrate` to the image's ENTRYPOINT (Fly) run
/// `/app/shipshape shipshape migrate`.
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "shipshape") {
        args.remove(1);
    }
    args
}

async fn serve(config: Config) -> ExitCode {
    // Dropped last, after the drain: flushing logs and pending events is the final step of shutdown.
    let _guards = match start_service(&config) {
        Ok(guards) => guards,
        Err(code) => return code,
    };
    if config.secret_key_generated {
        tracing::warn!("SECRET_KEY is not set: using a random key for this process; tokens end with it");
    }
    tracing::info!(config = ?config, "configuration");
    let shutdown = server::shutdown_signal();
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("{error:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    tracing::info!(address = %app.local_addr(), "listening");

    app.run_until(shutdown).await;
    ExitCode::SUCCESS
}

/// `shipshape worker`: the job workers without the public server, drained like `serve`.
async fn worker(config: Config) -> ExitCode {
    let _guards = match start_service(&config) {
        Ok(guards) => guards,
        Err(code) => return code,
    };
    tracing::info!(config = ?config, "configuration");
    match server::work(config, server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// What keeps the logs and Sentry running until exit.
type TelemetryGuards = (telemetry::writer::LogGuard, Option<sentry::ClientInitGuard>);

/// Starts logs and Sentry for `serve` and `worker`. In production the checks of
/// `check --deploy` run first: errors stop the process (exit 2, one line each), warnings are logged.
fn start_service(config: &Config) -> Result<TelemetryGuards, ExitCode> {
    let log_guard = telemetry::init(config).map_err(|error| {
        eprintln!("cannot start the log writer thread: {error}");
        ExitCode::from(EXIT_FAILURE)
    })?;
    let sentry_guard = telemetry::sentry::init(config);
    if config.app_env == AppEnv::Production {
        let report = Report::new(checks::check_config(config));
        if report.errors > 0 {
            for finding in report.findings.iter().filter(|f| f.severity == Severity::Error) {
                eprintln!("{finding}");
            }
            eprintln!("refusing to start in production: fix the errors above (see `shipshape check --deploy`)");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
        for finding in &report.findings {
            tracing::warn!(id = finding.id, fix = finding.fix, "{}", finding.message);
        }
    }
    Ok((log_guard, sentry_guard))
}

/// The database `migrate` and its subcommands use: the platform's direct URL when given, as
/// migrations need one session from start to end.
fn migration_database(config: &Config) -> DatabaseConfig {
    let mut database = config.database.clone();
    if let Some(direct) = database.direct_url.take() {
        database.url = direct;
    }
    database
}

async fn migrate(config: Config) -> ExitCode {
    let database = migration_database(&config);
    let result = match pooling(&database).await {
        Err(reason) => Err(anyhow::anyhow!(reason)),
        Ok(pooling) => match Db::connect_lazy(&database) {
            Ok(db) => {
                let applied = match pooling {
                    Pooling::Session => db.migrate().await,
                    Pooling::Transaction { .. } => {
                        eprintln!(
                            "note: migrating through a transaction pooler, without the migration lock; \
                             set DATABASE_DIRECT_URL so that two release steps cannot overlap"
                        );
                        db.migrate_through_transaction_pooler().await
                    }
                };
                db.close().await;
                applied.map_err(anyhow::Error::from)
            }
            Err(error) => Err(error.into()),
        },
    };
    print_migrations(result, "applied", "no pending migrations", "migration failed")
}

/// One line per migration (`applied 20261122000001 initial`), or `nothing` when there was
/// none; an error is one line on stderr and exit 1.
fn print_migrations(result: anyhow::Result<Vec<(i64, String)>>, verb: &str, nothing: &str, failed: &str) -> ExitCode {
    match result {
        Ok(migrations) if migrations.is_empty() => {
            println!("{nothing}");
            ExitCode::SUCCESS
        }
        Ok(migrations) => {
            for (version, description) in migrations {
                println!("{verb} {version} {description}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{failed}: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn migrate_status(config: Config, format: Format) -> ExitCode {
    let database = migration_database(&config);
    // A SQLite file that does not exist yet is a database never migrated: do not create it.
    let status = if db::sqlite_file_missing(&database) {
        Ok(db::never_migrated())
    } else {
        match Db::connect_lazy(&database) {
            Ok(db) => {
                let status = db.migration_status().await;
                db.close().await;
                status.map_err(anyhow::Error::from)
            }
            Err(error) => Err(error.into()),
        }
    };
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            eprintln!("cannot read the migrations: {error:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            let json = serde_json::json!({ "migrations": status });
            let _ = writeln!(out, "{json:#}");
        }
        Format::Text => {
            let _ = writeln!(
                out,
                "{:<16} {:<24} {:<22} DESCRIPTION",
                "VERSION", "STATE", "APPLIED AT"
            );
            for m in &status {
                let state = serde_json::to_value(m.state).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{:<16} {:<24} {:<22} {}",
                    m.version,
                    state.as_str().unwrap_or_default(),
                    m.applied_at.as_deref().unwrap_or("-"),
                    m.description
                );
            }
        }
    }
    ExitCode::SUCCESS
}

async fn migrate_revert(config: Config, to: Option<i64>, yes: bool) -> ExitCode {
    if config.app_env == AppEnv::Production && !yes {
        eprintln!("refusing to revert in production without --yes: a down migration drops schema, and data with it");
        return ExitCode::from(EXIT_CONFIG);
    }
    let database = migration_database(&config);
    let result = match pooling(&database).await {
        Ok(Pooling::Session) => match Db::connect_lazy(&database) {
            Ok(db) => {
                let reverted = db.revert(to).await;
                db.close().await;
                reverted.map_err(anyhow::Error::from)
            }
            Err(error) => Err(error.into()),
        },
        Ok(Pooling::Transaction { .. }) => Err(anyhow::anyhow!(
            "the database URL goes through a transaction pooler, which cannot hold the migration lock: \
             set DATABASE_DIRECT_URL to the provider's direct (non-pooled) URL"
        )),
        Err(reason) => Err(anyhow::anyhow!(reason)),
    };
    print_migrations(result, "reverted", "nothing to revert", "revert failed")
}

/// How `migrate` reaches the database. Through a transaction pooler its lock would land on
/// one server session and outlive the run; without prepared-statement support its statements
/// would reach other clients' sessions: refused, naming the way out.
async fn pooling(database: &DatabaseConfig) -> Result<Pooling, String> {
    if database.is_sqlite() {
        return Ok(Pooling::Session);
    }
    let options = connect_options(database.url.expose())?;
    match postgres::diagnose(&options, database.statement_timeout).await {
        Ok(diagnosis)
            if diagnosis.pooling
                == (Pooling::Transaction {
                    prepared_statements: false,
                }) =>
        {
            Err(
                "the database URL goes through a transaction pooler that loses prepared statements: \
             set DATABASE_DIRECT_URL to the provider's direct (non-pooled) URL, or use the pooler's session mode"
                    .to_owned(),
            )
        }
        Ok(diagnosis) => Ok(diagnosis.pooling),
        Err(reason) => Err(format!("the database is unreachable: {reason}")),
    }
}

async fn check(config: Config, format: Format, connect: bool) -> ExitCode {
    let mut findings = checks::check_config(&config);
    if connect {
        findings.extend(checks::check_connections(&config).await);
    }
    let report = Report::new(findings);
    match format {
        // Written with `write!`, not `println!`: a closed pipe (`| head`) must not panic.
        Format::Json => {
            let json = serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            let _ = writeln!(std::io::stdout(), "{json}");
        }
        Format::Text => {
            let mut out = std::io::stdout().lock();
            for finding in &report.findings {
                let _ = writeln!(out, "{finding}");
            }
            let _ = writeln!(out, "{} error(s), {} warning(s)", report.errors, report.warnings);
        }
    }
    if report.errors > 0 {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

/// For the commands an operator runs against the service's database (`user`, `jobs`): their
/// log lines go to stderr, so stdout carries only the answer.
fn open_database(config: &Config) -> Result<Db, ExitCode> {
    telemetry::init_for_command(config);
    Db::connect_lazy(&config.database).map_err(|error| {
        eprintln!("cannot open the database: {error}");
        ExitCode::from(EXIT_FAILURE)
    })
}

/// For images without curl: asks the local server for `/healthz`.
async fn healthcheck(config: Config) -> ExitCode {
    // A server bound to every address is reachable on loopback; one bound to a single address only there.
    let ip = if config.host.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        config.host
    };
    let url = format!("http://{}/healthz", SocketAddr::new(ip, config.port));
    let result = async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        client.get(&url).send().await
    }
    .await;
    match result {
        Ok(response) if response.status() == reqwest::StatusCode::OK => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("unhealthy: {url} answered {}", response.status());
            ExitCode::from(EXIT_FAILURE)
        }
        Err(error) => {
            eprintln!("unhealthy: {url}: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
