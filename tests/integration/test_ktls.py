"""Kernel TLS (issue 12, docs/tls.md "Kernel TLS"): after the handshake the
kernel encrypts what uproxy sends (TLS_TX) and decrypts what clients send
(TLS_RX), large bodies go by splice into and out of the kTLS socket, and
the records that are not data (close_notify, alerts, KeyUpdate) are
answered. Real clients (curl, openssl s_client, Python's ssl) against a
real `uproxy run`.

These tests need a kernel with the tls ULP (CONFIG_TLS): they skip, saying
so, on one without, and run in the project's VM (Debian 12, Linux 6.1):
`scripts/vm-test -- tests/integration/test_ktls.py -x` (docs/testing.md)."""
import hashlib
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from http_upstream import HttpUpstream, Response
from support import free_port, pattern, pattern_sha, wait_for

from uproxy._native import lib

if not lib.up_tls_ktls_available():
    why = "this kernel has no tls ULP (CONFIG_TLS): kTLS runs in the VM, scripts/vm-test -- tests/integration/test_ktls.py"
    print(f"test_ktls: skipped: {why}")
    pytest.skip(why, allow_module_level=True)

BIG = 1 << 20
BIG_SHA = pattern_sha(7, BIG)
BIG_BODY = b"".join(pattern(7, BIG))


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("ktls-pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "k.pem", "-out", "c.pem", "-days", "5", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost", cwd=d)
    return {"cert": str(d / "c.pem"), "key": str(d / "k.pem")}


def upstream():
    def handler(req):
        if req.method == "POST":
            return Response(body=b"sha " + hashlib.sha256(req.body).hexdigest().encode())
        if req.target.startswith("/big"):
            return Response(body=BIG_BODY)
        return Response(body=b"small " + req.target.encode())
    return HttpUpstream(handler)


def ktls_proxy(proxy_factory, cert, up, env=None):
    port = free_port()
    lst = {"name": "https", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
           "tls": {"certificates": [cert]}}
    p = proxy_factory([lst], [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1}, env=env)
    p.port = port
    return p


def ctx_for(version=None, ciphers=None):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def get(s, f, path, close=False):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{'Connection: close' if close else ''}\r\n\r\n".encode())
    status = int(f.readline().split()[1])
    length = 0
    while (h := f.readline()) != b"\r\n":
        if h.lower().startswith(b"content-length:"):
            length = int(h.split(b":")[1])
    return status, f.read(length)


