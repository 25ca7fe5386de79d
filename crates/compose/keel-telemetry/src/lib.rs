//! keel's telemetry: structured logs through `tracing`, and the Prometheus metrics recorder.
//!
//! - [`init_logging`] installs the global subscriber (JSON or text, a filter, a sink), so that
//!   tests can send logs to a sink of their own and stay quiet.
//! - [`init_metrics`] installs the process-wide `metrics` recorder and returns the handle that
//!   `/metrics` renders.

use std::io;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Log line shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {message}")]
    Filter { filter: String, message: String },
    #[error("a global logger or metrics recorder is already installed")]
    AlreadyInstalled,
    #[error("cannot start the metrics upkeep thread: {0}")]
    Upkeep(std::io::Error),
}

/// Installs the global `tracing` subscriber writing to `sink`. Every line carries the fields of
/// its enclosing spans (so a request's lines all carry its `request_id`).
pub fn init_logging<W>(format: Format, filter: &str, sink: W) -> Result<(), TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let env_filter = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| TelemetryError::Filter {
            filter: filter.to_owned(),
            message: e.to_string(),
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(sink);
    let res = match format {
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        Format::Text => builder.with_ansi(false).try_init(),
    };
    res.map_err(|_| TelemetryError::AlreadyInstalled)
}

/// Logs to standard error, the default sink of the binary.
pub fn stderr() -> fn() -> io::Stderr {
    io::stderr
}

/// Latency buckets (seconds) for HTTP histograms: fine below a millisecond, where the cache-hit
/// path lives, and coarse up to the request timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global metrics recorder and returns its handle.
///
/// A recorder built this way keeps every histogram sample until someone folds them into the
/// buckets: a scrape does, but a process nobody scrapes would hold each request's samples for
/// ever (memory growing, and an allocation every few dozen requests). A thread does it every
/// five seconds.
pub fn init_metrics() -> Result<PrometheusHandle, TelemetryError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|_| TelemetryError::AlreadyInstalled)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| TelemetryError::AlreadyInstalled)?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("keel-metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        })
        .map_err(TelemetryError::Upkeep)?;
    Ok(handle)
}
