//! The `keel` binary as an operator runs it: killed with SIGKILL under write load, its workers
//! killed mid-stream on every broker (private NATS and RabbitMQ servers crashed with them),
//! stopped with SIGTERM with requests in flight, and misconfigured.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_test_support::process::{self, Running, free_port};
use serde_json::{Value, json};

use crate::KEEL;

/// Starts `keel serve` on `port` with `data_dir` and extra environment, and waits until ready.
fn start(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Running {
    start_role("serve", data_dir, port, env)
}

/// Starts `keel <role>` (`serve`, or `up`: the API behind its in-process gateway, and the
/// workers) and waits until ready.
fn start_role(role: &str, data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Running {
    let mut cmd = process::command(KEEL);
    cmd.arg(role)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("KEEL_TELEMETRY__ACCESS_LOG", "false")
        .env("KEEL_TELEMETRY__LOG_LEVEL", "info")
        .current_dir(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut keel = Running::spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = keel.exited() {
            panic!("keel exited early with {status}: {}", keel.whole_log());
        }
        if http(port, "GET", "/readyz", None).is_ok_and(|(status, _)| status == 200) {
            sign_in_admin(data_dir, port, env);
            return keel;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("keel did not become ready");
}

const ADMIN: &str = "admin@process.test";
const ADMIN_PASSWORD: &str = "the operator of this test";

/// The admin access token of the server on each port: `http` sends it (the users API needs a
/// caller since issue 4).
static TOKENS: std::sync::Mutex<Vec<(u16, String)>> = std::sync::Mutex::new(Vec::new());

/// Makes the admin with `keel admin create` (once per database: later calls find it there) and
/// signs it in on the server at `port`.
fn sign_in_admin(data_dir: &Path, port: u16, env: &[(&str, &str)]) {
    let mut cmd = process::command(KEEL);
    cmd.args(["admin", "create", "--email", ADMIN, "--data-dir"])
        .arg(data_dir)
        .current_dir(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("keel admin create runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{ADMIN_PASSWORD}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || stderr.contains("already exists"),
        "keel admin create: {stderr}"
    );
    let (status, tokens) = http(
        port,
        "POST",
        "/auth/login",
        Some(&json!({"email": ADMIN, "password": ADMIN_PASSWORD})),
    )
    .unwrap();
    assert_eq!(status, 200, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let mut all = TOKENS.lock().unwrap();
    all.retain(|(p, _)| *p != port);
    all.push((port, token));
}

/// The `authorization` header line of requests to the server on `port` (none before sign-in).
fn authorization(port: u16) -> String {
    TOKENS
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, token)| format!("authorization: Bearer {token}\r\n"))
        .unwrap_or_default()
}

/// Sends SIGTERM, as an orchestrator stopping the instance does.
fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits for the process to exit, failing with `why` if it takes longer than `within`.
fn wait_for_exit(child: &mut Child, within: Duration, why: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(exit) = child.try_wait().unwrap() {
            return exit;
        }
        assert!(started.elapsed() < within, "{why}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal blocking HTTP/1.1 exchange on a fresh connection: (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body
        .map(std::string::ToString::to_string)
        .unwrap_or_default();
    let authorization = authorization(port);
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\n{authorization}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    read_response(stream)
}

fn read_response(stream: TcpStream) -> std::io::Result<(u16, Value)> {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("keel.db").display())
}

/// Every user (id, name, version) in the database at `url` of the instance with `data_dir`,
/// read through keel's repository (names are sealed at rest with that instance's keys).
async fn stored(data_dir: &Path, url: &str) -> Vec<(String, String, i64)> {
    let mut settings = keel_config::Settings {
        data_dir: data_dir.to_owned(),
        ..Default::default()
    };
    settings.database.url = Some(keel_config::Secret::new(url));
    let repo = keel::database::Database::open(&settings)
        .await
        .unwrap()
        .repo();
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = repo
            .list(keel_domain::PageRequest { after, limit: 200 })
            .await
            .unwrap();
        rows.extend(
            page.items
                .iter()
                .filter(|u| u.email.as_str() != ADMIN)
                .map(|u| (u.id.to_string(), u.name.as_str().to_owned(), u.version)),
        );
        match page.next_after {
            Some(next) => after = Some(next),
            None => return rows,
        }
    }
}

fn journal_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("writeback"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_loses_no_acknowledged_write_when_killed_with_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    kill_under_write_back_load(dir, url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_on_postgres_loses_no_acknowledged_write_when_killed_with_sigkill() {
    let url = keel_test_support::services::create_postgres_database().await;
    kill_under_write_back_load(tempfile::tempdir().unwrap(), url).await;
}

/// Kills keel with SIGKILL under a write-back write load on the database at `url`, restarts it,
/// and checks that every acknowledged write is stored and none was applied twice.
async fn kill_under_write_back_load(dir: tempfile::TempDir, url: String) {
    let port = free_port();
    // A slow flush keeps a large backlog in the journal only, at the moment of the kill.
    let env = [
        ("KEEL_CACHE__USERS__STRATEGY", "write-back"),
        ("KEEL_CACHE__WRITE_BACK__FLUSH_INTERVAL_MS", "700"),
        ("KEEL_DATABASE__URL", url.as_str()),
    ];
    let mut keel = start(dir.path(), port, &env);

    // Writers create a user, then rename it, recording only what the server acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<std::sync::Mutex<Vec<(String, String, i64)>>> = Arc::default();
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let stop = stop.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = json!({"name": format!("w{w} n{n}"), "email": format!("w{w}-n{n}@example.com")});
                    let Ok((201, user)) = http(port, "POST", "/users", Some(&body)) else { break };
                    let id = user["id"].as_str().unwrap().to_owned();
                    acked.lock().unwrap().push((id.clone(), format!("w{w} n{n}"), 1));
                    let body = json!({"name": format!("w{w} n{n} renamed"), "email": format!("w{w}-n{n}@example.com")});
                    let Ok((200, user)) = http(port, "PUT", &format!("/users/{id}"), Some(&body)) else { break };
                    acked.lock().unwrap().push((id, format!("w{w} n{n} renamed"), user["version"].as_i64().unwrap()));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    keel.kill().unwrap(); // SIGKILL: no chance to flush
    keel.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "the load must have produced writes, got {}",
        acked.len()
    );
    assert!(
        journal_files(dir.path()) > 0,
        "the kill must leave a journal to replay"
    );

    // Restart: the journal is replayed before the server reports ready.
    let mut keel = start(dir.path(), port, &env);
    let rows = stored(dir.path(), &url).await;
    let by_id: std::collections::HashMap<_, _> = rows
        .iter()
        .map(|(id, name, v)| (id.clone(), (name.clone(), *v)))
        .collect();
    let mut last: std::collections::HashMap<String, (String, i64)> =
        std::collections::HashMap::new();
    for (id, name, version) in &acked {
        last.insert(id.clone(), (name.clone(), *version));
    }
    for (id, (name, version)) in &last {
        let (stored_name, stored_version) = by_id
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged user {id} was lost"));
        // A write acknowledged last may have been followed by an unacknowledged one that still
        // reached the journal; nothing older than what was acknowledged may be stored.
        assert!(
            stored_version >= version,
            "user {id}: stored v{stored_version} is older than acknowledged v{version}"
        );
        if stored_version == version {
            assert_eq!(stored_name, name);
        }
        assert!(
            *stored_version <= 2,
            "user {id} was updated more times than requested (applied twice?)"
        );
    }
    keel.kill().unwrap();
    keel.wait().unwrap();
}

/// Creates and renames `n` users one by one; returns the (id, new name) of each rename the
/// server acknowledged.
fn create_and_rename_users(port: u16, prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let email = format!("{prefix}-{i}@example.com");
            let body = json!({"name": format!("{prefix} {i}"), "email": email});
            let (status, user) = http(port, "POST", "/users", Some(&body)).unwrap();
            assert_eq!(status, 201, "{user}");
            let id = user["id"].as_str().unwrap().to_owned();
            let name = format!("{prefix} {i} renamed");
            let body = json!({"name": name, "email": email});
            let (status, user) = http(port, "PUT", &format!("/users/{id}"), Some(&body)).unwrap();
            assert_eq!(status, 200, "{user}");
            (id, name)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_restarts_after_two_kills_in_a_row_that_left_an_empty_segment_and_a_torn_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let port = free_port();
    // No flush before the kills: everything acknowledged is in the journal only.
    let env = [
        ("KEEL_CACHE__USERS__STRATEGY", "write-back"),
        ("KEEL_CACHE__WRITE_BACK__FLUSH_INTERVAL_MS", "600000"),
        ("KEEL_DATABASE__URL", url.as_str()),
    ];
    let mut keel = start(dir.path(), port, &env);
    let mut acked = create_and_rename_users(port, "first", 20);
    keel.kill().unwrap();
    keel.wait().unwrap();

    // Build on disk what two kills in a row could leave: a segment created just before the first
    // kill, still empty and named after every other, and the last record of the newest segment
    // with records torn by the second.
    let journal = dir.path().join("writeback");
    let mut segments: Vec<_> = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let newest = segments.last().expect("the kill leaves a journal").clone();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    // A header announcing 200 bytes, then 10 of them.
    let mut torn = 200u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 22]);
    file.write_all(&torn).unwrap();
    drop(file);
    std::fs::write(journal.join(format!("users-{:020}.wal", 1u64 << 40)), b"").unwrap();

    let mut keel = start(dir.path(), port, &env);
    acked.extend(create_and_rename_users(port, "second", 20));
    keel.kill().unwrap();
    keel.wait().unwrap();
    let keel = start(dir.path(), port, &env);
    let rows = stored(dir.path(), &url).await;
    let names: std::collections::HashMap<_, _> =
        rows.iter().map(|(id, name, _)| (id, name)).collect();
    for (id, name) in &acked {
        assert_eq!(
            names.get(id).map(|n| n.as_str()),
            Some(name.as_str()),
            "acknowledged user {id} was lost"
        );
    }
    assert_eq!(rows.len(), acked.len(), "nothing but what was acknowledged");
    drop(keel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_flushes_the_write_back_journal() {
    sigterm_drains("serve").await;
}

/// The same through `keel up`'s in-process gateway, which holds the half-sent body itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_keel_up_through_its_gateway() {
    sigterm_drains("up").await;
}

async fn sigterm_drains(role: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [
        ("KEEL_CACHE__USERS__STRATEGY", "write-back"),
        ("KEEL_CACHE__WRITE_BACK__FLUSH_INTERVAL_MS", "600000"),
        ("KEEL_SHUTDOWN__READINESS_GRACE_MS", "400"),
        ("KEEL_SHUTDOWN__DRAIN_DEADLINE_MS", "5000"),
    ];
    let mut keel = start_role(role, dir.path(), port, &env);
    let (status, acked) = http(
        port,
        "POST",
        "/users",
        Some(&json!({"name": "Before", "email": "before@example.com"})),
    )
    .unwrap();
    assert_eq!(status, 201);

    // A request in flight: headers and half the body sent.
    let body = json!({"name": "In flight", "email": "inflight@example.com"}).to_string();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(slow, "POST /users HTTP/1.1\r\nhost: x\r\n{}content-type: application/json\r\ncontent-length: {}\r\n\r\n", authorization(port), body.len()).unwrap();
    slow.write_all(&body.as_bytes()[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    sigterm(&keel);
    std::thread::sleep(Duration::from_millis(100));
    let (status, ready) =
        http(port, "GET", "/readyz", None).expect("still serving during the grace period");
    assert_eq!((status, ready["status"].as_str()), (503, Some("draining")));

    slow.write_all(&body.as_bytes()[10..]).unwrap();
    let (status, user) = read_response(slow).unwrap();
    assert_eq!(status, 201, "the in-flight request must complete: {user}");

    let exit = wait_for_exit(
        &mut keel,
        Duration::from_secs(10),
        "keel did not stop within its deadline",
    );
    assert!(exit.success(), "graceful stop exits 0, got {exit}");
    let log = keel.whole_log();
    assert!(log.contains("write-back backlog flushed"), "{log}");

    let rows = stored(dir.path(), &sqlite_url(dir.path())).await;
    let ids: Vec<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    assert!(
        ids.contains(&acked["id"].as_str().unwrap()),
        "the journal must be flushed on SIGTERM"
    );
    assert!(ids.contains(&user["id"].as_str().unwrap()));
    assert_eq!(
        journal_files(dir.path()),
        0,
        "a flushed journal leaves no segment behind"
    );
}

/// Secrets stay out of the logs (issue 4 §8): with every request logged and debug on, a
/// sign-up, a sign-in, a refresh, a signed-in read and a reset request write neither the
/// password, nor a token, nor the address asked about.
#[test]
fn passwords_and_tokens_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [
        ("KEEL_TELEMETRY__ACCESS_LOG", "true"),
        ("KEEL_TELEMETRY__LOG_LEVEL", "debug"),
    ];
    let mut keel = start(dir.path(), port, &env);
    let password = "a secret never to be logged 42";
    let (status, user) = http(
        port,
        "POST",
        "/auth/signup",
        Some(&json!({"name": "Ada", "email": "ada@logs.test", "password": password})),
    )
    .unwrap();
    assert_eq!(status, 201, "{user}");
    let (status, tokens) = http(
        port,
        "POST",
        "/auth/login",
        Some(&json!({"email": "ada@logs.test", "password": password})),
    )
    .unwrap();
    assert_eq!(status, 200, "{tokens}");
    let (status, _) = http(
        port,
        "POST",
        "/auth/refresh",
        Some(&json!({"refresh_token": tokens["refresh_token"]})),
    )
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = http(
        port,
        "GET",
        &format!("/users/{}", user["id"].as_str().unwrap()),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "the admin reads Ada");
    let (status, _) = http(
        port,
        "POST",
        "/auth/password/forgot",
        Some(&json!({"email": "ada@logs.test"})),
    )
    .unwrap();
    assert_eq!(status, 202);
    keel.kill().unwrap();
    keel.wait().unwrap();
    let log = keel.whole_log();
    assert!(
        log.contains("/auth/login"),
        "the requests were logged: {log}"
    );
    let admin_token = TOKENS
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, t)| t.clone())
        .unwrap();
    for secret in [
        password,
        ADMIN_PASSWORD,
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
        admin_token.as_str(),
        "ada@logs.test",
    ] {
        assert!(!log.contains(secret), "the log holds a secret: {secret}");
    }
}

#[tokio::test]
async fn an_internal_error_is_logged_with_its_error_id_and_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut keel = start(dir.path(), port, &[]);
    let pool = sqlx::SqlitePool::connect(&sqlite_url(dir.path()))
        .await
        .unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    sqlx::query("INSERT INTO users VALUES (?, 'Broken', 'no-at-sign', 'x', 'x', 1)")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    let (status, body) = http(port, "GET", &format!("/users/{id}"), None).unwrap();
    assert_eq!(status, 500);
    let error_id = body["error_id"].as_str().unwrap().to_owned();
    assert!(
        !body.to_string().contains("corrupt"),
        "no internals in the response: {body}"
    );
    keel.kill().unwrap();
    keel.wait().unwrap();
    let log = keel.whole_log();
    let line = log
        .lines()
        .find(|l| l.contains(&error_id))
        .unwrap_or_else(|| panic!("no log line has {error_id}: {log}"));
    let line: Value = serde_json::from_str(line).expect("logs are JSON");
    assert!(
        line["cause"].as_str().unwrap().contains("corrupt row"),
        "{line}"
    );
    assert!(
        line["spans"][0]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{line}"
    );
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = process::command(KEEL)
        .arg("config")
        .current_dir(dir.path())
        .env("KEEL_SERVER__LISTN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listn"));

    let out = process::command(KEEL)
        .arg("config")
        .current_dir(dir.path())
        .env("KEEL_DATABASE__URL", "postgres://keel:hunter2@db/keel")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("postgres://keel:***@db/keel"), "{printed}");
    assert!(!printed.contains("hunter2"));
}

