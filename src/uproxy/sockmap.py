"""forwarding = "sockmap": loading bpf/sockmap.c, the stream-verdict program
that moves an L4 session's bytes inside the kernel (docs/l4.md).

The control plane loads it once at start, with bcc as the probes are (one
clang run; no object to build and ship per kernel), attaches it to its
sockhash and hands the map fds to the workers, which insert sockets
themselves (their close takes them out) and map the program's state array
(native/l4/sockmap.c): nothing here runs per connection. bcc's Python table class does not know the sockhash type, so
the maps are reached by fd only.
"""
from __future__ import annotations

import mmap
import os
import platform

from . import features as feat

# The verdict-only path (tcp_read_skb) came in 6.0 and lost or stalled
# bytes until the fixes merged for 6.4 (docs/l4.md lists them).
MIN_KERNEL = (6, 4)


def _bpf_dir() -> str:
    from .telemetry.probes import bpf_dir
    return bpf_dir()


def unavailable(release: str | None = None) -> str | None:
    """Why the program cannot be loaded here (without trying), or None."""
    release = release or platform.release()
    forced = os.environ.get("UPROXY_SOCKMAP_FAIL")    # tests: the fallback, on a host that has it
    if forced:
        return forced
    if feat.kernel_version(release) < MIN_KERNEL:
        return (f"Linux {release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}, whose "
                f"sockmap fixes the hand-over relies on")
    if os.geteuid() != 0:
        return "not root: loading the program needs root (CAP_BPF and CAP_NET_ADMIN)"
    try:
        import bcc  # noqa: F401
    except Exception as e:
        return f"bcc is not importable ({e.__class__.__name__}: {e})"
    from .telemetry import probes
    h = probes.headers()
    if not h["ok"]:
        return h["why"]
    return None


class Program:
    """The loaded program and its maps, for the life of the proxy."""

    def __init__(self, workers: int, max_conns: int):
        from bcc import BPF, BPFAttachType
        from bcc.libbcc import lib as bcclib
        from ._native import lib
        from .telemetry.probes import _lines, _quiet_stderr
        # One `st` entry (and room in the sockhash) per connection slot of
        # every worker; `sess` also holds what the workers keep back to
        # remove in one call.
        slots = workers * lib.up_sm_slots_per_worker(max_conns)
        with open(os.path.join(_bpf_dir(), "sockmap.c")) as f:
            text = (f"#define SM_SLOTS {slots}\n"
                    f"#define SM_SESS {slots + workers * lib.UP_SM_DEFER}\n" + f.read())
        with _quiet_stderr() as err:
            try:
                self.bpf = BPF(text=text.encode(), cflags=["-w"])
                fn = self.bpf.load_func(b"sm_verdict", BPF.SK_SKB)
            except Exception as e:
                raise RuntimeError(f"{e} {_lines(err['text'])}".strip()) from None
        self.fds = {name: bcclib.bpf_table_fd(self.bpf.module, name.encode())
                    for name in ("socks", "sess", "st")}
        if min(self.fds.values()) < 0:
            self.close()
            raise RuntimeError("the program's maps have no fds")
        # The workers map `st` (native/l4/sockmap.c): a kernel that cannot
        # (before 5.5) is found here, not in a worker.
        try:
            mmap.mmap(self.fds["st"], mmap.PAGESIZE, mmap.MAP_SHARED,
                      mmap.PROT_READ | mmap.PROT_WRITE).close()
        except OSError as e:
            self.close()
            raise RuntimeError(f"cannot map the program's state array: {e}") from None
        try:
            BPF.attach_func(fn, self.fds["socks"], BPFAttachType.SK_SKB_STREAM_VERDICT)
        except Exception as e:
            self.close()
            raise RuntimeError(f"cannot attach the stream verdict: {e}") from None

    def redirect_fails(self) -> int:
        """Redirects the program could not make, proxy-wide, now."""
        t = self.bpf.get_table(b"fails")
        return int(t.sum(t.Key(0)).value)

    def close(self):
        b, self.bpf = getattr(self, "bpf", None), None
        if b is not None:
            b.cleanup()


def load(workers: int, max_conns: int) -> tuple:
    """(Program, None), or (None, why not): sized for `workers` workers of
    max_conns client connections each."""
    why = unavailable()
    if why:
        return None, why
    try:
        return Program(workers, max_conns), None
    except Exception as e:
        return None, f"the program did not load: {e}"
