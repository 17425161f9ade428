"""`uproxy doctor`: what this host offers uproxy, and what to do about what
it lacks. Each check has a status — ok, warn or missing — and, when not ok,
what to do. The exit code is 0 when uproxy can run here (warnings and
missing extras such as eBPF or a PMU allowed) and 1 when it cannot.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import sys

from . import __version__
from . import features as feat

# io_uring opcodes the C core uses (IORING_OP_* names without the prefix)
NEEDED_OPS = ("ACCEPT", "RECV", "SEND", "CONNECT", "CLOSE", "SHUTDOWN", "SPLICE", "POLL_ADD",
              "TIMEOUT", "LINK_TIMEOUT", "ASYNC_CANCEL")
SETUP_FLAGS = ("SINGLE_ISSUER", "DEFER_TASKRUN", "COOP_TASKRUN", "TASKRUN_FLAG", "SUBMIT_ALL",
               "NO_SQARRAY")
# flags that are only valid together with another
_WITH = {"DEFER_TASKRUN": "SINGLE_ISSUER", "TASKRUN_FLAG": "COOP_TASKRUN"}
# IORING_SETUP_* values (kernel ABI), for the C core's probe: liburing 2.3's
# headers predate NO_SQARRAY (Linux 6.6)
_SETUP_BITS = {"SUBMIT_ALL": 1 << 7, "COOP_TASKRUN": 1 << 8, "TASKRUN_FLAG": 1 << 9,
               "SINGLE_ISSUER": 1 << 12, "DEFER_TASKRUN": 1 << 13, "NO_SQARRAY": 1 << 16}


def _check(name, status, detail, fix="", blocker=False, **extra):
    d = {"name": name, "status": status, "detail": detail, "fix": fix, "blocker": blocker}
    d.update(extra)
    return d


def check_kernel(release: str | None = None) -> dict:
    release = release or platform.release()
    why = feat.kernel_too_old(release)
    if why:
        return _check("kernel", "missing", f"Linux {release}: too old", why, blocker=True,
                      release=release)
    v = feat.kernel_version(release)
    return _check("kernel", "ok", f"Linux {release} (uproxy needs {feat.MIN_KERNEL[0]}."
                  f"{feat.MIN_KERNEL[1]}+)", release=release, version=list(v))


def check_io_uring_disabled() -> dict:
    path = "/proc/sys/kernel/io_uring_disabled"
    try:
        with open(path) as f:
            v = int(f.read().strip())
    except OSError:
        return _check("io_uring_disabled", "ok", f"{path} absent (kernel before 6.6: io_uring is on)",
                      value=None)
    if v == 0:
        return _check("io_uring_disabled", "ok", "kernel.io_uring_disabled = 0", value=0)
    if v == 1:
        priv = os.geteuid() == 0
        return _check("io_uring_disabled", "warn" if priv else "missing",
                      "kernel.io_uring_disabled = 1: only root or kernel.io_uring_group may "
                      "create rings", "sysctl -w kernel.io_uring_disabled=0, or run uproxy as "
                      "a member of kernel.io_uring_group", blocker=not priv, value=1)
    return _check("io_uring_disabled", "missing", "kernel.io_uring_disabled = 2: io_uring is off",
                  "sysctl -w kernel.io_uring_disabled=0", blocker=True, value=v)


def _core_probe():
    from ._native import ffi, lib
    res = ffi.new("struct up_probe_result *")
    r = lib.up_probe(res)
    return r, res


_LIBURING_PROBE = r"""
import json, liburing
ops = {k[len("IORING_OP_"):]: bool(v) for k, v in liburing.probe().items()}
flags = {}
for name, extra in %r:
    flag = getattr(liburing, "IORING_SETUP_" + name, None)
    if flag is None:
        continue
    for x in extra:
        flag |= getattr(liburing, "IORING_SETUP_" + x)
    ring = liburing.Ring()
    try:
        liburing.io_uring_queue_init(8, ring, flag)
        liburing.io_uring_queue_exit(ring)
        flags[name] = True
    except OSError:
        flags[name] = False
