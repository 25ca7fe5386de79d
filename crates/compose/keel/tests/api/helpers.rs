//! `spawn_app`: the real application on port 0, on a fresh database of the chosen backend.

use std::sync::OnceLock;
use std::time::Duration;

use keel::Application;
use keel_config::{Secret, Settings, Strategy};
use keel_test_support::services;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Sqlite,
    Postgres,
    MariaDb,
}

pub(super) struct TestApp {
    pub address: String,
    /// Sends no credentials.
    pub client: reqwest::Client,
    /// Sends an admin's access token (when identity is on): what `get`, `post_json`, `put_json`
    /// and `delete` use.
    pub admin: reqwest::Client,
    /// The admin account's id (when identity is on).
    pub admin_id: Option<String>,
    /// The admin's access token (when identity is on), for clients other than `admin`.
    pub admin_token: Option<String>,
    pub settings: Settings,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub(super) async fn get(&self, path: &str) -> reqwest::Response {
        self.admin
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub(super) async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.admin
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub(super) async fn put_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.admin
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub(super) async fn delete(&self, path: &str) -> reqwest::Response {
        self.admin
            .delete(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// A request without credentials.
    pub(super) async fn anonymous_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a user and returns its JSON.
    pub(super) async fn create_user(&self, name: &str) -> serde_json::Value {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        let res = self
            .post_json("/users", &serde_json::json!({"name": name, "email": email}))
            .await;
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    /// Stops the server the way SIGTERM does, and waits for it.
    pub(super) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

/// One recorder for the whole test binary (the recorder is process-global).
fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| keel_telemetry::init_metrics().expect("recorder installs once"))
        .clone()
}

/// A fresh, empty database URL for `backend`.
pub(super) async fn fresh_database(backend: Backend, dir: &std::path::Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join("keel.db").display()),
        Backend::Postgres => services::create_postgres_database().await,
        Backend::MariaDb => services::create_mariadb_database().await,
    }
}

pub(super) fn base_settings(dir: &std::path::Path, database_url: String) -> Settings {
    let mut settings = Settings {
        data_dir: dir.to_path_buf(),
        ..Settings::default()
    };
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.database.url = Some(Secret::new(database_url));
    settings.database.max_connections = 4;
    settings.telemetry.access_log = false;
    settings.shutdown.drain_deadline_ms = 5_000;
    settings.cache.write_back.flush_interval_ms = 50;
    settings
}

pub(super) async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub(super) async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await;
    let mut settings = base_settings(dir.path(), url);
    configure(&mut settings);
    spawn_with_settings(settings, dir).await
}

/// Like `keel up`: the API and the worker role (relay, workers) in one process, with the
/// embedded queue under the test's directory, served through the in-process gateway.
pub(super) async fn spawn_up_with(
    backend: Backend,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(backend, dir.path()).await;
    let mut settings = base_settings(dir.path(), url);
    configure(&mut settings);
    spawn(settings, dir, true).await
}

pub(super) async fn spawn_with_settings(settings: Settings, dir: tempfile::TempDir) -> TestApp {
    spawn(settings, dir, false).await
}

async fn spawn(settings: Settings, dir: tempfile::TempDir, workers: bool) -> TestApp {
    settings.validate().expect("test settings are valid");
    let mut app = Application::build(settings.clone(), Some(metrics()))
        .await
        .expect("app builds");
    if workers {
        // As `keel up` does: the workers, and the gateway in front of the API.
        app = app
            .with_workers()
            .await
            .expect("workers start")
            .with_gateway();
    }
    // Without a database there is no admin to make; such tests use only public routes.
    let admin_account = match app.identity() {
        Some(idp) => admin_token(idp).await,
        None => None,
    };
    let admin_token = admin_account.as_ref().map(|(token, _)| token.clone());
    let (admin, admin_id) = match admin_account {
        Some((token, id)) => {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .default_headers(headers)
                .build()
                .unwrap();
            (client, Some(id))
        }
        None => (
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            None,
        ),
    };
    let address = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    TestApp {
        address,
        client,
        admin,
        admin_id,
        admin_token,
        settings,
        _dir: dir,
        stop: Some(stop),
        server: Some(server),
    }
}

/// The password of the admin every test app starts with.
pub(super) const ADMIN_PASSWORD: &str = "correct staple battery horse 42";

/// Makes an admin account (as `keel admin create` does) and signs it in: its access token and
/// id; `None` when the database does not answer.
async fn admin_token(idp: &keel_identity::service::Idp) -> Option<(String, String)> {
    let now = chrono::Utc::now().timestamp();
    let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
    let user = idp
        .accounts()
        .create_account("Admin", &email, ADMIN_PASSWORD, &["admin"], "cli", now)
        .await
        .ok()?;
    let tokens = idp
        .sessions()
        .sign_in(
            &keel_identity::service::SignIn {
                email: &email,
                password: ADMIN_PASSWORD,
                second_factor: None,
                device_token: None,
                client: "test",
                client_id: "keel",
            },
            now,
        )
        .await
        .expect("the test admin signs in");
    Some((tokens.access_token, user.id.to_string()))
}

/// Every strategy, for tests that must hold whatever the configuration.
pub(super) const STRATEGIES: [Strategy; 4] = [
    Strategy::Ttl,
    Strategy::Lazy,
    Strategy::WriteThrough,
    Strategy::WriteBack,
];

/// Declares `#[tokio::test]`s named `<case>_on_<backend>` running `case(Backend)` on each backend.
#[macro_export]
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn on_sqlite() { super::$case($crate::api::helpers::Backend::Sqlite).await }
                #[tokio::test]
                async fn on_postgres() { super::$case($crate::api::helpers::Backend::Postgres).await }
                #[tokio::test]
                async fn on_mariadb() { super::$case($crate::api::helpers::Backend::MariaDb).await }
            }
        )*
    };
}
