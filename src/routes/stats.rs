//! Business numbers for the caller, computed in SQL.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::with_db;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(summary))
}

#[derive(Serialize, ToSchema)]
pub struct Counts {
    draft: i64,
    sent: i64,
    paid: i64,
    total: i64,
}

#[derive(Serialize, ToSchema)]
pub struct Summary {
    invoices: Counts,
    /// paid / (sent + paid); null when nothing was sent.
    conversion_rate: Option<f64>,
    /// Mean of `paid_at - sent_at` over paid invoices that were sent; null when none.
    average_payment_seconds: Option<f64>,
    /// Sum of paid amounts per currency.
    #[schema(value_type = BTreeMap<String, i64>, example = json!({"USD": 125000}))]
    total_paid_cents: BTreeMap<String, i64>,
}

#[derive(sqlx::FromRow)]
struct CountsRow {
    draft: i64,
    sent: i64,
    paid: i64,
    total: i64,
    avg_payment_micros: Option<f64>,
    /// 0 for a valid token of an account that does not exist: asked in the same round trip.
    user_exists: i64,
}

/// Counts by status, conversion, time to payment and paid totals for the caller's invoices.
#[utoipa::path(get, path = "/api/v1/stats/summary", tag = "stats", security(("bearer" = [])), responses(
    (status = 200, body = Summary),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
))]
pub async fn summary(State(state): State<AppState>, user: AuthUser) -> Result<Json<Summary>, ApiError> {
    // Portable SQL: CASTs pin the result types that SQLite and Postgres would otherwise disagree on.
    let counts_sql = "SELECT \
        CAST(COALESCE(SUM(CASE WHEN status = 'draft' THEN 1 ELSE 0 END), 0) AS BIGINT) AS draft, \
        CAST(COALESCE(SUM(CASE WHEN status = 'sent' THEN 1 ELSE 0 END), 0) AS BIGINT) AS sent, \
        CAST(COALESCE(SUM(CASE WHEN status = 'paid' THEN 1 ELSE 0 END), 0) AS BIGINT) AS paid, \
        CAST(COUNT(*) AS BIGINT) AS total, \
        CAST(AVG(CASE WHEN status = 'paid' AND sent_at IS NOT NULL THEN paid_at - sent_at END) AS DOUBLE PRECISION) \
            AS avg_payment_micros, \
        CAST((SELECT COUNT(*) FROM users WHERE id = $1) AS BIGINT) AS user_exists \
        FROM invoices WHERE user_id = $1";
    let totals_sql = "SELECT currency, CAST(SUM(amount_cents) AS BIGINT) FROM invoices \
        WHERE user_id = $1 AND status = 'paid' GROUP BY currency";
    let user_id = user.id.to_string();
    let counts: CountsRow =
        with_db!(state.database()?, pool => sqlx::query_as(counts_sql).bind(&user_id).fetch_one(pool).await)?;
    if counts.user_exists == 0 {
        return Err(ApiError::Unauthorized);
    }
    let totals: Vec<(String, i64)> =
        with_db!(state.database()?, pool => sqlx::query_as(totals_sql).bind(&user_id).fetch_all(pool).await)?;
    let settled = counts.sent + counts.paid;
    Ok(Json(Summary {
        conversion_rate: (settled > 0).then(|| counts.paid as f64 / settled as f64),
        average_payment_seconds: counts.avg_payment_micros.map(|micros| micros / 1_000_000.0),
        invoices: Counts {
            draft: counts.draft,
            sent: counts.sent,
            paid: counts.paid,
            total: counts.total,
        },
        total_paid_cents: totals.into_iter().collect(),
    }))
}
