"""`uproxy top` and `uproxy run --dashboard`: the live dashboard.

It draws what telemetry.view.Collector samples: the core's counters from
the shared-memory segment, per-thread counters from /proc and, when it can
load them (root, bcc, kernel headers), the eBPF probes. A value that could
not be measured is drawn as "—", never as a zero.

Keys: q quits, s changes the sort of the per-core table, p pauses.
"""
from __future__ import annotations

import contextlib
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
from rich.table import Table
from rich.text import Text

SORTS = ("core", "rps", "p99", "cpu")
SPARK = "▁▂▃▄▅▆▇█"
DASH = "—"


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


def _dur(s):
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if h or d else "") + f"{m}m{s:02d}s"


def sparkline(values, width=60) -> str:
    vals = list(values)[-width:]
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return SPARK[0] * len(vals)
    return "".join(SPARK[min(len(SPARK) - 1, int(v / top * (len(SPARK) - 1) + 0.5))] for v in vals)


# ---- drawing -------------------------------------------------------------------

def _header(v, paused, sort_key) -> Panel:
    t = Text()
    t.append(f"uproxy {v['version']}", style="bold")
    t.append(f"  pid {v['pid']}  up {_dur(v['uptime_s'])}  Linux {v['kernel']}  "
             f"{v['workers']} workers  generation {v['config_generation']}"
             f" ({v['reloads']} reloads)")
    if paused:
        t.append("  PAUSED", style="bold reverse yellow")
    t.append("\nio_uring: ", style="bold")
    t.append(", ".join(v["features"]) or "no optional features (5.15 paths)")
    p = v["probes"]
    t.append("\neBPF: ", style="bold")
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
        t.append(": IPC, cache and branch misses cannot be measured here; showing software "
                 "counters (CPU %, context switches, page faults) instead")
    return Panel(t, box=box.ROUNDED, padding=(0, 1))


def _cores(v, sort_key) -> Table:
    pmu = v["pmu"]["present"]
    unit = "req/s" if v["unit"] == "requests" else "sess/s"
    lat = "request" if v["latency"] == "request" else "connect"
    t = Table(box=box.SIMPLE_HEAD, expand=True, title=f"per core — latency columns: {lat}, "
              f"sorted by {sort_key}", title_justify="left", title_style="bold")
    cols = ["core", "cpu", unit, "active", "p50", "p99", "p99.9"]
    cols += (["IPC", "miss/" + v["unit"][:-1], "br-miss%"] if pmu else ["CPU%", "csw/s", "faults/s"])
    cols += ["uring ops/s", "uring p99", "io-wq/s", "runq p99", "softirq%"]
    for c in cols:
        t.add_column(c, justify="left" if c == "core" else "right", no_wrap=True)
    rows = list(v["cores"])
    key = {"core": lambda r: r["index"], "rps": lambda r: -(r["rps"] or 0),
           "p99": lambda r: -(r["p99_us"] or 0), "cpu": lambda r: -(r["cpu_pct"] or 0)}[sort_key]
    rows.sort(key=key)
    cpu_total = []
    for r in rows:
        state = "" if r["state"] == "running" else f" ({r['state']})"
        cells = [f"w{r['index']}{state}", str(r["cpu"]) if r["cpu"] >= 0 else DASH,
                 _num(r["rps"]), _num(r["active"]), _us(r["p50_us"]), _us(r["p99_us"]),
                 _us(r["p999_us"])]
        if pmu:
            cells += [_num(r["ipc"], 2), _num(r["cache_misses_per_unit"], 1),
                      _num(r["branch_miss_pct"], 2)]
        else:
            cpu = r["cpu_clock_pct"] if r.get("cpu_clock_pct") is not None else r["cpu_pct"]
            if cpu is not None:
                cpu_total.append(cpu)
            cells += [_num(cpu, 1), _num(r["ctx_switches_s"]), _num(r["page_faults_s"])]
        cells += [_num(r["uring_ops_s"]), _us(r["uring_lat_p99_us"]), _num(r["iowq_punts_s"]),
                  _us(r["runq_p99_us"]), _num(r["softirq_pct"], 1)]
        t.add_row(*cells)
    tot = v["total"]
    cells = ["all", "", _num(tot["rps"]), _num(tot["active"]), _us(tot["p50_us"]),
             _us(tot["p99_us"]), _us(tot["p999_us"])]
    cells += ["", "", ""] if pmu else [_num(sum(cpu_total) if cpu_total else None, 1), "", ""]
    cells += [_num(tot["uring_ops_s"]), "", _num(tot["iowq_punts_s"]), "", ""]
    t.add_row(*cells, style="bold")
    return t


