import os
import signal
import sys

import pytest

# The helpers (tests/lib: support, the test upstreams, ...) and the test
# modules of every level (a few import fixtures and helpers from another:
# `from test_http import http_proxy`) import by their plain names from any
# folder. docs/testing.md says which test goes in which level.
HERE = os.path.dirname(os.path.abspath(__file__))
for _d in ("system", "hardening", "integration", "unit", "lib"):      # lib first on the path
    sys.path.insert(0, os.path.join(HERE, _d))

from support import Proxy, Server, render_config  # noqa: E402

# A suite started in the background by a shell without job control (`cmd &`
# in a script, nohup, some CI runners) inherits SIGINT ignored, and every
# process it starts would too: the tests that press Ctrl-C at `uproxy top`
# or `uproxy reload` then test the launcher, not uproxy. Taking a handler
# here makes the children start with SIGINT at its default (a handler, unlike
# "ignored", is reset by exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The io_uring feature profiles every data-path test runs under: all that
# this kernel has, and what a Linux 5.15 kernel has.
PROFILES = {"full": "", "5.15": "post-5.15"}


@pytest.fixture
def servers():
    made = []

    def make(handle, **kw):
        s = Server(handle, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


@pytest.fixture
def proxy_factory(tmp_path, request):
    made = []
    request.node._uproxy_made = made       # for the failure report below

    def make(listeners, clusters, proxy=None, profile="full", env=None, extra="", **kw):
        env = dict(env or {})
        if PROFILES.get(profile):
            env["UPROXY_DISABLE"] = PROFILES[profile]
        p = Proxy(tmp_path, render_config(proxy or {"workers": 2}, listeners, clusters, extra),
                  env=env, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        if p.p.poll() is None:
            code = p.stop()
            assert code == 0, f"uproxy exited {code}:\n{p.output()}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows how each proxy it started ended: a proxy that
    exited by itself (a crash, a fatal error) otherwise leaves only a
    "connection refused" behind."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    made = getattr(item, "_uproxy_made", None)
    for i, p in enumerate(made or ()):
        code = p.p.poll()
        state = "still running" if code is None else f"exited with {code}"
        tail = "\n".join(p.output().splitlines()[-40:])
        rep.sections.append((f"uproxy #{i} (pid {p.pid}, {state})", tail))
