"""HTTP/2 from clients (issue 17, the downstream half): ALPN h2 over TLS and
h2c by prior knowledge on listeners with http2 = true, each stream one
transaction on the HTTP/1.1 upstream side. Real clients no one here wrote
(curl, nghttp, h2load, Python's h2 and httpx) against real `uproxy run`
processes; the hostile ones speak raw frames (Python's h2 for HPACK)."""
import asyncio
import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

import pytest

from h2_upstream import H2Upstream
from http_upstream import HttpUpstream, Response
from support import ROOT, Proxy, free_port, render_config, wait_for

h2 = pytest.importorskip("h2", reason="Python's h2 (pyproject test extras) is not installed")
import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import hpack  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def need(tool):
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed (Debian nghttp2-client / curl; scripts/setup --test)")


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("h2pki")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
                    "-days", "5", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost"], cwd=d, check=True, capture_output=True)
    return {"cert": str(d / "c.pem"), "key": str(d / "k.pem")}


def h2_proxy(proxy_factory, servers, tls=None, listener=None, cluster=None):
    port = free_port()
    lst = {"name": "h2", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
           "http2": True}
    if tls:
        lst["tls"] = {"certificates": [tls]}
    lst.update(listener or {})
    cl = {"name": "c", "servers": servers}
    cl.update(cluster or {})
    p = proxy_factory([lst], [cl], proxy={"workers": 1})
    p.port = port
    return p


def curl(*args, timeout=20):
    r = subprocess.run(["curl", "-sS", "--max-time", str(timeout), *args], capture_output=True,
                       timeout=timeout + 5)
    return r


# ---- a raw client: frames on a socket ----------------------------------------

def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", sid) + payload


DATA, HEADERS, RST, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 1, 4, 1


def req_block(enc, path="/", method="GET", authority="localhost", extra=()):
    return enc.encode([(":method", method), (":scheme", "http"), (":path", path),
                       (":authority", authority), *extra])


class Raw:
    """A socket that has sent the preface and an empty SETTINGS."""

    def __init__(self, port, settings=b""):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.buf = b""

    def send(self, b):
        self.s.sendall(b)

    def frames(self, until, timeout=10):
        """Read frames until until(type, flags, sid, payload) is true (returns
        it) or the connection closes (None)."""
        self.s.settimeout(timeout)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + n:
                    break
                t, fl, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7fffffff
                pl = self.buf[9:9 + n]
                self.buf = self.buf[9 + n:]
                if until(t, fl, sid, pl):
                    return (t, fl, sid, pl)
            try:
                b = self.s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                return None
            if not b:
                return None
            self.buf += b
        return None

    def goaway(self, timeout=10):
        f = self.frames(lambda t, *_: t == GOAWAY, timeout)
        return None if f is None else int.from_bytes(f[3][4:8], "big")

    def closed(self, timeout=10):
        """True once the proxy has closed the connection (after a GOAWAY or not)."""
        return self.frames(lambda *_: False, timeout) is None

    def close(self):
        self.s.close()


# ---- configuration ---------------------------------------------------------------

