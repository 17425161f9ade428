"""The TLS ClientHello reader of the C core (native/l4/clienthello.c), through
cffi: what an SNI passthrough listener routes by.

ClientHellos of real clients (Python's ssl through memory BIOs, openssl
s_client, curl) are read for their names, whole and in every framing;
hand-made ones probe each length and rule of the format; then property
tests with hypothesis: any record framing of a ClientHello gives the same
answer, every prefix is partial, and arbitrary bytes keep the invariants.
"""
import socket
import ssl
import struct
import subprocess
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clienthellos as ch
from uproxy._native import ffi, lib

FOUND, PARTIAL, ERROR = lib.CH_FOUND, lib.CH_PARTIAL, lib.CH_ERROR
MAX = lib.CH_MAX_BYTES
PROPS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200)


def parse(data: bytes):
    out = ffi.new("struct ch_hello *")
    rc = lib.ch_parse(data, len(data), out)
    return rc, out


def name_of(data: bytes):
    """The name a complete ClientHello carries (None: no server_name)."""
    rc, out = parse(data)
    assert rc == FOUND, (rc, ffi.string(out.error) if out.error != ffi.NULL else None)
    return ffi.string(out.name).decode() if out.name_len else None


def error_of(data: bytes) -> str:
    rc, out = parse(data)
    assert rc == ERROR, rc
    return ffi.string(out.error).decode()


def all_prefixes_partial(data: bytes, upto: int):
    for k in range(upto):
        rc, out = parse(data[:k])
        assert rc == PARTIAL, (k, rc, ffi.string(out.error) if out.error != ffi.NULL else "")


# ---- ClientHellos real clients send --------------------------------------------

@pytest.mark.parametrize("name", ["db.example.com", "a.b.c.example.com", "localhost",
                                  "xn--bcher-kva.example", "UPPER.Example.COM", "x"])
def test_python_ssl_names(name):
    h = ch.python_hello(name)
    assert name_of(h) == name
    rc, out = parse(h)
    assert out.hello_len == len(h) and out.records == 1 and out.version == 0x0303
    # The name's bytes are where name_off says.
    assert h[out.name_off:out.name_off + out.name_len] == name.encode()


def test_python_ssl_without_sni():
    assert name_of(ch.python_hello(None)) is None


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_python_ssl_versions_and_alpn(version):
    h = ch.python_hello("api.example.com", max_version=version, alpn=["h2", "http/1.1"])
    assert name_of(h) == "api.example.com"


@pytest.mark.parametrize("args,name", [
    (["-servername", "db.example.com"], "db.example.com"),
    (["-servername", "db.example.com", "-tls1_2"], "db.example.com"),
    (["-servername", "db.example.com", "-tls1_3"], "db.example.com"),
    (["-noservername"], None),
])
def test_openssl_s_client(args, name):
    h = ch.openssl_hello(*args)
    assert name_of(h) == name


