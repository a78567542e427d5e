//! Real managed-database parts for the tests, each started by the test that needs it and
//! stopped on drop: PgBouncer in front of the shared PostgreSQL, a PostgreSQL instance that
//! accepts TLS only, a redis-server that speaks TLS only, a throwaway CA for them, and a real
//! SMTP server (aiosmtpd). They need `pgbouncer`, PostgreSQL's server binaries, `redis-server`,
//! `openssl` and `aiosmtpd` (`.ci/run` installs them); a missing one fails the test with what
//! to install.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::free_port;

/// Runs a command to completion, failing the test with its output when it fails.
fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", command.get_program()));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn wait_for_port(port: u16, what: &str) {
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 6 s");
}

/// PostgreSQL and PgBouncer refuse to run as root: as root, run them as user `postgres`.
fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id postgres");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("user postgres exists (install postgresql)")
    };
    Some((id("-u"), id("-g")))
}

/// A folder the unprivileged user owns, for config, data, logs and keys.
fn owned_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    hand_over(dir.path());
    dir
}

fn hand_over(path: &Path) {
    if let Some((uid, gid)) = unprivileged_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

fn unprivileged(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = unprivileged_user() {
        use std::os::unix::process::CommandExt;
        command.uid(uid).gid(gid);
    }
    command
}

/// A child process killed (and reaped) on drop, even when an assertion fails first.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A throwaway certificate authority, and server certificates it issues.
pub struct Ca {
    dir: tempfile::TempDir,
    pub cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let dir = owned_dir();
        let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        run(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
                .arg(format!("/CN={name}"))
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            "openssl: make a CA",
        );
        hand_over(&cert);
        Ca { dir, cert, key }
    }

    /// A server certificate and key for `names` (`DNS:localhost`, `IP:127.0.0.1`), owned by
    /// the unprivileged user with the key at mode 0600 (PostgreSQL insists).
    pub fn issue(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        let (cert, key, csr, ext) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.csr")),
            dir.join(format!("{name}.ext")),
        );
        std::fs::write(&ext, format!("subjectAltName={}\n", names.join(","))).expect("write extensions");
        run(
            Command::new("openssl")
                .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
                .arg(format!("/CN={name}"))
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
            "openssl: make a key and request",
        );
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&self.cert)
                .arg("-CAkey")
                .arg(&self.key)
                .args(["-CAcreateserial", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
            "openssl: sign a server certificate",
        );
        for file in [&cert, &key] {
            hand_over(file);
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("key mode");
        (cert, key)
    }
}

/// The newest PostgreSQL server binaries Debian installed (`/usr/lib/postgresql/N/bin`).
fn postgres_bin(program: &str) -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (install postgresql)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let version = versions.last().expect("a PostgreSQL version under /usr/lib/postgresql");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin/{program}"))
}

