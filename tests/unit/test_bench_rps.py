"""The bench's --rps / --rfs (bench/rps.py): what it parses, what it
writes, and that it puts back what it found after each L4 stream run,
whatever ends the run (an error, Ctrl-C, SIGTERM's SystemExit, a write
that fails half-way). Files in a temporary directory stand in for
/sys/class/net/lo/queues/rx-0 and /proc/sys/net/core: the real ones are
the machine's, shared with the test suite, and never touched here."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench import cli, report, rps, workloads  # noqa: E402

OLD = {"rps_cpus": "00000000,00000000", "rps_flow_cnt": "0", "rps_sock_flow_entries": "0"}


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Stand-in files with OLD's values; rps.PATHS points at them (the
    default of every function that takes paths)."""
    for k, v in OLD.items():
        p = tmp_path / k
        p.write_text(v + "\n")
        monkeypatch.setitem(rps.PATHS, k, str(p))
    return tmp_path


def now(files):
    return {k: (files / k).read_text().strip() for k in OLD}


def test_parse():
    assert rps.parse(None) is None
    assert rps.parse("off") is None
    assert rps.parse("3") == rps.Steering(3, 0)
    assert rps.parse("2", 4096) == rps.Steering(2, 4096)
    assert rps.parse("all", ncpu=2) == rps.Steering(3, 0)
    assert rps.parse("ff", ncpu=2).cpus == 255
    with pytest.raises(ValueError, match="hex CPU mask"):
        rps.parse("cpu1")
    with pytest.raises(ValueError, match="--rfs needs --rps"):
        rps.parse(None, 4096)


def test_values_and_description():
    assert rps.Steering(3).values() == {"rps_cpus": "3", "rps_flow_cnt": "0", "rps_sock_flow_entries": "0"}
    assert rps.Steering(10, 32768).values()["rps_cpus"] == "a"
    assert rps.Steering(3).describe() == "RPS on lo to CPU 0,1 (mask 3), no RFS"
    assert rps.Steering(2, 4096).describe() == "RPS on lo to CPU 1 (mask 2), RFS 4096 flow entries"


def test_sets_then_restores(files):
    with rps.steered(rps.Steering(3, 4096)) as seen:
        assert seen == {"rps_cpus": "3", "rps_flow_cnt": "4096", "rps_sock_flow_entries": "4096"}
        assert now(files) == seen
    assert now(files) == OLD


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_restores_when_the_run_fails(files, exc):
    with pytest.raises(exc):
        with rps.steered(rps.Steering(3)):
            assert now(files)["rps_cpus"] == "3"
            raise exc()
    assert now(files) == OLD


def test_restores_what_was_written_when_a_write_fails(files, monkeypatch):
    # The mask is written last: its write fails after the table sizes were
    # written (as a kernel refusing a mask would); they must be put back,
    # and the error reported.
    real = rps._write

    def refuse_mask(path, value):
        if path == rps.PATHS["rps_cpus"] and value != OLD["rps_cpus"]:
            raise OSError(22, "Invalid argument")
        real(path, value)
    monkeypatch.setattr(rps, "_write", refuse_mask)
    with pytest.raises(OSError, match="Invalid argument"):
        with rps.steered(rps.Steering(3, 4096)):
            pytest.fail("the block ran although the steering could not be set")
    assert now(files) == OLD


def test_off_touches_nothing(files, monkeypatch):
    monkeypatch.setattr(rps, "_write", lambda path, value: pytest.fail(f"wrote {path}"))
    with rps.steered(None) as seen:
        assert seen is None
    assert now(files) == OLD


def test_check(files):
    assert rps.check() is None
    assert "does not exist" in rps.check({**rps.PATHS, "rps_cpus": str(files / "nope")})


class _Ctx:
    """What _iperf reads of the bench's context."""

    class args:
        duration = 1.0

    tools = {"iperf3": "iperf3"}

    class upstream:
        restarts = 0

        @classmethod
        def restart_iperf(cls):
            cls.restarts += 1


class _Cont:
    l4_port = 5201
    proc = None


def test_an_l4_stream_run_is_steered_and_restored(files, monkeypatch):
    """workloads._iperf: the steering is on during iperf3's run, off before
    and after it, also when the run ends in an error."""
    ctx = _Ctx()
    ctx.rps = rps.Steering(3)
    during = []

    def fake_run(ctx_, cont, argv, timeout):
        during.append(now(files)["rps_cpus"])
        raise workloads.WorkloadError("iperf3 did not finish")
    monkeypatch.setattr(workloads, "_run", fake_run)
    with pytest.raises(workloads.WorkloadError):
        workloads.l4_1(ctx, _Cont())
    assert during == ["3"]
    assert now(files) == OLD

    class P:
        stdout = ('{"end": {"sum_received": {"bytes": 1073741824, "seconds": 1.0}, '
                  '"sum_sent": {"retransmits": 0}}}')
        stderr = ""
    w = {"wall_s": 1.0, "proxy_cpu_s": 0.1, "busy_frac": 0.5, "other_cpu_s": 0.0}

    def ok_run(ctx_, cont, argv, timeout):
        during.append(now(files)["rps_cpus"])
        return P(), w
    monkeypatch.setattr(workloads, "_run", ok_run)
    r = workloads.l4_64(ctx, _Cont())
    assert during[-1] == "3" and now(files) == OLD
    assert r["steering"] == "RPS on lo to CPU 0,1 (mask 3), no RFS"
    assert r["gbps"] == pytest.approx(8.59, abs=0.01)


def test_cli_takes_and_refuses(tmp_path):
    a = cli.parse_args(["--rps", "3", "--rfs", "4096"])
    assert (a.rps, a.rfs) == ("3", 4096)
    assert cli.parse_args([]).rps is None
    # a bad mask stops the bench before anything runs
    assert cli.main(["--rps", "cpu1", "--out", str(tmp_path / "o"), "--only", "direct"]) == 2
    assert cli.main(["--rfs", "4096", "--out", str(tmp_path / "o"), "--only", "direct"]) == 2


def test_the_report_says_how_the_l4_runs_were_steered():
    res = {"l4_steering": "RPS on lo to CPU 0,1 (mask 3), no RFS", "workloads": ["l4_1"]}
    assert "RPS on lo to CPU 0,1 (mask 3)" in report.steering_md(res)
    assert "loopback's receive processing ran in the sender's softirq" in \
        report.steering_md({"workloads": ["l4_1"]})
    assert report.steering_md({"workloads": ["http64"]}) == ""
