//! App assembly: the shared state, and the one function that builds the router with its
//! whole middleware stack.

use std::ops::Deref;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::middleware;
use axum::response::Response;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Auth;
use crate::config::{AppEnv, Config};
use crate::db::{Db, PoolerGate, Schema};
use crate::error::ApiError;
// example-domain:begin
use crate::events::{self, EventHub};
// example-domain:end
use crate::lifecycle::Lifecycle;
use crate::rate_limit::{self, Limit, RateLimiters, SharedStore};
use crate::security::headers::SecurityHeaders;
use crate::security::hosts::AllowedHosts;
use crate::static_files::{self, ErrorPages};
use crate::{error, redis_store, routes, security, telemetry};

/// Everything a handler or middleware may need, behind one `Arc` so cloning it per request is cheap.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

pub struct AppStateInner {
    pub config: Arc<Config>,
    pub db: Db,
    /// Closed while the database is behind a pooler that would mix up prepared statements.
    pub pooler_gate: PoolerGate,
    /// Where the schema stands for this binary, read before listening and refreshed by
    /// `server::spawn_schema_watch`: `/readyz` reads it without a query.
    pub schema: Arc<RwLock<Schema>>,
    /// The connection `/readyz` uses, kept apart from the request pool (see `Db::connect_serving`);
    /// `None` when the budget is one connection and readiness shares it.
    pub readiness_db: Option<Db>,
    /// Present when `REDIS_URL` is set; reconnects by itself.
    pub redis: Option<ConnectionManager>,
    pub auth: Auth,
    pub rate_limiters: Arc<RateLimiters>,
    // example-domain:begin
    pub events: Arc<EventHub>,
    // example-domain:end
    pub lifecycle: Lifecycle,
    pub allowed_hosts: AllowedHosts,
    pub security_headers: SecurityHeaders,
    pub error_pages: ErrorPages,
    /// Whether a Sentry client is running (set up by `serve` before the state is built).
    pub sentry_enabled: bool,
    /// Whether the Prometheus recorder is installed (`METRICS_PORT` set).
    pub metrics_enabled: bool,
}

impl Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// Redis must never stall a request: short timeouts, and the callers fall back.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

impl AppState {
    /// Builds the shared state. Must run inside the Tokio runtime (it starts background tasks).
    pub fn new(config: Arc<Config>, db: Db, readiness_db: Option<Db>) -> anyhow::Result<AppState> {
        let client = redis_store::client(&config)
            .map_err(anyhow::Error::msg)
            .context("REDIS_URL is not usable")?;
        let redis = match &client {
            Some(client) => {
                let settings = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT))
                    .set_number_of_retries(1);
                Some(ConnectionManager::new_lazy_with_config(client.clone(), settings).context("cannot set up Redis")?)
            }
            None => None,
        };
        let shared_limits = redis.clone().map(|connection| Arc::new(SharedStore::new(connection)));
        let rate_limiters = Arc::new(RateLimiters::new(&config.rate_limits, shared_limits));
        rate_limit::spawn_pruner(Arc::downgrade(&rate_limiters));
        let lifecycle = Lifecycle::default();
        // example-domain:begin
        let events = Arc::new(EventHub::new(
            config.max_sse_streams,
            config.max_sse_streams_per_user,
            redis.clone(),
        ));
        if let Some(client) = client {
            events::spawn_redis_subscriber(Arc::downgrade(&events), client, lifecycle.draining());
        }
        // example-domain:end
        Ok(AppState(Arc::new(AppStateInner {
            auth: Auth::from_config(&config)?,
            // example-domain:begin
            events,
            // example-domain:end
            allowed_hosts: AllowedHosts::new(&config.allowed_hosts),
            security_headers: SecurityHeaders::from_config(&config),
            error_pages: ErrorPages::load(&config.static_dir),
            sentry_enabled: telemetry::sentry::enabled(),
            metrics_enabled: config.metrics_port.is_some(),
            lifecycle,
            rate_limiters,
            redis,
            db,
            readiness_db,
            pooler_gate: PoolerGate::default(),
            schema: Arc::new(RwLock::new(Schema::Error)),
            config,
        })))
    }

    /// The database for a handler's queries, or 503 while the pooler in front of it would mix
    /// up prepared statements (see [`PoolerGate`]).
    pub fn database(&self) -> Result<&Db, ApiError> {
        if self.pooler_gate.is_closed() {
            return Err(ApiError::DatabaseUnavailable);
        }
        Ok(&self.db)
    }

    /// The pool for health checks: the connection kept aside for them, or the request pool
    /// when the budget is one connection.
    pub fn health_db(&self) -> &Db {
        self.readiness_db.as_ref().unwrap_or(&self.db)
    }

    /// The last schema state read (see [`Schema`]).
    pub fn schema(&self) -> Schema {
        self.schema.read().map(|s| s.clone()).unwrap_or(Schema::Error)
    }

    /// `DEBUG=true` shows internal error detail, but never in production.
    pub fn expose_internal_errors(&self) -> bool {
        self.config.debug && self.config.app_env == AppEnv::Development
    }
}

