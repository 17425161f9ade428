"""A connection's queue of received bytes (native/http/h1_queue.c): pushing
and releasing provided buffers, head assembly into one assembly buffer
(q_assemble) when a head spans buffers, its limit, and the end of
backpressure re-arming the receive."""
import os

import pytest

SIZE = 64               # small buffers: a head spans several


class Q:
    """One open connection with its queue, on a worker with SIZE-byte buffers."""

    def __init__(self, ffi, lib, h, fd=-1):
        self.ffi, self.lib, self.h = ffi, lib, h
        self.c = lib.hx_conn_alloc(h)
        assert self.c >= 0
        lib.hx_conn_open(h, self.c, fd)
        s = ffi.new("struct hx_bufs *")
        lib.hx_bufs(h, s)
        self.count = s.count

    def bufs(self):
        s = self.ffi.new("struct hx_bufs *")
        self.lib.hx_bufs(self.h, s)
        return s

    def push(self, data, size=SIZE):
        """data into as many provided buffers as it takes: their ids."""
        bids = []
        for i in range(0, len(data), size):
            bid = self.lib.hx_buf_pop(self.h)
            assert bid != self.lib.NIL
            chunk = data[i:i + size]
            self.ffi.memmove(self.lib.hx_buf_data(self.h, bid), chunk, len(chunk))
            self.lib.hx_q_push(self.h, self.c, bid, len(chunk))
            bids.append(bid)
        return bids

    def q(self):
        out = self.ffi.new("struct hx_queue *")
        self.lib.hx_queue(self.h, self.c, out)
        return out

    def chain(self):
        """[(bid, bytes from the cursor)] from the front to the end."""
        lib, q, out = self.lib, self.q(), []
        bid, off = q.head, q.off
        while bid != lib.NIL:
            n = lib.hx_buf_len(self.h, bid)
            out.append((bid, bytes(self.ffi.buffer(lib.hx_buf_data(self.h, bid), n))[off:]))
            assert len(out) < 10_000
            if bid == q.tail:
                break
            bid, off = lib.hx_buf_next(self.h, bid), 0
        return out

    def data(self):
        return b"".join(d for _, d in self.chain())

    def contiguous(self):
        p = self.ffi.new("uint8_t **")
        n = self.lib.hx_q_contiguous(self.h, self.c, p)
        return bytes(self.ffi.buffer(p[0], n)) if n else b""

    def assemble(self, limit):
        return self.lib.hx_q_assemble(self.h, self.c, limit)

    def release_to(self, bid, off):
        self.lib.hx_q_release_to(self.h, self.c, bid, off)


@pytest.fixture
def mk(ffi, lib, worker):
    def make(buf_size=SIZE, buf_count=128, head_buffers=2, queue_limit=1 << 20, fd=-1):
        h = worker(buf_size=buf_size, buf_count=buf_count, head_buffers=head_buffers,
                   features=lib.UP_F_BUF_RING, queue_limit=queue_limit)
        return Q(ffi, lib, h, fd)
    return make


HEAD = (b"GET /some/rather/long/path?with=a&query=string HTTP/1.1\r\n"
        b"Host: example.com\r\nUser-Agent: unit-test/1.0\r\nAccept: */*\r\n"
        b"X-Filler: " + b"f" * 40 + b"\r\n\r\n")


def test_push_and_release(lib, mk):
    q = mk()
    before = q.bufs().free
    b0, b1, b2 = q.push(b"a" * 64 + b"b" * 64 + b"c" * 20)
    assert (q.q().head, q.q().tail, q.q().queued) == (b0, b2, 148)
    assert q.data() == b"a" * 64 + b"b" * 64 + b"c" * 20
    q.release_to(b1, 10)                      # b0 consumed, 10 bytes of b1
    assert (q.q().head, q.q().off, q.q().queued) == (b1, 10, 74)
    assert q.bufs().free == before - 2 and lib.hx_stack_at(q.h, 0) == b0
    assert q.contiguous() == b"b" * 54
    q.release_to(b1, 64)                      # b1 to its end goes too
    assert (q.q().head, q.q().off, q.q().queued) == (b2, 0, 20)
    q.release_to(lib.NIL, 0)                  # nothing
    assert q.q().queued == 20
    q.release_to(b2, 20)
    assert (q.q().head, q.q().tail, q.q().queued) == (lib.NIL, lib.NIL, 0)
    assert q.bufs().free == before
    assert lib.hx_counter(q.h, lib.UP_C_BUFFERS_IN_USE) == 0


def test_assemble_a_head_spanning_buffers(lib, mk):
    q = mk()
    data = b"tail-of-previous" + HEAD
    bids = q.push(data)
    assert len(bids) == 3
    q.release_to(bids[0], 16)                 # the previous request's bytes are gone
    s0 = q.bufs()
    assert q.assemble(8192) == 0
    qq = q.q()
    assert qq.head >= q.count and qq.head == qq.tail and qq.off == 0
    assert lib.hx_buf_len(q.h, qq.head) == len(HEAD)
    assert q.contiguous() == HEAD
    assert qq.queued == len(HEAD)             # the same bytes, moved
    s1 = q.bufs()
    assert s1.free == s0.free + 3 and s1.nhfree == s0.nhfree - 1   # 3 provided for 1 assembly
    assert lib.hx_counter(q.h, lib.UP_C_BUFFERS_IN_USE) == 0
    # A lone assembly buffer at the front is already assembled.
    assert q.assemble(8192) == 0
    assert (q.q().head, q.contiguous()) == (qq.head, HEAD)
    # Released, it goes back to the assembly buffers.
    q.release_to(qq.head, len(HEAD))
    assert q.q().head == lib.NIL and q.bufs().nhfree == s0.nhfree