@pytest.mark.parametrize("listener,key,words", [
    ('mode = "tcp", http2 = true', "listeners[0].http2", 'needs mode = "http"'),
    ('mode = "http", http2 = "yes"', "listeners[0].http2", "true or false"),
    ('mode = "http", redirect_https = true, http2 = true', "listeners[0].http2", "redirect_https"),
    ('mode = "http", http2 = true, http2_max_concurrent_streams = 0',
     "listeners[0].http2_max_concurrent_streams", "at least 1"),
    ('mode = "http", http2 = true, http2_max_concurrent_streams = 129',
     "listeners[0].http2_max_concurrent_streams", "at most 128"),
    ('mode = "http", http2 = true, http2_max_concurrent_streams = "9"',
     "listeners[0].http2_max_concurrent_streams", "must be an integer"),
    ('mode = "http", http2_max_concurrent_streams = 10',
     "listeners[0].http2_max_concurrent_streams", "set http2 = true"),
])
def test_config_errors_name_the_key(tmp_path, listener, key, words):
    """uproxy check names the key path and the problem."""
    cfg = tmp_path / "u.toml"
    cfg.write_text(f'''[[listeners]]
name = "a"
bind = "127.0.0.1:{free_port()}"
cluster = "c"
{listener.replace(", ", chr(10))}

[[clusters]]
name = "c"
servers = ["127.0.0.1:9"]
''')
    r = subprocess.run([sys.executable, "-m", "uproxy", "check", "-c", str(cfg)],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert key in out and words in out, out


def test_alpn_default_with_http2(tmp_path, cert):
    """http2 = true makes ALPN ["h2", "http/1.1"]; "h2" without it is refused."""
    from uproxy import config
    base = f'''[[listeners]]
name = "a"
bind = "127.0.0.1:{free_port()}"
mode = "http"
cluster = "c"
%s
tls = {{ certificates = [{{ cert = "{cert["cert"]}", key = "{cert["key"]}" }}] %s }}

[[clusters]]
name = "c"
servers = ["127.0.0.1:9"]
'''
    p = tmp_path / "a.toml"
    p.write_text(base % ("http2 = true", ""))
    assert config.load(str(p)).listeners[0].tls.alpn == ("h2", "http/1.1")
    p.write_text(base % ("", ', alpn = ["h2", "http/1.1"]'))
    r = subprocess.run([sys.executable, "-m", "uproxy", "check", "-c", str(p)],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode != 0 and "listeners[0].tls.alpn[0]" in r.stdout + r.stderr


# ---- clients no one here wrote -------------------------------------------------

def test_h2c_prior_knowledge_curl_get_and_post(proxy_factory):
    """curl --http2-prior-knowledge: GET and POST become HTTP/1.1 requests
    with Host from :authority and the proxy's forwarded headers."""
    need("curl")
    up = HttpUpstream(lambda req: Response(body=b"got " + req.method.encode() + b" " +
                                           req.target.encode() + b" " + req.body))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    r = curl("-i", "--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/a?q=1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"HTTP/2 200"), r.stdout[:200]
    assert r.stdout.endswith(b"got GET /a?q=1 ")
    r = curl("--http2-prior-knowledge", "--data-binary", "hello body",
             f"http://127.0.0.1:{p.port}/post")
    assert r.stdout == b"got POST /post hello body", r.stdout
    req = up.requests[0]
    assert req.version == "HTTP/1.1"
    assert req.header("host") == f"127.0.0.1:{p.port}"
    assert req.header("x-forwarded-proto") == "http"
    assert req.header("x-forwarded-for") == "127.0.0.1"
    assert p.total("h2_connections") == 2 and p.total("h2_streams") == 2
    # The upstream connection of the first stream served the second (the
    # pool), and a stream that ended normally is not counted as reset.
    assert p.total("pool_hits") == 1 and p.total("h2_resets") == 0
    up.close()


def test_h2_over_tls_alpn_prefers_h2(proxy_factory, cert):
    """ALPN: h2 is preferred; a client that offers only http/1.1 gets it on
    the same listener; X-Forwarded-Proto says https for both."""
    need("curl")
    up = HttpUpstream(lambda req: Response(body=req.header("x-forwarded-proto").encode()))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"], tls=cert)
    base = f"https://localhost:{p.port}/"
    res = ["--resolve", f"localhost:{p.port}:127.0.0.1", "--cacert", cert["cert"]]
    r = curl("-i", "--http2", *res, base)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"HTTP/2 200") and r.stdout.endswith(b"https"), r.stdout
    r = curl("-i", "--http1.1", *res, base)
    assert r.stdout.startswith(b"HTTP/1.1 200") and r.stdout.endswith(b"https"), r.stdout
    # Python's ssl with ALPN ["h2", "http/1.1"]: the server picks h2.
    ctx = ssl.create_default_context(cafile=cert["cert"])
    ctx.set_alpn_protocols(["http/1.1", "h2"])
    with socket.create_connection(("127.0.0.1", p.port)) as s, \
            ctx.wrap_socket(s, server_hostname="localhost") as t:
        assert t.selected_alpn_protocol() == "h2"
    up.close()


def test_nghttp_and_h2load_many_streams(proxy_factory, cert):
    """nghttp fetches; h2load runs 100 concurrent streams on each of 2
    connections, over h2c and over TLS: every request succeeds."""
    need("nghttp")
    need("h2load")
    up = HttpUpstream(lambda req: Response(body=b"x" * 64))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    r = subprocess.run(["nghttp", "-v", f"http://127.0.0.1:{p.port}/n"], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 0 and "recv DATA frame <length=64" in r.stdout, r.stdout[-800:]
    r = subprocess.run(["h2load", "-n", "2000", "-c", "2", "-m", "100",
                        f"http://127.0.0.1:{p.port}/load"], capture_output=True, text=True,
                       timeout=60)
    assert "2000 succeeded, 0 failed" in r.stdout and "2000 2xx" in r.stdout, r.stdout
    p2 = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"], tls=cert)
    r = subprocess.run(["h2load", "-n", "1000", "-c", "2", "-m", "50",
                        f"https://127.0.0.1:{p2.port}/tls"], capture_output=True, text=True,
                       timeout=60)
    assert "1000 succeeded, 0 failed" in r.stdout and "h2" in r.stdout, r.stdout
    up.close()


def test_httpx_parallel_streams_one_connection(proxy_factory):
    """httpx[http2] with 100 requests at once on one connection (a browser's
    page of resources): all answered, each with its own body."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("h2")
    up = HttpUpstream(lambda req: Response(body=req.target.encode() * 10,
                                           delay=0.05 if req.target.endswith("7") else 0))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])

    async def run():
        # http1=False: prior knowledge, as httpx speaks h2c only then.
        async with httpx.AsyncClient(http1=False, http2=True) as c:
            return await asyncio.gather(*[c.get(f"http://127.0.0.1:{p.port}/r{i}")
                                          for i in range(100)])
    rs = asyncio.run(run())
    assert all(r.http_version == "HTTP/2" for r in rs)
    assert [r.content for r in rs] == [f"/r{i}".encode() * 10 for i in range(100)]
    assert p.total("h2_connections") == 1
    up.close()


def h2_heads(port, paths):
    """One request per path on one HTTP/2 connection (Python's h2): each
    response's header list, in order, duplicates kept."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    out = {}
    for i, path in enumerate(paths):
        conn.send_headers(1 + 2 * i, [(":method", "GET"), (":scheme", "http"), (":path", path),
                                      (":authority", "localhost")], end_stream=True)
    s.sendall(conn.data_to_send())
    ended = set()
    while len(ended) < len(paths):
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                out[ev.stream_id] = [(k.decode(), v.decode()) for k, v in ev.headers]
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended.add(ev.stream_id)
        s.sendall(conn.data_to_send())
    s.close()
    return [out.get(1 + 2 * i, []) for i in range(len(paths))]


def test_h2_response_headers_apply_to_streams(proxy_factory):
    """A route's response_headers (and the listener's, added to them) edit
    an HTTP/2 stream's response as an HTTP/1.1 client's: remove drops the
    upstream's lines, set replaces them with one, add adds one; a route
    without them passes the head as it came."""
    up = HttpUpstream(lambda req: Response(body=b"ok", headers=[
        ("Server", "secret/1.0"), ("Cache-Control", "max-age=60"), ("X-Keep", "1")]))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"], listener={
        "response_headers": {"remove": ["Server"]},
        "routes": [{"path_prefix": "/h", "cluster": "c",
                    "response_headers": {"set": {"Cache-Control": "no-store"},
                                         "add": {"X-Served-By": "uproxy"}}},
                   {"path_prefix": "/", "cluster": "c"}]})
    try:
        edited, plain = h2_heads(p.port, ["/h/x", "/other"])
        names = [k for k, _ in edited]
        assert ("x-served-by", "uproxy") in edited and ("x-keep", "1") in edited, edited
        assert "server" not in names, edited
        assert [v for k, v in edited if k == "cache-control"] == ["no-store"], edited
        assert "server" not in [k for k, _ in plain] and ("x-keep", "1") in plain, plain
        assert ("cache-control", "max-age=60") in plain and "x-served-by" not in [
            k for k, _ in plain], plain
    finally:
        up.close()


def test_each_stream_gets_its_own_head(proxy_factory):
    """Many streams on one connection whose upstream heads differ in their
    fields' number, names and lengths, answered in an interleaved order:
    each stream's HEADERS carry its own head's fields, names lower-cased
    whatever their length (the HEADERS reuse the transaction's parse of the
    head when the worker still holds it, and lower-case names eight bytes
    at a time: a wrong byte, or a head given to the wrong stream, shows
    here)."""
    def fields(i):
        return [("X-Path", f"/p{i}")] + [
            (f"X-Mixed-Case-Name-{'Ab' * k}-{i}", f"v{i}.{k}" * (k + 1)) for k in range(i % 5)]

    def answer(req):
        i = int(req.target[2:])
        return Response(body=f"body{i}".encode(), headers=fields(i), delay=(i * 7 % 5) * 0.01)
    up = HttpUpstream(answer)
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    try:
        n = 60
        heads = h2_heads(p.port, [f"/p{i}" for i in range(n)])
        for i, head in enumerate(heads):
            got = [(k, v) for k, v in head if k.startswith("x-")]
            assert got == [(k.lower(), v) for k, v in fields(i)], (i, head)
            assert ("content-length", str(len(f"body{i}"))) in head, (i, head)
    finally:
        up.close()


def test_cookie_crumbs_are_joined_into_one_line(proxy_factory):
    """A browser splits its Cookie into one field per cookie so that HPACK
    indexes each (Python's h2 does it with split_outbound_cookies); before
    HTTP/1.1 the proxy joins them into one line with "; " (RFC 9113
    8.2.3), in their order, whatever fields come between them, and leaves
    the other fields as they were. An empty crumb adds nothing; a stream
    with one cookie, or none, passes as it came."""
    up = HttpUpstream(lambda req: Response(body=b"ok"))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    many = "; ".join(f"k{i}=" + "v" * (i % 7 + 1) for i in range(60))
    streams = {
        "/split": [("cookie", "a=1; b=2"), ("x-between", "1"), ("cookie", "c=3"),
                   ("accept", "*/*"), ("cookie", "d=4")],
        "/empty-first": [("cookie", ""), ("cookie", "e=5"), ("cookie", ""), ("cookie", "f=6")],
        "/one": [("cookie", "g=7")],
        "/none": [("x-between", "2")],
        "/many": [("cookie", many), ("x-after", "3")],
    }
    try:
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, split_outbound_cookies=True))
        conn.initiate_connection()
        for i, (path, extra) in enumerate(streams.items()):
            conn.send_headers(1 + 2 * i, [(":method", "GET"), (":scheme", "http"),
                                          (":path", path), (":authority", "localhost"), *extra],
                              end_stream=True)
        s.sendall(conn.data_to_send())
        statuses = {}
        while len(statuses) < len(streams):
            data = s.recv(65536)
            assert data, statuses
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    statuses[ev.stream_id] = dict(ev.headers)[b":status"]
            s.sendall(conn.data_to_send())
        s.close()
        assert set(statuses.values()) == {b"200"}, statuses
        seen = {r.target: r for r in up.requests}
        split = seen["/split"]
        assert split.header_lines("cookie") == ["a=1; b=2; c=3; d=4"], split.head
        assert [k.lower() for k, _ in split.headers if k.lower() in ("x-between", "accept")] == [
            "x-between", "accept"], split.head
        assert split.header("accept") == "*/*" and split.header("x-between") == "1", split.head
        assert seen["/empty-first"].header_lines("cookie") == ["e=5; f=6"], seen["/empty-first"].head
        assert seen["/one"].header_lines("cookie") == ["g=7"], seen["/one"].head
        assert seen["/none"].header_lines("cookie") == [], seen["/none"].head
        assert seen["/many"].header_lines("cookie") == [many], seen["/many"].head
        assert seen["/many"].header("x-after") == "3", seen["/many"].head
    finally:
        up.close()


