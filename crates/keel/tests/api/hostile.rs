//! Hostile and malformed input: every refusal is keel's JSON error (`error` and `code`, the
//! parameter named where there is one), never the framework's plain text; body framing errors
//! are told apart from bodies that are too large; transfer codings keel cannot undo get 501.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with, spawn_up_with};
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

on_every_backend!(
    duplicate_query_parameters_are_a_json_400_naming_the_parameter,
    malformed_token_requests_get_an_oauth_json_400,
    a_malformed_chunked_body_is_a_400_and_a_long_one_413,
    transfer_codings_before_chunked_get_501_and_a_final_other_coding_400,
    every_kind_of_malformed_request_gets_keels_json_error,
);
