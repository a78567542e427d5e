//! Accounts: the user model, its input rules and its SQL. The routes are in `routes/auth.rs`
//! and `routes/admin.rs`; sessions in `sessions.rs`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use uuid::Uuid;

use crate::db::{self, Constraint, Db, OnConstraint, Tx, rfc3339};
use crate::error::ApiError;
use crate::input::{Fields, FromJson, NO_CONTROL_CHARS, Text, has_control_chars};
use crate::pagination::{Page, PageRequest};
use crate::{input_field, with_db, with_tx};

/// A second account with an email already registered.
const EMAIL_TAKEN: Constraint = Constraint::unique("users_email_key", "users.email");

/// What an account may do: `admin` adds the `/api/v1/admin` routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    /// As stored in `users.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(stored: &str) -> Option<Role> {
        match stored {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    email: String,
    role: Role,
    /// RFC 3339 UTC.
    created_at: String,
}

/// A user as the admin routes show it.
#[derive(Serialize, ToSchema)]
pub struct AdminView {
    #[serde(flatten)]
    user: User,
    /// RFC 3339 UTC, or null while the account is enabled.
    disabled_at: Option<String>,
}

/// The columns every query of a user reads, in [`UserRow`]'s order.
const COLUMNS: &str = "id, email, password_hash, role, disabled_at, created_at";

/// A user as stored, with the password hash that never leaves this module's callers.
#[derive(sqlx::FromRow)]
pub struct UserRow {
    id: String,
    email: String,
    pub password_hash: String,
    role: String,
    disabled_at: Option<i64>,
    created_at: i64,
}

impl UserRow {
    pub fn id(&self) -> Result<Uuid, ApiError> {
        Uuid::parse_str(&self.id).map_err(|e| ApiError::Internal(e.into()))
    }

    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::User)
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }

    pub fn into_user(self) -> Result<User, ApiError> {
        Ok(User {
            id: self.id()?,
            role: self.role(),
            email: self.email,
            created_at: rfc3339(self.created_at),
        })
    }

    pub fn into_admin_view(self) -> Result<AdminView, ApiError> {
        let disabled_at = self.disabled_at.map(rfc3339);
        Ok(AdminView {
            user: self.into_user()?,
            disabled_at,
        })
    }
}

const EMAIL: Text = Text {
    min: 1,
    max: 254,
    not_blank: true,
    multiline: false,
};

// An email address, trimmed and lower-cased: the one form it is stored and looked up in.
input_field!(
    Email(String),
    |value| {
        let email = EMAIL.parse(Value::String(String::parse(value)?.trim().to_lowercase()))?;
        let (local, domain) = email.split_once('@').unwrap_or_default();
        let domain_ok = domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.');
        if email.matches('@').count() != 1 || local.is_empty() || !domain_ok || email.chars().any(char::is_whitespace) {
            return Err("must be an email address like name@example.com".to_owned());
        }
        Ok(email)
    },
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
        .max_length(Some(EMAIL.max))
        .description(Some("Trimmed and lower-cased; at most 254 characters."))
        .examples(["ada@example.com"])
);

const PASSWORD_LENGTH: std::ops::RangeInclusive<usize> = 12..=128;

// A new password: 12 to 128 characters of any kind.
input_field!(
    Password(String),
    |value| {
        let password = String::parse(value)?;
        if !PASSWORD_LENGTH.contains(&password.chars().count()) {
            return Err(format!(
                "must be {} to {} characters",
                PASSWORD_LENGTH.start(),
                PASSWORD_LENGTH.end()
            ));
        }
        Ok(password)
    },
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(*PASSWORD_LENGTH.start()))
        .max_length(Some(*PASSWORD_LENGTH.end()))
        .description(Some("12 to 128 characters, not the email."))
        .examples(["correct horse battery staple"])
);

/// A signup.
#[derive(ToSchema)]
// `FromJson` refuses a field it does not know; utoipa reads this serde attribute (there is no
// serde derive) and documents it: `additionalProperties: false`.
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    #[schema(inline)]
    pub email: Email,
    #[schema(inline)]
    pub password: Password,
}

impl FromJson for NewAccount {
    fn from_json(fields: &mut Fields) -> Option<NewAccount> {
        let email: Option<Email> = fields.required("email");
        let password: Option<Password> = fields.required("password");
        if let (Some(Email(email)), Some(Password(password))) = (&email, &password)
            && password.trim().to_lowercase() == *email
        {
            fields.reject("password", "must not be the email address");
            return None;
        }
        Some(NewAccount {
            email: email?,
            password: password?,
        })
    }
}

