//! The queue on SQLite.
//!
//! SQLite has one writer at a time, and every commit costs a WAL append (and, with
//! `synchronous = FULL`, an fsync). So every write of the queue (bind, publish, redeliver, the claim of a fetch, ack, retry) goes
//! to one task that owns the write connection and commits whatever callers queued meanwhile in
//! one transaction (group commit): many concurrent publishes and acks share one fsync, and no
//! caller is answered before the commit that holds its write, so durability is unchanged.
//!
//! Durability is [`SqliteSync`]: `NORMAL` by default, like keel's SQLite stores.
//! Connections competing for the write lock instead would sleep in SQLite's busy handler.
//! Reads (`depth`) and the hospital use the pool.

use keel_domain::messaging::queue::matching_groups;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use keel_domain::{Broker, BrokerError, Capabilities, Delivery, DeliveryTag, Outgoing, QueueDepth};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqlitePool};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use keel_sql::queue::{
    DeliveryRow, QueueLimits, check_publish, classify, deliveries, depth, group_fault, replicate,
};
use keel_sql::{duration_micros, headers_json as encode_headers, now_micros};

const MIGRATIONS: &[keel_sql::EmbeddedMigration] = &[
    (
        1,
        "queue",
        include_str!("../migrations/queue/0001_queue.sql"),
    ),
    (
        2,
        "hospital",
        include_str!("../migrations/queue/0002_hospital.sql"),
    ),
    (
        4,
        "queue claim order",
        include_str!("../migrations/queue/0004_queue_claim_order.sql"),
    ),
];

/// When a commit of the queue is on disk (SQLite's `synchronous`, the queue runs in WAL mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SqliteSync {
    /// Every commit is flushed (fsync) before the caller is answered: an acknowledged publish
    /// survives an OS crash or power loss too. Costs an fsync per group commit.
    Full,
    /// The default, as for keel's SQLite stores: a commit is in the WAL file before the caller
    /// is answered, so it survives a process crash (kill -9); the WAL is flushed at checkpoints,
    /// so an OS crash or power loss can lose the last commits, the same exposure as the store
    /// database whose outbox feeds the queue.
    #[default]
    Normal,
}

/// Writes waiting for the writer; a caller beyond it waits to enqueue (bounded memory).
const QUEUED_WRITES: usize = 1024;
/// Writes committed together at most: bounds one transaction's length.
const GROUP_WRITES: usize = 256;

/// The embedded queue: tables in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    pool: SqlitePool,
    writer: mpsc::Sender<Write>,
    limits: QueueLimits,
}

impl SqliteQueue {
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Opens (creating if missing) the queue database at `url` with the default durability
    /// ([`SqliteSync::Normal`]); see [`SqliteQueue::open_with`].
    pub async fn open(url: &str, limits: QueueLimits) -> Result<Self, BrokerError> {
        Self::open_with(url, limits, SqliteSync::default()).await
    }

    /// Opens (creating if missing) the queue database at `url` with the durability `sync`,
    /// applies its migrations and starts the writer task (it ends when the last clone of the
    /// queue is dropped).
    pub async fn open_with(
        url: &str,
        limits: QueueLimits,
        sync: SqliteSync,
    ) -> Result<Self, BrokerError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(classify)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                SqliteSync::Full => SqliteSynchronous::Full,
                SqliteSync::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(classify)?;
        crate::queue_migrations::run(&pool, MIGRATIONS)
            .await
            .map_err(|e| BrokerError::Internal(Box::new(e)))?;
        // The writer never checkpoints on its own: copying the WAL back into the database file
        // (and flushing it) held up every write of the queue, a third of the commits' time. A
        // task on a connection of its own checkpoints after commits instead, beside the writer.
        let conn = options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .connect()
            .await
            .map_err(classify)?;
        let checkpoints = options.connect().await.map_err(classify)?;
        let wal = Arc::new(AtomicI64::new(0));
        let (commits, committed) = watch::channel(());
        tokio::spawn(checkpoint_loop(checkpoints, committed, wal.clone()));
        let (writer, writes) = mpsc::channel(QUEUED_WRITES);
        tokio::spawn(write_loop(conn, writes, limits, commits, wal));
        Ok(Self {
            pool,
            writer,
            limits,
        })
    }

    /// Hands `op` to the writer and waits for the commit that holds it.
    async fn write(&self, op: Op) -> Result<Done, BrokerError> {
        let (reply, done) = oneshot::channel();
        self.writer
            .send(Write { op, reply })
            .await
            .map_err(|_| writer_gone())?;
        done.await.map_err(|_| writer_gone())
    }
}

