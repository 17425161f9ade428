"""Request smuggling and desync: the known shapes, sent through a real
uproxy process by raw sockets, to a strict upstream that records the exact
bytes it receives on each connection and parses them with h11 (an
independent, strict HTTP/1.1 implementation).

For every shape, one of two outcomes is allowed, and each shape names the
one uproxy gives:

- "reject": the client gets a 4xx/5xx from the proxy, and the upstream
  completes no message from that request (it may see nothing, or, for an
  error found in the middle of a chunked body, a message that is cut off
  with its connection, which no strict server acts on);
- "forward": the upstream sees exactly the messages the proxy saw, each one
  normalised (one framing header at most, CRLF only, no control bytes), and
  the client gets exactly one response per message, in order: what follows
  a message (the next pipelined request) arrives intact and separate.

Either way, the number of requests the upstream completed equals the number
of responses the client received from the upstream: a request that the
upstream sees and the client was never answered for is a smuggled one.
"""
import re
import socket
import threading
import time

import h11
import pytest

from harden import FastUpstream, read_response
from support import Proxy, Server, free_port, render_config, wait_for


# ---- the strict, recording upstream --------------------------------------------

class StrictUpstream:
    """Every connection's bytes are recorded as they arrive and parsed by
    h11 as a server; each complete request is answered with a
    Content-Length response whose body is "<n>:<target>"."""

    def __init__(self, respond=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []            # per connection: {"raw": bytearray, "mark": int, "error": str}
        self.reqs = []             # completed requests since the last reset, in order
        self.respond = respond
        self.count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        """Forget what was seen so far (pooled connections stay open)."""
        with self.lock:
            self.conns = [rec for rec in self.conns if not rec["closed"]]
            for rec in self.conns:
                rec["mark"] = len(rec["raw"])
            self.reqs = []

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            rec = {"raw": bytearray(), "mark": 0, "error": None, "closed": False}
            with self.lock:
                self.conns.append(rec)
            threading.Thread(target=self._serve, args=(c, rec), daemon=True).start()

    def _serve(self, c, rec):
        conn = h11.Connection(h11.SERVER)
        cur = None
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    b = c.recv(65536)
                    with self.lock:
                        rec["raw"] += b
                    conn.receive_data(b)
                    continue
                if isinstance(ev, h11.Request):
                    cur = {"method": ev.method.decode(), "target": ev.target.decode("latin-1"),
                           "version": ev.http_version.decode(),
                           "headers": [(k.decode().lower(), v.decode("latin-1")) for k, v in ev.headers],
                           "body": b"", "done": False}
                elif isinstance(ev, h11.Data):
                    cur["body"] += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    cur["done"] = True
                    with self.lock:
                        self.reqs.append(cur)
                        self.count += 1
                        n = self.count
                    body = b"%d:%s" % (n, cur["target"].encode("latin-1"))
                    custom = self.respond(cur) if self.respond else None
                    if custom is not None:
                        c.sendall(custom)
                        return
                    out = conn.send(h11.Response(status_code=200,
                                                 headers=[("Content-Length", str(len(body)))]))
                    out += conn.send(h11.Data(data=body))
                    out += conn.send(h11.EndOfMessage()) or b""
                    c.sendall(out)
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                    cur = None
                elif isinstance(ev, h11.ConnectionClosed):
                    return
        except h11.RemoteProtocolError as e:
            rec["error"] = str(e)
        except OSError as e:
            rec["error"] = repr(e)
        finally:
            rec["closed"] = True
            c.close()

    def completed(self):
        with self.lock:
            return list(self.reqs)

    def raw_all(self):
        with self.lock:
            return [bytes(rec["raw"][rec["mark"]:]) for rec in self.conns]

    def close(self):
        self.sock.close()


HEAD_LINE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~\x80-\xff]*$")


