//! The error hospital as the configuration turns it on: the console behind the API's guard,
//! open to operators and admins of the IdP (bearer token or the sign-in page's session), and
//! webhook notices sent by the worker role.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_domain::Outgoing;
use serde_json::Value;

use crate::api::auth::{PASSWORD, grant, sign_up, tokens_of};
use crate::api::helpers::{Backend, TestApp, spawn_app_with, spawn_up_with};

#[tokio::test]
async fn the_console_is_for_operators_and_admins_signed_in_with_the_idp() {
    let off = spawn_app_with(Backend::Sqlite, |s| s.hospital.console = false).await;
    assert_eq!(off.get("/admin/hospital").await.status(), 404);
    off.stop().await;

    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    // No credentials: a JSON client gets 401, a browser the sign-in page.
    let anonymous = app.anonymous_get("/admin/hospital").await;
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers().contains_key("x-request-id"),
        "behind the API middleware"
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = browser
        .get(app.url("/admin/hospital?state=waiting"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        "/signin?return_to=%2Fadmin%2Fhospital%3Fstate%3Dwaiting"
    );

    // A plain account is refused; operators and admins get in.
    let user = sign_up(&app, "user@example.com").await;
    let operator = sign_up(&app, "operator@example.com").await;
    grant(&app, &operator, &["operator"]).await;
    let plain = tokens_of(&app, "user@example.com", PASSWORD).await;
    let res = with_token(&app, "/admin/hospital", &plain).await;
    assert_eq!(res.status(), 403);
    let op = tokens_of(&app, "operator@example.com", PASSWORD).await;
    let res = with_token(&app, "/admin/hospital", &op).await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(
        page.contains(operator["id"].as_str().unwrap()),
        "signed in as the operator"
    );
    assert_eq!(app.get("/admin/hospital").await.status(), 200, "admin");
    // An operator may not read other accounts.
    let res = with_token(
        &app,
        &format!("/users/{}", user["id"].as_str().unwrap()),
        &op,
    )
    .await;
    assert_eq!(res.status(), 403);

    // The browser way: the sign-in page's session cookie opens the console.
    let cookie = browser_session(&app, "operator@example.com", "/admin/hospital").await;
    let res = browser
        .get(app.url("/admin/hospital"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The same cookie opens no JSON route: those have no CSRF defence.
    let res = browser
        .get(app.url(&format!("/users/{}", operator["id"].as_str().unwrap())))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    app.stop().await;
}

async fn with_token(app: &TestApp, path: &str, tokens: &Value) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
}

/// Signs in through the `/signin` form as a browser would; returns the `Cookie` header value
/// of the browser session (and its CSRF cookie).
pub(super) async fn browser_session(app: &TestApp, email: &str, return_to: &str) -> String {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = browser.get(app.url("/signin")).send().await.unwrap();
    let csrf_cookie = set_cookie(&page, "keel_csrf").expect("a CSRF cookie");
    let html = page.text().await.unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form's CSRF token")
        .to_owned();
    let res = browser
        .post(app.url("/signin"))
        .header("cookie", format!("keel_csrf={csrf_cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={}&return_to={}&email={}&password={}",
            keel_credentials::percent_encode(&token),
            keel_credentials::percent_encode(return_to),
            keel_credentials::percent_encode(email),
            keel_credentials::percent_encode(PASSWORD),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        303,
        "{}",
        res.text().await.unwrap_or_default()
    );
    assert_eq!(res.headers()["location"], return_to);
    let session = set_cookie(&res, "keel_session").expect("a session cookie");
    let attributes = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("keel_session="))
        .unwrap();
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(attributes.contains(flag), "{attributes}");
    }
    assert!(
        !attributes.contains("Secure"),
        "plain http here: {attributes}"
    );
    format!("keel_csrf={csrf_cookie}; keel_session={session}")
}

fn set_cookie(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

#[tokio::test]
async fn the_old_admin_password_setting_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::api::helpers::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut settings = crate::api::helpers::base_settings(dir.path(), url);
    settings.hospital.admin_password = Some(keel_config::Secret::new("a long old password"));
    let err = keel::Application::build(settings, None)
        .await
        .err()
        .expect("the removed setting is refused");
    assert!(format!("{err:#}").contains("keel admin create"), "{err:#}");
}

/// A local webhook receiver: every JSON body posted to it.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(body);
                    "ok"
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn the_worker_role_posts_a_notice_when_a_message_is_admitted() {
    let (webhook, seen) = receiver().await;
    let app = spawn_up_with(Backend::Sqlite, |s| {
        s.hospital.webhook_url = Some(keel_config::Secret::new(webhook));
    })
    .await;
    // A job message naming no job: the jobs handler refuses it for good.
    let queue = keel::queue::Queue::open(&app.settings).await.unwrap();
    queue
        .broker
        .publish("job.user.export", Outgoing::new(b"not a job id".to_vec()))
        .await
        .unwrap();
    let mut notice = None;
    for _ in 0..100 {
        notice = seen
            .lock()
            .unwrap()
            .iter()
            .find(|n| n["kind"] == "admission")
            .cloned();
        if notice.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let notice = notice.expect("an admission notice reaches the webhook");
    assert_eq!(
        (notice["group"].as_str(), notice["reason"].as_str()),
        (Some("jobs"), Some("permanent"))
    );
    assert!(
        notice["last_error"].as_str().unwrap().contains("job id"),
        "{notice}"
    );
    app.stop().await;
}

#[tokio::test]
async fn browser_cookies_are_secure_behind_an_https_issuer() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.identity.issuer = Some("https://keel.example".into());
    })
    .await;
    let page = app.anonymous_get("/signin").await;
    let csrf = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("keel_csrf="))
        .expect("a CSRF cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(csrf.contains(flag), "{csrf}");
    }
    app.stop().await;
}
