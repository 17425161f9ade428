"""Listening sockets: one SO_REUSEPORT socket per listener per worker.

They belong to the control plane: it binds them (before any privilege
drop), hands their fds to the workers through the configuration table,
and keeps them open across reloads for as long as some table names them,
so a reload never closes a port that stays in the configuration.
"""
from __future__ import annotations

import errno
import itertools
import socket

_ids = itertools.count(1)


class BindError(Exception):
    pass


class ListenerSockets:
    def __init__(self, host: str, port: int, backlog: int, nworkers: int):
        self.id = next(_ids)
        self.key = (host, port)
        self.socks = []
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            for _ in range(nworkers):
                s = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                self.socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                # Accepted sockets inherit this: no Nagle delay on replies.
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((host, port))
                s.listen(backlog)
                port = s.getsockname()[1]    # port 0: the rest join the first's
        except OSError as e:
            self.close()
            where = f"{host}:{port}" if fam == socket.AF_INET else f"[{host}]:{port}"
            if e.errno == errno.EADDRINUSE:
                msg = (f"cannot listen on {where}: the address is in use by another process "
                       f"(find it with: ss -ltnp 'sport = :{port}')")
            elif e.errno == errno.EACCES:
                msg = (f"cannot listen on {where}: ports below 1024 need root or "
                       f"CAP_NET_BIND_SERVICE")
            elif e.errno == errno.EADDRNOTAVAIL:
                msg = f"cannot listen on {where}: no local interface has that address"
            else:
                msg = f"cannot listen on {where}: {e.strerror}"
            raise BindError(msg) from None

    @property
    def port(self) -> int:
        return self.socks[0].getsockname()[1]

    def fds(self) -> list:
        return [s.fileno() for s in self.socks]

    def close(self):
        for s in self.socks:
            s.close()
        self.socks = []
