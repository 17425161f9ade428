"""Per-thread software counters from /proc: what the dashboard can show
without root or bcc (CPU time, context switches, page faults, current CPU).
Read at the dashboard's interval from /proc/<pid>/task/<tid>; nothing is
added to the proxy."""
from __future__ import annotations

import os

HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread(pid: int, tid: int) -> dict | None:
    base = f"/proc/{pid}/task/{tid}"
    try:
        with open(base + "/stat") as f:
            stat = f.read()
        with open(base + "/status") as f:
            status = f.read()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    # fields after "(comm)": state is rest[0], i.e. field 3
    minflt, majflt = int(rest[7]), int(rest[9])
    utime, stime = int(rest[11]), int(rest[12])
    processor = int(rest[36]) if len(rest) > 36 else -1
    vol = invol = 0
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            vol = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches:"):
            invol = int(line.split()[1])
    run_ns = None
    try:
        # nanoseconds on a CPU (the scheduler's own sum_exec_runtime): finer
        # than utime + stime, which are counted in clock ticks
        with open(base + "/schedstat") as f:
            run_ns = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu_s": (utime + stime) / HZ, "run_ns": run_ns, "user_s": utime / HZ, "sys_s": stime / HZ,
            "vol_switches": vol, "invol_switches": invol,
            "page_faults": minflt + majflt, "processor": processor}


def cpu_times() -> dict:
    """/proc/stat per CPU: {cpu: {"softirq_s": .., "total_s": ..}}."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    p = line.split()
                    v = [int(x) for x in p[1:]]
                    out[int(p[0][3:])] = {"softirq_s": v[6] / HZ, "total_s": sum(v[:8]) / HZ}
    except OSError:
        pass
    return out
