#!/usr/bin/env python3
"""Draws bench/results.json as one PNG a newcomer can read: for each
scenario, named in words, every system's throughput on a linear scale
(higher is better) with exdaas's goals marked, answers that were not 2xx
called out, and "not measured" written where a system did not run; then
p99 latency (lower is better); then how exdaas's cost grows with the keys
stored.

Called by run.py at the end of a run; `python3 bench/chart.py` redraws the
chart from the last results.json.
"""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import goals  # noqa: E402  (the goals the report checks)

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


def words(name):
    return goals.SCENARIO_NAMES.get(name, name.replace("_", " "))


def scenario_goals(results, name):
    """(req/s, label) of each goal exdaas has in scenario `name`."""
    out = []
    for _, scenario, reference, system, least in goals.THROUGHPUT:
        ref = results.get(reference, {}).get(system, {}).get("rps")
        if scenario == name and ref:
            short = {"http_floor": "floor", "webdis_redis": "webdis"}.get(system, system)
            whose = short if reference == scenario else words(reference)
            out.append((least * ref, f"goal: {least:g}x {whose}"))
    return out


def throughput(ax, results, name):
    """One scenario: a bar per system, labelled, linear from zero."""
    rows = list(reversed(SYSTEMS))
    top = max((results[name].get(s, {}).get("rps") or 0) for s in SYSTEMS)
    marks = scenario_goals(results, name)
    top = max([top] + [x for x, _ in marks]) or 1
    for y, system in enumerate(rows):
        measured = results[name].get(system)
        if measured is None:
            ax.text(top * 0.01, y, "not measured", va="center", fontsize=7, color="#718096", style="italic")
            continue
        rps = measured.get("rps") or 0
        ax.barh(y, rps, color=COLORS[system], height=0.7)
        label = f"{rps:,.0f}/s"
        bad = measured.get("non_2xx") or 0
        ax.text(rps + top * 0.01, y, label, va="center", fontsize=7)
        if bad:
            ax.text(top * 1.28, y, f"{bad:,} answers not 2xx", va="center", ha="right", fontsize=7, color="#c53030", weight="bold")
    # Each goal is a numbered tick on exdaas's bar, spelled out in the
    # title: green when met, red when not.
    exdaas_row = rows.index("exdaas")
    ours = results[name].get("exdaas", {}).get("rps") or 0
    for i, (x, _) in enumerate(marks, start=1):
        color = "#2f855a" if ours >= x else "#c53030"
        ax.plot([x, x], [exdaas_row - 0.45, exdaas_row + 0.45], color=color, linewidth=2)
        # Alternately above and below the bar, so close goals stay legible.
        above = i % 2 == 1
        ax.text(x, exdaas_row + (0.42 if above else -0.42), f"g{i}", fontsize=6, ha="center",
                va="bottom" if above else "top")
    spelled = "; ".join(f"g{i} {label[len('goal: '):]}" for i, (_, label) in enumerate(marks, start=1))
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([goals.SYSTEM_NAMES[s] for s in rows], fontsize=7)
    ax.set_xlim(0, top * 1.3)
    ax.set_ylim(-0.6, len(rows) - 0.1)
    ax.tick_params(axis="x", labelsize=7)
    title = f"{words(name)}: req/s, higher is better"
    if spelled:
        title += f"\ngoals (ticks, green = met): {spelled}"
    ax.set_title(title, fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def latency(ax, results, names):
    """p99 of every system in every scenario, grouped by scenario."""
    width = 0.8 / len(SYSTEMS)
    for i, system in enumerate(SYSTEMS):
        for j, name in enumerate(names):
            value = results[name].get(system, {}).get("p99_ms")
            y = j + (i - (len(SYSTEMS) - 1) / 2) * width
            if value is None:
                continue
            ax.barh(y, value, width, color=COLORS[system], label=goals.SYSTEM_NAMES[system] if j == 0 or not ax.get_legend_handles_labels()[1].count(goals.SYSTEM_NAMES[system]) else None)
            ax.text(value, y, f" {value:g}", va="center", fontsize=6)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([words(n) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("p99 latency, ms (systems a scenario did not measure have no bar)", fontsize=8)
    ax.set_title("p99 latency: lower is better", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")


def growth(ax, results):
    points = sorted(results.get("growth", {}).items(), key=lambda kv: int(kv[0]))
    if not points:
        ax.set_visible(False)
        return
    keys = [int(k) / 1e6 for k, _ in points]
    ax.plot(keys, [g["put_rps"] for _, g in points], "o-", color=COLORS["exdaas"], label="durable PUT req/s (higher is better)")
    ax.plot(keys, [g["get_rps"] for _, g in points], "s--", color="#553c9a", label="cached GET req/s (higher is better)")
    ax.set_xlabel("keys stored (millions)", fontsize=8)
    ax.set_ylabel("req/s", fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(keys, [g["put_p99_ms"] for _, g in points], "o:", color="#dd6b20", label="PUT p99 ms (lower is better)")
    twin.plot(keys, [g["get_p99_ms"] for _, g in points], "s:", color="#d69e2e", label="GET p99 ms (lower is better)")
    twin.set_ylabel("p99 ms", fontsize=8)
    twin.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower left")
    ax.set_title("exdaas as the key count grows", fontsize=9)


def draw(results_json, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(results_json) as f:
        doc = json.load(f)
    results = doc["results"]
    names = scenarios(results)
    rows = math.ceil(len(names) / 2)
    fig = plt.figure(figsize=(12, 3.0 * rows + 9))
    grid = fig.add_gridspec(rows + 2, 2, height_ratios=[1] * rows + [1.8, 1.4])
    for k, name in enumerate(names):
        throughput(fig.add_subplot(grid[k // 2, k % 2]), results, name)
    latency(fig.add_subplot(grid[rows, :]), results, names)
    growth(fig.add_subplot(grid[rows + 1, :]), results)
    fig.suptitle(f"exdaas benchmark, {doc['date']}, {doc.get('machine', '')}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(png, dpi=90)
    plt.close(fig)
    print(f"chart: {png}", flush=True)


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    draw(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results.json"),
         sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "results.png"))
