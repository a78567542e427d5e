//! Rate limits (docs/api.md, "Rate limits"): GCRA, a burst of N refilled at N per period, keyed by
//! client IP or user id. In-process with `governor`; shared by every instance through one atomic Redis
//! script call when `REDIS_URL` is set, falling back to in-process while Redis is away.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;

use axum::extract::{FromRef, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};
use redis::aio::ConnectionManager;
use tower::Service;
use uuid::Uuid;

use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::auth::Auth;
use crate::config::{Rate, RateLimits, RateSetting};
use crate::error::ApiError;
use crate::middleware::{BoxResponseFuture, Middleware, MiddlewareLayer};
use crate::redis_store;
use crate::security::client_ip::ClientIp;
use crate::security::is_health_path;
use crate::telemetry::throttle::Throttle;

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

/// After a Redis fault, use the in-process limiter this long before trying Redis again.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Redis faults are logged at most this often.
const FAULT_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// How often idle in-process keys are dropped, so memory stays bounded however many IPs visit.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Keys one in-process limit holds at most (~200 B each, so ~10 MB): between two prunes, a
/// client rotating addresses (or a spoofable header source) could otherwise add without bound.
const MAX_KEYS: usize = 50_000;
/// A full in-process limit is pruned at most this often.
const FULL_PRUNE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Ip(IpAddr),
    User(Uuid),
    /// The budget shared by the keys that found a full in-process limit (see [`BoundedStore`]).
    Overflow,
}

impl LimitKey {
    /// The key of a client address. IPv6 clients are keyed by their /64, as large services
    /// do: a host usually gets a whole /64 and can rotate through it at will. An IPv4-mapped
    /// address is the IPv4 client it carries.
    pub fn client(ip: IpAddr) -> LimitKey {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => LimitKey::Ip(IpAddr::V4(v4)),
                None => LimitKey::Ip(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)))),
            },
            v4 => LimitKey::Ip(v4),
        }
    }
}

impl std::fmt::Display for LimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitKey::Ip(ip) => write!(f, "ip:{ip}"),
            LimitKey::User(id) => write!(f, "user:{id}"),
            LimitKey::Overflow => f.write_str("overflow"),
        }
    }
}

/// governor's concurrent map of keys, holding at most `max`. When it is full, a key it does
/// not hold yet is counted under [`LimitKey::Overflow`]: memory stays bounded and those
/// clients are still limited (together, so more strictly) until a prune makes room. Keys it
/// holds keep their own budget. A full map asks for a prune at once ([`Limiter::check_local`]),
/// not at the next minute's: most keys of a flood are back to a full budget within one period
/// of the limit, and those are dropped without changing any decision.
struct BoundedStore {
    keys: DashMapStateStore<LimitKey>,
    max: usize,
    /// Set when a key went to the overflow budget: the limiter prunes soon after.
    overflowed: Arc<AtomicBool>,
}

impl StateStore for BoundedStore {
    type Key = LimitKey;

    fn measure_and_replace<T, F, E>(&self, key: &LimitKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // `len` visits every shard, so it is asked only for a key not held yet.
        let key = if self.keys.contains_key(key) || self.keys.len() < self.max {
            key
        } else {
            self.overflowed.store(true, Ordering::Relaxed);
            &LimitKey::Overflow
        };
        self.keys.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<LimitKey> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.keys.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        self.keys.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The outcome of one check, with what the response headers need.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u32,
    pub retry_after: Duration,
}

impl Decision {
    /// Whole seconds, rounded up: a client that waits this long will pass.
    fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)
    }
}

type LocalLimiter = RateLimiter<LimitKey, BoundedStore, DefaultClock, StateInformationMiddleware>;

/// The limiter of one [`Limit`]: in-process, or in Redis when it is shared.
pub struct Limiter {
    pub name: &'static str,
    rate: Rate,
    local: LocalLimiter,
    shared: Option<Arc<SharedStore>>,
    /// `X-RateLimit-Limit`, the same on every response: made once.
    limit_header: HeaderValue,
    /// Shared with the store: set when it is full.
    overflowed: Arc<AtomicBool>,
    /// A full store is pruned at most once per [`FULL_PRUNE_INTERVAL`].
    full_prune: Throttle,
}

impl Limiter {
    fn new(name: &'static str, rate: Rate, shared: Option<Arc<SharedStore>>, max_keys: usize) -> Limiter {
        // `replenish_interval` is never zero: the period is at least 1 s and the burst a u32.
        let quota = Quota::with_period(rate.replenish_interval())
            .unwrap_or_else(|| Quota::per_second(rate.burst))
            .allow_burst(rate.burst);
        let overflowed = Arc::new(AtomicBool::new(false));
        let store = BoundedStore {
            keys: DashMapStateStore::default(),
            max: max_keys,
            overflowed: overflowed.clone(),
        };
        let local: LocalLimiter = RateLimiter::new(quota, store, DefaultClock::default());
        Limiter {
            name,
            rate,
            local,
            shared,
            limit_header: HeaderValue::from(rate.burst.get()),
            overflowed,
            full_prune: Throttle::new(FULL_PRUNE_INTERVAL),
        }
    }

