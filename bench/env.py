"""The bench's context: CPUs, tools, paths, and the machine's description."""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_cpus(text: str) -> list:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return sorted(set(out))


def default_cpus() -> tuple:
    """Proxy on the last allowed CPU, everything else (load generator,
    upstream) on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus, cpus
    return [cpus[-1]], cpus[:-1]


class Ctx:
    def __init__(self, args, run_dir):
        self.args = args
        self.root = ROOT
        self.run_dir = run_dir
        dp, dl = default_cpus()
        self.proxy_cpus = parse_cpus(args.proxy_cpus) if args.proxy_cpus else dp
        self.load_cpus = parse_cpus(args.load_cpus) if args.load_cpus else dl
        self.bench_venv = args.bench_venv
        self.bench_bin = os.path.join(self.bench_venv, "bin")
        self.upstream_port = None
        self.iperf_port = None
        self.grpc_upstream_port = None   # the origin's h2c gRPC listener
        self.grpc_request = None         # the calls' request body (a file, for h2load -d)
        self.loadgen = None
        self.rps = None                  # bench/rps.py: lo's steering for the L4 stream runs
        self.our_pids = set()
        self._pip = None

    @property
    def load_mask(self) -> str:
        return ",".join(map(str, self.load_cpus))

    def pinned(self, argv) -> list:
        return ["taskset", "-c", self.load_mask, *argv]

    def pypi_version(self, name: str) -> str:
        if self._pip is None:
            self._pip = {}
            py = os.path.join(self.bench_bin, "python")
            if os.access(py, os.X_OK):
                try:
                    out = subprocess.run([py, "-m", "pip", "list", "--format=json"], capture_output=True,
                                         text=True, timeout=60).stdout
                    self._pip = {p["name"].lower(): p["version"] for p in json.loads(out or "[]")}
                except (OSError, ValueError, subprocess.SubprocessError):
                    pass
        return self._pip.get(name.lower(), "")


def tool(name: str) -> str | None:
    return shutil.which(name)


def raise_nofile(want=65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (want, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(target, soft), max(target, hard)))
            return max(target, soft)
        except (ValueError, OSError):
            continue
    return soft


def _read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def pmu() -> dict:
    """Whether perf can count hardware events here."""
    have_dev = os.path.exists("/sys/bus/event_source/devices/cpu") or \
        os.path.exists("/sys/bus/event_source/devices/cpu_core")
    perf = tool("perf")
    if not perf:
        return {"available": False, "why": "perf is not installed (Debian: linux-perf)"}
    try:
        r = subprocess.run([perf, "stat", "-x,", "-e", "cycles,instructions", "true"],
                           capture_output=True, text=True, timeout=30)
        lines = [l for l in r.stderr.splitlines() if "," in l]
    except (OSError, subprocess.SubprocessError) as e:
        return {"available": False, "why": f"perf failed: {e}"}
    if not lines or any("<not supported>" in l or "<not counted>" in l for l in lines):
        return {"available": False,
                "why": "no PMU: perf stat reports cycles and instructions as <not supported> "
                       f"(no hardware counters exposed{'' if have_dev else '; /sys/bus/event_source/devices has no cpu PMU'})"}
    return {"available": True, "why": ""}


def machine() -> dict:
    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
    virt = ""
    try:
        virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    if not virt and "hypervisor" in _read("/proc/cpuinfo"):
        virt = "a hypervisor (cpuinfo flag)"
    return {
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mib": mem,
        "virtualization": virt,
        "os": dict(l.split("=", 1) for l in _read("/etc/os-release").splitlines() if "=" in l).get(
            "PRETTY_NAME", "").strip('"'),
        "sysctl": {k: _read(f"/proc/sys/{k.replace('.', '/')}") for k in
                   ("net.ipv4.tcp_tw_reuse", "net.ipv4.ip_local_port_range", "net.core.somaxconn")},
    }
