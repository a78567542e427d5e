//! The outermost request middleware: gives each request its id (the caller's sane
//! `X-Request-Id`, else a new one) and runs it inside that context and its own Sentry hub,
//! then records its metrics and writes its one log line (docs/operations.md, Observability).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use sentry::SentryFutureExt;
use tower::Service;

use crate::middleware::{BoxResponseFuture, Middleware, MiddlewareLayer};
use crate::security::client_ip::ClientIp;
use crate::telemetry::json_lines::CUT_MARK;
use crate::telemetry::{REQUEST_ID_HEADER, RequestContext, RequestId, metrics, sentry as reporting};

/// The longest method a request line shows: the standard ones are at most 7 bytes, WebDAV's
/// 17; hyper accepts any length.
const MAX_METHOD_BYTES: usize = 24;

/// What the middleware needs to know, fixed at start.
#[derive(Clone, Copy)]
pub struct Observe {
    /// `DEBUG=true` in development: internal errors show their cause.
    pub expose_internal_errors: bool,
    /// A Sentry client is running: each request gets a hub tagged with its id and route.
    pub sentry_enabled: bool,
    /// The Prometheus recorder is installed (`METRICS_PORT`).
    pub metrics_enabled: bool,
}

impl Observe {
    pub fn layer(self) -> MiddlewareLayer<Observe> {
        MiddlewareLayer(self)
    }
}

/// The request id, context and hub around everything below, then metrics and the log line.
impl Middleware for Observe {
    fn handle<S>(&self, inner: &mut S, req: Request) -> BoxResponseFuture
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let started = Instant::now();
        let observe = *self;
        let id = RequestId::from_incoming(req.headers().get(&REQUEST_ID_HEADER));
        // Resolved by `security::client_ip`, the layer above this one.
        let ip = req
            .extensions()
            .get::<ClientIp>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0);
        let method = req.method().clone();
        let matched = req.extensions().get::<MatchedPath>().cloned();
        let context = RequestContext {
            id: id.clone(),
            expose_internal_errors: observe.expose_internal_errors,
        };
        let hub = observe.sentry_enabled.then(|| {
            let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
            reporting::request_hub(id.as_str(), method.as_str(), route)
        });
        // Everything below runs inside the context (where every line logged meanwhile gets its
        // `request_id`) and the hub, the rendering of errors included; it starts there too.
        let below = context.sync_scope(|| match &hub {
            Some(hub) => ::sentry::Hub::run(hub.clone(), || inner.call(req)),
            None => inner.call(req),
        });
        Box::pin(async move {
            let below = context.scope(async move {
                let Ok(response) = below.await;
                response
            });
            let mut response = match hub {
                Some(hub) => below.bind_hub(hub).await,
                None => below.await,
            };
            response
                .headers_mut()
                .insert(REQUEST_ID_HEADER, id.header_value().clone());
            let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
            let status = response.status().as_u16();
            let elapsed = started.elapsed();
            if observe.metrics_enabled {
                metrics::record_request(&method, route, status, elapsed);
            }
            let latency_ms = elapsed.as_micros() as f64 / 1000.0;
            // Text fields as `&str`: the line copies them, where `%value` would run `Display`.
            let method_text = cut(method.as_str(), MAX_METHOD_BYTES);
            let (request_id, method) = (id.as_str(), method_text.as_ref());
            // Platform probes hit health routes every few seconds; their successes would drown the log.
            if status == 200 && (route == "/healthz" || route == "/readyz") {
                tracing::debug!(target: "http", request_id, method, route, status, latency_ms, client_ip = %ip, "request");
            } else {
                tracing::info!(target: "http", request_id, method, route, status, latency_ms, client_ip = %ip, "request");
            }
            Ok(response)
        })
    }
}

/// `text` up to `max` bytes (at a character boundary); a longer one is cut and marked
/// `…[cut]`, so what a client sends cannot lengthen a log line without bound.
fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(format!("{}{CUT_MARK}", &text[..text.floor_char_boundary(max)]))
}
