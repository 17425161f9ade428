"""Hostile clients against a real uproxy process: slowloris (a byte at a
time), slow readers (never read the response), 10,000 concurrent
connections, a flood past the open-file limit (EMFILE), oversized heads,
bodies over max_body_size. Through all of it, well-behaved clients are
served, and afterwards the proxy's open files and memory are back where
they were."""
import resource
import selectors
import socket
import threading
import time

import pytest

from harden import FastUpstream, Load, cpu_seconds, fd_count, read_response, rss_kib, settle_fds
from http_upstream import HttpUpstream, Response
from support import Server, free_port, wait_for


def start(proxy_factory, servers, listener=None, cluster=None, proxy=None, profile="full"):
    port = free_port()
    lst = {"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}
    lst.update(listener or {})
    cl = {"name": "c", "servers": servers}
    cl.update(cluster or {})
    p = proxy_factory([lst], [cl], proxy=proxy or {"workers": 1}, profile=profile)
    p.port = port
    return p


def get(port, path=b"/", timeout=10.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        return read_response(s)[0]


def timed_get(port):
    t0 = time.monotonic()
    status = get(port)
    return status, time.monotonic() - t0


def read_all(s):
    data = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return data
            data += b
    except (ConnectionResetError, socket.timeout):
        return data


# ---- slowloris -------------------------------------------------------------------

def test_slowloris_a_byte_at_a_time(proxy_factory):
    """300 clients each send their head one byte every 50 ms. The head is
    not complete within header_timeout: each gets 408 and is closed, while
    a normal client is answered at once the whole time."""
    up = FastUpstream()
    p = start(proxy_factory, [up.addr], listener={"header_timeout": "1s"})
    assert get(p.port) == 200
    fds0, rss0 = fd_count(p.pid), rss_kib(p.pid)
    bufs0 = p.stats()["total"]["buffers_in_use"]
    head = b"GET /slow HTTP/1.1\r\nHost: x\r\nUser-Agent: slowloris\r\nX-Padding: " + b"a" * 200
    socks = []
    for _ in range(300):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.setblocking(False)
        socks.append(s)
    latencies, answers, closed_at = [], {}, {}
    t0 = time.monotonic()
    i = 0
    while len(answers) < len(socks) and time.monotonic() - t0 < 10:
        for k, s in enumerate(socks):
            if k in answers:
                continue
            try:
                if i < len(head):
                    s.send(head[i:i + 1])
                b = s.recv(4096)
                if b:
                    answers[k] = b
                    closed_at[k] = time.monotonic() - t0
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                answers[k] = repr(e).encode()
                closed_at[k] = time.monotonic() - t0
        i += 1
        if i % 4 == 0:
            latencies.append(timed_get(p.port))
        time.sleep(0.05)
    for s in socks:
        s.close()
    assert len(answers) == 300, f"{300 - len(answers)} slow clients were never answered"
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers.values()), \
        {a[:30] for a in answers.values()}
    assert max(closed_at.values()) < 4, max(closed_at.values())
    assert all(st == 200 for st, _ in latencies), latencies
    worst = max(t for _, t in latencies)
    print(f"slowloris: 300 clients answered 408 within {max(closed_at.values()):.2f}s; "
          f"{len(latencies)} normal requests meanwhile, worst {worst * 1000:.0f} ms")
    assert worst < 1.0, worst
    assert p.total("err_header_timeout") >= 300
    fds1 = settle_fds(p.pid, fds0)
    rss1 = rss_kib(p.pid)
    # What a slow client held (its socket, its pool buffers) is counted
    # exactly: all of it comes back.
    assert fds1 <= fds0, (fds0, fds1)
    wait_for(lambda: p.stats()["total"]["buffers_in_use"] <= bufs0, timeout=2,
             what=f"buffers in use back to {bufs0}")
    print(f"slowloris: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB")
    # RSS is only a coarse second look: it also counts the first touch of
    # preallocated pool pages and the control plane's heap, which vary with
    # the host's timing (1.5 MiB alone, 9.4 seen once in the full suite),
    # so its bound is loose; the exact checks are the two above (a head
    # buffer kept is test_more_slow_heads_than_assembly_buffers's case).
    assert rss1 - rss0 < 16384, (rss0, rss1)
    up.close()


def test_more_slow_heads_than_assembly_buffers(proxy_factory):
    """Each slow head holds one assembly buffer; past head_buffers, the
    next slow client gets 503 at once instead of more memory."""
    up = FastUpstream()
    p = start(proxy_factory, [up.addr], listener={"header_timeout": "5s"},
              proxy={"workers": 1, "head_buffers": 16})
    socks = []
    for _ in range(24):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(0.01)
        s.sendall(b"Host: x\r\n")              # a second piece: assembled
        socks.append(s)
    time.sleep(0.3)
    statuses = []
    for s in socks:
        s.settimeout(0.2)
        try:
            statuses.append(s.recv(100)[:12])
        except socket.timeout:
            statuses.append(None)
    assert statuses.count(b"HTTP/1.1 503") >= 8 - 1, statuses
    assert get(p.port) == 200                    # a whole head in one piece needs no buffer
    for s in socks:
        s.close()
    up.close()


# ---- slow readers ---------------------------------------------------------------

def test_slow_readers_never_reading(proxy_factory):
    """50 clients ask for 8 MiB each and never read. Memory stays bounded
    by the queue limit (backpressure), others are served, and the stalled
    responses are given up after idle_timeout."""
    big = HttpUpstream(lambda req: Response(body=b"b" * (8 << 20)) if req.target == "/big"
                       else Response(body=b"small"), keep_body=False)
    p = start(proxy_factory, [big.addr], listener={"idle_timeout": "2s"})
    assert get(p.port, b"/small") == 200
    fds0, rss0 = fd_count(p.pid), rss_kib(p.pid)
    readers = []
    for _ in range(50):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", p.port))
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        readers.append(s)
    time.sleep(1.0)
    rss_peak = rss_kib(p.pid)
    for _ in range(10):
        assert get(p.port, b"/small") == 200
    print(f"slow readers: RSS {rss0} KiB -> {rss_peak} KiB with 50 stalled 8 MiB responses")
    assert rss_peak - rss0 < 64 * 1024, "memory grew with what the slow readers did not read"
    wait_for(lambda: p.total("err_idle_timeout") >= 50, 10, what="the stalled responses to time out")
    for s in readers:
        s.close()
    fds1 = settle_fds(p.pid, fds0)
    rss1 = rss_kib(p.pid)
    print(f"slow readers: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB")
    assert fds1 <= fds0
    big.close()      # the resets of the responses given up on are in big.cut_short


# ---- many connections --------------------------------------------------------------

@pytest.mark.parametrize("profile", ["full", "5.15"])
def test_clients_past_max_connections_wait_in_the_backlog(proxy_factory, profile):
    """At max_connections a worker stops accepting and new clients wait in
    the kernel's backlog until a connection closes (docs/l4.md). They are
    not accepted only to be closed: 40 clients against a limit of 10 are
    all answered, the last 30 once the first ones' keep-alive runs out.
    (With multishot accept, the whole backlog used to be accepted at once
    and everything past the limit closed with a reset.)"""
    up = FastUpstream()
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                        "keepalive_timeout": "1s"}],
                      [{"name": "c", "servers": [up.addr]}],
                      proxy={"workers": 1, "max_connections": 10}, profile=profile)
    socks = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", port), timeout=15)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    statuses = []
    for s in socks:
        try:
            statuses.append(read_response(s)[0])
        except OSError as e:
            statuses.append(type(e).__name__)
        s.close()
    assert statuses == [200] * 40, statuses
    assert p.total("rejected") == 0
    up.close()