/// All routes, each behind its own rate limit where it has one, with their OpenAPI
/// descriptions collected as they are added.
pub fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    let per_ip = |limit| rate_limit::PerIp::layer(state, limit);
    // example-domain:begin
    let per_user = |limit| middleware::from_fn_with_state((state.clone(), limit), rate_limit::per_user);
    // example-domain:end
    // Responses that carry a user's data or a token (RFC 6749 §5.1) must not be stored by
    // browsers or proxies.
    let user_data = OpenApiRouter::new()
        .merge(routes::auth::signup_router().route_layer(per_ip(Limit::Signup)))
        .merge(routes::auth::login_router().route_layer(per_ip(Limit::Login)))
        .merge(routes::auth::me_router())
        // example-domain:begin
        .merge(routes::invoices::create_router().route_layer(per_user(Limit::InvoiceCreate)))
        .merge(routes::invoices::router())
        .merge(routes::events::router())
        .merge(routes::stats::router())
        // example-domain:end
        .route_layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    OpenApiRouter::with_openapi(routes::openapi::base_document())
        .merge(routes::health::router())
        .merge(user_data)
        // example-domain:begin
        // Mounted (and so documented) only when it can work: without its secret it is a 404.
        .merge(match state.config.webhook_secret {
            Some(_) => routes::webhooks::router(),
            None => OpenApiRouter::new(),
        })
    // example-domain:end
}

/// Routes that are not part of the API: static files, the landing page and the API reference.
fn site_routes(state: &AppState) -> Router<AppState> {
    let files = static_files::router(&state.config);
    // The API reference at /docs only when API_DOCS is on; off, its assets are 404 as well.
    if state.config.api_docs {
        files.merge(routes::docs::router(&state.config))
    } else {
        files.layer(middleware::from_fn(routes::docs::hide_assets))
    }
}

/// Every route: `extra` (tests mount theirs here), the API, `/openapi.json` describing it,
/// and the site (static files).
pub fn all_routes(state: &AppState, extra: Router<AppState>) -> Router<AppState> {
    let (api, openapi) = routes(state).split_for_parts();
    extra
        .merge(api)
        .merge(routes::openapi::router(openapi))
        .merge(site_routes(state))
}

/// Builds the application: every route inside the whole middleware stack.
pub fn build_router(state: AppState) -> Router {
    with_middleware(all_routes(&state, Router::new()), state)
}

/// Wraps routes in the 404 fallback and the whole middleware stack, outermost layer first.
pub fn with_middleware(router: Router<AppState>, state: AppState) -> Router {
    let config = &state.config;
    let stack = ServiceBuilder::new()
        // Request id, client IP, Sentry hub, metrics, one log line; renders every error as §4 JSON.
        .layer(telemetry::Observe::layer(state.clone()))
        // Sentry performance transactions, only when sampled (SENTRY_TRACES_SAMPLE_RATE > 0).
        .option_layer(
            (state.sentry_enabled && config.sentry.traces_sample_rate > 0.0)
                .then(|| sentry::integrations::tower::SentryHttpLayer::new().enable_transaction()),
        )
        // Host check, HTTPS redirect, and the security headers on every response below.
        .layer(security::Guard::layer(state.clone()))
        // A panicking handler becomes a 500 of the usual shape; the server keeps serving.
        .layer(CatchPanicLayer::custom(error::panic_response))
        // CORS for the configured origins only (absent when none are).
        .option_layer(security::cors::layer(&config.cors_allowed_origins))
        // RATE_LIMIT_GLOBAL per client IP, health probes exempt.
        .layer(rate_limit::PerIp::layer(&state, Limit::Global))
        // Whole-request deadline; its 408 is rendered as 503 `timeout`.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        // Bodies over MAX_BODY_BYTES are refused with 413 before a handler reads them.
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        // The layer above enforces the limit; axum's own 2 MB default would contradict it.
        .layer(DefaultBodyLimit::disable())
        // Box the body once, right here: the compression body holds every encoder's state inline
        // (kilobytes), and each layer above would otherwise copy it as the response passes up.
        .map_response(|response: Response<_>| response.map(Body::new))
        .map_request(disregard_identity_refusal)
        // Dynamic JSON of 1 KiB or more is compressed (static files come precompressed).
        .layer(
            CompressionLayer::new().compress_when(
                SizeAbove::new(1024)
                    .and(NotForContentType::IMAGES)
                    .and(NotForContentType::SSE)
                    .and(NotForContentType::GRPC),
            ),
        );

    router.fallback(error::not_found).layer(stack).with_state(state)
}

/// Drops `identity;q=0` and `*;q=0` from `Accept-Encoding`. Faced with them, the compression
/// layer overwrites the status of the response already made (a 201 included) with 406;
/// RFC 9110 §12.5.3 lets a server disregard the refusal and send the content as it has it.
fn disregard_identity_refusal<B>(mut req: Request<B>) -> Request<B> {
    let refuses_identity = |item: &str| {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or_default();
        (coding.eq_ignore_ascii_case("identity") || coding == "*")
            && parts.any(|p| match (p.get(..2), p.get(2..)) {
                (Some(key), Some(q)) => {
                    key.eq_ignore_ascii_case("q=") && q.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
                }
                _ => false,
            })
    };
    let Some(value) = req.headers().get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()) else {
        return req;
    };
    if !value.split(',').any(refuses_identity) {
        return req;
    }
    let kept: Vec<&str> = value
        .split(',')
        .filter(|item| !refuses_identity(item) && !item.trim().is_empty())
        .map(str::trim)
        .collect();
    match HeaderValue::from_str(&kept.join(", ")) {
        Ok(kept) if !kept.is_empty() => req.headers_mut().insert(header::ACCEPT_ENCODING, kept),
        _ => req.headers_mut().remove(header::ACCEPT_ENCODING),
    };
    req
}
