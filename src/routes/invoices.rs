//! Invoices: create, list (keyset pagination), get, and send.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::{self, rfc3339};
use crate::error::{ApiError, ApiJson, ApiQuery, ErrorBody, FieldError, JsonBodyErrors};
use crate::with_db;

/// Creating is rate limited per user; `app::routes` wraps this router in that limit.
pub fn create_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_invoice))
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_invoices))
        .routes(routes!(get_invoice))
        .routes(routes!(send_invoice))
}

const MAX_AMOUNT_CENTS: i64 = 100_000_000_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvoice {
    /// 1 to 200 characters, not only white space.
    #[schema(example = "Acme Ltd", min_length = 1, max_length = 200, pattern = r"\S")]
    customer_name: String,
    /// E.164: `+` and 7 to 15 digits.
    #[schema(example = "+14155550100", pattern = r"^\+[0-9]{7,15}$")]
    customer_phone: Option<String>,
    /// 1 to 100000000000.
    #[schema(example = 12500, minimum = 1, maximum = 100_000_000_000_i64)]
    #[serde(deserialize_with = "crate::error::integral")]
    amount_cents: i64,
    /// Three upper-case letters (ISO 4217).
    #[schema(example = "USD", pattern = "^[A-Z]{3}$")]
    currency: String,
    /// `YYYY-MM-DD`.
    #[schema(example = "2026-12-31", format = Date)]
    due_date: Option<String>,
    /// At most 2000 characters.
    #[schema(max_length = 2000)]
    description: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InvoiceStatus {
    Draft,
    Sent,
    Paid,
}

impl InvoiceStatus {
    fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Sent => "sent",
            InvoiceStatus::Paid => "paid",
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Invoice {
    id: Uuid,
    customer_name: String,
    customer_phone: Option<String>,
    amount_cents: i64,
    currency: String,
    due_date: Option<String>,
    description: Option<String>,
    status: InvoiceStatus,
    created_at: String,
    sent_at: Option<String>,
    paid_at: Option<String>,
}

/// The columns every invoice query returns, as a literal so queries stay `&'static str`
/// (sqlx refuses SQL built at run time).
#[macro_export]
macro_rules! invoice_columns {
    () => {
        "id, user_id, customer_name, customer_phone, amount_cents, currency, due_date, description, status, \
         created_at, sent_at, paid_at"
    };
}

#[derive(sqlx::FromRow)]
pub struct InvoiceRow {
    pub id: String,
    pub user_id: String,
    customer_name: String,
    customer_phone: Option<String>,
    pub amount_cents: i64,
    currency: String,
    due_date: Option<String>,
    description: Option<String>,
    pub status: String,
    created_at: i64,
    sent_at: Option<i64>,
    paid_at: Option<i64>,
}

impl InvoiceRow {
    pub fn into_invoice(self) -> Result<Invoice, ApiError> {
        let status = match self.status.as_str() {
            "draft" => InvoiceStatus::Draft,
            "sent" => InvoiceStatus::Sent,
            "paid" => InvoiceStatus::Paid,
            other => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "invoice has unknown status {other:?}"
                )));
            }
        };
        Ok(Invoice {
            id: Uuid::parse_str(&self.id).map_err(|e| ApiError::Internal(e.into()))?,
            customer_name: self.customer_name,
            customer_phone: self.customer_phone,
            amount_cents: self.amount_cents,
            currency: self.currency,
            due_date: self.due_date,
            description: self.description,
            status,
            created_at: rfc3339(self.created_at),
            sent_at: self.sent_at.map(rfc3339),
            paid_at: self.paid_at.map(rfc3339),
        })
    }
}