/// A PostgreSQL instance of its own that takes TLS connections only (`hostssl` rules, plain
/// connections rejected), with a certificate for `localhost` (and no IP address) issued by `ca`.
pub struct TlsPostgres {
    _process: Process,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl TlsPostgres {
    pub fn start(ca: &Ca) -> TlsPostgres {
        let dir = owned_dir();
        let data = dir.path().join("data");
        run(
            unprivileged(postgres_bin("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"])
                .stdout(Stdio::null()),
            "initdb",
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("write pg_hba.conf");
        let (cert, key) = ca.issue("postgres", &["DNS:localhost"]);
        let port = free_port();
        let child = unprivileged(postgres_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
            ])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let process = Process(child);
        // Listening comes before accepting queries: wait for pg_isready.
        for _ in 0..300 {
            let ready = Command::new(postgres_bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsPostgres {
            _process: process,
            _dir: dir,
            port,
        }
    }

    /// A URL to its `postgres` database with these query parameters.
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

/// PgBouncer in front of the shared PostgreSQL of `TEST_DATABASE_URL`, with its stock
/// start-up parameter rules (nothing ignored). `SHIPSHAPE_TEST_PGBOUNCER` picks the binary
/// (default `pgbouncer` on PATH, then `/usr/sbin/pgbouncer`).
pub struct PgBouncer {
    process: Option<Process>,
    dir: tempfile::TempDir,
    pub port: u16,
    /// Whether this PgBouncer carries prepared statements across server sessions (1.21+).
    pub prepared_statements: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
}

fn pgbouncer_binary() -> String {
    if let Ok(path) = std::env::var("SHIPSHAPE_TEST_PGBOUNCER") {
        return path;
    }
    let on_path = Command::new("pgbouncer").arg("--version").output().is_ok();
    if on_path {
        "pgbouncer".to_owned()
    } else {
        "/usr/sbin/pgbouncer".to_owned()
    }
}

/// `(major, minor)` from "PgBouncer 1.18.0" / "pgbouncer version 1.18.0".
fn pgbouncer_version(binary: &str) -> (u32, u32) {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{binary}: {e} (install pgbouncer: apt-get install pgbouncer)"));
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl PgBouncer {
    pub fn start(admin_url: &str, mode: PoolMode) -> PgBouncer {
        PgBouncer::start_on(admin_url, mode, free_port())
    }

    /// On a given port: a pooler that comes up after the service that uses it.
    pub fn start_on(admin_url: &str, mode: PoolMode, port: u16) -> PgBouncer {
        let binary = pgbouncer_binary();
        let prepared_statements = pgbouncer_version(&binary) >= (1, 21);
        let admin = url::Url::parse(admin_url).expect("TEST_DATABASE_URL is a URL");
        let mut target = format!(
            "host={} port={} user={}",
            admin.host_str().unwrap_or("127.0.0.1"),
            admin.port().unwrap_or(5432),
            if admin.username().is_empty() {
                "postgres"
            } else {
                admin.username()
            },
        );
        if let Some(password) = admin.password() {
            target.push_str(&format!(" password={password}"));
        }
        let dir = owned_dir();
        let mode_name = match mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let prepared = if prepared_statements {
            "max_prepared_statements = 200\n"
        } else {
            ""
        };
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = {target}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = any\npool_mode = {mode_name}\n{prepared}\
                 default_pool_size = 20\nmax_client_conn = 200\nlogfile = {log}\n",
                log = dir.path().join("pgbouncer.log").display()
            ),
        )
        .expect("write pgbouncer.ini");
        hand_over(&ini);
        let child = unprivileged(&binary)
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e} (install pgbouncer: apt-get install pgbouncer)"));
        let process = Process(child);
        wait_for_port(port, "PgBouncer");
        PgBouncer {
            process: Some(process),
            dir,
            port,
            prepared_statements,
        }
    }

    /// The URL of database `name` through this pooler.
    pub fn url_for(&self, database_url: &str) -> String {
        let mut url = url::Url::parse(database_url).expect("database URL");
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(self.port)).expect("port");
        url.to_string()
    }

    /// The pooler's own log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    /// Stops the pooler, as a crash would.
    pub fn stop(&mut self) {
        self.process.take();
    }
}

/// A redis-server that speaks TLS only, with a certificate for `localhost` issued by `ca`.
pub struct TlsRedis {
    _process: Process,
    pub port: u16,
}

impl TlsRedis {
    pub fn start(ca: &Ca) -> TlsRedis {
        let (cert, key) = ca.issue("redis", &["DNS:localhost"]);
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca.cert)
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let process = Process(child);
        wait_for_port(port, "TLS redis-server");
        TlsRedis {
            _process: process,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }
}

/// How a TLS [`Smtp`] server takes connections.
#[derive(Clone, Copy)]
pub enum SmtpSecurity {
    /// STARTTLS offered and required before a message.
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// A real SMTP server (aiosmtpd, the Python reference server) on 127.0.0.1 that keeps every
/// message it takes in a maildir; it can start late, on a port chosen before.
pub struct Smtp {
    process: Option<Process>,
    maildir: tempfile::TempDir,
    /// The certificate and key for TLS, issued for `localhost`.
    tls: Option<(SmtpSecurity, PathBuf, PathBuf)>,
    pub port: u16,
}

impl Smtp {
    /// A plain server on a free port.
    pub fn start() -> Smtp {
        Smtp::on(free_port())
    }

    /// A plain server on `port`, taking no connection until [`Smtp::resume`] (a mail server
    /// that is down).
    pub fn down_on(port: u16) -> Smtp {
        Smtp {
            process: None,
            maildir: tempfile::tempdir().expect("temp dir"),
            tls: None,
            port,
        }
    }

