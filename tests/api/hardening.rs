//! Findings of the adversarial pass (issue 13): each test failed before its fix.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;

// example-domain:begin
use crate::helpers::deliver_webhook;
// example-domain:end
use crate::helpers::{
    Backend, Options, PASSWORD, TEST_ITEMS, TestApp, assert_error, fresh_postgres_database, test_items,
};
use crate::on_both_databases;

on_both_databases!(
    control_characters_are_refused_naming_the_field,
    a_token_of_a_user_that_does_not_exist_is_401_everywhere,
    // example-domain:begin
    control_characters_are_refused_in_invoices_and_payment_events,
    // example-domain:end
);

// example-domain:begin
const WEBHOOK_SECRET: &str = "whsec_test_7d9f2a4c6e8b0d1f3a5c7e9b1d3f5a7c";
// example-domain:end

/// The app with the tests' own resource, [`test_items`], mounted.
async fn spawn_with_items(backend: Backend) -> TestApp {
    let options = Options {
        backend,
        extra_routes: Some(test_items()),
    };
    TestApp::start(options, |_| {}).await
}

/// Posts `body` as raw JSON text.
async fn post_raw(app: &TestApp, path: &str, body: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request sent")
}

/// The field named by the first detail of a 422.
async fn refused_field(response: reqwest::Response) -> String {
    let body = assert_error(response, 422, "validation_failed").await;
    body["error"]["details"][0]["field"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

// RFC 6749 §5.1: token responses must not be cached.
#[tokio::test]
async fn signup_and_login_responses_are_not_stored() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let credentials = json!({"email": "store@example.com", "password": PASSWORD});
    let signup = app.post_json("/api/v1/auth/signup", &credentials, None).await;
    assert_eq!(signup.status(), 201);
    assert_eq!(signup.headers()["cache-control"], "no-store", "signup");
    let login = app.post_json("/api/v1/auth/login", &credentials, None).await;
    assert_eq!(login.status(), 200);
    assert_eq!(login.headers()["cache-control"], "no-store", "login");
    app.stop().await;
}

#[tokio::test]
async fn json_arrays_are_not_objects() {
    let app = spawn_with_items(Backend::Sqlite).await;
    let credentials = json!(["a@example.com", PASSWORD]).to_string();
    for path in ["/api/v1/auth/signup", "/api/v1/auth/login"] {
        let response = post_raw(&app, path, &credentials, None).await;
        assert_eq!(refused_field(response).await, "body", "{path}");
    }
    let token = app.signup("arrays@example.com").await;
    let item = json!(["Acme Ltd", null, 100, null]).to_string();
    assert_eq!(
        refused_field(post_raw(&app, TEST_ITEMS, &item, Some(&token)).await).await,
        "body"
    );
    app.stop().await;
}

// example-domain:begin
#[tokio::test]
async fn json_arrays_are_not_invoices_or_payment_events() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.webhook_secret = Some(shipshape::config::Secret::new(WEBHOOK_SECRET))
    })
    .await;
    let token = app.signup("arrays@example.com").await;
    let invoice = json!(["Acme Ltd", null, 100, "USD", null, null]).to_string();
    assert_eq!(
        refused_field(post_raw(&app, "/api/v1/invoices", &invoice, Some(&token)).await).await,
        "body"
    );
    let event = json!(["evt_1", "payment.succeeded", uuid::Uuid::now_v7(), 100]);
    let webhook = deliver_webhook(
        &app,
        &event,
        time::OffsetDateTime::now_utc().unix_timestamp(),
        WEBHOOK_SECRET,
    );
    assert_eq!(refused_field(webhook.await).await, "body");
    app.stop().await;
}
// example-domain:end

/// A due date is `YYYY-MM-DD` exactly, a real date, year 0001 to 9999, on `path`, whose body is
/// `body` with a `due_date`; one taken is answered as sent.
async fn due_dates_are_read_exactly(app: &TestApp, token: &str, path: &str, body: Value) {
    let with_due_date = |due: &str| {
        let mut body = body.clone();
        body["due_date"] = json!(due);
        body
    };
    for bad in [
        "+2026-01-01",
        "-0001-01-01",
        "0000-01-01",
        "+12026-01-01",
        "12026-01-01",
        "2026-1-01",
        "2026-02-30",
        " 2026-01-01",
    ] {
        let response = app.post_json(path, &with_due_date(bad), Some(token)).await;
        assert_eq!(refused_field(response).await, "due_date", "{path} {bad:?}");
    }
    for good in ["0001-01-01", "2028-02-29", "9999-12-31"] {
        let response = app.post_json(path, &with_due_date(good), Some(token)).await;
        assert_eq!(response.status(), 201, "{path} {good}");
        assert_eq!(response.json::<Value>().await.unwrap()["due_date"], good);
    }
}

#[tokio::test]
async fn due_date_is_exactly_yyyy_mm_dd_with_a_year_from_1_to_9999() {
    let app = spawn_with_items(Backend::Sqlite).await;
    let token = app.signup("dates@example.com").await;
    let item = json!({"name": "Acme", "amount_cents": 100});
    due_dates_are_read_exactly(&app, &token, TEST_ITEMS, item).await;
    // example-domain:begin
    let invoice = json!({"customer_name": "Acme", "amount_cents": 100, "currency": "USD"});
    due_dates_are_read_exactly(&app, &token, "/api/v1/invoices", invoice).await;
    // example-domain:end
    app.stop().await;
}

