"""The dashboard: rendered with rich's recording console from a real proxy's
view (with and without eBPF, with and without a PMU), `uproxy top --once
--json`, and the real thing in a terminal under tmux (capture-pane),
attached and embedded (`uproxy run --dashboard`)."""
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from rich.console import Console

from support import ROOT, Server, as_nobody_python, echo, free_port, render_config, wait_for
from uproxy.telemetry import probes as probes_mod
from uproxy.telemetry.view import Collector
from uproxy.tui import dashboard

DASH = dashboard.DASH


@pytest.fixture
def l4(proxy_factory, servers):
    srv = servers(echo)
    port = free_port()
    p = proxy_factory([{"name": "l4", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c"}],
                      [{"name": "c", "servers": [srv.addr]}])
    return p, port, srv


class Load:
    """Bounded background sessions through the proxy."""

    def __init__(self, port, seconds=30):
        self.port, self.stop_at = port, time.monotonic() + seconds
        self.done = 0
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while time.monotonic() < self.stop_at:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as c:
                    c.sendall(b"x" * 64)
                    got = b""
                    while len(got) < 64:
                        b = c.recv(64)
                        if not b:
                            break
                        got += b
                self.done += 1
            except OSError:
                time.sleep(0.01)
            time.sleep(0.002)

    def close(self):
        self.stop_at = 0
        self.t.join(5)


def _render(view, **kw) -> str:
    con = Console(record=True, width=200, file=open(os.devnull, "w"), color_system=None)
    con.print(dashboard.render(view, **kw))
    return con.export_text()


def _view(pid, use_bpf):
    col = Collector(pid, use_bpf=use_bpf)
    try:
        col.sample()
        time.sleep(0.5)
        return col.sample(), col
    finally:
        col.close()


def _core_row(text, name="w0"):
    return [l for l in text.splitlines() if l.strip().startswith(name + " ")][0].split()


def test_renders_core_counters_without_ebpf(l4):
    p, port, srv = l4
    load = Load(port)
    try:
        wait_for(lambda: load.done > 5, what="traffic")
        view, _ = _view(p.pid, use_bpf=False)
    finally:
        load.close()
    assert not view["probes"]["available"] and view["probes"]["why"]
    text = _render(view)
    assert "eBPF columns missing: eBPF probes not requested" in text
    assert "sess/s" in text and "per core" in text and "upstreams" in text
    assert srv.addr in text and "started generation 1" in text
    # the eBPF columns are dashes, never zeros: uring p99, io-wq/s, runq p99
    for name in ("w0", "w1"):
        row = _core_row(text, name)
        assert row[-4:-1] == [DASH, DASH, DASH], row
        assert row[2] != DASH                       # sessions/s comes from the core
    assert view["total"]["rps"] > 0
    assert view["cores"][0]["uring_ops_s"] > 0      # the core's own SQE counters


def _fake_pmu(view, present):
    v = copy.deepcopy(view)
    v["pmu"]["present"] = present
    for r in v["cores"]:
        if present:
            r.update(ipc=1.42, cache_misses_per_unit=12.5, branch_miss_pct=0.81)
    return v


def test_no_pmu_says_so_and_shows_software_counters(l4):
    p, port, _ = l4
    view, _ = _view(p.pid, use_bpf=False)
    view = _fake_pmu(view, False)
    text = _render(view)
    assert "no PMU on this host" in text
    assert "IPC" not in text.split("per core")[1].splitlines()[2]
    assert "CPU%" in text and "csw/s" in text and "faults/s" in text
    text = _render(_fake_pmu(view, True))
    hdr = [l for l in text.splitlines() if "IPC" in l and "core" in l][0]
    assert "br-miss%" in hdr and "miss/session" in hdr
    assert "1.42" in text and "0.81" in text


def test_keys_sort_and_pause():
    st = dashboard.State()
    assert st.sort_key == "core"
    st.key("s")
    assert st.sort_key == "rps"
    st.key("p")
    assert st.paused
    st.key("P")
    assert not st.paused
    st.key("q")
    assert st.quit
    assert dashboard.sparkline([0, 1, 2, 4]) == "▁▃▅█"
    assert dashboard.sparkline([0, 0]) == "▁▁"


def _need_bpf():
    a = probes_mod.availability()
    if not a["ok"]:
        pytest.skip(f"eBPF probes unavailable here: {a['why']} ({a['fix']})")


def test_renders_with_ebpf_probes(l4):
    _need_bpf()
    p, port, _ = l4
    load = Load(port)
    try:
        wait_for(lambda: load.done > 5, what="traffic")
        view, col = _view(p.pid, use_bpf=True)
    finally:
        load.close()
    assert view["probes"]["available"], view["probes"]
    assert all(s["state"] == "on" for s in view["probes"]["sets"].values()), view["probes"]
    text = _render(view)
    assert "eBPF: uring on  sched on  softirq on  tcp on  cpu on" in text
    assert "TCP upstream connect" in text
    busy = [r for r in view["cores"] if r["rps"]]
    assert busy and all(r["uring_lat_p99_us"] is not None for r in busy)
    if not view["pmu"]["present"]:
        assert "no PMU on this host" in text
        assert all(r["ipc"] is None for r in view["cores"])
        assert all(r["cpu_clock_pct"] is not None for r in view["cores"])


def test_top_once_json(l4):
    p, port, _ = l4
    load = Load(port)
    try:
        wait_for(lambda: load.done > 5, what="traffic")
        r = subprocess.run([sys.executable, "-m", "uproxy", "top", "--once", "--json", "--pid",
                            str(p.pid), "--interval", "0.5"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    finally:
        load.close()
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    for k in ("version", "pid", "uptime_s", "kernel", "workers", "features", "probes", "pmu",
              "cores", "total", "upstreams", "events", "history", "unit"):
        assert k in v, k
    assert v["pid"] == p.pid and v["workers"] == 2 and len(v["cores"]) == 2
    assert isinstance(v["pmu"]["present"], bool) and "why" in v["pmu"]
    assert set(v["probes"]) >= {"available", "why", "fix", "sets"}
    for c in v["cores"]:
        for k in ("rps", "active", "p50_us", "p99_us", "p999_us", "ipc", "cache_misses_per_unit",
                  "branch_miss_pct", "uring_ops_s", "uring_lat_p99_us", "iowq_punts_s",
                  "runq_p99_us", "softirq_pct", "cpu_pct"):
            assert k in c, k
    assert v["total"]["rps"] > 0
    assert v["upstreams"][0]["health"] in ("up", "down", "unchecked")


def test_top_without_a_proxy_says_how_to_start_one(tmp_path):
    env = dict(os.environ, UPROXY_RUN_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "uproxy", "top", "--once"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no running uproxy found" in r.stderr


# ---- a real terminal -----------------------------------------------------------------

class Tmux:
    def __init__(self, cmd, env=None, width=200, height=60):
        if not shutil.which("tmux"):
            pytest.skip("tmux is not installed (scripts/setup --test installs it)")
        self.sock = f"uproxy-test-{os.getpid()}-{time.monotonic_ns()}"
        self.name = "t"
        env = dict({"COLUMNS": str(width), "LINES": str(height)}, **(env or {}))
        envs = " ".join(f"{k}={v}" for k, v in env.items())
        full = f"cd {ROOT} && env {envs} {cmd}; echo EXITED $?; sleep 30"
        if "UPROXY_NO_BPF" not in env:
            full = f"unset UPROXY_NO_BPF; {full}"
        subprocess.run(["tmux", "-L", self.sock, "new-session", "-d", "-s", self.name,
                        "-x", str(width), "-y", str(height), full], check=True)

    def screen(self) -> str:
        r = subprocess.run(["tmux", "-L", self.sock, "capture-pane", "-p", "-t", self.name],
                           capture_output=True, text=True)
        return r.stdout

    def keys(self, *k):
        subprocess.run(["tmux", "-L", self.sock, "send-keys", "-t", self.name, *k], check=True)

    def wait(self, text, timeout=30):
        try:
            return wait_for(lambda: text in self.screen(), timeout, what=f"{text!r} on the screen")
        except TimeoutError as e:
            raise AssertionError(f"{e}; the screen:\n{self.screen()}") from None

    def close(self):
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


def _top_in_tmux(pid, env):
    py = sys.executable
    return Tmux(f"{py} -m uproxy top --pid {pid} --interval 0.5", env=env)


def _drive(t):
    t.wait("per core")
    assert "sorted by core" in t.screen()
    t.keys("s")
    t.wait("sorted by rps")
    t.keys("p")
    t.wait("PAUSED")
    t.keys("p")
    wait_for(lambda: "PAUSED" not in t.screen(), 10, what="unpause")
    t.keys("q")
    t.wait("EXITED 0")


def test_top_in_a_terminal_as_root(l4):
    _need_bpf()
    p, port, _ = l4
    load = Load(port)
    t = _top_in_tmux(p.pid, {})
    try:
        t.wait("eBPF: uring on", timeout=60)
        s = t.screen()
        assert "no PMU on this host" in s or "hardware PMU" in s
        _drive(t)
    finally:
        t.close()
        load.close()


def test_top_in_a_terminal_without_root(l4):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop root for this test")
    p, port, _ = l4
    py, env = as_nobody_python()      # from any checkout, a private one too
    load = Load(port)
    t = Tmux(f"setpriv --reuid=nobody --regid=nogroup --clear-groups {py} -m uproxy top "
             f"--pid {p.pid} --interval 0.5", env={"HOME": "/tmp", **env})
    try:
        t.wait("per core", timeout=60)
        s = t.screen()
        assert "eBPF columns missing: not root" in s and "sudo uproxy top" in s
        assert "no PMU on this host" in s or "hardware PMU" in s
        _drive(t)
    finally:
        t.close()
        load.close()


def test_run_dashboard_embedded(tmp_path, servers):
    srv = servers(echo)
    port = free_port()
    cfg = tmp_path / "u.toml"
    cfg.write_text(render_config({"workers": 2}, [{"name": "l4", "bind": f"127.0.0.1:{port}",
                                                  "mode": "tcp", "cluster": "c"}],
                                 [{"name": "c", "servers": [srv.addr]}]))
    t = Tmux(f"{sys.executable} -m uproxy run -c {cfg} --dashboard --interval 0.5",
             env={"UPROXY_NO_BPF": "1"})
    load = None
    pid = None
    try:
        t.wait("per core", timeout=60)
        load = Load(port)
        wait_for(lambda: load.done > 20, what="traffic")
        from uproxy import shm
        pid = [q for q in shm.running_pids()
               if os.path.exists(f"/proc/{q}/cmdline") and str(cfg) in
               open(f"/proc/{q}/cmdline").read()][0]
        os.kill(pid, signal.SIGHUP)        # the runtime's duties go on: a reload
        t.wait("reloaded: generation 2")
        t.keys("q")
        t.wait("EXITED 0")
    finally:
        if load:
            load.close()
        # closing tmux sends SIGHUP, which the proxy takes as "reload": stop it
        if pid and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGTERM)
        t.close()