    pub fn on(port: u16) -> Smtp {
        let mut smtp = Smtp::down_on(port);
        smtp.resume();
        smtp
    }

    /// A server speaking TLS with a certificate for `localhost` from `ca`.
    pub fn tls(ca: &Ca, security: SmtpSecurity) -> Smtp {
        let (cert, key) = ca.issue("smtp", &["DNS:localhost"]);
        let mut smtp = Smtp::down_on(free_port());
        smtp.tls = Some((security, cert, key));
        smtp.resume();
        smtp
    }

    /// Starts on its port.
    pub fn resume(&mut self) {
        let mut command = Command::new("aiosmtpd");
        command
            .args(["-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "aiosmtpd.handlers.Mailbox"]);
        match &self.tls {
            Some((SmtpSecurity::StartTls, cert, key)) => {
                command.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
            }
            Some((SmtpSecurity::Implicit, cert, key)) => {
                command.arg("--smtpscert").arg(cert).arg("--smtpskey").arg(key);
            }
            None => {}
        }
        command.arg(self.maildir.path().join("mail"));
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start aiosmtpd (install python3-aiosmtpd): {e}"));
        self.process = Some(Process(child));
        wait_for_port(self.port, "aiosmtpd");
    }

    /// Every message taken so far, as received (headers and body).
    pub fn messages(&self) -> Vec<String> {
        let folder = self.maildir.path().join("mail").join("new");
        let Ok(entries) = std::fs::read_dir(folder) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
            .collect()
    }

    /// Waits until at least `count` messages have arrived (at most `limit`) and returns all.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<String> {
        let until = std::time::Instant::now() + limit;
        loop {
            let messages = self.messages();
            if messages.len() >= count || std::time::Instant::now() >= until {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A real S3 API on 127.0.0.1 (the `s3s-fs` server, in this process) that checks every
/// request's SigV4 signature and keeps objects as files, so a test can count them. It can be
/// stopped (connections cut, nothing listening) to play an unreachable store.
pub struct S3Server {
    pub port: u16,
    root: tempfile::TempDir,
    tasks: Option<tokio::task::JoinHandle<()>>,
}

impl S3Server {
    pub const BUCKET: &str = "shipshape-test";
    pub const ACCESS_KEY: &str = "test-access-key";
    pub const SECRET_KEY: &str = "test-secret-key-0123456789";

    pub async fn start() -> S3Server {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join(Self::BUCKET)).expect("bucket folder");
        let mut server = S3Server {
            port: free_port(),
            root,
            tasks: None,
        };
        server.resume().await;
        server
    }

    /// Listens (again) on its port.
    pub async fn resume(&mut self) {
        let files = s3s_fs::FileSystem::new(self.root.path()).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(files);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(Self::ACCESS_KEY, Self::SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the S3 port");
        self.tasks = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                connections.spawn(async move {
                    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let _ = http
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                        .await;
                });
            }
        }));
    }

    /// Stops listening and cuts every open connection (dropping the task drops the JoinSet,
    /// which aborts them).
    pub fn stop(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            tasks.abort();
        }
    }

    /// The storage settings of the bucket, under `prefix` ("" for none).
    pub fn storage(&self, prefix: &str) -> shipshape::config::StorageConfig {
        shipshape::config::StorageConfig::S3(shipshape::config::S3Config {
            bucket: Self::BUCKET.to_owned(),
            prefix: prefix.to_owned(),
            access_key_id: Some(Self::ACCESS_KEY.to_owned()),
            secret_access_key: Some(shipshape::config::Secret::new(Self::SECRET_KEY)),
            region: "auto".to_owned(),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            virtual_hosted_style: false,
        })
    }

    /// The same as environment variables, for a server process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STORAGE_URL", format!("s3://{}", Self::BUCKET)),
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY.to_owned()),
            ("AWS_ENDPOINT_URL_S3", format!("http://127.0.0.1:{}", self.port)),
        ]
    }

    /// The keys of the objects stored, sorted.
    pub fn objects(&self) -> Vec<String> {
        files_under(&self.root.path().join(Self::BUCKET))
    }

    /// Parts of multipart uploads neither completed nor aborted.
    pub fn pending_parts(&self) -> usize {
        std::fs::read_dir(self.root.path())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every file under `dir`, as paths relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if let Ok(relative) = path.strip_prefix(base) {
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
