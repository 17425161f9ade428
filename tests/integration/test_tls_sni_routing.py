"""SNI routing after termination (issue 12): a mode = "tcp" listener with
tls and [[listeners.routes]] sni = ... terminates TLS and sends the
decrypted stream to the cluster of the route that matches the client's
server name (exact beats "*.suffix", the longest suffix wins, else the
listener's cluster), through a real `uproxy run`.

The upstreams are plain TCP servers that answer with their own label and
then echo: a session routed to the wrong cluster shows the wrong label,
and one not decrypted shows TLS records instead of the client's bytes.
Clients are Python's ssl and openssl s_client, verifying the proxy's
certificate (made by the openssl command, signed by a test CA)."""
import socket
import ssl
import subprocess

import pytest

import clienthellos as ch
from conftest import PROFILES
from support import Server, free_port, wait_for
# The names and routes of passthrough's tests: termination routes as it does.
from test_sni import EXPECT, ROUTES

LABELS = ["db", "wide", "apps", "fallback"]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and one ECDSA leaf it signed naming every name EXPECT sends."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=uproxy test CA",
             cwd=d)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=example.com", cwd=d)
    sans = ["example.com", "*.example.com", "*.apps.example.com", "*.x.apps.example.com",
            "unknown.example.org", "db.internal"]
    (d / "leaf.ext").write_text("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans) + "\n")
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "leaf.pem", "-days", "365", "-extfile", "leaf.ext", cwd=d)
    return {"ca": str(d / "ca.pem"), "cert": str(d / "leaf.pem"), "key": str(d / "leaf.key")}


def labelled(label):
    """A plain upstream: its label, then an echo of what it receives."""
    def handle(c, srv):
        c.sendall(label.encode() + b"\n")
        while True:
            b = c.recv(65536)
            if not b:
                c.shutdown(socket.SHUT_WR)
                return None
            c.sendall(b)
    return handle


@pytest.fixture
def routed(proxy_factory, servers, pki):
    """make(profile) -> (proxy, port): a tcp listener that terminates TLS and
    routes by SNI to four labelled plain upstreams."""
    def make(profile="full", tls=None):
        port = free_port()
        clusters = [{"name": lb, "servers": [servers(labelled(lb)).addr]} for lb in LABELS]
        p = proxy_factory([{"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp",
                            "cluster": "fallback", "routes": ROUTES,
                            "tls": {"certificates": [{"cert": pki["cert"], "key": pki["key"]}],
                                    **(tls or {})}}],
                          clusters, proxy={"workers": 1}, profile=profile)
        return p, port
    return make


def session(port, pki, name, payload=b"hello through TLS\n"):
    """One TLS session sending payload: (the upstream's label, the echo)."""
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if name is None:
        ctx.check_hostname = False          # no name sent: nothing to check it against
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as s:
            s.sendall(payload)
            got = b""
            while got.count(b"\n") < 2:
                b = s.recv(65536)
                assert b, f"the session for {name!r} ended early after {got!r}"
                got += b
    label, echo = got.split(b"\n", 1)
    return label.decode(), echo


@pytest.mark.parametrize("profile", list(PROFILES))
def test_decrypted_stream_goes_to_the_cluster_of_the_matching_route(routed, pki, profile):
    p, port = routed(profile)
    for name, want in EXPECT:
        label, echo = session(port, pki, name)
        assert (name, label) == (name, want)
        assert echo == b"hello through TLS\n"       # decrypted, and encrypted back
    assert p.total("tls_handshakes") == len(EXPECT)
    wait_for(lambda: p.total("active") == 0, what="every session to end")
    assert p.total("sni_errors") == 0


def test_openssl_s_client_is_routed_by_its_servername(routed, pki):
    p, port = routed()
    for name, want in [("db.example.com", "db"), ("www.example.com", "wide")]:
        c = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                              "-servername", name, "-verify_return_error", "-CAfile", pki["ca"],
                              "-verify_hostname", name, "-quiet"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            c.stdin.write(b"ping\n")
            c.stdin.flush()
            lines = [c.stdout.readline(), c.stdout.readline()]   # (-quiet waits past stdin's end)
        finally:
            c.kill()
            _, err = c.communicate(timeout=10)
        assert lines == [want.encode() + b"\n", b"ping\n"], (lines, err[-2000:])
    assert p.total("tls_handshakes") == 2


