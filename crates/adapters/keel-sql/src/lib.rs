//! What keel's SQL adapters share, so that each engine crate (keel-sql-sqlite, -postgres,
//! -mariadb) holds only what truly differs on its engine: one [`Dialect`] type per engine, which
//! implements the family's traits.
//!
//! - [`store`]: [`store::SqlStore`], the `UserRepo` and `EventStore` ports once over any sqlx
//!   database, and the [`store::StoreDialect`] each engine implements.
//! - [`identity`]: the `IdentityStore` port on the same tables' engine.
//! - [`events`]: the event tables' rows and their decoding.
//! - [`hospital`]: [`hospital::SqlHospital`], the error hospital once over any engine, and its
//!   [`hospital::HospitalDialect`].
//! - [`queue`]: what the SQL queues share; [`queue_migrations`]: where they record migrations.
//! - pool settings, embedded migrations run by sqlx's `Migrator`, placeholders, and the
//!   classification of driver errors into the domain's [`StoreError`].

pub mod events;
pub mod hospital;
pub mod identity;
pub mod queue;
pub mod queue_migrations;
pub mod store;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use keel_domain::StoreError;
use sqlx::error::DatabaseError;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Database, Decode, Encode, SqlSafeStr, Type};

/// The root of the dialect family: the engine's driver and what every statement on it needs.
/// Each engine crate has one type implementing it and the family's traits built on it
/// ([`store::StoreDialect`], [`hospital::HospitalDialect`]).
pub trait Dialect: Send + Sync + 'static {
    /// The engine's sqlx driver.
    type Db: Database;

    /// A statement written with `?` placeholders, in the engine's own placeholders.
    fn sql(sql: &str) -> String {
        sql.to_owned()
    }

    /// How many rows a statement changed (the drivers' results share no trait for it).
    fn rows_affected(res: &<Self::Db as Database>::QueryResult) -> u64;
}

/// Pool settings the binary passes from configuration.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

/// One embedded migration: version, description, SQL (from `include_str!`).
pub type EmbeddedMigration = (i64, &'static str, &'static str);

/// A migrator over embedded migrations. sqlx's `Migrator` brings the lock (so concurrent starts
/// are safe) and the checksum check (an edited, already-applied migration is refused) without the
/// `macros` feature.
pub fn migrator(migrations: &[EmbeddedMigration]) -> Migrator {
    let migrations = migrations
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Internal(Box::new(e))
}

/// A row the domain refuses: a bug or a hand edit, never the caller's fault.
pub fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("corrupt row: {what}").into())
}

/// Classifies a driver error. `is_email_key` tells whether a unique violation is on the users'
/// email key (engines name the key differently); the primary key is keel-generated and never
/// collides in practice, so the email is the only conflict a caller can cause.
pub fn classify(e: sqlx::Error, is_email_key: impl Fn(&dyn DatabaseError) -> bool) -> StoreError {
    match e {
        sqlx::Error::Database(ref db) if db.is_unique_violation() => StoreError::Conflict {
            field: if is_email_key(db.as_ref()) {
                "email"
            } else {
                "id"
            },
        },
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(Box::new(e))
        }
        other => StoreError::Internal(Box::new(other)),
    }
}

/// Times in the event tables are unix microseconds (a BIGINT on every engine: no dialect's
/// timestamp type to convert).
pub fn micros(t: &chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

pub fn from_micros(us: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default()
}

pub fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Message headers as the stores keep them: a JSON object of strings.
pub fn headers_json(headers: &std::collections::BTreeMap<String, String>) -> String {
    serde_json::to_string(headers).expect("string maps serialize")
}

/// A type bound and read on engine `DB`: what the generic SQL code needs of its column types.
pub trait Column<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

impl<DB: Database, T> Column<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

/// `?` placeholders numbered `$1, $2, …` for PostgreSQL, so that one statement text serves every
/// engine. The statements it is given contain no other `?` (no literal, no JSON operator), so
/// every one is a placeholder.
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            let _ = write!(out, "${n}");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered("a = ? AND b IN (?, ?)"),
            "a = $1 AND b IN ($2, $3)"
        );
    }
}
