//! The queue on PostgreSQL: the SQLite model, with `FOR UPDATE SKIP LOCKED` so that competing
//! workers in many processes never claim the same row.
//!
//! A batch is one statement: `publish_many` inserts every copy from arrays (`UNNEST … WITH
//! ORDINALITY`, in batch order so that `seq` follows publish order) with its room check and depth
//! update, and `ack_many` deletes every tag from arrays and counts the removals, each statement
//! its own transaction. PostgreSQL commits concurrent transactions with shared WAL flushes by
//! itself, so unlike SQLite no writer task is needed.

use keel_domain::messaging::queue::matching_groups;
use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use keel_domain::{Broker, BrokerError, Capabilities, Delivery, DeliveryTag, Outgoing, QueueDepth};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use keel_sql::queue::{
    DeliveryRow, QueueLimits, check_publish, classify, deliveries, depth, replicate,
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
    (
        5,
        "queue ack counters",
        include_str!("../migrations/queue/0005_queue_ack_counters.sql"),
    ),
    (
        6,
        "queue vacuum",
        include_str!("../migrations/queue/0006_queue_vacuum.sql"),
    ),
    (
        7,
        "queue floors",
        include_str!("../migrations/queue/0007_queue_floors.sql"),
    ),
];

/// The SQLSTATE of `queue_refuse_full()` (migration 0005): a publish found a group without room.
const GROUP_FULL: &str = "KQ001";

/// Longest a claim may run before PostgreSQL cancels it (see [`PostgresQueue::open`]); a claim
/// normally takes a few milliseconds.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(1);

/// Release counters per group (`queue_group_releases`): concurrent acks pick one at random, so
/// they seldom wait on each other's row.
const RELEASE_SLOTS: i16 = 16;

/// How often a process advances the floors of the groups it fetches from (migration 0007). A
/// floor trails the group's oldest live message by at most about two periods of acks, the index
/// entries a claim may still step over.
const FLOOR_PERIOD: Duration = Duration::from_millis(50);

/// A group nobody in this process fetched from for this long is no longer advanced here.
const FLOOR_IDLE: Duration = Duration::from_secs(30);

/// The queue in PostgreSQL tables.
#[derive(Debug, Clone)]
pub struct PostgresQueue {
    pool: PgPool,
    /// Connections for claims and the floor keeper, opened with planner settings that price out
    /// sorting (see [`PostgresQueue::open`]); everything else, the hospital included, uses
    /// `pool`.
    claims: PgPool,
    /// The bindings as last read, sorted: publishes route with them and their statement checks
    /// them against the table, so a publish costs one round trip, not two; a publish that finds
    /// them changed stores nothing, and is routed again with the table's (see [`store_statement`]).
    bindings: Arc<Mutex<Option<Arc<Bindings>>>>,
    limits: QueueLimits,
    /// The floors this process knows and the proof it is building for the next ones (see
    /// [`PostgresQueue::advance_floors`]); a background task advances them while the queue lives.
    floors: Arc<Mutex<Floors>>,
}

#[derive(Debug, Default)]
struct Floors {
    /// Per group fetched from: its floor as last known, and when it was last fetched from.
    groups: std::collections::HashMap<String, (i64, std::time::Instant)>,
    /// A sequence value L and a transaction id X drawn after L was read: once no transaction
    /// with an id below X runs, every transaction that drew a `seq` up to L has ended.
    proof: Option<(i64, i64)>,
}

/// `(group, pattern)` pairs in byte order (the order of `COLLATE "C"`).
type Bindings = Vec<(String, String)>;

