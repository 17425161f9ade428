"""The bench's short-L4-session workload (l4_short, bench/workloads.py):
a run in which any session failed or came back short gets no figure; the
machine's CPU leaves out other processes; the worker's syscalls per
session are read from strace's log, bpf calls by command. Pure: canned
loadgen JSON, CPU windows and strace lines."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench.peers import ALL_WORKLOADS, L4S_WORKLOADS  # noqa: E402
from bench.workloads import (METRICS, RUNNERS, TITLES, WorkloadError, count_syscalls,  # noqa: E402
                             machine_cpu_s, short_sessions)


def loadgen(requests=10000, bytes_in=None, **errors):
    e = {"connect": 0, "read": 0, "status": 0, "parse": 0}
    e.update(errors)
    return {"requests": requests, "duration_s": 2.0, "errors": e,
            "bytes_in": 264 * requests if bytes_in is None else bytes_in,
            "latency_us": {"p50": 900.0, "p99": 4000.0}}


WINDOW = {"wall_s": 2.0, "proxy_cpu_s": 0.5, "busy_frac": 0.9, "other_cpu_s": 0.2}


def test_figures_per_session():
    r = short_sessions(loadgen(), WINDOW, ncpu=2)
    assert r["sessions"] == 10000
    assert r["sessions_per_s"] == pytest.approx(5000)
    assert r["cpu_us_per_session"] == pytest.approx(50.0)
    # 0.9 x 2 s x 2 CPUs = 3.6 CPU-s busy, less 0.2 of other processes
    assert r["machine_cpu_us_per_session"] == pytest.approx(340.0)


@pytest.mark.parametrize("kind", ["connect", "read", "status", "parse"])
def test_any_failed_session_fails_the_run(kind):
    with pytest.raises(WorkloadError, match=f"'{kind}': 1"):
        short_sessions(loadgen(**{kind: 1}), WINDOW, ncpu=2)


def test_short_responses_fail_the_run():
    with pytest.raises(WorkloadError, match="short responses"):
        short_sessions(loadgen(bytes_in=10000 * 63), WINDOW, ncpu=2)


def test_no_session_fails_the_run():
    with pytest.raises(WorkloadError, match="no session"):
        short_sessions(loadgen(requests=0), WINDOW, ncpu=2)


def test_machine_cpu_leaves_out_other_processes_never_below_zero():
    assert machine_cpu_s({"wall_s": 1.0, "busy_frac": 0.5}, ncpu=2) == pytest.approx(1.0)
    assert machine_cpu_s({"wall_s": 1.0, "busy_frac": 0.5, "other_cpu_s": 0.25}, ncpu=2) == pytest.approx(0.75)
    assert machine_cpu_s({"wall_s": 1.0, "busy_frac": 0.1, "other_cpu_s": 5.0}, ncpu=2) == 0.0


STRACE = """\
bpf(BPF_MAP_UPDATE_ELEM, {map_fd=10, key=0x7f6a76e41618, value=0x7f6a0cf7a820, flags=BPF_ANY}, 144) = 0
bpf(BPF_MAP_UPDATE_ELEM, {map_fd=9, key=0x7f6a76e41618, value=0x7f6a0cf7a820, flags=BPF_NOEXIST}, 144) = 0
getsockopt(561, SOL_TCP, TCP_INFO, "\\n\\0\\0\\0", [232]) = 0
recvfrom(562, 0x7ffd, 1, MSG_PEEK|MSG_DONTWAIT, NULL, NULL) = -1 EAGAIN (Resource temporarily unavailable)
11732 io_uring_enter(4, 2, 1, IORING_ENTER_GETEVENTS, NULL, 8 <unfinished ...>
11732 <... io_uring_enter resumed>) = 2
11732 bpf(BPF_MAP_DELETE_ELEM, {map_fd=12, key=0x7f6a0cf7a7a8}, 144) = 0
bpf(BPF_MAP_LOOKUP_ELEM, {map_fd=9, key=0x7f6a76e415f0, value=0x7f6a0cf7a870, flags=BPF_ANY}, 144) = 0
+++ exited with 0 +++
"""


def test_count_syscalls_by_name_and_bpf_by_command():
    calls, bpf = count_syscalls(STRACE)
    assert calls == {"bpf": 4, "getsockopt": 1, "recvfrom": 1, "io_uring_enter": 1}
    assert bpf == {"BPF_MAP_UPDATE_ELEM": 2, "BPF_MAP_DELETE_ELEM": 1, "BPF_MAP_LOOKUP_ELEM": 1}


def test_workload_is_registered():
    for w in L4S_WORKLOADS:
        assert w in ALL_WORKLOADS and w in RUNNERS and w in METRICS and w in TITLES


class _Ctx:
    upstream_port, iperf_port, grpc_upstream_port = 18080, 15201, 18082
    tls_cert = tls_key = tls_pem = None
    grpc_request = "/dev/null"

    def __init__(self, d):
        self.run_dir = self.bench_bin = self.bench_venv = d


def _rendered(cls, tmp_path) -> str:
    c = cls(_Ctx(str(tmp_path)))
    c.dir = str(tmp_path)
    c.http_port, c.l4_port, c.l4s_port = 20001, 20002, 20003
    c.https_port, c.h2c_port, c.h2s_port, c.grpc_port = 20004, 20005, 20006, 20007
    c.render()
    return "".join(open(os.path.join(tmp_path, f)).read() for f in sorted(os.listdir(tmp_path))
                   if os.path.isfile(os.path.join(tmp_path, f)))


def test_peers_render_the_short_session_listener_only_where_it_applies(tmp_path, monkeypatch):
    """Each L4 peer puts a listener on l4s_port in front of the origin's HTTP
    port; the rows that skip l4_short (tunings that change nothing for
    it) render none."""
    from bench.peers import envoy, haproxy, nginx, traefik
    # nginx renders its stream block only where Debian's stream module is
    # installed (scripts/setup --bench installs it, --test does not): render
    # as on a bench machine, whatever this one has.
    real_exists = os.path.exists
    monkeypatch.setattr(nginx.os.path, "exists",
                        lambda p: p == nginx.STREAM_MODULE or real_exists(p))
    for cls in (nginx.Nginx, haproxy.Haproxy, envoy.Envoy, traefik.Traefik):
        d = tmp_path / cls.name
        d.mkdir()
        text = _rendered(cls, d)
        assert "20003" in text, cls.name
        assert text.count("18080") >= 2, cls.name   # the HTTP route and the short-session one
    for cls in (nginx.NginxBigbuf, haproxy.HaproxySplice, traefik.TraefikFast):
        d = tmp_path / cls.name
        d.mkdir()
        assert "20003" not in _rendered(cls, d), cls.name


def test_section_counts_machine_cpu_above_direct_and_syscalls():
    from bench.report import l4short_md
    res = {"workloads": ["l4_short"],
           "contenders": {"direct": {"label": "no proxy (direct)"}, "uproxy-sockmap": {"label": "uproxy, sockmap"}},
           "summary": {"l4_short": {n: {"metrics": {k: {"median": v} for k, v in m.items()}} for n, m in {
               "direct": {"machine_cpu_us_per_session": 90.0, "sessions_per_s": 14000.0, "cpu_us_per_session": 0.0},
               "uproxy-sockmap": {"machine_cpu_us_per_session": 190.0, "sessions_per_s": 7000.0,
                                  "cpu_us_per_session": 90.0}}.items()}},
           "rounds": [{"uproxy-sockmap": {"l4_short": {"syscalls": {
               "sessions": 2000, "total_per_session": 30.0, "per_session": {"bpf": 16.0, "getsockopt": 6.0},
               "bpf_per_session": {"BPF_MAP_UPDATE_ELEM": 6.0}}}}}]}
    text = l4short_md(res)
    assert "| uproxy, sockmap | 7,000 | 90.0 | 190.0 | 100.0 |" in text
    assert "| uproxy, sockmap | 30.00 | bpf 16.00, getsockopt 6.00 | update_elem 6.00 |" in text
