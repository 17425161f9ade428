"""scripts/bench: uproxy against its peers, in interleaved rounds, then the
gates of DESIGN.md section 3. See docs/benchmarks.md."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time

from . import env, gates, report, rps, tls, workloads
from .peers import ALL_WORKLOADS, CERT_WORKLOADS, H2_WORKLOADS, TLS_WORKLOADS, StartError, all_contenders
from .upstream import Upstream


def parse_args(argv):
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="a check of about 2 minutes: 1 round, short runs, fewer idle connections")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick 1)")
    p.add_argument("--duration", type=float, help="seconds measured per run (default 5; --quick 1; wrk counts whole seconds)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before each run (default 1; --quick 0.5)")
    p.add_argument("--connections", type=int, default=64, help="client connections for HTTP runs (64)")
    p.add_argument("--idle-conns", type=int, help="idle connections for the memory run (5000)")
    p.add_argument("--rate-fraction", type=float, default=0.6,
                   help="fixed-rate run at this fraction of nginx's http64 peak (0.6)")
    p.add_argument("--only", help="comma-separated contenders (uproxy,nginx,...)")
    p.add_argument("--workloads", help=f"comma-separated workloads ({','.join(ALL_WORKLOADS)})")
    p.add_argument("--proxy-cpus", help="CPUs for the proxy (default: the last allowed CPU)")
    p.add_argument("--load-cpus", help="CPUs for load generators and upstream (default: the others)")
    p.add_argument("--rps", metavar="MASK",
                   help="steer loopback's receive processing (RPS) to the CPUs of this hex mask (3 = CPUs 0 "
                        "and 1; 'all'; default off) during each L4 stream run (l4_1, l4_64), for every "
                        "contender alike, and put back what was set after each run: a NIC's RSS, which "
                        "loopback lacks (docs/l4.md); root")
    p.add_argument("--rfs", type=int, metavar="N",
                   help="with --rps, also RFS: N flow entries (rps_sock_flow_entries and lo's rps_flow_cnt), "
                        "so a flow's receive goes to the CPU that last read its socket")
    p.add_argument("--no-valgrind", action="store_true", help="skip callgrind and the allocation count")
    p.add_argument("--probe-cost", action="store_true",
                   help="only measure what uproxy top's eBPF probes cost (uproxy alone, one long http64 "
                        "run, probes switched off and on in ABBA slices; about 5 minutes; root)")
    p.add_argument("--probe-seconds", type=float,
                   help="seconds of load for the probes' cost (default 240; --quick 20; 0 skips it in "
                        "a full run; not run with --workloads unless given)")
    p.add_argument("--no-tls-libs", action="store_true",
                   help="skip the TLS library comparison (bench/tls_libs.c) that runs with the TLS workloads")
    p.add_argument("--requests", type=int, help="requests measured under callgrind, and N of the allocation count (2000; --quick 1000)")
    p.add_argument("--noise-threshold", type=float, default=0.10,
                   help="flag a run when other processes used more than this many CPUs on average (0.10)")
    p.add_argument("--interleave", action="store_true",
                   help="within a round, run each workload on every contender in turn (each "
                        "started for it), their order rotating from round to round, instead of "
                        "every workload of one contender, then the next: a contender's figure is "
                        "then taken seconds, not minutes, from its peers' (the host's speed drifts)")
    p.add_argument("--retry-noisy", type=int, default=0,
                   help="run a run flagged noisy again, up to this many times, and keep the quietest (0)")
    p.add_argument("--out", help="results directory (default bench-results/<time>)")
    p.add_argument("--docs", dest="docs", action="store_true", default=None,
                   help="write docs/benchmarks.md and docs/bench-*.png (default for full runs)")
    p.add_argument("--no-docs", dest="docs", action="store_false")
    p.add_argument("--strict", action="store_true", help="exit 1 when a gate fails or is pending")
    p.add_argument("--bench-venv", default=os.environ.get("UPROXY_BENCH_VENV",
                                                          os.path.expanduser("~/.cache/uproxy/bench-venv")))
    p.add_argument("--from-json", help="only re-render the report from a results.json")
    a = p.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds or (1 if q else 3)
    a.duration = a.duration or (1.0 if q else 5.0)
    a.warmup = a.warmup if a.warmup is not None else (0.5 if q else 1.0)
    a.idle_conns = a.idle_conns or 5000
    a.requests = a.requests or (1000 if q else 2000)
    if a.probe_seconds is None:
        a.probe_seconds = 0 if ((a.workloads or a.from_json) and not a.probe_cost) else (20 if q else 240)
    if a.docs is None:
        a.docs = not q and not a.only and not a.workloads and not a.from_json
    return a


def say(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


def _terminate(signum, frame):
    # Unwind through the finally blocks, which stop every process started.
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if a.from_json:
        with open(a.from_json) as f:
            res = json.load(f)
        # Judged again with this tree's rules (summaries and gates are
        # derived from the rounds' raw rows).
        res["summary"] = report.summarize(res, a.noise_threshold)
        res["gates"] = gates.check(res)
        report.write_all(res, os.path.dirname(os.path.abspath(a.from_json)), a.docs, a.bench_venv)
        return 0
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(env.ROOT, "bench-results", stamp + ("-quick" if a.quick else ""))
    os.makedirs(out, exist_ok=True)
    run_dir = os.path.join(out, "run")
    os.makedirs(run_dir, exist_ok=True)
    os.chmod(out, 0o755)
    os.chmod(run_dir, 0o755)
    ctx = env.Ctx(a, run_dir)
    try:
        ctx.rps = rps.parse(a.rps, a.rfs)
    except ValueError as e:
        say(f"error: {e}")
        return 2
    if ctx.rps:
        why = rps.check()
        if why:
            say(f"error: --rps cannot be applied: {why}")
            return 2
    nofile = env.raise_nofile()
    # This process (and the idle connections it opens) stays off the proxy CPUs.
    os.sched_setaffinity(0, ctx.load_cpus)
    ctx.our_pids.add(os.getpid())

    t_start = time.monotonic()
    res = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": a.quick,
        "settings": {k: v for k, v in vars(a).items() if k not in ("from_json",)},
        "machine": env.machine(),
        "cpus": {"proxy": ctx.proxy_cpus, "load": ctx.load_cpus},
        "nofile": nofile,
        "tools": {},
        "contenders": {},
        "rounds": [],
        "missing": {},
        "uproxy_build_matches_tree": os.environ.get("UPROXY_BENCH_BUILD_FRESH") == "1",
        # lo's receive steering during the L4 stream runs (bench/rps.py)
        "l4_steering": ctx.rps.describe() if ctx.rps else "off",
    }
    say(f"results in {out}; proxy on CPU {ctx.proxy_cpus}, load and upstream on CPU {ctx.load_cpus}")
    if ctx.rps:
        say(f"L4 stream runs: {ctx.rps.describe()}, set around each run and restored after "
            f"(now: {rps.read()})")
    if len(ctx.load_cpus) == 0 or set(ctx.load_cpus) & set(ctx.proxy_cpus):
        say("warning: the proxy shares CPUs with the load generator; per-request CPU stays comparable, "
            "req/s does not")

    # ---- tools ----------------------------------------------------------------
    ctx.tools = {n: env.tool(n) for n in ("wrk", "iperf3", "valgrind", "callgrind_control", "perf", "gcc",
                                          "nginx", "taskset", "openssl", "h2load", "nghttp",
                                          "strace")}
    res["tools"] = {n: (v or None) for n, v in ctx.tools.items()}
    if not ctx.tools["taskset"] or not ctx.tools["gcc"] or not ctx.tools["nginx"]:
        say("error: taskset, gcc and nginx are needed (run scripts/setup --bench)")
        return 2
    ctx.loadgen = os.path.join(run_dir, "loadgen")
    subprocess.run(["gcc", "-O2", "-Wall", "-o", ctx.loadgen,
                    os.path.join(env.HERE, "loadgen.c"), "-lssl", "-lcrypto"], check=True)
    res["pmu"] = env.pmu()

    # ---- TLS: the run's certificate (before the contenders: uproxy's check needs it)
    ctx.tls_cert = ctx.tls_key = ctx.tls_pem = None
    if a.probe_cost:
        return _probe_cost_only(ctx, a, res, out, t_start)
    want_tls = any(w in CERT_WORKLOADS for w in (a.workloads.split(",") if a.workloads else ALL_WORKLOADS))
    if want_tls:
        if not ctx.tools["openssl"]:
            say("MISSING tool openssl: the TLS workloads cannot run (scripts/setup --bench)")
            res["missing"]["tool:openssl"] = "openssl not installed; TLS workloads not run"
        else:
            res["tls"] = {"cert": tls.make_cert(ctx)}

    # ---- contenders -------------------------------------------------------------
    conts = all_contenders(ctx)
    if a.only:
        want = set(a.only.split(","))
        unknown = want - {c.name for c in conts}
        if unknown:
            say(f"error: unknown contenders {sorted(unknown)}; known: {[c.name for c in conts]}")
            return 2
        conts = [c for c in conts if c.name in want]
    wls = list(ALL_WORKLOADS)
    if a.workloads:
        wls = [w for w in a.workloads.split(",") if w]
        bad = set(wls) - set(ALL_WORKLOADS)
        if bad:
            say(f"error: unknown workloads {sorted(bad)}; known: {list(ALL_WORKLOADS)}")
            return 2
    # nginx first: its http64 peak in round 1 sets the fixed rate.
    conts.sort(key=lambda c: 0 if c.name == "nginx" else 1)
    present = []
    for c in conts:
        why = c.missing()
        info = {"label": c.label, "family": c.family, "tuning": c.tuning, "missing": why,
                "tls_tuning": getattr(c, "tls_tuning", ""),
                "h2_tuning": getattr(c, "h2_tuning", ""),
                "grpc_tuning": getattr(c, "grpc_tuning", ""),
                "version": "" if why else c.version(), "skipped": {}}
        for w in ALL_WORKLOADS:
            s = c.skip(w) if not why else why
            if s:
                info["skipped"][w] = s
        res["contenders"][c.name] = info
        if why:
            res["missing"][c.name] = why
            say(f"MISSING {c.name}: {why}")
        else:
            present.append(c)
    for w, t in ((("http64", "wrk"), ("http64k", "wrk"), ("newconn", "wrk"), ("l4_1", "iperf3"),
                 ("l4_64", "iperf3"), ("tls64", "wrk"), ("tls64k", "wrk"), ("tls64", "openssl"),
                 ("tls64k", "openssl"), ("tls_full", "openssl"), ("tls_resume", "openssl"))
                 + tuple((w, "h2load") for w in H2_WORKLOADS)
                 + (("grpc_unary", "h2load"), ("grpc_unary", "nghttp"))):
        if not ctx.tools.get(t) and w in wls:
            say(f"MISSING tool {t}: workload {w} cannot run (scripts/setup --bench)")
            res["missing"][f"tool:{t}"] = f"{t} not installed; {w} not run"
            wls.remove(w)
    res["workloads"] = wls
    if any(w in TLS_WORKLOADS for w in wls):
        say("crypto floor: openssl speed ecdsap256 ecdhx25519 on the proxy CPU")
        res["tls"]["floor"] = tls.crypto_floor(ctx)
        f = res["tls"]["floor"]
        if "error" not in f:
            say(f"  P-256 sign {f['p256_sign_us']:.1f} µs, X25519 {f['x25519_us']:.1f} µs: floor "
                f"{f['full_us']:.0f} µs per full handshake, {f['resumed_us']:.0f} per resumed")
    # The fixed rate comes from nginx's http64 peak, or the first peer's.
    refs = [c.name for c in present if c.name == "nginx"] + \
        [c.name for c in present if c.family != "uproxy" and not c.skip("http64")]
    ctx.rate_ref = refs[0] if refs else None

    # What the run will take, roughly: each timed run plus its warm-up and
    # the tools' own start-up, each contender's start, the idle runs, valgrind.
    n_timed = sum(1 for c in present for w in wls if not c.skip(w) and w != "idle")
    n_idle = sum(1 for c in present if "idle" in wls and not c.skip("idle"))
    n_starts = n_timed + n_idle if a.interleave else \
        sum(1 for c in present if any(not c.skip(w) for w in wls))
    per = max(1, round(a.duration)) + (max(1, round(a.warmup)) if a.warmup >= 1 else 0.25) + 0.2
    est = a.rounds * (n_timed * per + n_idle * 3.5 + n_starts * 1.3) + 10 + \
        (0 if a.no_valgrind else 15 + a.requests / 60) + \
        (a.probe_seconds + 20 if a.probe_seconds > 0 and (not a.only or "uproxy" in a.only.split(",")) else 0)
    say(f"{len(present)} contenders, {len(wls)} workloads, {a.rounds} round(s): about {est / 60:.1f} minutes")
    res["estimate_s"] = est

    upstream = Upstream(ctx)
    ctx.upstream = upstream
    ctx.rate = None
    try:
        upstream.start()
        res["upstream"] = {"http_port": ctx.upstream_port, "iperf_port": ctx.iperf_port,
                           "nginx_workers": max(1, len(ctx.load_cpus))}
        for rnd in range(1, a.rounds + 1):
            say(f"round {rnd}/{a.rounds}")
            if a.interleave:
                rows = _interleaved(ctx, present, wls, rnd, res)
            else:
                rows = {}
                for c in present:
                    todo = [w for w in wls if not c.skip(w)]
                    if todo:
                        rows[c.name] = run_contender(ctx, c, rnd, todo, res)
            res["rounds"].append(rows)
        # ---- uproxy alone: what the dashboard's eBPF probes cost ------------
        if a.probe_seconds > 0 and (not a.only or "uproxy" in a.only.split(",")):
            _probe_cost(ctx, a, res)
        # ---- uproxy alone: instructions, cache misses, allocations, PMU ----
        if not a.no_valgrind and (not a.only or "uproxy" in a.only.split(",")):
            from . import valgrind
            res["uproxy_profile"] = valgrind.profile(ctx, say)
        else:
            res["uproxy_profile"] = {"skipped": "--no-valgrind" if a.no_valgrind else "uproxy not selected"}
        # ---- the TLS library comparison, on the proxy CPU -------------------
        if any(w in TLS_WORKLOADS for w in wls) and not a.no_tls_libs:
            say("TLS libraries: bench/tls_libs.c (in-memory handshakes and records)")
            res["tls"]["libs"] = tls.compare_libraries(ctx, 0.3 if a.quick else 1.0, say,
                                                       rounds=1 if a.quick else 3)
    finally:
        upstream.stop()
    res["elapsed_s"] = time.monotonic() - t_start
    res["summary"] = report.summarize(res, a.noise_threshold)
    res["gates"] = gates.check(res)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    report.write_all(res, out, a.docs, a.bench_venv)
    print(report.console(res))
    say(f"done in {res['elapsed_s']:.0f}s; results: {out}/results.json")
    if a.strict and any(g["status"] != "PASS" for g in res["gates"]):
        return 1
    return 0


def _probe_cost(ctx, a, res):
    """uproxy alone: what the dashboard's eBPF probes cost (bench/probe_cost.py)."""
    from . import probe_cost
    say(f"the probes' cost: one http64 run of about {a.probe_seconds:.0f} s, probes switched off and on")
    res["probe_cost"] = probe_cost.measure(ctx, say, a.probe_seconds)
    p = res["probe_cost"]
    if "skipped" in p or "error" in p:
        say(f"  not measured: {p.get('skipped') or p.get('error')}")