impl PostgresQueue {
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Connects to the database at `url` and applies the queue's migrations.
    pub async fn open(url: &str, limits: QueueLimits) -> Result<Self, BrokerError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(classify)?;
        crate::queue_migrations::run(&pool, MIGRATIONS)
            .await
            .map_err(|e| BrokerError::Internal(Box::new(e)))?;
        // Planner safeguard: a claim must walk `queue_messages_order` and stop after the batch.
        // Without statistics (a new or freshly filled table, before autovacuum's first ANALYZE)
        // the planner guessed a few rows per group and read every row of the group and sorted
        // them, on every claim: 50 ms at a depth of 20,000 instead of 1 ms. Sorting (and the
        // bitmap scan that feeds it) is never the right plan for a claim, so the claims'
        // connections price them out from the start, at no cost per claim; the hospital's
        // queries keep the default planner on `pool`.
        //
        // A second safeguard bounds a claim's time. A claim walks past the index entries of
        // acknowledged rows until they are pruned, and a row can only be pruned once no snapshot
        // can see it; a slow claim's own snapshot kept them all, every claim walked further, and
        // the queue fell into a spiral of claims running for tens of seconds (observed in
        // `keel-bench queue` on a loaded machine). A claim cancelled after `CLAIM_TIMEOUT`
        // releases its snapshot and leases nothing; its worker simply fetches again.
        let claim_options = PgConnectOptions::from_str(url).map_err(classify)?.options([
            ("enable_sort", "off".to_owned()),
            ("enable_bitmapscan", "off".to_owned()),
            ("statement_timeout", CLAIM_TIMEOUT.as_millis().to_string()),
            // With `enable_sort` off any sort still planned is priced at 10^10, far past
            // `jit_above_cost`: such a statement would be compiled by LLVM on every run (tried
            // with acks on these connections: every ack was, and the queue ran at 1.4k msg/s).
            // None of the statements here is worth compiling.
            ("jit", "off".to_owned()),
        ]);
        let claims = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            // Connected now, not at the first claim: a claim's lease runs from before it gets
            // its connection, and a short lease could pass while one is opened.
            .connect_with(claim_options)
            .await
            .map_err(classify)?;
        let queue = Self {
            pool,
            claims,
            bindings: Arc::default(),
            limits,
            floors: Arc::default(),
        };
        queue.spawn_floor_keeper();
        Ok(queue)
    }

    /// Advances the floors every [`FLOOR_PERIOD`] until every clone of this queue is dropped.
    fn spawn_floor_keeper(&self) {
        let floors = Arc::downgrade(&self.floors);
        let (pool, claims) = (self.pool.clone(), self.claims.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLOOR_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(floors) = floors.upgrade() else {
                    return;
                };
                if let Err(e) = advance_floors(&pool, &claims, &floors).await {
                    // Only the claims' shortcut waits; the next period tries again.
                    tracing::debug!(error = %e, "queue floors not advanced");
                }
            }
        });
    }

    /// One step of the floor keeper, now: finishes the pending proof if it can and raises the
    /// floors of the groups fetched from, then starts the next proof. The background task does
    /// this every [`FLOOR_PERIOD`]; tests call it to see a floor move without waiting.
    pub async fn advance_floors(&self) -> Result<(), BrokerError> {
        advance_floors(&self.pool, &self.claims, &self.floors).await
    }

    /// The floor this process uses for `group`'s claims (0 before it first fetched from it).
    pub fn floor(&self, group: &str) -> i64 {
        let floors = self.floors.lock().expect("floors lock");
        floors.groups.get(group).map_or(0, |g| g.0)
    }

    /// Reads the bindings from the table and keeps them for the next publishes.
    async fn load_bindings(&self) -> Result<Arc<Bindings>, BrokerError> {
        let mut bindings: Bindings = sqlx::query_as("SELECT grp, pattern FROM queue_bindings")
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        bindings.sort_unstable();
        let bindings = Arc::new(bindings);
        *self.bindings.lock().expect("bindings lock") = Some(bindings.clone());
        Ok(bindings)
    }

    /// Stores each `(group, topic, message)` copy with one statement, all or nothing: a group
    /// already holding the message id keeps its copy (a republish), and when a group has no room
    /// for its new copies nothing is stored and the answer is `Full` (see [`store_statement`]).
    /// With `routed_by`, the bindings the copies were routed with: if the table's differ,
    /// nothing is stored and the answer is `Ok(false)`.
    async fn store(
        &self,
        executor: impl PgExecutor<'_>,
        copies: &[(&str, &str, &Outgoing)],
        routed_by: Option<&Bindings>,
    ) -> Result<bool, BrokerError> {
        if copies.is_empty() {
            return Ok(true);
        }
        let now = now_micros();
        let groups: Vec<&str> = copies.iter().map(|c| c.0).collect();
        let ids: Vec<Uuid> = copies.iter().map(|c| c.2.id.0).collect();
        let topics: Vec<&str> = copies.iter().map(|c| c.1).collect();
        let keys: Vec<Option<&str>> = copies.iter().map(|c| c.2.key.as_deref()).collect();
        let headers: Vec<String> = copies
            .iter()
            .map(|c| encode_headers(&c.2.headers))
            .collect();
        let bodies: Vec<&[u8]> = copies.iter().map(|c| c.2.body.as_slice()).collect();
        let expires: Vec<Option<i64>> = copies
            .iter()
            .map(|c| c.2.expires_at.map(|t| keel_sql::micros(&t)))
            .collect();
        let mut touched: Vec<&str> = copies.iter().map(|c| c.0).collect();
        touched.sort_unstable();
        touched.dedup();
        // Built from the number of groups only, never from input.
        let sql = sqlx::AssertSqlSafe(store_statement(touched.len()));
        let mut query = sqlx::query_scalar::<_, i64>(sql)
            .bind(groups)
            .bind(ids)
            .bind(topics)
            .bind(keys)
            .bind(headers)
            .bind(bodies)
            .bind(expires)
            .bind(now)
            .bind(i64::try_from(self.limits.max_depth).unwrap_or(i64::MAX))
            .bind(routed_by.map(|b| b.iter().map(|(g, _)| g.as_str()).collect::<Vec<_>>()))
            .bind(routed_by.map(|b| b.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>()));
        for group in touched {
            query = query.bind(group);
        }
        let res = query.fetch_one(executor).await;
        match res {
            Ok(stored) => Ok(stored >= 0),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(GROUP_FULL) => {
                Err(BrokerError::Full)
            }
            Err(e) => Err(classify(e)),
        }
    }
}

