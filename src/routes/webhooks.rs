//! The payment provider's webhook: signed, replay-bounded, idempotent.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::app::AppState;
use crate::db::{self, Db};
use crate::error::{self, ApiError, ErrorBody, JsonBodyErrors, NO_CONTROL_CHARS, has_control_chars};
use crate::routes::invoices::InvoiceRow;
use crate::routes::stats::StatsChange;
use crate::{invoice_columns, record_stats, with_transaction};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(payment_webhook))
}

/// A timestamp further than this from our clock is refused, so a captured request cannot be replayed later.
const MAX_CLOCK_SKEW_SECS: u64 = 300;

#[derive(Deserialize, ToSchema)]
pub struct PaymentEvent {
    /// The provider's unique id for this event; a repeat is answered `duplicate`.
    #[schema(min_length = 1, max_length = 255, pattern = r"^[^\u0000-\u001F\u007F-\u009F]+$")]
    event_id: String,
    /// Only `payment.succeeded`.
    #[serde(rename = "type")]
    kind: String,
    invoice_id: String,
    #[serde(deserialize_with = "crate::error::integral")]
    amount_cents: i64,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookOutcome {
    /// `processed` or `duplicate`.
    status: &'static str,
}

/// Checks `X-Webhook-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}.{raw body}")>` in
/// constant time, and that `X-Webhook-Timestamp` is within five minutes of now. Several
/// comma-separated `v1=` values are accepted, for secret rotation.
pub fn verify_signature(secret: &[u8], headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), ApiError> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::InvalidSignature)
    };
    let timestamp_text = header("x-webhook-timestamp")?;
    let timestamp: i64 = timestamp_text.trim().parse().map_err(|_| ApiError::InvalidSignature)?;
    if now.abs_diff(timestamp) > MAX_CLOCK_SKEW_SECS {
        return Err(ApiError::InvalidSignature);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| ApiError::InvalidSignature)?;
    mac.update(timestamp_text.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    let valid = header("x-webhook-signature")?
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(|hex_sig| hex::decode(hex_sig).ok())
        .any(|signature| mac.clone().verify_slice(&signature).is_ok());
    if valid { Ok(()) } else { Err(ApiError::InvalidSignature) }
}

