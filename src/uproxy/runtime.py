"""The running proxy: workers, reloads, drain.

Python's part is all control: it binds the listening sockets, builds the
configuration tables, starts one pinned thread per worker (each of which
goes into the C loop and stays there with the GIL released), swaps in new
tables on reload, and stops the workers on SIGTERM. Nothing here runs per
connection.
"""
from __future__ import annotations

import logging
import os
import resource
import signal
import threading
import time

from . import features as feat
from . import shm
from . import tls
from ._native import ffi, lib
from .config import Config, ConfigError, parse_raw, parse_toml, read
from .listeners import ListenerSockets
from .accesslog import AccessLog
from .health import HealthChecker
from .tables import Tables, TLSContexts

log = logging.getLogger("uproxy")


class StartError(Exception):
    pass


def _brief(e) -> str:
    """A reload error for the event ring's short lines (the dashboard's
    events, `uproxy reload` when the status file is missing): the first
    mistake with its file name and line, and how many more there are."""
    if isinstance(e, ConfigError):
        f, n = e.errors[0], len(e.errors)
        where = os.path.basename(f.path) + (f":{f.line}" if f.line else "")
        return (f" ({n} errors)" if n > 1 else "") + f": {where}: " + \
            (f"{f.key}: " if f.key else "") + f.message
    return f": {e}"


def probe() -> int:
    res = ffi.new("struct up_probe_result *")
    if lib.up_probe(res) < 0:
        raise StartError(f"io_uring is not usable here: {os.strerror(res.setup_errno)}. "
                         f"Check kernel.io_uring_disabled (sysctl), seccomp filters "
                         f"(containers often block io_uring) and the kernel version.")
    # kTLS is the kernel's tls ULP, not an io_uring feature: the TLS layer
    # asks for it, and it is switched off like the others ("ktls"). Sealing
    # and opening our own TLS records need nothing of the kernel ("tls_seal",
    # "tls_open").
    return (res.features | lib.UP_F_TLS_SEAL | lib.UP_F_TLS_OPEN | lib.UP_F_H2_CODEC
            | (lib.UP_F_TLS_MSHOT if res.features & lib.UP_F_MULTISHOT_RECV else 0)
            | (lib.UP_F_KTLS | lib.UP_F_KTLS_RX if lib.up_tls_ktls_available() else 0))


def allowed_cpus() -> list:
    return sorted(os.sched_getaffinity(0))


def raise_nofile(need: int) -> tuple:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, need


def drop_privileges(user: str, group: str | None):
    """setgroups, setgid, setuid: all threads (glibc applies set*id to every
    thread; there are none yet anyway)."""
    import grp
    import pwd
    pw = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    if os.geteuid() != 0:
        if os.geteuid() == pw.pw_uid:
            return
        raise StartError(f"[proxy] user = {user!r} needs uproxy to start as root "
                         f"(it is running as uid {os.geteuid()})")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(pw.pw_uid)
    log.info("dropped privileges to user %s (uid %d, gid %d)", user, pw.pw_uid, gid)


