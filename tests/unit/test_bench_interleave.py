"""The bench's --interleave (bench/cli.py): within a round each workload
runs on every contender in turn, each started for it alone, in an order
that rotates from round to round, and the round's rows come out in the
shape the report reads (one dict per contender, workload -> row). The
contenders here are stand-ins: what is checked is the order and the
rows, not a proxy."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench import cli  # noqa: E402


class Fake:
    def __init__(self, name, skips=()):
        self.name = name
        self.skips = set(skips)

    def skip(self, w):
        return w in self.skips


def test_each_workload_on_every_contender_in_turn_rotating(monkeypatch):
    calls = []

    def run_contender(ctx, c, rnd, todo, res):
        calls.append((rnd, todo, c.name))
        return {todo[0]: {"cpu_us_per_req": len(calls)}, "_seconds": 1.5,
                "_tls_seen": "TLSv1.3" if todo[0] == "h2_1" else None}
    monkeypatch.setattr(cli, "run_contender", run_contender)
    present = [Fake("nginx"), Fake("uproxy"), Fake("haproxy", skips={"h2_1"})]
    rows = cli._interleaved(None, present, ["h2c_1", "h2_1"], 2, {})
    # Round 2 starts one further along; a contender that skips a workload is passed over.
    assert calls == [(2, ["h2c_1"], "uproxy"), (2, ["h2c_1"], "haproxy"), (2, ["h2c_1"], "nginx"),
                     (2, ["h2_1"], "uproxy"), (2, ["h2_1"], "nginx")]
    assert rows["uproxy"] == {"h2c_1": {"cpu_us_per_req": 1}, "h2_1": {"cpu_us_per_req": 4},
                              "_seconds": 3.0, "_tls_seen": "TLSv1.3"}
    assert rows["haproxy"] == {"h2c_1": {"cpu_us_per_req": 2}, "_seconds": 1.5}
    calls.clear()
    cli._interleaved(None, present, ["h2c_1"], 4, {})     # round 4 of 3 contenders: as round 1
    assert [c for _, _, c in calls] == ["nginx", "uproxy", "haproxy"]


def test_the_option_is_parsed_and_named_in_the_report():
    from bench import report
    a = cli.parse_args(["--interleave", "--retry-noisy", "1"])
    assert a.interleave and a.retry_noisy == 1
    assert "--interleave" in report._how_run({"interleave": True, "retry_noisy": 0})
    assert report._how_run({"interleave": False, "retry_noisy": 0}) == ""
