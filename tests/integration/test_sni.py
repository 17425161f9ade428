"""SNI passthrough on tcp listeners, through a real uproxy process: the
ClientHello's server name picks the cluster, TLS is not terminated, and the
stream reaches the upstream untouched.

Upstreams are real TLS servers (Python's ssl, in threads), each with its
own self-signed certificate made by the openssl command; clients (Python's
ssl, openssl s_client, curl) verify the certificate of the upstream they
expect, so a session routed to the wrong cluster, or a stream the proxy
changed, fails the handshake. Then hostile clients: garbage, a ClientHello
cut short, dribbled byte by byte, oversized, and silent connections by the
hundred, which must be closed at sni_timeout with their slots freed.
"""
import os
import selectors
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import clienthellos as ch
from conftest import PROFILES
from support import free_port, pattern, pattern_sha, recv_until_close, wait_for

FORWARDING = ["splice", "splice_iowq", "buffered"]

# Which upstream each name must reach, with the routes below: exact names
# beat wildcards whatever their order, the longest wildcard wins, a
# wildcard does not match its bare domain, case does not matter, and no
# name or an unknown one goes to the listener's cluster.
ROUTES = [
    {"sni": "*.example.com", "cluster": "wide"},
    {"sni": "db.example.com", "cluster": "db"},
    {"sni": "*.apps.example.com", "cluster": "apps"},
]
EXPECT = [
    ("db.example.com", "db"),
    ("DB.Example.COM", "db"),
    ("www.example.com", "wide"),
    ("x.apps.example.com", "apps"),
    ("deep.x.apps.example.com", "apps"),
    ("example.com", "fallback"),
    ("unknown.example.org", "fallback"),
    (None, "fallback"),
]
NAMES = {label: [n.lower() for n, l in EXPECT if l == label and n] or [f"{label}.invalid"]
         for _, label in EXPECT}