def test_large_stream_both_ways_on_a_routed_session(routed, pki):
    """Many records each way on a session whose first bytes (the
    ClientHello) were read by the router before TLS took them over."""
    p, port = routed()
    data = bytes(range(256)) * 4096                  # 1 MiB
    ctx = ssl.create_default_context(cafile=pki["ca"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="db.example.com") as s:
            f = s.makefile("rb")
            assert f.readline() == b"db\n"
            got = bytearray()
            for i in range(0, len(data), 65536):
                s.sendall(data[i:i + 65536])
                while len(got) < i + 65536:
                    b = f.read1(65536)
                    assert b
                    got.extend(b)
            f.close()                                # (it holds the socket open)
    assert bytes(got) == data
    wait_for(lambda: p.total("active") == 0, what="the session to end")


def test_a_hello_then_silence_ends_at_the_handshake_deadline(routed, pki):
    """Routed by a whole ClientHello, the client says nothing more: the
    handshake's deadline closes it (not the session's idle timeout, five
    minutes here), its slots come back, and clients after it are served."""
    p, port = routed(tls={"handshake_timeout": "500ms"})
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
    for s in socks:
        s.sendall(ch.python_hello("db.example.com"))
    wait_for(lambda: p.total("accepted") >= 20, what="all accepted")
    wait_for(lambda: p.total("active") == 0, timeout=8, what="the handshake deadline to close them")
    assert p.total("tls_handshake_timeouts") == 20
    for s in socks:
        s.close()
    assert session(port, pki, "db.example.com")[0] == "db"


def test_a_route_to_a_cluster_that_speaks_tls(proxy_factory, servers, pki):
    """Terminated, the stream may be encrypted again toward a cluster with
    tls (passthrough refuses that: test_sni.py): the upstream is a TLS
    server, verified by the proxy against the test CA under the cluster's
    sni."""
    def tls_labelled(c, srv):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["cert"], pki["key"])
        with ctx.wrap_socket(c, server_side=True) as t:
            t.sendall(b"secure\n")
            while b := t.recv(65536):
                t.sendall(b)
    port = free_port()
    tls = {"certificates": [{"cert": pki["cert"], "key": pki["key"]}]}
    p = proxy_factory([{"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp",
                        "cluster": "plain", "tls": tls,
                        "routes": [{"sni": "db.example.com", "cluster": "secure"}]}],
                      [{"name": "plain", "servers": [servers(labelled("plain")).addr]},
                       {"name": "secure", "servers": [servers(tls_labelled).addr],
                        "tls": {"ca": pki["ca"], "sni": "db.internal"}}],
                      proxy={"workers": 1})
    assert session(port, pki, "db.example.com") == ("secure", b"hello through TLS\n")
    assert session(port, pki, "www.example.com") == ("plain", b"hello through TLS\n")


def header_then_label(label, seen):
    """A plain upstream behind a cluster with proxy_protocol = "v1": it notes
    the header's line, then answers as labelled does."""
    def handle(c, srv):
        f = c.makefile("rb")
        seen.append(f.readline())
        c.sendall(label.encode() + b"\n")
        while b := f.read1(65536):
            c.sendall(b)
        c.shutdown(socket.SHUT_WR)
    return handle


@pytest.mark.parametrize("routes", [False, True], ids=["no-routes", "sni-routes"])
def test_proxy_header_before_the_handshake_on_a_tls_tcp_listener(proxy_factory, servers, pki,
                                                                 routes):
    """proxy_protocol = true on a tcp listener with tls (a load balancer in
    front, as HAProxy's accept-proxy on an ssl bind): the PROXY header (v1
    or v2) comes in the clear, then the TLS handshake on the same
    connection; the decrypted stream reaches the cluster (by SNI with
    routes), whose own PROXY header names the client the first header
    named. A ClientHello where the header should be is closed, no
    handshake."""
    from test_resilience import _v2
    seen = []
    port = free_port()
    routing = {"routes": [{"sni": "db.example.com", "cluster": "db"}]} if routes else {}
    clusters = [{"name": lb, "servers": [servers(header_then_label(lb, seen)).addr],
                 "proxy_protocol": "v1"} for lb in ("db", "fallback")]
    proxy_factory([{"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp",
                    "cluster": "fallback", "proxy_protocol": True,
                    "tls": {"certificates": [{"cert": pki["cert"], "key": pki["key"]}]},
                    **routing}], clusters, proxy={"workers": 1})
    ctx = ssl.create_default_context(cafile=pki["ca"])
    for header, client in ((b"PROXY TCP4 203.0.113.5 198.51.100.1 4242 443\r\n", "203.0.113.5"),
                           (_v2("203.0.113.6", 4243), "203.0.113.6")):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(header)
            with ctx.wrap_socket(raw, server_hostname="db.example.com") as s:
                s.sendall(b"through TLS after a PROXY header\n")
                got = b""
                while got.count(b"\n") < 2:
                    b = s.recv(65536)
                    assert b, f"the session ended early after {got!r}"
                    got += b
        assert got == (b"db\n" if routes else b"fallback\n") + b"through TLS after a PROXY header\n"
        assert seen[-1].startswith(f"PROXY TCP4 {client} ".encode()), seen
    n = len(seen)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            ctx.wrap_socket(raw, server_hostname="db.example.com")
    assert len(seen) == n                       # no server was asked
