//! Security behaviour of SPEC §5: response headers, allowed hosts, HTTPS redirect, client IP
//! and CORS. Each piece is small and configured once from [`crate::config::Config`].

pub mod client_ip;
pub mod cors;
pub mod headers;
pub mod hosts;
pub mod https;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::ApiError;

/// Paths a platform probes directly (no proxy headers, any Host): exempt from the host
/// check and the HTTPS redirect so health checks pass.
pub fn is_health_path(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// Host check, HTTPS redirect, and the security headers on whatever response comes back.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let was_https = https::is_https(req.headers());
    let exempt = is_health_path(req.uri().path());
    let mut response = if exempt {
        next.run(req).await
    } else if !state.allowed_hosts.allows_request(req.headers(), req.uri()) {
        ApiError::InvalidHost.into_response()
    } else if let Some(location) = state
        .config
        .secure_ssl_redirect
        .then(|| https::redirect_location(req.headers(), req.uri()))
        .flatten()
    {
        (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response()
    } else {
        next.run(req).await
    };
    state.security_headers.apply(response.headers_mut(), was_https);
    response
}
