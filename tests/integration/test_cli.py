"""The uproxy command as an operator meets it: `reload` waits for the
outcome and says it, `check` tries the addresses and reports every
mistake where it is, no traceback on Ctrl-C or a closed pipe, and every
option and subcommand explains itself. Real processes throughout: `python
-m uproxy ...` in a subprocess, real proxies (support.Proxy), real sockets
holding real ports."""
import errno
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time

import pytest

from support import ROOT, Proxy, Server, as_nobody_python, echo, free_port, wait_for

PY = [sys.executable, "-m", "uproxy"]


def uproxy(*args, timeout=60, env=None, **kw):
    return subprocess.run([*PY, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kw)


def config(port, upstream="127.0.0.1:9", extra="", name="l"):
    return (f'[proxy]\nworkers = 1\n\n[[listeners]]\nname = "{name}"\nbind = "127.0.0.1:{port}"\n'
            f'mode = "tcp"\ncluster = "c"\n\n[[clusters]]\nname = "c"\nservers = ["{upstream}"]\n'
            + extra)


@pytest.fixture
def proxy(tmp_path):
    made = []

    def make(text, **kw):
        p = Proxy(tmp_path, text, env={"UPROXY_NO_BPF": "1"}, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        if p.p.poll() is None:
            assert p.stop() == 0, p.output()


# ---- reload ------------------------------------------------------------------------

def test_reload_prints_the_new_generation(proxy):
    up = Server(echo)
    port = free_port()
    p = proxy(config(port))
    try:
        assert p.stats()["config_generation"] == 1
        with open(p.path, "w") as f:          # now to a real upstream
            f.write(config(port, up.addr))
        r = uproxy("reload", "--pid", str(p.pid))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"pid {p.pid} reloaded {p.path}: generation 2" in r.stdout
        assert r.stderr == ""
        # It answered after the reload took effect: the new table is live.
        assert p.stats()["config_generation"] == 2
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"after")
            assert s.recv(5) == b"after"
        # Again: each reload is waited for separately.
        r = uproxy("reload", "--pid", str(p.pid))
        assert r.returncode == 0 and "generation 3" in r.stdout, r.stdout + r.stderr
    finally:
        up.close()


def test_reload_failure_prints_every_error_and_exits_1(proxy):
    port = free_port()
    p = proxy(config(port))
    bad = config(port).replace('mode = "tcp"', 'mode = "tcp"\nforwardin = "buffered"') \
                      .replace('servers = ["127.0.0.1:9"]', 'servers = ["127.0.0.1"]')
    with open(p.path, "w") as f:
        f.write(bad)
    r = uproxy("reload", "--pid", str(p.pid))
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr
    assert f"reload failed: pid {p.pid} keeps running generation 1" in err
    # Both mistakes, each with the file, line, key path and the line's text.
    assert f"{p.path}:8: listeners[0].forwardin: unknown key; did you mean 'forwarding'?" in err
    assert '     8 | forwardin = "buffered"' in err
    assert f"{p.path}:13: clusters[0].servers[0]: '127.0.0.1' is not host:port" in err
    assert "Traceback" not in err and r.stdout == ""
    s = p.stats()
    assert s["config_generation"] == 1 and s["reload_failures"] == 1
    assert p.p.poll() is None


def test_reload_failure_that_is_not_in_the_file(proxy):
    """A reload can fail after the file is read: a new listener's port is
    taken. The proxy's own words come back, not a pointer to its log."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    taken = busy.getsockname()[1]
    port = free_port()
    p = proxy(config(port))
    try:
        with open(p.path, "w") as f:
            f.write(config(port) + f'\n[[listeners]]\nname = "m"\nbind = "127.0.0.1:{taken}"\n'
                                   f'cluster = "c"\n')
        r = uproxy("reload", "--pid", str(p.pid))
    finally:
        busy.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"uproxy: error: cannot listen on 127.0.0.1:{taken}: the address is in use" in r.stderr
    assert "keeps running generation 1" in r.stderr


def test_reload_times_out_when_the_proxy_does_not_answer(proxy):
    p = proxy(config(free_port()))
    os.kill(p.pid, signal.SIGSTOP)        # alive, but answering nothing
    try:
        t0 = time.monotonic()
        r = uproxy("reload", "--pid", str(p.pid), "--timeout", "0.5")
        took = time.monotonic() - t0
    finally:
        os.kill(p.pid, signal.SIGCONT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"pid {p.pid} did not answer within 0.5 s" in r.stderr
    assert took < 20
    # The SIGHUP it had pending is taken once it runs again.
    wait_for(lambda: p.stats()["reloads"] == 1, 10, what="the pending reload")


def test_reload_when_the_proxy_cannot_record_the_outcome(proxy):
    """No status file (here a directory is in its way): success still comes
    from the counters, and a failure's reason from the proxy's event ring."""
    from uproxy import shm
    port = free_port()
    p = proxy(config(port))
    os.mkdir(shm.reload_status_path(p.pid))
    try:
        r = uproxy("reload", "--pid", str(p.pid))
        assert r.returncode == 0 and "reloaded its configuration: generation 2" in r.stdout, \
            r.stdout + r.stderr
        with open(p.path, "w") as f:
            f.write(config(port).replace("workers = 1", "workers = 0"))
        r = uproxy("reload", "--pid", str(p.pid))
        assert r.returncode == 1, r.stdout + r.stderr
        assert "keeps running generation 2" in r.stderr
        assert (f"uproxy: error: {os.path.basename(p.path)}:2: proxy.workers: must be at least 1"
                in r.stderr), r.stderr
        assert "cannot record the reload outcome" in p.output()
    finally:
        assert p.stop() == 0, p.output()
        os.rmdir(shm.reload_status_path(p.pid))


def _pending(pid, sig) -> bool:
    with open(f"/proc/{pid}/status") as f:
        st = dict(line.split(":", 1) for line in f if ":" in line)
    bits = int(st["ShdPnd"], 16) | int(st["SigPnd"], 16)
    return bool(bits >> (sig - 1) & 1)


def test_reload_waits_for_its_own_reload_not_one_under_way(proxy):
    """A reload that began before `uproxy reload` signalled, and ends while
    it waits, is not the answer: the one after it is. The earlier reload is
    played into the proxy's segment and status file by hand, while the
    proxy is stopped with the SIGHUP pending."""
    import json
    import mmap
    from uproxy import shm
    from uproxy._native import ffi
    p = proxy(config(free_port()))
    os.kill(p.pid, signal.SIGSTOP)
    try:
        r = subprocess.Popen([*PY, "reload", "--pid", str(p.pid), "--timeout", "30"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        wait_for(lambda: _pending(p.pid, signal.SIGHUP), 30, what="uproxy reload's SIGHUP")
        with open(shm.reload_status_path(p.pid), "w") as f:
            json.dump({"ok": True, "started_mono_ns": 1, "time_ms": int(time.time() * 1000),
                       "generation": 1, "errors": [], "warnings": []}, f)
        with open(shm.path_for(p.pid), "r+b") as f:
            mm = mmap.mmap(f.fileno(), 0)
        h = ffi.cast("struct up_shm_header *", ffi.from_buffer(mm))
        h.reloads += 1                      # "an earlier reload just finished"
        time.sleep(0.5)
        assert r.poll() is None, r.communicate()
    finally:
        os.kill(p.pid, signal.SIGCONT)
    out, err = r.communicate(timeout=30)
    assert r.returncode == 0, out + err
    assert f"pid {p.pid} reloaded {p.path}: generation 2" in out, out + err
    del h
    mm.close()


def test_reload_without_a_proxy(tmp_path):
    r = uproxy("reload", env={"UPROXY_RUN_DIR": str(tmp_path)})
    assert r.returncode == 1 and "no running uproxy found" in r.stderr
    assert "Traceback" not in r.stderr


# ---- stats -------------------------------------------------------------------------

def test_stats_text_shows_status_classes_and_the_error_share(proxy):
    """Every request fails (the only server refuses): the text says so."""
    port = free_port()
    p = proxy(config(port).replace('mode = "tcp"', 'mode = "http"'))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = b""
            while b"\r\n" not in head:
                b = s.recv(4096)
                if not b:
                    break
                head += b
            assert head.startswith(b"HTTP/1.1 5"), head
    wait_for(lambda: p.total("resp_5xx") == 3, 10, what="three 5xx counted")
    r = uproxy("stats", "--pid", str(p.pid))
    assert r.returncode == 0, r.stderr
    rows = dict(re.findall(r"^  (\S+) +(.+)$", r.stdout, re.M))
    assert rows["requests"] == "3" and rows["resp_5xx"] == "3" and rows["resp_2xx"] == "0", r.stdout
    assert rows["error_share"] == "100.0% (5xx: 100.0%)", r.stdout
    assert "generation 1 (0 reloads, 0 failed)" in r.stdout
    # and the server they failed on, with its columns
    head, row = r.stdout.split("servers:\n", 1)[1].splitlines()[:2]
    assert head.split()[:3] == ["cluster/address", "health", "requests"], r.stdout
    cells = dict(zip(head.split()[1:], row.split()[1:]))
    assert row.split()[0] == "c/127.0.0.1:9" and int(cells["connect_errors"]) >= 3, r.stdout


def test_stats_text_of_a_tcp_proxy_has_no_http_rows(proxy):
    p = proxy(config(free_port()))
    r = uproxy("stats", "--pid", str(p.pid))
    assert r.returncode == 0 and "  accepted " in r.stdout, r.stderr
    assert "resp_5xx" not in r.stdout and "error_share" not in r.stdout


# ---- check -------------------------------------------------------------------------

def check(tmp_path, text, *args, env=None):
    path = tmp_path / "uproxy.toml"
    path.write_text(text)
    r = uproxy("check", "-c", str(path), *args, env=env)
    return r, str(path)


def test_check_reports_every_error_with_line_and_text(tmp_path):
    text = ('[proxy]\nworkers = "two"\n\n'
            '[[listeners]]\nname = "web"\nbind = "127.0.0.1:80800"\nmode = "htp"\ncluster = "app"\n\n'
            '[[clusters]]\nname = "app"\nservers = [\n  "127.0.0.1:9000",\n  "127.0.0.1",\n]\n'
            'balanse = "p2c"\n'
            'health = { path = "health", interval = "soon" }\n')
    r, path = check(tmp_path, text)
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stderr
    want = [
        (2, "proxy.workers", "must be an integer", 'workers = "two"'),
        (6, "listeners[0].bind", "not between 1 and 65535", 'bind = "127.0.0.1:80800"'),
        (7, "listeners[0].mode", "'htp' is not one of 'tcp', 'http'; did you mean 'http'?",
         'mode = "htp"'),
        (14, "clusters[0].servers[1]", "'127.0.0.1' is not host:port", '"127.0.0.1",'),
        (16, "clusters[0].balanse", "unknown key; did you mean 'balance'?", 'balanse = "p2c"'),
        (17, "clusters[0].health.path", "'health' must start with /", "health = {"),
        (17, "clusters[0].health.interval", "is not a duration", "health = {"),
    ]
    for line, key, words, snippet in want:
        m = re.search(rf"^uproxy: configuration error: {re.escape(path)}:{line}: {re.escape(key)}: "
                      rf".*{re.escape(words)}.*\n +{line} \| (.*)$", out, re.M)
        assert m, f"{key} at line {line} not reported:\n{out}"
        assert m.group(1).startswith(snippet), m.group(1)
    assert f"{path}: 7 configuration errors" in out
    # In file order.
    lines = [int(x) for x in re.findall(rf"^uproxy: configuration error: {re.escape(path)}:(\d+):",
                                        out, re.M)]
    assert lines == sorted(lines) and len(lines) == 7
    assert "Traceback" not in out and r.stdout == ""


def test_check_misspelt_tables_get_a_suggestion(tmp_path):
    text = ('[[listener]]\nname = "web"\nbind = "127.0.0.1:8080"\ncluster = "app"\n\n'
            '[[clusters]]\nname = "app"\nservers = ["127.0.0.1:9000"]\n'
            '[clusters.helth]\npath = "/"\n\n[admn]\nbind = "127.0.0.1:9901"\n')
    r, path = check(tmp_path, text)
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stderr
    assert (f"{path}:1: listener: unknown table [[listener]]; did you mean [[listeners]]?\n"
            f"     1 | [[listener]]") in out
    assert f"{path}:9: clusters[0].helth: unknown table [clusters.helth]; did you mean [clusters.health]?" in out
    assert f"{path}:12: admn: unknown table [admn]; did you mean [admin]?" in out
    # The typo explains the missing [[listeners]]: no second, misleading error.
    assert "at least one [[listeners]]" not in out
    assert f"{path}: 3 configuration errors" in out


def test_check_still_says_when_listeners_are_missing(tmp_path):
    r, path = check(tmp_path, '[[clusters]]\nname = "app"\nservers = ["127.0.0.1:9000"]\n')
    assert r.returncode == 2 and f"{path}: listeners: at least one [[listeners]] table is needed" \
        in r.stderr, r.stderr


def test_check_toml_syntax_error_has_its_line(tmp_path):
    r, path = check(tmp_path, '[proxy]\nworkers = 1\n\n[[listeners]\nname = "x"\n')
    assert r.returncode == 2
    assert f"{path}:4: not valid TOML" in r.stderr and "     4 | [[listeners]" in r.stderr


def me() -> str:
    """How `uproxy check` names this test process: pid and command line."""
    with open("/proc/self/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").decode().strip()
    return f"pid {os.getpid()} ({cmd[:40]}"


def holder():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "SO_REUSEPORT"])
def test_check_names_the_process_holding_a_busy_port(tmp_path, reuseport):
    """The port is held by this test's own process; with SO_REUSEPORT on
    the holder too, since `uproxy run` sets it and would have joined."""
    busy = socket.socket()
    if reuseport:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    free = free_port()
    try:
        r, path = check(tmp_path, config(free) + f'\n[[listeners]]\nname = "b"\n'
                                                 f'bind = "127.0.0.1:{port}"\ncluster = "c"\n')
    finally:
        busy.close()
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stderr
    assert (f"uproxy: error: {path}:16: listeners[1].bind: cannot listen on 127.0.0.1:{port}: "
            f"the address is in use by {me()}") in out, out
    assert f'    16 | bind = "127.0.0.1:{port}"' in out
    assert "the configuration is valid, but 1 address is not usable here" in out
    assert f":{free}" not in out          # the free one is fine
    assert r.stdout == ""


def test_check_busy_port_and_config_errors_together(tmp_path):
    busy = holder()
    port = busy.getsockname()[1]
    try:
        r, path = check(tmp_path, config(port).replace("workers = 1", "workers = 0"))
    finally:
        busy.close()
    assert r.returncode == 2, r.stdout + r.stderr       # the file is wrong: 2 wins
    assert f"{path}:2: proxy.workers: must be at least 1" in r.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the address is in use by pid {os.getpid()}" in r.stderr
    assert "1 configuration error, 1 address not usable" in r.stderr


def test_check_busy_wildcard_port(tmp_path):
    """Held on 0.0.0.0, asked for 127.0.0.1: the same port, and named."""
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r, path = check(tmp_path, config(port))
    finally:
        busy.close()
    assert r.returncode == 1 and f"in use by pid {os.getpid()}" in r.stderr, r.stderr


def test_check_busy_ipv6_port(tmp_path):
    try:
        busy = socket.socket(socket.AF_INET6)
        busy.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e.strerror}")
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        r, path = check(tmp_path, config(port).replace(f"127.0.0.1:{port}", f"[::1]:{port}"))
    finally:
        busy.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cannot listen on [::1]:{port}: the address is in use by {me()}" in r.stderr, r.stderr


def test_check_a_port_the_running_proxy_holds_is_a_note(tmp_path, proxy):
    port = free_port()
    p = proxy(config(port))
    r = uproxy("check", "-c", p.path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"uproxy: note: {p.path}:6: listeners[0].bind: 127.0.0.1:{port} is in use by the "
            f"running uproxy: pid {p.pid}") in r.stderr
    assert "ok (1 listeners" in r.stdout


def test_check_no_bind_skips_the_addresses(tmp_path):
    busy = holder()
    try:
        r, path = check(tmp_path, config(busy.getsockname()[1]), "--no-bind")
    finally:
        busy.close()
    assert r.returncode == 0 and "ok (1 listeners, 1 clusters, 1 servers)" in r.stdout, r.stderr
    assert r.stderr == ""


def test_check_ok_says_the_addresses_are_free(tmp_path):
    r, path = check(tmp_path, config(free_port()) + f'\n[admin]\nbind = "127.0.0.1:{free_port()}"\n')
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"uproxy: {path}: ok (1 listeners, 1 clusters, 1 servers, addresses free)\n"


def test_check_an_address_that_is_not_local(tmp_path):
    r, path = check(tmp_path, config(free_port()).replace("127.0.0.1:", "192.0.2.1:", 1))
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{path}:6: listeners[0].bind: cannot listen on 192.0.2.1:" in r.stderr
    assert "no local interface has that address" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_check_privileged_port_as_non_root_is_explained_not_failed(tmp_path):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop root for this test")
    py, env = as_nobody_python()
    d = tempfile.mkdtemp(prefix="uproxy-check-")      # pytest's tmp_path is private to root
    try:
        os.chmod(d, 0o755)
        path = os.path.join(d, "uproxy.toml")
        with open(path, "w") as f:
            f.write(config(80))
        os.chmod(path, 0o644)
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            py, "-m", "uproxy", "check", "-c", path], capture_output=True,
                           text=True, cwd="/", timeout=60,
                           env={**os.environ, "HOME": "/tmp", **env})
    finally:
        shutil.rmtree(d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"uproxy: note: {path}:6: listeners[0].bind: not tried 127.0.0.1:80: ports below "
            f"1024 need root or CAP_NET_BIND_SERVICE") in r.stderr
    assert "ok (1 listeners" in r.stdout


# ---- Ctrl-C and closed pipes ------------------------------------------------------------

def _read_until(fd, want: bytes, timeout: float) -> bytes:
    out, deadline = b"", time.monotonic() + timeout
    while want not in out and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                b = os.read(fd, 65536)
            except OSError:
                break
            if not b:
                break
            out += b
    return out


def test_ctrl_c_in_top_quits_quietly(proxy):
    """Ctrl-C typed in the terminal (the line discipline sends SIGINT to
    the foreground process) leaves the dashboard like q does: exit 0, the
    terminal's screen restored, no traceback."""
    p = proxy(config(free_port()))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, b"\x18\x00\x78\x00\x00\x00\x00\x00")   # 24x120

    def controlling_tty():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    t = subprocess.Popen([*PY, "top", "--pid", str(p.pid), "--interval", "0.3"],
                         stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                         env={**os.environ, "UPROXY_NO_BPF": "1", "TERM": "xterm-256color"},
                         start_new_session=True, preexec_fn=controlling_tty)
    os.close(slave)
    try:
        out = _read_until(master, str(p.pid).encode(), 60)  # the dashboard, drawn
        assert str(p.pid).encode() in out, out[-2000:]
        time.sleep(0.7)                                    # a refresh or two
        os.write(master, b"\x03")                          # Ctrl-C
        code = t.wait(20)
        rest = b""
        while True:
            r, _, _ = select.select([master], [], [], 0.5)
            if not r:
                break
            try:
                b = os.read(master, 65536)
            except OSError:
                break
            if not b:
                break
            rest += b
    finally:
        if t.poll() is None:
            t.kill()
            t.wait()
        os.close(master)
    text = (out + rest).decode(errors="replace")
    assert code == 0, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    if b"\x1b[?1049h" in out:                              # full screen, like top:
        assert b"\x1b[?1049l" in rest, rest[-2000:]         # the screen given back


