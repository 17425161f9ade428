"""Loading the eBPF probes (bpf/*.c) with bcc, filtered to one proxy.

Each probe set is one idea in one file of bpf/: io_uring ("uring"),
scheduler ("sched"), softirq time ("softirq"), TCP ("tcp") and CPU counters
("cpu"). The sets are compiled together into one program (one clang run)
and attached one probe at a time, so a probe this kernel lacks costs only
its own set; each set reports its status. Tracepoint records are built from
this kernel's format files (tpformat), and the one struct offset needed
(task_struct.pid) comes from its BTF (btf). Only tracepoints, raw
tracepoints and perf events are used: no kprobes, no fentry.

Everything the probes count lands in BPF maps that this process reads at
the dashboard's interval; the proxy itself is not touched.
"""
from __future__ import annotations

import contextlib
import ctypes as ct
import os
import platform
import sys
import warnings

from . import btf, pmu as pmu_mod, tpformat

# bcc 0.26 warns about str names where it wants bytes; the names are ASCII
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"bcc(\.|$)")

SETS = ("uring", "sched", "softirq", "tcp", "cpu")

# set -> (file, tracepoints [(category, event, fn)], raw tracepoints [(tp, fn)])
_URING_TPS = [("io_uring", "io_uring_submit_req", "uring_submit"),
              ("io_uring", "io_uring_complete", "uring_complete"),
              ("io_uring", "io_uring_queue_async_work", "uring_punt")]
_DEF = {
    "uring": ("uring.c", _URING_TPS, []),
    "sched": ("sched.c", [], [("sched_wakeup", "sched_wakeup"),
                              ("sched_wakeup_new", "sched_wakeup_new"),
                              ("sched_switch", "sched_switch"),
                              ("sched_migrate_task", "sched_migrate")]),
    "softirq": ("softirq.c", [], [("softirq_entry", "softirq_entry"),
                                  ("softirq_exit", "softirq_exit")]),
    "tcp": ("tcp.c", [("sock", "inet_sock_set_state", "tcp_state"),
                      ("tcp", "tcp_retransmit_skb", "tcp_retrans")],
            [("tcp_probe", "tcp_rtt")]),
    "cpu": ("cpu.c", [], [("sched_switch", "cpu_switch")]),
}
# io_uring's tracepoints take (req) / (ctx, req, cqe) / (req, rw) since 6.0:
# there they are attached raw, with io_kiocb offsets from BTF.


def _submit_event() -> str:
    """The submit tracepoint is io_uring_submit_req since Linux 6.4 and
    io_uring_submit_sqe before (the same arguments raw since 6.0; before
    that, a format with ctx, req and opcode fields too)."""
    return ("io_uring_submit_req" if tpformat.exists("io_uring", "io_uring_submit_req")
            else "io_uring_submit_sqe")


def _tps(s) -> list:
    if s != "uring":
        return _DEF[s][1]
    return [("io_uring", _submit_event() if ev == "io_uring_submit_req" else ev, fn)
            for _, ev, fn in _URING_TPS]
CPU_TICK_HZ = 100
# What runs per packet, per io_uring operation or per context switch:
# duty-cycled when asked (the per-connection TCP tracepoints stay on, they
# keep the connection tracking whole).
HOT = {"uring", "softirq", "sched", "cpu", ("tcp", "tcp_probe")}
# ...except the probes of rare events, which stay attached so that their
# counts are whole per interval: a punt to io-wq (splice, or an operation
# that would block) and a worker's migration (workers are pinned) cost one
# per-CPU increment each, and no figure of theirs is ever scaled.
ALWAYS = {("uring", "io_uring_queue_async_work"), ("sched", "sched_migrate_task")}
SOFTIRQS = ["hi", "timer", "net_tx", "net_rx", "block", "irq_poll", "tasklet", "sched",
            "hrtimer", "rcu"]


def _kver() -> tuple:
    from ..features import kernel_version
    return kernel_version()


