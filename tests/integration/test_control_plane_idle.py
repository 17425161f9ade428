"""The Python control plane stays asleep while it has nothing to do.

Its threads run on the workers' CPUs (the process is pinned as a whole in
a benchmark), so each wake-up is CPU the proxy spends, counted per request
under load like the workers' own (bench/h2c_cost.py counts the whole
process). Without health checks and without an access log, the health
checker's thread wakes once a second (its detail file for `uproxy top`)
and the access log's thread not at all; they once woke 20 and 10 times a
second. What they still do is tested here too: a reload that turns the
access log on gets its records written, and a health check is still made
at its interval.

Real `uproxy run` processes; wake-ups are the threads' context switches
from /proc/PID/task/TID/status."""
import os
import socket
import time

from http_upstream import HttpUpstream, Response
from support import free_port, recv_until_close, render_config, wait_for


def switches(pid) -> dict:
    """tid -> (name, voluntary + involuntary context switches)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            n = 0
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        n += int(line.split()[1])
        except OSError:
            continue
        out[int(tid)] = (name, n)
    return out


def control_wakeups_per_s(pid, seconds=3.0) -> tuple:
    """Context switches per second of every thread but the workers'
    (uproxy-wN), and the per-thread detail for the failure message."""
    a = switches(pid)
    time.sleep(seconds)
    b = switches(pid)
    per = {f"{name}[{tid}]": (n - a.get(tid, (name, 0))[1]) / seconds
           for tid, (name, n) in b.items() if not name.startswith("uproxy-w")}
    return sum(per.values()), per


def get(port, path="/x"):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        return recv_until_close(s)


def test_an_idle_control_plane_sleeps(proxy_factory):
    """No health checks, no access log: the threads other than the worker
    wake at most ~6 times a second (the main loop's 5, the health thread's
    1), where they woke ~35 times."""
    up = HttpUpstream(lambda req: Response(body=b"x" * 64))
    port = free_port()
    p = proxy_factory([{"name": "h", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                      [{"name": "c", "servers": [f"127.0.0.1:{up.port}"]}], proxy={"workers": 1})
    assert get(port).startswith(b"HTTP/1.1 200")
    time.sleep(1.0)                                  # start-up's own work done
    rate, per = control_wakeups_per_s(p.pid)
    print(f"control plane wake-ups per second: {rate:.1f} {per}")
    assert rate <= 12, f"the control plane woke {rate:.1f} times a second: {per}"


def test_access_log_turned_on_by_a_reload_is_written(proxy_factory, tmp_path):
    """The access log's thread sleeps while no listener logs; a reload that
    turns the log on wakes it, and the records reach the file."""
    up = HttpUpstream(lambda req: Response(body=b"x" * 64))
    port = free_port()
    log = str(tmp_path / "access.log")
    listener = {"name": "h", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}
    clusters = [{"name": "c", "servers": [f"127.0.0.1:{up.port}"]}]
    p = proxy_factory([listener], clusters, proxy={"workers": 1})
    assert get(port).startswith(b"HTTP/1.1 200")
    with open(p.path, "w") as f:
        f.write(render_config({"workers": 1}, [{**listener, "access_log": log}], clusters))
    p.reload()

    def logged():
        get(port, "/after-reload")
        return os.path.exists(log) and "/after-reload" in open(log).read()
    wait_for(logged, 10, what="the access log's record after the reload")


def test_health_checks_still_run_at_their_interval(proxy_factory):
    """The health thread sleeps until the next check is due: with a 200 ms
    interval a server is checked about five times a second."""
    hits = []
    up = HttpUpstream(lambda req: (hits.append(time.monotonic()), Response(body=b"ok"))[1])
    port = free_port()
    proxy_factory([{"name": "h", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                  [{"name": "c", "servers": [f"127.0.0.1:{up.port}"],
                    "health": {"path": "/health", "interval": "200ms"}}], proxy={"workers": 1})
    time.sleep(0.5)
    n0 = len(hits)
    time.sleep(2.0)
    n = len(hits) - n0
    assert 6 <= n <= 14, f"{n} checks in 2 s at a 200 ms interval"
