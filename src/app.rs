//! App assembly: the shared state, and the one function that builds the router with its
//! whole middleware stack.

use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::config::{AppEnv, Config};
use crate::db::Db;
use crate::lifecycle::Lifecycle;
use crate::security::headers::SecurityHeaders;
use crate::security::hosts::AllowedHosts;
use crate::{error, routes, security, telemetry};

/// Everything a handler or middleware may need, behind one `Arc` so cloning it per request is cheap.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

pub struct AppStateInner {
    pub config: Arc<Config>,
    pub db: Db,
    pub lifecycle: Lifecycle,
    pub allowed_hosts: AllowedHosts,
    pub security_headers: SecurityHeaders,
}

impl Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: Arc<Config>, db: Db) -> AppState {
        AppState(Arc::new(AppStateInner {
            allowed_hosts: AllowedHosts::new(&config.allowed_hosts),
            security_headers: SecurityHeaders::from_config(&config),
            lifecycle: Lifecycle::default(),
            db,
            config,
        }))
    }

    /// `DEBUG=true` shows internal error detail, but never in production.
    pub fn expose_internal_errors(&self) -> bool {
        self.config.debug && self.config.app_env == AppEnv::Development
    }
}

/// All routes, with their OpenAPI descriptions collected as they are added.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(routes::openapi::base_document()).merge(routes::health::router())
}

/// Builds the application: routes, then the middleware stack, outermost layer first.
pub fn build_router(state: AppState) -> Router {
    let (router, openapi) = routes().split_for_parts();
    let config = &state.config;
    let stack = ServiceBuilder::new()
        // Request id, client IP, one log line per request; renders every error as §4 JSON.
        .layer(middleware::from_fn_with_state(state.clone(), telemetry::observe))
        // Host check, HTTPS redirect, and the security headers on every response below.
        .layer(middleware::from_fn_with_state(state.clone(), security::guard))
        // A panicking handler becomes a 500 of the usual shape; the server keeps serving.
        .layer(CatchPanicLayer::custom(error::panic_response))
        // CORS for the configured origins only (absent when none are).
        .option_layer(security::cors::layer(&config.cors_allowed_origins))
        // Whole-request deadline; its 408 is rendered as 503 `timeout`.
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, config.request_timeout))
        // Bodies over MAX_BODY_BYTES are refused with 413 before a handler reads them.
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        // The layer above enforces the limit; axum's own 2 MB default would contradict it.
        .layer(DefaultBodyLimit::disable());

    router
        .merge(routes::openapi::router(openapi))
        .fallback(error::not_found)
        .layer(stack)
        .with_state(state)
}
