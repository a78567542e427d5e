//! The packaging files held against the code (docs/deploying.md): ports, health paths, binary path,
//! release command, metrics port, user and variable names cannot drift apart. Plus the VPS
//! files for real: nginx in front of the app, and `systemd-analyze verify` on the unit.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::CommandFactory;
use shipshape::cli::Cli;
use shipshape::config::{AppEnv, Config, Settings};
use shipshape::security::client_ip::ClientIp;

use crate::helpers::{Backend, Options, TestApp, free_port};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every environment variable the binary reads, straight from its clap definition.
fn settings() -> HashSet<String> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

fn production() -> Config {
    Config::from_settings(&Settings::default(), Some(AppEnv::Production)).unwrap()
}

fn is_subcommand(name: &str) -> bool {
    Cli::command().find_subcommand(name).is_some()
}

/// `shipshape migrate` (or `/app/shipshape migrate`) names the binary and a real subcommand.
fn assert_release_command(command: &str, what: &str) {
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words.len(), 2, "{what}: {command}");
    assert!(
        words[0] == "shipshape" || words[0] == "/app/shipshape",
        "{what} runs the binary: {command}"
    );
    assert_eq!(words[1], "migrate", "{what} migrates");
    assert!(is_subcommand("migrate"));
}

const HEALTH_PATHS: [&str; 2] = ["/healthz", "/readyz"];

#[test]
fn fly_toml_matches_the_code() {
    let fly: toml::Table = toml::from_str(&read("fly.toml")).expect("fly.toml parses");
    let defaults = Config::development();
    let service = fly["http_service"].as_table().unwrap();
    assert_eq!(
        service["internal_port"].as_integer(),
        Some(i64::from(defaults.port)),
        "internal_port = PORT"
    );
    assert_eq!(service["force_https"].as_bool(), Some(true));
    for check in service["checks"].as_array().unwrap() {
        assert!(
            HEALTH_PATHS.contains(&check["path"].as_str().unwrap()),
            "check path is a health route"
        );
    }
    assert_release_command(fly["deploy"]["release_command"].as_str().unwrap(), "release_command");
    assert_eq!(fly["kill_signal"].as_str(), Some("SIGTERM"));
    let kill_timeout = fly["kill_timeout"].as_integer().unwrap() as u64;
    assert!(
        kill_timeout > defaults.shutdown_timeout.as_secs(),
        "kill_timeout above SHUTDOWN_TIMEOUT_SECS"
    );
    assert_eq!(
        fly["metrics"]["port"].as_integer(),
        production().metrics_port.map(i64::from),
        "[metrics] port"
    );
    assert_eq!(fly["metrics"]["path"].as_str(), Some("/metrics"));
    let env = fly["env"].as_table().unwrap();
    let known = settings();
    for key in env.keys() {
        assert!(known.contains(key), "fly.toml [env] sets {key}, which is not a setting");
    }
    assert_eq!(env["PORT"].as_str(), Some(defaults.port.to_string().as_str()));
    assert_eq!(env["CLIENT_IP_SOURCE"].as_str(), Some("fly"));
    assert_eq!(
        env["METRICS_PORT"].as_str().map(|p| p.parse::<u16>().unwrap()),
        production().metrics_port
    );
}

#[test]
fn railway_json_matches_the_code() {
    let railway: serde_json::Value = serde_json::from_str(&read("railway.json")).unwrap();
    assert_eq!(railway["build"]["builder"], "DOCKERFILE");
    assert!(HEALTH_PATHS.contains(&railway["deploy"]["healthcheckPath"].as_str().unwrap()));
    assert_release_command(
        railway["deploy"]["preDeployCommand"].as_str().unwrap(),
        "preDeployCommand",
    );
}

/// Parses an exec-form JSON array from a Dockerfile instruction.
fn exec_form(line: &str, instruction: &str) -> Vec<String> {
    let rest = line.strip_prefix(instruction).unwrap();
    let json = &rest[rest.find('[').expect("exec form")..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{instruction} is exec form: {e}"))
}

#[test]
fn dockerfile_matches_the_code() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let find = |prefix: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}"))
    };
    let port = Config::development().port.to_string();
    assert_eq!(find("EXPOSE ").split_whitespace().nth(1), Some(port.as_str()));
    let entrypoint = exec_form(find("ENTRYPOINT"), "ENTRYPOINT");
    assert_eq!(entrypoint, ["/app/shipshape"]);
    let healthcheck = exec_form(find("HEALTHCHECK"), "HEALTHCHECK");
    assert_eq!(healthcheck, ["/app/shipshape", "healthcheck"]);
    assert!(is_subcommand("healthcheck"));
    let cmd = exec_form(find("CMD "), "CMD");
    assert!(
        cmd.iter().all(|arg| is_subcommand(arg)),
        "CMD names a subcommand: {cmd:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("COPY") && l.ends_with("/app/shipshape")),
        "binary copied to /app/shipshape"
    );
    let user = find("USER ").split_whitespace().nth(1).unwrap();
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "non-root user: {user}"
    );
    let env_line = find("ENV ");
    let known = settings();
    for pair in env_line.trim_start_matches("ENV ").split_whitespace() {
        let key = pair.split('=').next().unwrap();
        assert!(
            known.contains(key) || key == "PATH",
            "Dockerfile ENV {key} is not a setting"
        );
    }
    assert!(env_line.contains("APP_ENV=production"));
    assert!(!lines.iter().any(|l| l.starts_with("# syntax")));
}

