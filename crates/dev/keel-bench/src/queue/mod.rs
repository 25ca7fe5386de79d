//! `keel-bench queue`: end-to-end messages/s and publish-to-handle latency of keel's queue on
//! each backend, beside the same broker driven by its client library with no keel code.
//!
//! For each backend the raw row runs first, then the keel row, each on fresh names (an SQLite
//! file in a fresh directory, a fresh PostgreSQL database, a fresh RabbitMQ queue, a fresh NATS
//! stream) removed afterwards whatever the outcome. Every row sends the same messages
//! ([`load::Plan`]): publishers send batches concurrently with the workers consuming, and the
//! clock stops when the last message has been handled and its acknowledgement sent.

mod keel;
mod load;
mod raw_nats;
mod raw_rabbit;
mod raw_sql;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use keel_broker_nats::{NatsBroker, NatsOptions};
use keel_broker_rabbitmq::{RabbitBroker, RabbitOptions};
use keel_sql_postgres::PostgresQueue;
use keel_sql_sqlite::{QueueLimits, SqliteHospital, SqliteQueue, SqliteSync};
use sqlx::Connection;

use load::{Figures, Plan};
use raw_rabbit::QueueType;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct QueueArgs {
    /// Backends to run, comma-separated, from: sqlite, postgres, rabbitmq, nats [default: all].
    #[arg(long, env = "KEEL_BENCH_QUEUE_BACKENDS", value_delimiter = ',')]
    pub backends: Vec<String>,
    /// Rows to run per backend, comma-separated, from: raw, keel [default: both].
    #[arg(long, env = "KEEL_BENCH_QUEUE_ROWS", value_delimiter = ',')]
    pub rows: Vec<String>,
    /// Messages per row.
    #[arg(long, env = "KEEL_BENCH_QUEUE_MESSAGES", default_value_t = 100_000)]
    pub messages: u64,
    /// Runs of each row, alternating raw and keel; the table shows each row's fastest run and
    /// lists them all (this machine's neighbours take up to a third of its CPU at times).
    #[arg(long, env = "KEEL_BENCH_QUEUE_REPEAT", default_value_t = 3)]
    pub repeat: u32,
    /// Body size in bytes.
    #[arg(long, env = "KEEL_BENCH_QUEUE_BODY", default_value_t = 1024)]
    pub body_bytes: usize,
    /// Consumers (keel `Worker`s, or raw consumer loops).
    #[arg(long, env = "KEEL_BENCH_QUEUE_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// Publisher tasks sending concurrently with the consumers.
    #[arg(long, env = "KEEL_BENCH_QUEUE_PUBLISHERS", default_value_t = 2)]
    pub publishers: usize,
    /// Messages per publish batch (keel: one `publish_many`).
    #[arg(long, env = "KEEL_BENCH_QUEUE_PUBLISH_BATCH", default_value_t = 100)]
    pub publish_batch: usize,
    /// Messages a consumer takes at once (keel: the worker's fetch; RabbitMQ: the prefetch;
    /// NATS: the pull batch; raw SQL: the claim's LIMIT).
    #[arg(long, env = "KEEL_BENCH_QUEUE_FETCH_BATCH", default_value_t = 100)]
    pub fetch_batch: usize,
    /// Distinct message keys; keel hands out one message per key at a time, in publish order.
    /// 0 sends no keys.
    #[arg(long, env = "KEEL_BENCH_QUEUE_KEYS", default_value_t = 1000)]
    pub keys: u64,
    /// Offered load in messages/s across all publishers; 0 publishes as fast as it can (the
    /// latency then includes the time messages wait in the queue).
    #[arg(long, env = "KEEL_BENCH_QUEUE_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Seconds before a row is abandoned as failed.
    #[arg(long, env = "KEEL_BENCH_QUEUE_TIMEOUT", default_value_t = 300)]
    pub timeout: u64,
    /// SQLite `synchronous` for both SQLite rows (WAL mode): normal (keel's default) or full.
    #[arg(long, env = "KEEL_BENCH_SQLITE_SYNCHRONOUS", default_value = "normal")]
    pub sqlite_synchronous: String,
    /// RabbitMQ queue type for both RabbitMQ rows: quorum or classic.
    #[arg(long, env = "KEEL_BENCH_RABBITMQ_QUEUE", default_value = "quorum")]
    pub rabbitmq_queue: String,
    #[arg(
        long,
        env = "KEEL_BENCH_PG_SERVER",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub pg_server: String,
    #[arg(
        long,
        env = "KEEL_BENCH_RABBITMQ_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub rabbitmq_url: String,
    #[arg(
        long,
        env = "KEEL_BENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Keyed partitions per group of the keel NATS row (keel's default: 4).
    #[arg(long, env = "KEEL_BENCH_NATS_PARTITIONS", default_value_t = 4)]
    pub nats_partitions: u16,
    /// Keyed partitions per group of the keel RabbitMQ row (keel's default: 4).
    #[arg(long, env = "KEEL_BENCH_RABBITMQ_PARTITIONS", default_value_t = 4)]
    pub rabbitmq_partitions: u16,
    /// Deliveries per queue RabbitMQ sends the keel RabbitMQ row ahead of its workers (keel's
    /// default: 128).
    #[arg(long, env = "KEEL_BENCH_RABBITMQ_PREFETCH", default_value_t = 128)]
    pub rabbitmq_prefetch: u16,
    /// Deliveries per partition the keel NATS row may hold ahead of its workers (keel's
    /// default: 512).
    #[arg(long, env = "KEEL_BENCH_NATS_WINDOW", default_value_t = 512)]
    pub nats_window: u32,
    /// Results (queue.txt, queue.json) and the SQLite files of the run (removed after each row).
    #[arg(long, default_value = "bench/out")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    Sqlite,
    Postgres,
    Rabbitmq,
    Nats,
}

