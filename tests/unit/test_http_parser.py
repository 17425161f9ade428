"""The strict HTTP/1.1 parser of the C core (native/http/http1.c), through cffi.

One test per rule of docs/http-parser.md (each rejection with its status,
and the accepted cases), then property tests with hypothesis: generated
messages parse back to their parts, every prefix of a message is partial,
arbitrary bytes never break the parser's invariants, and chunked bodies
end exactly where they end, however they are split.
"""
import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from uproxy._native import ffi, lib

DONE, PARTIAL, ERROR = lib.H1_DONE, lib.H1_PARTIAL, lib.H1_ERROR
HOP, HOST, XFF, XF_OTHER, FRAMING, UPGRADE = (
    lib.H1_HF_HOP, lib.H1_HF_HOST, lib.H1_HF_XFF, lib.H1_HF_XF_OTHER, lib.H1_HF_FRAMING,
    lib.H1_HF_UPGRADE)
NONE, LENGTH, CHUNKED, CLOSE, TUNNEL = (
    lib.H1_BODY_NONE, lib.H1_BODY_LENGTH, lib.H1_BODY_CHUNKED, lib.H1_BODY_CLOSE,
    lib.H1_BODY_TUNNEL)
METHODS = {"GET": lib.H1_M_GET, "HEAD": lib.H1_M_HEAD, "POST": lib.H1_M_POST,
           "PUT": lib.H1_M_PUT, "DELETE": lib.H1_M_DELETE, "OPTIONS": lib.H1_M_OPTIONS,
           "PATCH": lib.H1_M_PATCH, "CONNECT": lib.H1_M_CONNECT, "TRACE": lib.H1_M_TRACE}
CRLF = b"\r\n"
TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VALUE_BYTES = bytes([9, 32]) + bytes(range(0x21, 0x7f)) + bytes(range(0x80, 0x100))
VCHARS = bytes(range(0x21, 0x7f))
SPECIAL = {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
           "proxy-connection", "te", "trailer", "upgrade", "x-forwarded-for",
           "x-forwarded-proto", "x-forwarded-host", "expect"}
PROPS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)


# ---- helpers -------------------------------------------------------------------

def limits(max_head=16384, max_target=8192, max_headers=0):
    return ffi.new("struct h1_limits *", {"max_head": max_head, "max_target": max_target,
                                         "max_headers": max_headers})


def request(data, **lim):
    out = ffi.new("struct h1_request *")
    rc = lib.h1_parse_request(data, len(data), limits(**lim), out)
    return rc, out


def response(data, method=lib.H1_M_GET, **lim):
    out = ffi.new("struct h1_response *")
    rc = lib.h1_parse_response(data, len(data), limits(**lim), method, out)
    return rc, out


def ok_request(data, **lim):
    rc, out = request(data, **lim)
    assert rc == DONE, (data, rc, out.error_status, out.error != ffi.NULL and ffi.string(out.error))
    return out


def ok_response(data, method=lib.H1_M_GET, **lim):
    rc, out = response(data, method, **lim)
    assert rc == DONE, (data, rc, out.error != ffi.NULL and ffi.string(out.error))
    return out


def bad_request(data, status, **lim):
    rc, out = request(data, **lim)
    assert rc == ERROR, (data, rc)
    assert out.error_status == status, (data, out.error_status, ffi.string(out.error))
    why = ffi.string(out.error).decode()
    assert 0 < len(why) < 80
    return why


def bad_response(data, method=lib.H1_M_GET, **lim):
    rc, out = response(data, method, **lim)
    assert rc == ERROR, (data, rc)
    assert out.error_status == 502
    why = ffi.string(out.error).decode()
    assert 0 < len(why) < 80
    return why


def headers(data, out):
    return [(data[h.name_off:h.name_off + h.name_len], data[h.value_off:h.value_off + h.value_len],
             h.flags) for h in out.h[0:out.nheaders]]


def flags_of(data, out, name):
    return [f for n, _, f in headers(data, out) if n.lower() == name.lower()]


def req(*lines, start=b"GET / HTTP/1.1", host=True):
    """A request head from header lines (Host: a added unless host=False)."""
    ls = [start] + ([b"Host: a"] if host else []) + list(lines)
    return CRLF.join(ls) + CRLF + CRLF


def resp(*lines, start=b"HTTP/1.1 200 OK"):
    return CRLF.join([start] + list(lines)) + CRLF + CRLF


# ---- request line ------------------------------------------------------------------

def test_simple_request_components():
    data = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n\r\n"
    out = ok_request(data + b"GET /next")
    assert out.head_len == len(data)
    assert out.line_len == len(b"GET /index.html?q=1 HTTP/1.1\r\n")
    assert out.skip == 0
    assert out.method == lib.H1_M_GET and out.minor == 1
    assert data[out.method_off:out.method_off + out.method_len] == b"GET"
    assert data[out.target_off:out.target_off + out.target_len] == b"/index.html?q=1"
    assert out.target_form == lib.H1_T_ORIGIN
    assert headers(data, out) == [(b"Host", b"example.com", HOST), (b"User-Agent", b"t/1", 0)]
    assert out.host == 0 and out.body == NONE and out.content_length == 0
    assert out.keep_alive == 1 and out.upgrade == 0 and out.expect_continue == 0
    assert out.error == ffi.NULL


@pytest.mark.parametrize("name,value", sorted(METHODS.items()))
def test_methods_are_recognised(name, value):
    target = b"a:1" if name == "CONNECT" else b"/"
    out = ok_request(req(start=name.encode() + b" " + target + b" HTTP/1.1"))
    assert out.method == value


@pytest.mark.parametrize("method", [b"get", b"Get", b"PROPFIND", b"M-SEARCH", b"X!#$%&'*+.^_`|~9"])
def test_other_token_methods_are_accepted_case_sensitively(method):
    out = ok_request(req(start=method + b" / HTTP/1.1"))
    assert out.method == lib.H1_M_OTHER and out.method_len == len(method)


@pytest.mark.parametrize("line", [b"GE(T / HTTP/1.1", b"G\x80T / HTTP/1.1", b"GE\x00T / HTTP/1.1",
                                  b"GET\t/ HTTP/1.1", b"GET:/ HTTP/1.1", b"G@T / HTTP/1.1"])
def test_method_must_be_a_token(line):
    bad_request(req(start=line), 400)


@pytest.mark.parametrize("line", [b" GET / HTTP/1.1", b"GET  / HTTP/1.1", b"GET /  HTTP/1.1",
                                  b"GET / HTTP/1.1 ", b"GET /\tHTTP/1.1", b"GET\x0b/ HTTP/1.1"])