/// `KEY: value` lines of the `environment:` block of the compose `app` service.
fn compose_app_environment(compose: &str) -> Vec<(String, String)> {
    let mut in_app = false;
    let mut in_env = false;
    let mut pairs = Vec::new();
    for line in compose.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if indent == 2 {
            in_app = text == "app:";
            in_env = false;
        } else if in_app && indent == 4 {
            in_env = text == "environment:";
        } else if in_app && in_env && indent == 6 {
            let (key, value) = text.split_once(':').unwrap();
            pairs.push((key.trim().to_owned(), value.trim().trim_matches('"').to_owned()));
        }
    }
    pairs
}

#[test]
fn docker_compose_matches_the_code() {
    let compose = read("docker-compose.yml");
    let environment = compose_app_environment(&compose);
    assert!(!environment.is_empty(), "the app service has an environment");
    let known = settings();
    for (key, _) in &environment {
        assert!(known.contains(key), "docker-compose sets {key}, which is not a setting");
    }
    let value = |key: &str| environment.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(value("APP_ENV"), Some("development"));
    assert_eq!(value("RUN_MIGRATIONS_ON_START"), Some("true"));
    let port = Config::development().port;
    assert_eq!(value("PORT"), Some(port.to_string().as_str()));
    assert!(
        compose.contains(&format!(":{port}:{port}\"")) || compose.contains(&format!("{port}:{port}")),
        "port published"
    );
    assert!(compose.contains("condition: service_healthy"));
}

#[test]
fn systemd_unit_and_nginx_config_match_the_code() {
    let unit = read("deploy/shipshape.service");
    let known = settings();
    let mut port = None;
    for line in unit.lines().filter_map(|l| l.strip_prefix("Environment=")) {
        let (key, value) = line.split_once('=').unwrap();
        assert!(known.contains(key), "the unit sets {key}, which is not a setting");
        if key == "PORT" {
            port = Some(value.to_owned());
        }
    }
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    assert!(exec.ends_with("/shipshape serve"));
    let pre = unit.lines().find_map(|l| l.strip_prefix("ExecStartPre=")).unwrap();
    assert!(pre.ends_with("/shipshape migrate"));
    let user = unit.lines().find_map(|l| l.strip_prefix("User=")).unwrap();
    assert_ne!(user, "root");
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .trim_end_matches('s');
    assert!(stop.parse::<u64>().unwrap() > Config::development().shutdown_timeout.as_secs());
    for hardening in ["NoNewPrivileges=yes", "ProtectSystem=strict"] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    let port = port.unwrap_or_else(|| Config::development().port.to_string());
    let nginx = read("deploy/nginx.conf");
    assert!(
        nginx.contains(&format!("server 127.0.0.1:{port};")),
        "nginx proxies to the unit's port"
    );
    // example-domain:begin
    assert!(
        nginx.contains("location /api/v1/invoices/events"),
        "the event stream has its own unbuffered location"
    );
    assert!(nginx.contains("proxy_buffering off;"));
    // example-domain:end
    assert!(nginx.contains("X-Forwarded-Proto $scheme"));
}

#[cfg_attr(not(test_systemd), ignore = "needs systemd-analyze on PATH (.ci/run installs it)")]
#[test]
fn systemd_analyze_verifies_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart exists: point it at the binary this test suite built.
    let unit = read("deploy/shipshape.service").replace("/opt/shipshape/shipshape", env!("CARGO_BIN_EXE_shipshape"));
    let path = dir.path().join("shipshape.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "systemd-analyze verify failed:\n{report}");
    assert!(
        !report.contains("shipshape.service:"),
        "no complaint about the unit:\n{report}"
    );
}

