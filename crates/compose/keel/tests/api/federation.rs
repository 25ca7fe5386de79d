//! Federation against a second keel acting as the external identity provider (issue 4 §5):
//! the browser's round trip — keel A sends it to keel B's sign-in page, B sends it back with a
//! code, A exchanges the code, checks B's ID token and signs the person in — for a new
//! account, an account linked by verified address, an unverified address refused and then
//! linked explicitly, and a forged state. And a provider that signs its ID tokens with ES256
//! (P-256), as several large ones do.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::api::auth::PASSWORD;
use crate::api::helpers::{Backend, TestApp, spawn_app, spawn_app_with};
use crate::api::hospital::browser_session;
use crate::on_every_backend;

/// A cookie jar as a browser keeps one per site: name → value.
#[derive(Default)]
struct Jar(HashMap<String, String>);

impl Jar {
    fn take(&mut self, res: &reqwest::Response) {
        for value in res.headers().get_all("set-cookie") {
            let first = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((name, value)) = first.split_once('=') {
                if value.is_empty() {
                    self.0.remove(name);
                } else {
                    self.0.insert(name.to_owned(), value.to_owned());
                }
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A browser going through keel A and keel B, one jar each.
struct Browser {
    http: reqwest::Client,
    a: Jar,
    b: Jar,
}

impl Browser {
    fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            a: Jar::default(),
            b: Jar::default(),
        }
    }

    async fn get_a(&mut self, url: &str) -> reqwest::Response {
        let res = self
            .http
            .get(url)
            .header("cookie", self.a.header())
            .send()
            .await
            .unwrap();
        self.a.take(&res);
        res
    }

    /// Through keel B's sign-in page as `email`: back at keel A's callback, whose answer is
    /// returned.
    async fn sign_in_at_b(&mut self, start: &str, email: &str) -> reqwest::Response {
        let res = self.get_a(start).await;
        assert_eq!(res.status(), 303, "{}", res.text().await.unwrap());
        let authorize = res.headers()["location"].to_str().unwrap().to_owned();
        let page = self.http.get(&authorize).send().await.unwrap();
        assert_eq!(page.status(), 200, "B's sign-in page");
        self.b.take(&page);
        let html = page.text().await.unwrap();
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned();
        // The page's hidden fields are the authorization request's parameters.
        let url = reqwest::Url::parse(&authorize).unwrap();
        let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        form.extend([
            ("csrf".into(), csrf),
            ("email".into(), email.into()),
            ("password".into(), PASSWORD.into()),
            ("decision".into(), "allow".into()),
        ]);
        let origin = format!("{}://{}", url.scheme(), url.authority());
        let res = self
            .http
            .post(format!("{origin}/oauth/authorize"))
            .header("cookie", self.b.header())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 303, "B lets the person through");
        let callback = res.headers()["location"].to_str().unwrap().to_owned();
        self.get_a(&callback).await
    }
}

/// Keel B (the external IdP) with a client registered for keel A, then keel A configured with
/// B as provider `corp`.
async fn two_keels(backend: Backend) -> (TestApp, TestApp) {
    let b = spawn_app(backend).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redirect = format!("http://127.0.0.1:{port}/federation/corp/callback");
    let res = b
        .post_json(
            "/oauth/clients",
            &json!({"client_id": "keel-a", "name": "keel A", "redirect_uris": [redirect]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let secret = res.json::<Value>().await.unwrap()["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let issuer = b.address.clone();
    let a = spawn_app_with(backend, move |s| {
        s.server.listen = format!("127.0.0.1:{port}").parse().unwrap();
        s.identity.providers = vec![keel_config::ProviderSettings {
            name: "corp".into(),
            issuer,
            client_id: "keel-a".into(),
            client_secret: Some(keel_config::Secret::new(secret)),
            scopes: "openid email profile".into(),
            link_by_verified_email: true,
        }];
    })
    .await;
    (a, b)
}

/// An account at `app` with `email`, its address verified or not.
async fn account(app: &TestApp, name: &str, email: &str, verified: bool) -> Value {
    let res = app
        .post_json(
            "/users",
            &json!({"name": name, "email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let user: Value = res.json().await.unwrap();
    if verified {
        let store = keel::database::Database::open(&app.settings)
            .await
            .unwrap()
            .identity();
        let id = user["id"].as_str().unwrap().parse().unwrap();
        let mut credentials = store.credentials(id).await.unwrap().unwrap();
        credentials.email_verified_at = Some(chrono::Utc::now().timestamp());
        credentials.version += 1;
        store.put_credentials(&credentials).await.unwrap();
    }
    user
}

async fn signed_in_as(browser: &mut Browser, a: &TestApp) -> String {
    let page = browser.get_a(&a.url("/signin")).await.text().await.unwrap();
    page.split("Signed in as <strong>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or("nobody")
        .to_owned()
}

async fn data_of(a: &TestApp, email: &str) -> Value {
    let page: Value = a.get("/users?limit=200").await.json().await.unwrap();
    let user = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == email)
        .unwrap_or_else(|| panic!("no account {email} at A"))
        .clone();
    a.get(&format!("/users/{}/data", user["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_second_keel_signs_people_in_to_the_first() {
    let (a, b) = two_keels(Backend::Sqlite).await;
    let start = a.url("/federation/corp/start?return_to=/signin");

    // A new person: A makes the account, with the address verified by B.
    account(&b, "Bo", "bo@example.com", true).await;
    let mut browser = Browser::new();
    let res = browser.sign_in_at_b(&start, "bo@example.com").await;
    assert_eq!(
        res.status(),
        303,
        "{}",
        res.text().await.unwrap_or_default()
    );
    assert_eq!(res.headers()["location"], "/signin");
    assert_eq!(signed_in_as(&mut browser, &a).await, "bo@example.com");
    let data = data_of(&a, "bo@example.com").await;
    assert!(data["account"]["email_verified_at"].is_i64(), "{data}");
    assert_eq!(data["account"]["linked_identities"][0]["provider"], "corp");
    let bo_id = data["account"]["user"]["id"].clone();
    // Again, from a fresh browser: the linked account, not a second one.
    let mut again = Browser::new();
    let res = again.sign_in_at_b(&start, "bo@example.com").await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        data_of(&a, "bo@example.com").await["account"]["user"]["id"],
        bo_id
    );

    // An account at A with the address B verified: linked to it.
    let cy = account(&a, "Cy", "cy@example.com", false).await;
    account(&b, "Cy at B", "cy@example.com", true).await;
    let mut browser = Browser::new();
    assert_eq!(
        browser
            .sign_in_at_b(&start, "cy@example.com")
            .await
            .status(),
        303
    );
    assert_eq!(signed_in_as(&mut browser, &a).await, "cy@example.com");
    let data = data_of(&a, "cy@example.com").await;
    assert_eq!(data["account"]["user"]["id"], cy["id"]);
    assert_eq!(
        data["account"]["linked_identities"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // An address B did not verify is not enough to take over A's account ...
    account(&a, "Dee", "dee@example.com", false).await;
    account(&b, "Dee at B", "dee@example.com", false).await;
    let mut browser = Browser::new();
    let res = browser.sign_in_at_b(&start, "dee@example.com").await;
    assert_eq!(res.status(), 403);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("sign in to it, then link")
    );
    assert_eq!(signed_in_as(&mut browser, &a).await, "nobody");
    // ... but Dee, signed in at A, links it.
    let session = browser_session(&a, "dee@example.com", "/signin").await;
    for pair in session.split("; ") {
        let (k, v) = pair.split_once('=').unwrap();
        browser.a.0.insert(k.into(), v.into());
    }
    let res = browser
        .sign_in_at_b(
            &a.url("/federation/corp/start?link=1&return_to=/signin"),
            "dee@example.com",
        )
        .await;
    assert_eq!(res.status(), 303);
    let data = data_of(&a, "dee@example.com").await;
    assert_eq!(data["account"]["linked_identities"][0]["provider"], "corp");

    // Linking asks for a signed-in browser; unknown providers are not found.
    let res = Browser::new()
        .get_a(&a.url("/federation/corp/start?link=1"))
        .await;
    assert_eq!(res.status(), 403);
    let res = Browser::new().get_a(&a.url("/federation/nope/start")).await;
    assert_eq!(res.status(), 404);

    // The audit log tells who came through which provider.
    let audit: Value = a
        .get("/auth/audit?action=identity_linked")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["events"].as_array().unwrap().len(), 2, "{audit}");
    a.stop().await;
    b.stop().await;
}

/// The `state` of the authorization request a start sends the browser to.
fn state_of(res: &reqwest::Response) -> String {
    let location = res.headers()["location"].to_str().unwrap();
    reqwest::Url::parse(location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned()
}

#[tokio::test]
async fn a_callback_this_browser_did_not_start_is_refused() {
    let (a, b) = two_keels(Backend::Sqlite).await;
    account(&b, "Eve", "eve@example.com", true).await;
    let mut browser = Browser::new();
    let res = browser.get_a(&a.url("/federation/corp/start")).await;
    assert_eq!(res.status(), 303);
    let state = state_of(&res);
    // Another browser (no cookie), and this one with a state of its own: both refused.
    let forged = a.url(&format!("/federation/corp/callback?code=x&state={state}"));
    let res = Browser::new().get_a(&forged).await;
    assert_eq!(res.status(), 400);
    let res = browser
        .get_a(&a.url("/federation/corp/callback?code=x&state=made-up"))
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("start again"));
    // The provider's refusal is shown, not followed.
    let mut browser = Browser::new();
    let res = browser.get_a(&a.url("/federation/corp/start")).await;
    let state = state_of(&res);
    let res = browser
        .get_a(&a.url(&format!(
            "/federation/corp/callback?error=access_denied&state={state}"
        )))
        .await;
    assert_eq!(res.status(), 502);
    assert!(res.text().await.unwrap().contains("access_denied"));
    a.stop().await;
    b.stop().await;
}

on_every_backend!(an_es256_provider_signs_people_in_and_a_forged_signature_does_not);

/// An external provider that signs its ID tokens with ES256: discovery, an authorization
/// endpoint that sends the browser straight back with a code, a token endpoint and its JWKS.
/// `forge` makes its token endpoint sign with a key its JWKS does not publish.
struct Es256Provider {
    issuer: String,
    forge: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn es256_provider() -> Es256Provider {
    use axum::extract::{Query, State};
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::{get, post};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use p256::ecdsa::signature::Signer as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone)]
    struct Provider {
        issuer: String,
        key: p256::ecdsa::SigningKey,
        other: p256::ecdsa::SigningKey,
        nonce: Arc<Mutex<String>>,
        forge: Arc<AtomicBool>,
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let forge = Arc::new(AtomicBool::new(false));
    let provider = Provider {
        issuer: issuer.clone(),
        key: p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap(),
        other: p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap(),
        nonce: Arc::default(),
        forge: forge.clone(),
    };
    let router = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(|State(p): State<Provider>| async move {
                axum::Json(json!({
                    "issuer": p.issuer,
                    "authorization_endpoint": format!("{}/authorize", p.issuer),
                    "token_endpoint": format!("{}/token", p.issuer),
                    "jwks_uri": format!("{}/jwks", p.issuer),
                    "id_token_signing_alg_values_supported": ["ES256"],
                }))
            }),
        )
        .route(
            "/jwks",
            get(|State(p): State<Provider>| async move {
                let point = p.key.verifying_key().to_sec1_point(false);
                let bytes = point.as_bytes();
                axum::Json(json!({"keys": [{
                    "kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig", "alg": "ES256",
                    "x": URL_SAFE_NO_PAD.encode(&bytes[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&bytes[33..65]),
                }]}))
            }),
        )
        .route(
            "/authorize",
            get(
                |State(p): State<Provider>, Query(q): Query<HashMap<String, String>>| async move {
                    *p.nonce.lock().unwrap() = q["nonce"].clone();
                    Redirect::to(&format!(
                        "{}?code=es-code&state={}",
                        q["redirect_uri"],
                        keel_credentials::percent_encode(&q["state"])
                    ))
                    .into_response()
                },
            ),
        )
        .route(
            "/token",
            post(|State(p): State<Provider>| async move {
                let now = chrono::Utc::now().timestamp();
                let header = json!({"alg": "ES256", "typ": "JWT", "kid": "ec-1"});
                let claims = json!({
                    "iss": p.issuer, "sub": "es-person-1", "aud": "keel-a",
                    "iat": now, "exp": now + 300,
                    "nonce": p.nonce.lock().unwrap().clone(),
                    "email": "eve@example.com", "email_verified": true, "name": "Eve",
                });
                let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
                let input = format!("{}.{}", b64(&header), b64(&claims));
                let key = if p.forge.load(Ordering::SeqCst) {
                    &p.other
                } else {
                    &p.key
                };
                let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
                let id_token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
                axum::Json(json!({
                    "access_token": "at", "token_type": "Bearer", "expires_in": 300,
                    "id_token": id_token,
                }))
            }),
        )
        .with_state(provider);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Es256Provider { issuer, forge }
}

async fn an_es256_provider_signs_people_in_and_a_forged_signature_does_not(backend: Backend) {
    let provider = es256_provider().await;
    let issuer = provider.issuer.clone();
    let a = spawn_app_with(backend, move |s| {
        s.identity.providers = vec![keel_config::ProviderSettings {
            name: "corp".into(),
            issuer,
            client_id: "keel-a".into(),
            client_secret: Some(keel_config::Secret::new("s3cret")),
            scopes: "openid email profile".into(),
            link_by_verified_email: true,
        }];
    })
    .await;
    let start = a.url("/federation/corp/start?return_to=/signin");
    let through_the_provider = |mut browser: Browser| {
        let start = start.clone();
        async move {
            let res = browser.get_a(&start).await;
            assert_eq!(res.status(), 303);
            let authorize = res.headers()["location"].to_str().unwrap().to_owned();
            let res = browser.http.get(&authorize).send().await.unwrap();
            assert_eq!(res.status(), 303, "the provider sends the browser back");
            let callback = res.headers()["location"].to_str().unwrap().to_owned();
            let res = browser.get_a(&callback).await;
            (browser, res)
        }
    };

    // Signed with a key the provider's JWKS publishes: signed in, the account made.
    let (mut browser, res) = through_the_provider(Browser::new()).await;
    assert_eq!(
        res.status(),
        303,
        "{}",
        res.text().await.unwrap_or_default()
    );
    assert_eq!(res.headers()["location"], "/signin");
    assert_eq!(signed_in_as(&mut browser, &a).await, "eve@example.com");

    // Signed with another P-256 key under the same kid: refused, nobody signed in.
    provider
        .forge
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut browser, res) = through_the_provider(Browser::new()).await;
    assert_ne!(res.status(), 303, "a forged ID token signs nobody in");
    assert_eq!(signed_in_as(&mut browser, &a).await, "nobody");
}
