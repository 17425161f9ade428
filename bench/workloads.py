"""The workloads. Each runs against one started contender and returns a
dict of figures plus the machine's noise over the run.

  idle     5,000 idle client connections: KiB of proxy RSS per connection
  http64   HTTP/1.1 keep-alive, 64 B responses, wrk: req/s, latency, CPU-us/req
  http64k  same with 64 KiB responses
  rate     constant offered rate (60% of nginx's http64 peak), the bench's
           open-loop generator (loadgen.c): p50/p99/p99.9 from scheduled
           send times, CPU-us/req
  newconn  a new connection per request (wrk, "Connection: close")
  l4_1     iperf3 through the TCP proxy, one stream: Gbit/s, CPU-s/GiB
  l4_64    the same with 64 parallel streams
  l4_short short L4 sessions: a new TCP connection through the proxy's L4
           listener per HTTP/1.1 request (loadgen -k 0, 64 at a time) to
           the origin's HTTP port: sessions/s, proxy and machine CPU-us per
           session; uproxy's rows also count the worker's syscalls per
           session under strace (the sockmap map updates against splice)
  tls64    http64 over TLS 1.3 (TLS_AES_128_GCM_SHA256, X25519, the run's
           ECDSA P-256 certificate), wrk over https: CPU-us/req
  tls64k   the same with 64 KiB responses
  tls_full a new TLS connection per request, every handshake a full one:
           loadgen -s -S full (it keeps no session; wrk would resume, see
           below): CPU-us per handshake (with its one 64 B request)
  tls_resume the same, each connection resuming with the newest TLS 1.3
           ticket its slot received (loadgen -s -S resume)
  h2c_N, h2_N  HTTP/2 (h2load), N streams per connection, h2c and TLS
  grpc_unary gRPC unary calls over h2c (h2load), the origin's h2c gRPC
           listener behind: CPU-us per call, calls/s (bench/grpc.py)

wrk with "Connection: close" is no full-handshake generator: it reconnects
with the same SSL object after SSL_shutdown + SSL_clear, which keeps the
session, so every connection after a slot's first resumes with a ticket
(nginx's $ssl_session_reused says "r" for all of them). That is why the
handshake workloads use the bench's own generator, which reports how many
handshakes the server resumed; a run whose count is not what its name says
is an error.

The proxy's CPU is utime+stime of its processes (all threads) from /proc,
sampled just before the load generator starts and just after it exits.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections import Counter

from . import grpc, rps
from .accounting import Window, fd_count, rss_of

WRK_LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_report.lua")


class WorkloadError(Exception):
    pass


def _run(ctx, cont, argv, timeout, env=None):
    win = Window(cont.pids, ctx.our_pids).start()
    try:
        p = subprocess.run(ctx.pinned(argv), capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise WorkloadError(f"{argv[0]} did not finish within {timeout:.0f}s")
    w = win.stop()
    if cont.proc is not None and cont.proc.poll() is not None:
        raise WorkloadError(f"{cont.name} died during the run (exit {cont.proc.returncode}): "
                            f"{cont.output()[-800:]}")
    return p, w


def _run_marked(ctx, cont, argv, timeout):
    """Runs a loadgen that warms up first (-w) and prints "# measure" when
    its counted part starts: the proxy's CPU is counted from that line to
    the end, so that the warm-up (and, for resumption, every slot's first,
    full handshake) is outside the window."""
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(ctx.pinned(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    win = None
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("# measure"):
            line = proc.stdout.readline()
        win = Window(cont.pids, ctx.our_pids).start()
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise WorkloadError(f"{argv[0]} did not finish within {timeout:.0f}s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    w = win.stop()
    if cont.proc is not None and cont.proc.poll() is not None:
        raise WorkloadError(f"{cont.name} died during the run (exit {cont.proc.returncode}): "
                            f"{cont.output()[-800:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), w


def _json_line(text, marker=None):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if marker and line.startswith(marker):
            line = line[len(marker):].strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def warm(ctx, cont, path, headers=(), tls=False):
    """wrk for the warm-up time when it is a second or more (wrk counts
    whole seconds), else a burst of 1,000 requests from loadgen."""
    if ctx.args.warmup >= 1:
        wrk(ctx, cont, path, ctx.args.warmup, headers, tls=tls, what="the warm-up")
        return
    ka = "0" if headers else "1"
    base = cont.https_base() if tls else cont.http_base()
    subprocess.run(ctx.pinned([ctx.loadgen, "-a", base, "-p", path, "-c",
                               str(ctx.args.connections), "-n", "1000", "-k", ka]
                              + (["-s", "-N", "localhost"] if tls else [])),
                   capture_output=True, timeout=60)


def wrk(ctx, cont, path, duration, headers=(), tls=False, what="the run"):
    a = ctx.args
    duration = max(1, int(round(duration)))
    # One wrk thread per two load CPUs (one on a 2-CPU host): the upstream
    # needs the others.
    threads = max(1, min(a.connections, len(ctx.load_cpus) // 2))
    argv = [ctx.tools["wrk"], "-t", str(threads), "-c", str(a.connections), "-d", f"{duration}s",
            "--timeout", "5s", "-s", WRK_LUA]
    for h in headers:
        argv += ["-H", h]
    argv.append(f"https://{cont.https_base()}{path}" if tls else f"http://{cont.http_base()}{path}")
    # Over TLS, wrk offers what loadgen offers (TLS 1.3, AES-128-GCM,
    # X25519) through an OpenSSL configuration file of the run's own.
    env = {**os.environ, "OPENSSL_CONF": ctx.tls_client_conf} if tls else None
    p, w = _run(ctx, cont, argv, duration + 30, env=env)
    r = _json_line(p.stdout, "JSON")
    if not r:
        raise WorkloadError(f"wrk gave no result (exit {p.returncode}): {p.stderr.strip()[-400:]}"
                            f"{p.stdout.strip()[-400:]}")
    reqs = r["requests"]
    errs = sum(r["errors"].values())
    if reqs == 0:
        raise WorkloadError(f"wrk completed no request: errors {r['errors']}")
    # Fewer than 10 requests per connection in a whole run is a proxy that
    # stalled (every contender does thousands per second here): its CPU per
    # request would be the stall's, not a cost.
    if reqs < 10 * a.connections:
        raise WorkloadError(f"stalled in {what}: {reqs} requests in {duration} s over {a.connections} "
                            f"connections (errors {r['errors']})")
    secs = r["duration_us"] / 1e6
    out = {
        "requests": reqs,
        "rps": reqs / secs,
        "cpu_us_per_req": w["proxy_cpu_s"] * 1e6 / reqs,
        "proxy_cpu_s": w["proxy_cpu_s"],
        "proxy_cpu_util": w["proxy_cpu_s"] / secs,
        "p50_ms": r["p50"] / 1000, "p99_ms": r["p99"] / 1000, "p999_ms": r["p999"] / 1000,
        "errors": errs, "error_detail": r["errors"],
        "bytes": r["bytes"],
        "noise": w,
    }
    return out


def _check_bytes(r, body):
    """wrk counts every byte read: a response shorter than its body means
    the proxy lost bytes (or the run ended mid-response, which a long run
    makes negligible)."""
    r["bytes_per_req"] = r["bytes"] / r["requests"]
    if r["bytes_per_req"] < body:
        r["errors"] += 1
        r["error_detail"]["short_responses"] = f"{r['bytes_per_req']:.0f} bytes/request < {body}"
    return r


def http64(ctx, cont):
    warm(ctx, cont, "/64")
    return _check_bytes(wrk(ctx, cont, "/64", ctx.args.duration), 64)


def http64k(ctx, cont):
    warm(ctx, cont, "/64k")
    r = _check_bytes(wrk(ctx, cont, "/64k", ctx.args.duration), 65536)
    r["gbps"] = r["bytes"] * 8 / (r["requests"] / r["rps"]) / 1e9
    return r


def newconn(ctx, cont):
    warm(ctx, cont, "/64", headers=("Connection: close",))
    return wrk(ctx, cont, "/64", ctx.args.duration, headers=("Connection: close",))


def tls64(ctx, cont):
    """Keep-alive over TLS: wrk's 64 connections each make one full
    handshake at the start of the run (under 1% of the proxy's CPU in a
    5-second run); the rest is records."""
    warm(ctx, cont, "/64", tls=True)
    return _check_bytes(wrk(ctx, cont, "/64", ctx.args.duration, tls=True), 64)


def tls64k(ctx, cont):
    warm(ctx, cont, "/64k", tls=True)
    r = _check_bytes(wrk(ctx, cont, "/64k", ctx.args.duration, tls=True), 65536)
    r["gbps"] = r["bytes"] * 8 / (r["requests"] / r["rps"]) / 1e9
    return r


def _handshakes(ctx, cont, mode):
    """A new TLS connection per request for the run's duration (closed
    loop, the run's connection count), every handshake full or every one
    resumed: CPU per handshake, handshakes per second."""
    a = ctx.args
    base = ["-a", cont.https_base(), "-p", "/64", "-c", str(a.connections), "-k", "0",
            "-s", "-S", mode, "-N", "localhost"]
    # The warm-up is the same process's first seconds (-w): connection
    # slots that resume hold their tickets when the counted part starts.
    p, w = _run_marked(ctx, cont, [ctx.loadgen, *base, "-w", str(max(a.warmup, 0.3)), "-t", str(a.duration)],
                       a.warmup + a.duration + 60)
    r = _json_line(p.stdout)
    if not r:
        raise WorkloadError(f"loadgen gave no result (exit {p.returncode}): {p.stderr.strip()[-400:]}")
    hs = r["handshakes"]
    if r["requests"] == 0 or hs == 0:
        raise WorkloadError(f"loadgen completed no request over TLS: errors {r['errors']}, "
                            f"TLS errors {r['tls_errors']}")
    secs = r["duration_s"]
    out = {
        "requests": r["requests"],
        "handshakes": hs,
        "resumed": r["resumed"],
        "resumed_frac": r["resumed"] / hs,
        "negotiated": r["negotiated"],
        "rps": r["requests"] / secs,
        "hs_per_s": hs / secs,
        # Every handshake the proxy completed counts (a few at the end of
        # the run carry no request); each carried at most one request.
        "cpu_us_per_hs": w["proxy_cpu_s"] * 1e6 / hs,
        "proxy_cpu_s": w["proxy_cpu_s"],
        "proxy_cpu_util": w["proxy_cpu_s"] / w["wall_s"],
        "p50_ms": r["latency_us"]["p50"] / 1000, "p99_ms": r["latency_us"]["p99"] / 1000,
        "errors": sum(r["errors"].values()) + r["tls_errors"],
        "error_detail": {**r["errors"], "tls": r["tls_errors"]},
        "noise": w,
    }
    # Every connection slot failing once is a proxy that stalled (all of
    # them waited for a timeout): its CPU per handshake would be the
    # stall's.
    if out["errors"] >= a.connections:
        raise WorkloadError(f"stalled: {out['errors']} failed connections ({out['error_detail']}) over "
                            f"{a.connections} slots, {hs} handshakes")
    if mode == "full" and r["resumed"]:
        raise WorkloadError(f"{r['resumed']} of {hs} handshakes resumed in a full-handshake run")
    # Every slot's first (full) handshake was in the warm-up.
    if mode == "resume" and r["resumed"] < hs - max(2, hs // 100):
        raise WorkloadError(f"only {r['resumed']} of {hs} handshakes resumed: clients use a TLS 1.3 ticket "
                            f"once, and the server does not send a new ticket on a resumed connection (or "
                            f"refuses its own); {r['negotiated']}")
    return out


def tls_full(ctx, cont):
    return _handshakes(ctx, cont, "full")


def tls_resume(ctx, cont):
    return _handshakes(ctx, cont, "resume")


def rate(ctx, cont):
    a = ctx.args
    if not ctx.rate:
        raise WorkloadError("no offered rate: nginx's http64 peak was not measured")
    argv = [ctx.loadgen, "-a", cont.http_base(), "-p", "/64", "-c", str(a.connections),
            "-r", f"{ctx.rate:.0f}", "-d", str(a.duration), "-w", str(a.warmup)]
    p, w = _run(ctx, cont, argv, a.duration + a.warmup + 30)
    r = _json_line(p.stdout)
    if not r:
        raise WorkloadError(f"loadgen gave no result (exit {p.returncode}): {p.stderr.strip()[-400:]}")
    if r["requests"] == 0:
        raise WorkloadError(f"loadgen completed no request: {r['errors']}")
    wall = w["wall_s"]
    # The CPU window covers warm-up and measurement; so does this count.
    total_reqs = max(1, r["requests_total"])
    lat = r["latency_us"]
    return {
        "offered_rps": ctx.rate,
        "achieved_rps": r["rate_achieved"],
        "requests": r["requests"],
        "late_unanswered": r["late_unanswered"],
        "cpu_us_per_req": w["proxy_cpu_s"] * 1e6 / total_reqs,
        "proxy_cpu_s": w["proxy_cpu_s"],
        "proxy_cpu_util": w["proxy_cpu_s"] / wall,
        "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000, "p999_ms": lat["p99.9"] / 1000,
        "max_ms": lat["max"] / 1000,
        "errors": sum(r["errors"].values()), "error_detail": r["errors"],
        "timer": r["timer"],
        "noise": w,
    }


def machine_cpu_s(w, ncpu=None) -> float:
    """Every CPU's busy time over a window (the senders' softirq and the
    kworkers too, where sockmap's redirects run), less the CPU of the
    processes outside the bench that ran in it."""
    ncpu = ncpu or os.cpu_count() or 1
    return max(0.0, w["busy_frac"] * w["wall_s"] * ncpu - w.get("other_cpu_s", 0.0))


def _iperf(ctx, cont, streams):
    a = ctx.args
    argv = [ctx.tools["iperf3"], "-c", "127.0.0.1", "-p", str(cont.l4_port), "-t", str(a.duration),
            "-J", "--connect-timeout", "5000"]
    if streams > 1:
        argv += ["-P", str(streams)]
    last = ""
    # --rps: lo's receive steering for this run only, put back after it
    # whatever ends it (bench/rps.py).
    with rps.steered(getattr(ctx, "rps", None)):
        for attempt in range(2):
            p, w = _run(ctx, cont, argv, a.duration + 30)
            try:
                r = json.loads(p.stdout)
            except ValueError:
                r = {"error": p.stdout[-300:] + p.stderr[-300:]}
            if "error" not in r and r.get("end", {}).get("sum_received"):
                break
            last = r.get("error", "no result")
            ctx.upstream.restart_iperf()
            time.sleep(0.5)
        else:
            raise WorkloadError(f"iperf3: {last}")
    rec = r["end"]["sum_received"]
    nbytes, secs = rec["bytes"], rec["seconds"]
    return {
        "streams": streams,
        "bytes": nbytes,
        "gbps": nbytes * 8 / secs / 1e9,
        "cpu_s_per_gib": w["proxy_cpu_s"] / (nbytes / 2 ** 30) if nbytes else None,
        "machine_cpu_s_per_gib": machine_cpu_s(w) / (nbytes / 2 ** 30) if nbytes else None,
        "proxy_cpu_s": w["proxy_cpu_s"],
        "proxy_cpu_util": w["proxy_cpu_s"] / w["wall_s"],
        "retransmits": r["end"].get("sum_sent", {}).get("retransmits"),
        "steering": ctx.rps.describe() if getattr(ctx, "rps", None) else "off",
        "noise": w,
    }


def l4_1(ctx, cont):
    return _iperf(ctx, cont, 1)


def l4_64(ctx, cont):
    return _iperf(ctx, cont, 64)


# ---- short L4 sessions (issue 14) ---------------------------------------------
SHORT_BODY = 64


def short_sessions(r, w, ncpu=None) -> dict:
    """The l4_short figures from loadgen's JSON (r) and the CPU window (w)
    of its counted part; a WorkloadError when any session failed or came
    back short: a proxy that loses a session's bytes gets no figure."""
    n = r.get("requests", 0)
    errs = sum(r["errors"].values())
    if n == 0:
        raise WorkloadError(f"no session completed: errors {r['errors']}")
    if errs:
        # loadgen counts a connection refused or reset (connect), an EOF or
        # a reset before the whole body (read: a short response), a bad
        # status line or framing (status, parse)
        raise WorkloadError(f"{errs} of {n + errs} sessions failed ({r['errors']}): connect = refused or "
                            f"reset, read = closed before the whole response, status/parse = a bad answer")
    if r["bytes_in"] < n * SHORT_BODY:
        raise WorkloadError(f"short responses: {r['bytes_in']} bytes over {n} sessions, under "
                            f"{SHORT_BODY} bytes each")
    secs = r["duration_s"]
    machine = machine_cpu_s(w, ncpu)
    return {
        "sessions": n,
        "sessions_per_s": n / secs,
        "cpu_us_per_session": w["proxy_cpu_s"] * 1e6 / n,
        "machine_cpu_us_per_session": machine * 1e6 / n,
        "proxy_cpu_s": w["proxy_cpu_s"],
        "proxy_cpu_util": w["proxy_cpu_s"] / w["wall_s"],
        "machine_cpu_s": machine,
        "bytes_per_session": r["bytes_in"] / n,
        "p50_ms": r["latency_us"]["p50"] / 1000, "p99_ms": r["latency_us"]["p99"] / 1000,
        "errors": 0, "error_detail": r["errors"],
        "noise": w,
    }


