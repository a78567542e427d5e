//! Liveness and readiness probes for platforms and load balancers.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::db::Schema;
use crate::redis_store;
use crate::state::AppState;

/// The database check of `/readyz` never takes longer than this.
const READINESS_DB_TIMEOUT: Duration = Duration::from_secs(2);
const READINESS_REDIS_TIMEOUT: Duration = Duration::from_millis(500);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// Liveness: the process answers. Touches nothing, so a slow database never restarts it.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    status: &'static str,
    checks: Checks,
    /// True while the server drains for shutdown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    draining: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Checks {
    database: DatabaseCheck,
    redis: RedisCheck,
    migrations: MigrationsCheck,
    storage: StorageCheck,
}

#[derive(Serialize, ToSchema)]
pub struct StorageCheck {
    /// `ok` or `error`, at most 5 s old; a storage failure does not fail readiness (only the
    /// routes that store files answer 503).
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct MigrationsCheck {
    /// `ok`; `ahead` (the database has migrations this binary does not know: a rolled-back
    /// release, still ready); `pending` (migrations this binary needs are missing: not ready);
    /// `error` (not read yet: not ready).
    status: &'static str,
    /// The versions missing, when `pending`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pending: Option<Vec<i64>>,
    /// The versions this binary does not know, when `ahead`.
    #[serde(skip_serializing_if = "Option::is_none")]
    unknown: Option<Vec<i64>>,
}

impl From<Schema> for MigrationsCheck {
    fn from(schema: Schema) -> MigrationsCheck {
        let (status, pending, unknown) = match schema {
            Schema::Ok => ("ok", None, None),
            Schema::Ahead { unknown } => ("ahead", None, Some(unknown)),
            Schema::Pending { pending } => ("pending", Some(pending), None),
            Schema::Error => ("error", None, None),
        };
        MigrationsCheck {
            status,
            pending,
            unknown,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DatabaseCheck {
    /// `ok` or `error`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct RedisCheck {
    /// `ok`, `disabled` or `error`; a Redis failure does not fail readiness.
    status: &'static str,
}

/// Redis is optional to readiness: while it is away the rate limiter falls back to this instance.
async fn redis_status(state: &AppState) -> &'static str {
    let Some(redis) = &state.redis else {
        return "disabled";
    };
    match redis_store::ping(&mut redis.clone(), READINESS_REDIS_TIMEOUT).await {
        Ok(()) => "ok",
        Err(_) => "error",
    }
}

/// Readiness: the database answers within 2 s, has the migrations this binary needs, and the
/// server is not draining. Concurrent calls share one database check.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = Readiness, description = "ready to take traffic"),
    (status = 503, body = Readiness, description = "database unreachable, migrations pending, or shutting down"),
))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let draining = state.lifecycle.is_draining();
    // Behind a pooler that would mix up prepared statements the instance must not take traffic.
    let database = if draining || state.pooler_gate.is_closed() {
        DatabaseCheck {
            status: "error",
            latency_ms: None,
        }
    } else {
        match state.readiness_ping.ping(state.health_db(), READINESS_DB_TIMEOUT).await {
            Ok(latency) => DatabaseCheck {
                status: "ok",
                latency_ms: Some(latency.as_micros() as f64 / 1000.0),
            },
            Err(_) => DatabaseCheck {
                status: "error",
                latency_ms: None,
            },
        }
    };
    let schema = state.schema();
    let ready = !draining && database.status == "ok" && schema.is_ready();
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        checks: Checks {
            database,
            redis: RedisCheck {
                status: redis_status(&state).await,
            },
            migrations: schema.into(),
            storage: StorageCheck {
                status: if state.storage.is_healthy() { "ok" } else { "error" },
            },
        },
        draining,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
