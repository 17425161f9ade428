"""No proxy at all: iperf3 straight to its server, as the L4 workloads'
floor (DESIGN.md G9). Its Gbit/s is what a proxy may approach, its machine
CPU per GiB what the transfer costs before any proxy adds to it. Nothing
is started: the "proxy" port is the iperf3 server's own. For short
sessions (l4_short) the same: the load generator straight to the HTTP
origin, whose machine CPU per session is what a proxy adds to."""
from __future__ import annotations

from . import L4_WORKLOADS, L4S_WORKLOADS, Contender


class _Nothing:
    """Stands where a proxy's process would: never exits."""
    pid = 0
    returncode = None

    def poll(self):
        return None


class Direct(Contender):
    name = "direct"
    family = "direct"
    label = "no proxy (direct)"
    tuning = "iperf3 client to iperf3 server, nothing between"
    workloads = L4_WORKLOADS + L4S_WORKLOADS

    def start(self, round_no: int):
        self.l4_port = self.ctx.iperf_port
        self.l4s_port = self.ctx.upstream_port
        self.proc = _Nothing()
        self.pids = []

    def output(self) -> str:
        return ""

    def stop(self):
        self.proc = None