# A line of strace's log that starts a call: "TID name(" (resumed halves
# start with "<..." and are not counted again).
_STRACE_CALL = re.compile(r"^(?:\d+\s+)?([a-z_0-9]+)\((BPF_[A-Z_]+)?")


def count_syscalls(log: str) -> tuple:
    """(calls by syscall name, bpf calls by command) in an strace log."""
    calls, bpf = Counter(), Counter()
    for line in log.splitlines():
        m = _STRACE_CALL.match(line)
        if not m:
            continue
        calls[m.group(1)] += 1
        if m.group(1) == "bpf" and m.group(2):
            bpf[m.group(2)] += 1
    return calls, bpf


def worker_threads(pids) -> list:
    """uproxy's worker threads (comm uproxy-wN): the threads whose
    syscalls are per session; the Python threads are not."""
    out = []
    for p in pids:
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/comm") as f:
                    if f.read().startswith("uproxy-w"):
                        out.append(int(t))
            except OSError:
                pass
    return out


SYSCALL_SESSIONS = 2000


def syscalls_per_session(ctx, cont, port, n=SYSCALL_SESSIONS) -> dict:
    """strace on uproxy's worker thread(s) while loadgen makes n sessions
    (outside the CPU window: strace slows the worker many times): syscalls
    per session by name, bpf ones by command. io_uring's own operations
    (accept, connect, splice, close) are no syscalls: they ride on
    io_uring_enter, which is counted."""
    strace = ctx.tools.get("strace")
    tids = worker_threads(cont.pids)
    if not strace or not tids:
        return {"skipped": "strace is not installed" if not strace else "no uproxy-w* thread found"}
    # Every session of the measured run gone first, and every counted one
    # gone before strace stops, so that what is counted is n sessions
    # from start to end.
    lingering = _wait_idle(cont)
    log = os.path.join(cont.dir, "strace-l4_short.txt")
    argv = [strace, "-qq", "-o", log]
    for t in tids:
        argv += ["-p", str(t)]
    st = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)           # strace attaches
        if st.poll() is not None:
            return {"skipped": f"strace could not attach: {st.stderr.read().strip()[-200:]}"}
        p = subprocess.run(ctx.pinned([ctx.loadgen, "-a", f"127.0.0.1:{port}", "-p", "/64", "-c", "64",
                                       "-n", str(n), "-k", "0"]), capture_output=True, text=True, timeout=120)
        left = _wait_idle(cont)
    finally:
        st.terminate()
        try:
            st.wait(10)
        except subprocess.TimeoutExpired:
            st.kill()
            st.wait()
    r = _json_line(p.stdout)
    if not r or r["requests"] != n or sum(r["errors"].values()):
        return {"error": f"the counted run under strace: {r['errors'] if r else p.stderr.strip()[-200:]}"}
    with open(log, errors="replace") as f:
        calls, bpf = count_syscalls(f.read())
    return {"sessions": n, "open_before": lingering, "open_after": left,
            "per_session": {k: v / n for k, v in calls.most_common()},
            "total_per_session": sum(calls.values()) / n,
            "bpf_per_session": {k: v / n for k, v in bpf.most_common()}}