@pytest.mark.parametrize("fmt", ["json", "combined"])
def test_access_log_names_http2(proxy_factory, tmp_path, fmt):
    """A stream's access-log line says HTTP/2.0, as nginx's and HAProxy's do
    (the transaction saw its head as HTTP/1.1); an HTTP/1.1 client on the
    same port still gets HTTP/1.1."""
    import json as _json
    up = HttpUpstream(lambda req: Response(body=b"hello"))
    path = tmp_path / f"access-{fmt}.log"
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"],
                 listener={"access_log": str(path), "access_log_format": fmt})
    try:
        (head,) = h2_heads(p.port, ["/two?x=1"])
        assert (":status", "200") in head, head
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        s.sendall(b"GET /one HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        s.close()
        assert got.startswith(b"HTTP/1.1 200"), got[:100]
        wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= 2, 5,
                 what="log lines")
        lines = path.read_text().splitlines()
        if fmt == "json":
            recs = {r["target"]: r for r in map(_json.loads, lines)}
            assert recs["/two?x=1"]["version"] == "HTTP/2.0", recs
            assert recs["/two?x=1"]["status"] == 200 and recs["/two?x=1"]["bytes_out"] == 5, recs
            assert recs["/one"]["version"] == "HTTP/1.1", recs
        else:
            assert any('"GET /two?x=1 HTTP/2.0" 200 5 ' in l for l in lines), lines
            assert any('"GET /one HTTP/1.1" 200 5 ' in l for l in lines), lines
    finally:
        up.close()


def test_bodies_large_and_chunked(proxy_factory):
    """Request bodies with and without content-length (the upstream gets
    them chunked), and 4 MiB responses by content-length and chunked, whole."""
    need("curl")
    big = os.urandom(4 << 20)

    def handler(req):
        if req.target == "/echo":
            return Response(body=hashlib.sha256(req.body).hexdigest().encode() +
                            b" " + (req.header("transfer-encoding") or "len").encode())
        return Response(body=big, chunked=req.target == "/chunked", chunk_size=100000)
    up = HttpUpstream(handler)
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    for path in ("/length", "/chunked"):
        r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}{path}", timeout=30)
        assert r.returncode == 0, r.stderr
        assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(big).hexdigest(), path
    body = os.urandom(3 << 20)
    path = os.path.join(ROOT, ".pytest-h2-body")
    try:
        with open(path, "wb") as fh:
            fh.write(body)
        r = curl("--http2-prior-knowledge", "--data-binary", f"@{path}",
                 f"http://127.0.0.1:{p.port}/echo", timeout=30)
        assert r.stdout == hashlib.sha256(body).hexdigest().encode() + b" len", r.stdout
    finally:
        os.unlink(path)
    # No content-length (h2 library, END_STREAM on the last DATA): chunked.
    raw = Raw(p.port)
    blk = req_block(raw.enc, "/echo", "POST")
    raw.send(frame(HEADERS, END_HEADERS, 1, blk))
    part = os.urandom(15000)          # (frames of at most 16 KiB)
    raw.send(frame(DATA, 0, 1, part) + frame(DATA, END_STREAM, 1, part))
    f = raw.frames(lambda t, fl, sid, pl: t == DATA and sid == 1)
    assert f is not None
    assert f[3].startswith(hashlib.sha256(part + part).hexdigest().encode() + b" chunked"), f[3]
    raw.close()
    up.close()


