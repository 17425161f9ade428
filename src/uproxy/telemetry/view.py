"""What `uproxy top` shows, as plain data: the core's segment, /proc and the
eBPF probes, turned into per-interval rates and percentiles.

`Collector.sample()` returns one view (a JSON-able dict); the dashboard
draws it and `uproxy top --once --json` prints it. Every value that could
not be measured is None (shown as "—"), never a zero that looks measured.
"""
from __future__ import annotations

import collections
import os
import platform
import time

from .. import __version__, hist, shm
from . import detail as detail_mod
from . import pmu as pmu_mod
from . import procstat
from .logpeek import LogPeek

HISTORY = 60        # sparkline points
# Share of each second the per-packet and per-operation probes (io_uring,
# tcp_probe, softirq) are attached: their cost is paid only then
# (docs/observability.md has the figures). UPROXY_PROBE_DUTY=1 keeps them on.
DUTY = float(os.environ.get("UPROXY_PROBE_DUTY", "0.1"))
L7_COUNTERS = ("requests", "resp_1xx", "resp_2xx", "resp_3xx", "resp_4xx", "resp_5xx")
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# A q-percentile of fewer than 1 / (1 - q) values is the maximum: then the
# view gives the maximum, says so (``<name>_is_max``) and gives the count.
QUANTILES = (("p50", 0.50), ("p99", 0.99), ("p999", 0.999))


def min_samples(q: float) -> int:
    return int(round(1 / (1 - q)))


def hist_max(h):
    """The upper edge of the highest non-empty bucket (never under-reports)."""
    for i in range(len(h) - 1, -1, -1):
        if h[i]:
            return float(hist.upper(i) if i >= 8 else i)
    return None


def pcts(h, scale=1.0, nd=None) -> dict:
    """p50/p99/p99.9 of a histogram with the count behind them: a
    percentile the count cannot back is replaced by the maximum, flagged."""
    n = sum(h)
    out = {"count": n, "max_us": None}
    mx = hist_max(h)
    if mx is not None:
        out["max_us"] = round(mx * scale, nd) if nd is not None else mx * scale
    for name, q in QUANTILES:
        if not n:
            out[f"{name}_us"], out[f"{name}_is_max"] = None, False
            continue
        enough = n >= min_samples(q)
        v = hist.percentile(h, q) if enough else mx
        v = v * scale
        out[f"{name}_us"] = round(v, nd) if nd is not None else v
        out[f"{name}_is_max"] = not enough
    return out


def hist_rows(h, unit="us") -> dict:
    """A histogram for the JSON view: its non-empty buckets as
    {bucket: count}, with the unit of its values."""
    return {"unit": unit, "count": sum(h), "buckets": {str(i): n for i, n in enumerate(h) if n}}


def merge_events(events, notes, logs=()) -> list:
    """The segment's events, the proxy's published notes (warnings) and
    log lines, each once and in time order: a note or log line that says
    what an event says (within 2 s, the same first word and the same text
    after its last ": ", as "reloaded /x.toml: generation 2" says
    "reloaded: generation 2") is the event's own log line and is dropped."""
    def key(text):
        t = text.strip()
        head = t.split(None, 1)[0].rstrip(":,").lower() if t else ""
        return head, t.rsplit(": ", 1)[-1] if ": " in t else t
    out = [dict(e, source="event") for e in events]
    seen = [(e["time_ms"], key(e["text"])) for e in events]
    for src, items in (("note", notes), ("log", logs)):
        for n in items:
            k = key(n["text"])
            if any(abs(t - n["time_ms"]) <= 2000 and k == ek for t, ek in seen):
                continue
            seen.append((n["time_ms"], k))
            out.append(dict(n, source=src))
    out.sort(key=lambda e: e["time_ms"])
    return out


def _rate(new, old, dt):
    if old is None or dt <= 0:
        return None
    return max(0.0, (new - old) / dt)


def _ratio(a, b, scale=1.0, nd=3):
    if a is None or not b:
        return None
    return round(scale * a / b, nd)


