//! Request metrics and the Prometheus text rendering of everything
//! `/metrics` reports: requests by route and status, latency histograms,
//! shard queues and group commits, caches, plugins, uptime and build info.
//! Counters are fixed arrays of atomics: no lock on the request path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::http::routes::{Op, Resolved};
use crate::plugin::{FailureKind, PluginChain};
use crate::storage::Storage;

/// Which endpoint a request hit; the `route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// GET/HEAD /v1/kv/{key}
    KvGet,
    /// PUT /v1/kv/{key}
    KvPut,
    /// DELETE /v1/kv/{key}
    KvDelete,
    /// POST /v1/kv
    KvCreate,
    /// GET /v1/kv
    KvList,
    /// /api (ExDaas)
    Api,
    /// /api/cmd (ExDaas)
    ApiCmd,
    /// /v1/plugins and dry runs
    Plugins,
    /// /v1/admin/*
    Admin,
    /// /health, /ready
    Health,
    /// /metrics
    Metrics,
    /// anything else
    Other,
}

impl Route {
    /// The label of a resolved request: operations group by area; paths
    /// and methods the server does not serve are `other`.
    pub fn of(resolved: &Resolved<'_>) -> Route {
        let Resolved::Op(op, _) = resolved else {
            return Route::Other;
        };
        match op {
            Op::KvGet => Route::KvGet,
            Op::KvPut => Route::KvPut,
            Op::KvDelete => Route::KvDelete,
            Op::KvCreate => Route::KvCreate,
            Op::KvList => Route::KvList,
            Op::ApiRead | Op::ApiWrite => Route::Api,
            Op::ApiCmd => Route::ApiCmd,
            Op::PluginList | Op::PluginDryRun => Route::Plugins,
            Op::PluginReload | Op::Backup | Op::BackupHead => Route::Admin,
            Op::Health | Op::Ready => Route::Health,
            Op::Metrics => Route::Metrics,
            Op::OpenApi => Route::Other,
        }
    }

    const ALL: [Route; 12] = [
        Route::KvGet,
        Route::KvPut,
        Route::KvDelete,
        Route::KvCreate,
        Route::KvList,
        Route::Api,
        Route::ApiCmd,
        Route::Plugins,
        Route::Admin,
        Route::Health,
        Route::Metrics,
        Route::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            Route::KvGet => "kv_get",
            Route::KvPut => "kv_put",
            Route::KvDelete => "kv_delete",
            Route::KvCreate => "kv_create",
            Route::KvList => "kv_list",
            Route::Api => "api",
            Route::ApiCmd => "api_cmd",
            Route::Plugins => "plugins",
            Route::Admin => "admin",
            Route::Health => "health",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(Self::ALL.len() - 1)
    }
}

/// Status codes counted individually; others fall into the last slot.
const STATUSES: [u16; 16] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 412, 413, 415, 422, 500, 503,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;
/// Upper bounds of the latency histogram, seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUS_SLOTS - 1)
}

