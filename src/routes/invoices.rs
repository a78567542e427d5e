//! Invoices: create, list (keyset pagination), get, and send.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::AuthUser;
use crate::config::RateSetting;
use crate::error::{ApiError, ErrorBody, JsonBodyErrors};
use crate::extract::{ApiJson, ApiQuery, PathId};
use crate::invoices::attachments::{self, SweepOrphans};
use crate::invoices::events::{self, EventHub};
use crate::invoices::input::NewInvoice;
use crate::invoices::store::{self, InvoiceRow};
use crate::invoices::{Invoice, InvoiceStatus};
use crate::jobs::Registry;
use crate::pagination::{Page, PageRequest};
use crate::rate_limit::Limit;
use crate::state::AppState;
use crate::users;

/// Per user.
const CREATE_LIMIT: Limit = Limit::per_user(
    "invoice_create",
    RateSetting {
        var: "RATE_LIMIT_INVOICE_CREATE",
        default: "10/h",
        help: "Invoices created per user",
    },
);

/// The limits above, for `app::rate_limits`.
pub const LIMITS: &[Limit] = &[CREATE_LIMIT];

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
        .merge(super::attachments::router(state))
        .merge(super::events::router())
        .merge(super::stats::router())
        .merge(webhooks)
        .route_layer(Extension(events))
}

/// The example domain's jobs, registered by `app::jobs`: the sweep of attachment objects left
/// without a row.
pub fn example_jobs(registry: Registry) -> Registry {
    registry
        .on(|context, _: SweepOrphans| async move {
            let deleted = attachments::sweep_orphans(&context.db, &context.storage).await?;
            if deleted > 0 {
                tracing::info!(deleted, "attachment objects without a row deleted");
            }
            Ok(())
        })
        .every(attachments::SWEEP_EVERY, SweepOrphans)
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
    events.publish_json(user.id, kind, &json);
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
    // `PageParams`' pattern: utoipa takes only a literal (a test checks they agree).
    #[param(pattern = r"^[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    cursor: Option<String>,
}

/// The caller's invoices, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/invoices", tag = "invoices", params(ListParams),
    security(("bearer" = [])), responses(
    (status = 200, body = Page<Invoice>),
    (status = 400, body = ErrorBody, description = "`invalid_cursor`"),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 422, body = ErrorBody, description = "`validation_failed` (limit or status)"),
))]
pub async fn list_invoices(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<Invoice>>, ApiError> {
    let request = PageRequest::new(params.limit, params.cursor.as_deref())?;
    let db = state.database()?;
    let rows = store::page(db, user.id, params.status, &request.start, request.fetch()).await?;
    // Rows prove the user exists (foreign key); an empty page must ask.
    if rows.is_empty() {
        users::ensure_exists(db, user.id).await?;
    }
    let page = request.page(rows, |row| (row.created_at, &row.id), InvoiceRow::into_invoice)?;
    Ok(Json(page))
}

/// One of the caller's invoices (see `users::own`).
pub async fn find_own(state: &AppState, user: AuthUser, id: PathId) -> Result<InvoiceRow, ApiError> {
    let db = state.database()?;
    let found = match id.0 {
        Some(id) => store::find_own(db, user.id, id).await?,
        None => None,
    };
    users::own(db, user.id, found).await
}

/// One of the caller's invoices.
#[utoipa::path(get, path = "/api/v1/invoices/{id}", tag = "invoices", params(("id" = Uuid, Path)),
    security(("bearer" = [])), responses(
    (status = 200, body = Invoice),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
))]
pub async fn get_invoice(State(state): State<AppState>, user: AuthUser, id: PathId) -> Result<Json<Invoice>, ApiError> {
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
    id: PathId,
) -> Result<Response, ApiError> {
    let draft = find_own(&state, user, id).await?;
    let sent = store::mark_sent(state.database()?, user.id, &draft.id)
        .await?
        .ok_or(ApiError::InvalidTransition("only a draft invoice can be sent"))?;
    publish_and_answer(&events, user, "invoice.sent", StatusCode::OK, sent)
}
