"""The kernel's and user space's share of a proxy's CPU per HTTP/2 request
(issue 17, G8), side by side and interleaved:

    .venv/bin/python -m bench.h2c_cost [--rounds 3] [--requests 60000]
                                       [--streams 10] [--only uproxy,haproxy]
                                       [--tls]

h2c by prior knowledge, or with --tls HTTP/2 over TLS 1.3 (ALPN h2, the
bench's certificate and client settings: TLS_AES_128_GCM_SHA256, X25519).

The bench's own origin (bench/upstream.py: an nginx returning 64 B) and
its contenders' h2c listeners (bench/peers/), one worker each on the
proxy CPU; h2load -c16 -mM -n N on the load CPU, after a warm-up of N/4.
For each run: the proxy's user and system time per request, from
/proc/PID/stat: the whole process, every thread, for every contender (as
scripts/bench counts it: uproxy's Python control plane is part of its
cost), and for uproxy also its worker thread's share (uproxy-w0, from
/proc/PID/task/TID/stat) and the SQEs per request by opcode from its
stats segment over the same window. A fixed number of requests, not a
fixed time, so that runs compare request for request. Clock ticks are
10 ms: 60,000 requests at ~8 us are ~50 ticks, so read figures to ~2%.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from . import accounting, env, tls
from .peers import H2C_WORKLOADS, H2S_WORKLOADS
from .peers.haproxy import Haproxy
from .peers.nginx import Nginx
from .peers.uproxy import Uproxy
from .upstream import Upstream

TICK = os.sysconf("SC_CLK_TCK")


def _times(paths) -> tuple:
    """(utime, stime) in seconds summed over /proc stat files."""
    u = s = 0
    for p in paths:
        try:
            with open(p) as f:
                t = f.read()
        except OSError:
            continue
        f = t[t.rindex(")") + 2:].split()
        u += int(f[11])
        s += int(f[12])
    return u / TICK, s / TICK


def _worker_paths(cont) -> list:
    """The threads that carry the requests: uproxy's workers (its control
    plane's threads left out), a peer's processes."""
    if cont.family == "uproxy":
        from .workloads import worker_threads
        return [f"/proc/{cont.proc.pid}/task/{t}/stat" for t in worker_threads(cont.pids)]
    return [f"/proc/{p}/stat" for p in cont.pids]


def _process_paths(cont) -> list:
    """What the contender costs: its processes, every thread of them (a
    process's stat sums its threads, live and exited)."""
    return [f"/proc/{p}/stat" for p in cont.pids]


def _switches(paths) -> int:
    """Context switches of the request-carrying threads (voluntary: each
    sleep in a wait, and the wake-up that ends it, is one)."""
    n = 0
    for p in paths:
        with open(p[:-len("stat")] + "status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    n += int(line.split()[1])
    return n


def _ops(cont) -> dict:
    if cont.family != "uproxy":
        return {}
    from uproxy import shm
    snap = shm.Reader(cont.proc.pid).snapshot()
    out: dict = {}
    for w in snap["workers"]:
        for k, v in w["ops"].items():
            out[k] = out.get(k, 0) + v
    out["uring_sqes"] = snap["total"].get("uring_sqes", 0)
    for k in ("uring_enters", "uring_cqes", "uring_batched_waits", "err_nobufs", "h2_held"):
        out[k] = snap["total"].get(k, 0)
    return out


def h2load(ctx, url, n, streams, clients=16, log=None) -> int:
    # over TLS: the bench's client settings (tls.make_cert), as scripts/bench runs it
    env = {**os.environ, "OPENSSL_CONF": ctx.tls_client_conf} if url.startswith("https:") else None
    p = subprocess.run(ctx.pinned([ctx.tools["h2load"], "-c", str(clients), "-t", "1", "-m", str(streams),
                                   "-n", str(n)] + (["--log-file", log] if log else []) + [url]),
                       capture_output=True, text=True, timeout=600, env=env)
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", p.stdout)
    if not m or int(m.group(2)):
        raise RuntimeError(f"h2load: {p.stdout[-400:]} {p.stderr[-400:]}")
    return int(m.group(1))


def _latency(log) -> dict:
    """Mean and p99 of the requests' times in h2load's --log-file (one line
    a request: start, status, duration in us), in us."""
    with open(log) as f:
        d = sorted(int(line.split()[2]) for line in f if line.strip())
    os.unlink(log)
    return {"lat_mean_us": sum(d) / len(d), "lat_p99_us": d[min(len(d) - 1, int(len(d) * 0.99))]} if d else {}


# What the kernel is asked to do, counted by tracepoints on the proxy's
# thread(s) (perf stat; exact counts, unlike CPU time): syscalls by name,
# io_uring's requests, its poll arming and task work, and the packets sent
# (each one's loopback delivery runs in the sender's context).
EVENTS = ("syscalls:sys_enter_sendto", "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_epoll_wait",
          "syscalls:sys_enter_io_uring_enter", "syscalls:sys_enter_writev", "syscalls:sys_enter_readv",
          "syscalls:sys_enter_sendmsg", "syscalls:sys_enter_recvmsg",
          "io_uring:io_uring_submit_req", "io_uring:io_uring_poll_arm", "io_uring:io_uring_task_add",
          "io_uring:io_uring_complete", "net:net_dev_xmit",
          # every socket receive and send, however issued (Linux 6.3+)
          "sock:sock_recv_length", "sock:sock_send_length")


def _events() -> list:
    """EVENTS this kernel has (perf stat refuses the whole list for one
    unknown tracepoint)."""
    for root in ("/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"):
        if os.path.isdir(root):
            return [e for e in EVENTS if os.path.isdir(os.path.join(root, *e.split(":")))]
    return list(EVENTS)


def _perf_counts(path) -> dict:
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                out[parts[2].split(":")[-1].replace("sys_enter_", "")] = int(float(parts[0]))
    return out


def one(ctx, cont, n, streams, perf=None, events=False, clients=16, tls=False) -> dict:
    url = f"https://127.0.0.1:{cont.h2s_port}/64" if tls else f"http://127.0.0.1:{cont.h2c_port}/64"
    h2load(ctx, url, max(1000, n // 4), streams, clients)  # warm-up: pools filled
    paths = _worker_paths(cont)          # perf's threads
    cpu_paths = _process_paths(cont)
    rec = None
    if perf:
        # The proxy's thread(s) only, kernel stacks included.
        tids = ",".join(p.split("/")[-2] if "/task/" in p else p.split("/")[2] for p in paths)
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-t", tids,
                                "-o", f"{perf}.{cont.name}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    stat = None
    if events:
        tids = ",".join(p.split("/")[-2] if "/task/" in p else p.split("/")[2] for p in paths)
        stat_out = os.path.join(ctx.run_dir, f"stat-{cont.name}.csv")
        stat = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(_events()), "-t", tids,
                                 "-o", stat_out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    ops0 = _ops(cont)
    u0, s0 = _times(cpu_paths)
    wu0, ws0 = _times(paths)
    sw0 = _switches(paths)
    t0 = time.monotonic()
    log = os.path.join(ctx.run_dir, f"h2load-{cont.name}.log")
    ok = h2load(ctx, url, n, streams, clients, log)
    secs = time.monotonic() - t0
    for proc in (rec, stat):
        if proc:
            proc.send_signal(2)
            proc.wait(30)
    u1, s1 = _times(cpu_paths)
    wu1, ws1 = _times(paths)
    sw1 = _switches(paths)
    ops1 = _ops(cont)
    r = {"requests": ok, "seconds": round(secs, 3), "user_us": (u1 - u0) * 1e6 / ok,
         "sys_us": (s1 - s0) * 1e6 / ok}
    r["cpu_us"] = r["user_us"] + r["sys_us"]
    r["switches_per_req"] = (sw1 - sw0) / ok
    # uproxy: the worker thread's share (the rest is its control plane)
    r["worker_us"] = (wu1 - wu0 + ws1 - ws0) * 1e6 / ok
    r.update(_latency(log))
    if stat:
        r["events_per_req"] = {k: round(v / ok, 3) for k, v in _perf_counts(stat_out).items() if v}
    if ops1:
        r["sqes_per_req"] = {k: round((ops1[k] - ops0.get(k, 0)) / ok, 3) for k in ops1
                             if ops1[k] != ops0.get(k, 0)}
    return r


def _variant(ctx, name, assigns):
    """A uproxy contender with environment variables and [proxy] keys of
    its own: proxy.KEY=VALUE goes into its configuration (a TOML value)."""
    extra_env = {k: v for k, v in assigns.items() if not k.startswith("proxy.")}
    keys = [f"{k[len('proxy.'):]} = {v}" for k, v in assigns.items() if k.startswith("proxy.")]

    class Variant(Uproxy):
        def env(self):
            return {**os.environ, **extra_env}

        def config_text(self, *args, **kw):
            return super().config_text(*args, **kw).replace("[proxy]\n", "[proxy]\n" + "".join(
                k + "\n" for k in keys), 1)
    c = Variant(ctx)
    c.name = name
    return c


def h2_ctx(a, prefix, tools):
    """The bench's context for an HTTP/2 run of one of its own (this and
    bench.h2c_instr): a run directory, the tools named, no L4 origin and,
    until --tls makes one, no certificate."""
    a.bench_venv = os.environ.get("UPROXY_BENCH_VENV", os.path.expanduser("~/.cache/uproxy/bench-venv"))
    run_dir = tempfile.mkdtemp(prefix=prefix)
    os.chmod(run_dir, 0o755)
    ctx = env.Ctx(a, run_dir)
    ctx.tools = {n: env.tool(n) for n in tools}
    ctx.tools["iperf3"] = None                    # the L4 origin is not needed
    ctx.tls_cert = ctx.tls_key = ctx.tls_pem = None
    return ctx, run_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.h2c_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=60000)
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--clients", type=int, default=16,
                   help="h2load's connections (-c); --clients 1 --streams 1 is a lone sequential client")
    p.add_argument("--only", default="uproxy,haproxy")
    p.add_argument("--perf", metavar="PREFIX",
                   help="perf record -e cpu-clock -g on the proxy's thread(s) during the measured run, "
                        "into PREFIX.<contender> (its CPU figures then include perf's own cost)")
    p.add_argument("--events", action="store_true",
                   help="count syscalls, io_uring requests, poll arms, task work, packets and socket "
                        "receives and sends per "
                        "request (perf stat on tracepoints, on the proxy's thread(s))")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE[;VAR=VALUE]",
                   help="one more uproxy contender, run with these environment variables: "
                        "UPROXY_DISABLE (features switched off: the paths before a change that a "
                        "feature carries), or PYTHONPATH (another build's src/, with its "
                        "_native*.so), or proxy.KEY (a [proxy] key of its configuration), e.g. "
                        "uproxy-old:UPROXY_DISABLE=multishot_recv_limit or nobatch:proxy.batch_wait_us=0")
    p.add_argument("--tls", action="store_true",
                   help="HTTP/2 over TLS 1.3 (ALPN h2) instead of h2c: the h2_M workloads' listeners")
    p.add_argument("--proxy-cpus")
    p.add_argument("--load-cpus")
    a = p.parse_args(argv)
    ctx, run_dir = h2_ctx(a, "h2c-cost-", ("h2load", "nginx", "taskset", "openssl"))
    wls = H2C_WORKLOADS
    if a.tls:
        if not ctx.tools["openssl"]:
            print("error: --tls needs openssl (scripts/setup --bench)", file=sys.stderr)
            return 2
        tls.make_cert(ctx)
        wls = H2S_WORKLOADS
    env.raise_nofile()
    os.sched_setaffinity(0, ctx.load_cpus)
    kinds = {"uproxy": Uproxy, "haproxy": Haproxy, "nginx": Nginx}
    conts = []
    for name in [n for n in a.only.split(",") if n]:
        c = kinds[name](ctx)
        # only the HTTP/2 listener (and the HTTP one its readiness check asks)
        c.workloads = ("http64",) + wls
        why = c.missing()
        if why:
            print(f"{name}: {why}", file=sys.stderr)
            continue
        conts.append(c)
    for v in a.variant:
        vname, assigns = v.split(":", 1)
        c = _variant(ctx, vname, dict(a.split("=", 1) for a in assigns.split(";")))
        c.workloads = ("http64",) + wls
        conts.append(c)
    up = Upstream(ctx)
    up.start()
    rows: dict = {c.name: [] for c in conts}
    try:
        for rnd in range(a.rounds):
            for c in conts:
                c.start(rnd)
                try:
                    r = one(ctx, c, a.requests, a.streams, a.perf, a.events, a.clients, a.tls)
                finally:
                    c.stop()
                r["load"] = accounting.loadavg()
                rows[c.name].append(r)
                print(f"round {rnd + 1} {c.name:8} user {r['user_us']:.2f} sys {r['sys_us']:.2f} "
                      f"total {r['cpu_us']:.2f} us/req"
                      + (f" (worker {r['worker_us']:.2f})" if c.family == "uproxy" else "")
                      + f"  ({r['requests']} in {r['seconds']} s, "
                      f"latency mean {r.get('lat_mean_us', 0):.0f} p99 {r.get('lat_p99_us', 0):.0f} us, "
                      f"load {r['load']:.1f}, switches {r['switches_per_req']:.2f}/req) "
                      f"{r.get('sqes_per_req', '')}", flush=True)
                if "events_per_req" in r:
                    print(f"    events/req: {r['events_per_req']}", flush=True)
    finally:
        up.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    print("medians:")
    med = {}
    for name, rs in rows.items():
        if not rs:
            continue
        med[name] = {k: statistics.median(r.get(k, 0) for r in rs)
                     for k in ("user_us", "sys_us", "cpu_us", "worker_us", "lat_mean_us", "lat_p99_us",
                              "seconds")}
        print(f"  {name:8} user {med[name]['user_us']:.2f} sys {med[name]['sys_us']:.2f} "
              f"total {med[name]['cpu_us']:.2f} us/req; latency mean {med[name]['lat_mean_us']:.0f} "
              f"p99 {med[name]['lat_p99_us']:.0f} us; {med[name]['seconds']:.2f} s")
    if "uproxy" in med:
        for name in med:
            if name != "uproxy":
                ratios = [u["cpu_us"] / o["cpu_us"] for u, o in zip(rows["uproxy"], rows[name])]
                print(f"  uproxy / {name}: per round {', '.join(f'{x:.2f}' for x in ratios)}; "
                      f"median {statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
