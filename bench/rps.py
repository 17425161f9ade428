"""Receive steering on loopback for the L4 stream runs (issue 14,
`scripts/bench --rps MASK [--rfs N]`).

Over loopback a packet's receive processing runs in the sender's own
softirq, on the sender's CPU; a NIC with RSS (or RPS) would run it on the
CPU of the flow's receive queue. With sockmap that matters more than for
any other contender: the verdict, the psock's backlog work and the second
connection's transmit all follow the first connection's receive
(docs/l4.md, "Is 0.9x of direct reachable on 2 CPUs over loopback?").
RPS on `lo` (rps_cpus) spreads that receive work over the CPUs of a mask,
by flow hash; RFS (rps_sock_flow_entries and the queue's rps_flow_cnt)
steers a flow to the CPU that last read its socket instead.

These are host settings the whole machine shares (the test suite runs
here too), so the bench sets them around each L4 stream run only, for
every contender alike (the direct transfer included: its receive moves
too), and puts back what it found in a `finally`, which also runs on
Ctrl-C and on SIGTERM/SIGHUP (bench/cli.py turns those into SystemExit).
Only a SIGKILL can leave them set; `read()` shows what is set now.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

PATHS = {
    "rps_cpus": "/sys/class/net/lo/queues/rx-0/rps_cpus",
    "rps_flow_cnt": "/sys/class/net/lo/queues/rx-0/rps_flow_cnt",
    "rps_sock_flow_entries": "/proc/sys/net/core/rps_sock_flow_entries",
}


@dataclass(frozen=True)
class Steering:
    cpus: int        # the RPS CPU mask (bit n = CPU n); 0: off
    flows: int = 0   # RFS: entries of the flow tables; 0: off

    def values(self) -> dict:
        """What each file gets (rps_cpus takes a hex mask)."""
        return {"rps_cpus": f"{self.cpus:x}", "rps_flow_cnt": str(self.flows),
                "rps_sock_flow_entries": str(self.flows)}

    def describe(self) -> str:
        if not self.cpus:
            return "off"
        cpus = ",".join(str(i) for i in range(self.cpus.bit_length()) if self.cpus >> i & 1)
        rfs = f", RFS {self.flows} flow entries" if self.flows else ", no RFS"
        return f"RPS on lo to CPU {cpus} (mask {self.cpus:x}){rfs}"


def parse(mask: str | None, flows: int | None = None, ncpu: int | None = None) -> Steering | None:
    """--rps MASK (hex, as rps_cpus takes it, or "all"; "off" or absent:
    None, nothing is touched) and --rfs N."""
    if mask is None or mask in ("", "off"):
        if flows:
            raise ValueError("--rfs needs --rps (RFS steers within the RPS mask's CPUs)")
        return None
    if mask == "all":
        cpus = (1 << (ncpu or os.cpu_count() or 1)) - 1
    else:
        try:
            cpus = int(mask, 16)
        except ValueError:
            raise ValueError(f"--rps {mask!r}: a hex CPU mask (3 = CPUs 0 and 1), 'all' or 'off'") from None
    if cpus < 0 or (flows or 0) < 0:
        raise ValueError("--rps and --rfs take non-negative values")
    return Steering(cpus, flows or 0)


def read(paths=PATHS) -> dict:
    """The settings as they are now, as the files say them."""
    out = {}
    for k, p in paths.items():
        with open(p) as f:
            out[k] = f.read().strip()
    return out


def _write(path: str, value: str):
    with open(path, "w") as f:
        f.write(value + "\n")


def check(paths=PATHS) -> str | None:
    """Why the settings cannot be changed here (None: they can)."""
    for k, p in paths.items():
        if not os.path.exists(p):
            return f"{p} does not exist (a kernel without CONFIG_RPS?)"
        if not os.access(p, os.W_OK):
            return f"{p} is not writable (root needed)"
    return None


@contextlib.contextmanager
def steered(st: Steering | None, paths=PATHS):
    """Applies st for the block's duration, then puts back every value it
    found, whatever ends the block (an exception, Ctrl-C, SystemExit). The
    old values are read before anything is written, and every file is
    restored even if another's restore fails (the first error is raised
    after)."""
    if st is None:
        yield None
        return
    old = read(paths)
    try:
        new = st.values()
        # The table sizes first and the mask last: steering starts only
        # once the tables it uses are in place.
        for k in ("rps_sock_flow_entries", "rps_flow_cnt", "rps_cpus"):
            _write(paths[k], new[k])
        yield read(paths)
    finally:
        err = None
        for k in ("rps_cpus", "rps_flow_cnt", "rps_sock_flow_entries"):
            try:
                _write(paths[k], old[k])
            except OSError as e:
                err = err or e
        if err:
            raise err
