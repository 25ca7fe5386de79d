//! Hostile and malformed input: every refusal is keel's JSON error (`error` and `code`, the
//! parameter named where there is one), never the framework's plain text; body framing errors
//! are told apart from bodies that are too large; transfer codings keel cannot undo get 501.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::auth::{PASSWORD, sign_up, tokens_of};
use crate::api::helpers::{
    Backend, TestApp, base_settings, fresh_database, spawn_app, spawn_app_with, spawn_up_with,
    spawn_with_settings,
};
use crate::on_every_backend;

/// Asserts that `res` is keel's JSON error with `status` and `code`, and returns its body.
async fn assert_json_error(res: reqwest::Response, status: u16, code: &str, what: &str) -> Value {
    assert_eq!(res.status(), status, "{what}");
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    let text = res.text().await.unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: {content_type} {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body["error"].is_string(), "{what}: {body}");
    assert_eq!(body["code"], code, "{what}: {body}");
    body
}

/// A raw HTTP/1.1 exchange: `request` as given, then the reply until the server closes (every
/// request here says `Connection: close` or is refused with a close).
async fn raw(app: &TestApp, request: &str) -> (u16, String, String) {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("the server answers and closes")
        .ok();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn assert_raw_json(reply: &(u16, String, String), status: u16, code: &str, what: &str) {
    let (got, head, body) = reply;
    assert_eq!(*got, status, "{what}: {head}\n{body}");
    assert!(
        head.contains("content-type: application/json"),
        "{what}: {head}"
    );
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: {body}"));
    assert_eq!(body["code"], code, "{what}: {body}");
}

async fn duplicate_query_parameters_are_a_json_400_naming_the_parameter(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.admin_id.clone().unwrap();
    for (path, name) in [
        ("/users?limit=1&limit=2", "limit"),
        ("/users?cursor=a&limit=5&cursor=b", "cursor"),
        ("/auth/audit?limit=1&limit=2", "limit"),
        ("/auth/audit?action=a&action=b", "action"),
        (
            &format!("/auth/dev/mailbox?user={user}&user={user}") as &str,
            "user",
        ),
        ("/admin/hospital?state=waiting&state=parked", "state"),
        ("/signin?return_to=%2Fa&return_to=%2Fb", "return_to"),
        ("/auth/verify-email?token=a&token=b", "token"),
    ] {
        // The hospital console's extractors are the framework's: its refusal is turned into
        // keel's shape by the API's middleware, with the framework's text, which names the field.
        let hospital = path.starts_with("/admin/");
        let code = if hospital {
            "bad_request"
        } else {
            "duplicate_parameter"
        };
        let body = assert_json_error(app.get(path).await, 400, code, path).await;
        if !hospital {
            assert_eq!(body["field"], name, "{path}: {body}");
        }
        assert!(
            body["error"].as_str().unwrap().contains(name),
            "{path}: {body}"
        );
    }
    // One of each is still fine.
    assert_eq!(app.get("/users?limit=1&cursor=").await.status(), 200);
    app.stop().await;
}

async fn malformed_token_requests_get_an_oauth_json_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let form = "application/x-www-form-urlencoded";
    for (what, content_type, body) in [
        (
            "a JSON body",
            "application/json",
            r#"{"grant_type":"refresh_token"}"#,
        ),
        ("no content type", "", "grant_type=refresh_token"),
        (
            "a repeated grant_type",
            form,
            "grant_type=refresh_token&grant_type=authorization_code&client_id=x",
        ),
        (
            "a repeated client_id",
            form,
            "grant_type=refresh_token&client_id=x&client_id=y",
        ),
        (
            "a repeated parameter the endpoint ignores",
            form,
            "grant_type=refresh_token&client_id=x&scope=a&scope=b",
        ),
    ] {
        let mut req = app.client.post(app.url("/oauth/token")).body(body);
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 400, "{what}");
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{what}"
        );
        assert_eq!(res.headers()["cache-control"], "no-store", "{what}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{what}: {body}");
        assert!(body["error_description"].is_string(), "{what}: {body}");
    }
    app.stop().await;
}

