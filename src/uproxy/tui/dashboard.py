"""`uproxy top` and `uproxy run --dashboard`: the live dashboard.

It draws what telemetry.view.Collector samples: the core's counters from
the shared-memory segment, per-thread counters from /proc, the control
plane's published detail (health checks, listeners, warnings) and, when it
can load them (root, bcc, kernel headers), the eBPF probes. A value that
could not be measured is drawn as "—", never as a zero; a percentile with
too few values behind it is drawn as "max <value>".

Layout: a header (errors first: rates by status class, the error share, a red
mark for a cluster without a healthy server), a bar of panels, and the
panel chosen (1 overview, 2 upstreams, 3 listeners, 4 events, 5 latency).
Every table fits the terminal: below a width the low-priority columns go
(faults, io-wq, softirq, uring p99 first) and the key ones (core, req/s,
error share, p99) are never cut.

Keys (as in htop): q quit, ? help, 1-5 or Tab panels, s / < > sort column,
r reverse, / filter (worker, listener, cluster), + / - interval, p pause.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import select
import sys
import time
from collections import deque

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

SORTS = ("core", "rps", "err", "p99", "cpu")
PANELS = ("overview", "upstreams", "listeners", "events", "latency")
INTERVALS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
SPARK = "▁▂▃▄▅▆▇█"
DASH = "—"
KEYS_HELP = [
    ("q", "quit (Ctrl-C too)"),
    ("?", "this help; any key closes it"),
    ("1-5, Tab", "panels: overview, upstreams, listeners, events, latency histograms"),
    ("s  >  <", "sort the per-core table by the next / previous column (core, req/s, err%, p99, CPU%)"),
    ("r  I", "reverse the sort"),
    ("/", "filter by worker (w0), listener or cluster name; Enter applies, Esc clears"),
    ("+  -", "refresh interval longer / shorter"),
    ("p", "pause (the screen keeps its figures; sampling goes on)"),
]


# ---- formatting ---------------------------------------------------------------

def _num(v, nd=0, unit=""):
    if v is None:
        return DASH
    if isinstance(v, float) and nd == 0:
        v = round(v)
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f}M{unit}"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.1f}k{unit}"
    return f"{v:.{nd}f}{unit}" if nd else f"{int(v)}{unit}"


def _us(v):
    """A latency in microseconds, in the unit that reads best."""
    if v is None:
        return DASH
    if v < 1000:
        return f"{v:.0f}µs" if v >= 10 else f"{v:.1f}µs"
    if v < 1e6:
        return f"{v / 1000:.1f}ms"
    return f"{v / 1e6:.2f}s"


def _pct_cell(r, name, key=None):
    """A percentile cell: the value, or "max <v>" when too few values back it."""
    key = key or f"{name}_us"
    v = r.get(key)
    if v is not None and r.get(f"{name}_is_max"):
        return "max " + _us(v)
    return _us(v)


def _share(v):
    return DASH if v is None else f"{v:.1f}%"


def _dur(s):
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if h or d else "") + f"{m}m{s:02d}s"


def _ago(s):
    if s is None:
        return DASH
    s = max(0, int(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return _dur(s)


def sparkline(values, width=60) -> str:
    vals = list(values)[-width:]
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return SPARK[0] * len(vals)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in vals)


# ---- tables that fit --------------------------------------------------------------

class Col:
    """A column: header, justification and priority (0: never dropped;
    higher numbers go first when the terminal is narrow)."""

    def __init__(self, name, prio, left=False):
        self.name, self.prio, self.left = name, prio, left


def fit_columns(cols, rows, width) -> list:
    """Indices of the columns kept so that every cell shows whole: drop the
    highest-priority-number columns (rightmost first among equals) until the
    table's natural width (rich, without edges: sum of widths + 3 per
    column - 1) fits."""
    widths = []
    for i, c in enumerate(cols):
        w = len(c.name)
        for r in rows:
            w = max(w, _cell_len(r[i]))
        widths.append(w)
    keep = list(range(len(cols)))

    def need(ix):
        return sum(widths[i] for i in ix) + 3 * len(ix) - 1
    while need(keep) > width:
        droppable = [i for i in keep if cols[i].prio > 0]
        if not droppable:
            break
        worst = max(droppable, key=lambda i: (cols[i].prio, i))
        keep.remove(worst)
    return keep


def _cell_len(cell) -> int:
    if isinstance(cell, Text):
        return cell.cell_len
    return Text(str(cell)).cell_len


def fitted_table(cols, rows, width, title=None, styles=None, caption=None) -> Table:
    keep = fit_columns(cols, rows, width)
    t = Table(box=box.SIMPLE_HEAD, expand=False, show_edge=False, title=title, title_justify="left",
              title_style="bold", caption=caption, caption_justify="left", caption_style="dim")
    for i in keep:
        t.add_column(cols[i].name, justify="left" if cols[i].left else "right", no_wrap=True,
                     overflow="fold")
    for n, r in enumerate(rows):
        t.add_row(*[r[i] for i in keep], style=(styles or {}).get(n))
    t.dropped = [cols[i].name for i in range(len(cols)) if i not in keep]
    return t


# ---- drawing -------------------------------------------------------------------

def _bad_clusters(v) -> list:
    out = []
    for c in v.get("clusters", []):
        if c["no_healthy"]:
            out.append(f"cluster {c['cluster']}: no healthy server")
        elif c["failing"]:
            out.append(f"cluster {c['cluster']}: every connect failed")
    return out


def _status_line(v, compact=False) -> Text:
    tot = v["total"]
    t = Text()
    l7 = v["unit"] == "requests"
    unit = "req/s" if l7 else "sess/s"
    t.append(f"{unit} {_num(tot['rps'])}", style="bold")
    if l7:
        for k in ("2xx", "3xx", "4xx", "5xx"):
            r = tot.get(f"r{k}_s")
            if compact and k == "3xx" and not r:
                continue
            style = "bold red" if k == "5xx" and r else ("yellow" if k == "4xx" and r else "")
            t.append(f"  {k} {_num(r)}" + ("" if compact else "/s"), style=style)
        err = tot.get("err_pct")
        t.append(f"  errors {_share(err)}", style="bold red" if err else "")
        t.append(f" (5xx {_share(tot.get('err5_pct'))})", style="red" if tot.get("err5_pct") else "")
    else:
        err = tot.get("err_pct")
        t.append(f"  no server {_share(err)}", style="bold red" if err else "")
        if tot.get("sockmap_sessions"):
            # sessions the kernel moved; a refused redirect's bytes went
            # through the worker instead (counted when its session ends)
            fails = tot.get("sockmap_fails") or 0
            t.append(f"  sockmap {_num(tot['sockmap_sessions'])} sess")
            t.append(f", {fails} redirects refused", style="bold red" if fails else "")
    t.append(f"  p99 {_pct_cell(tot, 'p99')}")
    for c in _bad_clusters(v):
        t.append("\n✖ " + c, style="bold red")
    return t


def _header(v, paused, compact=False) -> Panel:
    t = Text()
    t.append(f"uproxy {v['version']}", style="bold")
    t.append(f"  pid {v['pid']}  up {_dur(v['uptime_s'])}  " +
             ("" if compact else f"Linux {v['kernel']}  ") +
             f"{v['workers']} workers  " + ("gen" if compact else "generation") +
             f" {v['config_generation']} ({v['reloads']} reloads)")
    if v.get("interval_s"):
        t.append(f"  every {v['interval_s']:.3g}s")
    if paused:
        t.append("  PAUSED", style="bold reverse yellow")
    t.append("\n")
    t.append_text(_status_line(v, compact))
    if not compact:
        t.append("\nio_uring: ", style="bold")
        t.append(", ".join(v["features"]) or "no optional features (5.15 paths)")
    p = v["probes"]
    t.append("\n" if compact and not p["available"] else "\neBPF: ", style="bold")
    if p["available"]:
        for name, st in p["sets"].items():
            ok = st["state"] == "on"
            t.append(f"{name} {'on' if ok else st['state']}  ", style="green" if ok else "red")
        bad = [f"{n}: {s['why']}" for n, s in p["sets"].items() if s["state"] == "error"]
        if bad:
            t.append("\n  " + "; ".join(bad)[:300], style="red")
    else:
        t.append(f"eBPF columns missing: {p['why']}", style="yellow")
        if p.get("fix"):
            t.append(f" — to get them: {p['fix']}", style="yellow")
    t.append("\nCPU counters: ", style="bold")
    if v["pmu"]["present"]:
        t.append("hardware PMU (" + ", ".join(v["pmu"]["events"]) + ")" if v["pmu"]["events"]
                 else "hardware PMU present; the cpu probe is off")
    else:
        t.append("no PMU on this host", style="bold yellow")
        t.append(": software counters shown" if compact else
                 ": IPC, cache and branch misses cannot be measured here; showing software "
                 "counters (CPU %, context switches, page faults) instead")
    warn = [e for e in v.get("events", []) if e.get("level") in ("warning", "error")]
    if warn:
        more = f" (+{len(warn) - 1} more in 4 events)" if len(warn) > 1 else ""
        t.append(f"\n⚠ {warn[-1]['text']}{more}", style="yellow")
    return Panel(t, box=box.ROUNDED, padding=(0, 1))


def _sort_rows(rows, sort_key, reverse):
    key = {"core": lambda r: r["index"], "rps": lambda r: -(r["rps"] or 0),
           "err": lambda r: -(r.get("err_pct") or 0),
           "p99": lambda r: -(r["p99_us"] or 0), "cpu": lambda r: -(r["cpu_pct"] or 0)}[sort_key]
    rows = sorted(rows, key=key)
    return rows[::-1] if reverse else rows


def _match(flt, *names) -> bool:
    if not flt:
        return True
    f = flt.lower()
    return any(f in str(n).lower() for n in names if n is not None)


def cores_table(v, sort_key="core", width=200, reverse=False, flt="") -> Table:
    pmu = v["pmu"]["present"]
    l7 = v["unit"] == "requests"
    unit = "req/s" if l7 else "sess/s"
    lat = "request" if v["latency"] == "request" else "connect"
    cols = [Col("core", 0, True), Col("cpu", 7), Col(unit, 0), Col("err%", 0), Col("p99", 0)]
    if l7:
        cols += [Col("5xx/s", 3), Col("4xx/s", 4), Col("2xx/s", 8), Col("3xx/s", 12)]
    cols += [Col("active", 9), Col("p50", 10), Col("p99.9", 11)]
    cols += ([Col("IPC", 2), Col("miss/" + v["unit"][:-1], 6), Col("br-miss%", 13)] if pmu
             else [Col("CPU%", 1), Col("csw/s", 13), Col("faults/s", 30)])
    cols += [Col("uring ops/s", 14), Col("uring p99", 24), Col("io-wq/s", 28),
             Col("runq p99", 20), Col("softirq%", 26)]
    rows, styles = [], {}
    # a filter that names no worker (a listener or a cluster) leaves the cores
    if flt and not any(_match(flt, f"w{r['index']}", f"cpu{r['cpu']}") for r in v["cores"]):
        flt = ""
    for r in _sort_rows(v["cores"], sort_key, reverse):
        if not _match(flt, f"w{r['index']}", f"cpu{r['cpu']}"):
            continue
        state = "" if r["state"] == "running" else f" ({r['state']})"
        cells = [f"w{r['index']}{state}", str(r["cpu"]) if r["cpu"] >= 0 else DASH,
                 _num(r["rps"]), _share(r.get("err_pct")), _pct_cell(r, "p99")]
        if l7:
            cells += [_num(r.get("r5xx_s")), _num(r.get("r4xx_s")), _num(r.get("r2xx_s")),
                      _num(r.get("r3xx_s"))]
        cells += [_num(r["active"]), _pct_cell(r, "p50"), _pct_cell(r, "p999")]
        if pmu:
            cells += [_num(r["ipc"], 2), _num(r["cache_misses_per_unit"], 1),
                      _num(r["branch_miss_pct"], 2)]
        else:
            # the worker thread's CPU time over the whole interval (/proc):
            # the same figure the CPU sort uses
            cells += [_num(r["cpu_pct"], 1), _num(r["ctx_switches_s"]), _num(r["page_faults_s"])]
        cells += [_num(r["uring_ops_s"]),
                  _pct_cell(r, "uring_lat_p99", "uring_lat_p99_us"), _num(r["iowq_punts_s"]),
                  _pct_cell(r, "runq_p99", "runq_p99_us"), _num(r["softirq_pct"], 1)]
        if r.get("err5_pct"):
            styles[len(rows)] = "red"
        rows.append(cells)
    tot = v["total"]
    cells = ["all", "", _num(tot["rps"]), _share(tot.get("err_pct")), _pct_cell(tot, "p99")]
    if l7:
        cells += [_num(tot.get("r5xx_s")), _num(tot.get("r4xx_s")), _num(tot.get("r2xx_s")),
                  _num(tot.get("r3xx_s"))]
    cells += [_num(tot["active"]), _pct_cell(tot, "p50"), _pct_cell(tot, "p999")]
    cells += ["", "", ""] if pmu else [_num(tot.get("cpu_pct"), 1), "", ""]
    cells += [_num(tot["uring_ops_s"]), "", _num(tot["iowq_punts_s"]), "", ""]
    styles[len(rows)] = "bold"
    rows.append(cells)
    arrow = " ↑" if reverse else ""
    title = f"per core — latency columns: {lat}, sorted by {sort_key}{arrow}"
    if flt:
        title += f", filter {flt!r}"
    if width < 100:
        title = f"per core — {lat} latency, sorted by {sort_key}{arrow}" + (f", /{flt}" if flt else "")
    t = fitted_table(cols, rows, width, title=title, styles=styles)
    notes = []
    if any("max " in c for r in rows for c in r):
        notes.append("max: too few values for the percentile, the maximum is shown")
    cov = v.get("coverage") or {}
    sampled = {"uring": "uring p99", "sched": "runq p99", "softirq": "softirq%"}
    part = [f"{what} in {cov[s] * 100:.0f}% of it" for s, what in sampled.items()
            if s in cov and cov[s] < 0.999]
    if part:
        notes.append("sampled (eBPF windows over the interval; rates scaled): " + ", ".join(part))
    if t.dropped:
        notes.append("hidden at this width: " + ", ".join(t.dropped))
    if notes:
        t.caption = "; ".join(notes)
    return t


def _sparks(v, flt=""):
    h = v.get("history", {})
    t = Table.grid(padding=(0, 1))
    t.add_column(justify="right", style="bold")
    t.add_column()
    t.add_column(justify="right")
    unit = "req/s" if v["unit"] == "requests" else "sess/s"
    rows = [(f"all {unit}", h.get("rps", []), _num(v["total"]["rps"])),
            ("all p99", h.get("p99_us", []), _us(v["total"]["p99_us"]))]
    cores = [r for r in v["cores"] if _match(flt, f"w{r['index']}", f"cpu{r['cpu']}")] or v["cores"]
    for r in cores:
        rows.append((f"w{r['index']} {unit}", h.get(f"rps{r['index']}", []), _num(r["rps"])))
    for name, vals, now in rows:
        t.add_row(name, Text(sparkline(vals), style="cyan"), now)
    return Group(Text("last minute", style="bold"), t)


def _check_cell(u, with_age=False) -> Text:
    c = u.get("check")
    if not c:
        return Text("not checked", style="dim")
    if not c["checked"]:
        return Text("pending", style="dim")
    lat = f" {c['latency_ms']:.1f}ms" if c.get("latency_ms") is not None else ""
    age = f" {_ago(c['age_s'])} ago" if with_age and c.get("age_s") is not None else ""
    if c["ok"]:
        return Text(f"ok{lat}{age}", style="green")
    return Text(f"fail: {c['reason']}{lat}{age}", style="red")


def _health_cell(u) -> Text:
    style = {"up": "green", "down": "bold red", "unchecked": "dim"}
    if u.get("failing") and u["health"] != "down":
        return Text("failing" if u["health"] == "unchecked" else f"{u['health']}, failing",
                    style="bold red")
    return Text(u["health"], style=style.get(u["health"], ""))


def upstreams_table(v, width=200, flt=""):
    cols = [Col("cluster", 0, True), Col("server", 0, True), Col("health", 0, True),
            Col("req/s", 0), Col("err/s", 0), Col("cerr/s", 1), Col("check", 2, True),
            Col("for", 3), Col("checked", 8), Col("5xx", 4), Col("timeouts", 5), Col("ejected", 5),
            Col("errors", 5), Col("cerr", 6),
            Col("active", 9), Col("in-flight", 7), Col("idle", 10), Col("reuse %", 11)]
    rows = []
    shown = []
    if flt and not any(_match(flt, u["cluster"], u["address"]) for u in v["upstreams"]):
        flt = ""            # a filter that names no server (a worker, a listener) leaves them
    for u in v["upstreams"]:
        if not _match(flt, u["cluster"], u["address"]):
            continue
        c = u.get("check") or {}
        shown.append(u)
        rows.append([u["cluster"], u["address"], _health_cell(u),
                     _num(u["rps"]), _num(u.get("errors_s")), _num(u.get("connect_errors_s")),
                     _check_cell(u), _ago(c.get("since_s")) if c.get("checked") else DASH,
                     (_ago(c.get("age_s")) + " ago") if c.get("age_s") is not None else DASH,
                     _num(u.get("resp_5xx")), _num(u.get("timeouts")), _num(u.get("ejections")),
                     _num(u["errors"]), _num(u["connect_errors"]), _num(u["active"]),
                     _num(u["in_flight"]), _num(u["idle"]), _num(u["reuse_pct"], 1)])
    ej = v.get("ejections")
    cap = f"passive ejections: {_num(ej)} in all ({_num(v.get('ejections_s'))}/s)"
    if width >= 100:
        cap = ("err: resets, timeouts, 5xx, bad responses; cerr: connect errors; check: the "
               "last active check; for: time in this state; failing: its last connects all "
               "failed; " + cap)
    t = fitted_table(cols, rows, width, title="upstreams", caption=cap)
    if t.dropped:
        t.caption += "; hidden at this width: " + ", ".join(t.dropped)
    if not any(n in t.dropped for n in ("check", "for")):
        return t
    # too narrow for the check columns: the health detail as lines below
    lines = Text()
    for u in shown:
        c = u.get("check")
        if not c:
            continue
        lines.append(f"{u['cluster']} {u['address']}: ")
        lines.append_text(_check_cell(u, with_age=True))
        if c.get("checked") and c.get("since_s") is not None:
            lines.append(f", {u['health']} for {_ago(c['since_s'])}")
        lines.append("\n")
    lines.rstrip()
    return Group(t, lines) if lines.plain else t


def listeners_table(v, width=200, flt="") -> Table:
    cols = [Col("listener", 0, True), Col("req/s", 0), Col("err%", 0), Col("p99", 0),
            Col("2xx", 3), Col("4xx", 2), Col("5xx", 1), Col("bind", 4, True),
            Col("cluster", 5, True)]
    rows, styles = [], {}
    unmeasured = []

    def names(l):
        return [l["name"], l.get("cluster")] + [r["cluster"] for r in l["routes"]]
    if flt and not any(_match(flt, *names(l)) for l in v.get("listeners", [])):
        flt = ""
    for l in v.get("listeners", []):
        if not _match(flt, *names(l)):
            continue
        shown = l.get("counted", l["measured"])
        if not l["measured"] and l.get("mode") == "http" and l.get("counted") is not None:
            unmeasured.append(l["name"])
        st = l.get("status") or {}

        def cnt(k, m=shown and l.get("mode") != "tcp", s=st):
            return _num(s.get(k, 0)) if m else DASH
        rows.append([l["name"], _num(l["rps"]), _share(l["err_pct"]), _pct_cell(l, "p99"),
                     cnt("2xx"), cnt("4xx"), cnt("5xx"), l.get("bind", ""), l.get("cluster") or ""])
        styles[len(rows) - 1] = "bold"
        for r in l["routes"]:
            rs = r.get("status") or {}
            rows.append([f"  {r['label']}" if r.get("label") else f"  → {r['cluster']}",
                         _num(r["rps"]), _share(r["err_pct"]),
                         _pct_cell(r, "p99"), _num(rs.get("2xx", 0)), _num(rs.get("4xx", 0)),
                         _num(rs.get("5xx", 0)), "", r["cluster"]])
    notes = ["listener rows: the core's counters over the interval (req/s is sessions/s on "
             "TCP listeners); route rows (host/path → cluster): the core's per-route counters; "
             "→ cluster rows of a listener without routes: from the access-log records"]
    if unmeasured:
        notes.append("no → rows for " + ", ".join(unmeasured) + ": set access_log on the "
                     "listener to see its routes")
    lost = max([l.get("lost", 0) for l in v.get("listeners", [])] or [0])
    if lost:
        notes.append(f"{lost} records not seen (the rings wrapped): figures over the rest")
    t = fitted_table(cols, rows, width, title="listeners and routes", styles=styles,
                     caption="; ".join(notes))
    if not rows:
        t.caption = "no listener " + (f"matches {flt!r}" if flt else "published yet (an older proxy?)")
    return t


def events_text(v, limit=None, flt="") -> Text:
    t = Text()
    evs = [e for e in v.get("events", []) if _match(flt, e["text"])] or v.get("events", [])
    if limit:
        evs = evs[-limit:]
    for e in evs:
        ts = time.strftime("%H:%M:%S", time.localtime(e["time_ms"] / 1000))
        lvl = e.get("level")
        style = ("red" if lvl == "error" or any(w in e["text"] for w in ("down", "fail"))
                 else "yellow" if lvl == "warning" else "dim" if e.get("source") == "log" else "")
        tag = {"warning": "warning: ", "error": "error: "}.get(lvl, "")
        t.append(f"{ts}  {tag}{e['text']}\n", style=style)
    if not t.plain:
        t.append("no events yet", style="dim")
    t.rstrip()
    return t


def _events(v, limit=8, flt="") -> Panel:
    return Panel(events_text(v, limit, flt), title="recent events (oldest first)",
                 title_align="left", box=box.ROUNDED)


# ---- latency histograms (as bcc's runqlat prints them) ---------------------------------

def histogram_lines(rows: dict, label="usecs", width=40) -> list:
    """A log2 histogram like bcc's runqlat, from the core's log-linear
    buckets ({bucket: count}): one line per power of two (the core's octave
    boundaries are exact powers of two from 8), values [lo, hi]."""
    from .. import hist
    b = {int(k): n for k, n in rows.items()}
    if not b:
        return []
    octs = {}
    for i, n in b.items():
        lo = hist.lower(i)
        e = max(0, lo.bit_length() - 1) if lo else -1
        octs[e] = octs.get(e, 0) + n
    lo_e, hi_e = min(octs), max(octs)
    top = max(octs.values())
    out = [f"{label:>20} : count     distribution"]
    for e in range(lo_e, hi_e + 1):
        lo, hi = (0, 0) if e < 0 else (1 << e, (1 << (e + 1)) - 1)
        n = octs.get(e, 0)
        bar = "*" * (int(round(n / top * width)) if top else 0)
        out.append(f"{lo:>10} -> {hi:<10}: {n:<9} |{bar:<{width}}|")
    return out


def latency_view(v, width=200) -> Group:
    parts = []
    titles = {"request": "HTTP requests, first byte to response sent",
              "upstream": "HTTP, request sent upstream to response head",
              "connect": "upstream connects",
              "io_uring": "io_uring, submit to first completion (eBPF, sampled)",
              "runq": "run-queue latency of the workers (eBPF, sampled)"}
    hs = v.get("hist") or {}
    bar = max(10, min(40, width - 50))
    for name, h in hs.items():
        n = h.get("count", 0)
        label = "usecs" if h.get("unit") == "us" else "nsecs"
        t = Text(f"{titles.get(name, name)}: {n} in the last interval", style="bold")
        parts.append(t)
        lines = histogram_lines(h.get("buckets", {}), label, bar)
        parts.append(Text("\n".join(lines) if lines else "  no values in this interval",
                          style="" if lines else "dim"))
        parts.append(Text(""))
    if not parts:
        parts.append(Text("no histograms in this view", style="dim"))
    return Group(*parts)


# ---- the whole screen --------------------------------------------------------------

def _tabs(st, width) -> Text:
    t = Text()
    for i, name in enumerate(PANELS):
        on = st.panel == i and not st.help
        # the current panel in brackets too: readable without colours
        t.append(f"[{i + 1} {name}]" if on else f" {i + 1} {name} ", style="reverse bold" if on else "")
    t.append("  ")
    if st.typing:
        t.append(f"/{st.typed}▏", style="bold yellow")
    elif st.filter:
        t.append(f"filter /{st.filter}  ", style="yellow")
    t.append("[? help]" if st.help else "? help", style="reverse bold" if st.help else "dim")
    t.append("  q quit", style="dim")
    return t


def _help() -> Panel:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    for k, what in KEYS_HELP:
        t.add_row(k, what)
    return Panel(t, title="keys", title_align="left", box=box.ROUNDED)


class Screen:
    """The dashboard as a rich renderable: it lays itself out for the
    width and height it is given (a terminal's, or a pipe's)."""

    def __init__(self, view, state=None, log_lines=None, once=False):
        self.v, self.st, self.once = view, state or State(), once
        self.log_lines = log_lines

    def parts(self, width, height):
        v, st = self.v, self.st
        compact = (height is not None and height < 40) or width < 100
        head = _header(v, st.paused, compact=compact)
        lines = [x for x in (_tcp(v), _http2(v)) if x is not None]
        if self.once:
            return [head, cores_table(v, st.sort_key, width, st.reverse, st.filter)] + lines + \
                   [upstreams_table(v, width, st.filter), listeners_table(v, width, st.filter),
                    _events(v, None, st.filter)], []
        top = [head, _tabs(st, width)]
        if st.help:
            return top, [_help()]
        p = PANELS[st.panel]
        if p == "overview":
            body = [cores_table(v, st.sort_key, width, st.reverse, st.filter)]
            more = lines + [
                _sparks(v, st.filter), upstreams_table(v, width, st.filter), _events(v, 8, st.filter)]
            return top, body + more
        if p == "upstreams":
            return top, [upstreams_table(v, width, st.filter)]
        if p == "listeners":
            return top, [listeners_table(v, width, st.filter)]
        if p == "events":
            return top, [_events(v, None, st.filter)]
        return top, [latency_view(v, width)]

    def __rich_console__(self, console, options):
        width = options.max_width
        # a terminal's screen is cropped to its height: lay out for it
        height = None if self.once else (options.height or (
            options.size.height if console.is_terminal else None))
        top, body = self.parts(width, height)
        if self.once or height is None:
            yield Group(*(top + body))
            return
        lines = []
        for r in top:
            lines += console.render_lines(r, options.update(height=None), pad=False)
        first = True
        for r in body:
            rl = console.render_lines(r, options.update(height=None), pad=False)
            if not first and len(lines) + len(rl) > height:
                lines.append([Segment("more in the panels: 2 upstreams, 3 listeners, 4 events, "
                                      "5 latency", console.get_style("dim"))])
                break
            lines += rl
            first = False
        for line in lines[:height]:
            yield from line
            yield Segment.line()


def _titled(title) -> Text:
    """A line under the per-core table: its title in bold, then its figures."""
    t = Text()
    t.append(title + " ", style="bold")
    return t


def _tcp(v) -> Text | None:
    tcp = v.get("tcp")
    if not tcp:
        return None
    t = _titled("TCP")

    def pq(name):
        s = tcp[name]
        return f"{_us(s['p50_us'])}/{_us(s['p99_us'])}" if s["count"] else DASH
    t.append(f"upstream connect p50/p99 {pq('connect')}  srtt client {pq('srtt_client')} "
             f"upstream {pq('srtt_upstream')}  lifetime client {pq('life_client')} "
             f"upstream {pq('life_upstream')}  retransmits client {tcp['retrans_client']} "
             f"upstream {tcp['retrans_upstream']}  connects failed {tcp['connect_failed']}")
    return t


def _http2(v) -> Text | None:
    """One line of HTTP/2 (when a connection has spoken it): clients'
    connections and streams per second and the defences' events, then the
    same for upstreams with protocol = "h2". An event count is coloured when
    it grew in the interval: red for what cuts or refuses, yellow for what
    clients and servers do in the normal run of things (resets, GOAWAYs,
    waits for room)."""
    h = v.get("http2")
    if not h:
        return None
    t = _titled("HTTP/2")

    def rate(k):
        return _num(h[k + "_s"], 1 if (h[k + "_s"] or 0) < 10 else 0)

    def event(label, k, style):
        t.append("  ")
        t.append(f"{label} {h[k]}", style=style if (h[k + "_s"] or 0) > 0 else None)
    if h["h2_connections"]:
        t.append(f"clients: conns/s {rate('h2_connections')}  streams/s {rate('h2_streams')}")
        event("refused", "h2_refused", "bold red")
        event("cut for floods", "h2_floods", "bold red")
        event("reset by clients", "h2_resets", "yellow")
        event("held for room", "h2_held", "yellow")
    if h["h2_up_connections"]:
        t.append("   " if h["h2_connections"] else "")
        t.append(f"upstreams: conns/s {rate('h2_up_connections')}  "
                 f"streams/s {rate('h2_up_streams')}")
        event("refused", "h2_up_refused", "yellow")
        event("GOAWAYs", "h2_up_goaways", "yellow")
        event("no ALPN h2", "h2_up_no_alpn", "bold red")
    return t


def render(view: dict, sort_key: str = "core", paused: bool = False, log_lines=None,
           state=None, once=False):
    st = state
    if st is None:
        st = State()
        st.sort = SORTS.index(sort_key)
        st.paused = paused
    return Screen(view, st, log_lines, once=once)


def natural_width(view) -> int:
    """The width at which every column of every table shows (for --once
    into a pipe: wide plain text, nothing hidden)."""
    need = 100
    for t in (cores_table(view, width=10 ** 6), upstreams_table(view, width=10 ** 6),
              listeners_table(view, width=10 ** 6)):
        c = Console(width=10 ** 4, file=io.StringIO(), color_system=None)
        need = max(need, c.measure(t).maximum)
    return min(need, 400)


# ---- keys ------------------------------------------------------------------------

class Keys:
    """Single key presses from a terminal (cbreak mode), or none."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdin
        self.saved = None
        try:
            self.fd = self.stream.fileno()
            self.tty = os.isatty(self.fd)
        except (AttributeError, ValueError, OSError):
            self.fd, self.tty = None, False

    def __enter__(self):
        if self.tty:
            import termios
            import tty
            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None

    def read(self, timeout: float) -> str:
        if not self.tty:
            time.sleep(max(0.0, timeout))
            return ""
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not r:
            return ""
        try:
            return os.read(self.fd, 16).decode(errors="ignore")
        except OSError:
            return ""