def _stats_total(cont) -> dict | None:
    """uproxy's counters (shared memory), or None for another proxy."""
    if cont.family != "uproxy" or cont.proc is None:
        return None
    from uproxy import shm
    return shm.Reader(cont.proc.pid).snapshot()["total"]


def _wait_idle(cont, timeout=5.0) -> int:
    """Waits until uproxy holds no connection (or timeout); returns how
    many it held when the wait began."""
    first = None
    deadline = time.monotonic() + timeout
    while True:
        t = _stats_total(cont)
        active = t["active"] if t else 0
        first = active if first is None else first
        if not active or time.monotonic() > deadline:
            return first
        time.sleep(0.05)


def l4_short(ctx, cont):
    """A new TCP connection per request through the proxy's short-session
    L4 listener (l4s_port), to the origin's HTTP port: loadgen -k 0, the
    run's connection count at a time, HTTP/1.1 GET /64 with "Connection:
    close"; each session is accept, connect upstream, one request, one
    response and both closes. The warm-up is loadgen's first seconds (-w);
    the CPU counts from its "# measure" line. uproxy's rows say how many
    sessions the chosen forwarding took (sockmap falls back to splice
    where it cannot), and count the worker's syscalls per session."""
    a = ctx.args
    port = cont.l4s_port
    before = _stats_total(cont)
    argv = [ctx.loadgen, "-a", f"127.0.0.1:{port}", "-p", "/64", "-c", str(a.connections), "-k", "0",
            "-w", str(max(a.warmup, 0.3)), "-t", str(a.duration)]
    p, w = _run_marked(ctx, cont, argv, a.warmup + a.duration + 60)
    r = _json_line(p.stdout)
    if not r:
        raise WorkloadError(f"loadgen gave no result (exit {p.returncode}): {p.stderr.strip()[-400:]}")
    out = short_sessions(r, w)
    after = _stats_total(cont)
    if before is not None and after is not None:
        accepted = after["accepted"] - before["accepted"]
        sm = after["sessions_sockmap"] - before["sessions_sockmap"]
        out["sockmap_share"] = sm / accepted if accepted else 0.0
        out["sockmap_redirect_fails"] = after["sockmap_redirect_fails"] - before["sockmap_redirect_fails"]
        if getattr(cont, "forwarding", "") == "sockmap" and out["sockmap_share"] < 0.99:
            raise WorkloadError(f"only {sm} of {accepted} sessions went through the sockmap (the others fell "
                                f"back to splice): not a sockmap figure")
        out["syscalls"] = syscalls_per_session(ctx, cont, port)
    return out


