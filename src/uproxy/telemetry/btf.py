"""Struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The eBPF programs read tracepoint fields wherever they can; where a kernel
struct field is needed (a raw tracepoint hands over a ``struct task_struct *``)
its offset is taken from the running kernel's own type information, never
from the installed headers, which may be another kernel's (Debian's 6.1
headers on a 6.18 kernel, say).

A small reader of the BTF format (linux/btf.h): just enough to walk every
type record and look up a struct's members, following anonymous struct and
union members the way C does.
"""
from __future__ import annotations

import struct

VMLINUX = "/sys/kernel/btf/vmlinux"

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, \
    _FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(1, 20)

# extra bytes after the 12-byte btf_type: fixed, or per vlen entry
_FIXED = {_INT: 4, _ARRAY: 12, _VAR: 4, _DECL_TAG: 4}
_PER = {_STRUCT: 12, _UNION: 12, _ENUM: 8, _FUNC_PROTO: 8, _DATASEC: 12, _ENUM64: 12}


class BTFError(Exception):
    pass


class BTF:
    def __init__(self, data: bytes):
        if len(data) < 24:
            raise BTFError("BTF data too short")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != 0xEB9F:
            raise BTFError("not BTF data (bad magic)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self.data = data
        self.strings = hdr_len + str_off
        self.str_end = self.strings + str_len
        self.types = [None]      # type id -> (kind, name_off, vlen, kind_flag, size_or_type, pos)
        self.by_name = {}        # (kind, name) -> id, first seen
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, st = struct.unpack_from("<III", data, pos)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            tid = len(self.types)
            self.types.append((kind, name_off, vlen, kflag, st, pos + 12))
            if name_off and kind in (_STRUCT, _UNION):
                self.by_name.setdefault((kind, self._str(name_off)), tid)
            pos += 12 + _FIXED.get(kind, 0) + _PER.get(kind, 0) * vlen

    @classmethod
    def load(cls, path: str = VMLINUX) -> "BTF":
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as e:
            raise BTFError(f"cannot read {path}: {e.strerror} (the kernel needs CONFIG_DEBUG_INFO_BTF)")

    def _str(self, off: int) -> str:
        s = self.strings + off
        e = self.data.index(b"\0", s, self.str_end)
        return self.data[s:e].decode()

    def _members(self, tid):
        kind, _, vlen, kflag, _, pos = self.types[tid]
        for i in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", self.data, pos + 12 * i)
            bit = off & 0xFFFFFF if kflag else off
            yield (self._str(name_off) if name_off else ""), mtype, bit

    def _resolve(self, tid):
        """Skip typedefs and qualifiers."""
        while self.types[tid][0] in (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG):
            tid = self.types[tid][4]
        return tid

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of struct_name.member (a dotted path is allowed)."""
        tid = self.by_name.get((_STRUCT, struct_name)) or self.by_name.get((_UNION, struct_name))
        if tid is None:
            raise BTFError(f"struct {struct_name} is not in the kernel's BTF")
        total = 0
        for part in member.split("."):
            found = self._find(tid, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {member}")
            bits, tid = found
            if bits % 8:
                raise BTFError(f"{struct_name}.{member} is a bit field")
            total += bits // 8
            tid = self._resolve(tid)
        return total

    def _find(self, tid, name):
        for mname, mtype, bit in self._members(tid):
            if mname == name:
                return bit, mtype
            if not mname:       # anonymous struct or union: search inside
                inner = self._resolve(mtype)
                if self.types[inner][0] in (_STRUCT, _UNION):
                    got = self._find(inner, name)
                    if got:
                        return bit + got[0], got[1]
        return None


_cache = None


def kernel() -> BTF:
    global _cache
    if _cache is None:
        _cache = BTF.load()
    return _cache


def offset(struct_name: str, member: str) -> int:
    return kernel().member_offset(struct_name, member)
