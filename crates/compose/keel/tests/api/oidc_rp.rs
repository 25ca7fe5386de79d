//! keel's OpenID Connect provider as a standard relying-party library sees it: node's
//! `openid-client` (`tests/browser/oidc_rp.mjs`) goes through keel's real sign-in page and
//! validates every answer itself (state, `iss`, PKCE, the EdDSA ID token, nonce, `auth_time`
//! against `max_age`, `amr`), then prompt=none, prompt=login, userinfo, refresh and a replayed
//! code. Needs `node` and `npm ci` in `tests/browser` (scripts/browser-deps.sh installs both);
//! without them this test fails, it does not skip.

use std::process::Stdio;

use serde_json::Value;

use crate::api::auth::{PASSWORD, sign_up};
use crate::api::helpers::Backend;
use crate::api::oidc::{REDIRECT, register};
use crate::on_every_backend;

on_every_backend!(openid_client_validates_every_answer_of_the_provider);

async fn openid_client_validates_every_answer_of_the_provider(backend: Backend) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/browser");
    assert!(
        dir.join("node_modules/openid-client").exists(),
        "openid-client is missing: `npm ci` in {} (scripts/browser-deps.sh does it)",
        dir.display()
    );
    let app = crate::api::helpers::spawn_app(backend).await;
    let secret = register(&app, "rp-app", false).await.unwrap();
    let ada = sign_up(&app, "ada@example.com").await;
    let output = tokio::process::Command::new("node")
        .arg("oidc_rp.mjs")
        .current_dir(&dir)
        .env("ISSUER", &app.address)
        .env("CLIENT_ID", "rp-app")
        .env("CLIENT_SECRET", secret)
        .env("REDIRECT_URI", REDIRECT)
        .env("EMAIL", "ada@example.com")
        .env("PASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), output)
        .await
        .expect("the relying party finishes within 2 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the relying party failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().expect("a JSON line")).unwrap();
    assert_eq!(seen["ok"], true, "{seen}");
    assert_eq!(seen["sub"], ada["id"]);
    assert_eq!(seen["steps"].as_array().unwrap().len(), 7, "{seen}");
}
