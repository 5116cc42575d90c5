//! Per-plugin counters and call-time distribution, reported by
//! `GET /v1/plugins`. Lock-free: every write through a plugin updates them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use super::FailureKind;

/// Buckets per power of two: bucket bounds grow by 2^(1/4), about 19%, so a
/// percentile read from the buckets is within that of the true value.
const SUB_BUCKETS: usize = 4;
/// Covers 1 ns .. 2^40 ns (18 minutes).
const BUCKETS: usize = 40 * SUB_BUCKETS;

/// Call-time histogram with logarithmic buckets.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    total_nanos: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            total_nanos: AtomicU64::new(0),
        }
    }
}

fn bucket_of(nanos: u64) -> usize {
    let n = nanos.max(1) as f64;
    ((n.log2() * SUB_BUCKETS as f64) as usize).min(BUCKETS - 1)
}

fn bucket_upper_nanos(bucket: usize) -> f64 {
    2f64.powf((bucket + 1) as f64 / SUB_BUCKETS as f64)
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn record(&self, took: Duration) {
        let nanos = took.as_nanos().min(u64::MAX as u128) as u64;
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of all observations, in seconds.
    pub fn total_seconds(&self) -> f64 {
        self.total_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// The distribution in coarser buckets for Prometheus: the count of
    /// observations up to each power of two of nanoseconds from 2^10 (1 us)
    /// to 2^30 (1.07 s), each bucket's own count (not cumulative), then the
    /// rest under `f64::MAX` (+Inf). Bounds in seconds.
    pub fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        let load = |b: &AtomicU64| b.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(22);
        let mut from = 0;
        for exp in 10..=30u32 {
            // Bucket b's upper bound is 2^((b + 1) / SUB_BUCKETS) ns.
            let to = exp as usize * SUB_BUCKETS;
            out.push((
                2f64.powi(exp as i32) / 1e9,
                self.buckets[from..to].iter().map(load).sum(),
            ));
            from = to;
        }
        out.push((f64::MAX, self.buckets[from..].iter().map(load).sum()));
        out
    }

    /// Mean in microseconds.
    pub fn mean_micros(&self) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        self.total_nanos.load(Ordering::Relaxed) as f64 / count as f64 / 1000.0
    }

    /// The `q` quantile (0..=1) in microseconds: the upper bound of the
    /// bucket holding it.
    pub fn quantile_micros(&self, q: f64) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return bucket_upper_nanos(i) / 1000.0;
            }
        }
        bucket_upper_nanos(BUCKETS - 1) / 1000.0
    }
}

/// What happened to one plugin's calls.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls made (dry runs are not counted).
    pub calls: AtomicU64,
    /// Calls that accepted the value unchanged.
    pub accepted: AtomicU64,
    /// Calls that rejected the write.
    pub rejected: AtomicU64,
    /// Calls that replaced the value.
    pub replaced: AtomicU64,
    /// Failures skipped because of `on_failure = "skip"`.
    pub skipped: AtomicU64,
    /// Failures by kind, indexed by `FailureKind::index`.
    failures: [AtomicU64; FailureKind::ALL.len()],
    /// Call times.
    pub latency: LatencyHistogram,
    /// Calls made on a request's own thread rather than a plugin worker.
    pub inline_calls: AtomicU64,
    /// A canary's writes on which its verdict and its enforcing version's
    /// were the same.
    pub canary_agreed: AtomicU64,
    /// A canary's writes on which they differed (sampled in its record).
    pub canary_differed: AtomicU64,
    /// The call count before which the plugin runs only on the workers
    /// again: set past the current count by a second slow call.
    inline_paused_until: AtomicU64,
    /// One past the call count at the latest slow call (0: none yet).
    last_slow_call: AtomicU64,
}

/// Calls a plugin makes on the workers before it may run on a request's
/// own thread: its mean call time must be known first.
const INLINE_WARMUP_CALLS: u64 = 100;
/// The mean call time up to which a plugin runs on a request's thread.
const INLINE_MAX_MEAN_MICROS: f64 = 50.0;
/// A call slower than this is a slow call. Two within
/// [`INLINE_SLOW_WINDOW`] calls of each other send the plugin back to the
/// workers for the next [`INLINE_PAUSE_CALLS`] calls, so values that make a
/// plugin slow can hold an async thread twice in that many calls at most.
///
/// Why two: the time is wall-clock time, and on a busy machine the OS
/// preempts a few calls in a hundred thousand for longer than this (six
/// of 275,000 under a saturating PUT load on 2 cores). One such call used
/// to pause running inline for 10,000 calls, sending a tenth of all calls
/// through the worker hop; a slow value repeated by a client is caught by
/// its second call instead of its first.
const INLINE_SLOW_CALL: Duration = Duration::from_millis(5);
const INLINE_SLOW_WINDOW: u64 = 1_000;
const INLINE_PAUSE_CALLS: u64 = 10_000;

