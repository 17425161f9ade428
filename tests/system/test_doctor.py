"""uproxy doctor: human and JSON output, the too-old-kernel explanation."""
import json
import os
import subprocess
import sys

import pytest

from support import ROOT
from uproxy import doctor, features


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "uproxy", "doctor", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


# python-liburing's wheel dies with SIGILL on CPUs without AVX-512: the
# doctor's answer must be whole with its probe left out, too.
LIBURING_PROBE = [None, {"UPROXY_NO_LIBURING_PROBE": "1"}]


@pytest.mark.parametrize("env", LIBURING_PROBE, ids=["any-probe", "core-probe-only"])
def test_json_has_every_check_with_a_status(env):
    r = _run("--json", env=env)
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    assert doc["can_run"] == (r.returncode == 0)
    names = {c["name"]: c for c in doc["checks"]}
    for key in ("kernel", "io_uring_disabled", "io_uring", "io_uring_setup_flags",
                "uproxy_features", "kernel_headers", "btf", "tracefs", "ebpf", "pmu",
                "memlock", "open_files"):
        assert key in names, key
    for c in doc["checks"]:
        assert c["status"] in ("ok", "warn", "missing"), c
        assert c["detail"]
        if c["status"] != "ok":
            assert c["fix"], f"{c['name']} is {c['status']} without saying what to do"
    assert names["io_uring"]["source"].startswith(("python-liburing", "uproxy C core"))
    if env:
        assert names["io_uring"]["source"].startswith("uproxy C core")
        assert names["io_uring_setup_flags"]["source"].startswith("uproxy C core")
    flags = names["io_uring_setup_flags"]["flags"]
    assert set(flags) == set(doctor.SETUP_FLAGS)
    # Linux 6.1 has every one of these but NO_SQARRAY (6.6)
    if features.kernel_version(os.uname().release) >= (6, 1):
        assert flags["SINGLE_ISSUER"] and flags["DEFER_TASKRUN"] and flags["COOP_TASKRUN"]
    assert isinstance(names["pmu"]["present"], bool)
    assert names["kernel"]["release"] == os.uname().release
    # this host runs uproxy (the rest of the test suite depends on it)
    assert doc["can_run"] and r.returncode == 0


def test_sockmap_says_whether_and_why_not():
    r = _run("--json", env={"UPROXY_NO_LIBURING_PROBE": "1"})
    names = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    from uproxy import sockmap
    why = sockmap.unavailable()
    assert names["sockmap"]["available"] == (why is None), names["sockmap"]
    if why is None:
        assert names["sockmap"]["status"] == "ok"
    r = _run("--json", env={"UPROXY_NO_LIBURING_PROBE": "1",
                            "UPROXY_SOCKMAP_FAIL": "not root: refused for the test"})
    c = {c["name"]: c for c in json.loads(r.stdout)["checks"]}["sockmap"]
    assert c["status"] == "missing" and not c["available"]
    assert "refused for the test" in c["detail"] and "root" in c["fix"]


def test_human_output_has_a_line_per_check():
    r = _run()
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "doctor" in out.splitlines()[0]
    for key in ("kernel", "io_uring", "kernel_headers", "ebpf", "pmu", "memlock", "open_files"):
        assert any(l.split("]")[-1].split()[0] == key for l in out.splitlines() if "]" in l), key
    assert "uproxy can run on this host." in out
    pmu = [l for l in out.splitlines() if "] pmu " in l][0]
    assert ("[ok" in pmu) or ("no PMU on this host" in pmu)


def test_too_old_kernel_is_explained_and_blocks():
    why = features.kernel_too_old("5.10.0-28-amd64")
    assert why and "5.15" in why and "5.10.0-28-amd64" in why
    c = doctor.check_kernel("5.10.0-28-amd64")
    assert c["status"] == "missing" and c["blocker"] and c["fix"] == why
    assert doctor.check_kernel("6.1.0-18-amd64")["status"] == "ok"
    assert features.kernel_too_old("5.15.0-91-generic") is None


def test_cannot_run_means_exit_1(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "check_kernel",
                        lambda release=None: doctor._check("kernel", "missing", "Linux 5.4: too old",
                                                           features.kernel_too_old("5.4.0"),
                                                           blocker=True))
    assert doctor.run(as_json=False) == 1
    out = capsys.readouterr().out
    assert "uproxy cannot run on this host" in out and "Upgrade the kernel" in out


def test_io_uring_falls_back_to_the_core_probe(monkeypatch):
    # python-liburing runs in a child process; make that child fail the way
    # it does on an old kernel...
    monkeypatch.delenv("UPROXY_NO_LIBURING_PROBE", raising=False)
    monkeypatch.setattr(doctor, "_LIBURING_PROBE",
                        "import sys; sys.exit('OSError: [Errno 22] Invalid argument')  # %r")
    checks = {c["name"]: c for c in doctor.check_io_uring()}
    assert checks["io_uring"]["status"] == "ok"
    assert checks["io_uring"]["source"].startswith("uproxy C core (up_probe)")
    assert "python-liburing failed" in checks["io_uring"]["source"]
    assert checks["io_uring"]["ops"]["ACCEPT"] is True
    # the setup flags come from the core's probe then, not left out
    assert checks["io_uring_setup_flags"]["source"] == "uproxy C core (up_probe_setup)"
    assert set(checks["io_uring_setup_flags"]["flags"]) == set(doctor.SETUP_FLAGS)


def test_io_uring_survives_python_liburing_crashing(monkeypatch):
    # ...and the way it does on a CPU without AVX-512: killed by SIGILL.
    monkeypatch.delenv("UPROXY_NO_LIBURING_PROBE", raising=False)
    monkeypatch.setattr(doctor, "_LIBURING_PROBE",
                        "import os, signal; os.kill(os.getpid(), signal.SIGILL)  # %r")
    checks = {c["name"]: c for c in doctor.check_io_uring()}
    assert checks["io_uring"]["status"] == "ok"
    assert "SIGILL" in checks["io_uring"]["source"]
    assert checks["io_uring"]["ops"]["ACCEPT"] is True
    assert checks["io_uring_setup_flags"]["source"] == "uproxy C core (up_probe_setup)"
