"""Per-route HTTP policies (issue 16): header edits, X-Forwarded-* and
trusted proxies, redirects, rewrites, access rules and limits, through a
real uproxy process with real clients (raw sockets, curl) and a real
upstream that records what it receives (tests/lib/http_upstream.py)."""
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from http_upstream import HttpUpstream, Response
from support import free_port
from test_http import http_proxy


def ask(port, head: bytes, host="127.0.0.1", body=b""):
    """One request on its own connection: (status, headers (lower-case
    names, in order), body)."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(head + body)
        f = s.makefile("rb")
        line = f.readline()
        status = int(line.split()[1])
        headers = []
        while True:
            l = f.readline()
            if l in (b"\r\n", b""):
                break
            k, v = l.decode("latin-1").split(":", 1)
            headers.append((k.strip().lower(), v.strip()))
        n = int(dict(headers).get("content-length", "0"))
        return status, headers, f.read(n)


def get(port, target="/", extra=b"", host=b"example.com"):
    return ask(port, b"GET " + target.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n" +
               extra + b"Connection: close\r\n\r\n")


def start(proxy_factory, listener, handler=None):
    up = HttpUpstream(handler)
    p = http_proxy(proxy_factory, [up.addr], listener=listener)
    return up, p


def test_request_and_response_headers_set_add_remove(proxy_factory):
    """Listener defaults and a route's own keys together: set replaces the
    client's lines, add adds one, remove drops them; Via, X-Real-IP and an
    RFC 7239 Forwarded on requests; the response edited the same way."""
    up, p = start(proxy_factory, {
        "request_headers": {"set": {"X-Env": "prod"}, "remove": ["X-Debug"]},
        "response_headers": {"remove": ["Server"]},
        "routes": [
            {"path_prefix": "/h", "cluster": "c", "via": True, "x_real_ip": True,
             "forwarded": True,
             "request_headers": {"add": {"X-Added": "1"}, "set": {"Host": "internal.example"}},
             "response_headers": {"set": {"Cache-Control": "no-store"},
                                  "add": {"X-Served-By": "uproxy"}}},
            {"path_prefix": "/", "cluster": "c"},
        ]},
        handler=lambda req: Response(body=b"ok", headers=[("Server", "secret/1.0"),
                                                          ("Cache-Control", "max-age=60")]))
    status, headers, body = get(p.port, "/h/x", b"X-Env: dev\r\nX-Debug: 1\r\nX-Real-IP: 6.6.6.6\r\n"
                                b"Forwarded: for=6.6.6.6\r\nX-Added: 0\r\n")
    assert (status, body) == (200, b"ok")
    req = up.requests[-1]
    assert req.header_lines("X-Env") == ["prod"]
    assert req.header("X-Debug") is None
    assert req.header_lines("X-Added") == ["0", "1"]
    assert req.header_lines("Host") == ["internal.example"]
    assert req.header("Via") == "1.1 uproxy"
    assert req.header_lines("X-Real-IP") == ["127.0.0.1"]
    assert req.header_lines("Forwarded") == ['for=127.0.0.1;proto=http;host="example.com"']
    names = [k for k, _ in headers]
    assert "server" not in names
    assert [v for k, v in headers if k == "cache-control"] == ["no-store"]
    assert dict(headers)["x-served-by"] == "uproxy"
    # The other route has the listener's keys only.
    status, headers, _ = get(p.port, "/other", b"X-Env: dev\r\nX-Debug: 1\r\n")
    req = up.requests[-1]
    assert req.header_lines("X-Env") == ["prod"] and req.header("X-Debug") is None
    assert req.header("Via") is None and req.header("X-Real-IP") is None
    assert "server" not in [k for k, _ in headers]
    assert dict(headers)["cache-control"] == "max-age=60"
    up.close()


def test_x_forwarded_off_and_trusted_proxies(proxy_factory):
    """x_forwarded = false sends none (and drops the client's); with
    trusted_proxies the client's X-Forwarded-For is passed on only from a
    trusted peer, and the real client (for X-Real-IP, access rules and
    rate limits) is its rightmost untrusted address."""
    up, p = start(proxy_factory, {
        "trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"],
        "routes": [
            {"path_prefix": "/off", "cluster": "c", "x_forwarded": False},
            {"path_prefix": "/deny", "cluster": "c", "deny": ["203.0.113.0/24"]},
            {"path_prefix": "/", "cluster": "c", "x_real_ip": True},
        ]})
    get(p.port, "/off", b"X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n")
    req = up.requests[-1]
    assert [h for h in req.headers if h[0].lower().startswith("x-forwarded")] == []
    get(p.port, "/", b"X-Forwarded-For: 198.51.100.7, 10.1.2.3\r\n")
    req = up.requests[-1]
    assert req.header("X-Forwarded-For") == "198.51.100.7, 10.1.2.3, 127.0.0.1"
    assert req.header("X-Real-IP") == "198.51.100.7"
    status, _, _ = get(p.port, "/deny", b"X-Forwarded-For: 203.0.113.9\r\n")
    assert status == 403
    status, _, _ = get(p.port, "/deny", b"X-Forwarded-For: 198.51.100.7\r\n")
    assert status == 200
    up.close()
    # A peer that is not trusted: its X-Forwarded-For is its own invention.
    up, p = start(proxy_factory, {"trusted_proxies": ["10.0.0.0/8"], "x_real_ip": True})
    get(p.port, "/", b"X-Forwarded-For: 198.51.100.7\r\n")
    req = up.requests[-1]
    assert req.header("X-Forwarded-For") == "127.0.0.1"
    assert req.header("X-Real-IP") == "127.0.0.1"
    up.close()


def test_redirects_by_scheme_host_and_path_prefix(proxy_factory):
    up, p = start(proxy_factory, {"routes": [
        {"path_prefix": "/old/", "cluster": "c",
         "redirect": {"code": 301, "path_prefix": "/new/"}},
        {"host": "old.example", "cluster": "c",
         "redirect": {"code": 308, "scheme": "https", "host": "new.example"}},
        {"path_prefix": "/secure", "cluster": "c", "redirect": {"scheme": "https"}},
        {"path_prefix": "/tmp", "cluster": "c",
         "redirect": {"code": 307, "host": "other.example:8443"}},
    ]})
    cases = [
        ("/old/a/b?x=1", b"example.com:8080", 301, "http://example.com:8080/new/a/b?x=1"),
        ("/z?q", b"old.example", 308, "https://new.example/z?q"),
        ("/secure/p", b"example.com:8080", 302, "https://example.com/secure/p"),
        ("/tmp/", b"example.com", 307, "http://other.example:8443/tmp/"),
    ]
    for target, host, code, location in cases:
        status, headers, _ = get(p.port, target, host=host)
        assert (status, dict(headers).get("location")) == (code, location), target
    assert not up.requests, "a redirect asks no upstream"
    # Keep-alive: two redirects on one connection.
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET /old/1 HTTP/1.1\r\nHost: h\r\n\r\nGET /old/2 HTTP/1.1\r\nHost: h\r\n\r\n")
        data = b""
        while data.count(b"Location:") < 2:
            b = s.recv(4096)
            assert b, data
            data += b
    assert b"Location: http://h/new/1\r\n" in data and b"Location: http://h/new/2\r\n" in data
    up.close()


def test_rewrites_strip_add_replace_and_regex(proxy_factory):
    up, p = start(proxy_factory, {"routes": [
        {"path_prefix": "/api/", "cluster": "c", "rewrite": {"strip_prefix": "/api"}},
        {"path_prefix": "/app", "cluster": "c",
         "rewrite": {"strip_prefix": "/app", "add_prefix": "/v2"}},
        {"path_prefix": "/fixed", "cluster": "c", "rewrite": {"replace_path": "/index.html"}},
        {"path_prefix": "/user/", "cluster": "c",
         "rewrite": {"regex": r"^/user/(\d+)/(\w+)$", "replacement": "/u/$2?id=$1&x=${1}"}},
    ]})
    cases = [("/api/items?page=2", "/items?page=2"), ("/api/", "/"),
             ("/app", "/v2/"), ("/app/x/y", "/v2/x/y"),
             ("/fixed/anything?q=1", "/index.html?q=1"),
             ("/user/42/profile", "/u/profile?id=42&x=42"), ("/user/abc", "/user/abc")]
    for sent, seen in cases:
        status, _, _ = get(p.port, sent)
        assert status == 200
        assert up.requests[-1].target == seen, sent
    # An absolute-form target keeps its scheme and authority.
    status, _, _ = ask(p.port, b"GET http://example.com/api/z HTTP/1.1\r\nHost: example.com\r\n"
                       b"Connection: close\r\n\r\n")
    assert status == 200 and up.requests[-1].target == "http://example.com/z"
    # A rewrite that grows past the room for a request line: 414, not a cut target.
    status, _, _ = get(p.port, "/app/" + "a" * 1500)
    assert status == 414
    up.close()


def test_allow_and_deny_by_network(proxy_factory):
    up, p = start(proxy_factory, {"routes": [
        {"path_prefix": "/lan", "cluster": "c", "allow": ["10.0.0.0/8", "192.168.0.0/16"]},
        {"path_prefix": "/local", "cluster": "c", "allow": ["127.0.0.0/8"],
         "deny": ["127.0.0.2"]},
        {"path_prefix": "/", "cluster": "c"},
    ]})
    assert get(p.port, "/lan")[0] == 403
    assert get(p.port, "/local")[0] == 200
    with socket.create_connection(("127.0.0.1", p.port), timeout=5,
                                  source_address=("127.0.0.2", 0)) as s:
        s.sendall(b"GET /local HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 403 ")
    assert [r.target for r in up.requests] == ["/local"]
    up.close()


def test_allow_ipv6_client(proxy_factory):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    up = HttpUpstream()
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"[::1]:{port}", "mode": "http", "cluster": "c",
                        "routes": [{"path_prefix": "/v6", "cluster": "c", "allow": ["::1/128"]},
                                   {"path_prefix": "/", "cluster": "c", "deny": ["::/0"]}]}],
                      [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1})
    assert ask(port, b"GET /v6 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", host="::1")[0] == 200
    assert ask(port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", host="::1")[0] == 403
    up.close()


def test_rate_limit_per_client_with_burst_and_retry_after(proxy_factory):
    up, p = start(proxy_factory, {"routes": [
        {"path_prefix": "/limited", "cluster": "c", "rate_limit": {"rate": 2, "burst": 3}},
        {"path_prefix": "/", "cluster": "c"}]})
    got = [get(p.port, "/limited") for _ in range(5)]
    statuses = [g[0] for g in got]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429], statuses
    assert dict(got[3][1])["retry-after"] == "1"
    assert get(p.port, "/free")[0] == 200              # another route: no limit
    # Another client address has its own bucket.
    with socket.create_connection(("127.0.0.1", p.port), timeout=5,
                                  source_address=("127.0.0.3", 0)) as s:
        s.sendall(b"GET /limited HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    time.sleep(0.6)                                     # 2 per second: one token back
    assert get(p.port, "/limited")[0] == 200
    assert get(p.port, "/limited")[0] == 429
    up.close()


def test_max_body_size_per_route(proxy_factory):
    up, p = start(proxy_factory, {"max_body_size": "1m", "routes": [
        {"path_prefix": "/small", "cluster": "c", "max_body_size": 100},
        {"path_prefix": "/", "cluster": "c"}]},
        handler=lambda req: Response(body=b"took %d" % req.body_len))
    post = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    assert ask(p.port, post % (b"/small", 101), body=b"x" * 101)[0] == 413
    assert ask(p.port, post % (b"/small", 100), body=b"x" * 100)[:3:2] == (200, b"took 100")
    assert ask(p.port, post % (b"/big", 5000), body=b"x" * 5000)[:3:2] == (200, b"took 5000")
    assert not [r for r in up.requests if r.body_len == 101]
    up.close()


def test_max_in_flight_per_route(proxy_factory):
    release = threading.Event()

    def handler(req):
        if req.target == "/slow":
            release.wait(5)
        return Response(body=b"done")
    up, p = start(proxy_factory, {"routes": [
        {"path_prefix": "/slow", "cluster": "c", "max_in_flight": 1},
        {"path_prefix": "/", "cluster": "c"}]}, handler=handler)
    first = []
    t = threading.Thread(target=lambda: first.append(get(p.port, "/slow")))
    t.start()
    deadline = time.monotonic() + 5
    while not [c for c in up.conns] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert get(p.port, "/slow")[0] == 503               # the one allowed is under way
    assert get(p.port, "/other")[0] == 200
    release.set()
    t.join(5)
    assert first and first[0][0] == 200
    assert get(p.port, "/slow")[0] == 200               # given back when it ended
    up.close()


def test_curl_through_a_route_with_every_policy(proxy_factory):
    """A real client (curl) through the common set at once."""
    curl = shutil.which("curl")
    if not curl:
        pytest.skip("curl is not installed")
    up, p = start(proxy_factory, {"routes": [
        {"path_prefix": "/api/", "cluster": "c", "allow": ["127.0.0.0/8"],
         "rate_limit": {"rate": 1000, "burst": 100}, "rewrite": {"strip_prefix": "/api"},
         "request_headers": {"set": {"X-Env": "prod"}},
         "response_headers": {"add": {"X-Served-By": "uproxy"}}}]})
    out = subprocess.run([curl, "-s", "-i", f"{p.url}/api/v1/items"], capture_output=True,
                         timeout=10).stdout
    assert out.startswith(b"HTTP/1.1 200") and b"X-Served-By: uproxy" in out
    assert up.requests[-1].target == "/v1/items" and up.requests[-1].header("X-Env") == "prod"
    up.close()


# ---- what `uproxy check` says ----------------------------------------------------

def _check(tmp_path, listener_extra: str, route_extra: str = "") -> str:
    cfg = tmp_path / "u.toml"
    cfg.write_text(f"""
[[clusters]]
name = "c"
servers = ["127.0.0.1:9"]

[[listeners]]
name = "web"
bind = "127.0.0.1:{free_port()}"
mode = "http"
cluster = "c"
{listener_extra}

[[listeners.routes]]
path_prefix = "/r/"
cluster = "c"
{route_extra}
""")
    r = subprocess.run([sys.executable, "-m", "uproxy", "check", "--no-bind", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    return r.stderr if r.returncode else ""


@pytest.mark.parametrize("listener_extra,route_extra,expect", [
    ("", 'rewrite = { regex = "^/(a", replacement = "/$1" }',
     "listeners[0].routes[0].rewrite.regex: the regex does not compile: missing closing parenthesis"),
    ("", 'rewrite = { regex = "^/(a)", replacement = "/$2" }',
     "routes[0].rewrite.replacement: the replacement names $2, but the regex has 1 capture group"),
    ('request_headers = { set = { "X Bad" = "v" } }', "",
     "listeners[0].request_headers.set.X Bad: 'X Bad' is not a header name"),
    ("", 'response_headers = { remove = ["Content-Length"] }',
     "Content-Length is the proxy's to write"),
    ("", 'request_headers = { add = { X-Forwarded-For = "1.2.3.4" } }',
     "use x_forwarded = false"),
    ("", 'request_headers = { set = { X-A = "a\\r\\nb" } }', "control characters"),
    ("", 'allow = ["10.0.0.300/8"]', "routes[0].allow[0]: '10.0.0.300/8' is not a network"),
    ("", "rate_limit = { burst = 5 }", "routes[0].rate_limit.rate: is required"),
    ("", "redirect = { code = 303, scheme = \"https\" }", "must be 301, 302, 307 or 308"),
    ("", "trusted_proxies = [\"10.0.0.0/8\"]", "it goes on the listener"),
    ("", 'rewrite = { replace_path = "/x", strip_prefix = "/r" }', "give it alone"),
    ("", 'basic_auth = { htpasswd = "/nonexistent/htpasswd" }',
     "routes[0].basic_auth.htpasswd: cannot read /nonexistent/htpasswd: No such file"),
    ("", 'basic_auth = { realm = "x" }', "routes[0].basic_auth.htpasswd: is required"),
    ("", 'error_pages = { "5xx" = "/nonexistent.html" }',
     "routes[0].error_pages.5xx: cannot read /nonexistent.html"),
    ('error_pages = { "429" = "x.html" }', "", "429 cannot have a page: the codes a page can replace are 400, 403"),
    ('error_pages = { "3xx" = "x.html" }', "", "is not a status class"),
    ('proxy_protocol = "yes"', "", "listeners[0].proxy_protocol: must be true or false"),
])
def test_check_names_the_key_and_the_problem(tmp_path, listener_extra, route_extra, expect):
    err = _check(tmp_path, listener_extra, route_extra)
    assert expect in err, err


def test_check_refuses_an_htpasswd_it_cannot_verify(tmp_path):
    f = tmp_path / "htpasswd"
    f.write_text("alice:$apr1$abc$def\nbob\n")
    err = _check(tmp_path, "", f'basic_auth = {{ htpasswd = "{f}" }}')
    assert "htpasswd:1: alice's hash is not bcrypt" in err and "htpasswd:2: not a user:hash line" in err


def test_check_accepts_every_policy_key(tmp_path):
    err = _check(tmp_path, 'via = "edge-1"\nx_forwarded = true\ntrusted_proxies = ["10.0.0.0/8"]\n'
                 'response_headers = { remove = ["Server"] }',
                 'request_headers = { set = { Host = "in" }, add = { X-A = "1" }, remove = ["X-B"] }\n'
                 'forwarded = true\nx_real_ip = true\nallow = ["10.0.0.0/8", "::1"]\n'
                 'deny = ["10.9.0.0/16"]\nrate_limit = { rate = 0.5 }\nmax_in_flight = 4\n'
                 'max_body_size = "1m"\nrewrite = { regex = "^/r/(.*)$", replacement = "/$1" }')
    assert err == ""


def _bcrypt(password: str) -> str:
    """A bcrypt hash as `htpasswd -B` writes it ($2y$), made with libcrypt
    (Python's crypt module) when the test has it."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            pytest.skip("Python's crypt module (libcrypt) is not here to make a bcrypt hash")
    h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 10))
    if not h or not h.startswith("$2b$"):
        pytest.skip(f"libcrypt made no bcrypt hash here ({h!r})")
    return "$2y$" + h[4:]


