//! `/docs`: the interactive API reference. Swagger UI, vendored in `STATIC_DIR/docs/`, renders
//! `/openapi.json` in the browser. Mounted only when `API_DOCS` is on.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Redirect;
use axum::routing::get;
use tower_http::services::ServeFile;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::Config;
use crate::state::AppState;

/// The page at `/docs`; its assets are ordinary static files under `/static/docs/`.
pub fn router(config: &Config) -> Router<AppState> {
    let page = ServeFile::new(config.static_dir.join("docs").join("index.html"))
        .precompressed_br()
        .precompressed_gzip();
    let policy = HeaderValue::from_str(&page_policy(&config.content_security_policy))
        .unwrap_or_else(|_| HeaderValue::from_static(crate::config::DEFAULT_CSP));
    Router::new()
        .route_service("/docs", page)
        // The page names its assets by version: revalidated (ETag) on every visit, an upgrade
        // never pairs an old page with assets that are gone.
        .route_layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ))
        .route_layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            policy,
        ))
        .route("/docs/", get(|| async { Redirect::permanent("/docs") }))
}

/// The page's policy: the configured one plus `img-src 'self' data:`, because Swagger UI's
/// stylesheet draws its icons (select arrows, copy button, checkboxes) as `data:` SVGs. Images
/// only: scripts, styles and connections stay as configured. A policy that names `img-src`
/// itself is left as it is.
fn page_policy(policy: &str) -> String {
    let names_img_src = policy
        .split(';')
        .any(|directive| directive.split_whitespace().next() == Some("img-src"));
    if names_img_src {
        policy.to_owned()
    } else {
        format!("{}; img-src 'self' data:", policy.trim_end().trim_end_matches(';'))
    }
}

/// Whether `path` names something under `/static/docs/` as the file server reads it:
/// percent-decoded, with empty and `.` segments skipped. With `API_DOCS` off nothing of the
/// reference is served: the static files' guard answers these paths 404 too.
pub fn is_docs_asset(path: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut segments = decoded.split('/').filter(|s| !s.is_empty() && *s != ".");
    segments.next() == Some("static") && segments.next() == Some("docs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_policy_adds_data_images_only() {
        assert_eq!(
            page_policy(crate::config::DEFAULT_CSP),
            format!("{}; img-src 'self' data:", crate::config::DEFAULT_CSP)
        );
        assert_eq!(
            page_policy("default-src 'self';"),
            "default-src 'self'; img-src 'self' data:"
        );
        let own = "default-src 'self'; img-src 'self' https://cdn.example.com";
        assert_eq!(page_policy(own), own);
    }

    #[test]
    fn docs_assets_are_recognised_however_spelled() {
        for path in [
            "/static/docs/init.js",
            "/static/docs/",
            "/static//docs/init.js",
            "/static/./docs/init.js",
            "/static/%64ocs/init.js",
            "/static/docs%2Finit.js",
        ] {
            assert!(is_docs_asset(path), "{path}");
        }
        for path in ["/static/style.css", "/static/docsx/a.js", "/docs", "/"] {
            assert!(!is_docs_asset(path), "{path}");
        }
    }
}
