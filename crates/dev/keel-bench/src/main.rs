//! keel's shipped benchmark.
//!
//! * `keel-bench bare --listen ADDR` — a bare axum handler answering `GET /users/{id}` with a
//!   constant JSON user: the HTTP stack's ceiling on this machine.
//! * `keel-bench run` — the orchestrator: seeds the databases, starts each system under test
//!   pinned to core 1, drives it with wrk pinned to core 0 on the cache-hit and cache-miss paths,
//!   measures idle RSS and cold start, prints a table with ratios against the targets and writes
//!   `bench/out/results.json`. `bash bench/run.sh` installs what it needs and calls this.
//! * `keel-bench queue` — the queue benchmark: end-to-end messages/s and publish-to-handle
//!   latency of keel's `Broker` and `Worker` on each backend beside the broker's raw client;
//!   prints the table and the keel/raw ratios against the targets and writes
//!   `bench/out/queue.json`. `bash bench/queue.sh` builds it and calls this.
//! * `keel-bench gateway` — keel's gateway beside nginx in front of the same `keel serve`
//!   instances (one, then two), with a direct row as the ceiling: req/s, p50 and p99 per row,
//!   the ratios against the targets; writes `bench/out/gateway.json`. `bash bench/gateway.sh`.
//! * `keel-bench identity` — access-token verifications per second and login latency at the
//!   chosen argon2id parameters; writes `bench/out/identity.json`. `bash bench/identity.sh`.

mod bare;
mod gateway;
mod http;
mod identity;
mod queue;
mod report;
mod run;
mod seed;
mod wrk;

use clap::{Parser, Subcommand};

/// mimalloc for every row alike (see the workspace Cargo.toml for why not in `keel`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keel-bench",
    about = "keel's benchmarks: HTTP (keel vs a bare axum ceiling vs the seed's Flask example), gateway (keel's gateway vs nginx in front of keel), queue (keel vs each broker's raw client) and identity"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a constant JSON user on GET /users/{id} (and 200 on /healthz): the HTTP ceiling.
    Bare {
        #[arg(long, default_value = "127.0.0.1:18181")]
        listen: String,
    },
    /// Run the whole benchmark and print the results table.
    Run(Box<run::RunArgs>),
    /// Run the queue benchmark (keel's broker and worker vs each broker's raw client).
    Queue(Box<queue::QueueArgs>),
    /// Run the gateway benchmark (keel gateway vs nginx in front of keel serve instances).
    Gateway(Box<gateway::GatewayArgs>),
    /// Run the identity benchmark (token verification, login latency).
    Identity(Box<identity::IdentityArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bare { listen } => bare::serve(&listen),
        Cmd::Run(args) => run::run(*args),
        Cmd::Queue(args) => queue::run(*args),
        Cmd::Gateway(args) => gateway::run(*args),
        Cmd::Identity(args) => identity::run(*args),
    }
}