    pub async fn check(&self, key: LimitKey) -> Decision {
        if let Some(shared) = &self.shared
            && let Some(decision) = shared.check(self.name, key, self.rate).await
        {
            return decision;
        }
        self.check_local(key)
    }

    fn check_local(&self, key: LimitKey) -> Decision {
        let decision = self.decide_local(key);
        // By whichever request found the store full (a prune of 50,000 keys takes about a
        // millisecond).
        if self.overflowed.load(Ordering::Relaxed) && self.full_prune.due().is_some() {
            self.overflowed.store(false, Ordering::Relaxed);
            self.prune();
        }
        decision
    }

    fn decide_local(&self, key: LimitKey) -> Decision {
        match self.local.check_key(&key) {
            Ok(snapshot) => Decision {
                allowed: true,
                remaining: snapshot.remaining_burst_capacity(),
                retry_after: Duration::ZERO,
            },
            Err(not_until) => Decision {
                allowed: false,
                remaining: 0,
                retry_after: not_until.wait_time_from(self.local.clock().now()),
            },
        }
    }

    fn apply_headers(&self, decision: Decision, headers: &mut HeaderMap) {
        headers.insert(X_RATELIMIT_LIMIT, self.limit_header.clone());
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
    }

    fn prune(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
    }
}

/// The GCRA in Redis, atomically. State per key is its "theoretical arrival time" (ms).
/// ARGV: emission interval (ms), burst. Returns {allowed, remaining, retry_after_ms}.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allowed_at = new_tat - interval * burst
if allowed_at > now then
  return {0, 0, allowed_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, math.floor((now - allowed_at) / interval), 0}
";

/// Redis connection for the limiters, with the fault bookkeeping for the fallback.
struct SharedStore {
    connection: ConnectionManager,
    script: redis::Script,
    started: Instant,
    /// Milliseconds since `started` before which Redis is not tried again.
    skip_until_ms: AtomicU64,
    /// The fault is logged once a minute, not on every request that falls back.
    fault_log: Throttle,
}

