//! Logs, request ids, metrics and error reporting: the tracing subscriber (JSON or
//! human-readable), the context of the request being served (its id, which every line logged
//! meanwhile carries), the Prometheus recorder and the Sentry client. The middleware that
//! gives each request its context is `observe`.

pub mod json_lines;
pub mod metrics;
pub mod pretty;
pub mod sentry;
pub mod throttle;
pub mod writer;

use axum::http::{HeaderName, HeaderValue};
use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Config, LogFormat};

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

/// Logging for a one-shot command (`shipshape user …`): lines go to stderr as they are
/// written, so that stdout carries only the command's answer.
pub fn init_for_command(config: &Config) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let subscriber = subscriber(config.log_format, &config.log_filter, std::io::stderr, ansi);
    let _ = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber);
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
    pub fn from_incoming(value: Option<&HeaderValue>) -> RequestId {
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

    pub fn header_value(&self) -> &HeaderValue {
        &self.0
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

/// docs/operations.md, Observability: `^[A-Za-z0-9._-]{1,128}$`; anything else could inject into logs.
fn is_acceptable_request_id(bytes: &[u8]) -> bool {
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What code running for a request may need to know about it without being handed it:
/// read by `ApiError` when it renders.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub id: RequestId,
    pub expose_internal_errors: bool,
}

tokio::task_local! {
    static CURRENT_REQUEST: RequestContext;
}

impl RequestContext {
    /// Runs `start` (which starts the work) as this request's: see [`scope`](Self::scope).
    pub fn sync_scope<R>(&self, start: impl FnOnce() -> R) -> R {
        CURRENT_REQUEST.sync_scope(self.clone(), start)
    }

    /// Runs `work` as this request's: every line it logs carries the id, and an error it
    /// renders carries it in the body.
    pub fn scope<F: Future>(self, work: F) -> tokio::task::futures::TaskLocalFuture<RequestContext, F> {
        CURRENT_REQUEST.scope(self, work)
    }
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
