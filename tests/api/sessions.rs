//! Sessions: refresh rotation and reuse detection, logout, password change, and revocation
//! seen by another instance (docs/accounts.md).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, PASSWORD, TestApp, assert_error, refused_fields};
use crate::on_both_databases;

on_both_databases!(
    a_refresh_token_works_once_and_its_reuse_ends_the_session,
    logout_ends_the_session_and_only_it,
    a_password_change_ends_every_other_session,
    refresh_and_access_tokens_are_not_interchangeable,
    a_session_unused_for_its_time_has_ended_and_the_sweep_deletes_it,
);

/// Logs in (a new session) and returns the answer.
pub async fn log_in(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/login",
        &json!({"email": email, "password": password}),
        None,
    )
    .await
}

async fn refresh(app: &TestApp, refresh_token: &Value) -> reqwest::Response {
    app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": refresh_token}), None)
        .await
}

fn token(body: &Value) -> &str {
    body["token"].as_str().expect("token")
}

async fn a_refresh_token_works_once_and_its_reuse_ends_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.sign_up("rotate@example.com").await;
    assert_eq!(first["refresh_expires_in"], 2_592_000);
    assert!(first["refresh_token"].as_str().is_some_and(|t| t.len() > 40));

    let second = refresh(&app, &first["refresh_token"]).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["cache-control"], "no-store");
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["token_type"], "Bearer");
    assert_eq!(second["expires_in"], 3600);
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(app.get("/api/v1/me", Some(token(&second))).await.status(), 200);
    // A new access token of the same session: the old one still works until it expires.
    assert_eq!(app.get("/api/v1/me", Some(token(&first))).await.status(), 200);

    // The first refresh token again: stolen, or replayed. The whole session ends.
    assert_error(refresh(&app, &first["refresh_token"]).await, 401, "unauthorized").await;
    for access in [token(&first), token(&second)] {
        assert_error(app.get("/api/v1/me", Some(access)).await, 401, "unauthorized").await;
    }
    assert_error(refresh(&app, &second["refresh_token"]).await, 401, "unauthorized").await;

    // Another session of the same account is untouched.
    let other: Value = log_in(&app, "rotate@example.com", PASSWORD).await.json().await.unwrap();
    assert_eq!(app.get("/api/v1/me", Some(token(&other))).await.status(), 200);
    assert_eq!(refresh(&app, &other["refresh_token"]).await.status(), 200);
    app.stop().await;
}

async fn logout_ends_the_session_and_only_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let phone = app.sign_up("logout@example.com").await;
    let laptop: Value = log_in(&app, "logout@example.com", PASSWORD).await.json().await.unwrap();
    // Seen (and remembered by this instance) before the logout.
    assert_eq!(app.get("/api/v1/me", Some(token(&phone))).await.status(), 200);

    let out = app
        .post_json("/api/v1/auth/logout", &json!({}), Some(token(&phone)))
        .await;
    assert_eq!(out.status(), 204);
    assert_error(app.get("/api/v1/me", Some(token(&phone))).await, 401, "unauthorized").await;
    assert_error(refresh(&app, &phone["refresh_token"]).await, 401, "unauthorized").await;
    let again = app
        .post_json("/api/v1/auth/logout", &json!({}), Some(token(&phone)))
        .await;
    assert_error(again, 401, "unauthorized").await;

    assert_eq!(app.get("/api/v1/me", Some(token(&laptop))).await.status(), 200);
    assert_eq!(refresh(&app, &laptop["refresh_token"]).await.status(), 200);
    assert_error(
        app.post_json("/api/v1/auth/logout", &json!({}), None).await,
        401,
        "unauthorized",
    )
    .await;
    app.stop().await;
}

async fn a_password_change_ends_every_other_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "change@example.com";
    let here = app.sign_up(email).await;
    let there: Value = log_in(&app, email, PASSWORD).await.json().await.unwrap();
    assert_eq!(app.get("/api/v1/me", Some(token(&there))).await.status(), 200);
    let change = |current: &str, new: &str| {
        app.post_json(
            "/api/v1/me/password",
            &json!({"current_password": current, "new_password": new}),
            Some(token(&here)),
        )
    };
    let new_password = "a brand new passphrase";

    // Bad input changes nothing, and says what is wrong.
    assert_error(
        change("not the password", new_password).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(refused_fields(change(PASSWORD, "short").await).await, ["new_password"]);
    assert_eq!(refused_fields(change(PASSWORD, email).await).await, ["new_password"]);
    assert_eq!(
        refused_fields(
            app.post_json(
                "/api/v1/me/password",
                &json!({"new_password": new_password, "x": 1}),
                Some(token(&here))
            )
            .await
        )
        .await,
        ["current_password", "x"]
    );
    assert_eq!(
        app.get("/api/v1/me", Some(token(&there))).await.status(),
        200,
        "nothing changed yet"
    );

    assert_eq!(change(PASSWORD, new_password).await.status(), 204);
    assert_eq!(
        app.get("/api/v1/me", Some(token(&here))).await.status(),
        200,
        "this session stays"
    );
    assert_eq!(refresh(&app, &here["refresh_token"]).await.status(), 200);
    assert_error(app.get("/api/v1/me", Some(token(&there))).await, 401, "unauthorized").await;
    assert_error(refresh(&app, &there["refresh_token"]).await, 401, "unauthorized").await;
    assert_error(log_in(&app, email, PASSWORD).await, 401, "invalid_credentials").await;
    assert_eq!(log_in(&app, email, new_password).await.status(), 200);
    app.stop().await;
}

