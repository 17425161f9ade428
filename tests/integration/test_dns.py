"""Servers from DNS, against a real DNS server: Debian's dnsmasq, started
here on a loopback address and an unprivileged port. Records come from an
addn-hosts file (re-read on SIGHUP) and --srv-host; answers are
re-resolved on their TTL (dnsmasq's --local-ttl) within min_ttl/max_ttl;
addresses join and leave without a reload and without a failed request;
a stopped resolver keeps the last answer."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from fleet_support import Client, Named, config, metrics, need, status
from support import Proxy, free_port, wait_for

DNS_IP = "127.0.0.53"        # not 127.0.0.1: shows the resolver address is honoured


class Dnsmasq:
    def __init__(self, tmp_path, port=None, ttl=1, hosts="", args=()):
        self.bin = need("dnsmasq", "dnsmasq-base")
        self.dir = str(tmp_path)
        self.port = port or free_port(DNS_IP)
        self.hosts = os.path.join(self.dir, "hosts")
        self.log = os.path.join(self.dir, f"dnsmasq-{self.port}.log")
        self.ttl, self.args = ttl, list(args)
        self.set_hosts(hosts, signal_it=False)
        self.p = None
        self.start()

    def start(self):
        cmd = [self.bin, "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
               f"--listen-address={DNS_IP}", "--bind-interfaces", f"--port={self.port}",
               "--local=/internal/", f"--local-ttl={self.ttl}", f"--addn-hosts={self.hosts}",
               "--user=root", "--pid-file=", "--log-queries", f"--log-facility={self.log}",
               *self.args]
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._answers, timeout=10, what="dnsmasq to answer")

    def _answers(self) -> bool:
        if self.p.poll() is not None:
            raise RuntimeError(f"dnsmasq exited: {self.p.stderr.read().decode()}")
        import dns.resolver
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [DNS_IP]
        r.port = self.port
        r.lifetime = 0.5
        try:
            r.resolve("probe.internal", "A")
        except dns.resolver.NXDOMAIN:
            return True
        except Exception:
            return False
        return True

    def set_hosts(self, text: str, signal_it=True):
        with open(self.hosts, "w") as f:
            f.write(text)
        if signal_it:
            self.p.send_signal(signal.SIGHUP)     # dnsmasq re-reads addn-hosts

    def queries(self, name: str) -> int:
        with open(self.log) as f:
            return sum(1 for line in f if f"query[A] {name} " in line)

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.terminate()
            self.p.wait(5)


@pytest.fixture
def dnsmasq(tmp_path):
    made = []

    def make(**kw):
        d = Dnsmasq(tmp_path, **kw)
        made.append(d)
        return d
    yield make
    for d in made:
        d.stop()


def _pair(name_a="A", name_b="B"):
    """Two upstreams on one port, at 127.0.0.11 and 127.0.0.12 (an A record
    has no port: every address of a name serves on the same one)."""
    for _ in range(20):
        a = Named(name_a, "127.0.0.11")
        try:
            return a, Named(name_b, "127.0.0.12", a.port)
        except OSError:
            a.close()
    raise RuntimeError("no port free on both 127.0.0.11 and 127.0.0.12")


def _proxy(tmp_path, servers, dns_port, min_ttl="200ms", max_ttl="5s"):
    listen, admin = free_port(), free_port()
    cl = f'dns = {{ resolvers = ["{DNS_IP}:{dns_port}"], min_ttl = "{min_ttl}", max_ttl = "{max_ttl}", timeout = "500ms" }}'
    p = Proxy(tmp_path, config(listen, admin, servers, cluster_extra=cl))
    wait_for(lambda: "admin endpoint on" in p.output(), what="the admin endpoint")
    return p, listen, admin


def _entry(admin):
    (e,) = status(admin)["providers"]["dns"]
    return e


def test_addresses_join_and_leave_without_a_reload_or_a_failed_request(tmp_path, dnsmasq):
    a, b = _pair()
    d = dnsmasq(ttl=1, hosts="127.0.0.11 app.internal\n")
    p, listen, admin = _proxy(tmp_path, [f"app.internal:{a.port}"], d.port)
    client = Client(listen, per_conn=10)
    try:
        wait_for(lambda: client.seen.get("A", 0) > 20, what="A serving (resolved at start)")
        assert "B" not in client.seen
        gen = status(admin)["config_generation"]

        t0 = time.monotonic()
        d.set_hosts("127.0.0.11 app.internal\n127.0.0.12 app.internal\n")
        wait_for(lambda: client.seen_since("B", t0), timeout=5, what="B to join")
        joined = time.monotonic() - t0

        t1 = time.monotonic()
        d.set_hosts("127.0.0.12 app.internal\n")
        # A has left once it has not answered for a while (in-flight ones finish)
        wait_for(lambda: _entry(admin)["addresses"] == [f"127.0.0.12:{a.port}"], timeout=5,
                 what="A to leave the answer")
        left = time.monotonic() - t1
        t2 = time.monotonic()
        time.sleep(0.5)
        assert not client.seen_since("A", t2 + 0.05), "A still gets requests after it left"
        assert client.seen_since("B", t2 + 0.2)
        print(f"dns: record added -> serving in {joined * 1000:.0f} ms; "
              f"record removed -> out of the table in {left * 1000:.0f} ms (TTL 1 s)")
        st = status(admin)
        assert st["reloads"] == 0 and st["reload_failures"] == 0   # no reload: a new generation
        assert st["config_generation"] >= gen + 2
        assert joined < 3.0 and left < 3.0
        servers = {s["address"]: s for s in st["servers"] if s["cluster"] == "app"}
        assert servers[f"127.0.0.12:{a.port}"]["in_use"]
        assert not servers[f"127.0.0.11:{a.port}"]["in_use"]
        assert "dns: generation" in p.output()
    finally:
        client.stop()
        p.stop()
        a.close()
        b.close()
    assert client.failures == [], client.failures[:5]
    assert client.requests > 100


def test_a_stopped_resolver_keeps_the_last_answer(tmp_path, dnsmasq):
    a, b = _pair()
    d = dnsmasq(ttl=0, hosts="127.0.0.11 app.internal\n127.0.0.12 app.internal\n")
    p, listen, admin = _proxy(tmp_path, [f"app.internal:{a.port}"], d.port, min_ttl="200ms")
    client = Client(listen, per_conn=10)
    try:
        wait_for(lambda: client.seen.get("A", 0) > 5 and client.seen.get("B", 0) > 5,
                 what="both serving")
        d.stop()
        wait_for(lambda: _entry(admin)["error"], timeout=5, what="the failure to show")
        e = _entry(admin)
        assert sorted(e["addresses"]) == [f"127.0.0.11:{a.port}", f"127.0.0.12:{a.port}"]
        assert "keeping the last answer" in p.output()
        assert f'uproxy_dns_failing{{cluster="app",name="app.internal:{a.port}"}} 1.0' in metrics(admin)
        t = time.monotonic()
        time.sleep(1.0)                          # several failed lookups (min_ttl 200 ms)
        assert _entry(admin)["failures"] >= 2
        assert client.seen_since("A", t) and client.seen_since("B", t)
        # back, with one address less: that answer applies
        d.set_hosts("127.0.0.12 app.internal\n", signal_it=False)
        d.start()
        wait_for(lambda: _entry(admin)["addresses"] == [f"127.0.0.12:{a.port}"]
                 and _entry(admin)["error"] is None, timeout=5, what="the resolver's new answer")
        assert "resolves again" in p.output()
    finally:
        client.stop()
        p.stop()
        a.close()
        b.close()
    assert client.failures == [], client.failures[:5]


def test_ttls_are_respected_within_min_and_max(tmp_path, dnsmasq):
    a = Named("A", "127.0.0.11")
    d = dnsmasq(ttl=2, hosts="127.0.0.11 app.internal\n127.0.0.11 short.internal\n")
    listen, admin = free_port(), free_port()
    r = f'"{DNS_IP}:{d.port}"'
    text = config(listen, admin, [f"app.internal:{a.port}"],
                  cluster_extra=f'dns = {{ resolvers = [{r}], min_ttl = "100ms", max_ttl = "1m" }}',
                  extra=f'''
[[clusters]]
name = "clamped"
servers = ["short.internal:{a.port}"]
dns = {{ resolvers = [{r}], min_ttl = "100ms", max_ttl = "500ms" }}
''')
    p = Proxy(tmp_path, text)
    try:
        wait_for(lambda: "admin endpoint on" in p.output(), what="the admin endpoint")
        n0, s0 = d.queries("app.internal"), d.queries("short.internal")
        time.sleep(4.2)
        n, s = d.queries("app.internal") - n0, d.queries("short.internal") - s0
        # TTL 2 s over 4.2 s: asked 2 times (3 at most with timing), never on every tick
        assert 1 <= n <= 3, n
        # the same TTL clamped to max_ttl 0.5 s: asked about 8 times
        assert 6 <= s <= 10, s
        ttl = {e["cluster"]: e["ttl_s"] for e in status(admin)["providers"]["dns"]}
        assert ttl == {"app": 2, "clamped": 2}
    finally:
        p.stop()
        a.close()


def test_srv_records_give_ports_and_weights(tmp_path, dnsmasq):
    a, b = Named("A", "127.0.0.11"), Named("B", "127.0.0.12")
    d = dnsmasq(ttl=1, hosts="127.0.0.11 a.internal\n127.0.0.12 b.internal\n", args=[
        f"--srv-host=_http._tcp.app.internal,a.internal,{a.port},0,30",
        f"--srv-host=_http._tcp.app.internal,b.internal,{b.port},0,10",
        # a lower-priority (higher number) backup: not used while the others answer
        f"--srv-host=_http._tcp.app.internal,b.internal,1,5,10"])
    p, listen, admin = _proxy(tmp_path, ["srv+_http._tcp.app.internal"], d.port)
    try:
        e = _entry(admin)
        assert sorted(e["addresses"]) == [f"127.0.0.11:{a.port} weight 30",
                                          f"127.0.0.12:{b.port} weight 10"], e
        from fleet_support import get
        seen = {}
        for _ in range(200):
            code, body = get(listen)
            assert code == 200
            seen[body] = seen.get(body, 0) + 1
        assert seen == {"A": 150, "B": 50}, seen      # smooth weighted round robin: exact
    finally:
        p.stop()
        a.close()
        b.close()


def test_a_name_that_does_not_resolve_at_start_is_asked_again(tmp_path, dnsmasq):
    a = Named("A", "127.0.0.11")
    d = dnsmasq(ttl=1, hosts="")
    p, listen, admin = _proxy(tmp_path, [f"app.internal:{a.port}"], d.port)
    try:
        from fleet_support import get
        assert get(listen)[0] in (502, 503)         # no server yet: an answer, not a hang
        d.set_hosts("127.0.0.11 app.internal\n")
        wait_for(lambda: get(listen) == (200, "A"), timeout=5, what="the name to resolve")
    finally:
        p.stop()
        a.close()


def test_dns_settings_are_checked_where_they_are_written():
    from uproxy.config import ConfigError, parse
    base = ('[[listeners]]\nname = "l"\nbind = "127.0.0.1:1"\nmode = "http"\ncluster = "c"\n\n'
            '[[clusters]]\nname = "c"\n')
    c = parse(base + 'servers = ["app.internal:80", "srv+_http._tcp.app.internal", "127.0.0.1:9"]\n'
              'dns = { min_ttl = "1s", resolvers = ["10.0.0.2", "127.0.0.1:5353"] }\n')
    cl = c.clusters["c"]
    assert [n.label for n in cl.names] == ["app.internal:80", "srv+_http._tcp.app.internal"]
    assert [s.label for s in cl.servers] == ["127.0.0.1:9"]
    assert cl.dns.resolvers == (("10.0.0.2", 53), ("127.0.0.1", 5353)) and cl.dns.min_ttl_ms == 1000
    assert cl.max_attempts == 3
    # without dns a name is resolved once, as before; srv+ alone turns dns on
    assert parse(base + 'servers = ["srv+_http._tcp.a.internal"]\n').clusters["c"].dns is not None
    try:
        parse(base + 'servers = ["srv+a.internal"]\ndns = { min_ttl = "9s", max_ttl = "1s", '
              'resolvers = ["nowhere"] }\n')
    except ConfigError as e:
        text = [x.one() for x in e.errors]
    else:
        raise AssertionError("accepted")
    assert any("servers[0]: 'srv+a.internal': an SRV server is" in t for t in text), text
    assert any("dns.min_ttl: min_ttl (9000 ms) is more than max_ttl (1000 ms)" in t for t in text), text
    assert any("dns.resolvers[0]: 'nowhere' is not a resolver address" in t for t in text), text
    assert all(":9:" in t or ":10:" in t for t in text), text      # each at its line
