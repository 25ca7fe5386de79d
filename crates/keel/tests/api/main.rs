//! API tests: the real application on a real port, against every database backend.

mod helpers;
mod ops;
mod users;