def test_exactly_one_sp_between_parts(line):
    bad_request(req(start=line), 400)


@pytest.mark.parametrize("target", [b"/a\x7fb", b"/a\x80b", b"/\xff", b"/a\x01", b"/a\x00b",
                                    b"/a\tb", b"/a\x1b"])
def test_target_is_visible_ascii_only(target):
    bad_request(req(start=b"GET " + target + b" HTTP/1.1"), 400)


def test_target_all_visible_ascii_accepted():
    target = b"/" + VCHARS
    out = ok_request(req(start=b"GET " + target + b" HTTP/1.1"))
    assert out.target_len == len(target)


def test_target_too_long_is_414_even_while_partial():
    assert ok_request(req(start=b"GET /" + b"a" * 99 + b" HTTP/1.1"), max_target=100).target_len == 100
    bad_request(req(start=b"GET /" + b"a" * 100 + b" HTTP/1.1"), 414, max_target=100)
    # partial: the limit is crossed before the head is complete
    bad_request(b"GET /" + b"a" * 100, 414, max_target=100)
    rc, _ = request(b"GET /" + b"a" * 99, max_target=100)
    assert rc == PARTIAL


@pytest.mark.parametrize("version", [b"http/1.1", b"HTTP/1.1x", b"HTTP/1.10", b"HTTP/11", b"HTTP/1",
                                     b"HTTP 1.1", b"HTTP/a.1", b"HTTP/1.a", b"HTTPS/1.1",
                                     b"HTTP/1,1", b"HTTP/1.1\t"])
def test_malformed_version_is_400(version):
    bad_request(req(start=b"GET / " + version), 400)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0", b"HTTP/9.9"])
def test_other_well_formed_version_is_505(version):
    bad_request(req(start=b"GET / " + version), 505)


def test_missing_version_is_400():
    bad_request(b"GET /\r\n\r\n", 400)


def test_http10_request():
    out = ok_request(b"GET / HTTP/1.0\r\n\r\n")
    assert out.minor == 0 and out.keep_alive == 0 and out.host == 0xffff and out.nheaders == 0


@pytest.mark.parametrize("line,form", [
    (b"GET /p?q HTTP/1.1", lib.H1_T_ORIGIN),
    (b"GET http://example.com/p HTTP/1.1", lib.H1_T_ABSOLUTE),
    (b"GET https://example.com:8443 HTTP/1.1", lib.H1_T_ABSOLUTE),
    (b"CONNECT example.com:443 HTTP/1.1", lib.H1_T_AUTHORITY),
    (b"CONNECT [::1]:443 HTTP/1.1", lib.H1_T_AUTHORITY),
    (b"CONNECT 10.0.0.1:8080 HTTP/1.1", lib.H1_T_AUTHORITY),
    (b"OPTIONS * HTTP/1.1", lib.H1_T_ASTERISK),
])
def test_target_form(line, form):
    assert ok_request(req(start=line)).target_form == form


@pytest.mark.parametrize("line", [
    b"GET * HTTP/1.1", b"GET example.com:80 HTTP/1.1", b"GET foo HTTP/1.1", b"GET ?x HTTP/1.1",
    b"CONNECT /x HTTP/1.1", b"CONNECT example.com HTTP/1.1", b"CONNECT http://a:1/ HTTP/1.1",
    b"CONNECT u@a:1 HTTP/1.1", b"CONNECT :443 HTTP/1.1", b"CONNECT a: HTTP/1.1", b"CONNECT * HTTP/1.1",
    b"GET http:/x HTTP/1.1", b"GET 1http://a/ HTTP/1.1",
])
def test_invalid_target_form_is_400(line):
    bad_request(req(start=line), 400)


def test_leading_empty_lines_are_skipped():
    data = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    out = ok_request(data)
    assert out.skip == 4 and out.method_off == 4 and out.head_len == len(data)
    assert out.line_len == len(b"GET / HTTP/1.1\r\n")
    assert request(b"\r\n\r\n")[0] == PARTIAL
    bad_request(b"\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400)
    bad_request(b"\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400)


# ---- line endings and bytes ---------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\nY: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX\n: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\nX: 1\r\n\r\n",
])
def test_bare_lf_is_400(data):
    why = bad_request(data, 400)
    assert "LF" in why or "colon" in why


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\rHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\rX",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX\r: 1\r\n\r\n",
])
def test_bare_cr_is_400(data):
    bad_request(data, 400)


@pytest.mark.parametrize("ctl", [0x00, 0x01, 0x08, 0x0b, 0x0c, 0x1f, 0x7f])
@pytest.mark.parametrize("where", ["method", "target", "name", "value", "value-end", "version"])
def test_control_bytes_anywhere_are_400(ctl, where):
    c = bytes([ctl])
    data = {"method": req(start=b"G" + c + b"ET / HTTP/1.1"),
            "target": req(start=b"GET /" + c + b" HTTP/1.1"),
            "name": req(b"X-" + c + b"A: 1"),
            "value": req(b"X-A: a" + c + b"b"),
            "value-end": req(b"X-A: ab" + c),
            "version": req(start=b"GET / HTTP/1.1" + c)}[where]
    bad_request(data, 400)


def test_htab_and_obs_text_are_allowed_in_field_values():
    data = req(b"X-A: a\tb \xff\x80 c")
    assert headers(data, ok_request(data))[1][1] == b"a\tb \xff\x80 c"


def test_obs_text_is_rejected_outside_field_values():
    bad_request(req(b"X-\xe9: 1"), 400)
    bad_request(req(start=b"GET /\xe9 HTTP/1.1"), 400)
    bad_request(req(start=b"G\xc9T / HTTP/1.1"), 400)


# ---- header lines -------------------------------------------------------------------

@pytest.mark.parametrize("line", [b"X(A): 1", b"X A: 1", b"X\"A: 1", b"X/A: 1", b"[X]: 1", b"X@: 1",
                                  b"X;A: 1", b"X,A: 1", b"X{A}: 1", b"X=A: 1", b"X?: 1"])
def test_field_name_must_be_a_token(line):
    bad_request(req(line), 400)


@pytest.mark.parametrize("line", [b"X-A : 1", b"X-A\t: 1", b"Host : a"])
def test_whitespace_before_colon_is_400(line):
    assert "colon" in bad_request(req(line), 400)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\t2\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
])
def test_obs_fold_is_400(data):
    bad_request(data, 400)


@pytest.mark.parametrize("line", [b": 1", b"X-A 1", b"X-A", b"X-A;1"])
def test_line_without_name_or_colon_is_400(line):
    bad_request(req(line), 400)


