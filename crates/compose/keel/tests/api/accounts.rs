//! Every path that makes or changes accounts agrees with the users cache, on every backend:
//! under write-back, an address held by a write still in the journal is taken (and one it
//! released is free), the verification mail after an address change goes to the new address,
//! and accounts left half-made by older versions are repaired through the API.

use keel_config::Strategy;
use keel_domain::{NewUser, User, UserEmail, UserName};
use serde_json::{Value, json};

use crate::api::auth::{PASSWORD, tokens_of};
use crate::api::helpers::{Backend, TestApp, spawn_app_with, spawn_up_with};
use crate::api::lifecycle::{id, link_token, mail_containing};
use crate::on_every_backend;

on_every_backend!(
    a_sign_up_sees_the_addresses_of_write_back_writes_not_yet_flushed,
    under_write_back_the_verification_mail_goes_to_the_changed_address,
    a_half_made_account_is_repaired_by_reinviting_or_a_password_reset,
);

/// Write-back with a flush interval far longer than the test: pending writes stay in the
/// journal until something flushes them on purpose.
fn write_back_held(settings: &mut keel_config::Settings) {
    settings.cache.users.strategy = Strategy::WriteBack;
    settings.cache.write_back.flush_interval_ms = 600_000;
}

async fn anonymous_sign_up(app: &TestApp, name: &str, email: &str) -> reqwest::Response {
    app.client
        .post(app.url("/auth/signup"))
        .json(&json!({"name": name, "email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

async fn a_sign_up_sees_the_addresses_of_write_back_writes_not_yet_flushed(backend: Backend) {
    let app = spawn_app_with(backend, write_back_held).await;
    let res = app
        .post_json(
            "/users",
            &json!({"name": "Ann", "email": "ann@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let ann: Value = res.json().await.unwrap();
    let path = format!("/users/{}", id(&ann));
    let res = app
        .put_json(&path, &json!({"name": "Ann", "email": "taken@example.com"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 2);

    // The acknowledged change holds the new address and released the old one, although the
    // database shows neither yet.
    let res = anonymous_sign_up(&app, "Eve", "taken@example.com").await;
    assert_eq!(res.status(), 409, "{}", res.text().await.unwrap());
    let res = anonymous_sign_up(&app, "Bob", "ann@example.com").await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    // Signing in finds the account by the address its owner was told it has.
    tokens_of(&app, "taken@example.com", PASSWORD).await;

    // Listing flushes the journal: the acknowledged write is stored, and none was rejected.
    assert_eq!(app.get("/users").await.status(), 200);
    let stored: Value = app.get(&path).await.json().await.unwrap();
    assert_eq!(stored["email"], "taken@example.com");
    assert_eq!(stored["version"], 2);
    let rejects = app.settings.data_dir.join("writeback/users.rejected.jsonl");
    assert!(
        !rejects.exists(),
        "{}",
        std::fs::read_to_string(&rejects).unwrap_or_default()
    );
    app.stop().await;
}

async fn under_write_back_the_verification_mail_goes_to_the_changed_address(backend: Backend) {
    let app = spawn_up_with(backend, write_back_held).await;
    let res = anonymous_sign_up(&app, "Bea", "bea@example.com").await;
    assert_eq!(res.status(), 201);
    let bea: Value = res.json().await.unwrap();
    let res = app
        .put_json(
            &format!("/users/{}", id(&bea)),
            &json!({"name": "Bea", "email": "bea@new.example"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let mail = mail_containing(&app, id(&bea), "Confirm that bea@new.example").await;
    // Its link verifies the new address.
    let res = app
        .client
        .post(app.url("/auth/verify-email"))
        .json(&json!({ "token": link_token(&mail) }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    app.stop().await;
}

/// A user row without credentials, as a crash between the transactions of account creation
/// left it before accounts were made in one.
async fn half_made(app: &TestApp, email: &str) -> Value {
    let user = User::create(
        NewUser {
            name: UserName::parse("Half").unwrap(),
            email: UserEmail::parse(email).unwrap(),
        },
        chrono::Utc::now(),
    );
    keel::database::Database::open(&app.settings)
        .await
        .unwrap()
        .repo()
        .insert(&user)
        .await
        .unwrap();
    json!({ "id": user.id.to_string() })
}

async fn a_half_made_account_is_repaired_by_reinviting_or_a_password_reset(backend: Backend) {
    let app = spawn_up_with(backend, |_| {}).await;

    // An invitation whose mail was lost: the admin invites again.
    let olga = half_made(&app, "olga@example.com").await;
    let res = app
        .post_json(&format!("/users/{}/invitation", id(&olga)), &json!({}))
        .await;
    assert!(
        res.status().is_success(),
        "{}: {}",
        res.status(),
        res.text().await.unwrap()
    );
    let mail = mail_containing(&app, id(&olga), "You are invited").await;
    let res = app
        .client
        .post(app.url("/auth/invitation/accept"))
        .json(&json!({ "token": link_token(&mail), "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    tokens_of(&app, "olga@example.com", PASSWORD).await;

    // A sign-up whose credentials were lost: its owner resets the password.
    let sam = half_made(&app, "sam@example.com").await;
    let res = app
        .client
        .post(app.url("/auth/password/forgot"))
        .json(&json!({ "email": "sam@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let mail = mail_containing(&app, id(&sam), "reset the password").await;
    let res = app
        .client
        .post(app.url("/auth/password/reset"))
        .json(&json!({ "token": link_token(&mail), "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "{}: {}",
        res.status(),
        res.text().await.unwrap()
    );
    tokens_of(&app, "sam@example.com", PASSWORD).await;
    app.stop().await;
}
