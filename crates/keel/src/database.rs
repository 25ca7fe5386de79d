//! Opening the engine the database URL names. This is the one place that knows every backend;
//! everything past it sees only the `UserRepo` port.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_config::{DatabaseKind, Settings};
use keel_domain::{EventStore, IdentityStore, StoreError, UserRepo};
use keel_store_mariadb::MariaDbStore;
use keel_store_postgres::PostgresStore;
use keel_store_sqlite::SqliteStore;

/// The configured database.
pub enum Database {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
    MariaDb(MariaDbStore),
}

impl Database {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let url = settings.driver_database_url();
        let shown = url.redacted();
        let max_connections = settings.database.max_connections;
        let acquire_timeout = Duration::from_millis(settings.database.acquire_timeout_ms);
        let db = match settings
            .database_kind()
            .context("unsupported database URL")?
        {
            DatabaseKind::Sqlite => {
                let pool = keel_store_sqlite::PoolSettings {
                    max_connections,
                    acquire_timeout,
                };
                Self::Sqlite(
                    SqliteStore::connect(url.expose(), &pool)
                        .await
                        .with_context(|| format!("cannot open {shown}"))?,
                )
            }
            DatabaseKind::Postgres => {
                let pool = keel_store_postgres::PoolSettings {
                    max_connections,
                    acquire_timeout,
                };
                Self::Postgres(
                    PostgresStore::connect_lazy(url.expose(), &pool)
                        .with_context(|| format!("bad database URL {shown}"))?,
                )
            }
            DatabaseKind::MariaDb => {
                let pool = keel_store_mariadb::PoolSettings {
                    max_connections,
                    acquire_timeout,
                };
                Self::MariaDb(
                    MariaDbStore::connect_lazy(url.expose(), &pool)
                        .with_context(|| format!("bad database URL {shown}"))?,
                )
            }
        };
        Ok(db)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(db) => db.migrate().await,
            Self::Postgres(db) => db.migrate().await,
            Self::MariaDb(db) => db.migrate().await,
        }
    }

    pub fn repo(&self) -> Arc<dyn UserRepo> {
        match self {
            Self::Sqlite(db) => Arc::new(db.clone()),
            Self::Postgres(db) => Arc::new(db.clone()),
            Self::MariaDb(db) => Arc::new(db.clone()),
        }
    }

    /// The outbox, jobs and subscriber effects, in the same database as the users.
    pub fn events(&self) -> Arc<dyn EventStore> {
        match self {
            Self::Sqlite(db) => Arc::new(db.clone()),
            Self::Postgres(db) => Arc::new(db.clone()),
            Self::MariaDb(db) => Arc::new(db.clone()),
        }
    }

    /// The identity provider's tables, in the same database as the users.
    pub fn identity(&self) -> Arc<dyn IdentityStore> {
        match self {
            Self::Sqlite(db) => Arc::new(db.clone()),
            Self::Postgres(db) => Arc::new(db.clone()),
            Self::MariaDb(db) => Arc::new(db.clone()),
        }
    }
}