class Worker:
    def __init__(self, rt: "Runtime", index: int, cpu: int):
        self.index, self.cpu = index, cpu
        p = rt.cfg.proxy
        o = ffi.new("struct up_worker_opts *")
        o.index = index
        o.cpu = cpu
        o.features = rt.features
        o.max_conns = rt.max_conns
        o.ring_entries = p.ring_entries
        o.buf_size = p.buffer_size
        o.buf_count = p.buffers
        o.pipe_count = p.pipes
        o.pipe_size = p.pipe_size
        o.iowq_max_workers = p.iowq_max_workers
        o.iowq_cpu = cpu if p.iowq_cpu == "worker" else (-1 if p.iowq_cpu == "any" else int(p.iowq_cpu))
        o.queue_limit = p.queue_limit
        o.head_buffers = p.head_buffers
        o.splice_min = p.body_splice_min
        o.compress_streams = p.compress_streams
        o.batch_wait_us = p.batch_wait_us
        o.batch_wait_events = p.batch_wait_events
        sm = rt.sockmap
        o.sm_socks_fd = sm.fds["socks"] if sm else -1
        o.sm_sess_fd = sm.fds["sess"] if sm else -1
        o.sm_st_fd = sm.fds["st"] if sm else -1
        self.opts = o
        self.ptr = lib.up_worker_new(o, rt.control, rt.segment.workers[index],
                                     rt.segment.wservers[index], rt.segment.wlisteners[index],
                                     rt.segment.log_rings[index])
        if self.ptr == ffi.NULL:
            raise StartError(f"worker {index}: cannot allocate its connection slab "
                             f"({p.max_connections} connections); lower max_connections")
        self.ready = threading.Event()
        self.error = None
        self.result = None
        self.thread = threading.Thread(target=self._run, name=f"uproxy-w{index}", daemon=True)

    def _run(self):
        r = lib.up_worker_setup(self.ptr)
        if r < 0:
            self.error = ffi.string(lib.up_worker_error(self.ptr)).decode() or os.strerror(-r)
            self.ready.set()
            return
        self.ready.set()
        self.result = lib.up_worker_loop(self.ptr)    # GIL released for the whole run
        if self.result < 0:
            self.error = ffi.string(lib.up_worker_error(self.ptr)).decode()

    def free(self):
        if self.ptr is not None:
            lib.up_worker_free(self.ptr)
            self.ptr = None


