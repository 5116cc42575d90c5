//! Everything `/metrics` reports (requests by route and status, latency
//! histograms, shard queues and group commits, caches, plugins, uptime and
//! build info), encoded by the `prometheus-client` crate in the OpenMetrics
//! text format. The names registered here are the one list of metric names.
//! Request counters and histograms are handles created once per label set,
//! so the request path touches no lock and no map (`bench/src/metrics_cost.rs`
//! measured them at the cost of plain atomics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::http::routes::{Op, Resolved};
use crate::plugin::compiler::CompileStats;
use crate::plugin::{FailureKind, PluginChain};
use crate::replication::Replica;
use crate::storage::feed::Feed;
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
    /// PATCH /v1/kv/{key}
    KvPatch,
    /// POST /v1/kv/{key}?op=incr
    KvIncr,
    /// POST /v1/kv/get
    KvGetMany,
    /// POST /v1/txn
    Txn,
    /// GET /v1/watch, GET /v1/changes
    Feed,
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
    pub fn of(resolved: &Resolved) -> Route {
        let Resolved::Op(op, _) = resolved else {
            return Route::Other;
        };
        match op {
            Op::KvGet => Route::KvGet,
            Op::KvPut => Route::KvPut,
            Op::KvDelete => Route::KvDelete,
            Op::KvPatch => Route::KvPatch,
            Op::KvIncr => Route::KvIncr,
            Op::KvGetMany => Route::KvGetMany,
            Op::Txn => Route::Txn,
            Op::Watch | Op::Changes => Route::Feed,
            Op::KvCreate => Route::KvCreate,
            Op::KvList => Route::KvList,
            Op::ApiRead | Op::ApiWrite => Route::Api,
            Op::ApiCmd => Route::ApiCmd,
            Op::PluginList | Op::PluginDryRun | Op::PluginShadow => Route::Plugins,
            Op::PluginReload
            | Op::PluginPromote
            | Op::PluginUpload
            | Op::PluginDescribe
            | Op::PluginDelete
            | Op::PluginRollback
            | Op::Backup
            | Op::Promote
            | Op::AuthReload
            | Op::Audit
            | Op::BackupHead => Route::Admin,
            Op::Health | Op::Ready => Route::Health,
            Op::Metrics => Route::Metrics,
            Op::OpenApi => Route::Other,
        }
    }

    const ALL: [Route; 17] = [
        Route::Txn,
        Route::Feed,
        Route::KvGet,
        Route::KvPut,
        Route::KvDelete,
        Route::KvPatch,
        Route::KvIncr,
        Route::KvGetMany,
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
            Route::KvPatch => "kv_patch",
            Route::KvIncr => "kv_incr",
            Route::KvGetMany => "kv_get_many",
            Route::Txn => "txn",
            Route::Feed => "feed",
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

/// Status codes counted individually; others are `status="other"`.
const STATUSES: [u16; 16] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 412, 413, 415, 422, 500, 503,
];
/// Their label values, so a label costs no formatting.
const STATUS_LABELS: [&str; 16] = [
    "200", "201", "204", "304", "400", "401", "403", "404", "405", "409", "412", "413", "415",
    "422", "500", "503",
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;
/// Upper bounds of the request latency histogram, seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATUS_SLOTS - 1)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginOutcomeLabels {
    plugin: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginKindLabels {
    plugin: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

fn request_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLimitLabels {
    token: String,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

/// Connections: open now, and the cap on them.
#[derive(Default)]
pub struct ConnectionMetrics {
    open: Gauge,
    cap: Gauge,
}

impl ConnectionMetrics {
    /// Records the cap the server runs with.
    pub fn set_cap(&self, cap: usize) {
        self.cap.set(i64::try_from(cap).unwrap_or(i64::MAX));
    }

    /// A connection is served from now on.
    pub fn opened(&self) {
        self.open.inc();
    }

    /// A served connection ended.
    pub fn closed(&self) {
        self.open.dec();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "exdaas_connections_open",
            "Connections served now",
            self.open.clone(),
        );
        registry.register(
            "exdaas_connections_cap",
            "Connections served at once, at most (server.max_connections, lowered to leave storage descriptors)",
            self.cap.clone(),
        );
    }
}

/// Request counters and latency histograms per route, and connections.
pub struct RequestMetrics {
    /// Connections served.
    pub connections: ConnectionMetrics,
    /// Connections and requests refused at a bound, by cause.
    refusals: Family<CauseLabels, Counter>,
    /// Requests refused by a token's fair-use limits, by token and limit.
    token_limits: Family<TokenLimitLabels, Counter>,
    started: Instant,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// [route][status slot]: created on first use, so only label sets that
    /// occurred are exported.
    request_handles: Vec<OnceLock<Counter>>,
    /// [route]
    latency_handles: Vec<OnceLock<Histogram>>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        let routes = Route::ALL.len();
        Self {
            connections: ConnectionMetrics::default(),
            refusals: Family::default(),
            token_limits: Family::default(),
            started: Instant::now(),
            requests: Family::default(),
            latency: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            request_handles: (0..routes * STATUS_SLOTS)
                .map(|_| OnceLock::new())
                .collect(),
            latency_handles: (0..routes).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl RequestMetrics {
    /// A token's fair-use limit (`rate` or `in_flight`) refused a request.
    pub fn token_limited(&self, token: &str, limit: &'static str) {
        self.token_limits
            .get_or_create(&TokenLimitLabels {
                token: token.to_owned(),
                limit,
            })
            .inc();
    }

    /// A connection or request was refused at a bound: `connection_cap`
    /// (past `server.max_connections`), `body_budget` (no room in
    /// `server.max_body_bytes_in_flight`).
    pub fn refused(&self, cause: &'static str) {
        self.refusals.get_or_create(&CauseLabels { cause }).inc();
    }

    /// Records one answered request.
    pub fn record(&self, route: Route, status: u16, took: Duration) {
        let r = route.index();
        let slot = status_slot(status);
        self.request_handles[r * STATUS_SLOTS + slot]
            .get_or_init(|| {
                let status = STATUS_LABELS.get(slot).copied().unwrap_or("other");
                self.requests
                    .get_or_create(&RequestLabels {
                        route: route.name(),
                        status,
                    })
                    .clone()
            })
            .inc();
        self.latency_handles[r]
            .get_or_init(|| {
                self.latency
                    .get_or_create(&RouteLabels {
                        route: route.name(),
                    })
                    .clone()
            })
            .observe(took.as_secs_f64());
    }

    /// Encodes every metric as OpenMetrics text (`metrics_text` derives
    /// the classic format from it).
    pub fn render(
        &self,
        storage: &Storage,
        chain: &PluginChain,
        compiles: &CompileStats,
        body_bytes: usize,
        replica: Option<&Replica>,
        audit: Option<&crate::audit::AuditMetrics>,
    ) -> String {
        let mut registry = Registry::default();
        registry.register(
            "exdaas_build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let uptime = Gauge::<f64, AtomicU64>::default();
        uptime.set(self.started.elapsed().as_secs_f64());
        registry.register("exdaas_uptime_seconds", "Seconds since start", uptime);
        registry.register(
            "exdaas_requests",
            "Requests answered, by route and status",
            self.requests.clone(),
        );
        registry.register(
            "exdaas_request_duration_seconds",
            "Request latency by route",
            self.latency.clone(),
        );
        self.connections.register(&mut registry);
        registry.register(
            "exdaas_refused",
            "Connections and requests refused at a bound, by cause",
            self.refusals.clone(),
        );
        registry.register(
            "exdaas_token_limited",
            "Requests refused (429) by a token's rate_per_second or max_in_flight, by token and limit",
            self.token_limits.clone(),
        );
        let in_flight = Gauge::<i64>::default();
        in_flight.set(i64::try_from(body_bytes).unwrap_or(i64::MAX));
        registry.register(
            "exdaas_body_bytes_in_flight",
            "Request body bytes held by requests being read (server.max_body_bytes_in_flight)",
            in_flight,
        );
        register_storage(&mut registry, storage);
        register_plugins(&mut registry, chain);
        register_compiles(&mut registry, compiles);
        register_feed(&mut registry, storage.feed());
        if let Some(replica) = replica {
            register_replication(&mut registry, replica);
        }
        if let Some(audit) = audit {
            register_audit(&mut registry, audit);
        }
        let mut text = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        text
    }
}

/// One value per shard, as a gauge family.
fn shard_gauges(values: impl IntoIterator<Item = i64>) -> Family<ShardLabels, Gauge> {
    let family = Family::<ShardLabels, Gauge>::default();
    for (shard, v) in values.into_iter().enumerate() {
        family.get_or_create(&ShardLabels { shard }).set(v);
    }
    family
}

/// One value per shard, as a counter family.
fn shard_counters(values: impl IntoIterator<Item = u64>) -> Family<ShardLabels, Counter> {
    let family = Family::<ShardLabels, Counter>::default();
    for (shard, v) in values.into_iter().enumerate() {
        family.get_or_create(&ShardLabels { shard }).inc_by(v);
    }
    family
}

fn register_storage(registry: &mut Registry, storage: &Storage) {
    let shards = storage.shard_metrics();
    let caches = storage.cache_stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    registry.register(
        "exdaas_shard_queue_depth",
        "Writes waiting for the shard writer",
        shard_gauges(caches.iter().map(|c| gauge(c.3 as u64))),
    );
    registry.register(
        "exdaas_shard_batches",
        "Batches taken by the shard writer",
        shard_counters(shards.iter().map(|m| load(&m.batches))),
    );
    registry.register(
        "exdaas_shard_batched_writes",
        "Writes in those batches (divide for the mean batch size)",
        shard_counters(shards.iter().map(|m| load(&m.commands))),
    );
    registry.register(
        "exdaas_shard_batch_max",
        "Largest batch so far",
        shard_gauges(shards.iter().map(|m| gauge(load(&m.max_batch)))),
    );
    registry.register(
        "exdaas_shard_commits",
        "Batches committed to the commit log (shards share its syncs)",
        shard_counters(shards.iter().map(|m| load(&m.commits))),
    );
    let commit_seconds = Family::<ShardLabels, Counter<f64, AtomicU64>>::default();
    for (shard, m) in shards.iter().enumerate() {
        commit_seconds
            .get_or_create(&ShardLabels { shard })
            .inc_by(load(&m.commit_micros) as f64 / 1e6);
    }
    registry.register(
        "exdaas_shard_commit_seconds",
        "Time from deciding a batch to its commit log sync",
        commit_seconds,
    );
    registry.register(
        "exdaas_shard_unapplied_writes",
        "Committed writes (keys) not yet applied to the shard's store",
        shard_gauges(storage.unapplied().into_iter().map(|n| gauge(n as u64))),
    );
    let txns = storage.txn_stats();
    for (name, help, value) in [
        ("exdaas_txns", "Transactions decided", &txns.decided),
        (
            "exdaas_txn_batches",
            "Batches transactions were decided and logged in",
            &txns.batches,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(load(value));
        registry.register(name, help, counter);
    }
    let waiting = Gauge::<i64>::default();
    waiting.set(gauge(load(&txns.waiting)));
    registry.register(
        "exdaas_txn_waiting",
        "Transactions waiting for a batch",
        waiting,
    );
    let expired = Counter::<u64>::default();
    expired.inc_by(load(&storage.expiry_stats.expired));
    registry.register(
        "exdaas_expired_keys",
        "Keys the expiry sweeper deleted once their TTL ran out",
        expired,
    );
    let expiring = Gauge::<i64>::default();
    expiring.set(gauge(storage.expiring_keys() as u64));
    registry.register(
        "exdaas_expiring_keys",
        "Keys with an expiry the sweeper watches",
        expiring,
    );
    registry.register(
        "exdaas_cache_hits",
        "Reads served from the cache",
        shard_counters(caches.iter().map(|c| c.0)),
    );
    registry.register(
        "exdaas_cache_misses",
        "Reads that went to disk",
        shard_counters(caches.iter().map(|c| c.1)),
    );
    registry.register(
        "exdaas_cache_bytes",
        "Bytes held by the cache",
        shard_gauges(caches.iter().map(|c| gauge(c.2))),
    );
}

/// Every plugin's call-time histogram, read from its own lock-free buckets
/// at scrape time.
#[derive(Debug)]
struct PluginCallTimes(Vec<PluginCallTime>);

/// One plugin's call times as read at scrape time.
#[derive(Debug)]
struct PluginCallTime {
    labels: PluginLabels,
    sum_seconds: f64,
    count: u64,
    /// Each bucket's own count, under its upper bound in seconds.
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for PluginCallTimes {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for t in &self.0 {
            encoder
                .encode_family(&t.labels)?
                .encode_histogram::<PluginLabels>(t.sum_seconds, t.count, &t.buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn register_plugins(registry: &mut Registry, chain: &PluginChain) {
    let calls = Family::<PluginOutcomeLabels, Counter>::default();
    let failures = Family::<PluginKindLabels, Counter>::default();
    let inline = Family::<PluginLabels, Counter>::default();
    let mut times = Vec::new();
    for p in chain.plugins() {
        let s = &p.stats;
        for (outcome, counter) in [
            ("accepted", &s.accepted),
            ("rejected", &s.rejected),
            ("replaced", &s.replaced),
        ] {
            let labels = PluginOutcomeLabels {
                plugin: p.name().to_owned(),
                outcome,
            };
            calls
                .get_or_create(&labels)
                .inc_by(counter.load(Ordering::Relaxed));
        }
        for kind in FailureKind::ALL {
            let labels = PluginKindLabels {
                plugin: p.name().to_owned(),
                kind: kind.as_str(),
            };
            failures.get_or_create(&labels).inc_by(s.failures(kind));
        }
        let labels = PluginLabels {
            plugin: p.name().to_owned(),
        };
        inline
            .get_or_create(&labels)
            .inc_by(s.inline_calls.load(Ordering::Relaxed));
        let l = &s.latency;
        times.push(PluginCallTime {
            labels: PluginLabels {
                plugin: p.name().to_owned(),
            },
            sum_seconds: l.total_seconds(),
            count: l.count(),
            buckets: l.prometheus_buckets(),
        });
    }
    registry.register("exdaas_plugin_calls", "Plugin calls by outcome", calls);
    registry.register(
        "exdaas_plugin_failures",
        "Plugin failures by kind",
        failures,
    );
    registry.register(
        "exdaas_plugin_inline_calls",
        "Plugin calls made on the request's own thread (fast plugins over values in memory); the rest ran on the plugin workers",
        inline,
    );
    registry.register(
        "exdaas_plugin_call_seconds",
        "Plugin call time",
        PluginCallTimes(times),
    );
}

/// The change feed: its readers, what they were sent, why the server
/// ended streams, and what it holds.
fn register_audit(registry: &mut Registry, audit: &crate::audit::AuditMetrics) {
    let records = Family::<OutcomeLabels, Counter>::default();
    for (outcome, count) in [("written", &audit.written), ("dropped", &audit.dropped)] {
        records
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(count.load(Ordering::Relaxed));
    }
    registry.register(
        "exdaas_audit_records",
        "Audit trail records written, and lost to a full queue or a failed write",
        records,
    );
}

fn register_feed(registry: &mut Registry, feed: &Feed) {
    let m = &feed.metrics;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let gauge = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    let counter = |v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        c
    };
    let subscribers = m.subscribers.load(Ordering::Relaxed) as u64;
    registry.register(
        "exdaas_feed_subscribers",
        "Change feed streams and long polls open now (feed.max_subscribers bounds them)",
        gauge(subscribers),
    );
    registry.register(
        "exdaas_feed_events_sent",
        "Change feed events sent to readers",
        counter(load(&m.events_sent)),
    );
    let ended = Family::<CauseLabels, Counter>::default();
    for (cause, count) in [
        ("lagged", load(&m.lagged)),
        ("compacted", load(&m.compacted)),
        ("shutdown", load(&m.shutdown)),
        ("refused", load(&m.refused)),
    ] {
        ended.get_or_create(&CauseLabels { cause }).inc_by(count);
    }
    registry.register(
        "exdaas_feed_disconnects",
        "Change feed readers the server ended or refused, by cause: lagged (past feed.max_lag_revisions), compacted (retention dropped their place), shutdown, refused (past feed.max_subscribers)",
        ended,
    );
    registry.register(
        "exdaas_feed_oldest_revision",
        "The oldest revision the change feed still holds",
        gauge(feed.oldest()),
    );
    registry.register(
        "exdaas_feed_head_revision",
        "The newest committed revision",
        gauge(feed.head()),
    );
    registry.register(
        "exdaas_feed_buffer_bytes",
        "Bytes of recent changes held in memory (feed.buffer_bytes bounds them)",
        gauge(feed.ring_bytes() as u64),
    );
}

/// A replica's lag behind its primary, and whether it reaches it.
fn register_replication(registry: &mut Registry, replica: &Replica) {
    let lag = Gauge::<i64>::default();
    lag.set(i64::try_from(replica.lag_revisions()).unwrap_or(i64::MAX));
    registry.register(
        "exdaas_replication_lag_revisions",
        "Revisions the primary reported that this replica has not applied",
        lag,
    );
    let seconds = Gauge::<f64, AtomicU64>::default();
    seconds.set(replica.lag_seconds());
    registry.register(
        "exdaas_replication_lag_seconds",
        "Seconds since this replica last had everything its primary reported",
        seconds,
    );
    let up = Gauge::<i64>::default();
    up.set(i64::from(replica.is_connected()));
    registry.register(
        "exdaas_replication_primary_up",
        "1 when the primary answered the last poll of its feed",
        up,
    );
    let held = Gauge::<i64>::default();
    held.set(i64::try_from(replica.held_changes()).unwrap_or(i64::MAX));
    registry.register(
        "exdaas_replication_held_changes",
        "Changes of a transaction an answer cut short, held back until the rest of it arrives",
        held,
    );
    let over = Counter::<u64>::default();
    over.inc_by(replica.answers_over_cap());
    registry.register(
        "exdaas_replication_answers_over_cap",
        "Answers of the primary cut off at what this replica reads of one (its next poll asks for fewer changes)",
        over,
    );
}

/// Plugin compiles: how many, how long, how large the largest child grew,
/// and how many modules did not need one.
fn register_compiles(registry: &mut Registry, stats: &CompileStats) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let modules = Family::<SourceLabels, Counter>::default();
    for (source, count) in [
        ("compiled", load(&stats.compiled)),
        ("kept", load(&stats.loaded)),
        ("reused", load(&stats.reused)),
        ("refused", load(&stats.failed)),
    ] {
        modules
            .get_or_create(&SourceLabels { source })
            .inc_by(count);
    }
    registry.register(
        "exdaas_plugin_modules",
        "Plugin modules prepared, by how: compiled, kept (a compiled module from disk), reused (from the running chain), refused",
        modules,
    );
    let seconds = Counter::<f64, AtomicU64>::default();
    seconds.inc_by(load(&stats.micros) as f64 / 1e6);
    registry.register(
        "exdaas_plugin_compile_seconds",
        "Time spent compiling plugin modules",
        seconds,
    );
    let peak = Gauge::<i64>::default();
    peak.set(i64::try_from(load(&stats.peak_bytes)).unwrap_or(i64::MAX));
    registry.register(
        "exdaas_plugin_compile_peak_bytes",
        "Largest resident memory a compile process reached (plugin_compile.max_memory_bytes bounds it)",
        peak,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_name_their_codes() {
        for (code, label) in STATUSES.iter().zip(STATUS_LABELS) {
            assert_eq!(code.to_string(), label);
        }
        assert_eq!(status_slot(404), 7);
        assert_eq!(status_slot(418), STATUS_SLOTS - 1);
    }

    #[test]
    fn renders_openmetrics_with_the_names_we_keep() {
        let m = RequestMetrics::default();
        m.record(Route::KvGet, 200, Duration::from_micros(300));
        m.record(Route::KvGet, 418, Duration::from_millis(2));
        let mut registry = Registry::default();
        registry.register("exdaas_requests", "Requests", m.requests.clone());
        registry.register(
            "exdaas_request_duration_seconds",
            "Latency",
            m.latency.clone(),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        assert!(
            text.contains("exdaas_requests_total{route=\"kv_get\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("exdaas_requests_total{route=\"kv_get\",status=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("exdaas_request_duration_seconds_count{route=\"kv_get\"} 2"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