def test_upstream_down_is_an_answer_on_the_stream(proxy_factory):
    """A dead upstream is a 502 on its stream; the connection stays and the
    next stream on it is answered too."""
    dead = free_port()
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{dead}"], cluster={"max_attempts": 1})
    # (Not curl with two URLs: Debian's curl 7.88 fails to reuse an h2c
    # connection, against nginx too.)
    raw = Raw(p.port)
    for sid in (1, 3):
        raw.send(frame(HEADERS, END_HEADERS | END_STREAM, sid, req_block(raw.enc, f"/{sid}")))
        f = raw.frames(lambda t, fl, s, pl: t == HEADERS and s == sid)
        assert f is not None
        assert dict(raw.dec.decode(f[3]))[":status"] == "502"
        raw.frames(lambda t, fl, s, pl: t == DATA and s == sid and fl & END_STREAM)
    raw.close()
    assert p.total("h2_connections") == 1


def test_mixed_h1_and_h2c_on_one_port(proxy_factory):
    """The preface tells h2c from HTTP/1.1: both at once on one port."""
    need("curl")
    up = HttpUpstream(lambda req: Response(body=b"v" + req.target.encode()))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    errs = []

    def run(flag, n):
        for i in range(n):
            r = curl("-i", flag, f"http://127.0.0.1:{p.port}/{flag}{i}")
            want = b"HTTP/2 200" if "prior" in flag else b"HTTP/1.1 200"
            if not (r.stdout.startswith(want) and r.stdout.endswith(f"v/{flag}{i}".encode())):
                errs.append(r.stdout[:100])
    ts = [threading.Thread(target=run, args=(f, 20)) for f in
          ("--http2-prior-knowledge", "--http1.1", "--http2-prior-knowledge", "--http1.1")]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs[:3]
    up.close()


def test_slow_stream_does_not_stall_others(proxy_factory):
    """One stream whose upstream takes 2 s and another that answers at once,
    on one connection: the fast one is not held behind the slow one."""
    up = HttpUpstream(lambda req: Response(body=b"ok", delay=2.0 if req.target == "/slow" else 0))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    raw = Raw(p.port)
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, req_block(raw.enc, "/slow")))
    t0 = time.monotonic()
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, req_block(raw.enc, "/fast")))
    f = raw.frames(lambda t, fl, sid, pl: t == DATA and (fl & END_STREAM))
    assert f is not None and f[2] == 3, f
    assert time.monotonic() - t0 < 1.5
    f = raw.frames(lambda t, fl, sid, pl: t == DATA and (fl & END_STREAM), timeout=10)
    assert f is not None and f[2] == 1
    raw.close()
    up.close()


def test_client_that_never_reads_is_bounded(proxy_factory):
    """A client opens streams for 4 MiB responses and never reads (nor
    opens its window): the proxy's memory stays bounded and another client
    is served meanwhile."""
    need("curl")
    up = HttpUpstream(lambda req: Response(body=b"z" * (4 << 20)))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    rss0 = p.rss_kib()
    raws = []
    for _ in range(4):
        raw = Raw(p.port)
        raw.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for sid in range(1, 40, 2):
            raw.send(frame(HEADERS, END_HEADERS | END_STREAM, sid, req_block(raw.enc, f"/{sid}")))
        raws.append(raw)
    time.sleep(1.5)
    r = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
             f"http://127.0.0.1:{p.port}/other", timeout=30)
    assert r.stdout == b"200 4194304", r.stdout
    grown = p.rss_kib() - rss0
    # 80 streams of 4 MiB would be 320 MiB if the proxy buffered them.
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB for clients that do not read"
    for raw in raws:
        raw.close()
    up.close()


# ---- defences: Python's h2 / raw frames as the hostile client -------------------------

def test_rapid_reset_is_cut(proxy_factory):
    """CVE-2023-44487: a client opening and cancelling streams as fast as it
    can is bounded (the reset rate limit) and then cut with GOAWAY."""
    up = HttpUpstream(lambda req: Response(body=b"r", delay=0.5))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    raw = Raw(p.port)
    out = b""
    sid = 1
    for _ in range(3000):
        out += frame(HEADERS, END_HEADERS | END_STREAM, sid, req_block(raw.enc, "/")) + \
            frame(RST, 0, sid, struct.pack(">I", 8))
        sid += 2
    try:
        raw.send(out)
    except (BrokenPipeError, ConnectionResetError):
        pass
    code = raw.goaway()
    assert code is not None, "no GOAWAY for a rapid reset flood"
    assert raw.closed()
    assert p.total("h2_streams") < 3000
    raw.close()
    # The proxy still serves.
    ok = Raw(p.port)
    ok.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, req_block(ok.enc, "/")))
    assert ok.frames(lambda t, fl, sid, pl: t == DATA and sid == 1) is not None
    ok.close()
    up.close()


def test_continuation_flood_is_cut(proxy_factory):
    """CVE-2024-28182: endless CONTINUATION frames after a HEADERS without
    END_HEADERS: the connection is cut, without buffering them all."""
    up = HttpUpstream()
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    raw = Raw(p.port)
    blk = req_block(raw.enc, "/")
    raw.send(frame(HEADERS, 0, 1, blk))
    e = hpack.Encoder()
    try:
        for i in range(2000):
            raw.send(frame(CONTINUATION, 0, 1, e.encode([(f"x-h{i}", "v" * 100)])))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert raw.closed()
    raw.close()


def test_settings_and_ping_floods_are_cut(proxy_factory):
    """SETTINGS and PING frames whose ACKs the client never reads pile up in
    the proxy's queue: past the limit the connection is cut."""
    up = HttpUpstream()
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    for kind in (PING, SETTINGS):
        raw = Raw(p.port)
        raw.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        one = frame(PING, 0, 0, b"12345678") if kind == PING else frame(SETTINGS, 0, 0, b"")
        closed = False
        try:
            for _ in range(100):
                raw.send(one * 1000)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        assert closed or raw.closed(timeout=10), f"a {kind} flood was not cut"
        raw.close()


def test_empty_data_flood_is_cut(proxy_factory):
    """Empty DATA frames (no END_STREAM) do nothing but cost work: past
    H2_GLITCHES the connection gets GOAWAY ENHANCE_YOUR_CALM."""
    up = HttpUpstream(lambda req: Response(body=b"e", delay=3))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    raw = Raw(p.port)
    raw.send(frame(HEADERS, END_HEADERS, 1, req_block(raw.enc, "/", "POST")))
    try:
        raw.send(frame(DATA, 0, 1) * 5000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert raw.goaway() == 11          # ENHANCE_YOUR_CALM
    assert p.total("h2_floods") == 1
    raw.close()


def test_stream_id_misuse_is_a_protocol_error(proxy_factory):
    """An even (server-side) stream id: GOAWAY PROTOCOL_ERROR. A new stream
    id below the last one is ignored, as nghttp2 does (it cannot tell it
    from a late frame of a stream it forgot): not answered, not forwarded,
    and the connection goes on."""
    up = HttpUpstream()
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    raw = Raw(p.port)
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 2, req_block(raw.enc, "/")))
    assert raw.goaway() == 1
    raw.close()
    raw = Raw(p.port)
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 5, req_block(raw.enc, "/")))
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, req_block(raw.enc, "/three")))
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 7, req_block(raw.enc, "/")))
    f = raw.frames(lambda t, fl, s, pl: t == DATA and s == 7 and fl & END_STREAM)
    assert f is not None
    assert "/three" not in [r.target for r in up.requests]
    raw.close()


