"""`uproxy run --watch` and [proxy] watch = true: the file changes, the
proxy reloads by itself, debounced, with SIGHUP's rule (a file that does
not validate leaves the running configuration serving)."""
from __future__ import annotations

import os
import time

from fleet_support import Client, Named, config, metrics, status
from support import Proxy, free_port, wait_for


def _write_atomic(path: str, text: str):
    """As editors and deployment tools do: a new file renamed over the old."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _start(tmp_path, servers, args=("--watch",), proxy_extra=""):
    listen, admin = free_port(), free_port()
    p = Proxy(tmp_path, config(listen, admin, servers, proxy_extra=proxy_extra), args=args)
    wait_for(lambda: "admin endpoint on" in p.output(), what="the admin endpoint")
    return p, listen, admin


def test_an_edit_reloads_without_a_failed_request(tmp_path):
    a, b = Named("A"), Named("B")
    p, listen, admin = _start(tmp_path, [a.addr])
    client = Client(listen)
    try:
        wait_for(lambda: client.seen.get("A", 0) > 10, what="requests served by A")
        st = status(admin)
        assert st["providers"]["watch"]["files"] == [p.path]
        before = st["reloads"]
        t0 = time.monotonic()
        _write_atomic(p.path, config(listen, admin, [b.addr]))
        wait_for(lambda: client.seen_since("B", t0), timeout=5, what="B serving after the edit")
        took = time.monotonic() - t0
        print(f"watch: file written -> new server serving in {took * 1000:.0f} ms")
        st = status(admin)
        assert st["reloads"] == before + 1
        assert st["providers"]["last_reload"]["source"] == "watch"
        assert st["providers"]["last_reload"]["ok"] is True
        assert "reloaded" in p.output() and "(watch)" in p.output()
        assert took < 2.0
        time.sleep(0.3)
    finally:
        client.stop()
        p.stop()
        a.close()
        b.close()
    assert client.failures == [], client.failures[:5]


def test_an_invalid_edit_keeps_the_running_configuration(tmp_path):
    a = Named("A")
    p, listen, admin = _start(tmp_path, [a.addr])
    client = Client(listen)
    try:
        wait_for(lambda: client.seen.get("A", 0) > 5, what="requests served by A")
        gen = status(admin)["config_generation"]
        # written in place, as `echo >>` does: a modify, not a rename
        with open(p.path, "a") as f:
            f.write('\n[proxy2]\nworkerz = 3\n')
        wait_for(lambda: status(admin)["reload_failures"] == 1, timeout=5,
                 what="the refused reload to be counted")
        st = status(admin)
        assert st["config_generation"] == gen
        last = st["providers"]["last_reload"]
        assert last["ok"] is False and last["source"] == "watch"
        assert "proxy2" in last["error"]
        assert "uproxy_reload_failures_total 1.0" in metrics(admin)
        assert "reload failed (watch), still running generation" in p.output()
        t = time.monotonic()
        wait_for(lambda: client.seen_since("A", t), what="A still serving")
        # fixed: the next save applies
        _write_atomic(p.path, config(listen, admin, [a.addr]) + "\n# fixed\n")
        wait_for(lambda: status(admin)["reloads"] == 1, timeout=5, what="the fixed file to apply")
    finally:
        client.stop()
        p.stop()
        a.close()
    assert client.failures == [], client.failures[:5]


def test_a_burst_of_writes_is_one_reload_and_neighbours_are_ignored(tmp_path):
    a = Named("A")
    p, listen, admin = _start(tmp_path, [a.addr], args=(), proxy_extra="watch = true")
    try:
        text = config(listen, admin, [a.addr], proxy_extra="watch = true")
        # a neighbour in the same directory: its events cost a hash, not a reload
        with open(os.path.join(os.path.dirname(p.path), "neighbour.txt"), "w") as f:
            f.write("x")
        time.sleep(0.6)
        assert status(admin)["reloads"] == 0
        # ten saves in 100 ms (an editor's autosave, a tool writing twice)
        for i in range(10):
            with open(p.path, "w") as f:
                f.write(text + f"\n# save {i}\n")
            time.sleep(0.01)
        wait_for(lambda: status(admin)["reloads"] >= 1, timeout=5, what="a reload")
        time.sleep(0.8)                   # past the debounce window: no second one
        assert status(admin)["reloads"] == 1, p.output()
        # the same content written again is no change
        with open(p.path, "w") as f:
            f.write(text + "\n# save 9\n")
        time.sleep(0.8)
        assert status(admin)["reloads"] == 1
    finally:
        p.stop()
        a.close()


def test_without_watch_nothing_is_watched(tmp_path):
    a = Named("A")
    p, listen, admin = _start(tmp_path, [a.addr], args=())
    try:
        assert status(admin)["providers"]["watch"] is None
        _write_atomic(p.path, config(listen, admin, [a.addr]) + "\n# edited\n")
        time.sleep(0.8)
        assert status(admin)["reloads"] == 0
    finally:
        p.stop()
        a.close()
