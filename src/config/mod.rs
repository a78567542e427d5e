//! Configuration: read once at start from the environment (and `.env`), checked, typed.
//!
//! clap reads every variable as an optional string ([`Settings`]) so that defaults can depend on
//! `APP_ENV` and every error can name the variable it came from. [`Config::from_settings`] turns
//! those strings into the typed [`Config`] the rest of the program uses. Nothing else reads env vars.

pub mod postgres;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

// Every setting of the service, as clap reads it from flags or environment variables.
// Values are kept as strings here: typing happens in `Config::from_settings`, where the
// defaults for `APP_ENV` are known and a bad value can be reported by its variable name.
// (A plain comment: a doc comment here would replace the command's own `--help` text.)
#[derive(clap::Args, Clone, Default)]
#[command(next_help_heading = "Configuration (flag or environment variable)")]
pub struct Settings {
    /// `development` or `production`; picks the defaults below [default: development]
    #[arg(long, env = "APP_ENV", global = true)]
    pub app_env: Option<String>,
    /// `true` adds internal error detail to 500 bodies; refused in production [default: false]
    #[arg(long, env = "DEBUG", global = true)]
    pub debug: Option<String>,
    /// Address to listen on [default: development 127.0.0.1, production 0.0.0.0]
    #[arg(long, env = "HOST", global = true)]
    pub host: Option<String>,
    /// Port to listen on [default: 8080]
    #[arg(long, env = "PORT", global = true)]
    pub port: Option<String>,
    /// Signs tokens; production: 32+ chars, 8+ distinct [default: development random per process, production required]
    #[arg(long, env = "SECRET_KEY", global = true, hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Comma list of old keys still accepted when verifying tokens [default: empty]
    #[arg(long, env = "SECRET_KEY_FALLBACKS", global = true, hide_env_values = true)]
    pub secret_key_fallbacks: Option<String>,
    /// `sqlite:` file or `postgres://` URL [default: sqlite://data/app.db]
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Used by `migrate` alone when set: the provider's direct URL that bypasses a pooler [default: unset]
    #[arg(long, env = "DATABASE_DIRECT_URL", global = true, hide_env_values = true)]
    pub database_direct_url: Option<String>,
    /// Largest pool size; SQLite writes use one more connection of their own [default: 10]
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", global = true)]
    pub database_max_connections: Option<String>,
    /// Connections kept open when idle [default: 0]
    #[arg(long, env = "DATABASE_MIN_CONNECTIONS", global = true)]
    pub database_min_connections: Option<String>,
    /// Wait for a pooled connection before answering 503 [default: 5]
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_SECS", global = true)]
    pub database_acquire_timeout_secs: Option<String>,
    /// Close connections idle this long [default: 600]
    #[arg(long, env = "DATABASE_IDLE_TIMEOUT_SECS", global = true)]
    pub database_idle_timeout_secs: Option<String>,
    /// Replace connections older than this [default: 1800]
    #[arg(long, env = "DATABASE_MAX_LIFETIME_SECS", global = true)]
    pub database_max_lifetime_secs: Option<String>,
    /// Postgres `statement_timeout` per connection [default: 30]
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_SECS", global = true)]
    pub database_statement_timeout_secs: Option<String>,
    /// Apply migrations before listening [default: development true, production false]
    #[arg(long, env = "RUN_MIGRATIONS_ON_START", global = true)]
    pub run_migrations_on_start: Option<String>,
    /// Redis shared by every instance (rate limits, and whatever else they share) [default: unset]
    #[arg(long, env = "REDIS_URL", global = true, hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM file of a private CA trusted for `rediss://`, beside the public roots [default: unset]
    #[arg(long, env = "REDIS_CA_CERT", global = true)]
    pub redis_ca_cert: Option<String>,
    /// Comma list; `.example.com` matches the domain and its subdomains, `*` all [default: development localhost,127.0.0.1,[::1], production required]
    #[arg(long, env = "ALLOWED_HOSTS", global = true)]
    pub allowed_hosts: Option<String>,
    /// Comma list of exact origins allowed by CORS [default: empty, no CORS]
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", global = true)]
    pub cors_allowed_origins: Option<String>,
    /// Redirect `X-Forwarded-Proto: http` to https [default: development false, production true]
    #[arg(long, env = "SECURE_SSL_REDIRECT", global = true)]
    pub secure_ssl_redirect: Option<String>,
    /// HSTS max-age, 0 is off [default: development 0, production 31536000]
    #[arg(long, env = "SECURE_HSTS_SECONDS", global = true)]
    pub secure_hsts_seconds: Option<String>,
    /// HSTS includeSubDomains [default: true]
    #[arg(long, env = "SECURE_HSTS_INCLUDE_SUBDOMAINS", global = true)]
    pub secure_hsts_include_subdomains: Option<String>,
    /// HSTS preload [default: development false, production true]
    #[arg(long, env = "SECURE_HSTS_PRELOAD", global = true)]
    pub secure_hsts_preload: Option<String>,
    /// Content-Security-Policy header [default: default-src 'self'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'; object-src 'none']
    #[arg(long, env = "CONTENT_SECURITY_POLICY", global = true)]
    pub content_security_policy: Option<String>,
    /// Where the client IP comes from: connect, fly, x-forwarded-for, x-real-ip, cf-connecting-ip [default: connect]
    #[arg(long, env = "CLIENT_IP_SOURCE", global = true)]
    pub client_ip_source: Option<String>,
    /// Each rate limit's value as set (`RATE_LIMIT_*`), by variable: the limits are declared
    /// beside their routes, and `cli` adds a flag for each (see [`RateSetting`]).
    #[arg(skip)]
    pub rate_limits: BTreeMap<&'static str, String>,
    /// Largest request body [default: 1048576]
    #[arg(long, env = "MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<String>,
    /// Whole-request deadline, then 503 `timeout` [default: 30]
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", global = true)]
    pub request_timeout_secs: Option<String>,
    /// Disconnect a client whose headers are not complete by then [default: 10]
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", global = true)]
    pub header_read_timeout_secs: Option<String>,
    /// Longest drain of in-flight requests on SIGTERM/SIGINT [default: 25]
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", global = true)]
    pub shutdown_timeout_secs: Option<String>,
    /// Lifetime of issued tokens [default: 3600]
    #[arg(long, env = "TOKEN_TTL_SECS", global = true)]
    pub token_ttl_secs: Option<String>,
    /// A session ends after this long without a refresh [default: 2592000, 30 days]
    #[arg(long, env = "REFRESH_TOKEN_TTL_SECS", global = true)]
    pub refresh_token_ttl_secs: Option<String>,
    /// Password hashes computed at once [default: CPU count]
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY", global = true)]
    pub password_hash_concurrency: Option<String>,
    /// `pretty` or `json` [default: development pretty, production json]
    #[arg(long, env = "LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// Log filter in `RUST_LOG` syntax [default: info]
    #[arg(long, env = "LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
    /// Wins over LOG_LEVEL when set [default: unset]
    #[arg(long, env = "RUST_LOG", global = true)]
    pub rust_log: Option<String>,
    /// Sentry DSN; Sentry is off when unset [default: unset]
    #[arg(long, env = "SENTRY_DSN", global = true, hide_env_values = true)]
    pub sentry_dsn: Option<String>,
    /// Environment reported to Sentry [default: APP_ENV]
    #[arg(long, env = "SENTRY_ENVIRONMENT", global = true)]
    pub sentry_environment: Option<String>,
    /// Share of requests traced, 0.0 to 1.0 [default: 0.0]
    #[arg(long, env = "SENTRY_TRACES_SAMPLE_RATE", global = true)]
    pub sentry_traces_sample_rate: Option<String>,
    /// Port of the Prometheus `/metrics` listener, or `off` [default: development off, production 9091]
    #[arg(long, env = "METRICS_PORT", global = true)]
    pub metrics_port: Option<String>,
    /// Serve the interactive API reference at /docs [default: development true, production false]
    #[arg(long, env = "API_DOCS", global = true)]
    pub api_docs: Option<String>,
    /// Folder served at /static/ [default: static]
    #[arg(long, env = "STATIC_DIR", global = true)]
    pub static_dir: Option<String>,
    /// Cache lifetime of static files without a content hash in their name [default: 3600]
    #[arg(long, env = "STATIC_MAX_AGE_SECS", global = true)]
    pub static_max_age_secs: Option<String>,
    /// Jobs run at once by `serve`; 0: `serve` runs none, and `shipshape worker` does the work [default: 4]
    #[arg(long, env = "WORKER_CONCURRENCY", global = true)]
    pub worker_concurrency: Option<String>,
    /// Attempts before a job is `failed` [default: 10]
    #[arg(long, env = "JOB_MAX_ATTEMPTS", global = true)]
    pub job_max_attempts: Option<String>,
    /// How long a claimed job is its worker's (renewed while it runs), 5-3600 [default: 300]
    #[arg(long, env = "JOB_LEASE_SECS", global = true)]
    pub job_lease_secs: Option<String>,
    /// Where uploaded files live: a directory (a path, or `file:///ABSOLUTE/PATH`) or `s3://BUCKET[/PREFIX]` [default: data/uploads, or s3://$BUCKET_NAME when that is set]
    #[arg(long, env = "STORAGE_URL", global = true)]
    pub storage_url: Option<String>,
    /// The bucket `fly storage create` names; used when STORAGE_URL is unset [default: unset]
    #[arg(long, env = "BUCKET_NAME", global = true)]
    pub bucket_name: Option<String>,
    /// S3 access key id [default: unset]
    #[arg(long, env = "AWS_ACCESS_KEY_ID", global = true)]
    pub aws_access_key_id: Option<String>,
    /// S3 secret access key [default: unset]
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", global = true, hide_env_values = true)]
    pub aws_secret_access_key: Option<String>,
    /// S3 region [default: auto]
    #[arg(long, env = "AWS_REGION", global = true)]
    pub aws_region: Option<String>,
    /// S3 endpoint, e.g. https://fly.storage.tigris.dev; `http://` is allowed (a local MinIO) [default: AWS_ENDPOINT_URL, else AWS's own]
    #[arg(long, env = "AWS_ENDPOINT_URL_S3", global = true)]
    pub aws_endpoint_url_s3: Option<String>,
    /// S3 endpoint when AWS_ENDPOINT_URL_S3 is unset [default: unset]
    #[arg(long, env = "AWS_ENDPOINT_URL", global = true)]
    pub aws_endpoint_url: Option<String>,
    /// Address a custom endpoint's bucket as https://BUCKET.ENDPOINT/ instead of ENDPOINT/BUCKET/ [default: false]
    #[arg(long, env = "AWS_VIRTUAL_HOSTED_STYLE_REQUEST", global = true)]
    pub aws_virtual_hosted_style_request: Option<String>,
    /// Where backups go: a directory or `s3://BUCKET[/PREFIX]`, as STORAGE_URL [default: STORAGE_URL's `backups/`]
    #[arg(long, env = "BACKUP_URL", global = true)]
    pub backup_url: Option<String>,
    /// Hours between scheduled SQLite backups, 1-8760 [default: unset, none]
    #[arg(long, env = "BACKUP_INTERVAL_HOURS", global = true)]
    pub backup_interval_hours: Option<String>,
    /// Newest backups kept; older ones are deleted after a backup succeeds [default: 14]
    #[arg(long, env = "BACKUP_KEEP", global = true)]
    pub backup_keep: Option<String>,
    /// Largest uploaded file; the JSON routes keep MAX_BODY_BYTES [default: 10485760]
    #[arg(long, env = "MAX_UPLOAD_BYTES", global = true)]
    pub max_upload_bytes: Option<String>,
    /// Total bytes of one user's stored files [default: 104857600]
    #[arg(long, env = "UPLOAD_QUOTA_BYTES_PER_USER", global = true)]
    pub upload_quota_bytes_per_user: Option<String>,
    /// `smtp://[USER:PASS@]HOST[:PORT]` (STARTTLS unless HOST is loopback) or `smtps://...` [default: unset: development logs each email, production drops it]
    #[arg(long, env = "EMAIL_URL", global = true, hide_env_values = true)]
    pub email_url: Option<String>,
    /// The sender, e.g. `Acme <no-reply@acme.com>`; required with EMAIL_URL [default: shipshape <no-reply@localhost>]
    #[arg(long, env = "EMAIL_FROM", global = true)]
    pub email_from: Option<String>,
    /// Base of the links in emails (your frontend); required with EMAIL_URL [default: http://localhost:8080]
    #[arg(long, env = "PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// How long a password-reset link works [default: 3600]
    #[arg(long, env = "PASSWORD_RESET_TTL_SECS", global = true)]
    pub password_reset_ttl_secs: Option<String>,
    // example-domain:begin
    /// HMAC key of the payment webhook; the route answers 404 while unset [default: unset]
    #[arg(long, env = "WEBHOOK_SECRET", global = true, hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Open event streams per instance [default: 1000]
    #[arg(long, env = "MAX_SSE_STREAMS", global = true)]
    pub max_sse_streams: Option<String>,
    /// Open event streams per user and instance, so one account cannot take them all [default: 10]
    #[arg(long, env = "MAX_SSE_STREAMS_PER_USER", global = true)]
    pub max_sse_streams_per_user: Option<String>,
    // example-domain:end
}