impl BackendKind {
    const ALL: [BackendKind; 4] = [Self::Sqlite, Self::Postgres, Self::Rabbitmq, Self::Nats];

    pub(crate) fn key(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::Rabbitmq => "rabbitmq",
            Self::Nats => "nats",
        }
    }
}

/// One row's outcome.
#[derive(Debug)]
pub(crate) enum Outcome {
    Measured(Figures),
    Failed(String),
    /// The keel adapter for this backend is not part of this build.
    NotBuilt,
}

#[derive(Debug)]
pub(crate) struct Row {
    pub backend: BackendKind,
    /// "raw" or "keel".
    pub system: &'static str,
    pub label: String,
    pub outcome: Outcome,
    /// The share of the machine's CPU time the hypervisor gave to other guests during the row:
    /// on a shared VM, a row that lost a fifth of its CPU this way is not comparable with one
    /// that lost none.
    pub steal: Option<f64>,
    /// The rate of every measured run of the row (the row shows the fastest).
    pub runs: Vec<f64>,
}

pub(crate) struct Ctx {
    pub args: QueueArgs,
    pub plan: Plan,
    pub rabbitmq_queue: QueueType,
    /// The SQLite rows' durability, the same for the raw and the keel row so their ratio
    /// compares equal guarantees.
    pub sqlite_sync: SqliteSync,
    /// Where the SQLite files of each row live (on the project's disk, not a tmpfs, so fsync
    /// costs what it costs in production).
    pub data_dir: PathBuf,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[keel-bench queue] {}", msg.as_ref());
}

/// A name no earlier run used, for a database, queue or stream.
fn fresh_name() -> String {
    format!("keel_bench_q_{}", uuid::Uuid::new_v4().simple())
}

