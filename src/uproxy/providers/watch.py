"""`uproxy run --watch` ([proxy] watch = true): reload when the
configuration file, or a file it names (certificates, keys, CA bundles),
changes.

inotify watches the *directories* of those files, not the files: an
editor or a deployment replaces a file by renaming a new one over it (and
Kubernetes swaps a `..data` symlink), which a watch on the old inode would
never see again. Any event in a watched directory starts a debounce
window; when the directory has been quiet for `debounce` (or `max_wait`
has passed since the first event: a file rewritten in a loop still gets
applied), the files' contents are hashed and the runtime is told only if
one of them really changed, so touching a neighbour costs a hash, not a
reload. At rest the thread sleeps in poll(2): no timer, no CPU.
"""
from __future__ import annotations

import hashlib
import logging
import os
import select
import threading
import time

from .inotify import Inotify

log = logging.getLogger("uproxy")


def files_of(cfg) -> list:
    """The configuration file and every file it names that a reload reads."""
    out = [cfg.path]
    for l in cfg.listeners:
        t = l.tls
        if t is None:
            continue
        for c in t.certificates:
            out += [c.cert, c.key]
        out += [t.client_ca, t.ticket_key_file]
    for c in cfg.clusters.values():
        t = c.tls
        if t is None:
            continue
        out.append(t.ca)
        if t.cert is not None:
            out += [t.cert.cert, t.cert.key]
    seen, files = set(), []
    for f in out:
        if f and f not in seen:
            seen.add(f)
            files.append(os.path.abspath(f))
    return files


def digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None            # gone for now: a rename is in progress, or a mistake


class FileWatcher:
    """Calls on_change(changed_paths) from its own thread after a debounced
    change of one of the files."""

    def __init__(self, files: list, on_change, debounce_ms: int = 200, max_wait_ms: int = 2000):
        self.on_change = on_change
        self.debounce = debounce_ms / 1000
        self.max_wait = max_wait_ms / 1000
        self.ino = Inotify()
        self.lock = threading.Lock()
        self.files: dict = {}        # path -> content digest last seen
        self.dirs: dict = {}         # directory -> wd
        self.changes = 0             # debounced changes that reached on_change
        self.last_change = None      # (time, [paths])
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.set_files(files)
        self.thread = threading.Thread(target=self._run, name="uproxy-watch", daemon=True)

    def set_files(self, files: list):
        """The files to watch now (after a reload that named new ones)."""
        files = [os.path.abspath(f) for f in files]
        # a symlinked file: watch where it points too (its target's directory
        # is where the rename happens)
        dirs = set()
        for f in files:
            dirs.add(os.path.dirname(f))
            real = os.path.realpath(f)
            if real != f:
                dirs.add(os.path.dirname(real))
        with self.lock:
            self.files = {f: self.files.get(f) or digest(f) for f in files}
            for d in list(self.dirs):
                if d not in dirs:
                    self.ino.remove(self.dirs.pop(d))
            for d in sorted(dirs - set(self.dirs)):
                try:
                    self.dirs[d] = self.ino.add(d)
                except OSError as e:
                    log.warning("watch: %s; changes there are not seen until the next "
                                "reload (check that the directory exists)", e.strerror)

    def start(self):
        self.thread.start()
        return self

    def status(self) -> dict:
        with self.lock:
            return {"files": sorted(self.files), "directories": sorted(self.dirs),
                    "changes": self.changes,
                    "last_change": None if self.last_change is None else
                    {"time_ms": int(self.last_change[0] * 1000), "files": self.last_change[1]}}

    def close(self):
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self.thread.is_alive():
            self.thread.join(2)
        self.ino.close()
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wait(self, timeout) -> bool:
        """Until an inotify event (True) or the timeout (False); raises
        StopIteration when closed."""
        r, _, _ = select.select([self.ino, self._stop_r], [], [], timeout)
        if self._stop_r in r:
            raise StopIteration
        if self.ino.fd in [getattr(x, "fd", x) for x in r]:
            self.ino.read()
            return True
        return False

    def _run(self):
        try:
            while True:
                self._wait(None)                 # at rest: blocked in select, no timer
                first = time.monotonic()
                # quiet for `debounce`, or `max_wait` since the first event
                while self._wait(min(self.debounce, max(0.0, first + self.max_wait - time.monotonic()))):
                    if time.monotonic() - first >= self.max_wait:
                        break
                changed = []
                with self.lock:
                    for f, old in self.files.items():
                        new = digest(f)
                        if new is not None and new != old:
                            self.files[f] = new
                            changed.append(f)
                    if changed:
                        self.changes += 1
                        self.last_change = (time.time(), changed)
                if changed:
                    try:
                        self.on_change(changed)
                    except Exception as e:      # the watcher must outlive a bad callback
                        log.error("watch: handling a change failed: %r", e)
        except StopIteration:
            return
