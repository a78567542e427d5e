//! Roles, the admin routes, disabled accounts, and `shipshape user …` (docs/accounts.md).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use shipshape::sessions;
use shipshape::users::{self, Role, Standing};

use crate::helpers::{Backend, PASSWORD, TestApp, assert_error, refused_fields};
use crate::on_both_databases;
use crate::sessions::log_in;

on_both_databases!(
    admin_routes_answer_admins_only_and_keep_the_last_admin,
    a_disabled_account_is_refused_and_its_login_says_so_after_a_correct_password,
    the_admin_list_pages_newest_first_and_filters_by_email_prefix,
);

/// Makes an account an admin, as `shipshape user set-role` does.
async fn make_admin(app: &TestApp, email: &str) -> uuid::Uuid {
    let row = users::find_by_email(&app.state.db, email)
        .await
        .unwrap()
        .expect("account");
    let id = row.id().unwrap();
    sessions::change_standing(&app.state.db, id, Standing::SetRole(Role::Admin))
        .await
        .expect("set role")
        .expect("account");
    id
}

fn token(body: &Value) -> &str {
    body["token"].as_str().expect("token")
}

fn id(body: &Value) -> &str {
    body["user"]["id"].as_str().expect("id")
}

async fn admin_routes_answer_admins_only_and_keep_the_last_admin(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let boss = app.sign_up("boss@example.com").await;
    let user = app.sign_up("user@example.com").await;
    let boss_id = make_admin(&app, "boss@example.com").await;
    // An admin's role shows in its profile (read afresh, not from the session memory).
    let me: Value = app.get("/api/v1/me", Some(token(&boss))).await.json().await.unwrap();
    assert_eq!(me["role"], "admin");

    let disable = |target: &str, who: &Value| {
        app.post_json(
            &format!("/api/v1/admin/users/{target}/disable"),
            &json!({}),
            Some(token(who)),
        )
    };
    // Everyone else: 403 (a user), 401 (nobody).
    assert_error(
        app.get("/api/v1/admin/users", Some(token(&user))).await,
        403,
        "forbidden",
    )
    .await;
    assert_error(disable(id(&boss), &user).await, 403, "forbidden").await;
    assert_error(app.get("/api/v1/admin/users", None).await, 401, "unauthorized").await;

    // The only enabled admin can be neither disabled (by itself) nor demoted.
    assert_error(disable(&boss_id.to_string(), &boss).await, 409, "last_admin").await;
    let demoted = sessions::change_standing(&app.state.db, boss_id, Standing::SetRole(Role::User)).await;
    assert!(
        matches!(demoted, Err(shipshape::error::ApiError::LastAdmin)),
        "demoting the last admin"
    );

    // With a second admin, the first can go.
    let second = app.sign_up("second@example.com").await;
    make_admin(&app, "second@example.com").await;
    let done = disable(&boss_id.to_string(), &second).await;
    assert_eq!(done.status(), 200);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["role"], "admin");
    assert!(done["disabled_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{done}");
    // And now the second is the last one.
    assert_error(disable(id(&second), &second).await, 409, "last_admin").await;

    // Unknown and malformed ids: 404.
    for target in [uuid::Uuid::now_v7().to_string(), "nope".to_owned()] {
        assert_error(disable(&target, &second).await, 404, "not_found").await;
    }
    app.stop().await;
}