class Runtime:
    def __init__(self, config_path: str, workers: int | None = None, watch: bool = False):
        self.config_path = config_path
        self.workers_override = workers
        self.watch = watch                   # --watch (or [proxy] watch = true)
        self.cfg: Config | None = None       # in force: with DNS's addresses
        self.base_cfg: Config | None = None  # the file (and etcd's part), names unresolved
        self.watcher = None                  # providers: see providers/__init__.py
        self.dns = None
        self.etcd = None
        self.acme = None                     # acme/manager.py: automatic certificates
        self._main_calls = []                # (fn, event, box): run by serve() for other threads
        self._dns_dirty = False              # set by the DNS thread, taken by serve()
        self._reload_source = "signal"
        self.last_reload = None              # for /status: the last reload's outcome
        self.tables: list[Tables] = []      # newest last; older ones until released
        self.sockets: dict = {}              # (host, port) -> ListenerSockets
        self.generation = 0
        self.workers: list[Worker] = []
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.wake = threading.Event()        # without signal handlers: ends the main loop's wait
        self.events: list = []               # (time, text): recent notable events
        self.tickets = tls.TicketKeys()      # session-ticket keys, kept across reloads
        self._ticket_retry = None            # monotonic time to publish rotated keys again
        self.monotonic = time.monotonic      # (tests give their own clock)

    # ---- start -------------------------------------------------------
    def start(self):
        why = feat.kernel_too_old()
        if why:
            raise StartError(why)
        self._start_providers_config()
        for w in self.cfg.warnings:
            log.warning("configuration warning: %s", w.one())
        p = self.cfg.proxy
        probed = probe()
        disabled = set(p.disable_features) | set(feat.from_env())
        self.features = probed & ~feat.mask(disabled)
        # tls_multishot is opening's use of multishot receives: without
        # either, it is not in use (and the workers' stats do not list it)
        if (self.features & (lib.UP_F_MULTISHOT_RECV | lib.UP_F_TLS_OPEN)) != \
                (lib.UP_F_MULTISHOT_RECV | lib.UP_F_TLS_OPEN):
            self.features &= ~lib.UP_F_TLS_MSHOT
        self.sockmap = None
        cpus = allowed_cpus()
        n = self.workers_override or p.workers or len(cpus)
        self.nworkers = n
        # Like HAProxy's maxconn: fit the connection limit to the open-file
        # limit, so a full worker pauses accepting instead of hitting EMFILE.
        fixed = n * (2 * p.pipes + len(self.cfg.listeners) + 16) + 64
        soft, _ = raise_nofile(fixed + n * 2 * p.max_connections)
        fit = max(1, (soft - fixed) // (2 * n))
        self.max_conns = min(p.max_connections, fit)
        self._load_sockmap(disabled)
        if self.max_conns < p.max_connections:
            log.info("open-file limit %d allows %d client connections per worker "
                     "(max_connections is %d); raise it with ulimit -n or LimitNOFILE= "
                     "to use more", soft, self.max_conns, p.max_connections)
        # Bind first (ports below 1024 need root), then drop privileges,
        # then make everything else as the unprivileged user.
        self._sockets_for(self.cfg)
        if p.user:
            try:
                drop_privileges(p.user, p.group)
            except BaseException:
                for s in self.sockets.values():
                    s.close()
                raise
        shm.sweep_stale()
        self.segment = shm.Segment(n, self.features)
        self.control = ffi.new("struct up_control *")
        # Active health by server stat slot (a slot is one cluster+address
        # for the process's life): out of the tables, which stay immutable.
        self.server_health = ffi.new("uint8_t[]", lib.UP_MAX_SERVERS)
        self.control.server_health = self.server_health
        self.health = HealthChecker(self)
        self.health.configure(self.cfg)
        self.access_log = AccessLog(self)
        try:
            self._publish(self.cfg)
            for i in range(n):
                self.workers.append(Worker(self, i, cpus[i % len(cpus)]))
            for w in self.workers:
                w.thread.start()
            for w in self.workers:
                w.ready.wait()
            failed = [w for w in self.workers if w.error]
            if failed:
                raise StartError(f"worker {failed[0].index} could not start: {failed[0].error}")
        except BaseException:
            self._abort_start()
            raise
        self.event(f"started generation {self.generation} with {n} workers")
        self._start_providers()
        self.health.start()
        self.access_log.start()
        self.admin = None
        if self.cfg.admin:
            from .admin import AdminServer      # /metrics, /status, /health
            try:
                self.admin = AdminServer(self, self.cfg.admin.host, self.cfg.admin.port)
            except OSError as e:
                self.stop()
                raise StartError(f"cannot serve the admin endpoint on "
                                 f"{self.cfg.admin.host}:{self.cfg.admin.port}: {e.strerror}")
        return self

    def _load_sockmap(self, disabled):
        """forwarding = "sockmap": load the program once, at start, when a
        listener asks for it (a reload that adds one later gets splice);
        else those listeners splice, said in one line."""
        want = [l.name for l in self.cfg.listeners if l.mode == "tcp" and l.forwarding == "sockmap"]
        self._sockmap_said = set(want)
        if not want:
            return
        if "sockmap" in disabled:
            why = "switched off (disable_features / UPROXY_DISABLE)"
        else:
            from . import sockmap
            self.sockmap, why = sockmap.load(self.nworkers, self.max_conns)
        if self.sockmap is not None:
            self.features |= lib.UP_F_SOCKMAP
            log.info("sockmap: program loaded; listeners %s forward in the kernel", ", ".join(want))
        else:
            log.warning("sockmap: listeners %s fall back to splice: %s", ", ".join(want), why)

    def _sockmap_after_start(self, cfg):
        """A reload that names sockmap listeners the program was not loaded
        for (it loads at start only): one line for the new ones."""
        if self.sockmap is not None:
            return
        want = {l.name for l in cfg.listeners if l.mode == "tcp" and l.forwarding == "sockmap"}
        new = sorted(want - getattr(self, "_sockmap_said", set()))
        self._sockmap_said = want
        if new:
            log.warning("sockmap: listeners %s fall back to splice: the program is loaded at "
                        "start only (restart uproxy to load it)", ", ".join(new))

    def _abort_start(self):
        lib.up_control_stop(self.control, 0)
        for w in self.workers:
            if w.thread.is_alive():
                w.thread.join(5)
        if not any(w.thread.is_alive() for w in self.workers):
            for t in self.tables:
                t.free()
        for w in self.workers:
            w.free()
        self.workers = []
        for s in self.sockets.values():
            s.close()
        self.sockets = {}
        self.segment.close()
        self._close_sockmap()

    # ---- tables ----------------------------------------------------------
    def _sockets_for(self, cfg: Config) -> dict:
        """Listener name -> sockets, reusing what is already bound."""
        out = {}
        created = []
        try:
            for l in cfg.listeners:
                key = (l.host, l.port)
                s = self.sockets.get(key)
                if s is None:
                    s = ListenerSockets(l.host, l.port, l.backlog, self.nworkers)
                    created.append(s)
                    self.sockets[key] = s
                out[l.name] = s
        except Exception:
            for s in created:
                s.close()
                self.sockets.pop(s.key, None)
            raise
        return out

    def _publish(self, cfg: Config):
        # The TLS contexts first: the library may refuse a file or a
        # setting, and then nothing of the running configuration has moved.
        keys = {l.name: self.tickets.keys_for(l.name, l.tls) for l in cfg.listeners if l.tls}
        self.tickets.forget(set(keys))
        contexts = TLSContexts(cfg, self.nworkers, keys)
        try:
            self._publish_with(cfg, contexts)
        except BaseException:
            contexts.free()
            raise
        self._ticket_retry = None            # the current keys are out

    def _publish_with(self, cfg: Config, contexts: TLSContexts):
        socks = self._sockets_for(cfg)
        self.generation += 1
        health = self.health.health_map()
        slots = {}
        for c in cfg.clusters.values():
            for sv in c.servers:
                slots[(c.name, sv.label)] = self.segment.server_slot(c.name, sv.label, self.generation)
        self.segment.retire_servers(set(slots))
        cslots = {name: self.segment.cluster_slot(name, self.generation) for name in cfg.clusters}
        lslots = {l.name: self.segment.listener_slot(l.name, lib.UP_MODE_HTTP if l.mode == "http"
                                                      else lib.UP_MODE_TCP)
                  for l in cfg.listeners}
        for l in cfg.listeners:
            if l.mode == "http":
                for j, r in enumerate(l.routes):
                    lslots[("route", l.name, j)] = self.segment.route_slot(l.name, j, r.host,
                                                                           r.path_prefix)
        self.segment.retire_listeners(set(lslots.values()))
        for key, slot in slots.items():
            self.server_health[slot] = 1 if health.get(key, True) else 0
            if key in health:
                self.segment.set_health(*key, health[key])
        t = Tables(cfg, self.generation, self.nworkers, socks, slots, contexts, lslots,
                   self.segment.slot_gens, cslots)
        if getattr(self, "access_log", None):
            self.access_log.configure(t)     # before the workers can log for it
        # in the list only once nothing can fail: collect() takes the last
        # one for what the workers run, and frees the others' TLS contexts
        self.tables.append(t)
        self.cfg = cfg
        lib.up_control_publish(self.control, t.ptr)
        self.segment.header.config_generation = self.generation

    def collect(self):
        """Drop tables no worker and no session uses any more, and close
        listening sockets that no remaining table names."""
        if len(self.tables) < 2:
            return
        newest = self.tables[-1].generation
        if any(lib.up_worker_generation(self.segment.workers[w.index]) < newest
               for w in self.workers if w.thread.is_alive()):
            return
        keep = [t for t in self.tables[:-1] if t.refs_held()] + [self.tables[-1]]
        for t in self.tables:
            if t not in keep:
                t.free()                 # its TLS contexts: no worker reads it any more
        self.tables = keep
        live = {id(s) for t in self.tables for s in t.sockets.values()}
        for key, s in list(self.sockets.items()):
            if id(s) not in live:
                s.close()
                del self.sockets[key]

    # ---- reload ------------------------------------------------------------
    def compose(self, snap=None) -> Config:
        """The file, read now, with etcd's dynamic part laid over it: snap's
        (a snapshot being tried) or else the last one accepted. The
        configuration before DNS; the same checks either way
        (config.parse_raw)."""
        text = read(self.config_path)
        path = os.path.abspath(self.config_path)
        raw = parse_toml(text, path)
        if snap is None and self.etcd is not None:
            snap = self.etcd.in_force
        if snap is not None and snap.kvs:
            from .providers import dynamic
            return parse_raw(dynamic.overlay(raw, snap.kvs, snap.where), path)
        return parse_raw(raw, path, text)

    def effective(self, base: Config) -> Config:
        """base with the addresses DNS gives its clusters' names now, and
        the certificates and challenges ACME holds now."""
        cfg = base
        if self.dns is not None:
            from .providers import dns
            cfg = dns.expand(base, self.dns.answers())
        if self.acme is not None:
            cfg = self.acme.expand(cfg)
        return cfg

    # ---- ACME (acme/manager.py) ----------------------------------------------
    def _acme_configure(self, base: Config):
        if base.acme is not None and self.acme is None:
            from .acme.manager import Manager
            self.acme = Manager(self, base.acme)
            if self.workers:                 # added by a reload: its thread starts now
                self.acme.start()
        if self.acme is not None:
            self.acme.configure(base)

    def publish_acme(self) -> int:
        """Main thread: a new generation with ACME's certificates and
        challenges as they are now (not a reload: the file is not read)."""
        self._publish(self.effective(self.base_cfg))
        return self.generation

    def run_in_main(self, fn, timeout: float):
        """fn's result, run by the main loop (which owns the tables); None
        when it failed (logged) or did not run within timeout."""
        if threading.current_thread() is threading.main_thread() or not self.workers:
            return fn()
        done, box = threading.Event(), []
        self._main_calls.append((fn, done, box))
        self.poke()
        done.wait(timeout)
        return box[0] if box else None

    def _run_main_calls(self):
        while self._main_calls:
            fn, done, box = self._main_calls.pop(0)
            try:
                box.append(fn())
            except Exception as e:
                log.error("acme: publishing failed, the tables in force stay: %s", e)
                self.event(f"acme: publish failed{_brief(e)}")
            done.set()

    def workers_at(self, generation: int) -> bool:
        return all(lib.up_worker_generation(self.segment.workers[w.index]) >= generation
                   for w in self.workers if w.thread.is_alive())

    def reload(self, source: str | None = None) -> bool:
        """Re-read the file (SIGHUP, `uproxy reload`, or the watcher: source
        says which) and publish it; on any error the running configuration
        stays, and the error is in the log, /status and the counters."""
        source = source or self._reload_source
        self._reload_source = "signal"
        started = time.monotonic_ns()
        warnings = []
        try:
            base = self.compose()
            if (base.proxy.workers or self.nworkers) != self.nworkers and not self.workers_override:
                warnings.append(f"[proxy] workers changed; that takes a restart, "
                                f"keeping {self.nworkers} workers")
                log.warning("reload: %s", warnings[-1])
            for w in base.warnings:
                warnings.append(w.one())
                log.warning("reload: configuration warning: %s", w.one())
            self._apply(base, resolve_new=True)
        except (ConfigError, OSError, Exception) as e:
            self._record_reload(e, warnings, started)
            self.segment.header.reload_failures += 1
            self.last_reload = {"time_ms": int(time.time() * 1000), "source": source, "ok": False,
                                "error": str(e), "generation": self.generation}
            why = "" if source == "signal" else f" ({source})"
            log.error("reload failed%s, still running generation %d: %s", why, self.generation, e)
            # ("reload failed" first: `uproxy reload` looks the reason up by it)
            self.event("reload failed" + ("" if source == "signal" else f" ({source})") + _brief(e))
            return False
        self._record_reload(None, warnings, started)
        self.segment.header.reloads += 1
        self.last_reload = {"time_ms": int(time.time() * 1000), "source": source, "ok": True,
                            "error": None, "generation": self.generation}
        log.info("reloaded %s%s: generation %d", self.config_path,
                 "" if source == "signal" else f" ({source})", self.generation)
        self.event(f"reloaded: generation {self.generation}" + ("" if source == "signal" else f" ({source})"))
        return True

    def _apply(self, base: Config, resolve_new: bool = False):
        """Publish base (with DNS's addresses) and point the providers at it.
        Names new to DNS are asked first (resolve_new), so a cluster that
        gains a name does not run a moment without its addresses."""
        if self.dns is not None:
            self.dns.configure(base)
            if resolve_new:
                self.dns.resolve_now(only_new=True)
        self._acme_configure(base)
        cfg = self.effective(base)
        self._publish(cfg)
        self._sockmap_after_start(cfg)
        self.base_cfg = base
        self.health.configure(cfg)
        if self.watcher is not None:
            from .providers.watch import files_of
            self.watcher.set_files(files_of(base))

    def _apply_dns(self):
        """The DNS thread saw an answer change: a new generation with the
        addresses in force now (not a reload: the file is not read)."""
        old = {(c.name, s.label) for c in self.cfg.clusters.values() for s in c.servers}
        cfg = self.effective(self.base_cfg)
        new = {(c.name, s.label) for c in cfg.clusters.values() for s in c.servers}
        if new == old and all(self.cfg.clusters[n].servers == c.servers
                              for n, c in cfg.clusters.items()):
            return
        try:
            self._publish(cfg)
        except Exception as e:
            log.error("dns: publishing the new addresses failed, the previous ones stay in "
                      "force (generation %d): %s", self.generation, e)
            self.event(f"dns update failed{_brief(e)}")
            return
        self.health.configure(cfg)
        diff = [f"+{c}/{a}" for c, a in sorted(new - old)] + [f"-{c}/{a}" for c, a in sorted(old - new)]
        log.info("dns: generation %d: %s", self.generation, " ".join(diff) or "weights changed")
        self.event(f"dns: generation {self.generation}: " + (" ".join(diff) or "weights"))

    def _start_providers_config(self):
        """At start, before the first table: the file, then (when it names
        etcd) etcd's dynamic part, then one DNS answer for every name."""
        # the providers' modules now: after dropping privileges the Python
        # installation may not be readable any more
        from .providers import dns, dynamic, watch  # noqa: F401
        dns.warm()
        base = self.compose()
        if base.etcd is not None:
            from .providers.etcd import EtcdProvider
            self.etcd = EtcdProvider(base.etcd, self._etcd_changed)
            snap = self.etcd.fetch_once()
            if snap is not None:
                try:
                    base = self.compose(snap)
                    self.etcd.accepted(snap)
                except ConfigError as e:     # the file alone, until etcd holds a valid part
                    from .providers.dynamic import etcd_keys
                    self.etcd.refused(snap, etcd_keys(str(e), snap.kvs))
        if any(c.names for c in base.clusters.values()):
            from .providers.dns import DNSProvider
            self.dns = DNSProvider(self._dns_changed)
            self.dns.configure(base)
            self.dns.resolve_now()
        self.base_cfg = base
        self._acme_configure(base)           # the stored certificates, before anything is asked
        self.cfg = self.effective(base)
        self.watch = self.watch or base.proxy.watch

    def _start_providers(self):
        if self.dns is None:
            from .providers.dns import DNSProvider
            self.dns = DNSProvider(self._dns_changed)    # a reload may add names later
            self.dns.configure(self.base_cfg)
        self.dns.start()
        if self.watch:
            from .providers.watch import FileWatcher, files_of
            try:
                self.watcher = FileWatcher(files_of(self.base_cfg), self._file_changed).start()
                log.info("watching %s for changes", ", ".join(self.watcher.status()["files"]))
            except OSError as e:
                log.error("cannot watch the configuration file, reload it with SIGHUP: %s", e)
        if self.etcd is not None:
            self.etcd.start()
        if self.acme is not None:
            self.acme.start()

    # called from the providers' threads: note, and wake the main loop
    def _file_changed(self, paths):
        log.info("watch: %s changed", ", ".join(os.path.basename(p) for p in paths))
        self._reload_source = "watch"
        self.reload_requested.set()
        self.poke()

    def _dns_changed(self):
        self._dns_dirty = True
        self.poke()

    def _etcd_changed(self):
        self.poke()

    def poke(self):
        """End the main loop's wait now (from another thread)."""
        self.wake.set()
        w = getattr(self, "_wake_w", None)
        if w is not None:
            try:
                os.write(w, b"p")
            except OSError:
                pass

    def _apply_etcd(self):
        """A new snapshot of etcd's dynamic part: checked like a reload;
        refused (and reported) when it does not validate."""
        if self.etcd is None:
            return
        snap = self.etcd.take()
        if snap is None:
            return
        try:
            base = self.compose(snap)
            self._apply(base, resolve_new=True)
        except (ConfigError, OSError, Exception) as e:
            from .providers.dynamic import etcd_keys
            why = etcd_keys(str(e), snap.kvs)      # clusters[1] -> the key it came from
            self.etcd.refused(snap, why)
            self.event(f"etcd revision {snap.revision} refused{etcd_keys(_brief(e), snap.kvs)}")
            return
        self.etcd.accepted(snap)
        log.info("etcd: applied revision %d: generation %d", snap.revision, self.generation)
        self.event(f"etcd revision {snap.revision}: generation {self.generation}")

    def providers_status(self) -> dict:
        return {
            "watch": self.watcher.status() if self.watcher is not None else None,
            "last_reload": self.last_reload,
            "dns": self.dns.status() if self.dns is not None else [],
            "etcd": self.etcd.status() if self.etcd is not None else None,
            "acme": self.acme.status() if self.acme is not None else None,
        }

    def rotate_tickets(self) -> bool:
        """Every ticket_rotate: a new first session-ticket key for the
        listeners that are due, published as a new generation of the same
        configuration (the contexts are immutable, DESIGN.md law 1). The
        earlier keys stay accepted, so no client loses its session. Not a
        reload: the file is not read again."""
        now = self.monotonic()
        left = self.tickets.due()
        due = left is not None and left <= 0
        retry = self._ticket_retry is not None and self._ticket_retry <= now
        if not (due or retry):
            return False
        names = self.tickets.rotate_due() if due else []
        try:
            self._publish(self.cfg)
        except Exception as e:
            # The keys rotated all the same (the next publish carries them);
            # the files the contexts are made from may be in the middle of
            # a renewal: try again in a minute, not at every tick.
            self._ticket_retry = now + 60
            log.error("publishing new session-ticket keys failed, retrying in 60 s "
                      "(the previous keys stay in use): %s", e)
            self.event(f"ticket key rotation failed{_brief(e)}")
            return False
        if names:
            log.info("rotated the session-ticket keys of %s: generation %d", ", ".join(names),
                     self.generation)
        return True

    def _record_reload(self, error, warnings, started_ns):
        """The outcome, for `uproxy reload` (shm.reload_status_path), written
        before the counter it waits on moves, with when the reload began
        (CLOCK_MONOTONIC), so that `uproxy reload` can tell a reload that
        was already under way when it signalled from its own. Never fails
        the reload."""
        errors = []
        if isinstance(error, ConfigError):
            errors = [{"text": e.one(), "line": e.line, "key": e.key, "snippet": e.snippet}
                      for e in error.errors]
        elif error is not None:
            errors = [{"text": str(error) or error.__class__.__name__}]
        try:
            shm.write_reload_status({
                "time_ms": int(time.time() * 1000), "started_mono_ns": started_ns,
                "ok": error is None,
                "config": os.path.abspath(self.config_path), "generation": self.generation,
                "error": str(error) if error is not None else None, "errors": errors,
                "warnings": warnings})
        except OSError as e:
            log.warning("cannot record the reload outcome for `uproxy reload`: %s", e)

    def event(self, text: str):
        self.events.append((time.time(), text))
        del self.events[:-50]
        if getattr(self, "segment", None) is not None:
            self.segment.event(text)

    # ---- run and stop --------------------------------------------------
    def install_signals(self):
        """The handlers only note the signal. Python runs a handler between
        two bytecodes of the main thread, which may be inside an Event's
        lock at that moment (setting an Event there deadlocks, or recurses
        until RecursionError, when SIGHUPs come every few ms). The wake-up
        fd, written by the C-level handler, ends the main loop's wait at once."""
        self._signalled = {"stop": False, "reload": False}
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_fd = r
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._wake_w = w                     # poke(): the providers' threads write here too

        def stop(*_):
            self._signalled["stop"] = True

        def reload(*_):
            self._signalled["reload"] = True
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _wait(self, timeout: float):
        fd = getattr(self, "_wake_fd", None)
        if fd is None:
            self.wake.wait(timeout)
            self.wake.clear()
        else:
            import select
            select.select([fd], [], [], timeout)
            try:
                while os.read(fd, 4096):
                    pass
            except BlockingIOError:
                pass
        sig = getattr(self, "_signalled", None)
        if sig:
            if sig["stop"]:
                self.stop_requested.set()
            if sig["reload"]:
                sig["reload"] = False
                self.reload_requested.set()

    def serve(self, tick=None) -> int:
        """Main thread: wait for signals, reload, collect; return the exit code."""
        while not self.stop_requested.is_set():
            self._wait(0.2)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            if self._dns_dirty:
                self._dns_dirty = False
                self._apply_dns()
            self._apply_etcd()
            self._run_main_calls()
            self.rotate_tickets()
            self.collect()
            dead = [w for w in self.workers if not w.thread.is_alive()]
            if dead and not self.stop_requested.is_set():
                log.error("worker %d stopped unexpectedly: %s", dead[0].index,
                          dead[0].error or "no error given")
                self.stop()
                return 1
            if tick:
                tick()
        return self.stop()

    def set_health(self, cluster: str, label: str, up: bool):
        """Called by the health checker: one byte by the server's stat slot
        (up_control.server_health), read by the workers without a lock,
        whatever tables are live."""
        slot = self.segment.slots.get((cluster, label))
        if slot is not None:
            self.server_health[slot] = 1 if up else 0
        self.segment.set_health(cluster, label, up)

    def stop(self) -> int:
        for p in (self.watcher, self.dns, self.etcd, self.acme):
            if p is not None:
                p.close()
        if getattr(self, "health", None):
            self.health.close()
        if getattr(self, "admin", None):
            self.admin.close()
            self.admin = None
        drain = self.cfg.proxy.drain_timeout_ms
        lib.up_control_stop(self.control, drain)
        # Each worker stops accepting at once; then close the listening
        # sockets so new clients are refused rather than left queued.
        deadline = time.monotonic() + drain / 1000 + 5
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0 and any(
                shm.STATES.get(int(self.segment.workers[w.index].state)) == "running"
                for w in self.workers if w.thread.is_alive()):
            time.sleep(0.01)
        for s in self.sockets.values():
            s.close()
        code = 0
        for w in self.workers:
            w.thread.join(max(0.1, deadline - time.monotonic()))
            if w.thread.is_alive():
                log.error("worker %d did not stop within the drain timeout", w.index)
                code = 1
            elif w.error:
                log.error("worker %d: %s", w.index, w.error)
                code = 1
        if not any(w.thread.is_alive() for w in self.workers):
            for t in self.tables:
                t.free()
        for w in self.workers:
            if not w.thread.is_alive():
                w.free()
        if getattr(self, "access_log", None):
            self.access_log.close()
        self.segment.close()
        self._close_sockmap()
        return code

    def _close_sockmap(self):
        if getattr(self, "sockmap", None) is not None and not any(
                w.thread.is_alive() for w in self.workers):
            try:
                fails = self.sockmap.redirect_fails()
            except Exception:
                fails = 0
            if fails:
                log.warning("sockmap: %d redirects were refused (their bytes went through "
                            "the workers instead)", fails)
            self.sockmap.close()
            self.sockmap = None

    def port_of(self, listener_name: str) -> int:
        for l in self.cfg.listeners:
            if l.name == listener_name:
                return self.sockets[(l.host, l.port)].port
        raise KeyError(listener_name)
