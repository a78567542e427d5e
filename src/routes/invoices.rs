//! Invoices: create, list (keyset pagination), get, and send.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::{self, rfc3339};
use crate::error::{
    ApiError, ApiJson, ApiQuery, ErrorBody, FieldError, JsonBodyErrors, NO_CONTROL_CHARS, has_control_chars,
};
use crate::routes::stats::StatsChange;
use crate::{record_stats, with_db, with_transaction};

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
    /// 1 to 200 characters, not only white space, no control characters.
    #[schema(
        example = "Acme Ltd",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
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
    /// `YYYY-MM-DD`, a real date with a year from 0001 to 9999.
    #[schema(example = "2026-12-31", format = Date,
        pattern = r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-[0-9]{2}-[0-9]{2}$")]
    due_date: Option<String>,
    /// At most 2000 characters; line breaks and tabs are the only control characters allowed.
    #[schema(
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
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
    pub currency: String,
    due_date: Option<String>,
    description: Option<String>,
    pub status: String,
    created_at: i64,
    pub sent_at: Option<i64>,
    pub paid_at: Option<i64>,
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
    } else if has_control_chars(&invoice.customer_name, false) {
        errors.push(FieldError::new("customer_name", NO_CONTROL_CHARS));
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
    if invoice.due_date.as_deref().is_some_and(|due| !is_calendar_date(due)) {
        errors.push(FieldError::new("due_date", "must be a date as YYYY-MM-DD"));
    }
    if let Some(description) = &invoice.description {
        if description.chars().count() > 2000 {
            errors.push(FieldError::new("description", "must be at most 2000 characters"));
        } else if has_control_chars(description, true) {
            errors.push(FieldError::new("description", NO_CONTROL_CHARS));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Exactly `YYYY-MM-DD`, a real date, year 0001 to 9999: `time` alone also takes signed,
/// longer and zero years (`+2026-01-01`, `0000-01-01`), which would be stored as sent.
fn is_calendar_date(text: &str) -> bool {
    let shape_ok = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    shape_ok
        && !text.starts_with("0000")
        && time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]")).is_ok()
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
) -> Result<Response, ApiError> {
    validate(&body)?;
    let sql = concat!(
        "INSERT INTO invoices (id, user_id, customer_name, customer_phone, amount_cents, currency, due_date, \
         description, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'draft', $9) RETURNING ",
        invoice_columns!()
    );
    // The insert and the owner's aggregates commit together.
    let row = with_transaction!(state.database()?, tx => {
        let row: InvoiceRow = sqlx::query_as(sql)
            .bind(Uuid::now_v7().to_string())
            .bind(user.id.to_string())
            .bind(&body.customer_name)
            .bind(&body.customer_phone)
            .bind(body.amount_cents)
            .bind(&body.currency)
            .bind(&body.due_date)
            .bind(&body.description)
            .bind(db::now_micros())
            .fetch_one(&mut *tx)
            .await
            .map_err(|error| match error {
                // A valid token of an account that does not exist: the foreign key says so for free.
                sqlx::Error::Database(e) if e.is_foreign_key_violation() => ApiError::Unauthorized,
                other => other.into(),
            })?;
        record_stats!(tx, StatsChange::created(&row));
        tx.commit().await?;
        row
    });
    publish_and_answer(&state, user, "invoice.created", StatusCode::CREATED, row)
}

/// Announces the changed invoice to the owner's event streams and answers it, serialized
/// once for both.
fn publish_and_answer(
    state: &AppState,
    user: AuthUser,
    kind: &'static str,
    status: StatusCode,
    row: InvoiceRow,
) -> Result<Response, ApiError> {
    let json = serde_json::to_string(&row.into_invoice()?).map_err(|e| ApiError::Internal(e.into()))?;
    state.events.publish_json(user.id, kind, json.clone());
    Ok((status, [(header::CONTENT_TYPE, "application/json")], json).into_response())
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
    /// `next_cursor` of the previous page: `{created_at}_{id}`, the position after its last
    /// item (creation time in microseconds since 1970, and the invoice id).
    #[param(pattern = r"^[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct InvoicePage {
    items: Vec<Invoice>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Position after the last item of a page: `(created_at, id)`, newest first. The format is
/// the documented pattern of `cursor`, and every string matching it is accepted, so the
/// schema and the server agree exactly.
fn encode_cursor(created_at: i64, id: &str) -> String {
    format!("{created_at}_{id}")
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    let (created_at, id) = cursor.split_once('_').ok_or(ApiError::InvalidCursor)?;
    // At most 18 digits always fits an i64; `parse` alone would also take a sign.
    if !(1..=18).contains(&created_at.len()) || !created_at.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidCursor);
    }
    let created_at = created_at.parse().map_err(|_| ApiError::InvalidCursor)?;
    // Only the lower-case hyphenated form that ids are stored in (`parse_str` takes others).
    let uuid = Uuid::parse_str(id).map_err(|_| ApiError::InvalidCursor)?;
    if uuid.hyphenated().to_string() != id {
        return Err(ApiError::InvalidCursor);
    }
    Ok((created_at, id.to_owned()))
}

/// A page after the cursor `($2, $3)`, newest first. The row comparison is what both planners
/// turn into an index range (PostgreSQL reads `created_at < $2 OR (created_at = $2 AND ...)`
/// as a filter over every row before the cursor); `tests/api/query_plans.rs` checks the plans.
macro_rules! page_sql {
    ($status:literal) => {
        concat!(
            "SELECT ",
            invoice_columns!(),
            " FROM invoices WHERE user_id = $1",
            $status,
            " AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT $4"
        )
    };
}

/// Every status: `invoices_user_created_idx`.
pub const LIST_SQL: &str = page_sql!("");
/// One status, as a plain equality so `invoices_user_status_created_idx` bounds it (one text
/// with `$5 IS NULL OR status = $5` cannot use that index once the plan is generic).
pub const LIST_BY_STATUS_SQL: &str = page_sql!(" AND status = $5");

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
    let status = params.status.map(InvoiceStatus::as_str);
    let sql = if status.is_some() { LIST_BY_STATUS_SQL } else { LIST_SQL };
    let mut rows: Vec<InvoiceRow> = with_db!(state.database()?, pool => {
        let query = sqlx::query_as(sql)
            .bind(user.id.to_string())
            .bind(after_created)
            .bind(&after_id)
            .bind(i64::from(limit) + 1);
        match status {
            Some(status) => query.bind(status),
            None => query,
        }
        .fetch_all(pool)
        .await
    })?;
    // Rows prove the user exists (foreign key); an empty page must ask.
    if rows.is_empty() {
        user.ensure_exists(state.database()?).await?;
    }
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

/// The `{id}` of an invoice path; `None` when it is not a UUID, including bytes that do not
/// decode as UTF-8 (`%FF`): such an id names no invoice, so it is a 404 like an unknown one.
pub struct InvoiceId(Option<Uuid>);

impl<S: Send + Sync> FromRequestParts<S> for InvoiceId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let id = Path::<String>::from_request_parts(parts, state).await.ok();
        Ok(InvoiceId(id.and_then(|Path(id)| Uuid::parse_str(&id).ok())))
    }
}

