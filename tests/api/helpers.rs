//! The test harness: the real application on 127.0.0.1 port 0, against SQLite (always) or a
//! fresh PostgreSQL database (when `TEST_DATABASE_URL` is set), plus helpers to drive it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use serde_json::{Value, json};
use shipshape::app;
use shipshape::config::{Config, RateLimits, Secret, SecretUrl, StorageConfig};
use shipshape::db::Db;
use shipshape::server::Application;
use shipshape::state::AppState;
use sqlx::{Connection, Executor};
use tokio::sync::oneshot;

pub const TEST_SECRET: &str = "test-signing-key-5f1c9a7e2b4d6f8a0c3e5b7d9f1a2c4e";
pub const PASSWORD: &str = "correct horse battery staple";

/// Where a test's data lives.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

/// `TEST_DATABASE_URL`: the PostgreSQL server a test creates its database on. A test that
/// calls this is marked `#[cfg_attr(not(test_postgres), ignore = …)]`: `build.rs` sets
/// `test_postgres` when the variable is set at build time, so without it the test is reported
/// as ignored, never as passed. Run anyway (`--ignored`), it fails loudly.
pub fn postgres_admin() -> String {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("this test needs TEST_DATABASE_URL (a PostgreSQL server): see docs/testing.md"),
    }
}

/// `TEST_REDIS_URL`, as [`postgres_admin`] is `TEST_DATABASE_URL` (`cfg(test_redis)`).
pub fn redis_url() -> String {
    match std::env::var("TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("this test needs TEST_REDIS_URL (a Redis server): see docs/testing.md"),
    }
}

/// Creates an empty database for one test and returns its URL. Panics (loudly) if the
/// server in `TEST_DATABASE_URL` cannot be reached: a set variable means the tests must run.
pub async fn fresh_postgres_database(admin_url: &str) -> String {
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}"));
    let name = format!("shipshape_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create test database");
    let mut url = url::Url::parse(admin_url).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

