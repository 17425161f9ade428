"""Response compression per route (issue 16): zstd and gzip chosen by the
request's Accept-Encoding (q-values), the response's type and size, and
never for what must not be transformed; through a real uproxy with a real
upstream (tests/lib/http_upstream.py), decoded with Python's zlib and
zstandard and compared byte for byte, and with curl --compressed."""
import http.client
import shutil
import socket
import subprocess
import threading
import time
import zlib

import pytest

from http_upstream import HttpUpstream, Response
from support import free_port
from test_http import http_proxy
from uproxy.config import ConfigError, parse

zstandard = pytest.importorskip("zstandard", reason="the zstandard package (test extras) "
                                "decodes zstd responses")

HTML = b"".join(b'<tr class="r%d"><td><a href="/item/%d">Item %d</a></td><td>%s</td></tr>\n' % (
    i % 7, i * 37, i, b"in stock" if i % 3 else b"back-ordered; expected next week")
    for i in range(6000))          # ~420 KB of text: many rounds, past body_splice_min


def html(req, body=HTML, ctype="text/html; charset=utf-8", **kw):
    return Response(body=body, headers=[("Content-Type", ctype), ("ETag", '"v1"')] +
                    kw.pop("headers", []), **kw)


def fetch(port, path="/", ae="gzip", method="GET", extra=(), conn=None):
    """(status, headers (lower-case), raw body as sent: still encoded)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = {"Host": "example.com"}
    if ae is not None:
        h["Accept-Encoding"] = ae
    h.update(dict(extra))
    c.request(method, path, headers=h)
    r = c.getresponse()
    body = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    if conn is None:
        c.close()
    return r.status, hdrs, body


def decode(enc, body):
    if enc == "gzip":
        return zlib.decompress(body, 31)
    if enc == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return body


def start(proxy_factory, listener, handler, proxy=None):
    up = HttpUpstream(handler)
    p = http_proxy(proxy_factory, [up.addr], listener=listener, proxy=proxy)
    return up, p


def test_gzip_and_zstd_bodies_by_length_and_chunked(proxy_factory):
    """Both algorithms, a body framed by Content-Length (large: many rounds,
    and no splice) and a chunked one, on one keep-alive connection: the
    client gets chunks whose content decodes to the upstream's exact bytes,
    with Content-Encoding, Vary and a weak ETag, and no Content-Length."""
    def handler(req):
        return html(req, chunked=req.target.startswith("/chunked"), chunk_size=7000)
    up, p = start(proxy_factory, {"compress": True}, handler)
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    for path in ("/len", "/chunked"):
        for enc in ("gzip", "zstd"):
            status, h, body = fetch(p.port, path, ae=enc, conn=conn)
            assert status == 200
            assert h["content-encoding"] == enc
            assert h["transfer-encoding"] == "chunked" and "content-length" not in h
            assert h["vary"] == "Accept-Encoding"
            assert h["etag"] == 'W/"v1"'
            assert len(body) < len(HTML) // 4
            assert decode(enc, body) == HTML
    conn.close()
    st = p.stats()["total"]
    assert st["compressed"] == 4
    assert st["compress_bytes_in"] == 4 * len(HTML)
    assert 0 < st["compress_bytes_out"] < len(HTML)
    up.close()


def test_accept_encoding_q_values_and_preference(proxy_factory):
    """The highest q wins; a tie goes to the route's order; q=0 refuses;
    "*" stands for what is not named; nothing acceptable: identity, with
    Vary still (a cache must know the answer depends on the header)."""
    up, p = start(proxy_factory, {"routes": [
        {"path_prefix": "/g", "cluster": "c", "compress": {"algorithms": ["gzip", "zstd"],
                                                           "gzip_level": 9, "zstd_level": 9}},
        {"path_prefix": "/1", "cluster": "c", "compress": {"gzip_level": 1, "zstd_level": 1}},
        {"path_prefix": "/", "cluster": "c", "compress": {"algorithms": ["zstd", "gzip"]}}]},
        html)
    cases = [("/", "gzip;q=0.5, zstd;q=0.9", "zstd"), ("/", "gzip, zstd;q=0.5", "gzip"),
             ("/", "gzip, zstd", "zstd"), ("/g", "gzip, zstd", "gzip"),
             ("/", "zstd;q=0, gzip", "gzip"), ("/", "zstd;q=0, *;q=0.1", "gzip"),
             ("/", "*", "zstd"), ("/", "br", None), ("/", "identity", None),
             ("/", "gzip;q=0, zstd;q=0.000", None), ("/", None, None),
             ("/", "x-gzip", "gzip"), ("/", "GZIP ; Q=1.0", "gzip"),
             # the levels' ends (the streams' memory is sized for level 9)
             ("/g", "zstd", "zstd"), ("/g", "gzip", "gzip"), ("/1", "zstd", "zstd"),
             ("/1", "gzip", "gzip"), ("/g", "gzip", "gzip"), ("/", "zstd", "zstd")]
    for path, ae, want in cases:
        status, h, body = fetch(p.port, path, ae=ae)
        assert status == 200
        assert h.get("content-encoding") == want, (ae, h)
        assert h["vary"] == "Accept-Encoding"
        assert decode(want, body) == HTML
        if want is None:
            assert h["content-length"] == str(len(HTML)) and h["etag"] == '"v1"'
    up.close()


def test_never_compressed(proxy_factory):
    """Already encoded, a Range request (and its 206), HEAD, 204 and 304,
    Cache-Control: no-transform, an image, a body under min_size, a type
    not listed, an HTTP/1.0 client: all go as the upstream sent them."""
    def handler(req):
        t = req.target
        if t == "/encoded":
            return html(req, body=zlib.compress(HTML), headers=[("Content-Encoding", "deflate")])
        if t == "/range":
            return html(req) if req.header("Range") is None else \
                html(req, status=206, body=HTML[:100], headers=[("Content-Range", "bytes 0-99/*")])
        if t == "/204":
            return Response(status=204, headers=[("Content-Type", "text/html")])
        if t == "/304":
            return Response(status=304, headers=[("Content-Type", "text/html")])
        if t == "/no-transform":
            return html(req, headers=[("Cache-Control", "public, no-transform")])
        if t == "/png":
            return html(req, ctype="image/png")
        if t == "/small":
            return html(req, body=HTML[:1000])
        if t == "/bin":
            return html(req, ctype="application/octet-stream")
        return html(req)
    up, p = start(proxy_factory, {"compress": {"min_size": 1001}}, handler)
    status, h, body = fetch(p.port, "/encoded")
    assert h["content-encoding"] == "deflate" and body == zlib.compress(HTML)
    status, h, body = fetch(p.port, "/range", extra={"Range": "bytes=0-99"})
    assert status == 206 and "content-encoding" not in h and body == HTML[:100]
    status, h, body = fetch(p.port, "/", extra={"Range": "bytes=0-"})   # ignored upstream
    assert status == 200 and "content-encoding" not in h and body == HTML
    status, h, body = fetch(p.port, "/", method="HEAD")
    assert status == 200 and "content-encoding" not in h and h["content-length"] == str(len(HTML))
    for path, code in (("/204", 204), ("/304", 304)):
        status, h, body = fetch(p.port, path)
        assert status == code and "content-encoding" not in h and body == b""
    for path in ("/no-transform", "/png", "/small", "/bin"):
        status, h, body = fetch(p.port, path)
        assert "content-encoding" not in h, path
        assert body == (HTML[:1000] if path == "/small" else HTML)
    # HTTP/1.0 cannot take chunks: identity.
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Encoding" not in head and body == HTML
    assert p.stats()["total"]["compressed"] == 0
    up.close()


def test_curl_compressed_keep_alive(proxy_factory):
    """curl --compressed, two requests on one connection: curl decodes what
    it got and the bytes are the upstream's."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    up, p = start(proxy_factory, {"compress": True}, html)
    out = subprocess.run(["curl", "-sS", "--compressed", "-w", "%{num_connects}\\n",
                          "-H", "Accept-Encoding: gzip", f"{p.url}/a", f"{p.url}/b"],
                         capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout == HTML + b"1\n" + HTML + b"0\n"
    assert p.stats()["total"]["compressed"] == 2
    up.close()


def test_pool_exhausted_goes_uncompressed(proxy_factory):
    """compress_streams = 1: while one response holds the worker's only
    stream, another goes uncompressed (counted), never an allocation."""
    gate = threading.Event()

    def slow(c):
        half = len(HTML) // 2
        c.sendall(HTML[:half])
        gate.wait(10)
        c.sendall(HTML[half:])

    def handler(req):
        if req.target == "/slow":
            return html(req, headers=[("Content-Length", str(len(HTML)))], stream=slow)
        return html(req)
    up, p = start(proxy_factory, {"compress": True}, handler,
                  proxy={"workers": 1, "compress_streams": 1})
    res = {}
    t = threading.Thread(target=lambda: res.update(slow=fetch(p.port, "/slow")))
    t.start()
    deadline = time.monotonic() + 5
    while p.stats()["total"]["compressed"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    status, h, body = fetch(p.port, "/fast")
    assert status == 200 and "content-encoding" not in h and body == HTML
    gate.set()
    t.join(10)
    status, h, body = res["slow"]
    assert h["content-encoding"] == "gzip" and decode("gzip", body) == HTML
    st = p.stats()["total"]
    assert st["compress_pool_full"] == 1 and st["compressed"] == 1
    # The stream is back in the pool.
    status, h, body = fetch(p.port, "/again")
    assert h["content-encoding"] == "gzip" and decode("gzip", body) == HTML
    up.close()


BASE = """
[[clusters]]
name = "c"
servers = ["127.0.0.1:9"]
[[listeners]]
name = "web"
bind = "127.0.0.1:1"
mode = "http"
cluster = "c"
"""


@pytest.mark.parametrize("value,key,words", [
    ('{ algorithms = ["br"] }', "listeners[0].compress.algorithms[0]", "zstd"),
    ('{ algorithms = [] }', "listeners[0].compress.algorithms", "empty"),
    ('{ types = ["image/png"] }', "listeners[0].compress.types[0]", "compressed already"),
    ('{ types = ["html"] }', "listeners[0].compress.types[0]", "media type"),
    ('{ gzip_level = 10 }', "listeners[0].compress.gzip_level", "9"),
    ('{ zstd_level = 19 }', "listeners[0].compress.zstd_level", "9"),
    ('{ min = 5 }', "listeners[0].compress.min", "unknown"),
])
def test_check_names_the_key(value, key, words):
    with pytest.raises(ConfigError) as e:
        parse(BASE + f"compress = {value}\n")
    text = str(e.value)
    assert key in text and words in text.lower(), text


def test_http2_streams_compressed(proxy_factory):
    """An HTTP/2 stream (h2c, curl): content-encoding and vary in its
    HEADERS, no content-length, a weak etag, and DATA frames whose bytes
    decode to the upstream's body (Content-Length and chunked upstream)."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")

    def handler(req):
        return html(req, chunked=req.target == "/chunked", chunk_size=5000)
    up, p = start(proxy_factory, {"compress": True, "http2": True}, handler)
    for path in ("/len", "/chunked"):
        for enc in ("zstd", "gzip"):
            out = subprocess.run(["curl", "-sS", "-D", "-", "--http2-prior-knowledge",
                                  "-H", f"Accept-Encoding: {enc}", f"{p.url}{path}"],
                                 capture_output=True, timeout=20)
            assert out.returncode == 0, out.stderr
            head, _, body = out.stdout.partition(b"\r\n\r\n")
            lines = head.decode().lower().split("\r\n")
            assert lines[0].startswith("http/2 200")
            h = dict(l.split(": ", 1) for l in lines[1:])
            assert h["content-encoding"] == enc and h["vary"] == "accept-encoding"
            assert "content-length" not in h and h["etag"] == 'w/"v1"'
            assert decode(enc, body) == HTML
    # Not accepted: identity, with its length, and vary still.
    out = subprocess.run(["curl", "-sS", "-D", "-", "--http2-prior-knowledge", f"{p.url}/len"],
                         capture_output=True, timeout=20)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding" not in head and b"vary: accept-encoding" in head.lower()
    assert body == HTML
    assert p.stats()["total"]["compressed"] == 4
    up.close()
