"""Reading the core's log-linear latency histograms (native/core/hist.h).

Bucket b < 8 holds exactly b microseconds; above, 8 buckets per octave:
bucket b covers [lower(b), lower(b + 1)). Workers' histograms are merged by
adding bucket counts, which loses nothing.
"""
from __future__ import annotations

BUCKETS = 256


def bucket(us: int) -> int:
    if us < 8:
        return us
    e = us.bit_length() - 1
    return min(255, (e - 2) * 8 + ((us >> (e - 3)) & 7))


def lower(b: int) -> int:
    if b < 8:
        return b
    e, sub = b // 8 + 2, b % 8
    return (8 + sub) << (e - 3)


def upper(b: int) -> int:
    return lower(b + 1) if b < BUCKETS - 1 else lower(b) * 2


def merge(hists) -> list:
    out = [0] * BUCKETS
    for h in hists:
        for i, n in enumerate(h):
            out[i] += n
    return out


def delta(new, old) -> list:
    return [a - b for a, b in zip(new, old)]


def percentile(h, q: float) -> float | None:
    """The q-quantile (0..1) in microseconds: the upper edge of the bucket
    holding it (a value never under-reports), or None without samples."""
    total = sum(h)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(h):
        seen += n
        if n and seen >= rank:
            return float(upper(i) if i >= 8 else i)
    return float(upper(BUCKETS - 1))


def summary(h) -> dict:
    return {"count": sum(h), "p50_us": percentile(h, 0.50), "p99_us": percentile(h, 0.99),
            "p999_us": percentile(h, 0.999)}
