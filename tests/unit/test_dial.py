"""The one dialer (native/upstream/dial.c) on a real ring: the socket, the
server's accounting, the connect SQE with the cluster's timeout linked to
it, and what the kernel answers (connected, refused, timed out). Which
server comes next after a failure is balance_pick() with the failed one
avoided: test_balance.py::test_next_server_after_a_failed_connect."""
import errno
import socket
import struct

import pytest

from support import unanswering_port

NIL = 0xFFFFFFFF


def sockaddr(host, port):
    """struct sockaddr_in / sockaddr_in6, as src/uproxy/tables.py packs them."""
    if ":" not in host:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + \
            socket.inet_pton(socket.AF_INET, host) + b"\0" * 8
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!H", port) + \
        struct.pack("=I", 0) + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", 0)


@pytest.fixture
def d(lib, worker):
    """A worker with one cluster of 3 servers (stat slots 10, 11, 12)."""
    h = worker(nconns=16)
    assert lib.hx_cfg_new(h, 1, 3, 1, 0) == 0
    lib.hx_cfg_cluster(h, 0, 0, 3, lib.UP_BALANCE_ROUND_ROBIN, 0, 0)
    for s in range(3):
        lib.hx_cfg_server(h, s, 0, 1, 10 + s)
    return h


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def conn(ffi, lib, h, cid):
    out = ffi.new("struct hx_conn *")
    lib.hx_conn(h, cid, out)
    return out


def srv(ffi, lib, h, slot):
    out = ffi.new("struct hx_srv *")
    lib.hx_srv(h, slot, out)
    return (out.active, out.in_flight, out.connects)


def complete(ffi, lib, h, n):
    ud = ffi.new("uint64_t[]", n)
    res = ffi.new("int32_t[]", n)
    assert lib.hx_complete(h, n, ud, res) == 0
    return {ud[i] >> 56: res[i] for i in range(n)}


def sqe_ops(ffi, lib, h):
    f = [ffi.new(t) for t in ("uint32_t *", "uint64_t *", "uint64_t *", "uint32_t *",
                              "int32_t *", "uint64_t *", "uint16_t *")]
    out = []
    for i in range(lib.hx_sq_ready(h)):
        lib.hx_sqe(h, i, *f)
        out.append((f[0][0], f[1][0], f[4][0], lib.hx_sqe_flags(h, i)))
    return out


def test_dial_connects_and_accounts(ffi, lib, d, listener):
    raw = sockaddr(*listener.getsockname())
    lib.hx_cfg_server_addr(d, 1, raw, len(raw))
    u = lib.hx_conn_alloc(d)
    assert lib.hx_dial(d, u, 1, 0) == 0
    c = conn(ffi, lib, d, u)
    assert c.fd >= 0 and c.state == lib.CS_CONNECTING
    assert (c.server, c.slot, c.attempts) == (1, 11, 1)
    assert c.flags & lib.C_SERVER_REF and not c.flags & lib.C_COUNTED
    assert c.ops & (1 << lib.OP_CONNECT) and c.inflight == 1
    assert srv(ffi, lib, d, 11) == (1, 0, 1)
    assert srv(ffi, lib, d, 10) == (0, 0, 0)
    assert lib.hx_counter(d, lib.UP_C_UPSTREAM_CONNECTS) == 1
    assert lib.hx_counter(d, lib.UP_C_UPSTREAM_ACTIVE) == 1
    # One connect SQE, for this connection, on its socket; no timeout asked.
    [(opcode, ud, fd, flags)] = sqe_ops(ffi, lib, d)
    assert opcode == lib.IORING_OP_CONNECT and fd == c.fd
    assert (ud >> 56, ud & 0xFFFFFFFF) == (lib.OP_CONNECT, u)
    assert not flags & lib.IOSQE_IO_LINK
    assert complete(ffi, lib, d, 1) == {lib.OP_CONNECT: 0}
    peer, _ = listener.accept()
    peer.close()


def test_dial_ipv6(ffi, lib, d):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    s = socket.socket(socket.AF_INET6)
    try:
        s.bind(("::1", 0))
    except OSError:
        s.close()
        pytest.skip("no ::1")
    with s:
        s.listen(1)
        raw = sockaddr("::1", s.getsockname()[1])
        lib.hx_cfg_server_addr(d, 0, raw, len(raw))
        u = lib.hx_conn_alloc(d)
        assert lib.hx_dial(d, u, 0, 0) == 0
        assert complete(ffi, lib, d, 1) == {lib.OP_CONNECT: 0}


