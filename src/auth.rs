//! Authentication: Argon2id password hashes (bounded concurrency, on the blocking pool),
//! HS256 bearer tokens naming their session, and the callers of protected routes
//! ([`AuthUser`], [`AdminUser`]), whose extractors check that the session still runs.
//!
//! There are no cookies, so there is no ambient credential for a CSRF attack to ride on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::{FromRef, FromRequestParts, Request};
use axum::http::{HeaderMap, header, request::Parts};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::config::Config;
use crate::db::Db;
use crate::error::ApiError;
use crate::sessions;
use crate::users::Role;

/// Longest bearer token looked at: several times the size of the ones this service issues.
const MAX_TOKEN_BYTES: usize = 4096;

/// OWASP's Argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
const ARGON2_MEMORY_KIB: u32 = 19_456;
const ARGON2_ITERATIONS: u32 = 2;
const ARGON2_LANES: u32 = 1;

/// A well-formed hash with the parameters above that matches no known password. Logins for
/// unknown emails verify against it, so they cost the same time as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2hpcHNoYXBlLWR1bW15LXNhbHQ$PdIbfkzMSn8VQa9hFwPWJwU3P0TpWWY2zqQ8RMdb2u8";

fn hasher() -> Argon2<'static> {
    // Constant, valid parameters: `Params::new` cannot fail for them (a unit test runs it).
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Token claims: subject (user id), session id, issued-at and expiry, in unix seconds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: String,
    pub iat: i64,
    pub exp: i64,
}

/// Who a valid access token says the caller is; whether its session still runs is checked
/// by the extractors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub user: Uuid,
    pub session: Uuid,
}

/// Signing and verification keys, the token lifetime, and the password-hash gate.
pub struct Auth {
    encoding: EncodingKey,
    /// `SECRET_KEY` first, then each of `SECRET_KEY_FALLBACKS`.
    decoding: Vec<DecodingKey>,
    validation: Validation,
    pub token_ttl: Duration,
    /// A session's life without a refresh (`REFRESH_TOKEN_TTL_SECS`).
    pub refresh_ttl: Duration,
    /// At most `PASSWORD_HASH_CONCURRENCY` hashes at once: each takes 19 MiB and a core.
    hash_permits: Arc<Semaphore>,
    /// What this instance last read of each session (see [`SessionCache`]).
    pub sessions: SessionCache,
}

impl Auth {
    pub fn from_config(config: &Config) -> anyhow::Result<Auth> {
        let key = config
            .secret_key
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("SECRET_KEY is required to sign tokens"))?;
        let decoding = std::iter::once(key)
            .chain(&config.secret_key_fallbacks)
            .map(|k| DecodingKey::from_secret(k.expose().as_bytes()))
            .collect();
        // Only HS256: `alg: none` and every other algorithm are refused before any key is tried.
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        validation.leeway = 5;
        Ok(Auth {
            encoding: EncodingKey::from_secret(key.expose().as_bytes()),
            decoding,
            validation,
            token_ttl: config.token_ttl,
            refresh_ttl: config.refresh_token_ttl,
            hash_permits: Arc::new(Semaphore::new(config.password_hash_concurrency)),
            sessions: SessionCache::default(),
        })
    }

    /// An access token for `user` in `session`.
    pub fn issue_token(&self, user: Uuid, session: Uuid) -> Result<String, ApiError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: user.to_string(),
            sid: session.to_string(),
            iat: now,
            exp: now + self.token_ttl.as_secs() as i64,
        };
        jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("cannot sign token: {e}")))
    }

    /// The user and session of a valid token signed by the current key or any fallback key.
    pub fn verify_token(&self, token: &str) -> Option<TokenClaims> {
        // Ours are about 200 bytes; a large one is refused before any work is done on it.
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        // `decode` checks the signature before anything else: a key that did not sign the token
        // costs one HMAC, and the one that did is not asked twice (the HMAC is most of a token's
        // cost: bench/RESULTS.md). A token its key signed but that is invalid (expired) stops here.
        let data = self.decoding.iter().find_map(|key| {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Err(error) if *error.kind() == jsonwebtoken::errors::ErrorKind::InvalidSignature => None,
                decoded => Some(decoded),
            }
        })?;
        let data = data.ok()?;
        Some(TokenClaims {
            user: Uuid::parse_str(&data.claims.sub).ok()?,
            session: Uuid::parse_str(&data.claims.sid).ok()?,
        })
    }

    /// The claims of a request's `Authorization: Bearer` header, if valid.
    fn claims_from_headers(&self, headers: &HeaderMap) -> Option<TokenClaims> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| self.verify_token(token.trim()))
            .flatten()
    }

    pub async fn hash_password(&self, password: String) -> Result<String, ApiError> {
        self.run_hasher(move || {
            hasher()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .await?
        .map_err(ApiError::Internal)
    }

    /// Checks a password against a stored hash, or against a dummy hash when there is no
    /// account, so both cases take the same time.
    pub async fn verify_password(&self, password: String, stored_hash: Option<String>) -> Result<bool, ApiError> {
        let has_account = stored_hash.is_some();
        let matched = self
            .run_hasher(move || {
                let hash = stored_hash.as_deref().unwrap_or(DUMMY_HASH);
                hasher().verify_password(password.as_bytes(), hash).is_ok()
            })
            .await?;
        Ok(matched && has_account)
    }

    /// Runs CPU-heavy hashing on the blocking pool, at most `PASSWORD_HASH_CONCURRENCY` at once.
    async fn run_hasher<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let permit = self
            .hash_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("password hash gate closed")))?;
        // The permit goes with the work: a client that disconnects cancels this future, not the
        // hash already running, so the permit must stay taken until the hash is done.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("password hashing task failed: {e}")))
    }
}