def _has_offsets(*pairs) -> bool:
    try:
        for s, m in pairs:
            btf.offset(s, m)
        return True
    except btf.BTFError:
        return False


def bpf_dir() -> str:
    env = os.environ.get("UPROXY_BPF_DIR")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "bpf"),
                 os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(here))), "bpf")):
        if os.path.exists(os.path.join(cand, "common.h")):
            return cand
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(here))), "bpf")


def headers() -> dict:
    """Kernel headers bcc compiles against: {"ok", "path", "why"}."""
    rel = platform.release()
    build = f"/lib/modules/{rel}/build"
    source = f"/lib/modules/{rel}/source"
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return {"ok": True, "path": "/sys/kernel/kheaders.tar.xz", "why": "the kernel's own (CONFIG_IKHEADERS)"}
    if not os.path.isdir(os.path.join(build, "include")):
        return {"ok": False, "path": build,
                "why": f"no kernel headers at {build}: run sudo scripts/setup (it installs "
                       f"the distribution's nearest linux-headers and links them there)"}
    kconfig = [p for p in (os.path.join(source, "include/linux/kconfig.h"),
                           os.path.join(build, "include/linux/kconfig.h")) if os.path.exists(p)]
    if not kconfig:
        return {"ok": False, "path": build,
                "why": f"{build} has no include/linux/kconfig.h and {source} is not the "
                       f"matching -common headers: run sudo scripts/setup to relink them"}
    real = os.path.realpath(build)
    mine = os.path.basename(real).replace("linux-headers-", "")
    note = "" if mine == rel else f" (headers of {mine}; probes read tracepoint formats and BTF, not struct layouts)"
    return {"ok": True, "path": real, "why": f"{real}{note}"}


def availability() -> dict:
    """Can this process load the probes? {"ok", "why", "fix"}."""
    if os.environ.get("UPROXY_NO_BPF"):
        return {"ok": False, "why": "eBPF probes switched off (UPROXY_NO_BPF is set)",
                "fix": "unset UPROXY_NO_BPF"}
    if os.geteuid() != 0:
        return {"ok": False, "why": "not root: loading eBPF probes needs root (CAP_BPF and CAP_PERFMON)",
                "fix": "run it as root: sudo uproxy top"}
    try:
        import bcc  # noqa: F401
    except Exception as e:
        return {"ok": False, "why": f"bcc is not importable ({e.__class__.__name__}: {e})",
                "fix": "install Debian's python3-bpfcc and link it into the venv: sudo scripts/setup"}
    h = headers()
    if not h["ok"]:
        return {"ok": False, "why": h["why"], "fix": "sudo scripts/setup"}
    if not tpformat.mount_tracefs():
        return {"ok": False, "why": "tracefs is not mounted and could not be mounted",
                "fix": "mount -t tracefs nodev /sys/kernel/tracing"}
    try:
        btf.kernel()
    except btf.BTFError as e:
        return {"ok": False, "why": str(e), "fix": "a kernel built with CONFIG_DEBUG_INFO_BTF=y"}
    return {"ok": True, "why": "", "fix": ""}


@contextlib.contextmanager
def _quiet_stderr():
    """bcc and clang print to fd 2; keep it off a dashboard's screen (the
    text is kept for error messages)."""
    import tempfile
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        box = {"text": ""}
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            box["text"] = tmp.read().decode(errors="replace")[-4000:]


def _lines(text: str, n=3) -> str:
    keep = [l for l in text.splitlines() if "error" in l.lower() or "fail" in l.lower()]
    return " | ".join((keep or text.splitlines() or [""])[-n:]).strip()