pub const DEFAULT_CSP: &str =
    "default-src 'self'; base-uri 'self'; frame-ancestors 'none'; form-action 'self'; object-src 'none'";
const DEV_ALLOWED_HOSTS: &str = "localhost,127.0.0.1,[::1]";
const DEFAULT_DATABASE_URL: &str = "sqlite://data/app.db";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

impl AppEnv {
    pub fn as_str(self) -> &'static str {
        match self {
            AppEnv::Development => "development",
            AppEnv::Production => "production",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where the client's address is read from. Only the configured source is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIpSource {
    Connect,
    Fly,
    XForwardedFor,
    XRealIp,
    CfConnectingIp,
}

impl ClientIpSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientIpSource::Connect => "connect",
            ClientIpSource::Fly => "fly",
            ClientIpSource::XForwardedFor => "x-forwarded-for",
            ClientIpSource::XRealIp => "x-real-ip",
            ClientIpSource::CfConnectingIp => "cf-connecting-ip",
        }
    }
}

/// A rate in GCRA terms: a burst of `burst`, refilled at `burst` per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub burst: NonZeroU32,
    pub period: Duration,
}

impl Rate {
    /// Time for one unit of capacity to come back (`period / burst`).
    pub fn replenish_interval(&self) -> Duration {
        self.period / self.burst.get()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{}", self.burst, unit)
    }
}