impl SharedStore {
    fn new(connection: ConnectionManager) -> SharedStore {
        SharedStore {
            connection,
            script: redis::Script::new(GCRA_SCRIPT),
            started: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
            fault_log: Throttle::new(FAULT_LOG_INTERVAL),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// `None` when Redis cannot answer quickly: the caller falls back to in-process.
    async fn check(&self, name: &str, key: LimitKey, rate: Rate) -> Option<Decision> {
        if self.now_ms() < self.skip_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let mut connection = self.connection.clone();
        let interval_ms = rate.replenish_interval().as_millis().max(1) as u64;
        let call = async {
            self.script
                .key(format!("shipshape:ratelimit:{name}:{key}"))
                .arg(interval_ms)
                .arg(rate.burst.get())
                .invoke_async::<(u8, u32, u64)>(&mut connection)
                .await
        };
        let result = match tokio::time::timeout(redis_store::TIMEOUT, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {} ms", redis_store::TIMEOUT.as_millis())),
        };
        match result {
            Ok((allowed, remaining, retry_after_ms)) => Some(Decision {
                allowed: allowed == 1,
                remaining,
                retry_after: Duration::from_millis(retry_after_ms),
            }),
            Err(reason) => {
                self.record_fault(&reason);
                None
            }
        }
    }

    fn record_fault(&self, reason: &str) {
        let now = self.now_ms();
        self.skip_until_ms
            .store(now + REDIS_RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
        if let Some(held_back) = self.fault_log.due() {
            tracing::warn!(
                reason,
                since_last = held_back,
                "Redis unreachable: rate limits fall back to this instance (logged once a minute)"
            );
        }
    }
}

/// A named rate limit: what it counts by, and its setting (variable, default, help). Declared
/// once, as a `const` next to the routes it guards (the global one below), enforced by
/// [`Limit::on`]; listed in `app::rate_limits` so `--help` and the configuration know it.
#[derive(Clone, Copy)]
pub struct Limit {
    /// The metric label (`rate_limited_total{limit}`) and the Redis key part.
    pub name: &'static str,
    per: Per,
    /// Its variable, default and help.
    pub setting: RateSetting,
}

/// Whose budget a request spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Per {
    /// The client address (see [`LimitKey::client`]).
    Ip,
    /// The bearer token's user; requests without a valid token pass, and the handler answers 401.
    User,
}

/// `RATE_LIMIT_GLOBAL` per client IP, around every route (health probes exempt).
pub const GLOBAL: Limit = Limit::per_ip(
    "global",
    RateSetting {
        var: "RATE_LIMIT_GLOBAL",
        default: "600/m",
        help: "Per client IP, all routes but health",
    },
);

impl Limit {
    pub const fn per_ip(name: &'static str, setting: RateSetting) -> Limit {
        Limit {
            name,
            per: Per::Ip,
            setting,
        }
    }

    pub const fn per_user(name: &'static str, setting: RateSetting) -> Limit {
        Limit {
            name,
            per: Per::User,
            setting,
        }
    }

    /// The middleware that enforces this limit; it passes everything when the limit is off.
    pub fn layer<S>(&self, state: &S) -> MiddlewareLayer<Enforce>
    where
        Arc<RateLimiters>: FromRef<S>,
        Arc<Auth>: FromRef<S>,
    {
        MiddlewareLayer(Enforce {
            limiter: Arc::<RateLimiters>::from_ref(state).get(self),
            per: self.per,
            auth: Arc::<Auth>::from_ref(state),
        })
    }

    /// `routes` under this limit, to merge into a route module's router.
    pub fn on<S>(&self, state: &S, routes: UtoipaMethodRouter<S>) -> OpenApiRouter<S>
    where
        S: Clone + Send + Sync + 'static,
        Arc<RateLimiters>: FromRef<S>,
        Arc<Auth>: FromRef<S>,
    {
        OpenApiRouter::new().routes(routes).route_layer(self.layer(state))
    }
}

/// Every limit's limiter, made when a router first asks for it, and pruned every minute.
pub struct RateLimiters {
    rates: RateLimits,
    shared: Option<Arc<SharedStore>>,
    made: Mutex<HashMap<&'static str, Arc<Limiter>>>,
}

impl RateLimiters {
    /// Shared through Redis when there is a connection; starts the pruner.
    pub fn new(rates: &RateLimits, redis: Option<ConnectionManager>) -> Arc<RateLimiters> {
        let limiters = Arc::new(RateLimiters {
            rates: rates.clone(),
            shared: redis.map(|connection| Arc::new(SharedStore::new(connection))),
            made: Mutex::default(),
        });
        spawn_pruner(Arc::downgrade(&limiters));
        limiters
    }

    /// The limiter of `limit`, one per name however many routes use it; `None` when it is off.
    pub fn get(&self, limit: &Limit) -> Option<Arc<Limiter>> {
        let rate = self.rates.rate(&limit.setting)?;
        let mut made = self.made.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let limiter = made
            .entry(limit.name)
            .or_insert_with(|| Arc::new(Limiter::new(limit.name, rate, self.shared.clone(), MAX_KEYS)));
        Some(limiter.clone())
    }

    fn all(&self) -> Vec<Arc<Limiter>> {
        let made = self.made.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        made.values().cloned().collect()
    }
}

/// Drops idle in-process keys every minute; stops once the limiters are gone.
fn spawn_pruner(limiters: Weak<RateLimiters>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(limiters) = limiters.upgrade() else {
                break;
            };
            limiters.all().iter().for_each(|limiter| limiter.prune());
        }
    });
}

/// Enforces one [`Limit`]. Health probes are never limited: a platform polls them from one
/// address, and a 429 there would take the instance out of rotation.
#[derive(Clone)]
pub struct Enforce {
    limiter: Option<Arc<Limiter>>,
    per: Per,
    auth: Arc<Auth>,
}

impl Middleware for Enforce {
    fn handle<S>(&self, inner: &mut S, mut req: Request) -> BoxResponseFuture
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let key = match &self.limiter {
            Some(_) if is_health_path(req.uri().path()) => None,
            Some(_) => match self.per {
                Per::Ip => {
                    let ip = req
                        .extensions()
                        .get::<ClientIp>()
                        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0);
                    Some(LimitKey::client(ip))
                }
                Per::User => self.auth.resolve(&mut req).map(LimitKey::User),
            },
            None => None,
        };
        let (Some(limiter), Some(key)) = (self.limiter.clone(), key) else {
            return Box::pin(inner.call(req));
        };
        if limiter.shared.is_none() {
            // Decided at once: the ready inner service is called now, without a clone.
            let decision = limiter.check_local(key);
            let pending = decision.allowed.then(|| inner.call(req));
            return Box::pin(async move { finish(&limiter, decision, pending).await });
        }
        // The check may wait for Redis, so the inner service is called later: take the one that
        // is ready and leave a clone in its place (the usual tower pattern).
        let clone = inner.clone();
        let mut inner = std::mem::replace(inner, clone);
        Box::pin(async move {
            let decision = limiter.check(key).await;
            let pending = decision.allowed.then(|| inner.call(req));
            finish(&limiter, decision, pending).await
        })
    }
}

