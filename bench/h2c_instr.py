"""Instructions and simulated cache misses per HTTP/2 request in uproxy's
worker (callgrind), with the share of each library, for A/B comparisons
that CPU time on a shared host is too noisy to settle:

    .venv/bin/python -m bench.h2c_instr [--requests 20000] [--streams 1]
                                        [--variant NAME:VAR=VALUE[;VAR=VALUE]]

h2c by prior knowledge from h2load (-c16 -mM) to uproxy running under
valgrind --tool=callgrind --cache-sim=yes, in front of the bench's origin
(bench/upstream.py), as bench.h2c_cost runs it. After a warm-up of the
same size the counters are zeroed (callgrind_control -z), the requests are
sent, and the worker thread's counters are dumped (-d). The contender
`uproxy` runs as configured; each --variant runs with its environment
variables (e.g. UPROXY_DISABLE=... or LD_LIBRARY_PATH=... for another
libnghttp2). Counts are exact for what runs in user space; the kernel's
side of io_uring is not instrumented (see bench.h2c_cost for that).
The D1/LL misses are callgrind's simulated caches (cachegrind's model),
not this machine's: they compare builds, they do not time them.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import shutil
import subprocess
import sys
import time

from . import env
from .h2c_cost import _variant, h2_ctx, h2load
from .peers import H2C_WORKLOADS
from .peers.uproxy import Uproxy
from .upstream import Upstream
from .valgrind import _parse_callgrind, _runs_worker_loop


def _under_callgrind(cont, base):
    """The contender, its interpreter run by callgrind (as bench.valgrind)."""
    render = cont.render
    ctx = cont.ctx

    def wrapped():
        argv = render()
        return [ctx.tools["valgrind"], "--tool=callgrind", "--separate-threads=yes", "--cache-sim=yes",
                f"--callgrind-out-file={base}.%p", os.path.join(ctx.root, ".venv", "bin", "python"),
                "-m", "uproxy", *argv[1:]]
    ready = cont.wait_ready
    cont.render = wrapped
    cont.wait_ready = lambda timeout=240.0: ready(timeout)   # valgrind starts slowly
    return cont


def _by_object(path) -> dict:
    """Self cost (Ir) per shared object in one callgrind dump (ob= lines
    name the object of the fn= lines that follow; cost lines are
    'position Ir ...' under the current fn, calls= lines' next line is an
    inclusive cost that is not the caller's own)."""
    names: dict = {}
    cost: collections.Counter = collections.Counter()
    ob = None
    skip_next = False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                ob = _name(names, line[3:].strip())
            elif line.startswith("cob="):
                _name(names, line[4:].strip())       # may define an id used later by ob=
            elif line.startswith(("cfi=", "cfn=", "fn=", "fl=", "fi=", "fe=")):
                continue
            elif line.startswith("calls="):
                skip_next = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) > 1 and ob:
                    cost[ob] += int(parts[1])
    return dict(cost)


def _name(names, s):
    # "(id) /path" defines an id, "(id)" reuses it
    if s.startswith("("):
        i = s.index(")")
        key, rest = s[:i + 1], s[i + 1:].strip()
        if rest:
            names[key] = rest
        return os.path.basename(names.get(key, key))
    return os.path.basename(s)


def one(ctx, cont, n, streams, base, top=0) -> dict:
    cont.start(0)
    url = f"http://127.0.0.1:{cont.h2c_port}/64"
    try:
        h2load(ctx, url, n, streams)          # warm-up: pools filled, tables built
        pid = cont.proc.pid
        subprocess.run([ctx.tools["callgrind_control"], "-z", str(pid)], check=True, capture_output=True,
                       timeout=120)
        ok = h2load(ctx, url, n, streams)
        subprocess.run([ctx.tools["callgrind_control"], "-d", str(pid)], check=True, capture_output=True,
                       timeout=120)
        time.sleep(0.5)
        files = sorted(glob.glob(f"{base}.{pid}.1-*"))
    finally:
        cont.stop()
    named = [f for f in files if _runs_worker_loop(f)]
    if len(named) != 1:
        raise RuntimeError(f"no single worker thread's dump among {files}")
    ev = _parse_callgrind(named[0])
    funcs = ""
    if top:
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no", f"--threshold=100", named[0]],
                             capture_output=True, text=True, timeout=300).stdout
        rows = [ln for ln in ann.splitlines() if ln.strip()[:1].isdigit() and ":" in ln and "(" in ln]
        funcs = "\n".join(rows[:top])
    objs = _by_object(named[0])
    return {"requests": ok, "ir": ev.get("Ir", 0) / ok,
            "d1": (ev.get("D1mr", 0) + ev.get("D1mw", 0)) / ok,
            "ll": (ev.get("DLmr", 0) + ev.get("DLmw", 0) + ev.get("ILmr", 0)) / ok,
            "functions": funcs,
            "objects": {k: v / ok for k, v in sorted(objs.items(), key=lambda kv: -kv[1])}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.h2c_instr", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE[;VAR=VALUE]")
    p.add_argument("--top", type=int, default=0, help="also list this many functions by their own Ir")
    p.add_argument("--no-default", action="store_true", help="only the variants")
    p.add_argument("--proxy-cpus")
    p.add_argument("--load-cpus")
    a = p.parse_args(argv)
    ctx, run_dir = h2_ctx(a, "h2c-instr-", ("h2load", "nginx", "taskset", "valgrind", "callgrind_control"))
    missing = [t for t in ("h2load", "nginx", "valgrind", "callgrind_control") if not ctx.tools[t]]
    if missing:
        print(f"error: needs {', '.join(missing)} (scripts/setup --bench)", file=sys.stderr)
        return 2
    env.raise_nofile()
    os.sched_setaffinity(0, ctx.load_cpus)
    conts = [] if a.no_default else [Uproxy(ctx)]
    for v in a.variant:
        vname, assigns = v.split(":", 1)
        conts.append(_variant(ctx, vname, dict(x.split("=", 1) for x in assigns.split(";"))))
    up = Upstream(ctx)
    up.start()
    try:
        for c in conts:
            c.workloads = ("http64",) + H2C_WORKLOADS
            base = os.path.join(run_dir, f"cg-{c.name}")
            r = one(ctx, _under_callgrind(c, base), a.requests, a.streams, base, a.top)
            top = ", ".join(f"{k} {v:.0f}" for k, v in list(r["objects"].items())[:5])
            print(f"{c.name:10} Ir {r['ir']:.0f}/req  D1 misses {r['d1']:.1f}/req  LL misses {r['ll']:.2f}/req"
                  f"  ({r['requests']} requests, {a.streams} streams per connection)\n"
                  f"{'':10} Ir by object: {top}", flush=True)
            if r["functions"]:
                print(f"  the worker's functions, total Ir over {r['requests']} requests (self):\n"
                      + r["functions"], flush=True)
    finally:
        up.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