/// Loads one of the caller's invoices; another user's, or a malformed id, is 404.
async fn find_own(state: &AppState, user: AuthUser, id: InvoiceId) -> Result<InvoiceRow, ApiError> {
    let sql = concat!(
        "SELECT ",
        invoice_columns!(),
        " FROM invoices WHERE id = $1 AND user_id = $2"
    );
    let row: Option<InvoiceRow> = match id.0 {
        Some(id) => with_db!(state.database()?, pool => {
            sqlx::query_as(sql).bind(id.to_string()).bind(user.id.to_string()).fetch_optional(pool).await
        })?,
        None => None,
    };
    match row {
        Some(row) => Ok(row),
        None => {
            user.ensure_exists(state.database()?).await?;
            Err(ApiError::NotFound)
        }
    }
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
    id: InvoiceId,
) -> Result<Json<Invoice>, ApiError> {
    Ok(Json(find_own(&state, user, id).await?.into_invoice()?))
}

/// Marks a draft invoice as sent.
#[utoipa::path(post, path = "/api/v1/invoices/{id}/send", tag = "invoices", params(("id" = Uuid, Path)),
    security(("bearer" = [])), responses(
    (status = 200, body = Invoice),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
    (status = 409, body = ErrorBody, description = "`invalid_transition`: not a draft"),
))]
pub async fn send_invoice(State(state): State<AppState>, user: AuthUser, id: InvoiceId) -> Result<Response, ApiError> {
    let existing = find_own(&state, user, id).await?;
    // The status condition makes the transition atomic: of two concurrent sends, one wins.
    let sql = concat!(
        "UPDATE invoices SET status = 'sent', sent_at = $1 WHERE id = $2 AND user_id = $3 AND status = 'draft' \
         RETURNING ",
        invoice_columns!()
    );
    let row = with_transaction!(state.database()?, tx => {
        let row: Option<InvoiceRow> = sqlx::query_as(sql)
            .bind(db::now_micros())
            .bind(&existing.id)
            .bind(user.id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(sent) = &row {
            record_stats!(tx, StatsChange::sent(sent));
        }
        tx.commit().await?;
        row
    });
    let sent = row.ok_or(ApiError::InvalidTransition("only a draft invoice can be sent"))?;
    publish_and_answer(&state, user, "invoice.sent", StatusCode::OK, sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_rejects_garbage() {
        let id = Uuid::now_v7().to_string();
        let cursor = encode_cursor(1_700_000_000_000_000, &id);
        assert_eq!(decode_cursor(&cursor).unwrap(), (1_700_000_000_000_000, id));
        for bad in [
            "not a cursor",
            "12_not-a-uuid",
            "+12_0190c8a4-7e1e-7c3a-9a1b-3c5d7e9f1a2b",
            "1234567890123456789_0190c8a4-7e1e-7c3a-9a1b-3c5d7e9f1a2b",
            "12_0190C8A4-7E1E-7C3A-9A1B-3C5D7E9F1A2B",
            "12_0190c8a47e1e7c3a9a1b3c5d7e9f1a2b",
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
        assert!(
            decode_cursor("0_00000000-0000-0000-0000-000000000000").is_ok(),
            "schema-valid"
        );
    }

    #[test]
    fn due_dates_are_exactly_yyyy_mm_dd() {
        for good in ["0001-01-01", "2024-02-29", "9999-12-31"] {
            assert!(is_calendar_date(good), "{good}");
        }
        for bad in [
            "+2026-01-01",
            "-0001-01-01",
            "0000-01-01",
            "2026-1-01",
            "2025-02-29",
            "20260101",
            "٢٠٢٦-01-01",
        ] {
            assert!(!is_calendar_date(bad), "{bad}");
        }
    }
}
