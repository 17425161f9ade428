"""Helpers of the fleet tests (test_watch, test_dns, test_etcd): upstreams
that answer with their own name, a client that keeps requesting through the
proxy and counts every failure, and the admin endpoint's /status."""
from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def need(binary: str, package: str) -> str:
    """The binary's path, or the test is skipped saying what to install."""
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        msg = f"{binary} is not installed (Debian: apt-get install {package}; scripts/setup --test does it)"
        print("SKIP:", msg)
        pytest.skip(msg)
    return path


class Named:
    """An HTTP/1.1 keep-alive upstream on host:port whose answer is its name."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0):
        self.name = name
        body = name.encode()

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                # one write: a head and a body sent apart meet the client's
                # delayed ACK (40 ms a request)
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

            def log_message(self, *a):
                pass

        class S(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self.httpd = S((host, port), H)
        self.host, self.port = self.httpd.server_address[:2]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def get(port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = 5.0):
    """(status, body) of one request on a new connection."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Host": "app.test"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


class Client:
    """Requests through the proxy without pause, on a keep-alive connection
    renewed every `per_conn` requests, from a thread: every answer's body is
    counted, every failure (a refused connect, a reset, a non-200) kept."""

    def __init__(self, port: int, per_conn: int = 20, path: str = "/"):
        self.port, self.per_conn, self.path = port, per_conn, path
        self.seen: dict = {}
        self.last: dict = {}           # body -> monotonic time it was last seen
        self.failures: list = []
        self.requests = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        c = None
        n = 0
        while not self.stopping.is_set():
            try:
                if c is None or n >= self.per_conn:
                    if c is not None:
                        c.close()
                    c, n = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5), 0
                c.request("GET", self.path, headers={"Host": "app.test"})
                r = c.getresponse()
                body = r.read().decode(errors="replace")
                n += 1
                self.requests += 1
                if r.status != 200:
                    self.failures.append((time.monotonic(), f"status {r.status}: {body[:80]}"))
                else:
                    self.seen[body] = self.seen.get(body, 0) + 1
                    self.last[body] = time.monotonic()
                if r.getheader("Connection", "").lower() == "close":
                    c.close()
                    c = None
            except Exception as e:
                self.failures.append((time.monotonic(), repr(e)))
                if c is not None:
                    c.close()
                c = None
                time.sleep(0.01)
        if c is not None:
            c.close()

    def seen_since(self, body: str, t: float) -> bool:
        return self.last.get(body, 0) > t

    def stop(self):
        self.stopping.set()
        self.thread.join(10)


def status(admin_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status", timeout=5) as r:
        return json.loads(r.read())


def metrics(admin_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
        return r.read().decode()


def config(listen: int, admin: int, servers: list, proxy_extra: str = "", cluster_extra: str = "",
           extra: str = "") -> str:
    """A one-listener HTTP configuration with its admin endpoint."""
    return f"""[proxy]
workers = 1
drain_timeout = "2s"
{proxy_extra}

[admin]
bind = "127.0.0.1:{admin}"

[[listeners]]
name = "web"
bind = "127.0.0.1:{listen}"
mode = "http"
cluster = "app"

[[clusters]]
name = "app"
servers = {json.dumps(servers)}
{cluster_extra}
{extra}"""