# ---- certificates and TLS upstreams -----------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """label -> (certificate, key): one self-signed ECDSA certificate per
    upstream, naming what is routed to it."""
    d = tmp_path_factory.mktemp("certs")
    out = {}
    for label, names in NAMES.items():
        crt, key = str(d / f"{label}.pem"), str(d / f"{label}.key")
        san = ",".join(f"DNS:{n}" for n in names)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "2", "-subj", f"/CN={names[0]}", "-addext",
                        f"subjectAltName={san}"], check=True, capture_output=True, timeout=60)
        out[label] = (crt, key)
    return out


def read_line(s) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            break
        line += b
    return line


class TlsUpstream:
    """A TLS server (Python's ssl, a thread per connection) that says who
    it is. After the handshake it answers
      WHO\\n            -> its label and the server name it was asked for
      BULK n\\n + n B   -> the sha256 of the n bytes, then n bytes of pattern(2)
      GET ...          -> an HTTP/1.1 response whose body is its label
    """

    def __init__(self, servers, label, cert, key):
        self.label = label
        self.names = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = self.on_sni
        self.ctx = ctx
        self.srv = servers(self.handle)
        self.addr = self.srv.addr

    def on_sni(self, sock, name, ctx):
        self.names.append(name)
        sock.seen_name = name             # the server name this connection asked for

    @property
    def connections(self):
        return self.srv.connections

    def handle(self, c, srv):
        c.settimeout(60)
        t = self.ctx.wrap_socket(c, server_side=True)
        while True:
            line = read_line(t)
            if not line:
                return None
            if line == b"WHO\n":
                t.sendall(f"{self.label} {getattr(t, 'seen_name', None) or '-'}\n".encode())
            elif line.startswith(b"BULK "):
                import hashlib
                n, h, left = int(line.split()[1]), hashlib.sha256(), int(line.split()[1])
                while left:
                    b = t.recv(min(left, 1 << 20))
                    if not b:
                        raise AssertionError(f"stream ended {left} bytes short")
                    h.update(b)
                    left -= len(b)
                t.sendall(h.hexdigest().encode() + b"\n")
                for chunk in pattern(2, n):
                    t.sendall(chunk)
            elif line.startswith(b"GET "):
                while read_line(t) not in (b"\r\n", b""):
                    pass
                body = self.label.encode()
                t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                          % (len(body), body))
                t.close()
                return None
            else:
                raise AssertionError(f"unexpected {line!r}")


@pytest.fixture
def upstreams(servers, certs):
    return {label: TlsUpstream(servers, label, *certs[label]) for label in NAMES}


def sni_proxy(proxy_factory, upstreams, profile="full", forwarding="splice", routes=ROUTES,
              listener=None, proxy=None):
    port = free_port()
    lst = {"name": "sni", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "fallback",
           "forwarding": forwarding, "routes": routes}
    lst.update(listener or {})
    clusters = [{"name": label, "servers": [u.addr]} for label, u in upstreams.items()]
    p = proxy_factory([lst], clusters, proxy=proxy or {"workers": 2}, profile=profile)
    p.port = port
    return p


def client_ctx(cafile, name):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = name is not None      # no name: the chain is still verified
    return ctx


def tls_connect(port, name, cafile, timeout=20):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return client_ctx(cafile, name).wrap_socket(s, server_hostname=name)


def who(t) -> str:
    t.sendall(b"WHO\n")
    return read_line(t).decode().strip()


# ---- routing -----------------------------------------------------------------------

@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("forwarding", FORWARDING)
def test_each_name_reaches_its_cluster(proxy_factory, upstreams, certs, profile, forwarding):
    p = sni_proxy(proxy_factory, upstreams, profile, forwarding)
    for name, label in EXPECT:
        with tls_connect(p.port, name, certs[label][0]) as t:
            assert who(t) == f"{label} {name or '-'}", name
            assert who(t) == f"{label} {name or '-'}"   # and it goes on
    for label, u in upstreams.items():
        assert u.connections == sum(1 for _, l in EXPECT if l == label), label
    tot = p.stats()["total"]
    assert tot["sni_errors"] == 0 and tot["sni_timeouts"] == 0
    assert tot[f"sessions_{'buffered' if forwarding == 'buffered' else 'splice'}"] == len(EXPECT)


def test_openssl_s_client(proxy_factory, upstreams, certs):
    """openssl s_client -servername, verifying the upstream's certificate
    (-verify_return_error): the handshake is the upstream's own."""
    p = sni_proxy(proxy_factory, upstreams)
    for name, label, args in [("db.example.com", "db", ["-servername", "db.example.com"]),
                              ("x.apps.example.com", "apps", ["-servername", "x.apps.example.com"]),
                              (None, "fallback", ["-noservername"])]:
        sc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", *args,
                               "-CAfile", certs[label][0], "-verify_return_error", "-quiet"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        try:
            sc.stdin.write(b"WHO\n")
            sc.stdin.flush()
            # poll, not select(): this process may hold fds past 1024
            with selectors.DefaultSelector() as sel:
                sel.register(sc.stdout, selectors.EVENT_READ)
                ready = sel.select(30)
            line = sc.stdout.readline() if ready else b""
        finally:
            sc.kill()
            _, err = sc.communicate()
        assert line.decode().strip() == f"{label} {name or '-'}", err.decode()[-2000:]


def test_curl(proxy_factory, upstreams, certs):
    """curl --resolve: HTTPS through the passthrough, the certificate
    verified by curl against the upstream's own."""
    p = sni_proxy(proxy_factory, upstreams)
    for name, label in [("db.example.com", "db"), ("x.apps.example.com", "apps"),
                        ("www.example.com", "wide")]:
        r = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", certs[label][0],
                            "--resolve", f"{name}:{p.port}:127.0.0.1",
                            f"https://{name}:{p.port}/"], capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout == label.encode()
    # -k does not need the certificate: an unknown name reaches the default.
    r = subprocess.run(["curl", "-sSk", "--max-time", "20", "--resolve",
                        f"other.test:{p.port}:127.0.0.1", f"https://other.test:{p.port}/"],
                       capture_output=True, timeout=30)
    assert r.stdout == b"fallback", r.stderr.decode()


@pytest.mark.parametrize("forwarding", FORWARDING)
def test_large_transfer_both_ways_intact(proxy_factory, upstreams, certs, forwarding):
    """32 MiB each way inside TLS: a lost, repeated or reordered byte would
    break a record's authentication, and the hashes would differ."""
    size = 32 << 20
    p = sni_proxy(proxy_factory, upstreams, forwarding=forwarding)
    with tls_connect(p.port, "db.example.com", certs["db"][0], timeout=120) as t:
        t.sendall(b"BULK %d\n" % size)
        for chunk in pattern(1, size):
            t.sendall(chunk)
        assert read_line(t).decode().strip() == pattern_sha(1, size)
        import hashlib
        h, left = hashlib.sha256(), size
        while left:
            b = t.recv(min(left, 1 << 20))
            assert b, f"{left} bytes short"
            h.update(b)
            left -= len(b)
        assert h.hexdigest() == pattern_sha(2, size)


