//! The identity provider's routes on the real application, on every backend: sign-up, sign-in,
//! bearer tokens, refresh rotation and reuse, sign-out, throttling with `Retry-After`, TOTP
//! enrolment and sign-in with a second factor, the admin-only audit log, the JWKS, and the
//! routes gone when identity is off.

use keel_credentials::token::{Expect, Verifier};
use keel_credentials::totp::{Totp, TotpSecret};
use serde_json::{Value, json};

use crate::api::helpers::{Backend, TestApp, spawn_app, spawn_app_with};
use crate::on_every_backend;

on_every_backend!(
    sign_up_then_sign_in_gives_tokens_that_open_auth_me,
    bad_sign_ins_get_one_answer_and_throttling_says_when_to_retry,
    refresh_rotates_and_a_reused_token_is_refused_with_its_successor,
    totp_enrolment_then_sign_in_with_a_second_factor,
    only_admins_read_the_audit_log,
    a_password_change_ends_every_sign_in_and_needs_the_current_password,
    an_admin_disables_and_enables_an_account,
);

pub(super) const PASSWORD: &str = "a fine long passphrase";

pub(super) async fn sign_up(app: &TestApp, email: &str) -> Value {
    let res = app
        .post_json(
            "/auth/signup",
            &json!({"name": "Ada", "email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

async fn sign_in(app: &TestApp, body: &Value) -> reqwest::Response {
    app.post_json("/auth/login", body).await
}

async fn bearer_get(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn sign_up_then_sign_in_gives_tokens_that_open_auth_me(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = sign_up(&app, "Ada@Example.com").await;
    assert_eq!(user["email"], "ada@example.com");
    let res = sign_in(
        &app,
        &json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().unwrap();

    let me: Value = bearer_get(&app, "/auth/me", access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["id"], user["id"]);
    assert_eq!(me["roles"], json!([]));

    // The token verifies against the published JWKS with an independent verifier.
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let verifier = Verifier::from_jwks(&jwks).unwrap();
    let claims = verifier
        .verify(
            access,
            &Expect {
                issuer: app.address.clone(),
                audience: "keel".into(),
                leeway_secs: 5,
            },
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    assert_eq!(claims.sub, user["id"].as_str().unwrap());

    for header in ["", "Bearer", "Bearer not-a-token", "Basic YWRhOnB3"] {
        let res = app
            .client
            .get(app.url("/auth/me"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{header:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"keel\"");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "unauthenticated");
    }

    let weak = app
        .post_json(
            "/auth/signup",
            &json!({"name": "Bo", "email": "bo@example.com", "password": "password1234"}),
        )
        .await;
    assert_eq!(weak.status(), 422);
    let body: Value = weak.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["field"].as_str()),
        (Some("weak_password"), Some("password"))
    );
    let taken = app
        .post_json(
            "/auth/signup",
            &json!({"name": "Ada", "email": "ada@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(taken.status(), 409);
    let unknown = app
        .post_json(
            "/auth/login",
            &json!({"email": "ada@example.com", "password": PASSWORD, "otp": "1"}),
        )
        .await;
    assert_eq!(unknown.status(), 422, "unknown fields are named");
}

async fn bad_sign_ins_get_one_answer_and_throttling_says_when_to_retry(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "ada@example.com").await;
    let mut answers = Vec::new();
    for body in [
        json!({"email": "ada@example.com", "password": "wrong wrong wrong"}),
        json!({"email": "nobody@example.com", "password": PASSWORD}),
        json!({"email": "not an email", "password": PASSWORD}),
    ] {
        let res = sign_in(&app, &body).await;
        answers.push((res.status().as_u16(), res.text().await.unwrap()));
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "one answer whatever was wrong: {answers:?}"
    );
    assert_eq!(answers[0].0, 401);
    // The same client keeps failing: after the free attempts it must wait.
    let mut throttled = None;
    for _ in 0..10 {
        let res = sign_in(
            &app,
            &json!({"email": "ada@example.com", "password": "wrong wrong wrong"}),
        )
        .await;
        if res.status() == 429 {
            throttled = Some(res);
            break;
        }
    }
    let res = throttled.expect("throttled within 10 failures");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "too_many_attempts");
}

async fn refresh_rotates_and_a_reused_token_is_refused_with_its_successor(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "ada@example.com").await;
    let first = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let refresh = |token: Value| {
        let app = &app;
        async move {
            app.post_json("/auth/refresh", &json!({"refresh_token": token}))
                .await
        }
    };
    let res = refresh(first["refresh_token"].clone()).await;
    assert_eq!(res.status(), 200);
    let second: Value = res.json().await.unwrap();
    assert_eq!(refresh(first["refresh_token"].clone()).await.status(), 401);
    assert_eq!(
        refresh(second["refresh_token"].clone()).await.status(),
        401,
        "a reuse ends the whole sign-in"
    );

    let other = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let res = app
        .post_json(
            "/auth/logout",
            &json!({"refresh_token": other["refresh_token"]}),
        )
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(refresh(other["refresh_token"].clone()).await.status(), 401);
    let res = app
        .post_json("/auth/logout", &json!({"refresh_token": "forged.0.token"}))
        .await;
    assert_eq!(res.status(), 204);
}

async fn totp_enrolment_then_sign_in_with_a_second_factor(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "ada@example.com").await;
    let tokens = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let access = tokens["access_token"].as_str().unwrap();
    let enrolment: Value = app
        .client
        .post(app.url("/auth/totp"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let totp = Totp::new(TotpSecret::from_base32(enrolment["secret"].as_str().unwrap()).unwrap());
    let now = || u64::try_from(chrono::Utc::now().timestamp()).unwrap();
    let res = app
        .client
        .post(app.url("/auth/totp/confirm"))
        .bearer_auth(access)
        .json(&json!({"code": totp.code_at(now())}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let recovery: Value = res.json().await.unwrap();
    assert_eq!(recovery["recovery_codes"].as_array().unwrap().len(), 10);

    let res = sign_in(
        &app,
        &json!({"email": "ada@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "mfa_required");
    // The confirming code's step is used: the next step's code (within the ±1 window).
    let code = totp.code_at(now() + 30);
    let res = sign_in(
        &app,
        &json!({"email": "ada@example.com", "password": PASSWORD, "second_factor": code}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let recovery_code = recovery["recovery_codes"][0].clone();
    let res = sign_in(
        &app,
        &json!({"email": "ada@example.com", "password": PASSWORD, "second_factor": recovery_code}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = sign_in(
        &app,
        &json!({"email": "ada@example.com", "password": PASSWORD, "second_factor": recovery_code}),
    )
    .await;
    assert_eq!(res.status(), 401, "a recovery code works once");
}

async fn only_admins_read_the_audit_log(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "ada@example.com").await;
    let tokens = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let res = bearer_get(
        &app,
        "/auth/audit",
        tokens["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(res.status(), 403);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "forbidden");
    assert_eq!(app.anonymous_get("/auth/audit").await.status(), 401);
}

#[tokio::test]
async fn with_identity_off_its_routes_are_not_there() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.identity.enabled = false).await;
    assert_eq!(app.get("/.well-known/jwks.json").await.status(), 404);
    assert_eq!(
        app.post_json("/auth/login", &json!({"email": "a@b.c", "password": "x"}))
            .await
            .status(),
        404
    );
}

/// Gives the account `roles` directly in the store, as `keel admin create` would have.
pub(super) async fn grant(app: &TestApp, user: &Value, roles: &[&str]) {
    let db = keel::database::Database::open(&app.settings).await.unwrap();
    let store = db.identity();
    let id = user["id"].as_str().unwrap().parse().unwrap();
    let mut credentials = store.credentials(id).await.unwrap().unwrap();
    credentials.roles = roles.iter().map(|r| (*r).to_owned()).collect();
    credentials.version += 1;
    store.put_credentials(&credentials).await.unwrap();
}

pub(super) async fn tokens_of(app: &TestApp, email: &str, password: &str) -> Value {
    let res = sign_in(app, &json!({"email": email, "password": password})).await;
    assert_eq!(res.status(), 200, "{email}");
    res.json().await.unwrap()
}

async fn bearer_post(app: &TestApp, path: &str, token: &Value, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token.as_str().unwrap())
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn a_password_change_ends_every_sign_in_and_needs_the_current_password(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_up(&app, "ada@example.com").await;
    let laptop = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let phone = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let new = "an even longer passphrase now";
    let wrong = bearer_post(
        &app,
        "/auth/password",
        &laptop["access_token"],
        &json!({"current_password": "not the password", "new_password": new}),
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let weak = bearer_post(
        &app,
        "/auth/password",
        &laptop["access_token"],
        &json!({"current_password": PASSWORD, "new_password": "qwertyuiop123"}),
    )
    .await;
    assert_eq!(weak.status(), 422);
    let res = bearer_post(
        &app,
        "/auth/password",
        &laptop["access_token"],
        &json!({"current_password": PASSWORD, "new_password": new}),
    )
    .await;
    assert_eq!(res.status(), 204);
    for session in [&laptop, &phone] {
        let res = app
            .post_json(
                "/auth/refresh",
                &json!({"refresh_token": session["refresh_token"]}),
            )
            .await;
        assert_eq!(res.status(), 401, "every sign-in ended");
    }
    assert_eq!(
        sign_in(
            &app,
            &json!({"email": "ada@example.com", "password": PASSWORD})
        )
        .await
        .status(),
        401
    );
    let fresh = tokens_of(&app, "ada@example.com", new).await;
    let res = bearer_post(&app, "/auth/logout-all", &fresh["access_token"], &json!({})).await;
    assert_eq!(res.status(), 204);
    let res = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": fresh["refresh_token"]}),
        )
        .await;
    assert_eq!(res.status(), 401);
}

async fn an_admin_disables_and_enables_an_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = sign_up(&app, "root@example.com").await;
    grant(&app, &root, &["admin"]).await;
    let ada = sign_up(&app, "ada@example.com").await;
    let admin = tokens_of(&app, "root@example.com", PASSWORD).await;
    let session = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let path = |action: &str| format!("/auth/accounts/{}/{action}", ada["id"].as_str().unwrap());

    // Ada cannot disable anyone, herself included.
    let res = bearer_post(&app, &path("disable"), &session["access_token"], &json!({})).await;
    assert_eq!(res.status(), 403);

    let res = bearer_post(&app, &path("disable"), &admin["access_token"], &json!({})).await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        sign_in(
            &app,
            &json!({"email": "ada@example.com", "password": PASSWORD})
        )
        .await
        .status(),
        401,
        "a disabled account cannot sign in"
    );
    let res = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": session["refresh_token"]}),
        )
        .await;
    assert_eq!(res.status(), 401, "its sign-ins ended");

    let res = bearer_post(&app, &path("enable"), &admin["access_token"], &json!({})).await;
    assert_eq!(res.status(), 204);
    tokens_of(&app, "ada@example.com", PASSWORD).await;

    let missing = format!("/auth/accounts/{}/disable", uuid::Uuid::now_v7());
    let res = bearer_post(&app, &missing, &admin["access_token"], &json!({})).await;
    assert_eq!(res.status(), 404);
    let audit: Value = bearer_get(
        &app,
        &format!("/auth/audit?subject={}", ada["id"].as_str().unwrap()),
        admin["access_token"].as_str().unwrap(),
    )
    .await
    .json()
    .await
    .unwrap();
    let actions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.starts_with(&[
            "login_succeeded",
            "account_enabled",
            "login_failed",
            "account_disabled"
        ]),
        "{actions:?}"
    );
}

/// The client address the IdP audits: the peer, unless the peer is a trusted proxy; then the
/// first address from the right of `X-Forwarded-For` that is not a trusted proxy.
async fn audited_client_of_a_failed_login(app: &TestApp, forwarded_for: &str) -> String {
    let email = format!("{}@proxy.test", uuid::Uuid::new_v4().simple());
    let res = app
        .client
        .post(format!("{}/auth/login", app.address))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"email": email, "password": "not the password at all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // Newest first, and this test signs in one at a time: the first is this attempt's.
    let events: Value = app
        .get("/auth/audit?action=login_failed&limit=1")
        .await
        .json()
        .await
        .unwrap();
    events["events"][0]["client"]
        .as_str()
        .unwrap_or_else(|| panic!("no audited client: {events}"))
        .to_owned()
}

#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let untrusting = spawn_app(Backend::Sqlite).await;
    assert_eq!(
        audited_client_of_a_failed_login(&untrusting, "198.51.100.7").await,
        "127.0.0.1",
        "without trusted proxies a client cannot choose its address"
    );
    untrusting.stop().await;

    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.server.trusted_proxies = vec!["127.0.0.1/32".to_owned(), "10.0.0.0/8".to_owned()];
    })
    .await;
    assert_eq!(
        audited_client_of_a_failed_login(&app, "198.51.100.7").await,
        "198.51.100.7"
    );
    // What the client wrote left of the last untrusted hop proves nothing.
    assert_eq!(
        audited_client_of_a_failed_login(&app, "203.0.113.1, 198.51.100.7, 10.1.2.3").await,
        "198.51.100.7"
    );
    assert_eq!(
        audited_client_of_a_failed_login(&app, "garbage").await,
        "127.0.0.1"
    );
    app.stop().await;
}

#[test]
fn bad_trusted_proxies_are_refused_with_the_key_named() {
    let mut settings = keel_config::Settings::default();
    settings.server.trusted_proxies = vec!["10.0.0.1/8".to_owned()];
    let err = settings.validate().unwrap_err();
    assert!(err.contains("server.trusted_proxies"), "{err}");
}
