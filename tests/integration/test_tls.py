"""TLS on the data path (issue 12): HTTPS listeners, TCP listeners that
terminate TLS, TLS to upstreams, certificates chosen by SNI, resumption,
hostile handshakes. Real clients (curl, openssl s_client, Python's ssl,
wrk) against real `uproxy run` processes; certificates made by the openssl
command in a temporary directory. The configuration side (validation,
reload, tickets across instances, metrics) is tests/integration/test_tls_config.py."""
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from harden import FastUpstream
from http_upstream import HttpUpstream, Response
from support import Proxy, Server, echo, free_port, pattern, pattern_sha, render_config, wait_for


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and leaves it signed: ECDSA and RSA for localhost/a.test, ECDSA
    for *.b.test."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=uproxy test CA", cwd=d)

    def leaf(name, sans, kind="ec"):
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ec" else \
              ["-newkey", "rsa:2048"]
        _openssl("req", "-new", *key, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={sans[0]}", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans) + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "20", "-extfile", f"{name}.ext", cwd=d)
        return {"cert": str(d / f"{name}.pem"), "key": str(d / f"{name}.key")}
    return {
        "dir": d, "ca": str(d / "ca.pem"),
        "a_ec": leaf("a_ec", ["localhost", "a.test"]),
        "a_rsa": leaf("a_rsa", ["localhost", "a.test"], "rsa"),
        "b_ec": leaf("b_ec", ["*.b.test"]),
    }


def tls_table(certs, **kw):
    t = {"certificates": certs}
    t.update(kw)
    return t


def https_proxy(proxy_factory, pki, servers, tls=None, listener=None, cluster=None, workers=1,
                clusters=None):
    port = free_port()
    lst = {"name": "https", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
           "tls": tls or tls_table([pki["a_ec"]])}
    lst.update(listener or {})
    cl = {"name": "c", "servers": servers}
    cl.update(cluster or {})
    p = proxy_factory([lst], [cl] + (clusters or []), proxy={"workers": workers})
    p.port = port
    return p


def client_ctx(pki=None, **kw):
    ctx = ssl.create_default_context(cafile=pki["ca"]) if pki else ssl.create_default_context()
    if not pki:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def https_get(port, ctx, host="localhost", path="/", n=1, session=None):
    """n keep-alive GETs on one TLS connection; (statuses, bodies, the ssl socket's facts)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname=host, session=session)
    try:
        f = s.makefile("rb")
        statuses, bodies = [], []
        for i in range(n):
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            line = f.readline()
            statuses.append(int(line.split()[1]))
            length = 0
            while (h := f.readline()) != b"\r\n":
                if h.lower().startswith(b"content-length:"):
                    length = int(h.split(b":")[1])
            bodies.append(f.read(length))
        facts = {"version": s.version(), "cipher": s.cipher()[0], "alpn": s.selected_alpn_protocol(),
                 "reused": s.session_reused, "session": s.session,
                 "cert": s.getpeercert()}
        return statuses, bodies, facts
    finally:
        s.close()


def echo_upstream():
    def handler(req):
        return Response(body=json.dumps({"path": req.target, "xfp": req.header("x-forwarded-proto")}).encode())
    return HttpUpstream(handler)


# ---- HTTPS listeners --------------------------------------------------------

def test_https_keepalive_python_ssl_verifies_chain(proxy_factory, pki):
    up = echo_upstream()
    p = https_proxy(proxy_factory, pki, [up.addr])
    statuses, bodies, facts = https_get(p.port, client_ctx(pki), n=5, path="/k")
    assert statuses == [200] * 5
    assert all(json.loads(b) == {"path": "/k", "xfp": "https"} for b in bodies)
    assert facts["version"] == "TLSv1.3"
    assert facts["alpn"] is None          # the client offered none
    assert p.total("tls_handshakes") == 1
    assert p.total("requests") == 5
    up.close()


def test_curl_https_two_requests_one_connection_alpn(proxy_factory, pki):
    up = echo_upstream()
    p = https_proxy(proxy_factory, pki, [up.addr])
    r = subprocess.run(["curl", "-sS", "-v", "--http1.1", "--cacert", pki["ca"], "--resolve",
                        f"a.test:{p.port}:127.0.0.1", f"https://a.test:{p.port}/1",
                        f"https://a.test:{p.port}/2"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('"xfp": "https"') == 2
    assert "ALPN: server accepted http/1.1" in r.stderr
    assert "Re-using existing connection" in r.stderr
    up.close()


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_both_versions_and_min_version(proxy_factory, pki, version):
    up = echo_upstream()
    p = https_proxy(proxy_factory, pki, [up.addr])
    v = getattr(ssl.TLSVersion, version)
    statuses, _, facts = https_get(p.port, client_ctx(pki, minimum_version=v, maximum_version=v))
    assert statuses == [200] and facts["version"] == version.replace("_", ".")
    if version == "TLSv1_2":
        assert facts["cipher"].startswith("ECDHE-")        # forward secrecy, the default list
    q = https_proxy(proxy_factory, pki, [up.addr], tls=tls_table([pki["a_ec"]], min_version="1.3"))
    if version == "TLSv1_2":
        with pytest.raises(ssl.SSLError):
            https_get(q.port, client_ctx(pki, minimum_version=v, maximum_version=v))
        wait_for(lambda: q.total("tls_handshake_errors") >= 1, what="the refused handshake counted")
    else:
        assert https_get(q.port, client_ctx(pki, minimum_version=v, maximum_version=v))[0] == [200]
    up.close()


def test_old_protocols_refused_by_openssl_client(proxy_factory, pki):
    up = echo_upstream()
    p = https_proxy(proxy_factory, pki, [up.addr])
    for flag in ("-tls1", "-tls1_1"):
        r = subprocess.run(["openssl", "s_client", flag, "-connect", f"127.0.0.1:{p.port}"],
                           input="", capture_output=True, text=True, timeout=10)
        assert r.returncode != 0 and "Protocol  : TLSv1.2" not in r.stdout, (flag, r.stdout[-500:])
    up.close()


def test_certificate_chosen_by_sni_and_signature_algorithm(proxy_factory, pki):
    up = echo_upstream()
    p = https_proxy(proxy_factory, pki, [up.addr],
                    tls=tls_table([pki["a_ec"], pki["a_rsa"], pki["b_ec"]]))

    def subject(name, *extra):
        args = ["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-tls1_2", *extra]
        if name:
            args += ["-servername", name]
        r = subprocess.run(args, input="", capture_output=True, text=True, timeout=10)
        out = r.stdout
        return out.split("subject=", 1)[1].split("\n", 1)[0] if "subject=" in out else out[-300:]
    assert "CN = *.b.test" in subject("x.b.test")
    assert "CN = localhost" in subject("a.test")
    assert "CN = localhost" in subject("unknown.example")    # the default: the first group
    assert "CN = localhost" in subject(None)
    # The same names with RSA and ECDSA: the client's algorithms pick.
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-tls1_2",
                        "-servername", "a.test", "-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"],
                       input="", capture_output=True, text=True, timeout=10)
    assert "Server public key is 2048 bit" in r.stdout, r.stdout[-600:]
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-tls1_2",
                        "-servername", "a.test", "-sigalgs", "ECDSA+SHA256"],
                       input="", capture_output=True, text=True, timeout=10)
    assert "Server public key is 256 bit" in r.stdout, r.stdout[-600:]
    up.close()


def test_session_resumption_tls13_ticket(proxy_factory, pki):
    up = echo_upstream()
    p = https_proxy(proxy_factory, pki, [up.addr], workers=2)
    ctx = client_ctx(pki)
    _, _, first = https_get(p.port, ctx)
    assert not first["reused"] and first["session"] is not None
    reused = 0
    for _ in range(6):           # whichever worker takes it: the keys are shared
        _, _, again = https_get(p.port, ctx, session=first["session"])
        reused += again["reused"]
    assert reused == 6
    wait_for(lambda: p.total("tls_resumed") >= 6, what="resumptions counted")
    # Clients (browsers, OpenSSL's cache) use a TLS 1.3 ticket once: a
    # resumed connection must bring a fresh ticket, or every other
    # connection is a full handshake.
    session, ids = first["session"], {first["session"].id}
    for _ in range(4):
        _, _, nxt = https_get(p.port, ctx, session=session)
        assert nxt["reused"]
        assert nxt["session"].id not in ids, "a resumed connection brought no new ticket"
        session = nxt["session"]
        ids.add(session.id)
    up.close()


def test_large_bodies_both_ways_intact(proxy_factory, pki):
    size = 24 << 20

    def handler(req):
        def stream(sock):
            for chunk in pattern(22, size):
                sock.sendall(chunk)
        return Response(headers=[("Content-Length", str(size))], stream=stream)
    up = HttpUpstream(handler, keep_body=False)
    p = https_proxy(proxy_factory, pki, [up.addr])
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    s = client_ctx(pki).wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
    for chunk in pattern(11, size):
        s.sendall(chunk)
    f = s.makefile("rb")
    assert f.readline().startswith(b"HTTP/1.1 200")
    while f.readline() != b"\r\n":
        pass
    h, got = hashlib.sha256(), 0
    while got < size:
        b = f.read(min(1 << 20, size - got))
        assert b
        h.update(b)
        got += len(b)
    s.close()
    assert h.hexdigest() == pattern_sha(22, size)
    assert up.requests[0].body_sha == pattern_sha(11, size)
    up.close()


def test_wrk_over_https(proxy_factory, pki):
    if not shutil.which("wrk"):
        pytest.skip("wrk is not installed (scripts/setup --test installs it)")
    up = echo_upstream()
    p = https_proxy(proxy_factory, pki, [up.addr])
    r = subprocess.run(["wrk", "-t1", "-c8", "-d2s", f"https://127.0.0.1:{p.port}/w"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "Non-2xx" not in r.stdout and "Socket errors" not in r.stdout, r.stdout
    assert p.total("requests") > 50
    up.close()


def test_many_connections_of_64k_responses_keep_flowing(proxy_factory, pki):
    """64 TLS connections each fetching 64 KiB over and over: every plaintext
    and record buffer TLS takes comes from the worker's pool, whose kernel
    share once grew over all of it, after which the worker spun on "no
    buffer" (the bench saw it stall within seconds)."""
    if not shutil.which("wrk"):
        pytest.skip("wrk is not installed (scripts/setup --test installs it)")
    up = FastUpstream(size=65536)          # fast enough to press on the pool
    p = https_proxy(proxy_factory, pki, [up.addr])
    r = subprocess.run(["wrk", "-t1", "-c64", "-d3s", "--timeout", "2s",
                        f"https://127.0.0.1:{p.port}/64k"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "Socket errors" not in r.stdout and "Non-2xx" not in r.stdout, r.stdout
    assert p.total("resp_2xx") >= 500, r.stdout
    wait_for(lambda: p.total("active") == 0, what="wrk's connections closed")
    statuses, bodies, _ = https_get(p.port, client_ctx(pki), path="/after")
    assert statuses == [200] and bodies[0] == up.body
    up.close()


# ---- TCP listeners and TLS to upstreams ------------------------------------

def test_tcp_listener_terminates_tls(proxy_factory, pki):
    up = Server(echo)
    port = free_port()
    p = proxy_factory([{"name": "t", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c",
                        "tls": tls_table([pki["a_ec"]])}],
                      [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1})
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = client_ctx(pki).wrap_socket(raw, server_hostname="localhost")
    data = os.urandom(3 << 20)
    got = bytearray()
    for i in range(0, len(data), 65536):
        s.sendall(data[i:i + 65536])
        want = len(data[i:i + 65536])
        n0 = len(got)
        while len(got) - n0 < want:
            b = s.recv(65536)
            assert b
            got.extend(b)
    s.close()
    assert bytes(got) == data
    wait_for(lambda: p.total("active") == 0, what="the session to end")
    assert p.total("tls_handshakes") == 1
    up.close()


@pytest.fixture
def tls_nginx(tmp_path, pki):
    """nginx as a TLS origin, with the test CA's localhost certificate."""
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (scripts/setup --test installs it)")
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off; client_body_temp_path {tmp_path};
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {pki['a_ec']['cert']}; ssl_certificate_key {pki['a_ec']['key']};
    ssl_session_tickets on; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ return 200 "origin $ssl_protocol reused=$ssl_session_reused sni=$ssl_server_name\\n"; }}
  }}
}}
""")
    ng = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(tmp_path / "error.log")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return ng.poll() is not None      # nginx died: stop waiting, the test will say
    wait_for(listening, what="nginx to listen")
    if ng.poll() is not None:
        pytest.fail(f"nginx did not start: {(tmp_path / 'error.log').read_text()[-800:]}")
    yield f"127.0.0.1:{port}"
    ng.terminate()
    ng.wait(timeout=10)


def test_tls_to_nginx_upstream_verified_and_resumed(proxy_factory, pki, tls_nginx):
    port = free_port()
    p = proxy_factory([{"name": "w", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                      [{"name": "c", "servers": [tls_nginx], "pool_max_idle": 0,
                        "tls": {"ca": pki["ca"], "sni": "a.test"}}], proxy={"workers": 1})
    bodies = []
    for i in range(4):
        r = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{port}/x"],
                           capture_output=True, text=True)
        bodies.append(r.stdout)
    assert all(b.startswith("origin TLSv1.") and "sni=a.test" in b for b in bodies), bodies
    assert any("reused=r" in b for b in bodies[1:]), bodies     # a session resumed
    assert p.total("tls_upstream_handshakes") >= 4
    assert p.total("tls_upstream_resumed") >= 1


def test_tls_upstream_wrong_name_is_502(proxy_factory, pki, tls_nginx):
    port = free_port()
    p = proxy_factory([{"name": "w", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                      [{"name": "c", "servers": [tls_nginx],
                        "tls": {"ca": pki["ca"], "sni": "wrong.example"}}], proxy={"workers": 1})
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                        f"http://127.0.0.1:{port}/x"], capture_output=True, text=True)
    assert r.stdout == "502"
    assert p.total("tls_upstream_errors") >= 1


# ---- hostile handshakes ----------------------------------------------------

def _hostile_proxy(proxy_factory, pki):
    up = echo_upstream()
    p = https_proxy(proxy_factory, pki, [up.addr],
                    tls=tls_table([pki["a_ec"]], handshake_timeout="1s"))
    return p, up


def test_garbage_and_truncated_hellos_are_closed(proxy_factory, pki):
    p, up = _hostile_proxy(proxy_factory, pki)
    hello = _client_hello(pki)
    for data in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(3000), b"\x16\x03\x01\xff\xff" + b"A" * 100,
                 hello[: len(hello) // 2]):
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            s.sendall(data)
            if data is not hello[: len(hello) // 2]:
                try:
                    while s.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
    wait_for(lambda: p.total("active") == 0, timeout=10, what="every hostile connection closed")
    assert p.total("tls_handshake_errors") >= 3
    # Still serving.
    assert https_get(p.port, client_ctx(pki))[0] == [200]
    up.close()


def _client_hello(pki):
    ctx = client_ctx(pki)
    i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(i, o, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return o.read()


def test_hello_dribbled_byte_by_byte_completes(proxy_factory, pki):
    p, up = _hostile_proxy(proxy_factory, pki)
    ctx = client_ctx(pki)
    i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(i, o, server_hostname="localhost")
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            out = o.read()
            for k in range(len(out)):          # one byte per segment
                s.sendall(out[k:k + 1])
                time.sleep(0.0005)
            data = s.recv(65536)
            assert data
            i.write(data)
    obj.write(b"GET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    s.sendall(o.read())
    got = b""
    while True:
        data = s.recv(65536)
        if not data:
            break
        i.write(data)
        try:
            got += obj.read(65536)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
    s.close()
    assert got.startswith(b"HTTP/1.1 200") and b'"/d"' in got
    up.close()


def test_half_open_handshakes_time_out_and_free_their_slots(proxy_factory, pki):
    p, up = _hostile_proxy(proxy_factory, pki)
    hello = _client_hello(pki)
    socks = []
    for k in range(600):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
        if k % 2:
            s.sendall(hello[:40])              # a hello that never completes
        socks.append(s)
    wait_for(lambda: p.total("accepted") >= 600, what="all accepted")
    wait_for(lambda: p.total("active") == 0, timeout=15, what="the handshake timeout to close them")
    assert p.total("tls_handshake_timeouts") >= 600
    for s in socks:
        s.close()
    assert https_get(p.port, client_ctx(pki))[0] == [200]
    up.close()


def test_handshake_flood_from_many_threads(proxy_factory, pki):
    p, up = _hostile_proxy(proxy_factory, pki)
    ctx = client_ctx(pki)
    errors = []

    def worker():
        for _ in range(25):
            try:
                assert https_get(p.port, ctx)[0] == [200]
            except Exception as e:          # noqa: BLE001 - collected and asserted below
                errors.append(e)
    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    assert p.total("tls_handshakes") >= 200
    wait_for(lambda: p.total("active") == 0, what="connections closed")
    up.close()
