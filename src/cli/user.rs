//! `shipshape user …`: accounts from the command line, for the first admin and for an
//! operator on a production machine (`fly ssh console -C`, docs/accounts.md). A password is
//! read from standard input or a terminal prompt, never from an argument, and never printed.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::{EXIT_CONFIG, EXIT_FAILURE};
use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;
use crate::error::ApiError;
use crate::input::read_body;
use crate::sessions;
use crate::users::{self, NewAccount, Role, Standing};

#[derive(Subcommand)]
pub enum UserAction {
    /// Create an account (the signup rules apply) and print its id; the password is the first
    /// line of standard input, or typed twice at a terminal prompt
    Create {
        email: String,
        /// Make it an admin
        #[arg(long)]
        admin: bool,
    },
    /// Make an account an admin or a user
    SetRole { email: String, role: RoleArg },
    /// Disable an account and end its sessions
    Disable { email: String },
    /// Enable a disabled account
    Enable { email: String },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Admin,
    User,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Admin => Role::Admin,
            RoleArg::User => Role::User,
        }
    }
}

pub async fn run(config: Config, action: UserAction) -> ExitCode {
    let db = match super::open_database(&config) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let result = match action {
        UserAction::Create { email, admin } => create(&config, &db, &email, admin).await,
        UserAction::SetRole { email, role } => change(&db, &email, Standing::SetRole(role.into())).await,
        UserAction::Disable { email } => change(&db, &email, Standing::Disable).await,
        UserAction::Enable { email } => change(&db, &email, Standing::Enable).await,
    };
    db.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Refused(message)) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Why a command did nothing: bad input (exit 2) or a refusal or fault (exit 1).
enum Failure {
    Usage(String),
    Refused(String),
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Failure {
        let message = match &error {
            ApiError::Validation(fields) => {
                let fields: Vec<String> = fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect();
                return Failure::Usage(format!("not created: {}", fields.join("; ")));
            }
            ApiError::Internal(inner) => format!("failed: {inner:#}"),
            other => format!("failed: {other}"),
        };
        Failure::Refused(message)
    }
}

async fn create(config: &Config, db: &Db, email: &str, admin: bool) -> Result<(), Failure> {
    let password = read_password().map_err(Failure::Usage)?;
    // The signup rules, read exactly as a signup's body is.
    let account: NewAccount = read_body(json!({"email": email, "password": password}).to_string().as_bytes())?;
    let auth = Auth::from_config(config).map_err(|e| Failure::Refused(format!("failed: {e:#}")))?;
    let password_hash = auth.hash_password(account.password.0).await?;
    let role = if admin { Role::Admin } else { Role::User };
    let mut tx = db.begin().await.map_err(ApiError::from)?;
    let user = users::insert(&mut tx, &account.email, &password_hash, role).await?;
    tx.commit().await.map_err(ApiError::from)?;
    let id = user.id()?;
    tracing::info!(audit = true, actor = "cli", action = "user.create", target = %id, role = role.as_str(), "audit");
    println!("{id}");
    Ok(())
}

async fn change(db: &Db, email: &str, standing: Standing) -> Result<(), Failure> {
    let email = email.trim().to_lowercase();
    if crate::input::has_control_chars(&email, false) {
        return Err(Failure::Usage(
            "the email has control characters: no such account can exist".to_owned(),
        ));
    }
    let unknown = || Failure::Refused(format!("no account with the email {email}"));
    let id = users::find_by_email(db, &email).await?.ok_or_else(unknown)?.id()?;
    let user = sessions::change_standing(db, id, standing).await?.ok_or_else(unknown)?;
    let action = standing.action();
    tracing::info!(audit = true, actor = "cli", action, target = %id, role = user.role().as_str(), "audit");
    let state = if user.is_disabled() { "disabled" } else { "enabled" };
    println!("{id} {email} {} {state}", user.role().as_str());
    Ok(())
}

/// The first line of standard input, or a password typed twice at a terminal (not echoed).
fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        let password = line.strip_suffix('\n').unwrap_or(&line);
        let password = password.strip_suffix('\r').unwrap_or(password);
        if password.is_empty() {
            return Err("no password: give it as the first line of standard input".to_owned());
        }
        return Ok(password.to_owned());
    }
    let first = rpassword::prompt_password("Password: ").map_err(|e| format!("cannot read the password: {e}"))?;
    let second =
        rpassword::prompt_password("Password (again): ").map_err(|e| format!("cannot read the password: {e}"))?;
    if first != second {
        return Err("the two passwords differ: nothing was created".to_owned());
    }
    Ok(first)
}