async fn refresh_and_access_tokens_are_not_interchangeable(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = app.sign_up("mixup@example.com").await;
    let refresh_token = body["refresh_token"].as_str().unwrap();
    // A refresh token as a bearer token, and an access token as a refresh token.
    assert_error(app.get("/api/v1/me", Some(refresh_token)).await, 401, "unauthorized").await;
    assert_error(refresh(&app, &body["token"]).await, 401, "unauthorized").await;
    // Malformed, foreign (another session's id, a secret that is not its own), wrongly typed.
    let (session, secret) = refresh_token.split_once('.').unwrap();
    let other = app.sign_up("mixup2@example.com").await;
    let (_, other_secret) = other["refresh_token"].as_str().unwrap().split_once('.').unwrap();
    for bad in [
        json!(""),
        json!("nonsense"),
        json!(format!("{session}.")),
        json!(format!("{}.{secret}", uuid::Uuid::new_v4().simple())),
    ] {
        assert_error(refresh(&app, &bad).await, 401, "unauthorized").await;
    }
    assert_eq!(refused_fields(refresh(&app, &json!(42)).await).await, ["refresh_token"]);
    assert_eq!(
        refused_fields(app.post_json("/api/v1/auth/refresh", &json!({}), None).await).await,
        ["refresh_token"]
    );
    // Every refusal so far left the session alone.
    assert_eq!(refresh(&app, &body["refresh_token"]).await.status(), 200);
    // Another session's secret under this session's id is a forgery by someone who knows
    // the id (it is in the access token): the session ends, as for a spent token.
    let forged = json!(format!("{session}.{other_secret}"));
    assert_error(refresh(&app, &forged).await, 401, "unauthorized").await;
    assert_eq!(app.get("/api/v1/me", Some(token(&other))).await.status(), 200);
    app.stop().await;
}

async fn a_session_unused_for_its_time_has_ended_and_the_sweep_deletes_it(backend: Backend) {
    // One second, below what REFRESH_TOKEN_TTL_SECS accepts, to see it end in a test.
    let app = TestApp::spawn_with(backend, |config| config.refresh_token_ttl = Duration::from_secs(1)).await;
    let idle = app.sign_up("idle@example.com").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let active = app.sign_up("active@example.com").await;
    assert_error(app.get("/api/v1/me", Some(token(&idle))).await, 401, "unauthorized").await;
    assert_error(refresh(&app, &idle["refresh_token"]).await, 401, "unauthorized").await;
    assert_eq!(app.get("/api/v1/me", Some(token(&active))).await.status(), 200);

    let idle_too = app.sign_up("idle-too@example.com").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let db = &app.state.db;
    let ttl = app.state.auth.refresh_ttl;
    assert_eq!(
        shipshape::sessions::delete_expired(db, ttl).await.unwrap(),
        2,
        "active and idle-too, not newer ones"
    );
    assert_eq!(shipshape::sessions::delete_expired(db, ttl).await.unwrap(), 0);
    assert_error(refresh(&app, &idle_too["refresh_token"]).await, 401, "unauthorized").await;
    app.stop().await;
}

/// How long `app` kept accepting `token` after `since`: it must refuse it within 5 s.
async fn refused_within_5_s(app: &TestApp, token: &str, since: Instant) -> Duration {
    loop {
        let status = app.get("/api/v1/me", Some(token)).await.status();
        if status == 401 {
            return since.elapsed();
        }
        assert_eq!(status, 200);
        assert!(since.elapsed() < Duration::from_secs(5), "still accepted after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Two instances on one database: a logout, and an account disabled, on one are refused on the
// other within 5 s (and on the first at once).
#[cfg_attr(not(test_postgres), ignore = "needs TEST_DATABASE_URL (a PostgreSQL server)")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_what_one_instance_ends_the_other_refuses_within_5_s() {
    let admin = crate::helpers::postgres_admin();
    let one = TestApp::spawn(Backend::Postgres(admin)).await;
    let url = one.state.config.database.url.expose().to_owned();
    let two = crate::helpers::TestApp::spawn_with(Backend::Sqlite, |config| {
        config.database.url = shipshape::config::SecretUrl::new(url);
        config.run_migrations_on_start = false;
    })
    .await;
    let body = one.sign_up("two-instances@example.com").await;
    // The second instance has read the session, and may remember it.
    assert_eq!(two.get("/api/v1/me", Some(token(&body))).await.status(), 200);
    let out = one
        .post_json("/api/v1/auth/logout", &json!({}), Some(token(&body)))
        .await;
    assert_eq!(out.status(), 204);
    let ended = Instant::now();
    assert_eq!(
        one.get("/api/v1/me", Some(token(&body))).await.status(),
        401,
        "at once here"
    );
    let after = refused_within_5_s(&two, token(&body), ended).await;
    eprintln!("the other instance refused the logged-out session after {after:?}");

    // An account disabled by an admin on the first instance.
    let boss = one.sign_up("boss@example.com").await;
    let boss_id = boss["user"]["id"].as_str().unwrap().parse().unwrap();
    let promote = shipshape::users::Standing::SetRole(shipshape::users::Role::Admin);
    shipshape::sessions::change_standing(&one.state.db, boss_id, promote)
        .await
        .unwrap();
    let user = one.sign_up("disabled-everywhere@example.com").await;
    assert_eq!(two.get("/api/v1/me", Some(token(&user))).await.status(), 200);
    let path = format!("/api/v1/admin/users/{}/disable", user["user"]["id"].as_str().unwrap());
    assert_eq!(one.post_json(&path, &json!({}), Some(token(&boss))).await.status(), 200);
    let disabled = Instant::now();
    assert_eq!(
        one.get("/api/v1/me", Some(token(&user))).await.status(),
        401,
        "at once here"
    );
    let after = refused_within_5_s(&two, token(&user), disabled).await;
    eprintln!("the other instance refused the disabled account after {after:?}");
    two.stop().await;
    one.stop().await;
}