/// Request counters and latency histograms per route.
pub struct RequestMetrics {
    started: Instant,
    /// [route][status slot]
    requests: Vec<AtomicU64>,
    /// [route][bucket], plus +Inf as the last bucket.
    latency: Vec<AtomicU64>,
    latency_sum_micros: Vec<AtomicU64>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        let routes = Route::ALL.len();
        Self {
            started: Instant::now(),
            requests: (0..routes * STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: (0..routes * (BUCKETS.len() + 1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency_sum_micros: (0..routes).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl RequestMetrics {
    /// Records one answered request.
    pub fn record(&self, route: Route, status: u16, took: Duration) {
        let r = route.index();
        self.requests[r * STATUS_SLOTS + status_slot(status)].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency[r * (BUCKETS.len() + 1) + bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros[r].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render(&self, storage: &Storage, chain: &PluginChain) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let o = &mut out;
        let _ = writeln!(
            o,
            "# HELP exdaas_build_info Build information.\n# TYPE exdaas_build_info gauge"
        );
        let _ = writeln!(
            o,
            "exdaas_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            o,
            "# HELP exdaas_uptime_seconds Seconds since start.\n# TYPE exdaas_uptime_seconds gauge"
        );
        let _ = writeln!(
            o,
            "exdaas_uptime_seconds {:.3}",
            self.started.elapsed().as_secs_f64()
        );

        let _ = writeln!(o, "# HELP exdaas_requests_total Requests answered, by route and status.\n# TYPE exdaas_requests_total counter");
        for route in Route::ALL {
            let row = &self.requests[route.index() * STATUS_SLOTS..][..STATUS_SLOTS];
            for (slot, counter) in row.iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    let status = STATUSES
                        .get(slot)
                        .map_or("other".to_owned(), u16::to_string);
                    let _ = writeln!(
                        o,
                        "exdaas_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                        route.name()
                    );
                }
            }
        }
        let _ = writeln!(o, "# HELP exdaas_request_duration_seconds Request latency by route.\n# TYPE exdaas_request_duration_seconds histogram");
        for route in Route::ALL {
            let base = route.index() * (BUCKETS.len() + 1);
            let total: u64 = (0..=BUCKETS.len())
                .map(|i| self.latency[base + i].load(Ordering::Relaxed))
                .sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += self.latency[base + i].load(Ordering::Relaxed);
                let _ = writeln!(o, "exdaas_request_duration_seconds_bucket{{route=\"{}\",le=\"{bound}\"}} {cumulative}", route.name());
            }
            let _ = writeln!(
                o,
                "exdaas_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {total}",
                route.name()
            );
            let sum = self.latency_sum_micros[route.index()].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                o,
                "exdaas_request_duration_seconds_sum{{route=\"{}\"}} {sum:.6}",
                route.name()
            );
            let _ = writeln!(
                o,
                "exdaas_request_duration_seconds_count{{route=\"{}\"}} {total}",
                route.name()
            );
        }
        render_storage(o, storage);
        render_plugins(o, chain);
        out
    }
}

fn render_storage(o: &mut String, storage: &Storage) {
    let shard_metrics = storage.shard_metrics();
    let caches = storage.cache_stats();
    let families: [(&str, &str, &str); 8] = [
        (
            "exdaas_shard_queue_depth",
            "gauge",
            "Writes waiting for the shard writer.",
        ),
        (
            "exdaas_shard_batches_total",
            "counter",
            "Batches taken by the shard writer.",
        ),
        (
            "exdaas_shard_batched_writes_total",
            "counter",
            "Writes in those batches (divide for the mean batch size).",
        ),
        ("exdaas_shard_batch_max", "gauge", "Largest batch so far."),
        (
            "exdaas_shard_commits_total",
            "counter",
            "Batches committed to the commit log (shards share its syncs).",
        ),
        (
            "exdaas_shard_commit_seconds_total",
            "counter",
            "Time from deciding a batch to its commit log sync.",
        ),
        (
            "exdaas_cache_hits_total",
            "counter",
            "Reads served from the cache.",
        ),
        (
            "exdaas_cache_misses_total",
            "counter",
            "Reads that went to disk.",
        ),
    ];
    for (name, kind, help) in families {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, (m, c)) in shard_metrics.iter().zip(&caches).enumerate() {
            let value = match name {
                "exdaas_shard_queue_depth" => c.3 as f64,
                "exdaas_shard_batches_total" => m.batches.load(Ordering::Relaxed) as f64,
                "exdaas_shard_batched_writes_total" => m.commands.load(Ordering::Relaxed) as f64,
                "exdaas_shard_batch_max" => m.max_batch.load(Ordering::Relaxed) as f64,
                "exdaas_shard_commits_total" => m.commits.load(Ordering::Relaxed) as f64,
                "exdaas_shard_commit_seconds_total" => {
                    m.commit_micros.load(Ordering::Relaxed) as f64 / 1e6
                }
                "exdaas_cache_hits_total" => c.0 as f64,
                _ => c.1 as f64,
            };
            let _ = writeln!(o, "{name}{{shard=\"{shard}\"}} {value}");
        }
    }
    let _ = writeln!(
        o,
        "# HELP exdaas_shard_unapplied_writes Committed writes (keys) not yet applied to the shard's store.\n# TYPE exdaas_shard_unapplied_writes gauge"
    );
    for (shard, n) in storage.unapplied().iter().enumerate() {
        let _ = writeln!(o, "exdaas_shard_unapplied_writes{{shard=\"{shard}\"}} {n}");
    }
    let _ = writeln!(
        o,
        "# HELP exdaas_cache_bytes Bytes held by the cache.\n# TYPE exdaas_cache_bytes gauge"
    );
    for (shard, c) in caches.iter().enumerate() {
        let _ = writeln!(o, "exdaas_cache_bytes{{shard=\"{shard}\"}} {}", c.2);
    }
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_plugins(o: &mut String, chain: &PluginChain) {
    let plugins = chain.plugins();
    let _ = writeln!(o, "# HELP exdaas_plugin_calls_total Plugin calls by outcome.\n# TYPE exdaas_plugin_calls_total counter");
    for p in plugins {
        let name = label(p.name());
        let s = &p.stats;
        for (outcome, counter) in [
            ("accepted", &s.accepted),
            ("rejected", &s.rejected),
            ("replaced", &s.replaced),
        ] {
            let _ = writeln!(
                o,
                "exdaas_plugin_calls_total{{plugin=\"{name}\",outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(o, "# HELP exdaas_plugin_failures_total Plugin failures by kind.\n# TYPE exdaas_plugin_failures_total counter");
    for p in plugins {
        let name = label(p.name());
        for kind in FailureKind::ALL {
            let _ = writeln!(
                o,
                "exdaas_plugin_failures_total{{plugin=\"{name}\",kind=\"{}\"}} {}",
                kind.as_str(),
                p.stats.failures(kind)
            );
        }
    }
    let _ = writeln!(o, "# HELP exdaas_plugin_call_seconds Plugin call time quantiles.\n# TYPE exdaas_plugin_call_seconds summary");
    for p in plugins {
        let name = label(p.name());
        let l = &p.stats.latency;
        for q in [0.5, 0.99] {
            let _ = writeln!(
                o,
                "exdaas_plugin_call_seconds{{plugin=\"{name}\",quantile=\"{q}\"}} {:.9}",
                l.quantile_micros(q) / 1e6
            );
        }
        let _ = writeln!(
            o,
            "exdaas_plugin_call_seconds_sum{{plugin=\"{name}\"}} {:.9}",
            l.mean_micros() * l.count() as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "exdaas_plugin_call_seconds_count{{plugin=\"{name}\"}} {}",
            l.count()
        );
    }
}
