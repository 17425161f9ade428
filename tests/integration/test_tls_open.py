"""Opening the client's TLS 1.3 records ourselves (transport/tls_open.c):
once the handshake is over and we seal what we send, uproxy decrypts what
the client sends itself instead of SSL_read. Real clients (Python's ssl,
openssl s_client, curl, wrk) must get the same answers either way: request
bodies of every size across record and buffer boundaries, pipelined
requests, a client writing one byte per record, records split across TCP
segments, close_notify, KeyUpdate; and a record altered on the wire closes
the connection, counted, without harm to the others. The counters say which
path ran (tls_open_records), so the tests that assert it fail on a build
without opening."""
import hashlib
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

from http_upstream import HttpUpstream, Response
from test_tls import client_ctx, pki  # noqa: F401  (the module's PKI fixture)
from support import free_port, wait_for

# kTLS is off in every mode: where the kernel has it (the project's VM) it
# would take the records before any of these paths, and these tests are
# about the user-space ones (test_ktls.py is about the kernel's).
MODES = {
    "open": {"UPROXY_DISABLE": "ktls"},                     # we seal and open, one multishot receive armed
    "open_single": {"UPROXY_DISABLE": "ktls,tls_multishot"},  # we open, one receive armed per read
    "library_reads": {"UPROXY_DISABLE": "ktls,tls_open"},   # we seal, SSL_read opens
    "library": {"UPROXY_DISABLE": "ktls,tls_seal"},         # the library does both (no opening without sealing)
}
SIZES = [0, 1, 17, 100, 4095, 16383, 16384, 16385, 40000, 70000, 1_000_000]


def _origin():
    """Answers each request with its body's length and SHA-256."""
    def handler(req):
        return Response(body=f"{req.body_len} {req.body_sha or hashlib.sha256(b'').hexdigest()}".encode())
    return HttpUpstream(handler, keep_body=False)


def _proxy(proxy_factory, pki, env):  # noqa: F811
    up = _origin()
    port = free_port()
    p = proxy_factory([{"name": "https", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                        "tls": {"certificates": [pki["a_ec"]]}}],
                      [{"name": "c", "servers": [up.addr]}], env=env)
    p.port = port
    return p, up


