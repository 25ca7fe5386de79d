//! Per-resource cache counters. Plain atomics owned by each cache, rather than the global
//! `metrics` recorder, so that tests read exact numbers from their own instance.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one resource's cache. Gauges are the `backlog` and `oldest_unflushed_ms` fields.
#[derive(Debug, Default)]
pub struct Stats {
    /// Reads answered from L1 (including cached "not found").
    pub hits: AtomicU64,
    /// Reads that found nothing usable in L1.
    pub misses: AtomicU64,
    /// Misses answered by the Redis L2.
    pub l2_hits: AtomicU64,
    /// Database reads made to fill the cache (one per single-flight group).
    pub loads: AtomicU64,
    /// Loads that failed.
    pub load_errors: AtomicU64,
    /// L1 entries dropped to stay within capacity.
    pub evictions: AtomicU64,
    /// Invalidations this instance published / received from other instances.
    pub invalidations_sent: AtomicU64,
    pub invalidations_received: AtomicU64,
    /// Redis operations that failed (the cache then falls back to the database).
    pub l2_errors: AtomicU64,
    /// Write-back: entries not yet in the database.
    pub backlog: AtomicU64,
    /// Write-back: unix time (ms) at which the oldest unflushed entry was written; 0 when none.
    pub oldest_unflushed_ms: AtomicU64,
    /// Write-back: entries written to the database, batches that failed, entries the database
    /// refused (moved to the rejects file).
    pub flushed: AtomicU64,
    pub flush_errors: AtomicU64,
    pub rejected: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Appends this resource's metrics in Prometheus text format.
    pub fn render_prometheus(&self, resource: &str, now_ms: u64, out: &mut String) {
        let counters = [
            (
                "keel_cache_hits_total",
                "Reads answered from the in-process cache.",
                &self.hits,
            ),
            (
                "keel_cache_misses_total",
                "Reads not answered from the in-process cache.",
                &self.misses,
            ),
            (
                "keel_cache_l2_hits_total",
                "Misses answered by Redis.",
                &self.l2_hits,
            ),
            (
                "keel_cache_loads_total",
                "Database reads that filled the cache.",
                &self.loads,
            ),
            (
                "keel_cache_load_errors_total",
                "Cache fills that failed.",
                &self.load_errors,
            ),
            (
                "keel_cache_evictions_total",
                "Entries evicted for capacity.",
                &self.evictions,
            ),
            (
                "keel_cache_invalidations_sent_total",
                "Invalidations published.",
                &self.invalidations_sent,
            ),
            (
                "keel_cache_invalidations_received_total",
                "Invalidations received.",
                &self.invalidations_received,
            ),
            (
                "keel_cache_l2_errors_total",
                "Redis operations that failed.",
                &self.l2_errors,
            ),
            (
                "keel_cache_writeback_flushed_total",
                "Write-back entries written to the database.",
                &self.flushed,
            ),
            (
                "keel_cache_writeback_flush_errors_total",
                "Write-back flushes that failed.",
                &self.flush_errors,
            ),
            (
                "keel_cache_writeback_rejected_total",
                "Write-back entries the database refused.",
                &self.rejected,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{resource=\"{resource}\"}} {}",
                Self::get(counter)
            );
        }
        let oldest = Self::get(&self.oldest_unflushed_ms);
        let lag = if oldest == 0 {
            0.0
        } else {
            now_ms.saturating_sub(oldest) as f64 / 1000.0
        };
        let _ = writeln!(
            out,
            "# HELP keel_cache_writeback_backlog Write-back entries not yet in the database.\n# TYPE keel_cache_writeback_backlog gauge\nkeel_cache_writeback_backlog{{resource=\"{resource}\"}} {}",
            Self::get(&self.backlog)
        );
        let _ = writeln!(
            out,
            "# HELP keel_cache_writeback_flush_lag_seconds Age of the oldest write-back entry not yet in the database.\n# TYPE keel_cache_writeback_flush_lag_seconds gauge\nkeel_cache_writeback_flush_lag_seconds{{resource=\"{resource}\"}} {lag}"
        );
    }
}
