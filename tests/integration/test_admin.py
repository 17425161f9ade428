"""The admin endpoint: /metrics parses as Prometheus text and agrees with the
segment; /status is the snapshot; /health follows the workers."""
import json
import socket
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from support import Server, echo, free_port, wait_for
from uproxy import hist


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _proxy(proxy_factory, servers):
    srv = servers(echo)
    port, admin = free_port(), free_port()
    p = proxy_factory([{"name": "l4", "bind": f"127.0.0.1:{port}", "mode": "tcp", "cluster": "c"}],
                      [{"name": "c", "servers": [srv.addr]}],
                      extra=f'\n[admin]\nbind = "127.0.0.1:{admin}"\n')
    # the admin endpoint starts right after the workers report running
    wait_for(lambda: "admin endpoint on" in p.output(), what="the admin endpoint")
    return p, port, f"http://127.0.0.1:{admin}", srv


def _sessions(port, n):
    for i in range(n):
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"ping %d" % i)
            got = b""
            while len(got) < len(b"ping %d" % i):
                got += c.recv(100)
            c.shutdown(socket.SHUT_WR)
            c.recv(10)


def _samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_agree_with_the_segment(proxy_factory, servers):
    p, port, base, srv = _proxy(proxy_factory, servers)
    n = 25
    _sessions(port, n)
    wait_for(lambda: p.total("closed") >= n, what="sessions to close")
    code, ctype, body = _get(base + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    text = body.decode()
    m = _samples(text)
    snap = p.stats()         # after the scrape: counters only grow, sessions are done
    accepted = sum(v for (name, _), v in m.items() if name == "uproxy_accepted_total")
    assert accepted == snap["total"]["accepted"] >= n
    for w in snap["workers"]:
        lab = (("worker", str(w["index"])),)
        assert m[("uproxy_closed_total", lab)] == w["counters"]["closed"]
        assert m[("uproxy_bytes_from_clients_total", lab)] == w["counters"]["bytes_from_clients"]
        assert m[("uproxy_active", lab)] == w["counters"]["active"]
        assert m[("uproxy_worker_running", (("cpu", str(w["cpu"])),) + lab)] == 1
    # the connect histogram: cumulative counts at exact bucket boundaries
    h = snap["hist"]["connect"]
    total = m[("uproxy_connect_duration_seconds_count", ())]
    assert total == sum(h) >= n
    for b in (8, 64, 128):
        le = repr(float(hist.lower(b) / 1e6))
        assert m[("uproxy_connect_duration_seconds_bucket", (("le", le),))] == sum(h[:b])
    assert m[("uproxy_connect_duration_seconds_bucket", (("le", "+Inf"),))] == sum(h)
    # per-server statistics
    lab = (("address", srv.addr), ("cluster", "c"))
    assert m[("uproxy_server_requests_total", lab)] == \
        [s for s in snap["servers"] if s["address"] == srv.addr][0]["requests"] >= n
    assert ("uproxy_info", (("features", ",".join(snap["features"])), ("pid", str(p.pid)),
                            ("version", __import__("uproxy").__version__))) in m


def test_status_and_health(proxy_factory, servers):
    p, port, base, _ = _proxy(proxy_factory, servers)
    _sessions(port, 3)
    code, ctype, body = _get(base + "/status")
    assert code == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["pid"] == p.pid and len(doc["workers"]) == 2
    assert doc["total"]["accepted"] >= 3
    code, _, body = _get(base + "/health")
    assert code == 200 and json.loads(body)["status"] == "ok"
    code, _, _ = _get(base + "/nope")
    assert code == 404


def test_health_is_503_when_a_worker_is_not_running():
    from uproxy.admin import health
    snap = {"workers": [{"index": 0, "state": "running"}, {"index": 1, "state": "draining"}]}
    code, doc = health(snap)
    assert code == 503 and doc["workers"]["1"] == "draining"
    assert health({"workers": []})[0] == 503
