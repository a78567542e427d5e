//! Security behaviour (docs/api.md, "Security notes"): response headers, allowed hosts, HTTPS
//! redirect, client IP and CORS. Each piece is small and configured once from [`crate::config::Config`].

pub mod client_ip;
pub mod cors;
pub mod headers;
pub mod hosts;
pub mod https;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Config;
use crate::error::ApiError;
use headers::SecurityHeaders;
use hosts::AllowedHosts;

/// Paths a platform probes directly (no proxy headers, any Host): exempt from the host
/// check and the HTTPS redirect so health checks pass.
pub fn is_health_path(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// Host check, HTTPS redirect, and the security headers on whatever response comes back.
#[derive(Clone)]
pub struct Guard {
    allowed_hosts: AllowedHosts,
    /// Shared, so the response future takes a pointer, not a copy of every header.
    headers: Arc<SecurityHeaders>,
    /// `SECURE_SSL_REDIRECT`.
    redirect_to_https: bool,
}

impl Guard {
    pub fn from_config(config: &Config) -> Guard {
        Guard {
            allowed_hosts: AllowedHosts::new(&config.allowed_hosts),
            headers: Arc::new(SecurityHeaders::from_config(config)),
            redirect_to_https: config.secure_ssl_redirect,
        }
    }
}

/// For `axum::middleware::from_fn_with_state`: the refusal or the response from below, with
/// the security headers either way.
pub async fn guard(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let was_https = https::is_https(req.headers());
    let refusal = (!is_health_path(req.uri().path()))
        .then(|| guard.refusal(&req))
        .flatten();
    let mut response = match refusal {
        Some(refusal) => refusal,
        None => next.run(req).await,
    };
    guard.headers.apply(response.headers_mut(), was_https);
    response
}

impl Guard {
    /// The answer instead of the app's: a host not in ALLOWED_HOSTS, or plain HTTP to redirect.
    fn refusal(&self, req: &Request) -> Option<Response> {
        if !self.allowed_hosts.allows_request(req.headers(), req.uri()) {
            return Some(ApiError::InvalidHost.into_response());
        }
        let location = self
            .redirect_to_https
            .then(|| https::redirect_location(req.headers(), req.uri()))
            .flatten()?;
        Some((StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response())
    }
}