fn writer_gone() -> BrokerError {
    BrokerError::Unavailable("the queue's writer task stopped".into())
}

fn unexpected() -> BrokerError {
    BrokerError::Internal("the queue's writer answered another kind of write".into())
}

/// One caller's write, answered once the transaction holding it has committed (or failed).
struct Write {
    op: Op,
    reply: oneshot::Sender<Done>,
}

enum Op {
    Bind {
        group: String,
        pattern: String,
    },
    /// Stored all or nothing; a single publish is a batch of one.
    Publish(Vec<Encoded>),
    Redeliver {
        group: String,
        message: Encoded,
    },
    Fetch {
        group: String,
        max: usize,
        lease: Duration,
    },
    Ack(Vec<DeliveryTag>),
    Retry {
        tag: DeliveryTag,
        delay: Duration,
    },
}

/// A message to store, with its id and headers already in their stored form: encoded by the
/// caller, not in the writer, which every write waits for.
struct Encoded {
    topic: String,
    id: String,
    headers: String,
    message: Outgoing,
}

impl Encoded {
    fn new(topic: &str, message: Outgoing) -> Self {
        Self {
            topic: topic.to_owned(),
            id: message.id.to_string(),
            headers: encode_headers(&message.headers),
            message,
        }
    }
}

enum Done {
    Unit(Result<(), BrokerError>),
    Routed(Result<Vec<bool>, BrokerError>),
    /// The claimed rows and their lease, decoded by the caller (not in the writer, which
    /// every write waits for).
    Fetched(Result<(Vec<DeliveryRow>, Uuid), BrokerError>),
    Acked(Vec<Result<(), BrokerError>>),
}

impl Op {
    /// The answer when the transaction holding this write failed: nothing of it was stored.
    fn failed(&self, e: &sqlx::Error) -> Done {
        match self {
            Op::Bind { .. } | Op::Redeliver { .. } | Op::Retry { .. } => {
                Done::Unit(Err(group_fault(e)))
            }
            Op::Publish(_) => Done::Routed(Err(group_fault(e))),
            Op::Fetch { .. } => Done::Fetched(Err(group_fault(e))),
            Op::Ack(tags) => Done::Acked(tags.iter().map(|_| Err(group_fault(e))).collect()),
        }
    }
}

/// How long the checkpointer waits after a checkpoint before the next: commits in between share
/// one.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);

/// WAL frames (pages) past which the writer checkpoints itself before its next transaction:
/// under a write load that never pauses, the checkpointer may never catch up with the end of the
/// WAL, and SQLite starts the WAL file over only once it has.
const WAL_BOUND: i64 = 16_384;

/// Checkpoints (PASSIVE: it never waits for the writer) after commits, at most once per
/// [`CHECKPOINT_EVERY`], and publishes the WAL's length in frames; ends with the writer.
async fn checkpoint_loop(
    mut conn: SqliteConnection,
    mut committed: watch::Receiver<()>,
    wal: Arc<AtomicI64>,
) {
    while committed.changed().await.is_ok() {
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await
        {
            Ok((_, frames, _)) => wal.store(frames, Ordering::Release),
            Err(e) => tracing::debug!(error = %e, "queue checkpoint failed; trying again later"),
        }
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
}

async fn write_loop(
    mut conn: SqliteConnection,
    mut writes: mpsc::Receiver<Write>,
    limits: QueueLimits,
    commits: watch::Sender<()>,
    wal: Arc<AtomicI64>,
) {
    let mut group = Vec::with_capacity(GROUP_WRITES);
    while writes.recv_many(&mut group, GROUP_WRITES).await > 0 {
        if wal.load(Ordering::Acquire) > WAL_BOUND {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut conn)
                .await
            {
                tracing::warn!(error = %e, "queue checkpoint by the writer failed");
            }
            wal.store(0, Ordering::Release);
        }
        let done = match commit(&mut conn, &group, &limits).await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, writes = group.len(), "queue transaction failed; its writes are refused");
                group.iter().map(|w| w.op.failed(&e)).collect()
            }
        };
        commits.send_replace(());
        for (write, done) in group.drain(..).zip(done) {
            // A caller that stopped waiting is not an error: its write stands (or not) as done.
            let _ = write.reply.send(done);
        }
    }
}