#[tokio::test]
async fn unclosed_json_is_400_and_an_undecodable_id_is_404() {
    let app = spawn_with_items(Backend::Sqlite).await;
    let token = app.signup("unclosed@example.com").await;
    for body in ["[[[[", "[[[[[[[[[[[[[[[[[[[[", "{\"email\": [[[", "[\"a@example.com\""] {
        let response = post_raw(&app, "/api/v1/auth/signup", body, None).await;
        assert_error(response, 400, "invalid_json").await;
    }
    let read = app.get(&format!("{TEST_ITEMS}/%FF"), Some(&token)).await;
    assert_error(read, 404, "not_found").await;
    let delete = app.delete(&format!("{TEST_ITEMS}/%FF%FE"), Some(&token)).await;
    assert_error(delete, 404, "not_found").await;
    // example-domain:begin
    assert_error(app.get("/api/v1/invoices/%FF", Some(&token)).await, 404, "not_found").await;
    let send = post_raw(&app, "/api/v1/invoices/%FF%FE/send", "", Some(&token)).await;
    assert_error(send, 404, "not_found").await;
    // example-domain:end
    app.stop().await;
}

async fn control_characters_are_refused_naming_the_field(backend: Backend) {
    let app = spawn_with_items(backend).await;
    for path in ["/api/v1/auth/signup", "/api/v1/auth/login"] {
        for email in ["nul\u{0}@example.com", "bell\u{7}@example.com", "del\u{7f}@example.com"] {
            let response = app
                .post_json(path, &json!({"email": email, "password": PASSWORD}), None)
                .await;
            assert_eq!(refused_field(response).await, "email", "{path} {email:?}");
        }
    }
    let token = app.signup("controls@example.com").await;
    let item = |field: &str, value: &str| {
        let mut body = json!({"name": "Acme", "amount_cents": 100});
        body[field] = json!(value);
        body
    };
    for (field, value) in [
        ("name", "Ac\u{0}me"),
        ("name", "Acme\nLtd"),
        ("name", "Acme\u{1b}[31m"),
        ("description", "nul \u{0} here"),
        ("description", "escape \u{1b}[2J"),
    ] {
        let response = app.post_json(TEST_ITEMS, &item(field, value), Some(&token)).await;
        assert_eq!(refused_field(response).await, field, "{value:?}");
    }
    // A description may span lines.
    let multiline = item("description", "line one\r\nline two\tindented");
    let created = app.post_json(TEST_ITEMS, &multiline, Some(&token)).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["description"], "line one\r\nline two\tindented");
    app.stop().await;
}

// example-domain:begin
async fn control_characters_are_refused_in_invoices_and_payment_events(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.webhook_secret = Some(shipshape::config::Secret::new(WEBHOOK_SECRET))
    })
    .await;
    let token = app.signup("controls@example.com").await;
    let invoice = |field: &str, value: &str| {
        let mut body = json!({"customer_name": "Acme", "amount_cents": 100, "currency": "USD"});
        body[field] = json!(value);
        body
    };
    for (field, value) in [
        ("customer_name", "Ac\u{0}me"),
        ("customer_name", "Acme\nLtd"),
        ("customer_name", "Acme\u{1b}[31m"),
        ("description", "nul \u{0} here"),
        ("description", "escape \u{1b}[2J"),
    ] {
        let response = app
            .post_json("/api/v1/invoices", &invoice(field, value), Some(&token))
            .await;
        assert_eq!(refused_field(response).await, field, "{value:?}");
    }
    // A description may span lines.
    let multiline = invoice("description", "line one\r\nline two\tindented");
    let created = app.post_json("/api/v1/invoices", &multiline, Some(&token)).await;
    assert_eq!(created.status(), 201);
    let invoice: Value = created.json().await.unwrap();
    let event =
        json!({"event_id": "evt\u{0}1", "type": "payment.succeeded", "invoice_id": invoice["id"], "amount_cents": 100});
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let webhook = deliver_webhook(&app, &event, now, WEBHOOK_SECRET).await;
    assert_eq!(refused_field(webhook).await, "event_id");
    app.stop().await;
}
// example-domain:end

