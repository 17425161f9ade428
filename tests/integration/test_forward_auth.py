"""Forward auth (issue 16; Traefik's ForwardAuth, nginx's auth_request):
a subrequest to a real auth service (tests/lib/http_upstream.py) decides
whether a request reaches its cluster; its 2xx headers are copied onto the
request, any other answer is relayed to the client; a dead or slow auth
service fails the request with 502 or 504."""
import http.client
import shutil
import socket
import subprocess

import pytest

from http_upstream import HttpUpstream, Response
from support import free_port
from test_http import http_proxy
from uproxy.config import ConfigError, parse


def auth_handler(req):
    tok = req.header("Authorization")
    if tok == "Bearer good":
        return Response(body=b"ok", headers=[("X-User", "alice"), ("X-Role", "admin"),
                                             ("X-Not-Copied", "1")])
    if tok == "Bearer chunked":
        return Response(body=b"fine" * 100, chunked=True, headers=[("X-User", "bob")])
    if tok == "Bearer slow":
        return Response(body=b"", delay=2.0)
    if tok == "Bearer login":
        return Response(status=302, headers=[("Location", "https://login.example/?r=1")])
    return Response(status=401, body=b"denied\n", headers=[
        ("WWW-Authenticate", 'Bearer realm="app"'), ("Content-Type", "text/plain")])


def start(proxy_factory, fa=None, auth=auth_handler, h2=False, **kw):
    app = HttpUpstream(lambda req: Response(body=b"app " + req.target.encode() + b" " +
                                            req.body))
    auth_up = HttpUpstream(auth) if auth else None
    fa = {"cluster": "auth", "path": "/verify?check=1", "copy_headers": ["X-User", "X-Role"],
          **(fa or {})}
    servers = [auth_up.addr] if auth_up else kw.pop("auth_servers")
    p = http_proxy(proxy_factory, [app.addr], listener={"http2": h2, "routes": [
        {"path_prefix": "/open", "cluster": "c"},
        {"path_prefix": "/", "cluster": "c", "forward_auth": fa}]},
        clusters=[{"name": "auth", "servers": servers}], **kw)
    return app, auth_up, p


def req(conn, method, path, headers=(), body=None):
    h = {"Host": "app.example"}
    h.update(dict(headers))
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def test_a_2xx_lets_the_request_through_with_copied_headers(proxy_factory):
    """The auth service gets a GET without a body, the client's headers
    and X-Forwarded-Method/-Proto/-Host/-Uri; the app gets the client's
    request (method, path, body) with the listed headers of the auth
    answer, the client's own lines of those names dropped. Keep-alive on
    both sides: the auth connection is pooled."""
    app, auth, p = start(proxy_factory)
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    status, h, body = req(conn, "GET", "/app?x=1", {"Authorization": "Bearer good",
                                                     "X-User": "mallory", "Cookie": "s=1"})
    assert (status, body) == (200, b"app /app?x=1 ")
    a = auth.requests[-1]
    assert (a.method, a.target, a.body) == ("GET", "/verify?check=1", b"")
    assert a.header("X-Forwarded-Method") == "GET"
    assert a.header("X-Forwarded-Uri") == "/app?x=1"
    assert a.header("X-Forwarded-Host") == "app.example"
    assert a.header("X-Forwarded-Proto") == "http"
    assert a.header("X-Forwarded-For") == "127.0.0.1"
    assert a.header("Authorization") == "Bearer good" and a.header("Cookie") == "s=1"
    r = app.requests[-1]
    assert r.header_lines("X-User") == ["alice"] and r.header("X-Role") == "admin"
    assert r.header("X-Not-Copied") is None
    # A POST: its body goes to the app only, after the yes.
    status, h, body = req(conn, "POST", "/form", {"Authorization": "Bearer good",
                                                   "Content-Type": "text/plain"}, b"a=1&b=2")
    assert (status, body) == (200, b"app /form a=1&b=2")
    a = auth.requests[-1]
    assert (a.method, a.body) == ("GET", b"")
    assert a.header("Content-Length") is None and a.header("Content-Type") is None
    assert a.header("X-Forwarded-Method") == "POST"
    assert app.requests[-1].method == "POST"
    # A 2xx with a chunked body: dropped (the connection is not kept).
    status, h, body = req(conn, "GET", "/c", {"Authorization": "Bearer chunked"})
    assert (status, body) == (200, b"app /c ")
    assert app.requests[-1].header("X-User") == "bob"
    # A route without forward auth asks nobody.
    n = len(auth.requests)
    status, h, body = req(conn, "GET", "/open", {})
    assert status == 200 and len(auth.requests) == n
    conn.close()
    st = p.stats()["total"]
    assert st["auth_requests"] == 3 and st["auth_denied"] == 0
    assert st["pool_hits"] >= 1
    app.close()
    auth.close()