class Probes:
    """The probes of one proxy. `status` says per set: on / off / error and why."""

    def __init__(self, pid: int, workers: list, lports=(), uports=(), sets=SETS, pmu=None,
                 duty: float = 1.0, period: float = 0.25):
        """duty < 1: the per-packet and per-operation probes (io_uring,
        tcp_probe, softirq) are attached for duty*period of every period
        only, and rates are taken over the time they were attached."""
        self.pid = pid
        self.workers = [(int(w["index"]), int(w["tid"])) for w in workers]
        self.nw = max(1, len(self.workers))
        self.lports, self.uports = sorted(set(lports)), sorted(set(uports))
        self.sets = [s for s in SETS if s in sets]
        self.pmu = pmu if pmu is not None else pmu_mod.detect()
        self.events = pmu_mod.events(self.pmu["pmu"])
        self.status = {s: {"state": "off", "why": "not requested"} for s in SETS}
        self.objects = []        # (BPF object, [sets in it])
        self.uring_raw = _kver() >= (6, 0) and _has_offsets(("io_kiocb", "ctx"), ("io_kiocb", "opcode"))
        self._raw_fds = []       # raw tracepoint links we hold ourselves
        self.duty, self.period = max(0.01, min(1.0, duty)), max(0.05, period)
        self._cycled = []        # [link]: {"set", "tp", "prog", "fd"}
        self._fixed = []         # raw links never cycled: {"set", "tp", "prog", "fd"}
        self._tp_links = []      # (BPF object, tracepoint, fn) attached through bcc
        self._perf = []          # the cpu set: (BPF object, [(ev table, type, config)]) per object
        self.suspended = False
        self._on_ns = {s: 0 for s in SETS}      # time each set's cycled links were attached
        self._on_since = None
        self._lock = __import__("threading").Lock()
        self._stop = __import__("threading").Event()
        self._thread = None
        self._load()

    # ---- building the program ----------------------------------------------
    def _defines(self) -> str:
        if self.uring_raw:
            pre = [f"#define URING_RAW 1",
                   f"#define IO_KIOCB_CTX_OFF {btf.offset('io_kiocb', 'ctx')}",
                   f"#define IO_KIOCB_OPCODE_OFF {btf.offset('io_kiocb', 'opcode')}"]
        else:
            pre = []
        # sampling: one io_uring request in URING_SAMPLE is timed, one TCP
        # segment in TCP_SAMPLE has its RTT read (UPROXY_*_SAMPLE to change)
        # (duty-cycled, the probes already run a tenth of the time: time more)
        us, ts = (8, 8) if self.duty >= 1.0 else (1, 2)
        pre += [f"#define URING_SAMPLE {max(1, int(os.environ.get('UPROXY_URING_SAMPLE', us)))}",
                f"#define TCP_SAMPLE {max(1, int(os.environ.get('UPROXY_TCP_SAMPLE', ts)))}"]
        pre.append(f"#define TP_SUBMIT_T struct tp_{_submit_event()}")
        out = pre + [f"#define NW {self.nw}", f"#define TGID {self.pid}",
               f"#define TASK_PID_OFF {btf.offset('task_struct', 'pid')}",
               f"#define NEV {len(self.events)}",
               # sched_switch(preempt, prev, next, prev_state) since 5.18
               "#define SWITCH_HAS_PREV_STATE 1" if _kver() >= (5, 18) else "",
               f"#define SK_NUM_OFF {btf.offset('sock_common', 'skc_num')}",
               f"#define SK_DPORT_OFF {btf.offset('sock_common', 'skc_dport')}",
               f"#define TP_SRTT_OFF {btf.offset('tcp_sock', 'srtt_us')}",
               "#include <uapi/linux/bpf_perf_event.h>"]
        return "\n".join(out) + "\n"

    def _source(self, sets) -> str:
        d = bpf_dir()
        parts = [self._defines()]
        for s in sets:
            if s == "uring" and self.uring_raw:
                continue
            for cat, ev, _ in _tps(s):
                parts.append(tpformat.c_struct(cat, ev))
        with open(os.path.join(d, "common.h")) as f:
            parts.append(f.read())
        for s in sets:
            with open(os.path.join(d, _DEF[s][0])) as f:
                text = f.read()
            if s == "cpu":
                ncpu = os.cpu_count() or 1
                decl = "".join(f"BPF_PERF_ARRAY(ev{i}, {max(ncpu, 1) * 2});\n"
                               for i in range(len(self.events)))
                reads = "".join(
                    f"if (ev{i}.perf_counter_value(BPF_F_CURRENT_CPU, &pv, sizeof(pv)) == 0) "
                    f"vals[{i}] = pv.counter;\n    " for i in range(len(self.events)))
                text = decl + text.replace("/*@READ_EVENTS@*/", reads)
            parts.append(f"/* ---- {_DEF[s][0]} ---- */\n" + text)
        return "\n".join(parts)

    def _missing(self, s) -> str | None:
        for cat, ev, _ in _tps(s):
            if not tpformat.exists(cat, ev):
                return f"tracepoint {cat}:{ev} is not in this kernel"
        return None

    def _compile(self, sets):
        from bcc import BPF
        with _quiet_stderr() as err:
            try:
                b = BPF(text=self._source(sets).encode(), cflags=["-w"])
            except Exception as e:
                b, exc = None, e
        if b is None:
            raise RuntimeError(f"{exc}: {_lines(err['text'])}")
        return b

    def _load(self):
        want = []
        for s in self.sets:
            why = self._missing(s)
            if why:
                self.status[s] = {"state": "error", "why": why}
            else:
                want.append(s)
        if not want:
            return
        groups = []
        try:
            groups.append((self._compile(want), want))
        except Exception as e:
            first = str(e)
            for s in want:       # find which set does not compile here
                try:
                    groups.append((self._compile([s]), [s]))
                except Exception as e1:
                    self.status[s] = {"state": "error", "why": f"does not compile: {e1}"}
            if not groups:
                self.status[want[0]]["why"] += f" (together: {first})"
        for b, sets in groups:
            self._fill_maps(b, sets)
            live = []
            for s in sets:
                ok, why = self._attach(b, s)
                self.status[s] = {"state": "on" if ok else "error", "why": why}
                if ok:
                    live.append(s)
            if live:
                self.objects.append((b, live))
            else:
                b.cleanup()
        self.start_cycling()

    def _fill_maps(self, b, sets):
        w = b[b"workers"]
        for idx, tid in self.workers:
            w[ct.c_uint32(tid)] = ct.c_uint32(idx)
        if "tcp" in sets:
            for p in self.lports:
                b[b"lports"][ct.c_uint16(p)] = ct.c_uint8(1)
            for p in self.uports:
                b[b"uports"][ct.c_uint16(p)] = ct.c_uint8(1)

    def _attach(self, b, s):
        done = []
        try:
            with _quiet_stderr() as err:
                tps, raws = _tps(s), _DEF[s][2]
                if s == "uring" and self.uring_raw:
                    tps, raws = [], [(ev, fn) for _, ev, fn in _tps(s)]
                for cat, ev, fn in tps:
                    b.attach_tracepoint(tp=f"{cat}:{ev}".encode(), fn_name=fn.encode())
                    done.append(("tp", f"{cat}:{ev}"))
                    self._tp_links.append((b, f"{cat}:{ev}".encode(), fn.encode(), s))
                for tp, fn in raws:
                    fd = self._attach_raw(b, tp, fn)
                    done.append(("raw", fd))
                    link = {"set": s, "tp": tp, "prog": b.funcs[fn.encode()].fd, "fd": fd}
                    if self.duty < 1.0 and (s in HOT or (s, tp) in HOT) and (s, tp) not in ALWAYS:
                        self._cycled.append(link)
                    else:
                        self._fixed.append(link)
                if s == "cpu":
                    evs = [(b[f"ev{i}".encode()], typ, cfg) for i, (_, typ, cfg) in enumerate(self.events)]
                    for tbl, typ, cfg in evs:
                        tbl.open_perf_event(typ, cfg)
                    b.attach_perf_event(ev_type=pmu_mod.PERF_TYPE_SOFTWARE, ev_config=0,
                                        fn_name=b"cpu_tick", sample_freq=CPU_TICK_HZ)
                    done.append(("perf", None))
                    self._perf.append((b, evs))
        except Exception as e:
            self._cycled = [c for c in self._cycled if c["set"] != s]
            self._fixed = [c for c in self._fixed if c["set"] != s]
            self._tp_links = [t for t in self._tp_links if t[3] != s]
            for kind, name in done:
                with contextlib.suppress(Exception):
                    if kind == "tp":
                        b.detach_tracepoint(name.encode())
                    elif kind == "raw":
                        os.close(name)
                        self._raw_fds.remove(name)
                    else:
                        b.detach_perf_event(pmu_mod.PERF_TYPE_SOFTWARE, 0)
            return False, f"{e}: {_lines(err['text'])}".rstrip(": ")
        what = {"uring": "io_uring " + ("raw tracepoints" if self.uring_raw else "tracepoints"), "sched": "sched raw tracepoints",
                "softirq": "softirq raw tracepoints", "tcp": "sock/tcp tracepoints, tcp_probe raw",
                "cpu": ("hardware" if self.pmu["pmu"] else "software") + " perf events: "
                       + ", ".join(n for n, _, _ in self.events)}[s]
        return True, what

    def start_cycling(self):
        """Begin the duty cycle (called once the sets are attached)."""
        if not self._cycled or self._thread:
            return
        self._on_since = __import__("time").monotonic_ns()
        self._thread = __import__("threading").Thread(target=self._cycle, name="uproxy-probe-duty",
                                                      daemon=True)
        self._thread.start()

    def _set_links(self, on: bool):
        """Open or close an attach window. The programs return at once while
        the detached flag is set, so attaching happens behind the flag and the
        window (what rates are divided by) opens after the last attach and
        closes before the first detach. Closing a raw tracepoint waits for an
        RCU grace period: the closes run in parallel threads."""
        import threading as _th
        import time as _t
        from bcc import lib
        with self._lock:
            if on:
                for c in self._cycled:
                    if c["fd"] is None:
                        fd = lib.bpf_attach_raw_tracepoint(c["prog"], c["tp"].encode())
                        c["fd"] = fd if fd >= 0 else None
                now = _t.monotonic_ns()
                self._mark_window(now)          # clears the detached flag
                self._on_since = now
                return
            self._mark_detached(True)
            now = _t.monotonic_ns()
            if self._on_since is not None:
                for st in {c["set"] for c in self._cycled}:
                    self._on_ns[st] += now - self._on_since
                self._on_since = None
            closers = []
            for c in self._cycled:
                if c["fd"] is None:
                    continue
                if c["fd"] in self._raw_fds:
                    self._raw_fds.remove(c["fd"])
                th = _th.Thread(target=os.close, args=(c["fd"],), daemon=True)
                th.start()
                closers.append(th)
                c["fd"] = None
            for th in closers:
                th.join()

    def _mark_window(self, ns: int):
        for b, _ in self.objects:
            with contextlib.suppress(Exception):
                b[b"window"][ct.c_int(0)] = ct.c_uint64(ns)
        self._mark_detached(False)

    def _mark_detached(self, yes: bool):
        for b, _ in self.objects:
            with contextlib.suppress(Exception):
                b[b"window"][ct.c_int(1)] = ct.c_uint64(1 if yes else 0)

    def _cycle(self):
        on_s = self.duty * self.period
        # already attached: stay on for the first window
        while not self._stop.wait(on_s):
            self._set_links(False)
            if self._stop.wait(self.period - on_s):
                break
            self._set_links(True)

    def suspend(self):
        """Detach every probe, cycled or not, and close the cpu set's perf
        events: the proxy then runs as with no dashboard attached, while the
        programs stay loaded, so that resume() needs no compile (3 s of CPU).
        What bench/probe_cost.py switches between, inside one load run."""
        if self.suspended:
            return
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._thread = None
        self._set_links(False)
        for c in self._fixed:
            if c["fd"] is not None:
                if c["fd"] in self._raw_fds:
                    self._raw_fds.remove(c["fd"])
                os.close(c["fd"])
                c["fd"] = None
        for b, tp, _, _ in self._tp_links:
            with contextlib.suppress(Exception):
                b.detach_tracepoint(tp)
        for b, evs in self._perf:
            with contextlib.suppress(Exception):
                b.detach_perf_event(pmu_mod.PERF_TYPE_SOFTWARE, 0)
            for tbl, _, _ in evs:
                for key in list(tbl._open_key_fds):
                    del tbl[key]
        self.suspended = True

    def resume(self):
        """Attach again what suspend() detached, and restart the duty cycle
        as the dashboard runs it (the cycled links open a window at once)."""
        from bcc import lib
        if not self.suspended:
            return
        for b, evs in self._perf:
            for tbl, typ, cfg in evs:
                tbl.open_perf_event(typ, cfg)
            b.attach_perf_event(ev_type=pmu_mod.PERF_TYPE_SOFTWARE, ev_config=0,
                                fn_name=b"cpu_tick", sample_freq=CPU_TICK_HZ)
        for b, tp, fn, _ in self._tp_links:
            b.attach_tracepoint(tp=tp, fn_name=fn)
        for c in self._fixed:
            fd = lib.bpf_attach_raw_tracepoint(c["prog"], c["tp"].encode())
            if fd < 0:
                raise RuntimeError(f"cannot attach raw tracepoint {c['tp']} again: "
                                   f"{os.strerror(ct.get_errno() or 22)}")
            c["fd"] = fd
            self._raw_fds.append(fd)
        self._set_links(True)
        self.suspended = False
        self._stop = __import__("threading").Event()
        self.start_cycling()

    def on_seconds(self) -> dict:
        """Seconds each set's probes have been attached (all the time for
        the sets that are not duty-cycled)."""
        import time as _t
        with self._lock:
            now = _t.monotonic_ns()
            extra = (now - self._on_since) if self._on_since is not None else 0
            cycled = {c["set"] for c in self._cycled}
            return {s: ((self._on_ns[s] + extra) / 1e9 if s in cycled else None) for s in SETS}

    def _attach_raw(self, b, tp, fn) -> int:
        """bcc keeps one program per raw tracepoint name; two sets (sched
        and cpu) both want sched_switch, so the link fds are kept here."""
        from bcc import BPF, lib
        f = b.load_func(fn.encode(), BPF.RAW_TRACEPOINT)
        fd = lib.bpf_attach_raw_tracepoint(f.fd, tp.encode())
        if fd < 0:
            raise RuntimeError(f"cannot attach raw tracepoint {tp}: {os.strerror(ct.get_errno() or 22)}")
        self._raw_fds.append(fd)
        return fd

    # ---- reading ---------------------------------------------------------------
    def on(self, s) -> bool:
        return self.status.get(s, {}).get("state") == "on"

    def read(self) -> dict:
        """Cumulative values since the probes were attached."""
        workers = [dict(_zero_worker(len(self.events))) for _ in range(self.nw)]
        g = _zero_global()
        softirq = {}
        for b, sets in self.objects:
            wt = b[b"wstats"]
            for i in range(self.nw):
                v = wt[ct.c_int(i)]
                _add_worker(workers[i], v, len(self.events))
            if "uring" in sets:
                t = b[b"uring_cqes"]
                for i in range(self.nw):
                    workers[i]["uring_completes"] += sum(int(x) for x in t[ct.c_int(i)])
            if "tcp" in sets:
                _add_global(g, b[b"gstats"][ct.c_int(0)])
            if "softirq" in sets:
                t = b[b"softirq_ns"]
                for vec in range(len(SOFTIRQS)):
                    per_cpu = t[ct.c_int(vec)]
                    for cpu, ns in enumerate(per_cpu):
                        if ns:
                            softirq.setdefault(cpu, {})
                            softirq[cpu][SOFTIRQS[vec]] = softirq[cpu].get(SOFTIRQS[vec], 0) + int(ns)
        return {"workers": workers, "tcp": g, "softirq_ns": softirq, "on_s": self.on_seconds(),
                "events": [n for n, _, _ in self.events]}

    def prog_stats(self) -> dict:
        """{program: (runs, ns)} from the kernel's own accounting
        (/proc/self/fdinfo of each program; counts only while
        kernel.bpf_stats_enabled is 1)."""
        out = {}
        for b, _ in self.objects:
            for name, fn in getattr(b, "funcs", {}).items():
                try:
                    with open(f"/proc/self/fdinfo/{fn.fd}") as f:
                        info = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
                    runs, ns = int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0))
                except (OSError, ValueError):
                    continue
                key = name.decode() if isinstance(name, bytes) else name
                r0, n0 = out.get(key, (0, 0))
                out[key] = (r0 + runs, n0 + ns)
        return out

    def close(self):
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        with self._lock:
            for c in self._cycled:
                if c["fd"] is not None and c["fd"] not in self._raw_fds:
                    os.close(c["fd"])
                c["fd"] = None
        for fd in self._raw_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._raw_fds = []
        for _, evs in self._perf:       # while their maps are open (bcc would try after)
            for tbl, _, _ in evs:
                for key in list(tbl._open_key_fds):
                    with contextlib.suppress(Exception):
                        del tbl[key]
        self._perf = []
        for b, _ in self.objects:
            with contextlib.suppress(Exception):
                b.cleanup()
        self.objects = []


