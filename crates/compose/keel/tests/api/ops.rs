//! Operations endpoints, request ids, error shapes, and coherence across two instances.

use std::time::Duration;

use serde_json::{Value, json};

use crate::api::helpers::{
    Backend, base_settings, fresh_database, spawn_app, spawn_app_with, spawn_with_settings,
};

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app(Backend::Sqlite).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"status": "ready", "checks": {"database": "ok"}})
    );

    let user = app.create_user("Metered").await;
    app.get(&format!("/users/{}", user["id"].as_str().unwrap()))
        .await;
    app.get(&format!("/users/{}", user["id"].as_str().unwrap()))
        .await;
    let text = app.get("/metrics").await.text().await.unwrap();
    for needle in [
        "keel_cache_hits_total{resource=\"users\"} 1",
        "keel_cache_misses_total{resource=\"users\"} 1",
        "keel_cache_loads_total{resource=\"users\"} 1",
        "keel_cache_evictions_total{resource=\"users\"}",
        "keel_cache_writeback_backlog{resource=\"users\"} 0",
        "keel_cache_writeback_flush_lag_seconds{resource=\"users\"}",
        "keel_http_requests_total{method=\"GET\",route=\"/users/{id}\",status=\"200\"}",
        "keel_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn readiness_reports_an_unreachable_database() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.database.url = Some(keel_config::Secret::new(
            "postgres://postgres@127.0.0.1:1/nowhere",
        ));
        s.database.migrate_on_start = false;
        s.database.acquire_timeout_ms = 300;
    })
    .await;
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "alive even when the database is not"
    );
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "unready");
    assert!(
        body["checks"]["database"]
            .as_str()
            .unwrap()
            .starts_with("error")
    );
    // The IdP cannot load its keys either: a signed-in request is told to come back.
    let res = app
        .client
        .get(app.url(&format!("/users/{}", uuid::Uuid::now_v7())))
        .bearer_auth("a.b.c")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        503,
        "an unreachable database is unavailable, not an internal error"
    );
    assert_eq!(res.headers()["retry-after"], "1");
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_a_sane_given_one() {
    let app = spawn_app(Backend::Sqlite).await;
    let made = app.get("/healthz").await.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let again = app.get("/healthz").await.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!made.is_empty());
    assert_ne!(made, again);
    let res = app
        .client
        .get(app.url("/nope"))
        .header("x-request-id", "trace-123.a")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-123.a");
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "not_found");
    let res = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"], "bad id with spaces");
    let res = app.client.patch(app.url("/users")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_internal_error_returns_only_an_error_id() {
    let app = spawn_app(Backend::Sqlite).await;
    // A row the domain cannot accept: the read fails inside the server.
    let url = app.settings.database_url();
    let pool = sqlx::SqlitePool::connect(url.expose()).await.unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    sqlx::query("INSERT INTO users VALUES (?, 'Broken', 'no-at-sign', 'x', 'x', 1)")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    let res = app.get(&format!("/users/{id}")).await;
    assert_eq!(res.status(), 500);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "internal error");
    assert_eq!(body["code"], "internal");
    assert_eq!(body["error_id"].as_str().unwrap().len(), 32);
    assert_eq!(
        body.as_object().unwrap().len(),
        3,
        "nothing but the error, code and id: {body}"
    );
    app.stop().await;
}

#[tokio::test]
async fn openapi_and_docs_are_served_and_the_docs_need_no_internet() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/users",
        "/users/{id}",
        "/users/{id}/data",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    assert!(doc["components"]["schemas"].get("User").is_some());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let html = app.get("/docs").await.text().await.unwrap();
    assert!(html.contains("/openapi.json"));
    for external in ["http://", "https://", "//cdn"] {
        assert!(
            !html.contains(external),
            "the docs page must not load {external} assets"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn two_instances_sharing_postgres_and_redis_never_serve_a_stale_user() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(Backend::Postgres, dir.path()).await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let instance_dir = tempfile::tempdir().unwrap();
        let mut settings = base_settings(instance_dir.path(), url.clone());
        settings.cache.redis_url = Some(keel_config::Secret::new(
            keel_test_support::services::redis_url(),
        ));
        // Instances of one deployment share the IdP's secrets (README, Identity).
        settings.identity.secret = Some(keel_config::Secret::new(
            "c2hhcmVkIGJ5IGV2ZXJ5IGluc3RhbmNlIG9mIHRoZSB0ZXN0IQ==",
        ));
        settings.identity.data_keys = Some(keel_config::Secret::new(
            "k1:a2VlbCB0ZXN0IGRhdGEga2V5IG9mIDMyIGJ5dGVzISE=",
        ));
        apps.push(spawn_with_settings(settings, instance_dir).await);
    }
    let b = apps.pop().unwrap();
    let a = apps.pop().unwrap();
    // Let both invalidation subscriptions come up (until then L1 is bypassed, which is also safe).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let user = a.create_user("Shared").await;
    let id = user["id"].as_str().unwrap();
    let email = user["email"].clone();
    for round in 0..30 {
        assert_eq!(b.get(&format!("/users/{id}")).await.status(), 200);
        let name = format!("Round {round}");
        let res = a
            .put_json(
                &format!("/users/{id}"),
                &json!({"name": name, "email": email}),
            )
            .await;
        assert_eq!(res.status(), 200);
        let seen: Value = b.get(&format!("/users/{id}")).await.json().await.unwrap();
        assert_eq!(
            seen["name"],
            name.as_str(),
            "instance B served a stale user in round {round}"
        );
    }
    assert_eq!(a.delete(&format!("/users/{id}")).await.status(), 204);
    assert_eq!(b.get(&format!("/users/{id}")).await.status(), 404);
    let metrics = b.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("keel_cache_invalidations_received_total{resource=\"users\"} 0\n"),
        "{metrics}"
    );
    a.stop().await;
    b.stop().await;
}

/// A private Redis server on a free port, so a test can stop it without touching the shared one.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        // Owned from here on: Drop stops it whatever happens next.
        let redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("private redis did not start");
    }

    fn stop(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn when_redis_goes_down_readiness_says_so_and_requests_fall_back_to_the_database() {
    let mut redis = PrivateRedis::start();
    let redis_url = redis.url.clone();
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.cache.redis_url = Some(keel_config::Secret::new(redis_url));
    })
    .await;
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
    let user = app.create_user("Resilient").await;
    let id = user["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/users/{id}")).await.status(), 200);

    redis.stop();
    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 503);
    let ready: Value = res.json().await.unwrap();
    assert!(
        ready["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("error"),
        "{ready}"
    );
    assert_eq!(ready["checks"]["database"], "ok");

    // Reads and writes still work, from and to the database.
    let read: Value = app.get(&format!("/users/{id}")).await.json().await.unwrap();
    assert_eq!(read, user);
    let res = app
        .put_json(
            &format!("/users/{id}"),
            &json!({"name": "Still here", "email": user["email"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let read: Value = app.get(&format!("/users/{id}")).await.json().await.unwrap();
    assert_eq!(
        read["name"], "Still here",
        "no stale read while Redis is down"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("keel_cache_l2_errors_total{resource=\"users\"} 0\n"),
        "Redis failures are counted"
    );
    app.stop().await;
}
