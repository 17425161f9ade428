"""Unit tests of the C core's pieces, through the test-only cffi module
built from tests/unit/core_harness.c (see build_core_harness.py)."""
import os
import socket
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)                        # build_core_harness

import build_core_harness  # noqa: E402


@pytest.fixture(scope="session")
def core():
    """The harness module (ffi, lib), compiled once per content of the
    core's sources."""
    return build_core_harness.build()


@pytest.fixture(scope="session")
def ffi(core):
    return core.ffi


@pytest.fixture(scope="session")
def lib(core):
    return core.lib


@pytest.fixture
def worker(core):
    """make(...) -> a hand-built worker (struct hx *), freed at teardown."""
    made = []

    def make(nconns=64, buf_size=4096, buf_count=0, head_buffers=0, features=0,
             queue_limit=1 << 20, now_ms=1_000_000):
        h = core.lib.hx_new(nconns, buf_size, buf_count, head_buffers, features,
                            queue_limit, now_ms)
        if h == core.ffi.NULL:
            raise RuntimeError(core.ffi.string(core.lib.hx_error()).decode())
        made.append(h)
        return h
    yield make
    for h in made:
        core.lib.hx_free(h)


@pytest.fixture
def pair():
    """Two connected sockets, closed at teardown."""
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def alloc(lib):
    """alloc(h, n) -> n connection slots taken from worker h's slab."""
    def take(h, n):
        ids = [lib.hx_conn_alloc(h) for _ in range(n)]
        assert min(ids) >= 0
        return ids
    return take
