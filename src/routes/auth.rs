//! Accounts: signup, login, and the caller's own profile.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::{self, rfc3339};
use crate::error::{ApiError, ApiJson, ErrorBody, FieldError, JsonBodyErrors, NO_CONTROL_CHARS, has_control_chars};
use crate::with_db;

/// Routes without their rate limits; `app::routes` puts each behind its own limit.
pub fn signup_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(signup))
}

pub fn login_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(login))
}

pub fn me_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Trimmed and lower-cased; at most 254 characters.
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    email: String,
    /// 12 to 128 characters, not the email.
    #[schema(example = "correct horse battery staple", min_length = 12, max_length = 128)]
    password: String,
}

#[derive(Serialize, ToSchema)]
pub struct User {
    id: Uuid,
    email: String,
    /// RFC 3339 UTC.
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct Token {
    token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the token expires.
    expires_in: u64,
}

#[derive(Serialize, ToSchema)]
pub struct SignupResponse {
    user: User,
    #[serde(flatten)]
    token: Token,
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    password_hash: String,
    created_at: i64,
}

impl UserRow {
    fn into_user(self) -> Result<User, ApiError> {
        let id = Uuid::parse_str(&self.id).map_err(|e| ApiError::Internal(e.into()))?;
        Ok(User {
            id,
            email: self.email,
            created_at: rfc3339(self.created_at),
        })
    }
}

fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn validate_credentials(email: &str, password: &str) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let at_count = email.matches('@').count();
    let (local, domain) = email.split_once('@').unwrap_or_default();
    let domain_ok = domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.');
    if email.chars().count() > 254 {
        errors.push(FieldError::new("email", "must be at most 254 characters"));
    } else if has_control_chars(email, false) {
        errors.push(FieldError::new("email", NO_CONTROL_CHARS));
    } else if at_count != 1 || local.is_empty() || !domain_ok || email.chars().any(char::is_whitespace) {
        errors.push(FieldError::new(
            "email",
            "must be an email address like name@example.com",
        ));
    }
    let length = password.chars().count();
    if !(12..=128).contains(&length) {
        errors.push(FieldError::new("password", "must be 12 to 128 characters"));
    } else if password.trim().to_lowercase() == email {
        errors.push(FieldError::new("password", "must not be the email address"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Creates an account and returns it with a token.
#[utoipa::path(post, path = "/api/v1/auth/signup", tag = "auth", request_body = Credentials, responses(
    (status = 201, body = SignupResponse),
    (status = 409, body = ErrorBody, description = "`email_taken`"),
    (status = 422, body = ErrorBody, description = "`validation_failed`"),
    (status = 429, body = ErrorBody, description = "`rate_limited` (RATE_LIMIT_SIGNUP)"),
    JsonBodyErrors,
))]
pub async fn signup(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<SignupResponse>), ApiError> {
    let email = normalize_email(&body.email);
    validate_credentials(&email, &body.password)?;
    let password_hash = state.auth.hash_password(body.password).await?;
    let id = Uuid::now_v7();
    let sql = "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4) \
               RETURNING id, email, password_hash, created_at";
    let inserted: Result<UserRow, sqlx::Error> = with_db!(state.database()?, pool => {
        sqlx::query_as(sql).bind(id.to_string()).bind(&email).bind(&password_hash).bind(db::now_micros())
            .fetch_one(pool).await
    });
    let user = match inserted {
        Ok(row) => row.into_user()?,
        Err(e) if db::is_unique_violation(&e) => return Err(ApiError::EmailTaken),
        Err(e) => return Err(e.into()),
    };
    let token = token_for(&state, user.id)?;
    Ok((StatusCode::CREATED, Json(SignupResponse { user, token })))
}

/// Exchanges email and password for a token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Credentials, responses(
    (status = 200, body = Token),
    (status = 401, body = ErrorBody, description = "`invalid_credentials`"),
    (status = 422, body = ErrorBody, description = "`validation_failed`"),
    (status = 429, body = ErrorBody, description = "`rate_limited` (RATE_LIMIT_LOGIN)"),
    JsonBodyErrors,
))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<Token>, ApiError> {
    let email = normalize_email(&body.email);
    // No such email can exist, and PostgreSQL would refuse a NUL in the query with a 500.
    if has_control_chars(&email, false) {
        return Err(ApiError::validation("email", NO_CONTROL_CHARS));
    }
    let sql = "SELECT id, email, password_hash, created_at FROM users WHERE email = $1";
    let row: Option<UserRow> =
        with_db!(state.database()?, pool => sqlx::query_as(sql).bind(&email).fetch_optional(pool).await)?;
    // Unknown email and wrong password take the same path and the same time.
    let stored_hash = row.as_ref().map(|r| r.password_hash.clone());
    if !state.auth.verify_password(body.password, stored_hash).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let user = row.ok_or(ApiError::InvalidCredentials)?.into_user()?;
    Ok(Json(token_for(&state, user.id)?))
}

/// The authenticated user.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, body = User),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
))]
pub async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<User>, ApiError> {
    let sql = "SELECT id, email, password_hash, created_at FROM users WHERE id = $1";
    let row: Option<UserRow> =
        with_db!(state.database()?, pool => sqlx::query_as(sql).bind(user.id.to_string()).fetch_optional(pool).await)?;
    // A valid token for an account that no longer exists authenticates nobody.
    Ok(Json(row.ok_or(ApiError::Unauthorized)?.into_user()?))
}

fn token_for(state: &AppState, user_id: Uuid) -> Result<Token, ApiError> {
    Ok(Token {
        token: state.auth.issue_token(user_id)?,
        token_type: "Bearer",
        expires_in: state.auth.token_ttl.as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_rules() {
        assert!(validate_credentials("ada@example.com", "long enough password").is_ok());
        assert!(validate_credentials("ada@example", "long enough password").is_err());
        assert!(validate_credentials("a@b@example.com", "long enough password").is_err());
        assert!(validate_credentials("ada@example.com", "short").is_err());
        assert!(validate_credentials("ada@example.com", "ada@example.com").is_err());
        assert!(validate_credentials("a\u{0}da@example.com", "long enough password").is_err());
        assert_eq!(normalize_email("  Ada@Example.COM "), "ada@example.com");
    }
}
