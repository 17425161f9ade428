"""Builds uproxy's C core into the extension module uproxy._native.

cffi's out-of-line API mode: the declarations in native/api.h are both the
C header the core is compiled against and the cdef Python sees, so the two
cannot drift apart. liburing is found with pkg-config.
"""
import os
import re
import shlex
import subprocess

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
# Relative paths: setuptools refuses absolute ones in a build.
# A folder per layer (DESIGN.md section 4), lowest first; a layer's files
# call only into their own folder and the ones before it
# (tests/unit/test_layers.py checks the objects' symbols).
LAYERS = ["core", "upstream", "transport", "l4", "http", "http2", "worker"]
SOURCES = sorted(
    os.path.relpath(os.path.join(HERE, layer, f))
    for layer in LAYERS for f in os.listdir(os.path.join(HERE, layer)) if f.endswith(".c")
)
CFLAGS = ["-std=gnu11", "-D_GNU_SOURCE", "-O2", "-g", "-Wall", "-Wextra", "-Werror",
          "-fno-strict-aliasing"]


def _pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "liburing"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(
            "uproxy needs liburing 2.3 or newer and pkg-config to build its "
            "C core: apt-get install liburing-dev pkg-config "
            f"(pkg-config said: {getattr(e, 'stderr', e)})")
    return shlex.split(out)


# The headers Python sees: the core's API, the HTTP/1.1 parser's and the
# ClientHello reader's (pure parsers, tested from Python).
HEADERS = ["api.h", "http/http1_api.h", "l4/clienthello_api.h"]


def cdef_text():
    """The API headers minus what cffi's parser does not take: include
    guards and includes."""
    lines = []
    for name in HEADERS:
        with open(os.path.join(HERE, name)) as f:
            for line in f:
                if re.match(r"\s*#\s*(ifndef|endif|include)", line):
                    continue
                if re.match(r"\s*#\s*define\s+UPROXY_\w+_H\b", line):
                    continue
                lines.append(line)
    return "".join(lines)


def _flags():
    # Extra flags for sanitizer or instrumented builds come from the
    # environment (scripts/setup --sanitize sets them).
    return CFLAGS + shlex.split(os.environ.get("UPROXY_CFLAGS", ""))


def link_args():
    # OpenSSL (libssl-dev) for TLS: its one door is native/transport/tls*.c.
    # nghttp2 (libnghttp2-dev) for HTTP/2: its one door is native/http2/h2_codec.c.
    # PCRE2 (libpcre2-dev) for regex rewrites, libcrypt (libcrypt-dev:
    # bcrypt) for basic auth: native/http/h1_policy.c. zlib and libzstd
    # (zlib1g-dev, libzstd-dev) for response compression: native/http/h1_compress.c.
    return _pkg_config("--libs") + ["-lssl", "-lcrypto", "-lnghttp2", "-lpcre2-8", "-lcrypt",
                                    "-lz", "-lzstd"] + shlex.split(
        os.environ.get("UPROXY_LDFLAGS", ""))


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "uproxy._native",
    "".join(f'#include "{h}"\n' for h in HEADERS),
    sources=SOURCES,
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=_flags() + _pkg_config("--cflags"),
    extra_link_args=link_args(),
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "build", "native"), verbose=True)