class State:
    def __init__(self, interval: float = 1.0):
        self.sort = 0
        self.reverse = False
        self.paused = False
        self.quit = False
        self.help = False
        self.panel = 0
        self.filter = ""
        self.typing = False
        self.typed = ""
        self.interval = interval

    @property
    def sort_key(self):
        return SORTS[self.sort]

    def _interval(self, step):
        i = min(range(len(INTERVALS)), key=lambda k: abs(INTERVALS[k] - self.interval))
        self.interval = INTERVALS[max(0, min(len(INTERVALS) - 1, i + step))]

    def key(self, ch: str):
        if ch.startswith("\x1b[") or ch.startswith("\x1bO"):
            return                          # arrows and function keys: nothing yet
        for c in ch:
            if self.typing:
                if c in "\r\n":
                    self.typing, self.filter = False, self.typed.strip()
                elif c == "\x1b":
                    self.typing, self.typed, self.filter = False, "", ""
                elif c in "\x7f\b":
                    self.typed = self.typed[:-1]
                elif c.isprintable():
                    self.typed += c
                continue
            if self.help:                   # any key closes the help
                self.help = False
                if c not in "qQ":
                    continue
            if c in "qQ":
                self.quit = True
            elif c == "?" or c == "h":
                self.help = True
            elif c in "s>":
                self.sort = (self.sort + 1) % len(SORTS)
            elif c == "<":
                self.sort = (self.sort - 1) % len(SORTS)
            elif c in "rI":
                self.reverse = not self.reverse
            elif c in "pP":
                self.paused = not self.paused
            elif c == "/":
                self.typing, self.typed = True, self.filter
            elif c == "\x1b":
                self.filter = ""
            elif c in "+=":
                self._interval(+1)
            elif c in "-_":
                self._interval(-1)
            elif c == "\t":
                self.panel = (self.panel + 1) % len(PANELS)
            elif c.isdigit() and 1 <= int(c) <= len(PANELS):
                self.panel = int(c) - 1


