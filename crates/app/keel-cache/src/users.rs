//! The users resource under the configured caching technique.
//!
//! | strategy        | read                          | write                                            |
//! |-----------------|-------------------------------|--------------------------------------------------|
//! | `ttl`           | cache, else load; keep for TTL | database only: readers may see the old value until it expires |
//! | `lazy`          | cache, else load              | database, then invalidate everywhere             |
//! | `write-through` | cache, else load              | database, then replace the cached value everywhere |
//! | `write-back`    | pending writes, cache, else load | journal (fsync) + cache; database in batches   |
//!
//! Updates are optimistic: the new row carries the next version and the database applies it only
//! over the version it was computed from, so two concurrent updates never silently merge.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DurationRound, TimeDelta, Utc};
use keel_domain::CacheStrategy as Strategy;
use keel_domain::{
    Accounts, NewAccount, NewUser, Page, PageRequest, StoreError, User, UserEmail, UserId,
    UserPatch, UserRepo,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::DELETED_VERSION;
use crate::journal::Journal;
use crate::resource::{Cached, ResourceCache, Versioned};
use crate::stats::Stats;

impl Versioned for User {
    fn version(&self) -> i64 {
        self.version
    }
}

/// Settings of the write-back journal and flusher.
#[derive(Debug, Clone)]
pub struct WriteBackOptions {
    /// Directory of the journal segments and the rejects file.
    pub dir: PathBuf,
    pub flush_interval: Duration,
    pub max_batch: usize,
    pub max_backlog: usize,
    /// How long a write waits for room in a full backlog before it is refused as unavailable.
    pub backpressure_timeout: Duration,
}

/// How many times an update is retried after losing a race with another update.
const UPDATE_ATTEMPTS: usize = 5;

/// Now, at the microsecond precision every backend stores, so that a value cached at write time
/// is identical to the one a later load reads back.
fn now() -> chrono::DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .expect("microsecond truncation")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Users, read and written through the cache.
pub struct CachedUsers {
    repo: Arc<dyn UserRepo>,
    cache: Arc<ResourceCache<UserId, User>>,
    strategy: Strategy,
    write_back: Option<Arc<WriteBack>>,
}

impl CachedUsers {
    /// Builds the resource. For `write-back`, opens the journal in `write_back.dir` and first
    /// replays whatever an earlier process left in it into the database.
    pub async fn new(
        repo: Arc<dyn UserRepo>,
        cache: Arc<ResourceCache<UserId, User>>,
        strategy: Strategy,
        write_back: Option<WriteBackOptions>,
    ) -> Result<Arc<Self>, StoreError> {
        let write_back = match strategy {
            Strategy::WriteBack => {
                let opts = write_back.ok_or_else(|| {
                    StoreError::Internal("write-back needs journal options".into())
                })?;
                Some(WriteBack::open(repo.clone(), cache.clone(), opts).await?)
            }
            _ => None,
        };
        Ok(Arc::new(Self {
            repo,
            cache,
            strategy,
            write_back,
        }))
    }

    pub fn stats(&self) -> &Arc<Stats> {
        self.cache.stats()
    }

    pub fn cache(&self) -> &Arc<ResourceCache<UserId, User>> {
        &self.cache
    }

    pub async fn get(&self, id: UserId) -> Result<Option<Arc<Cached<User>>>, StoreError> {
        if let Some(wb) = &self.write_back
            && let Some(state) = wb.pending(id)
        {
            Stats::inc(&self.cache.stats().hits);
            return Ok(state);
        }
        let repo = &self.repo;
        self.cache.get_or_load(&id, || repo.get(id)).await
    }

    pub async fn create(&self, new: NewUser) -> Result<Arc<Cached<User>>, StoreError> {
        let user = User::create(new, now());
        if let Some(wb) = &self.write_back {
            return wb
                .write(user.id, |_| Ok(Some(user)))
                .await
                .map(|state| state.expect("created"));
        }
        self.repo.insert(&user).await?;
        let cached = Cached::new(user);
        let key = cached.value.id;
        match self.strategy {
            // A fresh id can only be cached as "not found" (someone asked for it early).
            Strategy::Lazy => self.cache.invalidate(&key, cached.value.version).await,
            Strategy::WriteThrough => self.cache.put(&key, cached.clone()).await,
            Strategy::Ttl | Strategy::WriteBack => {}
        }
        Ok(cached)
    }

    /// Makes an account (user, credentials, audit entry, mails) in one database transaction,
    /// under every strategy. Under write-back too: the account's other parts live in tables the
    /// journal does not carry, so the user row commits with them rather than through the journal,
    /// and the acknowledgement is that commit. It is still checked against the journal (see
    /// [`WriteBack::create_account`]) so that it never takes an address a pending write holds.
    pub async fn create_account(
        &self,
        account: &NewAccount,
    ) -> Result<Arc<Cached<User>>, StoreError> {
        if let Some(wb) = &self.write_back {
            return wb.create_account(account).await;
        }
        self.repo.insert_account(account).await?;
        let cached = Cached::new(account.user.clone());
        let key = cached.value.id;
        match self.strategy {
            Strategy::Lazy => self.cache.invalidate(&key, cached.value.version).await,
            Strategy::WriteThrough => self.cache.put(&key, cached.clone()).await,
            Strategy::Ttl | Strategy::WriteBack => {}
        }
        Ok(cached)
    }

    /// Applies `patch`; `None` when the user does not exist.
    pub async fn update(
        &self,
        id: UserId,
        patch: UserPatch,
    ) -> Result<Option<Arc<Cached<User>>>, StoreError> {
        if let Some(wb) = &self.write_back {
            return wb
                .write(id, |current| Ok(current.map(|u| u.patched(&patch, now()))))
                .await;
        }
        for attempt in 0..UPDATE_ATTEMPTS {
            // First from the cache (usually current); after a lost race, from the database.
            let current = if attempt == 0 {
                self.get(id).await?.map(|c| c.value.clone())
            } else {
                self.repo.get(id).await?
            };
            let Some(current) = current else {
                return Ok(None);
            };
            let next = current.patched(&patch, now());
            match self.repo.update(&next).await {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(StoreError::StaleVersion) => continue,
                Err(e) => return Err(e),
            }
            let cached = Cached::new(next);
            let key = id;
            match self.strategy {
                Strategy::Lazy => self.cache.invalidate(&key, cached.value.version).await,
                Strategy::WriteThrough => self.cache.put(&key, cached.clone()).await,
                Strategy::Ttl | Strategy::WriteBack => {}
            }
            return Ok(Some(cached));
        }
        Err(StoreError::StaleVersion)
    }

    /// Deletes the user; false when it did not exist.
    pub async fn delete(&self, id: UserId) -> Result<bool, StoreError> {
        if let Some(wb) = &self.write_back {
            let mut existed = false;
            wb.write(id, |current| {
                existed = current.is_some();
                Ok(None)
            })
            .await?;
            return Ok(existed);
        }
        let deleted = self.repo.delete(id).await?;
        if deleted && matches!(self.strategy, Strategy::Lazy | Strategy::WriteThrough) {
            self.cache.invalidate(&id, DELETED_VERSION).await;
        }
        Ok(deleted)
    }

    /// A page of users from the database. Under write-back, pending writes are flushed first so
    /// that a listing shows what was acknowledged.
    pub async fn list(&self, page: PageRequest) -> Result<Page<User>, StoreError> {
        if let Some(wb) = &self.write_back {
            wb.flush_all(Duration::from_secs(5)).await?;
        }
        self.repo.list(page).await
    }

    /// Write-back entries not yet in the database.
    pub fn backlog(&self) -> usize {
        self.write_back.as_ref().map_or(0, |wb| wb.backlog())
    }

    /// Graceful stop: flushes the write-back backlog (bounded by `deadline`) and closes the journal.
    /// What cannot be flushed in time stays in the journal and is replayed on the next start.
    pub async fn shutdown(&self, deadline: Duration) {
        if let Some(wb) = &self.write_back {
            wb.shutdown(deadline).await;
        }
    }
}

/// The users as the identity provider sees them: as acknowledged. Under write-back that is the
/// journal's pending state before the database's; under the other strategies the database is
/// current (their caches may lag it, and sign-in must not).
#[async_trait::async_trait]
impl Accounts for CachedUsers {
    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError> {
        if let Some(wb) = &self.write_back
            && let Some(state) = wb.pending(id)
        {
            return Ok(state.map(|c| c.value.clone()));
        }
        self.repo.get(id).await
    }

    async fn get_by_email(&self, email: &UserEmail) -> Result<Option<User>, StoreError> {
        match &self.write_back {
            Some(wb) => wb.holder_of(email).await,
            None => self.repo.get_by_email(email).await,
        }
    }

    async fn create(&self, account: &NewAccount) -> Result<(), StoreError> {
        self.create_account(account).await.map(drop)
    }
}

/// A journal record: the whole new state of one user.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Put(User),
    Delete(UserId),
}

