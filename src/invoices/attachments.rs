//! Files attached to invoices: their rows, the per-user quota, and the sweep of objects
//! whose row never came (docs/files.md). The bytes live in storage under `attachments/{id}`.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::path::Path;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::{self, Constraint, Db, OnConstraint, Tx, rfc3339};
use crate::error::ApiError;
use crate::storage::Storage;
use crate::uploads::StoredFile;
use crate::{with_db, with_tx, with_write};

/// The storage prefix of attachments' objects: the sweep lists this one alone.
const ATTACHMENTS: &str = "attachments";

/// What an upload may be: the content types accepted, as detected from the bytes.
pub const ALLOWED_TYPES: &[&str] = &["application/pdf", "image/png", "image/jpeg", "image/webp"];
pub const ALLOWED_NAMES: &str = "the file must be a PDF, PNG, JPEG or WebP image";

/// An object under `attachments/` this old without a row is an upload that never finished.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);
/// How often the sweep runs. It lists every attachment's object, so not often; an orphan still
/// goes within a day.
pub const SWEEP_EVERY: Duration = Duration::from_secs(6 * 3600);
/// Ids looked up per query by the sweep.
const SWEEP_BATCH: usize = 500;

/// An attachment whose invoice is gone (deleted while the file was uploading).
const ATTACHMENT_INVOICE: Constraint = Constraint::foreign_key("attachments_invoice_id_fkey");

macro_rules! columns {
    () => {
        "id, invoice_id, filename, content_type, size_bytes, sha256, created_at"
    };
}

/// A file attached to an invoice, as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct Attachment {
    pub id: Uuid,
    pub invoice_id: Uuid,
    /// The uploader's name for the file, without path components or control characters.
    pub filename: String,
    /// Detected from the content: `application/pdf`, `image/png`, `image/jpeg` or `image/webp`.
    pub content_type: String,
    pub size_bytes: i64,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    pub created_at: String,
}

/// The attachments of one invoice.
#[derive(Serialize, ToSchema)]
pub struct AttachmentList {
    /// Oldest first.
    pub items: Vec<Attachment>,
}

/// An attachment as stored.
#[derive(sqlx::FromRow)]
pub struct AttachmentRow {
    pub id: String,
    invoice_id: String,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    sha256: String,
    created_at: i64,
}

impl AttachmentRow {
    pub fn into_attachment(self) -> Result<Attachment, ApiError> {
        let uuid = |text: &str| Uuid::parse_str(text).map_err(|e| ApiError::Internal(e.into()));
        Ok(Attachment {
            id: uuid(&self.id)?,
            invoice_id: uuid(&self.invoice_id)?,
            filename: self.filename,
            content_type: self.content_type,
            size_bytes: self.size_bytes,
            sha256: self.sha256,
            created_at: rfc3339(self.created_at),
        })
    }

    /// Where its bytes are.
    pub fn key(&self) -> Path {
        key(&self.id)
    }
}

/// The storage key of attachment `id`.
pub fn key(id: &str) -> Path {
    Path::from(format!("{ATTACHMENTS}/{id}"))
}

/// The bytes one owner's attachments take (`$1` the owner).
const USED_BYTES: &str = "SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM attachments WHERE user_id = $1";

/// The bytes `owner`'s attachments take.
pub async fn used_bytes(db: &Db, owner: Uuid) -> Result<u64, ApiError> {
    let used: i64 = with_db!(db, pool => sqlx::query_scalar(USED_BYTES).bind(owner.to_string()).fetch_one(pool).await)?;
    Ok(u64::try_from(used).unwrap_or(0))
}