async fn a_token_of_a_user_that_does_not_exist_is_401_everywhere(backend: Backend) {
    let app = spawn_with_items(backend).await;
    let ghost = app
        .state
        .auth
        .issue_token(uuid::Uuid::now_v7(), uuid::Uuid::new_v4())
        .expect("token");
    let item = format!("{TEST_ITEMS}/{}", uuid::Uuid::now_v7());
    let new_item = json!({"name": "Acme", "amount_cents": 100});
    // example-domain:begin
    let invoice_id = uuid::Uuid::now_v7();
    let new_invoice = json!({"customer_name": "Acme", "amount_cents": 100, "currency": "USD"});
    // example-domain:end
    let requests = [
        ("me", app.get("/api/v1/me", Some(&ghost)).await),
        ("create", app.post_json(TEST_ITEMS, &new_item, Some(&ghost)).await),
        ("get", app.get(&item, Some(&ghost)).await),
        ("delete", app.delete(&item, Some(&ghost)).await),
        // example-domain:begin
        (
            "create invoice",
            app.post_json("/api/v1/invoices", &new_invoice, Some(&ghost)).await,
        ),
        ("list invoices", app.get("/api/v1/invoices", Some(&ghost)).await),
        (
            "get invoice",
            app.get(&format!("/api/v1/invoices/{invoice_id}"), Some(&ghost)).await,
        ),
        (
            "send invoice",
            post_raw(&app, &format!("/api/v1/invoices/{invoice_id}/send"), "", Some(&ghost)).await,
        ),
        ("stats", app.get("/api/v1/stats/summary", Some(&ghost)).await),
        ("events", app.get("/api/v1/invoices/events", Some(&ghost)).await),
        // example-domain:end
    ];
    for (name, response) in requests {
        assert_eq!(response.status(), 401, "{name}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{name}");
        assert_error(response, 401, "unauthorized").await;
    }
    // A real user's missing item is still 404, and their account 200.
    let token = app.signup("real@example.com").await;
    assert_eq!(app.get("/api/v1/me", Some(&token)).await.status(), 200);
    assert_error(app.get(&item, Some(&token)).await, 404, "not_found").await;
    // example-domain:begin
    // A real user's empty list and missing invoice are still 200 and 404.
    assert_eq!(app.get("/api/v1/invoices", Some(&token)).await.status(), 200);
    let missing = app.get(&format!("/api/v1/invoices/{invoice_id}"), Some(&token)).await;
    assert_error(missing, 404, "not_found").await;
    // example-domain:end
    app.stop().await;
}

/// A static folder with one stylesheet (and its precompressed siblings) for the static tests.
fn static_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html><title>home</title>").unwrap();
    std::fs::write(dir.path().join("plain.css"), "body{}".repeat(400)).unwrap();
    dir
}

async fn spawn_serving(dir: &tempfile::TempDir) -> TestApp {
    let static_dir = dir.path().to_path_buf();
    TestApp::spawn_with(Backend::Sqlite, move |c| c.static_dir = static_dir).await
}

#[tokio::test]
async fn static_file_statuses_are_the_client_errors_they_are() {
    let dir = static_folder();
    let app = spawn_serving(&dir).await;
    let get = |headers: &[(&str, &str)]| {
        let mut request = app.client.get(app.url("/static/plain.css"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move { request.send().await.unwrap() }
    };
    let range = get(&[("range", "bytes=5-2")]).await;
    assert_eq!(range.headers()["content-range"], "bytes */2400");
    assert_error(range, 416, "range_not_satisfiable").await;
    let if_match = get(&[("if-match", "\"not-the-etag\"")]).await;
    assert_error(if_match, 412, "precondition_failed").await;
    let unmodified = get(&[("if-unmodified-since", "Mon, 01 Jan 2001 00:00:00 GMT")]).await;
    assert_error(unmodified, 412, "precondition_failed").await;
    // RFC 9110 §12.5.3 lets a server disregard a refusal of identity, and this one does.
    for path in ["/static/plain.css", "/healthz"] {
        let response = app
            .client
            .get(app.url(path))
            .header("accept-encoding", "identity;q=0")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers().get("content-encoding").is_none(), "{path}");
    }
    let long_name = format!("/static/{}.css", "a".repeat(300));
    assert_error(app.get(&long_name, None).await, 404, "not_found").await;
    let long_path = format!("/static/{}", "abcdefgh/".repeat(600));
    assert_error(app.get(&long_path, None).await, 404, "not_found").await;
    app.stop().await;
}

#[tokio::test]
async fn symlinks_out_of_the_static_folder_are_neither_served_nor_compressed() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.css"), "secret{}".repeat(400)).unwrap();
    let dir = static_folder();
    let link =
        |target: &std::path::Path, name: &str| std::os::unix::fs::symlink(target, dir.path().join(name)).unwrap();
    link(&outside.path().join("secret.css"), "leak.css");
    link(outside.path(), "linked-dir");
    link(&dir.path().join("plain.css"), "alias.css");
    // compress-static replaces a sibling that is a link instead of writing through it.
    std::fs::write(outside.path().join("victim.gz"), "victim").unwrap();
    std::fs::write(dir.path().join("third.css"), "p{}".repeat(400)).unwrap();
    link(&outside.path().join("victim.gz"), "third.css.gz");

    let compressed = shipshape::static_files::compress_dir(dir.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(outside.path().join("victim.gz")).unwrap(),
        "victim"
    );
    let names: Vec<String> = compressed
        .iter()
        .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("leak") || n.contains("secret")),
        "{names:?}"
    );
    assert!(!dir.path().join("leak.css.gz").exists() && !dir.path().join("leak.css.br").exists());
    assert!(!outside.path().join("secret.css.gz").exists());
    assert!(
        names.contains(&"alias.css".to_owned()),
        "links inside the folder are fine: {names:?}"
    );

    // A precompressed sibling that points outside must not be served either.
    std::fs::write(dir.path().join("other.css"), "p{}".repeat(400)).unwrap();
    link(&outside.path().join("secret.css"), "other.css.gz");
    let app = spawn_serving(&dir).await;
    for path in ["/static/leak.css", "/static/linked-dir/secret.css"] {
        assert_error(app.get(path, None).await, 404, "not_found").await;
    }
    let other_css = |encoding: &'static str| {
        app.client
            .get(app.url("/static/other.css"))
            .header("accept-encoding", encoding)
            .send()
    };
    assert_error(other_css("gzip").await.unwrap(), 404, "not_found").await;
    let alias = app.get("/static/alias.css", None).await;
    assert_eq!(alias.status(), 200);
    assert_eq!(alias.text().await.unwrap(), "body{}".repeat(400));
    // Each encoding the client accepts has its sibling checked; one it does not accept is
    // never opened, so the plain file is served.
    link(&outside.path().join("secret.css"), "other.css.br");
    assert_error(other_css("br").await.unwrap(), 404, "not_found").await;
    let plain = other_css("identity").await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.text().await.unwrap(), "p{}".repeat(400));
    // A linked folder that stays inside is served; a path past a file or from the root is not.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/inner.css"), "i{}").unwrap();
    link(&dir.path().join("sub"), "inner-link");
    let inner = app.get("/static/inner-link/inner.css", None).await;
    assert_eq!(inner.status(), 200);
    assert_eq!(inner.text().await.unwrap(), "i{}");
    for path in ["/static/plain.css/x", "/static//etc/passwd"] {
        assert_error(app.get(path, None).await, 404, "not_found").await;
    }
    app.stop().await;
}

