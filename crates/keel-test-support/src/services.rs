//! Where the real servers are, and fresh names so parallel tests never share state.

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

/// A database name no other test uses: `keel_test_<random>`.
pub fn fresh_database_name() -> String {
    format!("keel_test_{}", Uuid::new_v4().simple())
}
