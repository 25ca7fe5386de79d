//! The error hospital as the configuration turns it on: the console mounted behind the API's
//! middleware when an admin password is set, and webhook notices sent by the worker role.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_domain::Outgoing;
use serde_json::Value;

use crate::helpers::{Backend, spawn_app_with, spawn_up_with};

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn the_console_is_mounted_only_with_an_admin_password_and_asks_for_it() {
    let off = spawn_app_with(Backend::Sqlite, |_| {}).await;
    assert_eq!(off.get("/admin/hospital").await.status(), 404);
    off.stop().await;

    let on = spawn_app_with(Backend::Sqlite, |s| {
        s.hospital.admin_password = Some(keel_config::Secret::new(PASSWORD));
    })
    .await;
    let anonymous = on.get("/admin/hospital").await;
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers().contains_key("x-request-id"),
        "behind the API middleware"
    );
    let wrong = on
        .client
        .get(on.url("/admin/hospital"))
        .basic_auth("admin", Some("not the password"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let admin = on
        .client
        .get(on.url("/admin/hospital"))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert!(admin.text().await.unwrap().contains("hospital"));
    on.stop().await;
}

#[tokio::test]
async fn a_short_admin_password_is_refused_at_start_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::fresh_database(Backend::Sqlite, dir.path()).await;
    let mut settings = crate::helpers::base_settings(dir.path(), url);
    settings.hospital.admin_password = Some(keel_config::Secret::new("short"));
    let err = keel::Application::build(settings, None)
        .await
        .err()
        .expect("a short password is refused");
    assert!(
        format!("{err:#}").contains("hospital.admin_password"),
        "{err:#}"
    );
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
