//! One store over any sqlx database: [`SqlStore`] implements the `UserRepo` and `EventStore`
//! ports once, and each store crate's [`StoreDialect`] supplies only what differs on its engine
//! (placeholders, how ids and times are stored, upserts, conflict clauses, connection options).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keel_domain::{
    AuditEntry, EmailCollision, Erased, EventStore, Job, JobState, NewAccount, Notification,
    OutboxRecord, Outgoing, Page, PageRequest, StoreError, User, UserEmail, UserId, UserName,
    UserRepo,
};
use sqlx::error::DatabaseError;
use sqlx::migrate::Migrate;
use sqlx::pool::PoolOptions;
use sqlx::query::Query;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Connection, Database, Encode, Executor, IntoArguments, Pool, Type,
};
use uuid::Uuid;

use crate::events as rows;
use crate::{Column, Dialect, EmbeddedMigration, PoolSettings, micros, now_micros};

/// A statement of engine `DB` with its arguments bound.
pub type Statement<DB> = Query<'static, DB, <DB as Database>::Arguments>;

/// The connection options of engine `DB`.
pub type ConnectOptions<DB> = <<DB as Database>::Connection as Connection>::Options;

/// What a version-guarded update of a user found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updated {
    /// The stored row was older and is now `user`.
    Applied,
    /// The stored row is as new as `user` or newer.
    Stale,
    /// No row has this id.
    Missing,
}

/// What differs between the engines the stores run on. Everything else (every transaction, the
/// outbox write beside each user write, the event tables' statements) is [`SqlStore`]'s.
#[async_trait]
pub trait StoreDialect: Dialect {
    /// The store's migrations on this engine, oldest first.
    const MIGRATIONS: &'static [EmbeddedMigration];

    /// The options of a connection to `url`, with the engine's settings.
    fn connect_options(url: &str) -> Result<ConnectOptions<Self::Db>, StoreError>;

    /// Whether a unique violation is on the users' email key (engines name the key differently).
    fn is_email_key(db: &dyn DatabaseError) -> bool;

    /// `INSERT INTO {rest}` that does nothing when a row with the same `message_id` is there.
    fn insert_once(rest: &str) -> String {
        format!("INSERT INTO {rest} ON CONFLICT (message_id) DO NOTHING")
    }

    /// Binds a user id as the engine stores it.
    fn bind_id(query: Statement<Self::Db>, id: UserId) -> Statement<Self::Db>;

    /// Binds a user's time as the engine stores it.
    fn bind_time(query: Statement<Self::Db>, time: &DateTime<Utc>) -> Statement<Self::Db>;

    /// A user from a row of `SELECT id, name, email, created_at, updated_at, version`.
    fn user_from_row(row: &<Self::Db as Database>::Row) -> Result<User, StoreError>;

    /// Replaces the stored user with `user` if the stored one is older.
    async fn update_user(
        conn: &mut <Self::Db as Database>::Connection,
        user: &User,
    ) -> Result<Updated, StoreError>;

    /// Inserts `user`, or replaces the stored row if it is older. Whether a row changed, and if
    /// so whether it was created.
    async fn upsert_user(
        conn: &mut <Self::Db as Database>::Connection,
        user: &User,
    ) -> Result<Option<bool>, StoreError>;

    /// Up to `limit` users in id order, after `after` if given.
    async fn list_users(
        pool: &Pool<Self::Db>,
        after: Option<UserId>,
        limit: i64,
    ) -> Result<Vec<User>, StoreError>;
}

/// The users, outbox, jobs and subscriber effects in one SQL database; each store crate names it
/// on its engine (`SqliteStore`, `PostgresStore`, `MariaDbStore`).
#[derive(Debug)]
pub struct SqlStore<D: StoreDialect> {
    pub(crate) pool: Pool<D::Db>,
}

// By hand: a derived `Clone` would ask the driver type (`D::Db`) to be `Clone`, which it is not
// and need not be (the pool is a handle).
impl<D: StoreDialect> Clone for SqlStore<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

type Db<D> = <D as Dialect>::Db;

/// A statement written with `?` placeholders, in `D`'s placeholders.
pub fn query<D: StoreDialect>(sql: &str) -> Statement<Db<D>> {
    sqlx::query(AssertSqlSafe(D::sql(sql)))
}

pub fn map_err<D: StoreDialect>(e: sqlx::Error) -> StoreError {
    crate::classify(e, D::is_email_key)
}

