"""pytest plugin for the sanitized run (scripts/test-sanitized):

  .venv/bin/python -m pytest -p tests.sanitize.plugin tests/integration/test_l4.py tests/integration/test_http.py

Every `uproxy run` the tests start (tests/lib/support.py: Proxy) runs with the
ASan/UBSan/LSan build from .venv-asan instead of the normal one, with the
ASan runtime preloaded into that process only (the test process, curl,
nginx and the upstreams stay as they are). After each test, the output of
every proxy it started is searched for a sanitizer report; one fails the
test, with the report. A leak report also makes the proxy exit 23, which
the proxy fixture reports as well.
"""
import os
import re
import subprocess as _subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.environ.get("UPROXY_ASAN_VENV", os.path.join(ROOT, ".venv-asan"))
SUPP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsan.supp")
REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|"
                    r"WARNING: (AddressSanitizer|ThreadSanitizer)|SUMMARY: UndefinedBehaviorSanitizer")

ASAN_OPTIONS = ":".join([
    "detect_leaks=1",               # LeakSanitizer at exit (suppressions: CPython's own)
    "halt_on_error=1",              # the first memory error stops the proxy
    "exitcode=23",
    "detect_stack_use_after_return=0",
    "check_initialization_order=1",
    "strict_init_order=1",
    "detect_invalid_pointer_pairs=0",
    "allocator_may_return_null=0",
])
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=0:report_error_type=1"
LSAN_OPTIONS = f"suppressions={SUPP}:print_suppressions=0"

_logs = []           # proxy output files of the current test


def runtime():
    with open(os.path.join(VENV, "asan-runtime")) as f:
        return f.read().strip()


def sanitized_env(env=None, leaks=True) -> dict:
    env = dict(env if env is not None else os.environ)
    asan = ASAN_OPTIONS if leaks else ASAN_OPTIONS.replace("detect_leaks=1", "detect_leaks=0")
    # libcrypt too (basic auth's crypt_r): ASan's crypt_r interceptor finds
    # the real one when the runtime starts, before Python loads the core
    # that links libcrypt; without it the interceptor calls a null pointer.
    env.update(LD_PRELOAD=runtime() + " libcrypt.so.1", ASAN_OPTIONS=asan,
               UBSAN_OPTIONS=UBSAN_OPTIONS, LSAN_OPTIONS=LSAN_OPTIONS)
    # The sanitized package is an installed copy: its eBPF programs (the
    # sockmap program the proxy loads at start) are the checkout's.
    env.setdefault("UPROXY_BPF_DIR", os.path.join(ROOT, "bpf"))
    return env


def drops_privileges(args) -> bool:
    """A proxy whose configuration has [proxy] user = ...: after setuid the
    process is not dumpable, /proc/self/maps is no longer its own to read,
    and LeakSanitizer's stacks cannot be symbolized, so its CPython
    suppressions cannot match. Such a proxy runs without the leak check
    (memory errors are still caught)."""
    try:
        cfg = args[list(args).index("-c") + 1]
        with open(cfg) as f:
            return re.search(r"(?m)^\s*user\s*=", f.read()) is not None
    except (ValueError, IndexError, OSError):
        return False


def find_reports(text: str):
    """The sanitizer reports in a process's output (empty if none)."""
    lines = text.splitlines()
    hits = [i for i, l in enumerate(lines) if REPORT.search(l)]
    return ["\n".join(lines[max(0, i - 2):i + 40]) for i in hits[:3]]


def _popen(args, *a, **kw):
    if isinstance(args, (list, tuple)) and list(args[:3]) == [sys.executable, "-m", "uproxy"]:
        args = [os.path.join(VENV, "bin", "python"), *args[1:]]
        kw["env"] = sanitized_env(kw.get("env"), leaks=not drops_privileges(args))
        out = kw.get("stdout")
        if hasattr(out, "name"):
            _logs.append(out.name)
    return _subprocess.Popen(args, *a, **kw)


def pytest_configure(config):
    if not os.path.exists(os.path.join(VENV, "asan-runtime")):
        raise pytest.UsageError(f"no sanitized build in {VENV}: run scripts/setup --sanitize")
    sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
    import support
    shim = types.ModuleType("subprocess")
    shim.__dict__.update(_subprocess.__dict__)
    shim.Popen = _popen
    support.subprocess = shim
    config.addinivalue_line("markers", "sanitized: run under the sanitized build")


@pytest.fixture(autouse=True)
def _sanitizer_reports_fail_the_test():
    """Set up first, torn down last: after the proxies have stopped."""
    del _logs[:]
    yield
    found = []
    for path in _logs:
        try:
            with open(path, errors="replace") as f:
                found += find_reports(f.read())
        except OSError:
            pass
    del _logs[:]
    if found:
        pytest.fail("sanitizer report from the proxy:\n" + "\n---\n".join(found), pytrace=False)