/// The statement of a publish touching `groups` groups (bound in name order as `$12`, `$13`, …,
/// after the copies' arrays `$1`–`$7`, the publish time `$8`, the bound `$9`, and the groups and
/// patterns of the bindings the copies were routed with, `$10` and `$11`, or nulls).
///
/// `bound` compares the routing bindings with the table's as this statement sees them (as fresh
/// as the separate read it replaces); when they differ nothing is inserted and the statement
/// returns -1, and the caller routes again.
///
/// One statement, so a publish needs no transaction of its own and no row lock is held across a
/// client round trip. The copies are inserted first (`ins`, republished ids skipped), concurrently
/// with other publishes; then each group's depth row is updated by what was stored in it, one
/// group after the other in name order (each `UPDATE` reads the one before), so two publishes
/// never wait on each other in opposite orders; the rows stay locked only until the commit. A
/// group's depth is its `depth` minus its releases (migration 0005); a release committed since
/// the statement started is not seen, which only makes the group look fuller, so the bound is
/// never passed. A group without room raises `queue_refuse_full()`, which aborts the statement
/// and with it the insert. (Locking the rows first with `FOR NO KEY UPDATE` and updating them
/// later in the same statement deadlocked two publishes of one group.)
fn store_statement(groups: usize) -> String {
    let mut sql = String::from(
        "WITH c AS ( \
           SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::bigint[]) \
             WITH ORDINALITY AS c (grp, id, topic, msg_key, headers, body, expires_at, ord)), \
         bound AS ( \
           SELECT $10::text[] IS NULL OR ( \
             COALESCE(array_agg(grp ORDER BY grp COLLATE \"C\", pattern COLLATE \"C\"), '{}') = $10::text[] \
             AND COALESCE(array_agg(pattern ORDER BY grp COLLATE \"C\", pattern COLLATE \"C\"), '{}') = $11::text[]) AS same \
           FROM queue_bindings), \
         ins AS ( \
           INSERT INTO queue_messages (grp, id, topic, msg_key, headers, body, published_at, expires_at, available_at) \
           SELECT grp, id, topic, msg_key, headers, body, $8, expires_at, $8 FROM c \
           WHERE (SELECT same FROM bound) ORDER BY ord \
           ON CONFLICT (grp, id) DO NOTHING RETURNING grp), \
         added AS (SELECT grp, count(*) AS n FROM ins GROUP BY grp)",
    );
    for g in 0..groups {
        let after = if g == 0 {
            String::new()
        } else {
            format!(" AND (SELECT count(*) FROM u{}) >= 0", g - 1)
        };
        sql.push_str(&format!(
            ", u{g} AS ( \
               UPDATE queue_groups q SET depth = q.depth + a.n FROM added a \
               WHERE q.grp = ${p} AND a.grp = ${p}{after} \
               RETURNING q.depth - (SELECT COALESCE(sum(r.released), 0) FROM queue_group_releases r WHERE r.grp = q.grp) AS depth)",
            p = 12 + g
        ));
    }
    sql.push_str(
        " SELECT CASE WHEN NOT (SELECT same FROM bound) THEN -1 \
           WHEN COALESCE(bool_and(depth <= $9), true) THEN count(*) ELSE queue_refuse_full() END FROM (",
    );
    for g in 0..groups {
        if g > 0 {
            sql.push_str(" UNION ALL ");
        }
        sql.push_str(&format!("SELECT depth FROM u{g}"));
    }
    if groups == 0 {
        sql.push_str("SELECT 0::bigint AS depth WHERE false");
    }
    sql.push_str(") AS counted");
    sql
}