/// One pending write as the flusher sees it: id, sequence number, new state (`None`: deleted).
type Entry = (UserId, u64, Option<Arc<Cached<User>>>);

struct Pending {
    seq: u64,
    /// `None`: deleted.
    state: Option<Arc<Cached<User>>>,
    written_ms: u64,
}

#[derive(Default)]
struct Dirty {
    by_id: HashMap<UserId, Pending>,
    /// Emails held by pending states, for uniqueness checks before acknowledging; also the
    /// address of an account being made, from its check until its commit (no `by_id` entry).
    emails: HashMap<UserEmail, UserId>,
    last_seq: u64,
}

impl Dirty {
    fn insert(&mut self, id: UserId, seq: u64, state: Option<Arc<Cached<User>>>) {
        // A rewrite of a pending id keeps the time of its first unflushed write: that write is
        // not in the database either, so the flush lag counts from it.
        let written_ms = self.by_id.get(&id).map_or_else(unix_ms, |p| p.written_ms);
        if let Some(old) = self.by_id.get(&id).and_then(|p| p.state.as_ref())
            && self.emails.get(&old.value.email) == Some(&id)
        {
            self.emails.remove(&old.value.email);
        }
        if let Some(new) = &state {
            self.emails.insert(new.value.email.clone(), id);
        }
        self.by_id.insert(
            id,
            Pending {
                seq,
                state,
                written_ms,
            },
        );
        self.last_seq = self.last_seq.max(seq);
    }

