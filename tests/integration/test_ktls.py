"""Kernel TLS (issue 12, docs/tls.md "Kernel TLS"): after the handshake the
kernel encrypts what uproxy sends (TLS_TX), large response bodies go by
splice into the kTLS socket, and the library keeps decrypting what clients
send. Real clients (curl, openssl s_client, Python's ssl) against a real
`uproxy run`.

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
        before = {k: p.total(k) for k in ("tls_ktls", "tls_ktls_fallbacks", "bodies_spliced")}
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
    assert p.total("tls_ktls_fallbacks") == 0


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
    """openssl s_client, TLS 1.2 and 1.3. A client's key update that asks
    nothing of us (`k`) changes only the keys the library decrypts with:
    the connection goes on. One that asks us to update ours too (`K`):
    our sending keys are in the kernel, which cannot change them, so the
    proxy closes that connection (counted), never sends garbage."""
    up = upstream()
    p = ktls_proxy(proxy_factory, cert, up)
    out = s_client(p.port, [REQ % b"a12", 3.0], version="-tls1_2")
    assert "small /a12" in out, out
    out = s_client(p.port, [REQ % b"a", 3.0, b"k\n", 1.0, REQ % b"b", 3.0])
    assert "KEYUPDATE" in out and "small /a" in out and "small /b" in out, out
    assert p.total("tls_ktls_reply_closes") == 0
    out = s_client(p.port, [REQ % b"c", 3.0, b"K\n", 2.0, REQ % b"d", 2.0])
    assert "small /c" in out and "small /d" not in out, out
    wait_for(lambda: p.total("tls_ktls_reply_closes") == 1, 5, what="the K connection closed")
    assert p.total("tls_ktls") == 3


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
    assert p.total("bodies_spliced") >= 1, "the request body did not go by splice into the kTLS upstream"
    assert front.total("tls_ktls") >= 1
