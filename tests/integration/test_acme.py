"""Automatic certificates against a real ACME server: Debian's Pebble
(Let's Encrypt's test server), started here on loopback, whose validation
authority really connects to uproxy's listeners (PEBBLE_VA_ALWAYS_VALID is
never set) after resolving the names through a dnsmasq of ours that
answers 127.0.0.1 for *.uproxy.test. Each test has a client requesting
through the HTTPS listener the whole time and checks that none of its
requests failed, and that the certificate clients see verifies against
Pebble's root (fetched from its management endpoint)."""
from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import ssl
import stat
import subprocess
import threading
import time

import pytest

from fleet_support import Named, metrics, need, status
from support import Proxy, free_port, render_config, wait_for
from test_dns import DNS_IP, Dnsmasq

A, B = "a.uproxy.test", "b.uproxy.test"


def _pebble_tls(d: str) -> tuple:
    """A certificate for Pebble's own HTTPS (the directory): self-signed,
    for 127.0.0.1; uproxy trusts it through [acme] directory_ca."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cp, kp = os.path.join(d, "pebble.pem"), os.path.join(d, "pebble.key")
    with open(cp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(kp, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cp, kp


class Pebble:
    def __init__(self, d: str, dns_port: int, http_port: int, tls_port: int, validity_s=None,
                 env=None, port=None):
        self.bin = need("pebble", "pebble")
        self.dir = d
        self.cert, self.key = _pebble_tls(d)
        self.port, self.mgmt = port or free_port(), free_port()
        cfg = {"listenAddress": f"127.0.0.1:{self.port}",
               "managementListenAddress": f"127.0.0.1:{self.mgmt}",
               "certificate": self.cert, "privateKey": self.key,
               "httpPort": http_port, "tlsPort": tls_port, "ocspResponderURL": "",
               "externalAccountBindingRequired": False}
        if validity_s:
            cfg["certificateValidityPeriod"] = validity_s
        self.cfg_path = os.path.join(d, f"pebble-{self.port}.json")
        with open(self.cfg_path, "w") as f:
            json.dump({"pebble": cfg}, f)
        self.dns = f"{DNS_IP}:{dns_port}"
        self.env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
                        PEBBLE_AUTHZREUSE="0")
        self.env.update(env or {})
        self.env.pop("PEBBLE_VA_ALWAYS_VALID", None)
        self.p = None
        self.start()

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self):
        self.log = open(os.path.join(self.dir, f"pebble-{self.port}.log"), "a")
        self.p = subprocess.Popen([self.bin, "-config", self.cfg_path, "-dnsserver", self.dns],
                                  stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        wait_for(self._up, timeout=15, what="pebble to listen")
        self._root = None

    def _up(self) -> bool:
        if self.p.poll() is not None:
            raise RuntimeError(f"pebble exited: {open(self.log.name).read()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            socket.create_connection(("127.0.0.1", self.mgmt), 0.2).close()
            return True
        except OSError:
            return False

    def root(self) -> str:
        """Pebble's root of this run (made at its start), as a file."""
        if self._root is None:
            ctx = ssl.create_default_context(cafile=self.cert)
            c = http.client.HTTPSConnection("127.0.0.1", self.mgmt, context=ctx, timeout=5)
            c.request("GET", "/roots/0")
            pem = c.getresponse().read()
            self._root = os.path.join(self.dir, f"root-{self.port}-{time.monotonic_ns()}.pem")
            with open(self._root, "wb") as f:
                f.write(pem)
        return self._root

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.terminate()
            self.p.wait(5)
        self.log.close()


def peer(port: int, name: str, cafile: str | None = None) -> dict:
    """The certificate a client gets for name: verified against cafile
    (raises when it does not verify), else unverified (its serial only)."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), 3) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            der = t.getpeercert(binary_form=True)
            from cryptography import x509
            c = x509.load_der_x509_certificate(der)
            return {"serial": c.serial_number, "issuer": c.issuer.rfc4514_string(),
                    "names": c.extensions.get_extension_for_class(
                        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)}


def verifies(port: int, name: str, pebble: Pebble) -> bool:
    try:
        peer(port, name, pebble.root())
        return True
    except (ssl.SSLError, OSError):
        return False


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 with name as the SNI."""

    def __init__(self, name, port, ctx):
        super().__init__("127.0.0.1", port, context=ctx, timeout=5)
        self.sni = name

    def connect(self):
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.sni)


