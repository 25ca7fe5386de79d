//! keel-telemetry