@pytest.mark.parametrize("raw,value", [(b"X-A: v", b"v"), (b"X-A:v", b"v"), (b"X-A: \t v \t ", b"v"),
                                       (b"X-A:  a  b  ", b"a  b"), (b"X-A:", b""), (b"X-A: \t ", b""),
                                       (b"X-A:\tv", b"v")])
def test_values_are_trimmed_and_may_be_empty(raw, value):
    data = req(raw)
    out = ok_request(data)
    assert headers(data, out)[1][1] == value
    h = out.h[1]
    assert data[h.line_off:h.line_off + h.line_len] == raw + CRLF
    assert data[h.name_off:h.name_off + h.name_len] == b"X-A"


def test_line_offsets_rebuild_the_head():
    data = req(b"A: 1", b"Bb:2", b"C-C: \t3 ", b"D:")
    out = ok_request(data)
    rebuilt = data[:out.line_len] + b"".join(
        data[h.line_off:h.line_off + h.line_len] for h in out.h[0:out.nheaders]) + CRLF
    assert rebuilt == data


def test_max_headers_is_431():
    lines = [b"X-%d: v" % i for i in range(9)]
    assert ok_request(req(*lines), max_headers=10).nheaders == 10          # Host + 9
    bad_request(req(*lines, b"X-9: v"), 431, max_headers=10)
    # The default (0): H1_DEF_HEADERS, 128 (it was 96, and nginx forwards 100).
    assert lib.H1_DEF_HEADERS == 128
    bad_request(req(*[b"X-%d: v" % i for i in range(128)]), 431)
    assert ok_request(req(*[b"X-%d: v" % i for i in range(127)])).nheaders == 128
    assert ok_request(req(*[b"X-%d: v" % i for i in range(99)])).nheaders == 100
    # At most H1_MAX_HEADERS (the result arrays); a larger limit is clamped.
    big = dict(max_head=32768)
    many = [b"X-%d: v" % i for i in range(lib.H1_MAX_HEADERS - 1)]
    for m in (lib.H1_MAX_HEADERS, 5000):
        assert ok_request(req(*many), max_headers=m, **big).nheaders == lib.H1_MAX_HEADERS
        bad_request(req(*many, b"X-last: v"), 431, max_headers=m, **big)
    assert len(ffi.new("struct h1_request *").h) == lib.H1_MAX_HEADERS
    assert len(ffi.new("struct h1_response *").h) == lib.H1_MAX_HEADERS


def test_max_head_is_431_as_soon_as_reached():
    data = req(b"X-A: " + b"v" * 100)
    assert ok_request(data, max_head=len(data)).head_len == len(data)
    bad_request(data, 431, max_head=len(data) - 1)
    # a slow client: max_head bytes arrived, the head has not ended
    bad_request(data[:64], 431, max_head=64)
    assert request(data[:63], max_head=64)[0] == PARTIAL
    bad_request(b"\r\n" * 40, 431, max_head=64)


def test_default_limits_when_none_given():
    data = req()
    out = ffi.new("struct h1_request *")
    assert lib.h1_parse_request(data, len(data), ffi.NULL, out) == DONE
    zero = ffi.new("struct h1_limits *")
    assert lib.h1_parse_request(data, len(data), zero, out) == DONE
    big = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert lib.h1_parse_request(big, len(big), ffi.NULL, out) == ERROR and out.error_status == 414


# ---- Content-Length ---------------------------------------------------------------

@pytest.mark.parametrize("value,n", [(b"5", 5), (b"007", 7), (b" 12 ", 12), (b"4611686018427387904", 1 << 62)])
def test_content_length_is_digits(value, n):
    data = req(b"Content-Length: " + value)
    out = ok_request(data)
    assert out.body == LENGTH and out.content_length == n
    assert flags_of(data, out, b"content-length") == [FRAMING]


def test_content_length_zero_is_no_body():
    out = ok_request(req(b"Content-Length: 0"))
    assert out.body == NONE and out.content_length == 0


@pytest.mark.parametrize("value", [b"", b"+5", b"-1", b"5 5", b"0x10", b"1e3", b"5.0", b"\xb5", b"5;", b"\"5\""])
def test_content_length_not_digits_is_400(value):
    bad_request(req(b"Content-Length: " + value), 400)


@pytest.mark.parametrize("value", [b"5,5", b"5, 5", b"5,", b",5"])
def test_content_length_list_is_400(value):
    bad_request(req(b"Content-Length: " + value), 400)


@pytest.mark.parametrize("second", [b"Content-Length: 5", b"content-length: 5", b"Content-Length: 6"])
def test_repeated_content_length_is_400_even_if_equal(second):
    bad_request(req(b"Content-Length: 5", second), 400)


@pytest.mark.parametrize("value", [b"4611686018427387905", b"18446744073709551615",
                                   b"18446744073709551616", b"9" * 40])
def test_content_length_overflow_is_400(value):
    bad_request(req(b"Content-Length: " + value), 400)


# ---- Transfer-Encoding (requests) -------------------------------------------------------

