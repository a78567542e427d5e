//! Business numbers for the caller, read from the per-user aggregates kept with the invoices.

use axum::Json;
use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::invoices::stats::{self, Summary};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(summary))
}

/// Counts by status, conversion, time to payment and paid totals for the caller's invoices.
#[utoipa::path(get, path = "/api/v1/stats/summary", tag = "stats", security(("bearer" = [])), responses(
    (status = 200, body = Summary),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
))]
pub async fn summary(State(state): State<AppState>, user: AuthUser) -> Result<Json<Summary>, ApiError> {
    let summary = stats::summary(state.database()?, user.id).await?;
    // A valid token of an account that no longer exists authenticates nobody.
    summary.map(Json).ok_or(ApiError::Unauthorized)
}
