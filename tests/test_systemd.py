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
