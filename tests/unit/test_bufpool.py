"""The receive buffer pool (native/core/bufpool.c) on a real io_uring ring:
the buffer ring (5.19+) and the legacy provided buffers (5.15), the window
of warm buffers handed to the kernel, its growth when receives run short
and its decay, and the assembly buffers for heads."""

import pytest

T0 = 3_000_000


def state(ffi, lib, h):
    s = ffi.new("struct hx_bufs *")
    lib.hx_bufs(h, s)
    return s


def recv(ffi, lib, h, sock_in, sock_out, data):
    """One receive as the worker makes them: the kernel picks the buffer."""
    sock_out.send(data)
    bid = ffi.new("uint32_t *")
    res = ffi.new("int32_t *")
    assert lib.hx_recv_select(h, sock_in.fileno(), bid, res) == 0
    assert res[0] == len(data), f"recv: {res[0]}"
    assert bytes(ffi.buffer(lib.hx_buf_data(h, bid[0]), res[0])) == data
    lib.hx_buf_taken(h)                       # what the receive completion does
    return bid[0]


def sqes(ffi, lib, h):
    out = []
    f = [ffi.new(t) for t in ("uint32_t *", "uint64_t *", "uint64_t *", "uint32_t *",
                              "int32_t *", "uint64_t *", "uint16_t *")]
    for i in range(lib.hx_sq_ready(h)):
        assert lib.hx_sqe(h, i, *f) == 0
        out.append(dict(opcode=f[0][0], user_data=f[1][0], addr=f[2][0], len=f[3][0],
                        fd=f[4][0], off=f[5][0], group=f[6][0]))
    return out


def test_ring_mode_hands_the_kernel_a_window_of_the_lowest_ids(ffi, lib, worker):
    h = worker(buf_size=4096, buf_count=256, head_buffers=2, features=lib.UP_F_BUF_RING, now_ms=T0)
    s = state(ffi, lib, h)
    assert s.ring_mode and s.count == 256 and s.size == 4096
    assert (s.window, s.min_window, s.in_kernel, s.free) == (64, 64, 64, 256)
    assert s.nstack == 256 - 64
    assert lib.hx_stack_at(h, 0) == 64         # the next to go: the warmest left
    assert lib.hx_sq_ready(h) == 0             # a buffer ring needs no SQE


def test_kernel_takes_buffers_in_the_order_given_and_a_returned_one_goes_back(
        ffi, lib, worker, pair):
    h = worker(buf_size=4096, buf_count=256, features=lib.UP_F_BUF_RING, now_ms=T0)
    a, b = pair
    assert recv(ffi, lib, h, a, b, b"first") == 0
    assert recv(ffi, lib, h, a, b, b"second") == 1
    s = state(ffi, lib, h)
    assert (s.in_kernel, s.free) == (62, 254)
    assert lib.hx_counter(h, lib.UP_C_BUFFERS_IN_USE) == 2
    lib.hx_buf_put(h, 0)
    lib.hx_buf_put(h, 1)
    assert [lib.hx_stack_at(h, i) for i in range(3)] == [1, 0, 64]   # last returned on top
    assert lib.hx_counter(h, lib.UP_C_BUFFERS_IN_USE) == 0
    lib.hx_buf_flush(h)
    s = state(ffi, lib, h)
    assert (s.in_kernel, s.free, s.nstack) == (64, 256, 192)
    assert lib.hx_stack_at(h, 0) == 64
    # The kernel goes on through what it had before the returned two.
    assert recv(ffi, lib, h, a, b, b"third") == 2


def test_put_is_last_in_first_out(ffi, lib, worker):
    h = worker(buf_size=1024, buf_count=128, features=lib.UP_F_BUF_RING, now_ms=T0)
    x, y, z = (lib.hx_buf_pop(h) for _ in range(3))
    assert (x, y, z) == (64, 65, 66)
    for bid in (y, z, x):
        lib.hx_buf_put(h, bid)
    assert [lib.hx_stack_at(h, i) for i in range(3)] == [x, z, y]


def test_short_receives_grow_the_window_up_to_the_whole_pool(ffi, lib, worker):
    h = worker(buf_size=1024, buf_count=256, features=lib.UP_F_BUF_RING, now_ms=T0)
    lib.hx_buf_short(h)
    assert state(ffi, lib, h).window == 128
    lib.hx_buf_flush(h)
    s = state(ffi, lib, h)
    assert (s.in_kernel, s.nstack) == (128, 128)
    lib.hx_buf_short(h)
    lib.hx_buf_short(h)
    assert state(ffi, lib, h).window == 256
    lib.hx_buf_flush(h)
    s = state(ffi, lib, h)
    assert (s.in_kernel, s.nstack, s.free) == (256, 0, 256)


