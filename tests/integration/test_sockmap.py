"""forwarding = "sockmap": L4 sessions moved by the kernel (bpf/sockmap.c,
native/l4/sockmap.c), through a real uproxy process on 127.0.0.1.

Every check is made on what the receiver got (its length and sha256, or
its bytes), never on the sender's success: a redirect that fails drops
bytes TCP has already acknowledged, so a sender always "succeeds".
Skipped, with the reason, where the program cannot be loaded (not root, a
kernel before 6.4, no bcc or kernel headers).
"""
import os
import socket
import struct
import threading
import time

import pytest

from support import (echo, free_port, pattern, pattern_sha, recv_all_sha, recv_until_close,
                     wait_for)


def _why_not():
    from uproxy import sockmap
    return sockmap.unavailable()


WHY = _why_not()
if WHY:
    print(f"\ntest_sockmap: skipped: sockmap is not available here: {WHY}")
pytestmark = pytest.mark.skipif(bool(WHY), reason=f"sockmap not available: {WHY}")


def sm_proxy(proxy_factory, servers_, listener=None, proxy=None, env=None, forwarding="sockmap",
             cluster=None):
    port = free_port()
    lst = {"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c",
           "forwarding": forwarding}
    lst.update(listener or {})
    p = proxy_factory([lst], [{"name": "c", "servers": servers_, **(cluster or {})}],
                      proxy=proxy or {"workers": 2}, env=env)
    p.port = port
    return p


def check_kernel_moved(p, sessions):
    """The sessions were the kernel's, and it refused no redirect."""
    t = p.stats()["total"]
    assert t["sessions_sockmap"] == sessions, t
    assert t["sessions_splice"] == 0 and t["sessions_buffered"] == 0, t
    assert t["sockmap_redirect_fails"] == 0, t
    assert "sockmap" in p.stats()["workers"][0]["features"]


def connect(port, timeout=30):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def both_ways_at_once(size, seed_c, seed_u, chunk=4096):
    """An upstream that writes its own stream from its first instant while
    reading the client's to the end; returns its handler."""
    def upstream(c, srv):
        def send():
            for part in pattern(seed_u, size):
                for i in range(0, len(part), chunk):
                    c.sendall(part[i:i + chunk])
            c.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send)
        t.start()
        got = recv_all_sha(c)
        t.join()
        return got
    return upstream


def client_session(port, size, seed_c, seed_u, chunk=4096):
    """A client that writes at once after connecting, in small pieces, all
    through the hand-over, while reading the upstream's stream."""
    s = connect(port)
    def send():
        for part in pattern(seed_c, size):
            for i in range(0, len(part), chunk):
                s.sendall(part[i:i + chunk])
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send)
    t.start()
    got = recv_all_sha(s)
    t.join()
    s.close()
    return got


# The worker's receive with every io_uring feature, and without multishot
# receive and buffer rings (what passed bytes and the FIN then go through).
RECV_PROFILES = {"full": "", "singleshot": "multishot_recv,buf_ring,multishot_accept"}


@pytest.mark.parametrize("profile", list(RECV_PROFILES))
def test_writes_at_once_through_the_handover(proxy_factory, servers, profile):
    """Both ends write from their first instant, in 4 KiB pieces, through
    the hand-over; 120 sessions, each checked by content on both sides."""
    size = 256 << 10
    up = servers(both_ways_at_once(size, 1, 2))
    env = {"UPROXY_DISABLE": RECV_PROFILES[profile]} if RECV_PROFILES[profile] else None
    p = sm_proxy(proxy_factory, [up.addr], env=env)
    n = 120
    for i in range(n):
        got = client_session(p.port, size, 1, 2)
        assert got == (size, pattern_sha(2, size)), f"session {i}: upstream -> client damaged"
    wait_for(lambda: len(up.results) == n, 20, what="every upstream result")
    want = (size, pattern_sha(1, size))
    bad = [i for i, r in enumerate(up.results) if r != want]
    assert not bad, f"client -> upstream damaged in sessions {bad[:10]}: {up.results[bad[0]]}"
    check_kernel_moved(p, n)
    t = p.stats()["total"]
    assert t["bytes_from_clients"] == n * size and t["bytes_to_clients"] == n * size, t


