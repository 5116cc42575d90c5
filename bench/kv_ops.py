#!/usr/bin/env python3
"""The KV operations beside a plain durable PUT, side by side in one run:
PUT with a TTL, PATCH (merge patch) of existing keys, increments of
counters, and a 4-key transaction across shards; and, when `etcd` is on
PATH, etcd's PUT and 4-key Txn through its JSON gateway as the reference.

    python3 bench/kv_ops.py [--binary target/release/exdaas] [--rounds 3] [--duration 10]

Scenarios alternate order round by round so the machine's drift hits all
alike; each line of the summary is the median over rounds and its ratio to
the same round's plain PUT (for etcd: to etcd's PUT). Servers run on
loopback with fresh data directories and are stopped by PID. The summary
is printed and written to bench/KV_OPS.md.
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the shared helpers: start, stop, wrk, free_port)

SCENARIOS = ["put", "put_ttl", "patch", "incr", "txn4"]
KEYS = 1000


def exdaas_round(binary, label, duration, order):
    """Each scenario on a server of its own with an empty data directory,
    so none runs against what another left (or its appliers still apply)."""
    run.EXDAAS = binary
    out = {}
    for op in order:
        port = run.free_port()
        server = run.start_exdaas(f"{label}-{op}", port)
        if op == "patch":
            doc = '{"name":"benchmark user","email":"user@example.com","age":42}'
            for i in range(KEYS):
                run.request(port, "PUT", f"/v1/kv/{label}/doc/{i}", doc, {"Content-Type": "application/json"})
        env = {"OP": op, "PREFIX": label, "KEYS": str(KEYS)}
        out[op] = run.wrk(port, "kv_ops.lua", duration, env)
        run.stop(server)
    return out


def etcd_round(label, duration):
    etcd, cport = run.start_etcd(label)
    out = {}
    for op in ["etcd_put", "etcd_txn4"]:
        out[op] = run.wrk(cport, "kv_ops.lua", duration, {"OP": op, "PREFIX": label})
    run.stop(etcd)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(run.ROOT, "target/release/exdaas"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    args = parser.parse_args()
    rounds = []
    with_etcd = shutil.which("etcd") is not None
    for r in range(args.rounds):
        order = SCENARIOS if r % 2 == 0 else list(reversed(SCENARIOS))
        got = exdaas_round(args.binary, f"ops{r}", args.duration, order)
        if with_etcd:
            got.update(etcd_round(f"etcd{r}", args.duration))
        rounds.append(got)
        print(f"round {r}: " + ", ".join(f"{k} {v['rps']:.0f}/s" for k, v in got.items()), flush=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Key-value operations beside a plain PUT",
        "",
        f"Run {when} on {platform.node()}, {os.cpu_count()} CPUs, with "
        f"`python3 bench/kv_ops.py --rounds {args.rounds} --duration {args.duration}` "
        "(wrk 2 threads, 64 connections, after a 2 s warm-up each; rounds alternate the order). "
        "Ratios compare figures of the same round only.",
        "",
        "| operation | req/s (median) | p99 ms (median) | ratio to its PUT (median of rounds) |",
        "|---|---:|---:|---:|",
    ]
    for op in rounds[0]:
        base = "etcd_put" if op.startswith("etcd") else "put"
        rps = statistics.median(x[op]["rps"] for x in rounds)
        p99 = statistics.median(x[op]["p99_ms"] for x in rounds)
        ratio = statistics.median(x[op]["rps"] / x[base]["rps"] for x in rounds)
        lines.append(f"| {op} | {rps:.0f} | {p99} | {ratio:.3f} |")
    if with_etcd:
        ratio = statistics.median(x["txn4"]["rps"] / x["etcd_txn4"]["rps"] for x in rounds)
        lines += ["", f"4-key transaction, exdaas / etcd, median of rounds: {ratio:.2f}"]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    with open(os.path.join(run.BENCH, "KV_OPS.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