#[test]
fn every_numeric_setting_has_a_range_and_out_of_it_exits_2_naming_it() {
    for (var, value) in [
        ("HEADER_READ_TIMEOUT_SECS", "18446744073709551615"),
        ("REQUEST_TIMEOUT_SECS", "18446744073709551615"),
        ("SHUTDOWN_TIMEOUT_SECS", "18446744073709551615"),
        ("TOKEN_TTL_SECS", "9223372036854775808"),
        ("REFRESH_TOKEN_TTL_SECS", "59"),
        ("DATABASE_ACQUIRE_TIMEOUT_SECS", "18446744073709551615"),
        ("DATABASE_IDLE_TIMEOUT_SECS", "18446744073709551615"),
        ("DATABASE_MAX_LIFETIME_SECS", "18446744073709551615"),
        ("DATABASE_STATEMENT_TIMEOUT_SECS", "18446744073709551615"),
        ("DATABASE_MAX_CONNECTIONS", "4294967295"),
        ("DATABASE_MIN_CONNECTIONS", "4294967295"),
        ("SECURE_HSTS_SECONDS", "18446744073709551615"),
        ("STATIC_MAX_AGE_SECS", "18446744073709551615"),
        ("MAX_BODY_BYTES", "18446744073709551615"),
        ("PASSWORD_HASH_CONCURRENCY", "18446744073709551615"),
        // example-domain:begin
        ("MAX_SSE_STREAMS", "18446744073709551615"),
        // example-domain:end
        ("SENTRY_TRACES_SAMPLE_RATE", "NaN"),
    ] {
        // `check --deploy` reads the same settings and exits: a value taken would not start a server.
        let output = crate::cli::run(&["check", "--deploy"], &[(var, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{var}: one line, got {stderr}");
        assert!(
            stderr.contains(var) && !stderr.contains("panicked"),
            "{var} named in {stderr}"
        );
    }
}

// example-domain:begin
#[tokio::test]
async fn one_user_cannot_hold_more_than_ten_event_streams() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.signup("streams@example.com").await;
    let mut open = Vec::new();
    for n in 0..10 {
        let stream = app.get("/api/v1/invoices/events", Some(&token)).await;
        assert_eq!(stream.status(), 200, "stream {n}");
        open.push(stream);
    }
    let refused = app.get("/api/v1/invoices/events", Some(&token)).await;
    assert_error(refused, 503, "service_unavailable").await;
    let other = app.signup("other-streams@example.com").await;
    assert_eq!(app.get("/api/v1/invoices/events", Some(&other)).await.status(), 200);
    drop(open);
    app.stop().await;
}
// example-domain:end

#[tokio::test]
async fn ipv6_clients_share_the_limit_of_their_64() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.client_ip_source = shipshape::config::ClientIpSource::XForwardedFor;
        c.rate_limits
            .set("RATE_LIMIT_LOGIN", shipshape::config::parse_rate("2/m").unwrap());
    })
    .await;
    let login = |ip: &'static str| {
        let request = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": "nobody@example.com", "password": PASSWORD}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(login("2001:db8:1:2::1").await, 401);
    assert_eq!(login("2001:db8:1:2::2").await, 401);
    assert_eq!(login("2001:db8:1:2:ffff::3").await, 429, "same /64");
    assert_eq!(login("2001:db8:1:3::1").await, 401, "another /64");
    app.stop().await;
}