def _sparks(v) -> Panel:
    h = v.get("history", {})
    t = Table.grid(padding=(0, 1))
    t.add_column(justify="right", style="bold")
    t.add_column()
    t.add_column(justify="right")
    unit = "req/s" if v["unit"] == "requests" else "sess/s"
    rows = [(f"all {unit}", h.get("rps", []), _num(v["total"]["rps"])),
            ("all p99", h.get("p99_us", []), _us(v["total"]["p99_us"]))]
    for r in v["cores"]:
        rows.append((f"w{r['index']} {unit}", h.get(f"rps{r['index']}", []), _num(r["rps"])))
    for name, vals, now in rows:
        t.add_row(name, Text(sparkline(vals), style="cyan"), now)
    return Group(Text("last minute", style="bold"), t)


def _upstreams(v) -> Table:
    t = Table(box=box.SIMPLE_HEAD, expand=True, title="upstreams", title_justify="left",
              title_style="bold")
    for c in ("cluster", "server", "health", "req/s", "active", "in-flight", "idle pool",
              "reuse %", "errors", "connect err"):
        t.add_column(c, justify="left" if c in ("cluster", "server", "health") else "right",
                     no_wrap=True)
    style = {"up": "green", "down": "bold red", "unchecked": "dim"}
    for u in v["upstreams"]:
        t.add_row(u["cluster"], u["address"], Text(u["health"], style=style.get(u["health"], "")),
                  _num(u["rps"]), _num(u["active"]), _num(u["in_flight"]), _num(u["idle"]),
                  _num(u["reuse_pct"], 1), _num(u["errors"]), _num(u["connect_errors"]))
    return t


def _tcp(v) -> Text | None:
    tcp = v.get("tcp")
    if not tcp:
        return None
    t = Text()
    t.append("TCP ", style="bold")

    def pq(name):
        s = tcp[name]
        return f"{_us(s['p50_us'])}/{_us(s['p99_us'])}" if s["count"] else DASH
    t.append(f"upstream connect p50/p99 {pq('connect')}  srtt client {pq('srtt_client')} "
             f"upstream {pq('srtt_upstream')}  lifetime client {pq('life_client')} "
             f"upstream {pq('life_upstream')}  retransmits client {tcp['retrans_client']} "
             f"upstream {tcp['retrans_upstream']}  connects failed {tcp['connect_failed']}")
    return t


def _events(v, log_lines) -> Panel:
    t = Text()
    for e in v["events"][-8:]:
        ts = time.strftime("%H:%M:%S", time.localtime(e["time_ms"] / 1000))
        style = "red" if any(w in e["text"] for w in ("down", "fail")) else ""
        t.append(f"{ts}  {e['text']}\n", style=style)
    for line in list(log_lines or [])[-5:]:
        t.append(line + "\n", style="dim")
    if not t.plain:
        t.append("no events yet", style="dim")
    t.rstrip()
    return Panel(t, title="recent events", title_align="left", box=box.ROUNDED)