class TLSClient:
    """HTTPS requests through the proxy without pause, a new connection
    (a new handshake) every few requests, names in turn; every failure
    is kept. Unverified: the certificate changes under it on purpose."""

    def __init__(self, port: int, names=(A,), per_conn=3):
        self.port, self.names, self.per_conn = port, names, per_conn
        self.failures, self.requests = [], 0
        self.stopping = threading.Event()
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        i = 0
        while not self.stopping.is_set():
            name = self.names[i % len(self.names)]
            i += 1
            c = _SNIConnection(name, self.port, self.ctx)
            try:
                for _ in range(self.per_conn):
                    c.request("GET", "/", headers={"Host": name})
                    r = c.getresponse()
                    r.read()
                    self.requests += 1
                    if r.status != 200:
                        self.failures.append(f"status {r.status}")
            except Exception as e:
                self.failures.append(repr(e))
            finally:
                c.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        assert self.requests > 0


def _conf(storage, directory, ca, http_port, tls_port, admin, app_port, acme="[\"%s\"]" % A,
          challenges=("http-01",), retry_min="300ms", extra_tls="", redirect=False):
    ch = ", ".join(f'"{c}"' for c in challenges)
    return f"""
[proxy]
workers = 2

[admin]
bind = "127.0.0.1:{admin}"

[acme]
directory = "{directory}"
directory_ca = "{ca}"
email = "ops@uproxy.test"
agree_terms = true
storage = "{storage}"
challenges = [{ch}]
retry_min = "{retry_min}"
retry_max = "2s"

[[listeners]]
name = "plain"
bind = "127.0.0.1:{http_port}"
mode = "http"
{'redirect_https = true' if redirect else 'cluster = "app"'}

[[listeners]]
name = "https"
bind = "127.0.0.1:{tls_port}"
mode = "http"
cluster = "app"
tls = {{ acme = {acme}{extra_tls} }}

[[clusters]]
name = "app"
servers = ["127.0.0.1:{app_port}"]
"""


@pytest.fixture
def lab(tmp_path):
    """dnsmasq, an upstream, ports, and a Pebble factory; everything stopped after."""
    need("pebble", "pebble")
    made = []
    dns = Dnsmasq(tmp_path, args=["--address=/uproxy.test/127.0.0.1"])
    app = Named("app")

    class Lab:
        http, tls, admin = free_port(), free_port(), free_port()
        storage = os.path.join(str(tmp_path), "acme")

        def pebble(self, **kw):
            kw.setdefault("http_port", self.http)
            kw.setdefault("tls_port", self.tls)
            p = Pebble(str(tmp_path), dns.port, **kw)
            made.append(p)
            return p

        def proxy(self, pebble, **kw):
            p = Proxy(tmp_path, _conf(self.storage, pebble.directory, pebble.cert, self.http,
                                      self.tls, self.admin, app.port, **kw))
            made.append(p)
            return p

    yield Lab()
    for m in made:
        m.stop()
    app.close()
    dns.stop()


def _issued(lab, pebble, name=A, timeout=30, p=None):
    """A certificate for name that verifies; with p, also every worker
    running it (the log's line comes once all of them do)."""
    wait_for(lambda: verifies(lab.tls, name, pebble), timeout=timeout,
             what=f"a certificate for {name} that verifies against Pebble's root")
    if p is not None:
        wait_for(lambda: any(name in ln and " issued, valid until" in ln
                             for ln in p.output().splitlines()), what="the log line")


# ---- first issuance ----------------------------------------------------------------