def _probe_cost_only(ctx, a, res, out, t_start) -> int:
    """scripts/bench --probe-cost: that measurement and nothing else; the
    paragraph it prints is the one docs/observability.md quotes."""
    from . import probe_cost
    upstream = Upstream(ctx)
    ctx.upstream = upstream
    try:
        upstream.start()
        _probe_cost(ctx, a, res)
    finally:
        upstream.stop()
    res["elapsed_s"] = time.monotonic() - t_start
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    text = probe_cost.md(res)
    with open(os.path.join(out, "probe-cost.md"), "w") as f:
        f.write("# What `uproxy top`'s probes cost\n\n" + text)
    print(text)
    say(f"done in {res['elapsed_s']:.0f}s; results: {out}/results.json, {out}/probe-cost.md")
    p = res["probe_cost"]
    return 0 if "skipped" not in p and "error" not in p else 1


def _set_rate(ctx, c, rnd, res, r):
    """The fixed rate: a fraction of nginx's keep-alive peak, measured first
    thing in round 1 (or of the first peer's, without nginx)."""
    a = ctx.args
    ctx.rate = a.rate_fraction * r["rps"]
    res["rate"] = {"offered_rps": ctx.rate, "fraction": a.rate_fraction,
                   "from": f"{c.label}'s http64 peak in round {rnd}"}
    say(f"  fixed rate: {ctx.rate:.0f} req/s ({a.rate_fraction:.0%} of {c.name}'s {r['rps']:.0f})")


