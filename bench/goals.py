"""The benchmark's throughput goals, in one place: the report (run.py)
checks them and the chart (chart.py) draws them.

Each goal: (target name, scenario, reference scenario, reference system,
least ratio of exdaas's req/s in `scenario` to the reference's)."""

THROUGHPUT = [
    ("get_vs_floor", "get_cached", "get_cached", "http_floor", 0.85),
    ("mix_vs_webdis", "mix_90_10", "mix_90_10", "webdis_redis", 1.0),
    ("get_vs_webdis", "get_cached", "get_cached", "webdis_redis", 2.0),
    ("put_vs_floor", "put_durable", "put_durable", "http_floor", 0.50),
    ("put_vs_webdis", "put_durable", "put_durable", "webdis_redis", 1.0),
    ("put_vs_etcd", "put_durable", "put_durable", "etcd", 5.0),
    ("overwrite_vs_webdis", "put_overwrite", "put_overwrite", "webdis_redis", 1.0),
    ("delete_vs_webdis", "delete", "delete", "webdis_redis", 1.0),
    ("plugin_put_vs_put", "put_durable_plugin", "put_durable_paired", "exdaas", 0.90),
    ("seed_vs_floor", "seed_ab", "seed_ab", "http_floor", 0.80),
]

# Scenarios in words, for the chart and its readers.
SCENARIO_NAMES = {
    "get_cached": "GET of a cached key",
    "put_durable": "PUT of new keys, durable",
    "seed_ab": "PUT by ab, 1 request per connection",
    "put_overwrite": "PUT over existing keys",
    "delete": "DELETE of existing keys",
    "put_durable_batch1": "PUT, one write per commit",
    "put_durable_plugin": "PUT through a wasm validator",
    "put_durable_paired": "PUT of new keys, beside the validator runs",
    "mix_90_10": "90% GET / 10% PUT",
}

SYSTEM_NAMES = {
    "exdaas": "exdaas",
    "http_floor": "bare HTTP server (floor)",
    "webdis_redis": "webdis + Redis",
    "etcd": "etcd",
}
