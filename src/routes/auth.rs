//! Accounts: signup, login, refresh and logout, the caller's own profile and password
//! (docs/accounts.md).

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
use crate::password_reset::{self, ResetConfirm, ResetRequest};
use crate::rate_limit::Limit;
use crate::sessions::{self, RefreshToken, Refreshed};
use crate::state::AppState;
use crate::users::{self, Login, NewAccount, PasswordChange, RefreshRequest, Role, User};

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

/// Per client IP: each request may send an email.
const PASSWORD_RESET_LIMIT: Limit = Limit::per_ip(
    "password_reset",
    RateSetting {
        var: "RATE_LIMIT_PASSWORD_RESET",
        default: "5/h",
        help: "Password-reset requests per client IP",
    },
);

/// The limits above, for `app::rate_limits`.
pub const LIMITS: &[Limit] = &[SIGNUP_LIMIT, LOGIN_LIMIT, PASSWORD_RESET_LIMIT];

pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(SIGNUP_LIMIT.on(state, routes!(signup)))
        .merge(LOGIN_LIMIT.on(state, routes!(login)))
        // A password change checks the current password: guessing it costs login attempts.
        .merge(LOGIN_LIMIT.on(state, routes!(change_password)))
        .merge(PASSWORD_RESET_LIMIT.on(state, routes!(request_password_reset)))
        .routes(routes!(confirm_password_reset))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
}

#[derive(Serialize, ToSchema)]
pub struct Token {
    /// The access token, for `Authorization: Bearer`.
    token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
    /// Exchanged at `POST /api/v1/auth/refresh` for new tokens, once.
    refresh_token: String,
    /// Seconds the session lasts without a refresh.
    refresh_expires_in: u64,
}

#[derive(Serialize, ToSchema)]
pub struct SignupResponse {
    user: User,
    #[serde(flatten)]
    token: Token,
}

/// Creates an account, signed in: the account and its first session are stored together.
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
    let password_hash = state.auth.hash_password(account.password.0).await?;
    let mut tx = state.database()?.begin().await?;
    let user = users::insert(&mut tx, &account.email, &password_hash, Role::User)
        .await?
        .into_user()?;
    let started = sessions::start(&mut tx, user.id).await?;
    tx.commit().await?;
    let token = token_for(&state, user.id, started.session, &started.refresh)?;
    Ok((StatusCode::CREATED, Json(SignupResponse { user, token })))
}

/// Exchanges email and password for tokens, starting a session.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Login, responses(
    (status = 200, body = Token),
    (status = 401, body = ErrorBody, description = "`invalid_credentials`"),
    (status = 403, body = ErrorBody, description = "`account_disabled` (said only after a correct password)"),
    (status = 422, body = ErrorBody, description = "`validation_failed`"),
    (status = 429, body = ErrorBody, description = "`rate_limited` (RATE_LIMIT_LOGIN)"),
    JsonBodyErrors,
))]
pub async fn login(State(state): State<AppState>, ApiJson(login): ApiJson<Login>) -> Result<Json<Token>, ApiError> {
    let db = state.database()?;
    let row = users::find_by_email(db, &login.email).await?;
    // Unknown email and wrong password take the same path and the same time.
    let stored_hash = row.as_ref().map(|r| r.password_hash.clone());
    if !state.auth.verify_password(login.password, stored_hash).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let user = row.ok_or(ApiError::InvalidCredentials)?.id()?;
    // A disabled account gets 403 `account_disabled` from here (`sessions::start`).
    let mut tx = db.begin().await?;
    let started = sessions::start(&mut tx, user).await?;
    tx.commit().await?;
    Ok(Json(token_for(&state, user, started.session, &started.refresh)?))
}

/// Spends a refresh token for a new access token and a new refresh token. A refresh token
/// presented a second time ends its whole session: one of the two presenting it stole it.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest, responses(
    (status = 200, body = Token),
    (status = 401, body = ErrorBody, description = "`unauthorized`: unknown, spent or expired refresh token"),
    (status = 422, body = ErrorBody, description = "`validation_failed`"),
    JsonBodyErrors,
))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<Token>, ApiError> {
    let token = RefreshToken::parse(&request.refresh_token).ok_or(ApiError::Unauthorized)?;
    match sessions::refresh(state.database()?, &token, state.auth.refresh_ttl).await? {
        Refreshed::Renewed(user, next) => Ok(Json(token_for(&state, user, token.session, &next)?)),
        Refreshed::Refused { ended } => {
            // Its access tokens are refused here from now on, not after the session memory's time.
            if ended {
                state.auth.sessions.forget_session(token.session);
            }
            Err(ApiError::Unauthorized)
        }
    }
}