async fn a_disabled_account_is_refused_and_its_login_says_so_after_a_correct_password(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.sign_up("admin@example.com").await;
    make_admin(&app, "admin@example.com").await;
    let user = app.sign_up("abuser@example.com").await;
    assert_eq!(app.get("/api/v1/me", Some(token(&user))).await.status(), 200);

    let path = |action: &str| format!("/api/v1/admin/users/{}/{action}", id(&user));
    let disabled = app.post_json(&path("disable"), &json!({}), Some(token(&admin))).await;
    assert_eq!(disabled.status(), 200);
    let disabled: Value = disabled.json().await.unwrap();
    // Refused at once on this instance, tokens and refresh alike.
    assert_error(app.get("/api/v1/me", Some(token(&user))).await, 401, "unauthorized").await;
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": user["refresh_token"]}),
            None,
        )
        .await;
    assert_error(refresh, 401, "unauthorized").await;
    // The right password says why; a wrong one says nothing more than for anyone.
    assert_error(
        log_in(&app, "abuser@example.com", PASSWORD).await,
        403,
        "account_disabled",
    )
    .await;
    assert_error(
        log_in(&app, "abuser@example.com", "wrong password!").await,
        401,
        "invalid_credentials",
    )
    .await;

    // Disabling again changes nothing (the first time stays); enabling lets it log in again.
    let again: Value = app
        .post_json(&path("disable"), &json!({}), Some(token(&admin)))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["disabled_at"], disabled["disabled_at"]);
    let enabled = app.post_json(&path("enable"), &json!({}), Some(token(&admin))).await;
    assert_eq!(enabled.status(), 200);
    assert_eq!(enabled.json::<Value>().await.unwrap()["disabled_at"], Value::Null);
    // Its old sessions stay ended.
    assert_error(app.get("/api/v1/me", Some(token(&user))).await, 401, "unauthorized").await;
    assert_eq!(log_in(&app, "abuser@example.com", PASSWORD).await.status(), 200);
    app.stop().await;
}

async fn the_admin_list_pages_newest_first_and_filters_by_email_prefix(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.sign_up("root@example.com").await;
    make_admin(&app, "root@example.com").await;
    for name in ["ann", "anna", "bob", "an_x"] {
        app.sign_up(&format!("{name}@example.com")).await;
    }
    let list = |query: &str| app.get(&format!("/api/v1/admin/users{query}"), Some(token(&admin)));
    let emails = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_owned())
            .collect()
    };
    let all: Value = list("").await.json().await.unwrap();
    assert_eq!(
        emails(&all),
        [
            "an_x@example.com",
            "bob@example.com",
            "anna@example.com",
            "ann@example.com",
            "root@example.com"
        ]
    );
    assert!(all["items"][0].get("disabled_at").is_some(), "admin view: {all}");
    assert!(all["items"][0].get("password_hash").is_none());

    // A case-insensitive prefix, where `_` and `%` are plain characters.
    let an: Value = list("?email=AN").await.json().await.unwrap();
    assert_eq!(emails(&an), ["an_x@example.com", "anna@example.com", "ann@example.com"]);
    let underscore: Value = list("?email=an_").await.json().await.unwrap();
    assert_eq!(emails(&underscore), ["an_x@example.com"]);
    let percent: Value = list("?email=%25").await.json().await.unwrap();
    assert_eq!(emails(&percent), Vec::<String>::new());

    // Pages of two, with no gap and no repeat.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".to_owned(),
        };
        let page: Value = list(&query).await.json().await.unwrap();
        seen.extend(emails(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, emails(&all));
    assert_error(list("?cursor=nope").await, 400, "invalid_cursor").await;
    assert_eq!(refused_fields(list("?limit=0").await).await, ["limit"]);
    assert_eq!(refused_fields(list("?role=admin").await).await, ["role"]);
    app.stop().await;
}

const BIN: &str = env!("CARGO_BIN_EXE_shipshape");