/// Marks an invoice paid when the provider reports a successful payment.
#[utoipa::path(post, path = "/api/v1/webhooks/payments", tag = "webhooks", request_body = PaymentEvent,
    params(
        ("X-Webhook-Timestamp" = i64, Header, description = "Unix seconds"),
        ("X-Webhook-Signature" = String, Header, description = "`v1=` hex HMAC-SHA256 of `{timestamp}.{body}`"),
    ),
    responses(
    (status = 200, body = WebhookOutcome),
    (status = 401, body = ErrorBody, description = "`invalid_signature`"),
    (status = 404, body = ErrorBody, description = "unknown invoice"),
    (status = 409, body = ErrorBody, description = "`invalid_transition`: already paid by another event"),
    (status = 422, body = ErrorBody, description = "`validation_failed`, e.g. the amount does not match"),
    JsonBodyErrors,
))]
pub async fn payment_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookOutcome>, ApiError> {
    // `app::routes` mounts this route only when the secret is set.
    let Some(secret) = &state.config.webhook_secret else {
        return Err(ApiError::NotFound);
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verify_signature(secret.expose().as_bytes(), &headers, &body, now)?;
    if !error::has_json_content_type(&headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let event: PaymentEvent = error::parse_json(&body)?;
    if event.event_id.is_empty() || event.event_id.chars().count() > 255 {
        return Err(ApiError::validation("event_id", "must be 1 to 255 characters"));
    }
    if has_control_chars(&event.event_id, false) {
        return Err(ApiError::validation("event_id", NO_CONTROL_CHARS));
    }
    if event.kind != "payment.succeeded" {
        return Err(ApiError::validation("type", "must be payment.succeeded"));
    }
    let invoice_id = Uuid::parse_str(&event.invoice_id).map_err(|_| ApiError::NotFound)?;
    match record_payment(state.database()?, &event, invoice_id).await? {
        Some(paid) => {
            let owner = Uuid::parse_str(&paid.user_id).map_err(|e| ApiError::Internal(e.into()))?;
            let invoice = paid.into_invoice()?;
            state.events.publish(owner, "invoice.paid", &invoice);
            Ok(Json(WebhookOutcome { status: "processed" }))
        }
        None => Ok(Json(WebhookOutcome { status: "duplicate" })),
    }
}

/// Records the event, marks the invoice paid and counts it in the owner's stats, in one transaction. `None` for an event
/// already recorded. Any failure rolls back both.
async fn record_payment(db: &Db, event: &PaymentEvent, invoice_id: Uuid) -> Result<Option<InvoiceRow>, ApiError> {
    let select_invoice = concat!("SELECT ", invoice_columns!(), " FROM invoices WHERE id = $1");
    let mark_paid = concat!(
        "UPDATE invoices SET status = 'paid', paid_at = $1 WHERE id = $2 AND status IN ('draft', 'sent') RETURNING ",
        invoice_columns!()
    );
    with_transaction!(db, tx => {
        let seen: Option<String> = sqlx::query_scalar("SELECT event_id FROM webhook_events WHERE event_id = $1")
            .bind(&event.event_id)
            .fetch_optional(&mut *tx)
            .await?;
        if seen.is_some() {
            return Ok(None);
        }
        let invoice: InvoiceRow = sqlx::query_as(select_invoice)
            .bind(invoice_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(ApiError::NotFound)?;
        if invoice.amount_cents != event.amount_cents {
            return Err(ApiError::validation("amount_cents", "does not match the invoice amount"));
        }
        if invoice.status == "paid" {
            return Err(ApiError::InvalidTransition("the invoice is already paid"));
        }
        let now = db::now_micros();
        // A concurrent delivery of the same event waits here on the primary key, then inserts nothing.
        let inserted = sqlx::query(
            "INSERT INTO webhook_events (event_id, event_type, invoice_id, amount_cents, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&event.event_id)
        .bind(&event.kind)
        .bind(invoice_id.to_string())
        .bind(event.amount_cents)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(None);
        }
        let paid: InvoiceRow = sqlx::query_as(mark_paid)
            .bind(now)
            .bind(invoice_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(ApiError::InvalidTransition("the invoice is already paid"))?;
        record_stats!(tx, StatsChange::paid(&paid));
        tx.commit().await?;
        Ok(Some(paid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret: &str, timestamp: i64, body: &str) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{timestamp}.{body}").as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert("x-webhook-timestamp", timestamp.to_string().parse().unwrap());
        let sig = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        headers.insert("x-webhook-signature", sig.parse().unwrap());
        headers
    }

    #[test]
    fn signature_rules() {
        let now = 1_800_000_000;
        let body = r#"{"event_id":"e1"}"#;
        assert!(verify_signature(b"s3cret", &signed("s3cret", now, body), body.as_bytes(), now).is_ok());
        assert!(verify_signature(b"s3cret", &signed("other", now, body), body.as_bytes(), now).is_err());
        assert!(verify_signature(b"s3cret", &signed("s3cret", now, body), b"{\"event_id\":\"e2\"}", now).is_err());
        assert!(verify_signature(b"s3cret", &signed("s3cret", now - 301, body), body.as_bytes(), now).is_err());
        assert!(verify_signature(b"s3cret", &signed("s3cret", now - 299, body), body.as_bytes(), now).is_ok());
        assert!(verify_signature(b"s3cret", &HeaderMap::new(), body.as_bytes(), now).is_err());
        // Extreme timestamps are refused, not an arithmetic overflow (found by fuzzing).
        assert!(verify_signature(b"s3cret", &signed("s3cret", i64::MIN, body), body.as_bytes(), now).is_err());
        assert!(verify_signature(b"s3cret", &signed("s3cret", i64::MAX, body), body.as_bytes(), now).is_err());
    }
}
