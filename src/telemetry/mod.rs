//! Logs, request ids, metrics and error reporting: the tracing subscriber (JSON or
//! human-readable), and the outermost request middleware that assigns the request id, writes
//! one log line per request, records its metrics and gives it a Sentry hub.

pub mod json_lines;
pub mod metrics;
pub mod pretty;
pub mod sentry;
pub mod throttle;
pub mod writer;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use std::convert::Infallible;

use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::Response;
use tower::Service;
use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Config, LogFormat};
use crate::middleware::{BoxResponseFuture, Middleware, MiddlewareLayer};
use crate::security::client_ip::{self, ClientIp};
use crate::state::AppState;
use crate::{error, static_files};

/// The longest method a request line shows: the standard ones are at most 7 bytes, WebDAV's
/// 17; hyper accepts any length.
const MAX_METHOD_BYTES: usize = 24;

/// `text` up to `max` bytes (at a character boundary); a longer one is cut and marked
/// `…[cut]`, so what a client sends cannot lengthen a log line without bound.
fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(format!(
        "{}{}",
        &text[..text.floor_char_boundary(max)],
        json_lines::CUT_MARK
    ))
}

/// A `HeaderName`, not a `&str`: inserting by string copies the name into a new allocation.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the global subscriber. Lines are written by a background thread, so a slow stdout
/// never stalls a request (see [`writer`]); keep the guard alive until exit so the last lines
/// are written.
pub fn init(config: &Config) -> std::io::Result<writer::LogGuard> {
    let (writer, guard) = writer::spawn(std::io::stdout())?;
    // Colour codes only for a terminal; a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let subscriber = subscriber(config.log_format, &config.log_filter, writer, ansi);
    if let Err(e) = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber) {
        eprintln!("logging was already set up: {e}");
    }
    Ok(guard)
}

/// The subscriber [`init`] installs, writing to `writer`: public so tests can capture exactly
/// what production writes.
pub fn subscriber<W>(format: LogFormat, filter: &str, writer: W, ansi: bool) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        // Span fields are kept as JSON, so a line copies its spans' fields as they are.
        LogFormat::Json => builder
            .fmt_fields(json_lines::JsonFields)
            .event_format(json_lines::JsonLines)
            .into(),
        LogFormat::Pretty => builder.event_format(pretty::WithRequestId::default()).into(),
    }
}

/// The id of one request: the caller's `X-Request-Id` when it is sane, else a new UUID.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    fn from_incoming(value: Option<&HeaderValue>) -> RequestId {
        match value {
            Some(v) if is_acceptable_request_id(v.as_bytes()) => RequestId(v.clone()),
            _ => RequestId::generate(),
        }
    }

    fn generate() -> RequestId {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        RequestId(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid")))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII ever gets in (checked above or generated), so this cannot fail.
        self.0.to_str().unwrap_or_default()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// As a string; the error body carries it without copying it into a `String` first.
impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// README, Observability: `^[A-Za-z0-9._-]{1,128}$`; anything else could inject into logs.
fn is_acceptable_request_id(bytes: &[u8]) -> bool {
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What code running for a request may need to know about it without being handed it:
/// read by [`error::ApiError`] when it renders.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub id: RequestId,
    pub expose_internal_errors: bool,
}

tokio::task_local! {
    static CURRENT_REQUEST: RequestContext;
}

/// The id of the request being served on this task, if any: what log lines written while it
/// is served carry as `request_id`. A task-local rather than a tracing span: a span per request
/// cost about 7 % of a logged 404's instructions, this costs nothing until a line is written.
pub fn with_current_request_id<R>(f: impl FnOnce(&str) -> R) -> Option<R> {
    CURRENT_REQUEST.try_with(|request| f(request.id.as_str())).ok()
}

/// The request being served on this task (a placeholder outside of one).
pub fn current_request() -> RequestContext {
    CURRENT_REQUEST
        .try_with(Clone::clone)
        .unwrap_or_else(|_| RequestContext {
            id: RequestId(HeaderValue::from_static("none")),
            expose_internal_errors: false,
        })
}

/// The outermost request middleware: request id, client IP, Sentry hub, error rendering,
/// metrics and the log line.
#[derive(Clone)]
pub struct Observe {
    state: AppState,
}

impl Observe {
    pub fn layer(state: AppState) -> MiddlewareLayer<Observe> {
        MiddlewareLayer(Observe { state })
    }
}

impl Middleware for Observe {
    fn handle<S>(&self, inner: &mut S, mut req: Request) -> BoxResponseFuture
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let started = Instant::now();
        let state = self.state.clone();
        let id = RequestId::from_incoming(req.headers().get(&REQUEST_ID_HEADER));
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let ip = client_ip::resolve(state.config.client_ip_source, req.headers(), peer);
        req.extensions_mut().insert(ClientIp(ip));
        let method = req.method().clone();
        let matched = req.extensions().get::<MatchedPath>().cloned();
        let wants_html_errors =
            !req.uri().path().starts_with("/api/") && static_files::prefers_html(req.headers().get(header::ACCEPT));
        let context = RequestContext {
            id: id.clone(),
            expose_internal_errors: state.expose_internal_errors(),
        };
        let hub = state.sentry_enabled.then(|| {
            let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
            sentry::request_hub(id.as_str(), method.as_str(), route)
        });
        // The services below are started inside the request's context and hub, as they then
        // run. The context is also where every line logged meanwhile gets `request_id` from.
        let inner = CURRENT_REQUEST.sync_scope(context.clone(), || match &hub {
            Some(hub) => ::sentry::Hub::run(hub.clone(), || inner.call(req)),
            None => inner.call(req),
        });
        Box::pin(async move {
            let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
            let mut response = CURRENT_REQUEST
                .scope(context, async move {
                    // Rendering runs inside the hub too: a timeout's 503 is reported with the request id.
                    let rendered = async move {
                        let Ok(response) = inner.await;
                        error::render_bare_error(response)
                    };
                    match hub {
                        Some(hub) => ::sentry::SentryFutureExt::bind_hub(rendered, hub).await,
                        None => rendered.await,
                    }
                })
                .await;
            if wants_html_errors && response.status().as_u16() >= 400 {
                response = state.error_pages.render(response);
            }
            response.headers_mut().insert(REQUEST_ID_HEADER, id.0.clone());

            let status = response.status().as_u16();
            let elapsed = started.elapsed();
            if state.metrics_enabled {
                metrics::record_request(&method, route, status, elapsed);
            }
            let latency_ms = elapsed.as_micros() as f64 / 1000.0;
            // Platform probes hit health routes every few seconds; their successes would drown the log.
            // Text fields as `&str`: the line copies them, where `%value` would run `Display`.
            let method_text = cut(method.as_str(), MAX_METHOD_BYTES);
            let (request_id, method) = (id.as_str(), method_text.as_ref());
            if status == 200 && (route == "/healthz" || route == "/readyz") {
                tracing::debug!(target: "http", request_id, method, route, status, latency_ms, client_ip = %ip, "request");
            } else {
                tracing::info!(target: "http", request_id, method, route, status, latency_ms, client_ip = %ip, "request");
            }
            Ok(response)
        })
    }
}