# ---- entry points -------------------------------------------------------------------

def _open(pid):
    from .. import shm
    from ..telemetry.view import Collector
    pid = shm.find_pid(pid)
    return Collector(pid)


def _once_console(console, view) -> Console:
    if console is not None:
        return console
    con = Console()
    if not con.is_terminal:         # a pipe: wide plain text, nothing hidden
        con = Console(width=natural_width(view), color_system=None, highlight=False)
    return con


def run_attached(pid=None, interval: float = 1.0, once: bool = False, as_json: bool = False,
                 console: Console | None = None) -> int:
    from .. import shm
    interval = max(0.1, float(interval))
    if as_json and not once:
        print("uproxy: --json goes with --once (one snapshot)", file=sys.stderr)
        return 2
    try:
        col = _open(pid)
    except (LookupError, shm.LayoutError, OSError) as e:
        print(f"uproxy: {e}", file=sys.stderr)
        return 1
    try:
        if once:
            col.sample()
            time.sleep(interval)
            v = col.sample()
            if as_json:
                print(json.dumps(v, indent=2))
            else:
                _once_console(console, v).print(render(v, once=True))
            return 0
        return _live(col, interval, console)
    except KeyboardInterrupt:
        return 0            # Ctrl-C quits, as q does
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return 0
    except FileNotFoundError:
        return 0            # the proxy went away
    finally:
        col.close()