def test_basic_auth_against_htpasswd_cached_per_credential(proxy_factory, tmp_path):
    """401 with WWW-Authenticate without (or with wrong) credentials; the
    right ones pass. bcrypt runs once per credential: a keep-alive client's
    later requests are answered far faster than one bcrypt check."""
    import base64
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"# users\nalice:{_bcrypt('wonderland')}\nbob:{_bcrypt('builder')}\n")
    up, p = start(proxy_factory, {"routes": [
        {"path_prefix": "/private", "cluster": "c",
         "basic_auth": {"htpasswd": str(htpasswd), "realm": "Staff"}},
        {"path_prefix": "/", "cluster": "c"}]})

    def auth(user, pw):
        return b"Authorization: Basic " + base64.b64encode(f"{user}:{pw}".encode()) + b"\r\n"
    status, headers, _ = get(p.port, "/private/x")
    assert status == 401 and dict(headers)["www-authenticate"].startswith('Basic realm="Staff"')
    assert get(p.port, "/private/x", auth("alice", "wrong"))[0] == 401
    assert get(p.port, "/private/x", auth("carol", "wonderland"))[0] == 401
    assert get(p.port, "/private/x", b"Authorization: Basic !!!\r\n")[0] == 401
    assert get(p.port, "/private/x", auth("bob", "builder"))[0] == 200
    assert get(p.port, "/public")[0] == 200
    assert [r.target for r in up.requests] == ["/private/x", "/public"]
    # Keep-alive: the first request pays bcrypt (cost 10: milliseconds),
    # the next ones find the credential in the worker's cache.
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        f = s.makefile("rb")
        times = []
        for i in range(6):
            t0 = time.perf_counter()
            s.sendall(b"GET /private/%d HTTP/1.1\r\nHost: x\r\n" % i + auth("alice", "wonderland") + b"\r\n")
            assert f.readline().startswith(b"HTTP/1.1 200"), i
            while f.readline() != b"\r\n":
                pass
            f.read(len(b"ok /private/%d" % i))
            times.append(time.perf_counter() - t0)
    first, rest = times[0], min(times[1:])
    print(f"basic auth: first request {first * 1000:.1f} ms, cached {rest * 1000:.2f} ms")
    assert first > 3 * rest, times
    up.close()


