"""L4 TCP proxying through a real uproxy process, on 127.0.0.1.

Every test runs under both io_uring profiles (all this kernel's features,
and only what Linux 5.15 has) and both forwarding paths (splice and
buffered), so the fallbacks are exercised on this kernel.
"""
import hashlib
import os
import selectors
import socket
import struct
import threading
import time

import pytest

from conftest import PROFILES
from uproxy.features import POST_5_15
from support import (echo, free_port, pattern, pattern_sha, recv_all_sha, recv_until_close,
                     unanswering_port, wait_for)

pytestmark = pytest.mark.parametrize("profile", list(PROFILES))
FORWARDING = ["splice", "splice_iowq", "buffered"]


def tcp_proxy(proxy_factory, servers, profile, forwarding="splice", cluster=None, listener=None,
              proxy=None, env=None):
    port = free_port()
    lst = {"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c",
           "forwarding": forwarding}
    lst.update(listener or {})
    cl = {"name": "c", "servers": servers}
    cl.update(cluster or {})
    p = proxy_factory([lst], [cl], proxy=proxy, profile=profile, env=env)
    p.port = port
    used = set(p.stats()["workers"][0]["features"])
    if profile == "5.15":
        assert not used & set(POST_5_15), f"5.15 profile still uses {used & set(POST_5_15)}"
    else:
        # "full" is everything this kernel has (on a 5.15 host, that is the
        # 5.15 set itself).
        from uproxy import features
        from uproxy.runtime import probe
        assert used == set(features.names(probe())), used
    return p


