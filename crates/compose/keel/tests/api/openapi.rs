//! `/openapi.json` against the API it describes: every route the router serves is an operation
//! and every operation a route; each states its true security requirement and the validators'
//! limits; and schemathesis (installed by `scripts/fuzz-deps.sh`) fuzzes every operation from
//! the document, anonymously and as an admin, finding no server error, no undocumented status
//! and no response off its schema.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use keel_api::policy::{Access, rule};
use serde_json::Value;

use crate::api::helpers::{Backend, spawn_app, spawn_app_with};
use crate::api::policy::routes_of;

/// `(method, path)` of every operation of the document.
fn operations_of(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|key| ["get", "post", "put", "delete", "patch"].contains(&key.as_str()))
                .map(|method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

#[tokio::test]
async fn every_route_is_an_operation_and_every_operation_a_route() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::api::helpers::fresh_database(Backend::Sqlite, dir.path()).await;
    let settings = crate::api::helpers::base_settings(dir.path(), url);
    let app = keel::Application::build(settings, None).await.unwrap();
    let routes = routes_of(app.router());
    let doc = serde_json::to_value(keel_api::openapi::document(&Default::default())).unwrap();
    let operations = operations_of(&doc);
    let undocumented: Vec<_> = routes.difference(&operations).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from /openapi.json: {undocumented:?}"
    );
    let stale: Vec<_> = operations.difference(&routes).collect();
    assert!(stale.is_empty(), "operations naming no route: {stale:?}");
}

#[tokio::test]
async fn each_operation_states_its_true_security_and_the_refusals_of_its_rule() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc: Value = app
        .anonymous_get("/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let mut protected = 0;
    for (method, path) in operations_of(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        let security = op["security"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} states no security requirement"));
        // `{}` in the list: callable without credentials.
        let anonymous = security.iter().any(|s| s.as_object().unwrap().is_empty());
        let access = rule(&method.parse().unwrap(), &path).unwrap();
        let needs_token = access != Access::Public || path == "/oauth/userinfo";
        assert_eq!(
            anonymous, !needs_token,
            "{method} {path} ({access:?}) documents security {security:?}"
        );
        if access != Access::Public {
            protected += 1;
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} leaves out its 401"
            );
        }
        if matches!(access, Access::Need(_) | Access::SelfOr(_)) {
            assert!(
                op["responses"].get("403").is_some(),
                "{method} {path} leaves out its 403"
            );
        }
        if op["requestBody"]["content"]
            .get("application/json")
            .is_some()
        {
            for status in ["400", "413", "415", "422"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path} parses JSON but leaves out {status}"
                );
            }
        }
    }
    assert!(protected >= 25, "only {protected} protected operations");
    for (method, path) in [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("post", "/users"),
    ] {
        let security = &doc["paths"][path][method]["security"];
        assert!(
            security
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == &serde_json::json!({})),
            "{method} {path} is public: {security}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn request_schemas_state_the_validators_limits_and_roles_only_for_admins() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.identity.password_min_chars = 20).await;
    let doc: Value = app
        .anonymous_get("/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    for schema in ["SignUpInput", "AdminAccountInput", "UserInput"] {
        let name = &schemas[schema]["properties"]["name"];
        assert_eq!(
            name["maxLength"],
            keel_domain::users::NAME_MAX_CHARS,
            "{schema}"
        );
        assert_eq!(name["minLength"], 1, "{schema}");
        let email = &schemas[schema]["properties"]["email"];
        assert_eq!(email["format"], "email", "{schema}");
        assert_eq!(
            email["maxLength"],
            keel_domain::users::EMAIL_MAX_BYTES,
            "{schema}"
        );
    }
    // The configured policy, not the default one.
    for (schema, field) in [
        ("SignUpInput", "password"),
        ("AdminAccountInput", "password"),
        ("TokenPasswordInput", "password"),
        ("PasswordChangeInput", "new_password"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["minLength"], 20,
            "{schema}.{field}"
        );
    }
    // Anonymous sign-up takes no roles; the admin shape does, and only those keel knows.
    let sign_up = &schemas["SignUpInput"];
    assert!(sign_up["properties"].get("roles").is_none());
    assert_eq!(sign_up["additionalProperties"], false);
    assert_eq!(
        schemas["AdminAccountInput"]["properties"]["roles"]["items"]["enum"],
        serde_json::json!(keel_domain::identity::rbac::ROLES)
    );
    let body = &doc["paths"]["/users"]["post"]["requestBody"]["content"]["application/json"];
    assert_eq!(
        body["schema"]["$ref"],
        "#/components/schemas/NewAccountInput"
    );
    assert_eq!(
        schemas["NewAccountInput"]["anyOf"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    app.stop().await;
}

/// The schemathesis of `scripts/fuzz-deps.sh`.
fn schemathesis() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../tests/fuzz/.venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/fuzz-deps.sh (scripts/test.sh does)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_no_undocumented_status_and_no_response_off_schema() {
    let bin = schemathesis();
    let app = spawn_app(Backend::Sqlite).await;
    let token = app.admin_token.clone().expect("an admin");
    let started = Instant::now();
    for auth in [None, Some(format!("Authorization: Bearer {token}"))] {
        let reports = tempfile::tempdir().unwrap();
        let mut command = tokio::process::Command::new(&bin);
        command
            .arg("run")
            .arg(app.url("/openapi.json"))
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,response_headers_conformance",
                // Bounds the run (about a minute for both on two cores) and makes it
                // repeatable: the same cases every time.
                "--max-examples",
                "6",
                "--phases",
                "examples,coverage,fuzzing",
                "--seed",
                "15",
                "--generation-deterministic",
                "--no-shrink",
                // One worker: Python 3.11 fails now and then compiling schemathesis'
                // generators on two threads at once ("AST constructor recursion depth").
                "--workers",
                "1",
                "--request-timeout",
                "20",
                "--no-color",
                "--continue-on-failure",
            ])
            .arg("--report-dir")
            .arg(reports.path())
            // It keeps a cache of crashes in its working directory: not in the tree.
            .current_dir(reports.path())
            .kill_on_drop(true);
        if let Some(header) = &auth {
            command.args(["--header", header]);
        }
        let out = tokio::time::timeout(Duration::from_secs(300), command.output())
            .await
            .expect("schemathesis finishes within 5 minutes")
            .expect("schemathesis runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let who = if auth.is_some() {
            "an admin"
        } else {
            "anonymous"
        };
        assert!(
            out.status.success(),
            "schemathesis as {who} found failures:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "schemathesis as {who}: {}",
            text.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        );
    }
    eprintln!("schemathesis took {:?}", started.elapsed());
    app.stop().await;
}