def _post(body, close=False):
    return (f"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode() + body


def _expect(body):
    return f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()


def _read_response(f):
    line = f.readline()
    if not line:
        return None
    assert line.startswith(b"HTTP/1.1 200"), line
    length = None
    while True:
        h = f.readline()
        if h == b"\r\n":
            break
        k, _, v = h.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    return f.read(length)


def _tls(port, pki, raw=None):  # noqa: F811
    raw = raw or socket.create_connection(("127.0.0.1", port), timeout=20)
    ctx = client_ctx(pki, minimum_version=ssl.TLSVersion.TLSv1_3)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _body(i, n):
    return bytes((i * 31 + k * 7) & 0xFF for k in range(min(n, 256))) * (n // 256 + 1)


@pytest.mark.parametrize("mode", list(MODES))
def test_bodies_of_every_size_and_pipelined_requests(proxy_factory, pki, mode):  # noqa: F811
    """Bodies from 0 bytes to 1 MB, one after another and pipelined three
    at a time in one write (records that end mid-request and requests
    that end mid-record), on one connection."""
    p, up = _proxy(proxy_factory, pki, MODES[mode])
    s = _tls(p.port, pki)
    f = s.makefile("rb")
    bodies = [_body(i, n)[:n] for i, n in enumerate(SIZES)]
    for b in bodies:
        s.sendall(_post(b))
        assert _read_response(f) == _expect(b)
    for i in range(0, len(bodies) - 2, 2):
        s.sendall(b"".join(_post(b) for b in bodies[i:i + 3]))
        for b in bodies[i:i + 3]:
            assert _read_response(f) == _expect(b)
    s.close()
    up.close()
    opened = p.total("tls_open_records")
    if mode.startswith("open"):
        assert p.total("tls_open") == 1
        assert opened > len(SIZES)
    else:
        assert opened == 0 and p.total("tls_open") == 0
    assert p.total("tls_open_errors") == 0


def _recv_sqes(p):
    return sum(w["ops"].get("recv", 0) for w in p.stats()["workers"])


def _needs_multishot(p, mode):
    """tls_multishot rides on multishot receives (Linux 6.0): a 5.15 host
    has none, and its "open" mode arms one receive at a time."""
    if mode == "open" and "tls_multishot" not in p.stats()["workers"][0]["features"]:
        pytest.skip("tls_multishot is off on this kernel: it needs multishot receives (Linux 6.0)")


@pytest.mark.parametrize("mode", ["open", "open_single"])
def test_one_multishot_receive_serves_many_requests(proxy_factory, pki, mode):  # noqa: F811
    """Where we open the records, the library holds nothing back, so the
    connection keeps one multishot receive armed as a plain one does: 300
    keep-alive requests one after another take a handful of receive SQEs
    (the handshake's), not one each (tls_multishot off: one each)."""
    p, up = _proxy(proxy_factory, pki, MODES[mode])
    _needs_multishot(p, mode)
    s = _tls(p.port, pki)
    f = s.makefile("rb")
    s.sendall(_post(b"warm"))
    assert _read_response(f) == _expect(b"warm")
    before = _recv_sqes(p)
    n = 300
    for i in range(n):
        b = str(i).encode()
        s.sendall(_post(b))
        assert _read_response(f) == _expect(b)
    armed = _recv_sqes(p) - before
    s.close()
    up.close()
    if mode == "open":
        assert armed <= 3, f"{armed} receive SQEs for {n} requests: the multishot receive did not stay armed"
    else:
        assert armed >= n
    assert p.total("tls_open_errors") == 0 and p.total("tls_open_mshot_ends") == 0


class RecordClient:
    """A TLS 1.3 client over memory BIOs (Python's ssl): its records are
    written to the socket exactly as the test splits them."""

    def __init__(self, port, pki):  # noqa: F811
        ctx = client_ctx(pki, minimum_version=ssl.TLSVersion.TLSv1_3)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
                self.inc.write(self.sock.recv(65536))
        self.sock.sendall(self.out.read())      # the client's Finished
        self.got = b""

    def record(self, data):
        """One record's bytes on the wire (not sent)."""
        self.obj.write(data)
        return self.out.read()

    def response(self):
        """One HTTP/1.1 response's body (Content-Length)."""
        while True:
            head, sep, rest = self.got.partition(b"\r\n\r\n")
            if sep:
                assert head.startswith(b"HTTP/1.1 200"), head
                n = int([h.split(b":")[1] for h in head.split(b"\r\n")
                         if h.lower().startswith(b"content-length:")][0])
                if len(rest) >= n:
                    self.got = rest[n:]
                    return rest[:n]
            try:
                self.got += self.obj.read(65536)
            except ssl.SSLWantReadError:
                d = self.sock.recv(65536)
                assert d, "the proxy closed the connection"
                self.inc.write(d)


@pytest.mark.parametrize("mode", ["open", "open_single"])
def test_more_plaintext_than_a_buffer_at_once(proxy_factory, pki, mode):  # noqa: F811
    """A receive that completes a full-size record and brings whole ones
    behind it: more plaintext than one buffer (16 KiB) is ready at once.
    The first buffer goes to the protocol; the rest must follow without
    the client sending again (the multishot receive is ended so that the
    next arm replays it: tls_open_mshot_ends)."""
    p, up = _proxy(proxy_factory, pki, MODES[mode])
    _needs_multishot(p, mode)
    rc = RecordClient(p.port, pki)
    wire = _post(_body(1, 20000)[:20000])
    first = rc.record(wire[:16384])                  # a full record: 16 KiB of content
    rest = b"".join(rc.record(wire[i:i + 100]) for i in range(16384, len(wire), 100))
    rc.sock.sendall(first[:-100])
    time.sleep(0.3)                                  # received, not yet whole
    rc.sock.sendall(first[-100:] + rest)             # whole, with whole records behind it
    assert rc.response() == _expect(_body(1, 20000)[:20000])
    rc.sock.sendall(rc.record(_post(b"next")))
    assert rc.response() == _expect(b"next")
    rc.sock.close()
    up.close()
    assert p.total("tls_open_errors") == 0
    if mode == "open":
        assert p.total("tls_open_mshot_ends") >= 1
    else:
        assert p.total("tls_open_mshot_ends") == 0


@pytest.mark.parametrize("mode", ["open", "open_single", "library_reads"])
def test_one_byte_per_record(proxy_factory, pki, mode):  # noqa: F811
    """A client that writes every byte as a record of its own (each
    SSL_write is a record): two pipelined requests, 1 + 60 bytes of body,
    arrive as some 150 records."""
    p, up = _proxy(proxy_factory, pki, MODES[mode])
    s = _tls(p.port, pki)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    wire = _post(b"a") + _post(b"b" * 60)
    for i in range(len(wire)):
        s.sendall(wire[i:i + 1])
    assert _read_response(f) == _expect(b"a")
    assert _read_response(f) == _expect(b"b" * 60)
    s.close()
    up.close()
    if mode.startswith("open"):
        assert p.total("tls_open_records") >= len(wire)
    assert p.total("tls_open_errors") == 0


class Relay:
    """A TCP relay between a client and the proxy. Client-to-proxy bytes
    go in pieces of `piece` bytes with a pause between them (records split
    across TCP segments); with `corrupt` set, one byte of the next piece
    the client sends is flipped (inside a record's ciphertext)."""

    def __init__(self, port, piece=0):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(4)
        self.addr = self.ls.getsockname()
        self.port, self.piece = port, piece
        self.corrupt = False
        self.flipped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        c, _ = self.ls.accept()
        u = socket.create_connection(("127.0.0.1", self.port))
        for x in (c, u):
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()
        self._pump(c, u, True)

    def _pump(self, src, dst, upward):
        try:
            while True:
                d = src.recv(65536)
                if not d:
                    break
                if upward and self.corrupt and len(d) > 8:
                    d = bytearray(d)
                    d[len(d) // 2] ^= 0x5A           # past the 5-byte header
                    d = bytes(d)
                    self.corrupt = False
                    self.flipped += 1
                if upward and self.piece:
                    for i in range(0, len(d), self.piece):
                        dst.sendall(d[i:i + self.piece])
                        time.sleep(0.0005)
                else:
                    dst.sendall(d)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            if not upward:
                for x in (src, dst):
                    try:
                        x.close()
                    except OSError:
                        pass

    def connect(self):
        return socket.create_connection(self.addr, timeout=20)

    def close(self):
        self.ls.close()


@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_records_split_across_segments(proxy_factory, pki, piece):  # noqa: F811
    """Records dribbled in pieces of 1 to 1000 bytes: each is whole only
    after many receives, and a piece may end one record and start the
    next."""
    p, up = _proxy(proxy_factory, pki, MODES["open"])
    r = Relay(p.port, piece)
    s = _tls(p.port, pki, r.connect())
    f = s.makefile("rb")
    sizes = [5, 3000] if piece < 7 else [5, 3000, 20000]
    bodies = [_body(i, n)[:n] for i, n in enumerate(sizes)]
    s.sendall(b"".join(_post(b) for b in bodies))
    for b in bodies:
        assert _read_response(f) == _expect(b)
    s.close()
    r.close()
    up.close()
    assert p.total("tls_open_records") >= 1    # one write: one record or two
    assert p.total("tls_open_errors") == 0


def test_a_corrupted_record_closes_the_connection(proxy_factory, pki):  # noqa: F811
    """One byte of a request's ciphertext flipped on the wire: the tag
    fails, the connection is closed and counted; the proxy serves the next
    client as before."""
    p, up = _proxy(proxy_factory, pki, MODES["open"])
    r = Relay(p.port)
    s = _tls(p.port, pki, r.connect())
    f = s.makefile("rb")
    s.sendall(_post(b"first"))
    assert _read_response(f) == _expect(b"first")
    time.sleep(0.2)                      # the handshake's last bytes are long through
    r.corrupt = True
    s.sendall(_post(b"second"))
    try:
        got = _read_response(f)
    except (ssl.SSLError, OSError):
        got = None
    assert got is None, got
    assert r.flipped == 1
    wait_for(lambda: p.total("tls_open_errors") == 1, 5, what="the bad record counted")
    s.close()
    r.close()
    s2 = _tls(p.port, pki)
    f2 = s2.makefile("rb")
    s2.sendall(_post(b"third"))
    assert _read_response(f2) == _expect(b"third")
    s2.close()
    up.close()
    assert p.total("tls_open_errors") == 1


def _s_client(port, script):
    """openssl s_client fed a script of (bytes, text, count) steps: each
    step's bytes are written once its output holds `count` times `text`
    after the step before (so that s_client reads a command on its own,
    as one line, however slow the machine: it takes `k` as a command only
    when that line is all it read); its output."""
    pr = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3",
                           "-servername", "localhost"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: pr.stdout.read1(4096), b"")),
                              daemon=True)
    reader.start()

    def seen(text):
        return b"".join(chunks).decode(errors="replace").count(text)

    for data, text, count in script:
        deadline = time.monotonic() + 20
        while seen(text) < count and pr.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)                  # s_client back in its read of stdin
        try:
            pr.stdin.write(data)
            pr.stdin.flush()
        except (OSError, ValueError):
            break                        # it has left: its output says why
    time.sleep(1.0)                      # the last step's answer, if one comes
    try:
        pr.stdin.close()
    except (OSError, ValueError):
        pass
    pr.wait(timeout=20)
    reader.join(timeout=20)
    return b"".join(chunks).decode(errors="replace")