def test_10000_concurrent_connections(proxy_factory):
    """10,000 clients connect at once and each sends a request, then holds
    its connection open. Every one of them is answered. Under an open-file
    limit of 20,000 (this machine's hard limit; raising it needs
    CAP_SYS_RESOURCE) the proxy fits max_connections to about 9,900
    clients (two files per client, one for its upstream): the rest wait in
    the kernel's backlog and are answered as soon as idle keep-alive
    connections time out. A new client is served throughout, and after all
    of them close the proxy holds what it held before."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n, batch = 10_000, 500
    if soft < n + 500:
        pytest.skip(f"the open-file limit ({soft}) is too low for {n} client sockets")
    up = FastUpstream()
    p = start(proxy_factory, [up.addr], proxy={"workers": 2, "pipes": 16},
              listener={"keepalive_timeout": "4s", "backlog": 4096},
              cluster={"pool_max_idle": 64})     # the fd bound below counts on it
    assert get(p.port) == 200
    fds0, rss0 = fd_count(p.pid), rss_kib(p.pid)
    sel = selectors.DefaultSelector()
    socks, answered, when = [], 0, []
    t0 = time.monotonic()

    def pump(timeout):
        nonlocal answered
        for key, mask in sel.select(timeout):
            buf = key.data
            if key.events & selectors.EVENT_WRITE:
                # Connected (late ones: their SYN was dropped and resent
                # while the accept queue was full): send the request.
                try:
                    key.fileobj.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                except BlockingIOError:
                    continue
                except OSError:
                    sel.unregister(key.fileobj)
                    continue
                sel.modify(key.fileobj, selectors.EVENT_READ, buf)
                continue
            try:
                b = key.fileobj.recv(65536)
            except OSError:
                b = b""
            buf[0] += b
            if not b or buf[0].endswith(b"\r\n\r\n" + b"x" * 64):
                sel.unregister(key.fileobj)
                if buf[0].startswith(b"HTTP/1.1 200"):
                    answered += 1
                    when.append(time.monotonic() - t0)
    for _ in range(0, n, batch):
        for _ in range(batch):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", p.port))
            sel.register(s, selectors.EVENT_WRITE, [b""])
            socks.append(s)
        # Connected: send the request; then read the answers as they come.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pump(0.2)
            if not any(k.events & selectors.EVENT_WRITE for k in sel.get_map().values()):
                break
    peak_active = p.total("active")
    fds_open, rss_open = fd_count(p.pid), rss_kib(p.pid)
    first = answered
    status, t = timed_get(p.port)
    deadline = time.monotonic() + 60
    while answered < n and time.monotonic() < deadline:
        pump(0.5)
        peak_active = max(peak_active, p.total("active"))
    took = time.monotonic() - t0
    print(f"10k: {n} connections opened; {first} answered at once, all {answered} within "
          f"{took:.1f}s; proxy held {peak_active} clients at most (max_connections fitted to the "
          f"open-file limit); fds {fds0} -> {fds_open}, RSS {rss0} -> {rss_open} KiB "
          f"({(rss_open - rss0) / max(peak_active, 1):.2f} KiB per connection); a new client "
          f"meanwhile took {t * 1000:.0f} ms")
    assert answered == n, f"{n - answered} of {n} clients never answered"
    assert status == 200
    for s in socks:
        s.close()
    pooled = 2 * 64                   # pool_max_idle per worker may stay open
    fds1 = settle_fds(p.pid, fds0 + pooled, timeout=20)
    print(f"10k closed: fds {fds1} (up to {pooled} of them idle upstream connections in the "
          f"pools), RSS {rss_kib(p.pid)} KiB")
    assert fds1 <= fds0 + pooled
    wait_for(lambda: p.total("active") == 0, 10, what="the connections to be closed")
    up.close()


def test_flood_past_the_open_file_limit(proxy_factory):
    """The proxy's open-file limit is lowered under it, then 400 clients
    connect: 150 hold their connections idle, 250 send a request. Accept
    hits EMFILE and backs off instead of spinning (the proxy's CPU time
    stays low while the backlog waits); once the idle holders go, the
    waiting clients are accepted and answered, and nothing is lost."""
    up = FastUpstream()
    # The 5.15 profile: single-shot accept. A multishot accept takes the
    # open-file limit once, when it is armed, so lowering the limit of a
    # running proxy would not reach it (a limit fixed from the start is
    # what max_connections is fitted to, so it does not hit EMFILE).
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                        "header_timeout": "30s", "backlog": 1024}],
                      [{"name": "c", "servers": [up.addr], "pool_max_idle": 64}],
                      proxy={"workers": 1, "pipes": 8}, profile="5.15")
    p.port = port
    assert get(p.port) == 200
    fds0 = fd_count(p.pid)
    limit = fds0 + 100
    soft, hard = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (limit, hard))
    try:
        holders = [socket.create_connection(("127.0.0.1", p.port), timeout=10) for _ in range(150)]
        senders = []
        for i in range(250):
            s = socket.create_connection(("127.0.0.1", p.port), timeout=30)
            s.sendall(b"GET /f%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            senders.append(s)
        time.sleep(1.0)
        at_limit = fd_count(p.pid)
        errs0 = p.total("err_accept")
        cpu0 = cpu_seconds(p.pid)
        time.sleep(3.0)
        cpu = cpu_seconds(p.pid) - cpu0
        errs = p.total("err_accept") - errs0
        print(f"EMFILE: fds at the limit {at_limit}/{limit}; over 3 s: {cpu:.2f} s CPU, "
              f"{errs} accept errors")
        assert at_limit >= limit - 5, "the flood did not reach the open-file limit"
        assert p.total("err_accept") > 0, "accept never failed: the test did not hit EMFILE"
        assert cpu < 0.5, f"the proxy spun at the open-file limit: {cpu:.2f} s CPU in 3 s"
        assert errs <= 3 / 0.2 * 2 + 5, f"{errs} accept attempts in 3 s: no back-off"
        for s in holders:
            s.close()
        statuses = []
        for s in senders:
            try:
                statuses.append(read_response(s)[0])
            except OSError as e:
                statuses.append(repr(e))
            s.close()
        print(f"EMFILE: after the holders left: {statuses.count(200)} of 250 answered 200, "
              f"others {[x for x in statuses if x != 200]}")
        # Every client is answered. A few may get 502: a client accepted
        # into the last free file finds none left for its upstream socket.
        assert set(statuses) <= {200, 502}, statuses
        assert statuses.count(200) >= 240, statuses
    finally:
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert get(p.port) == 200
    assert settle_fds(p.pid, fds0 + 64) <= fds0 + 64      # pool_max_idle upstream connections
    up.close()


# ---- oversized heads and bodies ------------------------------------------------------

@pytest.mark.parametrize("what,data,status", [
    ("one huge header line", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
    ("many small headers", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-N: 1\r\n" * 200 + b"\r\n", 431),
    ("a head that never ends", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 20000, 431),
    ("a huge target", b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ("a megabyte of garbage", b"\x16\x03\x01" + bytes(range(256)) * 4096, 400),
])
def test_oversized_heads(proxy_factory, what, data, status):
    up = FastUpstream()
    p = start(proxy_factory, [up.addr])
    assert get(p.port) == 200
    fds0, rss0 = fd_count(p.pid), rss_kib(p.pid)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            out = read_all(s)
        assert out.startswith(b"HTTP/1.1 %d" % status), (what, out[:40])
    assert up.requests == 1
    assert get(p.port) == 200
    assert settle_fds(p.pid, fds0) <= fds0 + 1 and rss_kib(p.pid) - rss0 < 8192
    up.close()


def test_bodies_over_max_body_size(proxy_factory):
    up = HttpUpstream(lambda req: Response(body=b"took %d" % len(req.body)))
    p = start(proxy_factory, [up.addr], listener={"max_body_size": "64k"})
    # A declared length over the limit is refused before a byte is read,
    # even a terabyte, and even when the body never comes.
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"POST /tb HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\n")
        out = read_all(s)
    assert out.startswith(b"HTTP/1.1 413") and time.monotonic() - t0 < 2
    # Chunked: refused as it streams past the limit; the upstream never
    # sees a complete request.
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(200):
                s.sendall(b"1000\r\n" + b"c" * 4096 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = read_all(s)
    assert out.startswith(b"HTTP/1.1 413") or out == b"", out[:40]
    assert not [r for r in up.requests if r.target == "/chunks"]
    # At the limit exactly: accepted.
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n" + b"o" * 65536)
        status, body, _, _ = read_response(s)
    assert (status, body) == (200, b"took 65536")
    up.close()


# ---- clients that leave in the middle of an upload ----------------------------------

@pytest.mark.parametrize("profile", ["full", "5.15"])
@pytest.mark.parametrize("size,sent", [(1 << 20, 100_000), (20_000, 5_000)],
                         ids=["1MB-by-splice", "20KB-buffered"])
def test_client_leaving_mid_upload_closes_the_upstream_at_once(proxy_factory, profile, size, sent):
    """Issue 16, defect 4: a client that leaves in the middle of its
    request body. The upstream connection, which will never see the rest,
    is closed as soon as the proxy sees the client go, whether the body was
    being moved by splice (1 MB: the part past the first receive) or
    through buffers (a small body). It used to take 2 s with splice: the
    client's receive stayed held for the splice, so its lingering close
    waited for its timer instead of the FIN."""
    head_seen = threading.Event()
    ends = []

    def serve(c, _srv):
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = c.recv(65536)
            if not b:
                return
            buf += b
        head_seen.set()
        got = len(buf.split(b"\r\n\r\n", 1)[1])
        while True:                   # read the body as it comes; never answer
            try:
                b = c.recv(65536)
            except OSError:
                b = b""
            if not b:
                ends.append((time.monotonic(), got))
                return
            got += len(b)

    srv = Server(serve, backlog=16)
    p = start(proxy_factory, [srv.addr], profile=profile)
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    s.sendall(b"u" * sent)
    assert head_seen.wait(5), "the request never reached the upstream"
    time.sleep(0.5)                   # what was sent has been forwarded; the rest is awaited
    t0 = time.monotonic()
    s.close()
    wait_for(lambda: ends, 5, what="the upstream connection to be closed")
    took, forwarded = ends[0][0] - t0, ends[0][1]
    print(f"client left after {sent} of {size} body bytes ({profile}): upstream closed "
          f"{took * 1000:.0f} ms later, {forwarded} body bytes forwarded")
    assert forwarded == sent
    assert took < 0.5, f"the upstream connection was closed {took:.2f} s after the client left"
    wait_for(lambda: p.total("err_short_body") >= 1, 2, what="the cut body counted")
    wait_for(lambda: p.total("active") == 0, 2, what="the client connection to be closed")
    srv.close()
