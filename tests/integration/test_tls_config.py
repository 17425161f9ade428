"""TLS on the control plane: certificates and keys read and checked (`uproxy
check`, start, reload), grouped by their names into the core's contexts,
one library context per worker, session-ticket keys generated, loaded from
a file and rotated, and what /metrics, /status, `stats` and `doctor` say.

Real files throughout: every certificate is made by the `openssl` command
(ECDSA P-256 and RSA 2048) in a temporary directory, and the proxy is a
real `uproxy run` process (support.Proxy). tests/integration/test_tls.py covers the data
path; the handshakes here only show that what the control plane built is
what the workers serve (the certificate a name gets, the keys tickets use).
"""
import base64
import dataclasses
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import sys
import time
import urllib.request

import pytest

from http_upstream import HttpUpstream
from support import ROOT, Proxy, free_port, wait_for
from uproxy import config, tls

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")
PY = [sys.executable, "-m", "uproxy"]


# ---- certificates, made by openssl -------------------------------------------------

def _openssl(*args, cwd=None):
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return r.stdout


def make_cert(d, stem, names=("www.example.com",), kind="ec", days=365, cn=None, ca=None):
    """A certificate and its key in d: self-signed, or signed by ca (a
    (cert, key) pair); SAN DNS names from names (none when empty); days <
    0 makes one that has already expired. Returns (cert path, key path)."""
    d = str(d)
    cert, key = os.path.join(d, f"{stem}.pem"), os.path.join(d, f"{stem}.key")
    if kind == "ec":
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    else:
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key)
    subj = f"/CN={cn or (names[0] if names else stem)}"
    ext = os.path.join(d, f"{stem}.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n")
        if names:
            f.write("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
    csr = os.path.join(d, f"{stem}.csr")
    _openssl("req", "-new", "-key", key, "-subj", subj, "-out", csr)
    sign = ["-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial"] if ca else ["-signkey", key]
    _openssl("x509", "-req", "-in", csr, *sign, "-days", str(days), "-extfile", ext, "-out", cert)
    return cert, key


def make_ca(d, stem="ca"):
    d = str(d)
    cert, key = os.path.join(d, f"{stem}.pem"), os.path.join(d, f"{stem}.key")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN=uproxy test {stem}")
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """The certificates most tests share (made once: RSA keys take a while)."""
    d = tmp_path_factory.mktemp("certs")
    ca = make_ca(d)
    out = {"dir": str(d), "ca": ca,
           "www_ec": make_cert(d, "www_ec", ("www.example.com", "Example.COM"), ca=ca),
           "www_rsa": make_cert(d, "www_rsa", ("www.example.com", "example.com"), "rsa", ca=ca),
           "wild": make_cert(d, "wild", ("*.example.org", "example.org"), ca=ca),
           "api": make_cert(d, "api", ("api.example.net",), ca=ca),
           "cn_only": make_cert(d, "cn_only", (), cn="legacy.example.com"),
           "soon": make_cert(d, "soon", ("soon.example.com",), days=10),
           "expired": make_cert(d, "expired", ("old.example.com",), days=-1),
           "client": make_cert(d, "client", ("client.internal",), ca=ca)}
    return out


def der(cert_path):
    with open(cert_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


# ---- reading a certificate -------------------------------------------------------

def test_names_dates_and_key_type_are_read(certs):
    c = tls.read_certificate(*certs["www_ec"])
    assert c.names == ("www.example.com", "example.com")      # lower case, SAN order
    assert c.key_type == "EC" and c.subject == "www.example.com"
    end = _openssl("x509", "-in", certs["www_ec"][0], "-noout", "-enddate").strip().split("=", 1)[1]
    assert c.not_after == ssl.cert_time_to_seconds(end)
    assert 364 * 86400 < c.not_after - time.time() <= 365 * 86400
    assert tls.read_certificate(*certs["www_rsa"]).key_type == "RSA"
    assert tls.read_certificate(*certs["wild"]).names == ("*.example.org", "example.org")
    # no subjectAltName: the commonName is the name
    assert tls.read_certificate(*certs["cn_only"]).names == ("legacy.example.com",)


def test_a_key_of_another_certificate_is_named_with_the_fix(certs):
    with pytest.raises(tls.TLSFileError) as e:
        tls.read_certificate(certs["www_ec"][0], certs["api"][1])          # both EC P-256
    assert e.value.part == "key"
    assert f"the private key {certs['api'][1]} does not belong to the certificate " \
           f"{certs['www_ec'][0]}" in str(e.value)
    assert "openssl x509" in str(e.value) and "-pubkey" in str(e.value)
    with pytest.raises(tls.TLSFileError, match="does not belong"):
        tls.read_certificate(certs["www_ec"][0], certs["www_rsa"][1])      # EC cert, RSA key


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(certs, tmp_path):
    enc = str(tmp_path / "enc.key")
    _openssl("pkey", "-in", certs["www_ec"][1], "-aes256", "-passout", "pass:secret", "-out", enc)
    # a prompt would hang: the check must answer with stdin closed
    r = subprocess.run([sys.executable, "-c", "import sys; from uproxy import tls\n"
                        "try: tls.read_certificate(sys.argv[1], sys.argv[2])\n"
                        "except tls.TLSFileError as e: print(e)", certs["www_ec"][0], enc],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20, cwd=ROOT)
    assert "encrypted with a passphrase" in r.stdout and "openssl pkey" in r.stdout, r


def test_files_that_are_not_there_or_not_pem(certs, tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(tls.TLSFileError, match=f"the certificate {missing} does not exist"):
        tls.read_certificate(missing, certs["www_ec"][1])
    with pytest.raises(tls.TLSFileError, match="is a directory"):
        tls.read_certificate(certs["www_ec"][0], str(tmp_path))
    derfile = tmp_path / "c.der"
    derfile.write_bytes(der(certs["www_ec"][0]))
    with pytest.raises(tls.TLSFileError, match="not a PEM certificate.*-inform der"):
        tls.read_certificate(str(derfile), certs["www_ec"][1])
    with pytest.raises(tls.TLSFileError, match="holds no PEM private key") as e:
        tls.read_certificate(certs["www_ec"][0], certs["www_ec"][0])
    assert e.value.part == "key"


def test_a_combined_pem_needs_no_key_file(certs, tmp_path):
    both = tmp_path / "both.pem"
    both.write_text(open(certs["www_ec"][0]).read() + open(certs["www_ec"][1]).read())
    c = tls.read_certificate(str(both), str(both))
    assert c.names[0] == "www.example.com" and c.key == str(both)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_key_says_whose_it_must_be(certs, tmp_path):
    k = tmp_path / "k.key"
    shutil.copy(certs["www_ec"][1], k)
    os.chmod(k, 0)
    with pytest.raises(tls.TLSFileError, match="not readable by this process"):
        tls.read_certificate(certs["www_ec"][0], str(k))


def test_expiry_error_and_warning(certs):
    kind, msg = tls.expiry(tls.read_certificate(*certs["expired"]))
    assert kind == "error" and "expired on" in msg and certs["expired"][0] in msg
    kind, msg = tls.expiry(tls.read_certificate(*certs["soon"]))
    assert kind == "warning" and "expires in 9 days" in msg, msg
    assert tls.expiry(tls.read_certificate(*certs["www_ec"])) == (None, None)


# ---- grouping ------------------------------------------------------------------------

def test_certificates_with_the_same_names_share_a_context(certs):
    c = [tls.read_certificate(*certs[k]) for k in ("api", "www_ec", "www_rsa", "wild")]
    cert_ctx, names, n = tls.group(c)
    # api first: its group is the default (0); the RSA and ECDSA pair for
    # the same names share group 1
    assert cert_ctx == [0, 1, 1, 2] and n == 3
    assert names == [("api.example.net", 0), ("www.example.com", 1), ("example.com", 1),
                     ("*.example.org", 2), ("example.org", 2)]


def test_a_name_two_groups_serve_goes_to_the_first_listed(certs, tmp_path):
    other = tls.read_certificate(*make_cert(tmp_path, "o", ("example.com", "shop.example.com")))
    www = tls.read_certificate(*certs["www_ec"])
    _, names, n = tls.group([www, other])
    assert n == 2 and dict(names)["example.com"] == 0 and dict(names)["shop.example.com"] == 1


def test_alpn_wire_form():
    assert tls.alpn_wire(["h2", "http/1.1"]) == b"\x02h2\x08http/1.1"
    assert tls.alpn_wire([]) == b""


# ---- session-ticket keys ---------------------------------------------------------------

def test_ticket_key_files_binary_and_base64(tmp_path):
    k1, k2 = os.urandom(80), os.urandom(80)
    b = tmp_path / "t.bin"
    b.write_bytes(k1 + k2)
    assert tls.read_ticket_keys(str(b)) == (k1, k2)
    t = tmp_path / "t.txt"
    t.write_text(f"# newest first\n{base64.b64encode(k2).decode()}\n\n{base64.b64encode(k1).decode()}\n")
    assert tls.read_ticket_keys(str(t)) == (k2, k1)
    # made the way docs/tls.md says
    made = tmp_path / "made.key"
    with open(made, "wb") as f:
        subprocess.run(["openssl", "rand", "80"], stdout=f, check=True)
    assert len(tls.read_ticket_keys(str(made))) == 1
    b64 = tmp_path / "made.b64"
    b64.write_bytes(base64.b64encode(os.urandom(80)) + b"\n")
    assert len(tls.read_ticket_keys(str(b64))) == 1


@pytest.mark.parametrize("content,words", [
    (b"", "openssl rand 80"),
    (os.urandom(81), "neither base64 lines nor binary keys of 80 bytes"),
    (base64.b64encode(os.urandom(48)) + b"\n", "key 1 is 48 bytes, not 80"),
    (b"x" * 16 + os.urandom(64) + b"x" * 16 + os.urandom(64), "same name"),
    (os.urandom(80 * 17), "at most 16"),
])
def test_bad_ticket_key_files(tmp_path, content, words):
    p = tmp_path / "bad.key"
    p.write_bytes(content)
    with pytest.raises(tls.TLSFileError, match=words):
        tls.read_ticket_keys(str(p))


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _ltls(**kw):
    base = dict(certificates=(), ticket_rotate_ms=3600_000, session_timeout_s=7200)
    base.update(kw)
    return config.ListenerTLS(**base)


def test_generated_ticket_keys_survive_reloads_and_rotate():
    clock = Clock()
    keys = tls.TicketKeys(clock)
    t = _ltls()
    first = keys.keys_for("https", t)
    assert len(first) == 80
    assert keys.keys_for("https", t) == first           # a reload keeps them
    assert keys.keys_for("other", t) != first           # each listener its own
    assert 3599 < keys.due() <= 3600
    assert keys.rotate_due() == []
    clock.t += 3600
    assert sorted(keys.rotate_due()) == ["https", "other"]
    second = keys.keys_for("https", t)
    # a new first key issues; the previous is still accepted
    assert len(second) == 160 and second[80:] == first
    # tickets live 2 h and a key issues for 1 h: 3 keys are kept, no more
    for _ in range(5):
        clock.t += 3600
        keys.rotate_due()
    assert len(keys.keys_for("https", t)) == 3 * 80
    keys.forget({"https"})
    assert "other" not in keys.generated


def test_ticket_keys_from_a_file_or_none():
    keys = tls.TicketKeys(Clock())
    k = os.urandom(80)
    assert keys.keys_for("a", _ltls(ticket_keys=(k,))) == k
    assert keys.keys_for("b", _ltls(session_tickets=False)) == b""
    assert keys.due() is None                            # nothing to rotate


def test_rotation_republishes_and_retries_after_a_failure(monkeypatch):
    """Runtime.rotate_tickets: publish the same configuration with the
    rotated keys; a failed publish is retried a minute later, not at every
    tick of the main loop."""
    from uproxy import runtime
    clock = Clock()
    rt = runtime.Runtime("unused.toml")
    rt.tickets = tls.TicketKeys(clock)
    rt.tickets.keys_for("https", _ltls())
    rt.cfg = object()
    published, fail = [], [True]

    def publish(cfg):
        if fail[0]:
            raise config.ConfigError("x.toml", "listeners[0].tls", "the TLS library refused it")
        published.append(cfg)
        rt._ticket_retry = None
    monkeypatch.setattr(rt, "_publish", publish)
    monkeypatch.setattr(rt, "event", lambda text: None)
    now = [500.0]
    rt.monotonic = lambda: now[0]
    assert rt.rotate_tickets() is False and not published       # not due
    clock.t += 3600
    assert rt.rotate_tickets() is False                          # due, publish failed
    assert len(rt.tickets.generated["https"].keys) == 2          # rotated all the same
    assert rt.rotate_tickets() is False and rt._ticket_retry == 560.0
    fail[0] = False
    now[0] = 559.0
    assert rt.rotate_tickets() is False and not published        # waits its minute
    now[0] = 560.0
    assert rt.rotate_tickets() is True and published == [rt.cfg]
    assert rt.rotate_tickets() is False and len(published) == 1


# ---- the configuration -------------------------------------------------------------

TLS_LINE, CLUSTER_TLS_LINE = 9, 14      # where _conf writes the two tls keys


def _conf(tmp_path, tls_text, mode="http", cluster_tls=None, extra=""):
    port = free_port()
    text = (f'[proxy]\nworkers = 2\n{extra}\n[[listeners]]\nname = "https"\n'
            f'bind = "127.0.0.1:{port}"\nmode = "{mode}"\ncluster = "app"\n'
            f'tls = {tls_text}\n\n[[clusters]]\nname = "app"\nservers = ["127.0.0.1:9"]\n'
            + (f"tls = {cluster_tls}\n" if cluster_tls is not None else ""))
    p = tmp_path / "uproxy.toml"
    p.write_text(text)
    return str(p), port


def _pairs(*pairs):
    return "[" + ", ".join(f'{{ cert = "{c}", key = "{k}" }}' for c, k in pairs) + "]"


def check(path, *args):
    r = subprocess.run([*PY, "check", "-c", path, "--no-bind", *args], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_a_good_tls_configuration_checks_ok(certs, tmp_path):
    path, _ = _conf(tmp_path, f'{{ certificates = {_pairs(certs["www_ec"], certs["www_rsa"])}, '
                              f'min_version = "1.3", alpn = ["http/1.1"], handshake_timeout = "5s" }}',
                    cluster_tls=f'{{ ca = "{certs["ca"][0]}", sni = "App.Internal" }}')
    code, out = check(path)
    assert code == 0, out
    assert "2 TLS certificates" in out and "warning" not in out
    cfg = config.load(path)
    t = cfg.listeners[0].tls
    assert t.min_version == "1.3" and t.handshake_timeout_ms == 5000 and t.alpn == ("http/1.1",)
    assert t.ciphers == "ECDHE+AESGCM:ECDHE+CHACHA20" and t.curves == "X25519:P-256:P-384"
    assert t.ciphersuites == ("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                              "TLS_CHACHA20_POLY1305_SHA256")
    assert (t.session_tickets, t.ticket_rotate_ms, t.session_timeout_s, t.session_cache) == \
        (True, 12 * 3600_000, 7200, 20000)
    c = cfg.clusters["app"].tls
    assert (c.ca, c.sni, c.verify, c.cert) == (certs["ca"][0], "app.internal", True, None)


def test_relative_paths_are_the_configuration_files_neighbours(certs, tmp_path):
    for f in certs["www_ec"]:
        shutil.copy(f, tmp_path)
    path, _ = _conf(tmp_path, '{ certificates = [{ cert = "www_ec.pem", key = "www_ec.key" }] }')
    r = subprocess.run([*PY, "check", "-c", path, "--no-bind"], capture_output=True, text=True,
                       cwd="/", env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src")))
    assert r.returncode == 0, r.stderr
    assert config.load(path).listeners[0].tls.certificates[0].cert == str(tmp_path / "www_ec.pem")


# (what is wrong, the tls table, key path, words of the message); {x} are certs' paths
MISTAKES = [
    ("mismatched key", '{{ certificates = [{{ cert = "{www_ec}", key = "{api_key}" }}] }}',
     "listeners[0].tls.certificates[0].key", "does not belong to the certificate"),
    ("missing certificate", '{{ certificates = [{{ cert = "{dir}/nope.pem", key = "{api_key}" }}] }}',
     "listeners[0].tls.certificates[0].cert", "nope.pem does not exist"),
    ("expired", '{{ certificates = [{{ cert = "{expired}", key = "{expired_key}" }}] }}',
     "listeners[0].tls.certificates[0].cert", "expired on"),
    ("no certificates", '{{ min_version = "1.2" }}', "listeners[0].tls.certificates", "is required"),
    ("empty certificates", '{{ certificates = [] }}', "listeners[0].tls.certificates", "at least one"),
    ("tls = true on a listener", 'true', "listeners[0].tls", "must be a table like"),
    ("old version", '{{ certificates = [{{ cert = "{www_ec}" , key = "{www_ec_key}" }}], min_version = "1.1" }}',
     "listeners[0].tls.min_version", "RFC 8996"),
    ("unknown version", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], min_version = "1.4" }}',
     "listeners[0].tls.min_version", "'1.4' is not one of '1.2', '1.3'"),
    ("weak ciphers only", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], ciphers = "RC4:3DES" }}',
     "listeners[0].tls.ciphers", "no usable TLS 1.2 cipher"),
    ("suite typo", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], '
                   'ciphersuites = "TLS_AES_128_GCM_SHA265" }}',
     "listeners[0].tls.ciphersuites", "did you mean 'TLS_AES_128_GCM_SHA256'?"),
    ("unknown key", '{{ certificate = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}] }}',
     "listeners[0].tls.certificate", "did you mean 'certificates'?"),
    ("unknown key in a pair", '{{ certificates = [{{ cert = "{www_ec}", kee = "{www_ec_key}" }}] }}',
     "listeners[0].tls.certificates[0].kee", "did you mean 'key'?"),
    ("h2 on http", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], alpn = ["h2"] }}',
     "listeners[0].tls.alpn[0]", "needs http2 = true"),
    ("client auth without a CA", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], '
                                 'client_auth = "required" }}',
     "listeners[0].tls.client_auth", "needs client_ca"),
    ("client auth typo", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], '
                         'client_ca = "{ca}", client_auth = "requird" }}',
     "listeners[0].tls.client_auth", "did you mean 'required'?"),
    ("client CA not a bundle", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], '
                               'client_ca = "{www_ec_key}" }}',
     "listeners[0].tls.client_ca", "holds no PEM certificate"),
    ("two ECDSA keys for one name set", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}, '
                                        '{{ cert = "{www_ec}", key = "{www_ec_key}" }}] }}',
     "listeners[0].tls.certificates[1].cert", "same key type (EC)"),
    ("ticket file and no tickets", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], '
                                   'session_tickets = false, ticket_key_file = "{www_ec_key}" }}',
     "listeners[0].tls.ticket_key_file", "session_tickets = false"),
    ("bad ticket file", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], '
                        'ticket_key_file = "{www_ec_key}" }}',
     "listeners[0].tls.ticket_key_file", "neither base64 lines nor binary keys"),
    ("rotation too often", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], ticket_rotate = "10s" }}',
     "listeners[0].tls.ticket_rotate", "must be between"),
    ("bad duration", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], handshake_timeout = "soon" }}',
     "listeners[0].tls.handshake_timeout", "is not a duration"),
    ("curve typo", '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], curves = "X25519:P256" }}',
     "listeners[0].tls.curves", "did you mean 'P-256'?"),
    ("certificate header without client certificates",
     '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], client_subject_header = "X-Client-Subject" }}',
     "listeners[0].tls.client_subject_header", "client_auth = \"none\" never asks for"),
    ("certificate header not a name",
     '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], client_ca = "{ca}", '
     'client_fingerprint_header = "X Client: 1" }}',
     "listeners[0].tls.client_fingerprint_header", "is not a header name"),
    ("certificate header the proxy writes",
     '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], client_ca = "{ca}", '
     'client_subject_header = "x-forwarded-for" }}',
     "listeners[0].tls.client_subject_header", "frames or writes itself"),
    ("both certificate headers one name",
     '{{ certificates = [{{ cert = "{www_ec}", key = "{www_ec_key}" }}], client_ca = "{ca}", '
     'client_subject_header = "X-Cert", client_fingerprint_header = "x-cert" }}',
     "listeners[0].tls.client_fingerprint_header", "give each its own"),
]


