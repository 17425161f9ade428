"""Test helpers: real upstream servers on loopback and a real uproxy process."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # tests/lib/ -> the checkout


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out = set()


def free_port(host="127.0.0.1") -> int:
    """A port free on host for a listener the test starts next. Chosen
    below the kernel's ephemeral range: a port from bind(0) is an
    ephemeral one, which any outgoing connection (the suite makes
    thousands) can take between this choice and the proxy's bind ("the
    address is in use" in 1 run of ~5 here). Never the same port twice in
    one run, so two tests' listeners cannot meet either."""
    high = min(_ephemeral_low(), 65536) - 1
    low = 10000 if high > 12000 else 1024
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:               # the range is used up: as before
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(cond, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def pattern(seed: int, size: int, chunk=1 << 20):
    """Deterministic pseudo-random bytes, in chunks, and their sha256."""
    rng = random.Random(seed)
    left = size
    while left:
        n = min(chunk, left)
        yield rng.randbytes(n)
        left -= n


def pattern_sha(seed: int, size: int) -> str:
    h = hashlib.sha256()
    for c in pattern(seed, size):
        h.update(c)
    return h.hexdigest()


def recv_all_sha(sock, limit=None) -> tuple:
    h = hashlib.sha256()
    n = 0
    while True:
        b = sock.recv(1 << 20)
        if not b:
            return n, h.hexdigest()
        h.update(b)
        n += len(b)


def recv_until_close(sock, size=65536) -> bytes:
    """Everything the peer sends until it closes; a reset ends it too (the
    bytes before it are what a test compares)."""
    data = b""
    try:
        while True:
            b = sock.recv(size)
            if not b:
                break
            data += b
    except ConnectionResetError:
        pass
    return data


@contextlib.contextmanager
def unanswering_port():
    """A port whose listener's accept queue is full: the kernel drops
    further SYNs, so a connect to it hangs, as to a host that does not
    answer."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    port = full.getsockname()[1]
    fillers = []
    for _ in range(4):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
    time.sleep(0.2)
    try:
        yield port
    finally:
        for f in fillers:
            f.close()
        full.close()


# ---- upstream servers -------------------------------------------------------

class Server:
    """A threaded TCP server on 127.0.0.1 whose per-connection behaviour is
    a function handle(conn, server). Records connections it saw.

    An exception a handler raises is kept in `errors` and fails the test:
    close() (the `servers` fixture's teardown, or the test's own) raises
    it, with its traceback. A test whose handlers fail on purpose says so
    with errors_expected=True and asserts on `errors` itself. Exceptions
    raised once close() began are its own doing (it closes the handlers'
    sockets) and are not kept."""

    def __init__(self, handle, port=0, backlog=1024, accept=True, errors_expected=False):
        self.handle = handle
        self.errors_expected = errors_expected
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.results = []
        self.errors = []
        self.conns = []
        self.lock = threading.Lock()
        self.closed = False
        if accept:
            threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.conns.append(c)
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            r = self.handle(c, self)
            if r is not None:
                with self.lock:
                    self.results.append(r)
        except Exception as e:  # fails the test at close(), unless errors_expected
            with self.lock:
                if not self.closed:
                    self.errors.append(e)
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        with self.lock:
            first = not self.closed
            self.closed = True
            errors = list(self.errors)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass
        if first and errors and not self.errors_expected:
            import traceback
            name = getattr(self.handle, "__qualname__", repr(self.handle))
            raise AssertionError(
                f"upstream handler {name} on {self.addr} raised {len(errors)} exception(s) "
                f"(a test that provokes them passes errors_expected=True); the first:\n" +
                "".join(traceback.format_exception(errors[0])))


def echo(c, srv):
    while True:
        b = c.recv(65536)
        if not b:
            c.shutdown(socket.SHUT_WR)
            return None
        c.sendall(b)


# ---- the proxy under test ---------------------------------------------------------

def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def render_config(proxy: dict, listeners: list, clusters: list, extra: str = "") -> str:
    out = ["[proxy]"] + [f"{k} = {toml_value(v)}" for k, v in proxy.items()]
    for l in listeners:
        out += ["", "[[listeners]]"] + [f"{k} = {toml_value(v)}" for k, v in l.items()
                                        if not isinstance(v, list) or k != "routes"]
        for r in l.get("routes", []):
            out += ["", "[[listeners.routes]]"] + [f"{k} = {toml_value(v)}" for k, v in r.items()]
    for c in clusters:
        out += ["", "[[clusters]]"] + [f"{k} = {toml_value(v)}" for k, v in c.items()
                                       if not isinstance(v, dict)]
        for k, v in c.items():
            if isinstance(v, dict):
                out += [f"{k} = {toml_value(v)}"]
    return "\n".join(out) + "\n" + extra


class Proxy:
    """`uproxy run` in its own process, as a user runs it."""

    def __init__(self, tmp_path, config_text: str, env=None, args=(), wait=True):
        self.path = os.path.join(str(tmp_path), f"uproxy-{time.monotonic_ns()}.toml")
        with open(self.path, "w") as f:
            f.write(config_text)
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.log_path = self.path + ".log"
        self.log = open(self.log_path, "w+")
        self.p = subprocess.Popen([sys.executable, "-m", "uproxy", "run", "-c", self.path, *args],
                                  stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                  cwd=ROOT)
        self.pid = self.p.pid
        if wait:
            self.wait_ready()

    def output(self) -> str:
        if not self.log.closed:        # also after stop(), for failure messages
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def wait_ready(self, timeout=20):
        def ready():
            if self.p.poll() is not None:
                raise RuntimeError(f"uproxy exited with {self.p.returncode}:\n{self.output()}")
            try:
                s = self.stats()
            except Exception:
                return False
            return s["workers"] and all(w["state"] == "running" for w in s["workers"])
        wait_for(ready, timeout, what="uproxy to start")

    def stats(self) -> dict:
        from uproxy import shm
        r = shm.Reader(self.pid)
        try:
            return r.snapshot()
        finally:
            r.close()

    def total(self, name) -> int:
        return self.stats()["total"][name]

    def reload(self):
        os.kill(self.pid, signal.SIGHUP)

    def stop(self, timeout=30) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                raise AssertionError(f"uproxy did not stop within {timeout}s:\n{self.output()}")
        self.log.close()
        return self.p.returncode

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


# ---- running uproxy as another user -------------------------------------
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]
_nobody_cache: dict = {}


def _nobody_runs(python, env=None, where=ROOT) -> tuple:
    """Can nobody import this checkout's uproxy (from `where`, not another
    copy that happens to be on the path) and what it needs?"""
    code = ("import os, uproxy._native, uproxy.cli, rich, cffi\n"
            f"assert os.path.realpath(uproxy.__file__).startswith({os.path.realpath(where)!r}), "
            "'uproxy came from ' + uproxy.__file__")
    r = subprocess.run(AS_NOBODY + [python, "-c", code], cwd="/", capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, **(env or {})))
    return r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]


def _world_readable_copy() -> str:
    """This checkout's package (with its built core) and the virtual
    environment's packages, copied where any user can read them. A clone
    under a 0700 directory (as `mktemp -d` or root's home make) is out of
    reach of `nobody`, and so is the .venv inside it."""
    import atexit
    import shutil
    import sysconfig
    d = tempfile_public("uproxy-as-nobody-")
    atexit.register(shutil.rmtree, d, True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "src", "uproxy"), os.path.join(d, "uproxy"), ignore=skip)
    shutil.copytree(os.path.join(ROOT, "bpf"), os.path.join(d, "uproxy", "telemetry", "bpf"))
    site = sysconfig.get_paths()["purelib"]
    for name in os.listdir(site):
        if name.startswith(("pip", "setuptools", "_distutils_hack", "__editable__", "uproxy",
                            "__pycache__")) or name.endswith(".pth"):
            continue
        src = os.path.join(site, name)
        dst = os.path.join(d, name)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True, ignore=skip)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
    for base, dirs, files in os.walk(d):
        for n in dirs:
            os.chmod(os.path.join(base, n), 0o755)
        for n in files:
            p = os.path.join(base, n)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)
    return d


def tempfile_public(prefix: str) -> str:
    import tempfile
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    return d


def as_nobody_python() -> tuple:
    """(python, env) with which the user `nobody` runs this checkout's
    uproxy: the virtual environment as it is where nobody can reach it,
    else the interpreter it was made from over a world-readable copy of the
    packages. Skips the calling test, saying why, when nobody can run no
    Python at all. Works from any checkout: where a user clones must never
    fail a test."""
    import pytest
    if "answer" not in _nobody_cache:
        _nobody_cache["answer"] = _find_nobody_python()
    python, env, why = _nobody_cache["answer"]
    if python is None:
        pytest.skip(why)
    return python, env


def _find_nobody_python():
    ok, err = _nobody_runs(sys.executable)
    if ok:
        return sys.executable, {}, ""
    why = f"nobody cannot run {sys.executable} ({err})"
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    cands = [c for c in (base, f"/usr/bin/python{ver}", f"/usr/local/bin/python{ver}")
             if os.path.exists(c)]
    copy = _world_readable_copy()
    env = {"PYTHONPATH": copy, "PYTHONNOUSERSITE": "1", "UPROXY_BPF_DIR":
           os.path.join(copy, "uproxy", "telemetry", "bpf")}
    for c in cands:
        ok, err = _nobody_runs(c, env, where=copy)
        if ok:
            return c, env, ""
        why += f"; nor {c} over a world-readable copy ({err})"
    return None, {}, "cannot run uproxy as nobody: " + why