def test_http01_first_issuance_then_a_restart_serves_the_stored_one(lab):
    # the usual port-80 listener redirects everything: validations still pass
    # (the VA would follow a 308 to the https upstream, whose answer is wrong)
    pebble = lab.pebble()
    p = lab.proxy(pebble, challenges=("http-01",), redirect=True)
    first = peer(lab.tls, A)
    assert first["issuer"] == f"CN={A}"            # the placeholder, self-signed
    client = TLSClient(lab.tls)
    _issued(lab, pebble, p=p)
    time.sleep(0.3)
    client.stop()
    assert client.failures == [], client.failures[:5]
    # the files: mode 0600, in the directory's own folder
    d = os.path.join(lab.storage, f"127.0.0.1_{pebble.port}_dir")
    for f in ("account.key", os.path.join("certs", f"{A}.pem")):
        assert stat.S_IMODE(os.stat(os.path.join(d, f)).st_mode) == 0o600, f
    m = metrics(lab.admin)
    assert f'uproxy_acme_certificate_issued{{name="{A}"}} 1.0' in m
    assert 'uproxy_certificate_expiry_seconds{name="a.uproxy.test"}' in m
    serial = peer(lab.tls, A, pebble.root())["serial"]
    c = http.client.HTTPConnection("127.0.0.1", lab.http, timeout=5)
    c.request("GET", "/.well-known/acme-challenge/unknown", headers={"Host": A})
    assert c.getresponse().status == 308          # a token not being validated: as usual
    assert p.stop() == 0
    # restart with the CA gone: the stored certificate is served at once
    pebble.stop()
    p2 = lab.proxy(pebble)
    assert peer(lab.tls, A, pebble.root())["serial"] == serial
    assert "serving the stored certificate" in p2.output()


def test_tls_alpn01_two_domains_on_one_listener(lab):
    pebble = lab.pebble()
    p = lab.proxy(pebble, challenges=("tls-alpn-01",), acme=f'["{A}", "{B}"]')
    client = TLSClient(lab.tls, names=(A, B))
    _issued(lab, pebble, A, p=p)
    _issued(lab, pebble, B, p=p)
    client.stop()
    assert client.failures == [], client.failures[:5]
    a, b = peer(lab.tls, A, pebble.root()), peer(lab.tls, B, pebble.root())
    assert a["names"] == [A] and b["names"] == [B] and a["serial"] != b["serial"]
    assert "acme-tls/1" not in p.output()


def test_san_certificate_for_two_names(lab):
    pebble = lab.pebble()
    p = lab.proxy(pebble, acme=f'{{ domains = ["{A}", "{B}"], san = true }}')
    _issued(lab, pebble, A, p=p)
    a, b = peer(lab.tls, A, pebble.root()), peer(lab.tls, B, pebble.root())
    assert sorted(a["names"]) == [A, B] and a["serial"] == b["serial"]


# ---- renewal -------------------------------------------------------------------------

def test_a_short_lived_certificate_is_renewed_without_a_failed_request(lab):
    pebble = lab.pebble(validity_s=9)
    p = lab.proxy(pebble)
    _issued(lab, pebble, p=p)
    serial = peer(lab.tls, A, pebble.root())["serial"]
    client = TLSClient(lab.tls)
    wait_for(lambda: peer(lab.tls, A, pebble.root())["serial"] != serial, timeout=20,
             what="the renewed certificate")
    client.stop()
    assert client.failures == [], client.failures[:5]
    assert "renewing a certificate for a.uproxy.test" in p.output()


# ---- failures ----------------------------------------------------------------------------

def test_a_challenge_that_fails_keeps_the_placeholder_and_says_why(lab):
    # the VA connects to a port nothing listens on: "listener unreachable"
    dead = free_port()
    pebble = lab.pebble(http_port=dead)
    p = lab.proxy(pebble, challenges=("http-01",))
    client = TLSClient(lab.tls)
    wait_for(lambda: "the validation failed" in p.output(), timeout=20, what="a failed validation")
    wait_for(lambda: "(failure 2, challenge)" in p.output(), timeout=20, what="a retry")
    client.stop()
    assert client.failures == [], client.failures[:5]
    assert peer(lab.tls, A)["issuer"] == f"CN={A}"       # still the placeholder
    assert "connection refused" in p.output().lower()
    m = metrics(lab.admin)
    assert f'uproxy_acme_certificate_issued{{name="{A}"}} 0.0' in m
    (e,) = status(lab.admin)["providers"]["acme"]
    assert e["failures"] >= 2 and e["last_error_kind"] == "challenge"