def connect(port, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s


def rst_close(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@pytest.mark.parametrize("forwarding", FORWARDING)
def test_echo_round_trips(proxy_factory, servers, profile, forwarding):
    up = servers(echo)
    p = tcp_proxy(proxy_factory, [up.addr], profile, forwarding)
    with connect(p.port) as s:
        for i in range(50):
            msg = f"hello {i} ".encode() * (i + 1)
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
            assert got == msg
    t = p.stats()["total"]
    assert t["accepted"] >= 1 and t["upstream_connects"] >= 1
    assert t[f"sessions_{'buffered' if forwarding == 'buffered' else 'splice'}"] == 1


@pytest.mark.parametrize("forwarding", FORWARDING)
def test_256mib_each_way_at_once_intact(proxy_factory, servers, profile, forwarding):
    size = 256 << 20

    def upstream(c, srv):
        # Send our stream while receiving the client's, both to the end.
        def send():
            for chunk in pattern(2, size):
                c.sendall(chunk)
            c.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send)
        t.start()
        got = recv_all_sha(c)
        t.join()
        return got

    up = servers(upstream)
    p = tcp_proxy(proxy_factory, [up.addr], profile, forwarding)
    s = connect(p.port, timeout=60)
    result = {}

    def send():
        for chunk in pattern(1, size):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    result["client"] = recv_all_sha(s)
    t.join()
    s.close()
    wait_for(lambda: up.results, 30, what="the upstream to finish")
    assert result["client"] == (size, pattern_sha(2, size)), "upstream -> client stream damaged"
    assert up.results[0] == (size, pattern_sha(1, size)), "client -> upstream stream damaged"


class SelectorEcho:
    """One thread echoing on many connections (1,000 threads would measure
    Python, not the proxy)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.accepted = 0
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            for key, _ in self.sel.select(0.1):
                if key.fileobj is self.sock:
                    try:
                        while True:
                            c, _ = self.sock.accept()
                            c.setblocking(False)
                            self.sel.register(c, selectors.EVENT_READ)
                            self.accepted += 1
                    except BlockingIOError:
                        pass
                else:
                    c = key.fileobj
                    try:
                        b = c.recv(65536)
                    except (BlockingIOError, ConnectionError):
                        b = None
                    if b:
                        c.sendall(b)
                    elif b == b"" or b is None:
                        self.sel.unregister(c)
                        c.close()

    def close(self):
        self.stop = True
        self.t.join()
        self.sock.close()


def test_1000_concurrent_connections(proxy_factory, profile):
    up = SelectorEcho()
    try:
        p = tcp_proxy(proxy_factory, [up.addr], profile, "buffered")
        socks = [connect(p.port) for _ in range(1000)]
        wait_for(lambda: p.total("active") == 1000, 20, what="1000 active sessions")
        for i, s in enumerate(socks):
            s.sendall(b"conn %06d\n" % i)
        for i, s in enumerate(socks):
            got = b""
            while len(got) < 12:
                got += s.recv(100)
            assert got == b"conn %06d\n" % i
        for s in socks:
            s.close()
        wait_for(lambda: p.total("active") == 0, 20, what="sessions to close")
        assert p.total("closed") >= 1000
    finally:
        up.close()


@pytest.mark.parametrize("forwarding", FORWARDING)
def test_half_close_client_first(proxy_factory, servers, profile, forwarding):
    """The client's FIN reaches the upstream while the reply still flows."""
    def upstream(c, srv):
        data = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            data += b
        time.sleep(0.2)               # reply well after the client's FIN
        c.sendall(b"reply to " + data)
        c.shutdown(socket.SHUT_WR)
        return data

    up = servers(upstream)
    p = tcp_proxy(proxy_factory, [up.addr], profile, forwarding)
    with connect(p.port) as s:
        s.sendall(b"question")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    assert got == b"reply to question"
    wait_for(lambda: up.results, what="upstream result")
    assert up.results == [b"question"]


@pytest.mark.parametrize("forwarding", FORWARDING)
def test_half_close_upstream_first(proxy_factory, servers, profile, forwarding):
    """The upstream's FIN reaches the client while the client keeps sending."""
    def upstream(c, srv):
        c.sendall(b"banner")
        c.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            data += b
        return data

    up = servers(upstream)
    p = tcp_proxy(proxy_factory, [up.addr], profile, forwarding)
    with connect(p.port) as s:
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        assert got == b"banner"
        for i in range(10):                 # the other direction still flows
            s.sendall(b"after-fin %d;" % i)
            time.sleep(0.01)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""
    wait_for(lambda: up.results, what="upstream result")
    assert up.results[0] == b"".join(b"after-fin %d;" % i for i in range(10))


@pytest.mark.parametrize("forwarding", FORWARDING)
def test_client_reset_reaches_upstream(proxy_factory, servers, profile, forwarding):
    def upstream(c, srv):
        c.settimeout(10)
        try:
            while c.recv(65536):
                pass
        except ConnectionResetError:
            return "reset"
        return "fin"

    up = servers(upstream)
    p = tcp_proxy(proxy_factory, [up.addr], profile, forwarding)
    s = connect(p.port)
    s.sendall(b"x" * 1000)
    time.sleep(0.2)
    rst_close(s)
    wait_for(lambda: up.results, what="upstream to see the end")
    assert up.results == ["reset"]
    wait_for(lambda: p.total("err_client_reset") >= 1, what="client reset counted")


@pytest.mark.parametrize("forwarding", FORWARDING)
def test_upstream_reset_reaches_client(proxy_factory, servers, profile, forwarding):
    def upstream(c, srv):
        c.sendall(b"hello")
        time.sleep(0.2)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    up = servers(upstream)
    p = tcp_proxy(proxy_factory, [up.addr], profile, forwarding)
    with connect(p.port) as s:
        assert s.recv(5) == b"hello"
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass
    wait_for(lambda: p.total("err_upstream_reset") >= 1, what="upstream reset counted")


def test_refused_server_is_skipped(proxy_factory, servers, profile):
    up = servers(echo)
    dead = f"127.0.0.1:{free_port()}"
    p = tcp_proxy(proxy_factory, [dead, up.addr], profile,
                  cluster={"fail_threshold": 0})
    for i in range(6):
        with connect(p.port) as s:
            s.sendall(b"ping%d" % i)
            assert s.recv(100) == b"ping%d" % i
    t = p.stats()["total"]
    assert t["err_connect_refused"] >= 3
    assert t["err_no_server"] == 0


def test_all_refused_closes_client(proxy_factory, profile):
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    p = tcp_proxy(proxy_factory, dead, profile)
    with connect(p.port) as s:
        t0 = time.monotonic()
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < 3
    t = p.stats()["total"]
    assert t["err_connect_refused"] >= 2 and t["err_no_server"] >= 1


def test_connect_timeout(proxy_factory, profile):
    # A listener whose accept queue is full drops further SYNs: connects
    # to it hang, as to a host that does not answer.
    with unanswering_port() as port:
        p = tcp_proxy(proxy_factory, [f"127.0.0.1:{port}"], profile,
                      cluster={"connect_timeout": "500ms", "max_attempts": 1})
        with connect(p.port) as s:
            t0 = time.monotonic()
            try:
                s.recv(10)
            except ConnectionResetError:
                pass
            took = time.monotonic() - t0
        assert 0.4 < took < 3, took
        assert p.total("err_connect_timeout") >= 1


@pytest.mark.parametrize("forwarding", FORWARDING)
def test_slow_upstream(proxy_factory, servers, profile, forwarding):
    def upstream(c, srv):
        for i in range(20):
            c.sendall(b"%02d" % i)
            time.sleep(0.02)
        c.shutdown(socket.SHUT_WR)

    up = servers(upstream)
    p = tcp_proxy(proxy_factory, [up.addr], profile, forwarding)
    with connect(p.port) as s:
        got = b""
        while True:
            b = s.recv(100)
            if not b:
                break
            got += b
    assert got == b"".join(b"%02d" % i for i in range(20))


@pytest.mark.parametrize("forwarding", FORWARDING)
def test_upstream_dies_mid_session(proxy_factory, servers, profile, forwarding):
    def upstream(c, srv):
        c.sendall(b"partial")
        time.sleep(0.1)
        srv.close()                    # the whole server goes away
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    up = servers(upstream)
    p = tcp_proxy(proxy_factory, [up.addr], profile, forwarding)
    with connect(p.port) as s:
        got = recv_until_close(s, 100)
        assert got == b"partial"
    # The proxy lives on: a new client is refused an upstream, not hung.
    with connect(p.port) as s:
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
    assert p.p.poll() is None


def test_sessions_end_while_reloads_arrive(proxy_factory, servers, profile):
    """A session reads nothing of its configuration table after dropping
    its reference on it: the control plane frees a table as soon as no
    reference holds it and every worker runs a newer one. Sessions opened
    one reload apart (each the last holder of its table) end together by
    client resets while SIGHUPs keep arriving every few ms; each upstream's
    pipe is full, so the worker has a pipe to drain between a session's two
    sides. While they end, the reloads fail (a broken file), so every one
    is followed by a collection of unused tables that no newer table holds
    back. Under the sanitized build (scripts/test-sanitized) a read of a
    freed table is a use-after-free report; PYTHONMALLOC=malloc puts the
    tables, small cffi allocations, where the sanitizer sees them (pymalloc
    would keep them out of its sight)."""
    from uproxy import shm
    done = threading.Event()

    def flood(c, srv):
        chunk = b"f" * 65536
        c.settimeout(15)
        try:
            while not done.is_set():
                c.sendall(chunk)       # until the proxy closes this side
        except OSError:
            return "closed"
        return "done"

    up = servers(flood)
    p = tcp_proxy(proxy_factory, [up.addr], profile, "splice", proxy={"workers": 1},
                  env={"PYTHONMALLOC": "malloc"})
    with open(p.path) as f:
        good = f.read()

    def config(text):                  # whole, as an editor saves it: a reload reads one or the other
        with open(p.path + ".new", "w") as f:
            f.write(text)
        os.replace(p.path + ".new", p.path)
    seg = shm.Reader(p.pid)
    h, worker = seg.header, seg.workers[0]

    def sighups():
        while not done.is_set():
            p.reload()
            time.sleep(0.002)

    def alive(cond):
        def check():
            assert p.p.poll() is None, p.output()[-20000:]
            return cond()
        return check
    reloads = threading.Thread(target=sighups, daemon=True)
    reloads.start()
    ended = rounds = 0
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            batch = []
            for _ in range(24):
                gen = h.config_generation
                wait_for(alive(lambda: h.config_generation > gen), 5, 0.001, "a reload")
                s = connect(p.port)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                assert s.recv(1)                 # open, and the upstream's bytes flow
                batch.append(s)
            config("[proxy\n")                  # from now on, reloads fail
            failed = h.reload_failures
            wait_for(alive(lambda: h.reload_failures > failed + 1 and
                           worker.config_generation == h.config_generation), 5, 0.001,
                     "a failed reload, with the worker on the newest table")
            for s in batch:
                rst_close(s)
            ended += len(batch)
            wait_for(alive(lambda: p.total("active") == 0), 15, what="the sessions to end")
            config(good)
            rounds += 1
    finally:
        done.set()
        reloads.join(5)
        config(good)
    assert p.total("closed") >= ended
    assert h.reloads >= ended and h.reload_failures > rounds
    seg.close()
    assert p.p.poll() is None, p.output()


def test_idle_timeout(proxy_factory, servers, profile):
    up = servers(echo)
    p = tcp_proxy(proxy_factory, [up.addr], profile, listener={"idle_timeout": "1s"})
    with connect(p.port) as s:
        s.sendall(b"a")
        assert s.recv(1) == b"a"
        t0 = time.monotonic()
        assert s.recv(1) == b""
        took = time.monotonic() - t0
    assert 0.8 < took < 2.5, took
    assert p.total("err_idle_timeout") == 1


def test_sigterm_drains_open_sessions(proxy_factory, servers, profile):
    up = servers(echo)
    p = tcp_proxy(proxy_factory, [up.addr], profile, proxy={"workers": 2, "drain_timeout": "20s"})
    s = connect(p.port)
    s.sendall(b"before")
    assert s.recv(6) == b"before"
    p.p.terminate()
    wait_for(lambda: all(w["state"] != "running" for w in p.stats()["workers"]),
             what="workers to start draining")
    # New clients are refused once the listening sockets close...
    def refused():
        try:
            socket.create_connection(("127.0.0.1", p.port), timeout=1).close()
            return False
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            return False      # raced the listening socket closing: try again
    wait_for(refused, 5, what="the listener to close")
    # ...while the open session still works,
    s.sendall(b"during")
    assert s.recv(6) == b"during"
    assert p.p.poll() is None
    s.close()
    # and the proxy leaves once it is done.
    assert p.p.wait(10) == 0


def test_drain_timeout_cuts_idle_sessions(proxy_factory, servers, profile):
    up = servers(echo)
    p = tcp_proxy(proxy_factory, [up.addr], profile, proxy={"workers": 1, "drain_timeout": "1s"})
    s = connect(p.port)
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    t0 = time.monotonic()
    p.p.terminate()
    assert p.p.wait(10) == 0
    assert time.monotonic() - t0 < 4
    assert s.recv(1) == b""
    s.close()


def test_connection_limit_per_worker(proxy_factory, servers, profile):
    up = servers(echo)
    p = tcp_proxy(proxy_factory, [up.addr], profile, proxy={"workers": 1, "max_connections": 8})
    socks = [connect(p.port) for _ in range(8)]
    for s in socks:
        s.sendall(b"k")
        assert s.recv(1) == b"k"
    extra = connect(p.port)          # completes in the kernel's backlog...
    extra.settimeout(0.5)
    extra.sendall(b"z")
    with pytest.raises(socket.timeout):
        extra.recv(1)                 # ...but is not served while full
    assert p.total("accept_pauses") >= 1 and p.total("rejected") == 0
    socks.pop().close()
    extra.settimeout(5)
    try:
        got = extra.recv(1)
    except ConnectionResetError:
        got = b"reset"
    assert got == b"z"               # served once a slot frees
    extra.close()
    for s in socks:
        s.close()


def test_backpressure_keeps_memory_bounded(proxy_factory, servers, profile):
    stop = threading.Event()

    def upstream(c, srv):
        stop.wait(30)                  # never reads

    up = servers(upstream)
    p = tcp_proxy(proxy_factory, [up.addr], profile, "buffered")
    rss0 = p.rss_kib()
    s = connect(p.port)
    s.setblocking(False)
    sent = 0
    chunk = b"b" * 65536
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
    grew = p.rss_kib() - rss0
    stop.set()
    s.close()
    # The sender was stopped by TCP flow control after the proxy's queue
    # limit (256 KiB) plus socket buffers, not after the proxy buffered it all.
    assert sent < 64 << 20, sent
    # (Tens of MiB at most, against the gigabytes an unbounded queue would take.)
    assert grew < 64 << 10, f"RSS grew by {grew} KiB"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to restrict to one")
def test_workers_respect_the_allowed_cpus(tmp_path, profile):
    """`taskset -c N uproxy run --workers 1` pins its worker to CPU N (the
    process's allowed set, as with cgroup cpusets or CPUAffinity=)."""
    import subprocess
    import sys
    from support import ROOT, render_config
    cpu = sorted(os.sched_getaffinity(0))[-1]
    port = free_port()
    cfg = tmp_path / "pin.toml"
    cfg.write_text(render_config({}, [{"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp",
                                       "cluster": "c"}], [{"name": "c", "servers": ["127.0.0.1:1"]}]))
    env = dict(os.environ, UPROXY_DISABLE="post-5.15" if profile == "5.15" else "")
    p = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-m", "uproxy", "run", "-c",
                          str(cfg), "--workers", "1"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from uproxy import shm
        snap = wait_for(lambda: _snapshot(shm, p.pid), 20, what="the worker")
        w = snap["workers"][0]
        assert w["cpu"] == cpu
        assert os.sched_getaffinity(w["tid"]) == {cpu}
    finally:
        p.terminate()
        assert p.wait(20) == 0


def _snapshot(shm, pid):
    try:
        r = shm.Reader(pid)
    except (OSError, shm.LayoutError):
        return None
    try:
        s = r.snapshot()
        return s if s["workers"] and s["workers"][0]["state"] == "running" else None
    finally:
        r.close()


def test_hash_balancing_by_client_address(proxy_factory, servers, profile):
    """balance = "hash" on a tcp cluster (hash_key "client_ip", the default)
    sends each client address to one server, and different addresses to
    different servers (was: the key was never set, every session hashed
    the same)."""
    def label(name):
        def handle(c, srv):
            c.sendall(name)
        return handle
    ups = [servers(label(b"A")), servers(label(b"B")), servers(label(b"C"))]
    p = tcp_proxy(proxy_factory, [u.addr for u in ups], profile, cluster={"balance": "hash"})

    def via(src):
        s = socket.socket()
        s.settimeout(10)
        s.bind((src, 0))
        s.connect(("127.0.0.1", p.port))
        try:
            return recv_until_close(s)
        finally:
            s.close()
    seen = {}
    for i in range(2, 26):
        src = f"127.0.3.{i}"
        got = {via(src) for _ in range(3)}
        assert len(got) == 1, (src, got)      # sticky: one server per address
        seen[src] = got.pop()
    assert len(set(seen.values())) >= 2, seen  # spread: 24 addresses over 3 servers
