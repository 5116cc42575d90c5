#!/usr/bin/env python3
"""Draws bench/results.json as one PNG: throughput and p99 per scenario and
system, and how exdaas's cost grows with the number of keys stored.

Called by run.py at the end of a run; `python3 bench/chart.py` redraws the
chart from the last results.json.
"""

import json
import os
import sys

SYSTEMS = ["exdaas", "http_floor", "webdis_redis", "etcd"]
COLORS = {"exdaas": "#2b6cb0", "http_floor": "#a0aec0", "webdis_redis": "#c53030", "etcd": "#2f855a"}


def scenarios(results):
    """Scenarios measured for at least one system, without the growth points."""
    out = []
    for name, systems in results.items():
        if "@" in name or not isinstance(systems, dict):
            continue
        if systems and all(isinstance(v, dict) and "rps" in v for v in systems.values()):
            out.append(name)
    return out


def grouped_bars(ax, results, names, field, ylabel, log=False):
    width = 0.8 / len(SYSTEMS)
    for i, system in enumerate(SYSTEMS):
        xs, ys = [], []
        for j, name in enumerate(names):
            value = results[name].get(system, {}).get(field)
            if value is not None:
                xs.append(j + (i - (len(SYSTEMS) - 1) / 2) * width)
                ys.append(value)
        if xs:
            ax.bar(xs, ys, width, label=system, color=COLORS[system])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def growth(ax, results):
    points = sorted(results.get("growth", {}).items(), key=lambda kv: int(kv[0]))
    if not points:
        ax.set_visible(False)
        return
    keys = [int(k) / 1e6 for k, _ in points]
    ax.plot(keys, [g["put_rps"] for _, g in points], "o-", color=COLORS["exdaas"], label="durable PUT req/s")
    ax.plot(keys, [g["get_rps"] for _, g in points], "s--", color="#553c9a", label="cached GET req/s")
    ax.set_xlabel("keys stored (millions)")
    ax.set_ylabel("req/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(keys, [g["put_p99_ms"] for _, g in points], "o:", color="#dd6b20", label="PUT p99 ms")
    twin.plot(keys, [g["get_p99_ms"] for _, g in points], "s:", color="#d69e2e", label="GET p99 ms")
    twin.set_ylabel("p99 ms")
    twin.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    ax.set_title("exdaas as the key count grows", fontsize=10)


def draw(results_json, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(results_json) as f:
        doc = json.load(f)
    results = doc["results"]
    names = scenarios(results)
    fig, axes = plt.subplots(3, 1, figsize=(11, 13))
    grouped_bars(axes[0], results, names, "rps", "req/s (log)", log=True)
    axes[0].set_title(f"Throughput, {doc['date']}", fontsize=10)
    axes[0].legend(fontsize=8)
    grouped_bars(axes[1], results, names, "p99_ms", "p99 ms")
    axes[1].set_title("p99 latency", fontsize=10)
    growth(axes[2], results)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    print(f"chart: {png}", flush=True)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    draw(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results.json"),
         sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "results.png"))