def test_pebble_down_then_back(lab):
    port = free_port()
    pebble = lab.pebble(port=port)
    pebble.stop()
    p = lab.proxy(pebble)
    client = TLSClient(lab.tls)
    wait_for(lambda: "cannot reach the CA" in p.output(), timeout=10, what="a refused connect")
    assert peer(lab.tls, A)["issuer"] == f"CN={A}"
    pebble.start()
    _issued(lab, pebble)
    client.stop()
    assert client.failures == [], client.failures[:5]


def test_a_corrupted_storage_file_is_set_aside_and_replaced(lab):
    pebble = lab.pebble()
    p = lab.proxy(pebble)
    _issued(lab, pebble)
    assert p.stop() == 0
    d = os.path.join(lab.storage, f"127.0.0.1_{pebble.port}_dir")
    cert = os.path.join(d, "certs", f"{A}.pem")
    with open(cert, "r+b") as f:                       # a torn write of another tool
        f.truncate(300)
    with open(os.path.join(d, "account.key"), "wb") as f:
        f.write(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    p2 = lab.proxy(pebble)
    client = TLSClient(lab.tls)
    _issued(lab, pebble)
    client.stop()
    assert client.failures == [], client.failures[:5]
    out = p2.output()
    assert "is damaged" in out and os.path.exists(cert + ".corrupt")
    assert os.path.exists(os.path.join(d, "account.key.corrupt"))


def test_a_reload_during_issuance(lab):
    # the VA waits up to 2 s before it connects: reloads land in between
    pebble = lab.pebble(env={"PEBBLE_VA_NOSLEEP": "0", "PEBBLE_VA_SLEEPTIME": "2"})
    p = lab.proxy(pebble)
    client = TLSClient(lab.tls)
    wait_for(lambda: "requesting a certificate" in p.output(), timeout=10, what="an order")
    reloads = 0
    while not verifies(lab.tls, A, pebble):
        p.reload()
        reloads += 1
        time.sleep(0.15)
        assert reloads < 200, p.output()[-3000:]
    client.stop()
    assert client.failures == [], client.failures[:5]
    assert reloads >= 2
    assert "reload failed" not in p.output()


# ---- configuration ------------------------------------------------------------------------

def _check(tmp_path, acme_table: str, tls='{ acme = ["a.uproxy.test"] }') -> str:
    path = os.path.join(str(tmp_path), "c.toml")
    with open(path, "w") as f:
        f.write(f"{acme_table}\n[[listeners]]\nname = \"s\"\nbind = \"127.0.0.1:{free_port()}\"\n"
                f"mode = \"http\"\ncluster = \"app\"\ntls = {tls}\n"
                f"[[clusters]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n")
    import sys
    r = subprocess.run([sys.executable, "-m", "uproxy", "check", "-c", path],
                       capture_output=True, text=True)
    return r.stdout + r.stderr


@pytest.mark.parametrize("table,tls,expect", [
    ('[acme]\nagree_terms = true\nstorage = "/tmp"', None, "acme.email: is required"),
    ('[acme]\nemail = "a@b.example"\nstorage = "/tmp"', None, "acme.agree_terms: the CA's terms"),
    ('[acme]\nemail = "a@b.example"\naccept_tos = true\nstorage = "/etc/hostname/acme"', None,
     "acme.storage: /etc/hostname is not a directory"),
    ('[acme]\nemail = "a@b.example"\nagree_terms = true\nstorage = "/tmp"\nchallenges = ["dns-01"]',
     None, "dns-01 needs a DNS provider"),
    ('[acme]\nemail = "a@b.example"\nagree_terms = true\nstorage = "/tmp"',
     '{ acme = ["*.uproxy.test"] }', "a wildcard certificate needs the dns-01"),
    ('', None, "needs an [acme] table"),
    ('[acme]\nemail = "a@b.example"\nagree_terms = true\nstorage = "/tmp"', '{ acme = true }',
     "acme = true takes the names of the listener's routes"),
])
def test_check_catches_acme_mistakes(tmp_path, table, tls, expect):
    out = _check(tmp_path, table, tls or '{ acme = ["a.uproxy.test"] }')
    assert expect in out, out


def test_scheduler_renews_at_two_thirds_and_backs_off():
    import random
    from types import SimpleNamespace
    from uproxy.acme import scheduler
    rng = random.Random(1)
    cert = SimpleNamespace(not_before=0.0, not_after=90 * 86400.0)
    e = scheduler.Entry(("x.test",), cert=cert)
    t = scheduler.plan(e, 0.0, 2 / 3, rng)
    assert 60 * 86400 <= t <= 60 * 86400 + 0.02 * 90 * 86400
    e.failures = 1
    a = scheduler.backoff(e, 0.0, 60, 86400, "network", rng=rng)
    e.failures = 4
    b = scheduler.backoff(e, 0.0, 60, 86400, "network", rng=rng)
    assert 60 <= a <= 75 and 480 <= b <= 600
    e.failures = 1
    assert scheduler.backoff(e, 0.0, 60, 86400, "rate_limited", rng=rng) >= 3600
    e.failures = 30                                   # capped, and never past half the time left
    assert scheduler.backoff(e, 89 * 86400.0, 60, 30 * 86400, "network", rng=rng) <= 89 * 86400 + 43200


def test_rate_limit_and_validation_answers_are_explained():
    from acme import messages
    from uproxy.acme.client import _failure
    f = _failure(messages.Error(typ="urn:ietf:params:acme:error:rateLimited",
                                detail="too many certificates already issued"), "x.test")
    assert f.kind == "rate_limited" and "rate limit" in str(f)
    f = _failure(messages.Error(typ="urn:ietf:params:acme:error:unauthorized", detail="no"), "x.test")
    assert f.kind == "refused"


def test_a_rate_limit_waits_as_long_as_the_ca_asks():
    """A CA's 429 carries its wait in Retry-After (Let's Encrypt's can be
    days): the library raises the problem document alone, so the client's
    network keeps the header, and the back-off waits at least that long.
    A real HTTP server answers as an ACME CA does when it rate-limits."""
    import http.server
    import random
    from acme import messages
    from cryptography.hazmat.primitives.asymmetric import ec
    import josepy as jose
    from uproxy.acme import scheduler
    from uproxy.acme.client import _Network, _failure, retry_after_seconds

    class CA(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"type": "urn:ietf:params:acme:error:rateLimited",
                               "detail": "too many new orders recently"}).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Retry-After", "172800")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    srv = http.server.HTTPServer(("127.0.0.1", 0), CA)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        net = _Network(jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())), alg=jose.ES256,
                       user_agent="uproxy-test", timeout=5)
        with pytest.raises(messages.Error) as ei:
            net.get(f"http://127.0.0.1:{srv.server_port}/acme/new-order")
    finally:
        srv.shutdown()
        srv.server_close()
    f = _failure(ei.value, "x.test", net)
    assert f.kind == "rate_limited" and f.retry_after == 172800
    assert "wait 172800 s" in str(f)

    class Entry:                          # a name with no certificate yet
        failures, cert = 1, None
    wait = scheduler.backoff(Entry(), 0.0, 60, 30 * 86400, f.kind, retry_after=f.retry_after,
                             rng=random.Random(1))
    assert wait >= 172800
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 60) == 60.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_a_write_that_fails_half_way_leaves_the_old_file_whole(tmp_path, monkeypatch):
    from uproxy.acme import storage
    path = os.path.join(str(tmp_path), "certs", "x.pem")
    storage.write_atomic(path, b"old certificate and key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    def crash(fd):
        raise OSError(5, "Input/output error")       # the disk fails before the rename
    monkeypatch.setattr(storage.os, "fsync", crash)
    with pytest.raises(OSError):
        storage.write_atomic(path, b"new certificate" * 1000)
    monkeypatch.undo()
    with open(path, "rb") as f:
        assert f.read() == b"old certificate and key"
    assert os.listdir(os.path.dirname(path)) == ["x.pem"]     # no temporary file left
