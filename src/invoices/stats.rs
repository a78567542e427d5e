//! The per-user aggregates behind `GET /api/v1/stats/summary`: counts per status, paid totals
//! per currency and the sums for the average time to payment. Every change of an invoice moves
//! them in its own transaction ([`apply`]), so the summary reads a handful of rows however many
//! invoices a user has, and never disagrees with a full recomputation (`tests/api/stats.rs`).
//! The counts are split over [`SHARDS`] rows per user (`user_stats_shards`), summed on read,
//! so one user's concurrent changes rarely wait on each other's row lock.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::query::Query;
use sqlx::{Database, Encode, Type};
use utoipa::ToSchema;
use uuid::Uuid;

use super::store::InvoiceRow;
use crate::db::{Db, Tx};
use crate::error::ApiError;
use crate::{with_db, with_tx};

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

/// One row per paid currency (one with none when nothing is paid): the user's aggregates
/// beside each paid total.
#[derive(sqlx::FromRow)]
struct SummaryRow {
    draft: i64,
    sent: i64,
    paid: i64,
    avg_payment_micros: Option<f64>,
    currency: Option<String>,
    total_cents: Option<i64>,
}

/// `owner`'s summary; `None` when the account does not exist.
pub async fn summary(db: &Db, owner: Uuid) -> Result<Option<Summary>, ApiError> {
    // Starting from `users` answers "does this account exist" in the same round trip: no row
    // for a valid token of a deleted account. The mean is divided as AVG did over the
    // invoices (NUMERIC on PostgreSQL, a double on SQLite), so the numbers stay the same;
    // `* 1.0` keeps SQLite from dividing integers.
    let sql = "SELECT \
        COALESCE(s.draft, 0) AS draft, COALESCE(s.sent, 0) AS sent, COALESCE(s.paid, 0) AS paid, \
        CASE WHEN s.paid_after_send > 0 THEN CAST((CAST(s.paid_after_send_seconds AS NUMERIC) * 1000000 \
            + s.paid_after_send_micros) * 1.0 / s.paid_after_send AS DOUBLE PRECISION) END AS avg_payment_micros, \
        t.currency, t.total_cents \
        FROM users u \
        LEFT JOIN (SELECT user_id, CAST(SUM(draft) AS BIGINT) AS draft, CAST(SUM(sent) AS BIGINT) AS sent, \
            CAST(SUM(paid) AS BIGINT) AS paid, SUM(paid_after_send) AS paid_after_send, \
            SUM(paid_after_send_seconds) AS paid_after_send_seconds, \
            SUM(paid_after_send_micros) AS paid_after_send_micros \
            FROM user_stats_shards WHERE user_id = $1 GROUP BY user_id) s ON s.user_id = u.id \
        LEFT JOIN user_paid_totals t ON t.user_id = u.id \
        WHERE u.id = $1";
    let rows: Vec<SummaryRow> =
        with_db!(db, pool => sqlx::query_as(sql).bind(owner.to_string()).fetch_all(pool).await)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let settled = first.sent + first.paid;
    Ok(Some(Summary {
        conversion_rate: (settled > 0).then(|| first.paid as f64 / settled as f64),
        average_payment_seconds: first.avg_payment_micros.map(|micros| micros / 1_000_000.0),
        invoices: Counts {
            draft: first.draft,
            sent: first.sent,
            paid: first.paid,
            total: first.draft + settled,
        },
        total_paid_cents: rows
            .iter()
            .filter_map(|row| Some((row.currency.clone()?, row.total_cents?)))
            .collect(),
    }))
}

/// How one change of an invoice moves its owner's aggregates.
pub struct StatsChange<'a> {
    user_id: &'a str,
    shard: i16,
    draft: i64,
    sent: i64,
    paid: i64,
    paid_after_send: i64,
    paid_after_send_seconds: i64,
    paid_after_send_micros: i64,
    /// The currency and amount added to the paid totals.
    paid_total: Option<(&'a str, i64)>,
}

