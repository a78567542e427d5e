//! Sentry error reporting, on only when `SENTRY_DSN` is set. Each request runs with its own
//! hub tagged with its request id; 5xx answers are reported where `ApiError`
//! renders them, and panics once, by Sentry's panic hook (with the stack trace).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use sentry::protocol::Event;

use crate::config::Config;

/// How long shutdown waits for pending events to reach Sentry.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the client; keep the guard until exit: dropping it flushes pending events.
pub fn init(config: &Config) -> Option<sentry::ClientInitGuard> {
    let dsn = config.sentry.dsn.as_ref()?;
    let dsn = match dsn.expose().parse() {
        Ok(dsn) => dsn,
        Err(error) => {
            tracing::error!(%error, "SENTRY_DSN is not a valid DSN; Sentry stays off");
            return None;
        }
    };
    // `ClientOptions` is non-exhaustive: start from the defaults and set what we need.
    let mut options = sentry::ClientOptions::new().traces_sample_rate(config.sentry.traces_sample_rate);
    options.dsn = Some(dsn);
    options.release = sentry::release_name!();
    options.environment = Some(Cow::Owned(config.sentry.environment.clone()));
    // No IP addresses, cookies or user data unless we add them deliberately.
    options.send_default_pii = false;
    options.shutdown_timeout = FLUSH_TIMEOUT;
    options.before_send = Some(Arc::new(|event| Some(scrub(event))));
    Some(sentry::init(options))
}

/// Request headers that carry credentials, never sent to Sentry.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    // example-domain:begin
    "x-webhook-signature",
    // example-domain:end
];

/// Defence in depth: whatever integration attached request data, no body, cookies,
/// credentials or query string (tokens travel there) leave the process.
fn scrub(mut event: Event<'static>) -> Event<'static> {
    if let Some(request) = event.request.as_mut() {
        request.data = None;
        request.cookies = None;
        request.query_string = None;
        request.env.clear();
        request
            .headers
            .retain(|name, _| !SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()));
        if let Some(url) = request.url.as_mut() {
            url.set_query(None);
        }
    }
    event
}

/// Whether a client is configured (cheap; checked per request before making a hub).
pub fn enabled() -> bool {
    sentry::Hub::current()
        .client()
        .is_some_and(|client| client.is_enabled())
}

/// A hub for one request, tagged so every event it sends names the request.
pub fn request_hub(request_id: &str, method: &str, route: &str) -> Arc<sentry::Hub> {
    let hub = Arc::new(sentry::Hub::new_from_top(sentry::Hub::current()));
    hub.configure_scope(|scope| {
        scope.set_tag("request_id", request_id);
        scope.set_tag("http.method", method);
        scope.set_tag("http.route", route);
    });
    hub
}

/// Reports a server-side failure on the current (request) hub.
pub fn report_server_error(code: &str, detail: &str) {
    sentry::capture_message(&format!("{code}: {detail}"), sentry::Level::Error);
}
