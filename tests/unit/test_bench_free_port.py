"""The bench's free_port never hands out one port twice in a run.

A contender picks all its ports before binding any, and the kernel can
give the same ephemeral port to two binds in a row once the first socket
is closed: a uproxy start then failed with "already bound by listener"."""
import socket

from bench import peers


class _RepeatingSocket:
    """A socket whose bind to port 0 gets the ports of a script, in order."""

    script = []

    def __init__(self, *a, **k):
        self.port = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def bind(self, addr):
        self.port = _RepeatingSocket.script.pop(0)

    def getsockname(self):
        return ("127.0.0.1", self.port)


def test_a_port_the_kernel_repeats_is_skipped(monkeypatch):
    monkeypatch.setattr(peers, "_GIVEN_PORTS", set())
    monkeypatch.setattr(peers.socket, "socket", _RepeatingSocket)
    _RepeatingSocket.script = [40001, 40001, 40001, 40002]
    assert peers.free_port() == 40001
    assert peers.free_port() == 40002


def test_ports_are_free_and_distinct(monkeypatch):
    monkeypatch.setattr(peers, "_GIVEN_PORTS", set())
    ports = [peers.free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
