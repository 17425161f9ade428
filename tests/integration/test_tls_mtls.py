"""mTLS (issue 12): the verified client certificate's subject and SHA-256
fingerprint reach the upstream in the headers a listener names, computed
once per connection by the transport; a client's own headers of those
names never get through, certificate or not. Real clients (curl, openssl
s_client, Python's ssl) with certificates the openssl command signs; the
expected values come from the openssl command too, not from our code."""
import json
import socket
import ssl
import subprocess

import pytest

from http_upstream import HttpUpstream, Response
from support import free_port, wait_for
from test_tls import _openssl, client_ctx, pki, tls_table  # noqa: F401 (pki is a fixture)

SUBJ_H, FP_H = "X-Client-Subject", "X-Client-Cert-Sha256"


@pytest.fixture(scope="module")
def clients(pki):
    """Client certificates: alice (signed by the test CA), a subject with
    UTF-8 in it, one whose subject is longer than the transport keeps, and
    mallory (self-signed: no CA we trust)."""
    d = pki["dir"]

    def client(name, subj, signed=True):
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-utf8", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=d)
        (d / f"{name}.ext").write_text("extendedKeyUsage=clientAuth\n")
        sign = (["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"] if signed
                else ["-signkey", f"{name}.key"])
        _openssl("x509", "-req", "-in", f"{name}.csr", *sign, "-out", f"{name}.pem", "-days", "5",
                 "-extfile", f"{name}.ext", cwd=d)
        cert = str(d / f"{name}.pem")
        # The oracle: what OpenSSL's own command line says of the certificate.
        out = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-subject", "-nameopt",
                              "RFC2253", "-fingerprint", "-sha256"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        subject = out[0].split("=", 1)[1].strip()
        fp = out[1].split("=", 1)[1].replace(":", "").lower()
        return {"cert": cert, "key": str(d / f"{name}.key"), "subject": subject, "sha256": fp}
    return {
        "alice": client("alice", "/C=DE/O=Example Corp/OU=Ops, West/CN=alice"),
        "utf8": client("zoe", "/O=Exämple/CN=Zoë"),
        "long": client("long", "/CN=long/" + "/".join(f"OU={'u' * 60}{i}" for i in range(9))),
        "mallory": client("mallory", "/CN=mallory", signed=False),
    }


def recording_upstream():
    """Answers with what the proxy sent of the two headers: every line of
    each (a smuggled second line must show)."""
    def handler(req):
        return Response(body=json.dumps({"subject": req.header_lines(SUBJ_H),
                                         "sha256": req.header_lines(FP_H),
                                         "underscore": req.header_lines("X_Client_Subject")}).encode())
    return HttpUpstream(handler)


def mtls_proxy(proxy_factory, pki, up, client_auth="optional", **tls_kw):
    port = free_port()
    tls = tls_table([pki["a_ec"]], client_ca=pki["ca"], client_auth=client_auth,
                    client_subject_header=SUBJ_H, client_fingerprint_header=FP_H, **tls_kw)
    p = proxy_factory([{"name": "https", "bind": f"127.0.0.1:{port}", "mode": "http",
                        "cluster": "c", "tls": tls, "underscores_in_headers": True}],
                      [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1})
    p.port = port
    return p


SPOOF = ["-H", f"{SUBJ_H}: CN=admin", "-H", f"{FP_H.lower()}: " + "0" * 64,
         "-H", "X_Client_Subject: CN=root"]


def curl(p, pki, *args, paths=("/1",)):
    r = subprocess.run(["curl", "-sS", "--http1.1", "--cacert", pki["ca"], "--resolve",
                        f"a.test:{p.port}:127.0.0.1", *args,
                        *[f"https://a.test:{p.port}{x}" for x in paths]],
                       capture_output=True, text=True, timeout=20)
    return r


def test_curl_with_a_certificate_the_upstream_gets_its_subject_and_fingerprint(
        proxy_factory, pki, clients):
    up = recording_upstream()
    p = mtls_proxy(proxy_factory, pki, up)
    alice = clients["alice"]
    r = curl(p, pki, "--cert", alice["cert"], "--key", alice["key"], *SPOOF, paths=("/1", "/2"))
    assert r.returncode == 0, r.stderr
    seen = [json.loads(x) for x in r.stdout.replace("}{", "}\n{").splitlines()]
    # Both requests of the one connection carry the values, and only ours:
    # the client's lines of the same names (and its X_Client_Subject) are gone.
    want = {"subject": [alice["subject"]], "sha256": [alice["sha256"]], "underscore": []}
    assert seen == [want, want], seen
    assert alice["subject"] == "CN=alice,OU=Ops\\, West,O=Example Corp,C=DE"
    assert p.total("tls_handshakes") == 1 and p.total("requests") == 2
    up.close()


