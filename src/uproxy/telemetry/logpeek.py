"""Per-listener figures from the access-log rings in the statistics segment.

The core keeps no per-listener or per-route counters; what it does keep per
request is the access-log record (listener id, status, duration, server
slot) of every request on a listener with ``access_log``. The proxy's own
access-log thread consumes those rings; this reader only *looks*: it reads
the records written since its last look, without moving the ring's tail,
and checks the head again afterwards, so a record the worker may have
overwritten meanwhile is dropped, never misread. Counts come from the
records read; when a ring wrapped between two looks (more than a ring's
worth of records in one interval), ``lost`` says how many were not seen and
the figures are over the ones that were.

A route has no id in the record; the record's server slot names the
cluster, so the panel shows listener → cluster pairs (a route per cluster).
"""
from __future__ import annotations

from .. import hist
from .._native import ffi, lib


def _align(n, a):
    return (n + a - 1) // a * a


class LogPeek:
    def __init__(self, reader):
        self.reader = reader
        h = reader.header
        base = ffi.cast("char *", reader.buf)
        size = _align(ffi.sizeof("struct up_log_ring"), 4096)
        self.nrec = int(h.log_records) or lib.UP_LOG_RECORDS
        self.rings = [ffi.cast("struct up_log_ring *", base + h.logs_offset + i * size)
                      for i in range(h.nworkers)] if h.logs_offset else []
        # start from now: the first look reports the records of one interval
        self.pos = [int(lib.up_log_head(r)) for r in self.rings]

    def look(self) -> dict:
        """{(listener_id, slot): {"count", "status": {"2xx": n, ...}, "hist": [...]}} of
        the records written since the last look, plus "lost"."""
        out = {}
        lost = 0
        for i, r in enumerate(self.rings):
            head = int(lib.up_log_head(r))
            start = self.pos[i]
            # records older than head - nrec + 1 may be overwritten by now
            if head - start > self.nrec - 1:
                lost += head - start - (self.nrec - 1)
                start = head - (self.nrec - 1)
            got = []
            for n in range(start, head):
                rec = r.recs[n % self.nrec]
                got.append((n, int(rec.listener_id), int(rec.server_slot), int(rec.status),
                            int(rec.duration_us)))
            head2 = int(lib.up_log_head(r))
            safe = head2 - (self.nrec - 1)       # a record below this may be a newer one now
            for n, lid, slot, status, dur in got:
                if n < safe:
                    lost += 1
                    continue
                for key in ((lid, None), (lid, slot)):
                    s = out.get(key)
                    if s is None:
                        s = out[key] = {"count": 0, "status": {}, "hist": [0] * hist.BUCKETS}
                    s["count"] += 1
                    cls = f"{status // 100}xx" if 100 <= status < 600 else "other"
                    s["status"][cls] = s["status"].get(cls, 0) + 1
                    s["hist"][hist.bucket(dur)] += 1
            self.pos[i] = head
        return {"groups": out, "lost": lost}
