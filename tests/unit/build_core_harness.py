"""Builds the test-only cffi module `_core_harness`: the C core's own
sources (every file native/build_native.py compiles, with its flags) plus
tests/unit/core_harness.c, which sets up a `struct worker` by hand and
exposes plain functions to the unit tests. Nothing the tested code calls is
stubbed: the whole core is linked, and a real io_uring ring is created
where a piece needs one (buffer rings, SQEs).

The module is built once per content: its directory under build/unit-harness/
is named by a hash of every source and flag, so a second run with nothing
changed imports it at once.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# UPROXY_UNIT_NATIVE: another copy of the core to test (a mutated one, say,
# to see that the tests can fail).
NATIVE = os.path.abspath(os.environ.get("UPROXY_UNIT_NATIVE") or os.path.join(ROOT, "native"))
HARNESS_C = os.path.join(HERE, "core_harness.c")
MODULE = "_core_harness"

HARNESS_H = os.path.join(HERE, "core_harness.h")
# The core's constants the tests use, besides core_harness.h's declarations.
CONSTANTS = """
#define UP_BALANCE_ROUND_ROBIN ...
#define UP_BALANCE_LEAST_CONN ...
#define UP_BALANCE_P2C ...
#define UP_BALANCE_HASH ...
#define UP_F_BUF_RING ...
#define UP_C_POOL_IDLE ...
#define UP_C_BUFFERS_IN_USE ...
#define UP_C_HEALTH_EJECTIONS ...
#define UP_BRK_CLOSED ...
#define UP_BRK_OPEN ...
#define UP_BRK_HALF ...
#define BRK_COUNTED ...
#define BRK_PROBE ...
#define BRK_REFUSED ...
#define UP_C_ERR_NOBUFS ...
#define TICK_MS ...
#define WHEEL_SLOTS ...
#define HBUF_SIZE ...
#define NIL ...
#define OP_RECV ...
#define OP_PROVIDE ...
#define X_PAUSED ...
#define C_UP_FINISH ...
#define C_UP_ADOPT ...
#define IORING_OP_PROVIDE_BUFFERS ...
#define IORING_OP_RECV ...
#define BUF_GROUP ...
#define OP_CONNECT ...
#define OP_LINK_TIMEOUT ...
#define IORING_OP_CONNECT ...
#define IORING_OP_LINK_TIMEOUT ...
#define IOSQE_IO_LINK ...
#define CS_CONNECTING ...
#define CS_OPEN ...
#define CS_CLOSING ...
#define CS_CLOSED ...
#define CK_FREE ...
#define CK_L4_CLIENT ...
#define CK_L4_UPSTREAM ...
#define OP_CANCEL ...
#define OP_CLOSE ...
#define IORING_OP_ASYNC_CANCEL ...
#define IORING_OP_CLOSE ...
#define X_STARVED ...
#define C_SERVER_REF ...
#define C_COUNTED ...
#define UP_C_UPSTREAM_CONNECTS ...
#define UP_C_UPSTREAM_ACTIVE ...
#define UP_C_ERR_CONNECT_OTHER ...
"""


def cdef_text():
    """core_harness.h minus its preprocessor lines, plus CONSTANTS."""
    with open(HARNESS_H) as f:
        lines = [l for l in f if not l.lstrip().startswith("#")]
    return "".join(lines) + CONSTANTS


def native_build():
    """native/build_native.py, imported from its file (it is not a package)."""
    spec = importlib.util.spec_from_file_location("_uproxy_build_native",
                                                  os.path.join(NATIVE, "build_native.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sources(bn):
    return sorted(os.path.join(NATIVE, layer, f)
                  for layer in bn.LAYERS
                  for f in os.listdir(os.path.join(NATIVE, layer)) if f.endswith(".c"))


def build(build_root=None, verbose=False):
    """Compiles the harness (unless a build of the same content exists) and
    returns the imported module."""
    from cffi import FFI

    bn = native_build()
    srcs = sources(bn) + [HARNESS_C]
    cflags = bn._flags() + bn._pkg_config("--cflags")
    libs = bn.link_args()
    digest = hashlib.sha256()
    for part in [cdef_text(), " ".join(cflags), " ".join(libs), sys.version]:
        digest.update(part.encode())
    headers = sorted(os.path.join(d, f) for d, _, fs in os.walk(NATIVE) for f in fs
                     if f.endswith(".h"))
    for path in srcs + headers + [HARNESS_H]:
        digest.update(path.encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    build_root = (build_root or os.environ.get("UPROXY_UNIT_BUILD")
                  or os.path.join(ROOT, "build", "unit-harness"))
    out = os.path.join(build_root, digest.hexdigest()[:16])
    if not _built(out):
        ffi = FFI()
        ffi.cdef(cdef_text())
        ffi.set_source(MODULE, '#include "core_harness.h"\n', sources=srcs,
                       include_dirs=[NATIVE, HERE], extra_compile_args=cflags,
                       extra_link_args=libs)
        compile_aside(ffi, build_root, out, MODULE, verbose)
        _prune(build_root, keep=out)
    return _load(out)


def compile_aside(ffi, build_root, out, module, verbose=False):
    """Built aside, then renamed into place: a build cut short, or two at
    once, never leaves a half-written module where one is looked for
    (build_hpack_harness too)."""
    os.makedirs(build_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="tmp-", dir=build_root)
    try:
        ffi.compile(tmpdir=tmp, verbose=verbose)
        try:
            os.rename(tmp, out)
        except OSError:
            if not _built(out, module):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune(build_root, keep, n=4):
    """Every edit of the core makes a new build: keep the n newest."""
    def mtime(path):
        try:
            return os.path.getmtime(path)
        except OSError:             # pruned by another run meanwhile
            return 0
    old = sorted((os.path.join(build_root, d) for d in os.listdir(build_root)
                  if not d.startswith("tmp-")), key=mtime, reverse=True)
    for path in old[n:]:
        if path != keep:
            shutil.rmtree(path, ignore_errors=True)


def _built(out, module=MODULE):
    """A built test module named module is in out (build_hpack_harness too)."""
    return os.path.isdir(out) and any(f.startswith(module) and f.endswith(".so")
                                      for f in os.listdir(out))


def _load(out, module=MODULE):
    so = next(os.path.join(out, f) for f in os.listdir(out)
              if f.startswith(module) and f.endswith(".so"))
    spec = importlib.util.spec_from_file_location(module, so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    m = build(verbose=True)
    print(m.__file__)
