"""Servers from DNS: a cluster with a [clusters.dns] table (or an
"srv+_service._proto.name" server) has its named servers re-resolved on
their TTL, clamped to [min_ttl, max_ttl], by a thread of the control plane
(never the request path: DESIGN.md law 4).

Answers are kept here; when one changes the set of addresses, the runtime
is told, and its main loop publishes a new table generation with them by
the same atomic swap as a reload. A server that leaves drains: requests
in flight keep the older table (and its server) until they finish. A
resolver that fails (timeout, SERVFAIL, REFUSED, no server reachable)
changes nothing: the last answer stays in force and the failure is shown
in the log and /status. NXDOMAIN or an empty answer is an answer: the
name has no address now, and its servers leave.

dnspython, not getaddrinfo: getaddrinfo gives neither the TTL nor SRV
records, and cannot be pointed at a given resolver.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from ..config import Config, Server

log = logging.getLogger("uproxy")

# dnspython's answers that mean "the name has no such record": an answer.
_EMPTY = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)


def warm():
    """Import now what dnspython imports on its first answer (one module
    per record type): a proxy that drops privileges may not be able to
    read the Python installation afterwards."""
    import dns.message, dns.query, dns.rdataclass, dns.rdata  # noqa: E401,F401
    for t in ("A", "AAAA", "SRV", "CNAME", "SOA", "NS", "OPT"):
        dns.rdata.get_rdata_class(dns.rdataclass.IN, dns.rdatatype.from_text(t))


class LookupFailed(Exception):
    pass


def _resolver(settings) -> dns.resolver.Resolver:
    if settings.resolvers:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in settings.resolvers]
    else:
        try:
            r = dns.resolver.Resolver()          # /etc/resolv.conf
        except dns.resolver.NoResolverConfiguration as e:
            raise LookupFailed(f"no resolver configured here ({e}); give "
                               f"[dns] resolvers = [\"10.0.0.2\"]") from None
    r.lifetime = settings.timeout_ms / 1000
    r.timeout = settings.timeout_ms / 1000
    return r


def _addresses(r, name: str) -> tuple:
    """({ip}, ttl) of a name's A and AAAA records; LookupFailed when the
    resolvers did not answer."""
    ips, ttl, answered = [], None, False
    for rdtype in ("A", "AAAA"):
        try:
            a = r.resolve(name, rdtype, search=False)
        except _EMPTY:
            answered = True
            continue
        except (dns.exception.DNSException, OSError) as e:
            raise LookupFailed(f"{name} {rdtype}: {e.__class__.__name__}: {e}") from None
        answered = True
        ips += [x.address for x in a]
        ttl = a.rrset.ttl if ttl is None else min(ttl, a.rrset.ttl)
    return ips, (ttl if ttl is not None else 0) if answered else None


def lookup(settings, entry) -> tuple:
    """(servers, ttl seconds) for one DNSName; raises LookupFailed."""
    r = _resolver(settings)
    if entry.kind == "A":
        ips, ttl = _addresses(r, entry.name)
        return tuple(_server(ip, entry.port, entry.weight) for ip in ips), ttl
    try:
        a = r.resolve(entry.name, "SRV", search=False)
    except _EMPTY:
        return (), 0
    except (dns.exception.DNSException, OSError) as e:
        raise LookupFailed(f"{entry.name} SRV: {e.__class__.__name__}: {e}") from None
    ttl = a.rrset.ttl
    recs = list(a)
    if not recs:
        return (), ttl
    # RFC 2782: the lowest priority is used while it has targets; the
    # others are backups (health checks and ejection cover a dead target).
    best = min(x.priority for x in recs)
    out = []
    for x in recs:
        if x.priority != best or str(x.target) == ".":
            continue
        target = str(x.target).rstrip(".")
        try:
            ips = [str(ipaddress.ip_address(target))]
        except ValueError:
            ips, t2 = _addresses(r, target)
            ttl = min(ttl, t2 or ttl)
        # weight 0 is "very little" in RFC 2782; here it is the least share
        w = max(1, min(1000, x.weight)) * entry.weight
        out += [_server(ip, x.port, min(1000, w)) for ip in ips]
    return tuple(out), ttl


def _server(ip: str, port: int, weight: int) -> Server:
    if ":" in ip:
        return Server(host=ip, port=port, address=(socket.AF_INET6, (ip, port, 0, 0)), weight=weight)
    return Server(host=ip, port=port, address=(socket.AF_INET, (ip, port)), weight=weight)


def expand(cfg: Config, answers: dict) -> Config:
    """cfg with each DNS cluster's servers: its static ones, then every
    address its names have now (one server per address: the first name
    that gave it wins)."""
    clusters = {}
    for name, c in cfg.clusters.items():
        if not c.names:
            clusters[name] = c
            continue
        servers, seen = list(c.servers), {s.label for s in c.servers}
        for n in c.names:
            for s in answers.get((name, n.label), ()):
                if s.label not in seen:
                    seen.add(s.label)
                    servers.append(s)
        clusters[name] = dataclasses.replace(c, servers=tuple(servers))
    return dataclasses.replace(cfg, clusters=clusters)


class Entry:
    """One name of one cluster: its last answer and when to ask again."""

    def __init__(self, cluster: str, name, settings):
        self.cluster, self.name, self.settings = cluster, name, settings
        self.servers = ()           # the answer in force
        self.answered = False       # has there been an answer at all
        self.ttl = None
        self.due = 0.0
        self.last_ok_ms = None
        self.last_error = None      # set while the resolvers fail; the answer stays
        self.failures = 0
        self.lookups = 0

    def status(self) -> dict:
        return {"cluster": self.cluster, "name": self.name.label, "type": self.name.kind,
                "addresses": [f"{s.label}" + (f" weight {s.weight}" if s.weight != 1 else "")
                              for s in self.servers],
                "answered": self.answered, "ttl_s": self.ttl,
                "next_in_s": round(max(0.0, self.due - time.monotonic()), 2),
                "last_ok_ms": self.last_ok_ms, "error": self.last_error,
                "failures": self.failures, "lookups": self.lookups,
                "resolvers": [f"{h}:{p}" for h, p in self.settings.resolvers]
                if self.settings.resolvers else "system"}


class DNSProvider:
    """Keeps every DNS cluster's answers fresh; on_change() is called (from
    this thread) when an answer changes the addresses of a cluster."""

    def __init__(self, on_change, lookup_fn=lookup):
        self.on_change = on_change
        self.lookup = lookup_fn
        self.lock = threading.Lock()
        self.entries: dict = {}      # (cluster, name label) -> Entry
        self.wake = threading.Event()
        self.stopping = False
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="uproxy-dns")
        self.thread = threading.Thread(target=self._run, name="uproxy-dns", daemon=True)

    def configure(self, cfg: Config):
        """The names of cfg; answers of names that stay are kept."""
        with self.lock:
            old, self.entries = self.entries, {}
            for c in cfg.clusters.values():
                for n in c.names:
                    key = (c.name, n.label)
                    e = old.get(key)
                    if e is None or e.settings != c.dns or e.name != n:
                        e2 = Entry(c.name, n, c.dns)
                        if e is not None:           # same name, new settings: keep the answer
                            e2.servers, e2.answered = e.servers, e.answered
                        e = e2
                    self.entries[key] = e
        self.wake.set()

    def answers(self) -> dict:
        with self.lock:
            return {k: e.servers for k, e in self.entries.items()}

    def has_names(self) -> bool:
        with self.lock:
            return bool(self.entries)

    def status(self) -> list:
        with self.lock:
            return [e.status() for _, e in sorted(self.entries.items())]

    def resolve_now(self, only_new: bool = False):
        """Ask for every name (or those never asked: only_new) once, now, in
        parallel: the table published next then has their addresses; a
        name that fails starts empty and is asked again on min_ttl."""
        with self.lock:
            entries = [e for e in self.entries.values() if not (only_new and e.lookups)]
        futures = [(e, self.pool.submit(self._ask, e)) for e in entries]
        for e, f in futures:
            f.result()

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self.stopping = True
        self.wake.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self):
        while not self.stopping:
            now = time.monotonic()
            with self.lock:
                due = [e for e in self.entries.values() if e.due <= now]
                nxt = min((e.due for e in self.entries.values()), default=None)
            if due:
                changed = False
                for e, f in [(e, self.pool.submit(self._ask, e)) for e in due]:
                    try:
                        changed |= f.result()
                    except Exception as exc:      # a bug in one lookup must not stop the rest
                        log.error("dns: looking up %s failed: %r", e.name.label, exc)
                        e.due = time.monotonic() + e.settings.min_ttl_ms / 1000
                if changed and not self.stopping:
                    self.on_change()
                continue
            # at rest: asleep until the next TTL ends (or configure() wakes it)
            self.wake.wait(None if nxt is None else max(0.0, nxt - now))
            self.wake.clear()

    def _ask(self, e: Entry) -> bool:
        """Resolve one entry; True when its addresses changed."""
        s = e.settings
        e.lookups += 1
        try:
            servers, ttl = self.lookup(s, e.name)
        except LookupFailed as exc:
            e.failures += 1
            first = e.last_error is None
            e.last_error = str(exc)
            e.due = time.monotonic() + s.min_ttl_ms / 1000
            if first:
                kept = ", ".join(x.label for x in e.servers) or "no addresses"
                log.warning("dns: cluster %s: %s did not resolve (%s); keeping the last answer "
                            "(%s) and asking again every %g s", e.cluster, e.name.label, exc,
                            kept, s.min_ttl_ms / 1000)
            return False
        if e.last_error is not None:
            log.info("dns: cluster %s: %s resolves again", e.cluster, e.name.label)
        e.last_error = None
        e.ttl = ttl
        e.last_ok_ms = int(time.time() * 1000)
        e.due = time.monotonic() + min(max(ttl * 1000, s.min_ttl_ms), s.max_ttl_ms) / 1000
        old = {x.label: x.weight for x in e.servers}
        new = {x.label: x.weight for x in servers}
        e.answered = True
        if old == new:
            return False
        with self.lock:
            e.servers = tuple(sorted(servers, key=lambda x: x.label))
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        log.info("dns: cluster %s: %s now %s%s%s", e.cluster, e.name.label,
                 ", ".join(sorted(new)) or "has no addresses",
                 f" (+{' +'.join(added)})" if added else "",
                 f" (-{' -'.join(removed)})" if removed else "")
        return True