def _other(r) -> float:
    n = r.get("noise") or {}
    return n.get("other_cpu_s", 0) / max(n.get("wall_s", 1), 1e-9)


def _interleaved(ctx, present, wls, rnd, res) -> dict:
    """One round, workload by workload: each contender in turn, started for
    that workload alone, in an order that rotates with the round (so that
    no contender always follows the same one). The rows are the same shape
    as run_contender's."""
    k = (rnd - 1) % max(1, len(present))
    order = present[k:] + present[:k]
    rows = {}
    for w in wls:
        for c in order:
            if c.skip(w):
                continue
            r = run_contender(ctx, c, rnd, [w], res)
            mine = rows.setdefault(c.name, {"_seconds": 0.0})
            mine[w] = r[w]
            mine["_seconds"] += r.get("_seconds", 0.0)
            if r.get("_tls_seen"):
                mine["_tls_seen"] = r["_tls_seen"]
    return rows


def run_contender(ctx, c, rnd, todo, res) -> dict:
    rows = {}
    t0 = time.monotonic()
    try:
        c.start(rnd)
    except StartError as e:
        say(f"  {c.name}: did not start: {e}")
        for w in todo:
            rows[w] = {"error": f"did not start: {str(e)[:500]}"}
        return rows
    try:
        for w in todo:
            if w == "rate" and ctx.rate is None and c.name == ctx.rate_ref:
                # http64 was not asked for: measure the peak anyway, for the rate.
                try:
                    _set_rate(ctx, c, rnd, res, workloads.http64(ctx, c))
                except workloads.WorkloadError as e:
                    say(f"  {c.name}: the peak for the fixed rate could not be measured: {e}")
            if w == "rate" and ctx.rate is None:
                rows[w] = {"error": "no fixed rate (the reference peer's http64 peak was not measured)"}
                continue
            r = None
            for attempt in range(1 + ctx.args.retry_noisy):
                try:
                    r2 = workloads.RUNNERS[w](ctx, c)
                except workloads.WorkloadError as e:
                    r2 = {"error": str(e)[:800]}
                except Exception as e:  # keep the bench going; the row says what happened
                    r2 = {"error": f"{type(e).__name__}: {e}"[:800]}
                # Of a noisy run and its retries, the quietest counts.
                if r is None or ("error" in r and "error" not in r2) or \
                        ("error" not in r2 and _other(r2) < _other(r)):
                    r = r2
                if "error" in r2 or not report._noisy(r2, ctx.args.noise_threshold) or \
                        c.proc.poll() is not None or attempt == ctx.args.retry_noisy:
                    break
                say(f"  {c.name:15} {w:8} noisy ({report._noisy(r2, ctx.args.noise_threshold)[:80]}); again")
            if attempt:
                r["attempts"] = attempt + 1
            rows[w] = r
            say(f"  {c.name:15} {w:8} {report.short(w, r)}")
            if w == "http64" and ctx.rate is None and r.get("rps") and c.name == ctx.rate_ref:
                _set_rate(ctx, c, rnd, res, r)
            if c.proc is None or c.proc.poll() is not None:
                say(f"  {c.name} is not running any more; its remaining workloads are skipped")
                for w2 in todo[todo.index(w) + 1:]:
                    rows[w2] = {"error": f"{c.name} exited during {w}"}
                break
    finally:
        c.stop()
    rows["_seconds"] = time.monotonic() - t0
    if c.tls_seen:
        rows["_tls_seen"] = c.tls_seen
    return rows