/// A user from its stored parts, refusing what the domain refuses.
pub fn user(
    id: UserId,
    name: &str,
    email: &str,
    (created_at, updated_at): (DateTime<Utc>, DateTime<Utc>),
    version: i64,
) -> Result<User, StoreError> {
    Ok(User {
        id,
        // A sealed name is opened by the repository layer that sealed it (keel-identity's
        // `SealedNames`); anything else must be a valid display name.
        name: UserName::sealed(name)
            .or_else(|| UserName::parse(name).ok())
            .ok_or_else(|| crate::corrupt("name"))?,
        email: UserEmail::parse(email).map_err(|_| crate::corrupt("email"))?,
        created_at,
        updated_at,
        version,
    })
}

/// A `SELECT` of every users column followed by `tail`.
fn select(tail: &str) -> String {
    format!("SELECT id, name, email, created_at, updated_at, version FROM users{tail}")
}

impl<D: StoreDialect> SqlStore<D>
where
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
    <Db<D> as Database>::Connection: Migrate,
{
    /// Opens a pool to `url` and connects now, so that a bad URL or an absent database fails
    /// here.
    pub async fn connect(url: &str, pool: &PoolSettings) -> Result<Self, StoreError> {
        let pool = Self::pool_options(pool)
            .connect_with(D::connect_options(url)?)
            .await
            .map_err(map_err::<D>)?;
        Ok(Self { pool })
    }

    /// Connects lazily: the pool opens connections on first use, so `keel` starts even while the
    /// database is still coming up, and `/readyz` reports it until it is reachable.
    pub fn connect_lazy(url: &str, pool: &PoolSettings) -> Result<Self, StoreError> {
        let pool = Self::pool_options(pool).connect_lazy_with(D::connect_options(url)?);
        Ok(Self { pool })
    }

    fn pool_options(pool: &PoolSettings) -> PoolOptions<D::Db> {
        PoolOptions::new()
            .max_connections(pool.max_connections.max(1))
            .acquire_timeout(pool.acquire_timeout)
    }

    /// Applies every pending migration; safe to run concurrently (sqlx's `Migrator` locks) and
    /// repeatedly.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        crate::migrator(D::MIGRATIONS)
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Internal(Box::new(e)))
    }

    pub fn pool(&self) -> &Pool<D::Db> {
        &self.pool
    }
}

