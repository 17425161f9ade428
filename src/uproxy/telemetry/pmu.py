"""Is there a hardware PMU, and which perf events do the CPU columns use?

Many VMs have no PMU: perf_event_open of a hardware event fails with
ENOENT or EOPNOTSUPP, and /sys/bus/event_source/devices has no "cpu" (or
"cpu_core", "armv8_pmuv3...") device. Then the dashboard says "no PMU on this
host" and shows software counters, never a zero that looks measured.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

PERF_TYPE_HARDWARE, PERF_TYPE_SOFTWARE = 0, 1

# (name, type, config): the order is the order of wstat.pmu[] in bpf/cpu.c
HARDWARE = [("cycles", 0, 0), ("instructions", 0, 1), ("cache_references", 0, 2),
            ("cache_misses", 0, 3), ("branch_instructions", 0, 4), ("branch_misses", 0, 5)]
SOFTWARE = [("cpu_clock_ns", 1, 0), ("page_faults", 1, 2)]

_NR = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319, "s390x": 331}
_SYSFS = "/sys/bus/event_source/devices"


def perf_event_open(typ: int, config: int, pid: int = 0, cpu: int = -1) -> int:
    """A counting perf event's fd, or -errno."""
    nr = _NR.get(platform.machine())
    if nr is None:
        return -errno.ENOSYS
    # struct perf_event_attr, PERF_ATTR_SIZE_VER0 (64 bytes): type, size,
    # config, sample_period, sample_type, read_format, flags (bit 0
    # disabled, bit 5 exclude_kernel, bit 6 exclude_hv), wakeup, bp_type, bp_addr
    flags = (1 << 0) | (1 << 5) | (1 << 6)
    attr = struct.pack("<IIQQQQQIIQ", typ, 64, config, 0, 0, 0, flags, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, 64)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), buf, ctypes.c_int(pid), ctypes.c_int(cpu),
                      ctypes.c_int(-1), ctypes.c_ulong(0))
    if fd < 0:
        return -ctypes.get_errno()
    return fd


def sysfs_devices() -> list:
    try:
        return sorted(os.listdir(_SYSFS))
    except OSError:
        return []


def detect() -> dict:
    """{"pmu": bool, "why": str, "devices": [...]}; "why" says how it was decided."""
    devices = sysfs_devices()
    cpu_dev = [d for d in devices if d in ("cpu", "cpu_core", "cpu_atom") or d.startswith("armv")]
    fd = perf_event_open(PERF_TYPE_HARDWARE, 0)
    if fd >= 0:
        os.close(fd)
        return {"pmu": True, "why": "perf_event_open(PERF_TYPE_HARDWARE cycles) works",
                "devices": devices}
    err = -fd
    if err in (errno.EACCES, errno.EPERM) and cpu_dev:
        return {"pmu": True, "why": f"PMU device {cpu_dev[0]} exists, but perf_event_open was "
                                    f"refused ({errno.errorcode.get(err, err)}): run as root or "
                                    f"lower kernel.perf_event_paranoid", "devices": devices}
    return {"pmu": False,
            "why": f"perf_event_open(PERF_TYPE_HARDWARE cycles) failed with "
                   f"{errno.errorcode.get(err, err)} and {_SYSFS} has no CPU PMU "
                   f"({', '.join(devices) or 'nothing'})", "devices": devices}


def events(pmu: bool) -> list:
    return HARDWARE if pmu else SOFTWARE