def test_dial_refused_comes_back_as_the_connect_result(ffi, lib, d):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    raw = sockaddr(*closed.getsockname())
    closed.close()                              # nobody listens there
    lib.hx_cfg_server_addr(d, 2, raw, len(raw))
    u = lib.hx_conn_alloc(d)
    assert lib.hx_dial(d, u, 2, 0) == 0
    assert complete(ffi, lib, d, 1) == {lib.OP_CONNECT: -errno.ECONNREFUSED}
    # The caller's part on failure: what u held goes back, once.
    lib.hx_dial_gone(d, u)
    lib.hx_dial_gone(d, u)
    assert srv(ffi, lib, d, 12) == (0, 0, 1)
    assert lib.hx_counter(d, lib.UP_C_UPSTREAM_ACTIVE) == 0
    assert not conn(ffi, lib, d, u).flags & (lib.C_SERVER_REF | lib.C_COUNTED)


def test_dial_links_the_clusters_connect_timeout(ffi, lib, d):
    lib.hx_cfg_connect_timeout(d, 0, 150)
    with unanswering_port() as port:
        raw = sockaddr("127.0.0.1", port)
        lib.hx_cfg_server_addr(d, 0, raw, len(raw))
        u = lib.hx_conn_alloc(d)
        assert lib.hx_dial(d, u, 0, 0) == 0
        ops = sqe_ops(ffi, lib, d)
        assert [(o[0], o[1] >> 56) for o in ops] == [
            (lib.IORING_OP_CONNECT, lib.OP_CONNECT),
            (lib.IORING_OP_LINK_TIMEOUT, lib.OP_LINK_TIMEOUT)]
        assert ops[0][3] & lib.IOSQE_IO_LINK
        assert conn(ffi, lib, d, u).inflight == 2
        got = complete(ffi, lib, d, 2)
    assert got[lib.OP_CONNECT] == -errno.ECANCELED
    assert got[lib.OP_LINK_TIMEOUT] == -errno.ETIME


def test_dial_busy_idle_and_gone_count_the_load_once(ffi, lib, d, listener):
    raw = sockaddr(*listener.getsockname())
    lib.hx_cfg_server_addr(d, 0, raw, len(raw))
    u = lib.hx_conn_alloc(d)
    assert lib.hx_dial(d, u, 0, 0) == 0
    lib.hx_dial_busy(d, u)
    lib.hx_dial_busy(d, u)
    assert srv(ffi, lib, d, 10) == (1, 1, 1)
    # The load least_conn weighs is this worker's in_flight on the server.
    lib.hx_cfg_cluster(d, 0, 0, 3, lib.UP_BALANCE_LEAST_CONN, 0, 0)
    assert 0 not in {lib.hx_pick(d, 0, NIL, 0) for _ in range(6)}
    lib.hx_dial_idle(d, u)
    lib.hx_dial_idle(d, u)
    assert srv(ffi, lib, d, 10) == (1, 0, 1)
    lib.hx_dial_busy(d, u)
    lib.hx_dial_gone(d, u)
    assert srv(ffi, lib, d, 10) == (0, 0, 1)
    assert lib.hx_counter(d, lib.UP_C_UPSTREAM_ACTIVE) == 0
    complete(ffi, lib, d, 1)


def test_dial_without_a_socket_fails_counted_and_holds_nothing(ffi, lib, d):
    raw = struct.pack("=H", 0xFFFF) + b"\0" * 14  # no such address family
    lib.hx_cfg_server_addr(d, 0, raw, len(raw))
    u = lib.hx_conn_alloc(d)
    r = lib.hx_dial(d, u, 0, 0)
    assert r < 0 and -r in (errno.EAFNOSUPPORT, errno.EINVAL)
    assert lib.hx_counter(d, lib.UP_C_ERR_CONNECT_OTHER) == 1
    assert srv(ffi, lib, d, 10) == (0, 0, 0)
    assert lib.hx_counter(d, lib.UP_C_UPSTREAM_CONNECTS) == 0
    assert lib.hx_sq_ready(d) == 0
    c = conn(ffi, lib, d, u)
    assert c.fd == -1 and not c.flags & lib.C_SERVER_REF