def _one_request_each(socks, host, timeout=60.0) -> int:
    """GET /64 on every socket in turn (one request in flight at a time, so
    that what is measured is idle keep-alive state, not the peak of 5,000
    concurrent requests); the connections stay open."""
    req = f"GET /64 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    done = 0
    deadline = time.monotonic() + timeout
    for s in socks:
        if time.monotonic() > deadline:
            break
        try:
            s.setblocking(True)
            s.settimeout(5)
            s.sendall(req)
            buf = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                buf += b
                head, sep, body = buf.partition(b"\r\n\r\n")
                if sep and len(body) >= 64:
                    done += 1
                    break
        except OSError:
            continue
    return done


def _alive(socks) -> int:
    alive = 0
    for s in socks:
        try:
            s.setblocking(False)
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                continue
        except BlockingIOError:
            pass
        except OSError:
            continue
        alive += 1
    return alive


def idle(ctx, cont):
    """N client connections opened and left idle: (RSS after - RSS before)/N,
    first as opened (nothing sent), then after one request on each, sent one
    connection at a time (an idle keep-alive connection, as a browser leaves
    it). RSS before: after a short
    warm-up, so that first-use allocations are not counted. The connections
    come from this process, pinned to the load CPUs."""
    n = ctx.args.idle_conns
    host, port = cont.http_base().rsplit(":", 1)
    port = int(port)
    # Warm-up: as many requests as there will be connections, over 64
    # connections, so that pools and buffer rings reach their steady state
    # (a ring of provided buffers is touched in turn, page by page).
    p = subprocess.run(ctx.pinned([ctx.loadgen, "-a", cont.http_base(), "-p", "/64", "-c", "64",
                                   "-n", str(max(2000, n))]), capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise WorkloadError(f"warm-up failed: {p.stderr.strip()[-300:]}")
    time.sleep(0.5)
    pids = cont.pids
    rss0 = rss_of(pids)
    fd0 = fd_count(pids)
    socks = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect((host, port))
            except BlockingIOError:
                pass
            socks.append(s)
            if i % 500 == 499:
                time.sleep(0.02)   # let the proxy accept as we go
        # Wait until the proxy holds the connections (one fd each, at least).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and fd_count(pids) - fd0 < n:
            time.sleep(0.1)
        accepted = fd_count(pids) - fd0
        time.sleep(1.0)           # let lazy per-connection work settle
        rss1 = rss_of(pids)
        alive1 = _alive(socks)
        answered = _one_request_each(socks, host)
        time.sleep(1.0)
        rss2 = rss_of(pids)
        alive2 = _alive(socks)
    finally:
        for s in socks:
            s.close()
    return {
        "connections": n,
        "alive": alive2,
        "alive_fresh": alive1,
        "answered": answered,
        "fds_added": accepted,
        "rss_before_kib": rss0,
        "rss_fresh_kib": rss1,
        "rss_after_kib": rss2,
        "kib_per_conn": (rss2 - rss0) / n,
        "kib_per_conn_fresh": (rss1 - rss0) / n,
        "seconds": time.monotonic() - t0,
        "mode": getattr(cont, "idle_mode", lambda: "http")(),
    }


# ---- HTTP/2 from the client (G8) ---------------------------------------------
H2_CLIENTS = 16


def h2load(ctx, cont, url, streams, duration, what="the run", extra=()):
    """h2load with H2_CLIENTS connections of `streams` concurrent streams
    each, for `duration` seconds: prior knowledge for http://, ALPN h2 for
    https:// (checked: a peer that answered in HTTP/1.1 is an error). The
    proxy's CPU covers the whole h2load process, its 16 connections' set-up
    (and handshakes) included: under half a percent of a 5-second run.
    extra: more h2load arguments (the gRPC calls' body and headers)."""
    duration = max(1, int(round(duration)))
    argv = [ctx.tools["h2load"], "-c", str(H2_CLIENTS), "-t", "1", "-m", str(streams),
            "-D", str(duration), *extra, url]
    env = {**os.environ, "OPENSSL_CONF": ctx.tls_client_conf} if url.startswith("https:") else None
    p, w = _run(ctx, cont, argv, duration + 30, env=env)
    out = p.stdout
    import re
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    if not m or not r:
        raise WorkloadError(f"h2load gave no result (exit {p.returncode}): {p.stderr.strip()[-300:]} "
                            f"{out.strip()[-300:]}")
    if url.startswith("https:") and "Application protocol: h2" not in out:
        raise WorkloadError(f"ALPN did not select h2 ({out.strip()[-200:]})")
    ok = int(r.group(4))
    failed = int(r.group(5)) + int(r.group(6)) + int(r.group(7))
    if ok < 10 * H2_CLIENTS:
        raise WorkloadError(f"stalled in {what}: {ok} requests succeeded in {duration} s "
                            f"({failed} failed)")
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    mean_ms = None
    if mean:
        v = mean.group(1)
        mean_ms = float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-2]) if v.endswith("ms") \
            else float(v[:-1]) * 1000
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    data = re.search(r"traffic: .*\((\d+)\) data", out)
    return {"requests": ok, "rps": ok / secs, "cpu_us_per_req": w["proxy_cpu_s"] * 1e6 / ok,
            "proxy_cpu_s": w["proxy_cpu_s"], "proxy_cpu_util": w["proxy_cpu_s"] / secs,
            "mean_ms": mean_ms, "errors": failed, "streams": streams, "clients": H2_CLIENTS,
            "status_not_2xx": sum(int(codes.group(i)) for i in (2, 3, 4)) if codes else None,
            "data_bytes": int(data.group(1)) if data else None, "noise": w}


