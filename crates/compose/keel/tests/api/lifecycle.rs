//! The account lifecycle on the real application, on every backend: sign-up modes, users who
//! read and change only themselves, mailed links through the outbox and the notifier (email
//! verification, invitations, password resets), export and erasure (GDPR), password expiry,
//! dormant accounts and MFA required per role.

use std::time::Duration;

use keel_credentials::totp::{Totp, TotpSecret};
use keel_domain::IdentityStore;
use serde_json::{Value, json};

use crate::api::auth::{PASSWORD, grant, sign_up, tokens_of};
use crate::api::helpers::{Backend, TestApp, spawn_app, spawn_app_with, spawn_up_with};
use crate::on_every_backend;

on_every_backend!(
    users_read_and_change_only_themselves,
    email_verification_and_password_reset_through_the_mailbox,
    an_invited_account_chooses_its_password,
    erasure_leaves_a_tombstone_and_no_personal_data,
    mfa_required_for_a_role_withholds_it_until_enrolled,
    expired_passwords_and_dormant_accounts,
);

pub(crate) fn id(user: &Value) -> &str {
    user["id"].as_str().unwrap()
}

/// The account's data export, read by the test's admin.
async fn data_of(app: &TestApp, user: &Value) -> Value {
    app.get(&format!("/users/{}/data", id(user)))
        .await
        .json()
        .await
        .unwrap()
}