def test_other_answers_are_relayed_to_the_client(proxy_factory):
    """401 with WWW-Authenticate and its body, a 302 with Location: the
    client gets the auth service's answer, the app is never asked, and the
    client's connection stays usable (a request without a body)."""
    app, auth, p = start(proxy_factory)
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    status, h, body = req(conn, "GET", "/app", {})
    assert status == 401 and body == b"denied\n"
    assert h["www-authenticate"] == 'Bearer realm="app"'
    status, h, body = req(conn, "GET", "/app", {"Authorization": "Bearer login"})
    assert status == 302 and h["location"] == "https://login.example/?r=1"
    status, h, body = req(conn, "HEAD", "/app", {})
    assert status == 401 and body == b""
    assert auth.requests[-1].method == "HEAD"
    status, h, body = req(conn, "GET", "/app", {"Authorization": "Bearer good"})
    assert (status, body) == (200, b"app /app ")
    conn.close()
    assert [r.target for r in app.requests] == ["/app"]
    # A denied request with a body: answered, then the connection closes
    # (its body was never read).
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 401") and data.endswith(b"denied\n")
    assert p.stats()["total"]["auth_denied"] == 4
    app.close()
    auth.close()


def test_forward_headers_lists_what_the_auth_service_gets(proxy_factory):
    app, auth, p = start(proxy_factory, fa={"forward_headers": ["Authorization"]})
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    status, _, _ = req(conn, "GET", "/app", {"Authorization": "Bearer good", "Cookie": "s=1"})
    assert status == 200
    a = auth.requests[-1]
    assert a.header("Authorization") == "Bearer good"
    assert a.header("Cookie") is None and a.header("Host") is None
    assert a.header("X-Forwarded-Uri") == "/app"
    conn.close()
    app.close()
    auth.close()


def test_auth_service_down_or_slow(proxy_factory):
    """Nothing listening: 502; no answer within the timeout: 504. The app
    is never asked."""
    app, _, p = start(proxy_factory, auth=None, auth_servers=[f"127.0.0.1:{free_port()}"])
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    status, _, body = req(conn, "GET", "/app", {"Authorization": "Bearer good"})
    assert status == 502
    conn.close()
    assert app.requests == []
    assert p.stats()["total"]["auth_errors"] == 1
    app, auth, p = start(proxy_factory, fa={"timeout": "300ms"})
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    status, _, body = req(conn, "GET", "/app", {"Authorization": "Bearer slow"})
    assert status == 504
    conn.close()
    assert app.requests == []
    st = p.stats()["total"]
    assert st["auth_errors"] == 1 and st["err_gateway_timeout"] == 1
    app.close()
    auth.close()


def test_http2_streams_are_asked_too(proxy_factory):
    """An HTTP/2 stream is a transaction: the same subrequest, the same
    copied lines, the same relayed denial (curl, h2c prior knowledge)."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    app, auth, p = start(proxy_factory, h2=True)

    def curl(*args):
        return subprocess.run(["curl", "-sS", "-i", "--http2-prior-knowledge", *args],
                              capture_output=True, timeout=20)
    r = curl("-H", "Authorization: Bearer good", f"http://127.0.0.1:{p.port}/app")
    assert r.returncode == 0 and r.stdout.startswith(b"HTTP/2 200"), r
    assert r.stdout.endswith(b"app /app ")
    assert app.requests[-1].header("X-User") == "alice"
    assert auth.requests[-1].header("X-Forwarded-Uri") == "/app"
    r = curl(f"http://127.0.0.1:{p.port}/app")
    assert r.stdout.startswith(b"HTTP/2 401"), r
    assert b'www-authenticate: Bearer realm="app"' in r.stdout and r.stdout.endswith(b"denied\n")
    assert len(app.requests) == 1
    app.close()
    auth.close()


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
    ('{ cluster = "nope" }', "listeners[0].forward_auth.cluster", "no cluster named"),
    ('{ path = "/v" }', "listeners[0].forward_auth.cluster", "required"),
    ('{ cluster = "c", path = "verify" }', "listeners[0].forward_auth.path", "starting with /"),
    ('{ cluster = "c", copy_headers = ["X User"] }', "listeners[0].forward_auth.copy_headers[0]",
     "not a header name"),
    ('{ cluster = "c", copy_headers = ["Content-Length"] }',
     "listeners[0].forward_auth.copy_headers[0]", "proxy's to write"),
    ('{ cluster = "c", timeout = "soon" }', "listeners[0].forward_auth.timeout", "duration"),
])
def test_check_names_the_key(value, key, words):
    with pytest.raises(ConfigError) as e:
        parse(BASE + f"forward_auth = {value}\n")
    text = str(e.value)
    assert key in text and words in text.lower(), text
