"""uproxy alone: instructions and simulated cache misses per request
(callgrind), heap allocations per request (the test suite's LD_PRELOAD
counter), and hardware counters where the machine has a PMU.

callgrind runs the whole proxy (`python -m uproxy run --workers 1`) with
--separate-threads=yes and --cache-sim=yes (callgrind's cache simulation is
cachegrind's model: I1, D1 and LL). After a warm-up the counters are zeroed
with callgrind_control -z, a fixed number of requests is sent, and
callgrind_control -d dumps them; the worker thread is the one that executed
the most instructions over that window (the Python threads idle). valgrind
3.19 knows io_uring_setup/enter/register, so the io_uring worker runs under
it unchanged; the kernel's side of io_uring (and io-wq threads) is not
instrumented, as for any syscall.

Until HTTP listeners land, requests go through a tcp listener in front of
the same upstream (keep-alive HTTP bytes relayed, no HTTP parsing), and the
report says so.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time

from .peers import StartError
from .peers.uproxy import Uproxy


class _Run(Uproxy):
    name = "uproxy-profile"
    workloads = ("idle",)     # readiness: HTTP (or the tcp listener to the HTTP upstream) only
    skip_reasons = {}

    def __init__(self, ctx, prefix=(), extra_env=None, tag="profile"):
        super().__init__(ctx)
        self.prefix = list(prefix)
        self.extra_env = dict(extra_env or {})
        self.name = f"uproxy-{tag}"

    def skip(self, workload):
        return None if workload == "idle" else "profile run"

    def render(self):
        argv = super().render()
        if self.prefix:
            # valgrind runs the interpreter, not the console script.
            argv = self.prefix + [os.path.join(self.ctx.root, ".venv", "bin", "python"), "-m", "uproxy",
                                  *argv[1:]]
        return argv

    def env(self):
        e = super().env()
        e.update(self.extra_env)
        return e

    def wait_ready(self, timeout=240.0):
        super().wait_ready(timeout)

    def target(self) -> str:
        if self.http_available():
            return f"uproxy's tcp listener in front of the HTTP upstream ({self.http_available()})"
        return "uproxy's HTTP listener"


def _loadgen(ctx, cont, n, conns=4, keepalive=1, timeout=600):
    argv = ctx.pinned([ctx.loadgen, "-a", cont.http_base(), "-p", "/64", "-c", str(conns), "-n", str(n),
                       "-k", str(keepalive)])
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"loadgen failed: {p.stderr.strip()[-300:]}")
    import json
    r = json.loads(p.stdout.strip().splitlines()[-1])
    errs = sum(r["errors"].values())
    if r["requests"] < n or errs:
        raise RuntimeError(f"loadgen: {r['requests']} of {n} requests, errors {r['errors']}")
    return r


def _parse_callgrind(path) -> dict:
    events, totals = None, None
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:") or (line.startswith("summary:") and totals is None):
                totals = [int(x) for x in line.split()[1:]]
    if not events or totals is None:
        return {}
    return dict(zip(events, totals + [0] * (len(events) - len(totals))))


def _runs_worker_loop(path) -> bool:
    pat = re.compile(r"^c?fn=\(\d+\) (up_worker_loop|dispatch)$")
    with open(path, errors="replace") as f:
        return any(pat.match(line.strip()) for line in f)


def callgrind(ctx, say) -> dict:
    a = ctx.args
    if not ctx.tools.get("valgrind") or not ctx.tools.get("callgrind_control"):
        return {"error": "valgrind is not installed (Debian: valgrind, or scripts/setup --bench)"}
    vdir = os.path.join(ctx.run_dir, "callgrind")
    os.makedirs(vdir, exist_ok=True)
    base = os.path.join(vdir, "cg.out")
    prefix = [ctx.tools["valgrind"], "--tool=callgrind", "--separate-threads=yes", "--cache-sim=yes",
              f"--callgrind-out-file={base}.%p"]
    ver = subprocess.run([ctx.tools["valgrind"], "--version"], capture_output=True, text=True).stdout.strip()
    cont = _Run(ctx, prefix=prefix, tag="callgrind")
    warm = a.requests
    say(f"  callgrind: starting uproxy under {ver} (slow: about half a minute)")
    try:
        cont.start(0)
    except StartError as e:
        return {"error": f"uproxy did not start under valgrind: {str(e)[-600:]}"}
    try:
        _loadgen(ctx, cont, warm)
        pid = cont.proc.pid
        z = subprocess.run([ctx.tools["callgrind_control"], "-z", str(pid)], capture_output=True, text=True,
                           timeout=120)
        if z.returncode != 0:
            return {"error": f"callgrind_control -z: {z.stdout.strip()} {z.stderr.strip()}"[-400:]}
        t0 = time.monotonic()
        _loadgen(ctx, cont, a.requests)
        secs = time.monotonic() - t0
        d = subprocess.run([ctx.tools["callgrind_control"], "-d", str(pid)], capture_output=True, text=True,
                           timeout=120)
        if d.returncode != 0:
            return {"error": f"callgrind_control -d: {d.stdout.strip()} {d.stderr.strip()}"[-400:]}
        time.sleep(0.5)
        files = sorted(glob.glob(f"{base}.{pid}.1-*"))
        if not files:
            return {"error": f"no callgrind dump in {vdir} (looked for {base}.{pid}.1-*)"}
        threads = {os.path.basename(f).rsplit("-", 1)[1]: _parse_callgrind(f) for f in files}
    finally:
        cont.stop()
    # The worker thread is the one running the C core's loop; the Python
    # threads tick meanwhile, and over a short window may execute nearly as
    # many instructions, so the thread is found by name, not by size.
    named = [os.path.basename(f).rsplit("-", 1)[1] for f in files if _runs_worker_loop(f)]
    worker = named[0] if len(named) == 1 else max(threads, key=lambda t: threads[t].get("Ir", 0))
    w = threads[worker]
    n = a.requests
    return {
        "valgrind": ver,
        "target": cont.target(),
        "warmup": warm,
        "requests": n,
        "seconds_under_valgrind": secs,
        "worker_thread": worker,
        "worker_found_by": "name (up_worker_loop)" if len(named) == 1 else "most instructions",
        "events": w,
        "ir_per_req": w.get("Ir", 0) / n,
        "d1_miss_per_req": (w.get("D1mr", 0) + w.get("D1mw", 0)) / n,
        "ll_miss_per_req": (w.get("ILmr", 0) + w.get("DLmr", 0) + w.get("DLmw", 0)) / n,
        "i1_miss_per_req": w.get("I1mr", 0) / n,
        "other_threads": {t: v.get("Ir", 0) for t, v in threads.items() if t != worker},
        "dumps": files,
    }


def allocations(ctx, say) -> dict:
    """tests/native/alloccount.c, preloaded: the worker thread's malloc
    family count after warm-up + N requests and after warm-up + 10N, each
    half keep-alive and half on new connections."""
    a = ctx.args
    src = os.path.join(ctx.root, "tests", "native", "alloccount.c")
    if not os.path.exists(src):
        return {"error": "tests/native/alloccount.c is missing"}
    so = os.path.join(ctx.run_dir, "alloccount.so")
    r = subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", so, src], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": f"alloccount.c did not build: {r.stderr[-300:]}"}
    try:
        sys.path.insert(0, os.path.join(ctx.root, "src"))
        from uproxy import shm
    except Exception as e:  # the bench runs in .venv, where uproxy is installed
        return {"error": f"cannot import uproxy.shm to find the worker thread: {e}"}

    def one(n, tag):
        log = os.path.join(ctx.run_dir, f"alloc-{tag}.log")
        cont = _Run(ctx, extra_env={"LD_PRELOAD": so, "UPROXY_ALLOC_LOG": log}, tag=f"alloc-{tag}")
        cont.start(0)
        try:
            _loadgen(ctx, cont, 200)
            _loadgen(ctx, cont, 200, keepalive=0)
            _loadgen(ctx, cont, n)
            _loadgen(ctx, cont, n, keepalive=0)
            rd = shm.Reader(cont.proc.pid)
            try:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and rd.snapshot()["total"]["active"] > 0:
                    time.sleep(0.05)
                tid = rd.snapshot()["workers"][0]["tid"]
            finally:
                rd.close()
        finally:
            cont.stop()
        counts = {}
        with open(log) as f:
            for line in f:
                t, c = line.split()
                counts[int(t)] = int(c)
        if tid not in counts:
            raise RuntimeError(f"the worker thread {tid} made no allocation at all (counter not loaded?)")
        return counts[tid]

    n = a.requests
    try:
        ca = one(n, "n")
        cb = one(10 * n, "10n")
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"[:600]}
    cont = _Run(ctx)
    return {"target": cont.target(), "n": 2 * n, "n10": 20 * n, "a": ca, "b": cb,
            "per_request": max(0, cb - ca) / (18 * n)}


def perf(ctx, say) -> dict:
    from . import env
    p = env.pmu()
    if not p["available"]:
        return p
    cont = _Run(ctx, tag="perf")
    try:
        cont.start(0)
    except StartError as e:
        return {"available": True, "error": str(e)[-400:]}
    try:
        d = ctx.args.duration
        pr = subprocess.Popen(["perf", "stat", "-x,", "-e", "cycles,instructions,cache-misses,branch-misses",
                               "-p", ",".join(map(str, cont.pids)), "--", "sleep", str(d + 1)],
                              stderr=subprocess.PIPE, text=True)
        r = _loadgen(ctx, cont, int(20000 * d), conns=64)
        _, err = pr.communicate(timeout=d + 30)
    finally:
        cont.stop()
    counts = {}
    for line in err.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].replace(".", "").isdigit():
            counts[f[2]] = float(f[0])
    n = r["requests"]
    return {"available": True, "requests": n, "counts": counts,
            "per_request": {k: round(v / n, 1) for k, v in counts.items()},
            "note": "perf attached to the whole proxy process for the run's duration"}


def profile(ctx, say) -> dict:
    out = {}
    say("uproxy profile: callgrind, allocation counter, PMU")
    out["callgrind"] = callgrind(ctx, say)
    cg = out["callgrind"]
    if "error" in cg:
        say(f"  callgrind: {cg['error']}")
    else:
        say(f"  callgrind: {cg['ir_per_req']:,.0f} instructions/request, D1 misses {cg['d1_miss_per_req']:.1f}, "
            f"LL misses {cg['ll_miss_per_req']:.2f} per request ({cg['target']})")
    out["allocations"] = allocations(ctx, say)
    al = out["allocations"]
    if "error" in al:
        say(f"  allocations: {al['error']}")
    else:
        say(f"  allocations: worker {al['a']} after {al['n']:,} requests, {al['b']} after {al['n10']:,}")
    out["perf"] = perf(ctx, say)
    if not out["perf"].get("available"):
        say(f"  perf: {out['perf']['why']}")
    return out
