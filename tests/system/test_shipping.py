"""The shipped systemd unit parses, and names commands that exist."""
import os
import shutil
import subprocess

import pytest

from support import ROOT


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_verifies(tmp_path):
    unit = open(os.path.join(ROOT, "systemd", "uproxy.service")).read()
    venv = os.path.join(ROOT, ".venv")
    unit = unit.replace("/opt/uproxy/.venv", venv)
    path = tmp_path / "uproxy.service"
    path.write_text(unit)
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "KillSignal=SIGTERM" in unit


def test_demo_runs_and_stops(tmp_path):
    """./scripts/demo, as a new user runs it (without a terminal, so no
    dashboard), for a few seconds: it serves and stops cleanly."""
    import socket as _s
    for port in (8080, 15432, 9901, 9001, 9002, 9003, 9101, 9102):
        with _s.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is in use here, the demo needs it")
    # Long enough for a slow machine (an emulated VM) to start everything.
    p = subprocess.Popen([os.path.join(ROOT, "scripts", "demo"), "--duration", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    import time as _t
    import httpx
    ok = False
    deadline = _t.monotonic() + 90
    while _t.monotonic() < deadline and p.poll() is None:
        try:
            r = httpx.get("http://127.0.0.1:8080/api/x", timeout=2)
            ok = r.status_code == 200 and "hello from api" in r.text
            if ok:
                break
        except httpx.HTTPError:
            pass
        _t.sleep(0.3)
    out, _ = p.communicate(timeout=90)
    assert p.returncode == 0, out
    assert ok, out
    assert "stopped (exit 0)" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/setup runs as root")
def test_setup_does_not_rebuild_between_demo_and_test():
    """scripts/demo runs scripts/setup, scripts/test runs scripts/setup
    --test: neither may rebuild a core that is current (the build stamp
    once hashed which extras were asked for)."""
    for i, args in enumerate((["--test"], [], ["--test"])):
        r = subprocess.run([os.path.join(ROOT, "scripts", "setup"), *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        if i > 0:           # the first call may build a core not yet current
            assert "building" not in r.stderr, (args, r.stderr)
