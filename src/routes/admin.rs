//! Admin routes: accounts listed, disabled and enabled by an admin (docs/accounts.md). Each
//! change writes one audit line.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::AdminUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiQuery, PathId};
use crate::pagination::{Page, PageRequest};
use crate::sessions;
use crate::state::AppState;
use crate::users::{self, AdminView, Standing};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(disable_user))
        .routes(routes!(enable_user))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserListParams {
    /// Only accounts whose email starts with this, in any case; no control characters.
    #[param(max_length = 254, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    email: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    // `PageParams`' pattern: utoipa takes only a literal (a test checks they agree).
    #[param(pattern = r"^[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    cursor: Option<String>,
}

/// Every account, newest first.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])),
    params(UserListParams), responses(
    (status = 200, body = Page<AdminView>),
    (status = 400, body = ErrorBody, description = "`invalid_cursor`"),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not an admin"),
    (status = 422, body = ErrorBody, description = "`validation_failed`"),
))]
pub async fn list_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    ApiQuery(params): ApiQuery<UserListParams>,
) -> Result<Json<Page<AdminView>>, ApiError> {
    let page = PageRequest::new(params.limit, params.cursor.as_deref())?;
    let prefix = params.email.as_deref().map(str::trim).filter(|p| !p.is_empty());
    if prefix.is_some_and(|p| p.chars().count() > 254 || crate::input::has_control_chars(p, false)) {
        return Err(ApiError::validation(
            "email",
            "must be at most 254 characters, without control characters",
        ));
    }
    Ok(Json(users::page(state.database()?, prefix, &page).await?))
}

/// Disables an account and ends its sessions; its login then answers 403 `account_disabled`.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/disable", tag = "admin", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id")), responses(
    (status = 200, body = AdminView),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not an admin"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
    (status = 409, body = ErrorBody, description = "`last_admin`: the only enabled admin"),
))]
pub async fn disable_user(
    State(state): State<AppState>,
    admin: AdminUser,
    id: PathId,
) -> Result<Json<AdminView>, ApiError> {
    change(&state, admin, id, Standing::Disable).await
}

/// Enables a disabled account (its old sessions stay ended).
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/enable", tag = "admin", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The account's id")), responses(
    (status = 200, body = AdminView),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not an admin"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
))]
pub async fn enable_user(
    State(state): State<AppState>,
    admin: AdminUser,
    id: PathId,
) -> Result<Json<AdminView>, ApiError> {
    change(&state, admin, id, Standing::Enable).await
}

async fn change(
    state: &AppState,
    AdminUser(admin): AdminUser,
    PathId(id): PathId,
    standing: Standing,
) -> Result<Json<AdminView>, ApiError> {
    let id = id.ok_or(ApiError::NotFound)?;
    let row = sessions::change_standing(state.database()?, id, standing)
        .await?
        .ok_or(ApiError::NotFound)?;
    state.auth.sessions.forget_user(id);
    tracing::info!(audit = true, actor = %admin.id, action = standing.action(), target = %id, "audit");
    Ok(Json(row.into_admin_view()?))
}
