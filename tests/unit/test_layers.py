"""The C core's layers (DESIGN.md section 4) call only downward: each
layer's objects refer only to symbols defined in their own folder, the
folders below it, or outside the core (libc, liburing). The two protocols
sit side by side and never call each other: an HTTP upgrade that becomes a
tunnel is handed to L4 by the loop on top, which alone names every
protocol."""
import os
import re
import subprocess
import sys

import pytest

from support import ROOT

NATIVE = os.path.join(ROOT, "native")
# layer -> the layers it may call (itself included)
MAY_CALL = {
    "core": {"core"},
    "upstream": {"core", "upstream"},
    "transport": {"core", "transport"},
    "l4": {"core", "upstream", "transport", "l4"},
    "http": {"core", "upstream", "transport", "http"},
    "http2": {"core", "upstream", "transport", "http", "http2"},
    "worker": {"core", "upstream", "transport", "l4", "http", "http2", "worker"},
}


def _build_native():
    sys.path.insert(0, NATIVE)
    try:
        import build_native
    finally:
        sys.path.pop(0)
    return build_native


def _symbols(tmp_path):
    bn = _build_native()
    assert set(bn.LAYERS) == set(MAY_CALL), "a layer was added: say what it may call"
    flags = [f for f in bn._flags() if not f.startswith("-O")] + ["-O1", f"-I{NATIVE}"]
    flags += bn._pkg_config("--cflags")
    defined, needs = {}, {}
    for layer in bn.LAYERS:
        for name in sorted(os.listdir(os.path.join(NATIVE, layer))):
            if not name.endswith(".c"):
                continue
            src = os.path.join(NATIVE, layer, name)
            obj = tmp_path / f"{layer}-{name}.o"
            subprocess.run(["gcc", *flags, "-c", src, "-o", str(obj)], check=True)
            out = subprocess.run(["nm", str(obj)], capture_output=True, text=True,
                                 check=True).stdout
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] in "TDBR":
                    defined[parts[2]] = layer
                elif len(parts) == 2 and parts[0] == "U":
                    needs.setdefault((layer, f"{layer}/{name}"), set()).add(parts[1])
    return defined, needs


@pytest.fixture(scope="module")
def symbols(tmp_path_factory):
    return _symbols(tmp_path_factory.mktemp("layers"))


def test_every_layer_calls_only_downward(symbols):
    defined, needs = symbols
    wrong = []
    for (layer, path), syms in sorted(needs.items()):
        for s in sorted(syms):
            owner = defined.get(s)
            if owner and owner not in MAY_CALL[layer]:
                wrong.append(f"native/{path} ({layer}) calls {s} of {owner}")
    assert not wrong, "upward or sideways calls:\n" + "\n".join(wrong)


def test_lower_layers_name_no_protocol(symbols):
    """Belt and braces for what symbols cannot show (a macro, an inline
    function): the lower layers' sources do not call a protocol by name."""
    protocols = r"\b(h1|h2|http|l4)_[a-z0-9_]+\s*\("
    # TLS is a transport (DESIGN.md section 4): its own layer names it,
    # the layers under it may not.
    calls = {"core": re.compile(protocols.replace("l4)", "l4|tls)")),
             "upstream": re.compile(protocols.replace("l4)", "l4|tls)")),
             "transport": re.compile(protocols)}
    bad = []
    for layer in ("core", "upstream", "transport"):
        call = calls[layer]
        for name in sorted(os.listdir(os.path.join(NATIVE, layer))):
            if not name.endswith((".c", ".h")):
                continue
            with open(os.path.join(NATIVE, layer, name)) as f:
                for i, line in enumerate(f, 1):
                    code = line.split("//")[0]
                    if call.search(code) and not code.lstrip().startswith(("*", "/*")):
                        bad.append(f"native/{layer}/{name}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_the_check_can_fail(tmp_path):
    """A call upward is caught: a core file that calls the loop's
    acceptors_sync, compiled beside the rest."""
    bn = _build_native()
    flags = [f for f in bn._flags() if not f.startswith("-O")] + ["-O1", f"-I{NATIVE}"]
    flags += bn._pkg_config("--cflags")
    src = tmp_path / "bad.c"
    src.write_text('#include "worker/loop.h"\nvoid bad(struct worker *w) { acceptors_sync(w); }\n')
    obj = tmp_path / "bad.o"
    subprocess.run(["gcc", *flags, "-c", str(src), "-o", str(obj)], check=True)
    out = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    undefined = {l.split()[1] for l in out.splitlines() if l.split()[:1] == ["U"]}
    defined, _ = _symbols(tmp_path)
    assert any(defined.get(s) == "worker" and "worker" not in MAY_CALL["core"] for s in undefined)
