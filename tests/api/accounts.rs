//! Signup, login, `/me`, and every way a bearer token can be wrong.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{Backend, PASSWORD, TEST_SECRET, TestApp, assert_error, refused_fields};
use crate::on_both_databases;

on_both_databases!(signup_login_and_me, signup_and_login_errors);

async fn signup_login_and_me(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .post_json(
            "/api/v1/auth/signup",
            &json!({"email": "  Ada@Example.COM ", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["email"], "ada@example.com");
    assert!(uuid::Uuid::parse_str(body["user"]["id"].as_str().unwrap()).is_ok());
    assert!(body["user"]["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["user"]["role"], "user");
    assert_eq!(
        body["user"].as_object().unwrap().len(),
        4,
        "no password hash or other fields: {body}"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);

    let login = app
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "ADA@example.com", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(login.status(), 200);
    let login: Value = login.json().await.unwrap();
    let token = login["token"].as_str().unwrap();

    let me = app.get("/api/v1/me", Some(token)).await;
    assert_eq!(me.status(), 200);
    assert_eq!(me.headers()["cache-control"], "no-store");
    assert_eq!(me.json::<Value>().await.unwrap(), body["user"]);
    app.stop().await;
}

async fn signup_and_login_errors(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let signup = |body: Value| app.post_json("/api/v1/auth/signup", &body, None);

    let invalid = signup(json!({"email": "not-an-email", "password": "short"})).await;
    let body = assert_error(invalid, 422, "validation_failed").await;
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password"]);
    for (email, password, field) in [
        ("a@b", PASSWORD, "email"),
        ("a@@example.com", PASSWORD, "email"),
        (&format!("{}@example.com", "a".repeat(250)), PASSWORD, "email"),
        ("same@example.com", "same@example.com", "password"),
        ("long@example.com", &"p".repeat(129), "password"),
    ] {
        let body = assert_error(
            signup(json!({"email": email, "password": password})).await,
            422,
            "validation_failed",
        )
        .await;
        assert_eq!(body["error"]["details"][0]["field"], field, "{email} / {password}");
    }
    // Every bad field at once, the wrongly typed and the unknown included.
    let mistyped = signup(json!({"email": 5, "password": ["x"], "admin": true})).await;
    assert_eq!(refused_fields(mistyped).await, ["email", "password", "admin"]);
    let unknown = signup(json!({"email": "x@example.com", "password": PASSWORD, "admin": true})).await;
    assert_eq!(
        assert_error(unknown, 422, "validation_failed").await["error"]["details"][0]["field"],
        "admin"
    );

    assert_eq!(
        signup(json!({"email": "taken@example.com", "password": PASSWORD}))
            .await
            .status(),
        201
    );
    assert_error(
        signup(json!({"email": "TAKEN@example.com", "password": PASSWORD})).await,
        409,
        "email_taken",
    )
    .await;

    let login = |email: &str, password: &str| {
        app.post_json(
            "/api/v1/auth/login",
            &json!({"email": email, "password": password}),
            None,
        )
    };
    for response in [
        login("taken@example.com", "wrong password!!").await,
        login("nobody@example.com", PASSWORD).await,
    ] {
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body = assert_error(response, 401, "invalid_credentials").await;
        assert_eq!(
            body["error"]["message"], "the email or password is wrong",
            "same answer for both"
        );
    }
    app.stop().await;
}

fn sign(claims: &Value, key: &str, algorithm: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(key.as_bytes()),
    )
    .unwrap()
}

fn claims(user: &str, session: &str, expires_in: i64) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({"sub": user, "sid": session, "iat": now, "exp": now + expires_in})
}

#[tokio::test]
async fn every_bad_token_is_a_401_with_www_authenticate() {
    const OLD_KEY: &str = "old-signing-key-that-was-rotated-away-0123456789";
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.secret_key_fallbacks = vec![shipshape::config::Secret::new(OLD_KEY)];
    })
    .await;
    let token = app.signup("tokens@example.com").await;
    let me: Value = app.get("/api/v1/me", Some(&token)).await.json().await.unwrap();
    let user = me["id"].as_str().unwrap();
    let session = app.state.auth.verify_token(&token).unwrap().session.to_string();
    let session = session.as_str();

    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(user, session, 600).to_string())
    );
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    let bad_tokens = [
        ("missing", None),
        ("garbage", Some("not.a.token".to_owned())),
        ("alg none", Some(alg_none)),
        (
            "HS512",
            Some(sign(&claims(user, session, 600), TEST_SECRET, Algorithm::HS512)),
        ),
        (
            "other key",
            Some(sign(
                &claims(user, session, 600),
                "someone-elses-key-entirely-0123456789abcd",
                Algorithm::HS256,
            )),
        ),
        ("tampered", Some(tampered)),
        (
            "expired",
            Some(sign(&claims(user, session, -600), TEST_SECRET, Algorithm::HS256)),
        ),
        (
            "no session",
            Some(sign(
                &json!({"sub": user, "iat": 0, "exp": 4_000_000_000_i64}),
                TEST_SECRET,
                Algorithm::HS256,
            )),
        ),
        (
            "another session",
            Some(sign(
                &claims(user, &uuid::Uuid::new_v4().to_string(), 600),
                TEST_SECRET,
                Algorithm::HS256,
            )),
        ),
    ];
    for (what, bad) in bad_tokens {
        let response = app.get("/api/v1/me", bad.as_deref()).await;
        assert_eq!(
            response.headers().get("www-authenticate").map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{what}"
        );
        assert_error(response, 401, "unauthorized").await;
    }
    let basic = app
        .client
        .get(app.url("/api/v1/me"))
        .header("authorization", format!("Basic {token}"))
        .send();
    assert_error(basic.await.unwrap(), 401, "unauthorized").await;

    let rotated = sign(&claims(user, session, 600), OLD_KEY, Algorithm::HS256);
    assert_eq!(
        app.get("/api/v1/me", Some(&rotated)).await.status(),
        200,
        "a fallback key still verifies"
    );
    app.stop().await;
}