def test_first_bytes_before_the_handover_then_silence(proxy_factory, servers):
    """A client whose only bytes arrive before its socket enters the map,
    then waits for the answer (what stalled a naive version): the bytes
    must still go on."""
    def upstream(c, srv):
        data = c.recv(100)
        c.sendall(b"answer:" + data)
        return data
    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr])
    for i in range(50):
        with connect(p.port, timeout=5) as s:
            s.sendall(b"question %d" % i)
            got = b""
            while not got.endswith(b"question %d" % i):
                b = s.recv(100)
                assert b, f"session {i}: closed after {got!r}"
                got += b
            assert got == b"answer:question %d" % i
    check_kernel_moved(p, 50)


def test_upstream_speaks_first(proxy_factory, servers):
    def upstream(c, srv):
        c.sendall(b"220 banner\r\n")
        data = c.recv(100)
        c.sendall(b"echo " + data)
        c.shutdown(socket.SHUT_WR)
    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr])
    for _ in range(30):
        with connect(p.port, timeout=5) as s:
            got = b""
            while len(got) < 12:
                got += s.recv(100)
            assert got == b"220 banner\r\n"
            s.sendall(b"HELO")
            assert recv_until_close(s) == b"echo HELO"
    check_kernel_moved(p, 30)


def test_large_each_way_with_a_slow_reader(proxy_factory, servers):
    """256 MiB each way at once; the upstream reads slowly, so the kernel
    queues and the client's sender is held back by TCP flow control."""
    size = 256 << 20

    def upstream(c, srv):
        def send():
            for part in pattern(2, size):
                c.sendall(part)
            c.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send)
        t.start()
        import hashlib
        h, n = hashlib.sha256(), 0
        while True:
            b = c.recv(64 << 10)
            if not b:
                break
            h.update(b)
            n += len(b)
            if n < (32 << 20):
                time.sleep(0.0005)     # slow for the first 32 MiB
        t.join()
        return n, h.hexdigest()

    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr])
    got = client_session(p.port, size, 1, 2, chunk=1 << 20)
    assert got == (size, pattern_sha(2, size)), "upstream -> client damaged"
    wait_for(lambda: up.results, 60, what="the upstream to finish")
    assert up.results[0] == (size, pattern_sha(1, size)), "client -> upstream damaged"
    check_kernel_moved(p, 1)


def test_reader_that_stops_for_seconds(proxy_factory, servers):
    """The upstream reads 1 MiB, stops for 3 s while the client has sent
    everything (the kernel holds what the reader does not take), then
    reads the rest."""
    size = 48 << 20

    def upstream(c, srv):
        import hashlib
        h, n = hashlib.sha256(), 0
        paused = False
        while True:
            b = c.recv(64 << 10)
            if not b:
                break
            h.update(b)
            n += len(b)
            if n >= (1 << 20) and not paused:
                paused = True
                time.sleep(3)
        c.sendall(b"done")
        return n, h.hexdigest()

    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr])
    s = connect(p.port)
    for part in pattern(5, size):
        s.sendall(part)
    s.shutdown(socket.SHUT_WR)
    assert recv_until_close(s) == b"done"
    s.close()
    wait_for(lambda: up.results, 20, what="the upstream to finish")
    assert up.results[0] == (size, pattern_sha(5, size))
    check_kernel_moved(p, 1)


