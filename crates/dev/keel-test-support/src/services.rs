//! Where the real servers are, and fresh names so parallel tests never share state.

use sqlx::Connection;
use uuid::Uuid;

/// PostgreSQL server URL without a database (trust auth on this kind of machine).
pub fn postgres_server_url() -> String {
    std::env::var("KEEL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// MariaDB server URL without a database.
pub fn mariadb_server_url() -> String {
    std::env::var("KEEL_TEST_MARIADB_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// Redis URL (the database number is chosen per test by the caller when it matters).
pub fn redis_url() -> String {
    std::env::var("KEEL_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// RabbitMQ AMQP URL (guest/guest on this kind of machine).
pub fn rabbitmq_url() -> String {
    std::env::var("KEEL_TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// NATS URL (the server runs with JetStream enabled).
pub fn nats_url() -> String {
    std::env::var("KEEL_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A name no other test uses, for a broker namespace: `keel_test_<random>`.
pub fn fresh_namespace() -> String {
    fresh_database_name()
}

/// A database name no other test uses: `keel_test_<random>`.
pub fn fresh_database_name() -> String {
    format!("keel_test_{}", Uuid::new_v4().simple())
}

/// Creates a fresh, empty PostgreSQL database and returns its URL.
pub async fn create_postgres_database() -> String {
    let server = postgres_server_url();
    let name = fresh_database_name();
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL reachable");
    create(&mut admin, &name).await;
    format!("{server}/{name}")
}

/// Creates a fresh, empty MariaDB database and returns its URL.
pub async fn create_mariadb_database() -> String {
    let server = mariadb_server_url();
    let name = fresh_database_name();
    let mut admin = sqlx::MySqlConnection::connect(&format!("{server}/mysql"))
        .await
        .expect("MariaDB reachable");
    create(&mut admin, &name).await;
    format!("{server}/{name}")
}

async fn create<C>(admin: &mut C, name: &str)
where
    for<'c> &'c mut C: sqlx::Executor<'c>,
{
    // The name is generated above, never input: it may go into the SQL text.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(admin)
        .await
        .expect("database created");
}