/// A login: any strings (the rules are a signup's; a login only has to match).
#[derive(ToSchema)]
// `FromJson` refuses a field it does not know; utoipa reads this serde attribute (there is no
// serde derive) and documents it: `additionalProperties: false`.
#[serde(deny_unknown_fields)]
pub struct Login {
    /// No control characters (no such email can exist).
    #[schema(example = "ada@example.com", pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub email: String,
    #[schema(example = "correct horse battery staple")]
    pub password: String,
}

impl FromJson for Login {
    fn from_json(fields: &mut Fields) -> Option<Login> {
        let email = match fields
            .required::<String>("email")
            .map(|email| email.trim().to_lowercase())
        {
            // No such email can exist, and PostgreSQL would refuse a NUL in the query with a 500.
            Some(email) if has_control_chars(&email, false) => {
                fields.reject("email", NO_CONTROL_CHARS);
                None
            }
            email => email,
        };
        let password = fields.required("password");
        Some(Login {
            email: email?,
            password: password?,
        })
    }
}

/// A password change: the current password, and a new one under the signup rules.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(example = "correct horse battery staple")]
    pub current_password: String,
    #[schema(inline)]
    pub new_password: Password,
}

impl FromJson for PasswordChange {
    fn from_json(fields: &mut Fields) -> Option<PasswordChange> {
        let current_password = fields.required("current_password");
        let new_password = fields.required("new_password");
        Some(PasswordChange {
            current_password: current_password?,
            new_password: new_password?,
        })
    }
}

impl PasswordChange {
    /// The new password, unless it is the account's email (422, as at signup).
    pub fn new_password_for(&self, account: &UserRow) -> Result<String, ApiError> {
        let Password(password) = &self.new_password;
        if password.trim().to_lowercase() == account.email {
            return Err(ApiError::validation("new_password", "must not be the email address"));
        }
        Ok(password.clone())
    }
}

/// A refresh: the refresh token of the last signup, login or refresh.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

impl FromJson for RefreshRequest {
    fn from_json(fields: &mut Fields) -> Option<RefreshRequest> {
        Some(RefreshRequest {
            refresh_token: fields.required("refresh_token")?,
        })
    }
}

/// Stores a new account inside the caller's transaction (its first session goes in the same
/// one); 409 `email_taken` when the email is registered already.
pub async fn insert(tx: &mut Tx, email: &Email, password_hash: &str, role: Role) -> Result<UserRow, ApiError> {
    let sql = format!(
        "INSERT INTO users (id, email, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    );
    with_tx!(tx, conn => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(Uuid::now_v7().to_string())
            .bind(&email.0)
            .bind(password_hash)
            .bind(role.as_str())
            .bind(db::now_micros())
            .fetch_one(&mut **conn)
            .await
    })
    .on_constraint(EMAIL_TAKEN, || ApiError::EmailTaken)
}

pub async fn find_by_email(db: &Db, email: &str) -> Result<Option<UserRow>, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE email = $1");
    Ok(with_db!(db, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(email).fetch_optional(pool).await)?)
}

pub async fn find(db: &Db, id: Uuid) -> Result<Option<UserRow>, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    Ok(with_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id.to_string()).fetch_optional(pool).await
    })?)
}

/// Replaces the password hash, inside the caller's transaction (which ends the other sessions).
pub async fn set_password(tx: &mut Tx, id: Uuid, password_hash: &str) -> Result<(), ApiError> {
    let sql = "UPDATE users SET password_hash = $1 WHERE id = $2";
    with_tx!(tx, conn => sqlx::query(sql).bind(password_hash).bind(id.to_string()).execute(&mut **conn).await.map(drop))?;
    Ok(())
}

/// Accounts newest first, those whose email starts with `email_prefix` (any case) when given.
pub async fn page(db: &Db, email_prefix: Option<&str>, page: &PageRequest) -> Result<Page<AdminView>, ApiError> {
    // Emails are stored lower-cased; `\` escapes LIKE's wildcards in the prefix.
    let pattern = email_prefix.map(|prefix| {
        let escaped = prefix
            .trim()
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("{escaped}%")
    });
    let sql = format!(
        "SELECT {COLUMNS} FROM users WHERE ($1 IS NULL OR email LIKE $1 ESCAPE '\\') \
         AND (created_at < $2 OR (created_at = $2 AND id < $3)) ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    let rows: Vec<UserRow> = with_db!(db, pool => {
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(pattern.as_deref())
            .bind(page.start.created_at)
            .bind(&page.start.id)
            .bind(page.fetch())
            .fetch_all(pool)
            .await
    })?;
    page.page(rows, |row| (row.created_at, &row.id), UserRow::into_admin_view)
}