pub(crate) fn run(args: QueueArgs) -> anyhow::Result<()> {
    let backends: Vec<BackendKind> = if args.backends.is_empty() {
        BackendKind::ALL.to_vec()
    } else {
        args.backends
            .iter()
            .map(|b| {
                BackendKind::ALL
                    .into_iter()
                    .find(|k| k.key() == b.trim())
                    .with_context(|| {
                        format!("unknown backend {b:?}; known: sqlite, postgres, rabbitmq, nats")
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let rows: Vec<&'static str> = if args.rows.is_empty() {
        vec!["raw", "keel"]
    } else {
        args.rows
            .iter()
            .map(|r| match r.trim() {
                "raw" => Ok("raw"),
                "keel" => Ok("keel"),
                other => bail!("unknown row {other:?}; known: raw, keel"),
            })
            .collect::<anyhow::Result<_>>()?
    };
    anyhow::ensure!(
        args.workers > 0 && args.publishers > 0 && args.publish_batch > 0 && args.fetch_batch > 0,
        "workers, publishers and batch sizes must be at least 1"
    );
    anyhow::ensure!(
        args.keys == 0 || args.keys >= args.publishers as u64,
        "--keys must be 0 or at least --publishers (a key belongs to one publisher)"
    );
    anyhow::ensure!(args.body_bytes >= 24, "--body-bytes must be at least 24");
    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    let plan = Plan {
        messages: args.messages,
        body_bytes: args.body_bytes,
        keys: args.keys,
        workers: args.workers,
        publishers: args.publishers,
        publish_batch: args.publish_batch,
        fetch_batch: args.fetch_batch,
        rate: args.rate,
        timeout: Duration::from_secs(args.timeout),
    };
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    let data_dir = out.join("queue-data");
    // Files of an interrupted run.
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let ctx = Ctx {
        rabbitmq_queue: QueueType::parse(&args.rabbitmq_queue)?,
        sqlite_sync: match args.sqlite_synchronous.trim() {
            "normal" => SqliteSync::Normal,
            "full" => SqliteSync::Full,
            other => bail!("unknown --sqlite-synchronous {other:?}; known: normal, full"),
        },
        args,
        plan,
        data_dir: data_dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = chrono::Utc::now();
    let load_start = crate::report::loadavg();
    let results = runtime.block_on(async {
        drop_leftovers(&ctx).await;
        let mut results = Vec::new();
        for backend in &backends {
            // Rows alternate (raw, keel, raw, keel, ...) so that both meet the same spells of
            // interference from the machine's neighbours.
            let mut runs: Vec<Vec<Row>> = rows.iter().map(|_| Vec::new()).collect();
            for round in 1..=ctx.args.repeat {
                for (i, system) in rows.iter().enumerate() {
                    log(format!(
                        "=== {} {system} (run {round} of {}) ===",
                        backend.key(),
                        ctx.args.repeat
                    ));
                    let row = run_row(&ctx, *backend, system).await;
                    match &row.outcome {
                        Outcome::Measured(f) => log(format!(
                            "{:.0} msg/s, p50 {:?}, p99 {:?}, steal {}",
                            f.rate(),
                            f.tally.p50,
                            f.tally.p99,
                            row.steal
                                .map_or("-".into(), |s| format!("{:.0}%", s * 100.0))
                        )),
                        Outcome::Failed(e) => log(format!("FAILED: {e}")),
                        Outcome::NotBuilt => log("keel adapter not built in"),
                    }
                    runs[i].push(row);
                }
            }
            results.extend(runs.into_iter().filter_map(best_of));
        }
        results
    });
    let _ = std::fs::remove_dir_all(&data_dir);
    let text = report::render(&ctx, &results, &load_start);
    print!("{text}");
    std::fs::write(out.join("queue.txt"), &text)?;
    let json = report::to_json(&ctx, &results, started, &load_start);
    std::fs::write(out.join("queue.json"), serde_json::to_string_pretty(&json)?)?;
    log(format!(
        "wrote {} and queue.json",
        out.join("queue.txt").display()
    ));
    Ok(())
}

/// One row from its runs: the fastest, with every run's rate beside it; a failed run fails the
/// row (a wrong result is never outweighed by a fast one).
fn best_of(runs: Vec<Row>) -> Option<Row> {
    let rates: Vec<f64> = runs
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Measured(f) => Some(f.rate()),
            _ => None,
        })
        .collect();
    let mut chosen = match runs
        .iter()
        .position(|r| !matches!(r.outcome, Outcome::Measured(_)))
    {
        Some(failed) => runs.into_iter().nth(failed)?,
        None => runs.into_iter().max_by(|a, b| {
            let rate = |r: &Row| match &r.outcome {
                Outcome::Measured(f) => f.rate(),
                _ => 0.0,
            };
            rate(a).total_cmp(&rate(b))
        })?,
    };
    chosen.runs = rates;
    Some(chosen)
}

fn sync_name(sync: SqliteSync) -> &'static str {
    match sync {
        SqliteSync::Full => "FULL",
        SqliteSync::Normal => "NORMAL",
    }
}

async fn run_row(ctx: &Ctx, backend: BackendKind, system: &'static str) -> Row {
    let plan = ctx.plan;
    let ticks = crate::report::cpu_ticks();
    let label = match (backend, system) {
        (BackendKind::Sqlite, "raw") => format!(
            "sqlx, WAL + synchronous={}, batched SQL queue",
            sync_name(ctx.sqlite_sync)
        ),
        (BackendKind::Postgres, "raw") => "sqlx, batched SQL queue, FOR UPDATE SKIP LOCKED".into(),
        (BackendKind::Rabbitmq, "raw") => format!(
            "lapin, {} queue, persistent, confirms, manual acks",
            ctx.rabbitmq_queue.as_str()
        ),
        (BackendKind::Nats, "raw") => {
            "async-nats, JetStream work-queue file stream, durable pull consumer, explicit acks"
                .into()
        }
        (BackendKind::Sqlite, _) => format!(
            "SqliteQueue (synchronous={}) + SqliteHospital, Worker",
            sync_name(ctx.sqlite_sync)
        ),
        (BackendKind::Postgres, _) => "PostgresQueue + PostgresHospital, Worker".into(),
        (BackendKind::Rabbitmq, _) => format!(
            "RabbitBroker ({} queues) + SqliteHospital, Worker",
            ctx.rabbitmq_queue.as_str()
        ),
        (BackendKind::Nats, _) => "NatsBroker + SqliteHospital, Worker".into(),
    };
    let outcome = if system == "raw" {
        match raw(ctx, backend, plan).await {
            Ok(f) => Outcome::Measured(f),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    } else {
        match keel_backend(ctx, backend).await {
            Ok(None) => Outcome::NotBuilt,
            Err(e) => Outcome::Failed(format!("setting up: {e:#}")),
            Ok(Some(setup)) => {
                let figures = keel::run(plan, &setup).await;
                let keel::Backend {
                    broker,
                    hospital,
                    cleanup,
                    ..
                } = setup;
                drop((broker, hospital));
                let cleaned = cleanup.await;
                match (figures, cleaned) {
                    (Ok(f), Ok(())) => Outcome::Measured(f),
                    (Err(e), _) => Outcome::Failed(format!("{e:#}")),
                    (Ok(_), Err(e)) => Outcome::Failed(format!("cleaning up: {e:#}")),
                }
            }
        }
    };
    Row {
        backend,
        system,
        label,
        outcome,
        steal: crate::report::steal_between(ticks, crate::report::cpu_ticks()),
        runs: Vec::new(),
    }
}

async fn raw(ctx: &Ctx, backend: BackendKind, plan: Plan) -> anyhow::Result<Figures> {
    match backend {
        BackendKind::Sqlite => {
            let dir = tempfile::tempdir_in(&ctx.data_dir)?;
            raw_sql::sqlite(plan, &dir.path().join("raw.db"), ctx.sqlite_sync).await
        }
        BackendKind::Postgres => {
            let (url, name) = create_database(ctx).await?;
            let figures = raw_sql::postgres(plan, &url).await;
            drop_database(ctx, &name).await?;
            figures
        }
        BackendKind::Rabbitmq => {
            raw_rabbit::run(
                plan,
                &ctx.args.rabbitmq_url,
                &fresh_name(),
                ctx.rabbitmq_queue,
            )
            .await
        }
        BackendKind::Nats => raw_nats::run(plan, &ctx.args.nats_url, &fresh_name()).await,
    }
}

/// keel's broker for `backend` on fresh names, with its hospital and what removes them, or `None`
/// when this build has no adapter for it. Adding an adapter is one arm: open the broker on names
/// made from [`fresh_name`], pick a hospital (for a broker with no SQL database of its own, an
/// SQLite hospital from [`sqlite_hospital`]), and say how to remove the names.
async fn keel_backend(ctx: &Ctx, backend: BackendKind) -> anyhow::Result<Option<keel::Backend>> {
    match backend {
        BackendKind::Sqlite => {
            let dir = tempfile::tempdir_in(&ctx.data_dir)?;
            let url = format!("sqlite://{}", dir.path().join("queue.db").display());
            let queue =
                SqliteQueue::open_with(&url, QueueLimits::default(), ctx.sqlite_sync).await?;
            let hospital = queue.hospital(100_000);
            Ok(Some(keel::Backend::new(
                Arc::new(queue),
                Arc::new(hospital),
                async move {
                    dir.close()?;
                    Ok(())
                },
            )))
        }
        BackendKind::Postgres => {
            let (url, name) = create_database(ctx).await?;
            let queue = PostgresQueue::open(&url, QueueLimits::default()).await?;
            let hospital = queue.hospital(100_000);
            let pg_server = ctx.args.pg_server.clone();
            Ok(Some(keel::Backend::new(
                Arc::new(queue),
                Arc::new(hospital),
                async move { drop_database_at(&pg_server, &name).await },
            )))
        }
        BackendKind::Nats => {
            let namespace = fresh_name();
            let broker = NatsBroker::connect(
                &ctx.args.nats_url,
                NatsOptions {
                    namespace: namespace.clone(),
                    partitions: ctx.args.nats_partitions,
                    window: ctx.args.nats_window,
                    ..NatsOptions::default()
                },
            )
            .await?;
            let (hospital, dir) = sqlite_hospital(ctx).await?;
            let nats_url = ctx.args.nats_url.clone();
            Ok(Some(keel::Backend::new(
                Arc::new(broker),
                Arc::new(hospital),
                async move {
                    delete_nats_streams(&nats_url, &namespace).await?;
                    dir.close()?;
                    Ok(())
                },
            )))
        }
        BackendKind::Rabbitmq => {
            let namespace = fresh_name();
            let options = RabbitOptions {
                namespace: namespace.clone(),
                quorum: ctx.rabbitmq_queue == QueueType::Quorum,
                partitions: ctx.args.rabbitmq_partitions,
                prefetch: ctx.args.rabbitmq_prefetch,
                ..RabbitOptions::default()
            };
            let partitions = options.partitions;
            let broker = RabbitBroker::connect(&ctx.args.rabbitmq_url, options).await?;
            let (hospital, dir) = sqlite_hospital(ctx).await?;
            let rabbitmq_url = ctx.args.rabbitmq_url.clone();
            Ok(Some(keel::Backend::new(
                Arc::new(broker),
                Arc::new(hospital),
                async move {
                    delete_rabbit_namespace(&rabbitmq_url, &namespace, partitions).await?;
                    dir.close()?;
                    Ok(())
                },
            )))
        }
    }
}

/// Deletes the streams of a keel NATS namespace (its group streams and its bindings stream).
async fn delete_nats_streams(url: &str, namespace: &str) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    for name in names.into_iter().filter(|n| n.starts_with(namespace)) {
        js.delete_stream(&name).await?;
    }
    Ok(())
}

/// Deletes what keel's RabbitMQ adapter declared for the bench group under `namespace`: the
/// group's partition and unkeyed queues, the dead-letter queue and the exchanges.
async fn delete_rabbit_namespace(
    url: &str,
    namespace: &str,
    partitions: u16,
) -> anyhow::Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let group = format!("{namespace}/{}", keel::GROUP);
    let queues = (0..partitions)
        .map(|i| format!("{group}/{i}"))
        .chain([format!("{group}/u"), format!("{namespace}/~dead")]);
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [group, namespace.to_owned()] {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    connection.close(200, "bench done".into()).await?;
    Ok(())
}

/// An SQLite hospital in a fresh directory under the run's data directory, for brokers that have
/// no SQL database of their own; the directory goes when the returned guard is dropped.
async fn sqlite_hospital(ctx: &Ctx) -> anyhow::Result<(SqliteHospital, tempfile::TempDir)> {
    let dir = tempfile::tempdir_in(&ctx.data_dir)?;
    let url = format!("sqlite://{}", dir.path().join("hospital.db").display());
    let queue = SqliteQueue::open(&url, QueueLimits::default()).await?;
    Ok((queue.hospital(100_000), dir))
}

async fn create_database(ctx: &Ctx) -> anyhow::Result<(String, String)> {
    let name = fresh_name();
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", ctx.args.pg_server))
        .await
        .context("connect to PostgreSQL")?;
    // The name is generated, never input: it may go into the SQL text.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    Ok((format!("{}/{name}", ctx.args.pg_server), name))
}

async fn drop_database(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    drop_database_at(&ctx.args.pg_server, name).await
}

async fn drop_database_at(server: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    // FORCE: pools being dropped may still hold connections.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}

/// Databases and streams left by an interrupted run (RabbitMQ expires its queues itself).
async fn drop_leftovers(ctx: &Ctx) {
    if let Ok(mut admin) =
        sqlx::PgConnection::connect(&format!("{}/postgres", ctx.args.pg_server)).await
    {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'keel\\_bench\\_q\\_%'",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap_or_default();
        for name in names {
            log(format!("dropping leftover database {name}"));
            let _ = drop_database(ctx, &name).await;
        }
    }
    if let Ok(client) = async_nats::connect(&ctx.args.nats_url).await {
        use futures_util::StreamExt;
        let js = async_nats::jetstream::new(client);
        let names: Vec<String> = js
            .stream_names()
            .filter_map(|n| async move { n.ok() })
            .collect()
            .await;
        for name in names.into_iter().filter(|n| n.starts_with("keel_bench_q_")) {
            log(format!("deleting leftover stream {name}"));
            let _ = js.delete_stream(&name).await;
        }
    }
}