def test_many_short_sessions(proxy_factory, servers):
    """Request, answer, FIN: every one the kernel's. Then request and FIN
    at once: a client socket that has its FIN before the upstream is
    connected is no longer ESTABLISHED, which the map refuses, so some of
    those are spliced instead; every answer is checked either way."""
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr])
    n = 300
    for i in range(n):
        short_session(p.port, i)
    wait_for(lambda: p.total("closed") == n, 10, what="every session to close")
    check_kernel_moved(p, n)
    for i in range(n):
        msg = b"FIN at once %d " % i * 20
        with connect(p.port, timeout=5) as s:
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            assert recv_until_close(s) == msg, f"session {i}"
    wait_for(lambda: p.total("closed") == 2 * n, 10, what="every session to close")
    t = p.stats()["total"]
    assert t["sessions_sockmap"] + t["sessions_splice"] == 2 * n, t
    assert t["active"] == 0 and t["sockmap_redirect_fails"] == 0


def test_half_close_client_first(proxy_factory, servers):
    """The client's FIN goes on after its bytes; the reply flows after it."""
    def upstream(c, srv):
        got = recv_all_sha(c)
        time.sleep(0.2)
        for part in pattern(4, 8 << 20):
            c.sendall(part)
        c.shutdown(socket.SHUT_WR)
        return got
    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr])
    s = connect(p.port)
    for part in pattern(3, 8 << 20):
        s.sendall(part)
    s.shutdown(socket.SHUT_WR)
    assert recv_all_sha(s) == (8 << 20, pattern_sha(4, 8 << 20))
    s.close()
    wait_for(lambda: up.results, what="upstream result")
    assert up.results[0] == (8 << 20, pattern_sha(3, 8 << 20))
    check_kernel_moved(p, 1)


def test_half_close_upstream_first(proxy_factory, servers):
    def upstream(c, srv):
        for part in pattern(6, 8 << 20):
            c.sendall(part)
        c.shutdown(socket.SHUT_WR)
        return recv_all_sha(c)
    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr])
    s = connect(p.port)
    assert recv_all_sha(s) == (8 << 20, pattern_sha(6, 8 << 20))
    for part in pattern(7, 8 << 20):          # the other direction still flows
        s.sendall(part)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(10) == b""
    s.close()
    wait_for(lambda: up.results, what="upstream result")
    assert up.results[0] == (8 << 20, pattern_sha(7, 8 << 20))
    check_kernel_moved(p, 1)


def test_client_reset_reaches_upstream(proxy_factory, servers):
    def upstream(c, srv):
        c.settimeout(10)
        try:
            while c.recv(65536):
                pass
        except ConnectionResetError:
            return "reset"
        return "fin"
    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr])
    s = connect(p.port)
    s.sendall(b"x" * 100000)
    time.sleep(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    wait_for(lambda: up.results, what="upstream to see the end")
    assert up.results == ["reset"]
    wait_for(lambda: p.total("err_client_reset") >= 1, what="client reset counted")
    check_kernel_moved(p, 1)


def test_upstream_reset_reaches_client(proxy_factory, servers):
    def upstream(c, srv):
        c.sendall(b"hello")
        time.sleep(0.2)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr])
    with connect(p.port) as s:
        assert s.recv(5) == b"hello"
        with pytest.raises(ConnectionResetError):
            while s.recv(65536):
                pass
    wait_for(lambda: p.total("err_upstream_reset") >= 1, what="upstream reset counted")
    check_kernel_moved(p, 1)


def test_idle_timeout_from_the_kernels_counters(proxy_factory, servers):
    """Idle: closed within 1.25x the timeout. Busy only in the kernel (the
    worker sees no byte): kept open past it."""
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr], listener={"idle_timeout": "1s"})
    with connect(p.port) as busy:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:      # a byte each 300 ms, for 3 s
            busy.sendall(b"b")
            assert busy.recv(1) == b"b"
            time.sleep(0.3)
    with connect(p.port) as s:
        s.sendall(b"a")
        assert s.recv(1) == b"a"
        t0 = time.monotonic()
        assert s.recv(1) == b""
        took = time.monotonic() - t0
    assert 0.9 < took < 1.7, took
    assert p.total("err_idle_timeout") == 1
    check_kernel_moved(p, 2)


