//! The plumbing of the middlewares that run on every request (`observe::Observe`,
//! `static_files::HtmlErrorPages`, `security::Guard`, `rate_limit::Enforce`). They are tower
//! services rather than `axum::middleware::from_fn`, which clones the whole stack below it and
//! boxes it on every call: with the four as `from_fn`, a `/healthz` took 62,400 instructions
//! instead of 39,100, a logged 404 67,300 instead of 54,700 (callgrind; docs/code-layout.md).
//! A middleware implements [`Middleware`]; [`MiddlewareLayer`] makes it a layer. For one of
//! your own on a few routes, `from_fn` is fine and shorter.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tower::util::MapResponse;
use tower::{Layer, Service, ServiceExt};

/// What a middleware returns for one request: one boxed future.
pub type BoxResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// One middleware: `handle` does the synchronous part at once and returns the rest as a future.
/// `inner` (the rest of the stack) is ready to be called.
pub trait Middleware: Clone + Send + Sync + 'static {
    fn handle<S>(&self, inner: &mut S, req: Request) -> BoxResponseFuture
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static;
}

#[derive(Clone)]
pub struct MiddlewareLayer<M>(pub M);

/// The inner stack, its responses turned into axum's `Response` (the body boxed) as they come back.
type Inner<S> = MapResponse<S, fn(<S as Service<Request>>::Response) -> Response>;

impl<M: Clone, S> Layer<S> for MiddlewareLayer<M>
where
    S: Service<Request>,
    S::Response: IntoResponse,
{
    type Service = WithMiddleware<M, Inner<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        let into_response: fn(S::Response) -> Response = IntoResponse::into_response;
        WithMiddleware {
            middleware: self.0.clone(),
            inner: inner.map_response(into_response),
        }
    }
}

#[derive(Clone)]
pub struct WithMiddleware<M, S> {
    middleware: M,
    inner: S,
}

impl<M, S> Service<Request> for WithMiddleware<M, S>
where
    M: Middleware,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> BoxResponseFuture {
        self.middleware.handle(&mut self.inner, req)
    }
}