#[test]
fn migrate_creates_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = process::command(KEEL)
        .arg("migrate")
        .arg("--data-dir")
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("keel.db").exists());
}

#[test]
fn sigterm_gives_up_on_a_stuck_request_at_the_drain_deadline() {
    gives_up_at_the_drain_deadline("serve");
}

#[test]
fn keel_up_gives_up_on_a_stuck_request_at_the_drain_deadline() {
    gives_up_at_the_drain_deadline("up");
}

fn gives_up_at_the_drain_deadline(role: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let env = [("KEEL_SHUTDOWN__DRAIN_DEADLINE_MS", "500")];
    let mut keel = start_role(role, dir.path(), port, &env);
    // A client that sends half a body and then nothing: it would hold the drain forever.
    let mut stuck = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stuck, "POST /users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    sigterm(&keel);
    let started = Instant::now();
    let exit = wait_for_exit(
        &mut keel,
        Duration::from_secs(5),
        "keel ignored its drain deadline",
    );
    assert!(exit.success(), "{exit}");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "keel must wait for the deadline first"
    );
    drop(stuck);
}

/// Starts `keel worker` (the relay and the subscriber groups' workers) on `data_dir`.
fn start_worker(data_dir: &Path, env: &[(&str, &str)]) -> Running {
    let mut cmd = process::command(KEEL);
    cmd.arg("worker")
        .arg("--data-dir")
        .arg(data_dir)
        .env("KEEL_TELEMETRY__LOG_LEVEL", "warn")
        .current_dir(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Running::spawn(&mut cmd)
}

/// Per user id, the rows of `table` (the effects of the audit and notifier groups) in keel's
/// database at `url`.
async fn effects_per_user(url: &str, table: &str) -> std::collections::HashMap<String, i64> {
    use sqlx::Connection;
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT user_id, count(*) FROM {table} GROUP BY user_id"
    ));
    let rows: Vec<(String, i64)> = if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    };
    rows.into_iter().collect()
}

