//! keel-store-mariadb
