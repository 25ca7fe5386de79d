//! keel-store-postgres
