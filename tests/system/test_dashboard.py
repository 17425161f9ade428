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
    # the kernel latencies in the latency view, with their counts
    assert view["hist"]["io_uring"]["count"] > 0 and view["hist"]["io_uring"]["unit"] == "ns"
    assert "runq" in view["hist"]
    st = dashboard.State()
    st.panel = dashboard.PANELS.index("latency")
    lat = _render(view, state=st)
    assert "io_uring, submit to first completion" in lat and "nsecs" in lat
    for r in busy:
        assert r["uring_lat_count"] > 0
        assert r["uring_lat_p99_is_max"] == (r["uring_lat_count"] < 100)
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


def test_top_in_a_terminal_without_root(proxy_factory, servers):
    """`uproxy top` as the unprivileged user the proxy runs as (its
    statistics are that user's only: tests/system/test_privileges.py)."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop root for this test")
    srv = servers(echo)
    port = free_port()
    p = proxy_factory([{"name": "l4", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c"}],
                      [{"name": "c", "servers": [srv.addr]}], proxy={"workers": 2, "user": "nobody"})
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
        t.keys("4")                        # the event once, though the log says it too
        t.wait("[4 events]")
        time.sleep(0.3)
        s = t.screen()
        assert s.count("reloaded") == 1 and s.count("started generation 1") == 1, s
        t.keys("q")
        t.wait("EXITED 0")
    finally:
        if load:
            load.close()
        # closing tmux sends SIGHUP, which the proxy takes as "reload": stop it
        if pid and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGTERM)
        t.close()


# ---- errors first, a layout that fits, htop's habits (issue 15) ----------------------

from http_upstream import HttpUpstream, Response  # noqa: E402
from uproxy.telemetry import view as view_mod  # noqa: E402


@pytest.fixture
def web(proxy_factory, tmp_path):
    """An HTTP listener with an access log: / answered 200, /missing 404 by a
    healthy server; /dead routed to a cluster whose servers are gone (503)."""
    ok = HttpUpstream(lambda req: Response(status=404 if req.target.startswith("/missing")
                                           else 200, body=b"ok"))
    port = free_port()
    p = proxy_factory(
        [{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "good",
          "access_log": str(tmp_path / "access.log"),
          "routes": [{"path_prefix": "/dead", "cluster": "gone"}]}],
        [{"name": "good", "servers": [ok.addr], "health": {"path": "/", "interval": "100ms"}},
         {"name": "gone", "servers": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"],
          "health": {"path": "/", "interval": "100ms", "fall": 1}}])
    p.port = port
    wait_for(lambda: [s["health"] for s in p.stats()["servers"] if s["cluster"] == "gone"]
             == ["down", "down"], 10, what="the gone cluster's servers marked down")
    yield p
    ok.close()


def _get(port, paths):
    import httpx
    codes = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        for path in paths:
            codes.append(c.get(path).status_code)
    return codes


class HttpLoad:
    def __init__(self, port, seconds=60):
        self.port, self.stop_at, self.done = port, time.monotonic() + seconds, 0
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while time.monotonic() < self.stop_at:
            try:
                _get(self.port, ["/", "/missing", "/dead/x"] * 3)
                self.done += 9
            except Exception:
                time.sleep(0.05)
            time.sleep(0.02)

    def close(self):
        self.stop_at = 0
        self.t.join(5)


def test_errors_first_status_classes_listeners_and_health(web):
    """Exactly 10 requests of each kind between two samples: the view's
    rates by status class, error shares, listener and route figures and the
    upstream health detail agree with what the client saw."""
    col = Collector(web.pid, use_bpf=False)
    try:
        wait_for(lambda: (col.sample() or True) and any(
            u.get("check", {}) and u["check"]["checked"] for u in col.sample()["upstreams"]),
            10, what="health-check detail published")
        col.sample()
        codes = _get(web.port, ["/"] * 10 + ["/missing"] * 10 + ["/dead/x"] * 10)
        assert codes == [200] * 10 + [404] * 10 + [503] * 10
        time.sleep(0.3)          # the access-log records and the counters land
        v = col.sample()
    finally:
        col.close()
    dt = v["interval_s"]
    tot = v["total"]
    for k, n in (("2xx", 10), ("4xx", 10), ("5xx", 10), ("3xx", 0)):
        assert round(tot[f"r{k}_s"] * dt) == n, (k, tot)
    assert tot["err_pct"] == 66.7 and tot["err5_pct"] == 33.3
    assert round(sum(c["r5xx_s"] for c in v["cores"]) * dt) == 10
    # the listener and its routes, from the core's per-route counters
    (l,) = v["listeners"]
    assert l["name"] == "web" and l["measured"] and l["count"] == 30 and l["err_pct"] == 66.7
    routes = {r["label"]: r for r in l["routes"]}
    assert set(routes) == {"*/dead → gone", "(no route) → good"}, routes
    assert routes["(no route) → good"]["count"] == 20 and routes["(no route) → good"]["err_pct"] == 50.0
    dead = routes["*/dead → gone"]
    assert dead["count"] == 10 and dead["status"]["5xx"] == 10 and dead["err_pct"] == 100.0
    assert l["p99_us"] is not None and l["p99_is_max"]        # 30 values: a maximum, flagged
    # the cluster without a healthy server, and the health detail
    gone = {c["cluster"]: c for c in v["clusters"]}["gone"]
    assert gone["no_healthy"] and gone["down"] == 2
    ups = {u["address"]: u for u in v["upstreams"]}
    for u in ups.values():
        c = u["check"]
        assert c["checked"] and c["since_s"] is not None and c["age_s"] is not None
        if u["cluster"] == "good":
            assert c["ok"] and c["latency_ms"] is not None and u["health"] == "up"
        else:
            assert c["ok"] is False and "refused" in c["reason"].lower() and u["health"] == "down"
    text = _render(v, once=True)
    assert "✖ cluster gone: no healthy server" in text
    assert "errors 66.7% (5xx 33.3%)" in text
    assert "*/dead → gone" in text and "(no route) → good" in text
    assert "fail: Connection refused" in text and "ok " in text
    assert "66.7%" in _core_row(text, "all")


def test_listeners_are_counted_without_an_access_log(proxy_factory):
    """HAProxy's frontend rows: the core counts per listener (connections,
    requests, responses by class, request times), so the listener panel and
    /metrics have figures for every listener, with or without access_log,
    and for TCP listeners too."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    ok = HttpUpstream(lambda req: Response(status=404 if req.target == "/missing" else 200))
    web, api, raw, admin = free_port(), free_port(), free_port(), free_port()
    p = proxy_factory(
        [{"name": "web", "bind": f"127.0.0.1:{web}", "mode": "http", "cluster": "c"},
         {"name": "api", "bind": f"127.0.0.1:{api}", "mode": "http", "cluster": "c"},
         {"name": "raw", "bind": f"127.0.0.1:{raw}", "mode": "tcp", "cluster": "c"}],
        [{"name": "c", "servers": [ok.addr]}], extra=f'\n[admin]\nbind = "127.0.0.1:{admin}"\n')
    col = Collector(p.pid, use_bpf=False)
    try:
        col.sample()
        assert _get(web, ["/"] * 6 + ["/missing"] * 2) == [200] * 6 + [404] * 2
        assert _get(api, ["/"] * 3) == [200] * 3
        for _ in range(4):
            socket.create_connection(("127.0.0.1", raw), timeout=5).close()
        time.sleep(0.3)
        v = col.sample()
    finally:
        col.close()
    seg = {l["name"]: l for l in p.stats()["listeners"]}
    assert (seg["web"]["requests"], seg["web"]["resp_2xx"], seg["web"]["resp_4xx"]) == (8, 6, 2)
    assert seg["web"]["accepted"] == 1 and seg["api"]["requests"] == 3     # one keep-alive client each
    assert seg["raw"]["accepted"] == 4 and seg["raw"]["mode"] == "tcp"
    assert sum(seg["web"]["hist"]) == 8
    rows = {l["name"]: l for l in v["listeners"]}
    assert rows["web"]["count"] == 8 and rows["web"]["err_pct"] == 25.0, rows["web"]
    assert rows["web"]["status"] == {"1xx": 0, "2xx": 6, "3xx": 0, "4xx": 2, "5xx": 0}
    assert rows["api"]["count"] == 3 and rows["api"]["p99_us"] is not None
    assert rows["raw"]["count"] == 4
    text = _render(v, once=True)
    flat = " ".join(text.split())                    # the caption wraps
    assert "no → rows for web, api: set access_log" in flat, text
    m = {}
    for fam in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{admin}/metrics").text):
        for smp in fam.samples:
            m[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    assert m[("uproxy_listener_requests_total", (("listener", "web"),))] == 8
    assert m[("uproxy_listener_responses_total", (("class", "4xx"), ("listener", "web")))] == 2
    assert m[("uproxy_listener_connections_total", (("listener", "raw"),))] == 4
    assert ("uproxy_listener_requests_total", (("listener", "raw"),)) not in m
    ok.close()


def test_routes_are_counted_without_an_access_log_and_keep_their_counters(proxy_factory):
    """Traefik's router rows: the core counts per HTTP route (requests it
    routed, responses by class, times), shown in the listener panel and
    /metrics with no access log; a route keeps its counters when a reload
    puts another route before it."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    a = HttpUpstream(lambda req: Response(status=404 if req.target.endswith("/missing") else 200))
    b = HttpUpstream(lambda req: Response(status=500))
    web, admin = free_port(), free_port()
    p = proxy_factory(
        [{"name": "web", "bind": f"127.0.0.1:{web}", "mode": "http", "cluster": "a",
          "routes": [{"path_prefix": "/api", "cluster": "a"},
                     {"host": "b.test", "cluster": "b"}]}],
        [{"name": "a", "servers": [a.addr]}, {"name": "b", "servers": [b.addr]}],
        extra=f'\n[admin]\nbind = "127.0.0.1:{admin}"\n')
    col = Collector(p.pid, use_bpf=False)
    try:
        col.sample()
        assert _get(web, ["/api/x"] * 4 + ["/api/missing"] * 2 + ["/other"] * 3) == \
            [200] * 4 + [404] * 2 + [200] * 3
        with httpx.Client(base_url=f"http://127.0.0.1:{web}", headers={"Host": "b.test"}) as c:
            assert [c.get("/").status_code for _ in range(5)] == [500] * 5
        time.sleep(0.3)
        v = col.sample()
    finally:
        col.close()
    (l,) = [l for l in p.stats()["listeners"] if l["name"] == "web"]
    seg = {r["name"]: r for r in l["routes"]}
    assert (seg["web */api"]["requests"], seg["web */api"]["resp_2xx"], seg["web */api"]["resp_4xx"]) == (6, 4, 2)
    assert (seg["web b.test"]["requests"], seg["web b.test"]["resp_5xx"]) == (5, 5)
    assert sum(seg["web */api"]["hist"]) == 6
    rows = {r["label"]: r for r in v["listeners"][0]["routes"]}
    assert rows["*/api → a"]["count"] == 6 and rows["*/api → a"]["err_pct"] == 33.3
    assert rows["b.test → b"]["count"] == 5 and rows["b.test → b"]["err_pct"] == 100.0
    assert rows["(no route) → a"]["count"] == 3
    text = _render(v, once=True)
    assert "*/api → a" in text and "b.test → b" in text
    m = {}
    for fam in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{admin}/metrics").text):
        for smp in fam.samples:
            m[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    assert m[("uproxy_route_requests_total", (("listener", "web"), ("route", "*/api")))] == 6
    assert m[("uproxy_route_responses_total", (("class", "5xx"), ("listener", "web"), ("route", "b.test")))] == 5
    # A route put first: the others keep their counts (slots by what they match).
    cfg = open(p.path).read()
    i = cfg.index("[[listeners.routes]]")
    with open(p.path, "w") as f:
        f.write(cfg[:i] + '[[listeners.routes]]\npath_prefix = "/new"\ncluster = "b"\n\n' + cfg[i:])
    p.reload()
    wait_for(lambda: all(w["config_generation"] == 2 for w in p.stats()["workers"]), what="the reload")
    assert _get(web, ["/api/y"]) == [200]
    (l,) = [l for l in p.stats()["listeners"] if l["name"] == "web"]
    seg = {r["name"]: r for r in l["routes"]}
    assert seg["web */api"]["requests"] == 7 and seg["web */api"]["route"] == 1
    assert seg["web */new"]["requests"] == 0 and seg["web */new"]["route"] == 0
    a.close()
    b.close()


def test_status_json_has_health_detail(proxy_factory):
    up = HttpUpstream()
    port, admin = free_port(), free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                      [{"name": "c", "servers": [up.addr],
                        "health": {"path": "/", "interval": "100ms"}}],
                      extra=f'\n[admin]\nbind = "127.0.0.1:{admin}"\n')
    import httpx

    def checked():
        try:
            s = httpx.get(f"http://127.0.0.1:{admin}/status").json()
        except httpx.HTTPError:
            return None
        return s if s["health_checks"] and s["health_checks"][0]["checked"] else None
    s = wait_for(checked, 10, what="a health check in /status")
    hc = s["health_checks"][0]
    assert hc["cluster"] == "c" and hc["address"] == up.addr and hc["last_ok"] is True
    assert hc["last_latency_ms"] >= 0 and hc["since_ms"] <= hc["last_check_ms"]
    assert s["listeners"][0]["name"] == "web" and s["listeners"][0]["bind"].endswith(f":{port}")
    from uproxy.telemetry import detail
    published = detail.read(p.pid)
    assert published["health"][0]["address"] == up.addr
    assert os.stat(detail.path_for(p.pid)).st_mode & 0o777 == 0o600     # as the segment
    assert p.stop() == 0
    assert not os.path.exists(detail.path_for(p.pid))      # removed at stop, not left behind
    up.close()


def test_percentiles_need_enough_values():
    from uproxy import hist
    h = [0] * hist.BUCKETS
    for us in (100, 200, 5000):
        h[hist.bucket(us)] += 1
    p = view_mod.pcts(h)
    assert p["count"] == 3 and p["p99_is_max"] and p["p999_is_max"] and not p["p50_is_max"]
    assert p["p99_us"] == p["max_us"] >= 5000
    h = [0] * hist.BUCKETS
    h[hist.bucket(100)] = 99
    h[hist.bucket(90000)] = 1
    p = view_mod.pcts(h)
    assert not p["p99_is_max"] and p["p99_us"] < 200 and p["p999_is_max"] and p["p999_us"] >= 90000
    row = {"p99_us": 5000.0, "p99_is_max": True}
    assert dashboard._pct_cell(row, "p99") == "max 5.0ms"


def test_events_once_and_in_time_order():
    events = [{"time_ms": 1000, "text": "started generation 1 with 2 workers"},
              {"time_ms": 5000, "text": "reloaded: generation 2"},
              {"time_ms": 9000, "text": "server 1.2.3.4:80 in cluster c is down: Connection refused"}]
    notes = [{"time_ms": 900, "level": "warning", "text": "open-file limit 256 allows 50 client "
                                                           "connections per worker"},
             {"time_ms": 9001, "level": "warning",
              "text": "server 1.2.3.4:80 in cluster c is down: Connection refused"}]
    logs = [{"time_ms": 5001, "level": "info", "text": "reloaded /etc/u.toml: generation 2"},
            {"time_ms": 7000, "level": "error", "text": "reload failed, still running generation 2: boom"},
            {"time_ms": 7001, "level": "info", "text": "listening on 127.0.0.1:80"}]
    events.append({"time_ms": 7000, "text": "reload failed: boom"})
    out = view_mod.merge_events(events, notes, logs)
    texts = [e["text"] for e in out]
    assert [e["time_ms"] for e in out] == sorted(e["time_ms"] for e in out)
    assert texts == ["open-file limit 256 allows 50 client connections per worker",
                     "started generation 1 with 2 workers", "reloaded: generation 2",
                     "reload failed: boom", "listening on 127.0.0.1:80",
                     "server 1.2.3.4:80 in cluster c is down: Connection refused"]


def test_keys_htop_habits():
    st = dashboard.State(interval=1.0)
    st.key(">")
    assert st.sort_key == "rps"
    st.key("<<")
    assert st.sort_key == "cpu"
    st.key("r")
    assert st.reverse
    st.key("I")
    assert not st.reverse
    st.key("?")
    assert st.help
    st.key("x")                      # any key closes the help, and does nothing else
    assert not st.help and not st.quit
    st.key("/")
    assert st.typing
    st.key("w1q\x7f")                # typed text is not a command: q does not quit
    assert not st.quit and st.typed == "w1"
    st.key("\r")
    assert st.filter == "w1" and not st.typing
    st.key("\x1b")
    assert st.filter == ""
    st.key("+")
    assert st.interval == 2.0
    st.key("--")
    assert st.interval == 0.5
    st.key("3")
    assert dashboard.PANELS[st.panel] == "listeners"
    st.key("\t")
    assert dashboard.PANELS[st.panel] == "events"
    st.key("\x1b[A")                 # an arrow key: ignored
    assert st.filter == "" and not st.quit


def test_histogram_view_prints_like_runqlat():
    from uproxy import hist
    h = [0] * hist.BUCKETS
    for us, n in ((100, 3), (130, 1), (3000, 2)):
        h[hist.bucket(us)] += n
    lines = dashboard.histogram_lines(view_mod.hist_rows(h)["buckets"], "usecs", 20)
    assert lines[0].split() == ["usecs", ":", "count", "distribution"]
    rows = {l.split(":")[0].strip(): int(l.split(":")[1].split()[0]) for l in lines[1:]}
    assert rows["64 -> 127"] == 3 and rows["128 -> 255"] == 1 and rows["2048 -> 4095"] == 2
    assert rows["256 -> 511"] == 0 and len(rows) == 6           # empty octaves in between
    assert "|" + "*" * 20 + "|" in lines[1]                     # the tallest bar is full width


def test_cpu_column_is_the_threads_cpu_time_and_sorts_by_it(l4):
    """CPU% is the worker thread's CPU time over the interval (schedstat,
    /proc), checked against /proc's own figure for the same interval; the
    sampled cpu-clock never replaces it, and the CPU sort uses the same
    figure that is drawn."""
    p, port, _ = l4
    load = Load(port)
    col = Collector(p.pid, use_bpf=False)
    try:
        wait_for(lambda: load.done > 5, what="traffic")
        tids = [w["tid"] for w in col.reader.snapshot()["workers"]]

        def ticks():
            out = {}
            for t in tids:
                with open(f"/proc/{p.pid}/task/{t}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                out[t] = int(rest[11]) + int(rest[12])
            return out
        col.sample()
        a, t0 = ticks(), time.monotonic()
        time.sleep(1.0)
        b, t1 = ticks(), time.monotonic()
        v = col.sample()
    finally:
        col.close()
        load.close()
    hz = os.sysconf("SC_CLK_TCK")
    for r in v["cores"]:
        proc = 100 * (b[r["tid"]] - a[r["tid"]]) / hz / (t1 - t0)
        # /proc counts whole ticks: 2 ticks of slack, plus 5% of the figure
        assert abs(r["cpu_pct"] - proc) <= 2 * 100 / hz + 0.05 * proc + 1, (r["cpu_pct"], proc)
        assert r["cpu_src"] == "schedstat"
    fake = copy.deepcopy(v)
    for i, r in enumerate(fake["cores"]):
        r["cpu_pct"], r["cpu_clock_pct"] = [12.5, 77.0][i], [99.0, 1.0][i]
    fake["pmu"]["present"] = False
    t = dashboard.cores_table(fake, "cpu", 200)
    con = Console(record=True, width=200, file=open(os.devnull, "w"), color_system=None)
    con.print(t)
    text = con.export_text()
    rows = [l.split() for l in text.splitlines() if l.strip()[:2] in ("w0", "w1")]
    assert [r[0] for r in rows] == ["w1", "w0"]            # by cpu_pct, the figure shown
    assert "77.0" in " ".join(rows[0]) and "99.0" not in text


def _check_screen(s, width):
    lines = s.splitlines()
    assert "…" not in s, "a cell cut to …:\n" + s
    assert all(len(l) <= width for l in lines)
    hdr = [l for l in lines if l.split()[:1] == ["core"]]
    assert hdr, s
    for name in ("core", "req/s", "err%", "p99"):        # the key columns are never cut
        assert name in hdr[0].split(), (name, hdr[0])
    return hdr[0].split()


def test_top_layout_at_three_sizes(web):
    """Under tmux at 80x24, 120x40 and 200x50: the key columns stay whole
    and low-priority ones go first; every panel is reachable by its key; no
    cell is cut to `…`."""
    load = HttpLoad(web.port)
    try:
        wait_for(lambda: load.done > 20, what="traffic")
        for width, height in ((80, 24), (120, 40), (200, 50)):
            t = Tmux(f"{sys.executable} -m uproxy top --pid {web.pid} --interval 0.5",
                     env={"UPROXY_NO_BPF": "1"}, width=width, height=height)
            try:
                t.wait("per core")
                wait_for(lambda: "5xx" in t.screen() and "err%" in t.screen(), 10, what="a sample")
                time.sleep(1.2)
                s = t.screen()
                cols = _check_screen(s, width)
                assert "✖ cluster gone: no healthy server" in s, s
                if width == 80:
                    assert "faults/s" not in cols and "softirq%" not in cols
                    flat = " ".join(s.split())
                    assert "hidden at this width" in flat and "more in the panels" in flat
                if width == 200:
                    for name in ("faults/s", "io-wq/s", "softirq%", "p50", "5xx/s", "CPU%"):
                        assert name in cols, (name, cols)
                for key, want in (("2", "[2 upstreams]"), ("3", "[3 listeners]"),
                                  ("4", "[4 events]"), ("5", "[5 latency]"), ("?", "[? help]")):
                    t.keys(key)
                    t.wait(want)
                    time.sleep(0.1)
                    s = t.screen()
                    assert "…" not in s, s
                    if key == "2":
                        assert "127.0.0.1" in s and "down" in s
                    if key == "3":
                        assert "listeners and routes" in s and "→ good" in s
                    if key == "5":
                        assert "usecs" in s and "count" in s
                    if key == "4":
                        assert s.count("started generation 1") == 1, s
                t.keys("1")                    # closes the help
                t.keys("1")
                t.wait("[1 overview]")
                if width == 120:               # / filters by worker; Esc clears it
                    t.keys("/", "w", "1", "Enter")
                    t.wait("filter /w1")
                    lines = [l.split()[:1] for l in t.screen().splitlines()]
                    assert ["w1"] in lines and ["w0"] not in lines, t.screen()
                    t.keys("Escape")
                    wait_for(lambda: ["w0"] in [l.split()[:1] for l in t.screen().splitlines()],
                             10, what="the filter cleared")
                    t.keys("s")                # sort by req/s, then reversed
                    t.wait("sorted by rps")
                    t.keys("r")
                    t.wait("sorted by rps ↑")
                t.keys("C-c")                  # Ctrl-C quits cleanly, as q does
                t.wait("EXITED 0")
                assert "Traceback" not in t.screen()
            finally:
                t.close()
    finally:
        load.close()


def test_top_once_into_a_pipe_is_wide_plain_text(web):
    load = HttpLoad(web.port)
    try:
        wait_for(lambda: load.done > 20, what="traffic")
        r = subprocess.run([sys.executable, "-m", "uproxy", "top", "--once", "--pid", str(web.pid),
                            "--interval", "0.5"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, env=dict(os.environ, UPROXY_NO_BPF="1"))
    finally:
        load.close()
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b[" not in out                                # plain text
    assert "q quit" not in out and "? help" not in out       # no key footer
    assert not any(c in out for c in dashboard.SPARK)        # no one-sample sparkline
    assert "…" not in out and "hidden at this width" not in out
    assert max(len(l) for l in out.splitlines()) > 120       # wide
    hdr = [l for l in out.splitlines() if l.split()[:1] == ["core"]][0].split()
    for name in ("req/s", "err%", "p99", "faults/s", "io-wq/s", "softirq%", "uring"):
        assert name in hdr, name
    for panel in ("upstreams", "listeners and routes", "recent events"):
        assert panel in out


def test_run_dashboard_shows_start_up_warnings(tmp_path, servers):
    """The open-file-limit warning, logged before the dashboard took the
    screen, is shown on it (and each event once)."""
    srv = servers(echo)
    port = free_port()
    cfg = tmp_path / "u.toml"
    cfg.write_text(render_config({"workers": 2, "max_connections": 16384},
                                 [{"name": "l4", "bind": f"127.0.0.1:{port}", "mode": "tcp",
                                   "cluster": "c"}], [{"name": "c", "servers": [srv.addr]}]))
    t = Tmux(f"bash -c 'ulimit -n 4096 && exec {sys.executable} -m uproxy run -c {cfg} "
             f"--dashboard --interval 0.5'", env={"UPROXY_NO_BPF": "1"}, width=120, height=40)
    pid = None
    try:
        t.wait("per core", timeout=60)
        t.wait("open-file limit 4096 allows")
        t.keys("4")
        t.wait("recent events")
        s = t.screen()
        assert s.count("started generation 1") == 1, s
        assert "open-file limit 4096" in s.split("recent events")[1], s
        from uproxy import shm
        pid = [q for q in shm.running_pids()
               if str(cfg) in open(f"/proc/{q}/cmdline").read()][0]
        t.keys("q")
        t.wait("EXITED 0")
    finally:
        if pid and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGTERM)
        t.close()


def test_l4_cluster_whose_servers_are_gone(proxy_factory):
    """Without active checks: every connect fails, the cluster is marked in
    the header, its servers are failing, and the error share is the share
    of sessions that found no server."""
    port = free_port()
    p = proxy_factory([{"name": "l4", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c"}],
                      [{"name": "c", "servers": [f"127.0.0.1:{free_port()}"]}])
    col = Collector(p.pid, use_bpf=False)
    try:
        col.sample()
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.settimeout(2)
                try:
                    c.recv(1)
                except OSError:
                    pass
        time.sleep(0.2)
        v = col.sample()
    finally:
        col.close()
    (u,) = v["upstreams"]
    assert u["failing"] and u["health"] == "unchecked" and u["connect_errors"] > 0
    assert v["clusters"][0]["failing"] and not v["clusters"][0]["no_healthy"]
    assert v["total"]["err_pct"] == 100.0
    text = _render(v, once=True)
    assert "✖ cluster c: every connect failed" in text and "failing" in text
    assert "no server 100.0%" in text


def test_http2_line_counts_streams_and_client_resets(proxy_factory):
    """HTTP/2's line (HAProxy's h2 stats): between two samples, one h2c
    connection with 10 streams and another whose one stream the client
    resets while the upstream is still answering. The view's totals agree
    with what the clients did; the line names them, and says nothing on a
    proxy that has seen no HTTP/2."""
    h2conn = pytest.importorskip("h2.connection", reason="Python's h2 (pyproject test extras)")
    import h2.config
    import h2.events
    up = HttpUpstream(lambda req: Response(body=b"ok", delay=2.0 if req.target == "/slow" else 0))
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http",
                        "cluster": "c", "http2": True}],
                      [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1})

    def conn():
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        c = h2conn.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        return s, c

    def head(path):
        return [(":method", "GET"), (":scheme", "http"), (":path", path),
                (":authority", "localhost")]
    col = Collector(p.pid, use_bpf=False)
    try:
        v0 = col.sample()
        assert v0["http2"] is None
        assert not [l for l in _render(v0, once=True).splitlines() if l.startswith("HTTP/2 ")]
        s, c = conn()
        for i in range(10):
            c.send_headers(1 + 2 * i, head(f"/{i}"), end_stream=True)
        s.sendall(c.data_to_send())
        ended = 0
        while ended < 10:
            data = s.recv(65536)
            assert data
            ended += sum(isinstance(e, h2.events.StreamEnded) for e in c.receive_data(data))
        s.close()
        s, c = conn()
        c.send_headers(1, head("/slow"), end_stream=True)
        s.sendall(c.data_to_send())
        wait_for(lambda: up.requests and up.requests[-1].target == "/slow", 5,
                 what="the slow request at the upstream")
        c.reset_stream(1)
        s.sendall(c.data_to_send())
        wait_for(lambda: p.total("h2_resets") == 1, 5, what="the reset counted")
        s.close()
        time.sleep(0.2)
        v = col.sample()
    finally:
        col.close()
        up.close()
    h = v["http2"]
    assert (h["h2_connections"], h["h2_streams"], h["h2_resets"]) == (2, 11, 1), h
    assert h["h2_refused"] == h["h2_floods"] == h["h2_up_connections"] == 0, h
    assert round(h["h2_streams_s"] * v["interval_s"]) == 11, h
    text = _render(v, once=True)
    line = [l for l in text.splitlines() if l.startswith("HTTP/2 ")]
    assert line and "clients: conns/s" in line[0] and "reset by clients 1" in line[0], text
    assert "refused 0" in line[0] and "cut for floods 0" in line[0] and "upstreams" not in line[0]
