//! The example domain: invoices a user creates, sends and gets paid for, with their stats
//! and event streams. Everything of it lives here and in `routes/{invoices,webhooks,stats,events}.rs`;
//! a fork deletes both (and the lines marked `example-domain`) to start from the skeleton.
//!
//! - `mod.rs`    the invoice as the API shows it, and its status
//! - `attachments.rs` files attached to an invoice: rows, quota, and the orphan sweep
//! - `input.rs`  the rules of a new invoice's fields
//! - `store.rs`  every SQL statement on invoices and payments
//! - `stats.rs`  the per-user aggregates kept with every change, and the summary read from them
//! - `events.rs` the hub behind the event streams

pub mod attachments;
pub mod events;
pub mod input;
pub mod stats;
pub mod store;

use serde::{Deserialize, Serialize};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};
use utoipa::ToSchema;
use uuid::Uuid;

/// Where an invoice is in its life: a draft is sent, and a draft or a sent invoice is paid.
/// Stored as its lower-case name; this type is the only place that spells it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InvoiceStatus {
    Draft,
    Sent,
    Paid,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Sent => "sent",
            InvoiceStatus::Paid => "paid",
        }
    }
}

// Stored as TEXT on both databases: bound and read as a `str`, checked on the way in.
impl<DB: Database> Type<DB> for InvoiceStatus
where
    str: Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <str as Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <str as Type<DB>>::compatible(ty)
    }
}

impl<'q, DB: Database> Encode<'q, DB> for InvoiceStatus
where
    &'q str: Encode<'q, DB>,
{
    fn encode_by_ref(&self, buf: &mut DB::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&'q str as Encode<'q, DB>>::encode(self.as_str(), buf)
    }
}

impl<'r, DB: Database> Decode<'r, DB> for InvoiceStatus
where
    &'r str: Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<InvoiceStatus, BoxDynError> {
        match <&str as Decode<DB>>::decode(value)? {
            "draft" => Ok(InvoiceStatus::Draft),
            "sent" => Ok(InvoiceStatus::Sent),
            "paid" => Ok(InvoiceStatus::Paid),
            other => Err(format!("unknown invoice status {other:?}").into()),
        }
    }
}

/// An invoice as the API shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Invoice {
    pub id: Uuid,
    pub customer_name: String,
    pub customer_phone: Option<String>,
    pub amount_cents: i64,
    pub currency: String,
    pub due_date: Option<String>,
    pub description: Option<String>,
    pub status: InvoiceStatus,
    pub created_at: String,
    pub sent_at: Option<String>,
    pub paid_at: Option<String>,
}
