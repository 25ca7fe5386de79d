//! Opening the engine the database URL names. This is the one place that knows every backend;
//! everything past it sees only the `UserRepo` port.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use keel_config::{DatabaseKind, Settings};
use keel_credentials::envelope::Keyring;
use keel_domain::{EmailCollision, EventStore, IdentityStore, StoreError, UserRepo};
use keel_identity::sealed::SealedNames;
use keel_sql_mariadb::MariaDbStore;
use keel_sql_postgres::PostgresStore;
use keel_sql_sqlite::SqliteStore;

/// The configured database: its engine, and the keys that seal users' names in it.
pub struct Database {
    engine: Engine,
    /// `None` with `identity.enabled` off: names are then stored as they are.
    sealer: Option<Keyring>,
}

enum Engine {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
    MariaDb(MariaDbStore),
}

impl Database {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let engine = Engine::open(settings).await?;
        let sealer = if settings.identity.enabled {
            Some(crate::identity::keyring(settings)?)
        } else {
            None
        };
        Ok(Self { engine, sealer })
    }

    /// Applies the migrations, then brings addresses stored before keel normalised them to
    /// their canonical form (README, "Email addresses"). Pairs of accounts that turn out to be
    /// one mailbox are left as they are, logged at every start until an operator resolves them,
    /// and returned (`keel admin emails` lists them).
    pub async fn migrate(&self) -> Result<Vec<EmailCollision>, StoreError> {
        self.engine.migrate().await?;
        let collisions = self.engine.canonicalize_emails().await?;
        for c in &collisions {
            tracing::warn!(
                email = c.canonical.as_str(),
                holder = %c.holder,
                other = %c.other,
                stored = c.stored.as_str(),
                "two accounts have the same email address once normalised; the other one keeps \
                 its stored spelling and cannot sign in by email until an admin changes or \
                 deletes one of them"
            );
        }
        Ok(collisions)
    }

    /// The users, with names sealed at rest when the IdP's keys are there.
    pub fn repo(&self) -> Arc<dyn UserRepo> {
        let raw = self.engine.repo();
        match &self.sealer {
            Some(keyring) => Arc::new(SealedNames::new(raw, keyring.clone())),
            None => raw,
        }
    }

    /// The outbox, jobs and subscriber effects, in the same database as the users.
    pub fn events(&self) -> Arc<dyn EventStore> {
        self.engine.events()
    }

    /// The identity provider's tables, in the same database as the users.
    pub fn identity(&self) -> Arc<dyn IdentityStore> {
        self.engine.identity()
    }
}

impl Engine {
    async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let url = settings.driver_database_url();
        let shown = url.redacted();
        let max_connections = settings.database.max_connections;
        let acquire_timeout = Duration::from_millis(settings.database.acquire_timeout_ms);
        let db = match settings
            .database_kind()
            .context("unsupported database URL")?
        {
            DatabaseKind::Sqlite => {
                let pool = keel_sql_sqlite::PoolSettings {
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
                let pool = keel_sql_postgres::PoolSettings {
                    max_connections,
                    acquire_timeout,
                };
                Self::Postgres(
                    PostgresStore::connect_lazy(url.expose(), &pool)
                        .with_context(|| format!("bad database URL {shown}"))?,
                )
            }
            DatabaseKind::MariaDb => {
                let pool = keel_sql_mariadb::PoolSettings {
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

    async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(db) => db.migrate().await,
            Self::Postgres(db) => db.migrate().await,
            Self::MariaDb(db) => db.migrate().await,
        }
    }

    async fn canonicalize_emails(&self) -> Result<Vec<EmailCollision>, StoreError> {
        match self {
            Self::Sqlite(db) => db.canonicalize_emails().await,
            Self::Postgres(db) => db.canonicalize_emails().await,
            Self::MariaDb(db) => db.canonicalize_emails().await,
        }
    }

    fn repo(&self) -> Arc<dyn UserRepo> {
        match self {
            Self::Sqlite(db) => Arc::new(db.clone()),
            Self::Postgres(db) => Arc::new(db.clone()),
            Self::MariaDb(db) => Arc::new(db.clone()),
        }
    }

    fn events(&self) -> Arc<dyn EventStore> {
        match self {
            Self::Sqlite(db) => Arc::new(db.clone()),
            Self::Postgres(db) => Arc::new(db.clone()),
            Self::MariaDb(db) => Arc::new(db.clone()),
        }
    }

    fn identity(&self) -> Arc<dyn IdentityStore> {
        match self {
            Self::Sqlite(db) => Arc::new(db.clone()),
            Self::Postgres(db) => Arc::new(db.clone()),
            Self::MariaDb(db) => Arc::new(db.clone()),
        }
    }
}