def test_more_streams_than_advertised_are_refused(proxy_factory):
    """More concurrent streams than SETTINGS_MAX_CONCURRENT_STREAMS (128):
    the extra ones are reset (REFUSED_STREAM or PROTOCOL_ERROR), the
    others answered."""
    up = HttpUpstream(lambda req: Response(body=b"m", delay=1.0))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    raw = Raw(p.port)
    # Wait for the proxy's SETTINGS (the limit applies once it is known).
    s = raw.frames(lambda t, fl, sid, pl: t == SETTINGS and not fl & ACK)
    assert s is not None
    vals = {int.from_bytes(s[3][i:i + 2], "big"): int.from_bytes(s[3][i + 2:i + 6], "big")
            for i in range(0, len(s[3]), 6)}
    assert vals[3] == 128
    raw.send(frame(SETTINGS, ACK, 0))
    out = b"".join(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, req_block(raw.enc, "/"))
                   for i in range(140))
    raw.send(out)
    f = raw.frames(lambda t, fl, sid, pl: t in (RST, GOAWAY))
    assert f is not None, "the 129th stream was accepted"
    raw.close()


@pytest.mark.parametrize("codec", ["ours", "nghttp2"])
def test_max_concurrent_streams_is_the_listeners(proxy_factory, codec):
    """http2_max_concurrent_streams (nginx's name) is what SETTINGS
    advertises, with either codec for clients. Past it, our codec resets the
    stream (REFUSED_STREAM or PROTOCOL_ERROR, RFC 9113 5.1.2) and answers
    the ones within it; nghttp2 (disable_features = ["h2_codec"]) takes it
    as a connection error: GOAWAY, PROTOCOL_ERROR, the last stream the 4th."""
    up = HttpUpstream(lambda req: Response(body=b"m", delay=0.5))
    port = free_port()
    proxy = {"workers": 1}
    if codec == "nghttp2":
        proxy["disable_features"] = ["h2_codec"]
    p = proxy_factory([{"name": "h2", "bind": f"127.0.0.1:{port}", "mode": "http",
                        "cluster": "c", "http2": True, "http2_max_concurrent_streams": 4}],
                      [{"name": "c", "servers": [f"127.0.0.1:{up.port}"]}], proxy=proxy)
    raw = Raw(port)
    try:
        s = raw.frames(lambda t, fl, sid, pl: t == SETTINGS and not fl & ACK)
        assert s is not None
        vals = {int.from_bytes(s[3][i:i + 2], "big"): int.from_bytes(s[3][i + 2:i + 6], "big")
                for i in range(0, len(s[3]), 6)}
        assert vals[3] == 4, vals
        raw.send(frame(SETTINGS, ACK, 0))
        raw.send(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i,
                                req_block(raw.enc, f"/{i}")) for i in range(6)))
        if codec == "nghttp2":
            g = raw.frames(lambda t, *_: t == GOAWAY, 10)
            assert g is not None
            assert int.from_bytes(g[3][:4], "big") & 0x7fffffff == 7, g
            assert int.from_bytes(g[3][4:8], "big") == 1, g          # PROTOCOL_ERROR
            return
        answered, reset = set(), {}

        def seen(t, fl, sid, pl):
            if t == HEADERS:
                answered.add(sid)
            elif t == RST:
                reset[sid] = int.from_bytes(pl[:4], "big")
            return len(answered) + len(reset) >= 6
        assert raw.frames(seen, 10) is not None, (answered, reset)
        assert answered == {1, 3, 5, 7} and set(reset) == {9, 11}, (answered, reset)
        assert set(reset.values()) <= {1, 7}, reset     # PROTOCOL_ERROR, REFUSED_STREAM
    finally:
        raw.close()
        up.close()


def test_header_list_too_large_is_refused(proxy_factory):
    """An HPACK block that decodes past max_header_size (an HPACK bomb: one
    big indexed field repeated) is refused, not forwarded."""
    up = HttpUpstream()
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"], listener={"max_header_size": 4096})
    raw = Raw(p.port)
    enc = raw.enc
    blk = req_block(enc, "/", extra=[("x-bomb", "b" * 3000)])
    blk += enc.encode([("x-bomb", "b" * 3000)] * 60)     # indexed: 60 tiny references
    raw.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, blk))
    f = raw.frames(lambda t, fl, sid, pl: t in (RST, GOAWAY) or (t == HEADERS and sid == 1))
    assert f is not None
    if f[0] == HEADERS:
        assert dict(raw.dec.decode(f[3]))[":status"] == "431"
    assert not up.requests
    raw.close()


# ---- drain ---------------------------------------------------------------------

def test_sigterm_drains_with_goaway(tmp_path):
    """SIGTERM with streams under way: GOAWAY names the last stream taken,
    the streams under way finish, then the proxy exits."""
    up = HttpUpstream(lambda req: Response(body=b"done", delay=1.0))
    port = free_port()
    cfg = render_config({"workers": 1},
                        [{"name": "h2", "bind": f"127.0.0.1:{port}", "mode": "http",
                          "cluster": "c", "http2": True}],
                        [{"name": "c", "servers": [f"127.0.0.1:{up.port}"]}])
    p = Proxy(tmp_path, cfg)
    raw = Raw(port)
    for sid in (1, 3, 5):
        raw.send(frame(HEADERS, END_HEADERS | END_STREAM, sid, req_block(raw.enc, f"/{sid}")))
    wait_for(lambda: len(up.requests) == 3 or None, what="requests at the upstream")
    os.kill(p.pid, signal.SIGTERM)
    g = raw.frames(lambda t, *_: t == GOAWAY)
    assert g is not None and int.from_bytes(g[3][:4], "big") == 5
    done = set()
    while len(done) < 3:
        f = raw.frames(lambda t, fl, sid, pl: t == DATA and fl & END_STREAM)
        assert f is not None, f"streams finished: {done}"
        assert f[3] == b"done"
        done.add(f[2])
    assert p.p.wait(20) == 0
    raw.close()
    up.close()


