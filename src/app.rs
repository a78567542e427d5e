//! App assembly: the one function that builds the router with its whole middleware stack,
//! outermost layer first.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{Extensions, HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::Response;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::config::RateSetting;
use crate::jobs::{self, Registry};
use crate::observe::Observe;
use crate::rate_limit::Limit;
use crate::state::AppState;
use crate::static_files::{self, HtmlErrorPages};
use crate::{backup, error, password_reset, rate_limit, routes, security, sessions, telemetry, uploads};

/// The application: every route inside the whole middleware stack.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] with `extra` routes beside the others, inside the same stack (tests mount
/// routes of their own here).
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let config = &state.config;
    let (api, openapi) = api(&state).split_for_parts();
    // Static files and the landing page, and the API reference at /docs only when API_DOCS is
    // on: off, its assets are 404 as well.
    let site = match config.api_docs {
        true => static_files::router(config, |_| false).merge(routes::docs::router(config)),
        false => static_files::router(config, routes::docs::is_docs_asset),
    };
    let routes = extra
        .merge(api)
        .merge(routes::openapi::router(openapi))
        .merge(site)
        .fallback(error::not_found);

    let client_ip_source = config.client_ip_source;
    let observe = Observe {
        expose_internal_errors: config.expose_internal_errors(),
        sentry_enabled: telemetry::sentry::enabled(),
        metrics_enabled: config.metrics_port.is_some(),
    };

    let stack = ServiceBuilder::new()
        // The client's address, from CLIENT_IP_SOURCE alone: what logs and rate limits see.
        .map_request(move |req| security::client_ip::attach(client_ip_source, req))
        // Request id, Sentry hub, metrics and the one log line of each request.
        .layer(observe.layer())
        // A browser asking for a page outside /api/ gets an error as the HTML error page.
        .layer(HtmlErrorPages::layer(&config.static_dir))
        // Error responses made below without `ApiError` (axum's 404, a timeout) get its JSON.
        .map_response(error::render_bare_error)
        // Sentry performance transactions, only when sampled (SENTRY_TRACES_SAMPLE_RATE > 0).
        .option_layer(
            (observe.sentry_enabled && config.sentry.traces_sample_rate > 0.0)
                .then(|| sentry::integrations::tower::SentryHttpLayer::new().enable_transaction()),
        )
        // Host check, HTTPS redirect, and the security headers on every response below.
        .layer(security::Guard::from_config(config).layer())
        // A panicking handler becomes a 500 of the usual shape; the server keeps serving.
        .layer(CatchPanicLayer::custom(error::panic_response))
        // CORS for the configured origins only (absent when none are).
        .option_layer(security::cors::layer(&config.cors_allowed_origins))
        // RATE_LIMIT_GLOBAL per client IP, health probes exempt.
        .layer(rate_limit::GLOBAL.layer(&state))
        // Whole-request deadline; its 408 is rendered as 503 `timeout`.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        // Bodies over the largest any route takes (an upload's) are refused with 413 before a
        // handler reads them.
        .layer(RequestBodyLimitLayer::new(
            config.max_body_bytes.max(uploads::body_limit(config.uploads.max_bytes)),
        ))
        // Every other route reads at most MAX_BODY_BYTES (an upload route sets its own).
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
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
                    .and(NotForContentType::GRPC)
                    // Downloads of stored files go out as they are stored.
                    .and(|_, _, headers: &HeaderMap, _: &Extensions| {
                        !headers.contains_key(header::CONTENT_DISPOSITION)
                    }),
            ),
        );
    routes.layer(stack).with_state(state)
}

/// The API: each route module's routes (with the rate limits they declare), collecting their
/// OpenAPI descriptions. Add a module's router here.
fn api(state: &AppState) -> OpenApiRouter<AppState> {
    // Responses that carry a user's data or a token (RFC 6749 §5.1) must not be stored by
    // browsers or proxies.
    let user_data = OpenApiRouter::new()
        .merge(routes::auth::router(state))
        .merge(routes::admin::router())
        // example-domain:begin
        .merge(routes::invoices::example_domain(state))
        // example-domain:end
        .route_layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    OpenApiRouter::with_openapi(routes::openapi::base_document())
        .merge(routes::health::router())
        .merge(user_data)
}

/// Every rate limit, declared beside the routes it guards: `cli` makes a flag and environment
/// variable of each, and the configuration reads them. Add a route module's `LIMITS` here.
pub fn rate_limits() -> Vec<RateSetting> {
    let limits: &[&[Limit]] = &[
        &[rate_limit::GLOBAL],
        routes::auth::LIMITS,
        // example-domain:begin
        routes::invoices::LIMITS,
        routes::attachments::LIMITS,
        // example-domain:end
    ];
    limits.concat().iter().map(|limit| limit.setting).collect()
}

/// How often the expired sessions and password-reset tokens are deleted. They are refused
/// from the moment they expire whatever this says: the sweep only keeps the tables small.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Every job the workers run, and the recurring ones (docs/jobs.md). Add a job's handler here.
pub fn jobs(context: jobs::Context) -> Registry {
    // PostgreSQL is backed up by its provider (docs/backups.md).
    let backup_interval = context
        .config
        .backups
        .interval
        .filter(|_| context.config.database.is_sqlite());
    let registry = Registry::new(context)
        .on(|context, job: password_reset::SendLink| async move { password_reset::send_link(&context, job).await })
        .on(|context, _: sessions::SweepExpired| async move {
            let deleted = sessions::delete_expired(&context.db, context.config.refresh_token_ttl).await?;
            if deleted > 0 {
                tracing::info!(deleted, "expired sessions deleted");
            }
            Ok(())
        })
        .on(|context, _: password_reset::SweepExpired| async move {
            let deleted = password_reset::delete_expired(&context.db).await?;
            if deleted > 0 {
                tracing::info!(deleted, "expired password-reset tokens deleted");
            }
            Ok(())
        })
        .every(SWEEP_EVERY, sessions::SweepExpired)
        .every(SWEEP_EVERY, password_reset::SweepExpired)
        .on(|context, _: backup::CreateBackup| async move {
            let made = backup::create(&context.config, &context.db).await?;
            tracing::info!(backup = made.name, size_bytes = made.size_bytes, "backup made");
            Ok(())
        });
    // example-domain:begin
    let registry = routes::invoices::example_jobs(registry);
    // example-domain:end
    match backup_interval {
        Some(interval) => registry.every(interval, backup::CreateBackup),
        None => registry,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rate_limit_has_a_valid_default_and_a_variable_of_its_own() {
        let limits = rate_limits();
        let mut vars = std::collections::HashSet::new();
        for limit in &limits {
            assert!(crate::config::parse_rate(limit.default).is_ok(), "{}", limit.var);
            assert!(limit.var.starts_with("RATE_LIMIT_"), "{}", limit.var);
            assert!(vars.insert(limit.var), "{} declared twice", limit.var);
        }
    }
}
