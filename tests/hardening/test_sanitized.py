"""The sanitized run's plumbing (scripts/test-sanitized, tests/sanitize/):
the build in .venv-asan is instrumented and is what the proxy processes
run; a memory error in such a process is reported, and the report is
found. The sanitized suites themselves run from scripts/test (CI) and
scripts/test-sanitized; this file only checks that their verdict can be
trusted. Skipped where .venv-asan was not built (scripts/setup --sanitize).
"""
import os
import subprocess
import textwrap

import httpx
import pytest

from http_upstream import HttpUpstream
from sanitize import plugin
from support import free_port, render_config, Proxy

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(plugin.VENV, "asan-runtime")),
                                reason="no sanitized build: scripts/setup --sanitize")
PY = os.path.join(plugin.VENV, "bin", "python")


def test_report_patterns():
    asan = "==1==ERROR: AddressSanitizer: heap-use-after-free on address 0x6020"
    ubsan = "native/l4.c:10:5: runtime error: signed integer overflow"
    lsan = "==1==ERROR: LeakSanitizer: detected memory leaks"
    for text in (asan, ubsan, lsan):
        assert plugin.find_reports("x\n" + text + "\ny"), text
    assert not plugin.find_reports("uproxy[1]: listening on 127.0.0.1:80\nstopped (exit 0)")


def test_sanitized_module_is_instrumented_and_separate():
    out = subprocess.run([PY, "-c", "import uproxy._native as n; print(n.__file__)"],
                         env=plugin.sanitized_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    so = out.stdout.strip()
    assert so.startswith(plugin.VENV), so          # never the .so in src/ that .venv uses
    syms = subprocess.run(["nm", "-D", so], capture_output=True, text=True).stdout
    assert "__asan_report_load" in syms and "__ubsan_handle" in syms


def test_a_memory_error_is_reported_and_found():
    """A use after free in a process run the way the proxies are."""
    code = textwrap.dedent("""
        import ctypes
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        p = libc.malloc(32)
        libc.free(ctypes.c_void_p(p))
        buf = ctypes.create_string_buffer(32)
        libc.memcpy(buf, ctypes.c_void_p(p), 32)
    """)
    out = subprocess.run([PY, "-c", code], env=plugin.sanitized_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert plugin.find_reports(out.stderr), out.stderr[-2000:]
    assert "heap-use-after-free" in out.stderr


def test_sanitized_proxy_serves_and_exits_clean(tmp_path, monkeypatch):
    import support
    shim = type(support.subprocess)("subprocess")
    shim.__dict__.update(subprocess.__dict__)
    shim.Popen = plugin._popen
    monkeypatch.setattr(support, "subprocess", shim)
    up = HttpUpstream()
    port = free_port()
    p = Proxy(tmp_path, render_config({"workers": 1}, [{"name": "web", "bind": f"127.0.0.1:{port}",
                                                          "mode": "http", "cluster": "c"}],
                                      [{"name": "c", "servers": [up.addr]}]))
    try:
        with open(f"/proc/{p.pid}/maps") as f:
            assert "libasan" in f.read(), "the proxy runs without the ASan runtime"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            for i in range(50):
                assert c.get(f"/{i}").text == f"ok /{i}"
    finally:
        code = p.stop()
        up.close()
    out = p.output()
    assert code == 0, out
    assert not plugin.find_reports(out), out