def test_error_pages_replace_the_proxys_own_answers(proxy_factory, tmp_path):
    """A listener's 5xx page for a dead upstream, a route's own 403 (its
    code) and 4xx (its class) pages; the status and the close stay."""
    (tmp_path / "5xx.html").write_text("<h1>We are down</h1>\n")
    (tmp_path / "denied.json").write_text('{"error": "denied"}')
    (tmp_path / "4xx.txt").write_text("your fault\n")
    dead = free_port()
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                        "error_pages": {"5xx": str(tmp_path / "5xx.html")},
                        "routes": [{"path_prefix": "/lan", "cluster": "c", "allow": ["10.0.0.0/8"],
                                    "max_body_size": 10,
                                    "error_pages": {"403": str(tmp_path / "denied.json"),
                                                    "4xx": str(tmp_path / "4xx.txt")}}]}],
                      [{"name": "c", "servers": [f"127.0.0.1:{dead}"]}], proxy={"workers": 1})
    status, headers, body = get(port, "/x")
    assert (status, body) == (502, b"<h1>We are down</h1>\n")
    assert dict(headers)["content-type"] == "text/html; charset=utf-8"
    assert dict(headers)["connection"] == "close"
    status, headers, body = get(port, "/lan")
    assert (status, body, dict(headers)["content-type"]) == (403, b'{"error": "denied"}',
                                                             "application/json")
    # Without an error page of its own, a route's 413 is the class's page.
    port2 = free_port()
    proxy_factory([{"name": "web2", "bind": f"127.0.0.1:{port2}", "mode": "http",
                         "cluster": "c", "error_pages": {"4xx": str(tmp_path / "4xx.txt")},
                         "routes": [{"path_prefix": "/", "cluster": "c", "max_body_size": 10}]}],
                       [{"name": "c", "servers": [f"127.0.0.1:{dead}"]}], proxy={"workers": 1})
    status, _, body = ask(port2, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n",
                          body=b"x" * 11)
    assert (status, body) == (413, b"your fault\n")