/// A configuration for tests: development defaults, port 0, a fixed key, limits off.
pub async fn test_config(backend: &Backend, dir: &tempfile::TempDir) -> Config {
    let mut config = Config::development();
    config.port = 0;
    config.secret_key = Some(Secret::new(TEST_SECRET));
    config.secret_key_generated = false;
    config.password_hash_concurrency = 2;
    config.rate_limits = RateLimits::all_off();
    config.static_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("static");
    config.storage = StorageConfig::Local(dir.path().join("uploads"));
    config.database.url = match backend {
        Backend::Sqlite => SecretUrl::new(format!("sqlite://{}/app.db", dir.path().display())),
        Backend::Postgres(admin) => SecretUrl::new(fresh_postgres_database(admin).await),
    };
    config
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    /// Where `/metrics` is served, when the test enabled it.
    pub metrics_addr: Option<SocketAddr>,
    /// The admin URL and name of this test's own Postgres database, dropped by `stop`.
    postgres_database: Option<(String, String)>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

pub struct Options {
    pub backend: Backend,
    /// Extra routes mounted inside the real middleware stack.
    pub extra_routes: Option<Router<AppState>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        TestApp::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::start(
            Options {
                backend,
                extra_routes: None,
            },
            configure,
        )
        .await
    }

    pub async fn start(options: Options, configure: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(&options.backend, &dir).await;
        configure(&mut config);
        TestApp::start_with_config(options, config, dir).await
    }

    /// [`TestApp::start`] with extra routes made from the application's state, for a route
    /// that needs it when it is built (one under a rate limit of its own: [`Limit::layer`]).
    ///
    /// [`Limit::layer`]: shipshape::rate_limit::Limit::layer
    pub async fn start_with_state_routes(
        backend: Backend,
        configure: impl FnOnce(&mut Config),
        routes: impl FnOnce(&AppState) -> Router<AppState>,
    ) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(&backend, &dir).await;
        configure(&mut config);
        TestApp::launch(backend, config, dir, |state| Some(routes(state))).await
    }

    pub async fn start_with_config(options: Options, config: Config, dir: tempfile::TempDir) -> TestApp {
        let extra = options.extra_routes;
        TestApp::launch(options.backend, config, dir, |_| extra).await
    }

    async fn launch(
        backend: Backend,
        config: Config,
        dir: tempfile::TempDir,
        extra_routes: impl FnOnce(&AppState) -> Option<Router<AppState>>,
    ) -> TestApp {
        let postgres_database = match &backend {
            Backend::Postgres(admin) => url::Url::parse(config.database.url.expose())
                .ok()
                .map(|url| (admin.clone(), url.path().trim_start_matches('/').to_owned())),
            Backend::Sqlite => None,
        };
        let mut application = Application::build(config).await.expect("application builds");
        let state = application.state().clone();
        if let Some(extra) = extra_routes(&state) {
            application = application.with_router(app::router_with(state.clone(), extra));
        }
        let addr = application.local_addr();
        let metrics_addr = application.metrics_addr();
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until(async move {
            let _ = signal.await;
        }));
        let client = http_client();
        TestApp {
            addr,
            client,
            state,
            metrics_addr,
            postgres_database,
            shutdown: Some(shutdown),
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> impl Future<Output = reqwest::Response> + use<> {
        self.send(reqwest::Method::GET, path, None, token)
    }

    pub fn post_json(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> impl Future<Output = reqwest::Response> + use<> {
        self.send(reqwest::Method::POST, path, Some(body), token)
    }

    pub fn patch_json(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> impl Future<Output = reqwest::Response> + use<> {
        self.send(reqwest::Method::PATCH, path, Some(body), token)
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> impl Future<Output = reqwest::Response> + use<> {
        self.send(reqwest::Method::DELETE, path, None, token)
    }

    /// Builds the request now (so nothing is borrowed) and sends it when awaited.
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> impl Future<Output = reqwest::Response> + use<> {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("request sent") }
    }

    /// Signs up `email` and returns its token.
    pub async fn signup(&self, email: &str) -> String {
        let body = self.sign_up(email).await;
        body["token"].as_str().expect("token").to_owned()
    }

    /// Signs up `email` and returns the whole answer: the user, and the tokens of its session.
    pub async fn sign_up(&self, email: &str) -> Value {
        let response = self
            .post_json(
                "/api/v1/auth/signup",
                &json!({"email": email, "password": PASSWORD}),
                None,
            )
            .await;
        assert_eq!(response.status(), 201, "signup of {email}");
        response.json().await.expect("json")
    }

    // example-domain:begin
    /// Creates an invoice and returns its JSON.
    pub async fn create_invoice(&self, token: &str, amount_cents: i64) -> Value {
        let body = json!({"customer_name": "Acme Ltd", "amount_cents": amount_cents, "currency": "USD"});
        let response = self.post_json("/api/v1/invoices", &body, Some(token)).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 201, "{body}");
        body
    }
    // example-domain:end

    /// Triggers graceful shutdown and waits for the server to finish draining.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
        // The drain closed the pool, so the database can go.
        if let Some((admin, name)) = self.postgres_database.take()
            && let Ok(mut connection) = sqlx::PgConnection::connect(&admin).await
        {
            let _ = connection
                .execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
                .await;
        }
    }

    /// Starts shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.server.take().expect("server running")
    }
}

/// The fields a 422 `validation_failed` names, in order.
pub async fn refused_fields(response: reqwest::Response) -> Vec<String> {
    let body = assert_error(response, 422, "validation_failed").await;
    body["error"]["details"]
        .as_array()
        .map(|details| {
            details
                .iter()
                .map(|d| d["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the error shape (docs/api.md, "Errors") and code, and returns the body.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status for expected {code}");
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message in {body}"
    );
    assert_eq!(
        body["error"]["request_id"].as_str(),
        request_id.as_deref(),
        "request id matches header"
    );
    body
}

/// Runs each named scenario `async fn name(backend: Backend)` on SQLite and on PostgreSQL:
/// tests `sqlite::name` and `postgres::name`, the latter ignored unless `TEST_DATABASE_URL`
/// was set when the tests were built (see [`postgres_admin`]).
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = $crate::helpers::Backend::Postgres($crate::helpers::postgres_admin());
                    super::$name(backend).await
                }
            )*
        }
    };
}

