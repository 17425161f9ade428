"""Hot and cold data, in numbers: what docs/architecture.md's "Hot and cold"
section reports, measured on the tree as it is.

    .venv/bin/python -m bench.hotcold [--out DIR] [--requests N] [--idle-conns N]

1. sizeof of every per-worker slab struct (bench/slab_sizes.c, compiled
   against native/), with how many of each a client connection may take;
2. memory per idle keep-alive client connection (scripts/bench's idle
   workload: proxy RSS after N connections that each carried one request);
3. instructions and simulated I1/D1/LL misses per http64 request of the
   worker thread (scripts/bench's callgrind run: valgrind's cache model,
   deterministic up to the order of completions, unlike any timing).

Steps 2 and 3 run `scripts/bench --quick --only uproxy --workloads idle`
(about a minute); its full results stay in DIR. The machine is shared: the
RSS figure may move a little between runs, the callgrind counts barely.
Prints one JSON object and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def slab_sizes(tmp: str) -> list[dict]:
    """Each struct's row; a struct an older tree does not have (measuring
    a "before") is left out: the program is built without its row."""
    exe = os.path.join(tmp, "slab_sizes")
    cflags = subprocess.run(["pkg-config", "--cflags", "liburing"], capture_output=True,
                            text=True).stdout.split()
    src = os.path.join(ROOT, "bench", "slab_sizes.c")
    native = os.path.join(ROOT, "native")
    defs = []
    with open(os.path.join(native, "core", "conn.h")) as f:
        if "struct conn_addr {" in f.read():
            defs.append("-DHAVE_CONN_ADDR")
    subprocess.run(["gcc", "-O0", "-I", native, *defs, *cflags, "-o", exe, src], check=True)
    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def bench_run(out: str, requests: int, idle_conns: int) -> dict:
    argv = [os.path.join(ROOT, "scripts", "bench"), "--quick", "--only", "uproxy", "--workloads", "idle",
            "--requests", str(requests), "--idle-conns", str(idle_conns), "--no-docs", "--out", out]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "results.json")) as f:
        r = json.load(f)
    idle = r["rounds"][0]["uproxy"]["idle"]
    cg = r["uproxy_profile"]["callgrind"]
    if "error" in cg:
        raise SystemExit(f"hotcold: callgrind: {cg['error']}")
    return {
        "idle_kib_per_conn": idle["kib_per_conn"],
        "idle_connections": idle["connections"],
        "requests": cg["requests"],
        "ir_per_req": cg["ir_per_req"],
        "i1_miss_per_req": cg["i1_miss_per_req"],
        "d1_miss_per_req": cg["d1_miss_per_req"],
        "ll_miss_per_req": cg["ll_miss_per_req"],
        "d_refs_per_req": (cg["events"].get("Dr", 0) + cg["events"].get("Dw", 0)) / cg["requests"],
        "valgrind": cg["valgrind"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hotcold", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="where scripts/bench's results go (default: a temporary directory)")
    p.add_argument("--requests", type=int, default=2000, help="requests measured under callgrind (2000)")
    p.add_argument("--idle-conns", type=int, default=5000, help="idle connections for the memory run (5000)")
    p.add_argument("--sizes-only", action="store_true", help="only the sizeof table (no proxy run)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = {"sizes": slab_sizes(tmp)}
        if not a.sizes_only:
            res.update(bench_run(a.out or os.path.join(tmp, "bench"), a.requests, a.idle_conns))
    print(json.dumps(res, indent=1))
    print("\n| struct | bytes | align | per client connection |\n|---|---|---|---|")
    for s in res["sizes"]:
        print(f"| `{s['struct']}` | {s['size']} | {s['align']} | {s['per_client']} |")
    if "ir_per_req" in res:
        print(f"\nidle: {res['idle_kib_per_conn']:.3f} KiB per connection ({res['idle_connections']} connections)")
        print(f"per request ({res['requests']} http64 requests, worker thread): {res['ir_per_req']:,.0f} "
              f"instructions, {res['d_refs_per_req']:,.0f} data refs, I1 {res['i1_miss_per_req']:.1f}, "
              f"D1 {res['d1_miss_per_req']:.2f}, LL {res['ll_miss_per_req']:.2f} misses")
    return 0


if __name__ == "__main__":
    sys.exit(main())
