"""The ACME thread and its seam with the runtime.

At start (before the first table) the stored certificates are read, so an
instance that restarts serves what it has before it asks the CA anything;
a name without one gets a self-signed placeholder. The thread then asks
for what is missing or due, one order at a time, and each change (a
challenge to answer, a challenge done, a new certificate) becomes a new
table generation, published by the runtime's main thread exactly as a
reload is: the workers switch by one atomic pointer swap, connections
already open keep the contexts they began with, and no handshake fails.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

from .. import tls
from . import scheduler
from .settings import Acme
from .storage import Storage

log = logging.getLogger("uproxy")
WARN_BEFORE_S = 14 * 86400        # a certificate that cannot be renewed: warn this long before


class Manager:
    def __init__(self, runtime, settings: Acme):
        self.rt = runtime
        self.settings = settings
        self.store = Storage(settings.storage, settings.directory)
        self.client = None
        self.entries: dict = {}           # names tuple -> scheduler.Entry
        self.http: dict = {}              # token -> key authorization (HTTP-01)
        self.alpn: dict = {}              # name -> (cert, key) (TLS-ALPN-01)
        self.lock = threading.Lock()      # the control plane's threads only; workers read tables
        self.kick = threading.Event()
        self.closing = False
        self.thread = None
        self.issuing = None               # the names being ordered now

    # ---- configuration (main thread) --------------------------------------------
    def configure(self, cfg) -> None:
        s = cfg.acme
        if s is not None and s != self.settings:
            with self.lock:
                if (s.directory, s.storage) != (self.settings.directory, self.settings.storage):
                    self.store = Storage(s.storage, s.directory)
                    self.entries = {}
                self.settings, self.client = s, None
        wanted = []
        for l in cfg.listeners:
            for names in (l.tls.acme if l.tls is not None else ()):
                if names not in wanted:
                    wanted.append(names)
        now = time.time()
        with self.lock:
            for names in list(self.entries):
                if names not in wanted:
                    del self.entries[names]
            for names in wanted:
                if names in self.entries:
                    continue
                e = scheduler.Entry(names)
                e.cert, why = self.store.load(names)
                if why:
                    log.warning("acme: %s", why)
                    self.rt.event(f"acme: {names[0]}: stored certificate damaged, asking again")
                if e.cert is not None and e.cert.not_after <= now:
                    log.warning("acme: the stored certificate of %s expired; asking for a new one",
                                names[0])
                    e.cert = None
                if e.cert is None:
                    e.placeholder = self.store.placeholder(names)
                    log.info("acme: %s has no certificate yet: a self-signed placeholder is "
                             "served until the CA issues one", ", ".join(names))
                else:
                    log.info("acme: %s: serving the stored certificate (until %s)", names[0],
                             _when(e.cert.not_after))
                e.next_at = scheduler.plan(e, now, self.settings.renew_fraction)
                self.entries[names] = e
        self.kick.set()

    def expand(self, cfg):
        """cfg as the workers get it: each ACME listener's certificates
        (issued, else the placeholder; then any listed by hand) and the
        challenges being validated now."""
        with self.lock:
            alpn = tuple((n, c, k) for n, (c, k) in sorted(self.alpn.items()))
            tokens = tuple(sorted(self.http.items()))
            listeners = []
            for l in cfg.listeners:
                if l.tls is None or not l.tls.acme:
                    listeners.append(l)
                    continue
                certs = []
                for names in l.tls.acme:
                    e = self.entries.get(names)
                    c = e and (e.cert or e.placeholder)
                    if c is not None:
                        certs.append(c)
                certs += [c for c in l.tls.certificates if c not in certs and
                          not c.cert.startswith(self.store.dir)]
                listeners.append(dataclasses.replace(
                    l, tls=dataclasses.replace(l.tls, certificates=tuple(certs), acme_alpn=alpn)))
        return dataclasses.replace(cfg, listeners=tuple(listeners), acme_tokens=tokens)

    # ---- the thread ------------------------------------------------------------------
    def start(self):
        self.thread = threading.Thread(target=self._run, name="uproxy-acme", daemon=True)
        self.thread.start()
        return self

    def close(self):
        self.closing = True
        self.kick.set()

    def _run(self):
        while not self.closing:
            now = time.time()
            with self.lock:
                due = [e for e in self.entries.values() if e.next_at <= now]
                nxt = min((e.next_at for e in self.entries.values()), default=now + 3600)
            for e in due:
                if self.closing:
                    return
                self._attempt(e)
            self._warn_expiring()
            if due:
                continue
            self.kick.wait(max(0.05, min(60.0, nxt - time.time())))
            self.kick.clear()

    def _attempt(self, e):
        from .client import Client, Failure
        if self.client is None:
            self.client = Client(self.settings, self.store)
        self.issuing = e.names
        what = "renewing" if e.cert is not None else "requesting"
        log.info("acme: %s a certificate for %s from %s", what, ", ".join(e.names),
                 self.settings.directory)
        try:
            pem, key = self.client.issue(e.names, self._challenges)
            path = self.store.save(e.names, pem, key)
            cert = tls.read_certificate(path, path)
        except Failure as f:
            self._failed(e, f.kind, str(f), f.retry_after)
            return
        except Exception as x:            # a bug or the disk: the same back-off
            self._failed(e, "internal", f"{', '.join(e.names)}: {x.__class__.__name__}: {x}", None)
            return
        finally:
            self.issuing = None
        with self.lock:
            if self.entries.get(e.names) is not e:
                return                        # a reload dropped it meanwhile
            e.cert, e.placeholder = cert, None
            e.failures, e.last_error, e.last_kind = 0, None, None
            e.ari_at = self.client.renewal_time(pem)
            e.next_at = scheduler.plan(e, time.time(), self.settings.renew_fraction)
        self._publish()
        log.info("acme: certificate for %s issued, valid until %s; renewal from %s",
                 ", ".join(e.names), _when(cert.not_after), _when(e.next_at))
        self.rt.event(f"acme: {e.label}: new certificate until {_when(cert.not_after)}")

    def _failed(self, e, kind: str, message: str, retry_after):
        now = time.time()
        with self.lock:
            e.failures += 1
            e.last_error, e.last_kind = message, kind
            e.next_at = scheduler.backoff(e, now, self.settings.retry_min_ms / 1000,
                                          self.settings.retry_max_ms / 1000, kind, retry_after)
        serving = (f"the certificate in use stays until it expires {_when(e.cert.not_after)}"
                   if e.cert is not None else "the self-signed placeholder is served meanwhile")
        extra = ""
        if kind == "rate_limited":
            extra = (" The CA limits how often it issues (Let's Encrypt: "
                     "https://letsencrypt.org/docs/rate-limits/); asking sooner only counts "
                     "against the limit. Test with the staging directory first.")
        log.warning("acme: %s (failure %d, %s); next attempt %s; %s.%s", message, e.failures,
                    kind, _when(e.next_at), serving, extra)
        self.rt.event(f"acme: {e.label}: {kind}, retry {_when(e.next_at, short=True)}")

    def _warn_expiring(self):
        now = time.time()
        for e in list(self.entries.values()):
            c = e.cert
            if c is None or not e.failures or c.not_after - now > max(
                    WARN_BEFORE_S, (c.not_after - c.not_before) / 3):
                continue
            if now - e.warned_at < 3600 and e.warned_at:
                continue
            e.warned_at = now
            log.warning("acme: the certificate of %s expires %s and could not be renewed "
                        "(%s); it is served until then", e.label, _when(c.not_after), e.last_error)
            self.rt.event(f"acme: {e.label}: expires {_when(c.not_after, short=True)}, not renewed")

    # ---- publishing (from the thread, through the main loop) --------------------------
    def _challenges(self, http, alpn, remove=None):
        with self.lock:
            if remove is not None:
                for t in remove[0]:
                    self.http.pop(t, None)
                for n in remove[1]:
                    self.alpn.pop(n, None)
            self.http.update(http)
            self.alpn.update(alpn)
        self._publish()

    def _publish(self, timeout: float = 10.0):
        """A new generation with what the manager holds now; returns once
        every worker runs it (or the timeout passed)."""
        gen = self.rt.run_in_main(self.rt.publish_acme, timeout)
        if gen is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.rt.workers_at(gen):
            time.sleep(0.01)

    # ---- what the admin endpoint and the dashboard show ----------------------------
    def status(self) -> list:
        now = time.time()
        out = []
        with self.lock:
            for e in self.entries.values():
                c = e.cert
                out.append({"names": list(e.names), "state": "issued" if c else "placeholder",
                            "not_after_ms": int(c.not_after * 1000) if c else None,
                            "expires_in_s": int(c.not_after - now) if c else None,
                            "next_attempt_in_s": round(max(0.0, e.next_at - now), 1),
                            "failures": e.failures, "last_error": e.last_error,
                            "last_error_kind": e.last_kind,
                            "issuing": self.issuing == e.names})
        return out


def _when(t: float, short: bool = False) -> str:
    left = t - time.time()
    at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    span = (f"{int(left)} s" if abs(left) < 120 else f"{int(left // 60)} min" if abs(left) < 7200
            else f"{int(left // 3600)} h" if abs(left) < 172800 else f"{int(left // 86400)} days")
    return f"in {span}" if short else f"{at} (in {span})"
