"""Privileges: uproxy binds privileged ports as root and then runs as a
configured user; `uproxy run` needs no eBPF (or any other) rights; `uproxy
top` without them says what it needs and shows what it can."""
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from http_upstream import HttpUpstream
from support import AS_NOBODY, Proxy, as_nobody_python, free_port, wait_for

root_only = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                               reason="needs root and setpriv to become another user")


def get(port, path=b"/"):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                return data
            data += b


def public_dir():
    d = tempfile.mkdtemp(prefix="uproxy-priv-")
    os.chmod(d, 0o755)
    return d


def http_config(port, up, user=None):
    u = f'user = "{user}"\n' if user else ""
    return (f'[proxy]\nworkers = 1\n{u}\n[[listeners]]\nname = "web"\nbind = "127.0.0.1:{port}"\n'
            f'mode = "http"\ncluster = "c"\n\n[[clusters]]\nname = "c"\nservers = ["{up.addr}"]\n')


@root_only
def test_run_and_top_as_an_unprivileged_user():
    up = HttpUpstream()
    d = public_dir()
    port = free_port()
    path = os.path.join(d, "uproxy.toml")
    with open(path, "w") as f:
        f.write(http_config(port, up))
    os.chmod(path, 0o644)
    log = open(os.path.join(d, "log"), "w+")
    py, env = as_nobody_python()
    env = dict(os.environ, **env)
    p = subprocess.Popen(AS_NOBODY + [py, "-m", "uproxy", "run", "-c", path],
                         stdout=log, stderr=subprocess.STDOUT, cwd=d, env=env)
    try:
        def up_or_exited():
            if p.poll() is not None:
                return True
            try:
                return b"ok /" in get(port)
            except OSError:
                return False
        wait_for(up_or_exited, 20, what="uproxy as nobody")
        assert p.poll() is None, open(log.name).read()
        with open(f"/proc/{p.pid}/status") as f:
            st = f.read()
        uid = pwd.getpwnam("nobody").pw_uid
        assert f"Uid:\t{uid}\t{uid}" in st
        assert "CapEff:\t0000000000000000" in st        # no capability at all
        assert get(port, b"/x").endswith(b"ok /x")
        # The dashboard without eBPF rights: it says what it needs, and
        # shows the proxy's own counters.
        top = subprocess.run(AS_NOBODY + [py, "-m", "uproxy", "top", "--once",
                                          "--pid", str(p.pid)],
                             capture_output=True, text=True, timeout=60, cwd=d,
                             env=dict(env, COLUMNS="160"))
        out = " ".join((top.stdout + top.stderr).split())
        assert top.returncode == 0, out
        assert "CAP_BPF" in out and "CAP_PERFMON" in out, out
        assert f"pid {p.pid}" in out
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, open(log.name).read()
        up.close()
        shutil.rmtree(d, ignore_errors=True)


@root_only
def test_privileged_port_as_nobody_survives_reloads():
    """Reloads re-read the file as the unprivileged user (so it must be
    readable by that user: a 0600 root file makes every reload fail, and
    the proxy keep its configuration)."""
    up = HttpUpstream()
    port = next(p for p in range(700, 1000) if socket.socket().connect_ex(("127.0.0.1", p)) != 0)
    d = public_dir()
    p = Proxy(d, http_config(port, up, user="nobody"))
    os.chmod(p.path, 0o644)
    try:
        assert get(port, b"/a").endswith(b"ok /a")
        for _ in range(5):
            p.reload()
            time.sleep(0.2)
            assert get(port, b"/b").endswith(b"ok /b")
        # A reload that needs a new privileged port cannot bind it as
        # nobody: it fails, the old configuration keeps serving.
        other = next(q for q in range(port + 1, 1020) if socket.socket().connect_ex(("127.0.0.1", q)) != 0)
        with open(p.path, "a") as f:
            f.write(f'\n[[listeners]]\nname = "more"\nbind = "127.0.0.1:{other}"\nmode = "http"\n'
                    f'cluster = "c"\n')
        assert p.stats()["reload_failures"] == 0, p.output()
        p.reload()
        wait_for(lambda: p.stats()["reload_failures"] >= 1, 10, what="the failed reload")
        assert p.p.poll() is None
        assert get(port, b"/c").endswith(b"ok /c")
        out = p.output()
        assert "reload failed" in out and str(other) in out, out
    finally:
        assert p.stop() == 0, p.output()
        up.close()
        shutil.rmtree(d, ignore_errors=True)


def test_statistics_segment_is_the_proxy_users_only(tmp_path):
    """The segment holds the access-log rings (client addresses, URLs, user
    agents): mode 0600, owned by the user the proxy runs as."""
    from uproxy import shm
    up = HttpUpstream()
    p = Proxy(tmp_path, http_config(free_port(), up))
    try:
        st = os.stat(shm.path_for(p.pid))
        assert st.st_mode & 0o777 == 0o600, oct(st.st_mode)
        assert st.st_uid == os.geteuid()
    finally:
        assert p.stop() == 0, p.output()
        up.close()


@root_only
def test_statistics_segment_belongs_to_the_dropped_user():
    from uproxy import shm
    up = HttpUpstream()
    d = public_dir()
    p = Proxy(d, http_config(free_port(), up, user="nobody"))
    try:
        st = os.stat(shm.path_for(p.pid))
        assert st.st_mode & 0o777 == 0o600, oct(st.st_mode)
        assert st.st_uid == pwd.getpwnam("nobody").pw_uid
    finally:
        assert p.stop() == 0, p.output()
        up.close()
        shutil.rmtree(d, ignore_errors=True)


@root_only
def test_stats_and_top_as_another_user_say_what_to_do():
    """Another user (not root) cannot read a proxy's statistics: `uproxy
    stats` and `uproxy top` say whose they are and how to read them, with
    no traceback."""
    up = HttpUpstream()
    d = public_dir()
    p = Proxy(d, http_config(free_port(), up))        # runs as root
    py, env = as_nobody_python()
    env = dict(os.environ, **env)
    try:
        for cmd in (["stats"], ["top", "--once"]):
            r = subprocess.run(AS_NOBODY + [py, "-m", "uproxy", *cmd, "--pid", str(p.pid)],
                               capture_output=True, text=True, timeout=60, cwd=d, env=env)
            out = " ".join((r.stdout + r.stderr).split())
            assert r.returncode != 0, out
            assert "Traceback" not in out, out
            assert f"cannot read the statistics of uproxy pid {p.pid}" in out, out
            assert f"run this as root (sudo uproxy {cmd[0]})" in out, out
    finally:
        assert p.stop() == 0, p.output()
        up.close()
        shutil.rmtree(d, ignore_errors=True)