async fn as_user(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    tokens: &Value,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(tokens["access_token"].as_str().unwrap());
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

/// The mails the notifier sent to `user`, waiting until one whose text contains `needle`
/// arrives (the outbox, the relay, the broker and the notifier are all in the way).
pub(crate) async fn mail_containing(app: &TestApp, user: &str, needle: &str) -> String {
    for _ in 0..200 {
        let mailbox: Value = app
            .get(&format!("/auth/dev/mailbox?user={user}"))
            .await
            .json()
            .await
            .unwrap();
        if let Some(text) = mailbox["mails"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["text"].as_str())
            .find(|t| t.contains(needle))
        {
            return text.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no mail containing {needle:?} reached {user}");
}

/// The token of the link in a mail.
pub(crate) fn link_token(mail: &str) -> String {
    mail.split("?token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a link with a token")
        .to_owned()
}

async fn identity_store(app: &TestApp) -> std::sync::Arc<dyn IdentityStore> {
    keel::database::Database::open(&app.settings)
        .await
        .unwrap()
        .identity()
}

#[tokio::test]
async fn sign_up_follows_the_configured_mode() {
    let body = json!({"name": "Ada", "email": "ada@example.com", "password": PASSWORD});
    let open = spawn_app(Backend::Sqlite).await;
    let res = open
        .client
        .post(open.url("/users"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert!(res.headers().contains_key("location"));
    let res = open
        .client
        .post(open.url("/users"))
        .json(&json!({"name": "Bo", "email": "bo@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422, "a sign-up needs a password");
    assert_eq!(res.json::<Value>().await.unwrap()["field"], "password");
    let res = open
        .client
        .post(open.url("/users"))
        .json(&json!({"name": "Cy", "email": "cy@example.com", "password": PASSWORD, "roles": ["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422, "nobody signs up with roles");
    assert_eq!(res.json::<Value>().await.unwrap()["field"], "roles");
    open.stop().await;

    for (mode, why) in [
        (keel_config::SignupMode::Invite, "by invitation only"),
        (keel_config::SignupMode::Closed, "closed"),
    ] {
        let app = spawn_app_with(Backend::Sqlite, |s| s.identity.signup = mode).await;
        for path in ["/users", "/auth/signup"] {
            let res = app
                .client
                .post(app.url(path))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 403, "{mode:?} {path}");
            let error: Value = res.json().await.unwrap();
            assert_eq!(error["code"], "signup_closed");
            assert!(error["error"].as_str().unwrap().contains(why), "{error}");
        }
        // Admins still make accounts, with roles.
        let res = app
            .post_json(
                "/users",
                &json!({"name": "Op", "email": "op@example.com", "password": PASSWORD, "roles": ["operator"]}),
            )
            .await;
        assert_eq!(res.status(), 201, "{mode:?}");
        let res = app
            .post_json(
                "/users",
                &json!({"name": "X", "email": "x@example.com", "password": PASSWORD, "roles": ["root"]}),
            )
            .await;
        assert_eq!(res.status(), 422, "an unknown role");
        app.stop().await;
    }
}

async fn users_read_and_change_only_themselves(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = sign_up(&app, "ada@example.com").await;
    let bo = sign_up(&app, "bo@example.com").await;
    let tokens = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let get = reqwest::Method::GET;
    let own = as_user(
        &app,
        get.clone(),
        &format!("/users/{}", id(&ada)),
        &tokens,
        None,
    )
    .await;
    assert_eq!(own.status(), 200);
    let other = format!("/users/{}", id(&bo));
    assert_eq!(
        as_user(&app, get.clone(), &other, &tokens, None)
            .await
            .status(),
        403
    );
    let change = json!({"name": "Mallory", "email": "bo@example.com"});
    let res = as_user(&app, reqwest::Method::PUT, &other, &tokens, Some(&change)).await;
    assert_eq!(res.status(), 403);
    let res = as_user(&app, reqwest::Method::DELETE, &other, &tokens, None).await;
    assert_eq!(res.status(), 403);
    assert_eq!(
        as_user(&app, get.clone(), "/users", &tokens, None)
            .await
            .status(),
        403
    );
    // Bo is untouched; an admin reads anyone.
    let seen: Value = app.get(&other).await.json().await.unwrap();
    assert_eq!(seen["name"], "Ada");
    // Ada changes herself.
    let res = as_user(
        &app,
        reqwest::Method::PUT,
        &format!("/users/{}", id(&ada)),
        &tokens,
        Some(&json!({"name": "Ada L.", "email": "ada@example.com"})),
    )
    .await;
    assert_eq!(res.status(), 200);
    // Her export, and its job, are hers alone.
    let res = as_user(
        &app,
        reqwest::Method::POST,
        &format!("/users/{}/export", id(&ada)),
        &tokens,
        None,
    )
    .await;
    assert_eq!(res.status(), 202);
    let job: Value = res.json().await.unwrap();
    let status_url = job["status_url"].as_str().unwrap();
    assert_eq!(
        as_user(&app, get.clone(), status_url, &tokens, None)
            .await
            .status(),
        200
    );
    let bo_tokens = tokens_of(&app, "bo@example.com", PASSWORD).await;
    let res = as_user(&app, get.clone(), status_url, &bo_tokens, None).await;
    assert_eq!(res.status(), 404, "another account's job is not found");
    app.stop().await;
}

async fn email_verification_and_password_reset_through_the_mailbox(backend: Backend) {
    let app = spawn_up_with(backend, |_| {}).await;
    let ada = sign_up(&app, "ada@example.com").await;
    let mail = mail_containing(&app, id(&ada), "Confirm that ada@example.com").await;
    let token = link_token(&mail);
    let data: Value = data_of(&app, &ada).await;
    assert_eq!(data["account"]["email_verified_at"], Value::Null);
    let page = app
        .client
        .get(app.url(&format!("/auth/verify-email?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("verified"));
    let data: Value = data_of(&app, &ada).await;
    assert!(data["account"]["email_verified_at"].is_i64(), "{data}");
    let res = app
        .post_json("/auth/verify-email", &json!({"token": format!("{token}x")}))
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "invalid_link");

    // Forgotten password: the same answer for an unknown address, and no mail.
    let before = tokens_of(&app, "ada@example.com", PASSWORD).await;
    for email in ["nobody@example.com", "ada@example.com"] {
        let res = app
            .client
            .post(app.url("/auth/password/forgot"))
            .json(&json!({ "email": email }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{email}");
    }
    let mail = mail_containing(&app, id(&ada), "reset the password").await;
    // Asking again and again: the sign-in throttle's free attempts go through (six: the sixth
    // starts the wait), the rest wait, answered the same.
    for _ in 0..7 {
        let res = app
            .client
            .post(app.url("/auth/password/forgot"))
            .json(&json!({"email": "ada@example.com"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    let audit: Value = app
        .get(&format!(
            "/auth/audit?action=password_reset_requested&subject={}",
            id(&ada)
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["events"].as_array().unwrap().len(), 6, "{audit}");
    let token = link_token(&mail);
    let reset = |password: &str| {
        app.client
            .post(app.url("/auth/password/reset"))
            .json(&json!({ "token": token, "password": password }))
            .send()
    };
    let res = reset("password").await.unwrap();
    assert_eq!(res.status(), 422, "the policy holds");
    let new_password = "a brand new long passphrase";
    assert_eq!(reset(new_password).await.unwrap().status(), 204);
    assert_eq!(
        reset("another fine long passphrase")
            .await
            .unwrap()
            .status(),
        400,
        "used once"
    );
    let res = app
        .client
        .post(app.url("/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the old password is gone");
    tokens_of(&app, "ada@example.com", new_password).await;
    let res = app
        .client
        .post(app.url("/auth/refresh"))
        .json(&json!({"refresh_token": before["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a reset ends every sign-in");
    let res = app
        .client
        .get(app.url("/auth/me"))
        .bearer_auth(before["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "and its access tokens");

    // A new address is unverified until its link is used.
    let res = app
        .put_json(
            &format!("/users/{}", id(&ada)),
            &json!({"name": "Ada", "email": "ada@new.example"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let data: Value = data_of(&app, &ada).await;
    assert_eq!(data["account"]["email_verified_at"], Value::Null);
    mail_containing(&app, id(&ada), "Confirm that ada@new.example").await;
    app.stop().await;
}

async fn an_invited_account_chooses_its_password(backend: Backend) {
    let app = spawn_up_with(backend, |_| {}).await;
    let res = app
        .post_json(
            "/users",
            &json!({"name": "Olga", "email": "olga@example.com", "roles": ["operator"]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let olga: Value = res.json().await.unwrap();
    let mail = mail_containing(&app, id(&olga), "You are invited").await;
    let token = link_token(&mail);
    let accept = |password: &str| {
        app.client
            .post(app.url("/auth/invitation/accept"))
            .json(&json!({ "token": token, "password": password }))
            .send()
    };
    assert_eq!(accept("short").await.unwrap().status(), 422);
    assert_eq!(accept(PASSWORD).await.unwrap().status(), 200);
    assert_eq!(accept(PASSWORD).await.unwrap().status(), 400, "used once");
    let tokens = tokens_of(&app, "olga@example.com", PASSWORD).await;
    let me: Value = as_user(&app, reqwest::Method::GET, "/auth/me", &tokens, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["roles"], json!(["operator"]));
    // An accepted invitation is not sent again.
    let res = app
        .post_json(&format!("/users/{}/invitation", id(&olga)), &json!({}))
        .await;
    assert_eq!(res.status(), 409);
    app.stop().await;
}

async fn erasure_leaves_a_tombstone_and_no_personal_data(backend: Backend) {
    // No worker role: the account's events and mails wait in the outbox. Redis as the shared
    // cache: its copy must go too.
    let app = spawn_app_with(backend, |s| {
        s.cache.redis_url = Some(keel_config::Secret::new(
            keel_test_support::services::redis_url(),
        ));
    })
    .await;
    let ada = sign_up(&app, "ada@example.com").await;
    let bo = sign_up(&app, "bo@example.com").await;
    let tokens = tokens_of(&app, "ada@example.com", PASSWORD).await;
    let path = format!("/users/{}", id(&ada));
    // Read once so that the cache holds a copy.
    assert_eq!(app.get(&path).await.status(), 200);
    let export = as_user(
        &app,
        reqwest::Method::GET,
        &format!("{path}/data"),
        &tokens,
        None,
    )
    .await;
    assert_eq!(export.status(), 200);
    assert!(
        export.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    let export: Value = export.json().await.unwrap();
    assert_eq!(export["account"]["user"]["email"], "ada@example.com");
    assert!(!export["account"]["events"].as_array().unwrap().is_empty());

    let res = as_user(&app, reqwest::Method::DELETE, &path, &tokens, None).await;
    assert_eq!(res.status(), 204);
    assert_eq!(app.get(&path).await.status(), 404, "no cached copy either");
    let res = app
        .client
        .post(app.url("/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let db = keel::database::Database::open(&app.settings).await.unwrap();
    let events = db.events();
    let pending = events.outbox_pending(100).await.unwrap();
    let left: Vec<&str> = pending
        .iter()
        .filter(|r| r.message.key.as_deref() == Some(id(&ada)))
        .map(|r| r.topic.as_str())
        .collect();
    assert_eq!(
        left,
        ["user.deleted"],
        "only the deletion is still to be told"
    );
    assert!(
        pending
            .iter()
            .any(|r| r.message.key.as_deref() == Some(id(&bo))),
        "other accounts' events stay"
    );
    assert!(
        db.identity()
            .credentials(id(&ada).parse().unwrap())
            .await
            .unwrap()
            .is_none()
    );
    // The tombstone: who was erased, when, by whom; nothing personal.
    let audit: Value = app
        .get(&format!(
            "/auth/audit?action=account_erased&subject={}",
            id(&ada)
        ))
        .await
        .json()
        .await
        .unwrap();
    let tombstone = &audit["events"][0];
    assert_eq!(tombstone["actor"], id(&ada));
    assert!(!tombstone.to_string().contains("ada@example.com"));
    app.stop().await;
}

async fn mfa_required_for_a_role_withholds_it_until_enrolled(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.identity.mfa_required_roles = vec!["operator".into()];
    })
    .await;
    let op = sign_up(&app, "op@example.com").await;
    grant(&app, &op, &["operator"]).await;
    let tokens = tokens_of(&app, "op@example.com", PASSWORD).await;
    let me: Value = as_user(&app, reqwest::Method::GET, "/auth/me", &tokens, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["roles"], json!([]));
    assert_eq!(me["mfa_setup_required"], true);
    let res = as_user(&app, reqwest::Method::GET, "/admin/hospital", &tokens, None).await;
    assert_eq!(res.status(), 403, "no role before the second factor");

    let enrolment: Value = as_user(&app, reqwest::Method::POST, "/auth/totp", &tokens, None)
        .await
        .json()
        .await
        .unwrap();
    assert!(enrolment["qr_svg"].as_str().unwrap().contains("<svg"));
    let totp = Totp::new(TotpSecret::from_base32(enrolment["secret"].as_str().unwrap()).unwrap());
    let now = || u64::try_from(chrono::Utc::now().timestamp()).unwrap();
    let res = as_user(
        &app,
        reqwest::Method::POST,
        "/auth/totp/confirm",
        &tokens,
        Some(&json!({"code": totp.code_at(now())})),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .post(app.url("/auth/login"))
        .json(&json!({"email": "op@example.com", "password": PASSWORD, "second_factor": totp.code_at(now() + 30)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    let res = as_user(&app, reqwest::Method::GET, "/admin/hospital", &tokens, None).await;
    assert_eq!(res.status(), 200, "the role applies with the second factor");
    app.stop().await;
}

async fn expired_passwords_and_dormant_accounts(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.identity.password_max_age_days = 90;
        s.identity.dormant_after_days = 180;
    })
    .await;
    let store = identity_store(&app).await;
    let day = 86_400;
    let now = chrono::Utc::now().timestamp();
    let age = async |user: &Value, changed_days_ago: i64, login_days_ago: i64| {
        let mut credentials = store
            .credentials(id(user).parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        credentials.password_changed_at = Some(now - changed_days_ago * day);
        credentials.last_login_at = Some(now - login_days_ago * day);
        credentials.version += 1;
        store.put_credentials(&credentials).await.unwrap();
    };
    let login = |email: &'static str| {
        app.client
            .post(app.url("/auth/login"))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
    };
    let ada = sign_up(&app, "ada@example.com").await;
    age(&ada, 91, 1).await;
    let res = login("ada@example.com").await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "password_expired"
    );

    // Last signed in half a year ago.
    let bo = sign_up(&app, "bo@example.com").await;
    age(&bo, 10, 181).await;
    let res = login("bo@example.com").await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "invalid_credentials"
    );
    let audit: Value = app
        .get(&format!(
            "/auth/audit?action=account_disabled&subject={}",
            id(&bo)
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["events"][0]["detail"]["reason"], "dormant");
    assert_eq!(audit["events"][0]["actor"], "system");
    // An admin brings it back (enabling counts as activity).
    let res = app
        .post_json(&format!("/auth/accounts/{}/enable", id(&bo)), &json!({}))
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(login("bo@example.com").await.unwrap().status(), 200);
    app.stop().await;
}