class Collector:
    """Samples one running proxy. use_bpf: None = when available."""

    def __init__(self, pid: int, use_bpf: bool | None = None, sets=None, duty: float | None = None):
        from . import probes as probes_mod
        self.pid = pid
        self.reader = shm.Reader(pid)
        self.pmu = pmu_mod.detect()
        self.probes = None
        avail = probes_mod.availability()
        if use_bpf is False:
            avail = {"ok": False, "why": "eBPF probes not requested", "fix": ""}
        self.avail = avail
        self.probe_error = None
        snap = self.reader.snapshot()
        if avail["ok"]:
            try:
                self.probes = probes_mod.Probes(
                    pid, snap["workers"], probes_mod.listen_ports(pid),
                    probes_mod.upstream_ports(snap), sets=sets or probes_mod.SETS, pmu=self.pmu,
                    duty=duty if duty is not None else DUTY)
            except Exception as e:             # reported, never fatal to the dashboard
                self.probe_error = f"{e.__class__.__name__}: {e}"
        self.prev = None
        self.history = collections.defaultdict(lambda: collections.deque(maxlen=HISTORY))
        try:
            self.peek = LogPeek(self.reader)
        except Exception:                       # an older segment: no per-listener panel
            self.peek = None
        self.logs = None        # set by the embedded dashboard: [(time_ms, level, text)]
        self.failing = {}       # server slot -> did its last connects all fail?

    def close(self):
        if self.probes:
            self.probes.close()
            self.probes = None
        self.reader.close()

    # ---- one raw sample ---------------------------------------------------------
    def _raw(self):
        snap = self.reader.snapshot()
        threads = {w["tid"]: procstat.thread(self.pid, w["tid"]) for w in snap["workers"]}
        return {"t": time.monotonic(), "snap": snap, "threads": threads,
                "cpus": procstat.cpu_times(),
                "bpf": self.probes.read() if self.probes else None,
                "peek": self.peek.look() if self.peek else None,
                "detail": detail_mod.read(self.pid)}

    def sample(self) -> dict:
        raw = self._raw()
        view = self._view(raw, self.prev)
        self.prev = raw
        return view

    # ---- probe status --------------------------------------------------------------
    def probe_status(self) -> dict:
        sets = self.probes.status if self.probes else {}
        on = [s for s, v in sets.items() if v["state"] == "on"]
        if self.probes and on:
            why = ""
        elif self.probe_error:
            why = f"the probes could not load: {self.probe_error}"
        elif self.avail["ok"]:
            why = "no probe set loaded: " + "; ".join(f"{s}: {v['why']}" for s, v in sets.items())
        else:
            why = self.avail["why"]
        return {"available": bool(on), "why": why, "fix": "" if on else self.avail.get("fix", ""),
                "sets": sets}

    # ---- the view -------------------------------------------------------------------
    def _view(self, cur, prev) -> dict:
        snap = cur["snap"]
        dt = (cur["t"] - prev["t"]) if prev else 0.0
        psnap = prev["snap"] if prev else None
        l7 = sum(snap["total"][c] for c in L7_COUNTERS) > 0
        unit = "requests" if l7 else "sessions"
        lat_hist = "request" if l7 else "connect"
        pmu_on = bool(self.probes and self.probes.on("cpu"))
        ev_names = cur["bpf"]["events"] if cur["bpf"] else []
        cores = []
        for w in snap["workers"]:
            i = w["index"]
            pw = psnap["workers"][i] if psnap else None
            c, pc = w["counters"], (pw["counters"] if pw else None)

            def d(name):
                return (c[name] - pc[name]) if pc else None
            units = d("requests") if l7 else d("accepted")
            h = hist.delta(w["hist"][lat_hist], pw["hist"][lat_hist]) if pw else w["hist"][lat_hist]
            lat = pcts(h)
            ops = sum(w["ops"].values())
            pops = sum(pw["ops"].values()) if pw else None
            row = {
                "index": i, "tid": w["tid"], "cpu": w["cpu"], "state": w["state"],
                "rps": _rate(c["requests"] if l7 else c["accepted"],
                             (pc["requests"] if l7 else pc["accepted"]) if pc else None, dt),
                "active": c["active"],
                "latency": lat_hist,
                "p50_us": lat["p50_us"], "p99_us": lat["p99_us"], "p999_us": lat["p999_us"],
                "p50_is_max": lat["p50_is_max"], "p99_is_max": lat["p99_is_max"],
                "p999_is_max": lat["p999_is_max"], "lat_count": lat["count"],
                "lat_max_us": lat["max_us"],
                "bytes_in_s": _rate(c["bytes_from_clients"] + c["bytes_from_upstreams"],
                                    (pc["bytes_from_clients"] + pc["bytes_from_upstreams"]) if pc else None, dt),
                "bytes_out_s": _rate(c["bytes_to_clients"] + c["bytes_to_upstreams"],
                                     (pc["bytes_to_clients"] + pc["bytes_to_upstreams"]) if pc else None, dt),
                "errors_s": _rate(_errors(c), _errors(pc) if pc else None, dt),
                "uring_ops_s": _rate(ops, pops, dt),
                "uring_enters_s": _rate(c["uring_enters"], pc["uring_enters"] if pc else None, dt),
                "resp": {k: c[k] for k in L7_COUNTERS[1:]},
            }
            row.update(_status_cols(c, pc, dt, l7))
            row.update(self._proc_cols(w, cur, prev, dt))
            row.update(self._bpf_cols(i, w, cur, prev, dt, units, pmu_on, ev_names))
            cores.append(row)
        view = {
            "version": __version__,
            "pid": snap["pid"],
            "uptime_s": snap["uptime_s"],
            "kernel": platform.release(),
            "workers": len(snap["workers"]),
            "features": snap["features"],
            "config_generation": snap["config_generation"],
            "reloads": snap["reloads"],
            "interval_s": round(dt, 3) if prev else None,
            "unit": unit,
            "latency": lat_hist,
            "probes": self.probe_status(),
            "pmu": {"present": self.pmu["pmu"], "why": self.pmu["why"],
                    "events": ev_names, "note": "" if self.pmu["pmu"] else
                    "no PMU on this host: hardware counters (IPC, cache and branch misses) "
                    "cannot be measured; software counters shown instead"},
            "cores": cores,
            "total": self._total(cores, snap, psnap, dt, l7),
            "upstreams": self._upstreams(snap, psnap, dt, cur.get("detail")),
            "tcp": self._tcp(cur, prev),
            "http2": _http2(snap, psnap, dt),
            "events": merge_events(snap["events"], (cur.get("detail") or {}).get("notes", []),
                                   self.logs or ())[-40:],
            "hist": self._hists(cur, prev, snap, psnap),
        }
        view["clusters"] = _clusters(view["upstreams"])
        view["coverage"] = self._coverage(cur, prev, dt)
        view["listeners"] = self._listeners(cur, prev, dt, snap)
        view["ejections_s"] = (_rate(snap["total"]["health_ejections"],
                                     psnap["total"]["health_ejections"], dt) if psnap else None)
        view["ejections"] = snap["total"]["health_ejections"]
        if prev:
            self.history["rps"].append(view["total"]["rps"] or 0.0)
            self.history["p99_us"].append(view["total"]["p99_us"] or 0.0)
            for r in cores:
                self.history[f"rps{r['index']}"].append(r["rps"] or 0.0)
        view["history"] = {k: list(v) for k, v in self.history.items()}
        return view

    def _proc_cols(self, w, cur, prev, dt) -> dict:
        t = cur["threads"].get(w["tid"])
        pt = prev["threads"].get(w["tid"]) if prev else None
        out = {"cpu_pct": None, "cpu_src": None, "ctx_switches_s": None, "invol_switches_s": None,
               "page_faults_s": None, "softirq_pct": None, "on_cpu": t["processor"] if t else None}
        if t and pt and dt > 0:
            # the worker thread's CPU time over the whole interval: the
            # scheduler's nanoseconds (schedstat), else utime + stime ticks
            if t.get("run_ns") is not None and pt.get("run_ns") is not None:
                out["cpu_pct"] = round(100 * (t["run_ns"] - pt["run_ns"]) / 1e9 / dt, 1)
                out["cpu_src"] = "schedstat"
            else:
                out["cpu_pct"] = round(100 * (t["cpu_s"] - pt["cpu_s"]) / dt, 1)
                out["cpu_src"] = "/proc stat"
            out["ctx_switches_s"] = _rate(t["vol_switches"] + t["invol_switches"],
                                          pt["vol_switches"] + pt["invol_switches"], dt)
            out["invol_switches_s"] = _rate(t["invol_switches"], pt["invol_switches"], dt)
            out["page_faults_s"] = _rate(t["page_faults"], pt["page_faults"], dt)
        cpu = w["cpu"] if w["cpu"] >= 0 else (t["processor"] if t else -1)
        c, pc = cur["cpus"].get(cpu), (prev["cpus"].get(cpu) if prev else None)
        if c and pc and c["total_s"] > pc["total_s"]:
            out["softirq_pct"] = round(100 * (c["softirq_s"] - pc["softirq_s"]) /
                                       (c["total_s"] - pc["total_s"]), 1)
            out["softirq_src"] = "/proc/stat"
        return out

    def _bpf_cols(self, i, w, cur, prev, dt, units, pmu_on, ev_names) -> dict:
        keys = ("ipc", "cache_misses_per_unit", "branch_miss_pct", "uring_completes_s",
                "uring_lat_p50_us", "uring_lat_p99_us", "iowq_punts_s", "runq_p99_us",
                "invol_switches_bpf_s", "migrations_s", "cpu_clock_pct", "bpf_page_faults_s")
        out = {k: None for k in keys}
        out["uring_by_op"] = {}
        b = cur["bpf"]
        if not b or not prev or not prev["bpf"] or dt <= 0:
            return out
        x, px = b["workers"][i], prev["bpf"]["workers"][i]
        P = self.probes

        def on_dt(s):
            """Seconds the set's probes were attached in this interval."""
            a, pa = b["on_s"].get(s), prev["bpf"]["on_s"].get(s)
            return dt if a is None or pa is None else (a - pa)
        if P.on("uring"):
            udt = on_dt("uring")
            out["uring_completes_s"] = _rate(x["uring_completes"], px["uring_completes"], udt)
            # punts: counted by an always-attached probe (probes.ALWAYS), whole
            out["iowq_punts_s"] = _rate(x["uring_punts"], px["uring_punts"], dt)
            s = pcts(hist.delta(x["hist_uring"], px["hist_uring"]), 1 / 1000.0, 1)
            out["uring_lat_p50_us"], out["uring_lat_p99_us"] = s["p50_us"], s["p99_us"]
            out["uring_lat_p99_is_max"], out["uring_lat_count"] = s["p99_is_max"], s["count"]
            from .. import shm as _shm
            names = _shm._opnames()
            for op in range(64):
                n = x["op_done"][op] - px["op_done"][op]
                p = x["op_punts"][op] - px["op_punts"][op]
                if n or p:
                    ns = x["op_lat_ns"][op] - px["op_lat_ns"][op]
                    out["uring_by_op"][names.get(op, str(op))] = {
                        "timed": n, "punts_s": round(p / dt, 1),
                        "mean_us": round(ns / n / 1000, 1) if n else None}
        if P.on("sched"):
            s = pcts(hist.delta(x["hist_rq"], px["hist_rq"]), 1 / 1000.0, 1)
            out["runq_p99_us"] = s["p99_us"]
            out["runq_p99_is_max"], out["runq_count"] = s["p99_is_max"], s["count"]
            sdt = on_dt("sched")
            out["invol_switches_bpf_s"] = _rate(x["invol"], px["invol"], sdt)
            out["migrations_s"] = _rate(x["migrations"], px["migrations"], dt)   # always attached
        if P.on("softirq") and w["cpu"] >= 0:
            cpu = w["cpu"]
            ns = sum(b["softirq_ns"].get(cpu, {}).values())
            pns = sum(prev["bpf"]["softirq_ns"].get(cpu, {}).values())
            sdt = on_dt("softirq")
            out["softirq_pct"] = round(100 * (ns - pns) / 1e9 / sdt, 1) if sdt > 0 else None
            out["softirq_src"] = "ebpf"
        if pmu_on:
            dv = {n: x["pmu"][k] - px["pmu"][k] for k, n in enumerate(ev_names)}
            cdt = on_dt("cpu")
            if self.pmu["pmu"]:
                out["ipc"] = _ratio(dv.get("instructions"), dv.get("cycles"), nd=2)
                # counted while attached; requests over the whole interval
                per_s = dv.get("cache_misses", 0) / cdt if cdt > 0 else None
                out["cache_misses_per_unit"] = _ratio(per_s, units / dt if units else None, nd=1)
                out["branch_miss_pct"] = _ratio(dv.get("branch_misses"),
                                                dv.get("branch_instructions"), 100, 2)
            else:
                if cdt > 0:
                    out["cpu_clock_pct"] = round(100 * dv.get("cpu_clock_ns", 0) / 1e9 / cdt, 1)
                    out["bpf_page_faults_s"] = round(dv.get("page_faults", 0) / cdt, 1)
            out["pmu_deltas"] = dv
        return out

    def _total(self, cores, snap, psnap, dt, l7) -> dict:
        def s(k):
            vals = [c[k] for c in cores if c.get(k) is not None]
            return round(sum(vals), 1) if vals else None
        lat_hist = "request" if l7 else "connect"
        h = hist.delta(snap["hist"][lat_hist], psnap["hist"][lat_hist]) if psnap else snap["hist"][lat_hist]
        lat = pcts(h)
        t = snap["total"]
        out = {"rps": s("rps"), "active": t["active"], "accepted": t["accepted"],
               "requests": t["requests"], "upstream_active": t["upstream_active"],
               "p50_us": lat["p50_us"], "p99_us": lat["p99_us"], "p999_us": lat["p999_us"],
               "p50_is_max": lat["p50_is_max"], "p99_is_max": lat["p99_is_max"],
               "p999_is_max": lat["p999_is_max"], "lat_count": lat["count"],
               "lat_max_us": lat["max_us"],
               "errors_s": s("errors_s"), "uring_ops_s": s("uring_ops_s"),
               "iowq_punts_s": s("iowq_punts_s"), "cpu_pct": s("cpu_pct"),
               "resp": {k: t[k] for k in L7_COUNTERS[1:]},
               "no_server": t["err_no_server"],
               "sockmap_sessions": t.get("sessions_sockmap", 0),
               "sockmap_fails": t.get("sockmap_redirect_fails", 0)}
        out.update(_status_cols(t, psnap["total"] if psnap else None, dt, l7))
        return out

    def _coverage(self, cur, prev, dt) -> dict:
        """Per duty-cycled probe set: the share of the interval its probes
        were attached (1.0: the whole interval). Rates are scaled by it;
        percentiles and ratios rest on the values of those windows only."""
        b, pb = cur.get("bpf"), (prev or {}).get("bpf")
        if not (b and pb and dt > 0):
            return {}
        out = {}
        for s, a in b.get("on_s", {}).items():
            pa = pb.get("on_s", {}).get(s)
            if a is not None and pa is not None:
                out[s] = round(min(1.0, (a - pa) / dt), 3)
        return out

    def _hists(self, cur, prev, snap, psnap) -> dict:
        """The interval's latency histograms (the latency view): the core's
        request, upstream and connect histograms (all workers), and the eBPF
        io_uring and run-queue latencies when those probes are on."""
        out = {}
        for k in shm.HISTS:
            h = hist.delta(snap["hist"][k], psnap["hist"][k]) if psnap else snap["hist"][k]
            out[k] = hist_rows(h, "us")
        b, pb = cur.get("bpf"), (prev or {}).get("bpf")
        if b and pb and self.probes:
            for key, name, st in (("hist_uring", "io_uring", "uring"), ("hist_rq", "runq", "sched")):
                if self.probes.on(st):
                    h = hist.merge(hist.delta(x[key], px[key])
                                   for x, px in zip(b["workers"], pb["workers"]))
                    out[name] = hist_rows(h, "ns")
        return out

    def _listeners(self, cur, prev, dt, snap) -> list:
        """Per listener: req/s (sessions/s on TCP), status classes, error
        share and p99 over the interval, from the core's per-listener
        counters (every listener); per listener -> cluster, the same from
        the access-log records (logpeek), so only where access_log is on."""
        counted = _listener_deltas(snap, prev["snap"] if prev else None)
        d = cur.get("detail") or {}
        lst = d.get("listeners") or []
        peek = cur.get("peek")
        slots = {s["slot"]: s["cluster"] for s in snap["servers"]}
        out = []
        if not lst and peek and peek["groups"]:
            lst = [{"id": lid, "name": f"listener {lid}", "bind": "", "mode": "http",
                    "cluster": "", "access_log": True, "routes": []}
                   for lid in sorted({k[0] for k in peek["groups"]})]
        for l in lst:
            logged = bool(prev and peek is not None and l.get("access_log"))
            row = {"name": l["name"], "bind": l.get("bind", ""), "mode": l.get("mode"),
                   "cluster": l.get("cluster"), "access_log": l.get("access_log", False),
                   "measured": logged or l["name"] in counted, "routes": []}
            groups = (peek or {}).get("groups", {})
            if l["name"] in counted:
                row.update(_group_figures(counted[l["name"]], dt, True))
            else:
                row.update(_group_figures(groups.get((l.get("id"), None)), dt, row["measured"]))
            row["measured"] = logged              # the → rows below: only from the access log
            row["counted"] = l["name"] in counted
            by_route = counted.get(l["name"], {}).get("routes")
            if by_route and l.get("routes"):
                # Per route, from the core's counters (access log or not).
                for j, r in enumerate(l["routes"]):
                    label = f"{r.get('host') or '*'}{r.get('path_prefix') or ''} → {r['cluster']}"
                    row["routes"].append({"cluster": r["cluster"], "label": label, "route": j,
                                          **_group_figures(by_route.get(j), dt, True)})
                # What no route took: the listener's own cluster (and the
                # requests refused before routing).
                rest = _minus(counted[l["name"]], by_route.values())
                row["routes"].append({"cluster": l.get("cluster"), "route": None,
                                      "label": f"(no route) → {l.get('cluster') or '-'}",
                                      **_group_figures(rest, dt, True)})
                row["measured"] = True
            elif row["measured"]:
                by_cluster = {}
                for (lid, slot), g in groups.items():
                    if lid != l.get("id") or slot is None:
                        continue
                    name = slots.get(slot, "(no server)") if slot != 0xffff else "(no server)"
                    acc = by_cluster.setdefault(name, {"count": 0, "status": {}, "hist": [0] * hist.BUCKETS})
                    acc["count"] += g["count"]
                    for k, n in g["status"].items():
                        acc["status"][k] = acc["status"].get(k, 0) + n
                    acc["hist"] = [a + b for a, b in zip(acc["hist"], g["hist"])]
                for name, g in sorted(by_cluster.items()):
                    row["routes"].append({"cluster": name, **_group_figures(g, dt, True)})
            out.append(row)
        if peek:
            for row in out:
                row["lost"] = peek["lost"]
        return out

    def _upstreams(self, snap, psnap, dt, detail=None) -> list:
        prev = {s["slot"]: s for s in psnap["servers"]} if psnap else {}
        checks = {(h["cluster"], h["address"]): h for h in (detail or {}).get("health", [])}
        now_ms = time.time() * 1000
        out = []
        for sv in snap["servers"]:
            if not sv["in_use"]:
                continue
            p = prev.get(sv["slot"])
            ck = checks.get((sv["cluster"], sv["address"]))
            d = (lambda k: (sv[k] - p[k]) if p else None)
            # failing: the connects of the last interval that had any all
            # failed (passive: a server the core ejected gets no connects,
            # so it stays failing until one succeeds)
            if p is None:
                self.failing[sv["slot"]] = bool(sv["connects"]) and sv["connect_errors"] >= sv["connects"]
            elif d("connects") > 0:
                self.failing[sv["slot"]] = d("connect_errors") >= d("connects")
            out.append({
                "cluster": sv["cluster"], "address": sv["address"], "health": sv["health"],
                "active": sv["active"], "in_flight": sv["in_flight"], "idle": sv["idle"],
                "requests": sv["requests"],
                "rps": _rate(sv["requests"], p["requests"] if p else None, dt),
                "reuse_pct": _ratio(sv["reused"], sv["requests"], 100, 1),
                "errors": sv["errors"], "connect_errors": sv["connect_errors"],
                "resp_5xx": sv["resp_5xx"], "timeouts": sv["timeouts"],
                "ejections": sv["ejections"],
                "connects": sv["connects"], "failing": self.failing.get(sv["slot"], False),
                "errors_s": _rate(sv["errors"], p["errors"] if p else None, dt),
                "connect_errors_s": _rate(sv["connect_errors"], p["connect_errors"] if p else None, dt),
                "interval": {"requests": d("requests"), "connects": d("connects"),
                             "connect_errors": d("connect_errors"), "errors": d("errors"),
                             "resp_5xx": d("resp_5xx"), "timeouts": d("timeouts"),
                             "ejections": d("ejections")},
                "check": None if ck is None else {
                    "checked": ck.get("checked", False), "ok": ck.get("last_ok"),
                    "reason": ck.get("last_reason"), "latency_ms": ck.get("last_latency_ms"),
                    "age_s": (round((now_ms - ck["last_check_ms"]) / 1000, 1)
                              if ck.get("last_check_ms") else None),
                    "since_s": (round((now_ms - ck["since_ms"]) / 1000, 1)
                                if ck.get("since_ms") else None),
                    "checks": ck.get("checks", 0)},
            })
        return out

    def _tcp(self, cur, prev) -> dict | None:
        if not (self.probes and self.probes.on("tcp") and cur["bpf"]):
            return None
        g = cur["bpf"]["tcp"]
        pg = prev["bpf"]["tcp"] if prev and prev["bpf"] else None

        def win(k):
            return hist.delta(g[k], pg[k]) if pg else g[k]
        out = {k: g[k] for k in ("est_client", "est_upstream", "connects", "connect_failed",
                                 "retrans_client", "retrans_upstream")}
        for k, name in (("hist_connect", "connect"), ("hist_rtt_client", "srtt_client"),
                        ("hist_rtt_upstream", "srtt_upstream"), ("hist_life_client", "life_client"),
                        ("hist_life_upstream", "life_upstream")):
            s = hist.summary(win(k))
            out[name] = {"count": s["count"], "p50_us": s["p50_us"], "p99_us": s["p99_us"]}
        return out


