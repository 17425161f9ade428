"""Helpers of the hardening tests (test_hostile.py, test_faults.py,
test_soak.py, scripts/soak): an upstream that serves many connections from
one thread, a small HTTP/1.1 client over raw sockets that records every
outcome, and the proxy's resource figures (fds, RSS, CPU time)."""
from __future__ import annotations

import os
import re
import selectors
import socket
import threading
import time


# ---- process figures ------------------------------------------------------

def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle_fds(pid: int, target: int, slack: int = 0, timeout: float = 10.0) -> int:
    """Waits until the process holds at most target + slack fds (closes
    finish asynchronously: lingering closes take up to 2 s); returns the
    count at the end either way."""
    deadline = time.monotonic() + timeout
    n = fd_count(pid)
    while n > target + slack and time.monotonic() < deadline:
        time.sleep(0.1)
        n = fd_count(pid)
    return n


# ---- an upstream for many connections ----------------------------------------

class FastUpstream:
    """HTTP/1.1 keep-alive upstream on one selector thread: answers every
    request head with 200 and a body of `size` bytes (request bodies with
    Content-Length are read and dropped). Counts requests; can be paused
    (stops answering), made to refuse (closed listener) and restarted on
    the same port."""

    def __init__(self, size=64, port=0):
        self.body = b"x" * size
        self.requests = 0
        self.paused = False
        self.port = port
        self._start()

    def _start(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", self.port))
        self.lsock.listen(4096)
        self.lsock.setblocking(False)
        self.port = self.lsock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.lsock, selectors.EVENT_READ)
        self.stop_flag = False
        self.conns = {}
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _answer(self, c, st):
        while True:
            buf = st["buf"]
            if st["left"]:
                n = min(st["left"], len(buf))
                st["left"] -= n
                st["buf"] = buf = buf[n:]
                if st["left"]:
                    return
            end = buf.find(b"\r\n\r\n")
            if end < 0 or self.paused:
                return
            head = buf[:end]
            st["buf"] = buf[end + 4:]
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            st["left"] = int(m.group(1)) if m else 0
            self.requests += 1
            resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(self.body), self.body)
            try:
                c.setblocking(True)
                c.settimeout(5)
                c.sendall(resp)
                c.setblocking(False)
            except OSError:
                self._drop(c)
                return

    def _drop(self, c):
        try:
            self.sel.unregister(c)
        except (KeyError, ValueError):
            pass
        self.conns.pop(c, None)
        c.close()

    def _run(self):
        while not self.stop_flag:
            for key, _ in self.sel.select(0.05):
                if key.fileobj is self.lsock:
                    try:
                        while True:
                            c, _ = self.lsock.accept()
                            c.setblocking(False)
                            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            self.conns[c] = {"buf": b"", "left": 0}
                            self.sel.register(c, selectors.EVENT_READ)
                    except (BlockingIOError, OSError):
                        pass
                    continue
                c = key.fileobj
                try:
                    b = c.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    b = b""
                if not b:
                    self._drop(c)
                    continue
                st = self.conns[c]
                st["buf"] += b
                self._answer(c, st)
            if not self.paused:
                for c, st in list(self.conns.items()):
                    if st["buf"] and not st["left"]:
                        self._answer(c, st)
        for c in list(self.conns):
            self._drop(c)
        self.sel.close()
        self.lsock.close()

    def close(self):
        self.stop_flag = True
        self.t.join(5)

    def restart(self):
        self._start()


# ---- a client that records every outcome ---------------------------------------

def read_response(sock, buf=b""):
    """(status, body, rest) of one Content-Length or chunked response."""
    while b"\r\n\r\n" not in buf:
        b = sock.recv(65536)
        if not b:
            raise ConnectionError("closed before a response head")
        buf += b
    head, buf = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if m:
        n = int(m.group(1))
        while len(buf) < n:
            b = sock.recv(65536)
            if not b:
                raise ConnectionError("closed in the body")
            buf += b
        return status, buf[:n], buf[n:], head
    if re.search(rb"(?i)\r\ntransfer-encoding:\s*chunked", head):
        body = b""
        while True:
            while b"\r\n" not in buf:
                b = sock.recv(65536)
                if not b:
                    raise ConnectionError("closed in a chunk")
                buf += b
            line, buf = buf.split(b"\r\n", 1)
            size = int(line.split(b";")[0], 16)
            while len(buf) < size + 2:
                b = sock.recv(65536)
                if not b:
                    raise ConnectionError("closed in a chunk")
                buf += b
            if size == 0:
                while not buf.startswith(b"\r\n"):
                    if b"\r\n\r\n" in buf:
                        buf = buf.split(b"\r\n\r\n", 1)[1]
                        break
                    buf += sock.recv(65536)
                else:
                    buf = buf[2:]
                return status, body, buf, head
            body += buf[:size]
            buf = buf[size + 2:]
    return status, b"", buf, head


class Load:
    """`n` threads, each a keep-alive client sending GET path in a loop
    until stopped (or `count` requests each). Every outcome is recorded:
    statuses, and errors (a connection closed or reset without a response,
    a timeout: a hung request)."""

    def __init__(self, port, n=4, path="/", count=None, timeout=10.0, pause=0.0):
        self.port, self.path, self.count, self.timeout, self.pause = port, path, count, timeout, pause
        self.statuses = {}
        self.errors = []
        self.done = 0
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _record(self, status=None, error=None):
        with self.lock:
            if error is not None:
                self.errors.append(error)
            else:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self.done += 1

    def _run(self):
        sent = 0
        sock, rest = None, b""
        while not self.stop_ev.is_set() and (self.count is None or sent < self.count):
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
                    rest = b""
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: load\r\n\r\n" % self.path.encode())
                sent += 1
                status, body, rest, head = read_response(sock, rest)
                self._record(status)
                if re.search(rb"(?i)\r\nconnection:\s*close", head):
                    sock.close()
                    sock = None
            except socket.timeout:
                self._record(error="timeout (a hung request)")
                sock.close()
                sock = None
            except (ConnectionError, OSError) as e:
                if isinstance(e, ConnectionRefusedError) and self.stop_ev.is_set():
                    break
                self._record(error=repr(e))
                if sock:
                    sock.close()
                sock = None
                time.sleep(0.01)
            if self.pause:
                time.sleep(self.pause)
        if sock:
            sock.close()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(self.timeout + 5)
        return self

    def summary(self):
        return f"{self.done} responses {self.statuses}, {len(self.errors)} errors {self.errors[:3]}"