/// The steps every engine's user writes share; public for the dialects that build their own
/// writes from them.
impl<D: StoreDialect> SqlStore<D>
where
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    String: Column<Db<D>>,
    Vec<u8>: Column<Db<D>>,
    i64: Column<Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
    Option<i64>: for<'q> Encode<'q, Db<D>>,
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
{
    /// Inserts `message` into the outbox within the caller's transaction.
    pub async fn enqueue(
        conn: &mut <Db<D> as Database>::Connection,
        topic: &str,
        message: &Outgoing,
    ) -> Result<(), StoreError> {
        query::<D>(
            "INSERT INTO outbox (id, topic, msg_key, headers, body, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(message.id.to_string())
        .bind(topic)
        .bind(&message.key)
        .bind(crate::headers_json(&message.headers))
        .bind(&message.body)
        .bind(message.expires_at.as_ref().map(micros))
        .execute(conn)
        .await
        .map_err(map_err::<D>)
        .map(drop)
    }

    /// Inserts `user` as a new row.
    pub async fn insert_user(
        conn: &mut <Db<D> as Database>::Connection,
        user: &User,
    ) -> Result<(), StoreError> {
        let insert = query::<D>(
            "INSERT INTO users (id, name, email, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?)",
        );
        let insert = D::bind_id(insert, user.id)
            .bind(user.name.as_str())
            .bind(user.email.as_str());
        let insert = D::bind_time(D::bind_time(insert, &user.created_at), &user.updated_at);
        insert
            .bind(user.version)
            .execute(conn)
            .await
            .map_err(map_err::<D>)
            .map(drop)
    }

    /// Whether a row has `id`.
    pub async fn user_exists(
        conn: &mut <Db<D> as Database>::Connection,
        id: UserId,
    ) -> Result<bool, StoreError> {
        D::bind_id(query::<D>("SELECT 1 FROM users WHERE id = ?"), id)
            .fetch_optional(conn)
            .await
            .map_err(map_err::<D>)
            .map(|row| row.is_some())
    }

    /// Rows changed by a version-guarded update: 1 if applied, 0 if stale or missing.
    pub async fn update_row(
        conn: &mut <Db<D> as Database>::Connection,
        user: &User,
    ) -> Result<u64, StoreError> {
        let update = query::<D>(
            "UPDATE users SET name = ?, email = ?, updated_at = ?, version = ? WHERE id = ? AND version < ?",
        )
        .bind(user.name.as_str())
        .bind(user.email.as_str());
        let update = D::bind_time(update, &user.updated_at).bind(user.version);
        D::bind_id(update, user.id)
            .bind(user.version)
            .execute(conn)
            .await
            .map_err(map_err::<D>)
            .map(|res| D::rows_affected(&res))
    }

    /// A version-guarded update, then a look for the row when it changed nothing: the two steps of
    /// [`StoreDialect::update_user`] on an engine that cannot tell both in one statement.
    pub async fn update_then_look(
        conn: &mut <Db<D> as Database>::Connection,
        user: &User,
    ) -> Result<Updated, StoreError> {
        if Self::update_row(&mut *conn, user).await? == 1 {
            return Ok(Updated::Applied);
        }
        Ok(if Self::user_exists(conn, user.id).await? {
            Updated::Stale
        } else {
            Updated::Missing
        })
    }

    /// Deletes a user and, if it existed, enqueues its `user.deleted` event, in `conn`'s
    /// transaction.
    async fn delete_and_enqueue(
        conn: &mut <Db<D> as Database>::Connection,
        id: UserId,
    ) -> Result<bool, StoreError> {
        let res = D::bind_id(query::<D>("DELETE FROM users WHERE id = ?"), id)
            .execute(&mut *conn)
            .await
            .map_err(map_err::<D>)?;
        if D::rows_affected(&res) == 0 {
            return Ok(false);
        }
        // The account goes with its user (GDPR erasure): credentials, roles and sessions, in
        // the same transaction. The audit log keeps its entries, which name the id only.
        for sql in [
            "DELETE FROM identity_credentials WHERE user_id = ?",
            "DELETE FROM identity_roles WHERE user_id = ?",
            "DELETE FROM identity_refresh_families WHERE subject = ?",
            "DELETE FROM identity_codes WHERE user_id = ?",
            "DELETE FROM identity_links WHERE user_id = ?",
            "DELETE FROM identity_consents WHERE user_id = ?",
        ] {
            query::<D>(sql)
                .bind(id.to_string())
                .execute(&mut *conn)
                .await
                .map_err(map_err::<D>)?;
        }
        let (topic, event) = keel_domain::messaging::events::user_deleted(id);
        Self::enqueue(conn, topic, &event).await?;
        Ok(true)
    }
}

/// Addresses stored before keel normalised them (see [`UserEmail::parse`]).
impl<D: StoreDialect> SqlStore<D>
where
    usize: ColumnIndex<<Db<D> as Database>::Row>,
    i64: Column<Db<D>>,
    String: Column<Db<D>>,
    Vec<u8>: Column<Db<D>>,
    Option<i64>: for<'q> Encode<'q, Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
{
    /// Rewrites every stored address to its canonical form, oldest account first, as ordinary
    /// updates (a new version and a `user.written` event, so caches and subscribers follow).
    /// When the canonical form is already another account's, both accounts stay as they are and
    /// the pair is returned for an operator to resolve: merging or renaming accounts is a
    /// decision about people, not something a migration may guess.
    ///
    /// Run at every start after the migrations: it reads the email column once, and rewrites
    /// nothing once every address is canonical.
    pub async fn canonicalize_emails(&self) -> Result<Vec<EmailCollision>, StoreError> {
        let stored: Vec<String> = query::<D>("SELECT email FROM users ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(map_err::<D>)?
            .iter()
            .map(|row| sqlx::Row::try_get::<String, _>(row, 0))
            .collect::<Result<_, _>>()
            .map_err(map_err::<D>)?;
        let mut taken: std::collections::HashSet<String> = stored.iter().cloned().collect();
        let mut collisions = Vec::new();
        for raw in &stored {
            let Ok(canonical) = UserEmail::parse(raw) else {
                continue;
            };
            if canonical.as_str() == raw {
                continue;
            }
            let Some(user) = self.by_stored_email(raw).await? else {
                continue;
            };
            if taken.contains(canonical.as_str()) {
                let holder = self.by_stored_email(canonical.as_str()).await?;
                if let Some(holder) = holder {
                    collisions.push(EmailCollision {
                        canonical,
                        holder: holder.id,
                        other: user.id,
                        stored: raw.clone(),
                    });
                }
                continue;
            }
            let next = User {
                updated_at: Utc::now(),
                version: user.version + 1,
                ..user
            };
            match <Self as UserRepo>::update(self, &next).await {
                // Written meanwhile by a running instance: that write normalised it already.
                Ok(_) | Err(StoreError::StaleVersion) => {}
                Err(e) => return Err(e),
            }
            taken.insert(canonical.as_str().to_owned());
        }
        Ok(collisions)
    }

    /// The user stored with exactly `email`, whatever its normal form.
    async fn by_stored_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let row = query::<D>(&select(" WHERE email = ?"))
            .bind(email)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err::<D>)?;
        row.as_ref().map(D::user_from_row).transpose()
    }
}

