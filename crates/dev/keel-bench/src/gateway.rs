//! `keel-bench gateway`: keel's gateway beside nginx, each in front of the same `keel serve`
//! instances, on the API's cached read (`GET /users/{id}` with a bearer token), in one run on
//! one machine.
//!
//! Rows: `direct` (wrk straight at one `keel serve`: the ceiling), then `keel gateway` and
//! nginx in front of one upstream, and of two (round robin). Each row is checked before it is
//! measured (a GET through the proxy answers 200 with the same user JSON as the upstream
//! itself), warmed up, then measured with the same wrk settings. Every child process (the
//! upstreams, the gateway, nginx and its workers) is stopped on every way out, errors and
//! panics included ([`Proc`]'s `Drop`). Writes `bench/out/gateway.json`.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::http;
use crate::report;
use crate::run;
use crate::seed::{self, Dataset};
use crate::wrk::{self, WrkResult, WrkSpec, round};

/// wrk runs on core 0 and the upstreams on core 1, as in `keel-bench run`: one wrk thread
/// saturates near 100k req/s here, so the load generator and the servers must not queue behind
/// each other on one core, and every row puts the same upstream work on the same core.
const WRK_CORE: &str = "0";
const UPSTREAM_CORE: &str = "1";
/// The proxy under test (keel's gateway or nginx, alike) is left unpinned: allowed on every
/// online core, as a proxy sharing a machine with its upstreams is deployed. Pinning it to
/// either core of this 2-core machine would make it queue behind wrk or the upstreams and
/// measure the scheduler more than the proxy. This must be said explicitly: the orchestrator
/// itself runs under `taskset -c 0` (bench/gateway.sh) and children inherit its affinity.
const PROXY_CORES_DEFAULT: &str = "0-1";

const UPSTREAM_PORTS: [u16; 2] = [18191, 18192];
const GATEWAY_PORT: u16 = 18193;
const NGINX_PORT: u16 = 18194;
/// The `iss` both upstreams sign and expect: a token signed by one must pass the other, as it
/// must behind any load balancer (unset, each instance would name its own listener).
const ISSUER: &str = "http://127.0.0.1:18190";
/// Ids checked through each proxy before and after its row: enough that round robin sends
/// several to each upstream.
const CHECK_SAMPLE: usize = 20;

#[derive(clap::Args, Debug)]
pub(crate) struct GatewayArgs {
    /// Quick mode: 3 s runs after a 1 s warm-up, one round.
    #[arg(long, env = "KEEL_BENCH_QUICK")]
    pub quick: bool,
    /// Seconds per measured wrk run [default: 10, --quick: 3].
    #[arg(long, env = "KEEL_BENCH_DURATION")]
    pub duration: Option<u64>,
    /// Seconds of wrk warm-up before each measured run [default: 2, --quick: 1].
    #[arg(long, env = "KEEL_BENCH_WARMUP")]
    pub warmup: Option<u64>,
    /// wrk connections (the same for every row).
    #[arg(long, env = "KEEL_BENCH_CONNECTIONS", default_value_t = 64)]
    pub connections: u32,
    /// wrk threads (one saturates near 100k req/s on this machine).
    #[arg(long, env = "KEEL_BENCH_THREADS", default_value_t = 1)]
    pub threads: u32,
    /// Rounds of every row; the table shows each row's median run, the targets are judged on
    /// the median of the per-round ratios [default: 3, --quick: 1].
    #[arg(long, env = "KEEL_BENCH_GATEWAY_ROUNDS")]
    pub rounds: Option<u32>,
    /// Users seeded into the upstreams' SQLite database.
    #[arg(long, env = "KEEL_BENCH_GATEWAY_USERS", default_value_t = 10_000)]
    pub users: usize,
    /// Ids wrk asks for at random (each cached in every upstream before the rows).
    #[arg(long, env = "KEEL_BENCH_HIT_SET", default_value_t = 1000)]
    pub hit_set: usize,
    #[arg(long, env = "KEEL_BIN", default_value = "target/release/keel")]
    pub keel_bin: PathBuf,
    /// nginx binary [default: nginx on PATH, else /usr/sbin/nginx].
    #[arg(long, env = "KEEL_BENCH_NGINX")]
    pub nginx: Option<PathBuf>,
    #[arg(long, default_value = "bench")]
    pub bench_dir: PathBuf,
    #[arg(long, default_value = "bench/out")]
    pub out: PathBuf,
    #[arg(long, default_value = WRK_CORE)]
    pub wrk_core: String,
    #[arg(long, default_value = UPSTREAM_CORE)]
    pub upstream_core: String,
    /// Cores the proxy may use [default: every online core].
    #[arg(long)]
    pub proxy_cores: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proxy {
    Direct,
    Keel,
    Nginx,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    key: &'static str,
    label: &'static str,
    proxy: Proxy,
    upstreams: usize,
}

const ROWS: [Row; 5] = [
    Row {
        key: "direct",
        label: "wrk -> keel serve (the ceiling)",
        proxy: Proxy::Direct,
        upstreams: 1,
    },
    Row {
        key: "keel-gateway-1",
        label: "wrk -> keel gateway -> 1 keel serve",
        proxy: Proxy::Keel,
        upstreams: 1,
    },
    Row {
        key: "nginx-1",
        label: "wrk -> nginx -> 1 keel serve",
        proxy: Proxy::Nginx,
        upstreams: 1,
    },
    Row {
        key: "keel-gateway-2",
        label: "wrk -> keel gateway -> 2 keel serve (round robin)",
        proxy: Proxy::Keel,
        upstreams: 2,
    },
    Row {
        key: "nginx-2",
        label: "wrk -> nginx -> 2 keel serve (round robin)",
        proxy: Proxy::Nginx,
        upstreams: 2,
    },
];

/// One measured run of one row.
#[derive(Debug, Clone)]
struct Measure {
    round: u32,
    wrk: WrkResult,
    /// CPU seconds the proxy's process tree used during the measured run.
    proxy_cpu_s: Option<f64>,
    /// CPU seconds each upstream used during the measured run.
    upstream_cpu_s: Vec<f64>,
    /// The share of the machine's CPU time the hypervisor gave to other guests meanwhile.
    steal: Option<f64>,
}

#[derive(Debug, Default)]
struct RowResult {
    runs: Vec<Measure>,
    errors: Vec<String>,
}

impl RowResult {
    /// The run with the median req/s (the lower middle one for an even count).
    fn median(&self) -> Option<&Measure> {
        let mut runs: Vec<&Measure> = self.runs.iter().collect();
        runs.sort_by(|a, b| a.wrk.rps.total_cmp(&b.wrk.rps));
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }

    fn in_round(&self, round: u32) -> Option<&Measure> {
        self.runs.iter().find(|m| m.round == round)
    }
}

struct Ctx {
    args: GatewayArgs,
    duration: u64,
    warmup: u64,
    rounds: u32,
    proxy_cores: String,
    nginx: PathBuf,
    keel_bin: PathBuf,
    /// `bench/out/gateway`: configs, logs and the database.
    dir: PathBuf,
    hit_ids: PathBuf,
    data: Dataset,
    upstream_configs: Vec<PathBuf>,
    clk_tck: f64,
    /// Every child alive now, for the signal watcher.
    children: Registry,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[keel-bench gateway] {}", msg.as_ref());
}

fn upstream_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], UPSTREAM_PORTS[i]))
}

fn entry_addr(row: &Row) -> SocketAddr {
    let port = match row.proxy {
        Proxy::Direct => UPSTREAM_PORTS[0],
        Proxy::Keel => GATEWAY_PORT,
        Proxy::Nginx => NGINX_PORT,
    };
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub(crate) fn run(mut args: GatewayArgs) -> anyhow::Result<()> {
    args.bench_dir = args.bench_dir.canonicalize().with_context(|| {
        format!(
            "{} (run from the repository root)",
            args.bench_dir.display()
        )
    })?;
    run::which("wrk")?;
    run::which("taskset")?;
    run::which("sqlite3")?;
    let nginx = find_nginx(args.nginx.as_deref())?;
    let keel_bin = args.keel_bin.canonicalize().with_context(|| {
        format!(
            "{} (cargo build --release -p keel)",
            args.keel_bin.display()
        )
    })?;
    let duration = args.duration.unwrap_or(if args.quick { 3 } else { 10 });
    let warmup = args.warmup.unwrap_or(if args.quick { 1 } else { 2 });
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let proxy_cores = args.proxy_cores.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| PROXY_CORES_DEFAULT.to_owned())
    });

    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    let dir = out.join("gateway");
    // A fresh database and data directories every run: nothing of an earlier run's caches,
    // sessions or write-back journals.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    for port in UPSTREAM_PORTS.into_iter().chain([GATEWAY_PORT, NGINX_PORT]) {
        if run::port_busy(SocketAddr::from(([127, 0, 0, 1], port))) {
            bail!("port {port} is already in use by another process");
        }
    }

    let data = Dataset::generate(args.users, args.hit_set, 0x6761_7465);
    data.write_id_files(&dir.join("ids"))?;
    let mut ctx = Ctx {
        hit_ids: dir.join("ids").join("hit-ids.txt"),
        duration,
        warmup,
        rounds,
        proxy_cores,
        nginx,
        keel_bin,
        dir,
        data,
        upstream_configs: Vec::new(),
        clk_tck: clock_ticks(),
        children: Registry::default(),
        args,
    };
    watch_signals(ctx.children.clone()).context("watching for signals")?;
    let started = chrono::Utc::now();
    let load_start = report::loadavg();

    // ---- the upstreams: two `keel serve` on one SQLite file, each with its own data directory
    // (its own write-back journal) and the same identity keys.
    ctx.upstream_configs = write_upstream_configs(&ctx)?;
    let seed_log = ctx.dir.join("seed.log");
    log(format!(
        "migrating and seeding {} users (log: {})",
        ctx.data.ids.len(),
        seed_log.display()
    ));
    run::migrate(&ctx.keel_bin, &ctx.upstream_configs[0], &seed_log)?;
    let db = ctx.dir.join("keel.db");
    if !db.exists() {
        bail!("keel migrate did not create {}", db.display());
    }
    seed::seed_sqlite(&ctx.data, &db, &seed_log)?;

    let mut upstreams = Vec::new();
    for (i, config) in ctx.upstream_configs.iter().enumerate() {
        let log_path = ctx.dir.join(format!("upstream-{i}.log"));
        let mut cmd = Command::new("taskset");
        run::scrub_bench_env(&mut cmd)
            .args(["-c", &ctx.args.upstream_core])
            .arg(&ctx.keel_bin)
            .arg("--config")
            .arg(config)
            .arg("serve");
        // One after the other: the first makes the token signing key, the second finds it.
        let mut p = Proc::spawn(&ctx.children, &format!("upstream-{i}"), cmd, &log_path)?;
        let t = p.wait_ready(upstream_addr(i), &log_path)?;
        log(format!(
            "upstream-{i}: keel serve on {} (core {}) up in {:.0} ms",
            upstream_addr(i),
            ctx.args.upstream_core,
            t.as_secs_f64() * 1e3
        ));
        upstreams.push(p);
    }
    let token = run::admin_token(&ctx.keel_bin, &ctx.upstream_configs[0], upstream_addr(0))
        .context("signing the bench's admin in")?;
    for i in 0..upstreams.len() {
        // Every id of the hit set once at each upstream: warms its cache and proves that each
        // accepts the token (the second verifies what the first signed).
        run::check_users(upstream_addr(i), Some(&token), &ctx.data.hit, true)
            .with_context(|| format!("warming upstream-{i}'s cache with the hit set"))?;
    }
    let reference = reference_body(&ctx, &token)?;

    let mut results: Vec<RowResult> = ROWS.iter().map(|_| RowResult::default()).collect();
    for round in 0..ctx.rounds {
        // Odd rounds put nginx before keel's gateway in each pair, so neither always runs
        // right after the other.
        let mut order: Vec<usize> = (0..ROWS.len()).collect();
        if round % 2 == 1 {
            order.swap(1, 2);
            order.swap(3, 4);
        }
        for i in order {
            let row = &ROWS[i];
            log(format!(
                "=== round {}/{}: {} ===",
                round + 1,
                ctx.rounds,
                row.key
            ));
            match run_row(&ctx, row, round, &upstreams, &token, &reference) {
                Ok(m) => {
                    log(format!(
                        "{}: {:.0} req/s p50 {:.2} ms p99 {:.2} ms",
                        row.key, m.wrk.rps, m.wrk.p50_ms, m.wrk.p99_ms
                    ));
                    results[i].runs.push(m);
                }
                Err(e) => {
                    log(format!("{} FAILED: {e:#}", row.key));
                    results[i]
                        .errors
                        .push(format!("round {}: {e:#}", round + 1));
                }
            }
        }
    }
    for p in &mut upstreams {
        p.stop();
    }

    let load_end = report::loadavg();
    let text = render(&ctx, &results, &load_start, &load_end);
    println!("{text}");
    let json = to_json(&ctx, &results, started, &load_start, &load_end);
    let path = out.join("gateway.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    std::fs::write(ctx.dir.join("results.txt"), &text)?;
    println!("results: {}  (logs: {})", path.display(), ctx.dir.display());
    let failed: Vec<&str> = ROWS
        .iter()
        .zip(&results)
        .filter(|(_, r)| !r.errors.is_empty())
        .map(|(row, _)| row.key)
        .collect();
    if !failed.is_empty() {
        bail!(
            "rows failed: {} (see the problems above)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn find_nginx(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    if run::which("nginx").is_ok() {
        return Ok(PathBuf::from("nginx"));
    }
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.exists() {
        return Ok(sbin);
    }
    bail!("nginx not found on PATH or in /usr/sbin (bench/gateway.sh installs it)")
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s CPU times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// The two upstreams' configuration files. They share the database file and the identity's
/// secret and data key (every instance of a deployment needs the same ones), and the issuer;
/// each has its own data directory and port.
fn write_upstream_configs(ctx: &Ctx) -> anyhow::Result<Vec<PathBuf>> {
    let data_key = keel_credentials::envelope::Keyring::generate_entry("bench");
    // A generated key entry is `<id>:<base64 of 32 random bytes>`: its material is also a
    // valid identity secret (at least 32 bytes, base64).
    let secret_entry = keel_credentials::envelope::Keyring::generate_entry("secret");
    let (_, secret) = secret_entry
        .split_once(':')
        .context("a generated key entry without `:`")?;
    let db = ctx.dir.join("keel.db");
    let mut paths = Vec::new();
    for (i, port) in UPSTREAM_PORTS.iter().enumerate() {
        let data_dir = ctx.dir.join(format!("upstream-{i}"));
        std::fs::create_dir_all(&data_dir)?;
        let cfg = format!(
            r#"# written by keel-bench gateway: one of two `keel serve` instances on one SQLite file
data_dir = "{data_dir}"

[server]
listen = "127.0.0.1:{port}"

[database]
url = "sqlite://{db}"

[identity]
issuer = "{ISSUER}"
secret = "{secret}"
data_keys = "{data_key}"

[shutdown]
readiness_grace_ms = 0
drain_deadline_ms = 2000

[telemetry]
log_format = "json"
log_level = "warn"
access_log = false
"#,
            data_dir = data_dir.display(),
            db = db.display(),
        );
        let path = ctx.dir.join(format!("upstream-{i}.toml"));
        std::fs::write(&path, cfg)?;
        paths.push(path);
    }
    Ok(paths)
}

/// The first hit id's JSON straight from the first upstream: what every proxy must return.
fn reference_body(ctx: &Ctx, token: &str) -> anyhow::Result<(String, String)> {
    let id = ctx.data.hit.first().context("empty hit set")?.clone();
    let r = get_user(upstream_addr(0), &id, token)?;
    let user: Value = serde_json::from_str(&r.body)
        .with_context(|| format!("the user's JSON: {}", http::truncate(&r.body, 300)))?;
    if r.status != 200 || user["id"].as_str() != Some(id.as_str()) {
        bail!(
            "GET /users/{id} at upstream-0 answered {}: {}",
            r.status,
            http::truncate(&r.body, 300)
        );
    }
    Ok((id, r.body))
}

fn get_user(addr: SocketAddr, id: &str, token: &str) -> anyhow::Result<http::Response> {
    http::request(
        addr,
        "GET",
        &format!("/users/{id}"),
        &[format!("Authorization: Bearer {token}")],
        None,
        Duration::from_secs(10),
    )
    .with_context(|| format!("GET /users/{id} at {addr}"))
}

/// A proxy's correctness before its row: the same JSON as the upstream's for one user, byte for
/// byte, then 200 with the right user for a sample of the hit set.
fn check_entry(
    ctx: &Ctx,
    row: &Row,
    token: &str,
    reference: &(String, String),
) -> anyhow::Result<()> {
    let addr = entry_addr(row);
    let (id, body) = reference;
    let r = get_user(addr, id, token)?;
    if r.status != 200 || &r.body != body {
        bail!(
            "GET /users/{id} through {} answered {} with {:?}; the upstream itself answers 200 with {:?}",
            row.key,
            r.status,
            http::truncate(&r.body, 300),
            http::truncate(body, 300)
        );
    }
    let n = CHECK_SAMPLE.min(ctx.data.hit.len());
    run::check_users(addr, Some(token), &ctx.data.hit[..n], true)
}

fn run_row(
    ctx: &Ctx,
    row: &Row,
    round: u32,
    upstreams: &[Proc],
    token: &str,
    reference: &(String, String),
) -> anyhow::Result<Measure> {
    let dir = ctx.dir.join(row.key);
    std::fs::create_dir_all(&dir)?;
    let wrk_log = dir.join("wrk.log");
    let proxy_log = dir.join("proxy.log");
    for (i, p) in upstreams.iter().enumerate() {
        if !p.alive() {
            bail!(
                "upstream-{i} has exited (see {})",
                ctx.dir.join(format!("upstream-{i}.log")).display()
            );
        }
    }
    // The nginx directory lives while the row runs (its temp paths and pid file are in it).
    let nginx_dir = tempfile::Builder::new()
        .prefix("keel-bench-nginx-")
        .tempdir()?;
    let mut proxy = match row.proxy {
        Proxy::Direct => None,
        Proxy::Keel => Some(start_gateway(ctx, row, &dir, &proxy_log)?),
        Proxy::Nginx => Some(start_nginx(ctx, row, nginx_dir.path(), &dir, &proxy_log)?),
    };
    if let Some(p) = &mut proxy {
        let t = p.wait_ready(entry_addr(row), &proxy_log)?;
        log(format!(
            "{}: up on {} in {:.0} ms (cores {})",
            row.key,
            entry_addr(row),
            t.as_secs_f64() * 1e3,
            ctx.proxy_cores
        ));
    }
    check_entry(ctx, row, token, reference).context("checking the answers before the run")?;

    let url = format!("http://{}", entry_addr(row));
    let script = ctx.args.bench_dir.join("wrk").join("hit.lua");
    let spec = |secs| WrkSpec {
        url: &url,
        threads: ctx.args.threads,
        connections: ctx.args.connections,
        duration_s: secs,
        script: &script,
        script_args: vec![ctx.hit_ids.display().to_string(), token.to_owned()],
        log: &wrk_log,
        wrk_core: &ctx.args.wrk_core,
    };
    let w = wrk::run(&spec(ctx.warmup))?;
    run::validate(&w, "warm-up")?;

    let upstream_pids: Vec<u32> = upstreams[..row.upstreams].iter().map(Proc::pid).collect();
    let cpu = |pid: u32| tree_cpu_secs(pid, ctx.clk_tck);
    let up_before: Vec<f64> = upstream_pids.iter().map(|&p| cpu(p)).collect();
    let proxy_before = proxy.as_ref().map(|p| cpu(p.pid()));
    let ticks_before = report::cpu_ticks();
    let r = wrk::run(&spec(ctx.duration))?;
    let ticks_after = report::cpu_ticks();
    let proxy_cpu_s = proxy
        .as_ref()
        .zip(proxy_before)
        .map(|(p, before)| cpu(p.pid()) - before);
    let upstream_cpu_s = upstream_pids
        .iter()
        .zip(&up_before)
        .map(|(&p, before)| cpu(p) - before)
        .collect();
    run::validate(&r, "measured run")?;
    check_entry(ctx, row, token, reference).context("checking the answers after the run")?;

    if let Some(mut p) = proxy {
        p.stop();
    }
    if row.proxy == Proxy::Nginx {
        // Kept for reading after the run; the temp directory goes with the row.
        for name in ["nginx.conf", "error.log"] {
            let _ = std::fs::copy(nginx_dir.path().join(name), dir.join(name));
        }
    }
    Ok(Measure {
        round,
        wrk: r,
        proxy_cpu_s,
        upstream_cpu_s,
        steal: report::steal_between(ticks_before, ticks_after),
    })
}

fn upstream_list(row: &Row) -> Vec<String> {
    (0..row.upstreams)
        .map(|i| upstream_addr(i).to_string())
        .collect()
}

/// `keel --config FILE gateway` with the equivalent of the nginx configuration: one pool, one
/// route, round robin, access log off, compression at its default (it never applies here: the
/// bodies are under its minimum size and wrk asks for no encoding).
fn start_gateway(ctx: &Ctx, row: &Row, dir: &Path, log_path: &Path) -> anyhow::Result<Proc> {
    let servers = upstream_list(row)
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = format!(
        r#"# written by keel-bench gateway
data_dir = "{data_dir}"

[telemetry]
log_format = "json"
log_level = "warn"
access_log = false

[shutdown]
readiness_grace_ms = 0
drain_deadline_ms = 2000

[gateway]
listen = "127.0.0.1:{GATEWAY_PORT}"
access_log = false

[[gateway.pools]]
name = "api"
servers = [{servers}]
algorithm = "round-robin"

[[gateway.routes]]
prefix = "/"
pool = "api"
"#,
        data_dir = dir.join("data").display(),
    );
    let config = dir.join("keel-gateway.toml");
    std::fs::write(&config, cfg)?;
    let mut cmd = Command::new("taskset");
    run::scrub_bench_env(&mut cmd)
        .args(["-c", &ctx.proxy_cores])
        .arg(&ctx.keel_bin)
        .arg("--config")
        .arg(&config)
        .arg("gateway");
    Proc::spawn(&ctx.children, row.key, cmd, log_path)
}

/// nginx as one would run it in front of these upstreams: keep-alive to them (`keepalive`,
/// HTTP/1.1 and an empty `Connection`), the client's Host and `X-Forwarded-For` passed on, no
/// access log. Everything it writes stays in `dir`, so it runs as any user.
fn start_nginx(
    ctx: &Ctx,
    row: &Row,
    dir: &Path,
    out_dir: &Path,
    log_path: &Path,
) -> anyhow::Result<Proc> {
    // Its workers may run as another user (nobody, when started as root): let them reach the
    // temp paths inside.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let servers: String = upstream_list(row)
        .iter()
        .map(|s| format!("        server {s};\n"))
        .collect();
    let d = dir.display();
    let conf = format!(
        r#"# written by keel-bench gateway
worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream api {{
{servers}        keepalive 256;
    }}

    server {{
        listen 127.0.0.1:{NGINX_PORT};
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, &conf)?;
    std::fs::write(out_dir.join("nginx.conf"), &conf)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &ctx.proxy_cores])
        .arg(&ctx.nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        // The error log before the configuration is read (otherwise the default under /var/log).
        .arg("-e")
        .arg(dir.join("error.log"));
    Proc::spawn(&ctx.children, row.key, cmd, log_path)
}

/// CPU seconds (user and system) a process and its descendants have used so far; 0 for a
/// process that is gone.
fn tree_cpu_secs(pid: u32, clk_tck: f64) -> f64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name may hold spaces: the fields start after its closing parenthesis.
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / clk_tck)
        })
        .unwrap_or(0.0);
    own + run::children(pid)
        .into_iter()
        .map(|c| tree_cpu_secs(c, clk_tck))
        .sum::<f64>()
}

