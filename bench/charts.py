"""PNG charts from results.json (run with the bench venv's Python, which has
matplotlib): python -m bench.charts results.json OUTDIR. Prints the files."""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["uproxy", "uproxy-buffered", "uproxy-splice-iowq", "uproxy-sockmap", "nginx", "nginx-bigbuf", "haproxy", "haproxy-splice",
         "envoy", "traefik", "traefik-fast", "caddy"]
COLORS = {"uproxy": "#d62728", "nginx": "#2ca02c", "haproxy": "#1f77b4", "envoy": "#9467bd",
          "traefik": "#ff7f0e", "caddy": "#8c564b"}


def bars(ax, res, workload, key, title, unit):
    s = res["summary"].get(workload, {})
    names = [n for n in ORDER if n in s and s[n].get("metrics", {}).get(key)]
    names += [n for n in s if n not in ORDER and s[n].get("metrics", {}).get(key)]
    if not names:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    med = [s[n]["metrics"][key]["median"] for n in names]
    lo = [m - s[n]["metrics"][key]["min"] for m, n in zip(med, names)]
    hi = [s[n]["metrics"][key]["max"] - m for m, n in zip(med, names)]
    labels = [res["contenders"][n]["label"] for n in names]
    colors = [COLORS.get(res["contenders"][n]["family"], "#7f7f7f") for n in names]
    y = range(len(names))
    ax.barh(list(y), med, xerr=[lo, hi], color=colors, capsize=3)
    if min(med) > 0 and max(med) / min(med) > 50:
        ax.set_xscale("log")     # latencies can span milliseconds to seconds
        unit += ", log scale"
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit, fontsize=8)
    for i, m in enumerate(med):
        ax.text(m, i, f" {m:.3g}", va="center", fontsize=7)
    # uproxy rows that are not available yet
    pending = [n for n in s if res["contenders"].get(n, {}).get("family") == "uproxy"
               and not s[n].get("metrics") and not str(s[n].get("skipped", "")).startswith("same as")]
    if pending:
        ax.text(0.99, 0.02, "uproxy: not available yet", ha="right", va="bottom", fontsize=7,
                color="#d62728", transform=ax.transAxes)


def main():
    path, out = sys.argv[1], sys.argv[2]
    with open(path) as f:
        res = json.load(f)
    sub = "median of %d round(s), bars: min–max%s" % (res["settings"]["rounds"],
                                                     " — QUICK RUN" if res.get("quick") else "")
    files = []

    fig, axs = plt.subplots(1, 3, figsize=(15, 4.2))
    bars(axs[0], res, "http64", "cpu_us_per_req", "HTTP keep-alive 64 B", "proxy CPU-µs per request (lower is better)")
    bars(axs[1], res, "http64k", "cpu_us_per_req", "HTTP keep-alive 64 KiB", "proxy CPU-µs per request (lower is better)")
    bars(axs[2], res, "newconn", "cpu_us_per_req", "New connection per request", "proxy CPU-µs per request (lower is better)")
    fig.suptitle("Proxy CPU per request, one worker each — " + sub, fontsize=10)
    fig.tight_layout()
    fig.savefig(f"{out}/bench-cpu.png", dpi=110)
    files.append("bench-cpu.png")

    fig, axs = plt.subplots(1, 4, figsize=(18, 4.2))
    bars(axs[0], res, "l4_1", "gbps", "L4, one stream", "Gbit/s (higher is better)")
    bars(axs[1], res, "l4_1", "cpu_s_per_gib", "L4, one stream", "proxy CPU-s per GiB (lower is better)")
    bars(axs[2], res, "l4_64", "gbps", "L4, 64 streams", "Gbit/s (higher is better)")
    bars(axs[3], res, "l4_64", "cpu_s_per_gib", "L4, 64 streams", "proxy CPU-s per GiB (lower is better)")
    fig.suptitle("L4 TCP through the proxy (iperf3) — " + sub, fontsize=10)
    fig.tight_layout()
    fig.savefig(f"{out}/bench-l4.png", dpi=110)
    files.append("bench-l4.png")

    fig, axs = plt.subplots(1, 3, figsize=(15, 4.2))
    rate = res.get("rate", {}).get("offered_rps")
    bars(axs[0], res, "rate", "p50_ms", "p50 at %s req/s" % (f"{rate:,.0f}" if rate else "?"), "ms (lower is better)")
    bars(axs[1], res, "rate", "p99_ms", "p99 at the same rate", "ms (lower is better)")
    bars(axs[2], res, "idle", "kib_per_conn", "Memory per idle connection", "KiB of RSS (lower is better)")
    fig.suptitle("Latency at a fixed rate (60% of nginx's peak) and idle memory — " + sub, fontsize=10)
    fig.tight_layout()
    fig.savefig(f"{out}/bench-latency-memory.png", dpi=110)
    files.append("bench-latency-memory.png")
    for f in files:
        print(f)


if __name__ == "__main__":
    main()