def test_drain_and_reload_keep_sessions(proxy_factory, servers):
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr], proxy={"workers": 1, "drain_timeout": "20s"})
    s = connect(p.port)
    s.sendall(b"before")
    assert s.recv(6) == b"before"
    p.reload()
    wait_for(lambda: p.stats()["reloads"] >= 1, 5, what="the reload")
    s.sendall(b"after reload")
    assert s.recv(12) == b"after reload"
    p.p.terminate()
    wait_for(lambda: all(w["state"] != "running" for w in p.stats()["workers"]),
             what="workers to start draining")
    s.sendall(b"during drain")
    assert s.recv(12) == b"during drain"
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b""
    s.close()
    assert p.p.wait(10) == 0


def test_cut_mid_transfer_leaves_a_clean_prefix(proxy_factory, servers):
    """Sockets leave the map while bytes are in flight (the drain deadline
    cuts the session): what arrived is exactly a prefix of what was sent."""
    size = 64 << 20
    def upstream(c, srv):
        data = bytearray()
        try:
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                data += b
                time.sleep(0.005)          # ~13 MB/s: the cut comes first
        except ConnectionResetError:
            pass
        return bytes(data)
    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr], proxy={"workers": 1, "drain_timeout": "1s"})
    s = connect(p.port)
    sent = b"".join(pattern(9, size))
    def send():
        try:
            s.sendall(sent)
        except OSError:
            pass
    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.5)
    p.p.terminate()
    assert p.p.wait(10) == 0
    t.join(10)
    wait_for(lambda: up.results, 10, what="the upstream to end")
    got = up.results[0]
    assert 0 < len(got) < size and got == sent[:len(got)], len(got)
    s.close()


def test_connection_limit(proxy_factory, servers):
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr], proxy={"workers": 1, "max_connections": 4})
    socks = [connect(p.port) for _ in range(4)]
    for s in socks:
        s.sendall(b"k")
        assert s.recv(1) == b"k"
    extra = connect(p.port)
    extra.settimeout(0.5)
    extra.sendall(b"z")
    with pytest.raises(socket.timeout):
        extra.recv(1)
    socks.pop().close()
    extra.settimeout(5)
    assert extra.recv(1) == b"z"
    extra.close()
    for s in socks:
        s.close()
    check_kernel_moved(p, 5)


def test_falls_back_to_splice_when_switched_off(proxy_factory, servers):
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr], proxy={"workers": 1, "disable_features": ["sockmap"]})
    with connect(p.port) as s:
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        assert recv_until_close(s) == b"hello"
    wait_for(lambda: p.total("closed") == 1, what="the session to end")
    t = p.stats()["total"]
    assert t["sessions_splice"] == 1 and t["sessions_sockmap"] == 0
    assert "sockmap" not in p.stats()["workers"][0]["features"]
    lines = [l for l in p.output().splitlines() if "sockmap" in l]
    assert len(lines) == 1 and "fall back to splice" in lines[0], lines


def test_falls_back_to_splice_when_it_cannot_load(proxy_factory, servers):
    """The program cannot be loaded (made to fail through the environment,
    as it would without root or on an old kernel): one line, sessions
    spliced."""
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr], proxy={"workers": 1},
                 env={"UPROXY_SOCKMAP_FAIL": "test: refused on purpose"})
    with connect(p.port) as s:
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        assert recv_until_close(s) == b"hello"
    wait_for(lambda: p.total("closed") == 1, what="the session to end")
    assert p.total("sessions_splice") == 1 and p.total("sessions_sockmap") == 0
    lines = [l for l in p.output().splitlines() if "sockmap" in l]
    assert len(lines) == 1 and "refused on purpose" in lines[0], lines


