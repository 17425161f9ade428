"""The proxy's own answers (native/http/h1_reply.c), static texts: each is
a whole HTTP/1.1 response whose Content-Length is its body's, that closes
the connection, and a status without a text of its own gets the 500."""
import pytest

STATUSES = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
            414: "URI Too Long", 431: "Request Header Fields Too Large",
            501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout", 505: "HTTP Version Not Supported",
            500: "Internal Server Error"}


def text(ffi, lib, status):
    n = ffi.new("uint32_t *")
    p = lib.h1_error_text(status, n)
    return ffi.buffer(p, n[0])[:]


@pytest.mark.parametrize("status,reason", sorted(STATUSES.items()))
def test_each_answer_is_a_whole_response(ffi, lib, status, reason):
    raw = text(ffi, lib, status)
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    lines = head.split(b"\r\n")
    assert lines[0] == f"HTTP/1.1 {status} {reason}".encode()
    fields = dict(l.split(b": ", 1) for l in lines[1:])
    assert fields == {b"Content-Type": b"text/plain",
                      b"Content-Length": str(len(body)).encode(),
                      b"Connection": b"close"}
    assert body == reason.encode() + b"\n"


@pytest.mark.parametrize("status", [0, 200, 404, 418, 599])
def test_unlisted_status_gets_the_500(ffi, lib, status):
    assert text(ffi, lib, status) == text(ffi, lib, 500)