#[async_trait]
impl<D: StoreDialect> UserRepo for SqlStore<D>
where
    i64: Column<Db<D>>,
    String: Column<Db<D>>,
    Vec<u8>: Column<Db<D>>,
    Option<i64>: for<'q> Encode<'q, Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
{
    async fn insert(&self, user: &User) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        Self::insert_user(&mut tx, user).await?;
        let (topic, event) = keel_domain::messaging::events::user_written(user, true);
        Self::enqueue(&mut tx, topic, &event).await?;
        tx.commit().await.map_err(map_err::<D>)
    }

    async fn insert_account(&self, account: &NewAccount) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        Self::insert_user(&mut tx, &account.user).await?;
        let (topic, event) = keel_domain::messaging::events::user_written(&account.user, true);
        Self::enqueue(&mut tx, topic, &event).await?;
        crate::identity::write_credentials::<D>(&mut tx, &account.credentials).await?;
        crate::identity::insert_audit::<D>(&mut tx, &account.audit).await?;
        for (topic, mail) in &account.mails {
            Self::enqueue(&mut tx, topic, mail).await?;
        }
        if let Some(link) = &account.link {
            crate::identity::insert_link::<D>(&mut tx, link).await?;
        }
        tx.commit().await.map_err(map_err::<D>)
    }

    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = D::bind_id(query::<D>(&select(" WHERE id = ?")), id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err::<D>)?;
        row.as_ref().map(D::user_from_row).transpose()
    }

    async fn get_by_email(&self, email: &UserEmail) -> Result<Option<User>, StoreError> {
        let row = query::<D>(&select(" WHERE email = ?"))
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err::<D>)?;
        row.as_ref().map(D::user_from_row).transpose()
    }

    async fn update(&self, user: &User) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        match D::update_user(&mut tx, user).await? {
            Updated::Applied => {
                let (topic, event) = keel_domain::messaging::events::user_written(user, false);
                Self::enqueue(&mut tx, topic, &event).await?;
                tx.commit().await.map_err(map_err::<D>)?;
                Ok(true)
            }
            Updated::Stale => Err(StoreError::StaleVersion),
            Updated::Missing => Ok(false),
        }
    }

    async fn delete(&self, id: UserId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        let deleted = Self::delete_and_enqueue(&mut tx, id).await?;
        tx.commit().await.map_err(map_err::<D>)?;
        Ok(deleted)
    }

    async fn list(&self, page: PageRequest) -> Result<Page<User>, StoreError> {
        // Fetch one more than asked to learn whether another page follows.
        let limit = i64::from(page.limit) + 1;
        let items = D::list_users(&self.pool, page.after, limit).await?;
        Ok(Page::from_overfetch(items, page.limit))
    }

    async fn apply_batch(&self, upserts: &[User], deletes: &[UserId]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        for id in deletes {
            Self::delete_and_enqueue(&mut tx, *id).await?;
        }
        for user in upserts {
            // Only a row that changed announces itself: replaying a flushed journal entry
            // (idempotent) publishes no second event.
            if let Some(created) = D::upsert_user(&mut tx, user).await? {
                let (topic, event) = keel_domain::messaging::events::user_written(user, created);
                Self::enqueue(&mut tx, topic, &event).await?;
            }
        }
        tx.commit().await.map_err(map_err::<D>)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        query::<D>("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err::<D>)
            .map(drop)
    }
}

