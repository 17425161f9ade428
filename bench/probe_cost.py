"""What `uproxy top`'s eBPF probes cost the proxy (issue 15): uproxy alone,
HTTP/1.1 keep-alive 64 B (wrk, as http64), in pairs of runs with the
probes detached and attached at the dashboard's default duty cycle, the
order swapped every pair so that drift on a shared machine hits both sides.
The figure is the proxy's CPU per request, with the probes' own run time
from the kernel's accounting (kernel.bpf_stats_enabled) beside it; the
per-pair ratios give a mean and a 95% confidence interval, and the result
says whether the run resolved 3% (the interval's half-width under 3%).

Needs root, bcc and kernel headers (as `uproxy top` does); otherwise it says
why and is skipped."""
from __future__ import annotations

import math
import os
import statistics
import sys

from . import workloads

STATS = "/proc/sys/kernel/bpf_stats_enabled"
# two-sided 95% Student t quantiles by degrees of freedom
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
        12: 2.18, 15: 2.13, 20: 2.09, 30: 2.04}


def _t95(df: int) -> float:
    for k in sorted(_T95, reverse=True):
        if df >= k:
            return _T95[k]
    return _T95[1]


def _probes():
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from uproxy.telemetry import probes
    return probes


def measure(ctx, say, pairs: int, seconds: float) -> dict:
    try:
        probes = _probes()
    except Exception as e:  # bcc or uproxy not importable here
        return {"skipped": f"the probes cannot be imported here: {e}"}
    av = probes.availability()
    if not av["ok"]:
        return {"skipped": f"{av['why']} ({av['fix']})"}
    from .peers.uproxy import Uproxy
    cont = Uproxy(ctx)
    if cont.missing() or cont.http_available():
        return {"skipped": cont.missing() or cont.http_available()}
    # the dashboard's duty cycle (uproxy top: UPROXY_PROBE_DUTY, default 0.1)
    duty = float(os.environ.get("UPROXY_PROBE_DUTY", "0.1"))
    cont.start(0)
    rows, progs, reqs_on = [], {}, 0
    try:
        with open(STATS) as f:
            stats_was = f.read().strip()
        workloads.warm(ctx, cont, "/64")
        for i in range(pairs):
            pair = {}
            for side in (("off", "on") if i % 2 == 0 else ("on", "off")):
                pr = None
                if side == "on":
                    from uproxy import shm
                    pid = _uproxy_pid(cont)
                    snap = shm.Reader(pid).snapshot()
                    pr = probes.Probes(pid, snap["workers"], probes.listen_ports(pid),
                                       probes.upstream_ports(snap), duty=duty)
                    bad = {s: v for s, v in pr.status.items() if v["state"] == "error"}
                    if bad:
                        pr.close()
                        return {"skipped": f"probe sets did not load: {bad}"}
                    with open(STATS, "w") as f:
                        f.write("1")
                try:
                    r = workloads.wrk(ctx, cont, "/64", seconds, what=f"probes {side}")
                finally:
                    if pr:
                        with open(STATS, "w") as f:
                            f.write(stats_was)
                        for name, (runs, ns) in pr.prog_stats().items():
                            r0, n0 = progs.get(name, (0, 0))
                            progs[name] = (r0 + runs, n0 + ns)
                        pr.close()
                if side == "on":
                    reqs_on += r["requests"]
                pair[side] = r["cpu_us_per_req"]
            rows.append(pair)
            say(f"  probes pair {i + 1}/{pairs}: off {pair['off']:.2f}, on {pair['on']:.2f} CPU-µs/req "
                f"({100 * (pair['on'] / pair['off'] - 1):+.1f}%)")
    finally:
        cont.stop()
    ratios = [p["on"] / p["off"] for p in rows]
    mean = statistics.fmean(ratios)
    half = _t95(len(ratios) - 1) * statistics.stdev(ratios) / math.sqrt(len(ratios)) if len(ratios) > 1 else None
    own = sum(ns for _, ns in progs.values()) / reqs_on / 1000 if reqs_on else None
    return {"pairs": rows, "seconds": seconds, "duty": duty,
            "overhead_pct": 100 * (mean - 1), "ci95_pct": 100 * half if half is not None else None,
            "resolves_3pct": half is not None and half < 0.03,
            "off_us": statistics.median(p["off"] for p in rows),
            "on_us": statistics.median(p["on"] for p in rows),
            "probes_own_us_per_req": own,
            "programs": {n: {"runs_per_req": r / reqs_on, "ns_per_req": ns / reqs_on}
                         for n, (r, ns) in progs.items()} if reqs_on else {}}


def _uproxy_pid(cont) -> int:
    """The uproxy process (taskset execs it, so the started pid is uproxy's)."""
    return cont.proc.pid


def md(res) -> str:
    p = res.get("probe_cost")
    if not p:
        return "Not run in this run (`--probe-pairs N`; a full run makes 10 pairs).\n"
    if "skipped" in p:
        return f"Not measured: {p['skipped']}.\n"
    ci = f" ± {p['ci95_pct']:.1f}% (95% confidence, {len(p['pairs'])} pairs)" if p.get("ci95_pct") is not None else ""
    verdict = ("resolves 3%" if p["resolves_3pct"] else
               "does not resolve 3% on this machine (more pairs or a quieter machine narrow it)")
    own = (f"; the programs' own run time, from the kernel's accounting: {p['probes_own_us_per_req']:.2f} µs "
           f"per request" if p.get("probes_own_us_per_req") is not None else "")
    return (f"uproxy alone, http64 with `uproxy top`'s probes detached and attached at the default duty cycle, "
            f"in {len(p['pairs'])} interleaved pairs of {p['seconds']:g}-second runs: proxy CPU per request "
            f"{p['off_us']:.2f} µs without, {p['on_us']:.2f} µs with (medians); the probes cost "
            f"**{p['overhead_pct']:+.1f}%**{ci}, which {verdict}{own}.\n")