impl PluginStats {
    /// Counts a failure of `kind`.
    pub fn record_failure(&self, kind: FailureKind) {
        self.failures[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures of `kind` so far.
    pub fn failures(&self, kind: FailureKind) -> u64 {
        self.failures[kind.index()].load(Ordering::Relaxed)
    }

    /// Whether the plugin's calls are known to be short enough to run on
    /// a request's async thread, saving the hop to a worker thread (which
    /// costs more than a call of a few microseconds).
    pub fn runs_inline(&self) -> bool {
        let calls = self.calls.load(Ordering::Relaxed);
        calls >= INLINE_WARMUP_CALLS
            && calls >= self.inline_paused_until.load(Ordering::Relaxed)
            && self.latency.mean_micros() <= INLINE_MAX_MEAN_MICROS
    }

    /// Notes a call's time: a slow one soon after another pauses running
    /// inline.
    pub fn note_call_time(&self, took: Duration) {
        if took <= INLINE_SLOW_CALL {
            return;
        }
        let calls = self.calls.load(Ordering::Relaxed);
        let previous = self
            .last_slow_call
            .swap(calls.saturating_add(1), Ordering::Relaxed);
        if previous != 0 && calls.saturating_add(1) - previous <= INLINE_SLOW_WINDOW {
            self.inline_paused_until
                .store(calls.saturating_add(INLINE_PAUSE_CALLS), Ordering::Relaxed);
        }
    }

    /// The counters as JSON for `GET /v1/plugins`.
    pub fn to_json(&self) -> Value {
        let failures: serde_json::Map<String, Value> = FailureKind::ALL
            .iter()
            .map(|k| (k.as_str().to_owned(), Value::from(self.failures(*k))))
            .collect();
        let round = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "calls": self.calls.load(Ordering::Relaxed),
            "accepted": self.accepted.load(Ordering::Relaxed),
            "rejected": self.rejected.load(Ordering::Relaxed),
            "replaced": self.replaced.load(Ordering::Relaxed),
            "skipped_failures": self.skipped.load(Ordering::Relaxed),
            "canary_agreed": self.canary_agreed.load(Ordering::Relaxed),
            "canary_differed": self.canary_differed.load(Ordering::Relaxed),
            "failures": failures,
            "call_micros": {
                "mean": round(self.latency.mean_micros()),
                "p50": round(self.latency.quantile_micros(0.5)),
                "p99": round(self.latency.quantile_micros(0.99)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let h = LatencyHistogram::default();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i));
        }
        let p50 = h.quantile_micros(0.5);
        let p99 = h.quantile_micros(0.99);
        assert!((500.0..=500.0 * 1.2).contains(&p50), "{p50}");
        assert!((990.0..=990.0 * 1.2).contains(&p99), "{p99}");
        assert!((h.mean_micros() - 500.5).abs() < 0.01);
        assert_eq!(LatencyHistogram::default().quantile_micros(0.99), 0.0);
    }

    #[test]
    fn fast_plugins_run_inline_until_a_slow_call() {
        let stats = PluginStats::default();
        let call = |took: Duration| {
            stats.calls.fetch_add(1, Ordering::Relaxed);
            stats.latency.record(took);
            stats.note_call_time(took);
        };
        for _ in 0..INLINE_WARMUP_CALLS - 1 {
            call(Duration::from_micros(5));
        }
        assert!(!stats.runs_inline(), "not before its mean is known");
        call(Duration::from_micros(5));
        assert!(stats.runs_inline());
        // Enough fast calls that the slow ones below leave the mean low.
        for _ in 0..INLINE_SLOW_WINDOW {
            call(Duration::from_micros(5));
        }
        call(Duration::from_millis(6));
        assert!(
            stats.runs_inline(),
            "one slow call is taken for a preemption"
        );
        for _ in 0..INLINE_SLOW_WINDOW {
            call(Duration::from_micros(5));
        }
        call(Duration::from_millis(6));
        assert!(stats.runs_inline(), "nor is another, far from the first");
        for _ in 0..INLINE_SLOW_WINDOW / 2 {
            call(Duration::from_micros(5));
        }
        call(Duration::from_millis(6));
        assert!(
            !stats.runs_inline(),
            "a second slow call soon after pauses it"
        );
        for _ in 0..INLINE_PAUSE_CALLS {
            call(Duration::from_micros(5));
        }
        assert!(stats.runs_inline(), "the pause ends");
        let slow = PluginStats::default();
        for _ in 0..INLINE_WARMUP_CALLS {
            slow.calls.fetch_add(1, Ordering::Relaxed);
            slow.latency.record(Duration::from_micros(200));
        }
        assert!(!slow.runs_inline(), "a slow mean never runs inline");
    }
}