# HTTP/2's counters, as HAProxy's stats give them per proxy: what clients
# did (connections, streams, and the defences' events) and what upstreams
# with protocol = "h2" did.
H2_CLIENT = ("h2_connections", "h2_streams", "h2_refused", "h2_resets", "h2_floods", "h2_held")
H2_UPSTREAM = ("h2_up_connections", "h2_up_streams", "h2_up_goaways", "h2_up_refused",
               "h2_up_no_alpn")


def _http2(snap, psnap, dt) -> dict | None:
    """Each HTTP/2 counter's total and its rate over the interval; None
    until a connection has spoken HTTP/2 on either side."""
    t = snap["total"]
    if not (t["h2_connections"] or t["h2_up_connections"]):
        return None
    pt = psnap["total"] if psnap else None
    out = {}
    for k in H2_CLIENT + H2_UPSTREAM:
        out[k] = t[k]
        out[k + "_s"] = _rate(t[k], pt[k] if pt else None, dt)
    return out


def _errors(c) -> int:
    return sum(v for k, v in c.items() if k.startswith("err_"))


def _status_cols(c, pc, dt, l7) -> dict:
    """Rates by status class and the error share over the interval.
    HTTP: the share of responses that are 4xx or 5xx (``err_pct``) and of
    those that are 5xx (``err5_pct``). L4: the share of sessions that found
    no server to connect to (``err_no_server``)."""
    out = {f"r{k}_s": None for k in CLASSES}
    out.update(err_pct=None, err5_pct=None, responses=None)
    if pc is None or dt <= 0:
        return out
    d = {k: c[f"resp_{k}"] - pc[f"resp_{k}"] for k in CLASSES}
    for k in CLASSES:
        out[f"r{k}_s"] = round(d[k] / dt, 1)
    if l7:
        n = sum(d.values())
        out["responses"] = n
        if n:
            out["err_pct"] = round(100 * (d["4xx"] + d["5xx"]) / n, 1)
            out["err5_pct"] = round(100 * d["5xx"] / n, 1)
        elif c["requests"] - pc["requests"]:
            out["err_pct"] = out["err5_pct"] = None
        else:
            out["err_pct"] = out["err5_pct"] = 0.0
    else:
        n = c["accepted"] - pc["accepted"]
        out["responses"] = n
        out["err_pct"] = round(100 * (c["err_no_server"] - pc["err_no_server"]) / n, 1) if n else 0.0
        out["err5_pct"] = out["err_pct"]
    return out