/// The authenticated caller of a protected route: a valid token whose session still runs,
/// of an account that is not disabled. Anything else is 401 `unauthorized` with
/// `WWW-Authenticate: Bearer`.
#[derive(Clone, Copy, Debug)]
pub struct AuthUser {
    pub id: Uuid,
    pub session: Uuid,
    pub role: Role,
}

/// The caller of an admin route: an [`AuthUser`] whose role is `admin`, else 403 `forbidden`.
#[derive(Clone, Copy, Debug)]
pub struct AdminUser(pub AuthUser);

/// A request's bearer token, verified once and remembered on the request: a per-user rate
/// limit and the handler's [`AuthUser`] both ask, and the HMAC runs once.
#[derive(Clone, Copy)]
struct Resolved(Option<TokenClaims>);

impl Auth {
    /// The user of the request's bearer token, if it is valid (for a middleware; the session
    /// is not looked at).
    pub fn resolve(&self, req: &mut Request) -> Option<Uuid> {
        if let Some(Resolved(claims)) = req.extensions().get() {
            return claims.map(|c| c.user);
        }
        let claims = self.claims_from_headers(req.headers());
        req.extensions_mut().insert(Resolved(claims));
        claims.map(|c| c.user)
    }

    /// The claims of a request's bearer token, verified at most once per request.
    fn claims(&self, parts: &Parts) -> Option<TokenClaims> {
        match parts.extensions.get() {
            Some(Resolved(claims)) => *claims,
            None => self.claims_from_headers(&parts.headers),
        }
    }
}

/// The database as the session check reaches it: `None` while it cannot serve requests
/// (see `AppState::database`), which is 503.
pub struct SessionDb(pub Option<Db>);

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
    SessionDb: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = Arc::<Auth>::from_ref(state);
        let claims = auth.claims(parts).ok_or(ApiError::Unauthorized)?;
        let role = match auth.sessions.get(claims) {
            Ok(role) => role,
            Err(ticket) => {
                let SessionDb(db) = SessionDb::from_ref(state);
                let db = db.ok_or(ApiError::DatabaseUnavailable)?;
                let role = sessions::read(&db, claims.session, claims.user, auth.refresh_ttl).await?;
                auth.sessions.put(claims, role, ticket);
                role
            }
        };
        let role = role.ok_or(ApiError::Unauthorized)?;
        Ok(AuthUser {
            id: claims.user,
            session: claims.session,
            role,
        })
    }
}

impl<S> FromRequestParts<S> for AdminUser
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
    SessionDb: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        match user.role {
            Role::Admin => Ok(AdminUser(user)),
            Role::User => Err(ApiError::Forbidden),
        }
    }
}

