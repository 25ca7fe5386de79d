//! keel's sign-in pages in a real browser (Debian's chromium, driven by playwright-core):
//! - `tests/browser/signin.mjs`: the OpenID Connect page signs in to an account with TOTP
//!   enrolled — a wrong password, then the password, then the authenticator code — and lands
//!   on the client with a code, which then exchanges for tokens of that account;
//! - `tests/browser/console_signin.mjs`: an operator goes from the hospital console to the
//!   sign-in page, enrols an authenticator app from its QR code, and opens the console.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci` in `tests/browser` (scripts/test.sh installs
//! all three); without them this test fails, it does not skip.

use keel::Application;
use keel_config::{Secret, Settings};
use keel_credentials::totp::{Totp, TotpSecret};
use serde_json::{Value, json};

const PASSWORD: &str = "a fine long passphrase";

/// keel's defaults on a port of its own, with its SQLite database in `dir`.
fn settings_in(dir: &std::path::Path) -> Settings {
    let mut settings = Settings {
        data_dir: dir.to_owned(),
        ..Settings::default()
    };
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.database.url = Some(Secret::new(format!(
        "sqlite://{}",
        dir.join("keel.db").display()
    )));
    settings.telemetry.access_log = false;
    settings
}
const REDIRECT: &str = "http://127.0.0.1:9/callback";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_with_a_password_and_an_authenticator_code_in_a_real_browser() {
    keel_test_support::browser::require_toolchain();
    let dir = tempfile::tempdir().unwrap();
    let settings = settings_in(dir.path());
    let app = Application::build(settings.clone(), None).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut request = http.post(format!("{base}{path}")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    // An admin registers the client; Ada signs up and enrols TOTP.
    let root: Value = post(
        "/auth/signup",
        None,
        json!({"name": "Root", "email": "root@example.com", "password": PASSWORD}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let db = keel::database::Database::open(&settings).await.unwrap();
    let store = db.identity();
    let root_id = root["id"].as_str().unwrap().parse().unwrap();
    let mut credentials = store.credentials(root_id).await.unwrap().unwrap();
    credentials.roles = vec!["admin".into()];
    credentials.version += 1;
    store.put_credentials(&credentials).await.unwrap();
    let sign_in = |email: &'static str| {
        post(
            "/auth/login",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
    };
    let admin: Value = sign_in("root@example.com")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let res = post(
        "/oauth/clients",
        admin["access_token"].as_str(),
        json!({"client_id": "browser-app", "name": "Browser App", "redirect_uris": [REDIRECT], "public": true}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    let ada: Value = post(
        "/auth/signup",
        None,
        json!({"name": "Ada", "email": "ada@example.com", "password": PASSWORD}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let tokens: Value = sign_in("ada@example.com")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str();
    let enrolment: Value = post("/auth/totp", access, json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    let totp = Totp::new(TotpSecret::from_base32(&secret).unwrap());
    // Confirmed with the previous step's code, so that the browser's code (the current step)
    // is not refused as a replay.
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap();
    let res = post(
        "/auth/totp/confirm",
        access,
        json!({"code": totp.code_at(now - 30)}),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);

    let verifier = "browser-test-verifier-0123456789-abcdefghijklmnopqrstuvwxyz";
    let challenge = keel_credentials::pkce::challenge_of(verifier);
    let authorize = format!(
        "{base}/oauth/authorize?response_type=code&client_id=browser-app&scope=openid%20email\
         &state=st4te&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcallback\
         &code_challenge={challenge}&code_challenge_method=S256"
    );
    let seen = keel_test_support::browser::run_script(
        "signin.mjs",
        &[
            ("AUTHORIZE_URL", authorize),
            ("REDIRECT_URI", REDIRECT.to_owned()),
            ("EMAIL", "ada@example.com".to_owned()),
            ("PASSWORD", PASSWORD.to_owned()),
            ("TOTP_SECRET", secret),
        ],
    )
    .await;
    assert_eq!(seen["steps"].as_array().unwrap().len(), 6, "{seen}");
    assert_eq!(seen["state"], "st4te");

    // The code the browser brought back is Ada's.
    let res = http
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", seen["code"].as_str().unwrap()),
            ("redirect_uri", REDIRECT),
            ("client_id", "browser-app"),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    let userinfo: Value = http
        .get(format!("{base}/oauth/userinfo"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["sub"], ada["id"]);
    assert_eq!(userinfo["email"], "ada@example.com");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// A new operator in a real browser: the console sends it to the sign-in page, the operator
/// role waits for a second factor, the authenticator-app page enrols one from its QR code,
/// and signed in again with the app's code the console opens (`tests/browser/console_signin.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_enrols_an_authenticator_app_and_opens_the_console_in_a_real_browser() {
    keel_test_support::browser::require_toolchain();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_in(dir.path());
    settings.identity.mfa_required_roles = vec!["operator".into()];
    let app = Application::build(settings, None).await.unwrap();
    let operator = app
        .identity()
        .unwrap()
        .accounts()
        .create_account(
            "Olga",
            "olga@example.com",
            PASSWORD,
            &["operator"],
            "cli",
            chrono::Utc::now().timestamp(),
        )
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let seen = keel_test_support::browser::run_script(
        "console_signin.mjs",
        &[
            ("BASE_URL", base),
            ("EMAIL", "olga@example.com".to_owned()),
            ("PASSWORD", PASSWORD.to_owned()),
            ("OPERATOR", operator.id.to_string()),
        ],
    )
    .await;
    assert_eq!(seen["steps"].as_array().unwrap().len(), 6, "{seen}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
