//! `GET /api/v1/invoices/events`: the caller's invoice changes as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::invoices::events::{EventHub, Subscription};
use crate::sessions;
use crate::state::AppState;
use crate::users;

const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(invoice_events))
}

/// A stream of `invoice.created`, `invoice.sent` and `invoice.paid` events, each with an
/// increasing `id:` and the invoice JSON as `data:`; a comment every 15 s keeps proxies open.
#[utoipa::path(get, path = "/api/v1/invoices/events", tag = "invoices", security(("bearer" = [])), responses(
    (status = 200, content_type = "text/event-stream", description = "server-sent events; `event: lagged` ends a stream that fell behind"),
    (status = 401, body = ErrorBody, description = "`unauthorized`"),
    (status = 503, body = ErrorBody, description = "`service_unavailable`: MAX_SSE_STREAMS, or MAX_SSE_STREAMS_PER_USER of this user, are open"),
))]
pub async fn invoice_events(
    State(state): State<AppState>,
    Extension(events): Extension<Arc<EventHub>>,
    user: AuthUser,
) -> Result<Response, ApiError> {
    // Nothing else on a stream would notice a token of an account that does not exist.
    users::ensure_exists(state.database()?, user.id).await?;
    let subscription = events.subscribe(user.id).ok_or(ApiError::ServiceUnavailable)?;
    let stream = futures_util::stream::unfold((subscription, 0u64, false), next_event)
        // At shutdown every stream ends at once, so the drain never waits on one.
        .take_until(state.lifecycle.draining())
        .take_until(session_ended(state.clone(), user));
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx would otherwise buffer the stream.
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// How often an open stream checks that its session still runs: a logout, a password change
/// or a disabled account ends it as soon as it would refuse a new request (docs/accounts.md).
const SESSION_RECHECK: Duration = Duration::from_secs(4);

/// Completes once the caller's session has ended.
async fn session_ended(state: AppState, user: AuthUser) {
    loop {
        tokio::time::sleep(SESSION_RECHECK).await;
        // A database that cannot answer now ends nothing: the next check decides.
        if let Ok(db) = state.database()
            && let Ok(None) = sessions::read(db, user.session, user.id, state.auth.refresh_ttl).await
        {
            return;
        }
    }
}

type StreamState = (Subscription, u64, bool);

async fn next_event(
    (mut subscription, last_id, finished): StreamState,
) -> Option<(Result<SseEvent, Infallible>, StreamState)> {
    if finished {
        return None;
    }
    match subscription.queue.recv().await {
        Some(event) => {
            let id = last_id + 1;
            let sse = SseEvent::default()
                .event(event.kind.as_str())
                .id(id.to_string())
                .data(event.data.as_str());
            Some((Ok(sse), (subscription, id, false)))
        }
        // The hub dropped this stream for falling behind: say so, then end.
        None if subscription.lagged() => {
            let sse = SseEvent::default()
                .event("lagged")
                .data("{\"reason\":\"the client did not keep up\"}");
            Some((Ok(sse), (subscription, last_id, true)))
        }
        None => None,
    }
}
