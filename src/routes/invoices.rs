//! Invoices: create, list (keyset pagination), get, and send.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody, JsonBodyErrors};
use crate::extract::{ApiJson, ApiQuery};
use crate::invoices::events::{self, EventHub};
use crate::invoices::input::NewInvoice;
use crate::invoices::store::{self, InvoiceRow, PageStart};
use crate::invoices::{Invoice, InvoiceStatus};
use crate::rate_limit::Limit;
use crate::state::AppState;
use crate::users;

/// `RATE_LIMIT_INVOICE_CREATE` per user.
const CREATE_LIMIT: Limit = Limit::per_user("invoice_create", |limits| limits.invoice_create);

/// The example domain's routes and the event hub they share: the one place it plugs into the
/// app (`app::api`), removed with it (docs/example-domain.md).
pub fn example_domain(state: &AppState) -> OpenApiRouter<AppState> {
    let config = &state.config;
    let events = Arc::new(EventHub::new(
        config.max_sse_streams,
        config.max_sse_streams_per_user,
        state.redis.clone(),
    ));
    if let Some(client) = state.redis_client.clone() {
        events::spawn_redis_subscriber(Arc::downgrade(&events), client, state.lifecycle.draining());
    }
    // Mounted (and so documented) only when it can work: without its secret it is a 404.
    let webhooks = match config.webhook_secret {
        Some(_) => super::webhooks::router(),
        None => OpenApiRouter::new(),
    };
    OpenApiRouter::new()
        .merge(router(state))
        .merge(super::events::router())
        .merge(super::stats::router())
        .merge(webhooks)
        .route_layer(Extension(events))
}

fn router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(CREATE_LIMIT.on(state, routes!(create_invoice)))
        .routes(routes!(list_invoices))
        .routes(routes!(get_invoice))
        .routes(routes!(send_invoice))
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
    Extension(events): Extension<Arc<EventHub>>,
    user: AuthUser,
    ApiJson(new): ApiJson<NewInvoice>,
) -> Result<Response, ApiError> {
    let row = store::insert(state.database()?, user.id, &new).await?;
    publish_and_answer(&events, user, "invoice.created", StatusCode::CREATED, row)
}

/// Announces the changed invoice to the owner's event streams and answers it, serialized
/// once for both.
fn publish_and_answer(
    events: &EventHub,
    user: AuthUser,
    kind: &'static str,
    status: StatusCode,
    row: InvoiceRow,
) -> Result<Response, ApiError> {
    let json = serde_json::to_string(&row.into_invoice()?).map_err(|e| ApiError::Internal(e.into()))?;
    events.publish_json(user.id, kind, json.clone());
    Ok((status, [(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// Page sizes: 1 to 100, 20 when not given.
const PAGE_SIZE_MAX: u32 = 100;
const PAGE_SIZE_DEFAULT: u32 = 20;

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
fn encode_cursor(row: &InvoiceRow) -> String {
    format!("{}_{}", row.created_at, row.id)
}

fn decode_cursor(cursor: &str) -> Result<PageStart, ApiError> {
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
    Ok(PageStart {
        created_at,
        id: id.to_owned(),
    })
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
    let limit = params.limit.unwrap_or(PAGE_SIZE_DEFAULT);
    if !(1..=PAGE_SIZE_MAX).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            &format!("must be from 1 to {PAGE_SIZE_MAX}"),
        ));
    }
    // Keyset pagination: stable under inserts and equal timestamps, no gaps or repeats.
    let start = match &params.cursor {
        Some(cursor) => decode_cursor(cursor)?,
        None => PageStart::first(),
    };
    let db = state.database()?;
    let mut rows = store::page(db, user.id, params.status, &start, i64::from(limit) + 1).await?;
    // Rows prove the user exists (foreign key); an empty page must ask.
    if rows.is_empty() && !users::exists(db, user.id).await? {
        return Err(ApiError::Unauthorized);
    }
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(encode_cursor)
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

/// One of the caller's invoices; another user's, or a malformed id, is 404 (401 when the
/// caller's account no longer exists).
async fn find_own(state: &AppState, user: AuthUser, id: InvoiceId) -> Result<InvoiceRow, ApiError> {
    let db = state.database()?;
    let found = match id.0 {
        Some(id) => store::find_own(db, user.id, id).await?,
        None => None,
    };
    match found {
        Some(row) => Ok(row),
        None if users::exists(db, user.id).await? => Err(ApiError::NotFound),
        None => Err(ApiError::Unauthorized),
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
pub async fn send_invoice(
    State(state): State<AppState>,
    Extension(events): Extension<Arc<EventHub>>,
    user: AuthUser,
    id: InvoiceId,
) -> Result<Response, ApiError> {
    let draft = find_own(&state, user, id).await?;
    let sent = store::mark_sent(state.database()?, user.id, &draft.id)
        .await?
        .ok_or(ApiError::InvalidTransition("only a draft invoice can be sent"))?;
    publish_and_answer(&events, user, "invoice.sent", StatusCode::OK, sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_decode_only_the_documented_form() {
        let id = Uuid::now_v7().to_string();
        let start = decode_cursor(&format!("1700000000000000_{id}")).unwrap();
        assert_eq!((start.created_at, start.id), (1_700_000_000_000_000, id));
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
}