/// A secret string: its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A URL that may carry credentials: `Debug` shows it with the password (or, for a
/// Sentry DSN, the key) replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                } else if !url.username().is_empty() && url.scheme().starts_with("http") {
                    // A Sentry DSN carries its key as the user name.
                    let _ = url.set_username("***");
                }
                url.to_string()
            }
            Err(_) => "***".to_owned(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    pub url: SecretUrl,
    /// `DATABASE_DIRECT_URL`: what `migrate` connects to instead of `url` when set.
    pub direct_url: Option<SecretUrl>,
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub statement_timeout: Duration,
}

impl DatabaseConfig {
    pub fn is_sqlite(&self) -> bool {
        self.url.expose().starts_with("sqlite:")
    }
}

/// The setting of one rate limit, declared beside the routes it guards (`rate_limit::Limit`).
#[derive(Clone, Copy, Debug)]
pub struct RateSetting {
    /// `RATE_LIMIT_*`, also the flag's name.
    pub var: &'static str,
    /// `N/s|m|h|d` or `off`, in every environment.
    pub default: &'static str,
    /// What is counted, for `--help`.
    pub help: &'static str,
}

impl RateSetting {
    /// Its flag and environment variable, for `--help` and parsing.
    pub fn arg(&self) -> clap::Arg {
        clap::Arg::new(self.var)
            .long(self.var.to_ascii_lowercase().replace('_', "-"))
            .env(self.var)
            .global(true)
            .help(format!(
                "{}: `N/s|m|h|d` or `off` [default: {}]",
                self.help, self.default
            ))
    }
}

/// The rate limits set in the configuration, by variable; any other has its declared default.
#[derive(Clone, Debug, Default)]
pub struct RateLimits {
    set: BTreeMap<&'static str, Option<Rate>>,
    /// Every limit not set is off instead of at its default (tests turn them all off).
    others_off: bool,
}

impl RateLimits {
    /// Every limit off but those [`set`](Self::set) afterwards.
    pub fn all_off() -> RateLimits {
        RateLimits {
            set: BTreeMap::new(),
            others_off: true,
        }
    }

    /// Sets one limit (`None`: off).
    pub fn set(&mut self, var: &'static str, rate: Option<Rate>) {
        self.set.insert(var, rate);
    }