def check_normalised(raw: bytes):
    """Each message head the proxy sent: CRLF-only lines, field lines that
    are name:value with no control byte, one framing header at most."""
    i = 0
    while i < len(raw):
        end = raw.find(b"\r\n\r\n", i)
        if end < 0:
            return       # the rest is a body cut off with the connection
        head = raw[i:end]
        assert b"\n" not in head.replace(b"\r\n", b""), f"bare LF in {head!r}"
        assert b"\r" not in head.replace(b"\r\n", b""), f"bare CR in {head!r}"
        lines = head.split(b"\r\n")
        assert re.match(rb"^[A-Z]+ \S+ HTTP/1\.[01]$", lines[0]), lines[0]
        names = [l.split(b":", 1)[0].lower() for l in lines[1:]]
        for l in lines[1:]:
            assert HEAD_LINE.match(l), f"malformed field line {l!r}"
        assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1, head
        assert names.count(b"host") <= 1, head
        # Skip the body by the framing the head declares.
        i = end + 4
        cl = [l.split(b":", 1)[1].strip() for l in lines[1:] if l.lower().startswith(b"content-length:")]
        te = [l for l in lines[1:] if l.lower().startswith(b"transfer-encoding:")]
        if cl:
            i += int(cl[0])
        elif te:
            while True:
                le = raw.find(b"\r\n", i)
                if le < 0:
                    return
                size = int(raw[i:le].split(b";")[0].strip(), 16)
                i = le + 2
                if size == 0:
                    t = raw.find(b"\r\n\r\n", i - 2)
                    if t < 0:
                        return
                    i = t + 4
                    break
                i += size + 2


# ---- the client side ------------------------------------------------------