// example-domain:begin
#[tokio::test]
async fn the_openapi_document_describes_what_is_served() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let doc: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    assert!(
        doc["paths"].get("/api/v1/webhooks/payments").is_none(),
        "not mounted without WEBHOOK_SECRET, so not listed"
    );
    let cursor = doc["paths"]["/api/v1/invoices"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "cursor")
        .unwrap()
        .clone();
    let pattern = cursor["schema"]["pattern"]
        .as_str()
        .expect("the cursor has a documented format");
    assert!(pattern.starts_with('^') && pattern.ends_with('$'), "{pattern}");
    // The smallest strings the pattern allows are accepted, not refused as invalid.
    let token = app.signup("cursor@example.com").await;
    let schema_valid = "0_00000000-0000-0000-0000-000000000000";
    let page = app
        .get(&format!("/api/v1/invoices?cursor={schema_valid}"), Some(&token))
        .await;
    assert_eq!(page.status(), 200);
    // A cursor the server issued still works, and a malformed one is still invalid_cursor.
    for _ in 0..3 {
        app.create_invoice(&token, 100).await;
    }
    let first: Value = app
        .get("/api/v1/invoices?limit=2", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let next = first["next_cursor"].as_str().unwrap().to_owned();
    let second: Value = app
        .get(&format!("/api/v1/invoices?limit=2&cursor={next}"), Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    let bad = app.get("/api/v1/invoices?cursor=garbage!", Some(&token)).await;
    assert_error(bad, 400, "invalid_cursor").await;
    app.stop().await;
}
// example-domain:end

/// Reads until the server closes the connection: `false` if it is still open after `guard`,
/// which only keeps a broken server from hanging the test.
fn closed_by_server(stream: &mut std::net::TcpStream, guard: Duration) -> bool {
    stream.set_read_timeout(Some(guard)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// A HEADERS frame on stream 1 without END_HEADERS: the head never completes.
const H2_OPEN_HEADERS: &[u8] = &[0, 0, 1, 1, 0, 0, 0, 0, 1, 0x82];

fn connect_and_send(addr: std::net::SocketAddr, parts: &[&[u8]]) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    for part in parts {
        stream.write_all(part).unwrap();
    }
    stream
}

// Blocking std I/O below: the server needs a worker thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_complete_head_are_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.header_read_timeout = Duration::from_secs(1)).await;
    let cases: [(&str, &[&[u8]]); 5] = [
        ("silent", &[]),
        ("part of the HTTP/2 preface", &[b"PRI * HTTP/2.0\r\n"]),
        ("the HTTP/2 preface", &[H2_PREFACE, H2_SETTINGS]),
        (
            "HTTP/2 HEADERS without END_HEADERS",
            &[H2_PREFACE, H2_SETTINGS, H2_OPEN_HEADERS],
        ),
        ("part of an HTTP/1 head", &[b"GET /healthz HTTP/1.1\r\nHost: local"]),
    ];
    let addr = app.addr;
    let results = tokio::task::spawn_blocking(move || {
        let mut streams: Vec<_> = cases
            .iter()
            .map(|(name, parts)| (*name, connect_and_send(addr, parts)))
            .collect();
        streams
            .iter_mut()
            .map(|(name, stream)| (*name, closed_by_server(stream, Duration::from_secs(20))))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for (name, closed) in results {
        assert!(closed, "{name}: still open");
    }
    app.stop().await;
}

/// Sends `GET /healthz` on an open connection and returns the status line.
fn healthz_on(stream: &mut std::net::TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.ends_with(b"}") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&received)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

// The keep-alive race behind the lost request: hyper's header timer also ran while a
// keep-alive connection sat idle between requests, so the server closed it just as a client
// reused it. Idle connections now last far longer than the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_past_the_header_timeout_still_serves() {
    let header_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(Backend::Sqlite, move |c| c.header_read_timeout = header_timeout).await;
    let addr = app.addr;
    let (first, second) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let first = healthz_on(&mut stream);
        std::thread::sleep(header_timeout * 3);
        (first, healthz_on(&mut stream))
    })
    .await
    .unwrap();
    assert_eq!(first, "HTTP/1.1 200 OK");
    assert_eq!(second, "HTTP/1.1 200 OK", "the second request on the idle connection");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_idle_and_half_open_connections_at_once() {
    // Neither timeout would end these connections during the test: only the drain can.
    let mut app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.header_read_timeout = Duration::from_secs(300);
        c.shutdown_timeout = Duration::from_secs(300);
    })
    .await;
    let addr = app.addr;
    let mut held = tokio::task::spawn_blocking(move || {
        let mut idle_http1 = std::net::TcpStream::connect(addr).unwrap();
        assert_eq!(healthz_on(&mut idle_http1), "HTTP/1.1 200 OK");
        vec![
            idle_http1,
            connect_and_send(addr, &[H2_PREFACE, H2_SETTINGS]),
            connect_and_send(addr, &[H2_PREFACE, H2_SETTINGS, H2_OPEN_HEADERS]),
            connect_and_send(addr, &[b"GET /healthz HTTP/1.1\r\nHost: local"]),
            connect_and_send(addr, &[]),
        ]
    })
    .await
    .unwrap();
    // Let the server see every connection before it stops accepting.
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    let server = app.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the drain is not held by idle or half-open connections")
        .unwrap();
    let closed = tokio::task::spawn_blocking(move || {
        held.iter_mut()
            .map(|stream| closed_by_server(stream, Duration::from_secs(20)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(closed.iter().all(|c| *c), "{closed:?}");
}

/// A long run of keep-alive clients creating and reading items and reading their account:
/// not one request may be lost (the drill for the keep-alive race above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_soak_loses_no_request() {
    let app = std::sync::Arc::new(spawn_with_items(Backend::Sqlite).await);
    let mut workers = Vec::new();
    for worker in 0..8 {
        let app = app.clone();
        workers.push(tokio::spawn(async move {
            let token = app.signup(&format!("soak{worker}@example.com")).await;
            let mut failures = Vec::new();
            for n in 0..60 {
                let item = json!({"name": format!("soak {worker}-{n}"), "amount_cents": 100 + n});
                let created = app.post_json(TEST_ITEMS, &item, Some(&token)).await;
                let status = created.status();
                let created: Value = created.json().await.expect("json");
                assert_eq!(status, 201, "{created}");
                let id = created["id"].as_str().unwrap().to_owned();
                let read = app.get(&format!("{TEST_ITEMS}/{id}"), Some(&token)).await;
                if read.status() != 200 {
                    failures.push(format!("get {}", read.status()));
                }
                let me = app.get("/api/v1/me", Some(&token)).await;
                if me.status() != 200 {
                    failures.push(format!("me {}", me.status()));
                }
            }
            failures
        }));
    }
    for worker in workers {
        let failures = worker.await.expect("no request lost: every one was answered");
        assert!(failures.is_empty(), "{failures:?}");
    }
    if let Ok(app) = std::sync::Arc::try_unwrap(app) {
        app.stop().await;
    }
}

// --- Round three (issue 24) ----------------------------------------------------------------

/// Reads until the server ends the connection (EOF or reset) and returns how many bytes came;
/// `None` if it is still open after `guard`.
async fn bytes_until_closed(stream: &mut tokio::net::TcpStream, guard: Duration) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut received = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received += n,
            }
        }
    };
    tokio::time::timeout(guard, read_all).await.ok()
}

