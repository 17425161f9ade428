"""The etcd provider against a real 3-member etcd cluster (Debian's
etcd-server, started here on loopback ports) and three uproxy instances
watching it, each with a client requesting through it without pause: a
change published once reaches all three; an invalid one is refused by all
and nothing stops serving; a member killed goes unnoticed; all members
killed then restarted: the instances keep serving, then catch up. Zero
failed requests through all of it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fleet_support import Client, Named, metrics, need, status
from support import ROOT, Proxy, free_port, wait_for


class Etcd:
    """A 3-member cluster: client and peer ports on 127.0.0.1."""

    def __init__(self, tmp_path, n=3):
        self.bin = need("etcd", "etcd-server")
        self.dir = str(tmp_path)
        self.n = n
        self.client = [free_port() for _ in range(n)]
        self.peer = [free_port() for _ in range(n)]
        self.procs = [None] * n
        self.cluster = ",".join(f"m{i}=http://127.0.0.1:{self.peer[i]}" for i in range(n))
        for i in range(n):
            self.start(i)
        self.wait_healthy()

    @property
    def endpoints(self) -> list:
        return [f"127.0.0.1:{p}" for p in self.client]

    def start(self, i):
        log = open(os.path.join(self.dir, f"etcd-m{i}.log"), "a")
        self.procs[i] = subprocess.Popen([
            self.bin, "--name", f"m{i}", "--data-dir", os.path.join(self.dir, f"m{i}"),
            "--listen-client-urls", f"http://127.0.0.1:{self.client[i]}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.client[i]}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer[i]}",
            "--initial-cluster", self.cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "uproxy-test",
            # fast elections: the tests kill members on purpose
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--logger", "zap", "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT)

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(5)

    def wait_healthy(self, timeout=30):
        import etcd3gw
        def ok():
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise RuntimeError(f"etcd m{i} exited {p.returncode}: see {self.dir}/etcd-m{i}.log")
            try:
                c = etcd3gw.client(host="127.0.0.1", port=self.client[0], timeout=1, api_path="/v3/")
                c.get("health-probe")          # a linearizable read: needs a leader
                return True
            except Exception:
                return False
        wait_for(ok, timeout=timeout, what="the etcd cluster to have a leader")

    def put(self, key, value):
        import etcd3gw
        for port in self.client:
            try:
                c = etcd3gw.client(host="127.0.0.1", port=port, timeout=2, api_path="/v3/")
                c.put(key, value)
                return
            except Exception:
                continue
        raise RuntimeError("no etcd member took the write")

    def stop(self):
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)


@pytest.fixture
def etcd(tmp_path):
    e = Etcd(tmp_path)
    yield e
    e.stop()


def instance_config(listen, admin, endpoints, servers, prefix="/uproxy/test/", routes=(),
                    extra_clusters=""):
    routes_toml = "".join(f'\n[[listeners.routes]]\npath_prefix = "{r[0]}"\ncluster = "{r[1]}"\n'
                          for r in routes)
    return f"""[proxy]
workers = 1
drain_timeout = "2s"

[admin]
bind = "127.0.0.1:{admin}"

[etcd]
endpoints = {json.dumps(endpoints)}
prefix = "{prefix}"
timeout = "1s"
backoff_max = "1s"