async fn a_malformed_chunked_body_is_a_400_and_a_long_one_413(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.server.body_limit_bytes = 1024).await;
    let chunked = |path: &str, content_type: &str, chunks: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
        )
    };
    let long = format!(
        "800\r\n{}\r\n800\r\n{}\r\n0\r\n\r\n",
        "a".repeat(2048),
        "b".repeat(2048)
    );
    for (path, content_type) in [
        ("/auth/login", "application/json"),
        ("/oauth/token", "application/x-www-form-urlencoded"),
        ("/signin", "application/x-www-form-urlencoded"),
    ] {
        // A chunk size that is not hexadecimal: the framing is broken, not the size.
        let reply = raw(
            &app,
            &chunked(path, content_type, "zz\r\nhello\r\n0\r\n\r\n"),
        )
        .await;
        let oauth = path == "/oauth/token";
        if oauth {
            assert_eq!(reply.0, 400, "{path}: {reply:?}");
            assert!(reply.2.contains("invalid_request"), "{path}: {reply:?}");
        } else {
            assert_raw_json(&reply, 400, "malformed_body", path);
        }
        // A body longer than the limit, sent in chunks (no length announced).
        let reply = raw(&app, &chunked(path, content_type, &long)).await;
        if oauth {
            assert_eq!(reply.0, 413, "{path}: {reply:?}");
            assert!(reply.2.contains("invalid_request"), "{path}: {reply:?}");
        } else {
            assert_raw_json(&reply, 413, "payload_too_large", path);
        }
    }
    app.stop().await;
}

/// `keel serve` (the bare API) and `keel up` (through the in-process gateway) answer alike.
async fn transfer_codings_before_chunked_get_501_and_a_final_other_coding_400(backend: Backend) {
    let serve = spawn_app(backend).await;
    let up = spawn_up_with(backend, |_| {}).await;
    for app in [&serve, &up] {
        let request = |te: &str| {
            format!(
                "POST /auth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: {te}\r\n\r\n\
                 2\r\n{{}}\r\n0\r\n\r\n"
            )
        };
        for te in ["gzip, chunked", "deflate,chunked", "chunked, chunked"] {
            let reply = raw(app, &request(te)).await;
            assert_raw_json(&reply, 501, "unsupported_transfer_coding", te);
        }
        // A final coding other than `chunked` leaves the body's length unknown: RFC 9112 §6.3
        // requires 400 and a close, which the HTTP parser answers before keel sees the request.
        let (status, _, _) = raw(app, &request("gzip")).await;
        assert_eq!(status, 400, "gzip alone");
        // `chunked` alone is read.
        let (status, _, _) = raw(app, &request("chunked")).await;
        assert_eq!(status, 422, "chunked alone reaches the handler");
    }
    serve.stop().await;
    up.stop().await;
}

async fn every_kind_of_malformed_request_gets_keels_json_error(backend: Backend) {
    let app = spawn_app(backend).await;
    let form = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        // Routing.
        (
            "no such route",
            app.admin.get(app.url("/nowhere")),
            404,
            "not_found",
        ),
        (
            "method not allowed",
            app.admin.patch(app.url("/users")),
            405,
            "method_not_allowed",
        ),
        (
            "hospital method not allowed",
            app.admin.delete(app.url("/admin/hospital")),
            405,
            "method_not_allowed",
        ),
        // Path parameters.
        (
            "path not UTF-8",
            app.admin.get(app.url("/users/%FF%FE")),
            400,
            "invalid_path",
        ),
        (
            "job path not UTF-8",
            app.admin.get(app.url("/jobs/%FF")),
            400,
            "invalid_path",
        ),
        (
            "hospital path not a number",
            app.admin.get(app.url("/admin/hospital/patients/abc")),
            400,
            "bad_request",
        ),
        // Query strings.
        (
            "query value of the wrong type",
            app.admin.get(app.url("/auth/audit?before=yesterday")),
            400,
            "invalid_parameter",
        ),
        // Form bodies.
        (
            "form as JSON",
            app.client
                .post(app.url("/signin"))
                .json(&json!({"email": "a"})),
            415,
            "unsupported_media_type",
        ),
        (
            "form field repeated",
            app.client
                .post(app.url("/signin"))
                .header("content-type", form)
                .body("email=a&email=b&password=p&csrf=c"),
            400,
            "duplicate_parameter",
        ),
        (
            "hospital form as JSON",
            app.admin
                .post(app.url("/admin/hospital/patients/1/discard"))
                .json(&json!({})),
            415,
            "unsupported_media_type",
        ),
        // JSON bodies.
        (
            "JSON as a form",
            app.admin
                .post(app.url("/users"))
                .header("content-type", form)
                .body("name=a"),
            415,
            "unsupported_media_type",
        ),
        (
            "JSON malformed",
            app.admin
                .post(app.url("/users"))
                .header("content-type", "application/json")
                .body("{"),
            400,
            "malformed_json",
        ),
    ];
    for (what, req, status, code) in cases {
        assert_json_error(req.send().await.unwrap(), status, code, what).await;
    }
    app.stop().await;
}

