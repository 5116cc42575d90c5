#!/usr/bin/env python3
"""The change feed and read replicas under the durable-PUT load, side by
side in one run:

1. exdaas and etcd, each with 0, 1 and 16 watchers of the written prefix
   (exdaas: `curl -N /v1/watch`; etcd: `curl -N` on its JSON gateway's
   `/v3/watch`): the PUT rate, and the events each watcher received per
   second of load, and how long after the load the last one arrived.
2. An exdaas primary with 0, 1 and 3 replicas attached: the PUT rate, each
   replica's lag (revisions) when the load stops, and the time until it
   has everything.

    python3 bench/feed.py [--duration 8] [--out bench/FEED.md]

Every server runs on loopback with a fresh data directory and is stopped
by PID. Ratios compare figures of this run only.
"""

import argparse
import base64
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the shared helpers: start, stop, free_port)


def put_load(port, style, duration, prefix):
    """wrk's durable PUTs of new keys; (requests/s, 2xx count)."""
    args = ["wrk", "-t2", "-c64", f"-d{duration}s", "-s", os.path.join(run.BENCH, "put_distinct.lua"),
            f"http://127.0.0.1:{port}"]
    env = {**os.environ, "STYLE": style, "PREFIX": prefix}
    out = subprocess.run(args, env=env, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, total - (int(non2xx.group(1)) if non2xx else 0)


def start_watchers(count, cmd_for):
    """`count` curl processes streaming into files; [(process, path)]."""
    watchers = []
    for i in range(count):
        path = os.path.join(run.WORK, f"watch-{time.monotonic_ns()}-{i}.out")
        out = open(path, "wb")
        proc = subprocess.Popen(cmd_for(), stdout=out, stderr=subprocess.DEVNULL)
        watchers.append((proc, path, out))
    time.sleep(0.5)  # the streams are open before the load starts
    return watchers


def drain(watchers, count_events, expected, seconds=30):
    """Waits until every watcher has `expected` events (or `seconds`);
    returns (events per watcher, seconds after the load until the last)."""
    started = time.monotonic()
    counts = [0] * len(watchers)
    while time.monotonic() - started < seconds:
        counts = [count_events(path) for _, path, _ in watchers]
        if all(c >= expected for c in counts):
            break
        time.sleep(0.1)
    waited = time.monotonic() - started
    for proc, _, out in watchers:
        proc.kill()
        proc.wait()
        out.close()
    return counts, waited


def exdaas_events(path):
    with open(path, "rb") as f:
        return sum(1 for line in f if line.startswith(b"event: put"))


def etcd_events(path):
    n = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                n += len(json.loads(line).get("result", {}).get("events", []))
            except ValueError:
                pass
    return n


def watch_round(system, watchers, duration):
    prefix = "feed"
    if system == "exdaas":
        port = run.free_port()
        server = run.start_exdaas(f"feed-{watchers}", port)
        cmd = lambda: ["curl", "-sN", f"http://127.0.0.1:{port}/v1/watch?prefix={prefix}-"]
        count = exdaas_events
    else:
        server, port = run.start_etcd(f"etcd-feed-{watchers}")
        key = base64.b64encode(prefix.encode()).decode()
        end = base64.b64encode(b"feee").decode()  # the prefix's range end ("feed" + 1)
        body = json.dumps({"create_request": {"key": key, "range_end": end}})
        cmd = lambda: ["curl", "-sN", "-X", "POST", f"http://127.0.0.1:{port}/v3/watch", "-d", body]
        count = etcd_events
    running = start_watchers(watchers, cmd)
    rps, written = put_load(port, system, duration, prefix)
    counts, after = drain(running, count, written)
    run.stop(server)
    per_watcher = min(counts) / duration if counts else 0.0
    result = {"system": system, "watchers": watchers, "put_rps": round(rps), "written": written,
              "events_per_watcher_per_s": round(per_watcher), "all_delivered": all(c >= written for c in counts),
              "last_event_after_load_s": round(after, 2) if counts else None}
    print(result, flush=True)
    return result


def ready(port):
    status, body = run.request(port, "GET", "/ready")
    return json.loads(body)


def replica_round(replicas, duration):
    port = run.free_port()
    primary = run.start_exdaas(f"primary-{replicas}", port)
    nodes = []
    for i in range(replicas):
        rport = run.free_port()
        config = f'[replication]\nprimary = "http://127.0.0.1:{port}"\npoll_wait_ms = 1000\n'
        nodes.append((run.start_exdaas(f"replica-{replicas}-{i}", rport, config=config), rport))
    rps, written = put_load(port, "exdaas", duration, "rep")
    _, body = run.request(port, "GET", "/v1/changes?wait=0")
    head = json.loads(body)["revision"]
    lags, catch_up = [], []
    for _, rport in nodes:
        lags.append(head - ready(rport)["replication"]["applied_revision"])
    started = time.monotonic()
    for _, rport in nodes:
        while ready(rport)["replication"]["applied_revision"] < head and time.monotonic() - started < 60:
            time.sleep(0.05)
        catch_up.append(round(time.monotonic() - started, 2))
    for proc, _ in nodes:
        run.stop(proc)
    run.stop(primary)
    result = {"replicas": replicas, "put_rps": round(rps), "lag_at_load_end": lags, "caught_up_after_s": catch_up}
    print(result, flush=True)
    return result


def report(watch, replicas, duration):
    base = {r["system"]: r["put_rps"] for r in watch if r["watchers"] == 0}
    lines = [
        "# Change feed and replicas",
        "",
        f"Run {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {platform.node()}, {os.cpu_count()} CPUs, "
        f"with `python3 bench/feed.py --duration {duration}`: wrk (2 threads, 64 connections) PUTs new keys "
        "for the duration while the watchers (curl) stream them; every server on loopback in the same run.",
        "",
        "| system | watchers | PUT req/s | PUT vs 0 watchers | events/s to each watcher | all delivered | last event after the load (s) |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in watch:
        ratio = r["put_rps"] / base[r["system"]] if base.get(r["system"]) else 0
        lines.append(f"| {r['system']} | {r['watchers']} | {r['put_rps']} | {ratio:.2f} | "
                     f"{r['events_per_watcher_per_s'] if r['watchers'] else '-'} | "
                     f"{r['all_delivered'] if r['watchers'] else '-'} | {r['last_event_after_load_s'] if r['watchers'] else '-'} |")
    ex = {r["watchers"]: r for r in watch if r["system"] == "exdaas"}
    et = {r["watchers"]: r for r in watch if r["system"] == "etcd"}
    lines += ["", "| ratio | measured |", "|---|---:|"]
    for n in (1, 16):
        if n in ex and n in et and et[n]["events_per_watcher_per_s"]:
            lines.append(f"| exdaas / etcd events per watcher per second, {n} watcher(s) | "
                         f"{ex[n]['events_per_watcher_per_s'] / et[n]['events_per_watcher_per_s']:.2f} |")
    lines += ["", "| replicas | primary PUT req/s | vs 0 replicas | lag at the load's end (revisions) | caught up after (s) |",
              "|---:|---:|---:|---|---|"]
    zero = next((r["put_rps"] for r in replicas if r["replicas"] == 0), 0)
    for r in replicas:
        lines.append(f"| {r['replicas']} | {r['put_rps']} | {r['put_rps'] / zero:.2f} | "
                     f"{', '.join(map(str, r['lag_at_load_end'])) or '-'} | {', '.join(map(str, r['caught_up_after_s'])) or '-'} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(run.BENCH, "FEED.md"))
    parser.add_argument("--exdaas", default=run.EXDAAS)
    args = parser.parse_args()
    run.EXDAAS = args.exdaas
    watch = []
    for watchers in (0, 1, 16):
        for system in ("exdaas", "etcd"):
            watch.append(watch_round(system, watchers, args.duration))
    replicas = [replica_round(n, args.duration) for n in (0, 1, 3)]
    text = report(watch, replicas, args.duration)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