#[async_trait]
impl Broker for PostgresQueue {
    async fn bind(&self, group: &str, pattern: &str) -> Result<(), BrokerError> {
        keel_domain::messaging::queue::check_name("group", group, false)?;
        keel_domain::messaging::queue::check_name("pattern", pattern, true)?;
        let mut tx = self.pool.begin().await.map_err(classify)?;
        create_group(&mut tx, group).await?;
        sqlx::query(
            "INSERT INTO queue_bindings (grp, pattern) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(pattern)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        // The next publish reads the bindings again (another process's binds are caught by the
        // publish statement's check).
        *self.bindings.lock().expect("bindings lock") = None;
        Ok(())
    }

    async fn publish(&self, topic: &str, message: Outgoing) -> Result<bool, BrokerError> {
        let routed = self.publish_many(&[(topic.to_owned(), message)]).await?;
        Ok(routed.first().copied().unwrap_or(false))
    }

    async fn publish_many(&self, batch: &[(String, Outgoing)]) -> Result<Vec<bool>, BrokerError> {
        for (topic, message) in batch {
            check_publish(topic, &message.body, &self.limits)?;
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let cached = self.bindings.lock().expect("bindings lock").clone();
        let (mut bindings, mut fresh) = match cached {
            Some(b) => (b, false),
            None => (self.load_bindings().await?, true),
        };
        loop {
            let mut routed = Vec::with_capacity(batch.len());
            let mut copies = Vec::with_capacity(batch.len());
            for (topic, message) in batch {
                let groups = matching_groups(&bindings, topic);
                routed.push(!groups.is_empty());
                copies.extend(groups.into_iter().map(|g| (g, topic.as_str(), message)));
            }
            // Nothing to store has nothing to check the bindings with: an unrouted answer is
            // given only from bindings just read.
            if copies.is_empty() && !fresh {
                bindings = self.load_bindings().await?;
                fresh = true;
                continue;
            }
            if self.store(&self.pool, &copies, Some(&bindings)).await? {
                return Ok(routed);
            }
            // The bindings changed since they were read: nothing was stored; route again.
            bindings = self.load_bindings().await?;
            fresh = true;
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
        let mut tx = self.pool.begin().await.map_err(classify)?;
        create_group(&mut tx, group).await?;
        // No routing: the group is named.
        self.store(&mut *tx, &[(group, topic, &message)], None)
            .await?;
        tx.commit().await.map_err(classify)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            dedupes_publish: true,
        }
    }

    /// Claims follow `queue_messages_order (grp, seq)`, stopping after the batch (on the claims'
    /// own connections, see [`PostgresQueue::open`]); each key check is one probe of
    /// `queue_messages_keys (grp, msg_key, seq)`.
    async fn fetch(
        &self,
        group: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let now = now_micros();
        let token = Uuid::new_v4();
        let floor = {
            let mut floors = self.floors.lock().expect("floors lock");
            let started = std::time::Instant::now();
            match floors.groups.get_mut(group) {
                Some(entry) => {
                    entry.1 = started;
                    entry.0
                }
                None => {
                    floors.groups.insert(group.to_owned(), (0, started));
                    0
                }
            }
        };
        // No live message lies below the floor (migration 0007), so both index walks start there:
        // the claim's over `(grp, seq)` and each key check's over `(grp, msg_key, seq)`. The
        // bounds are row comparisons that only those indexes can use: with plain `seq` bounds the
        // planner, knowing nothing of a fresh table, walked a key check over `(grp, seq)`,
        // filtering keys, and a claim took 0.4 s (and with statistics it may walk the primary
        // key across every group).
        let rows: Vec<DeliveryRow> = sqlx::query_as(
            "UPDATE queue_messages SET lease = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE seq IN ( \
               SELECT m.seq FROM queue_messages m \
               WHERE m.grp = $3 AND (m.grp, m.seq) >= ($3, $7) \
                 AND m.available_at <= $4 AND (m.lease_until IS NULL OR m.lease_until < $5) \
                 AND (m.msg_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM queue_messages o \
                   WHERE o.grp = m.grp AND o.msg_key = m.msg_key \
                     AND (o.msg_key, o.seq) >= (m.msg_key, $7) AND (o.msg_key, o.seq) < (m.msg_key, m.seq))) \
               ORDER BY m.seq LIMIT $6 FOR UPDATE SKIP LOCKED) \
             RETURNING seq, id::text, topic, msg_key, headers, body, published_at, expires_at, attempts",
        )
        .bind(token.to_string())
        .bind(now.saturating_add(duration_micros(lease)))
        .bind(group)
        .bind(now)
        .bind(now)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .bind(floor)
        .fetch_all(&self.claims)
        .await
        .map_err(classify)?;
        deliveries(rows, group, token)
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
        match self.remove(tags).await {
            Ok(removed) => {
                let mut removed: HashSet<(i64, String)> = removed;
                // In order: the first of repeated tags takes the removal, the rest lost it.
                tags.iter()
                    .map(|tag| {
                        if removed.remove(&(tag.seq, tag.lease.to_string())) {
                            Ok(())
                        } else {
                            Err(BrokerError::LeaseLost)
                        }
                    })
                    .collect()
            }
            Err(e) => tags.iter().map(|_| Err(replicate(&e))).collect(),
        }
    }

    async fn retry(&self, tag: DeliveryTag, delay: Duration) -> Result<(), BrokerError> {
        let at = now_micros().saturating_add(duration_micros(delay));
        let res = sqlx::query(
            "UPDATE queue_messages SET lease = NULL, lease_until = NULL, available_at = $1 WHERE seq = $2 AND lease = $3",
        )
        .bind(at)
        .bind(tag.seq)
        .bind(tag.lease.to_string())
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        if res.rows_affected() == 0 {
            Err(BrokerError::LeaseLost)
        } else {
            Ok(())
        }
    }

    async fn depth(&self, group: &str) -> Result<QueueDepth, BrokerError> {
        let now = now_micros();
        let (total, in_flight, oldest): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(CASE WHEN lease_until >= $1 THEN 1 ELSE 0 END)::BIGINT, min(published_at) \
             FROM queue_messages WHERE grp = $2",
        )
        .bind(now)
        .bind(group)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(depth(now, total, in_flight, oldest))
    }
}

/// Makes `group` if it does not exist, with its floor (migration 0007).
async fn create_group(tx: &mut sqlx::PgConnection, group: &str) -> Result<(), BrokerError> {
    for sql in [
        "INSERT INTO queue_groups (grp) VALUES ($1) ON CONFLICT (grp) DO NOTHING",
        "INSERT INTO queue_group_floors (grp) VALUES ($1) ON CONFLICT (grp) DO NOTHING",
    ] {
        sqlx::query(sql)
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
    }
    Ok(())
}

/// One step of the floor keeper (migration 0007).
///
/// A proof is a sequence value L, read first, and then a transaction id X, drawn by a statement
/// of its own after L was read. Every transaction takes its id before it draws a `seq`
/// (`queue_next_seq()`), so one that drew a `seq` up to L has an id below X. Once no transaction
/// with an id below X runs (the oldest running id in a statement's snapshot is X or more), every
/// row with a `seq` up to L is committed and visible to that statement, or never will be, and
/// no later row can have one: a group's new floor is the least of its first live `seq`
/// (searched from its old floor) and L + 1. One statement checks the proof and reads the rows
/// with the same snapshot. Floors only rise, whichever process raises them; each process takes
/// the highest it sees. The walk from the old floor steps over the entries acknowledged since,
/// once per period and process instead of once per claim.
///
/// Any long transaction in the database that holds an id (one that writes) holds the floors
/// where they are until it ends: claims then walk as they did before floors existed, slower but
/// never wrong.
///
/// The check runs on the claims' connections: their planner settings keep the walk on
/// `(grp, seq)` and their statement timeout bounds it.
async fn advance_floors(
    pool: &PgPool,
    claims: &PgPool,
    floors: &Mutex<Floors>,
) -> Result<(), BrokerError> {
    let (groups, proof) = {
        let mut floors = floors.lock().expect("floors lock");
        floors
            .groups
            .retain(|_, (_, fetched)| fetched.elapsed() < FLOOR_IDLE);
        let groups: Vec<String> = floors.groups.keys().cloned().collect();
        (groups, floors.proof)
    };
    if groups.is_empty() {
        return Ok(());
    }
    if let Some((last, xid)) = proof {
        let rows: Vec<(bool, String, i64)> = sqlx::query_as(
            "WITH proof AS ( \
               SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::text::xid8 AS done), \
             g AS (SELECT grp, floor FROM queue_group_floors WHERE grp = ANY($2::text[])), \
             n AS ( \
               SELECT g.grp, LEAST($3::bigint + 1, COALESCE( \
                 (SELECT m.seq FROM queue_messages m WHERE m.grp = g.grp AND m.seq >= g.floor ORDER BY m.seq LIMIT 1), \
                 $3::bigint + 1)) AS floor \
               FROM g WHERE (SELECT done FROM proof)), \
             raised AS ( \
               UPDATE queue_group_floors f SET floor = n.floor FROM n WHERE f.grp = n.grp AND f.floor < n.floor) \
             SELECT (SELECT done FROM proof), g.grp, GREATEST(g.floor, COALESCE(n.floor, 0)) \
             FROM g LEFT JOIN n USING (grp)",
        )
        .bind(xid.to_string())
        .bind(&groups)
        .bind(last)
        .fetch_all(claims)
        .await
        .map_err(classify)?;
        let done = rows.first().is_none_or(|r| r.0);
        {
            let mut floors = floors.lock().expect("floors lock");
            for (_, group, floor) in rows {
                if let Some(entry) = floors.groups.get_mut(&group) {
                    entry.0 = entry.0.max(floor);
                }
            }
            if done {
                floors.proof = None;
            }
        }
        if !done {
            // A transaction older than X still runs: the same proof next period.
            return Ok(());
        }
    }
    // The next proof: L first, then X in a later statement (its own transaction, committed).
    let last: i64 = sqlx::query_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM queue_messages_seq_seq",
    )
    .fetch_one(pool)
    .await
    .map_err(classify)?;
    let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(pool)
        .await
        .map_err(classify)?;
    floors.lock().expect("floors lock").proof = Some((last, xid));
    Ok(())
}

