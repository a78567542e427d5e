//! The payment provider's webhook: signed, replay-bounded, idempotent.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody, JSON_REQUIRED, JsonBodyErrors};
use crate::extract;
use crate::input::{self, Fields, FromJson, Text};
use crate::input_field;
use crate::invoices::events::EventHub;
use crate::invoices::input::AmountCents;
use crate::invoices::store::{self, Payment, Recorded};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(payment_webhook))
}

/// A timestamp further than this from our clock is refused, so a captured request cannot be replayed later.
const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// The provider's event: the body of the webhook.
#[derive(ToSchema)]
pub struct PaymentEvent {
    // A description here would wrap the inlined schema in an `allOf`; the types carry theirs.
    #[schema(inline)]
    event_id: EventId,
    #[schema(rename = "type", inline)]
    kind: EventType,
    invoice_id: String,
    #[schema(inline)]
    amount_cents: AmountCents,
}

impl FromJson for PaymentEvent {
    fn from_json(fields: &mut Fields) -> Option<PaymentEvent> {
        let event_id = fields.required("event_id");
        let kind = fields.required("type");
        let invoice_id = fields.required("invoice_id");
        let amount_cents = fields.required("amount_cents");
        fields.ignore_others();
        Some(PaymentEvent {
            event_id: event_id?,
            kind: kind?,
            invoice_id: invoice_id?,
            amount_cents: amount_cents?,
        })
    }
}

const EVENT_ID: Text = Text {
    min: 1,
    max: 255,
    not_blank: false,
    multiline: false,
};

input_field!(
    EventId(String),
    |value| EVENT_ID.parse(value),
    EVENT_ID.schema().description(Some(
        "The provider's unique id for this event; a repeat is answered `duplicate`."
    ))
);

input_field!(
    EventType(String),
    |value| match String::parse(value)? {
        kind if kind == PAYMENT_SUCCEEDED => Ok(kind),
        _ => Err(format!("must be {PAYMENT_SUCCEEDED}")),
    },
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([PAYMENT_SUCCEEDED]))
);

/// The one event type this webhook handles.
const PAYMENT_SUCCEEDED: &str = "payment.succeeded";

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
    Extension(events): Extension<Arc<EventHub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookOutcome>, ApiError> {
    // `routes::invoices::example_domain` mounts this route only when the secret is set.
    let Some(secret) = &state.config.webhook_secret else {
        return Err(ApiError::NotFound);
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verify_signature(secret.expose().as_bytes(), &headers, &body, now)?;
    if !extract::has_json_content_type(&headers) {
        return Err(ApiError::UnsupportedMediaType(JSON_REQUIRED));
    }
    let event: PaymentEvent = input::read_body(&body)?;
    let invoice_id = Uuid::parse_str(&event.invoice_id).map_err(|_| ApiError::NotFound)?;
    let payment = Payment {
        event_id: &event.event_id.0,
        event_type: &event.kind.0,
        invoice_id,
        amount_cents: event.amount_cents.0,
    };
    match store::record_payment(state.database()?, &payment).await? {
        Recorded::Paid(paid) => {
            let owner = paid.owner()?;
            events.publish(owner, "invoice.paid", &paid.into_invoice()?);
            Ok(Json(WebhookOutcome { status: "processed" }))
        }
        Recorded::Duplicate => Ok(Json(WebhookOutcome { status: "duplicate" })),
    }
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