def _h2(tls, streams):
    def run(ctx, cont):
        url = (f"https://127.0.0.1:{cont.h2s_port}/64" if tls else f"http://127.0.0.1:{cont.h2c_port}/64")
        if ctx.args.warmup > 0:
            h2load(ctx, cont, url, streams, max(1, ctx.args.warmup), what="the warm-up")
        return h2load(ctx, cont, url, streams, ctx.args.duration)
    run.__name__ = f"h2{'' if tls else 'c'}_{streams}"
    return run


# ---- gRPC unary calls (issue 17) ----------------------------------------------
GRPC_STREAMS = 10


def grpc_calls_short(r, in_flight) -> str | None:
    """None if h2load's counts say every counted call was a 2xx carrying
    the whole response message, else what was not. A trailers-only gRPC
    error (HTTP 200, no DATA) counts as a success for h2load: its DATA
    bytes give it away. The calls in flight when h2load stopped may have
    carried their DATA without being counted."""
    ok = r["requests"]
    if r.get("status_not_2xx") is None or r.get("data_bytes") is None:
        return "h2load printed no status codes or traffic line"
    if r["status_not_2xx"] or r["errors"]:
        return (f"{r['status_not_2xx']} calls answered with a status other than 2xx, {r['errors']} failed "
                f"(of {ok} that succeeded)")
    with_message = r["data_bytes"] // len(grpc.RESPONSE)
    if with_message < ok - in_flight:
        return (f"only {with_message} of {ok} calls carried the {len(grpc.RESPONSE)}-byte response message "
                f"({r['data_bytes']} DATA bytes): the others were gRPC errors or short")
    return None


