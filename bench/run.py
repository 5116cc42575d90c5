#!/usr/bin/env python3
"""Side-by-side benchmark of exdaas against baselines, in one run.

Started by scripts/bench.sh after it has installed the load generators and
servers and built the release binaries. Every server runs on 127.0.0.1 with
a fresh temporary data directory, is stopped by PID, and every load is
bounded in time or requests. Prints a table and writes bench/results.json
and bench/RESULTS.md.
"""

import argparse
import atexit
import datetime
import http.client
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import chart
import goals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
EXDAAS = os.path.join(ROOT, "target/release/exdaas")
FLOOR = os.path.join(ROOT, "target/release/http-floor")
PLUGIN = os.path.join(ROOT, "examples/dist/require_fields.wasm")
VALUE = {"name": "benchmark user", "email": "user@example.com", "age": 42, "tags": ["a", "b"], "active": True, "x": 1}

WORK = tempfile.mkdtemp(prefix="exdaas-bench-")
# A scenario whose answers are more than this share non-2xx (or failed)
# measured something other than its name says: the run stops.
MAX_BAD_SHARE = 0.01
RUNNING = []


def cleanup():
    for proc in RUNNING:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in RUNNING:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    shutil.rmtree(WORK, ignore_errors=True)


atexit.register(cleanup)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, cmd, env=None, log_name=None):
    log = open(os.path.join(WORK, (log_name or name) + ".log"), "w")
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=WORK)
    RUNNING.append(proc)
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    RUNNING.remove(proc)


