"""What `uproxy top`'s eBPF probes cost the proxy (issue 15), resolved to 3%.

Separate load runs with the probes off and on do not resolve 3% on a shared
2-core VM: one run's CPU per request swings by tens of percent with what
else the machine does. So the probes are switched inside ONE long load run:
uproxy alone (one worker, pinned as every bench run pins it), one wrk run of
HTTP/1.1 keep-alive 64 B (as http64), and this controller switches the
probes between detached and attached, at the dashboard's duty cycle
(`uproxy top`: UPROXY_PROBE_DUTY, default 0.1), every few seconds in ABBA
order (bench/pairstats.py). After each switch a settle time is thrown away;
then a slice is measured from its first boundary to its second:

  - the proxy's CPU time: /proc/<pid>/task/*/schedstat (ns, all threads);
  - the requests it served: the statistics segment's counter (what
    `uproxy stats` reads);
  - steal time of the worker's CPU and of the machine: /proc/stat;
  - other processes' CPU time (bench/accounting.Window: everything but the
    proxy, wrk, the upstream and this process), in CPUs.

The figure is CPU-µs per request per slice; adjacent slices make pairs, and
the pairs' on/off ratios give a mean (t interval) and a median (bootstrap
interval). A slice with more than STEAL_MAX_PCT steal on the worker's CPU,
other processes using more than --noise-threshold CPUs, or under half the
median slice's requests, is flagged noisy: the figure keeps every pair,
and the figure of the quiet pairs alone is printed beside it, each with its
verdict. The probes are compiled once and detached and attached again
without a compile (Probes.suspend/resume); the attached side includes the
duty cycle's own attach and detach, four times a second, as the dashboard
does them. The programs' own run time from the kernel's accounting
(kernel.bpf_stats_enabled) is taken in one extra attached slice after the
pairs, because the accounting itself costs two clock reads per program run
and would inflate the pairs.

Needs root, bcc and kernel headers (as `uproxy top` does); otherwise it says
why and is skipped."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

from . import pairstats, workloads
from .accounting import Window, tree

STATS = "/proc/sys/kernel/bpf_stats_enabled"
SLICE_S = 2.0          # measured per slice (8 duty-cycle periods)
SETTLE_S = 0.5         # thrown away after each switch (2 periods)
STEAL_MAX_PCT = 5.0    # a slice with more steal on the worker's CPU is flagged noisy
LOAD_DROP = 0.5        # ...and one that served under half the median slice's requests


def _probes():
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from uproxy.telemetry import probes
    return probes


def cpu_ns(pid: int) -> int:
    """The process's CPU time in ns, all its threads (schedstat's first
    field: time on the CPU). A thread that exits mid-slice takes its time
    with it; uproxy's threads live as long as the process here."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def steal_s(cpu: int | None) -> tuple:
    """(steal seconds of CPU `cpu`, steal seconds of the whole machine),
    from /proc/stat (USER_HZ ticks)."""
    hz = os.sysconf("SC_CLK_TCK")
    mine = total = 0
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            p = line.split()
            steal = int(p[8]) if len(p) > 8 else 0
            if p[0] == "cpu":
                total = steal
            elif cpu is not None and p[0] == f"cpu{cpu}":
                mine = steal
    return mine / hz, total / hz


class Marks:
    """Reads one boundary: time, proxy CPU, requests served, steal."""

    def __init__(self, pid: int, worker_cpu: int | None):
        from uproxy import shm
        self.pid, self.cpu = pid, worker_cpu
        self.reader = shm.Reader(pid)
        self.idx = shm.COUNTERS.index("requests")

    def requests(self) -> int:
        return sum(int(w.c[self.idx]) for w in self.reader.workers)

    def read(self) -> dict:
        mine, total = steal_s(self.cpu)
        return {"t": time.monotonic(), "cpu_ns": cpu_ns(self.pid), "requests": self.requests(),
                "steal_s": mine, "steal_all_s": total}

    @staticmethod
    def slice(side: str, m0: dict, m1: dict) -> dict:
        wall = m1["t"] - m0["t"]
        ncpu = os.cpu_count() or 1
        return {"side": side, "wall_s": wall, "cpu_ns": m1["cpu_ns"] - m0["cpu_ns"],
                "requests": m1["requests"] - m0["requests"],
                "steal_pct": 100 * (m1["steal_s"] - m0["steal_s"]) / wall,
                "steal_all_pct": 100 * (m1["steal_all_s"] - m0["steal_all_s"]) / wall / ncpu}