def grpc_unary(ctx, cont):
    """gRPC unary calls over h2c with prior knowledge: h2load, H2_CLIENTS
    connections of GRPC_STREAMS calls in flight each, every call a POST of
    the framed request message; the origin answers each with a framed
    64-byte message and grpc-status 0 in trailers. One call through the
    proxy with nghttp before the run and one after must come back whole,
    trailers included (bench/grpc.py); h2load's DATA bytes must show every
    counted call's message. Proxy CPU-µs per call, calls per second."""
    url = f"http://127.0.0.1:{cont.grpc_port}{grpc.PATH}"
    extra = ["-d", ctx.grpc_request]
    for h in grpc.HEADERS:
        extra += ["-H", h]
    why = grpc.check_call(url, ctx.grpc_request, ctx.tools.get("nghttp") or "nghttp")
    if why:
        raise WorkloadError(f"a sample call before the run failed: {why}")
    if ctx.args.warmup > 0:
        h2load(ctx, cont, url, GRPC_STREAMS, max(1, ctx.args.warmup), what="the warm-up", extra=extra)
    r = h2load(ctx, cont, url, GRPC_STREAMS, ctx.args.duration, extra=extra)
    why = grpc_calls_short(r, H2_CLIENTS * GRPC_STREAMS)
    if why:
        raise WorkloadError(why)
    why = grpc.check_call(url, ctx.grpc_request, ctx.tools.get("nghttp") or "nghttp")
    if why:
        raise WorkloadError(f"a sample call after the run failed: {why}")
    return r