    /// The rate of a limit: as set, else its default (checked by a test of every limit).
    pub fn rate(&self, setting: &RateSetting) -> Option<Rate> {
        match self.set.get(setting.var) {
            Some(rate) => *rate,
            None if self.others_off => None,
            None => parse_rate(setting.default).ok().flatten(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Hsts {
    pub seconds: u64,
    pub include_subdomains: bool,
    pub preload: bool,
}

/// The job workers (docs/jobs.md).
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// Workers `serve` runs (`shipshape worker` runs at least one).
    pub concurrency: usize,
    pub max_attempts: u32,
    pub lease: Duration,
}

/// Where email goes (docs/jobs.md). `from` and `public_url` are `None` when unset: with
/// `EMAIL_URL` set that is an error of `check --deploy` (E008), otherwise their defaults apply.
#[derive(Clone, Debug)]
pub struct EmailConfig {
    pub url: Option<SecretUrl>,
    pub from: Option<String>,
    pub public_url: Option<String>,
}

impl EmailConfig {
    pub const DEFAULT_FROM: &str = "shipshape <no-reply@localhost>";
    pub const DEFAULT_PUBLIC_URL: &str = "http://localhost:8080";

    pub fn from_address(&self) -> &str {
        self.from.as_deref().unwrap_or(Self::DEFAULT_FROM)
    }

    /// The base of links, without a trailing slash.
    pub fn public_url(&self) -> &str {
        self.public_url
            .as_deref()
            .unwrap_or(Self::DEFAULT_PUBLIC_URL)
            .trim_end_matches('/')
    }

    fn read(s: &Settings) -> Result<EmailConfig, ConfigError> {
        let url = secret_url("EMAIL_URL", raw(&s.email_url), &["smtp", "smtps"])?;
        if let Some(url) = &url
            && url::Url::parse(url.expose())
                .ok()
                .and_then(|u| u.host_str().map(str::is_empty))
                != Some(false)
        {
            return Err(ConfigError::new("EMAIL_URL", None, "expected a mail server host name"));
        }
        let from = raw(&s.email_from).map(str::to_owned);
        if let Some(from) = &from
            && from.parse::<lettre::message::Mailbox>().is_err()
        {
            return Err(ConfigError::new(
                "EMAIL_FROM",
                Some(from),
                "expected an address like `Name <no-reply@example.com>`",
            ));
        }
        let public_url = raw(&s.public_url).map(str::to_owned);
        if let Some(public) = &public_url
            && !url::Url::parse(public).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        {
            return Err(ConfigError::new(
                "PUBLIC_URL",
                Some(public),
                "expected an http:// or https:// URL",
            ));
        }
        Ok(EmailConfig { url, from, public_url })
    }
}

/// Where uploaded files live (docs/files.md).
#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// A directory on this machine's disk.
    Local(PathBuf),
    S3(S3Config),
}

#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key, without slashes at either end; empty for none.
    pub prefix: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub region: String,
    /// `None`: AWS's own endpoint for the region.
    pub endpoint: Option<String>,
    pub virtual_hosted_style: bool,
}

impl StorageConfig {
    const DEFAULT_DIR: &str = "data/uploads";

    fn read(s: &Settings) -> Result<StorageConfig, ConfigError> {
        match (raw(&s.storage_url), raw(&s.bucket_name)) {
            (Some(url), _) => Self::parse(s, "STORAGE_URL", url.to_owned()),
            (None, Some(bucket)) => Self::parse(s, "BUCKET_NAME", format!("s3://{bucket}")),
            (None, None) => Ok(StorageConfig::Local(PathBuf::from(Self::DEFAULT_DIR))),
        }
    }

    /// `BACKUP_URL`, else the `backups/` folder of the file storage.
    fn read_backups(s: &Settings, storage: &StorageConfig) -> Result<StorageConfig, ConfigError> {
        if let Some(url) = raw(&s.backup_url) {
            return Self::parse(s, "BACKUP_URL", url.to_owned());
        }
        Ok(match storage.clone() {
            StorageConfig::Local(dir) => StorageConfig::Local(dir.join("backups")),
            StorageConfig::S3(mut s3) => {
                s3.prefix = match s3.prefix.is_empty() {
                    true => "backups".to_owned(),
                    false => format!("{}/backups", s3.prefix),
                };
                StorageConfig::S3(s3)
            }
        })
    }

