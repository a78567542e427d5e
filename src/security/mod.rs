//! Security behaviour (docs/api.md, "Security notes"): response headers, allowed hosts, HTTPS
//! redirect, client IP and CORS. Each piece is small and configured once from [`crate::config::Config`].

pub mod client_ip;
pub mod cors;
pub mod headers;
pub mod hosts;
pub mod https;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::Service;

use crate::config::Config;
use crate::error::ApiError;
use crate::middleware::{BoxResponseFuture, Middleware, MiddlewareLayer};
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

impl Guard {
    pub fn layer(self) -> MiddlewareLayer<Guard> {
        MiddlewareLayer(self)
    }
}

/// The refusal or the response from below, with the security headers either way.
impl Middleware for Guard {
    fn handle<S>(&self, inner: &mut S, req: Request) -> BoxResponseFuture
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let was_https = https::is_https(req.headers());
        let refusal = (!is_health_path(req.uri().path()))
            .then(|| self.refusal(&req))
            .flatten();
        let pending = match refusal {
            Some(response) => Err(response),
            None => Ok(inner.call(req)),
        };
        let headers = self.headers.clone();
        Box::pin(async move {
            let mut response = match pending {
                Ok(inner) => inner.await?,
                Err(refusal) => refusal,
            };
            headers.apply(response.headers_mut(), was_https);
            Ok(response)
        })
    }
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
