"""kTLS against user-space TLS on 64 KiB responses (docs/tls.md "Kernel
TLS"): the proxy's CPU per request, same machine, same run, interleaved
rounds. Needs a kernel with the tls ULP (the project's VM):

    scripts/vm-test --run '.venv/bin/python bench/ktls_compare.py'

An nginx origin serves a 64 KiB file on plain HTTP; one uproxy worker
terminates TLS 1.3 in front of it; wrk (1 thread, 8 connections,
keep-alive) asks for it. The proxy's CPU is read from /proc before and
after each round; the two modes alternate so that drift hits both."""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = int(os.environ.get("SECONDS_PER_ROUND", "8"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port}")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    d = tempfile.mkdtemp(prefix="ktls-bench-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{d}/k.pem", "-out", f"{d}/c.pem", "-days", "2",
                    "-subj", "/CN=localhost"], check=True, capture_output=True)
    with open(f"{d}/64k", "wb") as f:
        f.write(os.urandom(65536))
    oport = free_port()
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {d};
  server {{ listen 127.0.0.1:{oport} reuseport; root {d}; keepalive_requests 1000000; }} }}
""")
    ng = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"])
    wait_port(oport)
    results = {"ktls": [], "user": []}
    try:
        for r in range(ROUNDS):
            for mode in ("ktls", "user"):
                port = free_port()
                conf = f"{d}/u-{mode}.toml"
                with open(conf, "w") as f:
                    f.write(f"""[proxy]
workers = 1

[[listeners]]
name = "https"
bind = "127.0.0.1:{port}"
mode = "http"
cluster = "o"
tls = {{ certificates = [{{ cert = "{d}/c.pem", key = "{d}/k.pem" }}] }}

[[clusters]]
name = "o"
servers = ["127.0.0.1:{oport}"]
""")
                env = dict(os.environ)
                if mode == "user":
                    env["UPROXY_DISABLE"] = "ktls"
                up = subprocess.Popen([sys.executable, "-m", "uproxy", "run", "-c", conf], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    wait_port(port)
                    subprocess.run(["wrk", "-t1", "-c8", "-d2s", f"https://127.0.0.1:{port}/64k"],
                                   capture_output=True)          # warm-up
                    c0 = cpu_s(up.pid)
                    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{SECONDS}s",
                                          f"https://127.0.0.1:{port}/64k"],
                                         capture_output=True, text=True).stdout
                    c1 = cpu_s(up.pid)
                    m = re.search(r"(\d+) requests in", out)
                    n = int(m.group(1)) if m else 0
                    per = (c1 - c0) * 1e6 / n if n else float("nan")
                    results[mode].append((per, n / SECONDS))
                    print(f"round {r + 1} {mode:5}: {n} requests, {n / SECONDS:.0f} req/s, "
                          f"proxy {per:.0f} CPU-us/request", flush=True)
                finally:
                    up.terminate()
                    up.wait(timeout=30)
    finally:
        ng.terminate()
        ng.wait(timeout=10)
    med = {k: sorted(p for p, _ in v)[len(v) // 2] for k, v in results.items()}
    print(f"median proxy CPU-us per 64 KiB request: kTLS {med['ktls']:.0f}, user space "
          f"{med['user']:.0f}, ratio {med['ktls'] / med['user']:.2f}")


if __name__ == "__main__":
    main()