    /// A location: a directory, `file:///PATH` or `s3://BUCKET[/PREFIX]` (with the AWS settings).
    fn parse(s: &Settings, var: &'static str, url: String) -> Result<StorageConfig, ConfigError> {
        if let Some(path) = url.strip_prefix("file://") {
            return match path.starts_with('/') {
                true => Ok(StorageConfig::Local(PathBuf::from(path))),
                false => Err(ConfigError::new(var, Some(&url), "expected file:///ABSOLUTE/PATH")),
            };
        }
        let Some(location) = url.strip_prefix("s3://") else {
            return match url.contains("://") {
                true => Err(ConfigError::new(
                    var,
                    Some(&url),
                    "expected a directory, file:///PATH or s3://BUCKET[/PREFIX]",
                )),
                false => Ok(StorageConfig::Local(PathBuf::from(url))),
            };
        };
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        // S3's bucket naming rules: what any provider accepts. A missing one (`s3://`) is
        // `check --deploy`'s E007, which says how to get one.
        let valid_bucket = bucket.is_empty()
            || (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
                && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_bucket {
            return Err(ConfigError::new(
                var,
                Some(&url),
                "expected a bucket name of 3-63 lower-case letters, digits, '-' or '.'",
            ));
        }
        let endpoint = raw(&s.aws_endpoint_url_s3).or(raw(&s.aws_endpoint_url));
        if let Some(endpoint) = endpoint
            && !url::Url::parse(endpoint).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        {
            return Err(ConfigError::new(
                "AWS_ENDPOINT_URL_S3",
                Some(endpoint),
                "expected an http:// or https:// URL",
            ));
        }
        Ok(StorageConfig::S3(S3Config {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            access_key_id: raw(&s.aws_access_key_id).map(str::to_owned),
            secret_access_key: raw(&s.aws_secret_access_key).map(Secret::new),
            region: raw(&s.aws_region).unwrap_or("auto").to_owned(),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_owned()),
            virtual_hosted_style: parse_bool(
                "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
                &s.aws_virtual_hosted_style_request,
                false,
            )?,
        }))
    }
}

/// SQLite backups (docs/backups.md).
#[derive(Clone, Debug)]
pub struct BackupConfig {
    pub location: StorageConfig,
    /// `None`: no scheduled backups.
    pub interval: Option<Duration>,
    pub keep: usize,
}

/// Limits of uploaded files (docs/files.md).
#[derive(Clone, Debug)]
pub struct UploadLimits {
    pub max_bytes: u64,
    pub quota_bytes_per_user: u64,
}

#[derive(Clone, Debug)]
pub struct SentryConfig {
    pub dsn: Option<SecretUrl>,
    pub environment: String,
    pub traces_sample_rate: f32,
}

/// The whole configuration, typed. Built once in `main` and shared read-only.
#[derive(Clone, Debug)]
pub struct Config {
    pub app_env: AppEnv,
    pub debug: bool,
    pub host: IpAddr,
    pub port: u16,
    /// `None` only in production when unset; `check --deploy` (E001) refuses to serve then.
    pub secret_key: Option<Secret>,
    /// True when the key was generated for this process (development without `SECRET_KEY`).
    pub secret_key_generated: bool,
    pub secret_key_fallbacks: Vec<Secret>,
    pub database: DatabaseConfig,
    pub run_migrations_on_start: bool,
    pub redis_url: Option<SecretUrl>,
    /// `REDIS_CA_CERT`: a PEM file checked at start to hold a certificate.
    pub redis_ca_cert: Option<PathBuf>,
    pub allowed_hosts: Vec<String>,
    pub cors_allowed_origins: Vec<String>,
    pub secure_ssl_redirect: bool,
    pub hsts: Hsts,
    pub content_security_policy: String,
    pub client_ip_source: ClientIpSource,
    pub rate_limits: RateLimits,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub token_ttl: Duration,
    /// A session's life without a refresh (see `sessions`).
    pub refresh_token_ttl: Duration,
    pub password_hash_concurrency: usize,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub sentry: SentryConfig,
    pub metrics_port: Option<u16>,
    /// `API_DOCS`: whether `/docs` and its assets are served.
    pub api_docs: bool,
    pub static_dir: PathBuf,
    pub static_max_age_secs: u64,
    pub jobs: JobSettings,
    pub email: EmailConfig,
    pub password_reset_ttl: Duration,
    pub storage: StorageConfig,
    pub uploads: UploadLimits,
    pub backups: BackupConfig,
    // example-domain:begin
    pub webhook_secret: Option<Secret>,
    pub max_sse_streams: usize,
    pub max_sse_streams_per_user: usize,
    // example-domain:end
}

/// A setting that could not be used. Its `Display` is the one line printed before exit 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}{shown}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    shown: String,
    reason: String,
}

impl ConfigError {
    fn new(var: &'static str, value: Option<&str>, reason: impl Into<String>) -> Self {
        let shown = match value {
            Some(v) => format!("={v:?}"),
            None => String::new(),
        };
        ConfigError {
            var,
            shown,
            reason: reason.into(),
        }
    }
}

impl DatabaseConfig {
    fn read(s: &Settings) -> Result<DatabaseConfig, ConfigError> {
        let database_url = raw(&s.database_url).unwrap_or(DEFAULT_DATABASE_URL);
        validate_database_url("DATABASE_URL", database_url)?;
        let direct_url = raw(&s.database_direct_url);
        if let Some(url) = direct_url {
            validate_database_url("DATABASE_DIRECT_URL", url)?;
        }
        let max_connections: u32 = parse_num(
            "DATABASE_MAX_CONNECTIONS",
            &s.database_max_connections,
            10,
            1..=1000,
            "a whole number",
        )?;
        let min_connections: u32 = parse_num(
            "DATABASE_MIN_CONNECTIONS",
            &s.database_min_connections,
            0,
            0..=1000,
            "a whole number",
        )?;
        if min_connections > max_connections {
            return Err(ConfigError::new(
                "DATABASE_MIN_CONNECTIONS",
                raw(&s.database_min_connections),
                "must not exceed DATABASE_MAX_CONNECTIONS",
            ));
        }
        Ok(DatabaseConfig {
            url: SecretUrl(database_url.to_owned()),
            direct_url: direct_url.map(SecretUrl::new),
            max_connections,
            min_connections,
            acquire_timeout: parse_secs(
                "DATABASE_ACQUIRE_TIMEOUT_SECS",
                &s.database_acquire_timeout_secs,
                5,
                1..=300,
            )?,
            idle_timeout: parse_secs(
                "DATABASE_IDLE_TIMEOUT_SECS",
                &s.database_idle_timeout_secs,
                600,
                0..=ONE_DAY,
            )?,
            max_lifetime: parse_secs(
                "DATABASE_MAX_LIFETIME_SECS",
                &s.database_max_lifetime_secs,
                1800,
                0..=7 * ONE_DAY,
            )?,
            statement_timeout: parse_secs(
                "DATABASE_STATEMENT_TIMEOUT_SECS",
                &s.database_statement_timeout_secs,
                30,
                0..=ONE_DAY,
            )?,
        })
    }
}

