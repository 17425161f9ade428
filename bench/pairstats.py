"""Paired slices of one long run: the statistics of bench/probe_cost.py,
kept pure (no I/O) so that tests/unit can check them on synthetic slices.

A run is a sequence of slices in ABBA order (off on, on off, off on, ...):
each adjacent pair holds one slice of each side, and the order swaps every
pair, so that a drift over the run (a neighbour's load rising, caches
warming) hits both sides alike instead of biasing one. Each slice carries
the proxy's CPU time and the requests it served; its figure is CPU-µs per
request. A pair's ratio on/off is the cost of the "on" side in that
stretch of the run; the mean of the ratios has a Student t interval, their
median a bootstrap one (percentile, fixed seed so a report is repeatable).
"""
from __future__ import annotations

import math
import random
import statistics

Z95 = 1.959963984540054
# two-sided 95% Student t quantiles for 1-4 degrees of freedom, where the
# expansion below is not yet close enough
_T95_SMALL = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764}


def t95(df: int) -> float:
    """The two-sided 95% Student t quantile (0.975) for df degrees of
    freedom: exact below 5, else the Cornish-Fisher expansion in 1/df
    (within 1e-3 of the exact value from df = 5 on)."""
    if df < 1:
        raise ValueError("a t interval needs at least 2 values")
    if df in _T95_SMALL:
        return _T95_SMALL[df]
    z = Z95
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


def abba(pairs: int) -> list:
    """The sides of 2*pairs slices: off on, on off, off on, ..."""
    out = []
    for i in range(pairs):
        out += ["off", "on"] if i % 2 == 0 else ["on", "off"]
    return out


def us_per_req(s: dict) -> float | None:
    """A slice's CPU-µs per request (None when it served none)."""
    return s["cpu_ns"] / 1000 / s["requests"] if s["requests"] > 0 else None


def pair_up(slices: list) -> list:
    """Adjacent slices (0,1), (2,3), ... as pairs {"off", "on", "ratio",
    "steal_pct", "noisy"}: the two slices' figures, on/off, the larger of
    the two slices' steal, and whether either slice was flagged noisy. A
    pair is left out when a slice served no request, or when two adjacent
    slices are not one of each side."""
    out = []
    for i in range(0, len(slices) - 1, 2):
        a, b = slices[i], slices[i + 1]
        if {a["side"], b["side"]} != {"off", "on"}:
            continue
        on, off = (a, b) if a["side"] == "on" else (b, a)
        u_on, u_off = us_per_req(on), us_per_req(off)
        if u_on is None or u_off is None:
            continue
        out.append({"index": i // 2, "off": u_off, "on": u_on, "ratio": u_on / u_off,
                    "steal_pct": max(a.get("steal_pct", 0.0), b.get("steal_pct", 0.0)),
                    "noisy": bool(a.get("noisy") or b.get("noisy"))})
    return out


def mean_t(xs: list) -> tuple:
    """(mean, half-width of its 95% t interval); half-width None under 2 values."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    return m, t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def median_bootstrap(xs: list, n: int = 4000, seed: int = 15) -> tuple:
    """(median, low, high): the 95% percentile bootstrap interval of the
    median (n resamples, a fixed seed so the same slices give the same
    report)."""
    med = statistics.median(xs)
    if len(xs) < 2:
        return med, None, None
    rng = random.Random(seed)
    k = len(xs)
    meds = sorted(statistics.median(rng.choices(xs, k=k)) for _ in range(n))
    return med, meds[int(0.025 * n)], meds[min(n - 1, int(0.975 * n))]


def summarize(slices: list, resolve: float = 0.03, quiet_only: bool = False) -> dict:
    """The paired ratios' mean (t interval) and median (bootstrap interval),
    as overheads in percent, and whether the mean's interval resolves
    `resolve` (its half-width under it). Pairs with a slice flagged noisy
    (the caller's judgement: steal, other load) are counted in "noisy";
    with quiet_only they are left out of the figures, else they stay in."""
    pairs = pair_up(slices)
    noisy = [p for p in pairs if p["noisy"]]
    kept = [p for p in pairs if not (quiet_only and p["noisy"])]
    out = {"pairs": len(pairs), "used": len(kept), "noisy": len(noisy), "resolve_pct": 100 * resolve}
    if not kept:
        return {**out, "overhead_pct": None, "ci95_pct": None, "resolves": False}
    ratios = [p["ratio"] for p in kept]
    mean, half = mean_t(ratios)
    med, lo, hi = median_bootstrap(ratios)
    return {**out,
            "overhead_pct": 100 * (mean - 1),
            "ci95_pct": 100 * half if half is not None else None,
            "median_pct": 100 * (med - 1),
            "median_ci95_pct": ([100 * (lo - 1), 100 * (hi - 1)] if lo is not None else None),
            "off_us": statistics.median(p["off"] for p in kept),
            "on_us": statistics.median(p["on"] for p in kept),
            "resolves": half is not None and half < resolve}