#[async_trait]
impl<D: StoreDialect> EventStore for SqlStore<D>
where
    usize: ColumnIndex<<Db<D> as Database>::Row>,
    for<'a> &'a str: Encode<'a, Db<D>> + Type<Db<D>>,
    Option<i64>: for<'q> Encode<'q, Db<D>>,
    i64: Column<Db<D>>,
    for<'c> &'c mut <Db<D> as Database>::Connection: Executor<'c, Database = Db<D>>,
    Option<String>: for<'q> Encode<'q, Db<D>>,
    Vec<u8>: Column<Db<D>>,
    <Db<D> as Database>::Arguments: IntoArguments<Db<D>>,
    String: Column<Db<D>>,
{
    async fn lead_relay(&self, holder: Uuid, lease: Duration) -> Result<bool, StoreError> {
        let now = now_micros();
        let res = query::<D>(
            "UPDATE outbox_relay SET holder = ?, lease_until = ? \
             WHERE name = 'relay' AND (holder = ? OR holder IS NULL OR lease_until < ?)",
        )
        .bind(holder.to_string())
        .bind(now.saturating_add(crate::duration_micros(lease)))
        .bind(holder.to_string())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRecord>, StoreError> {
        let rows: Vec<rows::OutboxRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT seq, id, topic, msg_key, headers, body, expires_at FROM outbox ORDER BY seq LIMIT ?",
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        rows.into_iter().map(rows::outbox_record).collect()
    }

    async fn outbox_remove(&self, seqs: &[i64]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        for seq in seqs {
            query::<D>("DELETE FROM outbox WHERE seq = ?")
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(map_err::<D>)?;
        }
        tx.commit().await.map_err(map_err::<D>)
    }

    async fn outbox_backlog(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err::<D>)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn publish(&self, topic: &str, message: &Outgoing) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err::<D>)?;
        Self::enqueue(&mut conn, topic, message).await
    }

    async fn submit_job(&self, job: &Job, message: &Outgoing) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        query::<D>(
            "INSERT INTO jobs (id, kind, subject, state, result, error, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job.id.to_string())
        .bind(&job.kind)
        .bind(&job.subject)
        .bind(job.state.as_str())
        .bind(&job.result)
        .bind(&job.error)
        .bind(micros(&job.created_at))
        .bind(micros(&job.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(map_err::<D>)?;
        Self::enqueue(&mut tx, &job.topic(), message).await?;
        tx.commit().await.map_err(map_err::<D>)
    }

    async fn job(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        let row: Option<rows::JobRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT id, kind, subject, state, result, error, created_at, updated_at FROM jobs WHERE id = ?",
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        row.map(rows::job).transpose()
    }

    async fn set_job_state(
        &self,
        id: Uuid,
        state: JobState,
        result: Option<&str>,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let res = query::<D>(
            "UPDATE jobs SET state = ?, result = ?, error = ?, updated_at = ? \
             WHERE id = ? AND state IN ('queued', 'running')",
        )
        .bind(state.as_str())
        .bind(result.map(str::to_owned))
        .bind(error.map(str::to_owned))
        .bind(now_micros())
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<bool, StoreError> {
        let res = query::<D>(&D::insert_once(
            "user_audit (message_id, topic, user_id, version, occurred_at, recorded_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        ))
        .bind(entry.message_id.to_string())
        .bind(&entry.topic)
        .bind(entry.user_id.to_string())
        .bind(entry.version)
        .bind(micros(&entry.occurred_at))
        .bind(micros(&entry.recorded_at))
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn audit_of(&self, user: UserId) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<rows::AuditRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT message_id, topic, version, occurred_at, recorded_at FROM user_audit \
             WHERE user_id = ? ORDER BY occurred_at, message_id",
        )))
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        rows.into_iter()
            .map(|row| rows::audit_entry(user, row))
            .collect()
    }

    async fn record_notification(&self, n: &Notification) -> Result<bool, StoreError> {
        let res = query::<D>(&D::insert_once(
            "notifications (message_id, user_id, recipient, text, sent_at) VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(n.message_id.to_string())
        .bind(n.user_id.to_string())
        .bind(&n.recipient)
        .bind(&n.text)
        .bind(micros(&n.sent_at))
        .execute(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        Ok(D::rows_affected(&res) == 1)
    }

    async fn erase_user_data(&self, user: UserId) -> Result<Erased, StoreError> {
        let id = user.to_string();
        let mut tx = self.pool.begin().await.map_err(map_err::<D>)?;
        let mut count = async |sql: &'static str| -> Result<u64, StoreError> {
            let done = query::<D>(sql)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(map_err::<D>)?;
            Ok(D::rows_affected(&done))
        };
        let erased = Erased {
            mails: count("DELETE FROM notifications WHERE user_id = ?").await?,
            jobs: count("DELETE FROM jobs WHERE subject = ?").await?,
            unsent_events: count(
                "DELETE FROM outbox WHERE msg_key = ? AND topic <> 'user.deleted'",
            )
            .await?,
        };
        tx.commit().await.map_err(map_err::<D>)?;
        Ok(erased)
    }

    async fn notifications_of(&self, user: UserId) -> Result<Vec<Notification>, StoreError> {
        let rows: Vec<rows::NotificationRow> = sqlx::query_as(AssertSqlSafe(D::sql(
            "SELECT message_id, recipient, text, sent_at FROM notifications WHERE user_id = ? ORDER BY sent_at",
        )))
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(map_err::<D>)?;
        rows.into_iter()
            .map(|row| rows::notification(user, row))
            .collect()
    }
}
