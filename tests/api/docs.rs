//! `/docs`: the interactive API reference (Swagger UI from `static/docs/`), its assets under the
//! static-file rules, and nothing of it when `API_DOCS` is off.

use serde_json::Value;
use shipshape::config::{AppEnv, Config, DEFAULT_CSP, Settings};

use crate::helpers::{Backend, TestApp};

/// The page's own assets, as it names them.
fn assets_of(page: &str) -> Vec<String> {
    page.split(['"', '\''])
        .filter(|part| part.starts_with("/static/docs/"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn docs_page_loads_openapi_json_under_the_default_csp() {
    let app = TestApp::spawn(Backend::Sqlite).await;

    let page = app.get("/docs", None).await;
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    // The default policy, relaxed for this page alone and only for `data:` images (the
    // renderer's icons): no inline script or style, nothing from another origin.
    assert_eq!(
        headers["content-security-policy"].to_str().unwrap(),
        format!("{DEFAULT_CSP}; img-src 'self' data:")
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cross-origin-opener-policy"], "same-origin");
    assert_eq!(headers["cache-control"], "no-cache");
    assert!(headers.get("etag").is_some());
    let page = page.text().await.unwrap();
    // The default CSP runs no inline script or style: every script is a file of ours.
    assert_eq!(
        page.matches("<script").count(),
        page.matches("<script src=\"/static/").count()
    );
    assert!(!page.contains("style="), "no inline style");
    assert!(!page.contains("://"), "nothing from another origin");

    let assets = assets_of(&page);
    assert!(
        assets.iter().any(|a| a.ends_with("/swagger-ui-bundle.js")),
        "{assets:?}"
    );
    assert!(assets.iter().any(|a| a.ends_with("/swagger-ui.css")), "{assets:?}");
    assert!(assets.iter().any(|a| a.ends_with("/init.js")), "{assets:?}");
    for asset in &assets {
        let response = app.get(asset, None).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(response.headers()["cache-control"], "public, max-age=3600", "{asset}");
        assert!(response.headers().get("etag").is_some(), "{asset}");
        assert!(response.headers().get("last-modified").is_some(), "{asset}");
        assert_eq!(response.headers()["content-security-policy"], DEFAULT_CSP, "{asset}");
    }
    // The vendored renderer comes with its license.
    let license = app.get("/static/docs/swagger-ui-5.35.0/LICENSE", None).await;
    assert_eq!(license.status(), 200);
    assert!(license.text().await.unwrap().contains("Apache License"));

    // What the initialiser loads is the document at /openapi.json, with its bearer scheme.
    let init = app.get("/static/docs/init.js", None).await.text().await.unwrap();
    assert!(init.contains("url: \"/openapi.json\""), "{init}");
    assert!(
        init.contains("validatorUrl: null"),
        "the document is not sent to a validator"
    );
    let document: Value = app.get("/openapi.json", None).await.json().await.unwrap();
    assert_eq!(document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    for path in [
        "/api/v1/auth/signup",
        "/api/v1/me",
        // example-domain:begin
        "/api/v1/invoices",
        // example-domain:end
    ] {
        assert!(document["paths"][path].is_object(), "{path} is documented");
    }

    let slash = app.get("/docs/", None).await;
    assert_eq!(slash.status(), 308);
    assert_eq!(slash.headers()["location"], "/docs");
    app.stop().await;
}

#[tokio::test]
async fn docs_page_and_initialiser_are_served_precompressed() {
    // Only the small files: `compress-static` handles the bundle the same way (the Dockerfile
    // runs it over the whole folder), but brotli on 1.7 MB is slow in a debug build.
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("static/docs");
    for name in ["index.html", "init.js"] {
        std::fs::copy(source.join(name), docs.join(name)).unwrap();
    }
    shipshape::static_files::compress_dir(dir.path()).unwrap();
    let static_dir = dir.path().to_owned();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.static_dir = static_dir).await;

    for path in ["/docs", "/static/docs/init.js"] {
        let response = app
            .client
            .get(app.url(path))
            .header("accept-encoding", "br, gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-encoding"], "br", "{path}");
        assert_eq!(response.headers()["vary"], "accept-encoding", "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn with_api_docs_off_nothing_of_it_is_served() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.api_docs = false).await;
    for path in [
        "/docs",
        "/docs/",
        "/static/docs/index.html",
        "/static/docs/init.js",
        "/static/docs/swagger-ui-5.35.0/swagger-ui-bundle.js",
        "/static/docs/swagger-ui-5.35.0/swagger-ui.css",
        "/static/docs/swagger-ui-5.35.0/LICENSE",
        "/static/%64ocs/init.js",
        "/static//docs/init.js",
        "/static/./docs/init.js",
        "/static/docs%2Finit.js",
    ] {
        let response = app.get(path, None).await;
        assert_eq!(response.status(), 404, "{path}");
    }
    // The rest of the site and the document itself stay.
    assert_eq!(app.get("/static/style.css", None).await.status(), 200);
    assert_eq!(app.get("/openapi.json", None).await.status(), 200);
    app.stop().await;
}

#[test]
fn api_docs_is_on_in_development_and_off_in_production_by_default() {
    let config = |env, value: Option<&str>| {
        let settings = Settings {
            api_docs: value.map(str::to_owned),
            ..Settings::default()
        };
        Config::from_settings(&settings, Some(env)).unwrap()
    };
    assert!(config(AppEnv::Development, None).api_docs);
    assert!(!config(AppEnv::Production, None).api_docs);
    assert!(config(AppEnv::Production, Some("true")).api_docs);
    assert!(!config(AppEnv::Development, Some("off")).api_docs);

    // A public API may want public docs: turning them on in production is no deploy finding.
    let findings = |config: &Config| {
        shipshape::checks::check_config(config)
            .into_iter()
            .map(|f| f.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        findings(&config(AppEnv::Production, Some("true"))),
        findings(&config(AppEnv::Production, Some("false")))
    );
}