[[listeners]]
name = "web"
bind = "127.0.0.1:{listen}"
mode = "http"
cluster = "app"
{routes_toml}
[[clusters]]
name = "app"
servers = {json.dumps(servers)}
{extra_clusters}"""


def publish(tmp_path, text, endpoints, *more) -> tuple:
    path = os.path.join(str(tmp_path), f"publish-{time.monotonic_ns()}.toml")
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([sys.executable, "-m", "uproxy", "publish", "-c", path,
                        "--etcd", ",".join(endpoints), *more],
                       capture_output=True, text=True, cwd=ROOT, timeout=30)
    return r


def _revision(r) -> int:
    assert r.returncode == 0, r.stdout + r.stderr
    return int(r.stdout.split("at revision ")[1].split(";")[0].split()[0])


def test_a_fleet_of_three_converges_through_failures(tmp_path, etcd):
    a, b = Named("A"), Named("B")
    eps = etcd.endpoints
    # v1: what every instance's file says too (its fallback without etcd)
    r = publish(tmp_path, instance_config(1, 2, eps, [a.addr]), eps)
    rev1 = _revision(r)
    instances = []
    for _ in range(3):
        listen, admin = free_port(), free_port()
        p = Proxy(tmp_path, instance_config(listen, admin, eps, [a.addr]))
        wait_for(lambda: "admin endpoint on" in p.output(), what="the admin endpoint")
        instances.append((p, listen, admin))
    clients = [Client(listen, per_conn=10) for _, listen, _ in instances]
    times = {}
    try:
        for p, _, admin in instances:
            wait_for(lambda: status(admin)["providers"]["etcd"]["applied_revision"] == rev1,
                     what="revision 1 in force")
        for c in clients:
            wait_for(lambda: c.seen.get("A", 0) > 5, what="A serving")

        def converge(body, rev, t0, what):
            for (p, _, admin), c in zip(instances, clients):
                wait_for(lambda: c.seen_since(body, t0), timeout=15, what=what)
                wait_for(lambda: status(admin)["providers"]["etcd"]["applied_revision"] == rev,
                         timeout=5, what=f"{what}: revision {rev} in /status")
            return time.monotonic() - t0

        # 1. a route change, published once, reaches all three
        v2 = instance_config(1, 2, eps, [a.addr], routes=[("/", "b")],
                             extra_clusters=f'\n[[clusters]]\nname = "b"\nservers = ["{b.addr}"]\n')
        rev2 = _revision(publish(tmp_path, v2, eps))
        times["route change"] = converge("B", rev2, time.monotonic(), "the route to b on every instance")

        # 2. an invalid change: refused by all, B keeps serving
        etcd.put("/uproxy/test/clusters/b", json.dumps({"name": "b", "servers": ["nowhere"]}))
        t0 = time.monotonic()
        for p, _, admin in instances:
            wait_for(lambda: status(admin)["providers"]["etcd"]["refused"] == 1, timeout=10,
                     what="the invalid change to be refused")
            et = status(admin)["providers"]["etcd"]
            assert et["applied_revision"] == rev2
            assert "clusters/b.servers[0]: 'nowhere' is not host:port" in et["last_refused"]["error"]
            assert "uproxy_etcd_refused_total 1.0" in metrics(admin)
            assert "refused, still serving revision" in p.output()
        times["invalid change refused"] = time.monotonic() - t0
        t = time.monotonic()
        for c in clients:
            wait_for(lambda: c.seen_since("B", t), what="B still serving")

        # 3. one member killed: the one the first instance's watch is on
        # (that instance moves to another member; the others notice nothing)
        on = status(instances[0][2])["providers"]["etcd"]["endpoint"]
        etcd.kill(eps.index(on))
        t0 = time.monotonic()
        wait_for(lambda: status(instances[0][2])["providers"]["etcd"]["endpoint"] != on, timeout=10,
                 what="the first instance to move to another member")
        times["its member killed -> watching another"] = time.monotonic() - t0
        rev3 = _revision(publish(tmp_path, instance_config(1, 2, eps, [a.addr]), eps))
        times["one member down"] = converge("A", rev3, time.monotonic(), "A again with a member down")

        # 4. every member killed: the instances keep serving
        for i in range(3):
            if etcd.procs[i].poll() is None:
                etcd.kill(i)
        for p, _, admin in instances:
            try:
                wait_for(lambda: not status(admin)["providers"]["etcd"]["connected"], timeout=10,
                         what="the instances to see etcd gone")
            except TimeoutError:
                raise AssertionError(f"{status(admin)['providers']['etcd']}\n{p.output()}")
        t = time.monotonic()
        time.sleep(1.0)
        for c in clients:
            assert c.seen_since("A", t + 0.5)
        # ... restarted: they reconnect, then take what changed meanwhile
        t0 = time.monotonic()
        for i in range(3):
            etcd.start(i)
        etcd.wait_healthy()
        for _, _, admin in instances:
            wait_for(lambda: status(admin)["providers"]["etcd"]["connected"], timeout=15,
                     what="the instances to reconnect")
        times["etcd restarted -> all reconnected"] = time.monotonic() - t0
        rev4 = _revision(publish(tmp_path, v2, eps))
        times["change after the restart"] = converge("B", rev4, time.monotonic(), "B again after the restart")
        for _, _, admin in instances:
            st = status(admin)["providers"]["etcd"]
            assert st["reconnects"] >= 1 and st["last_error"] is None
        time.sleep(0.3)
    finally:
        for c in clients:
            c.stop()
        for p, _, _ in instances:
            p.stop()
        a.close()
        b.close()
    print("etcd convergence (write acknowledged -> the last of 3 instances serving it): " +
          "; ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()))
    for c in clients:
        assert c.failures == [], c.failures[:5]
        assert c.requests > 100
    assert times["route change"] < 3


def test_publish_refuses_a_file_with_mistakes_and_writes_nothing(tmp_path, etcd):
    eps = etcd.endpoints
    bad = instance_config(1, 2, eps, ["127.0.0.1:8080"]).replace('cluster = "app"', 'cluster = "nope"')
    r = publish(tmp_path, bad, eps)
    assert r.returncode == 2 and "no cluster named 'nope'" in r.stderr, r.stderr
    assert "nothing published" in r.stderr
    r = publish(tmp_path, instance_config(1, 2, eps, ["127.0.0.1:8080"]), eps, "--dry-run")
    assert r.returncode == 0 and "/uproxy/test/clusters/app = " in r.stdout
    import etcd3gw
    c = etcd3gw.client(host="127.0.0.1", port=etcd.client[1], timeout=2, api_path="/v3/")
    assert c.get_prefix("/uproxy/test/") == []
    # a second publish without a cluster removes its key, in the same revision
    two = instance_config(1, 2, eps, ["127.0.0.1:8080"],
                          extra_clusters='\n[[clusters]]\nname = "old"\nservers = ["127.0.0.1:8081"]\n')
    _revision(publish(tmp_path, two, eps))
    r = publish(tmp_path, instance_config(1, 2, eps, ["127.0.0.1:8080"]), eps)
    assert "removed 1 that the file no longer has: clusters/old" in r.stdout
    assert [m["key"] for _, m in c.get_prefix("/uproxy/test/")] == [b"/uproxy/test/clusters/app"]


def test_an_instance_starts_without_etcd_then_catches_up(tmp_path):
    need("etcd", "etcd-server")
    a, b = Named("A"), Named("B")
    # the members' ports are chosen now; nothing listens there yet
    e = Etcd.__new__(Etcd)
    e.bin, e.dir, e.n = shutil.which("etcd"), str(tmp_path), 3
    e.client = [free_port() for _ in range(3)]
    e.peer = [free_port() for _ in range(3)]
    e.procs = [None] * 3
    e.cluster = ",".join(f"m{i}=http://127.0.0.1:{e.peer[i]}" for i in range(3))
    listen, admin = free_port(), free_port()
    p = Proxy(tmp_path, instance_config(listen, admin, e.endpoints, [a.addr]))
    try:
        wait_for(lambda: "admin endpoint on" in p.output(), what="the admin endpoint")
        from fleet_support import get
        assert get(listen) == (200, "A")            # the file's own cluster serves
        assert "no member of" in p.output()
        for i in range(3):
            e.start(i)
        e.wait_healthy()
        rev = _revision(publish(tmp_path, instance_config(1, 2, e.endpoints, [b.addr]), e.endpoints))
        wait_for(lambda: get(listen) == (200, "B"), timeout=15, what="etcd's part to apply")
        assert status(admin)["providers"]["etcd"]["applied_revision"] == rev
    finally:
        p.stop()
        e.stop()
        a.close()
        b.close()


def test_the_dynamic_part_splits_and_lays_over_the_file():
    import tomllib
    from uproxy.config import ConfigError, parse_raw
    from uproxy.providers import dynamic
    raw = tomllib.loads(instance_config(1, 2, ["127.0.0.1:2379"], ["127.0.0.1:8080"],
                                        routes=[("/x", "app")]))
    kvs = dynamic.split(raw)
    assert sorted(kvs) == ["clusters/app", "routes/web"]
    over = dynamic.overlay(raw, {"clusters/b": json.dumps({"servers": ["127.0.0.1:9"]}),
                                 "routes/web": json.dumps([{"path_prefix": "/", "cluster": "b"}])}, "etcd")
    assert [c["name"] for c in over["clusters"]] == ["b"]         # the name comes from the key
    assert raw["clusters"][0]["name"] == "app"                    # the file's document is untouched
    try:                                                          # the listener's default "app" is gone
        parse_raw(over, "f.toml")
    except ConfigError as e:
        assert "no cluster named 'app'" in str(e)
    else:
        raise AssertionError("accepted a listener without its cluster")
    try:
        dynamic.overlay(raw, {"clusters/a": "{", "routes/nope": "[]", "other": "1",
                              "clusters/x": json.dumps({"name": "y"})}, "etcd /p/ at revision 3")
    except ConfigError as e:
        text = [x.one() for x in e.errors]
    else:
        raise AssertionError("accepted")
    assert text[0].startswith("etcd /p/ at revision 3: clusters/a: not JSON"), text
    assert any("clusters/x: names cluster 'y'" in t for t in text), text
    assert any("routes/nope: no listener named 'nope'" in t for t in text), text
    assert any("other: unknown key" in t for t in text), text
    assert dynamic.etcd_keys("clusters[1].servers[0]: bad", {"clusters/a": "", "clusters/b": ""}) \
        == "clusters/b.servers[0]: bad"