/// The children alive now (pid and name), for [`watch_signals`] to stop.
#[derive(Clone, Default)]
struct Registry(Arc<Mutex<Vec<(u32, String)>>>);

impl Registry {
    fn add(&self, pid: u32, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((pid, name.to_owned()));
    }

    fn remove(&self, pid: u32) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(p, _)| *p != pid);
    }

    fn all(&self) -> Vec<(u32, String)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// On SIGINT, SIGTERM or SIGHUP, stop every registered child and exit: a signal ends the process
/// without unwinding, so no `Drop` would run, and the upstreams and nginx (whose workers outlive
/// a killed master) would be left running.
fn watch_signals(children: Registry) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut int, mut term, mut hup) = rt.block_on(async {
        anyhow::Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::spawn(move || {
        let (name, code) = rt.block_on(async {
            tokio::select! {
                _ = int.recv() => ("SIGINT", 130),
                _ = term.recv() => ("SIGTERM", 143),
                _ = hup.recv() => ("SIGHUP", 129),
            }
        });
        let children = children.all();
        log(format!(
            "{name}: stopping {} child process(es)",
            children.len()
        ));
        for (pid, child) in children {
            terminate(&child, pid, || !pid_alive(pid));
        }
        std::process::exit(code);
    });
    Ok(())
}

/// A process that has exited but not been reaped is a zombie: not alive.
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// SIGTERM to `pid`; if `exited` is not true within 10 s, SIGKILL to it and its descendants
/// (nginx's workers outlive a killed master).
fn terminate(name: &str, pid: u32, mut exited: impl FnMut() -> bool) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if exited() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    log(format!(
        "{name} (pid {pid}) ignored SIGTERM for 10 s; killing it and its children"
    ));
    let mut tree = vec![pid];
    descendants(pid, &mut tree);
    for p in tree {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
}

/// A child process that is stopped when dropped, on every way out of the benchmark (errors and
/// panics included; signals through [`watch_signals`]).
struct Proc {
    name: String,
    child: Child,
    registry: Registry,
}

impl Proc {
    fn spawn(
        registry: &Registry,
        name: &str,
        mut cmd: Command,
        log_path: &Path,
    ) -> anyhow::Result<Proc> {
        let mut logf = File::options().create(true).append(true).open(log_path)?;
        writeln!(
            logf,
            "--- keel-bench gateway {}: {:?}",
            chrono::Utc::now().to_rfc3339(),
            cmd
        )?;
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        registry.add(child.id(), name);
        Ok(Proc {
            name: name.to_owned(),
            child,
            registry: registry.clone(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&self) -> bool {
        pid_alive(self.pid())
    }

    /// Poll `GET /healthz` at `addr` until it answers 200 (through a proxy: until the whole
    /// chain answers); fails with the end of the log if the process exits or 30 s pass.
    fn wait_ready(&mut self, addr: SocketAddr, log_path: &Path) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before answering /healthz; {}:\n{}",
                    self.name,
                    log_path.display(),
                    tail(log_path, 15)
                );
            }
            let last = match http::get(addr, "/healthz", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => return Ok(started.elapsed()),
                Ok(r) => format!("{} {}", r.status, http::truncate(&r.body, 200)),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "{}: no 200 on http://{addr}/healthz within 30 s (last: {last}); {}:\n{}",
                    self.name,
                    log_path.display(),
                    tail(log_path, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL for it and its children after 10 s; reaps it.
    fn stop(&mut self) {
        let pid = self.pid();
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let child = &mut self.child;
            terminate(&self.name, pid, || matches!(child.try_wait(), Ok(Some(_))));
            let _ = self.child.wait();
        }
        self.registry.remove(pid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn descendants(pid: u32, into: &mut Vec<u32>) {
    for c in run::children(pid) {
        into.push(c);
        descendants(c, into);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- report

/// keel's targets for its gateway against nginx on the same upstreams.
const T_RPS_VS_NGINX: f64 = 1.0;
const T_P99_VS_NGINX: f64 = 1.0;
const T_OVERHEAD_VS_DIRECT: f64 = 0.35;

struct Ratio {
    name: String,
    /// Per round (`None` where a row of that round failed).
    per_round: Vec<Option<f64>>,
    /// Target: at least (`true`) or at most (`false`) `target`.
    at_least: bool,
    target: Option<f64>,
    percent: bool,
}

impl Ratio {
    fn median(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.per_round.iter().flatten().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    }

    fn met(&self) -> Option<bool> {
        let (v, t) = (self.median()?, self.target?);
        Some(if self.at_least { v >= t } else { v <= t })
    }

    fn fmt(&self, v: f64) -> String {
        if self.percent {
            format!("{:.1}%", v * 100.0)
        } else {
            format!("{v:.2}x")
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Some(t) => format!(
                "{} {}",
                if self.at_least { ">=" } else { "<=" },
                self.fmt(t)
            ),
            None => "(no target)".into(),
        }
    }
}

fn row_index(key: &str) -> usize {
    ROWS.iter().position(|r| r.key == key).expect("a known row")
}

fn ratios(ctx: &Ctx, rs: &[RowResult]) -> Vec<Ratio> {
    let per_round = |f: &dyn Fn(u32) -> Option<f64>| (0..ctx.rounds).map(f).collect::<Vec<_>>();
    let run_of = |key: &str, round: u32| rs[row_index(key)].in_round(round);
    let rps_ratio = |a: &'static str, b: &'static str| {
        per_round(&|round| {
            let (a, b) = (run_of(a, round)?, run_of(b, round)?);
            (b.wrk.rps > 0.0).then(|| a.wrk.rps / b.wrk.rps)
        })
    };
    let p99_ratio = |a: &'static str, b: &'static str| {
        per_round(&|round| {
            let (a, b) = (run_of(a, round)?, run_of(b, round)?);
            (b.wrk.p99_ms > 0.0).then(|| a.wrk.p99_ms / b.wrk.p99_ms)
        })
    };
    let overhead = |a: &'static str| {
        per_round(&|round| {
            let (a, d) = (run_of(a, round)?, run_of("direct", round)?);
            (d.wrk.rps > 0.0).then(|| 1.0 - a.wrk.rps / d.wrk.rps)
        })
    };
    let ratio = |name: &str, per_round, at_least, target, percent| Ratio {
        name: name.to_owned(),
        per_round,
        at_least,
        target,
        percent,
    };
    vec![
        ratio(
            "keel gateway / nginx req/s, 1 upstream",
            rps_ratio("keel-gateway-1", "nginx-1"),
            true,
            Some(T_RPS_VS_NGINX),
            false,
        ),
        ratio(
            "keel gateway / nginx req/s, 2 upstreams",
            rps_ratio("keel-gateway-2", "nginx-2"),
            true,
            Some(T_RPS_VS_NGINX),
            false,
        ),
        ratio(
            "keel gateway p99 / nginx p99, 1 upstream",
            p99_ratio("keel-gateway-1", "nginx-1"),
            false,
            Some(T_P99_VS_NGINX),
            false,
        ),
        ratio(
            "keel gateway p99 / nginx p99, 2 upstreams",
            p99_ratio("keel-gateway-2", "nginx-2"),
            false,
            Some(T_P99_VS_NGINX),
            false,
        ),
        ratio(
            "keel gateway overhead vs direct (1 - gw/direct), 1 upstream",
            overhead("keel-gateway-1"),
            false,
            Some(T_OVERHEAD_VS_DIRECT),
            true,
        ),
        ratio(
            "nginx overhead vs direct (1 - nginx/direct), 1 upstream",
            overhead("nginx-1"),
            false,
            None,
            true,
        ),
        ratio(
            "keel gateway 2 upstreams / 1 upstream req/s",
            rps_ratio("keel-gateway-2", "keel-gateway-1"),
            true,
            None,
            false,
        ),
        ratio(
            "nginx 2 upstreams / 1 upstream req/s",
            rps_ratio("nginx-2", "nginx-1"),
            true,
            None,
            false,
        ),
    ]
}

fn render(ctx: &Ctx, rs: &[RowResult], load_start: &str, load_end: &str) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "\nkeel gateway benchmark — GET /users/{{id}} with a bearer token (cache hits, {} ids), wrk {} thread(s) x {} connections, {} s runs after {} s warm-up, {} round(s)\n",
        ctx.data.hit.len(),
        ctx.args.threads,
        ctx.args.connections,
        ctx.duration,
        ctx.warmup,
        ctx.rounds
    ));
    o.push_str(&format!(
        "pinning: wrk on core {}, the upstream keel serve instance(s) on core {}, the proxy (keel gateway or nginx) unpinned (cores {}); direct row: upstream core {}, wrk core {}\n",
        ctx.args.wrk_core,
        ctx.args.upstream_core,
        ctx.proxy_cores,
        ctx.args.upstream_core,
        ctx.args.wrk_core
    ));
    o.push_str(&format!(
        "load average at start {load_start} / at end {load_end} (other work on the machine skews the figures)\n\n"
    ));
    if ctx.rounds > 1 {
        o.push_str("each row's median run (by req/s) of its rounds:\n");
    }
    let header = [
        "row",
        "req/s",
        "p50",
        "p99",
        "non-2xx",
        "socket errors",
        "proxy CPU/req",
        "upstream CPU split",
        "steal",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (row, r) in ROWS.iter().zip(rs) {
        let Some(m) = r.median() else {
            let mut cells = vec![row.key.to_owned(), "FAILED".to_owned()];
            cells.resize(header.len(), "-".to_owned());
            rows.push(cells);
            continue;
        };
        let w = &m.wrk;
        let per_req = m
            .proxy_cpu_s
            .filter(|_| w.requests > 0)
            .map(|s| format!("{:.1} µs", s / w.requests as f64 * 1e6))
            .unwrap_or_else(|| "-".into());
        let total: f64 = m.upstream_cpu_s.iter().sum();
        let split = if m.upstream_cpu_s.len() > 1 && total > 0.0 {
            m.upstream_cpu_s
                .iter()
                .map(|s| format!("{:.0}%", s / total * 100.0))
                .collect::<Vec<_>>()
                .join(" / ")
        } else {
            "-".into()
        };
        rows.push(vec![
            row.key.to_owned(),
            format!("{:.0}", w.rps),
            report::fmt_ms(w.p50_ms),
            report::fmt_ms(w.p99_ms),
            w.non2xx.to_string(),
            format!("{} ({} timeouts)", w.socket_errors, w.timeouts),
            per_req,
            split,
            m.steal
                .map(|s| format!("{:.0}%", s * 100.0))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    o.push_str(&report::table(&header, &rows));
    if ctx.rounds > 1 {
        o.push_str("\nevery run, req/s (p99):\n");
        for (row, r) in ROWS.iter().zip(rs) {
            let runs: Vec<String> = (0..ctx.rounds)
                .map(|round| {
                    r.in_round(round)
                        .map(|m| format!("{:.0} ({})", m.wrk.rps, report::fmt_ms(m.wrk.p99_ms)))
                        .unwrap_or_else(|| "FAILED".into())
                })
                .collect();
            o.push_str(&format!("  {:<16} {}\n", row.key, runs.join("   ")));
        }
    }

    let mut problems = String::new();
    for (row, r) in ROWS.iter().zip(rs) {
        for e in &r.errors {
            problems.push_str(&format!(
                "  FAILED {}: {e}\n         logs: {}\n",
                row.key,
                ctx.dir.join(row.key).display()
            ));
        }
        for m in &r.runs {
            let w = &m.wrk;
            if w.non2xx > 0 || w.socket_errors > 0 || w.timeouts > 0 {
                problems.push_str(&format!(
                    "  note {} round {}: {} non-2xx, {} socket errors ({} timeouts) of {} requests\n",
                    row.key,
                    m.round + 1,
                    w.non2xx,
                    w.socket_errors,
                    w.timeouts,
                    w.requests
                ));
            }
        }
    }
    if !problems.is_empty() {
        o.push_str("\n!!! problems:\n");
        o.push_str(&problems);
    }

    o.push_str(&format!(
        "\nratios vs targets{}:\n",
        if ctx.rounds > 1 {
            " (median of the per-round ratios; every round's in brackets)"
        } else {
            ""
        }
    ));
    for r in ratios(ctx, rs) {
        let value = r.median().map(|v| r.fmt(v)).unwrap_or_else(|| "n/a".into());
        let verdict = match (r.met(), r.target) {
            (Some(true), _) => "target met",
            (Some(false), _) => "target MISSED",
            (None, Some(_)) => "(not measured)",
            (None, None) => "",
        };
        let rounds = if ctx.rounds > 1 {
            format!(
                "  [{}]",
                r.per_round
                    .iter()
                    .map(|v| v.map(|v| r.fmt(v)).unwrap_or_else(|| "-".into()))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        } else {
            String::new()
        };
        o.push_str(&format!(
            "  {:<62} {:>8}   target {:<12} {}{}\n",
            r.name,
            value,
            r.target_text(),
            verdict,
            rounds
        ));
    }
    o.push_str(
        "\nproxy CPU/req: CPU time of the proxy's processes during the measured run per request \
         (both proxies may use every core); upstream CPU split: each upstream's share of the \
         upstreams' CPU time (round robin should give about half each)\n",
    );
    o
}

fn measure_json(m: &Measure) -> Value {
    json!({
        "round": m.round + 1,
        "wrk": m.wrk.to_json(),
        "proxy_cpu_s": m.proxy_cpu_s.map(|s| round(s, 3)),
        "proxy_cpu_us_per_request": m.proxy_cpu_s
            .filter(|_| m.wrk.requests > 0)
            .map(|s| round(s / m.wrk.requests as f64 * 1e6, 2)),
        "upstream_cpu_s": m.upstream_cpu_s.iter().map(|s| round(*s, 3)).collect::<Vec<_>>(),
        "steal": m.steal.map(|s| round(s, 4)),
    })
}

fn to_json(
    ctx: &Ctx,
    rs: &[RowResult],
    started: chrono::DateTime<chrono::Utc>,
    load_start: &str,
    load_end: &str,
) -> Value {
    let rows: Vec<Value> = ROWS
        .iter()
        .zip(rs)
        .map(|(row, r)| {
            json!({
                "key": row.key,
                "label": row.label,
                "proxy": format!("{:?}", row.proxy).to_lowercase(),
                "upstreams": row.upstreams,
                "status": if r.errors.is_empty() { "ok" } else if r.runs.is_empty() { "failed" } else { "partial" },
                "errors": r.errors,
                "median": r.median().map(measure_json),
                "runs": r.runs.iter().map(measure_json).collect::<Vec<_>>(),
                "dir": ctx.dir.join(row.key).display().to_string(),
            })
        })
        .collect();
    let ratios: Vec<Value> = ratios(ctx, rs)
        .into_iter()
        .map(|r| {
            json!({
                "name": r.name,
                "value": r.median().map(|v| round(v, 4)),
                "per_round": r.per_round.iter().map(|v| v.map(|v| round(v, 4))).collect::<Vec<_>>(),
                "target": r.target,
                "target_is": if r.at_least { "min" } else { "max" },
                "met": r.met(),
            })
        })
        .collect();
    json!({
        "started_at": started.to_rfc3339(),
        "finished_at": chrono::Utc::now().to_rfc3339(),
        "machine": report::machine(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "params": {
            "duration_s": ctx.duration,
            "warmup_s": ctx.warmup,
            "rounds": ctx.rounds,
            "connections": ctx.args.connections,
            "wrk_threads": ctx.args.threads,
            "users": ctx.data.ids.len(),
            "hit_set": ctx.data.hit.len(),
            "wrk_core": ctx.args.wrk_core,
            "upstream_core": ctx.args.upstream_core,
            "proxy_cores": ctx.proxy_cores,
            "nginx": ctx.nginx.display().to_string(),
        },
        "rows": rows,
        "ratios": ratios,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_is_judged_on_the_median_of_its_rounds() {
        let r = Ratio {
            name: "x".into(),
            per_round: vec![Some(0.9), None, Some(1.2), Some(1.1)],
            at_least: true,
            target: Some(1.0),
            percent: false,
        };
        assert_eq!(r.median(), Some(1.1));
        assert_eq!(r.met(), Some(true));
        let at_most = Ratio {
            at_least: false,
            ..r
        };
        assert_eq!(at_most.met(), Some(false));
    }

    #[test]
    fn cpu_time_of_this_process_is_read_from_proc() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(tree_cpu_secs(std::process::id(), clock_ticks()) > 0.0);
    }
}