def test_reload_changes_routes(proxy_factory, upstreams, certs):
    p = sni_proxy(proxy_factory, upstreams)
    with tls_connect(p.port, "db.example.com", certs["db"][0]) as t:
        assert who(t).startswith("db ")
    with open(p.path) as f:
        text = f.read()
    with open(p.path, "w") as f:
        f.write(text.replace('sni = "db.example.com"\ncluster = "db"',
                             'sni = "db.example.com"\ncluster = "wide"'))
    gen = p.stats()["config_generation"]
    p.reload()
    wait_for(lambda: p.stats()["config_generation"] > gen and
             all(w["config_generation"] > gen for w in p.stats()["workers"]), 20,
             what="the reload")
    # The wide cluster's certificate does not name db.example.com: verify the chain only.
    ctx = client_ctx(certs["wide"][0], None)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.port), timeout=20),
                         server_hostname="db.example.com") as t:
        assert who(t) == "wide db.example.com"


def test_plain_tcp_listener_does_not_wait_for_the_client(proxy_factory, servers):
    """A listener without routes dials at once: an upstream that speaks
    first (a banner, as SMTP and MySQL send) is heard before the client
    says anything."""
    def banner(c, srv):
        c.sendall(b"220 hello\r\n")
        c.recv(1)
    up = servers(banner)
    port = free_port()
    p = proxy_factory([{"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp",
                        "cluster": "c"}], [{"name": "c", "servers": [up.addr]}])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(100) == b"220 hello\r\n"
    assert p.total("sni_timeouts") == 0


# ---- hostile clients ----------------------------------------------------------------

def assert_closed_soon(s, within=2.0):
    """The proxy closes s (FIN or reset) well before any timeout."""
    t0 = time.monotonic()
    s.settimeout(within + 5)
    recv_until_close(s)
    took = time.monotonic() - t0
    assert took < within, f"closed after {took:.2f}s"


def no_upstream_saw_it(upstreams):
    assert all(u.connections == 0 for u in upstreams.values()), \
        {l: u.connections for l, u in upstreams.items()}


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: db.example.com\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.2\r\n",
    b"\x80\x2e\x01\x03\x01" + b"\x00" * 45,                    # SSLv2-framed hello
    os.urandom(1 << 20),
], ids=["http", "ssh", "sslv2", "1MiB-random"])
def test_garbage_is_closed_at_once(proxy_factory, upstreams, data):
    p = sni_proxy(proxy_factory, upstreams, listener={"sni_timeout": "30s"})
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass                                   # closed while we were still sending
    assert_closed_soon(s)
    s.close()
    wait_for(lambda: p.total("sni_errors") == 1, 5, what="the error counted")
    no_upstream_saw_it(upstreams)


@pytest.mark.parametrize("cut", [1, 5, 9, 100, -1])
def test_truncated_hello_then_close(proxy_factory, upstreams, cut):
    p = sni_proxy(proxy_factory, upstreams, listener={"sni_timeout": "30s"})
    h = ch.python_hello("db.example.com")
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(h[:cut])
        s.shutdown(socket.SHUT_WR)
        assert_closed_soon(s)
    wait_for(lambda: p.total("sni_errors") == 1, 5, what="the cut ClientHello counted")
    wait_for(lambda: p.total("active") == 0, 5, what="the slot freed")
    no_upstream_saw_it(upstreams)


def test_silent_client_that_closes_is_not_an_error(proxy_factory, upstreams):
    p = sni_proxy(proxy_factory, upstreams)
    socket.create_connection(("127.0.0.1", p.port), timeout=10).close()
    wait_for(lambda: p.total("closed") == 1, 5, what="the close")
    assert p.total("sni_errors") == 0 and p.total("sni_timeouts") == 0