def _live(col, interval, console=None) -> int:
    console = console or Console()
    st = State(interval)
    view = col.sample()
    with Keys() as keys, Live(render(view, state=st), console=console, screen=_screen(console),
                              auto_refresh=False, transient=False) as live:
        next_at = time.monotonic() + st.interval
        while not st.quit:
            ch = keys.read(min(0.2, max(0.0, next_at - time.monotonic())))
            if ch:
                before = st.interval
                st.key(ch)
                if st.interval != before:
                    next_at = time.monotonic() + st.interval
                live.update(render(view, state=st), refresh=True)
            if time.monotonic() >= next_at:
                next_at = time.monotonic() + st.interval
                if not os.path.exists(f"/proc/{col.pid}"):
                    break
                try:
                    sample = col.sample()
                except (OSError, ValueError):
                    break
                if not st.paused:
                    view = sample
                    live.update(render(view, state=st), refresh=True)
    return 0


def _screen(console) -> bool:
    """Full screen (the terminal's alternate screen, like top) on a terminal."""
    return bool(console.is_terminal)


class _RingHandler(logging.Handler):
    """The proxy's log lines, for the events panel (time, level, text)."""

    def __init__(self, ring):
        super().__init__()
        self.ring = ring

    def emit(self, record):
        with contextlib.suppress(Exception):
            self.ring.append({"time_ms": int(record.created * 1000),
                              "level": record.levelname.lower(), "text": self.format(record)})