/// The response to a checked request: the 429, or the inner service's with the limit headers.
async fn finish(
    limiter: &Limiter,
    decision: Decision,
    pending: Option<impl Future<Output = Result<Response, Infallible>>>,
) -> Result<Response, Infallible> {
    let Some(pending) = pending else {
        return Ok(refuse(limiter, decision));
    };
    let mut response = pending.await?;
    // A stricter, route-specific limit inside this one has already reported itself.
    if !response.headers().contains_key(X_RATELIMIT_LIMIT) {
        limiter.apply_headers(decision, response.headers_mut());
    }
    Ok(response)
}

/// The 429 for a request over its limit, counted.
fn refuse(limiter: &Limiter, decision: Decision) -> Response {
    metrics::counter!("rate_limited_total", "limit" => limiter.name).increment(1);
    let mut response = ApiError::RateLimited {
        retry_after_secs: decision.retry_after_secs(),
    }
    .into_response();
    limiter.apply_headers(decision, response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::config::{Config, parse_rate};

    fn limiter(rate: &str) -> Limiter {
        Limiter::new("test", parse_rate(rate).unwrap().unwrap(), None, MAX_KEYS)
    }

    #[test]
    fn five_per_minute_allows_a_burst_of_five_then_asks_for_twelve_seconds() {
        let l = limiter("5/m");
        let key = LimitKey::Ip(IpAddr::from([10, 0, 0, 1]));
        for expected_remaining in (0..5).rev() {
            let d = l.check_local(key);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
        }
        let d = l.check_local(key);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs(), 12);
        // Another key has its own budget.
        assert!(l.check_local(LimitKey::Ip(IpAddr::from([10, 0, 0, 2]))).allowed);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_by_its_address() {
        let key = |ip: &str| LimitKey::client(ip.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn a_full_limiter_holds_no_more_keys_and_still_limits_the_newcomers() {
        let l = Limiter::new("test", parse_rate("2/m").unwrap().unwrap(), None, 3);
        let ip = |n: u8| LimitKey::Ip(IpAddr::from([10, 0, 0, n]));
        for n in 0..3 {
            assert!(l.check_local(ip(n)).allowed);
        }
        let newcomers: Vec<bool> = (3..10).map(|n| l.check_local(ip(n)).allowed).collect();
        assert_eq!(
            newcomers,
            [true, true, false, false, false, false, false],
            "they share one budget"
        );
        assert_eq!(l.local.len(), 4, "the three keys and the shared one");
        assert!(l.check_local(ip(0)).allowed, "a key already held keeps its own budget");
    }

    #[test]
    fn a_full_limiter_makes_room_at_once_for_newcomers_when_its_keys_have_refilled() {
        let l = Limiter::new("test", parse_rate("1/s").unwrap().unwrap(), None, 3);
        let ip = |n: u8| LimitKey::Ip(IpAddr::from([10, 0, 1, n]));
        for n in 0..3 {
            assert!(l.check_local(ip(n)).allowed);
        }
        // Two periods later (when governor counts a key as fresh) holding them decides nothing.
        std::thread::sleep(Duration::from_millis(2100));
        let newcomers: Vec<bool> = (3..6).map(|n| l.check_local(ip(n)).allowed).collect();
        assert_eq!(newcomers, [true, true, true], "not one shared budget of one");
        assert!(!l.check_local(ip(4)).allowed, "each newcomer has its own budget of one");
    }

    // The middleware alone, no application state: a per-user limit counts by the token's user
    // and leaves requests without a valid token to the handler's 401.
    #[tokio::test]
    async fn a_per_user_limit_counts_by_token_and_passes_anonymous_requests() {
        let auth = Arc::new(Auth::from_config(&Config::development()).expect("auth"));
        let enforce = Enforce {
            limiter: Some(Arc::new(limiter("1/m"))),
            per: Per::User,
            auth: auth.clone(),
        };
        let handler = tower::service_fn(|_: Request| async { Ok::<_, Infallible>(Response::new(Body::empty())) });
        let service = MiddlewareLayer(enforce).layer(handler);
        let token = auth.issue_token(Uuid::new_v4(), Uuid::new_v4()).expect("token");
        let status = |bearer: Option<String>| {
            let service = service.clone();
            async move {
                let mut request = Request::builder().uri("/api/v1/things");
                if let Some(token) = bearer {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let request = request.body(Body::empty()).expect("request");
                service
                    .oneshot(request)
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or_default()
            }
        };
        assert_eq!(status(Some(token.clone())).await, 200);
        assert_eq!(status(Some(token)).await, 429, "the user's budget of one is spent");
        assert_eq!(status(None).await, 200, "no token: not limited here");
        let other = auth.issue_token(Uuid::new_v4(), Uuid::new_v4()).expect("token");
        assert_eq!(status(Some(other)).await, 200, "another user has a budget of their own");
    }
}