/// How long this instance trusts what it read of a session. Another instance that ends a
/// session or disables an account is obeyed here within this time plus one database read,
/// inside the 5 s that docs/accounts.md promises.
const SESSION_CACHE_FOR: Duration = Duration::from_secs(4);

/// Sessions remembered at most; past it the memory is cleared and refilled from the database.
const SESSION_CACHE_ENTRIES: usize = 100_000;

/// What this instance last read of each session: the role its account has while it runs,
/// or `None` once it has ended (an ended session never comes back). Saves the database read
/// per request that checking sessions would otherwise cost (docs/accounts.md has the
/// figures). Whatever this instance ends itself it forgets at once.
#[derive(Default)]
pub struct SessionCache(Mutex<CacheState>);

#[derive(Default)]
struct CacheState {
    entries: HashMap<Uuid, CachedSession>,
    /// Counts [`SessionCache::forget_user`] calls: a read that began before one is not kept,
    /// as it may predate what was ended.
    forgets: u64,
}

#[derive(Clone, Copy)]
struct CachedSession {
    user: Uuid,
    role: Option<Role>,
    read_at: Instant,
}

/// Taken before a database read of a session, handed back with its result to
/// [`SessionCache::put`].
#[derive(Clone, Copy)]
pub struct ReadTicket(u64);

impl SessionCache {
    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The session's state as read less than [`SESSION_CACHE_FOR`] ago, or a ticket for
    /// reading it.
    pub fn get(&self, claims: TokenClaims) -> Result<Option<Role>, ReadTicket> {
        let state = self.state();
        match state.entries.get(&claims.session) {
            Some(entry) if entry.user == claims.user && entry.read_at.elapsed() < SESSION_CACHE_FOR => Ok(entry.role),
            _ => Err(ReadTicket(state.forgets)),
        }
    }

    /// Remembers what a read begun with `ticket` found, unless something was ended since.
    pub fn put(&self, claims: TokenClaims, role: Option<Role>, ticket: ReadTicket) {
        let mut state = self.state();
        if state.forgets != ticket.0 {
            return;
        }
        if state.entries.len() >= SESSION_CACHE_ENTRIES {
            state
                .entries
                .retain(|_, entry| entry.read_at.elapsed() < SESSION_CACHE_FOR);
            if state.entries.len() >= SESSION_CACHE_ENTRIES {
                state.entries.clear();
            }
        }
        let entry = CachedSession {
            user: claims.user,
            role,
            read_at: Instant::now(),
        };
        state.entries.insert(claims.session, entry);
    }

    /// Forgets `session`: a refresh was just refused here, which may have ended it.
    pub fn forget_session(&self, session: Uuid) {
        let mut state = self.state();
        state.forgets += 1;
        state.entries.remove(&session);
    }

    /// Forgets every session of `user`: one was just ended, or the account disabled or given
    /// another role, here.
    pub fn forget_user(&self, user: Uuid) {
        let mut state = self.state();
        state.forgets += 1;
        state.entries.retain(|_, entry| entry.user != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_valid_and_dummy_hash_uses_them() {
        assert!(Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None).is_ok());
        let parsed = argon2::PasswordHash::new(DUMMY_HASH).expect("dummy hash parses");
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        assert!(DUMMY_HASH.contains(&format!("m={ARGON2_MEMORY_KIB},t={ARGON2_ITERATIONS},p={ARGON2_LANES}")));
        assert!(hasher().verify_password(b"anything at all", DUMMY_HASH).is_err());
    }

    #[tokio::test]
    async fn a_cancelled_request_keeps_its_hash_slot_until_the_hash_is_done() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let mut config = Config::development();
        config.password_hash_concurrency = 1;
        let auth = Arc::new(Auth::from_config(&config).expect("auth"));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let hash = |running: Arc<AtomicUsize>, most: Arc<AtomicUsize>| {
            move || {
                most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                running.fetch_sub(1, Ordering::SeqCst);
            }
        };
        let first = tokio::spawn({
            let (auth, work) = (auth.clone(), hash(running.clone(), most.clone()));
            async move { auth.run_hasher(work).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.abort(); // the client went away; its hash is still running
        auth.run_hasher(hash(running.clone(), most.clone()))
            .await
            .expect("second hash");
        assert_eq!(most.load(Ordering::SeqCst), 1, "never two hashes at once");
    }
}