def render(view: dict, sort_key: str = "core", paused: bool = False, log_lines=None):
    parts = [_header(view, paused, sort_key), _cores(view, sort_key)]
    tcp = _tcp(view)
    if tcp is not None:
        parts.append(tcp)
    parts += [_sparks(view), _upstreams(view), _events(view, log_lines),
              Text("q quit  s sort  p pause", style="dim")]
    return Group(*parts)


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
    def __init__(self):
        self.sort = 0
        self.paused = False
        self.quit = False

    @property
    def sort_key(self):
        return SORTS[self.sort]

    def key(self, ch: str):
        for c in ch.lower():
            if c == "q":
                self.quit = True
            elif c == "s":
                self.sort = (self.sort + 1) % len(SORTS)
            elif c == "p":
                self.paused = not self.paused


# ---- entry points -------------------------------------------------------------------

def _open(pid):
    from .. import shm
    from ..telemetry.view import Collector
    pid = shm.find_pid(pid)
    return Collector(pid)


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
                (console or Console()).print(render(v))
            return 0
        return _live(col, interval, console)
    except FileNotFoundError:
        return 0            # the proxy went away
    finally:
        col.close()


def _live(col, interval, console=None) -> int:
    console = console or Console()
    st = State()
    view = col.sample()
    with Keys() as keys, Live(render(view, st.sort_key), console=console, screen=_screen(console),
                              auto_refresh=False, transient=False) as live:
        next_at = time.monotonic() + interval
        while not st.quit:
            ch = keys.read(min(0.2, max(0.0, next_at - time.monotonic())))
            if ch:
                st.key(ch)
                live.update(render(view, st.sort_key, st.paused), refresh=True)
            if time.monotonic() >= next_at:
                next_at += interval
                if not os.path.exists(f"/proc/{col.pid}"):
                    break
                try:
                    sample = col.sample()
                except (OSError, ValueError):
                    break
                if not st.paused:
                    view = sample
                    live.update(render(view, st.sort_key, st.paused), refresh=True)
    return 0


def _screen(console) -> bool:
    """Full screen (the terminal's alternate screen, like top) on a terminal."""
    return bool(console.is_terminal)


class _RingHandler(logging.Handler):
    def __init__(self, ring):
        super().__init__()
        self.ring = ring

    def emit(self, record):
        with contextlib.suppress(Exception):
            self.ring.append(time.strftime("%H:%M:%S ") + self.format(record))


def run_embedded(rt, interval: float = 1.0, console: Console | None = None) -> int:
    """The proxy and its dashboard in one terminal: the dashboard draws from
    the proxy's main thread through Runtime.serve(tick=...), which keeps
    handling signals, reloads and table collection."""
    from ..telemetry.view import Collector
    interval = max(0.1, float(interval))
    console = console or Console()
    root = logging.getLogger()
    log_lines = deque(maxlen=20)
    saved_handlers = root.handlers[:]
    ring = _RingHandler(log_lines)
    ring.setFormatter(logging.Formatter("%(message)s"))
    root.handlers = [ring]          # log lines go to the events panel, not over the screen
    col = None
    try:
        col = Collector(os.getpid())
        st = State()
        view = col.sample()
        with Keys() as keys, Live(render(view, st.sort_key, log_lines=log_lines), console=console,
                                  screen=_screen(console), auto_refresh=False,
                                  redirect_stderr=False) as live:
            box_ = {"next": time.monotonic() + interval, "view": view}

            def tick():
                ch = keys.read(0)
                if ch:
                    st.key(ch)
                    if st.quit:
                        rt.stop_requested.set()
                        return
                    live.update(render(box_["view"], st.sort_key, st.paused, log_lines), refresh=True)
                if time.monotonic() >= box_["next"]:
                    box_["next"] = time.monotonic() + interval
                    sample = col.sample()
                    if not st.paused:
                        box_["view"] = sample
                        live.update(render(sample, st.sort_key, st.paused, log_lines), refresh=True)
            code = rt.serve(tick=tick)
    finally:
        if col is not None:
            col.close()
        root.handlers = saved_handlers
    for line in log_lines:
        print(f"uproxy[{os.getpid()}]: {line[9:]}", file=sys.stderr)
    return code