def curl_keepalive(port, tmp_path, args):
    """small, 1 MiB twice, small on one connection: (the bodies, connections
    made). The second 1 MiB body follows a large one on the pooled upstream
    connection, whose head is then read alone (h1_upstream_release), so it
    is the one sure to be spliced, whatever the timing."""
    paths = ("/s1", "/big", "/big", "/s2")
    outs = [tmp_path / f"o{i}" for i in range(len(paths))]
    cmd = ["curl", "-sS", "-k", "--http1.1", "-w", "%{num_connects}\n", *args]
    for i, path in enumerate(paths):
        cmd += [f"https://localhost:{port}{path}", "-o", str(outs[i])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [o.read_bytes() for o in outs], sum(int(x) for x in r.stdout.split())


def counters(p):
    t = p.stats()["total"]
    return {k: v for k, v in t.items() if v and (k.startswith("tls") or k.startswith("err") or "splice" in k)}


SUITES = [
    ("1.3", "TLS_AES_128_GCM_SHA256"),
    ("1.3", "TLS_AES_256_GCM_SHA384"),
    ("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"),
    ("1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ("1.3", "TLS_CHACHA20_POLY1305_SHA256"),
    ("1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"),
]


def test_ktls_curl_every_suite_keepalive_and_splice(proxy_factory, cert, tmp_path):
    """Each suite the kernel takes: the connection is handed over (counted),
    keep-alive works, and the 1 MiB body goes by splice into the kTLS
    socket, byte for byte. ChaCha20 is the kernel's choice: handed over
    where it has it, else kept in user space (a fallback), never broken."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    up = upstream()
    p = ktls_proxy(proxy_factory, cert, up)
    for version, suite in SUITES:
        before = {k: p.total(k) for k in ("tls_ktls", "tls_ktls_fallbacks", "bodies_spliced", "tls_ktls_rx")}
        args = ["--tlsv1.3", "--tls13-ciphers", suite] if version == "1.3" else \
               ["--tlsv1.2", "--tls-max", "1.2", "--ciphers", suite]
        try:
            bodies, connects = curl_keepalive(p.port, tmp_path, args)
        except AssertionError as e:
            raise AssertionError(f"{suite}: {e}; counters {counters(p)}") from None
        assert bodies[0] == b"small /s1" and bodies[3] == b"small /s2", suite
        assert hashlib.sha256(bodies[1]).hexdigest() == BIG_SHA, suite
        assert hashlib.sha256(bodies[2]).hexdigest() == BIG_SHA, suite
        assert connects == 1, f"{suite}: keep-alive broke ({connects} connections)"
        after = {k: p.total(k) for k in before}
        handed = after["tls_ktls"] - before["tls_ktls"]
        fell = after["tls_ktls_fallbacks"] - before["tls_ktls_fallbacks"]
        print(f"{suite}: handed over {handed}, kept in user space {fell}, "
              f"spliced {after['bodies_spliced'] - before['bodies_spliced']}")
        if "CHACHA" in suite:
            assert handed + fell == 1, suite
        else:
            assert (handed, fell) == (1, 0), suite
        if handed:
            assert after["bodies_spliced"] > before["bodies_spliced"], f"{suite}: the 1 MiB body was not spliced"
        # the receiving went to the kernel too, with the same suite
        assert after["tls_ktls_rx"] - before["tls_ktls_rx"] == handed, f"{suite}: {counters(p)}"


def test_ktls_python_keepalive_and_close_notify(proxy_factory, cert):
    """Python's ssl, TLS 1.2 and 1.3: many keep-alive requests on one kTLS
    connection, then the client's close_notify ends it cleanly. After
    `Connection: close` the proxy says close_notify itself, an alert record
    the kernel writes: with ragged EOFs not suppressed, a bare FIN would
    raise instead of reading as the end."""
    up = upstream()
    p = ktls_proxy(proxy_factory, cert, up)
    for version in ("1.3", "1.2"):
        ctx = ctx_for(version)
        raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        f = s.makefile("rb")
        for i in range(20):
            assert get(s, f, f"/k{i}") == (200, f"small /k{i}".encode())
        status, body = get(s, f, "/big")
        assert status == 200 and hashlib.sha256(body).hexdigest() == BIG_SHA
        f.close()
        try:
            s.unwrap().close()
        except (ssl.SSLError, OSError):
            s.close()                  # the proxy closed without waiting: fine
        raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
        f = s.makefile("rb")
        assert get(s, f, "/bye", close=True) == (200, b"small /bye")
        assert s.recv(100) == b""      # close_notify read (a bare FIN raises SSLEOFError)
        f.close()
        s.close()
    assert p.total("tls_ktls") == 4, counters(p)
    assert p.total("tls_ktls_rx") == 4, counters(p)
    assert p.total("tls_ktls_fallbacks") == 0 and p.total("tls_ktls_rx_fallbacks") == 0
    # the sending keys came from the library's BIO call, not the key log
    assert p.total("tls_keylog_fallbacks") == 0


def s_client(port, steps, version="-tls1_3"):
    """openssl s_client fed `steps` (bytes to type, or a pause in seconds);
    its whole output once it ends."""
    c = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", version,
                          "-servername", "localhost", "-crlf"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for step in steps:
            if isinstance(step, (int, float)):
                time.sleep(step)
            else:
                try:
                    c.stdin.write(step)
                    c.stdin.flush()
                except BrokenPipeError:
                    break              # s_client is gone: the proxy closed
        try:
            c.stdin.close()
        except BrokenPipeError:
            pass
        c.stdin = None                 # communicate() must not flush it again
        out, _ = c.communicate(timeout=30)
    finally:
        if c.poll() is None:
            c.kill()
            c.wait()
    return out.decode(errors="replace")


REQ = b"GET /%s HTTP/1.1\nHost: localhost\n\n"


def test_ktls_openssl_s_client_and_key_updates(proxy_factory, cert):
    """openssl s_client, TLS 1.2 and 1.3, with kTLS's receiving switched
    off (`ktls_rx`: the kernel encrypts, the library decrypts). A client's
    key update that asks nothing of us (`k`) changes only the keys the
    library decrypts with: the connection goes on. One that asks us to
    update ours too (`K`): our sending keys are in the kernel, which cannot
    change them, so the proxy closes that connection (counted), never
    sends garbage."""
    up = upstream()
    p = ktls_proxy(proxy_factory, cert, up, env={"UPROXY_DISABLE": "ktls_rx"})
    out = s_client(p.port, [REQ % b"a12", 3.0], version="-tls1_2")
    assert "small /a12" in out, out
    out = s_client(p.port, [REQ % b"a", 3.0, b"k\n", 1.0, REQ % b"b", 3.0])
    assert "KEYUPDATE" in out and "small /a" in out and "small /b" in out, out
    assert p.total("tls_ktls_reply_closes") == 0
    out = s_client(p.port, [REQ % b"c", 3.0, b"K\n", 2.0, REQ % b"d", 2.0])
    assert "small /c" in out and "small /d" not in out, out
    wait_for(lambda: p.total("tls_ktls_reply_closes") == 1, 5, what="the K connection closed")
    assert p.total("tls_ktls") == 3
    assert p.total("tls_ktls_rx") == 0


def test_ktls_disabled_keeps_user_space(proxy_factory, cert):
    """disable_features = ["ktls"] (here UPROXY_DISABLE=ktls): no handover,
    no splice over TLS, the same bytes."""
    up = upstream()
    p = ktls_proxy(proxy_factory, cert, up, env={"UPROXY_DISABLE": "ktls"})
    ctx = ctx_for()
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        f = s.makefile("rb")
        status, body = get(s, f, "/big")
        assert status == 200 and hashlib.sha256(body).hexdigest() == BIG_SHA
        assert get(s, f, "/x") == (200, b"small /x")
        f.close()
    assert p.total("tls_ktls") == 0 and p.total("tls_ktls_fallbacks") == 0
    assert p.total("tls_ktls_rx") == 0 and p.total("tls_ktls_rx_fallbacks") == 0
    assert p.total("bodies_spliced") == 0


def test_ktls_upstream_connection_and_request_body_splice(proxy_factory, cert):
    """TLS to an upstream: the dialed connection is handed over too (its
    TLS 1.3 client secret), and a 1 MiB request body from a plain client
    goes by splice into it. The upstream is a second uproxy terminating
    TLS (kTLS as well) in front of an HTTP origin that hashes the body."""
    def handler(req):
        if req.method == "POST":
            return Response(body=hashlib.sha256(req.body).hexdigest().encode())
        return Response(body=b"small " + req.target.encode())
    origin = HttpUpstream(handler)
    front = ktls_proxy(proxy_factory, cert, origin)
    port = free_port()
    p = proxy_factory([{"name": "w", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "t"}],
                      [{"name": "t", "servers": [f"127.0.0.1:{front.port}"],
                        "tls": {"ca": cert["cert"], "sni": "localhost"}}], proxy={"workers": 1})
    body = BIG_BODY
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        f = s.makefile("rb")
        assert get(s, f, "/u1") == (200, b"small /u1")
        s.sendall(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status = int(f.readline().split()[1])
        length = 0
        while (h := f.readline()) != b"\r\n":
            if h.lower().startswith(b"content-length:"):
                length = int(h.split(b":")[1])
        assert (status, f.read(length)) == (200, BIG_SHA.encode())
        assert get(s, f, "/u2") == (200, b"small /u2")
        f.close()
    assert p.total("tls_upstream_handshakes") >= 1
    assert p.total("tls_ktls") >= 1 and p.total("tls_ktls_fallbacks") == 0
    assert p.total("tls_keylog_fallbacks") == 0      # an upstream client context too
    assert p.total("bodies_spliced") >= 1, "the request body did not go by splice into the kTLS upstream"
    assert front.total("tls_ktls") >= 1 and front.total("tls_ktls_rx") >= 1, counters(front)
    # the front's receiving is the kernel's: the same body went by splice
    # out of its kTLS socket to the origin
    assert front.total("bodies_spliced") >= 1, counters(front)


# ---- receiving: TLS_RX ----------------------------------------------------------

class MemClient:
    """A TLS client over memory BIOs (Python's ssl): the test decides which
    bytes go in which send, so the handshake's last flight (TLS 1.3: the
    client's Finished; TLS 1.2 resumed: its ChangeCipherSpec and Finished)
    and the first request can share one segment, or a record can be cut in
    two sends."""

    def __init__(self, port, ctx, session=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost", session=session)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.send(self.out.read())
                self._more()
        self.last_flight = self.out.read()   # not sent yet

    def _more(self):
        data = self.sock.recv(1 << 16)
        assert data, "the proxy closed the connection"
        self.inc.write(data)

    def send(self, data):
        if data:
            self.sock.sendall(data)

    def records(self, plain):
        """plain's bytes as the records the library writes (not sent)."""
        self.obj.write(plain)
        return self.out.read()

    def response(self):
        buf = b""
        while True:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                if len(rest) >= length:
                    return int(head.split()[1]), rest[:length]
            try:
                buf += self.obj.read(1 << 16)
            except ssl.SSLWantReadError:
                self._more()

    def request(self, raw):
        self.send(self.records(raw))
        return self.response()

    def close(self):
        self.sock.close()


def post(path, body):
    return b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body)) + body


def post_head_then_body(send, path, body):
    """The head, then after a pause the body: the proxy decides to splice
    on the head alone, so the body is in the socket when the splice starts
    (sent at once, a multishot receive may take it all into buffers first,
    which is correct but not a splice)."""
    raw = post(path, body)
    cut = raw.index(b"\r\n\r\n") + 4
    send(raw[:cut])
    time.sleep(0.5)
    send(raw[cut:])


# How the first request follows the handshake's last flight: in the same
# send (whole, or as two records), or with its record cut in the header or
# in the body, the rest sent after a pause (the proxy must then read
# exactly to the record's end before the kernel takes over).
CUTS = ["whole", "two-records", "cut-header", "cut-body"]


def first_request(cl, path, cut):
    req = b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path.encode()
    if cut == "two-records":
        recs = cl.records(req[:7]) + cl.records(req[7:])
    else:
        recs = cl.records(req)
    at = {"whole": len(recs), "two-records": len(recs), "cut-header": 3, "cut-body": len(recs) // 2}[cut]
    cl.send(cl.last_flight + recs[:at])
    if at < len(recs):
        time.sleep(0.3)
        cl.send(recs[at:])
    return cl.response()


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_ktls_rx_request_with_the_finished_then_spliced_post(proxy_factory, cert, version):
    """The first request rides with the client's last handshake flight (TLS
    1.2: a resumed handshake, where the client speaks last), whole or cut:
    nothing lost or reordered when the receiving goes to the kernel. Then,
    on the kernel's side, keep-alive requests and a 1 MiB POST, checked by
    content at the upstream, whose body went by splice out of the kTLS
    socket."""
    up = upstream()
    p = ktls_proxy(proxy_factory, cert, up)
    ctx = ctx_for(version)
    session = None
    if version == "1.2":
        cl = MemClient(p.port, ctx)
        cl.send(cl.last_flight)
        assert cl.request(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n") == (200, b"small /first")
        session = cl.obj.session
        cl.close()
    conns = 1 if version == "1.3" else 2
    for cut in CUTS:
        spliced = p.total("bodies_spliced")
        cl = MemClient(p.port, ctx, session=session)
        if version == "1.2":
            assert cl.obj.session_reused, "TLS 1.2 resumption is what makes the client speak last"
        assert cl.last_flight, "the client's last flight should still be unsent"
        assert first_request(cl, f"/{cut}", cut) == (200, f"small /{cut}".encode()), cut
        for i in range(3):
            assert cl.request(b"GET /k%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % i) == (200, b"small /k%d" % i)
        post_head_then_body(lambda b: cl.send(cl.records(b)), "/up", BIG_BODY)
        assert cl.response() == (200, b"sha " + BIG_SHA.encode()), cut
        assert cl.request(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n") == (200, b"small /after")
        cl.close()
        assert p.total("bodies_spliced") > spliced, f"{cut}: the POST body was not spliced ({counters(p)})"
    wait_for(lambda: p.total("tls_ktls_rx") == conns - 1 + len(CUTS), 5, what=f"RX handovers: {counters(p)}")
    assert p.total("tls_ktls_rx_fallbacks") == 0 and p.total("tls_ktls_fallbacks") == 0


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_ktls_rx_keepalive_1000_and_close_notify(proxy_factory, cert, version):
    """1,000 keep-alive requests on one connection whose receiving is the
    kernel's, a 1 MiB POST, then the client's close_notify: the proxy reads
    it (a control record, EIO then recvmsg) as the end, says close_notify
    back and closes: the client's unwrap completes."""
    up = upstream()
    p = ktls_proxy(proxy_factory, cert, up)
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=20)
    s = ctx_for(version).wrap_socket(raw, server_hostname="localhost")
    f = s.makefile("rb")
    for i in range(1000):
        assert get(s, f, f"/{i}") == (200, f"small /{i}".encode())
    post_head_then_body(s.sendall, "/up", BIG_BODY)
    status = int(f.readline().split()[1])
    while f.readline() != b"\r\n":
        pass
    assert (status, f.read(4 + 64)) == (200, b"sha " + BIG_SHA.encode())
    assert p.total("tls_ktls_rx") == 1, counters(p)
    f.close()
    s.settimeout(10)
    try:
        s.unwrap().close()             # close_notify; the proxy's came back
    except ssl.SSLEOFError:
        s.close()                      # the proxy closed without one: also the end
    # a close_notify not understood would leave the connection open: unwrap
    # would wait for the proxy's and time out (TimeoutError fails the test)
    assert p.total("tls_ktls_rx_closes") == 0
    assert p.total("bodies_spliced") >= 1


def test_ktls_rx_key_update_and_renegotiation_close(proxy_factory, cert):
    """With the kernel decrypting, a client's KeyUpdate (s_client's `k`,
    and `K`) is a handshake record the kernel cannot follow on Linux 6.1:
    the proxy closes the connection (close_notify, FIN), counted, never
    hangs; TLS 1.2's renegotiation (s_client's `R`, a ClientHello) the
    same. s_client ends by itself (its output once it did)."""
    up = upstream()
    p = ktls_proxy(proxy_factory, cert, up)
    closes = 0
    for version, cmd in (("-tls1_3", b"k\n"), ("-tls1_3", b"K\n"), ("-tls1_2", b"R\n")):
        t0 = time.monotonic()
        out = s_client(p.port, [REQ % b"a", 2.0, cmd, 2.0, REQ % b"b", 2.0], version=version)
        assert "small /a" in out and "small /b" not in out, (version, cmd, out)
        closes += 1
        wait_for(lambda: p.total("tls_ktls_rx_closes") == closes, 5,
                 what=f"{version} {cmd!r}: the connection closed and counted ({counters(p)})")
        assert time.monotonic() - t0 < 25
    assert p.total("tls_ktls_rx") == 3 and p.total("tls_ktls_reply_closes") == 0


def test_ktls_rx_disabled_keeps_tx(proxy_factory, cert):
    """disable_features = ["ktls_rx"]: the kernel encrypts, the library
    decrypts (no TLS_RX, and request bodies are not spliced out of TLS)."""
    up = upstream()
    p = ktls_proxy(proxy_factory, cert, up, env={"UPROXY_DISABLE": "ktls_rx"})
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=20)
    with ctx_for().wrap_socket(raw, server_hostname="localhost") as s:
        f = s.makefile("rb")
        assert get(s, f, "/x") == (200, b"small /x")
        s.sendall(post("/up", BIG_BODY))
        status = int(f.readline().split()[1])
        while f.readline() != b"\r\n":
            pass
        assert (status, f.read(4 + 64)) == (200, b"sha " + BIG_SHA.encode())
        f.close()
    assert p.total("tls_ktls") == 1 and p.total("tls_ktls_rx") == 0, counters(p)
    assert p.total("bodies_spliced") == 0
