//! The logs (docs/operations.md, "Observability"), through the production subscriber: every line written while a request is
//! served carries its `request_id` and the fields of the spans it is in, at any level and in
//! both formats, and the request line keeps exactly its own fields.
//!
//! The subscriber is this thread's default, not the global one (other tests share this
//! binary); `#[tokio::test]` runs the server and the client on this same thread.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use serde_json::Value;
use shipshape::config::LogFormat;
use shipshape::error::ApiError;

use crate::helpers::{Backend, Options, TestApp};

/// The request line's keys: the list in docs/operations.md ("Observability") plus `target`.
const REQUEST_LINE_KEYS: [&str; 10] = [
    "client_ip",
    "latency_ms",
    "level",
    "message",
    "method",
    "request_id",
    "route",
    "status",
    "target",
    "timestamp",
];

async fn chatty() -> &'static str {
    tracing::info!(greeting = "hello", "the handler speaks");
    instrumented_work().await;
    "ok"
}

/// What a forker writes to put their own fields on every line of a piece of work.
#[tracing::instrument(skip_all, fields(account = "acme", attempt = 3))]
async fn instrumented_work() {
    // Crosses a poll: the spans must be back in place when the task resumes.
    tokio::task::yield_now().await;
    tracing::warn!("inside the instrumented work");
}

async fn failing() -> Result<&'static str, ApiError> {
    Err(ApiError::Internal(anyhow::anyhow!("the disk fell over")))
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serves `paths` once each with the log format and filter given, and returns each request's
/// id (from its `X-Request-Id` header) and everything logged.
async fn serve_logged(format: LogFormat, filter: &str, paths: &[&str]) -> (Vec<String>, String) {
    let captured = Captured::default();
    let sink = captured.clone();
    let dispatch = shipshape::telemetry::subscriber(format, filter, move || sink.clone(), false);
    let _default = tracing::dispatcher::set_default(&dispatch);
    let routes = Router::new()
        .route("/logging/chatty", get(chatty))
        .route("/logging/failing", get(failing));
    let options = Options {
        backend: Backend::Sqlite,
        extra_routes: Some(routes),
    };
    let app = TestApp::start(options, |_| {}).await;
    let mut ids = Vec::new();
    for path in paths {
        let response = app.get(path, None).await;
        ids.push(response.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    // The request line is written as the response leaves: wait for it rather than race it.
    let logged = |id: &str| {
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        // The request line is the only one with a status, in either format.
        text.lines().any(|line| line.contains(id) && line.contains("status"))
    };
    for _ in 0..100 {
        if ids.iter().all(|id| logged(id)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.stop().await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (ids, text)
}

/// The JSON lines that name `request_id`, each with its raw text.
fn lines_of(logs: &str, request_id: &str) -> Vec<(Value, String)> {
    logs.lines()
        .map(|line| {
            let json: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            (json, line.to_owned())
        })
        .filter(|(json, _)| json["request_id"] == request_id)
        .collect()
}

fn line_with<'a>(lines: &'a [(Value, String)], message: &str) -> &'a (Value, String) {
    lines
        .iter()
        .find(|(json, _)| json["message"] == message)
        .unwrap_or_else(|| panic!("a line {message:?} among {lines:#?}"))
}

fn keys(json: &Value) -> BTreeSet<&str> {
    json.as_object().unwrap().keys().map(String::as_str).collect()
}

#[tokio::test]
async fn json_lines_inside_a_request_carry_its_id_and_span_fields_and_the_request_line_is_unchanged() {
    let (ids, logs) = serve_logged(LogFormat::Json, "info", &["/logging/chatty", "/logging/failing"]).await;
    let chatty = lines_of(&logs, &ids[0]);

    let (handler, raw) = line_with(&chatty, "the handler speaks");
    assert_eq!(handler["level"], "INFO");
    assert_eq!(handler["greeting"], "hello");
    assert_eq!(raw.matches("\"request_id\":").count(), 1, "{raw}");

    let (work, raw) = line_with(&chatty, "inside the instrumented work");
    assert_eq!(work["account"], "acme", "{raw}");
    assert_eq!(work["attempt"], 3, "{raw}");
    assert_eq!(raw.matches("\"request_id\":").count(), 1, "{raw}");

    let requests: Vec<_> = chatty.iter().filter(|(json, _)| json["message"] == "request").collect();
    assert_eq!(requests.len(), 1, "{chatty:#?}");
    let (request, raw) = requests[0];
    assert_eq!(keys(request), BTreeSet::from(REQUEST_LINE_KEYS), "{raw}");
    assert_eq!(raw.matches("\"request_id\":").count(), 1, "{raw}");
    assert_eq!(request["status"], 200);
    assert_eq!(request["route"], "/logging/chatty");
    for (json, raw) in &chatty {
        if json["message"] != "request" {
            assert!(
                json.get("status").is_none() && json.get("latency_ms").is_none(),
                "{raw}"
            );
        }
    }

    // error.rs no longer names the request itself; the line still does, once.
    let failing = lines_of(&logs, &ids[1]);
    let (error, raw) = line_with(&failing, "internal error");
    assert_eq!(error["level"], "ERROR");
    assert_eq!(raw.matches("\"request_id\":").count(), 1, "{raw}");
    let (request, raw) = line_with(&failing, "request");
    assert_eq!(keys(request), BTreeSet::from(REQUEST_LINE_KEYS), "{raw}");
    assert_eq!(request["status"], 500);
}

#[tokio::test]
async fn with_only_warnings_logged_the_lines_still_carry_the_request_id() {
    let (ids, logs) = serve_logged(LogFormat::Json, "warn", &["/logging/chatty", "/logging/failing"]).await;
    let chatty = lines_of(&logs, &ids[0]);
    let (work, raw) = line_with(&chatty, "inside the instrumented work");
    assert_eq!(work["level"], "WARN");
    // The instrumented span is INFO, so this filter drops it; the request's id stays.
    assert!(work.get("account").is_none(), "{raw}");
    assert_eq!(chatty.len(), 1, "no INFO line, the request line included: {chatty:#?}");

    let failing = lines_of(&logs, &ids[1]);
    let (error, _) = line_with(&failing, "internal error");
    assert_eq!(error["level"], "ERROR");
}

#[tokio::test]
async fn pretty_lines_show_the_request_id_and_the_spans() {
    let (ids, logs) = serve_logged(LogFormat::Pretty, "info", &["/logging/chatty"]).await;
    let id = format!(" request_id={}", ids[0]);
    let handler = logs
        .lines()
        .find(|line| line.contains("the handler speaks"))
        .unwrap_or_else(|| panic!("the handler's line in {logs}"));
    assert!(handler.ends_with(&id), "{handler}");
    let work = logs
        .lines()
        .find(|line| line.contains("inside the instrumented work"))
        .unwrap_or_else(|| panic!("the instrumented line in {logs}"));
    assert!(
        work.ends_with(&id) && work.contains("instrumented_work{account=\"acme\" attempt=3}"),
        "{work}"
    );
}