impl PostgresQueue {
    /// Deletes every tagged message still under its lease and counts the removals in its
    /// groups' releases (migration 0005: not `queue_groups.depth`, the publishes' row), in one
    /// statement, and returns the `(seq, lease)` of those removed. All of one ack's groups take
    /// one release slot, picked at random, in name order, so two acks never wait on each other's
    /// rows in opposite orders and seldom wait at all.
    async fn remove(&self, tags: &[DeliveryTag]) -> Result<HashSet<(i64, String)>, BrokerError> {
        let seqs: Vec<i64> = tags.iter().map(|t| t.seq).collect();
        let leases: Vec<String> = tags.iter().map(|t| t.lease.to_string()).collect();
        let slot = fastrand::i16(0..RELEASE_SLOTS);
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "WITH del AS ( \
               DELETE FROM queue_messages m USING UNNEST($1::bigint[], $2::text[]) AS t (seq, lease) \
               WHERE m.seq = t.seq AND m.lease = t.lease RETURNING m.seq, m.lease, m.grp), \
             released AS ( \
               INSERT INTO queue_group_releases (grp, slot, released) \
               SELECT grp, $3, count(*) FROM del GROUP BY grp ORDER BY grp \
               ON CONFLICT (grp, slot) DO UPDATE SET released = queue_group_releases.released + EXCLUDED.released) \
             SELECT seq, lease FROM del",
        )
        .bind(seqs)
        .bind(leases)
        .bind(slot)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows.into_iter().collect())
    }
}
