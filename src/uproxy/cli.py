"""The uproxy command: run, check, doctor, stats, reload."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from . import __version__


def _setup_logging(verbose: bool):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"uproxy[{os.getpid()}]: %(levelname)s: %(message)s"
                        if verbose else f"uproxy[{os.getpid()}]: %(message)s",
                        stream=sys.stderr)


def cmd_check(a) -> int:
    from .config import ConfigError, load
    try:
        cfg = load(a.config)
    except ConfigError as e:
        print(f"uproxy: configuration error: {e}", file=sys.stderr)
        return 2
    print(f"uproxy: {cfg.path}: ok ({len(cfg.listeners)} listeners, "
          f"{len(cfg.clusters)} clusters, "
          f"{sum(len(c.servers) for c in cfg.clusters.values())} servers)")
    return 0


def cmd_run(a) -> int:
    from .config import ConfigError
    from .listeners import BindError
    from .runtime import Runtime, StartError
    _setup_logging(a.verbose)
    log = logging.getLogger("uproxy")
    rt = Runtime(a.config, workers=a.workers)
    # Signals are taken before the workers start, so an early SIGTERM is
    # not lost; the workers block all signals themselves.
    rt.install_signals()
    try:
        rt.start()
    except ConfigError as e:
        log.error("configuration error: %s", e)
        return 2
    except (StartError, BindError, ValueError) as e:
        log.error("%s", e)
        return 1
    for l in rt.cfg.listeners:
        log.info("listening on %s:%d (%s -> cluster %s)", l.host, rt.port_of(l.name), l.mode, l.cluster)
    from . import features as feat
    log.info("%d workers on CPUs %s; io_uring features: %s", rt.nworkers,
             ",".join(str(w.cpu) for w in rt.workers), ", ".join(feat.names(rt.features)) or "none")
    if a.dashboard:
        from .tui.dashboard import run_embedded
        return run_embedded(rt, interval=a.interval)
    code = rt.serve()
    log.info("stopped (exit %d)", code)
    return code


def cmd_stats(a) -> int:
    from . import shm
    try:
        pid = shm.find_pid(a.pid)
        r = shm.Reader(pid)
    except (LookupError, shm.LayoutError, OSError) as e:
        print(f"uproxy: {e}", file=sys.stderr)
        return 1
    snap = r.snapshot()
    if a.json:
        print(json.dumps(snap, indent=2))
        return 0
    t = snap["total"]
    print(f"uproxy pid {snap['pid']}, up {snap['uptime_s']:.0f}s, generation "
          f"{snap['config_generation']}, {len(snap['workers'])} workers")
    for k in ("accepted", "active", "closed", "bytes_from_clients", "bytes_to_clients",
              "upstream_connects", "err_connect_refused", "err_connect_timeout", "err_no_server"):
        print(f"  {k:24} {t[k]}")
    return 0


def cmd_reload(a) -> int:
    from . import shm
    try:
        pid = shm.find_pid(a.pid)
    except LookupError as e:
        print(f"uproxy: {e}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"uproxy: cannot signal pid {pid}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"uproxy: asked pid {pid} to reload (SIGHUP); its log says whether the new "
          f"configuration was taken")
    return 0


def cmd_doctor(a) -> int:
    from .doctor import run
    return run(as_json=a.json)


def cmd_top(a) -> int:
    from .tui.dashboard import run_attached
    return run_attached(pid=a.pid, interval=a.interval, once=a.once, as_json=a.json)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uproxy", description="io_uring L4/L7 reverse proxy")
    p.add_argument("--version", action="version", version=f"uproxy {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the proxy")
    r.add_argument("-c", "--config", required=True, help="configuration file (TOML)")
    r.add_argument("--workers", type=int, help="worker threads (default: one per allowed CPU)")
    r.add_argument("--dashboard", action="store_true", help="show the live dashboard in this terminal")
    r.add_argument("--interval", type=float, default=1.0, help="dashboard refresh, seconds")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("check", help="validate a configuration file and exit")
    c.add_argument("-c", "--config", required=True)
    c.set_defaults(fn=cmd_check)

    d = sub.add_parser("doctor", help="what this host offers uproxy, and what to fix")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=cmd_doctor)

    s = sub.add_parser("stats", help="print a counters snapshot of a running proxy")
    s.add_argument("--pid", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_stats)

    rl = sub.add_parser("reload", help="make a running proxy re-read its configuration")
    rl.add_argument("--pid", type=int)
    rl.set_defaults(fn=cmd_reload)

    t = sub.add_parser("top", help="live dashboard of a running proxy")
    t.add_argument("--pid", type=int)
    t.add_argument("--interval", type=float, default=1.0)
    t.add_argument("--once", action="store_true", help="print one snapshot and exit")
    t.add_argument("--json", action="store_true", help="with --once: the snapshot as JSON")
    t.set_defaults(fn=cmd_top)
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.cmd == "run" and a.workers is not None and a.workers < 1:
        print("uproxy: --workers must be at least 1", file=sys.stderr)
        return 2
    return a.fn(a)
