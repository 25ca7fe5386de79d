//! The SQL ceilings: a batched queue table driven by sqlx in a minimal loop, no keel code.
//!
//! One table `q (seq, body, lease_until)`. A publisher inserts a batch in one transaction; a
//! consumer leases up to a batch of the oldest rows whose lease has passed (one `UPDATE …
//! RETURNING`, with `FOR UPDATE SKIP LOCKED` on PostgreSQL), records each effect, then deletes
//! the batch in one statement. At-least-once like keel's queue, but no keys, fan-out, depth
//! bound, TTL, lease tokens or hospital. Same durability as keel's queue: SQLite WAL with the
//! keel row's `synchronous` (`--sqlite-synchronous`), PostgreSQL's default commit.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use keel_sql_sqlite::SqliteSync;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::watch;

use super::load::{self, Effects, Figures, Pace, Plan};

const LEASE: Duration = Duration::from_secs(60);
const IDLE: Duration = Duration::from_millis(1);

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Runs `plan` against a fresh SQLite file at `path`.
pub(super) async fn sqlite(
    plan: Plan,
    path: &std::path::Path,
    sync: SqliteSync,
) -> anyhow::Result<Figures> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match sync {
            SqliteSync::Full => SqliteSynchronous::Full,
            SqliteSync::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(10));
    // One connection: SQLite has one writer, and callers queueing on the pool is cheaper than
    // connections sleeping in SQLite's busy handler.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .context("open the SQLite file")?;
    sqlx::query(
        "CREATE TABLE q (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, lease_until INTEGER NOT NULL DEFAULT 0)",
    )
    .execute(&pool)
    .await?;
    let figures = drive(plan, Sql::Sqlite(pool.clone())).await;
    pool.close().await;
    figures
}

/// Runs `plan` against a fresh table in the PostgreSQL database at `url`.
pub(super) async fn postgres(plan: Plan, url: &str) -> anyhow::Result<Figures> {
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(plan.workers + plan.publishers).unwrap_or(8))
        .connect(url)
        .await
        .context("connect to PostgreSQL")?;
    sqlx::query(
        "CREATE TABLE q (seq BIGSERIAL PRIMARY KEY, body BYTEA NOT NULL, lease_until BIGINT NOT NULL DEFAULT 0)",
    )
    .execute(&pool)
    .await?;
    let figures = drive(plan, Sql::Postgres(pool.clone())).await;
    pool.close().await;
    figures
}

#[derive(Clone)]
enum Sql {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Sql {
    async fn publish(&self, bodies: Vec<Vec<u8>>) -> Result<(), sqlx::Error> {
        match self {
            Sql::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for body in bodies {
                    sqlx::query("INSERT INTO q (body) VALUES (?)")
                        .bind(body)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            Sql::Postgres(pool) => {
                sqlx::query("INSERT INTO q (body) SELECT * FROM UNNEST($1::bytea[])")
                    .bind(bodies)
                    .execute(pool)
                    .await
                    .map(drop)
            }
        }
    }

    async fn claim(&self, max: usize) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
        let now = now_us();
        let until = now + i64::try_from(LEASE.as_micros()).unwrap_or(i64::MAX);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        match self {
            Sql::Sqlite(pool) => {
                sqlx::query_as(
                    "UPDATE q SET lease_until = ? WHERE seq IN \
                     (SELECT seq FROM q WHERE lease_until < ? ORDER BY seq LIMIT ?) RETURNING seq, body",
                )
                .bind(until)
                .bind(now)
                .bind(max)
                .fetch_all(pool)
                .await
            }
            Sql::Postgres(pool) => {
                sqlx::query_as(
                    "UPDATE q SET lease_until = $1 WHERE seq IN \
                     (SELECT seq FROM q WHERE lease_until < $2 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
                     RETURNING seq, body",
                )
                .bind(until)
                .bind(now)
                .bind(max)
                .fetch_all(pool)
                .await
            }
        }
    }

    async fn ack(&self, seqs: &[i64]) -> Result<(), sqlx::Error> {
        match self {
            Sql::Sqlite(pool) => {
                let list = serde_json::to_string(seqs).expect("integers serialize");
                sqlx::query("DELETE FROM q WHERE seq IN (SELECT value FROM json_each(?))")
                    .bind(list)
                    .execute(pool)
                    .await
                    .map(drop)
            }
            Sql::Postgres(pool) => sqlx::query("DELETE FROM q WHERE seq = ANY($1)")
                .bind(seqs)
                .execute(pool)
                .await
                .map(drop),
        }
    }
}

async fn drive(plan: Plan, sql: Sql) -> anyhow::Result<Figures> {
    let origin = Instant::now();
    let effects = Arc::new(Effects::new(plan, origin, false));
    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..plan.workers {
        let (sql, effects, stopped) = (sql.clone(), effects.clone(), stopped.clone());
        workers.push(tokio::spawn(async move {
            while !*stopped.borrow() {
                let batch = sql.claim(plan.fetch_batch).await?;
                if batch.is_empty() {
                    tokio::time::sleep(IDLE).await;
                    continue;
                }
                let mut seqs = Vec::with_capacity(batch.len());
                for (seq, body) in batch {
                    // The row's seq is its id: recorded with the effect, once.
                    effects.record(u128::from(seq.unsigned_abs()), &body);
                    seqs.push(seq);
                }
                sql.ack(&seqs).await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    let started = Instant::now();
    let mut publishers = Vec::new();
    for p in 0..plan.publishers {
        let sql = sql.clone();
        publishers.push(tokio::spawn(async move {
            let mut pace = Pace::new(&plan);
            for numbers in plan.batches(p) {
                pace.wait(numbers.len()).await;
                let bodies = numbers
                    .iter()
                    .map(|&n| load::body(&plan, n, origin))
                    .collect();
                sql.publish(bodies).await?;
            }
            Ok::<_, sqlx::Error>(())
        }));
    }
    let mut outcome = Ok(());
    for p in publishers {
        if let Err(e) = p.await.context("publisher panicked")? {
            outcome = Err(anyhow::Error::new(e).context("publish"));
        }
    }
    let publish_elapsed = started.elapsed();
    if outcome.is_ok() {
        outcome = load::wait_done(&effects, &plan).await;
    }
    stop.send_replace(true);
    for w in workers {
        w.await.context("worker panicked")?.context("consume")?;
    }
    let elapsed = started.elapsed();
    outcome?;
    let tally = effects.tally();
    load::verify(&plan, &tally, false)?;
    Ok(Figures {
        messages: plan.messages,
        elapsed,
        publish_elapsed,
        tally,
        notes: Vec::new(),
    })
}
