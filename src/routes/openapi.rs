//! `/openapi.json`: the OpenAPI 3.1 document, generated from the route annotations.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, ErrorDetail, FieldError};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "shipshape",
        description = "A production-ready Rust web service to fork."
    ),
    components(schemas(ErrorBody, ErrorDetail, FieldError)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Declares the `bearer` scheme that protected routes name in `security(("bearer" = []))`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .build();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document the route modules add their paths to.
pub fn base_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Serves the finished document, serialised once at start. It changes only with a deploy:
/// clients and proxies may keep it for a few minutes.
pub fn router(document: utoipa::openapi::OpenApi) -> Router<AppState> {
    // Serialising plain data structures cannot fail; an empty object would show it if it did.
    let body = Bytes::from(document.to_pretty_json().unwrap_or_else(|_| "{}".to_owned()));
    let headers = [
        (header::CONTENT_TYPE, "application/json"),
        (header::CACHE_CONTROL, "public, max-age=300"),
    ];
    Router::new().route(
        "/openapi.json",
        get(move || std::future::ready((headers, body.clone()))),
    )
}