def test_reload_under_load_loses_nothing(proxy_factory):
    """SIGHUP while h2load runs 10 streams on each of 4 connections: the
    connections stay, every request is answered."""
    need("h2load")
    up = HttpUpstream(lambda req: Response(body=b"r" * 64))
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    h = subprocess.Popen(["h2load", "-n", "30000", "-c", "4", "-m", "10",
                          f"http://127.0.0.1:{p.port}/"], stdout=subprocess.PIPE, text=True)
    wait_for(lambda: p.total("h2_streams") > 500 or None, what="streams under way")
    gen = p.stats()["workers"][0].get("config_generation")
    p.reload()
    wait_for(lambda: p.stats()["workers"][0].get("config_generation") != gen or None,
             what="the reload to reach the worker")
    assert h.poll() is None, "h2load ended before the reload: the test proves nothing"
    out = h.communicate(timeout=60)[0]
    assert "30000 succeeded, 0 failed" in out, out
    up.close()


# ---- law 2 ---------------------------------------------------------------------

def _alloc_run(tmp_path, so, n, h2up=False):
    if h2up:
        up = H2Upstream()
        cl = {"name": "c", "servers": [up.address], "protocol": "h2"}
    else:
        up = HttpUpstream(lambda req: Response(body=b"a" * 64))
        cl = {"name": "c", "servers": [f"127.0.0.1:{up.port}"]}
    port = free_port()
    log = str(tmp_path / f"alloc-h2-{n}-{int(h2up)}.log")
    cfg = render_config({"workers": 1},
                        [{"name": "h2", "bind": f"127.0.0.1:{port}", "mode": "http",
                          "cluster": "c", "http2": True}], [cl])
    p = Proxy(tmp_path, cfg, env={"LD_PRELOAD": so, "UPROXY_ALLOC_LOG": log})
    try:
        def batch(k):
            r = subprocess.run(["h2load", "-n", str(k), "-c", "4", "-m", "10",
                                f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                               timeout=60)
            assert f"{k} succeeded" in r.stdout, r.stdout
        batch(400)                     # warm-up: the arena's free lists fill
        batch(n)
        tid = p.stats()["workers"][0]["tid"]
    finally:
        assert p.stop() == 0
        up.close()
    counts = dict(map(int, l.split()) for l in open(log))
    assert tid in counts
    return counts[tid]


def test_no_allocation_per_h2_request(tmp_path, request):
    """Law 2 for HTTP/2: a worker's malloc count does not grow with the
    number of streams and connections (N vs 10N): nghttp2 allocates from
    the worker's arena."""
    need("h2load")
    # (Not "is the plugin's module imported": test_sanitized.py imports it in
    # every run, which skipped this test in the normal suite too.)
    if request.config.pluginmanager.hasplugin("tests.sanitize.plugin"):
        pytest.skip("law 2 counts the normal build's mallocs; under ASan the allocator is ASan's")
    so = str(tmp_path / "alloccount.so")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", so,
                    os.path.join(ROOT, "tests", "native", "alloccount.c")], check=True)
    a = _alloc_run(tmp_path, so, 400)
    b = _alloc_run(tmp_path, so, 4000)
    assert a > 0
    assert b - a <= 5, f"worker allocations grew with HTTP/2 requests: {a} after 400, {b} after 4000"


# ---- HTTP/2 to upstreams: a cluster with protocol = "h2" ---------------------


def h2up_proxy(proxy_factory, up, tls=None, cluster=None, listener_tls=None):
    cl = {"protocol": "h2"}
    if tls:
        cl["tls"] = tls
    cl.update(cluster or {})
    return h2_proxy(proxy_factory, [up.address], tls=listener_tls, cluster=cl)


def test_h2_upstream_from_http1_and_http2_clients(proxy_factory):
    """HTTP/1.1 and HTTP/2 clients both reach an h2c server; requests share
    its connections (streams), and the server sees the request as sent."""
    up = H2Upstream()
    p = h2up_proxy(proxy_factory, up)
    try:
        r = curl(f"http://127.0.0.1:{p.port}/a?x=1", "-i")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(b"HTTP/1.1 200 OK\r\n"), r.stdout
        assert b"h2:/a?x=1" in r.stdout and b"x-method: get" in r.stdout.lower()
        r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/b")
        assert r.stdout == b"h2:/b", r.stderr
        r = curl("-d", "hello=1", f"http://127.0.0.1:{p.port}/post")
        assert r.stdout == b"h2:/post"
        head = up.heads[0]
        assert head[":authority"] == f"127.0.0.1:{p.port}" and head[":scheme"] == "http"
        assert "x-forwarded-for" in head and "connection" not in head
        assert up.heads[2][":method"] == "POST"
        assert up.connections == 1          # three requests, one pooled connection
        assert p.total("h2_up_streams") == 3 and p.total("h2_up_connections") == 1
    finally:
        up.close()


def test_h2_upstream_h2load_stream_limit(proxy_factory):
    """More concurrent requests than the server's (and the cluster's) stream
    limit: more connections or queueing, none fails, and no connection
    carries more streams at once than the limit."""
    need("h2load")
    up = H2Upstream(max_streams=8)
    p = h2up_proxy(proxy_factory, up, cluster={"max_streams_per_connection": 16})
    try:
        r = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "20",
                            f"http://127.0.0.1:{p.port}/x"], capture_output=True, text=True,
                           timeout=60)
        counters = {k: v for k, v in p.stats()["total"].items()
                    if v and ("err" in k or "h2_up" in k or "retr" in k or "resp" in k)}
        assert "2000 succeeded" in r.stdout, (r.stdout, counters, up.errors[:3])
        assert up.max_concurrent <= 8
        assert up.connections >= 2
    finally:
        up.close()


def test_h2_upstream_max_requests(proxy_factory):
    """max_requests on an h2 cluster: a connection carries at most that many
    streams, then takes no more and ends with GOAWAY once its last stream is
    done; one after another and under h2load, every request is answered."""
    up = H2Upstream()
    p = h2up_proxy(proxy_factory, up, cluster={"max_requests": 5})
    try:
        for i in range(12):
            r = curl(f"http://127.0.0.1:{p.port}/s{i}")
            assert r.stdout == f"h2:/s{i}".encode(), (i, r.stdout, r.stderr)
        assert up.per_conn == [5, 5, 2], up.per_conn
        wait_for(lambda: up.client_goaways == 2, timeout=5)
        assert up.client_goaways == 2 and not up.errors, up.errors
    finally:
        up.close()
    need("h2load")
    up = H2Upstream()
    p = h2up_proxy(proxy_factory, up, cluster={"max_requests": 20})
    try:
        r = subprocess.run(["h2load", "-n", "600", "-c", "4", "-m", "10",
                            f"http://127.0.0.1:{p.port}/x"], capture_output=True, text=True,
                           timeout=60)
        assert "600 succeeded" in r.stdout, (r.stdout, up.errors[:3])
        assert max(up.per_conn) <= 20 and up.connections >= 30, up.per_conn
        assert sum(up.per_conn) >= 600
    finally:
        up.close()