@pytest.mark.parametrize("how", ["one-record", "fragmented"])
def test_oversized_hello_is_closed(proxy_factory, upstreams, how):
    """A ClientHello over 16 KiB: in one record the handshake header says
    so after 9 bytes; cut into small records it is refused once 16 KiB have
    come without its end."""
    p = sni_proxy(proxy_factory, upstreams, listener={"sni_timeout": "30s"})
    big = ch.hello("db.example.com", extra=ch.ext(0x15, b"\x00" * 17000))
    data = big if how == "one-record" else ch.frame(ch.message_of(big), [100])
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert_closed_soon(s)
    s.close()
    wait_for(lambda: p.total("sni_errors") == 1, 5, what="the error counted")
    no_upstream_saw_it(upstreams)


def handshake_with_first_flight(sock, name, cafile, send_first):
    """A real TLS client (Python's ssl through memory BIOs) whose first
    flight goes out through send_first(bytes); the rest of the handshake
    and the session go over sock as usual. Returns a function that sends a
    line and reads one back over TLS."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(cafile, name).wrap_bio(inc, out, server_hostname=name)

    def pump_until(done):
        while True:
            try:
                r = done()
                sock.sendall(out.read())
                return r
            except ssl.SSLWantReadError:
                data = out.read()
                if data:
                    sock.sendall(data)
                b = sock.recv(65536)
                if not b:
                    raise ConnectionError("closed during the handshake")
                inc.write(b)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    send_first(out.read())
    pump_until(obj.do_handshake)

    def ask(line: bytes) -> bytes:
        obj.write(line)
        sock.sendall(out.read())
        got = b""
        while not got.endswith(b"\n"):
            got += pump_until(lambda: obj.read(4096))
        return got
    return ask


@pytest.mark.parametrize("forwarding", ["splice", "buffered"])
def test_hello_dribbled_byte_by_byte_still_works(proxy_factory, upstreams, certs, forwarding):
    p = sni_proxy(proxy_factory, upstreams, forwarding=forwarding,
                  listener={"sni_timeout": "30s"})
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def dribble(data):
            for i in range(len(data)):
                s.sendall(data[i:i + 1])
                time.sleep(0.002)
        ask = handshake_with_first_flight(s, "db.example.com", certs["db"][0], dribble)
        assert ask(b"WHO\n") == b"db db.example.com\n"
    assert p.total("sni_errors") == 0


def test_hello_in_many_records_reaches_the_upstream_as_sent(proxy_factory, upstreams, certs):
    """The client cuts its ClientHello into 7-byte records; the proxy reads
    the name across them and forwards the records as they are (OpenSSL on
    the upstream reassembles them, and the handshake transcript, which
    both ends hash, matches only if not a byte changed)."""
    p = sni_proxy(proxy_factory, upstreams)
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as s:
        def fragmented(data):
            s.sendall(ch.frame(ch.message_of(data), [7]))
        ask = handshake_with_first_flight(s, "x.apps.example.com", certs["apps"][0], fragmented)
        assert ask(b"WHO\n") == b"apps x.apps.example.com\n"


def test_dribbler_is_closed_at_sni_timeout(proxy_factory, upstreams):
    """A byte now and then never buys more time: the deadline is the
    ClientHello's, not an idle one."""
    p = sni_proxy(proxy_factory, upstreams, listener={"sni_timeout": "1s"})
    h = ch.python_hello("db.example.com")
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        t0 = time.monotonic()
        try:
            for i in range(len(h)):
                s.sendall(h[i:i + 1])
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(5)
        recv_until_close(s)
        took = time.monotonic() - t0
    assert 0.8 < took < 2.5, took
    assert p.total("sni_timeouts") == 1
    no_upstream_saw_it(upstreams)


def test_silent_connections_are_closed_at_sni_timeout_and_slots_freed(proxy_factory, upstreams,
                                                                      certs):
    """250 connections that never send, on one worker that holds 100 at a
    time: each is closed at the timeout, which frees its slot for the ones
    waiting in the backlog; then a real client gets through."""
    p = sni_proxy(proxy_factory, upstreams, listener={"sni_timeout": "1s"},
                  proxy={"workers": 1, "max_connections": 100})
    base = p.stats()["total"]["buffers_in_use"]
    socks = [socket.create_connection(("127.0.0.1", p.port), timeout=30) for _ in range(250)]
    wait_for(lambda: p.total("active") == 100, 10, what="100 sessions held")
    for s in socks:
        s.settimeout(30)
        assert recv_until_close(s) == b""
        s.close()
    wait_for(lambda: p.total("sni_timeouts") == 250, 20, what="250 timeouts")
    wait_for(lambda: p.total("active") == 0, 10, what="every slot freed")
    assert p.stats()["total"]["buffers_in_use"] == base
    no_upstream_saw_it(upstreams)
    with tls_connect(p.port, "db.example.com", certs["db"][0]) as t:
        assert who(t) == "db db.example.com"