@pytest.mark.parametrize("what,table,key,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_listener_tls_mistakes(certs, tmp_path, what, table, key, words):
    subst = {"dir": certs["dir"], "ca": certs["ca"][0]}
    for k in ("www_ec", "api", "expired"):
        subst[k], subst[f"{k}_key"] = certs[k]
    path, _ = _conf(tmp_path, table.format(**subst))
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    found = [x for x in e.value.errors if x.key == key]
    assert found, f"{key} not in {[x.one() for x in e.value.errors]}"
    assert words in found[0].message, found[0].message
    assert found[0].line == TLS_LINE and found[0].snippet.startswith("tls = ")


def test_check_prints_the_file_line_and_fix(certs, tmp_path):
    path, _ = _conf(tmp_path, f'{{ certificates = {_pairs((certs["www_ec"][0], certs["api"][1]))} }}')
    code, out = check(path)
    assert code == 2, out
    assert f"configuration error: {path}:{TLS_LINE}: listeners[0].tls.certificates[0].key: the " \
           f"private key {certs['api'][1]} does not belong" in out
    assert f"\n{TLS_LINE:>6} | tls = {{ certificates" in out


def test_warnings_in_check_and_at_start(certs, tmp_path):
    """A certificate that expires within 30 days, verify = false: the file
    is valid (exit 0), and both are said, at their lines."""
    path, port = _conf(tmp_path, f'{{ certificates = {_pairs(certs["www_ec"], certs["soon"])} }}',
                       cluster_tls='{ verify = false }')
    code, out = check(path)
    assert code == 0, out
    assert f"warning: {path}:{TLS_LINE}: listeners[0].tls.certificates[1].cert: the " \
           f"certificate {certs['soon'][0]} (soon.example.com) expires in 9 days" in out
    assert f"warning: {path}:{CLUSTER_TLS_LINE}: clusters[0].tls.verify: verify = false" in out
    p = Proxy(tmp_path, open(path).read(), env={"UPROXY_NO_BPF": "1"})
    try:
        assert "configuration warning" in p.output() and "expires in 9 days" in p.output()
    finally:
        assert p.stop() == 0


def test_cluster_tls_forms_and_mistakes(certs, tmp_path):
    path, _ = _conf(tmp_path, _table(certs), cluster_tls="true")
    cfg = config.load(path)
    c = cfg.clusters["app"].tls
    assert (c.ca, c.sni, c.verify, c.cert, c.min_version) == (None, None, True, None, "1.2")
    # servers given by address: no name to verify, said at the tls line
    assert any(w.key == "clusters[0].tls" and "not for a name" in w.message for w in cfg.warnings)
    # servers given by one host name: that name is sent and verified
    named = tmp_path / "named.toml"
    named.write_text(open(path).read().replace('"127.0.0.1:9"', '"LocalHost:9"'))
    cfg = config.load(str(named))
    assert cfg.clusters["app"].tls.sni == "localhost"
    assert not any(w.key == "clusters[0].tls" for w in cfg.warnings)
    path, _ = _conf(tmp_path, _table(certs),
                    cluster_tls=f'{{ ca = "{certs["ca"][0]}", cert = "{certs["client"][0]}", '
                                f'key = "{certs["client"][1]}", min_version = "1.3" }}')
    c = config.load(path).clusters["app"].tls
    assert c.cert.names == ("client.internal",) and c.min_version == "1.3"
    for bad, key, words in [
            (f'{{ key = "{certs["client"][1]}" }}', "clusters[0].tls.key", "key needs cert"),
            (f'{{ cert = "{certs["client"][0]}", key = "{certs["api"][1]}" }}', "clusters[0].tls.key",
             "does not belong"),
            (f'{{ ca = "{certs["dir"]}/none.pem" }}', "clusters[0].tls.ca", "does not exist"),
            ('{ sni = "not a name" }', "clusters[0].tls.sni", "is not a host name"),
            ('{ verify = "yes" }', "clusters[0].tls.verify", "must be true or false"),
            ('"on"', "clusters[0].tls", "must be true or a table"),
            ('{ verfy = false }', "clusters[0].tls.verfy", "did you mean 'verify'?")]:
        path, _ = _conf(tmp_path, _table(certs), cluster_tls=bad)
        with pytest.raises(config.ConfigError) as e:
            config.load(path)
        found = [x for x in e.value.errors if x.key == key]
        assert found and words in found[0].message, [x.one() for x in e.value.errors]


def _table(certs, extra=""):
    return f'{{ certificates = {_pairs(certs["www_ec"])}{extra} }}'


def test_a_tcp_listener_takes_tls_checked_the_same_way(certs, tmp_path):
    path, _ = _conf(tmp_path, _table(certs, ', alpn = ["h2", "imap"]'), mode="tcp")
    t = config.load(path).listeners[0].tls
    assert t.alpn == ("h2", "imap")            # any protocol: the stream is the upstream's
    path, _ = _conf(tmp_path, _table(certs), mode="tcp")
    assert config.load(path).listeners[0].tls.alpn == ()     # none unless asked
    path, _ = _conf(tmp_path, f'{{ certificates = {_pairs((certs["www_ec"][0], certs["api"][1]))} }}',
                    mode="tcp")
    with pytest.raises(config.ConfigError, match="does not belong"):
        config.load(path)


def test_client_certificate_headers_are_read_and_http_only(certs, tmp_path):
    heads = (f', client_ca = "{certs["ca"][0]}", client_auth = "optional", '
             f'client_subject_header = "X-Client-Subject", client_fingerprint_header = "X-Client-Cert-Sha256"')
    path, _ = _conf(tmp_path, _table(certs, heads))
    t = config.load(path).listeners[0].tls
    assert (t.client_subject_header, t.client_fingerprint_header) == \
        ("X-Client-Subject", "X-Client-Cert-Sha256")
    assert tls.status(config.load(path))["listeners"][0]["client_fingerprint_header"] == \
        "X-Client-Cert-Sha256"
    path, _ = _conf(tmp_path, _table(certs, heads), mode="tcp")
    with pytest.raises(config.ConfigError) as e:
        config.load(path)
    assert {x.key for x in e.value.errors} == {"listeners[0].tls.client_subject_header",
                                                "listeners[0].tls.client_fingerprint_header"}
    assert 'needs mode = "http"' in e.value.errors[0].message
    # Absent by default: no header is written, none is dropped.
    path, _ = _conf(tmp_path, _table(certs, f', client_ca = "{certs["ca"][0]}"'))
    t = config.load(path).listeners[0].tls
    assert (t.client_subject_header, t.client_fingerprint_header) == (None, None)


def test_client_ca_defaults_to_required_and_none_warns(certs, tmp_path):
    path, _ = _conf(tmp_path, _table(certs, f', client_ca = "{certs["ca"][0]}"'))
    assert config.load(path).listeners[0].tls.client_auth == "required"
    path, _ = _conf(tmp_path, _table(certs, f', client_ca = "{certs["ca"][0]}", client_auth = "none"'))
    cfg = config.load(path)
    assert [w.key for w in cfg.warnings] == ["listeners[0].tls.client_auth"]


def test_a_world_readable_ticket_key_file_is_a_warning(certs, tmp_path):
    kf = tmp_path / "ticket.key"
    kf.write_bytes(os.urandom(160))
    os.chmod(kf, 0o644)
    path, _ = _conf(tmp_path, _table(certs, f', ticket_key_file = "{kf}"'))
    cfg = config.load(path)
    assert len(cfg.listeners[0].tls.ticket_keys) == 2
    assert any("chmod 600" in w.message for w in cfg.warnings)
    os.chmod(kf, 0o600)
    assert not config.load(path).warnings


def test_disable_features_knows_ktls(tmp_path):
    p = tmp_path / "u.toml"
    p.write_text('[proxy]\ndisable_features = ["ktls"]\n[[listeners]]\nname = "l"\n'
                 'bind = "127.0.0.1:1"\ncluster = "c"\n[[clusters]]\nname = "c"\nservers = ["127.0.0.1:9"]\n')
    assert config.load(str(p)).proxy.disable_features == ("ktls",)
    from uproxy import features
    from uproxy._native import lib
    assert features.bit("ktls") == lib.UP_F_KTLS
    assert features.from_env({"UPROXY_DISABLE": "ktls"}) == ["ktls"]


def test_disable_features_knows_ktls_rx(tmp_path):
    """kTLS's receiving half has its own switch (kept TX, the library
    decrypts), and uproxy check names a misspelling of it."""
    p = tmp_path / "u.toml"
    body = ('[[listeners]]\nname = "l"\nbind = "127.0.0.1:1"\ncluster = "c"\n'
            '[[clusters]]\nname = "c"\nservers = ["127.0.0.1:9"]\n')
    p.write_text('[proxy]\ndisable_features = ["ktls_rx"]\n' + body)
    assert config.load(str(p)).proxy.disable_features == ("ktls_rx",)
    from uproxy import features
    from uproxy._native import lib
    assert features.bit("ktls_rx") == lib.UP_F_KTLS_RX
    assert features.from_env({"UPROXY_DISABLE": "ktls_rx"}) == ["ktls_rx"]
    p.write_text('[proxy]\ndisable_features = ["ktls_rxx"]\n' + body)
    with pytest.raises(config.ConfigError, match="ktls_rx"):
        config.load(str(p))


# ---- the library's contexts --------------------------------------------------------

def test_one_context_per_worker_and_freed(certs, tmp_path):
    from uproxy import tables
    from uproxy._native import ffi
    path, _ = _conf(tmp_path, f'{{ certificates = {_pairs(certs["www_ec"], certs["www_rsa"], certs["wild"])} }}',
                    cluster_tls=f'{{ ca = "{certs["ca"][0]}" }}')
    cfg = config.load(path)
    ctx = tables.TLSContexts(cfg, 3)
    for arr in (ctx.listeners["https"], ctx.clusters["app"]):
        ptrs = [int(ffi.cast("uintptr_t", arr[w])) for w in range(3)]
        assert all(ptrs) and len(set(ptrs)) == 3          # nothing shared between workers
    ctx.free()
    assert ctx.listeners["https"][0] == ffi.NULL and not ctx.owned
    ctx.free()                                             # twice is harmless


def test_the_library_judges_what_python_cannot(certs, tmp_path):
    """check_library asks the core's own up_tls_server_new and reports its
    refusal at the key it is about, with the file's line."""
    from uproxy import tables
    path, _ = _conf(tmp_path, _table(certs))
    cfg = config.load(path)
    assert tables.check_library(cfg) == []
    l = cfg.listeners[0]
    for field_, value, key in [("ciphers", "RC4", "listeners[0].tls.ciphers"),
                               ("ciphersuites", "TLS_NONE", "listeners[0].tls.ciphersuites")]:
        bad = dataclasses.replace(cfg, listeners=(dataclasses.replace(
            l, tls=dataclasses.replace(l.tls, **{field_: value})),))
        (e,) = tables.check_library(bad)
        assert e.key == key and e.line == TLS_LINE and "the TLS library refused it" in e.message, \
            e.one()
    # a key that changed on disk after the checks: the library names it
    gone = dataclasses.replace(l.tls.certificates[0], key=os.path.join(certs["dir"], "gone.key"))
    bad = dataclasses.replace(cfg, listeners=(dataclasses.replace(
        l, tls=dataclasses.replace(l.tls, certificates=(gone,))),))
    (e,) = tables.check_library(bad)
    assert e.key == "listeners[0].tls.certificates[0].key" and "gone.key" in e.message, e.one()


def test_tables_point_at_the_contexts(certs, tmp_path):
    from uproxy import tables
    from uproxy._native import ffi

    class Socks:
        id = 7

        def fds(self):
            return [-1, -1]
    path, _ = _conf(tmp_path, _table(certs, ', handshake_timeout = "3s"'),
                    cluster_tls=f'{{ ca = "{certs["ca"][0]}" }}')
    cfg = config.load(path)
    t = tables.Tables(cfg, 1, 2, {"https": Socks()}, {("app", "127.0.0.1:9"): 0})
    cl, cc = t.ptr.listeners[0], t.ptr.clusters[0]
    assert cl.tls == t.tls.listeners["https"] and cl.tls[0] != ffi.NULL and cl.tls[1] != ffi.NULL
    assert cl.tls_handshake_timeout_ms == 3000
    assert cc.tls == t.tls.clusters["app"] and cc.tls[1] != ffi.NULL
    t.free()


# ---- a running proxy ----------------------------------------------------------------

def _client(ciphers=None, max13=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if ciphers:
        ctx.set_ciphers(ciphers)
    if not max13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


CLIENT = _client()          # one context: a session resumes only with the one that made it


def fetch(port, sni, ctx=None, session=None):
    """One request over TLS: (the server's certificate (DER), the session,
    whether it was resumed, the response)."""
    ctx = ctx or CLIENT
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni, session=session) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                try:
                    b = s.recv(65536)
                except (ssl.SSLZeroReturnError, ConnectionResetError):
                    break
                if not b:
                    break
                data += b
            return s.getpeercert(binary_form=True), s.session, s.session_reused, data


@pytest.fixture
def upstream():
    up = HttpUpstream()
    yield up
    up.close()


@pytest.fixture
def run(tmp_path):
    made = []

    def make(text, **kw):
        p = Proxy(tmp_path, text, env={"UPROXY_NO_BPF": "1"}, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        if p.p.poll() is None:
            assert p.stop() == 0, p.output()


def _proxy_conf(port, up, tls_text, admin=None, workers=2):
    return (f'[proxy]\nworkers = {workers}\n\n[[listeners]]\nname = "https"\n'
            f'bind = "127.0.0.1:{port}"\nmode = "http"\ncluster = "app"\ntls = {tls_text}\n\n'
            f'[[clusters]]\nname = "app"\nservers = ["{up.addr}"]\n'
            + (f'\n[admin]\nbind = "127.0.0.1:{admin}"\n' if admin else ""))


def test_sni_picks_the_certificate_group_and_the_client_the_key_type(certs, run, upstream):
    port = free_port()
    run(_proxy_conf(port, upstream, f'{{ certificates = '
                    f'{_pairs(certs["api"], certs["www_ec"], certs["www_rsa"], certs["wild"])} }}'))
    assert fetch(port, "www.example.com")[0] == der(certs["www_ec"][0])
    assert fetch(port, "EXAMPLE.com")[0] == der(certs["www_ec"][0])
    assert fetch(port, "shop.example.org")[0] == der(certs["wild"][0])     # "*.example.org"
    assert fetch(port, "example.org")[0] == der(certs["wild"][0])
    assert fetch(port, "unknown.test")[0] == der(certs["api"][0])          # group 0, the first
    assert fetch(port, None)[0] == der(certs["api"][0])
    # a client that only takes RSA gets the RSA certificate of the same group
    rsa = _client("ECDHE-RSA-AES128-GCM-SHA256", max13=False)
    cert, _, _, data = fetch(port, "www.example.com", rsa)
    assert cert == der(certs["www_rsa"][0]) and data.startswith(b"HTTP/1.1 200")


def test_tickets_resume_on_every_worker_and_across_a_reload(certs, run, upstream, tmp_path):
    port = free_port()
    p = run(_proxy_conf(port, upstream, _table(certs)))
    _, session, reused, _ = fetch(port, "www.example.com")
    assert not reused and session is not None
    # two workers, SO_REUSEPORT: the connections land on both, and each
    # resumes the session the other issued (the keys are shared)
    results = [fetch(port, "www.example.com", session=session)[2] for _ in range(12)]
    assert all(results), results
    # a reload keeps the generated keys
    gen = p.stats()["config_generation"]
    p.reload()
    wait_for(lambda: p.stats()["config_generation"] > gen, what="the reload")
    assert fetch(port, "www.example.com", session=session)[2]
    wait_for(lambda: p.total("tls_resumed") >= 13, what="the resumptions to be counted")
    # (13 connections on two SO_REUSEPORT sockets: both workers resumed some)
    assert all(w["counters"]["tls_resumed"] for w in p.stats()["workers"]), p.stats()["workers"]


def test_a_ticket_key_file_is_shared_by_instances_and_rotated_by_reload(certs, run, upstream,
                                                                       tmp_path):
    kf = tmp_path / "ticket.key"
    old, new = os.urandom(80), os.urandom(80)
    kf.write_bytes(old)
    os.chmod(kf, 0o600)
    a, b = free_port(), free_port()
    tls_text = _table(certs, f', ticket_key_file = "{kf}"')
    pa = run(_proxy_conf(a, upstream, tls_text, workers=1))
    run(_proxy_conf(b, upstream, tls_text, workers=1))
    _, session, _, _ = fetch(a, "www.example.com")
    assert fetch(b, "www.example.com", session=session)[2], "the other instance did not resume"
    # the file's owner adds a new first key and reloads: the old ticket still resumes
    kf.write_bytes(new + old)
    gen = pa.stats()["config_generation"]
    pa.reload()
    wait_for(lambda: pa.stats()["config_generation"] > gen, what="the reload")
    _, s2, reused, _ = fetch(a, "www.example.com", session=session)
    assert reused
    # and tickets issued now are under the new key: the other instance, still
    # on the old key alone, does not know them
    _, s3, _, _ = fetch(a, "www.example.com")
    assert not fetch(b, "www.example.com", session=s3)[2]


def test_reload_rereads_certificates_and_keeps_the_old_on_a_bad_key(certs, run, upstream, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    cert, key = str(site / "cert.pem"), str(site / "key.pem")
    shutil.copy(certs["www_ec"][0], cert)
    shutil.copy(certs["www_ec"][1], key)
    port = free_port()
    p = run(_proxy_conf(port, upstream, f'{{ certificates = [{{ cert = "{cert}", key = "{key}" }}] }}'))
    assert fetch(port, "www.example.com")[0] == der(certs["www_ec"][0])
    # a renewal half done: the new certificate, the old key
    renewed = make_cert(tmp_path, "renewed", ("www.example.com",))
    shutil.copy(renewed[0], cert)
    r = subprocess.run([*PY, "reload", "--pid", str(p.pid)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "reload failed" in r.stderr and f"the private key {key} does not belong" in r.stderr
    assert "listeners[0].tls.certificates[0].key" in r.stderr
    assert fetch(port, "www.example.com")[0] == der(certs["www_ec"][0])     # the old one serves
    # the renewal completes: the reload takes the new pair
    shutil.copy(renewed[1], key)
    r = subprocess.run([*PY, "reload", "--pid", str(p.pid)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert fetch(port, "www.example.com")[0] == der(renewed[0])


def test_metrics_status_and_stats_show_tls(certs, run, upstream):
    port, admin = free_port(), free_port()
    p = run(_proxy_conf(port, upstream, f'{{ certificates = {_pairs(certs["www_ec"], certs["wild"])} }}',
                        admin=admin))
    wait_for(lambda: "admin endpoint on" in p.output(), what="the admin endpoint")
    fetch(port, "www.example.com")
    wait_for(lambda: p.total("tls_handshakes") >= 1, what="the handshake to be counted")
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    from prometheus_client.parser import text_string_to_metric_families
    got = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            got[(s.name, tuple(sorted(s.labels.items())))] = s.value
    for k, name in (("www_ec", "www.example.com"), ("wild", "*.example.org")):
        lab = (("cert", certs[k][0]), ("listener", "https"), ("name", name))
        want = tls.read_certificate(*certs[k]).not_after
        assert got[("uproxy_tls_certificate_expiry_timestamp_seconds", lab)] == want
    assert sum(v for (n, _), v in got.items() if n == "uproxy_tls_handshakes_total") >= 1
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as r:
        st = json.load(r)["tls"]
    (l,) = st["listeners"]
    assert l["listener"] == "https" and l["groups"] == 2
    assert [c["cert"] for c in l["certificates"]] == [certs["www_ec"][0], certs["wild"][0]]
    assert [c["group"] for c in l["certificates"]] == [0, 1]
    assert 364 * 86400 < l["certificates"][0]["expires_in_s"] <= 365 * 86400
    assert l["session_tickets"]["source"] == "generated" and l["session_tickets"]["keys"] == 1
    wait_for(lambda: os.path.exists(f"{_run_dir()}/uproxy-{p.pid}.detail.json"),
             what="the detail file")
    r = subprocess.run([*PY, "stats", "--pid", str(p.pid)], capture_output=True, text=True,
                       cwd=ROOT, timeout=30)
    assert r.returncode == 0 and "tls_handshakes" in r.stdout and "tls_resumed" in r.stdout, r


def _run_dir():
    from uproxy import shm
    return shm.run_dir()


def test_stats_of_a_plain_proxy_has_no_tls_rows(run, upstream):
    port = free_port()
    p = run(f'[proxy]\nworkers = 1\n[[listeners]]\nname = "h"\nbind = "127.0.0.1:{port}"\n'
            f'mode = "http"\ncluster = "c"\n[[clusters]]\nname = "c"\nservers = ["{upstream.addr}"]\n')
    r = subprocess.run([*PY, "stats", "--pid", str(p.pid)], capture_output=True, text=True,
                       cwd=ROOT, timeout=30)
    assert r.returncode == 0 and "tls_" not in r.stdout, r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start as root and become nobody")
def test_a_key_the_unprivileged_user_cannot_read_is_a_clear_start_error(certs, tmp_path):
    """The checks run as root (at start) and pass; the library reads the
    key after [proxy] user took effect and cannot: the start fails with the
    key's line and what to do, not with a worker error."""
    d = tempfile.mkdtemp(prefix="uproxy-tls-")      # a directory nobody may enter
    try:
        os.chmod(d, 0o755)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "root-only.key")
        shutil.copy(certs["www_ec"][0], cert)
        shutil.copy(certs["www_ec"][1], key)
        os.chmod(cert, 0o644)
        os.chmod(key, 0o600)
        port = free_port()
        path = os.path.join(d, "u.toml")
        with open(path, "w") as f:
            f.write(f'[proxy]\nworkers = 1\nuser = "nobody"\n\n[[listeners]]\nname = "https"\n'
                    f'bind = "127.0.0.1:{port}"\nmode = "http"\ncluster = "app"\n'
                    f'tls = {{ certificates = [{{ cert = "{cert}", key = "{key}" }}] }}\n'
                    f'\n[[clusters]]\nname = "app"\nservers = ["127.0.0.1:9"]\n')
        r = subprocess.run([*PY, "run", "-c", path], capture_output=True, text=True, cwd=ROOT,
                           timeout=60, env=dict(os.environ, UPROXY_NO_BPF="1"))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert f"{path}:10: listeners[0].tls.certificates[0].key: the TLS library refused it" in out
    assert "Permission denied" in out and "must be readable by that user" in out


# ---- doctor --------------------------------------------------------------------------

def test_doctor_reports_the_library_and_ktls():
    from uproxy import doctor
    from uproxy._native import ffi, lib
    checks = {c["name"]: c for c in doctor.check_tls()}
    assert checks["tls_library"]["status"] == "ok"
    assert checks["tls_library"]["library"] == ffi.string(lib.up_tls_library()).decode()
    assert checks["tls_library"]["library"].startswith("OpenSSL")
    k = checks["ktls"]
    assert k["available"] == bool(lib.up_tls_ktls_available())
    if not k["available"]:
        assert k["status"] == "missing" and not k["blocker"] and "CONFIG_TLS" in k["detail"] + k["fix"]
    # the three reasons, as a host without kTLS gives them
    no = {c["name"]: c for c in doctor.check_tls(ktls=False, config="n")}["ktls"]
    assert "built without CONFIG_TLS" in no["detail"] and "user space" in no["detail"]
    mod = {c["name"]: c for c in doctor.check_tls(ktls=False, config="m")}["ktls"]
    if not os.path.isdir("/sys/module/tls"):
        assert "not loaded" in mod["detail"] and "modprobe tls" in mod["fix"]
    yes = {c["name"]: c for c in doctor.check_tls(ktls=True)}["ktls"]
    assert yes["status"] == "ok" and "disable_features" in yes["detail"]


def test_doctor_text_has_the_tls_lines():
    r = subprocess.run([*PY, "doctor"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env=dict(os.environ, UPROXY_NO_LIBURING_PROBE="1"))
    assert "tls_library" in r.stdout and "OpenSSL" in r.stdout and "ktls" in r.stdout, r.stdout


# ---- health checks of a TLS cluster ------------------------------------------------

class TLSServer:
    """An HTTPS server in a thread: answers every request with 204."""

    def __init__(self, cert, key):
        import threading
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.addr = self.sock.getsockname()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(c, server_side=True) as s:
                    s.settimeout(5)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        b = s.recv(4096)
                        if not b:
                            break
                        data += b
                    s.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            except (OSError, ssl.SSLError):
                c.close()

    def close(self):
        self.sock.close()


def test_health_checks_of_a_tls_cluster_verify_like_the_workers(certs, tmp_path):
    from uproxy import health
    srv = TLSServer(*make_cert(tmp_path, "app", ("app.internal",), ca=certs["ca"]))
    self_signed = TLSServer(*make_cert(tmp_path, "rogue", ("app.internal",)))
    try:
        h = config.Health(path="/health", timeout_ms=3000)
        address = (socket.AF_INET, srv.addr)

        def check(server, **kw):
            t = config.ClusterTLS(**kw)
            return health.probe((socket.AF_INET, server.addr), "app:443", h,
                                (tls.client_context(t), t.sni or "127.0.0.1"))
        assert check(srv, ca=certs["ca"][0], sni="app.internal") == (True, "status 204")
        ok, why = check(srv, ca=certs["ca"][0], sni="other.internal")
        assert not ok and why.startswith("TLS: ") and "mismatch" in why, why
        ok, why = check(self_signed, ca=certs["ca"][0], sni="app.internal")
        assert not ok and why.startswith("TLS: "), why
        assert check(self_signed, verify=False)[0]
        # a plain-HTTP check of a TLS server fails too: it is not left "up"
        ok, _ = health.probe(address, "app:443", h)
        assert not ok
    finally:
        srv.close()
        self_signed.close()


def _get_status(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            b = s.recv(4096)
            if not b:
                break
            data += b
    return data.split(b"\r\n", 1)[0]


def test_a_clusters_tls_settings_reach_the_workers(certs, run, tmp_path):
    """The cluster's context, as the workers use it: the right CA and name
    pass, a name the server's certificate lacks is refused (502)."""
    srv = TLSServer(*make_cert(tmp_path, "app", ("app.internal",), ca=certs["ca"]))
    try:
        good, bad = free_port(), free_port()
        run(f'[proxy]\nworkers = 1\n\n'
            f'[[listeners]]\nname = "good"\nbind = "127.0.0.1:{good}"\nmode = "http"\ncluster = "good"\n\n'
            f'[[listeners]]\nname = "bad"\nbind = "127.0.0.1:{bad}"\nmode = "http"\ncluster = "bad"\n\n'
            f'[[clusters]]\nname = "good"\nservers = ["127.0.0.1:{srv.addr[1]}"]\n'
            f'tls = {{ ca = "{certs["ca"][0]}", sni = "app.internal" }}\n\n'
            f'[[clusters]]\nname = "bad"\nservers = ["127.0.0.1:{srv.addr[1]}"]\n'
            f'tls = {{ ca = "{certs["ca"][0]}", sni = "other.internal" }}\n')
        assert _get_status(good) == b"HTTP/1.1 204 No Content"
        assert _get_status(bad).startswith(b"HTTP/1.1 502")
    finally:
        srv.close()


def test_a_tcp_listener_terminates_with_its_certificate(certs, run):
    from support import Server, echo
    up = Server(echo)
    try:
        port = free_port()
        run(f'[proxy]\nworkers = 1\n\n[[listeners]]\nname = "tls"\nbind = "127.0.0.1:{port}"\n'
            f'mode = "tcp"\ncluster = "c"\ntls = {_table(certs)}\n\n'
            f'[[clusters]]\nname = "c"\nservers = ["{up.addr}"]\n')
        ctx = _client()
        ctx.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="www.example.com") as s:
                assert s.getpeercert(binary_form=True) == der(certs["www_ec"][0])
                assert s.selected_alpn_protocol() is None      # a tcp listener offers none
                s.sendall(b"ping")
                got = b""
                while len(got) < 4:
                    got += s.recv(16)
                assert got == b"ping"
    finally:
        up.close()