RUNNERS = {
    "idle": idle,
    "http64": http64,
    "http64k": http64k,
    "rate": rate,
    "newconn": newconn,
    "l4_1": l4_1,
    "l4_64": l4_64,
    "l4_short": l4_short,
    "tls64": tls64,
    "tls64k": tls64k,
    "tls_full": tls_full,
    "tls_resume": tls_resume,
    **{f"h2c_{n}": _h2(False, n) for n in (1, 10, 100)},
    **{f"h2_{n}": _h2(True, n) for n in (1, 10, 100)},
    "grpc_unary": grpc_unary,
}

# What each workload's headline figures are, and which way is better.
METRICS = {
    "idle": [("kib_per_conn", "KiB/conn after a request", "low"),
             ("kib_per_conn_fresh", "KiB/conn, nothing sent", "low")],
    "http64": [("cpu_us_per_req", "CPU-µs/req", "low"), ("rps", "req/s", "high"),
               ("p50_ms", "p50 ms", "low"), ("p99_ms", "p99 ms", "low"), ("p999_ms", "p99.9 ms", "low")],
    "http64k": [("cpu_us_per_req", "CPU-µs/req", "low"), ("rps", "req/s", "high"),
                ("gbps", "Gbit/s", "high"), ("p99_ms", "p99 ms", "low")],
    "rate": [("p50_ms", "p50 ms", "low"), ("p99_ms", "p99 ms", "low"), ("p999_ms", "p99.9 ms", "low"),
             ("cpu_us_per_req", "CPU-µs/req", "low"), ("achieved_rps", "req/s achieved", "high")],
    "newconn": [("cpu_us_per_req", "CPU-µs/req", "low"), ("rps", "req/s", "high"),
                ("p99_ms", "p99 ms", "low")],
    "l4_1": [("gbps", "Gbit/s", "high"), ("cpu_s_per_gib", "CPU-s/GiB", "low"),
              ("machine_cpu_s_per_gib", "machine CPU-s/GiB", "low")],
    "l4_64": [("gbps", "Gbit/s", "high"), ("cpu_s_per_gib", "CPU-s/GiB", "low"),
              ("machine_cpu_s_per_gib", "machine CPU-s/GiB", "low")],
    "l4_short": [("cpu_us_per_session", "CPU-µs/session", "low"), ("sessions_per_s", "sessions/s", "high"),
                 ("machine_cpu_us_per_session", "machine CPU-µs/session", "low"), ("p99_ms", "p99 ms", "low")],
    "tls64": [("cpu_us_per_req", "CPU-µs/req", "low"), ("rps", "req/s", "high"),
              ("p99_ms", "p99 ms", "low")],
    "tls64k": [("cpu_us_per_req", "CPU-µs/req", "low"), ("rps", "req/s", "high"),
               ("gbps", "Gbit/s", "high"), ("p99_ms", "p99 ms", "low")],
    "tls_full": [("cpu_us_per_hs", "CPU-µs/handshake", "low"), ("hs_per_s", "handshakes/s", "high"),
                 ("p99_ms", "p99 ms (connect to response)", "low"), ("resumed_frac", "resumed", "low")],
    "tls_resume": [("cpu_us_per_hs", "CPU-µs/handshake", "low"), ("hs_per_s", "handshakes/s", "high"),
                   ("p99_ms", "p99 ms (connect to response)", "low"), ("resumed_frac", "resumed", "high")],
}

