//! The cache's promises, on a real SQLite store: each behaviour once on the in-process default
//! (no shared tier, L1 only) and once with the real Redis as L2 (`l1_only::<behaviour>`,
//! `redis::<behaviour>`); the behaviours of two instances sharing a tier run on Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use keel_cache::{
    CachePolicy, CachedUsers, ResourceCache, SharedTier, Stats, Strategy, WriteBackOptions,
};
use keel_cache_redis::RedisTier;
use keel_domain::{
    NewUser, Page, PageRequest, StoreError, User, UserEmail, UserId, UserName, UserPatch, UserRepo,
};
use keel_sql_sqlite::{PoolSettings, SqliteStore};

/// The real SQLite store, with a count of the reads that reach it.
struct Counted {
    inner: SqliteStore,
    gets: AtomicU64,
    /// Injected fault: batch writes fail as if the database were down.
    fail_batches: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl UserRepo for Counted {
    async fn insert(&self, user: &User) -> Result<(), StoreError> {
        self.inner.insert(user).await
    }
    async fn insert_account(&self, account: &keel_domain::NewAccount) -> Result<(), StoreError> {
        self.inner.insert_account(account).await
    }
    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        // A slow read widens the window in which concurrent misses pile up.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.get(id).await
    }
    async fn get_by_email(&self, email: &UserEmail) -> Result<Option<User>, StoreError> {
        self.inner.get_by_email(email).await
    }
    async fn update(&self, user: &User) -> Result<bool, StoreError> {
        self.inner.update(user).await
    }
    async fn delete(&self, id: UserId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn list(&self, page: PageRequest) -> Result<Page<User>, StoreError> {
        self.inner.list(page).await
    }
    async fn apply_batch(&self, upserts: &[User], deletes: &[UserId]) -> Result<(), StoreError> {
        if self.fail_batches.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected: database down".into()));
        }
        self.inner.apply_batch(upserts, deletes).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    repo: Arc<Counted>,
    users: Arc<CachedUsers>,
}

fn policy() -> CachePolicy {
    CachePolicy {
        ttl: Duration::from_secs(180),
        negative_ttl: Duration::from_secs(5),
        jitter_ratio: 0.1,
        l1_max_entries: 10_000,
    }
}

async fn store(dir: &std::path::Path) -> SqliteStore {
    let url = format!("sqlite://{}", dir.join("keel.db").display());
    let store = SqliteStore::connect(
        &url,
        &PoolSettings {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

fn wb_options(dir: &std::path::Path, flush_interval: Duration) -> WriteBackOptions {
    WriteBackOptions {
        dir: dir.join("writeback"),
        flush_interval,
        max_batch: 100,
        max_backlog: 10_000,
        backpressure_timeout: Duration::from_secs(5),
    }
}

/// The shared tier a behaviour runs with.
#[derive(Debug, Clone, Copy)]
enum Tier {
    /// No shared tier: the in-process default, L1 only.
    L1Only,
    /// The real Redis server, a new connection (a new instance) per cache.
    Redis,
}

impl Tier {
    async fn open(self) -> Option<Arc<dyn SharedTier>> {
        match self {
            Tier::L1Only => None,
            Tier::Redis => Some(redis_tier().await),
        }
    }
}

async fn fixture(tier: &Tier, strategy: Strategy, policy: CachePolicy) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let wb = wb_options(dir.path(), Duration::from_secs(3600));
    fixture_with(tier, dir, strategy, policy, wb).await
}

async fn fixture_with(
    tier: &Tier,
    dir: tempfile::TempDir,
    strategy: Strategy,
    policy: CachePolicy,
    wb: WriteBackOptions,
) -> Fixture {
    let repo = Arc::new(Counted {
        inner: store(dir.path()).await,
        gets: AtomicU64::new(0),
        fail_batches: Default::default(),
    });
    let cache = ResourceCache::new("users", policy, tier.open().await);
    let users = CachedUsers::new(repo.clone(), cache, strategy, Some(wb))
        .await
        .unwrap();
    wait_until_coherent(&[&users]).await;
    Fixture {
        _dir: dir,
        repo,
        users,
    }
}

fn new_user(tag: &str) -> NewUser {
    NewUser {
        name: UserName::parse(&format!("User {tag}")).unwrap(),
        email: UserEmail::parse(&format!(
            "{tag}-{}@example.com",
            uuid::Uuid::new_v4().simple()
        ))
        .unwrap(),
    }
}

fn rename(name: &str) -> UserPatch {
    UserPatch {
        name: Some(UserName::parse(name).unwrap()),
        email: None,
    }
}

fn get(stat: &AtomicU64) -> u64 {
    Stats::get(stat)
}

async fn a_hundred_concurrent_misses_on_one_key_make_one_database_read(tier: &Tier) {
    let fx = fixture(tier, Strategy::Lazy, policy()).await;
    let user = fx.repo.inner.clone();
    let created = User::create(new_user("sf"), chrono::Utc::now());
    user.insert(&created).await.unwrap();

    let reads = (0..100).map(|_| {
        let users = fx.users.clone();
        tokio::spawn(async move { users.get(created.id).await.unwrap().unwrap().value.id })
    });
    for read in futures_util::future::join_all(reads).await {
        assert_eq!(read.unwrap(), created.id);
    }
    assert_eq!(
        fx.repo.gets.load(Ordering::SeqCst),
        1,
        "single-flight must collapse the misses"
    );
    assert_eq!(get(&fx.users.stats().loads), 1);
    fx.users.get(created.id).await.unwrap().unwrap();
    assert_eq!(
        fx.repo.gets.load(Ordering::SeqCst),
        1,
        "the next read must be a hit"
    );
}

async fn a_missing_user_is_cached_as_not_found_until_invalidated(tier: &Tier) {
    let fx = fixture(tier, Strategy::Lazy, policy()).await;
    let ghost = UserId::generate();
    assert!(fx.users.get(ghost).await.unwrap().is_none());
    assert!(fx.users.get(ghost).await.unwrap().is_none());
    assert_eq!(
        fx.repo.gets.load(Ordering::SeqCst),
        1,
        "the second lookup must hit the negative entry"
    );

    // A write of the key (here: the row appears, as a create does) clears the negative entry.
    fx.users.cache().invalidate(&ghost, 1).await;
    assert!(fx.users.get(ghost).await.unwrap().is_none());
    assert_eq!(fx.repo.gets.load(Ordering::SeqCst), 2);
}

async fn entries_expire_after_their_jittered_ttl(tier: &Tier) {
    let short = CachePolicy {
        ttl: Duration::from_millis(200),
        jitter_ratio: 0.5,
        ..policy()
    };
    let fx = fixture(tier, Strategy::Lazy, short).await;
    let user = fx.users.create(new_user("ttl")).await.unwrap();
    fx.users.get(user.value.id).await.unwrap();
    fx.users.get(user.value.id).await.unwrap();
    assert_eq!(fx.repo.gets.load(Ordering::SeqCst), 1);
    // moka keeps its own clock, so this waits in real time, just past the longest lifetime.
    tokio::time::sleep(Duration::from_millis(250)).await;
    fx.users.get(user.value.id).await.unwrap();
    assert_eq!(
        fx.repo.gets.load(Ordering::SeqCst),
        2,
        "an expired entry must be reloaded"
    );
}

async fn lazy_invalidates_on_write_so_the_next_read_loads_the_new_value(tier: &Tier) {
    let fx = fixture(tier, Strategy::Lazy, policy()).await;
    let user = fx.users.create(new_user("lazy")).await.unwrap();
    fx.users.get(user.value.id).await.unwrap();
    let loads = get(&fx.users.stats().loads);
    fx.users
        .update(user.value.id, rename("Renamed"))
        .await
        .unwrap()
        .unwrap();
    let read = fx.users.get(user.value.id).await.unwrap().unwrap();
    assert_eq!(read.value.name.as_str(), "Renamed");
    assert_eq!(read.value.version, 2);
    assert_eq!(
        get(&fx.users.stats().loads),
        loads + 1,
        "lazy must reload after a write"
    );

    assert!(fx.users.delete(user.value.id).await.unwrap());
    assert!(
        fx.users.get(user.value.id).await.unwrap().is_none(),
        "a deleted user must not be served"
    );
}

async fn write_through_replaces_the_cached_value_so_the_next_read_hits(tier: &Tier) {
    let fx = fixture(tier, Strategy::WriteThrough, policy()).await;
    let user = fx.users.create(new_user("wt")).await.unwrap();
    let read = fx.users.get(user.value.id).await.unwrap().unwrap();
    assert_eq!(read.value, user.value);
    fx.users
        .update(user.value.id, rename("Through"))
        .await
        .unwrap()
        .unwrap();
    let read = fx.users.get(user.value.id).await.unwrap().unwrap();
    assert_eq!(read.value.name.as_str(), "Through");
    assert_eq!(
        fx.repo.gets.load(Ordering::SeqCst),
        0,
        "write-through reads must all hit"
    );
    assert_eq!(
        fx.repo.inner.get(user.value.id).await.unwrap().unwrap(),
        read.value,
        "cache and database agree"
    );
}

async fn ttl_leaves_the_cache_alone_on_write_as_the_seed_describes(tier: &Tier) {
    let fx = fixture(tier, Strategy::Ttl, policy()).await;
    let user = fx.users.create(new_user("ttl-stale")).await.unwrap();
    fx.users.get(user.value.id).await.unwrap();
    fx.users
        .update(user.value.id, rename("Fresh"))
        .await
        .unwrap()
        .unwrap();
    let read = fx.users.get(user.value.id).await.unwrap().unwrap();
    assert_eq!(
        read.value.name, user.value.name,
        "ttl serves the cached value until it expires"
    );
    assert_eq!(
        fx.repo
            .inner
            .get(user.value.id)
            .await
            .unwrap()
            .unwrap()
            .name
            .as_str(),
        "Fresh"
    );
}

async fn concurrent_updates_of_one_user_all_land_in_order(tier: &Tier) {
    let fx = fixture(tier, Strategy::Lazy, policy()).await;
    let user = fx.users.create(new_user("race")).await.unwrap();
    let updates = (0..4).map(|n| {
        let users = fx.users.clone();
        let id = user.value.id;
        tokio::spawn(async move { users.update(id, rename(&format!("Racer {n}"))).await })
    });
    let mut versions: Vec<i64> = Vec::new();
    for res in futures_util::future::join_all(updates).await {
        versions.push(res.unwrap().unwrap().unwrap().value.version);
    }
    versions.sort();
    assert_eq!(
        versions,
        vec![2, 3, 4, 5],
        "every update must apply exactly once, none merged"
    );
}

async fn write_back_acknowledges_before_the_database_and_reads_see_the_write(tier: &Tier) {
    let fx = fixture(tier, Strategy::WriteBack, policy()).await;
    let user = fx.users.create(new_user("wb")).await.unwrap();
    let id = user.value.id;
    assert!(
        fx.repo.inner.get(id).await.unwrap().is_none(),
        "not flushed yet (flush interval is an hour)"
    );
    assert_eq!(fx.users.get(id).await.unwrap().unwrap().value, user.value);
    let renamed = fx.users.update(id, rename("Back")).await.unwrap().unwrap();
    assert_eq!(
        fx.users.get(id).await.unwrap().unwrap().value.name.as_str(),
        "Back"
    );
    assert_eq!(fx.users.backlog(), 1);

    // A duplicate email is refused at write time, against pending writes as well as the database.
    let dup = NewUser {
        name: UserName::parse("Dup").unwrap(),
        email: user.value.email.clone(),
    };
    assert!(matches!(
        fx.users.create(dup).await,
        Err(StoreError::Conflict { field: "email" })
    ));

    // Listing flushes first, so it shows what was acknowledged.
    let page = fx
        .users
        .list(PageRequest {
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.items, vec![renamed.value.clone()]);
    assert_eq!(fx.users.backlog(), 0);
    assert_eq!(fx.repo.inner.get(id).await.unwrap().unwrap(), renamed.value);
    assert_eq!(get(&fx.users.stats().flushed), 1);

    assert!(fx.users.delete(id).await.unwrap());
    assert!(fx.users.get(id).await.unwrap().is_none());
    fx.users.shutdown(Duration::from_secs(5)).await;
    assert!(
        fx.repo.inner.get(id).await.unwrap().is_none(),
        "shutdown must flush the delete"
    );
}

async fn write_back_replays_its_journal_on_start(tier: &Tier) {
    let dir = tempfile::tempdir().unwrap();
    let first = Arc::new(store(dir.path()).await);
    let users = CachedUsers::new(
        first.clone(),
        ResourceCache::new("users", policy(), tier.open().await),
        Strategy::WriteBack,
        Some(wb_options(dir.path(), Duration::from_secs(3600))),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for n in 0..25 {
        ids.push(
            users
                .create(new_user(&format!("replay{n}")))
                .await
                .unwrap()
                .value
                .id,
        );
    }
    // No shutdown: as if the process died. The journal files stay on disk; a new instance on the
    // same directory replays them. (The crash test of the binary does this with kill -9.)
    std::mem::forget(users);
    for id in &ids {
        assert!(first.get(*id).await.unwrap().is_none());
    }
    let second = Arc::new(store(dir.path()).await);
    let users = CachedUsers::new(
        second.clone(),
        ResourceCache::new("users", policy(), tier.open().await),
        Strategy::WriteBack,
        Some(wb_options(dir.path(), Duration::from_secs(3600))),
    )
    .await
    .unwrap();
    for id in &ids {
        assert!(
            second.get(*id).await.unwrap().is_some(),
            "replay must land every acknowledged write"
        );
    }
    assert_eq!(users.backlog(), 0);
}

/// Waits until every instance's invalidation subscription is up (the L1 is bypassed until then,
/// which is also safe, but would turn the hits a behaviour counts into misses).
async fn wait_until_coherent(instances: &[&Arc<CachedUsers>]) {
    for _ in 0..500 {
        if instances.iter().all(|i| i.cache().l1_usable()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        instances.iter().all(|i| i.cache().l1_usable()),
        "invalidation subscriptions did not come up"
    );
}

async fn redis_tier() -> Arc<RedisTier> {
    let url = keel_test_support::services::redis_url();
    RedisTier::connect(&url, Duration::from_millis(500))
        .await
        .expect("redis reachable")
}

/// Two caches on one database and one Redis: two `keel serve` instances.
async fn two_instances(
    strategy: Strategy,
) -> (tempfile::TempDir, Arc<CachedUsers>, Arc<CachedUsers>) {
    let dir = tempfile::tempdir().unwrap();
    let repo: Arc<dyn UserRepo> = Arc::new(store(dir.path()).await);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let cache = ResourceCache::new("users", policy(), Some(redis_tier().await));
        instances.push(
            CachedUsers::new(repo.clone(), cache, strategy, None)
                .await
                .unwrap(),
        );
    }
    wait_until_coherent(&[&instances[0], &instances[1]]).await;
    let b = instances.pop().unwrap();
    let a = instances.pop().unwrap();
    (dir, a, b)
}

#[tokio::test]
async fn an_update_through_one_instance_is_never_served_stale_by_another() {
    for strategy in [Strategy::Lazy, Strategy::WriteThrough] {
        let (_dir, a, b) = two_instances(strategy).await;
        let user = a.create(new_user("coherent")).await.unwrap();
        let id = user.value.id;
        for round in 0..50 {
            // B caches the current value, A changes it, B must see the change at once.
            b.get(id).await.unwrap().unwrap();
            b.get(id).await.unwrap().unwrap();
            let name = format!("Round {round}");
            a.update(id, rename(&name)).await.unwrap().unwrap();
            let seen = b.get(id).await.unwrap().unwrap();
            assert_eq!(
                seen.value.name.as_str(),
                name,
                "{strategy:?}: instance B served a stale user"
            );
        }
        a.delete(id).await.unwrap();
        assert!(
            b.get(id).await.unwrap().is_none(),
            "{strategy:?}: B served a deleted user"
        );
        assert!(get(&b.stats().hits) > 0, "B's L1 must have been used");
        assert!(get(&b.stats().invalidations_received) > 0);
    }
}

#[tokio::test]
async fn a_value_loaded_by_one_instance_is_an_l2_hit_for_another() {
    let (_dir, a, b) = two_instances(Strategy::Lazy).await;
    let user = a.create(new_user("l2")).await.unwrap();
    a.get(user.value.id).await.unwrap().unwrap();
    let loads_before = get(&b.stats().loads);
    let read = b.get(user.value.id).await.unwrap().unwrap();
    assert_eq!(read.value, user.value);
    assert_eq!(get(&b.stats().l2_hits), 1);
    assert_eq!(
        get(&b.stats().loads),
        loads_before,
        "B must not read the database"
    );
}

async fn a_full_write_back_backlog_pushes_back_instead_of_growing(tier: &Tier) {
    let dir = tempfile::tempdir().unwrap();
    let wb = WriteBackOptions {
        max_backlog: 3,
        backpressure_timeout: Duration::from_millis(300),
        ..wb_options(dir.path(), Duration::from_millis(20))
    };
    let fx = fixture_with(tier, dir, Strategy::WriteBack, policy(), wb).await;
    fx.repo.fail_batches.store(true, Ordering::SeqCst);
    for n in 0..3 {
        fx.users.create(new_user(&format!("bp{n}"))).await.unwrap();
    }
    assert_eq!(fx.users.backlog(), 3);
    match fx.users.create(new_user("bp-over")).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a full backlog must refuse the write as unavailable, got {other:?}"),
    }
    assert_eq!(
        fx.users.backlog(),
        3,
        "the refused write must not be queued"
    );
    assert!(
        get(&fx.users.stats().flush_errors) > 0,
        "the flusher kept trying"
    );

    // The database comes back: the backlog drains and writes are accepted again.
    fx.repo.fail_batches.store(false, Ordering::SeqCst);
    fx.users.create(new_user("bp-after")).await.unwrap();
    let page = fx
        .users
        .list(PageRequest {
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 4);
}

async fn a_write_back_conflict_found_at_flush_is_parked_not_retried_forever(tier: &Tier) {
    // Two instances with their own journals on one database: each promised the same email.
    let dir = tempfile::tempdir().unwrap();
    let repo: Arc<dyn UserRepo> = Arc::new(store(dir.path()).await);
    let mut instances = Vec::new();
    for name in ["a", "b"] {
        let wb = WriteBackOptions {
            dir: dir.path().join(name),
            ..wb_options(dir.path(), Duration::from_secs(3600))
        };
        let cache = ResourceCache::new("users", policy(), tier.open().await);
        instances.push(
            CachedUsers::new(repo.clone(), cache, Strategy::WriteBack, Some(wb))
                .await
                .unwrap(),
        );
    }
    let email = UserEmail::parse("contested@example.com").unwrap();
    let mut ids = Vec::new();
    for users in &instances {
        let new = NewUser {
            name: UserName::parse("Contender").unwrap(),
            email: email.clone(),
        };
        ids.push(users.create(new).await.unwrap().value.id);
    }
    instances[0].shutdown(Duration::from_secs(5)).await;
    instances[1].shutdown(Duration::from_secs(5)).await;

    assert_eq!(
        repo.get_by_email(&email).await.unwrap().unwrap().id,
        ids[0],
        "the first flush wins"
    );
    assert!(repo.get(ids[1]).await.unwrap().is_none());
    assert_eq!(get(&instances[1].stats().rejected), 1);
    assert_eq!(
        instances[1].backlog(),
        0,
        "the refused entry must leave the backlog"
    );
    assert!(
        instances[1].get(ids[1]).await.unwrap().is_none(),
        "a refused write must not be served"
    );
    let rejects =
        std::fs::read_to_string(dir.path().join("b").join("users.rejected.jsonl")).unwrap();
    assert!(
        rejects.contains(&ids[1].to_string()) && rejects.contains("email already exists"),
        "{rejects}"
    );
}

async fn a_full_l1_evicts_and_counts_the_evictions(tier: &Tier) {
    let small = CachePolicy {
        l1_max_entries: 10,
        ..policy()
    };
    let fx = fixture(tier, Strategy::Lazy, small).await;
    for n in 0..50 {
        let user = User::create(new_user(&format!("evict{n}")), chrono::Utc::now());
        fx.repo.inner.insert(&user).await.unwrap();
        fx.users.get(user.id).await.unwrap().unwrap();
    }
    assert!(
        fx.users.cache().l1_len().await <= 10,
        "L1 must stay within its capacity"
    );
    assert!(
        get(&fx.users.stats().evictions) >= 40,
        "evictions: {}",
        get(&fx.users.stats().evictions)
    );
}

/// Each behaviour on every tier, as its own test (`l1_only::<behaviour>`, `redis::<behaviour>`),
/// so a failure names both and `cargo test <behaviour>` runs one behaviour on every tier.
macro_rules! on_every_tier {
    ($($case:ident),* $(,)?) => {
        /// The in-process default: no shared tier.
        mod l1_only {
            async fn open() -> ((), super::Tier) {
                ((), super::Tier::L1Only)
            }
            keel_test_support::behaviours!(crate, open; $($case),*);
        }

        /// The real Redis server as the shared tier.
        mod redis {
            async fn open() -> ((), super::Tier) {
                ((), super::Tier::Redis)
            }
            keel_test_support::behaviours!(crate, open; $($case),*);
        }
    };
}

on_every_tier!(
    a_hundred_concurrent_misses_on_one_key_make_one_database_read,
    a_missing_user_is_cached_as_not_found_until_invalidated,
    entries_expire_after_their_jittered_ttl,
    lazy_invalidates_on_write_so_the_next_read_loads_the_new_value,
    write_through_replaces_the_cached_value_so_the_next_read_hits,
    ttl_leaves_the_cache_alone_on_write_as_the_seed_describes,
    concurrent_updates_of_one_user_all_land_in_order,
    write_back_acknowledges_before_the_database_and_reads_see_the_write,
    write_back_replays_its_journal_on_start,
    a_full_write_back_backlog_pushes_back_instead_of_growing,
    a_write_back_conflict_found_at_flush_is_parked_not_retried_forever,
    a_full_l1_evicts_and_counts_the_evictions,
);