def request(port, method, path, body=None, headers=None, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def wait_port(port, seconds=30, proc=None, name=None):
    """Waits for a listener on `port`; a server that exits first, or never
    listens, stops the run with the end of its log (the work directory
    goes when the run ends)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode} before listening on port {port}:\n{log_tail(name)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    tail = log_tail(name) if name else ""
    raise SystemExit(f"nothing listens on port {port} after {seconds}s:\n{tail}")


def log_tail(name, lines=20):
    try:
        with open(os.path.join(WORK, name + ".log")) as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def start_exdaas(name, port, extra_env=None, config="", data_dir=None):
    cfg = os.path.join(WORK, name + ".toml")
    with open(cfg, "w") as f:
        f.write(config)
    env = {
        "EXDAAS_SERVER__LISTEN": f"127.0.0.1:{port}",
        "EXDAAS_STORAGE__DATA_DIR": data_dir or os.path.join(WORK, name + "-data"),
        "EXDAAS_LOG": "warn",
        **(extra_env or {}),
    }
    proc = start(name, [EXDAAS, "--config", cfg], env)
    wait_port(port, proc=proc, name=name)
    return proc


def start_etcd(name):
    """A one-member etcd on loopback with its JSON gateway; (process, port)."""
    cport, pport = free_port(), free_port()
    etcd = start(name, ["etcd", "--name", "bench", "--data-dir", os.path.join(WORK, name),
                        "--listen-client-urls", f"http://127.0.0.1:{cport}",
                        "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                        "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                        "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                        "--initial-cluster", f"bench=http://127.0.0.1:{pport}", "--log-level", "error"],
                 {"ETCD_UNSUPPORTED_ARCH": ""})
    wait_port(cport)
    time.sleep(1)  # the gateway answers a moment after the port opens
    return etcd, cport


def parse_latency(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text or "")
    if not m:
        return None
    return round(float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)], 3)


def wrk(port, script, duration, env=None, conns=64, warm_up=True, scheme="http"):
    args = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", "-s", os.path.join(BENCH, script), f"{scheme}://127.0.0.1:{port}"]
    full_env = {**os.environ, **(env or {})}
    if warm_up:
        subprocess.run(args[:3] + ["-d2s"] + args[4:], env=full_env, capture_output=True)
    out = subprocess.run(args, env=full_env, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = re.search(r"\n\s+50%\s+(\S+)", out)
    p99 = re.search(r"\n\s+99%\s+(\S+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = int(non2xx.group(1)) if non2xx else 0
    # Only successful answers count as throughput.
    ok_rps = rps * (total - bad) / total if total else 0.0
    return {
        "rps": ok_rps,
        "requests": total,
        "p50_ms": parse_latency(p50.group(1) if p50 else None),
        "p99_ms": parse_latency(p99.group(1) if p99 else None),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def ab(port, path, body, requests, conns):
    body_file = os.path.join(WORK, "ab-body.json")
    with open(body_file, "w") as f:
        f.write(body)
    args = ["ab", "-q", "-n", str(requests), "-c", str(conns), "-k", "-T", "application/json", "-p", body_file, f"http://127.0.0.1:{port}{path}"]
    subprocess.run(args[:3] + ["2000"] + args[4:], capture_output=True)  # warm-up
    out = subprocess.run(args, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    p50 = re.search(r"\n\s+50%\s+(\d+)", out)
    p99 = re.search(r"\n\s+99%\s+(\d+)", out)
    return {
        "requests": requests,
        "rps": rps,
        "p50_ms": float(p50.group(1)) if p50 else None,
        "p99_ms": float(p99.group(1)) if p99 else None,
        "failed": failed,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def write_backup(path, keys):
    """A backup file with `keys` records of ~100-byte values (loaded with exdaas restore)."""
    with open(path, "w") as f:
        f.write(json.dumps({"format": "exdaas-backup", "version": 1, "shards": 4, "next_id": 1, "created_ms": 0}) + "\n")
        value = json.dumps(VALUE, separators=(",", ":"))
        for i in range(keys):
            f.write('{"key":"k%d","version":%d,"value":%s}\n' % (i, i + 1, value))
        f.write(json.dumps({"end": True, "records": keys}) + "\n")


def load_redis(port, keys, value):
    """SETs k0..k<keys-1> to `value` in Redis, pipelined, for the mix."""
    payload = value.encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(60)
        reader = s.makefile("rb")
        chunk = 10_000
        for start in range(0, keys, chunk):
            n = min(chunk, keys - start)
            buf = bytearray()
            for i in range(start, start + n):
                key = b"k%d" % i
                buf += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(payload), payload)
            s.sendall(buf)
            for _ in range(n):
                if not reader.readline().startswith(b"+OK"):
                    raise SystemExit("redis refused a SET while loading the mix keys")


def overwrite_and_delete(record, port, style, prefix, d):
    """Overwrites keys that a put_distinct run with `prefix` created, then
    deletes keys that exist: a pool written for twice the scenario's time
    first, so the deletes never run past it into keys that are not there."""
    env = {"STYLE": style, "PREFIX": prefix}
    system = "exdaas" if style == "exdaas" else "webdis_redis"
    record("put_overwrite", system, wrk(port, "overwrite_delete.lua", d, {**env, "MODE": "overwrite"}))
    pool = {"STYLE": style, "PREFIX": prefix + "-del"}
    wrk(port, "put_distinct.lua", 2 * d, pool, warm_up=False)
    record("delete", system, wrk(port, "overwrite_delete.lua", d, {**pool, "MODE": "delete"}, warm_up=False))


def first_get_ms(proc, port, probe, seconds=120):
    """Milliseconds from now until `probe` answers 200 (the server was just started)."""
    t0 = time.monotonic()
    while True:
        try:
            status, _ = request(port, "GET", probe, timeout=1)
            if status == 200:
                return round((time.monotonic() - t0) * 1000, 1)
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"exdaas exited while starting (logs in {WORK})")
        if time.monotonic() - t0 > seconds:
            raise SystemExit(f"exdaas did not answer {probe} within {seconds} s")
        time.sleep(0.001)


def at_scale(keys, d, record, results, with_mix):
    """exdaas over `keys` existing keys with a 64 MiB cache: restart time,
    durable PUT and cached GET throughput, peak RSS, and (with_mix) the
    90/10 mix over those keys. Fills results["growth"][keys]."""
    print(f"exdaas with {keys} keys", flush=True)
    data = os.path.join(WORK, f"scale-{keys}")
    if keys:
        backup = os.path.join(WORK, "keys.ndjson")
        write_backup(backup, keys)
        t0 = time.monotonic()
        subprocess.run([EXDAAS, "restore", "--in", backup, "--data-dir", data], check=True, capture_output=True, cwd=WORK)
        results.setdefault("load_seconds", {})[str(keys)] = round(time.monotonic() - t0, 2)
        os.remove(backup)
    port = free_port()
    cfg = os.path.join(WORK, "scale.toml")
    with open(cfg, "w") as f:
        f.write("")
    env = {
        "EXDAAS_SERVER__LISTEN": f"127.0.0.1:{port}",
        "EXDAAS_STORAGE__DATA_DIR": data,
        "EXDAAS_CACHE__CAPACITY_BYTES": str(64 * 1024 * 1024),
        "EXDAAS_LOG": "warn",
    }
    server = start(f"scale-{keys}", [EXDAAS, "--config", cfg], env)
    probe = f"/v1/kv/k{random.randrange(keys)}" if keys else "/health"
    restart_ms = first_get_ms(server, port, probe)
    print(f"  restart to first GET: {restart_ms} ms", flush=True)
    if with_mix:
        results["restart_to_first_get_ms"] = restart_ms
        record("mix_90_10", "exdaas", wrk(port, "mix.lua", d, {"KEYS": str(keys)}))
        # Memory after the mix, as this figure has always been taken.
        results["rss_1m_keys_64mib_cache"] = {
            "peak_mib": round(rss_kib(server.pid, "VmHWM") / 1024, 1),
            "current_mib": round(rss_kib(server.pid, "VmRSS") / 1024, 1),
        }
    label = f"{keys}_keys"
    put = wrk(port, "put_distinct.lua", d, {"STYLE": "exdaas", "PREFIX": f"grow{keys}"})
    record(f"put_durable@{label}", "exdaas", put)
    request(port, "PUT", "/v1/kv/bench-hot", json.dumps(VALUE), {"Content-Type": "application/json"})
    get = wrk(port, "fixed.lua", d, {"URLPATH": "/v1/kv/bench-hot"})
    record(f"get_cached@{label}", "exdaas", get)
    rss = {"peak_mib": round(rss_kib(server.pid, "VmHWM") / 1024, 1), "current_mib": round(rss_kib(server.pid, "VmRSS") / 1024, 1)}
    print(f"  RSS after the PUT and GET loads: {rss}", flush=True)
    results.setdefault("growth", {})[str(keys)] = {
        "put_rps": put["rps"], "put_p99_ms": put["p99_ms"], "get_rps": get["rps"], "get_p99_ms": get["p99_ms"],
        "restart_ms": restart_ms, "peak_rss_mib": rss["peak_mib"],
    }
    stop(server)
    shutil.rmtree(data, ignore_errors=True)


PLUGIN_PAIRS = 3


def plugin_pairs(d, record, results):
    """PUTs through the require-fields validator, each run beside a plain
    PUT run on a fresh server, the pair's order alternating: the plugin
    goal compares figures taken a few seconds apart, not a minute, so the
    machine's drift does not decide it. `put_durable_paired` and
    `put_durable_plugin` are the median runs; `plugin_put_pairs` keeps each
    pair's ratio."""
    config = (
        '[[plugins]]\nname = "require-fields"\npath = "%s"\n'
        'config = { required = { name = "string", email = "string", age = "number" } }\n' % PLUGIN
    )
    runs = {"plain": [], "plugin": []}
    for i in range(PLUGIN_PAIRS):
        order = ["plain", "plugin"] if i % 2 == 0 else ["plugin", "plain"]
        for kind in order:
            port = free_port()
            server = start_exdaas(f"exdaas-{kind}-{i}", port, config=config if kind == "plugin" else "")
            runs[kind].append(wrk(port, "put_distinct.lua", d, {"STYLE": "exdaas", "PREFIX": f"{kind}{i}"}))
            if kind == "plugin" and i == PLUGIN_PAIRS - 1:
                status, body = request(port, "GET", "/v1/plugins")
                results["plugin_stats"] = json.loads(body)["plugins"][0]["stats"] if status == 200 else None
            stop(server)
    median = lambda figures: sorted(figures, key=lambda f: f["rps"])[len(figures) // 2]
    record("put_durable_paired", "exdaas", median(runs["plain"]))
    record("put_durable_plugin", "exdaas", median(runs["plugin"]))
    results["plugin_put_pairs"] = [round(p["rps"] / q["rps"], 3) for p, q in zip(runs["plugin"], runs["plain"])]
    print(f"  plugin PUT / plain PUT by pair: {results['plugin_put_pairs']}", flush=True)


def rss_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk scenario")
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys for the mix, restart and memory scenarios")
    parser.add_argument("--skip-baselines", action="store_true", help="only exdaas and the HTTP floor")
    parser.add_argument("--growth", default="0,1000000,5000000",
                        help="existing key counts to measure how cost grows at (comma-separated)")
    parser.add_argument("--quick", action="store_true",
                        help="a look in under 5 minutes: 3 s per scenario, 100,000 keys, written to *-quick files")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.keys, args.growth = min(args.duration, 3), 100_000, "0,100000"
    d = args.duration
    results = {}

    def record(scenario, system, figures):
        answered = figures.get("requests", 0)
        bad = figures.get("non_2xx", 0) + figures.get("failed", 0) + figures.get("socket_errors", 0)
        if answered and bad / answered > MAX_BAD_SHARE:
            raise SystemExit(f"{scenario} on {system}: {bad} of {answered} answers were not 2xx; "
                             f"its figure would not measure what its name says (logs in {WORK})")
        results.setdefault(scenario, {})[system] = figures
        lat = f"p50 {figures.get('p50_ms')} ms  p99 {figures.get('p99_ms')} ms"
        print(f"  {scenario:<22} {system:<22} {figures['rps']:>10.0f} req/s  {lat}", flush=True)

    hot_value = json.dumps(VALUE, separators=(",", ":"))
    seed_body = '{"id":1,"data":{"color":"blue"}}'

    # --- the HTTP floor ---------------------------------------------------
    print("HTTP floor", flush=True)
    port = free_port()
    floor = start("floor", [FLOOR, f"127.0.0.1:{port}"])
    wait_port(port)
    record("get_cached", "http_floor", wrk(port, "fixed.lua", d, {"URLPATH": "/bench-hot"}))
    record("put_durable", "http_floor", wrk(port, "put_distinct.lua", d, {"STYLE": "floor"}))
    record("seed_ab", "http_floor", ab(port, "/api", seed_body, 50000, 500))
    stop(floor)

    # --- exdaas -------------------------------------------------------------
    print("exdaas", flush=True)
    port = free_port()
    server = start_exdaas("exdaas", port)
    request(port, "PUT", "/v1/kv/bench-hot", hot_value, {"Content-Type": "application/json"})
    record("get_cached", "exdaas", wrk(port, "fixed.lua", d, {"URLPATH": "/v1/kv/bench-hot"}))
    record("put_durable", "exdaas", wrk(port, "put_distinct.lua", d, {"STYLE": "exdaas", "PREFIX": "plain"}))
    overwrite_and_delete(record, port, "exdaas", "plain", d)
    record("seed_ab", "exdaas", ab(port, "/api", seed_body, 50000, 500))
    stop(server)

    port = free_port()
    server = start_exdaas("exdaas-batch1", port, {"EXDAAS_STORAGE__MAX_BATCH": "1"})
    record("put_durable_batch1", "exdaas", wrk(port, "put_distinct.lua", d, {"STYLE": "exdaas"}))
    stop(server)

    if os.path.exists(PLUGIN):
        plugin_pairs(d, record, results)

    # --- cost as the key count grows; the mix, restart and RSS at --keys ----
    counts = sorted({int(k) for k in args.growth.split(",") if k.strip()} | {args.keys})
    for keys in counts:
        at_scale(keys, d, record, results, with_mix=keys == args.keys)

    # --- baselines ------------------------------------------------------------
    if not args.skip_baselines:
        print("Webdis + Redis (appendonly yes, appendfsync always)", flush=True)
        rport, wport = free_port(), free_port()
        rdir = os.path.join(WORK, "redis")
        os.makedirs(rdir)
        redis = start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--dir", rdir,
                                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"])
        wait_port(rport)
        wconf = os.path.join(WORK, "webdis.json")
        with open(wconf, "w") as f:
            json.dump({"redis_host": "127.0.0.1", "redis_port": rport, "http_host": "127.0.0.1", "http_port": wport,
                       "threads": 2, "pool_size": 20, "daemonize": False, "websockets": False, "database": 0,
                       "verbosity": 1, "logfile": os.path.join(WORK, "webdis-own.log")}, f)
        webdis = start("webdis", ["webdis", wconf])
        wait_port(wport)
        request(wport, "PUT", "/SET/bench-hot", hot_value)
        record("get_cached", "webdis_redis", wrk(wport, "fixed.lua", d, {"URLPATH": "/GET/bench-hot"}))
        record("put_durable", "webdis_redis", wrk(wport, "put_distinct.lua", d, {"STYLE": "webdis", "PREFIX": "plain"}))
        overwrite_and_delete(record, wport, "webdis", "plain", d)
        load_redis(rport, args.keys, hot_value)
        record("mix_90_10", "webdis_redis", wrk(wport, "mix.lua", d, {"KEYS": str(args.keys), "STYLE": "webdis"}))
        stop(webdis)
        stop(redis)

        print("etcd (JSON gateway)", flush=True)
        etcd, cport = start_etcd("etcd")
        key = "YmVuY2gtaG90"  # base64("bench-hot")
        request(cport, "POST", "/v3/kv/put", json.dumps({"key": key, "value": "aG90"}), {"Content-Type": "application/json"})
        record("get_cached", "etcd", wrk(cport, "fixed.lua", d, {
            "METHOD": "POST", "URLPATH": "/v3/kv/range", "CTYPE": "application/json",
            "BODY": json.dumps({"key": key, "serializable": True})}))
        record("put_durable", "etcd", wrk(cport, "put_distinct.lua", d, {"STYLE": "etcd"}))
        stop(etcd)

    report(results, args)


def ratio(results, a, b):
    try:
        x = results[a[0]][a[1]]["rps"]
        y = results[b[0]][b[1]]["rps"]
        return round(x / y, 3)
    except (KeyError, ZeroDivisionError, TypeError):
        return None


def p99_ratio(results, scenario, a, b):
    try:
        return round(results[scenario][a]["p99_ms"] / results[scenario][b]["p99_ms"], 3)
    except (KeyError, ZeroDivisionError, TypeError):
        return None


def growth_ratio(results, field):
    """`field` at the largest key count measured over `field` at 0 keys."""
    growth = results.get("growth", {})
    if "0" not in growth or len(growth) < 2:
        return None, None
    top = max(growth, key=int)
    base = growth["0"][field]
    return (round(growth[top][field] / base, 3) if base else None), int(top)


def report(results, args):
    r = lambda a, b: ratio(results, a, b)
    # (name, measured, comparison, goal); a goal of None is reported only.
    targets = [
        (name, r((scenario, "exdaas"), (reference, system)), ">=", least)
        for name, scenario, reference, system, least in goals.THROUGHPUT
    ]
    targets += [
        ("put_p99_vs_webdis_p99", p99_ratio(results, "put_durable", "exdaas", "webdis_redis"), "<=", 2.0),
        ("group_commit_vs_batch1", r(("put_durable", "exdaas"), ("put_durable_batch1", "exdaas")), None, None),
    ]
    for field, goal in (("put_rps", 0.8), ("get_rps", 0.8)):
        value, top = growth_ratio(results, field)
        if top is not None:
            targets.append((f"{field}_at_{top}_keys_vs_0", value, ">=", goal))
    rss = results.get("rss_1m_keys_64mib_cache", {}).get("peak_mib")
    restart = results.get("restart_to_first_get_ms")
    seed_failed = results.get("seed_ab", {}).get("exdaas", {}).get("failed")
    targets += [
        (f"restart_to_first_get_ms ({args.keys} keys)", restart, "<", 1000),
        (f"peak_rss_mib ({args.keys} keys, 64 MiB cache, after the mix)", rss, "<=", 200),
        ("seed_ab_failed_requests", seed_failed, "==", 0),
    ]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.node()}, {os.cpu_count()} CPUs, {platform.machine()}, Linux {platform.release()}"
    lines = [
        "# Benchmark results",
        "",
        f"Run {now} on {machine}, with `scripts/bench.sh` (wrk 2 threads, 64 connections, "
        f"{args.duration} s per scenario after a 2 s warm-up; ab for the seed benchmark). "
        "Every system ran on loopback in the same run; ratios compare figures from this run only. "
        "`@N_keys` scenarios ran with N keys already stored and a 64 MiB cache.",
        "",
        "![throughput, p99 and growth](results.png)",
        "",
        "| scenario | system | req/s | p50 ms | p99 ms | non-2xx |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scenario, systems in results.items():
        if not isinstance(systems, dict) or not all(isinstance(v, dict) and "rps" in v for v in systems.values()):
            continue
        for system, f in systems.items():
            bad = f.get("non_2xx", 0) + f.get("failed", 0) + f.get("socket_errors", 0)
            lines.append(f"| {scenario} | {system} | {f['rps']:.0f} | {f.get('p50_ms')} | {f.get('p99_ms')} | {bad} |")
    if results.get("growth"):
        lines += ["", "| keys stored | PUT req/s | PUT p99 ms | GET req/s | GET p99 ms | restart ms | peak RSS MiB |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for keys, g in sorted(results["growth"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {int(keys):,} | {g['put_rps']:.0f} | {g['put_p99_ms']} | {g['get_rps']:.0f} | "
                         f"{g['get_p99_ms']} | {g['restart_ms']} | {g['peak_rss_mib']} |")
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
    checks = {">=": lambda v, g: v >= g, "<=": lambda v, g: v <= g, "<": lambda v, g: v < g, "==": lambda v, g: v == g}
    for name, value, cmp, goal in targets:
        met = "" if cmp is None or value is None else ("yes" if checks[cmp](value, goal) else "no")
        lines.append(f"| {name} | {value} | {cmp + ' ' + str(goal) if cmp else '-'} | {met} |")
    if results.get("plugin_stats"):
        calls = results["plugin_stats"]["call_micros"]
        lines += ["", f"require-fields plugin call time during its last run: mean {calls['mean']} us, p50 {calls['p50']} us, p99 {calls['p99']} us."]
    if results.get("plugin_put_pairs"):
        lines += ["", f"plugin_put_vs_put compares the median of {PLUGIN_PAIRS} plugin PUT runs with the median of "
                      f"{PLUGIN_PAIRS} plain PUT runs, each plain run on a fresh server right beside a plugin run; "
                      f"the pairs' own ratios were {', '.join(map(str, results['plugin_put_pairs']))}."]
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    # A quick look never replaces the full run's files.
    suffix = "-quick" if args.quick else ""
    text = text.replace("(results.png)", f"(results{suffix}.png)")
    with open(os.path.join(BENCH, f"RESULTS{suffix}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(BENCH, f"results{suffix}.json"), "w") as f:
        json.dump({"date": now, "machine": machine, "results": results,
                   "ratios": {name: value for name, value, _, _ in targets}}, f, indent=2)
    chart.draw(os.path.join(BENCH, f"results{suffix}.json"), os.path.join(BENCH, f"results{suffix}.png"))


if __name__ == "__main__":
    main()