# ---- PROXY protocol (receive) -------------------------------------------------

def _v2(cmd=1, fam=0x11, addr=b"", tlv=b""):
    import struct
    body = addr + tlv
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | cmd, fam]) + struct.pack("!H", len(body))
            + body)


def test_proxy_protocol_v1_and_v2_name_the_client(proxy_factory):
    """A listener behind a load balancer: the PROXY header (text v1 or
    binary v2, in one piece or split) names the client, which X-Forwarded-For,
    X-Real-IP and the access rules then use; a LOCAL header or UNKNOWN keeps
    the connection's own address; a connection without a header is closed
    unanswered."""
    import ipaddress
    import struct
    up, p = start(proxy_factory, {"proxy_protocol": True, "x_real_ip": True, "routes": [
        {"path_prefix": "/lan", "cluster": "c", "allow": ["192.0.2.0/24"]},
        {"path_prefix": "/", "cluster": "c"}]})
    req = b"GET /lan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    def send(*pieces):
        with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
            for piece in pieces:
                s.sendall(piece)
                time.sleep(0.05)
            out = b""
            while (b := s.recv(65536)):
                out += b
            return out
    assert send(b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 80\r\n" + req).startswith(b"HTTP/1.1 200")
    assert up.requests[-1].header("x-forwarded-for") == "192.0.2.7"
    assert up.requests[-1].header("x-real-ip") == "192.0.2.7"
    v6 = ipaddress.ip_address("2001:db8::5").packed + ipaddress.ip_address("2001:db8::1").packed
    hdr = _v2(fam=0x21, addr=v6 + struct.pack("!HH", 40000, 443), tlv=b"\x04\x00\x01x")
    assert send(hdr[:7], hdr[7:20], hdr[20:] + req).startswith(b"HTTP/1.1 403")
    out = send(hdr + req.replace(b"/lan", b"/any"))
    assert out.startswith(b"HTTP/1.1 200") and up.requests[-1].header("x-real-ip") == "2001:db8::5"
    v4 = bytes([192, 0, 2, 9, 10, 0, 0, 1]) + struct.pack("!HH", 1234, 80)
    assert send(_v2(addr=v4) + req).startswith(b"HTTP/1.1 200")
    assert up.requests[-1].header("x-real-ip") == "192.0.2.9"
    assert send(_v2(cmd=0, fam=0) + req).startswith(b"HTTP/1.1 403")           # LOCAL
    assert send(b"PROXY UNKNOWN\r\n" + req).startswith(b"HTTP/1.1 403")
    n = len(up.requests)
    assert send(req) == b""                                                      # no header
    assert send(b"PROXY TCP4 300.0.2.7 198.51.100.1 51000 80\r\n" + req) == b""
    assert len(up.requests) == n
    up.close()


def test_request_policies_apply_to_http2_streams(proxy_factory):
    """An HTTP/2 stream is a transaction like an HTTP/1.1 request: header
    edits, a rewrite, access rules and a redirect apply to it (h2c, curl)."""
    curl = shutil.which("curl")
    if not curl or b"HTTP2" not in subprocess.run([curl, "-V"], capture_output=True).stdout:
        pytest.skip("curl with HTTP/2 is not installed")
    up, p = start(proxy_factory, {"http2": True, "routes": [
        {"path_prefix": "/old/", "cluster": "c", "redirect": {"code": 308, "path_prefix": "/new/"}},
        {"path_prefix": "/lan", "cluster": "c", "allow": ["10.0.0.0/8"]},
        {"path_prefix": "/api/", "cluster": "c", "rewrite": {"strip_prefix": "/api"},
         "request_headers": {"set": {"X-Env": "prod"}}, "forwarded": True}]})

    def h2(path):
        r = subprocess.run([curl, "-s", "-i", "--http2-prior-knowledge", f"{p.url}{path}"],
                           capture_output=True, timeout=10)
        return r.stdout
    out = h2("/api/items?x=1")
    assert out.startswith(b"HTTP/2 200"), out[:200]
    req = up.requests[-1]
    assert req.target == "/items?x=1" and req.header("X-Env") == "prod"
    assert req.header("Forwarded").startswith("for=127.0.0.1;proto=http")
    out = h2("/old/a?b")
    assert out.startswith(b"HTTP/2 308") and b"location: http://127.0.0.1:%d/new/a?b" % p.port in out, out
    assert h2("/lan").startswith(b"HTTP/2 403")
    assert [r.target for r in up.requests] == ["/items?x=1"]
    up.close()