fn validate(invoice: &NewInvoice) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let name_len = invoice.customer_name.chars().count();
    if name_len == 0 || name_len > 200 || invoice.customer_name.trim().is_empty() {
        errors.push(FieldError::new("customer_name", "must be 1 to 200 characters"));
    }
    if let Some(phone) = &invoice.customer_phone {
        let digits = phone.strip_prefix('+').unwrap_or_default();
        if !(7..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            errors.push(FieldError::new("customer_phone", "must be E.164: + and 7 to 15 digits"));
        }
    }
    if !(1..=MAX_AMOUNT_CENTS).contains(&invoice.amount_cents) {
        errors.push(FieldError::new(
            "amount_cents",
            "must be an integer from 1 to 100000000000",
        ));
    }
    if invoice.currency.len() != 3 || !invoice.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        errors.push(FieldError::new(
            "currency",
            "must be three upper-case letters, e.g. USD",
        ));
    }
    if let Some(due) = &invoice.due_date
        && time::Date::parse(due, time::macros::format_description!("[year]-[month]-[day]")).is_err()
    {
        errors.push(FieldError::new("due_date", "must be a date as YYYY-MM-DD"));
    }
    if invoice.description.as_ref().is_some_and(|d| d.chars().count() > 2000) {
        errors.push(FieldError::new("description", "must be at most 2000 characters"));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Creates a draft invoice.
#[utoipa::path(post, path = "/api/v1/invoices", tag = "invoices", request_body = NewInvoice,
    security(("bearer" = [])), responses(
    (status = 201, body = Invoice),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 422, body = ErrorBody, description = "`validation_failed`"),
    (status = 429, body = ErrorBody, description = "`rate_limited` (RATE_LIMIT_INVOICE_CREATE)"),
    JsonBodyErrors,
))]
pub async fn create_invoice(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(body): ApiJson<NewInvoice>,
) -> Result<(StatusCode, Json<Invoice>), ApiError> {
    validate(&body)?;
    let sql = concat!(
        "INSERT INTO invoices (id, user_id, customer_name, customer_phone, amount_cents, currency, due_date, \
         description, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'draft', $9) RETURNING ",
        invoice_columns!()
    );
    let row: InvoiceRow = with_db!(state.database()?, pool => {
        sqlx::query_as(sql)
            .bind(Uuid::now_v7().to_string())
            .bind(user.id.to_string())
            .bind(&body.customer_name)
            .bind(&body.customer_phone)
            .bind(body.amount_cents)
            .bind(&body.currency)
            .bind(&body.due_date)
            .bind(&body.description)
            .bind(db::now_micros())
            .fetch_one(pool)
            .await
    })?;
    let invoice = row.into_invoice()?;
    state.events.publish(user.id, "invoice.created", &invoice);
    Ok((StatusCode::CREATED, Json(invoice)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
// Our `ApiQuery` extractor is not axum's `Query`, so utoipa must be told where these live.
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only invoices in this status.
    status: Option<InvoiceStatus>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct InvoicePage {
    items: Vec<Invoice>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Position after the last item of a page: `(created_at, id)`, newest first.
fn encode_cursor(created_at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}|{id}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| ApiError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| ApiError::InvalidCursor)?;
    let (created_at, id) = text.split_once('|').ok_or(ApiError::InvalidCursor)?;
    let created_at = created_at.parse().map_err(|_| ApiError::InvalidCursor)?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::InvalidCursor)?;
    Ok((created_at, id.to_string()))
}

/// The caller's invoices, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/invoices", tag = "invoices", params(ListParams),
    security(("bearer" = [])), responses(
    (status = 200, body = InvoicePage),
    (status = 400, body = ErrorBody, description = "`invalid_cursor`"),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 422, body = ErrorBody, description = "`validation_failed` (limit or status)"),
))]
pub async fn list_invoices(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<InvoicePage>, ApiError> {
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::validation("limit", "must be from 1 to 100"));
    }
    // Keyset pagination: stable under inserts and equal timestamps, no gaps or repeats.
    let (after_created, after_id) = match &params.cursor {
        Some(cursor) => decode_cursor(cursor)?,
        None => (i64::MAX, String::new()),
    };
    let sql = concat!(
        "SELECT ",
        invoice_columns!(),
        " FROM invoices WHERE user_id = $1 AND (CAST($2 AS TEXT) IS NULL OR status = $2) \
         AND (created_at < $3 OR (created_at = $3 AND id < $4)) ORDER BY created_at DESC, id DESC LIMIT $5"
    );
    let mut rows: Vec<InvoiceRow> = with_db!(state.database()?, pool => {
        sqlx::query_as(sql)
            .bind(user.id.to_string())
            .bind(params.status.map(InvoiceStatus::as_str))
            .bind(after_created)
            .bind(&after_id)
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await
    })?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.created_at, &r.id))
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(InvoiceRow::into_invoice)
        .collect::<Result<_, _>>()?;
    Ok(Json(InvoicePage { items, next_cursor }))
}

/// Loads one of the caller's invoices; another user's, or a malformed id, is 404.
async fn find_own(state: &AppState, user: AuthUser, id: &str) -> Result<InvoiceRow, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound)?;
    let sql = concat!(
        "SELECT ",
        invoice_columns!(),
        " FROM invoices WHERE id = $1 AND user_id = $2"
    );
    let row: Option<InvoiceRow> = with_db!(state.database()?, pool => {
        sqlx::query_as(sql).bind(id.to_string()).bind(user.id.to_string()).fetch_optional(pool).await
    })?;
    row.ok_or(ApiError::NotFound)
}

/// One of the caller's invoices.
#[utoipa::path(get, path = "/api/v1/invoices/{id}", tag = "invoices", params(("id" = Uuid, Path)),
    security(("bearer" = [])), responses(
    (status = 200, body = Invoice),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
))]
pub async fn get_invoice(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Invoice>, ApiError> {
    Ok(Json(find_own(&state, user, &id).await?.into_invoice()?))
}

/// Marks a draft invoice as sent.
#[utoipa::path(post, path = "/api/v1/invoices/{id}/send", tag = "invoices", params(("id" = Uuid, Path)),
    security(("bearer" = [])), responses(
    (status = 200, body = Invoice),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
    (status = 409, body = ErrorBody, description = "`invalid_transition`: not a draft"),
))]
pub async fn send_invoice(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Invoice>, ApiError> {
    let existing = find_own(&state, user, &id).await?;
    // The status condition makes the transition atomic: of two concurrent sends, one wins.
    let sql = concat!(
        "UPDATE invoices SET status = 'sent', sent_at = $1 WHERE id = $2 AND user_id = $3 AND status = 'draft' \
         RETURNING ",
        invoice_columns!()
    );
    let row: Option<InvoiceRow> = with_db!(state.database()?, pool => {
        sqlx::query_as(sql).bind(db::now_micros()).bind(&existing.id).bind(user.id.to_string()).fetch_optional(pool).await
    })?;
    let invoice = row
        .ok_or(ApiError::InvalidTransition("only a draft invoice can be sent"))?
        .into_invoice()?;
    state.events.publish(user.id, "invoice.sent", &invoice);
    Ok(Json(invoice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_rejects_garbage() {
        let id = Uuid::now_v7().to_string();
        let cursor = encode_cursor(1_700_000_000_000_000, &id);
        assert_eq!(decode_cursor(&cursor).unwrap(), (1_700_000_000_000_000, id));
        assert!(decode_cursor("not base64!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("12|not-a-uuid")).is_err());
    }
}