impl<'a> StatsChange<'a> {
    fn of(invoice: &'a InvoiceRow) -> StatsChange<'a> {
        StatsChange::of_invoice(&invoice.id, &invoice.user_id)
    }

    fn of_invoice(id: &str, user_id: &'a str) -> StatsChange<'a> {
        StatsChange {
            user_id,
            // The last hex digit of a UUID (v7 included) is random; an invoice keeps its shard.
            shard: id
                .chars()
                .last()
                .and_then(|digit| digit.to_digit(16))
                .map_or(0, |digit| (digit % SHARDS) as i16),
            draft: 0,
            sent: 0,
            paid: 0,
            paid_after_send: 0,
            paid_after_send_seconds: 0,
            paid_after_send_micros: 0,
            paid_total: None,
        }
    }

    /// A new draft, before it is stored (its counts go in the statement that stores it).
    pub fn created(id: &str, user_id: &'a str) -> StatsChange<'a> {
        StatsChange {
            draft: 1,
            ..StatsChange::of_invoice(id, user_id)
        }
    }

    /// A draft sent.
    pub fn sent(invoice: &'a InvoiceRow) -> StatsChange<'a> {
        StatsChange {
            draft: -1,
            sent: 1,
            ..StatsChange::of(invoice)
        }
    }

    /// `invoice` as it is once paid. Only a sent invoice has `sent_at`, so it tells whether
    /// the payment came after a send (drafts can be paid too).
    pub fn paid(invoice: &'a InvoiceRow) -> StatsChange<'a> {
        let paid = StatsChange {
            paid: 1,
            paid_total: Some((&invoice.currency, invoice.amount_cents)),
            ..StatsChange::of(invoice)
        };
        match (invoice.sent_at, invoice.paid_at) {
            (Some(sent_at), Some(paid_at)) => {
                let waited = paid_at - sent_at;
                StatsChange {
                    sent: -1,
                    paid_after_send: 1,
                    // Truncating, as the backfill's SQL does: seconds * 1000000 + micros = waited.
                    paid_after_send_seconds: waited / 1_000_000,
                    paid_after_send_micros: waited % 1_000_000,
                    ..paid
                }
            }
            (Some(_), None) => StatsChange { sent: -1, ..paid },
            (None, _) => StatsChange { draft: -1, ..paid },
        }
    }
}

impl StatsChange<'_> {
    /// Binds the shard and the counts, the parameters of [`upsert_stats!`] after the user id.
    pub fn bind_counts<'q, DB: Database>(&self, query: Query<'q, DB, DB::Arguments>) -> Query<'q, DB, DB::Arguments>
    where
        i16: Encode<'q, DB> + Type<DB>,
        i64: Encode<'q, DB> + Type<DB>,
    {
        query
            .bind(self.shard)
            .bind(self.draft)
            .bind(self.sent)
            .bind(self.paid)
            .bind(self.paid_after_send)
            .bind(self.paid_after_send_seconds)
            .bind(self.paid_after_send_micros)
    }
}

/// Rows each user's counts are split over: a change updates one, picked by its invoice, so of
/// concurrent changes of one user's invoices (a burst of creates) few wait on the same row's
/// lock until a commit. The summary sums them; up to 16 rows is still constant time.
const SHARDS: u32 = 16;

/// Adds one change's counts to its shard; the shard's first change creates the row. `$source`
/// gives the row: the user id, then the shard and the counts as [`StatsChange::bind_counts`]
/// binds them.
macro_rules! upsert_stats {
    ($source:literal) => {
        concat!(
            "INSERT INTO user_stats_shards (user_id, shard, draft, sent, paid, paid_after_send, \
             paid_after_send_seconds, paid_after_send_micros) ",
            $source,
            " ON CONFLICT (user_id, shard) DO UPDATE SET draft = user_stats_shards.draft + excluded.draft, \
             sent = user_stats_shards.sent + excluded.sent, paid = user_stats_shards.paid + excluded.paid, \
             paid_after_send = user_stats_shards.paid_after_send + excluded.paid_after_send, \
             paid_after_send_seconds = user_stats_shards.paid_after_send_seconds + excluded.paid_after_send_seconds, \
             paid_after_send_micros = user_stats_shards.paid_after_send_micros + excluded.paid_after_send_micros"
        )
    };
}
pub(super) use upsert_stats;

const UPSERT_STATS: &str = upsert_stats!("VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");

const UPSERT_PAID_TOTAL: &str = "INSERT INTO user_paid_totals (user_id, currency, total_cents) \
    VALUES ($1, $2, $3) ON CONFLICT (user_id, currency) \
    DO UPDATE SET total_cents = user_paid_totals.total_cents + excluded.total_cents";

/// Applies `change` in `tx`, the transaction of the change itself. Always after the invoice's
/// own statement: every writer locks the invoice, then one aggregates row, then one paid
/// total, always in that order, so concurrent changes never deadlock.
pub async fn apply(tx: &mut Tx, change: StatsChange<'_>) -> Result<(), sqlx::Error> {
    with_tx!(tx, conn => {
        change
            .bind_counts(sqlx::query(UPSERT_STATS).bind(change.user_id))
            .execute(&mut **conn)
            .await?;
        if let Some((currency, cents)) = change.paid_total {
            sqlx::query(UPSERT_PAID_TOTAL)
                .bind(change.user_id)
                .bind(currency)
                .bind(cents)
                .execute(&mut **conn)
                .await?;
        }
    });
    Ok(())
}
