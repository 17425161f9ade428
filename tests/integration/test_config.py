"""One test per kind of configuration mistake: `uproxy check` names the
file, the line, the key path and the problem, and exits 2; `uproxy run`
refuses the same way and starts nothing. Every mistake of a file is
reported at once, each at the line where it is written (tests/integration/test_cli.py
has the command's side: output format, listen addresses, reload)."""
import os
import socket
import subprocess
import sys

import pytest

from support import ROOT, free_port

GOOD = """
[proxy]
workers = 1

[[listeners]]
name = "db"
bind = "127.0.0.1:{port}"
mode = "tcp"
cluster = "pg"

[[clusters]]
name = "pg"
servers = ["127.0.0.1:5432", "127.0.0.1:5433"]
balance = "round_robin"
"""


def uproxy(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "uproxy", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


def check(tmp_path, text):
    p = tmp_path / "uproxy.toml"
    p.write_text(text)
    r = uproxy("check", "-c", str(p))
    return r.returncode, r.stdout + r.stderr, str(p)


def good(**subst):
    return GOOD.replace("{port}", str(subst.get("port", free_port())))


def test_good_config_passes(tmp_path):
    code, out, path = check(tmp_path, good())
    assert code == 0, out
    assert "ok" in out and "1 listeners" in out


MISTAKES = [
    # (what is wrong, how to break the good file, key path, words in the message)
    ("not TOML", lambda t: t + "\n[[listeners\n", "", "not valid TOML"),
    ("no listeners", lambda t: t.split("[[listeners]]")[0] + "[[clusters]]" + t.split("[[clusters]]")[1],
     "listeners", "at least one"),
    ("missing bind", lambda t: t.replace('bind = "127.0.0.1:', '# bind = "'), "listeners[0].bind", "is required"),
    ("bind not host:port", lambda t: t.replace('bind = "127.0.0.1:', 'bind = "127.0.0.1;'),
     "listeners[0].bind", "host:port"),
    ("bind port out of range", lambda t: t.replace(':{p}"', ':70000"'), "listeners[0].bind", "between 1 and 65535"),
    ("bind to a name", lambda t: t.replace('bind = "127.0.0.1:', 'bind = "localhost:'),
     "listeners[0].bind", "IP address"),
    ("unknown cluster", lambda t: t.replace('cluster = "pg"', 'cluster = "pgx"'),
     "listeners[0].cluster", "no cluster named 'pgx'"),
    ("unknown mode", lambda t: t.replace('mode = "tcp"', 'mode = "udp"'), "listeners[0].mode", "'tcp'"),
    ("empty servers", lambda t: t.replace('servers = ["127.0.0.1:5432", "127.0.0.1:5433"]', "servers = []"),
     "clusters[0].servers", "at least one server"),
    ("server without port", lambda t: t.replace('"127.0.0.1:5433"', '"127.0.0.1"'),
     "clusters[0].servers[1]", "host:port"),
    ("unresolvable server", lambda t: t.replace('"127.0.0.1:5433"', '"no-such-host.invalid:80"'),
     "clusters[0].servers[1]", "cannot resolve"),
    ("unknown balance", lambda t: t.replace('"round_robin"', '"random"'), "clusters[0].balance", "not one of"),
    ("unknown upstream protocol", lambda t: t.replace('balance = "round_robin"', 'protocol = "h3"'),
     "clusters[0].protocol", "not one of"),
    ("stream limit without h2", lambda t: t.replace('balance = "round_robin"', 'max_streams_per_connection = 10'),
     "clusters[0].max_streams_per_connection", 'protocol = "h2"'),
    ("PROXY header on a multiplexed upstream",
     lambda t: t.replace('balance = "round_robin"', 'protocol = "h2"\nproxy_protocol = "v2"'),
     "clusters[0].proxy_protocol", "many clients"),
    ("stream limit out of range",
     lambda t: t.replace('balance = "round_robin"', 'protocol = "h2"\nmax_streams_per_connection = 0'),
     "clusters[0].max_streams_per_connection", "at least 1"),
    ("typo in a key", lambda t: t.replace("balance =", "balanse ="), "clusters[0].balanse",
     "did you mean 'balance'"),
    ("unknown section", lambda t: t + "\n[proxyy]\nworkers = 2\n", "proxyy", "unknown table [proxyy]; did you mean [proxy]?"),
    ("wrong type", lambda t: t.replace("workers = 1", 'workers = "two"'), "proxy.workers", "integer"),
    ("workers zero", lambda t: t.replace("workers = 1", "workers = 0"), "proxy.workers", "at least 1"),
    ("bad duration", lambda t: t.replace('balance = "round_robin"', 'connect_timeout = "5 parsecs"'),
     "clusters[0].connect_timeout", "duration"),
    ("unknown feature", lambda t: t.replace("workers = 1", 'workers = 1\ndisable_features = ["multishot_acept"]'),
     "proxy.disable_features[0]", "did you mean 'multishot_accept'"),
    ("buffers not a power of two", lambda t: t.replace("workers = 1", "workers = 1\nbuffers = 1000"),
     "proxy.buffers", "power of two"),
    ("listeners as a table", lambda t: t.replace("[[listeners]]", "[listeners]"), "listeners",
     "array of tables"),
    ("duplicate cluster", lambda t: t + '\n[[clusters]]\nname = "pg"\nservers = ["127.0.0.1:1"]\n',
     "clusters[1].name", "defined twice"),
    ("duplicate listener bind", lambda t: t + '\n[[listeners]]\nname = "db2"\nbind = "127.0.0.1:{p}"\ncluster = "pg"\n',
     "listeners[1].bind", "already bound"),
    ("admin on a listener's address", lambda t: t + '\n[admin]\nbind = "127.0.0.1:{p}"\n',
     "admin.bind", "also listener"),
    ("sockmap send buffer on a spliced listener",
     lambda t: t.replace('cluster = "pg"\n\n', 'cluster = "pg"\nsockmap_send_buffer = "16m"\n\n', 1),
     "listeners[0].sockmap_send_buffer", 'forwarding = "sockmap"'),
    ("sockmap send buffer not a size",
     lambda t: t.replace('cluster = "pg"\n\n',
                         'cluster = "pg"\nforwarding = "sockmap"\nsockmap_send_buffer = "lots"\n\n', 1),
     "listeners[0].sockmap_send_buffer", "is not a size"),
    ("sockmap send buffer too large",
     lambda t: t.replace('cluster = "pg"\n\n',
                         'cluster = "pg"\nforwarding = "sockmap"\nsockmap_send_buffer = "2g"\n\n', 1),
     "listeners[0].sockmap_send_buffer", "between 0 and"),
]


@pytest.mark.parametrize("what,breaks,key,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_named(tmp_path, what, breaks, key, words):
    port = free_port()
    text = breaks(GOOD.replace("{port}", "{p}")).replace("{p}", str(port))
    code, out, path = check(tmp_path, text)
    assert code == 2, f"{what}: exit {code}\n{out}"
    assert path in out, out
    if key:
        assert f": {key}: " in out, f"{what}: key path {key!r} not named in:\n{out}"
    assert words in out, f"{what}: {words!r} not in:\n{out}"
    assert "Traceback" not in out


def test_missing_file(tmp_path):
    r = uproxy("check", "-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "cannot read the file" in r.stderr


def test_run_refuses_a_bad_config_and_starts_nothing(tmp_path):
    p = tmp_path / "bad.toml"
    port = free_port()
    p.write_text(good(port=port).replace('cluster = "pg"', 'cluster = "nope"'))
    r = uproxy("run", "-c", str(p))
    assert r.returncode == 2
    assert "listeners[0].cluster" in r.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_run_names_a_port_in_use(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    p = tmp_path / "busy.toml"
    p.write_text(good(port=port))
    try:
        r = uproxy("run", "-c", str(p))
    finally:
        busy.close()
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in r.stderr and "in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_env_disable_unknown_feature(tmp_path):
    p = tmp_path / "ok.toml"
    p.write_text(good())
    r = subprocess.run([sys.executable, "-m", "uproxy", "run", "-c", str(p)], capture_output=True,
                       text=True, cwd=ROOT, timeout=30, env={**os.environ, "UPROXY_DISABLE": "bogus"})
    assert r.returncode == 1 and "UPROXY_DISABLE" in r.stderr and "bogus" in r.stderr


def test_kernel_too_old_message():
    from uproxy.features import kernel_too_old
    assert kernel_too_old("6.1.0-27-amd64") is None
    assert kernel_too_old("5.15.0-91-generic") is None
    msg = kernel_too_old("5.10.0-28-amd64")
    assert "5.15" in msg and "5.10.0-28-amd64" in msg and "Upgrade" in msg


def test_unknown_user_is_named(tmp_path):
    code, out, _ = check(tmp_path, good().replace("workers = 1", 'workers = 1\nuser = "no-such-user-x"'))
    assert code == 2 and "proxy.user" in out and "no user named" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="binding port 80 and dropping privileges need root")
def test_binds_a_privileged_port_then_runs_unprivileged(tmp_path):
    import pwd
    from support import Proxy, Server, echo
    up = Server(echo)
    # A privileged port that is free here.
    port = next(p for p in range(700, 1000) if socket.socket().connect_ex(("127.0.0.1", p)) != 0)
    cfg = (f'[proxy]\nworkers = 1\nuser = "nobody"\n\n[[listeners]]\nname = "l"\n'
           f'bind = "127.0.0.1:{port}"\nmode = "tcp"\ncluster = "c"\n\n[[clusters]]\nname = "c"\n'
           f'servers = ["{up.addr}"]\n')
    p = Proxy(tmp_path, cfg)
    try:
        with open(f"/proc/{p.pid}/status") as f:
            uids = next(l for l in f if l.startswith("Uid:")).split()[1:]
        nobody = pwd.getpwnam("nobody").pw_uid
        assert all(int(u) == nobody for u in uids), uids
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"hi")
            assert s.recv(2) == b"hi"
        assert "dropped privileges to user nobody" in p.output()
    finally:
        assert p.stop() == 0
        up.close()


# ---- every mistake, each where it is written ------------------------------------------

POSITIONS = '''# a comment with [[brackets]] and key = "value"
[proxy]
workers = 2   # "quoted" in a comment
disable_features = [
  "buf_ring",  # ] in a comment
  'multishot_recv',
]
note = """a multi-line string
[[listeners]]
bind = "not a table header nor a key"
"""

[[listeners]]
name = "a"
"bind" = "127.0.0.1:1"
routes = [ { host = "x", cluster = "c" },
           { path_prefix = "/p", cluster = "c" } ]

[[listeners]]
name = "b"
a.b.c = 1979-05-27 07:32:00

[[listeners.routes]]
host = "y"

[[listeners.routes]]
host = "z"

[[clusters]]
name = "c"
servers = ["127.0.0.1:1", { address = "127.0.0.1:2", weight = 3 }]
[clusters.health]
path = "/h"
'''


@pytest.mark.parametrize("key,line", [
    ("proxy", 2), ("proxy.workers", 3), ("proxy.disable_features", 4),
    ("proxy.disable_features[1]", 6), ("proxy.note", 8),
    ("listeners", 13), ("listeners[0]", 13), ("listeners[0].bind", 15),
    ("listeners[0].routes[0].cluster", 16), ("listeners[0].routes[1].path_prefix", 17),
    ("listeners[1]", 19), ("listeners[1].a.b.c", 21), ("listeners[1].routes[0].host", 24),
    ("listeners[1].routes[1]", 26), ("listeners[1].routes[1].host", 27),
    ("clusters[0].servers[1].weight", 31), ("clusters[0].health.path", 33),
    # Not written: the nearest table that is (a missing key's table header).
    ("listeners[1].bind", 19), ("clusters[0].health.timeout", 32), ("admin.bind", None),
])
def test_positions(key, line):
    import tomllib
    from uproxy.config import Positions
    tomllib.loads(POSITIONS)             # it is valid TOML
    p = Positions(POSITIONS)
    assert p.line_of(key) == line, (key, p.line_of(key))


def test_positions_never_fail():
    from uproxy.config import Positions
    for text in ("", "[", 'a = """', "x = [1, 2", "[[a]]\nb = {", "= 1"):
        assert Positions(text).line_of("a.b") in (None, 1)


def test_parse_collects_every_mistake():
    from uproxy.config import ConfigError, parse
    text = good(port=80).replace("workers = 1", "workers = 0\nbuffers = 1000") \
        .replace('mode = "tcp"', 'mode = "udp"').replace("balance =", "balanse =")
    with pytest.raises(ConfigError) as ei:
        parse(text, "/x.toml")
    e = ei.value
    got = [(x.line, x.key) for x in e.errors]
    assert got == [(3, "proxy.workers"), (4, "proxy.buffers"), (9, "listeners[0].mode"),
                   (15, "clusters[0].balanse")], got
    assert e.errors[2].snippet == 'mode = "udp"'
    assert str(e).startswith("4 errors: /x.toml:3: proxy.workers: must be at least 1 (got 0); ")
    # The first one's attributes, as a single ConfigError has them.
    assert (e.path, e.line, e.key) == ("/x.toml", 3, "proxy.workers")


def test_a_wrong_cluster_is_not_blamed_on_its_listener(tmp_path):
    """One mistake in a cluster is one error: the listener that names the
    cluster is not reported as pointing at nothing."""
    code, out, path = check(tmp_path, good().replace('"127.0.0.1:5433"', '"127.0.0.1"'))
    assert code == 2 and "1 configuration error" in out, out
    assert "no cluster named" not in out


def test_run_logs_every_mistake(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(good().replace("workers = 1", "workers = 0").replace('cluster = "pg"', 'cluster = "pgg"'))
    r = uproxy("run", "-c", str(p))
    assert r.returncode == 2
    assert f"configuration error: {p}:3: proxy.workers: must be at least 1" in r.stderr
    assert (f"configuration error: {p}:9: listeners[0].cluster: no cluster named 'pgg' "
            f"(clusters: pg); did you mean 'pg'?") in r.stderr


TRICKY = r'''
a = "x \" [[y]] = z"   # a string with what looks like TOML in it
b = 'lit # not a comment'
c = """
multi "" quotes \""" still in it
[[not_a_table]]
"""
d = """ends with quotes"""""
e = [[1, 2], [3, [4]]]
f = { g = { h = 1 }, i = [ { j = 2 } ] }
"quoted key" = 1
'k.l' = 2
m.n = 3

[t]
u = 1979-05-27T07:32:00Z
v = -inf
w = +1_000
z = [
  { p = 1 },  # comment ]
  { q = 2 },
]

[[arr]]
x = 1
[arr.sub]
y = 2
[[arr]]
x = 3
[[arr.more]]
r = 4
'''


def _paths(v, prefix=""):
    if isinstance(v, dict):
        for k, x in v.items():
            p = f"{prefix}.{k}" if prefix else k
            yield p, k
            yield from _paths(x, p)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield f"{prefix}[{i}]", None
            yield from _paths(x, f"{prefix}[{i}]")


@pytest.mark.parametrize("name", ["tricky", "positions", "demo", "good"])
def test_positions_know_every_key(name):
    """Every key and element tomllib reads has its own line, and the line
    names the key."""
    import tomllib
    from uproxy.config import Positions
    text = {"tricky": TRICKY, "positions": POSITIONS, "good": GOOD.replace("{port}", "1"),
            "demo": open(os.path.join(ROOT, "examples", "demo.toml")).read()}[name]
    p = Positions(text)
    paths = list(_paths(tomllib.loads(text)))
    assert len(paths) > 10
    for path, key in paths:
        assert path in p.at, f"{path} has no line"
        if key is not None:
            assert key.split(".")[0] in p.snippet(p.at[path]), (path, p.snippet(p.at[path]))
    if name == "tricky":
        lines = TRICKY.split("\n")
        assert p.at["arr[1].more[0].r"] == lines.index("r = 4") + 1
        assert p.at["t.z[1].q"] == lines.index("  { q = 2 },") + 1
        assert "not_a_table" not in p.at


# ---- issue 16: header field limits and method policies (HTTP listeners) -------------

HTTP_GOOD = """
[proxy]
workers = 1

[[listeners]]
name = "web"
bind = "127.0.0.1:{p}"
mode = "http"
cluster = "app"
max_header_fields = 200
methods = ["GET", "POST"]

[[listeners.routes]]
path_prefix = "/tunnel"
cluster = "app"
allow_connect = true

[[listeners.routes]]
path_prefix = "/api/"
cluster = "app"
methods = ["GET", "PUT", "DELETE"]

[[clusters]]
name = "app"
servers = ["127.0.0.1:8080"]
"""

HTTP_MISTAKES = [
    ("too many header fields", lambda t: t.replace("max_header_fields = 200", "max_header_fields = 5000"),
     "listeners[0].max_header_fields", "at most 1024 (got 5000)"),
    ("no header fields", lambda t: t.replace("max_header_fields = 200", "max_header_fields = 0"),
     "listeners[0].max_header_fields", "at least 1"),
    ("header fields as a size", lambda t: t.replace("max_header_fields = 200", 'max_header_fields = "2k"'),
     "listeners[0].max_header_fields", "integer"),
    ("head size over the assembly buffer", lambda t: t.replace("max_header_fields = 200", 'max_header_size = "64k"'),
     "listeners[0].max_header_size", "between 1024 and 32768"),
    ("a method in lower case", lambda t: t.replace('"GET", "PUT"', '"get", "PUT"'),
     "listeners[0].routes[1].methods[0]", "case-sensitive; did you mean 'GET'?"),
    ("CONNECT in methods", lambda t: t.replace('"GET", "POST"]', '"GET", "CONNECT"]'),
     "listeners[0].methods[1]", "allow_connect = true, not in methods"),
    ("an unknown method", lambda t: t.replace('"GET", "PUT"', '"GET", "PROPFIND"'),
     "listeners[0].routes[1].methods[1]", "'PROPFIND' cannot be listed"),
    ("an empty methods list", lambda t: t.replace('methods = ["GET", "PUT", "DELETE"]', "methods = []"),
     "listeners[0].routes[1].methods", "at least one method"),
    ("methods not a list", lambda t: t.replace('methods = ["GET", "POST"]', 'methods = "GET"'),
     "listeners[0].methods", "must be a list"),
    ("allow_connect not a boolean", lambda t: t.replace("allow_connect = true", 'allow_connect = "yes"'),
     "listeners[0].routes[0].allow_connect", "true or false"),
    ("a typo of allow_connect", lambda t: t.replace("allow_connect = true", "allow_conect = true"),
     "listeners[0].routes[0].allow_conect", "did you mean 'allow_connect'"),
    ("methods on a tcp listener", lambda t: t.replace('mode = "http"', 'mode = "tcp"').split("[[listeners.routes]]")[0]
     + "[[clusters]]" + t.split("[[clusters]]")[1], "listeners[0].methods", 'needs mode = "http"'),
]


@pytest.mark.parametrize("what,breaks,key,words", HTTP_MISTAKES, ids=[m[0] for m in HTTP_MISTAKES])
def test_http_mistake_is_named(tmp_path, what, breaks, key, words):
    port = free_port()
    text = breaks(HTTP_GOOD).replace("{p}", str(port))
    code, out, path = check(tmp_path, text)
    assert code == 2, f"{what}: exit {code}\n{out}"
    assert f": {key}: " in out, f"{what}: key path {key!r} not named in:\n{out}"
    assert words in out, f"{what}: {words!r} not in:\n{out}"
    assert "Traceback" not in out


def test_http_limits_and_methods_are_read_and_compiled(tmp_path):
    from uproxy._native import ffi, lib
    from uproxy.config import parse
    from uproxy.tables import Strings, method_policy
    code, out, _ = check(tmp_path, HTTP_GOOD.replace("{p}", str(free_port())))
    assert code == 0, out
    cfg = parse(HTTP_GOOD.replace("{p}", "1"), "/x.toml")
    l = cfg.listeners[0]
    assert (l.max_header_fields, l.max_header_size, l.methods, l.allow_connect) == \
        (200, 16384, ("GET", "POST"), False)
    # A route without its own methods takes the listener's.
    assert [(r.methods, r.allow_connect) for r in l.routes] == \
        [(("GET", "POST"), True), (("GET", "PUT", "DELETE"), False)]
    d = parse(GOOD.replace("{port}", "1").replace('mode = "tcp"', 'mode = "http"'), "/x.toml").listeners[0]
    assert (d.max_header_fields, d.methods, d.allow_connect) == (128, None, False)
    # Compiled: a mask of enum h1_method bits and the whole 405 answer.
    s = Strings()
    mask, off, n = method_policy(("GET", "POST"), True, s)
    bits = {m: 1 << getattr(lib, f"H1_M_{m}") for m in
            ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "OTHER")}
    assert mask == bits["GET"] | bits["HEAD"] | bits["POST"] | bits["CONNECT"]
    text = bytes(s.data[off:off + n])
    assert text.startswith(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD, POST, CONNECT\r\n")
    head, body = text.split(b"\r\n\r\n", 1)
    assert b"Connection: close" in head and b"Content-Length: %d" % len(body) in head
    mask, off, n = method_policy(None, False, s)
    assert n == 0 and mask & bits["OTHER"] and mask & bits["PUT"] and not mask & bits["CONNECT"]
    assert method_policy(None, True, s)[0] & bits["CONNECT"]