def run_embedded(rt, interval: float = 1.0, console: Console | None = None) -> int:
    """The proxy and its dashboard in one terminal: the dashboard draws from
    the proxy's main thread through Runtime.serve(tick=...), which keeps
    handling signals, reloads and table collection."""
    from ..telemetry.view import Collector
    interval = max(0.1, float(interval))
    console = console or Console()
    root = logging.getLogger()
    log_lines = deque(maxlen=50)
    saved_handlers = root.handlers[:]
    ring = _RingHandler(log_lines)
    ring.setFormatter(logging.Formatter("%(message)s"))
    root.handlers = [ring]          # log lines go to the events panel, not over the screen
    col = None
    try:
        col = Collector(os.getpid())
        col.logs = log_lines        # merged with the event ring, each once, in time order
        with contextlib.suppress(Exception):
            rt.health.publisher.tick(force=True)    # start-up warnings before the first draw
        st = State(interval)
        view = col.sample()
        with Keys() as keys, Live(render(view, state=st), console=console,
                                  screen=_screen(console), auto_refresh=False,
                                  redirect_stderr=False) as live:
            box_ = {"next": time.monotonic() + st.interval, "view": view}

            def tick():
                ch = keys.read(0)
                if ch:
                    st.key(ch)
                    if st.quit:
                        rt.stop_requested.set()
                        return
                    live.update(render(box_["view"], state=st), refresh=True)
                if time.monotonic() >= box_["next"]:
                    box_["next"] = time.monotonic() + st.interval
                    sample = col.sample()
                    if not st.paused:
                        box_["view"] = sample
                        live.update(render(sample, state=st), refresh=True)
            code = rt.serve(tick=tick)
    finally:
        if col is not None:
            col.close()
        root.handlers = saved_handlers
    for rec in log_lines:
        print(f"uproxy[{os.getpid()}]: {rec['text']}", file=sys.stderr)
    return code
