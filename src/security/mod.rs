//! Security behaviour of SPEC §5: response headers, allowed hosts, HTTPS redirect, client IP
//! and CORS. Each piece is small and configured once from [`crate::config::Config`].

pub mod client_ip;
pub mod cors;
pub mod headers;
pub mod hosts;
pub mod https;

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use crate::app::{AppState, BoxResponseFuture};
use crate::error::ApiError;

/// Paths a platform probes directly (no proxy headers, any Host): exempt from the host
/// check and the HTTPS redirect so health checks pass.
pub fn is_health_path(path: &str) -> bool {
    path == "/healthz" || path == "/readyz"
}

/// Host check, HTTPS redirect, and the security headers on whatever response comes back.
#[derive(Clone)]
pub struct GuardLayer {
    state: AppState,
}

impl GuardLayer {
    pub fn new(state: AppState) -> GuardLayer {
        GuardLayer { state }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    state: AppState,
}

impl<S, B> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> BoxResponseFuture {
        let was_https = https::is_https(req.headers());
        let refusal = (!is_health_path(req.uri().path()))
            .then(|| refusal(&self.state, &req))
            .flatten();
        let pending = match refusal {
            Some(response) => Err(response),
            None => Ok(self.inner.call(req)),
        };
        let state = self.state.clone();
        Box::pin(async move {
            let mut response = match pending {
                Ok(inner) => inner.await?.map(Body::new),
                Err(refusal) => refusal,
            };
            state.security_headers.apply(response.headers_mut(), was_https);
            Ok(response)
        })
    }
}

/// The answer instead of the app's: a host not in ALLOWED_HOSTS, or plain HTTP to redirect.
fn refusal(state: &AppState, req: &Request) -> Option<Response> {
    if !state.allowed_hosts.allows_request(req.headers(), req.uri()) {
        return Some(ApiError::InvalidHost.into_response());
    }
    let location = state
        .config
        .secure_ssl_redirect
        .then(|| https::redirect_location(req.headers(), req.uri()))
        .flatten()?;
    Some((StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response())
}
