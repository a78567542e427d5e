//! Security and static files (docs/api.md, "Security notes"): headers on every kind of response, hosts, HTTPS redirect, client IP,
//! CORS, header-read timeout, static files.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use serde_json::json;
use shipshape::config::parse_rate;

use crate::helpers::{Backend, Options, PASSWORD, TestApp, assert_error};

const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "content-security-policy",
        "default-src 'self'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'; object-src 'none'",
    ),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-xss-protection", "0"),
];

fn assert_security_headers(response: &reqwest::Response, what: &str) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(
            response.headers().get(*name).map(|v| v.to_str().unwrap()),
            Some(*value),
            "{name} on {what}"
        );
    }
    assert!(response.headers().get("server").is_none(), "no Server header on {what}");
    assert!(response.headers().get("x-powered-by").is_none());
}

async fn explode() -> &'static str {
    panic!("boom")
}

#[tokio::test]
async fn every_kind_of_response_carries_the_security_headers() {
    let options = Options {
        backend: Backend::Sqlite,
        extra_routes: Some(Router::new().route("/boom", get(explode))),
    };
    let app = TestApp::start(options, |c| {
        c.max_body_bytes = 100;
        c.rate_limits.set("RATE_LIMIT_LOGIN", parse_rate("1/m").unwrap());
        c.secure_ssl_redirect = true;
    })
    .await;
    let login = json!({"email": "a@example.com", "password": PASSWORD});
    let cases = [
        ("200", app.get("/healthz", None).await),
        ("404", app.get("/api/v1/nope", None).await),
        ("405", app.client.put(app.url("/healthz")).send().await.unwrap()),
        (
            "413",
            app.post_json("/api/v1/auth/signup", &json!({"email": "x".repeat(200)}), None)
                .await,
        ),
        ("401", app.post_json("/api/v1/auth/login", &login, None).await),
        ("429", app.post_json("/api/v1/auth/login", &login, None).await),
        (
            "308",
            app.client
                .get(app.url("/api/v1/me"))
                .header("x-forwarded-proto", "http")
                .send()
                .await
                .unwrap(),
        ),
        (
            "400",
            app.client
                .get(app.url("/api/v1/me"))
                .header("host", "evil.test")
                .send()
                .await
                .unwrap(),
        ),
        ("500", app.get("/boom", None).await),
        ("static", app.get("/static/style.css", None).await),
        ("index", app.get("/", None).await),
    ];
    for (what, response) in &cases {
        assert_security_headers(response, what);
    }
    let statuses: Vec<u16> = cases.iter().map(|(_, r)| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 404, 405, 413, 401, 429, 308, 400, 500, 200, 200]);
    assert!(
        cases[1].1.headers().get("strict-transport-security").is_none(),
        "HSTS off by default"
    );
    app.stop().await;
}

#[tokio::test]
async fn hsts_is_sent_on_https_requests_only_with_its_flags() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.hsts.seconds = 600;
        c.hsts.preload = true;
    })
    .await;
    let https = app
        .client
        .get(app.url("/healthz"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(
        https.headers()["strict-transport-security"],
        "max-age=600; includeSubDomains; preload"
    );
    let plain = app.get("/healthz", None).await;
    assert!(plain.headers().get("strict-transport-security").is_none());
    app.stop().await;
}

#[tokio::test]
async fn allowed_hosts_match_names_domains_and_ipv6_and_spare_health_checks() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.allowed_hosts = vec![
            "api.example.com".into(),
            ".example.org".into(),
            "[::1]".into(),
            "127.0.0.1".into(),
        ];
    })
    .await;
    let with_host = |host: &str| app.client.get(app.url("/api/v1/nope")).header("host", host).send();
    for allowed in [
        "api.example.com",
        "API.EXAMPLE.COM:443",
        "example.org",
        "a.b.example.org",
        "[::1]:8080",
    ] {
        assert_eq!(
            with_host(allowed).await.unwrap().status(),
            404,
            "{allowed} is allowed (route is unknown)"
        );
    }
    for refused in ["example.com", "evil.test", "badexample.org", "[::2]"] {
        assert_error(with_host(refused).await.unwrap(), 400, "invalid_host").await;
    }
    for probe in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(app.url(probe))
            .header("host", "10.0.0.7:8080")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{probe} is exempt from the host check");
    }
    app.stop().await;
}

#[tokio::test]
async fn https_redirect_only_when_the_proxy_says_http() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.secure_ssl_redirect = true).await;
    let redirected = app
        .client
        .get(app.url("/api/v1/me?status=draft"))
        .header("x-forwarded-proto", "http")
        .header("host", "localhost:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(redirected.status(), 308);
    assert_eq!(
        redirected.headers()["location"],
        "https://localhost/api/v1/me?status=draft",
        "same path and query, on https"
    );
    let direct = app.get("/api/v1/nope", None).await;
    assert_eq!(direct.status(), 404, "no header: served, not redirected");
    let https = app
        .client
        .get(app.url("/api/v1/nope"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(https.status(), 404);
    let probe = app
        .client
        .get(app.url("/healthz"))
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200, "health probes are never redirected");
    app.stop().await;
}

async fn login_statuses(app: &TestApp, forwarded_for: &[&str]) -> Vec<u16> {
    let body = json!({"email": "nobody@example.com", "password": PASSWORD});
    let mut statuses = Vec::new();
    for xff in forwarded_for {
        let response = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", *xff)
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn a_forged_x_forwarded_for_changes_nothing_under_connect() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.rate_limits.set("RATE_LIMIT_LOGIN", parse_rate("2/m").unwrap())
    })
    .await;
    let statuses = login_statuses(&app, &["1.1.1.1", "2.2.2.2", "3.3.3.3"]).await;
    assert_eq!(
        statuses,
        [401, 401, 429],
        "every request counts against the socket peer"
    );
    app.stop().await;
}

