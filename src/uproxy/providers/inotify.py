"""inotify(7) through ctypes: three libc calls, no dependency.

Why not a PyPI package: the ones that wrap inotify (inotify_simple,
pyinotify, watchdog) are either unmaintained (pyinotify), or a layer of
threads and polling fallbacks (watchdog) around what is three syscalls
and a struct; this file is that struct and those calls.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# What a directory watch reports: a file written in place, replaced by a
# rename (editors, `mv`, Kubernetes' ..data symlink swap), created,
# removed, or its mode changed.
DIR_EVENTS = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO |
              IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)

_HDR = struct.Struct("iIII")      # wd, mask, cookie, len (struct inotify_event)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class Inotify:
    """One inotify instance: add() directories, fileno() for poll, read()
    the events that came."""

    def __init__(self):
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)} (fs.inotify.max_user_instances "
                             f"may be exhausted: sysctl fs.inotify.max_user_instances)")
        self.fd = fd
        self.paths = {}          # wd -> directory

    def fileno(self) -> int:
        return self.fd

    def add(self, path: str, mask: int = DIR_EVENTS | IN_ONLYDIR) -> int:
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"cannot watch {path}: {os.strerror(e)}", path)
        self.paths[wd] = path
        return wd

    def remove(self, wd: int):
        _libc.inotify_rm_watch(self.fd, wd)      # (an already gone watch: EINVAL, harmless)
        self.paths.pop(wd, None)

    def read(self) -> list:
        """[(directory, mask, name)] of what is queued now; [] when nothing is."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i + _HDR.size <= len(data):
            wd, mask, _cookie, n = _HDR.unpack_from(data, i)
            name = data[i + _HDR.size:i + _HDR.size + n].rstrip(b"\0").decode(errors="replace")
            i += _HDR.size + n
            if mask & IN_IGNORED:
                self.paths.pop(wd, None)
                continue
            out.append((self.paths.get(wd), mask, name))
        return out

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
