"""kTLS against user-space TLS on 64 KiB bodies (docs/tls.md "Kernel
TLS"): the proxy's CPU per request, same machine, same run, interleaved
rounds. Needs a kernel with the tls ULP (the project's VM):

    scripts/vm-test --run '.venv/bin/python bench/ktls_compare.py'
    scripts/vm-test --run 'WORKLOAD=post64k .venv/bin/python bench/ktls_compare.py'

An nginx origin serves a 64 KiB file on plain HTTP (WORKLOAD=get64k, the
default), or takes a 64 KiB POST and answers "ok" (WORKLOAD=post64k: the
request body crosses the proxy, where kTLS's receiving half counts); one
uproxy worker terminates TLS 1.3 in front of it; wrk (1 thread, 8
connections, keep-alive) asks. Modes (MODES, comma-separated): "ktls"
(the kernel encrypts and decrypts), "ktls_tx" (UPROXY_DISABLE=ktls_rx:
the kernel encrypts, the library decrypts), "user" (UPROXY_DISABLE=ktls).
The proxy's CPU is read from /proc before and after each round; the
modes alternate so that drift hits them all."""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = int(os.environ.get("SECONDS_PER_ROUND", "8"))
WORKLOAD = os.environ.get("WORKLOAD", "get64k")
MODES = tuple(os.environ.get("MODES", "ktls,user").split(","))
DISABLE = {"ktls": None, "ktls_tx": "ktls_rx", "user": "ktls"}


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
    # wrk posts a 64 KiB body (post64k)
    with open(f"{d}/post.lua", "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = string.rep("x", 65536)\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    path, wrk_args = ("/up", ["-s", f"{d}/post.lua"]) if WORKLOAD == "post64k" else ("/64k", [])
    oport = free_port()
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {d};
  server {{ listen 127.0.0.1:{oport} reuseport; root {d}; keepalive_requests 1000000;
    client_max_body_size 1m; location = /up {{ return 200 "ok\\n"; }} }} }}
""")
    ng = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"])
    wait_port(oport)
    results = {m: [] for m in MODES}
    try:
        for r in range(ROUNDS):
            for mode in MODES:
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
                if DISABLE[mode]:
                    env["UPROXY_DISABLE"] = DISABLE[mode]
                up = subprocess.Popen([sys.executable, "-m", "uproxy", "run", "-c", conf], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    wait_port(port)
                    subprocess.run(["wrk", "-t1", "-c8", "-d2s", *wrk_args, f"https://127.0.0.1:{port}{path}"],
                                   capture_output=True)          # warm-up
                    c0 = cpu_s(up.pid)
                    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{SECONDS}s", *wrk_args,
                                          f"https://127.0.0.1:{port}{path}"],
                                         capture_output=True, text=True).stdout
                    c1 = cpu_s(up.pid)
                    m = re.search(r"(\d+) requests in", out)
                    n = int(m.group(1)) if m else 0
                    per = (c1 - c0) * 1e6 / n if n else float("nan")
                    results[mode].append((per, n / SECONDS))
                    print(f"round {r + 1} {mode:7}: {n} requests, {n / SECONDS:.0f} req/s, "
                          f"proxy {per:.0f} CPU-us/request", flush=True)
                finally:
                    up.terminate()
                    up.wait(timeout=30)
    finally:
        ng.terminate()
        ng.wait(timeout=10)
    med = {k: sorted(p for p, _ in v)[len(v) // 2] for k, v in results.items()}
    base = med[MODES[-1]]
    print(f"{WORKLOAD}: median proxy CPU-us per request: " +
          ", ".join(f"{k} {v:.0f} ({v / base:.2f}x {MODES[-1]})" for k, v in med.items()))


if __name__ == "__main__":
    main()
