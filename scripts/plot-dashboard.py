#!/usr/bin/env python3
"""Draws the main panels of the Grafana dashboard from a run of tests/tests/dashboards.rs.

No Grafana is needed: the test evaluates every dashboard target through Prometheus's
/api/v1/query_range and, with TIERCACHE_DASHBOARD_DUMP=<file>, writes the series it got. This
script plots four panels from that file, as the dashboard shows them: request rate by method and
status, hit ratio, p99 latency by method, and degraded mode per replica. The Redis stall is shaded.

    TIERCACHE_DASHBOARD_DUMP=/tmp/dashboard.json \\
        cargo nextest run -p tiercache-e2e --test dashboards
    python scripts/plot-dashboard.py /tmp/dashboard.json docs/img/dashboard.png

Needs matplotlib (docs/observability.md, "What the dashboard shows", says where it came from).
"""

import argparse
import json
import math
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def legend(fmt, labels):
    """Grafana's legendFormat: {{label}} replaced by the series' label value, names shortened."""
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt or "")
    text = text.replace("tiercache.v1.", "").replace("CacheService/", "").replace("LockService/", "")
    return " ".join(text.split()) or json.dumps(labels)


def find(targets, title_word, ref=None):
    """The targets of the first panel whose title contains title_word (and refId ref)."""
    out = [t for t in targets if title_word in t["panel"].lower() and (ref is None or t["refId"] == ref)]
    if not out:
        sys.exit(f"no panel titled like {title_word!r} in the dump")
    panel = out[0]["panel"]
    return [t for t in out if t["panel"] == panel]


def active(series):
    """Whether a series is ever non-zero: all-zero rows (idle namespaces) only crowd the legend."""
    return any(v not in (None, 0) for _, v in series["points"])


def plot(ax, targets, keep=lambda t: True):
    """Every active series of the targets, with its legend: 10 colours, then dashed, then dotted."""
    lines = [(legend(t["legendFormat"], s["labels"]), s) for t in targets if keep(t) for s in t["series"] if active(s)]
    colours = plt.get_cmap("tab10").colors
    for i, (name, s) in enumerate(sorted(lines, key=lambda x: x[0])):
        xs, ys = points(s, T0[0])
        style = ["-", "--", ":"][(i // 10) % 3]
        ax.plot(xs, ys, style, label=name, linewidth=1.5, color=colours[i % 10])


T0 = [0.0]


def points(series, t0):
    xs, ys = [], []
    for t, v in series["points"]:
        xs.append(t - t0)
        ys.append(float("nan") if v is None else v)
    return xs, ys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump", help="the JSON written by tests/tests/dashboards.rs (TIERCACHE_DASHBOARD_DUMP)")
    ap.add_argument("out", help="the PNG to write")
    args = ap.parse_args()
    with open(args.dump) as f:
        run = json.load(f)
    targets = run["targets"]
    t0 = run["traffic_start"]
    T0[0] = t0
    stall = [s - t0 for s in run["stall"]]

    fig, axes = plt.subplots(4, 1, figsize=(11, 12), sharex=True, gridspec_kw={"height_ratios": [3, 3, 3, 1.3]})
    fig.suptitle(
        "tiercache dashboard, two replicas on one Redis, 1 s scrapes "
        f"(Redis stalled {stall[1] - stall[0]:.0f} s, shaded)",
        fontsize=13,
    )

    # Request rate: every method and status of the RPC rate panel.
    ax = axes[0]
    plot(ax, find(targets, "rpc rate"))
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.05)
    ax.set_title("RPC rate by method and status")
    ax.set_ylabel("calls/s (log)")

    # Hit ratio: every target of the hit ratio panel.
    ax = axes[1]
    plot(ax, find(targets, "hit ratio"))
    ax.axhline(
        run["expected_hit_ratio"],
        color="black",
        linestyle=":",
        linewidth=1,
        label=f"sent to 'ratio': {run['expected_hit_ratio']:.2f}",
    )
    ax.set_title("Hit ratio by namespace (and tier)")
    ax.set_ylabel("ratio")
    ax.set_ylim(-0.05, 1.05)

    # p99 latency by method.
    ax = axes[2]
    plot(ax, find(targets, "rpc latency"), keep=lambda t: "(0.99" in t["expr"].replace(" ", ""))
    slow = run["slowest_call_s"]
    ax.axhline(slow, color="black", linestyle=":", linewidth=1, label=f"slowest call seen by the client ({slow:.2f} s)")
    ax.axhline(2 * slow, color="red", linestyle="--", linewidth=1, label="2× that: the test's limit")
    ax.set_yscale("log")
    ax.set_title("RPC latency p99 by method")
    ax.set_ylabel("seconds (log)")

    # Degraded mode, one row per replica, as a state timeline.
    ax = axes[3]
    series = [s for t in find(targets, "degraded") for s in t["series"]]
    names = []
    for i, s in enumerate(sorted(series, key=lambda s: json.dumps(s["labels"]))):
        xs, ys = points(s, t0)
        names.append(s["labels"].get("instance", f"series {i}"))
        for x, y in zip(xs, ys):
            if not math.isnan(y):
                ax.barh(i, 1.0, left=x - 0.5, height=0.6, color="tab:red" if y >= 1 else "tab:green", linewidth=0)
    ax.set_yticks(range(len(names)), names)
    ax.set_title("Degraded mode per replica (green OK, red DEGRADED)")
    ax.set_xlabel("seconds since the traffic started")

    for ax in axes:
        ax.axvspan(stall[0], stall[1], color="grey", alpha=0.18, linewidth=0)
        ax.grid(True, alpha=0.3)
        if ax is not axes[3]:
            ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axes[3].set_xlim(run["start"] - t0, run["end"] - t0)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
