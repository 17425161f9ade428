"""The eBPF probes load in this kernel and count what the test itself causes.

Needs root, bcc and kernel headers; without them each test is skipped with
the reason (never faked). The offsets and tracepoint formats the probes use
are checked against the running kernel too.
"""
import os
import socket
import time

import pytest

from support import echo, free_port, wait_for
from uproxy import hist
from uproxy.telemetry import btf, pmu, probes, tpformat


def _need_bpf():
    a = probes.availability()
    if not a["ok"]:
        pytest.skip(f"eBPF probes unavailable here: {a['why']} — {a['fix']}")


@pytest.fixture
def l4(proxy_factory, servers):
    srv = servers(echo)
    port = free_port()
    p = proxy_factory([{"name": "l4", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c",
                        "forwarding": "buffered"}],
                      [{"name": "c", "servers": [srv.addr]}])
    return p, port, srv


def _attach(p, sets=probes.SETS):
    snap = p.stats()
    pr = probes.Probes(p.pid, snap["workers"], probes.listen_ports(p.pid),
                       probes.upstream_ports(snap), sets=sets)
    bad = {s: v for s, v in pr.status.items() if s in sets and v["state"] != "on"}
    assert not bad, bad
    return pr


def _sessions(port, n, payload=b"hello"):
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += c.recv(100)
            c.shutdown(socket.SHUT_WR)
            c.recv(10)


def test_btf_offset_matches_the_kernel():
    try:
        off = btf.offset("task_struct", "pid")
    except btf.BTFError as e:
        pytest.skip(f"no kernel BTF: {e}")
    assert 0 < off < 8192
    assert btf.offset("task_struct", "tgid") == off + 4       # adjacent pid_t fields
    with pytest.raises(btf.BTFError):
        btf.offset("task_struct", "no_such_member")


def test_tracepoint_formats_become_structs():
    if not tpformat.tracefs() and not (os.geteuid() == 0 and tpformat.mount_tracefs()):
        pytest.skip("tracefs is not mounted and cannot be mounted (not root)")
    src = tpformat.c_struct("sock", "inet_sock_set_state")
    assert "struct tp_inet_sock_set_state" in src
    assert "HAVE_sock_inet_sock_set_state_newstate" in src
    f = {n: (off, size) for n, off, size, _, _ in tpformat.fields("sock", "inet_sock_set_state")}
    assert f["newstate"][1] == 4 and f["sport"][1] == 2


def test_pmu_detection_is_decided_and_explained():
    d = pmu.detect()
    assert isinstance(d["pmu"], bool) and d["why"]
    assert pmu.events(False) == pmu.SOFTWARE and pmu.events(True) == pmu.HARDWARE


def test_histogram_bucket_in_bpf_matches_the_core(tmp_path):
    """up_bucket() in bpf/common.h, compiled as plain C, agrees with the
    core's formula (hist.py, itself checked against native/core/hist.h)."""
    import ctypes
    import re
    import shutil
    import subprocess
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed")
    src = open(os.path.join(probes.bpf_dir(), "common.h")).read()
    fn = re.search(r"static __always_inline u32 up_bucket\(u64 v\)\n\{.*?\n\}\n", src, re.S).group(0)
    c = tmp_path / "b.c"
    c.write_text("#include <stdint.h>\ntypedef uint64_t u64; typedef uint32_t u32;\n"
                 "#define HB 256\n#define __always_inline inline\n" + fn.replace("static ", "")
                 + "u32 bucket(u64 v) { return up_bucket(v); }\n")
    so = tmp_path / "b.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(c)], check=True)
    lib = ctypes.CDLL(str(so))
    lib.bucket.restype = ctypes.c_uint32
    lib.bucket.argtypes = [ctypes.c_uint64]
    import random
    rng = random.Random(5)
    values = list(range(0, 4096)) + [rng.randrange(1, 1 << 63) for _ in range(20000)]
    values += [(1 << k) + d for k in range(3, 63) for d in (-1, 0, 1)]
    for v in values:
        assert lib.bucket(v) == hist.bucket(v), v


def test_n_connections_make_n_established_transitions(l4):
    _need_bpf()
    p, port, _ = l4
    pr = _attach(p, sets=("tcp",))
    try:
        n = 30
        _sessions(port, n)
        wait_for(lambda: p.total("closed") >= n, what="sessions to close")
        g = wait_for(lambda: (lambda g: g if g["ended_client"] >= n else None)(pr.read()["tcp"]),
                     5, what="the probes to see every session end")
        assert g["est_client"] == n                # exactly the test's connections
        assert g["est_upstream"] == n              # one upstream connect per session
        assert g["connects"] == n and g["connect_failed"] == 0
        assert sum(g["hist_connect"]) == n
        assert sum(g["hist_life_client"]) == n
        assert g["rtt_client"] > 0 and g["rtt_upstream"] > 0
    finally:
        pr.close()