def test_stats_and_top_show_the_kernels_sessions(proxy_factory, servers):
    import subprocess
    import sys
    from support import ROOT
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr], proxy={"workers": 1})
    with connect(p.port) as s:
        s.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += s.recv(65536)
    wait_for(lambda: p.total("closed") == 1, what="the session to end")
    r = subprocess.run([sys.executable, "-m", "uproxy", "stats", "--pid", str(p.pid)], cwd=ROOT,
                       capture_output=True, text=True, timeout=30)
    lines = {l.split()[0]: l.split()[1] for l in r.stdout.splitlines()[1:] if len(l.split()) == 2}
    assert lines.get("sessions_sockmap") == "1" and lines["sockmap_redirect_fails"] == "0", r.stdout
    assert lines["bytes_from_clients"] == "1000" and lines["bytes_to_clients"] == "1000", r.stdout
    from uproxy.tui import dashboard
    line = dashboard._status_line({"unit": "sessions", "total": {
        "rps": 1.0, "err_pct": 0, "p99_us": None, "p99_is_max": False, "lat_count": 0,
        "sockmap_sessions": 1, "sockmap_fails": 0}, "clusters": []}).plain
    assert "sockmap 1 sess, 0 redirects refused" in line


def test_a_reload_that_adds_sockmap_splices_and_says_so(proxy_factory, servers):
    from support import render_config
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr], proxy={"workers": 1}, forwarding="splice")
    lst = {"name": "t", "bind": f"127.0.0.1:{p.port}", "mode": "tcp", "cluster": "c",
           "forwarding": "sockmap"}
    with open(p.path, "w") as f:
        f.write(render_config({"workers": 1}, [lst], [{"name": "c", "servers": [up.addr]}]))
    p.reload()
    wait_for(lambda: p.stats()["reloads"] >= 1, 10, what="the reload")
    with connect(p.port) as s:
        s.sendall(b"after")
        s.shutdown(socket.SHUT_WR)
        assert recv_until_close(s) == b"after"
    wait_for(lambda: p.total("closed") == 1, what="the session to end")
    assert p.total("sessions_splice") == 1 and p.total("sessions_sockmap") == 0
    lines = [l for l in p.output().splitlines() if "sockmap:" in l]
    assert len(lines) == 1 and "loaded at start only" in lines[0], lines


def _send_buffers(proxy_port, upstream_port):
    """The send buffer (ss's skmem tb, the kernel's sk_sndbuf) of the
    proxy's two sockets of the open sessions: the one its client reached
    and the one it dialed."""
    import re
    import shutil
    import subprocess
    if not shutil.which("ss"):
        pytest.skip("ss (iproute2) is not installed: the proxy's socket buffers cannot be read")
    out = subprocess.run(["ss", "-tmnH",
                          f"( sport = :{proxy_port} or dport = :{upstream_port} )"],
                         capture_output=True, text=True, check=True).stdout
    return [int(m) for m in re.findall(r"\btb(\d+)", out)]


def test_send_buffer_is_set_on_both_sockets(proxy_factory, servers):
    """sockmap_send_buffer sizes both proxy sockets of a session (the
    kernel's redirect retries a full send buffer only a jiffy or two later,
    so one stream moves about one buffer per retry: docs/l4.md); 8 MiB
    when not set; 0 leaves them to the kernel's autotuning. Bytes still
    checked by content."""
    size = 8 << 20
    release = threading.Event()
    shas = []

    def upstream(c, srv):
        shas.append(recv_all_sha(c))
        release.wait(30)          # the session stays open while ss looks
        c.sendall(b"done")

    up = servers(upstream)
    cases = (({"sockmap_send_buffer": "3m"}, 3 << 20), ({}, 8 << 20),
             ({"sockmap_send_buffer": 0}, None))
    for n, (key, want) in enumerate(cases, 1):
        proxy = sm_proxy(proxy_factory, [up.addr], listener=key)
        with connect(proxy.port) as s:
            for part in pattern(5, size):
                s.sendall(part)
            s.shutdown(socket.SHUT_WR)
            wait_for(lambda: len(shas) == n, 30, what="the upstream's sha")
            tb = _send_buffers(proxy.port, int(up.addr.rsplit(":", 1)[1]))
            release.set()
            assert recv_until_close(s) == b"done"
        release.clear()
        assert len(tb) == 2, f"{key}: the proxy's two sockets, not {tb}"
        if want:
            assert tb == [want, want], f"{key}: send buffers {tb}, configured {want}"
        else:
            assert not {3 << 20, 8 << 20} & set(tb), f"{key}: send buffers {tb}: set anyway"
        assert shas[-1] == (size, pattern_sha(5, size)), f"{key}: client -> upstream damaged"
        check_kernel_moved(proxy, 1)