/// nginx in the foreground with `deploy/nginx.conf`, ports and certificate paths rewritten.
struct Nginx {
    child: Child,
    http_port: u16,
    https_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(app_port: u16) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "self-signed certificate");
    let (http_port, https_port) = (free_port(), free_port());
    let site = read("deploy/nginx.conf")
        .replace("server 127.0.0.1:8080;", &format!("server 127.0.0.1:{app_port};"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{http_port};"))
        .replace("listen 443 ssl", &format!("listen 127.0.0.1:{https_port} ssl"))
        .replace("/etc/ssl/shipshape/fullchain.pem", cert.to_str().unwrap())
        .replace("/etc/ssl/shipshape/privkey.pem", key.to_str().unwrap());
    assert!(
        site.contains(&format!("{https_port} ssl")),
        "the listen lines were found and rewritten"
    );
    let temp = dir.path().display();
    let main = format!(
        "worker_processes 1;\npid {temp}/nginx.pid;\nerror_log {temp}/error.log;\nevents {{}}\nhttp {{\n\
         access_log {temp}/access.log;\nclient_body_temp_path {temp}/body;\nproxy_temp_path {temp}/proxy;\n\
         fastcgi_temp_path {temp}/fcgi;\nuwsgi_temp_path {temp}/uwsgi;\nscgi_temp_path {temp}/scgi;\n\
         include {temp}/site.conf;\n}}\n"
    );
    std::fs::write(dir.path().join("site.conf"), site).unwrap();
    std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
    let conf = dir.path().join("nginx.conf");
    let test = Command::new("nginx").arg("-t").arg("-c").arg(&conf).output().unwrap();
    assert!(
        test.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", https_port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx {
        child,
        http_port,
        https_port,
        _dir: dir,
    }
}

/// curl as a real client, from a chosen loopback address so the client is told apart from nginx.
fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--interface", "127.0.0.7"])
        .args(args)
        .output();
    String::from_utf8_lossy(&output.unwrap().stdout).into_owned()
}

#[cfg_attr(not(test_nginx), ignore = "needs nginx on PATH (.ci/run installs it)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_real_nginx_https_works_client_ip_is_seen_and_http_redirects() {
    let whoami = Router::new().route("/whoami", get(|ClientIp(ip): ClientIp| async move { ip.to_string() }));
    let options = Options {
        backend: Backend::Sqlite,
        extra_routes: Some(whoami),
    };
    let app = TestApp::start(options, |c| {
        c.client_ip_source = shipshape::config::ClientIpSource::XForwardedFor;
        c.secure_ssl_redirect = true;
        c.hsts.seconds = 31_536_000;
    })
    .await;
    let nginx = start_nginx(app.addr.port());
    let https = format!("https://localhost:{}", nginx.https_port);

    let (health, who, headers) = tokio::task::spawn_blocking(move || {
        (
            curl(&[&format!("{https}/healthz")]),
            curl(&[&format!("{https}/whoami")]),
            curl(&["-D", "-", "-o", "/dev/null", &format!("{https}/api/v1/nope")]),
        )
    })
    .await
    .unwrap();
    assert_eq!(health, r#"{"status":"ok"}"#, "HTTPS through nginx");
    assert_eq!(who, "127.0.0.7", "the app sees the client's address, not nginx's");
    let headers = headers.to_ascii_lowercase();
    assert!(
        headers.starts_with("http/2 404"),
        "proxied, not redirected again: {headers}"
    );
    assert!(
        headers.contains("strict-transport-security: max-age=31536000"),
        "HSTS on HTTPS: {headers}"
    );

    let http = format!("http://localhost:{}", nginx.http_port);
    let redirect = tokio::task::spawn_blocking(move || {
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            &format!("{http}/api/v1/auth/me?x=1"),
        ])
    })
    .await
    .unwrap();
    assert_eq!(
        redirect, "301 https://localhost/api/v1/auth/me?x=1",
        "plain HTTP is sent to HTTPS"
    );

    // example-domain:begin
    // The event stream through nginx: an event arrives while the stream is still open, so
    // nothing buffers it (curl -N prints as bytes arrive; --max-time ends the stream).
    let token = app.signup("stream@example.com").await;
    let stream_url = format!("https://localhost:{}/api/v1/invoices/events", nginx.https_port);
    let auth = format!("Authorization: Bearer {token}");
    let reader = tokio::task::spawn_blocking(move || {
        let output = Command::new("curl")
            .args(["-skN", "--max-time", "4", "-H", &auth, &stream_url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let created = app.create_invoice(&token, 4321).await;
    let received = reader.await.unwrap();
    assert!(
        received.contains("event: invoice.created"),
        "the event came through nginx: {received:?}"
    );
    assert!(received.contains(created["id"].as_str().unwrap()));
    // example-domain:end
    drop(nginx);
    app.stop().await;
}