def test_assemble_stops_at_the_limit_and_leaves_the_rest_queued(lib, mk):
    q = mk()
    body = b"B" * 100
    data = HEAD + body
    bids = q.push(data)
    limit = len(HEAD)                         # a head is never longer than the limit
    assert q.assemble(limit) == 0
    chain = q.chain()
    a = chain[0][0]
    assert a >= q.count and chain[0][1] == HEAD
    assert q.data() == data and q.q().queued == len(data)
    # The buffer the limit fell in keeps its rest, moved to its start.
    cut = len(HEAD) // SIZE
    assert chain[1] == (bids[cut], data[len(HEAD):(cut + 1) * SIZE])
    assert [b for b, _ in chain[1:]] == bids[cut:]
    assert q.q().tail == bids[-1]
    # Assembling again with room to spare grows the same assembly buffer.
    assert q.assemble(4096) == 0
    assert q.chain() == [(a, data)] and q.q().tail == a
    assert q.bufs().free == 128               # every provided buffer is back


def test_assemble_grows_as_more_of_the_head_arrives(lib, mk):
    q = mk()
    q.push(HEAD[:70])
    assert q.assemble(8192) == 0
    a = q.q().head
    q.release_to(a, 10)                       # consumed from the assembled front
    q.push(HEAD[70:])
    assert q.assemble(8192) == 0
    assert q.q().head == a and q.contiguous() == HEAD[10:]
    assert q.q().queued == len(HEAD) - 10


def test_assemble_never_gathers_more_than_an_assembly_buffer(lib, mk):
    q = mk(buf_size=4096, buf_count=128)
    data = os.urandom(9 * 4000)
    q.push(data, size=4000)
    assert q.assemble(1 << 20) == 0           # a limit beyond HBUF_SIZE
    chain = q.chain()
    assert len(chain[0][1]) == lib.HBUF_SIZE
    assert q.data() == data and q.q().queued == len(data)
    assert len(chain) == 2 and len(chain[1][1]) == len(data) - lib.HBUF_SIZE


def test_assemble_without_a_free_assembly_buffer_changes_nothing(lib, mk):
    q = mk(head_buffers=1)
    taken = lib.hx_hbuf_get(q.h)
    assert taken != lib.NIL
    q.push(HEAD)
    before = (q.chain(), q.q().queued, q.bufs().free)
    assert q.assemble(8192) == -1
    assert (q.chain(), q.q().queued, q.bufs().free) == before
    lib.hx_buf_put(q.h, taken)
    assert q.assemble(8192) == 0 and q.contiguous() == HEAD


def test_assemble_of_an_empty_queue_is_nothing_to_do(lib, mk):
    q = mk()
    assert q.assemble(8192) == 0
    assert q.q().head == lib.NIL and q.bufs().nhfree == 2


def test_release_all_gives_every_buffer_back(lib, mk):
    q = mk()
    q.push(HEAD + b"x" * 300)
    q.assemble(len(HEAD))
    q.lib.hx_q_release_all(q.h, q.c)
    s = q.bufs()
    assert (q.q().head, q.q().tail, q.q().queued) == (lib.NIL, lib.NIL, 0)
    assert s.free == 128 and s.nhfree == 2


def test_backpressure_ends_at_half_the_limit_and_rearms_the_receive(ffi, lib, mk, pair):
    q = mk(queue_limit=256, fd=pair[0].fileno())
    bids = q.push(b"p" * 320)                 # 5 buffers, over the limit
    lib.hx_set_xflags(q.h, q.c, lib.X_PAUSED)
    ready = lib.hx_sq_ready(q.h)
    q.release_to(bids[1], 0)                  # 256 left: still paused
    assert q.q().flags & lib.X_PAUSED and q.q().queued == 256
    assert not lib.hx_conn_ops(q.h, q.c) & (1 << lib.OP_RECV)
    q.release_to(bids[2], SIZE)               # 128 left: half the limit
    assert q.q().queued == 128 and not q.q().flags & lib.X_PAUSED
    assert lib.hx_conn_ops(q.h, q.c) & (1 << lib.OP_RECV)
    assert lib.hx_sq_ready(q.h) == ready + 1
    f = [ffi.new(t) for t in ("uint32_t *", "uint64_t *", "uint64_t *", "uint32_t *",
                              "int32_t *", "uint64_t *", "uint16_t *")]
    assert lib.hx_sqe(q.h, ready, *f) == 0
    assert f[0][0] == lib.IORING_OP_RECV and f[4][0] == pair[0].fileno()
    assert f[6][0] == lib.BUF_GROUP and f[1][0] >> 56 == lib.OP_RECV
