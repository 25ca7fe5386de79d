//! `keel gateway` in front of `keel serve` instances, as an operator runs them: the real
//! binaries, one PostgreSQL database shared by the instances, and client load through the
//! gateway while an instance is killed with SIGKILL, drained with SIGTERM, or dropped from the
//! pool by a SIGHUP reload; the gateway itself stopped with SIGTERM mid-request; a
//! configuration naming an unknown pool refused; and a token revoked on one instance refused
//! by the other (at once with Redis, within `identity.revocation_check_secs` without).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_test_support::process::{self, Running, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::KEEL;
const ADMIN: &str = "admin@gateway.test";
const ADMIN_PASSWORD: &str = "the operator of this gateway test";
/// Concurrent clients of the load.
const CLIENTS: usize = 8;

/// The load tests start four processes each and measure failures under load: one at a time,
/// so that they do not starve each other on a small machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `/users/{id}` requests `process` has answered, by its access log.
fn user_requests(process: &Running) -> usize {
    process
        .log()
        .lines()
        .filter(|l| l.contains("\"keel::access\"") && l.contains("\"/users/{id}\""))
        .count()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Waits until `url` answers 200, failing with the process's log if it exits or takes 30 s.
async fn wait_ready(process: &mut Running, url: &str) {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = process.exited() {
            panic!("keel exited early with {status}: {}", process.log());
        }
        if let Ok(res) = http.get(url).send().await
            && res.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never became ready: {}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `keel serve` instances sharing one fresh PostgreSQL database and one data directory (the
/// identity keys), behind one `keel gateway`.
struct Cluster {
    /// The shared data directory, and the gateway's configuration file in it.
    _dir: tempfile::TempDir,
    serves: Vec<Running>,
    ports: Vec<u16>,
    gateway: Running,
    gateway_port: u16,
    admin_port: u16,
    config: PathBuf,
    token: String,
}

impl Cluster {
    async fn start(
        instances: usize,
        serve_env: &[(&str, &str)],
        gateway_env: &[(&str, &str)],
    ) -> Self {
        let url = keel_test_support::services::create_postgres_database().await;
        let dir = tempfile::tempdir().unwrap();
        let gateway_port = free_port();
        let admin_port = free_port();
        // Clients reach the instances through the gateway: that is the tokens' issuer, the
        // same on every instance.
        let issuer = format!("http://127.0.0.1:{gateway_port}");
        let env: Vec<(String, String)> = [
            ("KEEL_DATABASE__URL", url.as_str()),
            ("KEEL_QUEUE__URL", url.as_str()),
            // Four processes per test, and other tests on the same server.
            ("KEEL_DATABASE__MAX_CONNECTIONS", "4"),
            ("KEEL_TELEMETRY__ACCESS_LOG", "true"),
            ("KEEL_TELEMETRY__LOG_LEVEL", "info"),
            ("KEEL_IDENTITY__ISSUER", issuer.as_str()),
        ]
        .iter()
        .chain(serve_env)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();

        // One at a time: the first makes the identity keys in the shared directory and
        // migrates; the admin account exists before any client needs a token.
        let mut serves = Vec::new();
        let mut ports = Vec::new();
        let mut token = String::new();
        for i in 0..instances {
            let port = free_port();
            let mut serve = start_serve(dir.path(), port, &env);
            wait_ready(&mut serve, &format!("http://127.0.0.1:{port}/readyz")).await;
            if i == 0 {
                token = sign_in_admin(dir.path(), port, &env).await;
            }
            serves.push(serve);
            ports.push(port);
        }

        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, gateway_config(gateway_port, admin_port, &ports)).unwrap();
        let gateway_dir = dir.path().join("gateway");
        std::fs::create_dir_all(&gateway_dir).unwrap();
        let mut cmd = process::command(KEEL);
        cmd.arg("gateway")
            .arg("--config")
            .arg(&config)
            .current_dir(&gateway_dir)
            .env("KEEL_TELEMETRY__LOG_LEVEL", "info");
        for (k, v) in gateway_env {
            cmd.env(k, v);
        }
        let mut gateway = Running::spawn(&mut cmd);
        // Ready: listening, and every pool has a healthy server.
        wait_ready(
            &mut gateway,
            &format!("http://127.0.0.1:{admin_port}/readyz"),
        )
        .await;
        Self {
            _dir: dir,
            serves,
            ports,
            gateway,
            gateway_port,
            admin_port,
            config,
            token,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway_port)
    }

    /// Creates `n` users through the gateway (admin invitations); their (id, email).
    async fn create_users(&self, n: usize) -> Vec<(String, String)> {
        let http = client();
        let mut users = Vec::new();
        for i in 0..n {
            let email = format!("client{i}@gateway.test");
            let res = http
                .post(self.url("/users"))
                .bearer_auth(&self.token)
                .json(&json!({"name": format!("Client {i}"), "email": email}))
                .send()
                .await
                .unwrap();
            let status = res.status();
            let body: Value = res.json().await.unwrap();
            assert_eq!(status, 201, "{body}");
            users.push((body["id"].as_str().unwrap().to_owned(), email));
        }
        users
    }

    /// The servers of the pool `api` and whether each is healthy, by the admin API.
    async fn upstreams(&self) -> Vec<(String, bool)> {
        let doc: Value = client()
            .get(format!("http://127.0.0.1:{}/upstreams", self.admin_port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        doc["pools"][0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["addr"].as_str().unwrap().to_owned(),
                    s["healthy"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// The logs of every process, for a failure message.
    fn logs(&self) -> String {
        let mut all = format!("--- gateway\n{}", tail(&self.gateway.log()));
        for (port, serve) in self.ports.iter().zip(&self.serves) {
            all.push_str(&format!("--- serve on {port}\n{}", tail(&serve.log())));
        }
        all
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("keel::access"))
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n") + "\n"
}

fn start_serve(dir: &Path, port: u16, env: &[(String, String)]) -> Running {
    let mut cmd = process::command(KEEL);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Running::spawn(&mut cmd)
}

/// Makes the admin with `keel admin create` and signs it in on the instance at `port`: the
/// access token every instance accepts (they share the database and the keys).
async fn sign_in_admin(dir: &Path, port: u16, env: &[(String, String)]) -> String {
    let mut cmd = process::command(KEEL);
    cmd.args(["admin", "create", "--email", ADMIN, "--data-dir"])
        .arg(dir)
        .env_remove("KEEL_TEST_POSTGRES_URL")
        .env_remove("KEEL_TEST_MARIADB_URL")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("keel admin create runs");
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        format!("{ADMIN_PASSWORD}\n").as_bytes(),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "keel admin create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res = client()
        .post(format!("http://127.0.0.1:{port}/auth/login"))
        .json(&json!({"email": ADMIN, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{tokens}");
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// The gateway's configuration: one pool of the instances on `ports`, checked every 100 ms,
/// and one route with two retries.
fn gateway_config(port: u16, admin: u16, ports: &[u16]) -> String {
    let servers = ports
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[gateway]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"

[[gateway.pools]]
name = "api"
servers = [{servers}]
health_interval_ms = 100
health_timeout_ms = 1000
unhealthy_threshold = 2
healthy_threshold = 1

[[gateway.routes]]
prefix = "/"
pool = "api"
retries = 2
timeout_ms = 10000
"#
    )
}

/// What the clients of a load saw.
#[derive(Debug, Default)]
struct Tally {
    /// Successful requests per kind (`GET`, `PUT`, `POST`).
    ok: std::collections::BTreeMap<&'static str, usize>,
    /// Every failure: the kind and what came back.
    failures: Vec<(&'static str, String)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (kind, n) in other.ok {
            *self.ok.entry(kind).or_default() += n;
        }
        self.failures.extend(other.failures);
    }

    fn ok(&self, kind: &str) -> usize {
        self.ok.get(kind).copied().unwrap_or(0)
    }

    fn failed(&self, kind: &str) -> Vec<&String> {
        self.failures
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, f)| f)
            .collect()
    }
}

/// Clients, one per user, each on its own keep-alive connection to the gateway, reading and
/// replacing (PUT, idempotent) their user in a loop, and with `creates` also inviting new users
/// (POST, not idempotent), until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Tally>>,
}

impl Load {
    fn start(cluster: &Cluster, users: &[(String, String)], creates: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = users
            .iter()
            .enumerate()
            .map(|(i, (id, email))| {
                let stop = stop.clone();
                let token = cluster.token.clone();
                let user = cluster.url(&format!("/users/{id}"));
                let users = cluster.url("/users");
                let email = email.clone();
                tokio::spawn(async move {
                    let http = client();
                    let mut tally = Tally::default();
                    let mut round = 0;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let get = http.get(&user).bearer_auth(&token);
                        record(&mut tally, "GET", get, 200).await;
                        let body =
                            json!({"name": format!("Client {i} round {round}"), "email": email});
                        let put = http.put(&user).bearer_auth(&token).json(&body);
                        record(&mut tally, "PUT", put, 200).await;
                        if creates {
                            let body = json!({
                                "name": format!("Made by {i} in round {round}"),
                                "email": format!("made-{i}-{round}@gateway.test"),
                            });
                            let post = http.post(&users).bearer_auth(&token).json(&body);
                            record(&mut tally, "POST", post, 201).await;
                        }
                    }
                    tally
                })
            })
            .collect();
        Self { stop, clients }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for client in self.clients {
            total.merge(client.await.unwrap());
        }
        total
    }
}

async fn record(tally: &mut Tally, kind: &'static str, req: reqwest::RequestBuilder, want: u16) {
    match req.send().await {
        Ok(res) if res.status() == want => {
            let _ = res.bytes().await;
            *tally.ok.entry(kind).or_default() += 1;
        }
        Ok(res) => {
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            tally.failures.push((kind, format!("{status}: {body}")));
        }
        Err(e) => tally.failures.push((kind, format!("{e:?}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_with_sigkill_under_load_fails_no_idempotent_request() {
    let _heavy = HEAVY.lock().await;
    let mut cluster = Cluster::start(3, &[], &[]).await;
    let users = cluster.create_users(CLIENTS).await;
    let load = Load::start(&cluster, &users, false);

    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let victim = &mut cluster.serves[1];
    victim.kill().unwrap(); // SIGKILL: connections reset mid-request
    victim.wait().unwrap();
    let at_kill = [
        user_requests(&cluster.serves[0]),
        user_requests(&cluster.serves[2]),
    ];
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let tally = load.finish().await;

    assert!(
        tally.failures.is_empty(),
        "{} failed of {:?}: {:#?}\n{}",
        tally.failures.len(),
        tally.ok,
        &tally.failures[..tally.failures.len().min(10)],
        cluster.logs()
    );
    assert!(
        tally.ok("GET") > 100 && tally.ok("PUT") > 100,
        "the load ran: {:?}",
        tally.ok
    );
    // The survivors served what came after the kill, and the gateway knows the victim is down.
    let after = [
        user_requests(&cluster.serves[0]),
        user_requests(&cluster.serves[2]),
    ];
    assert!(
        after[0] > at_kill[0] + 20 && after[1] > at_kill[1] + 20,
        "survivors' requests at the kill {at_kill:?}, at the end {after:?}"
    );
    // The kill was felt (requests reset or refused) and retried on the survivors.
    assert!(
        cluster.gateway.log().contains("upstream request failed"),
        "{}",
        cluster.logs()
    );
    let victim = format!("127.0.0.1:{}", cluster.ports[1]);
    let health = cluster.upstreams().await;
    assert!(
        health
            .iter()
            .any(|(addr, healthy)| *addr == victim && !healthy),
        "{health:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_drained_with_sigterm_under_load_fails_no_request() {
    let _heavy = HEAVY.lock().await;
    let serve_env = [
        ("KEEL_SHUTDOWN__READINESS_GRACE_MS", "1000"),
        ("KEEL_SHUTDOWN__DRAIN_DEADLINE_MS", "5000"),
    ];
    let mut cluster = Cluster::start(3, &serve_env, &[]).await;
    let users = cluster.create_users(CLIENTS).await;
    let load = Load::start(&cluster, &users, true);

    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let leaving = &mut cluster.serves[1];
    leaving.signal("TERM");
    let signalled = Instant::now();
    let exit = leaving.wait_exit(Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    let at_exit = user_requests(leaving);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let tally = load.finish().await;

    let exit =
        exit.unwrap_or_else(|| panic!("the drained instance did not stop\n{}", cluster.logs()));
    assert!(exit.success(), "a drained instance exits 0, got {exit}");
    assert!(
        took >= Duration::from_millis(1_000) && took < Duration::from_millis(6_000),
        "readiness grace (1 s), then the drain within its 5 s deadline: took {took:?}"
    );
    assert!(
        cluster.serves[1]
            .log()
            .contains("in-flight requests drained"),
        "{}",
        cluster.serves[1].log()
    );
    for kind in ["GET", "PUT", "POST"] {
        let failed = tally.failed(kind);
        assert!(
            failed.is_empty(),
            "{kind}: {} failed ({:?} succeeded): {:#?}\n{}",
            failed.len(),
            tally.ok,
            &failed[..failed.len().min(10)],
            cluster.logs()
        );
        assert!(tally.ok(kind) > 50, "the load ran: {:?}", tally.ok);
    }
    assert!(at_exit > 0, "the drained instance took part in the load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_reload_drops_a_server_from_the_pool_under_load_without_failures() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(3, &[], &[]).await;
    let users = cluster.create_users(CLIENTS).await;
    let load = Load::start(&cluster, &users, true);

    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let dropped = format!("127.0.0.1:{}", cluster.ports[2]);
    std::fs::write(
        &cluster.config,
        gateway_config(
            cluster.gateway_port,
            cluster.admin_port,
            &cluster.ports[..2],
        ),
    )
    .unwrap();
    cluster.gateway.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let servers = cluster.upstreams().await;
        if servers.len() == 2 && servers.iter().all(|(addr, _)| *addr != dropped) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload did not apply: {servers:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Requests sent just before the swap finish on the old configuration.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = [
        user_requests(&cluster.serves[0]),
        user_requests(&cluster.serves[1]),
        user_requests(&cluster.serves[2]),
    ];
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let tally = load.finish().await;
    let after = [
        user_requests(&cluster.serves[0]),
        user_requests(&cluster.serves[1]),
        user_requests(&cluster.serves[2]),
    ];

    assert!(
        tally.failures.is_empty(),
        "{} failed of {:?}: {:#?}\n{}",
        tally.failures.len(),
        tally.ok,
        &tally.failures[..tally.failures.len().min(10)],
        cluster.logs()
    );
    assert!(tally.ok("GET") > 100, "the load ran: {:?}", tally.ok);
    assert!(before[2] > 0, "the dropped server served before the reload");
    assert_eq!(
        after[2], before[2],
        "the dropped server got requests after the reload"
    );
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "the remaining servers carry the load: {before:?} -> {after:?}"
    );
    assert!(
        cluster
            .gateway
            .log()
            .contains("gateway configuration reloaded"),
        "{}",
        cluster.gateway.log()
    );
    // The dropped server was never stopped: it still answers by itself.
    let res = client()
        .get(format!("http://{dropped}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_stopped_with_sigterm_finishes_a_slow_request_and_exits_0() {
    let _heavy = HEAVY.lock().await;
    let gateway_env = [("KEEL_SHUTDOWN__DRAIN_DEADLINE_MS", "5000")];
    let mut cluster = Cluster::start(2, &[], &gateway_env).await;
    // An idle keep-alive connection must not hold the drain.
    let idle = client();
    let res = idle.get(cluster.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let _ = res.bytes().await;

    // A request in flight: its head and half its body sent.
    let body = json!({"name": "In flight", "email": "inflight@gateway.test"}).to_string();
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", cluster.gateway_port))
        .await
        .unwrap();
    slow.write_all(
        format!(
            "POST /users HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            cluster.token,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    cluster.gateway.signal("TERM");
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        cluster.gateway.exited().is_none(),
        "the gateway must wait for the request in flight"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", cluster.gateway_port))
            .await
            .is_err(),
        "a draining gateway takes no new connection"
    );
    slow.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer))
        .await
        .expect("the answer and the close")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "the request in flight completes: {answer}\n{}",
        cluster.logs()
    );
    let finished = signalled.elapsed();

    let exit = cluster
        .gateway
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("the gateway did not stop\n{}", cluster.logs()));
    assert!(exit.success(), "a drained gateway exits 0, got {exit}");
    assert!(
        signalled.elapsed() < finished + Duration::from_secs(1),
        "once the slow request is done the gateway stops at once (idle connections do not \
         hold it): {:?} after the signal, {finished:?} for the request",
        signalled.elapsed()
    );
    assert!(
        cluster.gateway.log().contains("stopped"),
        "{}",
        cluster.gateway.log()
    );
}

#[tokio::test]
async fn a_route_naming_an_unknown_pool_is_refused_with_the_pool_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[gateway]
listen = "127.0.0.1:{}"

[[gateway.pools]]
name = "api"
servers = ["127.0.0.1:{}"]

[[gateway.routes]]
prefix = "/"
pool = "nowhere"
"#,
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let mut gateway = Running::spawn(
        process::command(KEEL)
            .arg("gateway")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path()),
    );
    let exit = gateway
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("a bad configuration stops the gateway at once");
    assert!(!exit.success(), "{exit}");
    // The reader thread has the whole log shortly after the pipe closes.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !gateway.log().contains("nowhere") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = gateway.log();
    assert!(log.contains("nowhere"), "the message names the pool: {log}");
}

/// Lets the kernel move connections still queued on a closing `SO_REUSEPORT` listener to
/// another listener of the group (Linux 5.14+). Without it, closing the old gateway's listener
/// resets the connections that were accepted by the kernel but not yet by the process.
fn enable_request_migration() -> bool {
    let path = "/proc/sys/net/ipv4/tcp_migrate_req";
    std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1")
        || std::fs::write(path, "1").is_ok()
}

/// A restart without a dropped connection: a second gateway binds the same port
/// (`SO_REUSEPORT`), the first is stopped with SIGTERM and drains, and clients opening a new
/// connection for every request (the worst case for a listener handover) see no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_gateway_takes_the_port_over_while_the_old_one_drains() {
    let _heavy = HEAVY.lock().await;
    if !enable_request_migration() {
        eprintln!("skipped: net.ipv4.tcp_migrate_req cannot be set on this machine");
        return;
    }
    let mut cluster = Cluster::start(2, &[], &[]).await;
    let users = cluster.create_users(CLIENTS).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<JoinHandle<Tally>> = users
        .iter()
        .map(|(id, _)| {
            let stop = stop.clone();
            let token = cluster.token.clone();
            let user = cluster.url(&format!("/users/{id}"));
            tokio::spawn(async move {
                // No keep-alive: every request is a new connection through the handover.
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(15))
                    .build()
                    .unwrap();
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    record(&mut tally, "GET", http.get(&user).bearer_auth(&token), 200).await;
                }
                tally
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;

    // The successor: same port, its own operations port.
    let admin = free_port();
    let config = cluster.config.with_file_name("successor.toml");
    std::fs::write(
        &config,
        gateway_config(cluster.gateway_port, admin, &cluster.ports),
    )
    .unwrap();
    let mut cmd = process::command(KEEL);
    cmd.arg("gateway")
        .arg("--config")
        .arg(&config)
        .current_dir(config.parent().unwrap());
    let mut successor = Running::spawn(&mut cmd);
    wait_ready(&mut successor, &format!("http://127.0.0.1:{admin}/readyz")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.gateway.signal("TERM");
    let exit = cluster
        .gateway
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the old gateway did not stop\n{}", cluster.logs()));
    assert!(exit.success(), "{exit}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for client in clients {
        tally.merge(client.await.unwrap());
    }
    assert!(
        tally.failures.is_empty(),
        "{} failed of {:?}: {:#?}\n--- successor\n{}\n{}",
        tally.failures.len(),
        tally.ok,
        &tally.failures[..tally.failures.len().min(10)],
        tail(&successor.log()),
        cluster.logs()
    );
    assert!(tally.ok("GET") > 100, "the load ran: {:?}", tally.ok);
    // The successor served the clients after the old gateway left.
    let metrics = client()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let served: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("keel_gateway_requests_total") && l.contains("2xx"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(served > 10.0, "the successor served {served}: {metrics}");
}

/// Signs `email` up through the cluster's admin and in; its access token.
async fn signed_in_account(cluster: &Cluster, email: &str) -> String {
    let http = client();
    let res = http
        .post(cluster.url("/users"))
        .bearer_auth(&cluster.token)
        .json(&json!({"name": "Ada", "email": email, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let tokens: Value = http
        .post(cluster.url("/auth/login"))
        .json(&json!({"email": email, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// Signs `token`'s account out everywhere on instance `a`, and measures how long instance `b`
/// (which verified and cached the token before) keeps accepting it: `None` if it still does
/// after `within`.
async fn revoked_on_a_refused_on_b_after(
    cluster: &Cluster,
    token: &str,
    within: Duration,
) -> Option<Duration> {
    let http = client();
    let on = |i: usize, path: &str| format!("http://127.0.0.1:{}{path}", cluster.ports[i]);
    for i in [0, 1, 0, 1] {
        let res = http.get(on(i, "/auth/me")).bearer_auth(token).send().await;
        assert_eq!(res.unwrap().status(), 200, "instance {i} accepts the token");
    }
    let res = http
        .post(on(0, "/auth/logout-all"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let revoked = Instant::now();
    loop {
        let res = http.get(on(1, "/auth/me")).bearer_auth(token).send().await;
        match res.unwrap().status().as_u16() {
            401 => return Some(revoked.elapsed()),
            200 if revoked.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            200 => return None,
            other => panic!("instance 1 answered {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_instance_is_refused_by_the_other_at_once_with_redis() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(
        2,
        &[("KEEL_CACHE__REDIS_URL", "redis://127.0.0.1:6379")],
        &[],
    )
    .await;
    let token = signed_in_account(&cluster, "ada@revoke.test").await;
    let took = revoked_on_a_refused_on_b_after(&cluster, &token, Duration::from_secs(5)).await;
    // Redis handed the revocation to the other instance before the revoking request answered:
    // its first look refuses.
    let took = took.unwrap_or_else(|| panic!("still accepted after 5 s\n{}", cluster.logs()));
    println!("with Redis: the other instance refused {took:?} after the revocation answered");
    assert!(took < Duration::from_millis(500), "{took:?}");
    for _ in 0..4 {
        let res = client()
            .get(cluster.url("/users"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "through the gateway, on either instance");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_instances_refuse_a_revoked_token_within_the_revocation_check() {
    let _heavy = HEAVY.lock().await;
    let cluster = Cluster::start(2, &[("KEEL_IDENTITY__REVOCATION_CHECK_SECS", "2")], &[]).await;
    let token = signed_in_account(&cluster, "ada@revoke.test").await;
    // Whole seconds: a floor read in second s is trusted until s + 2, so up to 2 s.
    let took = revoked_on_a_refused_on_b_after(&cluster, &token, Duration::from_secs(4)).await;
    let took = took.unwrap_or_else(|| panic!("still accepted after 4 s\n{}", cluster.logs()));
    println!(
        "without Redis (revocation_check_secs = 2): the other instance refused after {took:?}"
    );
    assert!(took <= Duration::from_millis(2_200), "{took:?}");
}
