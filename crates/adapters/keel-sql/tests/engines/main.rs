//! The SQL adapter family's behaviour on every engine, one binary: the shared behavioural suites
//! of the ports (`UserRepo`, `EventStore`, `IdentityStore`, `Broker`, `Hospital`) on SQLite and
//! on the real PostgreSQL and MariaDB servers, and what only one engine has (the PostgreSQL
//! queue's floors, the queues' migration table).

mod floors;
mod hospital;
mod queue;
mod queue_migrations;
mod stores;