def short_session(port, i):
    msg = b"short session %d " % i * 20
    with connect(port, timeout=5) as s:
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            got += s.recv(65536)
        s.shutdown(socket.SHUT_WR)
        got += recv_until_close(s)
        assert got == msg, f"session {i}"


# ---- the proxy's maps, seen from outside ------------------------------------
# The test takes a copy of each of the proxy's BPF map fds (pidfd_getfd,
# root) and reads the maps with bpf(2): the entries a sockhash or hash
# holds, and the slots of the mmapable state array in a session.

_SYS_PIDFD_GETFD = 438
_SYS_BPF = 321
_BPF_MAP_GET_NEXT_KEY = 4
_MAP_HASH, _MAP_ARRAY, _MAP_SOCKHASH = 1, 2, 18
_BPF_F_MMAPABLE = 1 << 10
_STATE_SIZE = 48          # native/api.h UP_SM_STATE_SIZE


def _libc():
    import ctypes
    return ctypes.CDLL(None, use_errno=True)


def _map_keys(fd, key_size, limit=1 << 20):
    import ctypes
    libc = _libc()
    attr = ctypes.create_string_buffer(32)
    key = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    n, first = 0, True
    while n < limit:
        struct.pack_into("IIQQ", attr, 0, fd, 0, 0 if first else ctypes.addressof(key),
                         ctypes.addressof(nxt))
        if libc.syscall(_SYS_BPF, _BPF_MAP_GET_NEXT_KEY, attr, 32) < 0:
            break
        ctypes.memmove(key, nxt, key_size)
        first = False
        n += 1
    return n


def proxy_map_entries(pid):
    """{map name: entries} for the proxy's sockhash and hashes, and
    'st slots' for the state array's slots that hold a session."""
    import mmap
    libc = _libc()
    pidfd = os.pidfd_open(pid)
    out = {}
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") != "anon_inode:bpf-map":
                    continue
                with open(f"/proc/{pid}/fdinfo/{name}") as f:
                    info = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
            except OSError:
                continue
            info = {k.strip(): v.strip() for k, v in info.items()}
            kind = int(info["map_type"])
            if kind not in (_MAP_HASH, _MAP_ARRAY, _MAP_SOCKHASH):
                continue
            fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            assert fd >= 0, f"pidfd_getfd: errno {__import__('ctypes').get_errno()}"
            try:
                label = f"{kind}:{info['map_id']}"
                if kind == _MAP_ARRAY:
                    if not int(info["map_flags"], 16) & _BPF_F_MMAPABLE:
                        continue
                    size = int(info["max_entries"]) * _STATE_SIZE
                    with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                        out["st slots"] = sum(1 for (ck,) in struct.iter_unpack(
                            "Q40x", m[:size]) if ck)
                else:
                    out[label] = _map_keys(fd, int(info["key_size"]))
            finally:
                os.close(fd)
    finally:
        os.close(pidfd)
    return out


def test_no_map_entry_outlives_its_session(proxy_factory, servers):
    """While a session is open its two sockets are in the sockhash, in
    `sess` and in two slots of the state array; after 300 sessions (and
    the second the workers may hold closed sockets' `sess` entries back),
    nothing is left in any map: the kernel took the closed sockets out of
    the sockhash, the workers removed their `sess` entries in batches."""
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr])
    with connect(p.port, timeout=5) as s:
        s.sendall(b"open")
        assert s.recv(100) == b"open"
        maps = proxy_map_entries(p.pid)
        assert sorted(maps.values()) == [2, 2, 2], f"one open session: {maps}"
    n = 300
    for i in range(n):
        short_session(p.port, i)
    wait_for(lambda: p.total("closed") == n + 1, 10, what="every session to close")
    check_kernel_moved(p, n + 1)
    wait_for(lambda: not any(proxy_map_entries(p.pid).values()), 10,
             what=f"the maps to be empty: {proxy_map_entries(p.pid)}")


