//! Every SQL statement on invoices and payment events, written once for both databases. Each
//! change updates its owner's aggregates (`stats.rs`) in the same transaction.

use sqlx::FromRow;
use uuid::Uuid;

use super::input::NewInvoice;
use super::stats::{self, StatsChange, upsert_stats};
use super::{Invoice, InvoiceStatus};
use crate::db::{self, Constraint, Db, OnConstraint, rfc3339};
use crate::error::ApiError;
use crate::pagination::Cursor;
use crate::{with_db, with_one_write_call, with_tx};

/// An invoice whose owner does not exist: a valid token of a deleted account.
const INVOICE_OWNER: Constraint = Constraint::foreign_key("invoices_user_id_fkey");

/// The columns every invoice query returns, as a literal so queries stay `&'static str`
/// (sqlx refuses SQL built at run time).
macro_rules! columns {
    () => {
        "id, user_id, customer_name, customer_phone, amount_cents, currency, due_date, description, status, \
         created_at, sent_at, paid_at"
    };
}

/// An invoice as stored.
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
    pub status: InvoiceStatus,
    pub created_at: i64,
    pub sent_at: Option<i64>,
    pub paid_at: Option<i64>,
}

impl InvoiceRow {
    pub fn into_invoice(self) -> Result<Invoice, ApiError> {
        Ok(Invoice {
            id: Uuid::parse_str(&self.id).map_err(|e| ApiError::Internal(e.into()))?,
            customer_name: self.customer_name,
            customer_phone: self.customer_phone,
            amount_cents: self.amount_cents,
            currency: self.currency,
            due_date: self.due_date,
            description: self.description,
            status: self.status,
            created_at: rfc3339(self.created_at),
            sent_at: self.sent_at.map(rfc3339),
            paid_at: self.paid_at.map(rfc3339),
        })
    }

    /// The owner, as the id type the rest of the service uses.
    pub fn owner(&self) -> Result<Uuid, ApiError> {
        Uuid::parse_str(&self.user_id).map_err(|e| ApiError::Internal(e.into()))
    }
}

/// A new invoice, `$1` to `$10`.
macro_rules! insert_invoice {
    () => {
        concat!(
            "INSERT INTO invoices (id, user_id, customer_name, customer_phone, amount_cents, currency, due_date, \
             description, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING ",
            columns!()
        )
    };
}

/// A new invoice and its first count in one call (`with_one_write_call!`). PostgreSQL: one
/// statement, whose count comes from the row it inserts (so the invoice is locked first, as
/// in every other change). SQLite: one transaction in one text.
const INSERT_POSTGRES: &str = concat!(
    "WITH invoice AS (",
    insert_invoice!(),
    "), counted AS (",
    upsert_stats!("SELECT user_id, $11, $12, $13, $14, $15, $16, $17 FROM invoice"),
    ") SELECT * FROM invoice"
);
const INSERT_SQLITE: &str = concat!(
    "BEGIN IMMEDIATE; ",
    insert_invoice!(),
    "; ",
    upsert_stats!("VALUES ($2, $11, $12, $13, $14, $15, $16, $17)"),
    "; COMMIT"
);

/// Stores a new draft of `owner` with its count, in one call to the database; 401 when the
/// owner's account no longer exists.
pub async fn insert(db: &Db, owner: Uuid, new: &NewInvoice) -> Result<InvoiceRow, ApiError> {
    let (id, owner) = (Uuid::now_v7().to_string(), owner.to_string());
    let counts = StatsChange::created(&id, &owner);
    let sql = match db {
        Db::Postgres(_) => INSERT_POSTGRES,
        Db::Sqlite(..) => INSERT_SQLITE,
    };
    let rows: Vec<InvoiceRow> = with_one_write_call!(db, conn => {
        let query = sqlx::query(sql)
            .bind(&id)
            .bind(&owner)
            .bind(&new.customer_name.0)
            .bind(new.customer_phone.as_ref().map(|phone| &phone.0))
            .bind(new.amount_cents.0)
            .bind(&new.currency.0)
            .bind(new.due_date.as_ref().map(|date| &date.0))
            .bind(new.description.as_ref().map(|text| &text.0))
            .bind(InvoiceStatus::Draft)
            .bind(db::now_micros());
        counts.bind_counts(query).try_map(|row| InvoiceRow::from_row(&row)).fetch_all(conn).await
    })
    .on_constraint(INVOICE_OWNER, || ApiError::Unauthorized)?;
    rows.into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the invoice insert returned no row")))
}

/// A page after the cursor `($2, $3)`, newest first. The row comparison is what both planners
/// turn into an index range (PostgreSQL reads `created_at < $2 OR (created_at = $2 AND ...)`
/// as a filter over every row before the cursor); `tests/api/query_plans.rs` checks the plans.
/// The limit is cast because SQLite plans a bare `LIMIT $4` for the value bound, which makes
/// it re-prepare the statement (parse and plan again) on every execution.
macro_rules! page_sql {
    ($status:literal) => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM invoices WHERE user_id = $1",
            $status,
            " AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT CAST($4 AS BIGINT)"
        )
    };
}