impl Hsts {
    fn read(s: &Settings, prod: bool) -> Result<Hsts, ConfigError> {
        Ok(Hsts {
            seconds: parse_num(
                "SECURE_HSTS_SECONDS",
                &s.secure_hsts_seconds,
                if prod { ONE_YEAR } else { 0 },
                0..=2 * ONE_YEAR,
                "a whole number of seconds",
            )?,
            include_subdomains: parse_bool(
                "SECURE_HSTS_INCLUDE_SUBDOMAINS",
                &s.secure_hsts_include_subdomains,
                true,
            )?,
            preload: parse_bool("SECURE_HSTS_PRELOAD", &s.secure_hsts_preload, prod)?,
        })
    }
}

impl RateLimits {
    fn read(s: &Settings) -> Result<RateLimits, ConfigError> {
        Ok(RateLimits {
            set: s
                .rate_limits
                .iter()
                // Empty is unset, as for every other setting.
                .filter(|(_, text)| !text.trim().is_empty())
                .map(|(var, text)| Ok((*var, rate(var, text)?)))
                .collect::<Result<_, ConfigError>>()?,
            others_off: false,
        })
    }
}

impl SentryConfig {
    fn read(s: &Settings, app_env: AppEnv) -> Result<SentryConfig, ConfigError> {
        let traces_sample_rate: f32 = parse_num(
            "SENTRY_TRACES_SAMPLE_RATE",
            &s.sentry_traces_sample_rate,
            0.0,
            0.0..=1.0,
            "a number",
        )?;
        Ok(SentryConfig {
            dsn: secret_url("SENTRY_DSN", raw(&s.sentry_dsn), &["http", "https"])?,
            environment: raw(&s.sentry_environment).unwrap_or(app_env.as_str()).to_owned(),
            traces_sample_rate,
        })
    }
}

fn read_app_env(s: &Settings) -> Result<AppEnv, ConfigError> {
    match raw(&s.app_env) {
        None | Some("development") => Ok(AppEnv::Development),
        Some("production") => Ok(AppEnv::Production),
        Some(v) => Err(ConfigError::new(
            "APP_ENV",
            Some(v),
            "expected development or production",
        )),
    }
}

/// The address to listen on: every interface in production (a container's port is mapped),
/// loopback in development.
fn read_host(s: &Settings, prod: bool) -> Result<IpAddr, ConfigError> {
    let text = raw(&s.host).unwrap_or(if prod { "0.0.0.0" } else { "127.0.0.1" });
    text.trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .map_err(|_| ConfigError::new("HOST", Some(text), "expected an IP address such as 0.0.0.0 or ::"))
}

fn read_client_ip_source(s: &Settings) -> Result<ClientIpSource, ConfigError> {
    match raw(&s.client_ip_source).map(str::to_ascii_lowercase).as_deref() {
        None | Some("connect") => Ok(ClientIpSource::Connect),
        Some("fly") => Ok(ClientIpSource::Fly),
        Some("x-forwarded-for") => Ok(ClientIpSource::XForwardedFor),
        Some("x-real-ip") => Ok(ClientIpSource::XRealIp),
        Some("cf-connecting-ip") => Ok(ClientIpSource::CfConnectingIp),
        Some(_) => Err(ConfigError::new(
            "CLIENT_IP_SOURCE",
            raw(&s.client_ip_source),
            "expected connect, fly, x-forwarded-for, x-real-ip or cf-connecting-ip",
        )),
    }
}

/// The log format, and the filter (`RUST_LOG` wins over `LOG_LEVEL`).
fn read_logging(s: &Settings, prod: bool) -> Result<(LogFormat, String), ConfigError> {
    let log_format = match raw(&s.log_format).map(str::to_ascii_lowercase).as_deref() {
        None if prod => LogFormat::Json,
        None => LogFormat::Pretty,
        Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(v) => {
            return Err(ConfigError::new("LOG_FORMAT", Some(v), "expected pretty or json"));
        }
    };
    let (log_var, log_filter) = match (raw(&s.rust_log), raw(&s.log_level)) {
        (Some(v), _) => ("RUST_LOG", v),
        (None, Some(v)) => ("LOG_LEVEL", v),
        (None, None) => ("LOG_LEVEL", "info"),
    };
    tracing_subscriber::EnvFilter::try_new(log_filter)
        .map_err(|e| ConfigError::new(log_var, Some(log_filter), format!("not a valid filter ({e})")))?;
    Ok((log_format, log_filter.to_owned()))
}

fn read_metrics_port(s: &Settings, prod: bool) -> Result<Option<u16>, ConfigError> {
    Ok(match raw(&s.metrics_port) {
        None if prod => Some(9091),
        None => None,
        Some(v) if v.eq_ignore_ascii_case("off") => None,
        Some(v) => Some(
            v.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ConfigError::new("METRICS_PORT", Some(v), "expected a port number 1-65535 or off"))?,
        ),
    })
}