def test_sessions_make_io_uring_completions_by_the_workers(l4):
    _need_bpf()
    p, port, _ = l4
    pr = _attach(p, sets=("uring", "sched"))
    try:
        before = p.stats()["total"]["uring_cqes"]
        # one request in 8 is timed, chosen at random: with 40 sessions no
        # connect was timed in about 1 run in 200; with 160, 1 in 10^9
        n = 160
        _sessions(port, n)
        wait_for(lambda: p.total("closed") >= n, what="sessions to close")
        time.sleep(0.2)
        r = pr.read()
        completes = sum(w["uring_completes"] for w in r["workers"])
        assert completes >= n, r
        # the probes see the CQEs the core says its workers reaped (nothing else's)
        cqes = p.stats()["total"]["uring_cqes"] - before
        assert completes <= cqes + 16, (completes, cqes)
        ops = {}
        names = __import__("uproxy.shm", fromlist=["_opnames"])._opnames()
        for w in r["workers"]:
            for i, c in enumerate(w["op_done"]):
                if c:
                    ops[names.get(i, i)] = ops.get(names.get(i, i), 0) + c
        # one request in 8 is timed: about n/8 of the n connects
        assert ops.get("connect", 0) >= 1, ops
        assert sum(sum(w["hist_uring"]) for w in r["workers"]) == \
            sum(w["uring_timed"] for w in r["workers"])
        # the workers slept in io_uring_enter and woke: the run-queue histogram filled
        assert sum(w["vol"] for w in r["workers"]) > 0
        assert sum(w["rq_waits"] for w in r["workers"]) > 0
    finally:
        pr.close()


def test_cpu_counters_and_softirq_with_software_events(l4):
    """The CPU-counter plumbing (perf events read in BPF at context switches),
    tested with software events, which every host has."""
    _need_bpf()
    p, port, _ = l4
    snap = p.stats()
    pr = probes.Probes(p.pid, snap["workers"], probes.listen_ports(p.pid),
                       probes.upstream_ports(snap), sets=("cpu", "softirq"),
                       pmu={"pmu": False, "why": "forced: software events", "devices": []})
    try:
        assert pr.status["cpu"]["state"] == "on", pr.status
        assert pr.status["softirq"]["state"] == "on", pr.status
        t0 = time.monotonic()
        _sessions(port, 200, payload=b"x" * 4096)
        wall = time.monotonic() - t0
        time.sleep(0.2)
        r = pr.read()
        assert r["events"] == ["cpu_clock_ns", "page_faults"]
        clock = sum(w["pmu"][0] for w in r["workers"])
        on_cpu = sum(w["pmu_ns"] for w in r["workers"])
        # cpu-clock over the workers' time on a CPU is that time (same clock, +-)
        assert clock > 0 and on_cpu > 0
        assert 0.8 < clock / on_cpu < 1.2, (clock, on_cpu)
        assert clock < wall * 2e9                # at most 2 CPUs for the whole time
        assert sum(sum(v.values()) for v in r["softirq_ns"].values()) > 0
        assert any("net_rx" in v for v in r["softirq_ns"].values())
    finally:
        pr.close()


def _attachments() -> int:
    """This process's open probe attachments: perf event fds (tracepoints,
    perf events, the cpu set's counters) and BPF links (raw tracepoints)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            t = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        n += t in ("anon_inode:[perf_event]", "anon_inode:bpf_link")
    return n


def test_suspend_detaches_every_probe_and_resume_attaches_them_again(l4):
    """What `scripts/bench --probe-cost` switches between inside one load
    run: suspended, nothing of the probes stays attached and nothing is
    counted; resumed, they count again and the duty cycle runs again."""
    _need_bpf()
    p, port, _ = l4
    base = _attachments()
    snap = p.stats()
    pr = probes.Probes(p.pid, snap["workers"], probes.listen_ports(p.pid),
                       probes.upstream_ports(snap), duty=0.1)      # the dashboard's default
    try:
        assert all(v["state"] == "on" for v in pr.status.values()), pr.status
        assert _attachments() > base
        pr.suspend()
        assert _attachments() == base
        est = pr.read()["tcp"]["est_client"]
        on_s = pr.on_seconds()["uring"]
        _sessions(port, 20)
        wait_for(lambda: p.total("closed") >= 20, what="sessions to close")
        time.sleep(0.6)
        assert pr.read()["tcp"]["est_client"] == est
        assert pr.on_seconds()["uring"] == on_s              # the duty cycle stopped
        pr.resume()
        assert _attachments() > base
        _sessions(port, 20)
        wait_for(lambda: p.total("closed") >= 40, what="sessions to close")
        wait_for(lambda: pr.read()["tcp"]["est_client"] == est + 20, 5,
                 what="the resumed probes to see the new sessions")
        time.sleep(0.6)
        assert pr.on_seconds()["uring"] > on_s               # windows open again
    finally:
        pr.close()
    assert _attachments() == base


def test_status_explains_missing_root(monkeypatch):
    monkeypatch.delenv("UPROXY_NO_BPF", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    a = probes.availability()
    assert not a["ok"] and "not root" in a["why"] and "sudo" in a["fix"]
    monkeypatch.setenv("UPROXY_NO_BPF", "1")
    assert "UPROXY_NO_BPF" in probes.availability()["why"]
