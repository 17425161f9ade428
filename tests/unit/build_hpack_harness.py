"""Builds the test-only cffi module `_hpack_harness`: native/http2/hpack.c
and hpack_huff.c alone (they call nothing else), compiled with the core's
flags (native/build_native.py), so it takes a second, not the whole core's
build.

The declarations cffi sees are native/http2/hpack.h itself, minus its
preprocessor lines, with the header's numeric macros evaluated (cffi takes
`#define NAME 42`, not expressions): full struct definitions, which cffi
checks against the compiled layout, so the tests and the header cannot
drift apart. Built once per content, under build/unit-harness/hpack-<hash>/.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_core_harness  # noqa: E402  (its module loader)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NATIVE = os.path.abspath(os.environ.get("UPROXY_UNIT_NATIVE") or os.path.join(ROOT, "native"))
HEADER = os.path.join(NATIVE, "http2", "hpack.h")
SOURCES = [os.path.join(NATIVE, "http2", f)
           for f in ("hpack.c", "hpack_huff.c", "hpack_huff_table.h", "hpack.h")]
MODULE = "_hpack_harness"


def cdef_text():
    with open(HEADER) as f:
        text = f.read()
    macros = {}
    for name, expr in re.findall(r"^#define\s+(HPACK_\w+)\s+(.+?)\s*(?:/\*.*)?$", text, re.M):
        for known, value in macros.items():
            expr = re.sub(rf"\b{known}\b", str(value), expr)
        macros[name] = int(eval(expr.replace("/", "//"), {}))     # noqa: S307 (our header)
    body = "".join(line for line in text.splitlines(True) if not line.lstrip().startswith("#"))
    for name, value in macros.items():
        body = re.sub(rf"\[{name}\]", f"[{value}]", body)
    return "".join(f"#define {n} {v}\n" for n, v in macros.items()) + body


def _flags():
    spec = importlib.util.spec_from_file_location("_uproxy_build_native",
                                                  os.path.join(NATIVE, "build_native.py"))
    bn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bn)
    return bn._flags()


def build(build_root=None):
    from cffi import FFI

    cflags = _flags()
    digest = hashlib.sha256()
    for part in [cdef_text(), " ".join(cflags), sys.version]:
        digest.update(part.encode())
    for path in SOURCES:
        with open(path, "rb") as f:
            digest.update(f.read())
    build_root = (build_root or os.environ.get("UPROXY_UNIT_BUILD")
                  or os.path.join(ROOT, "build", "unit-harness"))
    out = os.path.join(build_root, "hpack-" + digest.hexdigest()[:16])
    if not _built(out):
        ffi = FFI()
        ffi.cdef(cdef_text())
        ffi.set_source(MODULE, '#include "http2/hpack.h"\n',
                       sources=[p for p in SOURCES if p.endswith(".c")],
                       include_dirs=[NATIVE], extra_compile_args=cflags)
        build_core_harness.compile_aside(ffi, build_root, out, MODULE)
        for old in os.listdir(build_root):      # earlier builds of this module
            path = os.path.join(build_root, old)
            if old.startswith("hpack-") and path != out:
                shutil.rmtree(path, ignore_errors=True)
    return _load(out)


def _built(out):
    return build_core_harness._built(out, MODULE)


def _load(out):
    return build_core_harness._load(out, MODULE)


if __name__ == "__main__":
    print(cdef_text())
    print(build().__file__)