/// Applies a group of writes in one transaction and commits it. A write that fails for its own
/// reason (a full group, a lost lease) has left nothing behind and does not fail the others; a
/// database error fails the whole transaction.
async fn commit(
    conn: &mut SqliteConnection,
    group: &[Write],
    limits: &QueueLimits,
) -> Result<Vec<Done>, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut state = TxState::default();
    let mut done = Vec::with_capacity(group.len());
    for write in group {
        done.push(apply(&mut tx, &mut state, &write.op, limits).await?);
    }
    state.flush_depths(&mut tx).await?;
    tx.commit().await?;
    Ok(done)
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Sqlite>;

/// What one transaction keeps in memory while it holds the write lock: the bindings (read
/// once), and each touched group's depth, written back once before the commit.
#[derive(Default)]
struct TxState {
    bindings: Option<Vec<(String, String)>>,
    depths: HashMap<String, GroupDepth>,
}

#[derive(Clone, Copy, Default)]
struct GroupDepth {
    /// The stored depth, read when a publish first needs it.
    stored: Option<i64>,
    /// Change made by this transaction.
    delta: i64,
}

impl TxState {
    async fn bindings(&mut self, tx: &mut Tx<'_>) -> Result<&[(String, String)], sqlx::Error> {
        if self.bindings.is_none() {
            self.bindings = Some(
                sqlx::query_as("SELECT grp, pattern FROM queue_bindings")
                    .fetch_all(&mut **tx)
                    .await?,
            );
        }
        Ok(self.bindings.as_deref().unwrap_or_default())
    }

    /// How many more messages `group` may hold, this transaction's writes included.
    async fn room(
        &mut self,
        tx: &mut Tx<'_>,
        group: &str,
        max_depth: u64,
    ) -> Result<i64, sqlx::Error> {
        if self.depths.get(group).is_none_or(|d| d.stored.is_none()) {
            let stored: Option<i64> =
                sqlx::query_scalar("SELECT depth FROM queue_groups WHERE grp = ?")
                    .bind(group)
                    .fetch_optional(&mut **tx)
                    .await?;
            self.depths.entry(group.to_owned()).or_default().stored = Some(stored.unwrap_or(0));
        }
        let d = self.depths[group];
        let max = i64::try_from(max_depth).unwrap_or(i64::MAX);
        Ok(max - (d.stored.unwrap_or(0) + d.delta))
    }

    /// Counts `n` messages stored in `group` by this transaction.
    fn stored(&mut self, group: &str, n: i64) {
        self.depths.entry(group.to_owned()).or_default().delta += n;
    }

    fn released(&mut self, group: &str, n: i64) {
        self.depths.entry(group.to_owned()).or_default().delta -= n;
    }

