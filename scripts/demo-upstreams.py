"""Demo upstreams for scripts/demo: three small HTTP/1.1 servers (two "web",
one "api") and two TCP echo servers, on 127.0.0.1, plus an optional gentle
client so the dashboard has something to show."""
import argparse
import http.client
import random
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def http_server(port, name):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # http.server writes the head and the body separately: without this
        # Nagle holds the body for the proxy's delayed ACK (40 ms).
        disable_nagle_algorithm = True

        def do_GET(self):
            if self.path == "/health":
                body = b"ok\n"
            else:
                time.sleep(random.random() * 0.005)
                body = (f"hello from {name} (port {port}) for {self.path}; "
                        f"X-Forwarded-For: {self.headers.get('X-Forwarded-For')}\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass
    s = ThreadingHTTPServer(("127.0.0.1", port), H)
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()


def echo_server(port):
    class E(socketserver.BaseRequestHandler):
        def handle(self):
            while True:
                b = self.request.recv(65536)
                if not b:
                    return
                self.request.sendall(b)
    s = socketserver.ThreadingTCPServer(("127.0.0.1", port), E)
    s.daemon_threads = True
    s.allow_reuse_address = True
    threading.Thread(target=s.serve_forever, daemon=True).start()


def load(rate):
    """A few keep-alive clients and an echo session, about `rate` requests a second."""
    def http_client():
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", 8080, timeout=5)
                for _ in range(1000):
                    c.request("GET", random.choice(["/", "/index", "/api/items", "/api/users"]))
                    c.getresponse().read()
                    time.sleep(random.expovariate(rate / 4))
            except OSError:
                time.sleep(0.5)

    def echo_client():
        while True:
            try:
                with socket.create_connection(("127.0.0.1", 15432), timeout=5) as s:
                    for _ in range(100):
                        s.sendall(b"x" * 4096)
                        got = 0
                        while got < 4096:
                            got += len(s.recv(65536))
                        time.sleep(0.05)
            except OSError:
                time.sleep(0.5)
    for _ in range(4):
        threading.Thread(target=http_client, daemon=True).start()
    threading.Thread(target=echo_client, daemon=True).start()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", type=float, default=200, help="requests per second (0: none)")
    a = ap.parse_args()
    http_server(9001, "web-1")
    http_server(9002, "web-2")
    http_server(9003, "api")
    echo_server(9101)
    echo_server(9102)
    if a.load:
        time.sleep(1.0)
        load(a.load)
    while True:
        time.sleep(3600)