/// Records a stored file as attachment `id` of `owner`'s `invoice`, unless that would put the
/// owner over `quota` (409). Uploads of one owner are checked one at a time, so two racing
/// uploads cannot both fit under the quota.
pub async fn insert(
    db: &Db,
    owner: Uuid,
    invoice: &str,
    id: Uuid,
    file: &StoredFile,
    quota: u64,
) -> Result<AttachmentRow, ApiError> {
    let insert = concat!(
        "INSERT INTO attachments (id, invoice_id, user_id, filename, content_type, size_bytes, sha256, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        columns!()
    );
    let size = i64::try_from(file.size).map_err(|e| ApiError::Internal(e.into()))?;
    let mut tx = db.begin().await?;
    // SQLite runs one write transaction at a time already; PostgreSQL locks the owner's row.
    if let Tx::Postgres(conn) = &mut tx {
        sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
            .bind(owner.to_string())
            .execute(&mut **conn)
            .await?;
    }
    let row = with_tx!(&mut tx, conn => {
        let used: i64 = sqlx::query_scalar(USED_BYTES).bind(owner.to_string()).fetch_one(&mut **conn).await?;
        if u64::try_from(used.saturating_add(size)).unwrap_or(u64::MAX) > quota {
            return Err(ApiError::QuotaExceeded);
        }
        sqlx::query_as(insert)
            .bind(id.to_string())
            .bind(invoice)
            .bind(owner.to_string())
            .bind(&file.filename)
            .bind(file.content_type)
            .bind(size)
            .bind(&file.sha256)
            .bind(db::now_micros())
            .fetch_one(&mut **conn)
            .await
            .on_constraint(ATTACHMENT_INVOICE, || ApiError::NotFound)
    })?;
    tx.commit().await?;
    Ok(row)
}

/// The attachments of `invoice` (already checked to be the caller's), oldest first.
pub async fn list(db: &Db, invoice: &str) -> Result<Vec<AttachmentRow>, ApiError> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM attachments WHERE invoice_id = $1 ORDER BY created_at, id"
    );
    Ok(with_db!(db, pool => sqlx::query_as(sql).bind(invoice).fetch_all(pool).await)?)
}

/// Attachment `id` of `invoice`, or `None`.
pub async fn find(db: &Db, invoice: &str, id: Uuid) -> Result<Option<AttachmentRow>, ApiError> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM attachments WHERE id = $1 AND invoice_id = $2"
    );
    Ok(with_db!(db, pool => {
        sqlx::query_as(sql).bind(id.to_string()).bind(invoice).fetch_optional(pool).await
    })?)
}

/// Deletes attachment `id` of `invoice`; the row deleted, or `None`.
pub async fn delete(db: &Db, invoice: &str, id: Uuid) -> Result<Option<AttachmentRow>, ApiError> {
    let sql = concat!(
        "DELETE FROM attachments WHERE id = $1 AND invoice_id = $2 RETURNING ",
        columns!()
    );
    with_write!(db, conn => {
        sqlx::query_as(sql).bind(id.to_string()).bind(invoice).fetch_optional(conn).await
    })
}

/// The scheduled job that deletes objects left without a row (`app::jobs`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SweepOrphans;

impl crate::jobs::Job for SweepOrphans {
    const KIND: &'static str = "attachments.sweep";
}

/// Deletes every object under `attachments/` older than an hour that no row names: an upload
/// cut off between storing its file and inserting its row, or an object whose delete failed.
/// Says how many it deleted.
pub async fn sweep_orphans(db: &Db, storage: &Storage) -> anyhow::Result<u64> {
    let mut objects = storage.list_older_than(ATTACHMENTS, ORPHAN_AGE).try_chunks(SWEEP_BATCH);
    let mut deleted = 0;
    while let Some(batch) = objects.try_next().await.map_err(|e| anyhow::anyhow!("{}", e.1))? {
        let ids: Vec<&str> = batch.iter().filter_map(|key| key.filename()).collect();
        let known = existing(db, &ids).await?;
        for key in batch
            .iter()
            .filter(|key| !key.filename().is_some_and(|id| known.contains(id)))
        {
            storage.delete(key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Which of `ids` have a row.
async fn existing(db: &Db, ids: &[&str]) -> Result<HashSet<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let found: Vec<String> = with_db!(db, pool => {
        let mut query = sqlx::QueryBuilder::new("SELECT id FROM attachments WHERE id IN (");
        let mut list = query.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        query.push(")");
        query.build_query_scalar().fetch_all(pool).await
    })?;
    Ok(found.into_iter().collect())
}
