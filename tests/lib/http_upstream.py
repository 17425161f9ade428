"""A small HTTP/1.1 upstream for tests: real sockets, exact control over
what it sends (framing, delays, closes), and a record of what it received."""
from __future__ import annotations

import hashlib
import socket
import time
from dataclasses import dataclass, field

from support import Server


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list
    body: bytes = b""
    head: bytes = b""
    body_sha: str | None = None
    body_len: int = 0

    def header(self, name: str):
        name = name.lower()
        vals = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(vals) if vals else None

    def header_lines(self, name: str) -> list:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: list = field(default_factory=list)
    chunked: bool = False
    chunk_size: int = 1000
    close: bool = False          # send Connection: close and close after
    close_delimited: bool = False  # no length at all: the body ends at close
    delay: float = 0.0
    raw: bytes | None = None      # send exactly these bytes instead
    interim: list = field(default_factory=list)   # 1xx heads sent first
    cut_after: int | None = None  # close after this many body bytes (a lie)
    stream: object = None         # callable(sock) that writes the body itself


def read_head(f) -> bytes | None:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline(65537)
        if not line:
            return None
        if head == b"" and line == b"\r\n":
            continue
        head += line
    return head


def read_chunked(f, sink):
    while True:
        line = f.readline()
        if not line:
            raise EOFError("chunked body cut short")
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            while f.readline() not in (b"\r\n", b""):
                pass
            return
        left = size
        while left:
            b = f.read(min(left, 1 << 20))
            if not b:
                raise EOFError("chunk cut short")
            sink(b)
            left -= len(b)
        assert f.read(2) == b"\r\n"


class HttpUpstream(Server):
    """A support.Server whose connections speak HTTP/1.1: each request is
    recorded in `requests` and answered with what handler(req) returns."""

    def __init__(self, handler=None, port=0, keep_body=True, continue_100=True):
        self.handler = handler or (lambda req: Response(body=b"ok " + req.target.encode()))
        self.keep_body = keep_body
        self.continue_100 = continue_100
        self.requests = []
        self.cut_short = []       # connections the proxy cut short (resets, cut bodies)
        super().__init__(lambda c, _srv: self._serve(c), port)

    def _serve(self, c):
        # As real servers do: without it, a head and a body written
        # separately meet Nagle and the peer's delayed ACK (40 ms).
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = c.makefile("rb")
        try:
            while True:
                head = read_head(f)
                if head is None:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = []
                for l in lines[1:]:
                    if l:
                        k, v = l.split(":", 1)
                        headers.append((k, v.strip()))
                req = Request(method, target, version, headers, head=head)
                h = hashlib.sha256()
                chunks = []

                def sink(b):
                    h.update(b)
                    req.body_len += len(b)
                    if self.keep_body:
                        chunks.append(b)
                te = (req.header("transfer-encoding") or "").lower()
                if req.header("expect") == "100-continue" and self.continue_100:
                    c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                if "chunked" in te:
                    read_chunked(f, sink)
                elif req.header("content-length"):
                    left = int(req.header("content-length"))
                    while left:
                        b = f.read(min(left, 1 << 20))
                        if not b:
                            raise EOFError("body cut short")
                        sink(b)
                        left -= len(b)
                req.body = b"".join(chunks)
                req.body_sha = h.hexdigest()
                with self.lock:
                    self.requests.append(req)
                resp = self.handler(req)
                if resp is None:
                    return
                if resp.delay:
                    time.sleep(resp.delay)
                self._send(c, req, resp)
                if resp.close or resp.close_delimited or resp.cut_after is not None or \
                        (req.header("connection") or "").lower() == "close":
                    return
        except (ConnectionError, EOFError) as e:
            # The proxy cut the connection short (a reset, a request body
            # it gave up on): what a server sees from a proxy that aborts,
            # counted, not a fault of the handler.
            with self.lock:
                self.cut_short.append(e)
        except Exception as e:   # a handler's fault: fails the test at close()
            with self.lock:
                self.errors.append(e)
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _send(self, c, req, r: Response):
        for code in r.interim:
            c.sendall(f"HTTP/1.1 {code} Interim\r\n\r\n".encode())
        if r.raw is not None:
            c.sendall(r.raw)
            return
        hdrs = list(r.headers)
        body = r.body
        if r.stream is None and not r.chunked and not r.close_delimited:
            hdrs.append(("Content-Length", str(len(body))))
        if r.chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        if r.close:
            hdrs.append(("Connection", "close"))
        head = (f"HTTP/1.1 {r.status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs)
                + "\r\n").encode()
        if req.method == "HEAD" or r.status in (204, 304):
            c.sendall(head)
            return
        if r.stream is None and r.cut_after is None and not r.chunked:
            c.sendall(head + body)
            return
        c.sendall(head)
        if r.stream is not None:
            r.stream(c)
            return
        if r.cut_after is not None:
            c.sendall(body[:r.cut_after])
            return
        if r.chunked:
            for i in range(0, len(body), r.chunk_size):
                piece = body[i:i + r.chunk_size]
                c.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            c.sendall(b"0\r\n\r\n")
        else:
            c.sendall(body)

    def close(self):
        # Shut the connections down first: a reader's makefile keeps a
        # closed socket's descriptor open, and the proxy must see them end.
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        super().close()