def _closed_pipe_run(*args, env=None):
    """args with stdout on a pipe nobody reads any more (as after `| head -1`
    has read its line and exited): every write fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([*PY, *args], stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           timeout=60, env={**os.environ, **(env or {})})
    finally:
        os.close(w)
    return p


def test_closed_stdout_is_not_a_traceback(tmp_path, proxy):
    p = proxy(config(free_port()))
    path = tmp_path / "ok.toml"
    path.write_text(config(free_port()))
    for args in (["stats", "--pid", str(p.pid)], ["stats", "--json", "--pid", str(p.pid)],
                 ["check", "-c", str(path)], ["--help"], ["reload", "--help"],
                 ["reload", "--pid", str(p.pid)]):
        r = _closed_pipe_run(*args)
        assert r.returncode == 0, (args, r.returncode, r.stderr)
        assert "BrokenPipe" not in r.stderr and "Traceback" not in r.stderr \
            and "Exception ignored" not in r.stderr, (args, r.stderr)


def test_stats_into_head(proxy):
    """The real pipeline, ten times: head takes one line and goes."""
    p = proxy(config(free_port()))
    for _ in range(10):
        r = subprocess.run(f"{sys.executable} -m uproxy stats --json --pid {p.pid} | head -1",
                           shell=True, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.stdout == "{\n" and r.stderr == "", r.stderr


def test_ctrl_c_elsewhere_is_130_without_a_traceback(tmp_path):
    """SIGINT while a command waits (here `reload` on a stopped proxy)."""
    port = free_port()
    p = Proxy(tmp_path, config(port), env={"UPROXY_NO_BPF": "1"})
    os.kill(p.pid, signal.SIGSTOP)
    try:
        r = subprocess.Popen([*PY, "reload", "--pid", str(p.pid), "--timeout", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        time.sleep(2)
        r.send_signal(signal.SIGINT)
        out, err = r.communicate(timeout=20)
    finally:
        os.kill(p.pid, signal.SIGCONT)
        assert p.stop() == 0
    assert r.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


# ---- help --------------------------------------------------------------------------

def test_every_option_has_help_and_every_command_examples():
    import argparse
    from uproxy.cli import parser
    p = parser()
    subs = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) >= {"run", "check", "doctor", "stats", "reload", "top"}
    for name, sp in subs.choices.items():
        for act in sp._actions:
            if isinstance(act, argparse._HelpAction):
                continue
            assert act.help and act.help != argparse.SUPPRESS, f"{name} {act.option_strings}: no help"
        assert sp.epilog and sp.epilog.startswith("examples:"), name
        assert all(line.strip().startswith(("uproxy", "sudo uproxy", "taskset"))
                   for line in sp.epilog.splitlines()[1:]), sp.epilog
        assert isinstance(sp.formatter_class(prog="x"), argparse.RawDescriptionHelpFormatter), name


@pytest.mark.parametrize("cmd", ["run", "check", "doctor", "stats", "reload", "top"])
def test_help_shows_examples(cmd):
    r = uproxy(cmd, "--help")
    assert r.returncode == 0 and r.stderr == ""
    out = r.stdout
    assert "\nexamples:\n" in out, out
    ex = out.split("\nexamples:\n")[1].splitlines()
    assert ex and all(line.startswith("  ") for line in ex if line), out
    assert any(f"uproxy {cmd}" in line for line in ex), out
    # Kept as written (RawDescriptionHelpFormatter): one example per line.
    assert len([line for line in ex if line.strip()]) >= 2
    # No option without a description: each option line carries words.
    opts = out.split("options:\n")[1].split("\n\n")[0]
    entries = re.split(r"\n(?=  -)", opts.strip("\n"))
    for e in entries:
        words = re.sub(r"^\s*-\S+( [A-Z_]+)?(, -\S+( [A-Z_]+)?)*", "", e).strip()
        assert words, f"{cmd}: option without help: {e!r}"


# ---- segments left by proxies that were killed ------------------------------------

def _killed_proxy_segment(proxy) -> str:
    """A real proxy, SIGKILLed: its statistics segment stays behind, as
    after a crash or an OOM kill."""
    from uproxy import shm
    p = proxy(config(free_port()))
    os.kill(p.pid, signal.SIGKILL)
    p.p.wait()
    p.log.close()
    path = shm.path_for(p.pid)
    assert os.path.exists(path), "a SIGKILLed proxy cannot remove its segment"
    return path


def test_a_reused_pid_is_not_taken_for_the_proxy_that_had_it(proxy):
    """pid_max is 32768 on many hosts: the pid of a killed proxy comes back
    for another process. Its stale segment must not pass for that process's
    (a test that started a proxy with that pid took the stale segment's
    'running' workers for its own and connected before it listened)."""
    from uproxy import shm
    stale = _killed_proxy_segment(proxy)
    other = subprocess.Popen(["sleep", "60"])      # has a pid the segment does not belong to
    try:
        moved = shm.path_for(other.pid)
        os.rename(stale, moved)
        try:
            assert other.pid not in shm.running_pids()
            with pytest.raises(shm.StaleError, match="not running"):
                shm.Reader(other.pid)
            r = uproxy("stats", "--pid", str(other.pid))
            assert r.returncode == 1 and "not running" in r.stderr and "remove" in r.stderr, r
            assert "Traceback" not in r.stderr
        finally:
            if os.path.exists(moved):
                os.unlink(moved)
    finally:
        other.kill()
        other.wait()


def test_a_starting_proxy_removes_segments_of_dead_proxies(proxy):
    stale = _killed_proxy_segment(proxy)
    assert os.path.exists(stale)
    p = proxy(config(free_port()))
    assert not os.path.exists(stale), "the next proxy to start sweeps the dead one's segment"
    from uproxy import shm
    assert os.path.exists(shm.path_for(p.pid))   # and keeps its own