print(json.dumps({"ops": ops, "flags": flags}))
"""


def _core_setup_flags() -> dict:
    """The setup flags as the C core sees them: one ring per flag."""
    from ._native import lib
    out = {}
    for name in SETUP_FLAGS:
        bits = _SETUP_BITS[name] | (_SETUP_BITS[_WITH[name]] if name in _WITH else 0)
        out[name] = lib.up_probe_setup(bits) == 0
    return out


def _liburing_probe():
    """python-liburing's view, in a child process: its wheel uses
    instructions (AVX-512) that some CPUs lack, and a SIGILL must not take
    doctor down with it. UPROXY_NO_LIBURING_PROBE=1 leaves it out (the C
    core's probe answers alone)."""
    import json
    import signal
    import subprocess
    import sys
    if os.environ.get("UPROXY_NO_LIBURING_PROBE") == "1":
        raise RuntimeError("python-liburing left out (UPROXY_NO_LIBURING_PROBE=1)")
    spec = [(n, [_WITH[n]] if n in _WITH else []) for n in SETUP_FLAGS]
    r = subprocess.run([sys.executable, "-c", _LIBURING_PROBE % (spec,)], capture_output=True,
                       text=True, timeout=30)
    if r.returncode < 0:
        sig = signal.Signals(-r.returncode).name
        hint = " (its wheel needs CPU instructions this CPU lacks)" if sig == "SIGILL" else ""
        raise RuntimeError(f"python-liburing died with {sig}{hint}")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"python-liburing failed: {last}")
    out = json.loads(r.stdout)
    return out["ops"], out["flags"]


def check_io_uring() -> list:
    """Opcodes and setup flags: python-liburing first, the C core's own
    probe where liburing fails (it wants a recent kernel)."""
    out = []
    ops = flags = None
    source = flags_source = "python-liburing"
    err = ""
    try:
        ops, flags = _liburing_probe()
    except Exception as e:
        err = f"{e.__class__.__name__}: {e}" if not isinstance(e, RuntimeError) else str(e)
        ops = flags = None
    core_features = None
    core_err = ""
    try:
        r, res = _core_probe()
        if r < 0:
            core_err = os.strerror(res.setup_errno) if res.setup_errno else "up_probe failed"
        else:
            # tls_multishot is the TLS layer's use of multishot_recv (runtime.probe)
            core_features = feat.names(res.features | feat.bit("h2_codec") | (feat.bit("tls_multishot")
                                                       if res.features & feat.bit("multishot_recv") else 0))
            if ops is None:
                from .shm import _opnames
                names = _opnames()
                ops = {names.get(i, str(i)).upper(): bool(res.op_supported[i])
                       for i in range(min(int(res.nops), 64))}
                source = "uproxy C core (up_probe)" + (f"; python-liburing failed: {err}" if err else "")
            if flags is None:
                flags = _core_setup_flags()
                flags_source = "uproxy C core (up_probe_setup)"
    except Exception as e:
        core_err = f"{e.__class__.__name__}: {e}"
    if ops is None:
        out.append(_check("io_uring", "missing", f"io_uring cannot be probed: {err or core_err}",
                          "check kernel.io_uring_disabled, seccomp filters (containers often "
                          "block io_uring) and the kernel version", blocker=True, source=None))
        return out
    missing = [o for o in NEEDED_OPS if not ops.get(o)]
    known = sum(1 for v in ops.values() if v)
    if core_err:
        out.append(_check("io_uring", "missing", f"the C core cannot create a ring: {core_err}",
                          "check kernel.io_uring_disabled and seccomp filters", blocker=True,
                          source=source, ops=ops))
    elif missing:
        out.append(_check("io_uring", "missing", f"opcodes missing: {', '.join(missing)}",
                          "a newer kernel (5.15+ has all of them)", blocker=True, source=source,
                          ops=ops))
    else:
        out.append(_check("io_uring", "ok", f"{known} opcodes, all {len(NEEDED_OPS)} that uproxy "
                          f"uses (probed with {source.split(';')[0]})", source=source, ops=ops))
    if flags is not None:
        no = [k for k, v in flags.items() if not v]
        out.append(_check("io_uring_setup_flags", "ok" if not no else "warn",
                          "setup flags: " + ", ".join(f"{k}{'' if v else ' (no)'}" for k, v in flags.items()),
                          "" if not no else "a newer kernel enables the faster paths; uproxy "
                          "falls back without them", flags=flags, source=flags_source))
    if core_features is not None:
        # kTLS (both directions) and sockmap are not io_uring features and have their own
        # checks (check_tls, check_sockmap)
        lacking = [f for f in feat.FEATURES if f not in core_features and f not in ("ktls", "ktls_rx", "sockmap", "tls_seal", "tls_open")]
        out.append(_check("uproxy_features", "ok" if not lacking else "warn",
                          "the C core will use: " + (", ".join(core_features) or "none")
                          + (f"; not here: {', '.join(lacking)}" if lacking else ""),
                          "" if not lacking else "these arrived in later kernels: " +
                          ", ".join(f"{f} ({feat.since(f)})" for f in lacking),
                          features=core_features, source="uproxy C core (up_probe)"))
    return out


