//! What recording one request's metrics costs, side by side: exdaas's
//! lock-free counters and histogram against the `prometheus-client` crate
//! (a label family looked up per request, and pre-created handles), on
//! every core at once as the HTTP workers do. Prints ns per request.
//!
//! `cargo run --release --bin metrics-cost [-- RECORDS_PER_THREAD]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use exdaas_server::metrics::{RequestMetrics, Route};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Runs `record(i)` `per_thread` times on each core; ns per call.
fn on_all_cores(per_thread: u64, record: impl Fn(u64) + Send + Sync + 'static) -> f64 {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let record = Arc::new(record);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let record = Arc::clone(&record);
            std::thread::spawn(move || (0..per_thread).for_each(|i| record(i)))
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    started.elapsed().as_nanos() as f64 / (per_thread * threads as u64) as f64
}

fn main() {
    let per_thread: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let took = |i: u64| Duration::from_micros(200 + i % 3000);
    let status = |i: u64| if i.is_multiple_of(10) { 404 } else { 200 };

    let ours = Arc::new(RequestMetrics::default());
    let ns_ours = on_all_cores(per_thread, move |i| {
        ours.record(Route::KvGet, status(i), took(i))
    });

    let requests = Family::<RequestLabels, Counter>::default();
    let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
        Histogram::new(BUCKETS.iter().copied())
    });
    let ns_family = on_all_cores(per_thread, move |i| {
        requests
            .get_or_create(&RequestLabels {
                route: "kv_get",
                status: status(i),
            })
            .inc();
        latency
            .get_or_create(&RouteLabels { route: "kv_get" })
            .observe(took(i).as_secs_f64());
    });

    let ok = Counter::<u64>::default();
    let missing = Counter::<u64>::default();
    let histogram = Histogram::new(BUCKETS.iter().copied());
    let ns_handles = on_all_cores(per_thread, move |i| {
        if status(i) == 200 {
            ok.inc()
        } else {
            missing.inc()
        };
        histogram.observe(took(i).as_secs_f64());
    });

    println!("recording one request (counter by route and status + latency histogram), all cores:");
    println!("  exdaas atomics                         {ns_ours:>7.1} ns");
    println!("  prometheus-client, family per request  {ns_family:>7.1} ns");
    println!("  prometheus-client, pre-created handles {ns_handles:>7.1} ns");
}