    /// Drops `id`'s entry if it is still the one written at `seq`.
    fn settle(&mut self, id: UserId, seq: u64) -> bool {
        if self.by_id.get(&id).is_none_or(|p| p.seq != seq) {
            return false;
        }
        let pending = self.by_id.remove(&id).expect("checked above");
        if let Some(state) = pending.state
            && self.emails.get(&state.value.email) == Some(&id)
        {
            self.emails.remove(&state.value.email);
        }
        true
    }

    /// Every record at or below this sequence number is in the database.
    fn watermark(&self) -> u64 {
        self.by_id
            .values()
            .map(|p| p.seq)
            .min()
            .map_or(self.last_seq, |seq| seq - 1)
    }
}

struct WriteBack {
    repo: Arc<dyn UserRepo>,
    cache: Arc<ResourceCache<UserId, User>>,
    journal: Journal,
    opts: WriteBackOptions,
    /// Serializes write-back writes: a write reads the current state, checks uniqueness, takes
    /// the next sequence number and queues its journal record as one step. Holds that number.
    gate: tokio::sync::Mutex<u64>,
    dirty: Mutex<Dirty>,
    /// Serializes flushes.
    flushing: tokio::sync::Mutex<()>,
    room: Notify,
    wake: Notify,
    stop: Notify,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl WriteBack {
    async fn open(
        repo: Arc<dyn UserRepo>,
        cache: Arc<ResourceCache<UserId, User>>,
        opts: WriteBackOptions,
    ) -> Result<Arc<Self>, StoreError> {
        let (journal, replayed) =
            Journal::open(&opts.dir, "users").map_err(|e| StoreError::Internal(Box::new(e)))?;
        let next_seq = replayed.last_seq + 1;
        let wb = Arc::new(Self {
            repo,
            cache,
            journal,
            opts,
            gate: tokio::sync::Mutex::new(next_seq),
            dirty: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            room: Notify::new(),
            wake: Notify::new(),
            stop: Notify::new(),
            flusher: Mutex::new(None),
        });
        if !replayed.records.is_empty() {
            let total = replayed.records.len();
            tracing::info!(
                records = total,
                "replaying the write-back journal into the database"
            );
            {
                let mut dirty = wb.dirty.lock().expect("dirty lock");
                for (seq, payload) in replayed.records {
                    let record: Record = serde_json::from_slice(&payload)
                        .map_err(|e| StoreError::Internal(Box::new(e)))?;
                    match record {
                        Record::Put(user) => dirty.insert(user.id, seq, Some(Cached::new(user))),
                        Record::Delete(id) => dirty.insert(id, seq, None),
                    }
                }
            }
            // A long replay reports its progress about once a second.
            let pending = wb.backlog();
            let mut last_report = std::time::Instant::now();
            while wb.backlog() > 0 {
                wb.flush_once().await?;
                if last_report.elapsed() >= Duration::from_secs(1) {
                    last_report = std::time::Instant::now();
                    tracing::info!(
                        done = pending - wb.backlog(),
                        of = pending,
                        "replaying the write-back journal"
                    );
                }
            }
            tracing::info!(
                records = total,
                users = pending,
                "write-back journal replayed"
            );
        }
        let flusher = tokio::spawn(wb.clone().run_flusher());
        *wb.flusher.lock().expect("flusher lock") = Some(flusher);
        Ok(wb)
    }

    fn backlog(&self) -> usize {
        self.dirty.lock().expect("dirty lock").by_id.len()
    }

    /// The pending state of `id`, if it has an unflushed write: `Some(None)` means deleted.
    fn pending(&self, id: UserId) -> Option<Option<Arc<Cached<User>>>> {
        self.dirty
            .lock()
            .expect("dirty lock")
            .by_id
            .get(&id)
            .map(|p| p.state.clone())
    }

    /// One write-back write: `change` turns the current state into the new one (`None` deletes).
    /// Returns the new state once its journal record is on disk.
    async fn write<F>(&self, id: UserId, change: F) -> Result<Option<Arc<Cached<User>>>, StoreError>
    where
        F: FnOnce(Option<User>) -> Result<Option<User>, StoreError>,
    {
        self.wait_for_room().await?;
        let mut gate = self.gate.lock().await;
        let current = match self.pending(id) {
            Some(state) => state.map(|c| c.value.clone()),
            None => self.repo.get(id).await?,
        };
        let existed = current.is_some();
        let next = change(current.clone())?;
        if !existed && next.as_ref().is_some_and(|u| u.version > 1) {
            return Ok(None); // an update of a missing user
        }
        if !existed && next.is_none() {
            return Ok(None); // a delete of a missing user: nothing to journal
        }
        if let Some(user) = &next {
            let email_changed = current.as_ref().is_none_or(|c| c.email != user.email);
            if email_changed {
                self.check_email_free(&user.email, id).await?;
            }
        }
        let seq = *gate;
        *gate += 1;
        let record = match &next {
            Some(user) => Record::Put(user.clone()),
            None => Record::Delete(id),
        };
        let payload = serde_json::to_vec(&record).map_err(|e| StoreError::Internal(Box::new(e)))?;
        let durable = self.journal.enqueue(seq, payload);
        let state = next.map(Cached::new);
        let backlog = {
            let mut dirty = self.dirty.lock().expect("dirty lock");
            dirty.insert(id, seq, state.clone());
            dirty.by_id.len()
        };
        // A write only adds the newest entry: the oldest is unchanged unless the backlog was empty.
        let stats = self.cache.stats();
        stats.backlog.store(backlog as u64, Relaxed);
        let _ = stats
            .oldest_unflushed_ms
            .compare_exchange(0, unix_ms(), Relaxed, Relaxed);
        drop(gate);
        if let Err(e) = durable.await {
            tracing::error!(error = %e, "write-back journal failed; the write is refused");
            self.dirty.lock().expect("dirty lock").settle(id, seq);
            return Err(StoreError::Internal(Box::new(e)));
        }
        let key = id;
        match &state {
            Some(cached) => self.cache.put(&key, cached.clone()).await,
            None => self.cache.invalidate(&key, DELETED_VERSION).await,
        }
        if backlog >= self.opts.max_batch {
            self.wake.notify_one();
        }
        Ok(state)
    }

    /// The user holding `email` as acknowledged: a pending state first, else the database's
    /// holder unless a pending write of it released the address.
    async fn holder_of(&self, email: &UserEmail) -> Result<Option<User>, StoreError> {
        let pending = {
            let dirty = self.dirty.lock().expect("dirty lock");
            dirty
                .emails
                .get(email)
                .and_then(|id| dirty.by_id.get(id))
                .and_then(|p| p.state.as_ref())
                .map(|c| c.value.clone())
        };
        if pending.is_some() {
            return Ok(pending);
        }
        let Some(stored) = self.repo.get_by_email(email).await? else {
            return Ok(None);
        };
        Ok(match self.pending(stored.id) {
            None => Some(stored),
            Some(state) => state.map(|c| c.value.clone()).filter(|u| &u.email == email),
        })
    }

    /// Makes an account in the database, consistent with the journal. Under the gate, its
    /// address is checked (refused when a pending write holds it; when the database still holds
    /// it for a user whose pending write released it, that write is flushed first so the
    /// database agrees) and reserved among the pending addresses, so that no write-back write
    /// can claim it before the commit. The commit itself runs outside the gate: write-back
    /// writes do not queue behind a database transaction.
    async fn create_account(&self, account: &NewAccount) -> Result<Arc<Cached<User>>, StoreError> {
        let user = &account.user;
        {
            let _gate = self.gate.lock().await;
            self.check_email_free(&user.email, user.id).await?;
            if self.repo.get_by_email(&user.email).await?.is_some() {
                self.flush_all(self.opts.backpressure_timeout).await?;
            }
            let mut dirty = self.dirty.lock().expect("dirty lock");
            dirty.emails.insert(user.email.clone(), user.id);
        }
        let res = self.repo.insert_account(account).await;
        {
            // The reservation goes: from now on the database holds the address (or nobody).
            let mut dirty = self.dirty.lock().expect("dirty lock");
            if dirty.emails.get(&user.email) == Some(&user.id) {
                dirty.emails.remove(&user.email);
            }
        }
        res?;
        let cached = Cached::new(user.clone());
        self.cache.put(&user.id, cached.clone()).await;
        Ok(cached)
    }

    async fn check_email_free(&self, email: &UserEmail, id: UserId) -> Result<(), StoreError> {
        let taken_pending = {
            let dirty = self.dirty.lock().expect("dirty lock");
            dirty.emails.get(email).is_some_and(|holder| *holder != id)
        };
        if taken_pending {
            return Err(StoreError::Conflict { field: "email" });
        }
        if let Some(holder) = self.repo.get_by_email(email).await?
            && holder.id != id
        {
            // The database's holder may have a pending delete or email change.
            let still_holds = match self.pending(holder.id) {
                None => true,
                Some(state) => state.is_some_and(|c| &c.value.email == email),
            };
            if still_holds {
                return Err(StoreError::Conflict { field: "email" });
            }
        }
        Ok(())
    }

    async fn wait_for_room(&self) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + self.opts.backpressure_timeout;
        loop {
            let room = self.room.notified();
            if self.backlog() < self.opts.max_backlog {
                return Ok(());
            }
            self.wake.notify_one();
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(StoreError::Unavailable("write-back backlog is full".into()));
            }
        }
    }

    /// Recomputes the gauges from the whole backlog: once per flushed batch, never per write.
    fn update_gauges(&self) {
        let dirty = self.dirty.lock().expect("dirty lock");
        let stats = self.cache.stats();
        stats.backlog.store(dirty.by_id.len() as u64, Relaxed);
        let oldest = dirty
            .by_id
            .values()
            .map(|p| p.written_ms)
            .min()
            .unwrap_or(0);
        stats.oldest_unflushed_ms.store(oldest, Relaxed);
    }

    async fn run_flusher(self: Arc<Self>) {
        let mut failures = 0u32;
        loop {
            let pause = if failures == 0 {
                self.opts.flush_interval
            } else {
                (self.opts.flush_interval * 2u32.pow(failures.min(6))).min(Duration::from_secs(10))
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
                _ = self.stop.notified() => return,
            }
            match self.flush_once().await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    Stats::inc(&self.cache.stats().flush_errors);
                    tracing::warn!(error = %e, backlog = self.backlog(), "write-back flush failed; will retry");
                }
            }
        }
    }

    /// Writes up to one batch of pending entries to the database; returns how many it settled.
    async fn flush_once(&self) -> Result<usize, StoreError> {
        let _flushing = self.flushing.lock().await;
        let mut batch: Vec<Entry> = {
            let dirty = self.dirty.lock().expect("dirty lock");
            dirty
                .by_id
                .iter()
                .map(|(id, p)| (*id, p.seq, p.state.clone()))
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        batch.sort_by_key(|(_, seq, _)| *seq);
        batch.truncate(self.opts.max_batch);
        let upserts: Vec<User> = batch
            .iter()
            .filter_map(|(_, _, s)| s.as_ref().map(|c| c.value.clone()))
            .collect();
        let deletes: Vec<UserId> = batch
            .iter()
            .filter(|(_, _, s)| s.is_none())
            .map(|(id, _, _)| *id)
            .collect();
        match self.repo.apply_batch(&upserts, &deletes).await {
            Ok(()) => self.settle(&batch),
            Err(StoreError::Conflict { .. }) => {
                // Another instance took an email this one promised: apply one by one, and park
                // what the database refuses instead of retrying it forever.
                for entry in &batch {
                    let (id, _, state) = entry;
                    let res = match state {
                        Some(c) => {
                            self.repo
                                .apply_batch(std::slice::from_ref(&c.value), &[])
                                .await
                        }
                        None => self.repo.apply_batch(&[], &[*id]).await,
                    };
                    match res {
                        Ok(()) => {}
                        Err(StoreError::Conflict { field }) => self.reject(entry, field).await?,
                        Err(e) => return Err(e),
                    }
                    self.settle(std::slice::from_ref(entry));
                }
            }
            Err(e) => return Err(e),
        }
        Ok(batch.len())
    }

    fn settle(&self, batch: &[Entry]) {
        let watermark = {
            let mut dirty = self.dirty.lock().expect("dirty lock");
            for (id, seq, _) in batch {
                dirty.settle(*id, *seq);
            }
            dirty.watermark()
        };
        self.cache
            .stats()
            .flushed
            .fetch_add(batch.len() as u64, Relaxed);
        self.journal.release(watermark);
        self.update_gauges();
        self.room.notify_waiters();
    }

    async fn reject(&self, entry: &Entry, field: &str) -> Result<(), StoreError> {
        let (id, seq, state) = entry;
        let line = serde_json::json!({
            "seq": seq,
            "id": id,
            "state": state.as_ref().map(|c| &c.value),
            "reason": format!("{field} already exists"),
            "rejected_at_ms": unix_ms(),
        });
        let path = self.opts.dir.join("users.rejected.jsonl");
        let write = async {
            use tokio::io::AsyncWriteExt;
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await?;
            file.write_all(format!("{line}\n").as_bytes()).await?;
            file.sync_data().await
        };
        write.await.map_err(|e| StoreError::Internal(Box::new(e)))?;
        Stats::inc(&self.cache.stats().rejected);
        tracing::error!(user_id = %id, seq, field, path = %path.display(), "the database refused a write-back entry; it was moved to the rejects file");
        self.cache.evict(id).await;
        Ok(())
    }

    /// Flushes until nothing is pending or `deadline` passes.
    async fn flush_all(&self, deadline: Duration) -> Result<(), StoreError> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if self.backlog() == 0 {
                return Ok(());
            }
            match self.flush_once().await {
                Ok(_) => {}
                Err(e) if tokio::time::Instant::now() >= until => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "write-back flush failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if tokio::time::Instant::now() >= until {
                return Err(StoreError::Unavailable(
                    "write-back flush did not finish in time".into(),
                ));
            }
        }
    }

    async fn shutdown(&self, deadline: Duration) {
        self.stop.notify_one();
        let flusher = self.flusher.lock().expect("flusher lock").take();
        if let Some(flusher) = flusher {
            let _ = flusher.await;
        }
        // Hold the gate so no write starts while the last flush runs.
        let _gate = self.gate.lock().await;
        match self.flush_all(deadline).await {
            Ok(()) => tracing::info!("write-back backlog flushed"),
            Err(e) => {
                tracing::error!(error = %e, backlog = self.backlog(), "write-back backlog not flushed; it stays in the journal for the next start");
            }
        }
        self.journal.close().await;
    }
}