GET = b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"


def test_key_update_not_requested_is_followed(proxy_factory, pki):  # noqa: F811
    """s_client's `k`: a KeyUpdate that does not ask for ours. Its next
    records are under the client's next key, which we derive: the requests
    after it are answered on the same connection."""
    if not shutil_which("openssl"):
        pytest.skip("no openssl command")
    p, up = _proxy(proxy_factory, pki, MODES["open"])
    ok, ku = "HTTP/1.1 200", "KEYUPDATE"
    out = _s_client(p.port, [(GET, "Verify return code", 1), (b"k\n", ok, 1), (GET, ku, 1),
                             (b"k\n", ok, 2), (GET, ku, 2), (b"", ok, 3)])
    up.close()
    assert out.count("KEYUPDATE") == 2, out[-2000:]
    assert out.count("HTTP/1.1 200") == 3, out[-2000:]
    assert p.total("tls_open_key_updates") == 2
    assert p.total("tls_open_errors") == 0 and p.total("tls_open_closes") == 0


def test_key_update_requested_ends_the_connection(proxy_factory, pki):  # noqa: F811
    """s_client's `K`: a KeyUpdate that asks for ours, which we cannot make
    (our sending keys came from the library without their secret, as for
    kTLS): the connection ends as at the client's end of stream, counted;
    what came before was answered, and the proxy goes on."""
    if not shutil_which("openssl"):
        pytest.skip("no openssl command")
    p, up = _proxy(proxy_factory, pki, MODES["open"])
    out = _s_client(p.port, [(GET, "Verify return code", 1), (b"K\n", "HTTP/1.1 200", 1),
                             (GET, "KEYUPDATE", 1)])
    assert out.count("HTTP/1.1 200") == 1, out[-2000:]
    wait_for(lambda: p.total("tls_open_closes") == 1, 5, what="the key update counted")
    assert p.total("tls_open_errors") == 0
    s = _tls(p.port, pki)
    f = s.makefile("rb")
    s.sendall(_post(b"after"))
    assert _read_response(f) == _expect(b"after")
    s.close()
    up.close()


