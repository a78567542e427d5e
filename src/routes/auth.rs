//! Accounts: signup, login, and the caller's own profile.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::config::RateSetting;
use crate::error::{ApiError, ErrorBody, JsonBodyErrors};
use crate::extract::ApiJson;
use crate::rate_limit::Limit;
use crate::state::AppState;
use crate::users::{self, Login, NewAccount, User};

/// Per client IP.
const SIGNUP_LIMIT: Limit = Limit::per_ip(
    "signup",
    RateSetting {
        var: "RATE_LIMIT_SIGNUP",
        default: "3/h",
        help: "Signups per client IP",
    },
);
/// Per client IP: password guessing is slow and expensive.
const LOGIN_LIMIT: Limit = Limit::per_ip(
    "login",
    RateSetting {
        var: "RATE_LIMIT_LOGIN",
        default: "5/m",
        help: "Login attempts per client IP",
    },
);

/// The limits above, for `app::rate_limits`.
pub const LIMITS: &[Limit] = &[SIGNUP_LIMIT, LOGIN_LIMIT];

pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(SIGNUP_LIMIT.on(state, routes!(signup)))
        .merge(LOGIN_LIMIT.on(state, routes!(login)))
        .routes(routes!(me))
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

/// Creates an account and returns it with a token.
#[utoipa::path(post, path = "/api/v1/auth/signup", tag = "auth", request_body = NewAccount, responses(
    (status = 201, body = SignupResponse),
    (status = 409, body = ErrorBody, description = "`email_taken`"),
    (status = 422, body = ErrorBody, description = "`validation_failed`"),
    (status = 429, body = ErrorBody, description = "`rate_limited` (RATE_LIMIT_SIGNUP)"),
    JsonBodyErrors,
))]
pub async fn signup(
    State(state): State<AppState>,
    ApiJson(account): ApiJson<NewAccount>,
) -> Result<(StatusCode, Json<SignupResponse>), ApiError> {
    let email = account.email;
    let password_hash = state.auth.hash_password(account.password.0).await?;
    let user = users::insert(state.database()?, &email, &password_hash)
        .await?
        .into_user()?;
    let token = token_for(&state, user.id)?;
    Ok((StatusCode::CREATED, Json(SignupResponse { user, token })))
}

/// Exchanges email and password for a token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Login, responses(
    (status = 200, body = Token),
    (status = 401, body = ErrorBody, description = "`invalid_credentials`"),
    (status = 422, body = ErrorBody, description = "`validation_failed`"),
    (status = 429, body = ErrorBody, description = "`rate_limited` (RATE_LIMIT_LOGIN)"),
    JsonBodyErrors,
))]
pub async fn login(State(state): State<AppState>, ApiJson(login): ApiJson<Login>) -> Result<Json<Token>, ApiError> {
    let row = users::find_by_email(state.database()?, &login.email).await?;
    // Unknown email and wrong password take the same path and the same time.
    let stored_hash = row.as_ref().map(|r| r.password_hash.clone());
    if !state.auth.verify_password(login.password, stored_hash).await? {
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
    let row = users::find(state.database()?, user.id).await?;
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
