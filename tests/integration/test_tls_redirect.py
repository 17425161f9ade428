"""redirect_https (issue 12): a plain-HTTP listener that answers every
request with a 301 or 308 to the same host, path and query over HTTPS,
in the C HTTP layer, with no upstream. Real sockets, curl, and a real
`uproxy run`; the HTTPS side it sends clients to is a real TLS listener
with the test CA of tests/integration/test_tls.py."""
import json
import socket
import subprocess
import sys

import pytest

from http_upstream import HttpUpstream, Response
from support import ROOT, free_port, recv_until_close, wait_for
from test_tls import client_ctx, https_get, pki, tls_table  # noqa: F401 (pki is a fixture)


def redirect_proxy(proxy_factory, redirect, upstream=None, listener=None, tmp_path=None):
    """A proxy whose one plain listener redirects (its cluster, when an
    upstream is given, must never be asked)."""
    port = free_port()
    lst = {"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "redirect_https": redirect}
    clusters = []
    if upstream is not None:
        lst["cluster"] = "c"
        clusters = [{"name": "c", "servers": [upstream.addr]}]
    lst.update(listener or {})
    p = proxy_factory([lst], clusters, proxy={"workers": 1})
    p.port = port
    return p


def read_response(f):
    """(status, headers dict in lower case, body) of one response."""
    line = f.readline()
    assert line.startswith(b"HTTP/1.1 "), line
    headers = {}
    while (h := f.readline()) != b"\r\n":
        assert h, "the connection closed inside a head"
        k, v = h.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", 0)))
    return int(line.split()[1]), headers, body


def test_308_keeps_host_path_and_query_and_the_connection(proxy_factory, tmp_path):
    up = HttpUpstream()
    log = tmp_path / "access.log"
    p = redirect_proxy(proxy_factory, True, upstream=up, listener={"access_log": str(log)})
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        # Two requests in one write: the second is answered on the same
        # connection, after the first.
        s.sendall(b"GET /a/b?x=1&y=%20z HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n"
                  b"HEAD / HTTP/1.1\r\nHost: [::1]:80\r\nUser-Agent: t\r\n\r\n")
        f = s.makefile("rb")
        st, h, body = read_response(f)
        assert (st, h["location"], h["content-length"], body) == \
            (308, "https://Example.com/a/b?x=1&y=%20z", "0", b"")
        assert "connection" not in h                     # kept alive
        st, h, _ = read_response(f)
        assert (st, h["location"]) == (308, "https://[::1]/")
        s.sendall(b"GET /third HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        st, h, _ = read_response(f)
        assert (st, h["location"], h["connection"]) == (308, "https://example.com/third", "close")
        assert f.read() == b""                            # and then closed
    wait_for(lambda: p.total("redirects") == 3, what="the redirects counted")
    t = p.stats()["total"]
    assert (t["requests"], t["resp_3xx"], t["resp_2xx"], t["upstream_connects"]) == (3, 3, 0, 0)
    assert up.connections == 0                            # no upstream was asked
    lines = wait_for(lambda: (x := log.read_text().splitlines()) and len(x) == 3 and x,
                     what="three access-log lines")
    recs = [json.loads(x) for x in lines]
    assert [(r["status"], r["target"], r["upstream"]) for r in recs] == \
        [(308, "/a/b?x=1&y=%20z", None), (308, "/", None), (308, "/third", None)]
    up.close()


def test_curl_sees_a_301_to_another_port(proxy_factory):
    p = redirect_proxy(proxy_factory, {"code": 301, "port": 8443})
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                        "--resolve", f"a.test:{p.port}:127.0.0.1",
                        f"http://a.test:{p.port}/x/y?q=1"], capture_output=True, text=True,
                       timeout=10)
    assert r.stdout == "301 https://a.test:8443/x/y?q=1", r.stderr


