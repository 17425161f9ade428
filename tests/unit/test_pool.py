"""The upstream connection pool (native/upstream/pool.c): get and put,
most recently used first, the per-server limit, removal from anywhere in
a list, one list per server slot, and the idle timeout it arms on the
timer wheel."""
import pytest

T0 = 2_000_000


@pytest.fixture
def w(worker):
    return worker(nconns=64, now_ms=T0)


def drain(lib, h, slot):
    out = []
    while (cid := lib.hx_pool_get(h, slot)) >= 0:
        out.append(cid)
        assert len(out) <= 64
    return out


def gauges(lib, h, slot):
    return (lib.hx_pool_count(h, slot), lib.hx_srv_idle(h, slot),
            lib.hx_counter(h, lib.UP_C_POOL_IDLE))


def test_get_on_an_empty_pool_is_nothing(lib, w):
    assert lib.hx_pool_get(w, 0) == -1
    assert lib.hx_pool_get(w, 1023) == -1


def test_get_returns_most_recently_put_first(lib, w, alloc):
    a, b, c = alloc(w, 3)
    for cid in (a, b, c):
        assert lib.hx_pool_put(w, cid, 5, 10, 0)
        assert lib.hx_pooled(w, cid)
    assert gauges(lib, w, 5) == (3, 3, 3)
    assert lib.hx_pool_get(w, 5) == c
    assert not lib.hx_pooled(w, c)
    assert gauges(lib, w, 5) == (2, 2, 2)
    assert lib.hx_pool_put(w, c, 5, 10, 0)    # back on top
    assert drain(lib, w, 5) == [c, b, a]
    assert gauges(lib, w, 5) == (0, 0, 0)


def test_put_beyond_max_idle_is_refused_and_changes_nothing(lib, w, alloc):
    ids = alloc(w, 4)
    for cid in ids[:3]:
        assert lib.hx_pool_put(w, cid, 7, 3, 0)
    assert not lib.hx_pool_put(w, ids[3], 7, 3, 0)
    assert not lib.hx_pooled(w, ids[3])
    assert gauges(lib, w, 7) == (3, 3, 3)
    assert lib.hx_pool_get(w, 7) == ids[2]     # the refused one never went in
    assert lib.hx_pool_put(w, ids[3], 7, 3, 0)  # room again
    assert drain(lib, w, 7) == [ids[3], ids[1], ids[0]]


def test_max_idle_zero_keeps_nothing(lib, w, alloc):
    (a,) = alloc(w, 1)
    assert not lib.hx_pool_put(w, a, 1, 0, 0)
    assert lib.hx_pool_get(w, 1) == -1


def test_the_limit_is_per_slot(lib, w, alloc):
    ids = alloc(w, 6)
    for cid in ids[:2]:
        assert lib.hx_pool_put(w, cid, 1, 2, 0)
    assert not lib.hx_pool_put(w, ids[2], 1, 2, 0)
    for cid in ids[2:4]:
        assert lib.hx_pool_put(w, cid, 2, 2, 0)  # another server: its own limit
    assert (lib.hx_pool_count(w, 1), lib.hx_pool_count(w, 2)) == (2, 2)
    assert lib.hx_counter(w, lib.UP_C_POOL_IDLE) == 4


def test_slots_are_separate(lib, w, alloc):
    ids = alloc(w, 9)
    slots = [3, 4, 1000]
    for i, cid in enumerate(ids):
        assert lib.hx_pool_put(w, cid, slots[i % 3], 8, 0)
    for k, slot in enumerate(slots):
        mine = [cid for i, cid in enumerate(ids) if i % 3 == k]
        assert lib.hx_pool_count(w, slot) == 3 and lib.hx_srv_idle(w, slot) == 3
        assert drain(lib, w, slot) == mine[::-1]
        assert lib.hx_pool_get(w, slot) == -1
    assert lib.hx_counter(w, lib.UP_C_POOL_IDLE) == 0


