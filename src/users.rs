//! Accounts: the user model, its input rules and its SQL. The routes are in `routes/auth.rs`.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use uuid::Uuid;

use crate::db::{self, Constraint, Db, OnConstraint, rfc3339};
use crate::error::ApiError;
use crate::input::{Fields, FromJson, NO_CONTROL_CHARS, Text, has_control_chars};
use crate::{input_field, with_db};

/// A second account with an email already registered.
const EMAIL_TAKEN: Constraint = Constraint::unique("users_email_key", "users.email");

#[derive(Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    email: String,
    /// RFC 3339 UTC.
    created_at: String,
}

/// A user as stored, with the password hash that never leaves this module's callers.
#[derive(sqlx::FromRow)]
pub struct UserRow {
    id: String,
    email: String,
    pub password_hash: String,
    created_at: i64,
}

impl UserRow {
    pub fn into_user(self) -> Result<User, ApiError> {
        let id = Uuid::parse_str(&self.id).map_err(|e| ApiError::Internal(e.into()))?;
        Ok(User {
            id,
            email: self.email,
            created_at: rfc3339(self.created_at),
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

/// Stores a new account; 409 `email_taken` when the email is registered already.
pub async fn insert(db: &Db, email: &Email, password_hash: &str) -> Result<UserRow, ApiError> {
    let sql = "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4) \
               RETURNING id, email, password_hash, created_at";
    with_db!(db, pool => {
        sqlx::query_as(sql)
            .bind(Uuid::now_v7().to_string())
            .bind(&email.0)
            .bind(password_hash)
            .bind(db::now_micros())
            .fetch_one(pool)
            .await
    })
    .on_constraint(EMAIL_TAKEN, || ApiError::EmailTaken)
}

pub async fn find_by_email(db: &Db, email: &str) -> Result<Option<UserRow>, ApiError> {
    let sql = "SELECT id, email, password_hash, created_at FROM users WHERE email = $1";
    Ok(with_db!(db, pool => sqlx::query_as(sql).bind(email).fetch_optional(pool).await)?)
}

pub async fn find(db: &Db, id: Uuid) -> Result<Option<UserRow>, ApiError> {
    let sql = "SELECT id, email, password_hash, created_at FROM users WHERE id = $1";
    Ok(with_db!(db, pool => sqlx::query_as(sql).bind(id.to_string()).fetch_optional(pool).await)?)
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