def _listener_deltas(snap, psnap) -> dict:
    """name -> the interval's figures of a listener from the segment's
    per-listener counters (responses by class, the request-time histogram;
    a TCP listener's count is its connections), in _group_figures' form."""
    if not psnap or "listeners" not in snap or "listeners" not in psnap:
        return {}
    before = {l["name"]: l for l in psnap["listeners"]}
    out = {}
    for l in snap["listeners"]:
        p = before.get(l["name"])
        if not l["in_use"] or p is None:
            continue
        status = {f"{k}xx": l[f"resp_{k}xx"] - p[f"resp_{k}xx"] for k in range(1, 6)}
        count = (sum(status.values()) if l["mode"] == "http"
                 else l["accepted"] - p["accepted"])
        out[l["name"]] = {"count": count, "status": status,
                          "hist": hist.delta(l["hist"], p["hist"]), "routes": {}}
        # Its HTTP routes (the core's per-route counters), by their index
        # in the current configuration.
        pr = {r["slot"]: r for r in p.get("routes", ())}
        for r in l.get("routes", ()):
            q = pr.get(r["slot"])
            if not r["in_use"] or q is None:
                continue
            st = {f"{k}xx": r[f"resp_{k}xx"] - q[f"resp_{k}xx"] for k in range(1, 6)}
            out[l["name"]]["routes"][r["route"]] = {
                "count": sum(st.values()), "status": st, "hist": hist.delta(r["hist"], q["hist"])}
    return out