def h2_get(port, paths, extra=()):
    """Requests on one HTTP/2 connection at once (Python's h2): per path,
    (headers, body, trailers, reset code or None)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    out = {}
    for i, path in enumerate(paths):
        sid = 1 + 2 * i
        conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"), (":path", path),
                                (":authority", "localhost"), *extra], end_stream=True)
        out[sid] = [{}, b"", {}, None]
    s.sendall(conn.data_to_send())
    left = set(out)
    while left:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, h2.events.ResponseReceived):
                out[sid][0] = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.TrailersReceived):
                out[sid][2] = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.DataReceived):
                out[sid][1] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamReset):
                out[sid][3] = ev.error_code
                left.discard(sid)
            elif isinstance(ev, h2.events.StreamEnded):
                left.discard(sid)
        s.sendall(conn.data_to_send())
    s.close()
    return [tuple(out[1 + 2 * i]) for i in range(len(paths))]


def raw_http1(port, head):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head)
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    return data


def test_h2_upstream_trailers(proxy_factory):
    """The server's trailers reach an HTTP/2 client as trailers, and an
    HTTP/1.1 client as the chunked trailer section when it sent TE:
    trailers (dropped otherwise)."""
    up = H2Upstream()
    p = h2up_proxy(proxy_factory, up)
    try:
        (headers, body, trailers, rst), = h2_get(p.port, ["/trailers"])
        assert headers[":status"] == "200" and body == b"with trailers" and rst is None
        assert trailers == {"x-trailer": "done"}
        with_te = raw_http1(p.port, b"GET /trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n"
                                    b"Connection: close\r\n\r\n")
        assert b"transfer-encoding: chunked" in with_te.lower()
        assert with_te.endswith(b"\r\n0\r\nx-trailer: done\r\n\r\n"), with_te
        assert up.heads[-1].get("te") == "trailers"
        without = raw_http1(p.port, b"GET /trailers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert without.endswith(b"with trailers\r\n0\r\n\r\n"), without
        assert "te" not in up.heads[-1]
    finally:
        up.close()


def test_h2_upstream_reset_stream_spares_others(proxy_factory):
    """The server resets one stream: that request fails (502), the others on
    the same connections (client and upstream) are answered."""
    up = H2Upstream()
    p = h2up_proxy(proxy_factory, up)
    try:
        res = h2_get(p.port, ["/slow?ms=300", "/reset", "/a", "/slow?ms=100"])
        assert res[0][0][":status"] == "200" and res[0][1] == b"h2:/slow?ms=300"
        assert res[1][0].get(":status") == "502" or res[1][3] is not None
        assert res[2][1] == b"h2:/a" and res[3][1] == b"h2:/slow?ms=100"
        assert up.connections == 1
        r = curl(f"http://127.0.0.1:{p.port}/after")
        assert r.stdout == b"h2:/after"
    finally:
        up.close()


def test_h2_upstream_goaway_resends_unprocessed(proxy_factory):
    """GOAWAY from the server: the stream it did not process is sent again
    on a new connection, and the client sees one answer; the connection
    left the pool."""
    up = H2Upstream()
    p = h2up_proxy(proxy_factory, up)
    try:
        r = curl(f"http://127.0.0.1:{p.port}/goaway", "-i")
        assert r.stdout.startswith(b"HTTP/1.1 200") and r.stdout.endswith(b"h2:/goaway"), r.stdout
        assert up.connections == 2 and up.goaways == 1
        assert p.total("h2_up_goaways") == 1 and p.total("h2_up_refused") == 1
        r = curl(f"http://127.0.0.1:{p.port}/next")
        assert r.stdout == b"h2:/next" and up.connections == 2
    finally:
        up.close()


def test_h2_upstream_tls_alpn(proxy_factory, cert):
    """Over TLS the proxy offers ALPN h2; a server that does not select it
    is refused clearly (502, counted), not spoken to in HTTP/2 blindly."""
    good = H2Upstream(tls=cert)
    bad = H2Upstream(tls=cert, alpn=("http/1.1",))
    try:
        tls = {"ca": cert["cert"], "sni": "localhost"}
        p = h2up_proxy(proxy_factory, good, tls=tls)
        r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/tls")
        assert r.stdout == b"h2:/tls", r.stderr
        assert good.heads[0][":scheme"] == "https"
        q = h2up_proxy(proxy_factory, bad, tls=tls, cluster={"max_attempts": 1})
        r = curl("-i", f"http://127.0.0.1:{q.port}/tls")
        assert r.stdout.startswith(b"HTTP/1.1 502"), r.stdout
        assert q.total("h2_up_no_alpn") >= 1
    finally:
        good.close()
        bad.close()


def test_no_allocation_per_request_over_h2_upstream(tmp_path, request):
    """Law 2 with an HTTP/2 upstream too: streams on pooled upstream
    connections take nothing from malloc after warm-up."""
    need("h2load")
    if request.config.pluginmanager.hasplugin("tests.sanitize.plugin"):
        pytest.skip("law 2 counts the normal build's mallocs; under ASan the allocator is ASan's")
    so = str(tmp_path / "alloccount.so")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", so,
                    os.path.join(ROOT, "tests", "native", "alloccount.c")], check=True)
    a = _alloc_run(tmp_path, so, 400, h2up=True)
    b = _alloc_run(tmp_path, so, 4000, h2up=True)
    assert a > 0
    assert b - a <= 5, f"worker allocations grew with requests over h2: {a} after 400, {b} after 4000"


def test_h2_upstream_health_checks_speak_h2(proxy_factory):
    """Active health checks of an h2 cluster speak HTTP/2 to it (an HTTP/1.1
    GET would fail against an h2c server and eject it)."""
    up = H2Upstream()
    p = h2up_proxy(proxy_factory, up, cluster={"health": {"path": "/hz", "interval": "100ms",
                                                          "fall": 1}})
    try:
        wait_for(lambda: sum(h.get(":path") == "/hz" for h in up.heads) >= 3, timeout=10,
                 what="three HTTP/2 health checks")
        assert any(h.get("user-agent") == "uproxy-health" for h in up.heads)
        r = curl(f"http://127.0.0.1:{p.port}/served")
        assert r.stdout == b"h2:/served"
    finally:
        up.close()


def test_h2_upstream_big_bodies_both_ways_with_flow_control(proxy_factory):
    """Bodies far past every window: a 3 MiB download (to an HTTP/1.1 and an
    HTTP/2 client) and a 3 MiB upload echoed back while it is still being
    sent (full duplex), all bytes intact: windows reopen as bytes move on."""
    up = H2Upstream()
    p = h2up_proxy(proxy_factory, up)
    try:
        n = 3 << 20
        r = curl(f"http://127.0.0.1:{p.port}/big?n={n}", "-o", "-")
        assert len(r.stdout) == n and r.stdout == b"x" * n, (len(r.stdout), r.stderr)
        r = curl("--http2-prior-knowledge", f"http://127.0.0.1:{p.port}/big?n={n}", "-o", "-")
        assert len(r.stdout) == n, r.stderr
        body = bytes(range(256)) * (n // 256)
        for proto in ([], ["--http2-prior-knowledge"]):
            r = subprocess.run(["curl", "-sS", "--max-time", "30", *proto, "--data-binary", "@-",
                                "-H", "Content-Type: application/octet-stream",
                                f"http://127.0.0.1:{p.port}/echo"], input=body,
                               capture_output=True, timeout=40)
            assert r.stdout == body, (proto, len(r.stdout), r.stderr)
    finally:
        up.close()


def test_h2_upstream_connection_lost_midway(proxy_factory):
    """The server's connection closes under its streams (no GOAWAY): as for
    an HTTP/1.1 connection that closes, an idempotent request unanswered on
    a reused connection is sent once more (the slow GET is answered), one
    that fails again gets 502; the connection leaves the pool and the next
    requests get a new one."""
    up = H2Upstream()
    p = h2up_proxy(proxy_factory, up, cluster={"max_attempts": 1})
    try:
        assert curl(f"http://127.0.0.1:{p.port}/warm").stdout == b"h2:/warm"
        slow, die = h2_get(p.port, ["/slow?ms=1000", "/die"])
        assert slow[0][":status"] == "200" and slow[1] == b"h2:/slow?ms=1000", slow
        assert die[0][":status"] == "502", die
        r = curl(f"http://127.0.0.1:{p.port}/after")
        assert r.stdout == b"h2:/after", r.stderr
        assert up.connections >= 2 and p.total("retries") >= 1
    finally:
        up.close()


def test_h2_streams_wait_for_buffers_not_refused(proxy_factory):
    """More concurrent streams than one worker has buffers for (a pool of
    64 here; 2,048 by default ran out at ~1,600 streams): the proxy stops
    reading the clients' new HEADERS until buffers come back, so h2load
    with many connections x streams completes every request, none refused
    or errored, and the proxy's memory stays bounded."""
    need("h2load")
    up = HttpUpstream(lambda req: Response(body=b"x" * 64))
    port = free_port()
    p = proxy_factory([{"name": "h2", "bind": f"127.0.0.1:{port}", "mode": "http",
                        "cluster": "c", "http2": True}],
                      [{"name": "c", "servers": [f"127.0.0.1:{up.port}"]}],
                      proxy={"workers": 1, "buffers": 64, "head_buffers": 16})
    try:
        rss0 = p.rss_kib()
        r = subprocess.run(["h2load", "-n", "3000", "-c", "6", "-m", "40",
                            f"http://127.0.0.1:{port}/w"], capture_output=True, text=True,
                           timeout=90)
        assert "3000 succeeded, 0 failed, 0 errored" in r.stdout, (
            r.stdout[-600:], p.total("h2_refused"), p.total("h2_held"))
        assert p.total("h2_refused") == 0
        assert p.total("h2_held") > 0         # it did have to wait
        assert p.rss_kib() - rss0 < 32 * 1024
    finally:
        up.close()


