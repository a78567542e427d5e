//! Invoice attachments: upload (multipart, streamed to storage), list, download, delete
//! (docs/files.md).

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::config::RateSetting;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{PathId, PathIds};
use crate::invoices::attachments::{self, ALLOWED_NAMES, ALLOWED_TYPES, Attachment, AttachmentList, AttachmentRow};
use crate::rate_limit::Limit;
use crate::state::AppState;
use crate::uploads::{self, FileUpload, Rules};

/// Per user.
const UPLOAD_LIMIT: Limit = Limit::per_user(
    "upload",
    RateSetting {
        var: "RATE_LIMIT_UPLOAD",
        default: "30/h",
        help: "Files uploaded per user",
    },
);

/// The limits above, for `app::rate_limits`.
pub const LIMITS: &[Limit] = &[UPLOAD_LIMIT];

pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    // The upload's body may be as large as MAX_UPLOAD_BYTES; every other route keeps MAX_BODY_BYTES.
    let upload = UPLOAD_LIMIT
        .on(state, routes!(upload))
        .layer(DefaultBodyLimit::max(uploads::body_limit(
            state.config.uploads.max_bytes,
        )));
    OpenApiRouter::new()
        .merge(upload)
        .routes(routes!(list))
        .routes(routes!(download, delete))
}

/// The multipart body of an upload, for the OpenAPI document (and the file picker of `/docs`).
#[derive(ToSchema)]
#[allow(dead_code)]
// No other part is accepted: `additionalProperties: false`.
#[serde(deny_unknown_fields)]
struct UploadForm {
    /// A PDF, PNG, JPEG or WebP file of at most MAX_UPLOAD_BYTES.
    #[schema(value_type = String, format = Binary, min_length = 1)]
    file: Vec<u8>,
}

/// The stored id of the caller's invoice (see `routes::invoices::find_own`).
async fn own_invoice(state: &AppState, user: AuthUser, id: Option<Uuid>) -> Result<String, ApiError> {
    Ok(super::invoices::find_own(state, user, PathId(id)).await?.id)
}

/// The caller's invoice and the attachment id of a `…/attachments/{attachment_id}` path.
async fn own_invoice_and_attachment(
    state: &AppState,
    user: AuthUser,
    PathIds(id, attachment_id): PathIds,
) -> Result<(String, Uuid), ApiError> {
    let invoice = own_invoice(state, user, id).await?;
    Ok((invoice, attachment_id.ok_or(ApiError::NotFound)?))
}

/// Attaches a file to one of the caller's invoices. The type is read from the content, never
/// from the part's `Content-Type` or the file name.
#[utoipa::path(post, path = "/api/v1/invoices/{id}/attachments", tag = "attachments",
    params(("id" = Uuid, Path)),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    security(("bearer" = [])), responses(
    (status = 201, body = Attachment),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
    (status = 409, body = ErrorBody, description = "`quota_exceeded` (UPLOAD_QUOTA_BYTES_PER_USER)"),
    (status = 413, body = ErrorBody, description = "`payload_too_large`: over MAX_UPLOAD_BYTES"),
    (status = 415, body = ErrorBody, description = "`unsupported_media_type`: not multipart, or not a PDF, PNG, JPEG or WebP"),
    (status = 422, body = ErrorBody, description = "`validation_failed`: no `file` part, an empty file, or more than one part"),
    (status = 429, body = ErrorBody, description = "`rate_limited` (RATE_LIMIT_UPLOAD)"),
    (status = 503, body = ErrorBody, description = "`service_unavailable`: the file storage is unreachable"),
))]
pub async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    PathId(id): PathId,
    form: FileUpload,
) -> Result<(StatusCode, Json<Attachment>), ApiError> {
    let invoice = own_invoice(&state, user, id).await?;
    let db = state.database()?;
    let limits = &state.config.uploads;
    let remaining_quota = limits
        .quota_bytes_per_user
        .saturating_sub(attachments::used_bytes(db, user.id).await?);
    if remaining_quota == 0 {
        return Err(ApiError::QuotaExceeded);
    }
    let rules = Rules {
        max_bytes: limits.max_bytes,
        remaining_quota,
        allowed: ALLOWED_TYPES,
        allowed_names: ALLOWED_NAMES,
    };
    // The object first, then its row: a row never names a missing object.
    let attachment_id = Uuid::now_v7();
    let key = attachments::key(&attachment_id.to_string());
    let file = form.store(&state.storage, key.clone(), &rules).await?;
    match attachments::insert(db, user.id, &invoice, attachment_id, &file, limits.quota_bytes_per_user).await {
        Ok(row) => Ok((StatusCode::CREATED, Json(row.into_attachment()?))),
        Err(refused) => {
            // If this delete fails too, the sweep removes the object within a day.
            if let Err(e) = state.storage.delete(&key).await {
                tracing::warn!(error = %e, "could not delete the object of a refused upload");
            }
            Err(refused)
        }
    }
}

/// The attachments of one of the caller's invoices, oldest first.
#[utoipa::path(get, path = "/api/v1/invoices/{id}/attachments", tag = "attachments",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])), responses(
    (status = 200, body = AttachmentList),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    PathId(id): PathId,
) -> Result<Json<AttachmentList>, ApiError> {
    let invoice = own_invoice(&state, user, id).await?;
    let items = attachments::list(state.database()?, &invoice)
        .await?
        .into_iter()
        .map(AttachmentRow::into_attachment)
        .collect::<Result<_, _>>()?;
    Ok(Json(AttachmentList { items }))
}

/// The file itself, streamed, as a download (`Content-Disposition: attachment`) that the
/// browser must not sniff or run.
#[utoipa::path(get, path = "/api/v1/invoices/{id}/attachments/{attachment_id}", tag = "attachments",
    params(("id" = Uuid, Path), ("attachment_id" = Uuid, Path)),
    security(("bearer" = [])), responses(
    (status = 200, description = "the file's bytes, with its detected Content-Type",
        content(("application/pdf"), ("image/png"), ("image/jpeg"), ("image/webp"))),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
    (status = 503, body = ErrorBody, description = "`service_unavailable`: the file storage is unreachable"),
))]
pub async fn download(State(state): State<AppState>, user: AuthUser, ids: PathIds) -> Result<Response, ApiError> {
    let (invoice, attachment_id) = own_invoice_and_attachment(&state, user, ids).await?;
    let row = attachments::find(state.database()?, &invoice, attachment_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let (size, bytes) = state.storage.read(&row.key()).await?;
    uploads::download(bytes, size, &row.content_type, &row.filename)
}

/// Deletes the attachment and its file.
#[utoipa::path(delete, path = "/api/v1/invoices/{id}/attachments/{attachment_id}", tag = "attachments",
    params(("id" = Uuid, Path), ("attachment_id" = Uuid, Path)),
    security(("bearer" = [])), responses(
    (status = 204, description = "deleted"),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 404, body = ErrorBody, description = "`not_found`"),
))]
pub async fn delete(State(state): State<AppState>, user: AuthUser, ids: PathIds) -> Result<Response, ApiError> {
    let (invoice, attachment_id) = own_invoice_and_attachment(&state, user, ids).await?;
    let row = attachments::delete(state.database()?, &invoice, attachment_id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // The row is gone, so the file is no longer served; a failed delete leaves an object the
    // sweep removes within a day.
    if let Err(e) = state.storage.delete(&row.key()).await {
        tracing::warn!(error = %e, "could not delete an attachment's object");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