_WSCALARS = ("uring_submits", "uring_completes", "uring_punts", "uring_lat_ns", "uring_timed",
             "rq_waits", "rq_ns", "invol", "vol", "migrations", "pmu_ns")
_GSCALARS = ("est_client", "est_upstream", "connects", "connect_failed", "ended_client",
             "ended_upstream", "retrans_client", "retrans_upstream", "rtt_client", "rtt_upstream")
_GHISTS = ("hist_connect", "hist_life_client", "hist_life_upstream", "hist_rtt_client",
           "hist_rtt_upstream")


def _zero_worker(nev):
    d = {k: 0 for k in _WSCALARS}
    d.update(pmu=[0] * nev, op_done=[0] * 64, op_lat_ns=[0] * 64, op_punts=[0] * 64,
             hist_uring=[0] * 256, hist_rq=[0] * 256)
    return d


def _add_worker(d, v, nev):
    for k in _WSCALARS:
        d[k] += int(getattr(v, k))
    for i in range(nev):
        d["pmu"][i] += int(v.pmu[i])
    for k in ("op_done", "op_lat_ns", "op_punts", "hist_uring", "hist_rq"):
        arr = getattr(v, k)
        acc = d[k]
        for i, n in enumerate(arr):
            if n:
                acc[i] += int(n)


def _zero_global():
    d = {k: 0 for k in _GSCALARS}
    d.update({k: [0] * 256 for k in _GHISTS})
    return d


def _add_global(d, v):
    for k in _GSCALARS:
        d[k] += int(getattr(v, k))
    for k in _GHISTS:
        arr = getattr(v, k)
        for i, n in enumerate(arr):
            if n:
                d[k][i] += int(n)


def listen_ports(pid: int) -> list:
    """TCP ports the process listens on, from /proc/<pid>/fd and /proc/net/tcp{,6}."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if t.startswith("socket:["):
                inodes.add(t[8:-1])
    except OSError:
        return []
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    p = line.split()
                    if p[3] == "0A" and p[9] in inodes:
                        ports.add(int(p[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return sorted(ports)


def upstream_ports(snapshot: dict) -> list:
    out = set()
    for s in snapshot.get("servers", []):
        try:
            out.add(int(s["address"].rsplit(":", 1)[1]))
        except (ValueError, IndexError):
            pass
    return sorted(out)