def test_curl():
    """curl's first flight, caught on a socket: the name of --resolve's URL."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    p = subprocess.Popen(["curl", "-sk", "--max-time", "5", "--resolve",
                          f"files.example.org:{port}:127.0.0.1",
                          f"https://files.example.org:{port}/"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        srv.settimeout(10)
        c, _ = srv.accept()
        data = b""
        with c:
            c.settimeout(10)
            while parse(data)[0] == PARTIAL:
                b = c.recv(65536)
                if not b:
                    break
                data += b
    finally:
        srv.close()
        p.kill()
        p.wait()
    assert name_of(data) == "files.example.org"


def test_longest_name():
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])     # 253 bytes, as DNS allows
    assert name_of(ch.python_hello(name)) == name


# ---- framing: records, fragments, what follows -----------------------------------

def test_every_prefix_of_a_real_hello_is_partial():
    h = ch.python_hello("db.example.com")
    all_prefixes_partial(h, len(h))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 50, 100, 300, 16384])
def test_split_over_records(size):
    """A ClientHello may be cut into records anywhere (RFC 8446 5.1), even
    inside its own header or inside the name."""
    msg = ch.message_of(ch.python_hello("db.example.com"))
    h = ch.frame(msg, [size])
    assert name_of(h) == "db.example.com"
    rc, out = parse(h)
    assert out.records == -(-len(msg) // size)
    assert out.hello_len == len(h)
    if size >= 50:                     # (thousands of prefixes for the tiny records)
        all_prefixes_partial(h, len(h))


def test_name_split_by_a_record_header():
    msg = ch.message_of(ch.hello("split.example.com"))
    at = msg.index(b"split.example.com") + 5                     # inside the name
    h = ch.frame(msg[:at], [16384]) + ch.frame(msg[at:], [16384])
    rc, out = parse(h)
    assert rc == FOUND and ffi.string(out.name) == b"split.example.com"
    assert out.records == 2 and h[out.name_off:out.name_off + 5] == b"split"


def test_bytes_after_the_hello_are_not_looked_at():
    h = ch.python_hello("db.example.com")
    for tail in [b"\x17\x03\x03\x00\x05hello", b"garbage", b"\x00" * 20000]:
        rc, out = parse(h + tail)
        assert rc == FOUND and out.hello_len == len(h)


def test_hello_ending_inside_a_longer_record():
    """The record goes on after the ClientHello (another handshake message
    coalesced, or a record still arriving): found once the message ends."""
    msg = ch.message_of(ch.hello("db.example.com"))
    rec = b"\x16\x03\x01" + struct.pack("!H", len(msg) + 100) + msg + b"\x00" * 10
    rc, out = parse(rec)
    assert rc == FOUND and out.hello_len == 5 + len(msg)


def test_record_versions():
    msg = ch.message_of(ch.hello("a.example"))
    for v in (b"\x03\x00", b"\x03\x01", b"\x03\x03", b"\x03\x04"):
        assert name_of(ch.frame(msg, [16384], version=v)) == "a.example"
    assert "version" in error_of(ch.frame(msg, [16384], version=b"\x02\x00"))


# ---- not TLS, malformed, oversized -------------------------------------------------

@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"SSH-2.0-OpenSSH_9.2\r\n", b"\x00",
                                  b"\x80\x2e\x01\x03\x01",        # an SSLv2-framed hello
                                  b"\x15\x03\x03\x00\x02\x02\x28"])  # an alert
def test_not_tls_fails_on_the_first_byte(data):
    assert "not a TLS handshake record" in error_of(data)
    assert "not a TLS handshake record" in error_of(data[:1])


def test_record_header_rules():
    assert "version" in error_of(b"\x16\x04")
    assert "empty handshake record" in error_of(b"\x16\x03\x01\x00\x00")
    assert "longer than 16384" in error_of(b"\x16\x03\x01\x40\x01")
    assert parse(b"\x16\x03\x01\x40\x00")[0] == PARTIAL          # 16384 itself is allowed


def test_other_record_inside_the_hello():
    msg = ch.message_of(ch.hello("a.example"))
    h = ch.frame(msg[:20], [16384]) + ch.frame(msg[20:], [16384], ctype=21)
    assert "other than handshake" in error_of(h)


def test_first_message_must_be_a_client_hello():
    body = ch.hello_body(ch.sni_ext("a.example"))
    assert "not a ClientHello" in error_of(ch.frame(ch.handshake(body, msg_type=2), [16384]))
    assert "not a ClientHello" in error_of(b"\x16\x03\x01\x00\x01\x02")


def test_oversized_hello_fails_as_soon_as_its_length_is_seen():
    head = b"\x16\x03\x01\x40\x00\x01" + (MAX).to_bytes(3, "big")
    assert "longer than 16 KiB" in error_of(head)
    # the largest that fits: 16384 - 5 (record) - 4 (header) bytes of body
    ok = b"\x16\x03\x01\x40\x00\x01" + (MAX - 9).to_bytes(3, "big")
    assert parse(ok)[0] == PARTIAL


def test_largest_hello_fits_and_one_byte_more_does_not():
    pad = lambda n: ch.ext(0x15, b"\x00" * n)                     # the padding extension
    base = len(ch.hello("db.example.com"))
    h = ch.hello("db.example.com", extra=pad(MAX - base - 4))
    assert len(h) == MAX and name_of(h) == "db.example.com"
    # One more byte and it cannot end within 16 KiB however it is framed.
    h2 = ch.hello("db.example.com", extra=pad(MAX - base - 3))
    assert "longer than 16 KiB" in error_of(h2)


def test_fragmented_hello_must_end_within_the_limit():
    """Record headers count: a ClientHello that fits one record may not fit
    16 KiB once cut into many."""
    msg = ch.message_of(ch.hello("db.example.com", extra=ch.ext(0x15, b"\x00" * 15500)))
    h = ch.frame(msg, [50])
    assert len(h) > MAX
    assert parse(h[:MAX - 1])[0] == PARTIAL
    assert "no complete ClientHello within 16 KiB" in error_of(h[:MAX])
    assert "no complete ClientHello within 16 KiB" in error_of(h)


def hello_with_body(body):
    return ch.frame(ch.handshake(body), [16384])


@pytest.mark.parametrize("body,why", [
    (ch.hello_body(None, session_id=b"", suites=b"\x13\x01")[:-1], "ClientHello too short"),
    (ch.hello_body(b"", version=b"\x02\x00"), "version is not 3.x"),
    (ch.hello_body(b"", session_id=b"\x00" * 33), "session id longer than 32"),
    (ch.hello_body(b"", suites=b""), "cipher suites length is zero or odd"),
    (ch.hello_body(b"", suites=b"\x13\x01\x13"), "cipher suites length is zero or odd"),
    (ch.hello_body(b"", compression=b""), "no compression method"),
    (ch.hello_body(None) + b"\x00", "extensions length cut short"),
    (ch.hello_body(None) + b"\x00\x05\x00\x00", "extensions length does not match"),
    (ch.hello_body(None) + b"\x00\x02\x00\x00", "extension header cut short"),
    (ch.hello_body(None) + b"\x00\x04\x00\x10\x00\x01", "extension longer than the extensions"),
    (ch.hello_body(ch.sni_ext("a.example") + ch.sni_ext("b.example")), "two server_name extensions"),
    (ch.hello_body(ch.ext(0, b"\x00")), "server_name extension too short"),
    (ch.hello_body(ch.ext(0, b"\x00\x00")), "empty server_name list"),
    (ch.hello_body(ch.ext(0, b"\x00\x05\x00\x00\x01a")), "list length does not match"),
    (ch.hello_body(ch.ext(0, b"\x00\x02\x00\x00")), "entry cut short"),
    (ch.hello_body(ch.ext(0, b"\x00\x04\x00\x00\x02a")), "entry longer than its list"),
    (ch.hello_body(ch.sni_ext("a.example", "b.example")), "two host names"),
    (ch.hello_body(ch.sni_ext(b"")), "empty host name"),
    (ch.hello_body(ch.sni_ext(b"a" * 256)), "longer than 255"),
])
def test_malformed_body(body, why):
    assert why in error_of(hello_with_body(body))


def test_session_id_overrunning_the_hello():
    body = bytearray(ch.hello_body(None, session_id=b""))
    body[34] = 32                                  # claims 32 bytes where 7 are left
    assert "session id longer than the ClientHello" in error_of(hello_with_body(bytes(body)))


@pytest.mark.parametrize("name", [b"a..b", b".a", b"a.", b"a b", b"a\x00b", b"a/b", b"a:443",
                                  b"\xc3\xa9.example", b"a" * 64 + b".com", b"*.example.com"])
def test_host_names_dns_does_not_allow(name):
    assert "host name" in error_of(ch.hello(name))


@pytest.mark.parametrize("name", [b"a-b.example", b"_srv.example", b"1.2.3.4", b"a" * 63])
def test_host_names_allowed(name):
    assert name_of(ch.hello(name)) == name.decode()


def test_shortest_hello():
    """Version, random, no session id, one suite, one compression method."""
    body = ch.hello_body(None, session_id=b"", suites=b"\x13\x01")
    assert len(body) == 41 and name_of(hello_with_body(body)) is None


def test_no_extensions_at_all_means_no_name():
    assert name_of(hello_with_body(ch.hello_body(None))) is None


def test_other_name_types_are_skipped():
    """RFC 6066 defines host_name only; an entry of another type is stepped over."""
    entries = b"\x01\x00\x03abc" + b"\x00\x00\x09x.example"
    body = ch.hello_body(ch.ext(0, struct.pack("!H", len(entries)) + entries))
    assert name_of(hello_with_body(body)) == "x.example"


def test_errors_do_not_leave_a_name():
    rc, out = parse(hello_with_body(ch.hello_body(ch.sni_ext("a.example", "b.example"))))
    assert rc == ERROR and out.name_len == 0 and ffi.string(out.name) == b""


# ---- properties ---------------------------------------------------------------------

names = st.from_regex(r"\A[a-z0-9_-]{1,20}(\.[a-z0-9-]{1,20}){0,4}\Z")
REAL = ch.message_of(ch.python_hello("real.example.com"))


@PROPS
@given(name=st.one_of(st.none(), names), sizes=st.lists(st.integers(1, 400), min_size=1, max_size=30),
       extra=st.binary(max_size=64), sid=st.binary(max_size=32))
def test_any_framing_gives_the_same_answer(name, sizes, extra, sid):
    exts = (ch.sni_ext(name) if name else b"") + ch.ext(0x15, extra)
    msg = ch.handshake(ch.hello_body(exts, session_id=sid))
    h = ch.frame(msg, sizes)
    rc, out = parse(h)
    if len(h) > MAX:
        assert rc == ERROR
        return
    assert rc == FOUND and out.hello_len == len(h)
    assert (ffi.string(out.name).decode() if out.name_len else None) == name
    # A few prefixes: partial; the same bytes with anything after: found.
    for k in {0, 1, len(h) // 2, len(h) - 1}:
        assert parse(h[:k])[0] == PARTIAL
    assert parse(h + extra)[0] == FOUND


@PROPS
@given(sizes=st.lists(st.integers(1, 600), min_size=1, max_size=10))
def test_a_real_hello_in_any_framing(sizes):
    assert name_of(ch.frame(REAL, sizes)) == "real.example.com"


@PROPS
@given(data=st.binary(max_size=600), cut=st.integers(0, 600))
def test_arbitrary_bytes(data, cut):
    rc, out = parse(data)
    assert rc in (FOUND, PARTIAL, ERROR)
    prc, pout = parse(data[:cut])
    if rc == ERROR:
        assert out.error != ffi.NULL
        assert prc == PARTIAL or (prc == ERROR and pout.error == out.error) or cut >= len(data)
    elif rc == PARTIAL:
        assert prc == PARTIAL
    else:
        assert prc == PARTIAL or cut >= out.hello_len


@PROPS
@given(data=st.binary(min_size=1, max_size=300), at=st.integers(0, 2000))
def test_corrupting_a_real_hello_never_breaks_the_invariants(data, at):
    h = ch.frame(REAL, [16384])
    at = at % len(h)
    bad = h[:at] + data + h[at + len(data):]
    rc, out = parse(bad)
    assert rc in (FOUND, PARTIAL, ERROR)
    if rc == FOUND:
        assert out.hello_len <= len(bad) and out.name_len <= 255
        assert len(ffi.string(out.name)) == out.name_len