def test_half_open_hellos_hold_no_buffer(proxy_factory, upstreams):
    """Connections that sent part of a ClientHello each hold one assembly
    buffer, and connections that sent nothing hold none, until the timeout
    gives them back."""
    p = sni_proxy(proxy_factory, upstreams, listener={"sni_timeout": "2s"},
                  proxy={"workers": 1})
    base = p.stats()["total"]["buffers_in_use"]
    silent = [socket.create_connection(("127.0.0.1", p.port), timeout=10) for _ in range(50)]
    part = [socket.create_connection(("127.0.0.1", p.port), timeout=10) for _ in range(20)]
    for s in part:
        s.sendall(ch.python_hello("db.example.com")[:200])
    wait_for(lambda: p.total("active") == 70, 10, what="70 sessions")
    time.sleep(0.2)
    # Assembly buffers are not provided buffers: the gauge does not move.
    assert p.stats()["total"]["buffers_in_use"] == base
    for s in silent + part:
        s.settimeout(10)
        recv_until_close(s)
        s.close()
    wait_for(lambda: p.total("sni_timeouts") == 70, 10, what="70 timeouts")
    wait_for(lambda: p.total("active") == 0, 10, what="every slot freed")


# ---- configuration ---------------------------------------------------------------------

BASE = """
[[listeners]]
name = "sni"
bind = "127.0.0.1:18443"
mode = "tcp"
cluster = "fallback"
[[listeners.routes]]
sni = "db.example.com"
cluster = "db"

[[clusters]]
name = "db"
servers = ["127.0.0.1:5432"]
[[clusters]]
name = "fallback"
servers = ["127.0.0.1:5433"]
"""


def config_error(text):
    from uproxy import config
    with pytest.raises(config.ConfigError) as e:
        config.parse(text)
    return str(e.value)


def test_config_reads_sni_routes():
    from uproxy import config
    c = config.parse(BASE.replace('"db.example.com"', '"*.Example.COM"').replace(
        'mode = "tcp"', 'mode = "tcp"\nsni_timeout = "750ms"'))
    lst = c.listeners[0]
    assert lst.routes[0].sni == "*.example.com" and lst.routes[0].cluster == "db"
    assert lst.sni_timeout_ms == 750
    assert config.parse(BASE).listeners[0].sni_timeout_ms == 5000


@pytest.mark.parametrize("change,key,words", [
    (('sni = "db.example.com"', 'host = "db.example.com"'), "listeners[0].routes[0].host",
     'a tcp listener\'s route matches the TLS server name (sni): did you mean sni = "db.example.com"?'),
    (('sni = "db.example.com"', 'sni = "db.example.com"\npath_prefix = "/a"'),
     "listeners[0].routes[0].path_prefix", 'needs mode = "http"'),
    (('sni = "db.example.com"', 'sni = "db.example.com"\nmethods = ["GET"]'),
     "listeners[0].routes[0].methods", 'needs mode = "http"'),
    (('sni = "db.example.com"', 'sin = "db.example.com"'), "listeners[0].routes[0].sin",
     "unknown key; did you mean 'sni'?"),
    (('sni = "db.example.com"', 'cluster_ = "x"'), "listeners[0].routes[0].sni",
     "needs sni"),
    (('sni = "db.example.com"', 'sni = "db..example.com"'), "listeners[0].routes[0].sni",
     "not a host name"),
    (('sni = "db.example.com"', 'sni = "db.*.com"'), "listeners[0].routes[0].sni",
     "not a host name"),
    (('cluster = "db"', 'cluster = "dbb"'), "listeners[0].routes[0].cluster",
     "no cluster named 'dbb' (clusters: db, fallback); did you mean 'db'?"),
    (('mode = "tcp"', 'mode = "http"'), "listeners[0].routes[0].sni",
     'an http listener\'s route matches the request\'s Host: did you mean host = "db.example.com"?'),
    (('mode = "tcp"', 'mode = "http"\nsni_timeout = "2s"'), "listeners[0].sni_timeout",
     'for mode = "tcp" listeners'),
    (('cluster = "db"\n', 'cluster = "db"\n[[listeners.routes]]\nsni = "DB.example.com"\n'
      'cluster = "fallback"\n'), "listeners[0].routes[1].sni", "already routed (to 'db')"),
])
def test_config_mistakes(change, key, words):
    text = BASE.replace(*change, 1)
    msg = config_error(text)
    assert f"{key}: " in msg and words in msg, msg