/// Every status: `invoices_user_created_idx`.
pub const LIST_SQL: &str = page_sql!("");
/// One status, as a plain equality so `invoices_user_status_created_idx` bounds it (one text
/// with `$5 IS NULL OR status = $5` cannot use that index once the plan is generic).
pub const LIST_BY_STATUS_SQL: &str = page_sql!(" AND status = $5");

/// Up to `limit` of `owner`'s invoices after `start`, in `status` if given.
pub async fn page(
    db: &Db,
    owner: Uuid,
    status: Option<InvoiceStatus>,
    start: &Cursor,
    limit: i64,
) -> Result<Vec<InvoiceRow>, ApiError> {
    let sql = if status.is_some() { LIST_BY_STATUS_SQL } else { LIST_SQL };
    Ok(with_db!(db, pool => {
        let query = sqlx::query_as(sql).bind(owner.to_string()).bind(start.created_at).bind(&start.id).bind(limit);
        match status {
            Some(status) => query.bind(status),
            None => query,
        }
        .fetch_all(pool)
        .await
    })?)
}

/// One of `owner`'s invoices; `None` for another user's, as for one that does not exist.
pub async fn find_own(db: &Db, owner: Uuid, id: Uuid) -> Result<Option<InvoiceRow>, ApiError> {
    let sql = concat!("SELECT ", columns!(), " FROM invoices WHERE id = $1 AND user_id = $2");
    Ok(with_db!(db, pool => {
        sqlx::query_as(sql).bind(id.to_string()).bind(owner.to_string()).fetch_optional(pool).await
    })?)
}

/// Marks a draft sent; `None` when it is not a draft (any more).
pub async fn mark_sent(db: &Db, owner: Uuid, id: &str) -> Result<Option<InvoiceRow>, ApiError> {
    // The status condition makes the transition atomic: of two concurrent sends, one wins.
    let sql = concat!(
        "UPDATE invoices SET status = $1, sent_at = $2 WHERE id = $3 AND user_id = $4 AND status = $5 RETURNING ",
        columns!()
    );
    let mut tx = db.begin().await?;
    let sent: Option<InvoiceRow> = with_tx!(&mut tx, conn => {
        sqlx::query_as(sql)
            .bind(InvoiceStatus::Sent)
            .bind(db::now_micros())
            .bind(id)
            .bind(owner.to_string())
            .bind(InvoiceStatus::Draft)
            .fetch_optional(&mut **conn)
            .await
    })?;
    if let Some(sent) = &sent {
        stats::apply(&mut tx, StatsChange::sent(sent)).await?;
    }
    tx.commit().await?;
    Ok(sent)
}

/// A payment the provider reports.
pub struct Payment<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub invoice_id: Uuid,
    pub amount_cents: i64,
}

/// What recording a payment did.
pub enum Recorded {
    /// The invoice, now paid.
    Paid(Box<InvoiceRow>),
    /// This event was recorded before: nothing changed.
    Duplicate,
}

/// Records the event, marks the invoice paid and counts it in the owner's stats, in one
/// transaction: any failure rolls back all three. 404 for an unknown invoice, 422 for an
/// amount that is not the invoice's, 409 for an invoice already paid by another event.
pub async fn record_payment(db: &Db, payment: &Payment<'_>) -> Result<Recorded, ApiError> {
    let select_invoice = concat!("SELECT ", columns!(), " FROM invoices WHERE id = $1");
    let mark_paid = concat!(
        "UPDATE invoices SET status = $1, paid_at = $2 WHERE id = $3 AND status <> $1 RETURNING ",
        columns!()
    );
    let insert_event = "INSERT INTO webhook_events (event_id, event_type, invoice_id, amount_cents, received_at) \
                        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING";
    let invoice_id = payment.invoice_id.to_string();
    let mut tx = db.begin().await?;
    let paid: Option<InvoiceRow> = with_tx!(&mut tx, conn => {
        let invoice: InvoiceRow = sqlx::query_as(select_invoice)
            .bind(&invoice_id)
            .fetch_optional(&mut **conn)
            .await?
            .ok_or(ApiError::NotFound)?;
        if invoice.amount_cents != payment.amount_cents {
            return Err(ApiError::validation("amount_cents", "does not match the invoice amount"));
        }
        let now = db::now_micros();
        // The event first: a concurrent delivery of the same event waits here on the primary key,
        // then inserts nothing, even when the invoice read above was already paid by it.
        let inserted = sqlx::query(insert_event)
            .bind(payment.event_id)
            .bind(payment.event_type)
            .bind(&invoice_id)
            .bind(payment.amount_cents)
            .bind(now)
            .execute(&mut **conn)
            .await?
            .rows_affected();
        if inserted == 0 {
            return Ok(Recorded::Duplicate);
        }
        // Another event paid it: refused, and the event's row goes with the rollback.
        if invoice.status == InvoiceStatus::Paid {
            return Err(ApiError::InvalidTransition("the invoice is already paid"));
        }
        sqlx::query_as(mark_paid)
            .bind(InvoiceStatus::Paid)
            .bind(now)
            .bind(&invoice_id)
            .fetch_optional(&mut **conn)
            .await?
    });
    let paid = paid.ok_or(ApiError::InvalidTransition("the invoice is already paid"))?;
    stats::apply(&mut tx, StatsChange::paid(&paid)).await?;
    tx.commit().await?;
    Ok(Recorded::Paid(Box::new(paid)))
}