/// Reads one raw value: empty strings count as unset, as `FOO=` in a shell means "no value".
fn raw(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A number within `range`. Every numeric setting has one: past a sane bound a duration
/// overflows a timer (every connection panics) or a TTL wraps (tokens born expired).
fn parse_num<T>(
    var: &'static str,
    value: &Option<String>,
    default: T,
    range: RangeInclusive<T>,
    what: &str,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display,
{
    let Some(v) = raw(value) else { return Ok(default) };
    let expected = || {
        let (low, high) = (range.start(), range.end());
        ConfigError::new(var, Some(v), format!("expected {what} from {low} to {high}"))
    };
    let number: T = v.parse().map_err(|_| expected())?;
    if range.contains(&number) {
        Ok(number)
    } else {
        Err(expected())
    }
}

fn parse_secs(
    var: &'static str,
    value: &Option<String>,
    default: u64,
    range: RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    parse_num(var, value, default, range, "a whole number of seconds").map(Duration::from_secs)
}

const ONE_HOUR: u64 = 3600;
const ONE_DAY: u64 = 86_400;
const ONE_YEAR: u64 = 365 * ONE_DAY;

fn parse_bool(var: &'static str, value: &Option<String>, default: bool) -> Result<bool, ConfigError> {
    match raw(value).map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(_) => Err(ConfigError::new(var, raw(value), "expected true or false")),
    }
}

fn parse_list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses `N/s`, `N/m`, `N/h`, `N/d` or `off` (`None`).
pub fn parse_rate(text: &str) -> Result<Option<Rate>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let expected = || "expected N/s, N/m, N/h, N/d or off".to_owned();
    let (count, unit) = text.split_once('/').ok_or_else(expected)?;
    let burst = count.trim().parse::<NonZeroU32>().map_err(|_| expected())?;
    let period = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(expected()),
    };
    Ok(Some(Rate {
        burst,
        period: Duration::from_secs(period),
    }))
}

fn rate(var: &'static str, text: &str) -> Result<Option<Rate>, ConfigError> {
    parse_rate(text).map_err(|reason| ConfigError::new(var, Some(text), reason))
}

/// A database URL the driver can use, or the error naming `var`; a Postgres URL is read the way
/// the driver will read it (TLS mode, root certificate file), never echoed.
fn validate_database_url(var: &'static str, url: &str) -> Result<(), ConfigError> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" => Ok(()),
        "postgres" | "postgresql" => postgres::connect_options(url)
            .map(drop)
            .map_err(|reason| ConfigError::new(var, None, reason)),
        other => Err(ConfigError::new(
            var,
            None,
            format!("unsupported scheme {other:?}: expected sqlite:, postgres:// or postgresql://"),
        )),
    }
}

/// Loopback, private and shared (CGNAT) ranges, and names that resolve only inside a private
/// network: a bare name (a compose service), `.internal` (Fly, Railway, GCP), Fly's `.flycast`
/// and managed Postgres `.flympg.net`.
pub fn is_private_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let shared = ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64;
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || shared
        }
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || (ip.segments()[0] & 0xfe00) == 0xfc00 || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => {
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            host == "localhost"
                || !host.contains('.')
                || [".internal", ".flycast", ".flympg.net", ".local", ".localhost"]
                    .iter()
                    .any(|s| host.ends_with(s))
        }
    }
}

/// A PEM file that holds at least one certificate.
fn pem_certificate_file(var: &'static str, value: Option<&str>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = value else { return Ok(None) };
    read_pem_certificates(path).map_err(|reason| ConfigError::new(var, Some(path), reason))?;
    Ok(Some(PathBuf::from(path)))
}

/// The certificates of a PEM file, or why it has none.
pub fn read_pem_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("{path}: no PEM certificate in the file"));
    }
    Ok(certificates)
}

fn secret_url(var: &'static str, value: Option<&str>, schemes: &[&str]) -> Result<Option<SecretUrl>, ConfigError> {
    let Some(text) = value else { return Ok(None) };
    match url::Url::parse(text) {
        Ok(url) if schemes.contains(&url.scheme()) => Ok(Some(SecretUrl(text.to_owned()))),
        // The value may hold a password: name the variable, never echo it.
        _ => Err(ConfigError::new(
            var,
            None,
            format!("expected a URL starting with {}", schemes.join("://, ") + "://"),
        )),
    }
}

/// A random development key, so that `cargo run` works with nothing set. Tokens die with the process.
fn random_secret() -> Secret {
    Secret(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ))
}

impl Config {
    /// `DEBUG=true` shows internal error detail, but never in production.
    pub fn expose_internal_errors(&self) -> bool {
        self.debug && self.app_env == AppEnv::Development
    }

