//! Every route declares who may call it (issue 4 §6). The real router is enumerated — every
//! path and method it serves, the hospital console's and the IdP's included — and each must
//! have a rule in `keel_api::policy::RULES`, and each rule a route. Then every protected route
//! is called without credentials (401) and, where a permission is needed, by a plain account
//! (403): the guard enforces what the table says, route by route.

use std::collections::BTreeSet;

use keel_api::policy::{Access, RULES, rule};
use reqwest::Method;

use crate::api::auth::{PASSWORD, sign_up, tokens_of};
use crate::api::helpers::{Backend, spawn_app};

/// `(method, path)` of every route the router serves, read from its `Debug` output: axum has
/// no route listing, but its debug form names each route's path and `Allow` methods.
pub(super) fn routes_of(router: &axum::Router) -> BTreeSet<(String, String)> {
    let text = format!("{router:?}");
    if std::env::var("DUMP_ROUTER").is_ok() {
        eprintln!("{text}");
    }
    let mut routes = BTreeSet::new();
    // Each `PathRouter { routes: {…}, node: Node { paths: {…} } }` numbers its routes on its
    // own (the fallback router has one too): read them one router at a time.
    for router in text.split("PathRouter {").skip(1) {
        // Paths: `RouteId(7): "/users/{id}"` in the router's node.
        let mut paths = std::collections::HashMap::new();
        for piece in router.split("RouteId(").skip(1) {
            let Some((id, rest)) = piece.split_once(')') else {
                continue;
            };
            if let Some(path) = rest.strip_prefix(": \"") {
                paths.insert(id.to_owned(), path.split('"').next().unwrap().to_owned());
            }
        }
        // Methods: each route's `allow_header: Bytes(b"GET,HEAD")`.
        for piece in router.split("RouteId(").skip(1) {
            let Some((id, rest)) = piece.split_once(')') else {
                continue;
            };
            let Some(allow) = rest
                .strip_prefix(": MethodRouter(")
                .and_then(|r| r.split("allow_header: ").nth(1))
                .and_then(|r| r.strip_prefix("Bytes(b\""))
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let path = paths.get(id).expect("every route has a path");
            for method in allow.split(',').filter(|m| *m != "HEAD") {
                routes.insert((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_route_has_a_rule_and_every_rule_a_route() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::api::helpers::fresh_database(Backend::Sqlite, dir.path()).await;
    let settings = crate::api::helpers::base_settings(dir.path(), url);
    let app = keel::Application::build(settings, None).await.unwrap();
    let routes = routes_of(app.router());
    assert!(
        routes.len() >= 40 && routes.contains(&("GET".into(), "/admin/hospital".into())),
        "the router's routes were not all read: {routes:?}"
    );
    let missing: Vec<_> = routes
        .iter()
        .filter(|(method, path)| rule(&method.parse().unwrap(), path).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "routes without an access rule: {missing:?}"
    );
    let stale: Vec<_> = RULES
        .iter()
        .filter(|(method, path, _)| !routes.contains(&((*method).to_owned(), (*path).to_owned())))
        .collect();
    assert!(stale.is_empty(), "rules naming no route: {stale:?}");
}

#[tokio::test]
async fn every_protected_route_refuses_strangers_and_plain_accounts() {
    let app = spawn_app(Backend::Sqlite).await;
    sign_up(&app, "plain@example.com").await;
    let plain = tokens_of(&app, "plain@example.com", PASSWORD).await;
    let plain = plain["access_token"].as_str().unwrap().to_owned();
    let someone_else = uuid::Uuid::now_v7().to_string();
    let mut checked = 0;
    for (method, path, access) in RULES {
        if *access == Access::Public {
            continue;
        }
        let concrete = path
            .replace("{id}", &someone_else)
            .replace("{provider}", "example");
        let method: Method = method.parse().unwrap();
        let anonymous = app
            .client
            .request(method.clone(), app.url(&concrete))
            .send()
            .await
            .unwrap();
        assert_eq!(
            anonymous.status(),
            401,
            "{method} {path} without credentials"
        );
        let forged = app
            .client
            .request(method.clone(), app.url(&concrete))
            .bearer_auth("not.a.token")
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 401, "{method} {path} with a forged token");
        if matches!(access, Access::Need(_) | Access::SelfOr(_)) {
            let res = app
                .client
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(&plain)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 403, "{method} {path} by a plain account");
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} protected routes");
    app.stop().await;
}
