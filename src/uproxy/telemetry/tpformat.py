"""Tracepoint records as C structs, built from the running kernel's own
format files (/sys/kernel/tracing/events/<cat>/<event>/format).

Each field lands at the offset the kernel states, so a probe reads the
fields of this kernel's tracepoint whatever headers are installed; the
generated header also says, with HAVE_<cat>_<event>_<field> macros, which
fields exist, so a program can adapt to a kernel that lacks one.
"""
from __future__ import annotations

import os
import re

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
                    r"\s*signed:(?P<signed>\d+);")


def tracefs() -> str | None:
    for d in TRACEFS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


def mount_tracefs() -> str | None:
    """Mount tracefs where it is missing (needs root); bcc attaches
    tracepoints through it. Returns the directory, or None."""
    d = tracefs()
    if d:
        return d
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for target in TRACEFS[:1]:
        if os.path.isdir(target) and libc.mount(b"nodev", target.encode(), b"tracefs", 0, None) == 0:
            return tracefs()
    return None


def exists(category: str, event: str) -> bool:
    d = tracefs()
    return bool(d) and os.path.exists(os.path.join(d, "events", category, event, "format"))


def fields(category: str, event: str) -> list:
    """[(name, offset, size, signed, array_len)] of the event's own fields."""
    d = tracefs()
    if not d:
        raise FileNotFoundError("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")
    with open(os.path.join(d, "events", category, event, "format")) as f:
        text = f.read()
    out = []
    for m in _FIELD.finditer(text):
        decl = m.group("decl").strip()
        off, size, signed = int(m.group("off")), int(m.group("size")), m.group("signed") == "1"
        am = re.search(r"(\w+)\s*\[(\d*)\]\s*$", decl)
        if am:
            name, n = am.group(1), int(am.group(2) or 0)
        else:
            name, n = re.search(r"(\w+)\s*$", decl).group(1), 0
        if decl.startswith("__data_loc"):
            n = 0               # a u32 (offset << 16 | length) in the record
        if name.startswith("common_"):
            continue
        out.append((name, off, size, signed, n))
    return out


def c_struct(category: str, event: str) -> str:
    """`struct tp_<event> {...};` plus HAVE_ macros, for one tracepoint."""
    lines = [f"struct tp_{event} {{", "    u64 __common;"]
    pos = 8
    have = []
    for name, off, size, signed, n in sorted(fields(category, event), key=lambda f: f[1]):
        if off < pos:
            continue
        if off > pos:
            lines.append(f"    u8 __pad{off}[{off - pos}];")
        if n and size % n == 0 and size // n in (1, 2, 4, 8):
            el = size // n
            lines.append(f"    {'s' if signed else 'u'}{el * 8} {name}[{n}];")
        elif size in (1, 2, 4, 8):
            lines.append(f"    {'s' if signed else 'u'}{size * 8} {name};")
        else:
            lines.append(f"    u8 {name}[{size}];")
        have.append(f"#define HAVE_{category}_{event}_{name} 1")
        pos = off + size
    lines.append("} __attribute__((packed));")
    return "\n".join(have + lines) + "\n"
