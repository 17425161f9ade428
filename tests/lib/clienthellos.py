"""ClientHellos as real clients send them, for the tests of the SNI reader
(tests/unit/test_clienthello.py, tests/integration/test_sni.py) and the fuzz seeds
(tests/hardening/fuzz/seeds.py): Python's ssl module through memory BIOs, and the
openssl command (s_client) caught on a loopback socket. Plus the pieces to
build and re-frame ClientHellos by hand."""
from __future__ import annotations

import socket
import ssl
import struct
import subprocess


def python_hello(name: str | None = "db.example.com", max_version=None, alpn=None) -> bytes:
    """The first flight of a Python ssl client: one or more TLS records."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        s.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def record_end(data: bytes) -> int | None:
    """The end of the first complete record in data, or None."""
    if len(data) < 5:
        return None
    end = 5 + struct.unpack("!H", data[3:5])[0]
    return end if len(data) >= end else None


def openssl_hello(*args: str, timeout=10) -> bytes:
    """The first record `openssl s_client <args>` sends to a socket that
    never answers (its ClientHello)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        srv.settimeout(timeout)
        c, _ = srv.accept()
        c.settimeout(timeout)
        data = b""
        with c:
            while record_end(data) is None:
                b = c.recv(65536)
                if not b:
                    break
                data += b
        return data
    finally:
        srv.close()
        p.kill()
        p.wait()


def message_of(records: bytes) -> bytes:
    """The handshake bytes that a run of records carries."""
    out, pos = b"", 0
    while pos + 5 <= len(records):
        n = struct.unpack("!H", records[pos + 3:pos + 5])[0]
        out += records[pos + 5:pos + 5 + n]
        pos += 5 + n
    return out


def frame(message: bytes, sizes, version=b"\x03\x01", ctype=22) -> bytes:
    """message cut into records of the given sizes (the last size repeats)."""
    out, pos, i = b"", 0, 0
    sizes = list(sizes)
    while pos < len(message):
        k = sizes[min(i, len(sizes) - 1)]
        chunk = message[pos:pos + k]
        out += bytes([ctype]) + version + struct.pack("!H", len(chunk)) + chunk
        pos += k
        i += 1
    return out


def ext(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def sni_ext(*names, kind=0) -> bytes:
    """A server_name extension listing host names (bytes or str)."""
    entries = b"".join(bytes([kind]) + struct.pack("!H", len(n)) + n
                       for n in (x.encode() if isinstance(x, str) else x for x in names))
    return ext(0, struct.pack("!H", len(entries)) + entries)


def hello_body(extensions: bytes | None = b"", session_id=b"\x11" * 32,
               suites=b"\x13\x01\x13\x02", compression=b"\x00", version=b"\x03\x03") -> bytes:
    """A ClientHello body; extensions None leaves the extensions block out."""
    body = (version + b"\x42" * 32 + bytes([len(session_id)]) + session_id +
            struct.pack("!H", len(suites)) + suites + bytes([len(compression)]) + compression)
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return body


def handshake(body: bytes, msg_type=1) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def hello(*names, extra=b"", **kw) -> bytes:
    """A ClientHello in one record, naming *names (none: no server_name)."""
    exts = (sni_ext(*names) if names else b"") + extra
    return frame(handshake(hello_body(exts, **kw)), [16384])