/// Patients ever admitted to the hospital in the database at `url`.
async fn patients(url: &str) -> i64 {
    use sqlx::Connection;
    let sql = "SELECT count(*) FROM hospital_patients";
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
    }
}

/// Worker processes — each also a relay of the outbox — killed with SIGKILL in the middle of a
/// stream of events and replaced: every event still takes effect exactly once (one audit entry
/// per user, and one welcome notification and one invitation mail: the admin makes the
/// accounts without passwords), and nothing lands in the hospital.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_and_relays_lose_no_event_and_apply_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let database = sqlite_url(dir.path());
    let hospital = format!("sqlite://{}", dir.path().join("queue.db").display());
    kill_workers_mid_stream(dir, &[], &database, &hospital, None).await;
}

/// The same with keel's database on PostgreSQL and the queue (and so the hospital) in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_killed_workers_and_relays_lose_no_event_and_apply_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let database = keel_test_support::services::create_postgres_database().await;
    let env = [
        ("KEEL_DATABASE__URL", database.as_str()),
        ("KEEL_QUEUE__URL", database.as_str()),
    ];
    kill_workers_mid_stream(dir, &env, &database, &database, None).await;
}

/// The same on NATS JetStream — a private server, also killed with SIGKILL and restarted on its
/// store mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_killed_workers_and_a_restarted_server_lose_no_event_and_apply_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let nats = PrivateNats::start(dir.path());
    let url = nats.url();
    let database = sqlite_url(dir.path());
    let hospital = format!("sqlite://{}", dir.path().join("hospital.db").display());
    let env = [("KEEL_QUEUE__URL", url.as_str())];
    kill_workers_mid_stream(dir, &env, &database, &hospital, Some(Box::new(nats))).await;
}