def kernel_config(option: str, release: str | None = None) -> str | None:
    """"y", "m" or "n" for a kernel build option, from /proc/config.gz or
    /boot/config-<release>; None when neither is there."""
    import gzip
    release = release or platform.release()
    for path, opener in (("/proc/config.gz", gzip.open), (f"/boot/config-{release}", open)):
        try:
            with opener(path, "rt") as f:
                for line in f:
                    if line.startswith(f"{option}="):
                        return line.strip().split("=", 1)[1]
                    if line.startswith(f"# {option} is not set"):
                        return "n"
            return "n"
        except OSError:
            continue
    return None


def check_tls(release: str | None = None, ktls: bool | None = None,
              config: str | None = "probe") -> list:
    """The TLS library the core is built with, and whether the kernel can
    take over the records after the handshake (kTLS)."""
    from ._native import ffi, lib
    release = release or platform.release()
    out = []
    name = ffi.string(lib.up_tls_library()).decode()
    out.append(_check("tls_library", "ok", f"{name}: user-space TLS, one context per worker",
                      library=name))
    if ktls is None:
        ktls = bool(lib.up_tls_ktls_available())
    if ktls:
        out.append(_check("ktls", "ok", "the kernel takes the tls ULP: after a handshake the "
                          "kernel encrypts and decrypts (disable_features = [\"ktls\"] turns "
                          "it off)", available=True))
        return out
    if config == "probe":
        config = kernel_config("CONFIG_TLS", release)
    loaded = os.path.isdir("/sys/module/tls")
    if config == "n":
        why = f"Linux {release} is built without CONFIG_TLS (no tls module)"
        fix = ("nothing to do: TLS runs in user space; for kTLS, a kernel built with "
               "CONFIG_TLS=m or y (Debian 12's 6.1 kernel ships the tls module)")
    elif config in ("m", "y") and not loaded:
        why = "the kernel has CONFIG_TLS but the tls module is not loaded"
        fix = "modprobe tls (and list tls in /etc/modules-load.d/ to load it at boot)"
    else:
        why = ("the kernel refuses the tls ULP on a TCP socket (no CONFIG_TLS, or the tls "
               "module is not loaded)")
        fix = ("modprobe tls; if there is no such module, the kernel lacks CONFIG_TLS: TLS "
               "runs in user space")
    out.append(_check("ktls", "missing", f"kTLS not available: {why}; uproxy encrypts in "
                      f"user space", fix, available=False, config_tls=config))
    return out


def check_sockmap() -> dict:
    """Can tcp listeners use forwarding = "sockmap" here: the program
    loaded and attached for real, as `uproxy run` does at start."""
    from . import sockmap
    why = sockmap.unavailable()
    if why is None:
        prog, why = sockmap.load(1, 32)
        if prog is not None:
            prog.close()
            return _check("sockmap", "ok", "forwarding = \"sockmap\" is available: the "
                          "program loads and attaches to its sockhash (disable_features = "
                          "[\"sockmap\"] turns it off)", available=True)
    if "not root" in why:
        fix = ("start uproxy as root (it loads the program at start, before [proxy] user "
               "drops privileges)")
    elif why.startswith("Linux"):
        fix = f"Linux {sockmap.MIN_KERNEL[0]}.{sockmap.MIN_KERNEL[1]} or newer"
    else:
        fix = "sudo scripts/setup (kernel headers, python3-bpfcc)"
    return _check("sockmap", "missing", f"forwarding = \"sockmap\" falls back to splice: {why}",
                  fix, available=False)


def check_ebpf() -> list:
    from .telemetry import btf, pmu, probes, tpformat
    out = []
    h = probes.headers()
    out.append(_check("kernel_headers", "ok" if h["ok"] else "missing", h["why"],
                      "" if h["ok"] else "sudo scripts/setup (installs the distribution's nearest "
                      "linux-headers and links /lib/modules/$(uname -r)/build and source)",
                      path=h["path"]))
    try:
        btf.kernel()
        out.append(_check("btf", "ok", f"{btf.VMLINUX}: task_struct.pid at offset "
                          f"{btf.offset('task_struct', 'pid')}"))
    except Exception as e:
        out.append(_check("btf", "missing", str(e), "a kernel with CONFIG_DEBUG_INFO_BTF=y"))
    tfs = tpformat.tracefs() or (tpformat.mount_tracefs() if os.geteuid() == 0 else None)
    out.append(_check("tracefs", "ok" if tfs else "missing",
                      f"tracefs at {tfs}" if tfs else "tracefs is not mounted",
                      "" if tfs else "mount -t tracefs nodev /sys/kernel/tracing (uproxy top "
                      "does it when run as root)"))
    a = probes.availability()
    if not a["ok"]:
        out.append(_check("ebpf", "missing", a["why"], a["fix"]))
    else:
        status, detail, fix = _try_bpf()
        out.append(_check("ebpf", status, detail, fix))
    p = pmu.detect()
    out.append(_check("pmu", "ok" if p["pmu"] else "missing",
                      "hardware PMU: " + p["why"] if p["pmu"] else "no PMU on this host: " + p["why"],
                      "" if p["pmu"] else "nothing to do on this host: the dashboard shows software "
                      "counters (cpu-clock, page faults, context switches, migrations) instead; "
                      "on a VM, enable the virtual PMU (e.g. QEMU -cpu host, a vPMU-capable "
                      "instance type)", present=p["pmu"]))
    return out