// A client that never takes a response held it, and whatever it pinned (a file, memory), for
// as long as it liked: nothing timed out a write. Over HTTP/2 a zero window did the same for
// every stream of a connection. Now a response the client does not take within the header
// timeout closes its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_nobody_reads_close_their_connection_on_http1_and_http2() {
    let dir = static_folder();
    let big = 32 * 1024 * 1024;
    std::fs::write(dir.path().join("big.bin"), vec![7u8; big]).unwrap();
    let static_dir = dir.path().to_path_buf();
    let app = TestApp::spawn_with(Backend::Sqlite, move |c| {
        c.static_dir = static_dir;
        c.header_read_timeout = Duration::from_secs(1);
    })
    .await;

    // HTTP/1: asks for 32 MiB and reads nothing until the server has had time to give up.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /static/big.bin HTTP/1.1\r\nHost: localhost\r\nAccept-Encoding: identity\r\n\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let received = bytes_until_closed(&mut stream, Duration::from_secs(20)).await;
    let received = received.expect("the server closed the connection");
    assert!(received < big, "cut short: {received} of {big} bytes");

    // HTTP/2: a window of zero on every stream (applied once the server has read the client's
    // SETTINGS; the large files stall on the connection's window either way), and 50
    // responses whose heads arrive, their bodies never.
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, axum::body::Bytes>(tcp)
        .await
        .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut heads = Vec::new();
    for n in 0..50 {
        let path = if n % 10 == 0 { "/static/big.bin" } else { "/healthz" };
        let request = axum::http::Request::get(format!("http://localhost{path}"))
            .body(())
            .unwrap();
        client = client.ready().await.expect("stream capacity");
        let (response, _) = client.send_request(request, true).expect("stream opened");
        heads.push(response);
    }
    // Kept, not dropped: dropping one would reset its stream, which ends it properly.
    let mut unread = Vec::new();
    for head in heads {
        let response = head.await.expect("the head arrives");
        assert_eq!(response.status(), 200);
        unread.push(response);
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), connection).await;
    assert!(
        ended.is_ok(),
        "the server closed the HTTP/2 connection holding 50 unread responses"
    );
    app.stop().await;
}

