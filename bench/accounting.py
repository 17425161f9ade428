"""What a process costs, from the kernel's own accounting in /proc.

CPU: utime + stime of /proc/PID/stat, which covers every thread of the
process, live or exited (and io_uring's io-wq and sqpoll threads, which are
threads of the process). Memory: VmRSS of /proc/PID/status. Both are summed
over a contender's process tree (nginx's master and worker, for example).

The machine: /proc/stat (all CPUs, including steal), /proc/loadavg, and the
CPU time of every other process, so that a round disturbed by someone else's
work can be flagged.
"""
from __future__ import annotations

import os
import time

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    return s[s.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    f = _stat_fields(pid)
    if not f:
        return 0.0
    return (int(f[11]) + int(f[12])) / TICK


def children_map() -> dict:
    kids: dict = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(int(d))
        if f:
            kids.setdefault(int(f[1]), []).append(int(d))
    return kids


def tree(pid: int) -> list:
    """pid and all its descendants."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_of(pids) -> float:
    return sum(cpu_seconds(p) for p in pids)


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_of(pids) -> int:
    return sum(rss_kib(p) for p in pids)


def fd_count(pids) -> int:
    n = 0
    for p in pids:
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


def threads_of(pids) -> int:
    n = 0
    for p in pids:
        try:
            n += len(os.listdir(f"/proc/{p}/task"))
        except OSError:
            pass
    return n


# ---- the machine --------------------------------------------------------

def proc_stat() -> dict:
    """Aggregate jiffies from /proc/stat's first line."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {n: int(v) for n, v in zip(names, parts[1:1 + len(names)])}


PF_KTHREAD = 0x00200000


def all_process_cpu() -> dict:
    """pid -> (utime+stime seconds, is a kernel thread, name), for every
    process on the machine."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    s = fh.read()
            except OSError:
                continue
            name = s[s.index("(") + 1:s.rindex(")")]
            f = s[s.rindex(")") + 2:].split()
            out[int(d)] = ((int(f[11]) + int(f[12])) / TICK, bool(int(f[6]) & PF_KTHREAD), name)
    return out


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Window:
    """CPU of the processes under test and of everything else over one run.

    ours: pid lists whose CPU is attributed to the bench (proxy, load
    generator, upstream); their descendants count too. Everything else that
    ran is 'other' CPU: someone else's load on the machine."""

    def __init__(self, proxy_pids, our_pids):
        self.proxy_pids = list(proxy_pids)
        self.our_pids = set(our_pids) | set(self.proxy_pids) | {os.getpid()}

    def start(self):
        self.t0 = time.monotonic()
        self.load0 = loadavg()
        self.stat0 = proc_stat()
        self.all0 = all_process_cpu()
        self.proxy0 = cpu_of(self.proxy_pids)
        return self

    def stop(self, extra_ours=()) -> dict:
        proxy1 = cpu_of(self.proxy_pids)
        all1 = all_process_cpu()
        stat1 = proc_stat()
        t1 = time.monotonic()
        wall = t1 - self.t0
        ours = self.our_pids | set(extra_ours)
        # A process that started during the window counts from zero; one
        # that ended during it is lost (its parent's cutime gets it later).
        other = kernel = 0.0
        top = []
        for pid, (c, kthread, name) in all1.items():
            if pid in ours:
                continue
            delta = max(0.0, c - self.all0.get(pid, (0.0,))[0])
            if kthread:
                kernel += delta       # ksoftirqd, kworkers: mostly the bench's own traffic
            else:
                other += delta
                if delta >= 0.05:
                    top.append((round(delta, 2), f"{name}[{pid}]"))
        top.sort(reverse=True)
        d = {k: stat1[k] - self.stat0[k] for k in stat1}
        total = sum(d.values()) or 1
        ncpu = os.cpu_count() or 1
        return {
            "wall_s": wall,
            "proxy_cpu_s": proxy1 - self.proxy0,
            "other_cpu_s": other,
            "other_cpu_frac": other / (wall * ncpu) if wall > 0 else 0.0,
            "other_top": [f"{n} {c}s" for c, n in top[:5]],
            "kthread_cpu_s": kernel,
            "steal_frac": d["steal"] / total,
            "busy_frac": 1 - (d["idle"] + d["iowait"]) / total,
            "loadavg_start": self.load0,
            "loadavg_end": loadavg(),
        }
