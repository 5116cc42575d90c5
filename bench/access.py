#!/usr/bin/env python3
"""What access control and TLS cost, side by side in one run:

- a cached GET and a durable PUT over TLS beside the same over plain HTTP;
- a cached GET by a token with 100 prefix rules (the one that matches it
  checked last) beside the same GET by a token with a role over every key.

    python3 bench/access.py [--binary target/release/exdaas] [--rounds 3] [--duration 8]

Every scenario runs on a server of its own with a fresh data directory;
rounds alternate the order so the machine's drift hits all alike. Each
line is the median over rounds, and each ratio compares figures of the
same round. The summary is printed and written to bench/ACCESS.md.
"""

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the shared helpers: start, stop, wrk, free_port)

GLOBAL = "Bearer bench-global-token-0123456789"
SCOPED = "Bearer bench-scoped-token-0123456789"
RULES = 100
VALUE = '{"name":"benchmark user","email":"user@example.com","age":42,"tags":["a","b"],"active":true,"x":1}'


def certificate():
    """A self-signed certificate for 127.0.0.1 (wrk does not verify it)."""
    cert, key = os.path.join(run.WORK, "access.crt"), os.path.join(run.WORK, "access.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def config(tls):
    """Two tokens: one over every key, one with RULES prefix rules whose
    match for the benchmark key (`t099/...`) comes last among equals."""
    rules = ", ".join(f'{{ prefix = "t{i:03}/", access = "write" }}' for i in range(RULES))
    text = (
        "[auth]\ntokens = [\n"
        f'  {{ name = "global", token = "{GLOBAL.split()[1]}", role = "admin" }},\n'
        f'  {{ name = "scoped", token = "{SCOPED.split()[1]}", rules = [{rules}] }},\n]\n'
    )
    if tls:
        text += f'[tls]\ncert_file = "{tls[0]}"\nkey_file = "{tls[1]}"\n'
    return text


SCENARIOS = {
    # name: (tls, method, token)
    "get_plain": (False, "GET", GLOBAL),
    "get_tls": (True, "GET", GLOBAL),
    "put_plain": (False, "PUT", GLOBAL),
    "put_tls": (True, "PUT", GLOBAL),
    "get_global_token": (False, "GET", GLOBAL),
    "get_scoped_token": (False, "GET", SCOPED),
}


def one(name, spec, label, duration, cert):
    tls, method, token = spec
    port = run.free_port()
    server = run.start_exdaas(f"{label}-{name}", port, config=config(cert if tls else None))
    scheme = "https" if tls else "http"
    key = f"/v1/kv/t{RULES - 1:03}/item"
    if method == "GET":
        put = ["curl", "-sk", "-X", "PUT", "-H", "Content-Type: application/json", "-H", f"Authorization: {GLOBAL}",
               "-d", VALUE, f"{scheme}://127.0.0.1:{port}{key}"]
        subprocess.run(put, check=True, capture_output=True)
        env = {"METHOD": "GET", "URLPATH": key, "AUTH": token}
        got = run.wrk(port, "fixed.lua", duration, env, scheme=scheme)
    else:
        env = {"PREFIX": f"t{RULES - 1:03}/{label}", "AUTH": token}
        got = run.wrk(port, "put_distinct.lua", duration, env, scheme=scheme)
    run.stop(server)
    if got["non_2xx"] > got["requests"] / 100:
        sys.exit(f"{name}: {got['non_2xx']} of {got['requests']} answers were not 2xx")
    return got


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(run.ROOT, "target/release/exdaas"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    run.EXDAAS = args.binary
    os.makedirs(run.WORK, exist_ok=True)
    cert = certificate()
    rounds = []
    for r in range(args.rounds):
        names = list(SCENARIOS) if r % 2 == 0 else list(reversed(SCENARIOS))
        got = {n: one(n, SCENARIOS[n], f"acc{r}", args.duration, cert) for n in names}
        rounds.append(got)
        print(f"round {r}: " + ", ".join(f"{k} {v['rps']:.0f}/s" for k, v in got.items()), flush=True)
    pairs = [("get_tls", "get_plain"), ("put_tls", "put_plain"), ("get_scoped_token", "get_global_token")]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Access control and TLS beside their absence",
        "",
        f"Run {when} on {platform.node()}, {os.cpu_count()} CPUs, with "
        f"`python3 bench/access.py --rounds {args.rounds} --duration {args.duration}` "
        "(wrk 2 threads, 64 keep-alive connections, after a 2 s warm-up each; rounds alternate the order). "
        "Ratios compare figures of the same round only. The scoped token has "
        f"{RULES} prefix rules, and the one that matches is checked last.",
        "",
        "| scenario | req/s (median) | p99 ms (median) |",
        "|---|---:|---:|",
    ]
    for name in SCENARIOS:
        rps = statistics.median(x[name]["rps"] for x in rounds)
        p99 = statistics.median(x[name]["p99_ms"] for x in rounds)
        lines.append(f"| {name} | {rps:.0f} | {p99} |")
    lines += ["", "| comparison | ratio (median of rounds) | rounds |", "|---|---:|---|"]
    for a, b in pairs:
        each = [x[a]["rps"] / x[b]["rps"] for x in rounds]
        lines.append(f"| {a} / {b} | {statistics.median(each):.3f} | {', '.join(f'{v:.3f}' for v in each)} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    with open(os.path.join(run.BENCH, "ACCESS.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
