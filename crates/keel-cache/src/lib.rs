//! keel-cache
