"""The libFuzzer harnesses of native/http/http1.c, native/l4/clienthello.c,
the HTTP/2 codec and HPACK (tests/hardening/fuzz/, scripts/fuzz):
the corpus and every kept crash reproducer replay cleanly, and a short
bounded fuzzing pass (about 15 s per target) finds nothing.

Skipped, with the reason, where clang with libFuzzer is missing and cannot
be installed (scripts/fuzz installs it when it runs as root)."""
import glob
import os
import subprocess

import pytest

from support import ROOT

FUZZ = os.path.join(ROOT, "scripts", "fuzz")
TARGETS = ["request", "response", "chunked", "clienthello", "h2", "hpack"]
SECONDS = int(os.environ.get("UPROXY_FUZZ_SECONDS", "15"))


def run_fuzz(*args, timeout=600):
    env = dict(os.environ, UPROXY_FUZZ_MERGE="0", UPROXY_FUZZ_SEED="1")
    p = subprocess.run([FUZZ, *args], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=ROOT)
    if p.returncode == 77:
        pytest.skip(p.stderr.strip().splitlines()[-1])
    return p


def regression_inputs():
    out = []
    for t in TARGETS:
        for f in sorted(glob.glob(os.path.join(ROOT, "tests", "hardening", "fuzz", "regressions", t, "*"))):
            out.append(pytest.param(t, f, id=f"{t}/{os.path.basename(f)}"))
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_and_regressions_replay(target):
    p = run_fuzz("--replay", target)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize("target,path", regression_inputs())
def test_each_crash_reproducer_stays_fixed(target, path):
    """Every crash the fuzzers found is kept as an input and replayed alone."""
    run_fuzz("--replay", target)            # builds the harness (or skips)
    binary = os.path.join(ROOT, "build", "fuzz", f"fuzz_{target}")
    p = subprocess.run([binary, "-runs=0", path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize("target", TARGETS)
def test_short_fuzzing_pass_finds_nothing(target):
    p = run_fuzz(str(SECONDS), target, timeout=SECONDS + 300)
    assert p.returncode == 0, f"the fuzzer found a crash:\n{p.stderr[-3000:]}"
    assert "stat::number_of_executed_units" in p.stderr