    /// Types and checks every setting. `force_env` overrides `APP_ENV` (used by `check --deploy`,
    /// which judges production defaults whatever the environment says). The `Config` literal is
    /// the list, one field per setting (hence the length); settings with more to them are read
    /// by the functions after this `impl`.
    pub fn from_settings(s: &Settings, force_env: Option<AppEnv>) -> Result<Config, ConfigError> {
        let app_env = force_env.unwrap_or(read_app_env(s)?);
        let prod = app_env == AppEnv::Production;
        let database = DatabaseConfig::read(s)?;
        let (secret_key, secret_key_generated) = match raw(&s.secret_key) {
            Some(v) => (Some(Secret::new(v)), false),
            None if prod => (None, false),
            None => (Some(random_secret()), true),
        };

        let (log_format, log_filter) = read_logging(s, prod)?;
        let default_hash_concurrency = std::thread::available_parallelism().map_or(1, usize::from);
        let password_hash_concurrency = parse_num(
            "PASSWORD_HASH_CONCURRENCY",
            &s.password_hash_concurrency,
            default_hash_concurrency,
            1..=1024,
            "a whole number",
        )?;
        // Up to 1 GiB: the limit guards memory, and a body is held whole before it is parsed.
        let max_body_bytes = parse_num(
            "MAX_BODY_BYTES",
            &s.max_body_bytes,
            1_048_576,
            1..=1 << 30,
            "a whole number of bytes",
        )?;
        let request_timeout = parse_secs("REQUEST_TIMEOUT_SECS", &s.request_timeout_secs, 30, 1..=ONE_HOUR)?;
        let storage = StorageConfig::read(s)?;
        let header_read_timeout = parse_secs("HEADER_READ_TIMEOUT_SECS", &s.header_read_timeout_secs, 10, 1..=300)?;

        Ok(Config {
            app_env,
            debug: parse_bool("DEBUG", &s.debug, false)?,
            host: read_host(s, prod)?,
            port: parse_num("PORT", &s.port, 8080, 0..=u16::MAX, "a port number")?,
            secret_key,
            secret_key_generated,
            secret_key_fallbacks: parse_list(raw(&s.secret_key_fallbacks))
                .into_iter()
                .map(Secret)
                .collect(),
            database,
            run_migrations_on_start: parse_bool("RUN_MIGRATIONS_ON_START", &s.run_migrations_on_start, !prod)?,
            redis_url: secret_url("REDIS_URL", raw(&s.redis_url), &["redis", "rediss"])?,
            redis_ca_cert: pem_certificate_file("REDIS_CA_CERT", raw(&s.redis_ca_cert))?,
            allowed_hosts: parse_list(raw(&s.allowed_hosts).or((!prod).then_some(DEV_ALLOWED_HOSTS)))
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            cors_allowed_origins: parse_list(raw(&s.cors_allowed_origins)),
            secure_ssl_redirect: parse_bool("SECURE_SSL_REDIRECT", &s.secure_ssl_redirect, prod)?,
            hsts: Hsts::read(s, prod)?,
            content_security_policy: raw(&s.content_security_policy).unwrap_or(DEFAULT_CSP).to_owned(),
            client_ip_source: read_client_ip_source(s)?,
            rate_limits: RateLimits::read(s)?,
            max_body_bytes,
            request_timeout,
            header_read_timeout,
            shutdown_timeout: parse_secs("SHUTDOWN_TIMEOUT_SECS", &s.shutdown_timeout_secs, 25, 0..=ONE_HOUR)?,
            token_ttl: parse_secs("TOKEN_TTL_SECS", &s.token_ttl_secs, 3600, 1..=ONE_YEAR)?,
            refresh_token_ttl: parse_secs(
                "REFRESH_TOKEN_TTL_SECS",
                &s.refresh_token_ttl_secs,
                30 * ONE_DAY,
                60..=ONE_YEAR,
            )?,
            password_hash_concurrency,
            log_format,
            log_filter,
            sentry: SentryConfig::read(s, app_env)?,
            metrics_port: read_metrics_port(s, prod)?,
            api_docs: parse_bool("API_DOCS", &s.api_docs, !prod)?,
            static_dir: PathBuf::from(raw(&s.static_dir).unwrap_or("static")),
            static_max_age_secs: parse_num(
                "STATIC_MAX_AGE_SECS",
                &s.static_max_age_secs,
                ONE_HOUR,
                0..=ONE_YEAR,
                "a whole number of seconds",
            )?,
            jobs: JobSettings {
                concurrency: parse_num(
                    "WORKER_CONCURRENCY",
                    &s.worker_concurrency,
                    4,
                    0..=256,
                    "a whole number",
                )?,
                max_attempts: parse_num("JOB_MAX_ATTEMPTS", &s.job_max_attempts, 10, 1..=100, "a whole number")?,
                lease: parse_secs("JOB_LEASE_SECS", &s.job_lease_secs, 300, 5..=ONE_HOUR)?,
            },
            email: EmailConfig::read(s)?,
            password_reset_ttl: parse_secs(
                "PASSWORD_RESET_TTL_SECS",
                &s.password_reset_ttl_secs,
                ONE_HOUR,
                60..=7 * ONE_DAY,
            )?,
            backups: BackupConfig {
                location: StorageConfig::read_backups(s, &storage)?,
                interval: raw(&s.backup_interval_hours)
                    .map(|_| {
                        parse_num(
                            "BACKUP_INTERVAL_HOURS",
                            &s.backup_interval_hours,
                            24,
                            1..=8760,
                            "a whole number of hours",
                        )
                    })
                    .transpose()?
                    .map(|hours: u64| Duration::from_secs(hours * ONE_HOUR)),
                keep: parse_num("BACKUP_KEEP", &s.backup_keep, 14, 1..=10_000, "a whole number")?,
            },
            storage,
            uploads: UploadLimits {
                // Up to 5 TiB, S3's largest object.
                max_bytes: parse_num(
                    "MAX_UPLOAD_BYTES",
                    &s.max_upload_bytes,
                    10 << 20,
                    1..=5 << 40,
                    "a whole number of bytes",
                )?,
                quota_bytes_per_user: parse_num(
                    "UPLOAD_QUOTA_BYTES_PER_USER",
                    &s.upload_quota_bytes_per_user,
                    100 << 20,
                    0..=1 << 50,
                    "a whole number of bytes",
                )?,
            },
            // example-domain:begin
            webhook_secret: raw(&s.webhook_secret).map(Secret::new),
            max_sse_streams: parse_num(
                "MAX_SSE_STREAMS",
                &s.max_sse_streams,
                1000,
                0..=100_000,
                "a whole number",
            )?,
            max_sse_streams_per_user: parse_num(
                "MAX_SSE_STREAMS_PER_USER",
                &s.max_sse_streams_per_user,
                10,
                1..=1000,
                "a whole number",
            )?,
            // example-domain:end
        })
    }

    /// Development defaults with nothing set: what tests start from.
    pub fn development() -> Config {
        // Every default is valid by construction; this cannot fail.
        Config::from_settings(&Settings::default(), Some(AppEnv::Development))
            .unwrap_or_else(|e| unreachable!("development defaults are invalid: {e}"))
    }
}