def exchange(port, data: bytes, pause=None, timeout=5.0, expect=None):
    """Send data (in pieces with pauses, if given), then read every response
    until the proxy closes, or (with expect) until that many responses came
    and nothing more for a moment. Returns [(status, body)] and whether the
    connection was closed by the proxy."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        pieces = data if isinstance(data, list) else [data]
        for p in pieces:
            try:
                s.sendall(p)
            except OSError:
                break
            if pause:
                time.sleep(pause)
        buf = b""
        closed = False
        s.settimeout(0.3)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except socket.timeout:
                got, used = complete_responses(buf)
                if expect is not None and len(got) >= expect and used == len(buf):
                    break
                continue
            except ConnectionResetError:
                closed = True
                break
            if not b:
                closed = True
                break
            buf += b
        resps, used = complete_responses(buf)
        assert used == len(buf), f"trailing bytes after the responses: {buf[used:]!r}"
        return resps, closed
    finally:
        s.close()


def complete_responses(buf: bytes):
    out, i = [], 0
    while True:
        end = buf.find(b"\r\n\r\n", i)
        if end < 0:
            return out, i
        head = buf[i:end].decode("latin-1")
        status = int(head.split(" ", 2)[1])
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        n = int(m.group(1)) if m else 0
        if end + 4 + n > len(buf):
            return out, i
        out.append((status, buf[end + 4:end + 4 + n]))
        i = end + 4 + n


# ---- the shapes -------------------------------------------------------------------

H = b"Host: x\r\n"
SMUG = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"

# (name, bytes sent, outcome, for "reject" the status, for "forward" the
#  targets the upstream must complete, in order)
SHAPES = [
    # CL.TE and TE.CL: both headers is always an error.
    ("CL.TE", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX" + SMUG, "reject", 400, []),
    ("TE.CL", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", "reject", 400, []),
    ("CL.TE with TE in a later line", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 4\r\nX: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("CL.TE with a lowercase, OWS-padded TE", b"POST /a HTTP/1.1\r\n" + H + b"content-length: 4\r\ntransfer-encoding:  Chunked \r\n\r\n0\r\n\r\n", "reject", 400, []),
    # TE.TE: a disguised Transfer-Encoding one side might not recognise.
    ("TE.TE xchunked", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", "reject", 501, []),
    ("TE.TE space before colon", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE obs-fold", b"POST /a HTTP/1.1\r\n" + H + b"X: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE folded value", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE leading space on the line", b"POST /a HTTP/1.1\r\n" + H + b" Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE quoted", b"POST /a HTTP/1.1\r\n" + H + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n', "reject", 400, []),
    ("TE.TE chunked twice in a list", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE chunked on two lines", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE chunked then an unknown coding", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n0\r\n\r\n", "reject", 501, []),
    ("TE.TE chunked not last", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE identity", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc", "reject", 501, []),
    ("TE.TE vertical tab", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE NUL", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: \x00chunked\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE non-ASCII lookalike", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunk\xc4\xb1d\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("TE.TE tab before the value (valid OWS)", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding:\tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    ("TE.TE upper case (valid)", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    ("TE in HTTP/1.0", b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "reject", 400, []),
    ("Transfer_Encoding with an underscore is just a field", b"POST /a HTTP/1.1\r\n" + H + b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    # Content-Length
    ("duplicate Content-Length, same value", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", "reject", 400, []),
    ("duplicate Content-Length, different", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 40\r\n\r\nabc" + SMUG, "reject", 400, []),
    ("Content-Length as a list", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", "reject", 400, []),
    ("Content-Length with a sign", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", "reject", 400, []),
    ("Content-Length in hex", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", "reject", 400, []),
    ("Content-Length with a space inside", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 1 0\r\n\r\nabc", "reject", 400, []),
    ("Content-Length empty", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length:\r\n\r\n", "reject", 400, []),
    ("Content-Length overflow", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 18446744073709551617\r\n\r\nabc", "reject", 400, []),
    ("Content-Length leading zeros (valid)", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 0003\r\n\r\nabc" + NEXT, "forward", None, ["/a", "/next"]),
    ("Content-Length on a GET carries a request-looking body", b"GET /a HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(SMUG) + SMUG + NEXT, "forward", None, ["/a", "/next"]),
    ("Content-Length: 0 then a pipelined request", b"POST /a HTTP/1.1\r\n" + H + b"Content-Length: 0\r\n\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    # Chunked bodies
    ("chunk size overflow (17 hex digits)", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\nA\r\n0\r\n\r\n", "reject", 400, []),
    ("chunk size overflow (wraps to 0 in 64 bits)", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n10000000000000000\r\n\r\n" + SMUG, "reject", 400, []),
    ("chunk size with leading zeros (valid)", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n00000000000000000003\r\nabc\r\n0\r\n\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    ("chunk size negative", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", "reject", 400, []),
    ("chunk size 0x prefix", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n", "reject", 400, []),
    ("chunk size with trailing space", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", "reject", 400, []),
    ("chunk extensions (valid)", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;a=b;c=\"d;e\"\r\nabc\r\n0;last\r\n\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    ("chunk extension with a bare LF in a quoted value", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;a=\"x\ny\"\r\nabc\r\n0\r\n\r\n", "reject", 400, []),
    ("chunk extension hiding a size", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;\r\nabc\r\n0\r\n\r\n", "reject", 400, []),
    ("chunk extension too long", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;a=" + b"b" * 5000 + b"\r\nabc\r\n0\r\n\r\n", "reject", 400, []),
    ("chunk data longer than its size", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", "reject", 400, []),
    ("chunk data shorter than its size", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n8\r\nabc\r\n0\r\n\r\n" + SMUG, "reject", 400, []),
    ("bare LF after chunk data", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n", "reject", 400, []),
    ("bare LF after the chunk size", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", "reject", 400, []),
    ("bare LF ending the last chunk", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\n\n" + SMUG, "reject", 400, []),
    ("trailer section (valid)", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    ("trailer obs-fold", b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n folded\r\n\r\n", "reject", 400, []),
    # Line endings and CR injection in the head.
    ("bare LF line endings", b"GET /a HTTP/1.1\n" + b"Host: x\n\n", "reject", 400, []),
    ("bare LF inside a field value", b"GET /a HTTP/1.1\r\n" + H + b"X: a\nTransfer-Encoding: chunked\r\n\r\n", "reject", 400, []),
    ("bare CR inside a field value", b"GET /a HTTP/1.1\r\n" + H + b"X: a\rTransfer-Encoding: chunked\r\n\r\n", "reject", 400, []),
    ("bare CR in the request line", b"GET /a\r HTTP/1.1\r\n" + H + b"\r\n", "reject", 400, []),
    ("CR CR LF", b"GET /a HTTP/1.1\r\r\n" + H + b"\r\n", "reject", 400, []),
    ("LF before the request line", b"\nGET /a HTTP/1.1\r\n" + H + b"\r\n", "reject", 400, []),
    ("empty lines before the request line (allowed)", b"\r\n\r\nGET /a HTTP/1.1\r\n" + H + b"\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    ("NUL in the target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", "reject", 400, []),
    ("space in the target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", "reject", 400, []),
    ("tab between method and target", b"GET\t/a HTTP/1.1\r\n" + H + b"\r\n", "reject", 400, []),
    # Host
    ("two Host lines", b"GET /a HTTP/1.1\r\nHost: x\r\nHost: evil\r\n\r\n", "reject", 400, []),
    ("Host with a space inside", b"GET /a HTTP/1.1\r\nHost: x evil\r\n\r\n", "reject", 400, []),
    ("HTTP/1.1 without Host", b"GET /a HTTP/1.1\r\n\r\n", "reject", 400, []),
    # Absolute-form and other targets
    ("absolute-form target", b"GET http://x/a?q HTTP/1.1\r\nHost: other\r\n\r\n" + NEXT, "forward", None, ["http://x/a?q", "/next"]),
    ("absolute-form with userinfo", b"GET http://user@x/a HTTP/1.1\r\n" + H + b"\r\n" + NEXT, "forward", None, ["http://user@x/a", "/next"]),
    ("absolute-form without a path", b"GET http://x HTTP/1.1\r\n" + H + b"\r\n" + NEXT, "forward", None, ["http://x", "/next"]),
    ("CONNECT is refused by a reverse proxy", b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n" + SMUG, "reject", 501, []),
    ("scheme-less authority outside CONNECT", b"GET x:80 HTTP/1.1\r\n" + H + b"\r\n", "reject", 400, []),
    ("asterisk outside OPTIONS", b"GET * HTTP/1.1\r\n" + H + b"\r\n", "reject", 400, []),
    ("HTTP/1.2", b"GET /a HTTP/1.2\r\n" + H + b"\r\n", "reject", 505, []),
    ("HTTP/0.9 style line", b"GET /a\r\n\r\n", "reject", 400, []),
    # Hop-by-hop tricks: Connection may not strip the framing or Host.
    ("Connection names Content-Length", b"POST /a HTTP/1.1\r\n" + H + b"Connection: Content-Length\r\nContent-Length: %d\r\n\r\n" % len(SMUG) + SMUG + NEXT, "forward", None, ["/a", "/next"]),
    ("Connection names Transfer-Encoding", b"POST /a HTTP/1.1\r\n" + H + b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    ("Connection names Host", b"GET /a HTTP/1.1\r\n" + H + b"Connection: Host\r\n\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    # HTTP/1.0 keep-alive corners
    ("HTTP/1.0 keep-alive with a body, pipelined", b"POST /a HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc" + b"GET /next HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "forward", None, ["/a", "/next"]),
    ("HTTP/1.0 without keep-alive: what follows is not read", b"GET /a HTTP/1.0\r\n\r\n" + SMUG, "forward", None, ["/a"]),
    ("HTTP/1.1 Connection: close: what follows is not read", b"GET /a HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n" + SMUG, "forward", None, ["/a"]),
    ("HTTP/1.0 keep-alive and close together", b"GET /a HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n" + SMUG, "forward", None, ["/a"]),
    ("HTTP/1.0 Keep-Alive header alone", b"GET /a HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n" + SMUG, "forward", None, ["/a"]),
    # Pipelining
    ("pipelined requests in one segment", b"GET /a HTTP/1.1\r\n" + H + b"\r\n" + NEXT, "forward", None, ["/a", "/next"]),
    ("a good request, then a bad one", b"GET /a HTTP/1.1\r\n" + H + b"\r\n" + b"GET /b HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", "reject", 400, ["/a"]),
]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    up = StrictUpstream()
    port = free_port()
    cfg = render_config({"workers": 1},
                        [{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c",
                          "header_timeout": "3s"}],
                        [{"name": "c", "servers": [up.addr]}])
    p = Proxy(tmp_path_factory.mktemp("smuggling"), cfg)
    p.port = port
    yield up, p
    code = p.stop()
    up.close()
    assert code == 0, p.output()


def run_shape(rig, data, outcome, status, targets):
    up, p = rig
    up.reset()
    # A refusal ends with the proxy's close; forwarded messages are
    # answered on a connection that may stay open.
    resps, closed = exchange(p.port, data, expect=len(targets) if outcome == "forward" else None)
    time.sleep(0.05)
    done = up.completed()
    seen = [r["target"] for r in done]
    for raw in up.raw_all():
        check_normalised(raw)
    # The central invariant: every request the upstream completed was
    # answered to the client, in order, with its own response.
    from_upstream = [(s, b) for s, b in resps if re.match(rb"^\d+:", b)]
    assert [b.split(b":", 1)[1].decode("latin-1") for s, b in from_upstream] == seen, \
        f"upstream completed {seen}, client got {resps}"
    assert seen == targets, f"upstream completed {seen}, expected {targets}; client got {resps}"
    if outcome == "reject":
        assert resps and resps[-1][0] == status, f"expected {status}, client got {resps}"
        assert closed, "the proxy kept the connection after refusing"
    else:
        assert all(s == 200 for s, _ in resps), resps
    return resps, done


@pytest.mark.parametrize("name,data,outcome,status,targets", SHAPES, ids=[s[0] for s in SHAPES])
def test_smuggling_shape(rig, name, data, outcome, status, targets):
    resps, done = run_shape(rig, data, outcome, status, targets)
    if outcome == "forward":
        # Bodies arrive as the proxy framed them.
        if name.startswith("Content-Length on a GET") or name.startswith("Connection names Content-Length"):
            assert done[0]["body"] == SMUG
        if "chunk" in name and "(valid)" in name:
            assert done[0]["body"] == b"abc"
        if name.startswith("absolute-form target"):
            # Routed and forwarded by the target's authority; Host is passed as sent.
            assert dict(done[0]["headers"])["host"] == "other"


@pytest.mark.parametrize("name,data,outcome,status,targets",
                         [s for s in SHAPES if s[2] == "reject"][:12],
                         ids=[s[0] for s in SHAPES if s[2] == "reject"][:12])
def test_smuggling_shape_one_byte_at_a_time(rig, name, data, outcome, status, targets):
    """The same verdict when the bytes trickle in (the parser is called
    again on every piece, and the head is assembled from pieces)."""
    pieces = [data[i:i + 1] for i in range(min(len(data), 400))]
    if len(data) > 400:
        pieces.append(data[400:])
    run_shape(rig, pieces, outcome, status, targets)


def test_desync_after_upgrade_refused(rig):
    """An Upgrade request that the upstream answers with 200, not 101, does
    not become a tunnel: what follows is parsed as HTTP again."""
    up, p = rig
    up.reset()
    data = (b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + NEXT)
    resps, closed = exchange(p.port, data, expect=2)
    assert [r["target"] for r in up.completed()] == ["/ws", "/next"]
    assert [s for s, _ in resps] == [200, 200]


# ---- the response side: an upstream that lies --------------------------------

def raw_upstream(answers):
    """An upstream that answers each connection's first request with the
    next raw bytes from answers, then keeps the connection open."""
    it = iter(answers)
    lock = threading.Lock()

    def serve(c):
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                b = c.recv(65536)
                if not b:
                    return
                buf += b
            with lock:
                a = next(it, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean")
            c.sendall(a)
            time.sleep(1.0)
        except OSError:
            pass

    srv = Server(lambda c, _srv: serve(c), backlog=64)
    return srv, srv.addr


RESPONSE_SHAPES = [
    ("CL and TE in a response", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 502),
    ("two Content-Length in a response", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\nok", 502),
    ("bare LF in a response", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 502),
    ("obs-fold in a response", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a\r\n b\r\n\r\nok", 502),
    ("NUL in a response header", b"HTTP/1.1 200 OK\r\nX: a\x00\r\nContent-Length: 2\r\n\r\nok", 502),
    ("TE in an HTTP/1.0 response", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 502),
    ("garbage status line", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", 502),
    ("bare LF before the status line", b"\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 502),
]


@pytest.mark.parametrize("name,answer,status", RESPONSE_SHAPES, ids=[s[0] for s in RESPONSE_SHAPES])
def test_malformed_responses_are_not_forwarded(proxy_factory, name, answer, status):
    srv, addr = raw_upstream([answer])
    port = free_port()
    proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                  [{"name": "c", "servers": [addr]}], proxy={"workers": 1})
    resps, closed = exchange(port, b"GET /a HTTP/1.1\r\n" + H + b"\r\n")
    assert [s for s, _ in resps] == [status], resps
    srv.close()


# Issue 16, defect 1: empty lines before a status line are ignored (RFC 9112
# section 2.2 asks it of request lines; nginx, HAProxy and llhttp do it for
# status lines too), and a client that was sent a 1xx still gets a final
# answer when the upstream fails after it.
FINAL_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
EMPTY_LINE_SHAPES = [
    ("an empty line before the status line", b"\r\n" + FINAL_OK, [(200, b"ok")]),
    ("three empty lines before the status line", b"\r\n" * 3 + FINAL_OK, [(200, b"ok")]),
    ("an empty line between a 100 and the final response",
     b"HTTP/1.1 100 Continue\r\n\r\n\r\n" + FINAL_OK, [(100, b""), (200, b"ok")]),
    ("empty lines around a 103",
     b"\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\r\n\r\n" + FINAL_OK,
     [(103, b""), (200, b"ok")]),
    ("garbage after a 100", b"HTTP/1.1 100 Continue\r\n\r\nHELLO THERE\r\n\r\n",
     [(100, b""), (502, None)]),
    ("a bare LF after a 100", b"HTTP/1.1 100 Continue\r\n\r\n\n" + FINAL_OK,
     [(100, b""), (502, None)]),
    ("a close after a 100", b"HTTP/1.1 100 Continue\r\n\r\n", [(100, b""), (502, None)]),
]


@pytest.mark.parametrize("name,answer,expect", EMPTY_LINE_SHAPES, ids=[s[0] for s in EMPTY_LINE_SHAPES])
def test_empty_lines_before_a_status_line(proxy_factory, name, answer, expect):
    """The upstream's exact bytes; the client gets every interim response
    and then exactly one final one (relayed, or the proxy's 502), never a
    close with no final answer. The skipped empty lines are not relayed."""
    srv, addr = raw_upstream([answer])
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                      [{"name": "c", "servers": [addr]}], proxy={"workers": 1})
    resps, closed = exchange(port, b"GET /a HTTP/1.1\r\n" + H + b"\r\n", expect=len(expect))
    assert [s for s, _ in resps] == [s for s, _ in expect], resps
    for (s, body), (_, want) in zip(resps, expect):
        if want is not None:
            assert body == want, resps
    if expect[-1][0] == 502:
        assert closed
        assert p.total("err_bad_gateway") == 1
    else:
        assert not closed, "the proxy closed a client whose response was relayed whole"
    srv.close()


def test_extra_bytes_after_a_response_never_reach_another_client(proxy_factory):
    """Response queue poisoning: an upstream that sends a second,
    unrequested response after the first. The connection must not go back
    to the pool, so the next client never reads the planted response."""
    planted = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned"
    srv, addr = raw_upstream([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + planted] * 20)
    port = free_port()
    proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                  [{"name": "c", "servers": [addr]}], proxy={"workers": 1})
    bodies = []
    for i in range(10):
        resps, _ = exchange(port, b"GET /%d HTTP/1.1\r\n" % i + H + b"Connection: close\r\n\r\n")
        bodies += [b for _, b in resps]
    assert b"poisoned" not in bodies, bodies
    srv.close()


def test_response_with_extra_bytes_arriving_later_is_not_reused(proxy_factory):
    """The planted bytes arrive after the response, while the connection
    idles in the pool: the pool sees them and drops the connection."""
    def serve(c, _srv):
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += c.recv(65536)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            time.sleep(0.2)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned")
            time.sleep(2)
        except OSError:
            pass

    srv = Server(serve, backlog=64)
    addr = srv.addr
    port = free_port()
    p = proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                      [{"name": "c", "servers": [addr]}], proxy={"workers": 1})
    resps, _ = exchange(port, b"GET /1 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert resps == [(200, b"ok")]
    time.sleep(0.5)
    resps, _ = exchange(port, b"GET /2 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert resps == [(200, b"ok")], resps
    wait_for(lambda: p.total("pool_stale") >= 1, 3, what="the poisoned connection dropped")
    srv.close()


def test_early_response_does_not_turn_the_rest_of_a_body_into_a_request(proxy_factory):
    """The upstream answers as soon as it has the head (as servers do for
    401 or 413), while the request body is still coming. The body's bytes,
    which look like a request, must not be read as the client's next
    request, nor reach the upstream as one."""
    seen = []

    def serve(c, _srv):
        raw = b""
        try:
            while b"\r\n\r\n" not in raw:
                raw += c.recv(65536)
            c.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope")
            c.settimeout(2)
            while True:
                b = c.recv(65536)
                if not b:
                    break
                raw += b
        except OSError:
            pass
        finally:
            seen.append(raw)

    srv = Server(serve, backlog=64)
    addr = srv.addr
    port = free_port()
    proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                  [{"name": "c", "servers": [addr]}], proxy={"workers": 1})
    body = SMUG * 4
    head = b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(body)
    resps, closed = exchange(port, [head, body[:10], body[10:]], pause=0.3)
    assert [s for s, _ in resps] == [401], resps          # one response, not five
    wait_for(lambda: seen, 5, what="the upstream connection to end")
    for raw in seen:
        assert raw.count(b"GET /smuggled") in (0, 4)       # body bytes, never split off
    srv.close()


def test_pipelined_requests_across_receive_buffer_boundaries(proxy_factory):
    """5,000 pipelined requests (150 KB, so heads straddle the boundaries of
    the 16 KiB receive buffers, with more requests queued behind them) are
    all answered, in order. A head split across two buffers used to be
    gathered together with everything queued after it, which was more than
    a head may be: 431 at the first boundary."""
    up = FastUpstream()
    port = free_port()
    proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                  [{"name": "c", "servers": [up.addr]}], proxy={"workers": 1})
    n = 5000
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(n))
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    threading.Thread(target=lambda: s.sendall(reqs), daemon=True).start()
    buf, statuses = b"", []
    try:
        while len(statuses) < n:
            st, body, buf, _ = read_response(s, buf)
            statuses.append(st)
            if st != 200:
                break
    finally:
        s.close()
        up.close()
    assert statuses == [200] * n, f"request {len(statuses) - 1} got {statuses[-1]}"


def test_response_head_in_pieces_with_a_large_body_behind_it(proxy_factory):
    """The upstream sends its status line alone, then the rest of the head
    and a 200 KB body at once: the head spans receive buffers with far more
    than a head's worth of body queued behind it."""
    body = bytes(range(256)) * 800

    def serve(c, _srv):
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += c.recv(65536)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(b"HTTP/1.1 200 OK\r\n")
        time.sleep(0.1)
        c.sendall(b"X-Pad: " + b"p" * 100 + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % len(body) + body)

    srv = Server(serve, backlog=16)
    addr = srv.addr
    port = free_port()
    proxy_factory([{"name": "web", "bind": f"127.0.0.1:{port}", "mode": "http", "cluster": "c"}],
                  [{"name": "c", "servers": [addr]}], proxy={"workers": 1})
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            st, got, _, _ = read_response(s)
        assert (st, got == body) == (200, True), st
    srv.close()