    async fn flush_depths(&mut self, tx: &mut Tx<'_>) -> Result<(), sqlx::Error> {
        for (group, d) in &self.depths {
            if d.delta != 0 {
                sqlx::query("UPDATE queue_groups SET depth = depth + ? WHERE grp = ?")
                    .bind(d.delta)
                    .bind(group)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }
}

async fn apply(
    tx: &mut Tx<'_>,
    state: &mut TxState,
    op: &Op,
    limits: &QueueLimits,
) -> Result<Done, sqlx::Error> {
    Ok(match op {
        Op::Bind { group, pattern } => {
            ensure_group(tx, group).await?;
            sqlx::query(
                "INSERT INTO queue_bindings (grp, pattern) VALUES (?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(pattern)
            .execute(&mut **tx)
            .await?;
            state.bindings = None;
            Done::Unit(Ok(()))
        }
        Op::Publish(batch) => {
            let bindings = state.bindings(tx).await?.to_vec();
            let copies: Vec<Vec<&str>> = batch
                .iter()
                .map(|encoded| matching_groups(&bindings, &encoded.topic))
                .collect();
            let routed = copies.iter().map(|groups| !groups.is_empty()).collect();
            let mut flat = Vec::with_capacity(batch.len());
            for (encoded, groups) in batch.iter().zip(&copies) {
                flat.extend(groups.iter().map(|g| (*g, encoded)));
            }
            Done::Routed(store(tx, state, &flat, limits).await?.map(|()| routed))
        }
        Op::Redeliver { group, message } => {
            ensure_group(tx, group).await?;
            let copies = [(group.as_str(), message)];
            Done::Unit(store(tx, state, &copies, limits).await?)
        }
        Op::Fetch { group, max, lease } => Done::Fetched(Ok(claim(tx, group, *max, *lease).await?)),
        Op::Ack(tags) => Done::Acked(ack(tx, state, tags).await?),
        Op::Retry { tag, delay } => {
            let at = now_micros().saturating_add(duration_micros(*delay));
            let res = sqlx::query(
                "UPDATE queue_messages SET lease = NULL, lease_until = NULL, available_at = ? WHERE seq = ? AND lease = ?",
            )
            .bind(at)
            .bind(tag.seq)
            .bind(tag.lease.to_string())
            .execute(&mut **tx)
            .await?;
            Done::Unit(if res.rows_affected() == 0 {
                Err(BrokerError::LeaseLost)
            } else {
                Ok(())
            })
        }
    })
}

async fn ensure_group(tx: &mut Tx<'_>, group: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO queue_groups (grp) VALUES (?) ON CONFLICT (grp) DO NOTHING")
        .bind(group)
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// Copies stored by one `INSERT` statement at most: 9 parameters each, well under SQLite's
/// parameter limit (32,766).
const ROWS_PER_INSERT: usize = 100;

/// Stores each `(group, topic, message)` copy, all or nothing: a group already holding the
/// message id keeps its copy (a republish), and a full group leaves nothing of the write behind.
///
/// Each group's copies go in multi-row `INSERT`s of [`ROWS_PER_INSERT`] rows: every statement
/// is a round trip to sqlx's SQLite worker thread, and a row per statement made a publish cost
/// several times the rows' own work. The rows are listed in batch order, so `seq` follows
/// publish order within the group. The statements return no rows (their counts say what was
/// stored): each row sent back is a hand-off between threads, which cost more than the insert.
/// When a group has room for every copy, duplicates or not, nothing can be refused and the
/// copies are simply stored; near the bound, the write runs under a savepoint, counts what it
/// stored (a republished copy takes no room) and is rolled back if that is too much.
async fn store(
    tx: &mut Tx<'_>,
    state: &mut TxState,
    copies: &[(&str, &Encoded)],
    limits: &QueueLimits,
) -> Result<Result<(), BrokerError>, sqlx::Error> {
    let now = now_micros();
    let mut per_group: BTreeMap<&str, Vec<&Encoded>> = BTreeMap::new();
    for &(group, encoded) in copies {
        per_group.entry(group).or_default().push(encoded);
    }
    let mut fits = true;
    for (group, copies) in &per_group {
        fits &= state.room(tx, group, limits.max_depth).await? >= copies.len() as i64;
    }
    if fits {
        for (group, copies) in &per_group {
            let stored = insert(tx, group, copies, now).await?;
            state.stored(group, stored);
        }
        return Ok(Ok(()));
    }
    sqlx::query("SAVEPOINT near_bound")
        .execute(&mut **tx)
        .await?;
    let before = state.depths.clone();
    for (group, copies) in &per_group {
        let stored = insert(tx, group, copies, now).await?;
        if state.room(tx, group, limits.max_depth).await? < stored {
            // Backpressure: this write leaves nothing behind; the group's other writes commit.
            sqlx::query("ROLLBACK TO near_bound")
                .execute(&mut **tx)
                .await?;
            sqlx::query("RELEASE near_bound").execute(&mut **tx).await?;
            state.depths = before;
            return Ok(Err(BrokerError::Full));
        }
        state.stored(group, stored);
    }
    sqlx::query("RELEASE near_bound").execute(&mut **tx).await?;
    Ok(Ok(()))
}

/// Inserts one group's copies; returns how many were stored (a republished message, its
/// `(grp, id)` stored already, is stored once).
async fn insert(
    tx: &mut Tx<'_>,
    group: &str,
    copies: &[&Encoded],
    now: i64,
) -> Result<i64, sqlx::Error> {
    let mut stored = 0;
    for chunk in copies.chunks(ROWS_PER_INSERT) {
        // Built from the row count only, never from input.
        let sql = sqlx::AssertSqlSafe(insert_statement(chunk.len()));
        let mut query = sqlx::query(sql);
        for copy in chunk {
            let message = &copy.message;
            query = query
                .bind(group)
                .bind(copy.id.as_str())
                .bind(copy.topic.as_str())
                .bind(message.key.as_deref())
                .bind(copy.headers.as_str())
                .bind(message.body.as_slice())
                .bind(now)
                .bind(message.expires_at.map(|t| keel_sql::micros(&t)))
                .bind(now);
        }
        let done = query.execute(&mut **tx).await?;
        stored += i64::try_from(done.rows_affected()).unwrap_or(i64::MAX);
    }
    Ok(stored)
}

/// `INSERT … VALUES` for `rows` copies, nine anonymous parameters per row, bound in column
/// order. Anonymous, not numbered (`?N`): sqlx looks up every parameter's name to bind it, and
/// SQLite finds a numbered parameter's name by a linear walk of the statement's list of names, so
/// binding a 100-row statement of numbered parameters was quadratic (measured: an eighth of the
/// whole benchmark's CPU); anonymous parameters have no names to walk.
fn insert_statement(rows: usize) -> String {
    const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?)";
    let mut sql = String::from(
        "INSERT INTO queue_messages (grp, id, topic, msg_key, headers, body, published_at, expires_at, available_at) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push_str(ROW);
    }
    sql.push_str(" ON CONFLICT (grp, id) DO NOTHING");
    sql
}

fn seq_list(seqs: &[i64]) -> String {
    serde_json::to_string(seqs).expect("integers serialize")
}

/// Leases up to `max` of the oldest ready messages of `group` whose key has no older message
/// still stored. The scan follows `queue_messages_order (grp, seq)`, so it stops after the batch
/// instead of sorting every ready message; each key check is one probe of
/// `queue_messages_keys (grp, msg_key, seq)`.
async fn claim(
    tx: &mut Tx<'_>,
    group: &str,
    max: usize,
    lease: Duration,
) -> Result<(Vec<DeliveryRow>, Uuid), sqlx::Error> {
    let now = now_micros();
    let token = Uuid::new_v4();
    let rows: Vec<DeliveryRow> = sqlx::query_as(
        "UPDATE queue_messages SET lease = ?, lease_until = ?, attempts = attempts + 1 \
         WHERE seq IN ( \
           SELECT m.seq FROM queue_messages m INDEXED BY queue_messages_order \
           WHERE m.grp = ? AND m.available_at <= ? AND (m.lease_until IS NULL OR m.lease_until < ?) \
             AND (m.msg_key IS NULL OR NOT EXISTS ( \
               SELECT 1 FROM queue_messages o WHERE o.grp = m.grp AND o.msg_key = m.msg_key AND o.seq < m.seq)) \
           ORDER BY m.seq LIMIT ?) \
         RETURNING seq, id, topic, msg_key, headers, body, published_at, expires_at, attempts",
    )
    .bind(token.to_string())
    .bind(now.saturating_add(duration_micros(lease)))
    .bind(group)
    .bind(now)
    .bind(now)
    .bind(i64::try_from(max).unwrap_or(i64::MAX))
    .fetch_all(&mut **tx)
    .await?;
    Ok((rows, token))
}

/// Removes every message whose tag still holds its lease (one lease token per claim, and a
/// worker's batch shares one); a stale or repeated tag is `LeaseLost`. Per token, one `SELECT`
/// lists the tags that hold it, one row per group (not a row per message: each row sent back is a
/// hand-off between threads), then one `DELETE` removes them; nothing can change in between, as
/// the writer holds the write lock.
async fn ack(
    tx: &mut Tx<'_>,
    state: &mut TxState,
    tags: &[DeliveryTag],
) -> Result<Vec<Result<(), BrokerError>>, sqlx::Error> {
    let mut by_lease: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for tag in tags {
        by_lease.entry(tag.lease).or_default().push(tag.seq);
    }
    let mut removed: HashSet<(i64, Uuid)> = HashSet::new();
    for (lease, seqs) in by_lease {
        let lease_text = lease.to_string();
        let listed = seq_list(&seqs);
        let held: Vec<(String, String)> = sqlx::query_as(
            "SELECT grp, json_group_array(seq) FROM queue_messages \
             WHERE lease = ? AND seq IN (SELECT value FROM json_each(?)) GROUP BY grp",
        )
        .bind(&lease_text)
        .bind(&listed)
        .fetch_all(&mut **tx)
        .await?;
        if held.is_empty() {
            continue;
        }
        sqlx::query(
            "DELETE FROM queue_messages WHERE lease = ? AND seq IN (SELECT value FROM json_each(?))",
        )
        .bind(&lease_text)
        .bind(&listed)
        .execute(&mut **tx)
        .await?;
        for (group, seqs) in held {
            let seqs: Vec<i64> =
                serde_json::from_str(&seqs).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            state.released(&group, seqs.len() as i64);
            removed.extend(seqs.into_iter().map(|seq| (seq, lease)));
        }
    }
    // In order: the first of repeated tags takes the removal, the rest lost it.
    Ok(tags
        .iter()
        .map(|tag| {
            if removed.remove(&(tag.seq, tag.lease)) {
                Ok(())
            } else {
                Err(BrokerError::LeaseLost)
            }
        })
        .collect())
}

#[async_trait]
impl Broker for SqliteQueue {
    async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError> {
        keel_domain::messaging::queue::check_name("group", group, false)?;
        keel_domain::messaging::queue::check_name("pattern", pattern, true)?;
        let op = Op::Bind {
            group: group.to_owned(),
            pattern: pattern.to_owned(),
        };
        match self.write(op).await? {
            Done::Unit(res) => res,
            _ => Err(unexpected()),
        }
    }

    async fn publish(&self, topic: &str, message: Outgoing) -> Result<bool, BrokerError> {
        check_publish(topic, &message.body, &self.limits)?;
        match self
            .write(Op::Publish(vec![Encoded::new(topic, message)]))
            .await?
        {
            Done::Routed(res) => res.map(|routed| routed.first().copied().unwrap_or(false)),
            _ => Err(unexpected()),
        }
    }

    async fn publish_many(&self, batch: &[(String, Outgoing)]) -> Result<Vec<bool>, BrokerError> {
        for (topic, message) in batch {
            check_publish(topic, &message.body, &self.limits)?;
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let batch = batch
            .iter()
            .map(|(topic, message)| Encoded::new(topic, message.clone()))
            .collect();
        match self.write(Op::Publish(batch)).await? {
            Done::Routed(res) => res,
            _ => Err(unexpected()),
        }
    }

    async fn redeliver(
        &self,
        group: &str,
        topic: &str,
        message: Outgoing,
    ) -> Result<(), BrokerError> {
        keel_domain::messaging::queue::check_name("group", group, false)?;
        check_publish(topic, &message.body, &self.limits)?;
        let op = Op::Redeliver {
            group: group.to_owned(),
            message: Encoded::new(topic, message),
        };
        match self.write(op).await? {
            Done::Unit(res) => res,
            _ => Err(unexpected()),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            dedupes_publish: true,
        }
    }

    async fn fetch(
        &self,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let op = Op::Fetch {
            group: group.to_owned(),
            max,
            lease,
        };
        match self.write(op).await? {
            Done::Fetched(res) => res.and_then(|(rows, token)| deliveries(rows, group, token)),
            _ => Err(unexpected()),
        }
    }

    async fn ack(&self, tag: DeliveryTag) -> Result<(), BrokerError> {
        self.ack_many(&[tag])
            .await
            .pop()
            .unwrap_or(Err(BrokerError::LeaseLost))
    }

    async fn ack_many(&self, tags: &[DeliveryTag]) -> Vec<Result<(), BrokerError>> {
        if tags.is_empty() {
            return Vec::new();
        }
        match self.write(Op::Ack(tags.to_vec())).await {
            Ok(Done::Acked(results)) => results,
            Ok(_) => tags.iter().map(|_| Err(unexpected())).collect(),
            Err(e) => tags.iter().map(|_| Err(replicate(&e))).collect(),
        }
    }

    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        match self.write(Op::Retry { tag, delay }).await? {
            Done::Unit(res) => res,
            _ => Err(unexpected()),
        }
    }

    async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError> {
        let now = now_micros();
        let (total, in_flight, oldest): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(CASE WHEN lease_until >= ? THEN 1 ELSE 0 END), min(published_at) \
             FROM queue_messages WHERE grp = ?",
        )
        .bind(now)
        .bind(group)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(depth(now, total, in_flight, oldest))
    }
}