def _try_bpf():
    """Compile and load a trivial program with bcc."""
    from .telemetry.probes import _quiet_stderr
    try:
        from bcc import BPF
        with _quiet_stderr() as err:
            try:
                b = BPF(text=b"int uproxy_doctor(struct bpf_raw_tracepoint_args *ctx) { return 0; }",
                        cflags=["-w"])
                b.load_func(b"uproxy_doctor", BPF.RAW_TRACEPOINT)
                b.cleanup()
                ok, exc = True, None
            except Exception as e:
                ok, exc = False, e
        if ok:
            return "ok", "bcc compiles and loads eBPF programs", ""
        return "missing", f"bcc could not load a trivial program: {exc} {err['text'][-300:]}".strip(), \
            "sudo scripts/setup (kernel headers, python3-bpfcc)"
    except Exception as e:
        return "missing", f"bcc: {e}", "sudo scripts/setup"


def check_limits() -> list:
    out = []
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    fmt = lambda v: "unlimited" if v == resource.RLIM_INFINITY else f"{v // 1024} KiB"  # noqa: E731
    modern = feat.kernel_version() >= (5, 12)
    low = soft != resource.RLIM_INFINITY and soft < 64 << 20
    out.append(_check("memlock", "warn" if (low and not modern) else "ok",
                      f"RLIMIT_MEMLOCK {fmt(soft)} (hard {fmt(hard)})"
                      + ("; this kernel charges io_uring and BPF memory to the cgroup, not to "
                         "memlock" if modern else ""),
                      "raise it (ulimit -l unlimited, LimitMEMLOCK=infinity) for io_uring rings "
                      "and BPF maps" if (low and not modern) else "",
                      soft=None if soft == resource.RLIM_INFINITY else soft))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    st = "ok" if hard >= want else "warn"
    out.append(_check("open_files", st, f"RLIMIT_NOFILE {soft} (hard {hard}); uproxy raises the "
                      f"soft limit to the hard one and fits max_connections to it",
                      "" if st == "ok" else f"raise the hard limit to {want}+ (ulimit -Hn, "
                      f"LimitNOFILE=) for more connections", soft=soft, hard=hard))
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = os.cpu_count() or 1
    out.append(_check("cpus", "ok", f"{cpus} CPUs allowed: one worker per CPU by default", cpus=cpus))
    return out


def collect() -> dict:
    checks = [check_kernel()]
    if not checks[0]["blocker"]:
        checks.append(check_io_uring_disabled())
        checks.extend(check_io_uring())
    try:
        checks.extend(check_tls())
    except Exception as e:              # the C core not built: said by the other checks too
        checks.append(_check("tls_library", "missing", f"the C core cannot be loaded: {e}",
                             "scripts/setup (builds the C core)"))
    checks.extend(check_ebpf())
    try:
        checks.append(check_sockmap())
    except Exception as e:
        checks.append(_check("sockmap", "missing", f"cannot check sockmap: {e}",
                             "sudo scripts/setup", available=False))
    checks.extend(check_limits())
    blockers = [c for c in checks if c["blocker"]]
    return {"version": __version__, "kernel": platform.release(), "can_run": not blockers,
            "checks": checks}


_MARK = {"ok": "ok     ", "warn": "warn   ", "missing": "missing"}


def render(doc: dict) -> str:
    lines = [f"uproxy {doc['version']} doctor — Linux {doc['kernel']}", ""]
    for c in doc["checks"]:
        lines.append(f"  [{_MARK.get(c['status'], c['status'])}] {c['name']:<22} {c['detail']}")
        if c["fix"] and c["status"] != "ok":
            lines.append(f"  {'':9} {'':<22} -> {c['fix']}")
    lines.append("")
    if doc["can_run"]:
        lines.append("uproxy can run on this host.")
    else:
        lines.append("uproxy cannot run on this host: " +
                     "; ".join(c["detail"] for c in doc["checks"] if c["blocker"]))
    return "\n".join(lines)


def run(as_json: bool = False) -> int:
    doc = collect()
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print(render(doc))
    sys.stdout.flush()
    return 0 if doc["can_run"] else 1