/// An HTTP client that does not follow redirects (tests look at them).
pub fn http_client() -> reqwest::Client {
    shipshape::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A free port on 127.0.0.1 (for child processes that must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A TCP proxy in front of a real server, to take it "down" and bring it back without
/// touching the server other tests share: `cut` closes the port and every connection.
pub struct TcpProxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    delay: Duration,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    /// In front of `target`, which is `delay` away: each chunk it sends arrives that much later.
    pub async fn start(target: SocketAddr, delay: Duration) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = TcpProxy {
            addr: listener.local_addr().expect("addr"),
            target,
            delay,
            tasks: Default::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (target, delay) = (self.target, self.delay);
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let pump = tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    if delay.is_zero() {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                    let (mut from_client, mut to_client) = inbound.split();
                    let (mut from_server, mut to_server) = outbound.split();
                    let upstream = tokio::io::copy(&mut from_client, &mut to_server);
                    let downstream = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = from_server.read(&mut buf).await
                            && n > 0
                        {
                            tokio::time::sleep(delay).await;
                            if to_client.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let _ = tokio::join!(upstream, downstream);
                });
                tasks.lock().unwrap().push(pump);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// The server "stops": the port refuses connections and open ones are dropped.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// The server "comes back" on the same port.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind proxy port");
        self.serve(listener);
    }
}

/// The app on a fresh PostgreSQL database reached through a [`TcpProxy`], so a test can take
/// the database away (`proxy.cut()`) and bring it back without touching the shared server.
pub async fn spawn_behind_proxy(admin: &str, acquire_timeout: Duration) -> (TestApp, TcpProxy) {
    spawn_behind_slow_proxy(admin, acquire_timeout, Duration::ZERO).await
}

/// [`spawn_behind_proxy`] with the database `delay` away (see [`TcpProxy::start`]).
pub async fn spawn_behind_slow_proxy(admin: &str, acquire_timeout: Duration, delay: Duration) -> (TestApp, TcpProxy) {
    let mut url = url::Url::parse(&fresh_postgres_database(admin).await).expect("database URL");
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let target = tokio::net::lookup_host((host, url.port().unwrap_or(5432)))
        .await
        .expect("resolve the database host")
        .next()
        .expect("an address");
    let proxy = TcpProxy::start(target, delay).await;
    url.set_host(Some("127.0.0.1")).expect("host");
    url.set_port(Some(proxy.addr.port())).expect("port");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(&Backend::Sqlite, &dir).await;
    config.database.url = SecretUrl::new(url.to_string());
    config.database.acquire_timeout = acquire_timeout;
    let options = Options {
        backend: Backend::Postgres(admin.to_owned()),
        extra_routes: None,
    };
    (TestApp::start_with_config(options, config, dir).await, proxy)
}

/// A private redis-server, so a test can stop and restart it without disturbing the others.
/// Killed on drop, even when an assertion fails first.
pub struct RedisProcess {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl RedisProcess {
    pub fn start() -> RedisProcess {
        RedisProcess::start_on(free_port())
    }

    /// Starts (or restarts) a server on `port` and waits until it accepts connections.
    pub fn start_on(port: u16) -> RedisProcess {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (TEST_REDIS_URL is set)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisProcess {
            child: Some(child),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server, as a crash or an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

// example-domain:begin
/// The `X-Webhook-Signature` (docs/example-domain.md, "Payment webhook"): `v1=` hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub fn webhook_signature(secret: &str, timestamp: i64, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}
// example-domain:end

// example-domain:begin
/// Posts a payment event signed with `secret` at `timestamp` (unix seconds).
pub async fn deliver_webhook(app: &TestApp, event: &Value, timestamp: i64, secret: &str) -> reqwest::Response {
    let body = event.to_string();
    app.client
        .post(app.url("/api/v1/webhooks/payments"))
        .header("content-type", "application/json")
        .header("x-webhook-timestamp", timestamp.to_string())
        .header("x-webhook-signature", webhook_signature(secret, timestamp, &body))
        .body(body)
        .send()
        .await
        .expect("request sent")
}
// example-domain:end

/// Whether `table` exists in the test's database.
pub async fn table_exists(db: &Db, table: &str) -> bool {
    let sql = match db {
        Db::Sqlite(..) => "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
        Db::Postgres(_) => "SELECT count(*) FROM information_schema.tables WHERE table_name = $1",
    };
    let count: i64 =
        shipshape::with_db!(db, pool => sqlx::query_scalar(sql).bind(table).fetch_one(pool).await).unwrap();
    count > 0
}

/// Polls `/readyz` (200 throughout) until its storage check says `status`: within about 5 s.
pub async fn wait_for_storage_status(app: &TestApp, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let response = app.get("/readyz", None).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        if body["checks"]["storage"]["status"] == status {
            return body;
        }
        assert!(Instant::now() < deadline, "storage never became {status}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `done` every 50 ms for up to `limit`, for work that finishes in the background (an
/// aborted upload's parts going away); the caller asserts the outcome after.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where [`test_items`] is mounted.
pub const TEST_ITEMS: &str = "/api/v1/test-items";

/// Items: a small resource of the tests' own, made of the core's building blocks (input rules
/// read by `ApiJson`, `AuthUser`, `PathId`, `users::own`) and kept in memory, so the tests of
/// those mechanisms need no example domain. Mount it with [`Options::extra_routes`]:
/// `POST /api/v1/test-items` (201 with the item), `GET` (200) and `DELETE` (204)
/// `/api/v1/test-items/{id}`; another user's, an unknown or a malformed id is 404, and a token
/// whose account does not exist is 401 on each.
pub fn test_items() -> Router<AppState> {
    use axum::routing::{get, post};
    Router::new()
        .route(TEST_ITEMS, post(test_item::create))
        .route(
            &format!("{TEST_ITEMS}/{{id}}"),
            get(test_item::read).delete(test_item::delete),
        )
        .layer(axum::Extension(test_item::Items::default()))
}

mod test_item {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::extract::State;
    use axum::http::StatusCode;
    use serde_json::{Value, json};
    use shipshape::auth::AuthUser;
    use shipshape::error::ApiError;
    use shipshape::extract::{ApiJson, PathId};
    use shipshape::input::{Date, Fields, FromJson, Integer, Text};
    use shipshape::state::AppState;
    use shipshape::users;
    use uuid::Uuid;

    /// Each item's owner and JSON, by id.
    pub type Items = Arc<Mutex<HashMap<Uuid, (Uuid, Value)>>>;

    const NAME: Text = Text {
        min: 1,
        max: 200,
        not_blank: true,
        multiline: false,
    };
    const DESCRIPTION: Text = Text {
        min: 0,
        max: 2000,
        not_blank: false,
        multiline: true,
    };
    const AMOUNT: Integer = Integer {
        min: 1,
        max: 100_000_000_000,
    };

    shipshape::input_field!(Name(String), |value| NAME.parse(value), NAME.schema());
    shipshape::input_field!(
        Description(String),
        |value| DESCRIPTION.parse(value),
        DESCRIPTION.schema()
    );
    shipshape::input_field!(Amount(i64), |value| AMOUNT.parse(value), AMOUNT.schema());

    /// A new item: a one-line name, an optional description that may span lines, a whole
    /// amount and an optional due date.
    pub struct NewItem {
        name: String,
        description: Option<String>,
        amount_cents: i64,
        due_date: Option<String>,
    }

    impl FromJson for NewItem {
        fn from_json(fields: &mut Fields) -> Option<NewItem> {
            let name: Option<Name> = fields.required("name");
            let description: Option<Option<Description>> = fields.optional("description");
            let amount_cents: Option<Amount> = fields.required("amount_cents");
            let due_date: Option<Option<Date>> = fields.optional("due_date");
            Some(NewItem {
                name: name?.0,
                description: description?.map(|d| d.0),
                amount_cents: amount_cents?.0,
                due_date: due_date?.map(|d| d.0),
            })
        }
    }

    pub async fn create(
        State(state): State<AppState>,
        axum::Extension(items): axum::Extension<Items>,
        user: AuthUser,
        ApiJson(item): ApiJson<NewItem>,
    ) -> Result<(StatusCode, Json<Value>), ApiError> {
        users::ensure_exists(state.database()?, user.id).await?;
        let id = Uuid::now_v7();
        let item = json!({"id": id, "name": item.name, "description": item.description,
            "amount_cents": item.amount_cents, "due_date": item.due_date});
        items.lock().unwrap().insert(id, (user.id, item.clone()));
        Ok((StatusCode::CREATED, Json(item)))
    }

    /// The caller's item `id`, if there is one.
    fn own(items: &Items, user: AuthUser, id: Option<Uuid>) -> Option<Value> {
        let items = items.lock().unwrap();
        let (owner, item) = items.get(&id?)?;
        (*owner == user.id).then(|| item.clone())
    }

    pub async fn read(
        State(state): State<AppState>,
        axum::Extension(items): axum::Extension<Items>,
        user: AuthUser,
        PathId(id): PathId,
    ) -> Result<Json<Value>, ApiError> {
        let found = own(&items, user, id);
        Ok(Json(users::own(state.database()?, user.id, found).await?))
    }

    pub async fn delete(
        State(state): State<AppState>,
        axum::Extension(items): axum::Extension<Items>,
        user: AuthUser,
        PathId(id): PathId,
    ) -> Result<StatusCode, ApiError> {
        let found = own(&items, user, id);
        users::own(state.database()?, user.id, found).await?;
        if let Some(id) = id {
            items.lock().unwrap().remove(&id);
        }
        Ok(StatusCode::NO_CONTENT)
    }
}
