"""The latency histogram: C and Python agree on buckets; merging is exact."""
import random

from uproxy import hist
from uproxy._native import lib


def test_python_buckets_match_the_core():
    values = list(range(0, 5000)) + [random.Random(7).randrange(1, 1 << 40) for _ in range(20000)]
    for v in values:
        assert hist.bucket(v) == lib.up_hist_bucket(v), v
    for b in range(hist.BUCKETS):
        assert hist.lower(b) == lib.up_hist_lower(b), b


def test_buckets_are_ordered_and_narrow():
    for b in range(8, hist.BUCKETS - 1):
        lo, hi = hist.lower(b), hist.upper(b)
        assert hist.bucket(lo) == b and hist.bucket(hi - 1) == b and hist.bucket(hi) == b + 1
        assert (hi - lo) / lo <= 0.125


def test_merge_is_exact():
    rng = random.Random(3)
    samples = [[rng.randrange(1, 10 ** 6) for _ in range(1000)] for _ in range(4)]
    per_worker = []
    for s in samples:
        h = [0] * hist.BUCKETS
        for v in s:
            h[hist.bucket(v)] += 1
        per_worker.append(h)
    together = [0] * hist.BUCKETS
    for v in sum(samples, []):
        together[hist.bucket(v)] += 1
    assert hist.merge(per_worker) == together


def test_percentiles_never_under_report():
    h = [0] * hist.BUCKETS
    values = list(range(1, 10001))
    for v in values:
        h[hist.bucket(v)] += 1
    for q in (0.5, 0.99, 0.999):
        exact = values[int(q * len(values)) - 1]
        got = hist.percentile(h, q)
        assert exact <= got <= exact * 1.13, (q, exact, got)
    assert hist.percentile([0] * hist.BUCKETS, 0.5) is None