def test_per_session_syscalls(proxy_factory, servers):
    """What the hand-over costs the worker, counted by strace on its thread
    over 200 short sessions (docs/l4.md, "Short sessions"): one `sess`
    update for both sockets and the two sockhash inserts, a share of a
    batch delete, no delete or lookup per session; the peeks ride on the
    ring. The send buffers are left to the kernel (two setsockopt fewer)."""
    import shutil
    import subprocess
    from collections import Counter
    import re
    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace is not installed: the worker's syscalls cannot be counted")
    up = servers(echo)
    p = sm_proxy(proxy_factory, [up.addr], proxy={"workers": 1},
                 listener={"sockmap_send_buffer": 0})
    short_session(p.port, -1)
    wait_for(lambda: p.total("closed") == 1, 10, what="the first session to close")
    tids = [t for t in os.listdir(f"/proc/{p.pid}/task")
            if open(f"/proc/{p.pid}/task/{t}/comm").read().startswith("uproxy-w")]
    assert len(tids) == 1, tids
    log = os.path.join(os.path.dirname(p.path), "strace.txt")
    st = subprocess.Popen([strace, "-qq", "-o", log, "-p", tids[0]],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert st.poll() is None, st.stderr.read()
        n = 200
        for i in range(n):
            short_session(p.port, i)
        wait_for(lambda: p.total("closed") == n + 1, 10, what="every session to close")
        time.sleep(1.5)       # the batch delete of what the worker held back
    finally:
        st.terminate()
        st.wait(10)
    check_kernel_moved(p, n + 1)
    calls, bpf = Counter(), Counter()
    for line in open(log):
        m = re.match(r"^([a-z_0-9]+)\((BPF_[A-Z_]+)?", line)
        if m:
            calls[m.group(1)] += 1
            if m.group(2):
                bpf[m.group(2)] += 1
    per = {k: v / n for k, v in calls.items()}
    # The loop's own waits depend on timing (one session at a time here).
    rest = sum(v for k, v in per.items() if k != "io_uring_enter")
    assert bpf["BPF_MAP_UPDATE_BATCH"] == n, bpf
    assert bpf["BPF_MAP_UPDATE_ELEM"] == 2 * n, bpf
    assert not bpf["BPF_MAP_DELETE_ELEM"] and not bpf["BPF_MAP_LOOKUP_ELEM"], bpf
    assert 1 <= bpf["BPF_MAP_DELETE_BATCH"] <= n * 2 // 64 + 2, bpf
    assert not calls["recvfrom"], f"the peeks go through the ring: {per}"
    assert rest <= 13.5, f"worker syscalls per session: {per}"


def test_proxy_header_then_sockmap(proxy_factory, servers):
    """A PROXY header the worker writes to the upstream before the
    hand-over is no redirected byte: the client's FIN waits for every byte
    of its own (checked by content, many sessions)."""
    def upstream(c, srv):
        head = b""
        while not head.endswith(b"\r\n"):
            b = c.recv(1)
            assert b
            head += b
        got = recv_all_sha(c)
        c.sendall(b"ok")
        return head.startswith(b"PROXY TCP4 "), got
    up = servers(upstream)
    p = sm_proxy(proxy_factory, [up.addr], cluster={"proxy_protocol": "v1"})
    size, n = 64 << 10, 40
    for i in range(n):
        with connect(p.port) as s:
            time.sleep(0.02)      # handed over first: a FIN before it is spliced
            for part in pattern(i, size):
                s.sendall(part)
            s.shutdown(socket.SHUT_WR)
            assert recv_until_close(s) == b"ok", f"session {i}"
    wait_for(lambda: len(up.results) == n, 20, what="every upstream result")
    for i, r in enumerate(up.results):
        assert r == (True, (size, pattern_sha(i, size))), f"session {i}: {r}"
    check_kernel_moved(p, n)