def _wrk(ctx, cont, seconds: float):
    """One long wrk run, as http64's (threads, connections, path), started
    in the background."""
    a = ctx.args
    threads = max(1, min(a.connections, len(ctx.load_cpus) // 2))
    argv = [ctx.tools["wrk"], "-t", str(threads), "-c", str(a.connections), "-d", f"{int(seconds)}s",
            "--timeout", "5s", f"http://{cont.http_base()}/64"]
    return subprocess.Popen(ctx.pinned(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def measure(ctx, say, seconds: float, slice_s: float = SLICE_S, settle_s: float = SETTLE_S,
            steal_max: float = STEAL_MAX_PCT) -> dict:
    """About `seconds` of load, cut into ABBA slices (at least 2 pairs)."""
    noise_max = ctx.args.noise_threshold
    try:
        probes = _probes()
        from uproxy.telemetry.view import DUTY
    except Exception as e:  # bcc or uproxy not importable here
        return {"skipped": f"the probes cannot be imported here: {e}"}
    av = probes.availability()
    if not av["ok"]:
        return {"skipped": f"{av['why']} ({av['fix']})"}
    if not ctx.tools.get("wrk"):
        return {"skipped": "wrk is not installed (scripts/setup --bench)"}
    from .peers.uproxy import Uproxy
    cont = Uproxy(ctx)
    if cont.missing() or cont.http_available():
        return {"skipped": cont.missing() or cont.http_available()}
    per = 2 * (slice_s + settle_s)
    npairs = max(2, int(seconds // per))
    sides = pairstats.abba(npairs)
    cont.start(0)
    pr, load, slices = None, None, []
    t_start = time.monotonic()
    try:
        with open(STATS) as f:
            stats_was = f.read().strip()
        workloads.warm(ctx, cont, "/64")
        from uproxy import shm
        pid = cont.proc.pid          # taskset execs uproxy: the started pid is uproxy's
        snap = shm.Reader(pid).snapshot()
        worker_cpu = snap["workers"][0]["cpu"] if snap["workers"] else None
        say(f"  compiling the probes (once), duty cycle {DUTY:g}")
        pr = probes.Probes(pid, snap["workers"], probes.listen_ports(pid), probes.upstream_ports(snap),
                           duty=DUTY)
        bad = {s: v for s, v in pr.status.items() if v["state"] == "error"}
        if bad:
            return {"skipped": f"probe sets did not load: {bad}"}
        pr.suspend()
        marks = Marks(pid, worker_cpu)
        # the pairs, then one attached slice with the kernel's accounting on
        # wrk must outlast the schedule, whose slices overrun their nominal
        # length (each switch and read takes time; a 4-minute run overran
        # 10 s): ask for half as long again, and stop it when the slices end.
        load = _wrk(ctx, cont, 1.5 * (len(sides) + 1) * (slice_s + settle_s) + 30)
        ours = set(ctx.our_pids) | set(tree(load.pid))
        say(f"  one wrk run of ~{len(sides) * (slice_s + settle_s) + slice_s + settle_s:.0f} s; "
            f"{npairs} ABBA pairs of {slice_s:g} s slices, {settle_s:g} s thrown away after each switch")
        for i, side in enumerate(sides):
            if side == "on":
                pr.resume()
            else:
                pr.suspend()
            time.sleep(settle_s)
            win = Window(cont.pids, ours).start()
            m0 = marks.read()
            time.sleep(slice_s)
            m1 = marks.read()
            w = win.stop()
            if load.poll() is not None:
                raise workloads.WorkloadError(f"wrk ended early (exit {load.returncode}): "
                                              f"{load.stderr.read()[-400:]}")
            if cont.proc.poll() is not None:
                raise workloads.WorkloadError(f"uproxy died during the run: {cont.output()[-800:]}")
            sl = Marks.slice(side, m0, m1)
            sl["other_cpus"] = w["other_cpu_s"] / max(w["wall_s"], 1e-9)
            sl["other_top"] = w["other_top"][:3]
            sl["noise"] = [why for why, yes in (("steal", sl["steal_pct"] > steal_max),
                                                ("other load", sl["other_cpus"] > noise_max)) if yes]
            sl["noisy"] = bool(sl["noise"])
            slices.append(sl)
            if i % 2 == 1:
                p = pairstats.pair_up(slices[-2:])
                if p:
                    p = p[0]
                    say(f"  pair {i // 2 + 1}/{npairs} ({slices[-2]['side']} {slices[-1]['side']}): "
                        f"off {p['off']:.2f}, on {p['on']:.2f} CPU-µs/req ({100 * (p['ratio'] - 1):+.1f}%), "
                        f"steal {p['steal_pct']:.1f}%, other load "
                        f"{max(x['other_cpus'] for x in slices[-2:]):.2f} CPUs{' (noisy)' if p['noisy'] else ''}")
        own = _own_run_time(pr, marks, stats_was, slice_s, settle_s)
    except workloads.WorkloadError as e:
        return {"error": str(e)[:800], "slices": slices}
    finally:
        if load is not None and load.poll() is None:
            load.terminate()
            load.wait()
        if pr:
            pr.close()
        cont.stop()
    _flag_load_drops(slices)
    return {"slices": slices, "slice_s": slice_s, "settle_s": settle_s, "duty": DUTY,
            "elapsed_s": time.monotonic() - t_start, "worker_cpu": worker_cpu,
            "steal_max_pct": steal_max, "noise_max_cpus": noise_max,
            **pairstats.summarize(slices), "quiet": pairstats.summarize(slices, quiet_only=True), **own}


def _flag_load_drops(slices: list):
    """A slice that served under LOAD_DROP of the run's median slice ran in
    another regime (wrk or the proxy starved of CPU; a lightly loaded worker
    batches less and spends more per request): noisy too."""
    if not slices:
        return
    med = sorted(x["requests"] for x in slices)[len(slices) // 2]
    for x in slices:
        if x["requests"] < LOAD_DROP * med:
            x["noise"] = x.get("noise", []) + ["load fell"]
            x["noisy"] = True


def _own_run_time(pr, marks, stats_was: str, slice_s: float, settle_s: float) -> dict:
    """One attached slice with kernel.bpf_stats_enabled = 1: the programs'
    runs and run time per request (the accounting's own clock reads
    included)."""
    pr.resume()
    with open(STATS, "w") as f:
        f.write("1")
    try:
        time.sleep(settle_s)
        p0, r0 = pr.prog_stats(), marks.requests()
        time.sleep(slice_s)
        p1, r1 = pr.prog_stats(), marks.requests()
    finally:
        with open(STATS, "w") as f:
            f.write(stats_was)
    reqs = r1 - r0
    if reqs <= 0:
        return {"probes_own_us_per_req": None, "programs": {}}
    progs = {}
    for name, (runs, ns) in p1.items():
        a, b = p0.get(name, (0, 0))
        if runs - a:
            progs[name] = {"runs_per_req": (runs - a) / reqs, "ns_per_req": (ns - b) / reqs}
    return {"probes_own_us_per_req": sum(p["ns_per_req"] for p in progs.values()) / 1000,
            "programs": progs}


def md(res) -> str:
    p = res.get("probe_cost")
    if not p:
        return "Not run in this run (`scripts/bench --probe-cost`; a full run measures it too).\n"
    if "skipped" in p:
        return f"Not measured: {p['skipped']}.\n"
    if "error" in p:
        return f"Not measured: {p['error']}.\n"
    if "slices" not in p:        # a results.json of the older separate-runs method
        ci = f" ± {p['ci95_pct']:.1f}%" if p.get("ci95_pct") is not None else ""
        return (f"Measured with the older method ({len(p.get('pairs', []))} pairs of separate runs): "
                f"{p.get('overhead_pct', 0):+.1f}%{ci}, which could not resolve 3% on a shared machine.\n")
    if p.get("overhead_pct") is None:
        return "Not measured: no pair of slices served requests.\n"
    ci = f" ± {p['ci95_pct']:.1f}%" if p.get("ci95_pct") is not None else ""
    mci = p.get("median_ci95_pct")
    med = (f"; median {p['median_pct']:+.1f}% [{mci[0]:+.1f}%, {mci[1]:+.1f}%]" if mci else "")
    verdict = ("which resolves 3% (the interval's half-width is under 3%)" if p["resolves"] else
               "which does not resolve 3% (the interval's half-width is 3% or more: a longer run or "
               "a quieter machine narrows it)")
    steals = sorted(x["steal_pct"] for x in p["slices"])
    others = sorted(x["other_cpus"] for x in p["slices"])
    noise = (f" Per slice, steal time on the worker's CPU: median {steals[len(steals) // 2]:.1f}%, max "
             f"{steals[-1]:.1f}%; other processes' CPU: median {others[len(others) // 2]:.2f}, max "
             f"{others[-1]:.2f} CPUs")
    q = p.get("quiet") or {}
    if p.get("noisy"):
        qv = ("resolves 3%" if q.get("resolves") else "does not resolve 3%")
        noise += (f". {p['noisy']} pair(s) had a noisy slice (steal above {p['steal_max_pct']:g}%, other "
                  f"load above {p['noise_max_cpus']:g} CPUs, or under half the median slice's requests): "
                  f"flagged and kept in the figure above; the "
                  f"{q['used']} quiet pairs alone: "
                  + (f"{q['overhead_pct']:+.1f}%" + (f" ± {q['ci95_pct']:.1f}%, which {qv}"
                                                     if q.get("ci95_pct") is not None else "")
                     if q.get("overhead_pct") is not None else "none"))
    else:
        noise += (f"; no slice was noisy (steal above {p['steal_max_pct']:g}%, other load above "
                  f"{p['noise_max_cpus']:g} CPUs, or under half the median slice's requests)")
    own = (f" The programs' own run time, from the kernel's accounting (one more attached slice with "
           f"kernel.bpf_stats_enabled): {p['probes_own_us_per_req']:.2f} µs per request "
           f"({100 * p['probes_own_us_per_req'] / p['off_us']:.1f}% of the detached side)."
           if p.get("probes_own_us_per_req") is not None else "")
    return (f"uproxy alone, one {p['elapsed_s'] / 60:.1f}-minute wrk run of http64 (keep-alive, 64 B) "
            f"with `uproxy top`'s probes switched between detached and attached (duty cycle {p['duty']:g}, "
            f"as the dashboard runs them) every {p['slice_s'] + p['settle_s']:g} s in ABBA order, "
            f"{p['settle_s']:g} s thrown away after each switch: {p['pairs']} pairs of slices. Proxy CPU "
            f"per request (schedstat, all threads, over the segment's request count) {p['off_us']:.2f} µs "
            f"detached, {p['on_us']:.2f} µs attached (medians); the probes cost **{p['overhead_pct']:+.1f}%"
            f"{ci}** (mean of the paired ratios, 95% t interval){med} (bootstrap 95%), "
            f"{verdict}.{noise}.{own}\n")
