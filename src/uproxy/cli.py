"""The uproxy command: run, check, doctor, stats, reload, top."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import socket
import sys
import time

from . import __version__


def _setup_logging(verbose: bool):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"uproxy[{os.getpid()}]: %(levelname)s: %(message)s"
                        if verbose else f"uproxy[{os.getpid()}]: %(message)s",
                        stream=sys.stderr)


def _err(text: str):
    print(f"uproxy: {text}", file=sys.stderr)


# ---- check -----------------------------------------------------------------------

def _show(kind: str, path: str, line, key: str, message: str, snippet) -> str:
    """One finding the way a compiler prints it: file:line: key: what,
    then the line itself."""
    where = f"{path}:{line}" if line else path
    text = f"uproxy: {kind}: {where}: " + (f"{key}: " if key else "") + message
    if snippet:
        text += f"\n{line:>6} | {snippet}"
    return text


def _hex_addr(h: str) -> str:
    """An address as /proc/net/tcp{,6} writes it (32-bit words in host order)."""
    raw = b"".join(bytes.fromhex(h[i:i + 8])[::-1] for i in range(0, len(h), 8))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def port_holders(host: str, port: int) -> list:
    """[(pid, command line)] of the processes whose sockets hold host:port:
    /proc/net/tcp{,6} gives the socket inodes, /proc/*/fd who has them.
    Processes this user may not look into are missing."""
    wild = ("0.0.0.0", "::")
    listening, bound = set(), set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(f) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10:
                continue
            addr_hex, _, port_hex = cols[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            try:
                addr = _hex_addr(addr_hex)
            except (ValueError, OSError):
                continue
            if addr == "::ffff:" + host:
                addr = host
            if not (addr == host or addr in wild or host in wild):
                continue
            (listening if cols[3] == "0A" else bound).add(cols[9])
    inodes = {f"socket:[{i}]" for i in (listening or bound) if i != "0"}
    found = []
    if not inodes:
        return found
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    break
            except OSError:
                continue
        else:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = ""
        found.append((int(pid), cmd[:100] or "?"))
    return found


def try_bind(host: str, port: int):
    """Bind and listen on host:port as `uproxy run` would, but without
    SO_REUSEPORT (so that a port another process listens on with
    SO_REUSEPORT is found busy too). Returns None when it worked, else
    (kind, message) with kind "error" or "note" (could not be tried)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"[{host}]:{port}" if fam == socket.AF_INET6 else f"{host}:{port}"
    s = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(1)
        return None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            from . import shm
            holders = port_holders(host, port)
            if not holders:
                return "error", (f"cannot listen on {where}: the address is in use by a process "
                                 f"this user cannot see (as root: ss -ltnp 'sport = :{port}')")
            ours = set(shm.running_pids())
            who = ", ".join(f"pid {p} ({cmd})" for p, cmd in holders)
            if all(p in ours for p, _ in holders):
                return "note", (f"{where} is in use by the running uproxy: {who}; "
                                f"`uproxy reload` keeps it, a second `uproxy run` could not bind it")
            return "error", f"cannot listen on {where}: the address is in use by {who}"
        if e.errno == errno.EACCES:
            return "note", (f"not tried {where}: ports below 1024 need root or "
                            f"CAP_NET_BIND_SERVICE (this is uid {os.geteuid()}); "
                            f"`uproxy run` needs them too")
        if e.errno == errno.EADDRNOTAVAIL:
            return "error", f"cannot listen on {where}: no local interface has that address"
        return "error", f"cannot listen on {where}: {e.strerror}"
    finally:
        s.close()


def cmd_check(a) -> int:
    from .config import ConfigError, Positions, load
    cfg, config_errors, binds, warnings = None, [], [], []
    try:
        cfg = load(a.config)
        path = cfg.path
        binds = [(f"listeners[{i}].bind", l.host, l.port) for i, l in enumerate(cfg.listeners)]
        if cfg.admin:
            binds.append(("admin.bind", cfg.admin.host, cfg.admin.port))
    except ConfigError as e:
        path = e.path
        config_errors = e.errors
        binds = getattr(e, "binds", [])
        warnings = getattr(e, "warnings", [])
    if cfg is not None and _has_tls(cfg):
        # what only the TLS library can judge (a cipher string, a file it
        # reads its own way): one context per listener and cluster, made
        # and freed, as the proxy will make them
        from .tables import check_library
        config_errors = check_library(cfg)
    elif cfg is not None:
        # a rewrite's regex: PCRE2 judges it, as the proxy will compile it
        from .tables import check_regexes
        config_errors = check_regexes(cfg)
    for e in config_errors:
        print(_show("configuration error", e.path, e.line, e.key, e.message, e.snippet),
              file=sys.stderr)
    for w in (cfg.warnings if cfg is not None else warnings):
        print(_show("warning", w.path, w.line, w.key, w.message, w.snippet), file=sys.stderr)
    bind_errors = 0
    if binds and not a.no_bind:
        try:
            with open(a.config, encoding="utf-8") as f:
                pos = Positions(f.read())
        except (OSError, UnicodeDecodeError):
            pos = Positions("")
        for key, host, port in binds:
            r = try_bind(host, port)
            if r is None:
                continue
            kind, msg = r
            bind_errors += kind == "error"
            line = pos.line_of(key)
            print(_show(kind, path, line, key, msg, pos.snippet(line)), file=sys.stderr)
    if config_errors:
        n = len(config_errors)
        _err(f"{path}: {n} configuration error{'s' if n > 1 else ''}"
             + (f", {bind_errors} address{'es' if bind_errors > 1 else ''} not usable" if bind_errors else ""))
        return 2
    if bind_errors:
        _err(f"{path}: the configuration is valid, but {bind_errors} address"
             f"{'es are' if bind_errors > 1 else ' is'} not usable here")
        return 1
    ncerts = sum(len(l.tls.certificates) for l in cfg.listeners if l.tls)
    print(f"uproxy: {cfg.path}: ok ({len(cfg.listeners)} listeners, "
          f"{len(cfg.clusters)} clusters, "
          f"{sum(len(c.servers) for c in cfg.clusters.values())} servers"
          + (f", {ncerts} TLS certificate{'s' if ncerts != 1 else ''}" if ncerts else "")
          + ("" if a.no_bind else ", addresses free") + ")")
    return 0


def _has_tls(cfg) -> bool:
    return any(l.tls for l in cfg.listeners) or any(c.tls for c in cfg.clusters.values())


# ---- run -----------------------------------------------------------------------

def cmd_run(a) -> int:
    from .config import ConfigError
    from .listeners import BindError
    from .runtime import Runtime, StartError
    _setup_logging(a.verbose)
    log = logging.getLogger("uproxy")
    rt = Runtime(a.config, workers=a.workers, watch=a.watch)
    # Signals are taken before the workers start, so an early SIGTERM is
    # not lost; the workers block all signals themselves.
    rt.install_signals()
    try:
        rt.start()
    except ConfigError as e:
        for one in e.errors:
            log.error("configuration error: %s", one.one())
        return 2
    except (StartError, BindError, ValueError) as e:
        log.error("%s", e)
        return 1
    for l in rt.cfg.listeners:
        log.info("listening on %s:%d (%s%s -> %s)", l.host, rt.port_of(l.name), l.mode,
                 ", TLS" if l.tls else "",
                 f"cluster {l.cluster}" if l.redirect is None else
                 f"{l.redirect.code} to https, port {l.redirect.port}")
    from . import features as feat
    log.info("%d workers on CPUs %s; io_uring features: %s", rt.nworkers,
             ",".join(str(w.cpu) for w in rt.workers), ", ".join(feat.names(rt.features)) or "none")
    if a.dashboard:
        from .tui.dashboard import run_embedded
        return run_embedded(rt, interval=a.interval)
    code = rt.serve()
    log.info("stopped (exit %d)", code)
    return code


# ---- stats, reload ---------------------------------------------------------------

def cmd_stats(a) -> int:
    from . import shm
    try:
        pid = shm.find_pid(a.pid)
        r = shm.Reader(pid)
    except (LookupError, shm.LayoutError, OSError) as e:
        _err(str(e))
        return 1
    snap = r.snapshot()
    if a.json:
        print(json.dumps(snap, indent=2))
        return 0
    t = snap["total"]
    print(f"uproxy pid {snap['pid']}, up {snap['uptime_s']:.0f}s, generation "
          f"{snap['config_generation']} ({snap['reloads']} reloads, {snap['reload_failures']} "
          f"failed), {len(snap['workers'])} workers; totals since start:")
    for k in ("accepted", "active", "closed", "bytes_from_clients", "bytes_to_clients",
              "upstream_connects", "err_connect_refused", "err_connect_timeout", "err_no_server"):
        print(f"  {k:24} {t[k]}")
    if t["sessions_sockmap"]:
        for k in ("sessions_sockmap", "sockmap_redirect_fails"):
            print(f"  {k:24} {t[k]}")
    classes = [f"resp_{c}xx" for c in range(1, 6)]
    http = bool(t["requests"] or any(t[k] for k in classes))
    if http:
        # HTTP: responses by status class and the error share, as the
        # dashboard shows them (4xx and 5xx of all responses, and 5xx alone).
        for k in ["requests"] + classes + ["err_bad_gateway", "err_unavailable",
                                           "err_gateway_timeout"]:
            print(f"  {k:24} {t[k]}")
        n = sum(t[k] for k in classes)
        share = (f"{100 * (t['resp_4xx'] + t['resp_5xx']) / n:.1f}% (5xx: "
                 f"{100 * t['resp_5xx'] / n:.1f}%)") if n else "-"
        print(f"  {'error_share':24} {share}")
    tls_counters = [k for k in t if k.startswith("tls_")]
    if any(t[k] for k in tls_counters) or _serves_tls(pid):
        for k in tls_counters:
            print(f"  {k:24} {t[k]}")
    servers = [sv for sv in snap["servers"] if sv["in_use"]]
    if servers:
        # HAProxy's backend rows: where the errors come from.
        cols = (("requests", "resp_5xx", "timeouts") if http else ("sessions", "timeouts")) + (
            "connect_errors", "ejections", "errors", "active")
        print("servers:")
        w = max(len(f"{sv['cluster']}/{sv['address']}") for sv in servers)
        print(f"  {'cluster/address':{w}}  {'health':9} " + " ".join(f"{c:>14}" for c in cols))
        for sv in servers:
            name = f"{sv['cluster']}/{sv['address']}"
            print(f"  {name:{w}}  {sv['health']:9} "
                  + " ".join(f"{sv['requests' if c == 'sessions' else c]:>14}" for c in cols))
    # Clusters whose breaker or budget did something (docs/resilience.md).
    busy = {n: c for n, c in snap.get("clusters", {}).items()
            if c["breaker_opens"] or c["fast_fails"] or c["budget_exhausted"]
            or any(b != "closed" for b in c["breaker"])}
    if busy:
        print("clusters:")
        for n, c in busy.items():
            states = ", ".join(f"worker {i}: {b}" for i, b in enumerate(c["breaker"]))
            print(f"  {n}  breaker opened {c['breaker_opens']}x, fast-failed "
                  f"{c['fast_fails']}, retries refused by budget {c['budget_exhausted']} "
                  f"({states})")
    return 0


def _serves_tls(pid: int) -> bool:
    """Whether the proxy has TLS listeners, from the detail it publishes
    (telemetry/detail.py); the counters alone are all zero before the
    first handshake."""
    from .telemetry import detail
    d = detail.read(pid) or {}
    return any(l.get("tls") for l in d.get("listeners") or [])


def cmd_reload(a) -> int:
    """SIGHUP, then wait for the proxy's answer: its reload counter (success,
    with the new generation) or its reload-failure counter (with the reason
    it recorded next to its statistics segment)."""
    from . import shm
    try:
        pid = shm.find_pid(a.pid)
        r = shm.Reader(pid)
    except (LookupError, shm.LayoutError, OSError) as e:
        _err(str(e))
        return 1
    h = r.header
    base_ms = int(time.time() * 1000)
    ok0, failed0 = int(h.reloads), int(h.reload_failures)
    sent = time.monotonic_ns()
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        _err(f"cannot signal pid {pid}: {e.strerror}")
        return 1
    if a.no_wait:
        print(f"uproxy: asked pid {pid} to reload (SIGHUP)")
        return 0
    deadline = time.monotonic() + a.timeout
    while True:
        failed, ok = int(h.reload_failures), int(h.reloads)
        if failed > failed0 or ok > ok0:
            status = shm.read_reload_status(pid) or {}
            if (status.get("started_mono_ns", sent) < sent
                    and status.get("time_ms", 0) >= base_ms - 1000):
                # A reload already under way when we signalled has finished;
                # ours (the proxy takes a signal that came during a reload
                # afterwards) is the next one. (A status older than our
                # start is stale, the proxy could not write it: not this.)
                ok0, failed0 = ok, failed
                continue
            break
        if not os.path.exists(f"/proc/{pid}"):
            _err(f"pid {pid} exited before it answered the reload")
            return 1
        if time.monotonic() >= deadline:
            _err(f"pid {pid} did not answer within {a.timeout:g} s: no reload and no failure "
                 f"counted (is it stuck? see its log, or `uproxy stats --pid {pid}`)")
            return 1
        time.sleep(0.02)
    if failed > failed0:
        _err(f"reload failed: pid {pid} keeps running generation {int(h.config_generation)}")
        errors = status.get("errors") or []
        if not errors:
            errors = [{"text": status.get("error") or _last_event(r, "reload failed")
                       or "no reason recorded (see the proxy's log)"}]
        for e in errors:
            text = "uproxy: error: " + e["text"]
            if e.get("snippet"):
                text += f"\n{e['line']:>6} | {e['snippet']}"
            print(text, file=sys.stderr)
        return 1
    for w in status.get("warnings") or []:
        _err(f"warning: {w}")
    # Done when every running worker has switched to the new table (each
    # does at its next loop turn, a tick at the latest).
    gen = int(h.config_generation)
    running = [i for i, w in enumerate(r.workers) if shm.STATES.get(int(w.state)) == "running"]

    def behind():
        return [i for i in running if int(r.workers[i].config_generation) < gen]
    while behind() and time.monotonic() < deadline:
        time.sleep(0.01)
    late = behind()
    print(f"uproxy: pid {pid} reloaded {status.get('config') or 'its configuration'}: "
          f"generation {gen}")
    if late:
        _err(f"warning: worker{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} "
             f"had not switched to generation {gen} within {a.timeout:g} s")
    return 0


def _last_event(r, prefix: str) -> str | None:
    """The proxy's last event that starts with prefix (the ring keeps 119
    bytes of each: a longer one is marked as cut)."""
    events = r.snapshot()["events"]
    for e in reversed(events):
        if e["text"].startswith(prefix):
            text = e["text"][len(prefix):].lstrip(" :")
            if len(e["text"].encode()) >= 119:
                text += "... (cut short: the proxy's log has all of it)"
            return text
    return None


# ---- publish ---------------------------------------------------------------------

def cmd_publish(a) -> int:
    """The dynamic part of a file that validates, to etcd, in one transaction."""
    import tomllib
    from .config import ConfigError, load, parse_hostport
    from .providers import dynamic, etcd
    try:
        cfg = load(a.config)
    except ConfigError as e:
        for one in e.errors:
            _err(f"{one.one()}")
        _err("nothing published: fix the file first (uproxy check -c FILE shows every mistake)")
        return 2
    if a.etcd:
        try:
            endpoints = [parse_hostport(x.strip().removeprefix("http://"), "an etcd endpoint")
                         for x in a.etcd.split(",") if x.strip()]
        except ValueError as e:
            _err(f"--etcd: {e}")
            return 2
    elif cfg.etcd is not None:
        endpoints = list(cfg.etcd.endpoints)
    else:
        _err("no etcd to publish to: give --etcd host:2379[,host:2379...] or an [etcd] table in the file")
        return 2
    prefix = a.prefix or (cfg.etcd.prefix if cfg.etcd else "/uproxy/")
    if not prefix.endswith("/"):
        _err(f"--prefix {prefix!r} must end with /")
        return 2
    with open(a.config, "rb") as f:
        kvs = dynamic.split(tomllib.load(f))
    if a.dry_run:
        for k, v in sorted(kvs.items()):
            print(f"{prefix}{k} = {v}")
        return 0
    try:
        rev, stale = etcd.publish(endpoints, prefix, kvs)
    except ConnectionError as e:
        _err(f"{e}; nothing was published")
        return 1
    print(f"published {len(kvs)} keys under {prefix} at revision {rev}"
          + (f"; removed {len(stale)} that the file no longer has: {', '.join(stale)}" if stale else ""))
    return 0


# ---- doctor, top -------------------------------------------------------------------

def cmd_doctor(a) -> int:
    from .doctor import run
    return run(as_json=a.json)


def cmd_top(a) -> int:
    from .tui.dashboard import run_attached
    try:
        return run_attached(pid=a.pid, interval=a.interval, once=a.once, as_json=a.json)
    except KeyboardInterrupt:
        return 0            # Ctrl-C quits, as q does (htop and top exit 0 too)


# ---- the parser -------------------------------------------------------------------

def _sub(sub, name, help, examples, description=None):
    return sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                          epilog="examples:\n" + "\n".join("  " + e for e in examples),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


PID_HELP = ("the proxy's process id (default: the only uproxy running; "
            "several need --pid)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uproxy", description="io_uring L4/L7 reverse proxy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  uproxy check -c uproxy.toml     validate a configuration\n"
               "  uproxy run -c uproxy.toml       run the proxy\n"
               "  uproxy top                      live dashboard of the running proxy\n"
               "  uproxy reload                   re-read the configuration, print the outcome\n"
               "  uproxy publish -c uproxy.toml   its clusters and routes to etcd, for a fleet\n"
               "  uproxy <command> --help         each command's options and examples")
    p.add_argument("--version", action="version", version=f"uproxy {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="<command>")

    r = _sub(sub, "run", "run the proxy", [
        "uproxy run -c /etc/uproxy/uproxy.toml",
        "uproxy run -c uproxy.toml --workers 2      two pinned workers",
        "uproxy run -c uproxy.toml --dashboard      the proxy and its dashboard here",
        "uproxy run -c uproxy.toml --watch          reload when the file changes",
        "taskset -c 2,3 uproxy run -c uproxy.toml   workers on CPUs 2 and 3"])
    r.add_argument("-c", "--config", required=True, metavar="FILE",
                   help="configuration file (TOML; see docs/configuration.md)")
    r.add_argument("--workers", type=int, metavar="N",
                   help="worker threads (default: [proxy] workers, else one per allowed CPU)")
    r.add_argument("--dashboard", action="store_true",
                   help="show the live dashboard in this terminal (q stops the proxy)")
    r.add_argument("--watch", action="store_true",
                   help="reload when the file (or a certificate it names) changes, as on "
                        "SIGHUP ([proxy] watch = true does the same)")
    r.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="with --dashboard: refresh interval (default: 1)")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging (level and more detail on stderr)")
    r.set_defaults(fn=cmd_run)

    c = _sub(sub, "check", "validate a configuration file and exit", [
        "uproxy check -c /etc/uproxy/uproxy.toml",
        "uproxy check -c uproxy.toml --no-bind   only the file, not the addresses"],
        description="Validate a configuration file: report every mistake with its file, "
                    "line and text,\nand try to listen on each listener's and the admin "
                    "endpoint's address\n(a busy one is named with the process that holds it).\n\n"
                    "exit status: 0 valid, 2 the file has mistakes,\n"
                    "             1 the file is valid but an address cannot be used here.")
    c.add_argument("-c", "--config", required=True, metavar="FILE",
                   help="configuration file (TOML) to check")
    c.add_argument("--no-bind", action="store_true",
                   help="do not try to listen on the configured addresses (check only the file)")
    c.set_defaults(fn=cmd_check)

    d = _sub(sub, "doctor", "what this host offers uproxy, and what to fix", [
        "uproxy doctor",
        "uproxy doctor --json | jq '.checks[] | select(.status != \"ok\")'"])
    d.add_argument("--json", action="store_true", help="the findings as JSON, for scripts")
    d.set_defaults(fn=cmd_doctor)

    s = _sub(sub, "stats", "print a counters snapshot of a running proxy", [
        "uproxy stats",
        "uproxy stats --pid 4242",
        "uproxy stats --json | jq .total.accepted"])
    s.add_argument("--pid", type=int, help=PID_HELP)
    s.add_argument("--json", action="store_true",
                   help="the whole snapshot as JSON (workers, servers, latency, events)")
    s.set_defaults(fn=cmd_stats)

    rl = _sub(sub, "reload", "make a running proxy re-read its configuration", [
        "uproxy reload                       prints the new generation, or why it failed",
        "uproxy reload --pid 4242 --timeout 30",
        "uproxy check -c uproxy.toml && uproxy reload"],
        description="Make a running proxy re-read its configuration (SIGHUP) and wait for "
                    "the outcome:\nthe new configuration generation, or the errors that "
                    "kept the old one running.\n\n"
                    "exit status: 0 reloaded, 1 the reload failed (or no answer in time).")
    rl.add_argument("--pid", type=int, help=PID_HELP)
    rl.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                    help="how long to wait for the outcome (default: 10)")
    rl.add_argument("--no-wait", action="store_true",
                    help="only send SIGHUP, do not wait for the outcome")
    rl.set_defaults(fn=cmd_reload)

    pb = _sub(sub, "publish", "write a configuration's clusters and routes to etcd", [
        "uproxy publish -c uproxy.toml                     to the file's [etcd] endpoints and prefix",
        "uproxy publish -c uproxy.toml --etcd 10.0.0.5:2379,10.0.0.6:2379 --prefix /uproxy/prod/",
        "uproxy publish -c uproxy.toml --dry-run           print the keys, write nothing"],
        description="Validate a configuration file, then write its dynamic part (clusters and "
                    "routes: docs/fleet.md)\nto etcd in one transaction, removing the keys the "
                    "file no longer has. Every proxy\nwhose [etcd] names the same prefix applies "
                    "it (or refuses it, and keeps serving).\n\n"
                    "exit status: 0 published, 2 the file has mistakes, 1 etcd did not answer.")
    pb.add_argument("-c", "--config", required=True, metavar="FILE",
                    help="configuration file (TOML) whose clusters and routes are published")
    pb.add_argument("--etcd", metavar="HOST:PORT[,...]",
                    help="etcd members (default: the file's [etcd] endpoints)")
    pb.add_argument("--prefix", help="key prefix (default: the file's [etcd] prefix, else /uproxy/)")
    pb.add_argument("--dry-run", action="store_true", help="print the keys and values, write nothing")
    pb.set_defaults(fn=cmd_publish)

    t = _sub(sub, "top", "live dashboard of a running proxy", [
        "sudo uproxy top                     with the eBPF kernel and CPU columns",
        "uproxy top --pid 4242 --interval 2",
        "uproxy top --once > snapshot.txt",
        "uproxy top --once --json | jq '.workers | length'"])
    t.add_argument("--pid", type=int, help=PID_HELP)
    t.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="refresh interval (default: 1; with --once: the sampled interval)")
    t.add_argument("--once", action="store_true", help="print one snapshot and exit")
    t.add_argument("--json", action="store_true", help="with --once: the snapshot as JSON")
    t.set_defaults(fn=cmd_top)
    return p


def _main(argv) -> int:
    a = parser().parse_args(argv)
    if a.cmd == "run" and a.workers is not None and a.workers < 1:
        _err("--workers must be at least 1")
        return 2
    if a.cmd == "reload" and a.timeout <= 0:
        _err("--timeout must be more than 0")
        return 2
    return a.fn(a)


def main(argv=None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()          # here, so that a closed pipe is seen here
        return code
    except BrokenPipeError:
        # The reader went away (`uproxy stats | head -1`) and has what it
        # wanted: as Python's documentation advises, point stdout at
        # /dev/null so the flush at exit is quiet, and stop. Exit 0, as
        # `top --once` and --help do in the same case.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130                  # Ctrl-C: the shell's code for SIGINT, no traceback