def test_a_worker_that_takes_buffers_keeps_a_sixteenth_from_the_kernel(ffi, lib, worker):
    """TLS takes its plaintext and record buffers off the stack itself: once
    it has, the kernel's window, grown as far as it goes, leaves a reserve
    there (without it a starved window took every buffer and TLS receives
    spun on "no buffer")."""
    h = worker(buf_size=1024, buf_count=256, features=lib.UP_F_BUF_RING, now_ms=T0)
    bid = lib.hx_buf_take(h)
    assert bid != lib.NIL
    for _ in range(3):
        lib.hx_buf_short(h)
    lib.hx_buf_flush(h)
    s = state(ffi, lib, h)
    assert (s.in_kernel, s.nstack, s.free) == (255 - 16, 16, 255)
    assert lib.hx_buf_take(h) != lib.NIL


def test_the_window_decays_by_an_eighth_a_second_down_to_its_minimum(ffi, lib, worker):
    h = worker(buf_size=1024, buf_count=512, features=lib.UP_F_BUF_RING, now_ms=T0)
    for _ in range(3):
        lib.hx_buf_short(h)
    assert state(ffi, lib, h).window == 512
    lib.hx_set_now(h, T0 + 999)
    lib.hx_buf_flush(h)
    assert state(ffi, lib, h).window == 512    # not a second yet
    lib.hx_set_now(h, T0 + 1_000)
    lib.hx_buf_flush(h)
    assert state(ffi, lib, h).window == 448
    now, seen = T0 + 1_000, []
    for _ in range(30):
        now += 1_000
        lib.hx_set_now(h, now)
        lib.hx_buf_flush(h)
        seen.append(state(ffi, lib, h).window)
    assert seen[0] == 392 and seen[-1] == 64
    assert all(a >= b for a, b in zip(seen, seen[1:])) and min(seen) == 64


def test_legacy_mode_provides_runs_of_consecutive_ids_with_sqes(ffi, lib, worker, pair):
    h = worker(buf_size=2048, buf_count=128, features=0, now_ms=T0)
    s = state(ffi, lib, h)
    assert not s.ring_mode and s.in_kernel == 64
    got = sqes(ffi, lib, h)
    assert len(got) == 1                       # ids 0..63: one run
    q = got[0]
    assert q["opcode"] == lib.IORING_OP_PROVIDE_BUFFERS
    assert q["user_data"] >> 56 == lib.OP_PROVIDE
    assert (q["fd"], q["off"], q["len"], q["group"]) == (64, 0, 2048, lib.BUF_GROUP)
    assert q["addr"] == int(ffi.cast("uintptr_t", lib.hx_buf_data(h, 0)))
    assert lib.hx_submit(h) == 1               # the kernel accepts them
    a, b = pair
    taken = [recv(ffi, lib, h, a, b, b"x%d" % i) for i in range(4)]
    assert sorted(taken) == taken and taken[-1] - taken[0] == 3   # consecutive ids
    t0 = taken[0]
    # Back in an order that leaves t0+1, t0+2, t0, t0+3 from the top:
    # runs [t0+1, t0+2], [t0], [t0+3].
    for bid in (t0 + 3, t0, t0 + 2, t0 + 1):
        lib.hx_buf_put(h, bid)
    lib.hx_buf_flush(h)
    runs = [(q["off"], q["fd"]) for q in sqes(ffi, lib, h)]
    assert runs == [(t0 + 1, 2), (t0, 1), (t0 + 3, 1)]
    assert state(ffi, lib, h).in_kernel == 64
    assert lib.hx_submit(h) == 3
    # They are the kernel's again: a receive still finds a buffer.
    assert 0 <= recv(ffi, lib, h, a, b, b"again") < 128


def test_assembly_buffers_are_their_own_ids_above_the_pool(ffi, lib, worker):
    h = worker(buf_size=1024, buf_count=64, head_buffers=2, features=lib.UP_F_BUF_RING)
    first, second = lib.hx_hbuf_get(h), lib.hx_hbuf_get(h)
    assert (first, second) == (64, 65)
    assert lib.hx_hbuf_get(h) == lib.NIL
    assert lib.hx_buf_cap(h, first) == lib.HBUF_SIZE and lib.hx_buf_cap(h, 3) == 1024
    addr = lambda bid: int(ffi.cast("uintptr_t", lib.hx_buf_data(h, bid)))  # noqa: E731
    assert addr(1) - addr(0) == 1024
    assert addr(second) - addr(first) == lib.HBUF_SIZE
    assert not (addr(0) <= addr(first) < addr(63) + 1024)
    ffi.memmove(lib.hx_buf_data(h, first) + lib.HBUF_SIZE - 1, b"z", 1)   # the whole of it is ours
    s = state(ffi, lib, h)
    lib.hx_buf_put(h, second)
    # Not a provided buffer: the pool's count is untouched.
    assert state(ffi, lib, h).free == s.free
    assert lib.hx_hbuf_get(h) == second
