"""The end of a connection's life (native/core/conn.c) on a real ring:
closing cancels what is outstanding, the protocol is handed the connection
only when nothing refers to it any more, and its slot goes back to the slab
only when its close has completed; the starved list; finishing a pair."""
import errno
import socket
import struct

import pytest

from support import unanswering_port

NIL = 0xFFFFFFFF


@pytest.fixture
def h(lib, worker):
    return worker(nconns=8, buf_size=1024, buf_count=128, features=lib.UP_F_BUF_RING)


def info(ffi, lib, h, cid):
    out = ffi.new("struct hx_conn *")
    lib.hx_conn(h, cid, out)
    return out


def run(ffi, lib, h, n):
    ops = ffi.new("uint32_t[]", n)
    res = ffi.new("int32_t[]", n)
    assert lib.hx_run(h, n, ops, res) == 0
    return sorted((ops[i], res[i]) for i in range(n))


def handed_up(ffi, lib, h):
    why = ffi.new("uint16_t *")
    out = []
    while (cid := lib.hx_next_handed_up(h, why)) >= 0:
        out.append((cid, why[0]))
    return out


def opcodes(ffi, lib, h):
    f = [ffi.new(t) for t in ("uint32_t *", "uint64_t *", "uint64_t *", "uint32_t *",
                              "int32_t *", "uint64_t *", "uint16_t *")]
    out = []
    for i in range(lib.hx_sq_ready(h)):
        lib.hx_sqe(h, i, *f)
        out.append(f[0][0])
    return out


def test_closing_with_an_op_outstanding_waits_for_it(ffi, lib, h):
    assert lib.hx_cfg_new(h, 1, 1, 1, 0) == 0
    lib.hx_cfg_cluster(h, 0, 0, 1, lib.UP_BALANCE_ROUND_ROBIN, 0, 0)
    free0 = lib.hx_conns_free(h)
    with unanswering_port() as port:
        raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + \
            socket.inet_aton("127.0.0.1") + b"\0" * 8
        lib.hx_cfg_server_addr(h, 0, raw, len(raw))
        u = lib.hx_conn_alloc(h)
        lib.hx_set_kind(h, u, lib.CK_L4_UPSTREAM)
        assert lib.hx_dial(h, u, 0, 0) == 0          # a connect that will not finish
        lib.hx_timer_set(h, u, 2_000_000)
        assert run(ffi, lib, h, 0) == []              # submitted: now in the kernel
        lib.hx_conn_close(h, u, 0)
        c = info(ffi, lib, h, u)
        assert c.state == lib.CS_CLOSING
        assert not lib.hx_in_wheel(h, u) and lib.hx_expires(h, u) == 0
        assert set(opcodes(ffi, lib, h)) == {lib.IORING_OP_ASYNC_CANCEL}
        assert c.inflight == 1 + lib.hx_sq_ready(h)
        assert handed_up(ffi, lib, h) == []           # the connect still refers to it
        lib.hx_conn_close(h, u, 0)                    # a second close: nothing more
        assert info(ffi, lib, h, u).inflight == c.inflight
        got = run(ffi, lib, h, c.inflight)
    assert (lib.OP_CONNECT, -errno.ECANCELED) in got
    assert info(ffi, lib, h, u).inflight == 0
    # Nothing outstanding: handed to its protocol to finish, once.
    assert handed_up(ffi, lib, h) == [(u, lib.C_UP_FINISH)]
    assert handed_up(ffi, lib, h) == []
    # The protocol's finish closes the socket; the slot is free only when
    # the close has completed.
    lib.hx_dial_gone(h, u)
    lib.hx_conn_submit_close(h, u)
    c = info(ffi, lib, h, u)
    assert c.state == lib.CS_CLOSED and c.fd == -1 and opcodes(ffi, lib, h) == [lib.IORING_OP_CLOSE]
    assert lib.hx_conns_free(h) == free0 - 1
    assert run(ffi, lib, h, 1) == [(lib.OP_CLOSE, 0)]
    assert lib.hx_conns_free(h) == free0
    assert info(ffi, lib, h, u).ops == 0


def test_closing_a_connection_with_nothing_outstanding_hands_it_up_at_once(ffi, lib, h):
    c = lib.hx_conn_alloc(h)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        b = socket.create_connection(srv.getsockname())
        a, _ = srv.accept()
    try:
        lib.hx_conn_open(h, c, a.detach())
        lib.hx_conn_close(h, c, 1)
        assert info(ffi, lib, h, c).state == lib.CS_CLOSING
        assert lib.hx_sq_ready(h) == 0
        assert handed_up(ffi, lib, h) == [(c, lib.C_UP_FINISH)]
        lib.hx_conn_submit_close(h, c)                # with an RST, as asked
        assert run(ffi, lib, h, 1) == [(lib.OP_CLOSE, 0)]
        b.settimeout(5)
        with pytest.raises(ConnectionResetError):
            b.recv(1)
    finally:
        b.close()


def test_a_slot_that_never_had_a_socket_is_freed_by_close(ffi, lib, h):
    free0 = lib.hx_conns_free(h)
    c = lib.hx_conn_alloc(h)                          # CK_FREE, no fd
    lib.hx_conn_close(h, c, 0)
    assert lib.hx_conns_free(h) == free0
    assert handed_up(ffi, lib, h) == []
    assert lib.hx_conn_alloc(h) == c                  # the same slot comes back first


def test_starved_connections_wait_on_a_list_and_the_window_grows(ffi, lib, h):
    a, b, c = (lib.hx_conn_alloc(h) for _ in range(3))
    s = ffi.new("struct hx_bufs *")
    lib.hx_bufs(h, s)
    window = s.window
    for cid in (a, b, c):
        lib.hx_conn_starve(h, cid)
    lib.hx_bufs(h, s)
    assert s.window == min(window * 8, s.count)
    assert lib.hx_counter(h, lib.UP_C_ERR_NOBUFS) == 3
    q = ffi.new("struct hx_queue *")
    lib.hx_queue(h, b, q)
    assert q.flags & lib.X_STARVED
    assert lib.hx_starved_head(h) == c
    assert [lib.hx_starved_next(h, c), lib.hx_starved_next(h, b)] == [b, a]


def test_a_pair_finishes_together_off_the_starved_list(ffi, lib, h):
    a, b, x = (lib.hx_conn_alloc(h) for _ in range(3))
    lib.hx_set_kind(h, a, lib.CK_L4_CLIENT)
    lib.hx_set_kind(h, b, lib.CK_L4_UPSTREAM)
    lib.hx_set_peer(h, a, b)
    lib.hx_set_peer(h, b, a)
    for cid in (a, x, b):
        lib.hx_conn_starve(h, cid)
    side = ffi.new("uint32_t[2]")
    assert lib.hx_conn_pair_done(h, a, side) == 0      # the peer is still open
    lib.hx_conn_close(h, b, 0)
    assert lib.hx_conn_pair_done(h, a, side) == 1
    assert list(side) == [a, b]
    assert lib.hx_starved_head(h) == x and lib.hx_starved_next(h, x) == NIL
    q = ffi.new("struct hx_queue *")
    for cid in (a, b):
        lib.hx_queue(h, cid, q)
        assert not q.flags & lib.X_STARVED
    # No peer at all: done at once.
    assert lib.hx_conn_pair_done(h, x, side) == 1 and list(side) == [x, NIL]
    assert lib.hx_starved_head(h) == NIL