/// `shipshape ARGS` on `database`, with `stdin` as its standard input: (exit code, stdout, stderr).
fn shipshape(database: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database)
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code().unwrap_or(-1),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// The one audit line of a command's log.
fn audit_line(stderr: &str) -> Value {
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["audit"] == true)
        .collect();
    assert_eq!(lines.len(), 1, "one audit line in: {stderr}");
    lines[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_comes_from_the_command_line_with_the_password_on_stdin() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let database = app.state.config.database.url.expose().to_owned();
    let password = "a secret admin passphrase";

    let (code, stdout, stderr) = shipshape(
        &database,
        &["user", "create", "Chief@Example.com", "--admin"],
        &format!("{password}\n"),
    );
    assert_eq!(code, 0, "{stderr}");
    let id = stdout.trim().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "prints the id: {stdout}");
    let audit = audit_line(&stderr);
    assert_eq!(audit["actor"], "cli");
    assert_eq!(audit["action"], "user.create");
    assert_eq!(audit["target"], id.as_str());
    assert_eq!(audit["level"], "INFO");
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains(password) && !output.contains("$argon2"),
            "no password or hash: {output}"
        );
    }

    // It logs in as an admin and reaches the admin routes.
    let login: Value = log_in(&app, "chief@example.com", password).await.json().await.unwrap();
    let listed = app.get("/api/v1/admin/users", Some(token(&login))).await;
    assert_eq!(listed.status(), 200);

    // The signup rules, an email that exists, an unknown email: nothing changes.
    let (code, _, stderr) = shipshape(&database, &["user", "create", "short@example.com"], "short\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("password") && !stderr.contains("short\n"), "{stderr}");
    let (code, _, stderr) = shipshape(
        &database,
        &["user", "create", "chief@example.com"],
        &format!("{password}\n"),
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("already registered"), "{stderr}");
    let (code, _, _) = shipshape(&database, &["user", "create", "nopassword@example.com"], "");
    assert_eq!(code, 2, "an empty standard input is no password");
    for args in [
        ["user", "disable", "ghost@example.com"],
        ["user", "enable", "ghost@example.com"],
    ] {
        let (code, _, stderr) = shipshape(&database, &args, "");
        assert_eq!(code, 1, "{args:?}");
        assert!(stderr.contains("no account"), "{stderr}");
    }
    assert!(
        users::find_by_email(&app.state.db, "short@example.com")
            .await
            .unwrap()
            .is_none()
    );

    // The last admin stays; a second one lets the first be demoted, then disabled.
    let (code, _, stderr) = shipshape(&database, &["user", "set-role", "chief@example.com", "user"], "");
    assert_eq!(code, 1);
    assert!(stderr.contains("only enabled administrator"), "{stderr}");
    let (code, _, _) = shipshape(
        &database,
        &["user", "create", "deputy@example.com", "--admin"],
        &format!("{password}\n"),
    );
    assert_eq!(code, 0);
    let (code, stdout, stderr) = shipshape(&database, &["user", "set-role", "CHIEF@example.com", "user"], "");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("{id} chief@example.com user enabled"));
    assert_eq!(audit_line(&stderr)["action"], "user.set_role");
    // Demoted: the admin routes are closed to it within the session memory's few seconds.
    let (code, stdout, stderr) = shipshape(&database, &["user", "disable", "chief@example.com"], "");
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.trim().ends_with("user disabled"), "{stdout}");
    assert_eq!(audit_line(&stderr)["action"], "user.disable");
    assert_error(
        log_in(&app, "chief@example.com", password).await,
        403,
        "account_disabled",
    )
    .await;
    let (code, _, stderr) = shipshape(&database, &["user", "enable", "chief@example.com"], "");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(log_in(&app, "chief@example.com", password).await.status(), 200);
    app.stop().await;
}

#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Every admin action through the API writes one audit line naming actor, action and target.
// A current-thread runtime, so the subscriber set for this thread sees the server's lines.
#[tokio::test]
async fn admin_actions_write_one_audit_line_each() {
    let captured = Captured::default();
    let sink = captured.clone();
    let format = shipshape::config::LogFormat::Json;
    let dispatch = shipshape::telemetry::subscriber(format, "info", move || sink.clone(), false);
    let _default = tracing::dispatcher::set_default(&dispatch);
    let app = TestApp::spawn(Backend::Sqlite).await;
    let admin = app.sign_up("auditor@example.com").await;
    let admin_id = make_admin(&app, "auditor@example.com").await;
    let user = app.sign_up("audited@example.com").await;
    for action in ["disable", "enable"] {
        let path = format!("/api/v1/admin/users/{}/{action}", id(&user));
        assert_eq!(
            app.post_json(&path, &json!({}), Some(token(&admin))).await.status(),
            200
        );
    }
    app.stop().await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let audit: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["audit"] == true)
        .collect();
    let actions: Vec<&str> = audit.iter().map(|line| line["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["user.disable", "user.enable"], "{text}");
    for line in &audit {
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["actor"], admin_id.to_string().as_str());
        assert_eq!(line["target"], id(&user));
        assert!(line["request_id"].as_str().is_some(), "within its request: {line}");
    }
    assert!(
        !text.contains(PASSWORD) && !text.contains("$argon2"),
        "no password or hash in the log"
    );
}