def test_config_passthrough_adds_no_tls():
    """Without tls on the listener its clusters may not wrap the client's
    TLS again. (With tls the listener terminates and routes by the same
    name: test_tls_sni_routing.py.)"""
    for cluster, key in [("db", "listeners[0].routes[0].cluster"), ("fallback", "listeners[0].cluster")]:
        text = BASE.replace(f'name = "{cluster}"\n', f'name = "{cluster}"\ntls = true\n')
        msg = config_error(text)
        assert f"{key}: cluster {cluster!r} speaks TLS to its servers" in msg, msg


def test_uproxy_check_names_the_line(tmp_path):
    import sys
    from support import ROOT
    path = tmp_path / "u.toml"
    path.write_text(BASE.replace('sni = "db.example.com"', 'host = "db.example.com"')
                    .replace("18443", str(free_port())))
    r = subprocess.run([sys.executable, "-m", "uproxy", "check", "-c", str(path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    out = r.stdout + r.stderr
    assert f"{path}:8: listeners[0].routes[0].host" in out and "1 configuration error" in out, out


# ---- the iron laws ------------------------------------------------------------------------

def _sni_allocations_after(tmp_path, so, n_conns):
    """The worker thread's allocation count after n_conns SNI-routed
    sessions (past a warm-up) to a plain echo server: the ClientHello is
    only bytes to it, echoed back. Every tenth ClientHello comes in two
    pieces, through an assembly buffer."""
    from support import Proxy, Server, echo, render_config
    up = Server(echo)
    port = free_port()
    log = str(tmp_path / f"alloc-sni-{n_conns}.log")
    cfg = render_config({"workers": 1},
                        [{"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp",
                          "cluster": "other", "routes": [{"sni": "*.example.com", "cluster": "c"}]}],
                        [{"name": "c", "servers": [up.addr]},
                         {"name": "other", "servers": ["127.0.0.1:1"]}])
    p = Proxy(tmp_path, cfg, env={"LD_PRELOAD": so, "UPROXY_ALLOC_LOG": log})
    hello = ch.hello("db.example.com")
    try:
        def one(i):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if i % 10 == 0:
                    s.sendall(hello[:20])
                    time.sleep(0.002)
                    s.sendall(hello[20:])
                else:
                    s.sendall(hello)
                got = b""
                while len(got) < len(hello):
                    b = s.recv(65536)
                    assert b, "closed early"
                    got += b
                assert got == hello
        for i in range(200):
            one(i)
        for i in range(n_conns):
            one(i)
        wait_for(lambda: p.total("active") == 0, what="sessions to close")
        tid = p.stats()["workers"][0]["tid"]
    finally:
        assert p.stop() == 0
        up.close()
    counts = dict(map(int, l.split()) for l in open(log))
    assert tid in counts, f"the allocation log has no line for the worker thread {tid}: {counts}"
    return counts[tid]


def test_no_allocation_per_sni_session(tmp_path, request):
    """Law 2 for SNI passthrough: the worker's malloc count does not grow
    with sessions (N vs 10N), ClientHellos in one piece or in two."""
    if request.config.pluginmanager.hasplugin("tests.sanitize.plugin"):
        pytest.skip("the sanitized run preloads its own allocator, not the counting one")
    from test_invariants import _build_interposer
    so = _build_interposer(tmp_path)
    a = _sni_allocations_after(tmp_path, so, 100)
    b = _sni_allocations_after(tmp_path, so, 1000)
    assert a > 0
    assert b - a <= 5, f"worker allocations grew with sessions: {a} after 100, {b} after 1000"