def shutil_which(name):
    import shutil
    return shutil.which(name)


@pytest.mark.parametrize("mode", ["open", "open_single", "library_reads"])
def test_close_notify_ends_the_stream(proxy_factory, pki, mode):  # noqa: F811
    """The client's close_notify after a request: the proxy reads it as
    the end of the stream and closes (no error counted), either way."""
    p, up = _proxy(proxy_factory, pki, MODES[mode])
    s = _tls(p.port, pki)
    f = s.makefile("rb")
    s.sendall(_post(b"bye"))
    assert _read_response(f) == _expect(b"bye")
    # close_notify; the proxy answers by closing (unwrap then fails to
    # read its close_notify, or reads it: either way the stream ended).
    try:
        s.unwrap()
    except (ssl.SSLError, OSError):
        pass
    s.close()
    if mode.startswith("open"):
        wait_for(lambda: p.total("tls_open_records") >= 2, 5, what="the alert opened")
    up.close()
    if mode.startswith("open"):
        assert p.total("tls_open_records") >= 2       # the request and the alert
    assert p.total("tls_open_errors") == 0
    assert p.total("tls_open_closes") == 0


def test_curl_and_wrk(proxy_factory, pki, tmp_path):  # noqa: F811
    """curl uploads a file and wrk sends keep-alive requests over https:
    every answer right, every record opened by us."""
    if not shutil_which("curl"):
        pytest.skip("no curl")
    p, up = _proxy(proxy_factory, pki, MODES["open"])
    body = _body(3, 300_000)[:300_000]
    (tmp_path / "up.bin").write_bytes(body)
    r = subprocess.run(["curl", "-sS", "--cacert", pki["ca"], "--tlsv1.3", "--data-binary",
                        f"@{tmp_path / 'up.bin'}", "-H", "Content-Type: application/octet-stream",
                        f"https://localhost:{p.port}/u"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _expect(body)
    before = p.total("tls_open_records")
    assert before >= 300_000 // 16384
    if shutil_which("wrk"):
        r = subprocess.run(["wrk", "-t1", "-c4", "-d1s", f"https://127.0.0.1:{p.port}/w"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert "Non-2xx" not in r.stdout and "Socket errors" not in r.stdout, r.stdout
        n = int(r.stdout.split(" requests in ")[0].split()[-1])
        assert n > 0
        assert p.total("tls_open_records") - before >= n
    up.close()
    assert p.total("tls_open_errors") == 0


def test_tls12_stays_with_the_library(proxy_factory, pki):  # noqa: F811
    """TLS 1.2 is never opened by us (nor sealed): the library reads it."""
    p, up = _proxy(proxy_factory, pki, MODES["open"])
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=20)
    ctx = client_ctx(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    f = s.makefile("rb")
    s.sendall(_post(b"old"))
    assert _read_response(f) == _expect(b"old")
    assert s.version() == "TLSv1.2"
    s.close()
    up.close()
    assert p.total("tls_open") == 0 and p.total("tls_open_records") == 0