@pytest.mark.parametrize("lines", [
    [b"Transfer-Encoding: chunked"], [b"Transfer-Encoding: CHUNKED"], [b"transfer-encoding: Chunked"],
    [b"Transfer-Encoding: gzip, chunked"], [b"Transfer-Encoding: gzip ,\tchunked"],
    [b"Transfer-Encoding: deflate,compress,x-gzip,x-compress,chunked"],
    [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: , chunked ,"],
])
def test_transfer_encoding_chunked(lines):
    data = req(*lines)
    out = ok_request(data)
    assert out.body == CHUNKED
    assert flags_of(data, out, b"transfer-encoding") == [FRAMING] * len(lines)


@pytest.mark.parametrize("value", [b"foo", b"identity", b"gzip, foo, chunked", b"br, chunked",
                                   b"chunked, identity"])
def test_unknown_transfer_coding_is_501(value):
    bad_request(req(b"Transfer-Encoding: " + value), 501)


@pytest.mark.parametrize("lines", [[b"Transfer-Encoding: gzip"], [b"Transfer-Encoding: chunked, gzip"],
                                   [b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip"],
                                   [b"Transfer-Encoding:"], [b"Transfer-Encoding: ,"]])
def test_transfer_encoding_not_ending_in_chunked_is_400(lines):
    bad_request(req(*lines), 400)


@pytest.mark.parametrize("lines", [[b"Transfer-Encoding: chunked, chunked"],
                                   [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
                                   [b"Transfer-Encoding: chunked, gzip, chunked"]])
def test_chunked_more_than_once_is_400(lines):
    bad_request(req(*lines), 400)


@pytest.mark.parametrize("value", [b"chunked;q=1", b"\"chunked\"", b"chunked chunked", b"chun ked"])
def test_malformed_transfer_encoding_is_400(value):
    bad_request(req(b"Transfer-Encoding: " + value), 400)


@pytest.mark.parametrize("lines", [[b"Transfer-Encoding: chunked", b"Content-Length: 5"],
                                   [b"Content-Length: 0", b"Transfer-Encoding: chunked"]])
def test_transfer_encoding_with_content_length_is_400(lines):
    bad_request(req(*lines), 400)


def test_transfer_encoding_in_http10_is_400():
    bad_request(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400)


# ---- Host ------------------------------------------------------------------------

def test_host_required_in_http11():
    bad_request(req(host=False), 400)
    assert ok_request(b"GET / HTTP/1.0\r\n\r\n").host == 0xffff


def test_more_than_one_host_is_400():
    bad_request(req(b"Host: a"), 400)
    bad_request(req(b"host: b"), 400)
    bad_request(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400)


@pytest.mark.parametrize("value", [b"a b", b"a\tb", b"a\x00b", b"a\x7fb", b"a\x0cb"])
def test_host_with_whitespace_or_control_is_400(value):
    bad_request(req(b"Host: " + value, host=False), 400)


def test_empty_host():
    bad_request(req(b"Host:", host=False), 400)
    bad_request(req(b"Host:  ", host=False), 400)
    bad_request(req(b"Host:", host=False, start=b"OPTIONS * HTTP/1.1"), 400)
    # the authority is in the target; HTTP/1.0 does not need Host
    assert ok_request(req(b"Host:", host=False, start=b"GET http://a/ HTTP/1.1")).host == 0
    assert ok_request(b"GET / HTTP/1.0\r\nHost:\r\n\r\n").host == 0


def test_host_index_and_flag():
    data = req(b"Host: example.com:8080", host=False, start=b"GET / HTTP/1.1\r\nX-A: 1")
    out = ok_request(data)
    assert out.host == 1 and headers(data, out)[1] == (b"Host", b"example.com:8080", HOST)


# ---- Connection, keep-alive, upgrade --------------------------------------------------

@pytest.mark.parametrize("version,lines,keep", [
    (b"1.1", [], 1),
    (b"1.1", [b"Connection: close"], 0),
    (b"1.1", [b"Connection: keep-alive"], 1),
    (b"1.1", [b"Connection: Keep-Alive, CLOSE"], 0),
    (b"1.1", [b"Connection: keep-alive", b"Connection: close"], 0),
    (b"1.0", [], 0),
    (b"1.0", [b"Connection: keep-alive"], 1),
    (b"1.0", [b"Connection: KEEP-ALIVE"], 1),
    (b"1.0", [b"Connection: keep-alive, close"], 0),
    (b"1.0", [b"Connection: close", b"Connection: keep-alive"], 0),
    (b"1.1", [b"Connection: ,, close ,"], 0),
])
def test_keep_alive(version, lines, keep):
    out = ok_request(req(*lines, start=b"GET / HTTP/" + version))
    assert out.keep_alive == keep


@pytest.mark.parametrize("value", [b"close;", b"keep alive", b"\"close\"", b"close/1"])
def test_invalid_connection_is_400(value):
    bad_request(req(b"Connection: " + value), 400)


@pytest.mark.parametrize("lines,up", [
    ([b"Connection: Upgrade", b"Upgrade: websocket"], 1),
    ([b"Upgrade: websocket", b"Connection: keep-alive, upgrade"], 1),
    ([b"Connection: upgrade"], 0),
    ([b"Upgrade: websocket"], 0),
])
def test_upgrade(lines, up):
    data = req(*lines)
    out = ok_request(data)
    assert out.upgrade == up
    for f in flags_of(data, out, b"upgrade"):
        assert f == HOP | UPGRADE


def test_connection_options_become_hop_by_hop():
    data = req(b"Connection: x-secret, Foo", b"X-Secret: 1", b"foo: 2", b"Bar: 3",
               b"Connection: bar", b"Foos: 4", b"X-Secre: 5")
    out = ok_request(data)
    got = {n: f for n, _, f in headers(data, out)}
    assert got[b"X-Secret"] == HOP and got[b"foo"] == HOP and got[b"Bar"] == HOP
    assert got[b"Foos"] == 0 and got[b"X-Secre"] == 0 and got[b"Connection"] == HOP


def test_connection_cannot_strip_host_or_framing():
    data = req(b"Connection: host, content-length, transfer-encoding", b"Content-Length: 3")
    out = ok_request(data)
    got = {n: f for n, _, f in headers(data, out)}
    assert got[b"Host"] == HOST and got[b"Content-Length"] == FRAMING


def test_connection_option_names_are_compared_exactly():
    # "^" and "~" differ only in bit 5, like letter cases: they must not match
    data = req(b"Connection: x^y", b"X~Y: 1", b"X^Y: 2")
    out = ok_request(data)
    got = {n: f for n, _, f in headers(data, out)}
    assert got[b"X~Y"] == 0 and got[b"X^Y"] == HOP


@pytest.mark.parametrize("name,flag", [
    (b"Connection", HOP), (b"Keep-Alive", HOP), (b"Proxy-Connection", HOP), (b"TE", HOP),
    (b"Trailer", HOP), (b"Upgrade", HOP | UPGRADE), (b"Transfer-Encoding", FRAMING),
    (b"Content-Length", FRAMING), (b"X-Forwarded-For", XFF), (b"X-Forwarded-Proto", XF_OTHER),
    (b"X-Forwarded-Host", XF_OTHER), (b"x-forwarded-host", XF_OTHER), (b"KEEP-ALIVE", HOP),
    (b"User-Agent", 0), (b"X-Forwarded", 0), (b"Hosts", 0), (b"Content-Type", 0), (b"TEx", 0),
    (b"Expect", 0), (b"Forwarded", 0),
])
def test_header_flags(name, flag):
    value = {b"Transfer-Encoding": b"chunked", b"Content-Length": b"1",
             b"Connection": b"keep-alive", b"Expect": b"100-continue"}.get(name, b"1")
    data = req(name + b": " + value)
    out = ok_request(data)
    assert headers(data, out)[1] == (name, value, flag)


# ---- Expect, body ------------------------------------------------------------------

@pytest.mark.parametrize("value,exp", [(b"100-continue", 1), (b"100-Continue", 1), (b"100-CONTINUE", 1),
                                       (b" 100-continue ", 1), (b"100-continued", 0), (b"200-ok", 0)])
def test_expect_continue(value, exp):
    assert ok_request(req(b"Expect: " + value, b"Content-Length: 1")).expect_continue == exp


def test_expect_continue_is_ignored_in_http10():
    out = ok_request(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
    assert out.expect_continue == 0


def test_no_framing_header_is_no_body():
    out = ok_request(req(start=b"POST / HTTP/1.1"))
    assert out.body == NONE and out.content_length == 0


# ---- responses ---------------------------------------------------------------------

def test_simple_response():
    data = resp(b"Content-Length: 5", b"Content-Type: text/plain")
    out = ok_response(data + b"hello")
    assert out.head_len == len(data) and out.line_len == len(b"HTTP/1.1 200 OK\r\n")
    assert out.status == 200 and out.minor == 1 and out.body == LENGTH and out.content_length == 5
    assert out.keep_alive == 1 and out.nheaders == 2
    assert headers(data, out)[0] == (b"Content-Length", b"5", FRAMING)


@pytest.mark.parametrize("line", [b"HTTP/1.1 200", b"HTTP/1.1 200 ", b"HTTP/1.1 404 Not Found",
                                  b"HTTP/1.0 200 OK", b"HTTP/1.1 200 \xe9t\xe9 \t!", b"HTTP/1.1 599 x"])
def test_status_line_accepted(line):
    out = ok_response(resp(b"Content-Length: 0", start=line))
    assert out.status == int(line[9:12])


@pytest.mark.parametrize("line", [b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 200OK",
                                  b"HTTP/1.1  200 OK", b"HTTP/1.1 200\tOK", b"http/1.1 200 OK",
                                  b"HTTP/1.1 2x0 OK", b"HTTP/1.1 200 O\x00K", b"HTTP/1.1 200 O\x7fK",
                                  b"HTTP/2.0 200 OK", b"HTTP/1.2 200 OK", b"HTTP/1.1 099 x",
                                  b"HTTP/1.1 600 x", b"HTTP/1.1", b" HTTP/1.1 200 OK", b"\nHTTP/1.1 200 OK",
                                  b"\r\rHTTP/1.1 200 OK", b"\r\n\nHTTP/1.1 200 OK", b"\r\n HTTP/1.1 200 OK"])
def test_bad_status_line_is_502(line):
    bad_response(resp(b"Content-Length: 0", start=line))


def test_leading_empty_lines_before_a_status_line_are_skipped():
    """Issue 16: as for request lines (RFC 9112 2.2), and as nginx, HAProxy
    and llhttp do: CRLFs before the status line are ignored (CRLF only)."""
    line = b"HTTP/1.1 200 OK\r\n"
    for k in (1, 2, 5):
        data = b"\r\n" * k + resp(b"Content-Length: 2", b"X: y")
        out = ok_response(data + b"ok")
        assert out.skip == 2 * k and out.line_len == len(line) and out.head_len == len(data)
        assert out.status == 200 and out.body == LENGTH and out.nheaders == 2
        assert headers(data, out) == [(b"Content-Length", b"2", FRAMING), (b"X", b"y", 0)]
    assert ok_response(resp(b"Content-Length: 0")).skip == 0
    # After a 100 Continue: the next head begins with the stray CRLF.
    out = ok_response(b"\r\nHTTP/1.1 100 Continue\r\n\r\n")
    assert (out.skip, out.status, out.body) == (2, 100, NONE)
    for partial in (b"\r", b"\r\n", b"\r\n\r", b"\r\nHTTP/1.1 2"):
        assert response(partial)[0] == PARTIAL
    assert ffi.string(response(b"\r\n\nHTTP/1.1 200 OK\r\n\r\n")[1].error) == \
        b"bare LF before the status line"
    assert ffi.string(response(b"\r\rHTTP/1.1 200 OK\r\n\r\n")[1].error) == \
        b"bare CR before the status line"
    # The skipped bytes count toward max_head.
    assert bad_response(b"\r\n" * 100 + resp(b"Content-Length: 0"), max_head=200)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",
    b"HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX(A): 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: \x01\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5,5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: a b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_header_errors_in_responses_are_502(data):
    bad_response(data)


@pytest.mark.parametrize("lines", [[b"Content-Length: 5", b"Transfer-Encoding: chunked"],
                                   [b"Transfer-Encoding: chunked", b"Content-Length: 0"],
                                   [b"Content-Length: 5", b"Content-Length: 6"],
                                   [b"Content-Length: 5", b"Content-Length: 5"]])
def test_response_framing_conflicts_are_502(lines):
    bad_response(resp(*lines))
    bad_response(resp(*lines), method=lib.H1_M_HEAD)


@pytest.mark.parametrize("method,status,lines,body,keep", [
    (lib.H1_M_HEAD, 200, [b"Content-Length: 100"], NONE, 1),
    (lib.H1_M_HEAD, 200, [b"Transfer-Encoding: chunked"], NONE, 1),
    (lib.H1_M_GET, 100, [], NONE, 1),
    (lib.H1_M_GET, 103, [b"Link: </a>"], NONE, 1),
    (lib.H1_M_GET, 204, [b"Content-Length: 0"], NONE, 1),
    (lib.H1_M_GET, 304, [b"Content-Length: 100"], NONE, 1),
    (lib.H1_M_GET, 101, [b"Connection: upgrade", b"Upgrade: websocket"], TUNNEL, 0),
    (lib.H1_M_CONNECT, 200, [], TUNNEL, 0),
    (lib.H1_M_CONNECT, 299, [b"Content-Length: 10"], TUNNEL, 0),
    (lib.H1_M_CONNECT, 407, [b"Content-Length: 10"], LENGTH, 1),
    (lib.H1_M_GET, 200, [b"Transfer-Encoding: chunked"], CHUNKED, 1),
    (lib.H1_M_GET, 200, [b"Transfer-Encoding: br, chunked"], CHUNKED, 1),
    (lib.H1_M_GET, 200, [b"Transfer-Encoding: gzip"], CLOSE, 0),
    (lib.H1_M_GET, 200, [b"Transfer-Encoding: chunked, br"], CLOSE, 0),
    (lib.H1_M_GET, 200, [b"Content-Length: 10"], LENGTH, 1),
    (lib.H1_M_GET, 200, [b"Content-Length: 0"], NONE, 1),
    (lib.H1_M_POST, 500, [], CLOSE, 0),
    (lib.H1_M_GET, 200, [b"Content-Length: 10", b"Connection: close"], LENGTH, 0),
])
def test_response_framing(method, status, lines, body, keep):
    out = ok_response(resp(*lines, start=b"HTTP/1.1 %d X" % status), method=method)
    assert (out.body, out.keep_alive) == (body, keep)


def test_response_content_length_is_reported_for_head():
    out = ok_response(resp(b"Content-Length: 1234"), method=lib.H1_M_HEAD)
    assert out.body == NONE and out.content_length == 1234


@pytest.mark.parametrize("lines,keep", [([], 0), ([b"Connection: keep-alive"], 1),
                                        ([b"Connection: keep-alive, close"], 0)])
def test_response_http10_keep_alive(lines, keep):
    out = ok_response(resp(b"Content-Length: 1", *lines, start=b"HTTP/1.0 200 OK"))
    assert out.keep_alive == keep


def test_response_connection_options_become_hop_by_hop():
    data = resp(b"Connection: X-Internal", b"X-Internal: 1", b"Content-Length: 0")
    out = ok_response(data)
    assert flags_of(data, out, b"x-internal") == [HOP]


def test_host_rules_do_not_apply_to_responses():
    data = resp(b"Host: a b", b"Host:", b"Content-Length: 0")
    assert flags_of(data, ok_response(data), b"host") == [HOST, HOST]


def test_response_limits():
    data = resp(*[b"X-%d: v" % i for i in range(5)])
    assert bad_response(data, max_headers=4)
    assert ok_response(resp(*[b"X-%d: v" % i for i in range(128)])).nheaders == 128
    assert bad_response(resp(*[b"X-%d: v" % i for i in range(129)]))
    many = resp(*[b"X-%d: v" % i for i in range(1024)])
    assert ok_response(many, max_head=32768, max_headers=5000).nheaders == 1024
    assert bad_response(resp(*[b"X-%d: v" % i for i in range(1025)]), max_head=32768, max_headers=5000)
    assert bad_response(data[:40], max_head=40)
    assert response(data[:39], max_head=40)[0] == PARTIAL


# ---- chunked -------------------------------------------------------------------------

def chunked(pieces, c=None):
    """Feeds pieces; returns (total consumed, done, the chunked state)."""
    if c is None:
        c = ffi.new("struct h1_chunked *")
        lib.h1_chunked_init(c)
    done = ffi.new("int *")
    total = 0
    for piece in pieces:
        n = lib.h1_chunked_feed(c, piece, len(piece), done)
        if n < 0:
            return n, 0, c
        assert 0 <= n <= len(piece)
        total += n
        if done[0]:
            assert n <= len(piece)
            return total, 1, c
        assert n == len(piece)
    return total, 0, c


def chunked_error(body):
    """The body must fail whole and fed one byte at a time; returns the reason."""
    for pieces in ([body], [body[i:i + 1] for i in range(len(body))]):
        n, done, c = chunked(pieces)
        assert n == -1 and not done, body
        assert c.error_status == 400
        why = ffi.string(c.error).decode()
        assert 0 < len(why) < 80
    return why


BODY = b"5\r\nhello\r\n1A;ext=1\r\n" + b"x" * 26 + b"\r\n0\r\nX-Sum: 1\r\n\r\n"


def test_chunked_whole_and_byte_by_byte():
    nxt = b"GET / HTTP/1.1\r\n"
    assert chunked([BODY + nxt])[:2] == (len(BODY), 1)
    assert chunked([BODY[i:i + 1] for i in range(len(BODY))] + [nxt])[:2] == (len(BODY), 1)


def test_chunked_after_the_end_consumes_nothing():
    n, done, c = chunked([BODY])
    assert (n, done) == (len(BODY), 1)
    d = ffi.new("int *")
    assert lib.h1_chunked_feed(c, b"more", 4, d) == 0 and d[0] == 1


def test_chunked_minimal_and_partial():
    assert chunked([b"0\r\n\r\n"])[:2] == (5, 1)
    assert chunked([b"0\r\n\r"])[:2] == (4, 0)
    assert chunked([b"3\r\nab"])[:2] == (5, 0)


@pytest.mark.parametrize("ext", [b";a", b";a=b", b";a=\"b c\"", b" ; a = b", b";a=\"q\\\"x\\\\\"",
                                 b";a;b=1;c=\"\"", b"\t;\ta\t=\t\"\xe9\"", b";a=b ;c"])
def test_chunk_extensions_are_skipped(ext):
    body = b"3" + ext + b"\r\nabc\r\n0" + ext + b"\r\n\r\n"
    assert chunked([body])[:2] == (len(body), 1)
    assert chunked([body[i:i + 1] for i in range(len(body))])[:2] == (len(body), 1)


@pytest.mark.parametrize("ext", [b";", b"; ", b";=b", b";a=", b";a=\"b", b";a=b c", b";a b",
                                 b";a=\"\x01\"", b";a=\"b\"c", b"x", b" ", b";a=\xe9", b",a", b";a=b ", b";a "])
def test_bad_chunk_extensions_are_400(ext):
    chunked_error(b"3" + ext + b"\r\nabc\r\n0\r\n\r\n")


@pytest.mark.parametrize("body", [b"\r\n", b"x\r\n", b"-1\r\n", b"+1\r\n", b"0x5\r\n", b" 5\r\n", b"5 \r\n",
                                  b"g\r\n"])
def test_invalid_chunk_size_is_400(body):
    chunked_error(body)


def test_chunk_size_significant_digits():
    assert chunked([b"0000000000000000000000fffffffffffffff\r\n"])[:2] == (39, 0)
    assert "large" in chunked_error(b"1000000000000000\r\n")
    assert "large" in chunked_error(b"ffffffffffffffffffff\r\n")


def test_chunk_size_line_limit():
    ok = b"1;" + b"a" * 4094 + b"\r\nx\r\n0\r\n\r\n"           # 4096 bytes before CRLF
    assert chunked([ok])[:2] == (len(ok), 1)
    assert "long" in chunked_error(b"1;" + b"a" * 4095 + b"\r\nx\r\n0\r\n\r\n")
    assert "long" in chunked_error(b"0" * 5000)


@pytest.mark.parametrize("body", [b"3\r\nabcX\r\n", b"3\r\nabc\n0\r\n\r\n", b"3\r\nabc\r\r\n",
                                  b"3\r\nabcd\r\n0\r\n\r\n"])
def test_chunk_data_must_end_with_crlf(body):
    chunked_error(body)


@pytest.mark.parametrize("body", [b"3\nabc\r\n0\r\n\r\n", b"3\rabc\r\n0\r\n\r\n", b"0\r\n\n",
                                  b"0\r\nX: 1\n\r\n", b"0\r\n\r\r"])
def test_bare_lf_or_cr_in_chunked_is_400(body):
    chunked_error(body)


@pytest.mark.parametrize("trailer", [b"X : 1", b"X(: 1", b": 1", b"X 1", b"X: a\x00", b"X: a\x7f", b" X: 1",
                                     b"\tX: 1", b"X\x80: 1"])
def test_bad_trailer_lines_are_400(trailer):
    chunked_error(b"0\r\n" + trailer + b"\r\n\r\n")


def test_trailer_section_limit():
    line = b"X-T: " + b"v" * 1000 + b"\r\n"
    ok = b"0\r\n" + line * 16 + b"\r\n"                  # 16 * 1007 + 2 <= 16384
    assert chunked([ok])[:2] == (len(ok), 1)
    assert "trailer" in chunked_error(b"0\r\n" + line * 17 + b"\r\n")


def test_chunked_error_is_sticky():
    n, done, c = chunked([b"z"])
    assert n == -1
    d = ffi.new("int *")
    assert lib.h1_chunked_feed(c, b"0\r\n\r\n", 5, d) == -1 and d[0] == 0


# ---- property tests: generators -------------------------------------------------------

token = st.text(alphabet=TCHARS, min_size=1, max_size=12)
ows = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t"])
field_value = st.lists(st.sampled_from(VALUE_BYTES), max_size=40).map(lambda b: bytes(b).strip(b" \t"))


def random_case(draw, s):
    flips = draw(st.lists(st.booleans(), min_size=len(s), max_size=len(s)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(s, flips)).encode()


@st.composite
def plain_headers(draw):
    names = draw(st.lists(token.filter(lambda t: t.lower() not in SPECIAL), max_size=12))
    return [(n.encode(), draw(field_value)) for n in names]


def field_lines(draw, hs):
    return [n + b":" + draw(ows) + v + draw(ows) + CRLF for n, v in hs]


@st.composite
def requests(draw):
    """(bytes, expected components) of a valid request head."""
    minor = draw(st.sampled_from([0, 1]))
    method = draw(st.one_of(st.sampled_from([m for m in METHODS if m != "CONNECT"]),
                            token.filter(lambda t: t != "CONNECT")))
    target = b"/" + bytes(draw(st.lists(st.sampled_from(VCHARS), max_size=60)))
    if draw(st.booleans()):
        target = b"http://" + draw(token).encode() + target
    hs = draw(plain_headers())
    extra = []
    if minor == 1 or draw(st.booleans()):
        extra.append((random_case(draw, "host"), draw(token).encode(), HOST))
    framing = draw(st.sampled_from(["none", "length", "chunked"] if minor else ["none", "length"]))
    n = 0
    if framing == "length":
        n = draw(st.integers(0, 1 << 40))
        extra.append((random_case(draw, "content-length"), b"%d" % n, FRAMING))
    elif framing == "chunked":
        extra.append((random_case(draw, "transfer-encoding"),
                      draw(st.sampled_from([b"chunked", b"gzip, chunked", b"Chunked"])), FRAMING))
    conn = draw(st.sampled_from([None, b"close", b"keep-alive", b"keep-alive, X-Opt"]))
    if conn:
        extra.append((b"Connection", conn, HOP))
    for e in extra:                             # in random places
        hs.insert(draw(st.integers(0, len(hs))), e)
    if conn and b"X-Opt" in conn:
        hs.append((b"x-opt", b"1", HOP))
    lines = field_lines(draw, [(n, v) for n, v, *_ in hs])
    skip = b"\r\n" * draw(st.integers(0, 2))
    data = skip + b"%s %s HTTP/1.%d\r\n" % (method.encode(), target, minor) + b"".join(lines) + CRLF
    keep = 0 if conn == b"close" else (1 if minor == 1 or (conn or b"").startswith(b"keep-alive") else 0)
    expect = {
        "skip": len(skip), "method": METHODS.get(method, lib.H1_M_OTHER), "method_bytes": method.encode(),
        "target": target, "minor": minor, "keep_alive": keep,
        "headers": [(n, v, (e[0] if e else 0)) for n, v, *e in hs],
        "body": {"none": NONE, "length": LENGTH if n else NONE, "chunked": CHUNKED}[framing],
        "content_length": n,
    }
    return data, expect


def reference_framing(method, status, te, cl):
    if status == 101:
        return TUNNEL
    if method == lib.H1_M_HEAD or status < 200 or status in (204, 304):
        return NONE
    if method == lib.H1_M_CONNECT and status < 300:
        return TUNNEL
    if te is not None:
        return CHUNKED if te.lower().endswith(b"chunked") else CLOSE
    if cl is not None:
        return LENGTH if cl else NONE
    return CLOSE


@st.composite
def responses(draw):
    minor = draw(st.sampled_from([0, 1]))
    status = draw(st.integers(100, 599))
    reason = draw(st.one_of(st.none(), field_value))
    method = draw(st.sampled_from([lib.H1_M_GET, lib.H1_M_HEAD, lib.H1_M_POST, lib.H1_M_CONNECT]))
    hs = [(n, v, 0) for n, v in draw(plain_headers())]
    te = cl = None
    framing = draw(st.sampled_from(["none", "length", "te"] if minor else ["none", "length"]))
    if framing == "length":
        cl = draw(st.integers(0, 1 << 50))
        hs.insert(draw(st.integers(0, len(hs))), (b"Content-Length", b"%d" % cl, FRAMING))
    elif framing == "te":
        te = draw(st.sampled_from([b"chunked", b"gzip, chunked", b"gzip", b"br", b"chunked, br"]))
        hs.insert(draw(st.integers(0, len(hs))), (b"Transfer-Encoding", te, FRAMING))
    close = draw(st.booleans())
    if close:
        hs.append((b"Connection", b"close", HOP))
    line = b"HTTP/1.%d %d" % (minor, status) + (b"" if reason is None else b" " + reason) + CRLF
    skip = b"\r\n" * draw(st.integers(0, 2))
    data = skip + line + b"".join(field_lines(draw, [(n, v) for n, v, _ in hs])) + CRLF
    body = reference_framing(method, status, te, cl)
    keep = int(not close and minor == 1 and body not in (CLOSE, TUNNEL))
    return data, method, {"status": status, "minor": minor, "headers": hs, "body": body,
                          "content_length": cl or 0, "keep_alive": keep, "skip": len(skip)}


def check_head_invariants(data, out, is_request):
    """What must hold for every head the parser accepts."""
    n = out.head_len
    assert 4 <= n <= len(data) and data[n - 4:n] == b"\r\n\r\n"
    head = data[:n]
    assert not re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", head)
    assert head.count(b"\n") == head.count(b"\r") == head.count(b"\r\n")      # CRLF only
    assert out.nheaders <= lib.H1_MAX_HEADERS
    pos = out.skip + out.line_len
    for h in out.h[0:out.nheaders]:
        assert h.line_off == pos and h.name_off == h.line_off
        assert h.value_off + h.value_len <= h.line_off + h.line_len - 2
        assert data[h.line_off + h.line_len - 2:h.line_off + h.line_len] == CRLF
        assert data[h.name_off + h.name_len:h.name_off + h.name_len + 1] == b":"
        pos += h.line_len
    assert pos + 2 == n


# ---- property tests ---------------------------------------------------------------------

@PROPS
@given(requests())
def test_prop_valid_requests_parse_back(case):
    data, exp = case
    out = ok_request(data)
    check_head_invariants(data, out, True)
    assert out.head_len == len(data) and out.skip == exp["skip"]
    assert (out.method, out.minor, out.keep_alive, out.body, out.content_length) == (
        exp["method"], exp["minor"], exp["keep_alive"], exp["body"], exp["content_length"])
    assert data[out.method_off:out.method_off + out.method_len] == exp["method_bytes"]
    assert data[out.target_off:out.target_off + out.target_len] == exp["target"]
    assert headers(data, out) == exp["headers"]


@PROPS
@given(responses())
def test_prop_valid_responses_parse_back(case):
    data, method, exp = case
    out = ok_response(data, method)
    check_head_invariants(data, out, False)
    assert out.head_len == len(data) and out.skip == exp["skip"]
    assert (out.status, out.minor, out.body, out.content_length, out.keep_alive) == (
        exp["status"], exp["minor"], exp["body"], exp["content_length"], exp["keep_alive"])
    assert headers(data, out) == exp["headers"]


@PROPS
@given(st.one_of(requests().map(lambda c: (c[0], None)), responses().map(lambda c: (c[0], c[1]))),
       st.binary(max_size=20))
def test_prop_every_prefix_is_partial(case, following):
    data, method = case
    parse = request if method is None else (lambda d: response(d, method))
    whole = parse(data + following)[1]
    assert parse(data + following)[0] == DONE and whole.head_len == len(data)
    for k in range(len(data)):
        rc, out = parse(data[:k])
        assert rc == PARTIAL, (data[:k], rc, out.error != ffi.NULL and ffi.string(out.error))


STATUSES = {400, 414, 431, 501, 505}


def check_any(data):
    rc, out = request(data, max_head=512, max_target=128, max_headers=8)
    assert rc in (DONE, PARTIAL, ERROR)
    assert out.nheaders <= 8
    for h in out.h[0:out.nheaders]:
        assert h.line_off + h.line_len <= len(data)
    if rc == DONE:
        check_head_invariants(data, out, True)
        assert out.target_off + out.target_len <= len(data)
    elif rc == ERROR:
        assert out.error_status in STATUSES and ffi.string(out.error)
    for m in (lib.H1_M_GET, lib.H1_M_HEAD, lib.H1_M_CONNECT):
        rc, r = response(data, m, max_head=512, max_headers=8)
        assert rc in (DONE, PARTIAL, ERROR)
        if rc == DONE:
            check_head_invariants(data, r, False)
        elif rc == ERROR:
            assert r.error_status == 502 and ffi.string(r.error)


@st.composite
def mutated(draw):
    """A valid head with a few bytes replaced, inserted or removed."""
    data = bytearray(draw(st.one_of(requests().map(lambda c: c[0]), responses().map(lambda c: c[0]))))
    alphabet = st.sampled_from(b"\r\n\t :,;\x00\x7f\x80 aZ0\"")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["set", "ins", "del"]))
        if op == "ins" or i == len(data):
            data[i:i] = bytes([draw(alphabet)])
        elif op == "set":
            data[i] = draw(alphabet)
        else:
            del data[i]
    return bytes(data)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.one_of(st.binary(max_size=600), mutated()))
def test_prop_arbitrary_bytes_never_break_the_parser(data):
    check_any(data)


quoted = st.lists(st.one_of(st.sampled_from([b"a", b" ", b"\t", b"\xe9", b",", b";", b"="]),
                            st.sampled_from([b"\\\"", b"\\\\", b"\\x"])), max_size=5).map(
    lambda p: b'"' + b"".join(p) + b'"')
bws = st.sampled_from([b"", b" ", b"\t", b" \t"])


@st.composite
def extensions(draw):
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        out += draw(bws) + b";" + draw(bws) + draw(token).encode()
        if draw(st.booleans()):
            out += draw(bws) + b"=" + draw(bws) + draw(st.one_of(token.map(str.encode), quoted))
    return out


@st.composite
def chunked_bodies(draw):
    body = b""
    for n in draw(st.lists(st.integers(1, 300), max_size=6)):
        size = (b"0" * draw(st.integers(0, 3))) + (b"%x" % n if draw(st.booleans()) else b"%X" % n)
        body += size + draw(extensions()) + CRLF + draw(st.binary(min_size=n, max_size=n)) + CRLF
    body += b"0" * draw(st.integers(1, 3)) + draw(extensions()) + CRLF
    for _ in range(draw(st.integers(0, 3))):
        body += draw(token).encode() + b":" + draw(ows) + draw(field_value) + draw(ows) + CRLF
    return body + CRLF


@PROPS
@given(chunked_bodies(), st.lists(st.integers(0, 2000), max_size=8),
       st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"0\r\n\r\n", b"\r\n", b"x"]))
def test_prop_chunked_ends_exactly_at_its_end(body, cuts, following):
    stream = body + following
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    pieces = [stream[a:b] for a, b in zip(points, points[1:])]
    n, done, _ = chunked(pieces)
    assert (n, done) == (len(body), 1)
    for k in range(0, len(body)):        # every prefix: no error, not done
        n, done, c = chunked([body[:k]])
        assert (n, done) == (k, 0), (body[:k], c.error != ffi.NULL and ffi.string(c.error))


@PROPS
@given(st.integers(0, 5), st.integers(1 << 60, (1 << 80) - 1), st.booleans(),
       st.lists(st.integers(1, 30), max_size=4))
def test_prop_overflowing_chunk_sizes_are_rejected(zeros, size, upper, cuts):
    digits = (b"%X" if upper else b"%x") % size
    assert len(digits) > 15
    line = b"0" * zeros + digits + b"\r\n"
    points = sorted({min(c, len(line)) for c in cuts} | {0, len(line)})
    n, done, c = chunked([line[a:b] for a, b in zip(points, points[1:])])
    assert n == -1 and c.error_status == 400