for _w in ("h2c_1", "h2c_10", "h2c_100", "h2_1", "h2_10", "h2_100"):
    METRICS[_w] = [("cpu_us_per_req", "CPU-µs/req", "low"), ("rps", "req/s", "high"),
                   ("mean_ms", "mean ms", "low")]

METRICS["grpc_unary"] = [("cpu_us_per_req", "CPU-µs/call", "low"), ("rps", "calls/s", "high"),
                          ("mean_ms", "mean ms", "low")]

TITLES = {
    "idle": "Memory per idle client connection",
    "http64": "HTTP/1.1 keep-alive, 64 B responses",
    "http64k": "HTTP/1.1 keep-alive, 64 KiB responses",
    "rate": "Fixed offered rate (60% of nginx's peak), 64 B",
    "newconn": "New connection per request, 64 B",
    "l4_1": "L4 TCP, one stream (iperf3)",
    "l4_64": "L4 TCP, 64 parallel streams (iperf3 -P 64)",
    "l4_short": "L4 TCP, short sessions: a new connection per 64 B HTTP/1.1 request, 64 at a time (loadgen -k 0)",
    "tls64": "TLS 1.3 keep-alive, 64 B responses (wrk over https)",
    "tls64k": "TLS 1.3 keep-alive, 64 KiB responses (wrk over https)",
    "tls_full": "TLS 1.3, a new connection per request, full handshakes (loadgen -S full)",
    "tls_resume": "TLS 1.3, a new connection per request, resumed handshakes (loadgen -S resume)",
    **{f"h2c_{n}": f"HTTP/2 cleartext (h2c, prior knowledge), 64 B, {n} stream{'s' if n > 1 else ''} "
                   f"per connection x {H2_CLIENTS} (h2load)" for n in (1, 10, 100)},
    **{f"h2_{n}": f"HTTP/2 over TLS 1.3 (ALPN h2), 64 B, {n} stream{'s' if n > 1 else ''} "
                  f"per connection x {H2_CLIENTS} (h2load)" for n in (1, 10, 100)},
    "grpc_unary": f"gRPC unary calls over h2c, 64 B messages, {GRPC_STREAMS} calls in flight per connection "
                  f"x {H2_CLIENTS} (h2load)",
}
