//! Fire-and-forget jobs and the events behind them, through the real API and worker role.

use std::time::Duration;

use keel_domain::EventStore;
use serde_json::{Value, json};

use crate::api::helpers::{Backend, TestApp, spawn_app_with, spawn_up_with};
use crate::on_every_backend;

/// Polls `GET /jobs/{id}` until the job is final.
async fn wait_for_job(app: &TestApp, status_url: &str) -> Value {
    for _ in 0..200 {
        let job: Value = app.get(status_url).await.json().await.unwrap();
        if ["succeeded", "failed", "expired"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job at {status_url} did not finish");
}

async fn an_export_is_accepted_at_once_and_its_result_polled(backend: Backend) {
    let app = spawn_up_with(backend, |_| {}).await;
    let user = app.create_user("Ada").await;
    let id = user["id"].as_str().unwrap();
    let renamed = app
        .put_json(
            &format!("/users/{id}"),
            &json!({"name": "Ada King", "email": user["email"]}),
        )
        .await;
    assert_eq!(renamed.status(), 200);

    let res = app
        .post_json(&format!("/users/{id}/export"), &json!({}))
        .await;
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = res.json().await.unwrap();
    assert_eq!(accepted["state"], "queued");
    assert_eq!(accepted["status_url"], location.as_str());

    let job = wait_for_job(&app, &location).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["kind"], "user.export");
    assert_eq!(job["result"]["user"]["name"], "Ada King");
    // The audit subscriber saw both events before the export ran (same key order is not
    // promised across groups, so wait for it if needed).
    let mut audit = job["result"]["audit"].as_array().unwrap().len();
    for _ in 0..50 {
        if audit == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = app
            .post_json(&format!("/users/{id}/export"), &json!({}))
            .await;
        let url = again.headers()["location"].to_str().unwrap().to_owned();
        audit = wait_for_job(&app, &url).await["result"]["audit"]
            .as_array()
            .unwrap()
            .len();
    }
    assert_eq!(audit, 2, "user.created and user.updated each audited once");
    app.stop().await;
}

async fn unknown_jobs_and_users_are_not_found(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    for path in [
        "/jobs/not-a-uuid",
        &format!("/jobs/{}", uuid::Uuid::now_v7()),
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 404);
        assert_eq!(res.json::<Value>().await.unwrap()["error"], "Job not found");
    }
    let res = app
        .post_json(
            &format!("/users/{}/export", uuid::Uuid::now_v7()),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 404);
    app.stop().await;
}

async fn a_full_outbox_refuses_writes_with_retry_after(backend: Backend) {
    // No worker role: nothing relays, so the outbox only grows.
    let app = spawn_app_with(backend, |s| s.queue.max_outbox = 3).await;
    for n in 0..3 {
        app.create_user(&format!("u{n}")).await;
    }
    let mut refused = None;
    for _ in 0..60 {
        let res = app
            .post_json("/users", &json!({"name": "more", "email": format!("{}@x.io", uuid::Uuid::new_v4().simple())}))
            .await;
        if res.status() == 503 {
            refused = Some(res);
            break;
        }
        assert_eq!(res.status(), 201);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("writes are refused once the outbox is full");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("events"), "{body}");
    app.stop().await;
}

on_every_backend!(
    an_export_is_accepted_at_once_and_its_result_polled,
    unknown_jobs_and_users_are_not_found,
    a_full_outbox_refuses_writes_with_retry_after,
);

#[tokio::test]
async fn the_request_trace_travels_into_the_event_headers() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let res = app
        .admin
        .post(app.url("/users"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&json!({"name": "Traced", "email": "traced@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let user: Value = res.json().await.unwrap();
    let id = user["id"].as_str().unwrap();
    let url = app.settings.database_url();
    let store = keel_sql_sqlite::SqliteStore::connect(
        url.expose(),
        &keel_sql_sqlite::PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    // The user's event (its invitation mail travels beside it).
    let pending: Vec<_> = store
        .outbox_pending(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.topic == "user.created" && r.message.key.as_deref() == Some(id))
        .collect();
    assert_eq!(pending.len(), 1);
    let parent = &pending[0].message.headers["traceparent"];
    assert!(
        parent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{parent}"
    );
    assert_ne!(
        parent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "a span of its own"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_job_not_started_within_its_ttl_is_reported_expired() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.queue.job_ttl_secs = 1).await;
    let user = app.create_user("Late").await;
    let res = app
        .post_json(
            &format!("/users/{}/export", user["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        app.get(&location).await.json::<Value>().await.unwrap()["state"],
        "queued"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.get(&location).await.json::<Value>().await.unwrap()["state"],
        "expired"
    );
    app.stop().await;
}