def _minus(whole: dict, parts) -> dict:
    """whole's count, status classes and histogram less the parts'."""
    out = {"count": whole["count"], "status": dict(whole["status"]), "hist": list(whole["hist"])}
    for g in parts:
        out["count"] -= g["count"]
        for k, n in g["status"].items():
            out["status"][k] = out["status"].get(k, 0) - n
        out["hist"] = [a - b for a, b in zip(out["hist"], g["hist"])]
    out["count"] = max(out["count"], 0)
    out["status"] = {k: max(n, 0) for k, n in out["status"].items()}
    out["hist"] = [max(n, 0) for n in out["hist"]]
    return out


def _group_figures(g, dt, measured) -> dict:
    out = {"rps": None, "err_pct": None, "p99_us": None, "p99_is_max": False, "count": None,
           "status": {}}
    if not measured:
        return out
    if g is None:
        return dict(out, rps=0.0, err_pct=0.0, count=0)
    n = g["count"]
    p = pcts(g["hist"])
    bad = g["status"].get("4xx", 0) + g["status"].get("5xx", 0)
    return {"rps": round(n / dt, 1) if dt > 0 else None,
            "err_pct": round(100 * bad / n, 1) if n else 0.0,
            "p99_us": p["p99_us"], "p99_is_max": p["p99_is_max"], "count": n,
            "status": dict(g["status"])}


def _clusters(upstreams) -> list:
    """Per cluster: whether any server can take traffic. ``no_healthy``:
    every server is down by the active checks; ``failing``: every server's
    last connects failed (what a cluster without active checks shows when
    all its servers are gone)."""
    by = {}
    for u in upstreams:
        by.setdefault(u["cluster"], []).append(u)
    out = []
    for name, us in by.items():
        down = all(u["health"] == "down" for u in us)
        failing = all(u["failing"] or u["health"] == "down" for u in us) and not down
        out.append({"cluster": name, "servers": len(us),
                    "up": sum(1 for u in us if u["health"] == "up"),
                    "down": sum(1 for u in us if u["health"] == "down"),
                    "no_healthy": down, "failing": failing})
    return out


def one_shot(pid: int, interval: float = 1.0, use_bpf: bool | None = None) -> dict:
    """Two samples `interval` apart: one complete view with rates."""
    col = Collector(pid, use_bpf=use_bpf)
    try:
        col.sample()
        time.sleep(max(0.05, interval))
        return col.sample()
    finally:
        col.close()