/// The same on RabbitMQ — a private node, also killed with SIGKILL and restarted on its store
/// mid-stream (the machine's shared node serves other tests and is left alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_killed_workers_and_a_restarted_node_lose_no_event_and_apply_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let rabbit = PrivateRabbit::start();
    let url = rabbit.url();
    let database = sqlite_url(dir.path());
    let hospital = format!("sqlite://{}", dir.path().join("hospital.db").display());
    let env = [("KEEL_QUEUE__URL", url.as_str())];
    kill_workers_mid_stream(dir, &env, &database, &hospital, Some(Box::new(rabbit))).await;
}

/// A broker server of the test's own, which the test may crash.
trait PrivateBroker {
    /// SIGKILL, then a restart on the same store; returns once it serves again.
    fn crash_and_restart(&mut self);
}

/// A NATS server of this test's own (JetStream on, its store in the test's directory).
struct PrivateNats {
    child: Child,
    port: u16,
    store: std::path::PathBuf,
}

impl PrivateNats {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let store = dir.join("nats");
        let child = Self::spawn(port, &store);
        Self { child, port, store }
    }

    fn spawn(port: u16, store: &Path) -> Child {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl PrivateBroker for PrivateNats {
    /// SIGKILL, a pause, and a restart on the same store.
    fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        self.child = Self::spawn(self.port, &self.store);
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The installed RabbitMQ's own scripts: `/usr/sbin`'s wrappers would switch to the `rabbitmq`
/// user and its home (and so to the shared node's cookie and files).
const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// A RabbitMQ node of this test's own, running.
struct PrivateRabbit {
    /// The node's Erlang VM itself (the start script `exec`s it), so SIGKILL crashes the node.
    child: Child,
    node: RabbitNode,
}

/// What makes a RabbitMQ node this test's own: its node name, AMQP and distribution ports, and
/// every file (configuration, database, logs, Erlang cookie) in its own directory.
struct RabbitNode {
    name: String,
    port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRabbit {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        // Empty: the machine's rabbitmq-env.conf names the shared node.
        std::fs::write(dir.path().join("rabbitmq-env.conf"), "").unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let node = RabbitNode {
            name: format!("keeltest-{}@localhost", uuid::Uuid::new_v4().simple()),
            port,
            dist_port: free_port(),
            dir,
        };
        Self {
            child: node.spawn(),
            node,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.node.port)
    }
}

impl RabbitNode {
    /// Starts the node on its directory and waits until it has booted.
    fn spawn(&self) -> Child {
        let dir = self.dir.path();
        let mut child = self
            .command("rabbitmq-server")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            // Makes the script `exec` the VM instead of running it as a child of a shell that
            // traps signals: the child's pid is then the node's.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server is installed");
        // RabbitMQ 3.10 takes about 10 s to boot here, more after a crash and on a busy machine.
        let within = Duration::from_secs(90);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the private RabbitMQ node {} exited with {status} while booting; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            // Fails at once while the VM has not registered the node's name yet, then waits.
            let booted = self
                .command("rabbitmqctl")
                .args(["-n", &self.name, "await_startup", "--timeout", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("rabbitmqctl is installed");
            if booted.success() {
                return child;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the private RabbitMQ node {} did not boot within {within:?}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A command of the installed RabbitMQ aimed at this node. HOME is the node's directory, so
    /// the node and `rabbitmqctl` share the Erlang cookie the first start writes there.
    fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new(Path::new(RABBITMQ_BIN).join(script));
        cmd.env("HOME", self.dir.path())
            .env("RABBITMQ_NODENAME", &self.name)
            .env(
                "RABBITMQ_CONF_ENV_FILE",
                self.dir.path().join("rabbitmq-env.conf"),
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .current_dir(self.dir.path());
        cmd
    }

    /// The last lines of the node's log, for a failure message.
    fn log(&self) -> String {
        let path = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.name));
        let log = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("({e})"));
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl PrivateBroker for PrivateRabbit {
    /// SIGKILL and a restart on the same database: what was confirmed must still be there.
    fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = self.node.spawn();
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        // SIGKILL is enough: the node's files go with its directory, and its helper processes
        // (erl_child_setup, inet_gethost) exit when the VM does.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn kill_workers_mid_stream(
    dir: tempfile::TempDir,
    extra_env: &[(&str, &str)],
    database_url: &str,
    hospital_url: &str,
    mut broker: Option<Box<dyn PrivateBroker>>,
) {
    const USERS: usize = 300;
    // Short leases, so what a killed worker held comes back quickly.
    let mut env = vec![
        ("KEEL_QUEUE__LEASE_MS", "1500"),
        ("KEEL_QUEUE__BACKOFF_BASE_MS", "50"),
    ];
    env.extend_from_slice(extra_env);
    let port = free_port();
    let mut api = start(dir.path(), port, &env);
    let mut workers: Vec<Running> = (0..2).map(|_| start_worker(dir.path(), &env)).collect();

    let writer = std::thread::spawn(move || {
        (0..USERS)
            .map(|n| {
                let body =
                    json!({"name": format!("user {n}"), "email": format!("u{n}@faults.test")});
                let (status, user) = http(port, "POST", "/users", Some(&body)).unwrap();
                assert_eq!(status, 201, "{user}");
                std::thread::sleep(Duration::from_millis(3));
                user["id"].as_str().unwrap().to_owned()
            })
            .collect::<Vec<_>>()
    });
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let victim = &mut workers[round % 2];
        victim.kill().unwrap(); // SIGKILL, mid-stream
        victim.wait().unwrap();
        // The broker crashes while the surviving worker runs; the replacement starts after the
        // restart, since `keel worker` exits when it cannot reach the broker at start.
        if round == 2
            && let Some(broker) = broker.as_mut()
        {
            broker.crash_and_restart();
        }
        *victim = start_worker(dir.path(), &env);
    }
    let ids = writer.join().unwrap();

    // The survivors drain the rest (a killed relay's lead lapses after its lease).
    let within = Duration::from_secs(90);
    let deadline = Instant::now() + within;
    // Counted over the writer's users (the admin the test signs in with has effects too).
    let done = |effects: &std::collections::HashMap<String, i64>, each: i64| {
        ids.iter()
            .filter(|id| effects.get(*id) >= Some(&each))
            .count()
    };
    let (audit, sent) = loop {
        let audit = effects_per_user(database_url, "user_audit").await;
        let sent = effects_per_user(database_url, "notifications").await;
        if (done(&audit, 1) == USERS && done(&sent, 2) == USERS) || Instant::now() > deadline {
            break (audit, sent);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for mut child in workers.into_iter().chain([api]) {
        let _ = child.kill();
        let _ = child.wait();
    }
    api = start(dir.path(), port, &env); // proves the database is healthy after the kills
    let _ = api.kill();
    let _ = api.wait();

    assert_eq!(
        (done(&audit, 1), done(&sent, 2)),
        (USERS, USERS),
        "within {within:?} of the last kill, (users audited, users notified) must reach \
         ({USERS}, {USERS}): events lost or stuck"
    );

    for id in &ids {
        assert_eq!(audit.get(id), Some(&1), "user {id}: one audit entry");
        assert_eq!(
            sent.get(id),
            Some(&2),
            "user {id}: one welcome notification and one invitation mail"
        );
    }
    assert_eq!(
        patients(hospital_url).await,
        0,
        "no message was given up on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_killed_mid_creation_are_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    kill_during_account_creation(dir, url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_accounts_killed_mid_creation_are_whole_or_absent() {
    let url = keel_test_support::services::create_postgres_database().await;
    kill_during_account_creation(tempfile::tempdir().unwrap(), url).await;
}

/// Kills keel with SIGKILL three times, each once ten more accounts are made, during a stream of
/// account creations (sign-ups with a password and invitations with a role), then checks every
/// account in the database: its credentials, its roles, its audit entry and its mail (still in
/// the outbox: `keel serve` runs no relay) are all there. Before accounts were made in one transaction, each kill left the
/// creations in flight half-made.
async fn kill_during_account_creation(dir: tempfile::TempDir, url: String) {
    let port = free_port();
    let env = [("KEEL_DATABASE__URL", url.as_str())];
    let acked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    for round in 0..3 {
        let mut keel = start(dir.path(), port, &env);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let email = format!("r{round}-w{w}-n{n}@example.com");
                        // Even writers sign people up, odd ones invite operators.
                        let body = if w % 2 == 0 {
                            json!({"name": "Sign-up", "email": email, "password": "a fine long passphrase"})
                        } else {
                            json!({"name": "Invited", "email": email, "roles": ["operator"]})
                        };
                        let Ok((201, user)) = http(port, "POST", "/users", Some(&body)) else {
                            break;
                        };
                        acked
                            .lock()
                            .unwrap()
                            .push(user["id"].as_str().unwrap().to_owned());
                    }
                })
            })
            .collect();
        // Killed once this round has made some accounts, whatever the machine's speed.
        let before = acked.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked.lock().unwrap().len() < before + 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        keel.kill().unwrap();
        keel.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 30, "too few accounts made: {}", acked.len());

    let mut settings = keel_config::Settings {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    settings.database.url = Some(keel_config::Secret::new(url.as_str()));
    let database = keel::database::Database::open(&settings).await.unwrap();
    let (identity, events) = (database.identity(), database.events());
    let users = stored(dir.path(), &url).await;
    let stored_ids: std::collections::HashSet<&String> = users.iter().map(|(id, ..)| id).collect();
    for id in &acked {
        assert!(
            stored_ids.contains(id),
            "acknowledged account {id} was lost"
        );
    }
    let operators: std::collections::HashSet<String> = identity
        .holders_of("operator", 1_000_000)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    let outbox = events.outbox_pending(1_000_000).await.unwrap();
    let mails: std::collections::HashSet<&str> = outbox
        .iter()
        .filter(|r| r.topic.starts_with("mail."))
        .filter_map(|r| r.message.key.as_deref())
        .collect();
    let mut half_made = Vec::new();
    for (id, name, _) in &users {
        let user_id: keel_domain::UserId = id.parse().unwrap();
        let credentials = identity.credentials(user_id).await.unwrap();
        let audited = !identity
            .audit(&keel_domain::AuthEventQuery {
                subject: Some(id.clone()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty();
        let invited = name == "Invited";
        let whole = credentials.as_ref().is_some_and(|c| {
            c.password_hash.is_some() != invited && (c.roles == ["operator"]) == invited
        }) && operators.contains(id) == invited
            && audited
            && mails.contains(id.as_str());
        if !whole {
            half_made.push(format!(
                "{id} ({name}): credentials {:?}, audited {audited}, mail {}",
                credentials.map(|c| c.roles),
                mails.contains(id.as_str())
            ));
        }
    }
    assert!(
        half_made.is_empty(),
        "{} of {} accounts half-made: {half_made:#?}",
        half_made.len(),
        users.len()
    );
}