def test_streams_in_flight_hold_small_buffers_and_retry_from_them(proxy_factory):
    """100 streams in flight on one connection (their upstream answers
    after a while): each request head waits in a 1 KiB small buffer, not
    in a 16 KiB buffer of the pool (which receives need: 1,600 streams held
    most of it), and a head too long for one keeps its pool buffer. Then
    every pooled upstream connection closes instead of answering the next
    request: each stream's GET is sent again, from its small buffer, on a
    new connection, and all answer 200. Nothing is held afterwards."""
    state = threading.local()
    release = threading.Event()

    def handler(req):
        state.n = getattr(state, "n", 0) + 1
        if state.n == 2:
            return None                       # a stale pooled connection
        release.wait(20)
        return Response(body=req.target.encode())
    up = HttpUpstream(handler)
    p = h2_proxy(proxy_factory, [f"127.0.0.1:{up.port}"])
    raw = Raw(p.port)
    heads = {}

    def ended(t, fl, sid, pl):
        if t == HEADERS:                      # (every block, in order: HPACK's table)
            heads[sid] = raw.dec.decode(pl)
        return t == DATA and (fl & END_STREAM)
    try:
        pool0 = p.total("buffers_in_use")
        long_field = [("x-long", "v" * 3000)]
        sids = [1 + 2 * i for i in range(100)]
        raw.send(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, sid,
                                req_block(raw.enc, f"/a{sid}", extra=long_field if sid in (1, 3) else ()))
                          for sid in sids))
        wait_for(lambda: len(up.requests) == 100, what="100 requests at the upstream")
        assert p.total("small_buffers_in_use") == 98
        # The two long heads keep their pool buffers; the other 98 hold none.
        assert p.total("buffers_in_use") - pool0 <= 2 + 4, p.stats()["total"]
        release.set()
        done = set()
        while len(done) < 100:
            f = raw.frames(ended, timeout=20)
            assert f is not None, sorted(set(sids) - done)
            done.add(f[2])
        assert all(heads[sid][0] == (":status", "200") for sid in sids)
        wait_for(lambda: p.total("small_buffers_in_use") == 0, what="small buffers back")
        # Every upstream connection now sits in the pool and fails its next
        # request: the heads are sent again from the small buffers.
        sids = [201 + 2 * i for i in range(100)]
        raw.send(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, sid, req_block(raw.enc, f"/b{sid}"))
                          for sid in sids))
        got = {}
        while len(got) < 100:
            f = raw.frames(ended, timeout=20)
            assert f is not None, sorted(set(sids) - set(got))
            got[f[2]] = f[3]
        assert got == {sid: f"/b{sid}".encode() for sid in sids}
        assert all(heads[sid][0] == (":status", "200") for sid in sids)
        assert p.total("retries") == 100
        wait_for(lambda: p.total("small_buffers_in_use") == 0, what="small buffers back")
        wait_for(lambda: p.total("buffers_in_use") <= pool0 + 4, what="pool buffers back")
    finally:
        release.set()
        raw.close()
        up.close()
