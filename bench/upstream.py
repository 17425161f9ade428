"""The fixed upstream every contender proxies to, pinned to the load CPUs:

- an nginx instance of its own (own config, pid and logs) answering
  GET /64 with 64 bytes (`return 200`) and GET /64k with a 65,536-byte static
  file (sendfile), keep-alive on, logs off, one worker per load CPU; and,
  on an h2c listener of its own, every gRPC unary call with the same
  64-byte message and `grpc-status: 0` in trailers (bench/grpc.py);
- an iperf3 server for the L4 workloads.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from . import grpc
from .peers import free_port, write
from .peers.nginx import NGINX, common_main, temp_paths

BODY64 = "0123456789abcdef" * 4


class Upstream:
    def __init__(self, ctx):
        self.ctx = ctx
        self.procs = []
        self.dir = os.path.join(ctx.run_dir, "upstream")

    def start(self):
        c = self.ctx
        os.makedirs(os.path.join(self.dir, "www"), exist_ok=True)
        os.chmod(self.dir, 0o755)
        os.chmod(os.path.join(self.dir, "www"), 0o755)
        with open(os.path.join(self.dir, "www", "64k"), "wb") as f:
            f.write(bytes(range(256)) * 256)
        with open(os.path.join(self.dir, "www", "grpc-response"), "wb") as f:
            f.write(grpc.RESPONSE)
        c.grpc_request = os.path.join(self.dir, "grpc-request")
        with open(c.grpc_request, "wb") as f:
            f.write(grpc.REQUEST)
        c.upstream_port = free_port()
        c.iperf_port = free_port()
        c.grpc_upstream_port = free_port()
        workers = max(1, len(c.load_cpus))
        conf = common_main(self.dir, workers) + f"""
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  open_file_cache max=64;
  default_type application/octet-stream;
{temp_paths(self.dir)}
  server {{
    listen 127.0.0.1:{c.upstream_port} backlog=4096;
    root {self.dir}/www;
    location = /64 {{ return 200 "{BODY64}"; }}
    location = /64k {{ }}
  }}
{grpc.origin_server(c.grpc_upstream_port, os.path.join(self.dir, "www"))}}}
"""
        write(os.path.join(self.dir, "nginx.conf"), conf)
        self._spawn("nginx", [NGINX, "-p", self.dir, "-e", os.path.join(self.dir, "error.log"),
                              "-c", os.path.join(self.dir, "nginx.conf")])
        if c.tools.get("iperf3"):
            self._spawn("iperf3", [c.tools["iperf3"], "-s", "-p", str(c.iperf_port)])
        self._wait(c.upstream_port)
        self._wait(c.grpc_upstream_port)
        if c.tools.get("iperf3"):
            self._wait(c.iperf_port)
        from . import accounting
        for p in self.procs:
            c.our_pids.update(accounting.tree(p.pid))

    def _spawn(self, name, argv):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        p = subprocess.Popen(self.ctx.pinned(argv), stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir)
        log.close()
        p.name = name
        self.procs.append(p)

    def _wait(self, port, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"upstream {p.name} exited with {p.returncode}; see {self.dir}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"upstream port {port} not ready; see {self.dir}")

    def restart_iperf(self):
        """An iperf3 server whose client died mid-test can stay busy."""
        for p in list(self.procs):
            if p.name == "iperf3":
                self._kill(p)
                self.procs.remove(p)
        self._spawn("iperf3", [self.ctx.tools["iperf3"], "-s", "-p", str(self.ctx.iperf_port)])
        self._wait(self.ctx.iperf_port)
        from . import accounting
        self.ctx.our_pids.update(accounting.tree(self.procs[-1].pid))

    @staticmethod
    def _kill(p):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)

    def pids(self):
        from . import accounting
        out = []
        for p in self.procs:
            out += accounting.tree(p.pid)
        return out

    def stop(self):
        for p in self.procs:
            self._kill(p)
        self.procs = []
