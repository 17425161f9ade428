"""Our own TLS 1.3 records (transport/tls_seal.c): once the handshake is
over, uproxy seals what it sends itself instead of SSL_write. A real
client (Python's ssl, OpenSSL) must read the same bytes either way: large
responses over many records and buffers, small ones, keep-alive, and the
close_notify that ends the connection (sealed by us too: a client that
cannot decrypt it, or gets none, fails the read at the end)."""
import hashlib
import socket
import ssl

import pytest

from http_upstream import HttpUpstream, Response
from test_tls import client_ctx, pki  # noqa: F401  (the module's PKI fixture)
from support import free_port, pattern, pattern_sha
from test_tls_open import _read_response

BIG = 200_000            # 13 records, spread over several send rounds


def _origin():
    def handler(req):
        if req.target == "/big":
            def stream(sock):
                for chunk in pattern(7, BIG):
                    sock.sendall(chunk)
            return Response(headers=[("Content-Length", str(BIG))], stream=stream)
        return Response(body=b"x" * 64)
    return HttpUpstream(handler, keep_body=False)


@pytest.mark.parametrize("seal", [True, False], ids=["sealed", "library"])
def test_records_and_close_notify_read_the_same_either_way(proxy_factory, pki, seal):  # noqa: F811
    up = _origin()
    port = free_port()
    p = proxy_factory([{"name": "https", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                        "tls": {"certificates": [pki["a_ec"]]}}],
                      [{"name": "c", "servers": [up.addr]}],
                      env={} if seal else {"UPROXY_DISABLE": "tls_seal"})
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    ctx = client_ctx(pki, minimum_version=ssl.TLSVersion.TLSv1_3)
    s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
    f = s.makefile("rb")
    for _ in range(3):
        s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        assert hashlib.sha256(_read_response(f)).hexdigest() == pattern_sha(7, BIG)
        assert _read_response(f) == b"x" * 64
    s.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _read_response(f) == b"x" * 64
    # The proxy closes: its close_notify decrypts and ends the stream
    # cleanly (a ragged end would raise SSLEOFError here).
    assert f.read() == b""
    assert s.version() == "TLSv1.3"
    s.close()
    up.close()
    # Debian's OpenSSL 3.0 (built with KTLS) hands our BIO the sending keys:
    # no worker needed the key log
    assert p.total("tls_keylog_fallbacks") == 0
