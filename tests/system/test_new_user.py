"""The README's test command must pass wherever a new user clones and on
any CPU: here the tests that are sensitive to both run from a copy of this
checkout under a 0700 directory (as `mktemp -d` and root's home make: the
user nobody cannot reach into it) with python-liburing's probe left out (its
wheel dies with SIGILL on CPUs without AVX-512, and doctor must answer in
full without it)."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from support import ROOT

SENSITIVE = ["tests/system/test_privileges.py", "tests/system/test_doctor.py",
             "tests/system/test_dashboard.py::test_top_in_a_terminal_without_root"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv: the tests it runs become the user nobody")
def test_suite_parts_pass_from_a_private_clone():
    private = tempfile.mkdtemp(prefix="uproxy-newuser-")     # mode 0700
    assert os.stat(private).st_mode & 0o777 == 0o700
    try:
        clone = os.path.join(private, "uproxy")
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                               check=True).stdout.decode().split("\0")
        for f in filter(None, files):
            src = os.path.join(ROOT, f)
            if not os.path.lexists(src):
                continue
            dst = os.path.join(clone, f)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
        # the built core, as scripts/setup leaves it in a clone
        for so in glob.glob(os.path.join(ROOT, "src", "uproxy", "_native*.so")):
            shutil.copy2(so, os.path.join(clone, "src", "uproxy"))
        env = dict(os.environ, PYTHONPATH=os.path.join(clone, "src"),
                   UPROXY_NO_LIBURING_PROBE="1")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *SENSITIVE], cwd=clone, env=env, capture_output=True, text=True,
                           timeout=600)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
        assert " passed" in out and "skipped" not in out.splitlines()[-1], out[-3000:]
    finally:
        shutil.rmtree(private, ignore_errors=True)
