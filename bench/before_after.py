#!/usr/bin/env python3
"""Two exdaas binaries side by side in one run: durable PUTs of distinct
keys and cached GETs, alternating the binaries round by round so that the
machine's drift hits both alike, and, with --backup-under-load, the pause a
storage cut costs the writers (from the server's own "storage cut taken"
log lines) while a backup streams during the PUT load, and, with --plugin,
durable PUTs through the require-fields validator (reported as a ratio to
the same binary's plain PUTs, the plugin path's cost). --before-module and
--after-module give each side its own build of the validator (by default
both run examples/dist/require_fields.wasm), for changes to the guest SDK.

    python3 bench/before_after.py --before OLD_BIN --after NEW_BIN [--rounds 3] [--duration 10]
        [--plugin [--before-module OLD.wasm] [--after-module NEW.wasm]]

Prints each round's figures and the after/before ratio of the medians.
Servers run on loopback with fresh data directories and are stopped by PID.
"""

import argparse
import os
import re
import statistics
import sys
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the shared helpers: start, stop, wrk, free_port)

HOT = '{"name":"benchmark user","email":"user@example.com","age":42}'


def measure_plugin_put(binary, module, label, duration):
    """Durable PUTs of distinct keys through the require-fields validator."""
    run.EXDAAS = binary
    port = run.free_port()
    config = (
        '[[plugins]]\nname = "require-fields"\npath = "%s"\n'
        'config = { required = { name = "string", email = "string", age = "number" } }\n' % module
    )
    server = run.start_exdaas(label + "-plugin", port, config=config)
    put = run.wrk(port, "put_distinct.lua", duration, {"STYLE": "exdaas", "PREFIX": label})
    run.stop(server)
    return put


def measure(binary, label, duration, backup):
    run.EXDAAS = binary
    port = run.free_port()
    env = {"EXDAAS_LOG": "info"} if backup else None
    server = run.start_exdaas(label, port, extra_env=env)
    run.request(port, "PUT", "/v1/kv/bench-hot", HOT, {"Content-Type": "application/json"})
    get = run.wrk(port, "fixed.lua", duration, {"URLPATH": "/v1/kv/bench-hot"})
    backups = []
    if backup:
        def take():
            # Once the PUT load is up (after its 2 s warm-up), stream backups.
            threading.Event().wait(duration / 2 + 2)
            for _ in range(3):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/admin/backup", timeout=120) as r:
                    backups.append(len(r.read()))
        taker = threading.Thread(target=take)
        taker.start()
    put = run.wrk(port, "put_distinct.lua", duration, {"STYLE": "exdaas", "PREFIX": label})
    if backup:
        taker.join()
    run.stop(server)
    pauses = []
    with open(os.path.join(run.WORK, label + ".log")) as f:
        for line in f:
            if "storage cut taken" in line:
                m = re.search(r"pause_us=(\d+)", line)
                w = re.search(r"wait_us=(\d+)", line)
                p = re.search(r"pending=(\d+)", line)
                if m:
                    pauses.append((int(m.group(1)), int(w.group(1)) if w else 0, int(p.group(1)) if p else 0))
    return put, get, pauses


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--backup-under-load", action="store_true")
    parser.add_argument("--plugin", action="store_true")
    parser.add_argument("--before-module", default=run.PLUGIN)
    parser.add_argument("--after-module", default=run.PLUGIN)
    args = parser.parse_args()
    # Servers run in the work directory: the modules' paths must not be relative.
    modules = {"before": os.path.abspath(args.before_module), "after": os.path.abspath(args.after_module)}
    results = {"before": ([], [], []), "after": ([], [], [])}
    for r in range(args.rounds):
        order = [("before", args.before), ("after", args.after)]
        if r % 2:
            order.reverse()
        for name, binary in order:
            put, get, pauses = measure(binary, f"{name}-{r}", args.duration, args.backup_under_load and name == "after")
            results[name][0].append(put)
            results[name][1].append(get)
            line = f"round {r} {name:6}: PUT {put['rps']:9.0f}/s p99 {put['p99_ms']} ms | GET {get['rps']:9.0f}/s p99 {get['p99_ms']} ms"
            if args.plugin:
                plugin = measure_plugin_put(binary, modules[name], f"{name}-{r}", args.duration)
                results[name][2].append(plugin)
                line += f" | plugin PUT {plugin['rps']:9.0f}/s ({plugin['rps'] / put['rps']:.3f} of PUT)"
            if pauses:
                line += " | cuts (pause us, wait us, pending): " + ", ".join(map(str, pauses))
            print(line, flush=True)
    figures = ["durable PUT", "cached GET"] + (["plugin PUT"] if args.plugin else [])
    for i, what in enumerate(figures):
        before = statistics.median(x["rps"] for x in results["before"][i])
        after = statistics.median(x["rps"] for x in results["after"][i])
        print(f"{what}: before {before:.0f}/s, after {after:.0f}/s, after/before {after / before:.3f}")
    if args.plugin:
        for name in ("before", "after"):
            ratios = [p["rps"] / q["rps"] for p, q in zip(results[name][2], results[name][0])]
            print(f"{name}: plugin PUT / PUT, median of rounds {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