/// Ends the caller's session: its access and refresh tokens are refused from now on.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])), responses(
    (status = 204, description = "The session has ended."),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
))]
pub async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    sessions::end(state.database()?, user.session).await?;
    state.auth.sessions.forget_user(user.id);
    Ok(StatusCode::NO_CONTENT)
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

/// Changes the caller's password, and ends every other session of the account.
#[utoipa::path(post, path = "/api/v1/me/password", tag = "auth", security(("bearer" = [])),
    request_body = PasswordChange, responses(
    (status = 204, description = "Changed; the other sessions have ended."),
    (status = 401, body = ErrorBody, description = "`unauthorized`, or `invalid_credentials`: the current password is wrong"),
    (status = 422, body = ErrorBody, description = "`validation_failed`: the new password breaks the signup rules"),
    (status = 429, body = ErrorBody, description = "`rate_limited` (RATE_LIMIT_LOGIN)"),
    JsonBodyErrors,
))]
pub async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(change): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let db = state.database()?;
    let row = users::find(db, user.id).await?.ok_or(ApiError::Unauthorized)?;
    let new_password = change.new_password_for(&row)?;
    if !state
        .auth
        .verify_password(change.current_password, Some(row.password_hash))
        .await?
    {
        return Err(ApiError::InvalidCredentials);
    }
    let password_hash = state.auth.hash_password(new_password).await?;
    let mut tx = db.begin().await?;
    users::set_password(&mut tx, user.id, &password_hash).await?;
    password_reset::delete_for(&mut tx, user.id).await?;
    let ended = sessions::end_all(&mut tx, user.id, Some(user.session)).await?;
    tx.commit().await?;
    state.auth.sessions.forget_user(user.id);
    tracing::info!(audit = true, actor = %user.id, action = "password.change", target = %user.id, sessions_ended = ended, "audit");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// Always `accepted`.
    status: &'static str,
}

/// Emails a password-reset link to the address, if it is an enabled account's. The answer
/// is the same, in about the same time, whether it is or not.
#[utoipa::path(post, path = "/api/v1/auth/password-reset", tag = "auth", request_body = ResetRequest, responses(
    (status = 202, body = Accepted, description = "Accepted, whether or not the email has an account."),
    (status = 422, body = ErrorBody, description = "`validation_failed`: not an email address"),
    (status = 429, body = ErrorBody, description = "`rate_limited` (RATE_LIMIT_PASSWORD_RESET)"),
    JsonBodyErrors,
))]
pub async fn request_password_reset(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ResetRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    password_reset::request(state.database()?, &request.email).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { status: "accepted" })))
}

/// Sets a new password with the token of a reset link, once; every session of the account ends.
#[utoipa::path(post, path = "/api/v1/auth/password-reset/confirm", tag = "auth", request_body = ResetConfirm, responses(
    (status = 204, description = "Changed; every session of the account has ended."),
    (status = 400, body = ErrorBody, description = "`invalid_token`: unknown, used or expired"),
    (status = 422, body = ErrorBody, description = "`validation_failed`: the password breaks the signup rules"),
    JsonBodyErrors,
))]
pub async fn confirm_password_reset(
    State(state): State<AppState>,
    ApiJson(confirm): ApiJson<ResetConfirm>,
) -> Result<StatusCode, ApiError> {
    let db = state.database()?;
    // Looked up before the (costly) hash, so guessing tokens costs the server nothing.
    let (user, email) = password_reset::find(db, &confirm.token)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    let password = confirm.password.0;
    if password.trim().to_lowercase() == email {
        return Err(ApiError::validation("password", "must not be the email address"));
    }
    let password_hash = state.auth.hash_password(password).await?;
    let mut tx = db.begin().await?;
    if !password_reset::spend(&mut tx, &confirm.token, user).await? {
        return Err(ApiError::InvalidToken);
    }
    users::set_password(&mut tx, user, &password_hash).await?;
    let ended = sessions::end_all(&mut tx, user, None).await?;
    tx.commit().await?;
    state.auth.sessions.forget_user(user);
    tracing::info!(audit = true, actor = %user, action = "password.reset", target = %user, sessions_ended = ended, "audit");
    Ok(StatusCode::NO_CONTENT)
}

fn token_for(state: &AppState, user: Uuid, session: Uuid, refresh: &RefreshToken) -> Result<Token, ApiError> {
    Ok(Token {
        token: state.auth.issue_token(user, session)?,
        token_type: "Bearer",
        expires_in: state.auth.token_ttl.as_secs(),
        refresh_token: refresh.expose(),
        refresh_expires_in: state.auth.refresh_ttl.as_secs(),
    })
}
