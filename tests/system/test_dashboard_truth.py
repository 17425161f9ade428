"""Truth per interval: each figure the dashboard counts over a whole interval
is checked against an independent measurement of the same interval.

The dashboard (the Collector, with its eBPF probes at the default duty
cycle) takes a sample, the test counts for about a second with a BPF program
of its own (written here, attached to the kernel's tracepoints, counting per
worker thread) and with the client's own tally, and the dashboard samples
again. Tolerances, stated per figure below, cover the few milliseconds
between the dashboard's reads and the test's. The sampled figures (uring
p99, runq p99, softirq%) are not compared: they are shown with their
coverage and sample counts instead (test_dashboard).

Needs root, bcc and kernel headers; skipped with the reason otherwise.
"""
import socket
import threading
import time

import pytest

from support import echo, free_port, wait_for
from uproxy.telemetry import probes
from uproxy.telemetry.view import Collector

# The test's own counters: per thread id, from tracepoints that fire in the
# submitting thread (io_uring submissions and punts) or in the thread leaving
# the CPU (sched_switch's prev is current).
_COUNT = r"""
RAW_TRACEPOINT_PROBE(%(tp)s)
{
    u32 tid = bpf_get_current_pid_tgid();
    u64 zero = 0, *v = %(map)s.lookup_or_try_init(&tid, &zero);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""


def independent() -> str:
    """The test's program. The submit tracepoint is io_uring_submit_req
    since Linux 6.4 and io_uring_submit_sqe before (Ubuntu 22.04's 5.15):
    the same choice the probes make."""
    submit = probes._submit_event()
    return "".join(f"BPF_HASH({m}, u32, u64, 64);\n" for m in ("submits", "punts", "switches")) + \
        "".join(_COUNT % {"tp": tp, "map": m} for tp, m in ((submit, "submits"),
                                                            ("io_uring_queue_async_work", "punts"),
                                                            ("sched_switch", "switches")))


def _need_bpf():
    a = probes.availability()
    if not a["ok"]:
        pytest.skip(f"eBPF probes unavailable here: {a['why']} — {a['fix']}")


class Load:
    """Sessions through the proxy as fast as one thread makes them; `done`
    is the client's own count of completed sessions."""

    def __init__(self, port):
        self.port, self.done, self.stop = port, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as c:
                    c.sendall(b"x" * 4096)
                    got = 0
                    while got < 4096:
                        b = c.recv(8192)
                        if not b:
                            break
                        got += len(b)
                self.done += 1
            except OSError:
                time.sleep(0.01)

    def close(self):
        self.stop = True
        self.t.join(5)


def test_whole_interval_figures_match_independent_counts(proxy_factory, servers):
    _need_bpf()
    from bcc import BPF
    srv = servers(echo)
    port = free_port()
    # splice_iowq: every splice is punted to io-wq, so io-wq/s has something to count
    p = proxy_factory([{"name": "l4", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c",
                        "forwarding": "splice_iowq"}],
                      [{"name": "c", "servers": [srv.addr]}])
    ind = BPF(text=independent().encode())
    load = Load(port)
    col = Collector(p.pid, use_bpf=True)
    try:
        assert col.probes is not None and col.probes.on("uring"), col.probe_status()
        wait_for(lambda: load.done > 20, what="traffic through the proxy")
        tids = [w["tid"] for w in col.reader.snapshot()["workers"]]

        def counts():
            out = {}
            for name in ("submits", "punts", "switches"):
                m = ind[name.encode()]
                out[name] = {t: (m[m.Key(t)].value if m.Key(t) in m else 0) for t in tids}
            out["done"] = load.done
            return out
        col.sample()
        a, t0 = counts(), time.monotonic()
        time.sleep(1.2)
        b, t1 = counts(), time.monotonic()
        v = col.sample()
    finally:
        load.close()
        col.close()
        ind.cleanup()
    dt = t1 - t0
    assert v["interval_s"] and abs(v["interval_s"] - dt) < 0.1, (v["interval_s"], dt)
    cores = {r["tid"]: r for r in v["cores"]}

    def close_to(shown, true, rel, slack, what):
        assert shown is not None, f"{what}: not shown"
        assert abs(shown - true) <= rel * true + slack, f"{what}: shown {shown}, measured {true:.1f}"

    busy = 0
    for t in tids:
        r = cores[t]
        sub = (b["submits"][t] - a["submits"][t]) / dt
        pun = (b["punts"][t] - a["punts"][t]) / dt
        sw = (b["switches"][t] - a["switches"][t]) / dt
        busy += sub > 0
        # uring ops/s: the core's own SQE count (segment) vs the submit
        # tracepoint; the two reads are milliseconds apart: 5% + 20/s
        close_to(r["uring_ops_s"], sub, 0.05, 20, f"w{r['index']} uring ops/s")
        # io-wq/s: an always-attached probe (never scaled) vs the punt tracepoint
        close_to(r["iowq_punts_s"], pun, 0.05, 10, f"w{r['index']} io-wq/s")
        # csw/s: /proc's voluntary + involuntary switches vs sched_switch out of the thread
        close_to(r["ctx_switches_s"], sw, 0.05, 20, f"w{r['index']} csw/s")
    assert busy, "no worker submitted anything during the interval"
    # sessions/s (the core's accepted count) vs the client's completed sessions
    sess = (b["done"] - a["done"]) / dt
    close_to(v["total"]["rps"], sess, 0.05, 10, "sessions/s")
    assert sum((b["punts"][t] - a["punts"][t]) for t in tids) > 0, "splice_iowq made no punts"
    # the coverage caption names the sampled sets only, never io-wq/s
    assert "uring" in v["coverage"] and v["coverage"]["uring"] < 1.0
