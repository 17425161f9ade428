"""The statistics of the probes' cost (bench/pairstats.py) on synthetic
slices: the ABBA order, the pairing, the t quantile, and that the interval
covers a known overhead and says "resolves 3%" only when its noise allows."""
import math
import os
import random
import statistics
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench import pairstats  # noqa: E402

# scipy.stats.t.ppf(0.975, df), to 4 decimals
EXACT = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 7: 2.3646, 10: 2.2281,
         15: 2.1314, 23: 2.0687, 30: 2.0423, 60: 2.0003, 120: 1.9799}


def test_t_quantile_matches_the_exact_values():
    for df, t in EXACT.items():
        assert pairstats.t95(df) == pytest.approx(t, abs=1e-3), df
    with pytest.raises(ValueError):
        pairstats.t95(0)


def test_abba_order_puts_one_of_each_side_in_every_pair_and_swaps_it():
    assert pairstats.abba(4) == ["off", "on", "on", "off", "off", "on", "on", "off"]


def _slices(n_pairs, overhead, noise, drift=0.0, seed=1, noisy=()):
    """Slices of a run whose CPU per request is 10 µs (+ a drift along the
    run) times 1+overhead when on, each with independent relative noise."""
    rng = random.Random(seed)
    out = []
    for i, side in enumerate(pairstats.abba(n_pairs)):
        base = 10.0 * (1 + drift * i / (2 * n_pairs))
        us = base * (1 + overhead if side == "on" else 1) * (1 + rng.gauss(0, noise))
        reqs = 250_000
        out.append({"side": side, "cpu_ns": us * 1000 * reqs, "requests": reqs,
                    "steal_pct": 20.0 if i in noisy else 0.0, "noisy": i in noisy})
    return out


def test_pairs_are_adjacent_slices_as_on_over_off():
    s = [{"side": "off", "cpu_ns": 10e6, "requests": 1000},
         {"side": "on", "cpu_ns": 11e6, "requests": 1000},
         {"side": "on", "cpu_ns": 12e6, "requests": 1000},
         {"side": "off", "cpu_ns": 10e6, "requests": 1000}]
    p = pairstats.pair_up(s)
    assert [x["ratio"] for x in p] == pytest.approx([1.1, 1.2])
    assert p[0]["off"] == pytest.approx(10.0)          # µs per request
    # a slice that served nothing leaves its pair out; so do two of one side
    s[1]["requests"] = 0
    assert len(pairstats.pair_up(s)) == 1
    assert pairstats.pair_up([s[0], s[0]]) == []


def test_the_interval_covers_the_true_overhead_and_resolves_3pct_when_quiet():
    r = pairstats.summarize(_slices(24, 0.02, 0.02))
    assert r["pairs"] == 24 and r["used"] == 24
    lo, hi = r["overhead_pct"] - r["ci95_pct"], r["overhead_pct"] + r["ci95_pct"]
    assert lo < 2.0 < hi, r
    assert r["ci95_pct"] < 3 and r["resolves"]
    mlo, mhi = r["median_ci95_pct"]
    assert mlo < r["median_pct"] < mhi


def test_a_noisy_run_does_not_claim_to_resolve_3pct():
    r = pairstats.summarize(_slices(10, 0.02, 0.15))
    assert r["ci95_pct"] >= 3 and not r["resolves"], r


def test_half_width_is_t_times_the_standard_error():
    s = _slices(12, 0.05, 0.03, seed=7)
    ratios = [p["ratio"] for p in pairstats.pair_up(s)]
    want = 2.2010 * statistics.stdev(ratios) / math.sqrt(12)       # t(0.975, 11)
    assert pairstats.summarize(s)["ci95_pct"] == pytest.approx(100 * want, rel=1e-3)


def test_abba_cancels_a_linear_drift_that_one_fixed_order_would_not():
    # CPU per request rising 30% over the run; no true overhead
    s = _slices(24, 0.0, 0.0, drift=0.3)
    assert abs(pairstats.summarize(s)["overhead_pct"]) < 0.05
    # the same slices all as "off on": the drift reads as a cost
    for i, x in enumerate(s):
        x["side"] = "off" if i % 2 == 0 else "on"
    assert pairstats.summarize(s)["overhead_pct"] > 0.5


def test_noisy_pairs_are_counted_and_left_out_only_when_asked():
    s = _slices(10, 0.02, 0.01, noisy=(0, 5))
    # the noisy slices read 50% high: they move the figure that keeps them
    for i in (0, 5):
        s[i]["cpu_ns"] *= 1.5
    all_ = pairstats.summarize(s)
    quiet = pairstats.summarize(s, quiet_only=True)
    assert all_["used"] == 10 and all_["noisy"] == 2
    assert quiet["used"] == 8 and quiet["noisy"] == 2
    assert abs(quiet["overhead_pct"] - 2.0) < 1.5 < abs(all_["overhead_pct"] - 2.0)
    assert pairstats.pair_up(s)[0]["steal_pct"] == 20.0


def test_a_single_pair_has_no_interval():
    r = pairstats.summarize(_slices(1, 0.02, 0.0))
    assert r["ci95_pct"] is None and not r["resolves"]