@pytest.mark.parametrize("which", [0, 1, 2])
def test_remove_from_top_middle_or_bottom(lib, w, which, alloc):
    ids = alloc(w, 3)                     # list order after puts: ids[2], ids[1], ids[0]
    for cid in ids:
        assert lib.hx_pool_put(w, cid, 9, 8, 0)
    gone = ids[which]
    lib.hx_pool_remove(w, gone)               # the upstream closed it while idle
    assert not lib.hx_pooled(w, gone)
    assert gauges(lib, w, 9) == (2, 2, 2)
    lib.hx_pool_remove(w, gone)               # twice: nothing more
    assert gauges(lib, w, 9) == (2, 2, 2)
    assert drain(lib, w, 9) == [cid for cid in ids[::-1] if cid != gone]


def test_remove_of_a_connection_never_pooled_changes_nothing(lib, w, alloc):
    a, b = alloc(w, 2)
    assert lib.hx_pool_put(w, a, 2, 8, 0)
    lib.hx_pool_remove(w, b)
    assert gauges(lib, w, 2) == (1, 1, 1)
    assert drain(lib, w, 2) == [a]


def test_remove_everything_then_reuse(lib, w, alloc):
    ids = alloc(w, 4)
    for cid in ids:
        assert lib.hx_pool_put(w, cid, 0, 8, 0)
    for cid in (ids[1], ids[3], ids[0], ids[2]):
        lib.hx_pool_remove(w, cid)
    assert gauges(lib, w, 0) == (0, 0, 0)
    assert lib.hx_pool_get(w, 0) == -1
    for cid in ids[:2]:
        assert lib.hx_pool_put(w, cid, 0, 8, 0)
    assert drain(lib, w, 0) == [ids[1], ids[0]]


def test_a_stopping_worker_keeps_nothing(lib, w, alloc):
    (a,) = alloc(w, 1)
    lib.hx_set_stopping(w, 1)
    assert not lib.hx_pool_put(w, a, 0, 8, 0)
    assert lib.hx_pool_count(w, 0) == 0


def test_idle_timeout_is_armed_on_put_and_fires_on_the_wheel(lib, w, alloc):
    a, b = alloc(w, 2)
    assert lib.hx_pool_put(w, a, 1, 8, 5_000)
    assert lib.hx_expires(w, a) == T0 + 5_000 and lib.hx_in_wheel(w, a)
    lib.hx_set_now(w, T0 + 1_000)
    assert lib.hx_pool_put(w, b, 1, 8, 5_000)
    assert lib.hx_expires(w, b) == T0 + 6_000
    lib.hx_set_now(w, T0 + 4_999)
    assert lib.hx_expired(w) == -1
    lib.hx_set_now(w, T0 + 5_000)
    assert lib.hx_expired(w) == a              # the coldest goes first
    assert lib.hx_expired(w) == -1
    lib.hx_pool_remove(w, a)                  # what its expiry handler does
    assert drain(lib, w, 1) == [b]


def test_get_and_remove_cancel_the_idle_timeout(lib, w, alloc):
    a, b = alloc(w, 2)
    assert lib.hx_pool_put(w, a, 1, 8, 3_000)
    assert lib.hx_pool_put(w, b, 1, 8, 3_000)
    assert lib.hx_pool_get(w, 1) == b
    lib.hx_pool_remove(w, a)
    for cid in (a, b):
        assert not lib.hx_in_wheel(w, cid) and lib.hx_expires(w, cid) == 0
    lib.hx_set_now(w, T0 + 60_000)
    assert lib.hx_expired(w) == -1


def test_no_idle_timeout_arms_nothing(lib, w, alloc):
    (a,) = alloc(w, 1)
    assert lib.hx_pool_put(w, a, 1, 8, 0)
    assert not lib.hx_in_wheel(w, a) and lib.hx_expires(w, a) == 0