#[tokio::test]
async fn x_forwarded_for_source_uses_the_rightmost_entry() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.rate_limits.set("RATE_LIMIT_LOGIN", parse_rate("2/m").unwrap());
        c.client_ip_source = shipshape::config::ClientIpSource::XForwardedFor;
    })
    .await;
    // The client controls the left part; our proxy appends the real address on the right.
    let statuses = login_statuses(&app, &["1.1.1.1, 9.9.9.9", "2.2.2.2, 9.9.9.9", "3.3.3.3, 9.9.9.9"]).await;
    assert_eq!(statuses, [401, 401, 429]);
    assert_eq!(
        login_statuses(&app, &["8.8.8.8"]).await,
        [401],
        "another client has its own budget"
    );
    app.stop().await;
}

#[tokio::test]
async fn cors_answers_preflight_for_listed_origins_only() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.cors_allowed_origins = vec!["https://app.example.com".into()]
    })
    .await;
    let preflight = |origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/auth/signup"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        allowed.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    app.stop().await;

    let no_cors = TestApp::spawn(Backend::Sqlite).await;
    let response = no_cors
        .client
        .get(no_cors.url("/healthz"))
        .header("origin", "https://app.example.com")
        .send();
    let response = response.await.unwrap();
    assert!(
        response
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "no CORS headers at all"
    );
    no_cors.stop().await;
}

// Blocking std I/O below: the server needs a worker thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_dribbles_its_headers_is_cut_off() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.header_read_timeout = Duration::from_secs(2)).await;
    let mut stream = std::net::TcpStream::connect(app.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut closed_at = None;
    for byte in request.iter() {
        if stream.write_all(&[*byte]).is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match stream.read(&mut buf) {
            Ok(0) => {
                closed_at = Some(started.elapsed());
                break;
            }
            Ok(_) => panic!("the server answered a request whose headers never finished"),
            Err(_) => {} // still open; nothing to read
        }
        std::thread::sleep(Duration::from_millis(900));
    }
    let closed_at = closed_at.expect("the connection was closed before the headers finished");
    assert!(
        closed_at >= Duration::from_millis(1500) && closed_at < Duration::from_secs(5),
        "closed after {closed_at:?}"
    );
    app.stop().await;
}

/// Raw HTTP, so the path reaches the server exactly as written (clients normalise `..`).
fn raw_get(addr: std::net::SocketAddr, path: &str) -> u16 {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// Blocking std I/O below: the server needs a worker thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_cache_compress_and_refuse_escapes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html><title>home</title>").unwrap();
    std::fs::write(dir.path().join("app.3f9a1c2e.css"), "body{}".repeat(100)).unwrap();
    std::fs::write(dir.path().join("plain.css"), "body{}".repeat(100)).unwrap();
    std::fs::write(dir.path().join(".env"), "SECRET=1").unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    shipshape::static_files::compress_dir(dir.path()).unwrap();
    assert!(dir.path().join("plain.css.br").exists() && dir.path().join("plain.css.gz").exists());
    let static_dir = dir.path().to_path_buf();
    let app = TestApp::spawn_with(Backend::Sqlite, move |c| {
        c.static_dir = static_dir;
        c.static_max_age_secs = 120;
    })
    .await;

    let home = app.get("/", None).await;
    assert_eq!(home.status(), 200);
    assert!(home.text().await.unwrap().contains("home"));

    let hashed = app.get("/static/app.3f9a1c2e.css", None).await;
    assert_eq!(hashed.headers()["cache-control"], "public, max-age=31536000, immutable");
    let plain = app
        .client
        .get(app.url("/static/plain.css"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.headers()["cache-control"], "public, max-age=120");
    assert_eq!(plain.headers()["content-encoding"], "br");
    assert_eq!(plain.headers()["vary"], "accept-encoding");
    let etag = plain.headers()["etag"].clone();
    assert!(plain.headers().get("last-modified").is_some());
    let again = app
        .client
        .get(app.url("/static/plain.css"))
        .header("accept-encoding", "br")
        .header("if-none-match", etag);
    assert_eq!(again.send().await.unwrap().status(), 304);

    for path in [
        "/static/.env",
        "/static/sub",
        "/static/sub/",
        "/static/../Cargo.toml",
        "/static/%2e%2e/Cargo.toml",
        "/static/%2E%2E%2FCargo.toml",
        "/static/..%2fCargo.toml",
        "/static/missing.css",
    ] {
        assert_eq!(raw_get(app.addr, path), 404, "{path}");
    }
    let browser = app
        .client
        .get(app.url("/static/missing.css"))
        .header("accept", "text/html,*/*;q=0.8")
        .send();
    let browser = browser.await.unwrap();
    assert_eq!(browser.status(), 404);
    assert!(
        browser.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    app.stop().await;
}

#[tokio::test]
async fn browsers_get_html_error_pages_and_api_clients_json() {
    let options = Options {
        backend: Backend::Sqlite,
        extra_routes: Some(Router::new().route("/boom", get(explode))),
    };
    let app = TestApp::start(options, |_| {}).await;
    let html = "text/html,application/xhtml+xml,*/*;q=0.8";
    let page = app
        .client
        .get(app.url("/no-such-page"))
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_security_headers(&page, "HTML 404");
    let body = page.text().await.unwrap();
    assert_eq!(
        body,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/static/404.html")).unwrap()
    );

    let crash = app
        .client
        .get(app.url("/boom"))
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(crash.status(), 500);
    assert!(crash.text().await.unwrap().contains("<html"));

    let api = app
        .client
        .get(app.url("/api/v1/nope"))
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_error(api, 404, "not_found").await;
    app.stop().await;
}