// A megabyte of short distinct unknown keys answered a 6 MB 422.
#[tokio::test]
async fn a_422_stays_small_whatever_the_body() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let mut body = String::from(r#"{"email":"many@example.com","password":"correct horse battery staple""#);
    let mut count = 0;
    while body.len() < 1_000_000 {
        body.push_str(&format!(r#","k{count}":0"#));
        count += 1;
    }
    body.push('}');
    let response = app
        .client
        .post(app.url("/api/v1/auth/signup"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(text.len() < 4096, "{} bytes", text.len());
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["error"]["code"], "validation_failed");
    assert_eq!(json["error"]["details"].as_array().map(Vec::len), Some(20));
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&count.to_string()), "says how many: {message}");
    app.stop().await;
}

// Repeated keys were merged, the last one winning: a signup naming two emails created the
// second, a login trying a wrong then the right password succeeded.
#[tokio::test]
async fn a_repeated_key_and_a_number_too_large_for_a_float_are_422_naming_the_field() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let email = "twice@example.com";
    app.signup(email).await;
    let cases = [
        (
            "/api/v1/auth/signup",
            format!(r#"{{"email":"a@example.com","email":"b@example.com","password":"{PASSWORD}"}}"#),
            "email",
        ),
        (
            "/api/v1/auth/login",
            format!(r#"{{"email":"{email}","password":"wrong password here","password":"{PASSWORD}"}}"#),
            "password",
        ),
        (
            "/api/v1/auth/login",
            format!(r#"{{"email":1e400,"password":"{PASSWORD}"}}"#),
            "email",
        ),
    ];
    for (path, body, field) in cases {
        let response = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let json = assert_error(response, 422, "validation_failed").await;
        assert_eq!(json["error"]["details"][0]["field"], field, "{body}");
    }
    app.stop().await;
}

// A 300 kB token was decoded once per key before it was refused.
#[tokio::test]
async fn an_oversized_token_is_refused_even_when_signed() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let token = app.signup("big-token@example.com").await;
    assert_eq!(app.get("/api/v1/me", Some(&token)).await.status(), 200);
    // The same user, signed with the same key, but carrying 8 kB of padding.
    let signed = app.state.auth.verify_token(&token).unwrap();
    let claims = json!({"sub": signed.user.to_string(), "sid": signed.session.to_string(),
        "iat": 0, "exp": 4_000_000_000_i64, "pad": "x".repeat(8192)});
    let key = jsonwebtoken::EncodingKey::from_secret(crate::helpers::TEST_SECRET.as_bytes());
    let big = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let refused = app.get("/api/v1/me", Some(&big)).await;
    assert_error(refused, 401, "unauthorized").await;
    let garbage = format!("{}.{}", "a".repeat(300_000), "b");
    assert_error(app.get("/api/v1/me", Some(&garbage)).await, 401, "unauthorized").await;
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_may_be_cached_for_a_while() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let response = app.get("/openapi.json", None).await;
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");
    app.stop().await;
}

// One client wrote 134 MB of log in 3 s through 400 kB methods, and with stdout unread the
// log queue blocked every thread that logged: 9,000 small requests froze the server.
#[test]
fn a_log_pipe_nobody_reads_never_blocks_requests_and_lines_stay_short() {
    let mut server = crate::cli::start_server(&[("LOG_FORMAT", "json"), ("RATE_LIMIT_GLOBAL", "off")]);
    let port = server.port;
    let mut long_method = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let method = "X".repeat(64 * 1024);
    long_method
        .write_all(format!("{method} /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut status = [0u8; 12];
    long_method.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 405");
    // stdout is a pipe nobody reads: its 64 kB fill after a few hundred lines.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let unanswered = runtime.block_on(async {
        shipshape::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/api/v1/nope");
        let workers = (0..4).map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..2600 {
                    if client.get(&url).send().await.is_err() {
                        return 1; // a frozen server would hold up the test for each request left
                    }
                }
                0
            })
        });
        let mut unanswered = 0;
        for worker in workers {
            unanswered += worker.await.unwrap_or(1);
        }
        let health = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await;
        unanswered + usize::from(health.map(|r| r.status() != 200).unwrap_or(true))
    });
    assert_eq!(unanswered, 0, "every request answered while the log pipe was full");
    let stdout = server.child.stdout.take().unwrap();
    crate::cli::sigterm(&server.child);
    let lines: Vec<String> = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .collect();
    let longest = lines.iter().map(String::len).max().unwrap_or(0);
    assert!(longest < 4096, "longest line {longest} bytes");
    let cut = lines.iter().find(|line| line.contains("\"status\":405"));
    let cut: Value = serde_json::from_str(cut.expect("the long method's line")).unwrap();
    let logged_method = cut["method"].as_str().unwrap_or_default();
    assert!(
        logged_method.ends_with("…[cut]") && logged_method.len() < 64,
        "{logged_method}"
    );
    assert!(
        lines
            .iter()
            .filter(|line| line.contains("/api/v1/nope") || line.contains("\"status\":404"))
            .count()
            > 1000
    );
    let _ = crate::cli::wait_with_deadline(&mut server.child, Duration::from_secs(10));
}