/// What an operator does to an account.
#[derive(Clone, Copy, Debug)]
pub enum Standing {
    Disable,
    Enable,
    SetRole(Role),
}

impl Standing {
    /// Its `action` in the audit line (docs/accounts.md, "Audit lines").
    pub fn action(self) -> &'static str {
        match self {
            Standing::Disable => "user.disable",
            Standing::Enable => "user.enable",
            Standing::SetRole(_) => "user.set_role",
        }
    }
}

/// Applies `change` to the account `id` inside the caller's transaction (which ends a
/// disabled account's sessions: `sessions::change_standing`). The only enabled admin can be
/// neither disabled nor demoted (409 `last_admin`). `None` when there is no such account.
/// Disabling twice keeps the first time.
pub async fn change_standing(tx: &mut Tx, id: Uuid, change: Standing) -> Result<Option<UserRow>, ApiError> {
    // The enabled admins, locked on PostgreSQL so that two admins demoting each other at once
    // cannot both pass the check below (SQLite's one writer already runs them in turn).
    let lock = match *tx {
        Tx::Postgres(_) => " FOR UPDATE",
        Tx::Sqlite(..) => "",
    };
    let sql = format!("SELECT id FROM users WHERE role = 'admin' AND disabled_at IS NULL{lock}");
    let admins: Vec<String> =
        with_tx!(tx, conn => sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&mut **conn).await)?;
    let target = id.to_string();
    let loses_an_admin = matches!(change, Standing::Disable | Standing::SetRole(Role::User));
    if loses_an_admin && admins == [target.as_str()] {
        return Err(ApiError::LastAdmin);
    }
    // Each change answers with the account as it now is.
    let returning = |sql: &str| format!("{sql} RETURNING {COLUMNS}");
    let row: Option<UserRow> = match change {
        Standing::Disable => {
            let sql = returning("UPDATE users SET disabled_at = COALESCE(disabled_at, $2) WHERE id = $1");
            with_tx!(tx, conn => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&target).bind(db::now_micros()).fetch_optional(&mut **conn).await
            })?
        }
        Standing::Enable => {
            let sql = returning("UPDATE users SET disabled_at = NULL WHERE id = $1");
            with_tx!(tx, conn => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&target).fetch_optional(&mut **conn).await)?
        }
        Standing::SetRole(role) => {
            let sql = returning("UPDATE users SET role = $2 WHERE id = $1");
            with_tx!(tx, conn => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&target).bind(role.as_str()).fetch_optional(&mut **conn).await
            })?
        }
    };
    Ok(row)
}

/// 401 when the caller's account no longer exists: a valid token can outlive its account
/// (deleted, a restored database, a key shared between environments).
pub async fn ensure_exists(db: &Db, id: Uuid) -> Result<(), ApiError> {
    let sql = "SELECT id FROM users WHERE id = $1";
    let found: Option<String> =
        with_db!(db, pool => sqlx::query_scalar(sql).bind(id.to_string()).fetch_optional(pool).await)?;
    found.map(drop).ok_or(ApiError::Unauthorized)
}

/// What a lookup scoped to the caller `user` found: the row; else 404, whether the id is
/// another user's, malformed or unknown (a caller learns nothing of others' ids), or 401 when
/// the caller's account no longer exists.
pub async fn own<T>(db: &Db, user: Uuid, found: Option<T>) -> Result<T, ApiError> {
    match found {
        Some(row) => Ok(row),
        None => {
            ensure_exists(db, user).await?;
            Err(ApiError::NotFound)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::input::read_body;

    fn signup(email: &str, password: &str) -> Result<NewAccount, ApiError> {
        read_body(json!({"email": email, "password": password}).to_string().as_bytes())
    }

    #[test]
    fn credential_rules() {
        assert!(signup("ada@example.com", "long enough password").is_ok());
        assert!(signup("ada@example", "long enough password").is_err());
        assert!(signup("a@b@example.com", "long enough password").is_err());
        assert!(signup("ada@example.com", "short").is_err());
        assert!(signup("ada@example.com", "ada@example.com").is_err());
        assert!(signup("a\u{0}da@example.com", "long enough password").is_err());
        let normalized = signup("  Ada@Example.COM ", "long enough password").map(|account| account.email.0);
        assert_eq!(normalized.ok().as_deref(), Some("ada@example.com"));
    }
}