def test_no_certificate_no_values_and_still_no_spoofing(proxy_factory, pki, clients):
    up = recording_upstream()
    p = mtls_proxy(proxy_factory, pki, up)
    r = curl(p, pki, *SPOOF)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"subject": [], "sha256": [], "underscore": []}
    # A certificate of no CA we trust fails the handshake: nothing reaches
    # the upstream at all.
    m = clients["mallory"]
    r = curl(p, pki, "--cert", m["cert"], "--key", m["key"], *SPOOF)
    assert r.returncode != 0
    wait_for(lambda: p.total("tls_handshake_errors") >= 1, what="the refused handshake counted")
    assert len(up.requests) == 1
    up.close()


def test_openssl_s_client_with_a_utf8_subject_and_spoofed_lines(proxy_factory, pki, clients):
    """The subject goes into a header line as printable ASCII whatever it
    holds (RFC 2253 escapes UTF-8 as \\XX), exactly as `openssl x509
    -nameopt RFC2253` prints it."""
    up = recording_upstream()
    p = mtls_proxy(proxy_factory, pki, up, client_auth="required")
    z = clients["utf8"]
    req = (f"GET /s HTTP/1.1\r\nHost: a.test\r\n{SUBJ_H}: forged\r\n{SUBJ_H.upper()}: forged2\r\n"
           f"Connection: close\r\n\r\n")
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.port}", "-servername",
                        "a.test", "-CAfile", pki["ca"], "-cert", z["cert"], "-key", z["key"],
                        "-quiet"], input=req, capture_output=True, text=True,
                       timeout=20)
    assert "{" in r.stdout, (r.stdout, r.stderr[-800:])
    body = r.stdout[r.stdout.index("{"):]
    got = json.loads(body)
    assert got["subject"] == [z["subject"]] and got["sha256"] == [z["sha256"]], (got, r.stderr[-400:])
    assert z["subject"].isascii() and "\\C3\\AB" in z["subject"]     # "ë", escaped
    up.close()


def test_resumed_sessions_carry_the_certificate_and_a_long_subject_is_left_out(
        proxy_factory, pki, clients):
    up = recording_upstream()
    p = mtls_proxy(proxy_factory, pki, up)

    ctxs = {}

    def get(cert, session=None):
        if cert["cert"] not in ctxs:          # (a session resumes with its own context only)
            ctxs[cert["cert"]] = client_ctx(pki)
            ctxs[cert["cert"]].load_cert_chain(cert["cert"], cert["key"])
        ctx = ctxs[cert["cert"]]
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
            s = ctx.wrap_socket(raw, server_hostname="a.test", session=session)
            s.sendall(f"GET / HTTP/1.1\r\nHost: a.test\r\n{FP_H}: forged\r\n"
                      f"Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            reused, sess = s.session_reused, s.session
        return json.loads(data.split(b"\r\n\r\n", 1)[1]), reused, sess

    alice = clients["alice"]
    first, reused, sess = get(alice)
    assert not reused and first["sha256"] == [alice["sha256"]]
    again, reused, _ = get(alice, sess)
    assert reused, "the session did not resume"
    assert again == first
    # Longer than the 512 bytes the transport keeps: no subject (never a
    # cut one an upstream might match by prefix), the fingerprint still.
    lc = clients["long"]
    assert len(lc["subject"]) > 512
    got, _, _ = get(lc)
    assert got == {"subject": [], "sha256": [lc["sha256"]], "underscore": []}
    up.close()


def test_a_listener_without_the_keys_passes_nothing(proxy_factory, pki, clients):
    """The headers are opt-in: client certificates alone add no header (and
    the client's own lines of such names are just headers there)."""
    up = recording_upstream()
    port = free_port()
    proxy_factory([{"name": "https", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                    "tls": tls_table([pki["a_ec"]], client_ca=pki["ca"])}],
                  [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1})

    class P:
        pass
    p = P()
    p.port = port
    alice = clients["alice"]
    r = curl(p, pki, "--cert", alice["cert"], "--key", alice["key"], "-H", f"{SUBJ_H}: mine")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["subject"] == ["mine"]
    up.close()