// A request blocked on a row lock kept the process alive 19 s with SHUTDOWN_TIMEOUT_SECS=3:
// closing the pool waited for its connection. Platforms SIGKILL at 30 s.
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
#[test]
fn shutdown_does_not_wait_for_a_query_stuck_on_a_lock() {
    let admin = crate::helpers::postgres_admin();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = runtime.block_on(fresh_postgres_database(&admin));
    let migrated = crate::cli::run(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    // Every read of `users` waits for this transaction, for longer than the test lasts.
    let mut holder = runtime.block_on(async {
        let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            .execute(&mut holder)
            .await
            .unwrap();
        holder
    });
    let mut server = crate::cli::start_server(&[
        ("DATABASE_URL", &url),
        ("RUN_MIGRATIONS_ON_START", "false"),
        ("SHUTDOWN_TIMEOUT_SECS", "2"),
        ("DATABASE_STATEMENT_TIMEOUT_SECS", "120"),
    ]);
    let body = format!(r#"{{"email":"stuck@example.com","password":"{PASSWORD}"}}"#);
    let mut stuck = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let request = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stuck.write_all(request.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let started = std::time::Instant::now();
    crate::cli::sigterm(&server.child);
    let status = crate::cli::wait_with_deadline(&mut server.child, Duration::from_secs(8));
    assert!(status.success(), "{status:?}");
    eprintln!(
        "exit {:?} after SIGTERM with SHUTDOWN_TIMEOUT_SECS=2",
        started.elapsed()
    );
    runtime.block_on(async { sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap() });
}

// `migrate revert` read the applied set before it waited for the lock: a `migrate` that
// finished meanwhile made it undo two migrations while it printed one.
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_decides_what_to_undo_under_its_lock() {
    let admin = crate::helpers::postgres_admin();
    let url = fresh_postgres_database(&admin).await;
    let env = [("DATABASE_URL", url.as_str())];
    for args in [&["migrate"][..], &["migrate", "revert"]] {
        let output = crate::cli::run(args, &env);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let lock = |sql: &'static str| sqlx::query(sql).bind(0x7368_6970_7368_6170_i64);
    lock("SELECT pg_advisory_lock($1)").execute(&mut holder).await.unwrap();
    let revert_url = url.clone();
    let revert =
        tokio::task::spawn_blocking(move || crate::cli::run(&["migrate", "revert"], &[("DATABASE_URL", &revert_url)]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Meanwhile the latest migration is applied again, by a migrator that takes no lock.
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::helpers::test_config(&Backend::Sqlite, &dir).await;
    config.database.url = shipshape::config::SecretUrl::new(&url);
    let db = shipshape::db::Db::connect_lazy(&config.database).unwrap();
    let applied = db.migrate_through_transaction_pooler().await.unwrap();
    assert_eq!(applied.len(), 1);
    lock("SELECT pg_advisory_unlock($1)")
        .execute(&mut holder)
        .await
        .unwrap();
    let output = revert.await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status = crate::cli::run(&["migrate", "status", "--format", "json"], &env);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let pending: Vec<i64> = status["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "pending")
        .filter_map(|m| m["version"].as_i64())
        .collect();
    assert_eq!(pending, [applied[0].0], "exactly the latest undone");
    db.close().await;
}

// The SQLite migration lock followed a symbolic link and created its target; a file that is
// not a database was reported as "unreachable".
#[test]
fn migrate_says_what_is_wrong_with_the_database_file_and_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, dir.path().join("app.db-migrate.lock")).unwrap();
    let url = format!("sqlite://{}/app.db", dir.path().display());
    let output = crate::cli::run(&["migrate"], &[("DATABASE_URL", &url)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("migration lock file"), "{stderr}");
    assert!(!target.exists(), "the link's target was not created");

    std::fs::write(dir.path().join("garbage.db"), vec![0x5a_u8; 8192]).unwrap();
    let url = format!("sqlite://{}/garbage.db", dir.path().display());
    let output = crate::cli::run(&["migrate"], &[("DATABASE_URL", &url)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not a SQLite database") && !stderr.contains("unreachable"),
        "{stderr}"
    );
}

// ~570 concurrent /readyz calls queued for the one readiness connection until the 2 s bound
// answered 503 to every platform probe, with the database 11 ms away and healthy.
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readyz_flood_does_not_make_a_healthy_database_look_down() {
    let admin = crate::helpers::postgres_admin();
    let delay = Duration::from_millis(15);
    let (app, _proxy) = crate::helpers::spawn_behind_slow_proxy(&admin, Duration::from_secs(5), delay).await;
    let app = std::sync::Arc::new(app);
    assert_eq!(app.get("/readyz", None).await.status(), 200);
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let flood: Vec<_> = (0..300)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut answered = 0;
                while tokio::time::Instant::now() < until {
                    if app.get("/readyz", None).await.status().is_success() {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    // The platform's probe meanwhile.
    let mut probe = Vec::new();
    while tokio::time::Instant::now() < until {
        probe.push(app.get("/readyz", None).await.status().as_u16());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut flood_ready = 0;
    for task in flood {
        flood_ready += task.await.unwrap();
    }
    eprintln!("probe {probe:?}; {flood_ready} flood calls answered ready");
    assert!(probe.iter().all(|s| *s == 200), "{probe:?}");
    assert!(flood_ready > 300, "{flood_ready}");
    if let Ok(app) = std::sync::Arc::try_unwrap(app) {
        app.stop().await;
    }
}

/// An `amount_cents` that is not a whole number is refused on `path`, however close to one;
/// `body` makes the body around an amount written as JSON text.
async fn amounts_are_whole_numbers(app: &TestApp, token: &str, path: &str, body: fn(&str) -> String) {
    for amount in ["99.99999999999999999", "100.5", "1e400"] {
        let response = post_raw(app, path, &body(amount), Some(token)).await;
        assert_eq!(refused_field(response).await, "amount_cents", "{path} {amount}");
    }
    assert_eq!(
        post_raw(app, path, &body("100.0"), Some(token)).await.status(),
        201,
        "{path}: a whole number written with a fraction"
    );
}

// 99.99999999999999999 was read as the float 100.0 and stored as 100.
#[tokio::test]
async fn an_amount_that_is_not_a_whole_number_is_refused_however_close() {
    let app = spawn_with_items(Backend::Sqlite).await;
    let token = app.signup("fraction@example.com").await;
    let item = |amount: &str| format!(r#"{{"name":"Ada","amount_cents":{amount}}}"#);
    amounts_are_whole_numbers(&app, &token, TEST_ITEMS, item).await;
    // example-domain:begin
    let invoice = |amount: &str| format!(r#"{{"customer_name":"Ada","amount_cents":{amount},"currency":"EUR"}}"#);
    amounts_are_whole_numbers(&app, &token, "/api/v1/invoices", invoice).await;
    // example-domain:end
    app.stop().await;
}