async fn spellings_of_a_registered_mailbox_are_refused_as_duplicates(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = sign_up(&app, "ada@example.com").await;
    let jose = sign_up(&app, "jos\u{e9}@example.com").await;
    assert_eq!(jose["email"], "jos\u{e9}@example.com");
    for spelling in [
        "\u{ff41}\u{ff44}\u{ff41}@example.com",
        "ada@\u{ff45}\u{ff58}\u{ff41}\u{ff4d}\u{ff50}\u{ff4c}\u{ff45}.com",
        "jose\u{301}@example.com",
        "ADA@Example.COM",
    ] {
        // An anonymous sign-up, and an admin's creation.
        for (client, path, body) in [
            (
                &app.client,
                "/auth/signup",
                json!({"name": "Eve", "email": spelling, "password": PASSWORD}),
            ),
            (
                &app.admin,
                "/users",
                json!({"name": "Eve", "email": spelling}),
            ),
        ] {
            let res = client.post(app.url(path)).json(&body).send().await.unwrap();
            let body = assert_json_error(res, 409, "conflict", spelling).await;
            assert_eq!(body["field"], "email", "{spelling}: {body}");
        }
    }
    // Changing an address to another spelling of a taken one is refused too.
    let other = app.create_user("Other").await;
    let res = app
        .put_json(
            &format!("/users/{}", other["id"].as_str().unwrap()),
            &json!({"name": "Other", "email": "jose\u{301}@EXAMPLE.com"}),
        )
        .await;
    assert_json_error(res, 409, "conflict", "update").await;
    // Any spelling of the address signs its owner in.
    let tokens = tokens_of(&app, "\u{ff41}\u{ff44}\u{ff41}@example.com", PASSWORD).await;
    let me = app
        .client
        .get(app.url("/auth/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["user"]["id"], ada["id"]);
    app.stop().await;
}

/// The id of the account `tokens` were issued to, as `/auth/me` says.
async fn who(app: &TestApp, tokens: Value) -> Value {
    let me = app
        .client
        .get(app.url("/auth/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "{tokens}");
    me.json::<Value>().await.unwrap()["user"]["id"].clone()
}

/// Runs `statement` on the test's database, as an operator's SQL client would.
async fn execute(backend: Backend, url: &str, statement: &str) {
    let statement = sqlx::AssertSqlSafe(statement.to_owned());
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query(statement).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(statement).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::MariaDb => {
            let pool = sqlx::MySqlPool::connect(url).await.unwrap();
            sqlx::query(statement).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

/// Every stored address, sorted.
async fn stored_emails(backend: Backend, url: &str) -> Vec<String> {
    let select = "SELECT email FROM users ORDER BY email";
    let mut emails: Vec<String> = match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query_scalar(select).fetch_all(&pool).await.unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query_scalar(select).fetch_all(&pool).await.unwrap()
        }
        Backend::MariaDb => {
            let pool = sqlx::MySqlPool::connect(url).await.unwrap();
            sqlx::query_scalar(select).fetch_all(&pool).await.unwrap()
        }
    };
    emails.sort();
    emails
}

async fn addresses_stored_before_normalisation_are_rewritten_and_collisions_kept(backend: Backend) {
    // One database and one data directory (the signing keys) for two runs of keel.
    let db_dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, db_dir.path()).await;
    let mut settings = base_settings(db_dir.path(), url.clone());
    // The same issuer for both runs, so that tokens from the first hold on the second.
    settings.identity.issuer = Some("http://keel.test".to_owned());
    let first = spawn_with_settings(settings.clone(), tempfile::tempdir().unwrap()).await;
    let ada = sign_up(&first, "ada@example.com").await;
    let twin = sign_up(&first, "twin@example.com").await;
    let jose = sign_up(&first, "jose@example.com").await;
    let carl = sign_up(&first, "carl@example.com").await;
    let karl = sign_up(&first, "karl@example.com").await;
    let twin_tokens = tokens_of(&first, "twin@example.com", PASSWORD).await;
    let karl_tokens = tokens_of(&first, "karl@example.com", PASSWORD).await;
    first.stop().await;

    // Rows as keel stored them before it normalised addresses (it only lower-cased them).
    let fullwidth_ada = "\u{ff41}\u{ff44}\u{ff41}@example.com";
    let decomposed = "jose\u{301}@example.com";
    let fullwidth_domain = "carl@\u{ff45}\u{ff58}\u{ff41}\u{ff4d}\u{ff50}\u{ff4c}\u{ff45}.com";
    let fullwidth_carl = "\u{ff43}\u{ff41}\u{ff52}\u{ff4c}@example.com";
    for (now, before) in [
        ("twin@example.com", fullwidth_ada),
        ("jose@example.com", decomposed),
        ("carl@example.com", fullwidth_domain),
        ("karl@example.com", fullwidth_carl),
    ] {
        execute(
            backend,
            &url,
            &format!("UPDATE users SET email = '{before}' WHERE email = '{now}'"),
        )
        .await;
    }

    let second = spawn_with_settings(settings, tempfile::tempdir().unwrap()).await;
    let mut expected = vec![
        "ada@example.com".to_owned(),
        fullwidth_ada.to_owned(),
        "jos\u{e9}@example.com".to_owned(),
        "carl@example.com".to_owned(),
        fullwidth_carl.to_owned(),
    ];
    let mut stored = stored_emails(backend, &url).await;
    stored.retain(|e| !e.starts_with("admin-"));
    expected.sort();
    assert_eq!(stored, expected, "rewritten, collisions left as stored");

    // The rewritten accounts sign in with any spelling, and no new account takes their address.
    let tokens = tokens_of(&second, "jos\u{e9}@example.com", PASSWORD).await;
    assert_eq!(who(&second, tokens).await, jose["id"]);
    let tokens = tokens_of(&second, decomposed, PASSWORD).await;
    assert_eq!(who(&second, tokens).await, jose["id"]);
    let tokens = tokens_of(&second, "carl@example.com", PASSWORD).await;
    assert_eq!(
        who(&second, tokens).await,
        carl["id"],
        "the older account keeps the address"
    );
    let tokens = tokens_of(&second, fullwidth_ada, PASSWORD).await;
    assert_eq!(
        who(&second, tokens).await,
        ada["id"],
        "the canonical row keeps the address"
    );
    for taken in [decomposed, "carl@example.com", fullwidth_ada] {
        let res = second
            .client
            .post(second.url("/auth/signup"))
            .json(&json!({"name": "Eve", "email": taken, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_json_error(res, 409, "conflict", taken).await;
    }

    // The account left with its old spelling still works, and an admin resolves the pair by
    // giving it another address.
    assert_eq!(who(&second, twin_tokens).await, twin["id"]);
    assert_eq!(who(&second, karl_tokens).await, karl["id"]);
    let res = second
        .put_json(
            &format!("/users/{}", twin["id"].as_str().unwrap()),
            &json!({"name": "Twin", "email": "twin@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let tokens = tokens_of(&second, "twin@example.com", PASSWORD).await;
    assert_eq!(who(&second, tokens).await, twin["id"]);
    second.stop().await;
}

on_every_backend!(
    addresses_stored_before_normalisation_are_rewritten_and_collisions_kept,
    spellings_of_a_registered_mailbox_are_refused_as_duplicates,
    duplicate_query_parameters_are_a_json_400_naming_the_parameter,
    malformed_token_requests_get_an_oauth_json_400,
    a_malformed_chunked_body_is_a_400_and_a_long_one_413,
    transfer_codings_before_chunked_get_501_and_a_final_other_coding_400,
    every_kind_of_malformed_request_gets_keels_json_error,
);