def test_curl_follows_it_to_the_https_listener(proxy_factory, pki):
    """The whole way a browser goes: http://a.test/... answered with a 308,
    followed to the HTTPS listener, verified against the test CA, answered
    by the upstream over TLS."""
    def handler(req):
        return Response(body=json.dumps({"path": req.target,
                                         "xfp": req.header("x-forwarded-proto")}).encode())
    up = HttpUpstream(handler)
    http_port, https_port = free_port(), free_port()
    proxy_factory([{"name": "web", "bind": f"127.0.0.1:{http_port}", "mode": "http",
                    "redirect_https": {"port": https_port}},
                   {"name": "https", "bind": f"127.0.0.1:{https_port}", "mode": "http",
                    "cluster": "c", "tls": tls_table([pki["a_ec"]])}],
                  [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1})
    r = subprocess.run(["curl", "-sS", "-L", "-w", "\n%{http_code} %{num_redirects} %{url_effective}",
                        "--cacert", pki["ca"], "--resolve", f"a.test:{http_port}:127.0.0.1",
                        "--resolve", f"a.test:{https_port}:127.0.0.1",
                        f"http://a.test:{http_port}/deep/path?k=v"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    body, last = r.stdout.rsplit("\n", 1)
    assert json.loads(body) == {"path": "/deep/path?k=v", "xfp": "https"}
    assert last == f"200 1 https://a.test:{https_port}/deep/path?k=v"
    up.close()


def _one(port, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        return recv_until_close(s)


def test_no_host_or_a_host_no_location_may_carry_is_400(proxy_factory):
    p = redirect_proxy(proxy_factory, 308)
    bad = [b"GET /x HTTP/1.0\r\n\r\n",                           # HTTP/1.0 without Host
           b"GET /x HTTP/1.1\r\n\r\n",                           # (the parser's own 400)
           b"GET /x HTTP/1.1\r\nHost: evil.example@good.example\r\n\r\n",
           b"GET /x HTTP/1.1\r\nHost: a.example/b\r\n\r\n",
           b"GET /x HTTP/1.1\r\nHost: a.example:80x\r\n\r\n",
           b"GET /x HTTP/1.1\r\nHost: [::1\r\n\r\n",
           b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n"]     # no path to keep
    for raw in bad:
        got = _one(p.port, raw)
        assert got.startswith(b"HTTP/1.1 400 "), (raw, got)
        assert b"Location" not in got
    wait_for(lambda: p.total("resp_4xx") == len(bad), what="the 400s counted")
    assert p.total("redirects") == 0
    # What a Location may carry is still redirected on the same proxy.
    got = _one(p.port, b"GET /ok HTTP/1.0\r\nHost: a.example\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 308 ") and b"Location: https://a.example/ok\r\n" in got


def test_absolute_form_and_http10(proxy_factory):
    p = redirect_proxy(proxy_factory, 308)
    # The target's authority overrides Host (RFC 9112 3.2.2).
    got = _one(p.port, b"GET http://abs.example:80/x?y HTTP/1.1\r\nHost: other.example\r\n"
                       b"Connection: close\r\n\r\n")
    assert b"Location: https://abs.example/x?y\r\n" in got, got
    got = _one(p.port, b"GET http://abs.example?q HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
    assert b"Location: https://abs.example/?q\r\n" in got, got
    # HTTP/1.0 keeps the connection only when it asks, and is told so.
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET /k HTTP/1.0\r\nHost: h.example\r\nConnection: keep-alive\r\n\r\n")
        f = s.makefile("rb")
        st, h, _ = read_response(f)
        assert (st, h["location"], h["connection"]) == (308, "https://h.example/k", "keep-alive")
        s.sendall(b"GET /k2 HTTP/1.0\r\nHost: h.example\r\n\r\n")
        st, h, _ = read_response(f)
        assert (st, h["connection"]) == (308, "close")
        assert f.read() == b""


def test_a_request_with_a_body_gets_the_redirect_and_a_close(proxy_factory):
    """Its body is read and dropped by the lingering close, never parsed as
    a next request (which here would be a second answer)."""
    p = redirect_proxy(proxy_factory, 301)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x.example\r\n\r\n"
    for body_head, body in ((b"Content-Length: %d\r\n" % len(smuggled), smuggled),
                            (b"Transfer-Encoding: chunked\r\n",
                             b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled))):
        got = _one(p.port, b"POST /form HTTP/1.1\r\nHost: a.example\r\n" + body_head + b"\r\n" + body)
        assert got.startswith(b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://a.example/form\r\n")
        assert b"Connection: close\r\n" in got
        assert got.count(b"HTTP/1.1 ") == 1, got
    wait_for(lambda: p.total("active") == 0, what="the connections closed")
    assert p.total("redirects") == 2


# ---- the configuration -----------------------------------------------------------

def _parse(listener_lines: str, extra: str = "", mode: str = "http"):
    from uproxy import config
    text = (f'[[listeners]]\nname = "web"\nbind = "127.0.0.1:{free_port()}"\nmode = "{mode}"\n'
            f'{listener_lines}\n{extra}')
    return config.parse(text, "t.toml")


def test_redirect_forms_are_read():
    for value, want in (("true", (308, 443)), ("301", (301, 443)), ("308", (308, 443)),
                        ("{ code = 301, port = 8443 }", (301, 8443)), ("{ port = 4443 }", (308, 4443))):
        lst = _parse(f"redirect_https = {value}").listeners[0]
        assert (lst.redirect.code, lst.redirect.port) == want, value
        assert lst.cluster is None                       # no cluster needed
    assert _parse('redirect_https = false\ncluster = "c"',
                  '[[clusters]]\nname = "c"\nservers = ["127.0.0.1:9"]').listeners[0].redirect is None


REDIRECT_MISTAKES = [   # (what, the listener's lines, its mode, key, words)
    ("a temporary code", "redirect_https = 302", "http", "listeners[0].redirect_https", "301 or 308"),
    ("a code in the table", "redirect_https = { code = 307 }", "http",
     "listeners[0].redirect_https.code", "301 or 308"),
    ("a string", 'redirect_https = "https"', "http", "listeners[0].redirect_https",
     "must be redirect_https = true"),
    ("port 0", "redirect_https = { port = 0 }", "http", "listeners[0].redirect_https.port", "at least 1"),
    ("a typo in the table", "redirect_https = { cod = 301 }", "http",
     "listeners[0].redirect_https.cod", "did you mean 'code'"),
    ("on a tcp listener", "redirect_https = true", "tcp", "listeners[0].redirect_https",
     'needs mode = "http"'),
    ("no cluster and no redirect", "", "http", "listeners[0].cluster", "is required"),
]


@pytest.mark.parametrize("what,lines,mode,key,words", REDIRECT_MISTAKES,
                         ids=[m[0] for m in REDIRECT_MISTAKES])
def test_redirect_mistakes_are_named(what, lines, mode, key, words):
    from uproxy import config
    with pytest.raises(config.ConfigError) as e:
        _parse(lines, mode=mode)
    found = [x for x in e.value.errors if x.key == key]
    assert found, [x.one() for x in e.value.errors]
    assert words in found[0].message, found[0].message


def test_redirect_with_tls_or_routes_is_refused_by_check(pki, tmp_path):
    port = free_port()
    text = (f'[[listeners]]\nname = "https"\nbind = "127.0.0.1:{port}"\nmode = "http"\n'
            f'redirect_https = true\n'
            f'tls = {{ certificates = [{{ cert = "{pki["a_ec"]["cert"]}", key = "{pki["a_ec"]["key"]}" }}] }}\n'
            f'[[listeners]]\nname = "web"\nbind = "127.0.0.1:{free_port()}"\nmode = "http"\n'
            f'redirect_https = 308\n'
            f'[[listeners.routes]]\npath_prefix = "/api/"\ncluster = "c"\n'
            f'[[clusters]]\nname = "c"\nservers = ["127.0.0.1:9"]\n')
    path = tmp_path / "r.toml"
    path.write_text(text)
    r = subprocess.run([sys.executable, "-m", "uproxy", "check", "-c", str(path), "--no-bind"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert f"{path}:5: listeners[0].redirect_https: this listener serves HTTPS already" in out
    assert f"{path}:12: listeners[1].routes: redirect_https answers every request itself" in out
    # Alone, a redirecting listener checks ok without any cluster.
    path.write_text(f'[[listeners]]\nname = "web"\nbind = "127.0.0.1:{port}"\nmode = "http"\n'
                    f'redirect_https = true\n')
    r = subprocess.run([sys.executable, "-m", "uproxy", "check", "-c", str(path), "--no-bind"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
