"""The timer wheel (native/core/timer.c) and the connection slab it links
(native/core/conn.c), driven the way the worker loop drives them: set the
time, then call wheel_expired() until it says NULL, handling each
connection it hands back before asking for the next."""
import random

import pytest

T0 = 1_000_000          # the wheel starts at this time (ms)


@pytest.fixture
def wheel(worker):
    return worker(nconns=512, now_ms=T0)


def expire(lib, h, now, handler=None):
    """One loop turn at `now`: every connection wheel_expired() hands back,
    in order; handler(id) runs before the next is asked for."""
    lib.hx_set_now(h, now)
    out = []
    while True:
        cid = lib.hx_expired(h)
        if cid < 0:
            return out
        out.append(cid)
        assert len(out) < 10_000, "wheel_expired does not end"
        if handler:
            handler(cid)


def run(lib, h, start, end, step, handler=None):
    """Loop turns every `step` ms from start to end: {id: [times fired]}."""
    fired = {}
    now = start
    while now <= end:
        for cid in expire(lib, h, now, handler and (lambda c, now=now: handler(c, now))):
            fired.setdefault(cid, []).append(now)
        now += step
    return fired


def test_slab_hands_out_lowest_index_first_and_runs_out(lib, worker, alloc):
    h = worker(nconns=4)
    assert [lib.hx_conn_alloc(h) for _ in range(5)] == [0, 1, 2, 3, -1]
    assert lib.hx_conns_free(h) == 0


@pytest.mark.parametrize("step", [1, 7, 100, 250])
def test_each_deadline_fires_once_not_early_at_most_a_tick_late(lib, wheel, step, alloc):
    h = wheel
    rng = random.Random(step)
    ids = alloc(h, 300)
    want = {}
    for cid in ids:
        # From 1 ms to three laps of the wheel away.
        e = T0 + rng.choice([rng.randint(1, 3000),
                             rng.randint(1, 3 * lib.WHEEL_SLOTS * lib.TICK_MS)])
        lib.hx_timer_set(h, cid, e)
        want[cid] = e
    assert all(lib.hx_in_wheel(h, c) for c in ids)
    end = max(want.values()) + 2 * lib.TICK_MS + step
    fired = run(lib, h, T0, end, step)
    assert sorted(fired) == sorted(ids)
    for cid, times in fired.items():
        assert len(times) == 1, f"conn {cid} (deadline {want[cid]}) fired at {times}"
        late = times[0] - want[cid]
        assert late >= 0, f"conn {cid} fired {-late} ms early"
        # The first loop turn at or after the deadline, give or take a tick.
        assert late < lib.TICK_MS + step, f"conn {cid} fired {late} ms late"
        assert not lib.hx_in_wheel(h, cid)


def test_deadline_on_a_tick_boundary_fires_at_it_not_before(lib, wheel, alloc):
    h = wheel
    (a,) = alloc(h, 1)
    e = T0 + 5 * lib.TICK_MS
    lib.hx_timer_set(h, a, e)
    assert expire(lib, h, e - 1) == []
    assert expire(lib, h, e) == [a]
    assert expire(lib, h, e + 10 * lib.TICK_MS) == []


def test_deadline_in_the_middle_of_a_tick_waits_for_its_millisecond(lib, wheel, alloc):
    h = wheel
    (a,) = alloc(h, 1)
    e = T0 + 3 * lib.TICK_MS + 37
    lib.hx_timer_set(h, a, e)
    assert expire(lib, h, e - 20) == []       # its tick has come, the deadline has not
    assert expire(lib, h, e - 1) == []
    # Parked for the next tick: at most one tick after its deadline.
    fired = run(lib, h, e, e + lib.TICK_MS, 1)
    assert list(fired) == [a] and e <= fired[a][0] <= e + lib.TICK_MS


def test_deadline_already_passed_fires_at_the_next_tick(lib, wheel, alloc):
    h = wheel
    (a,) = alloc(h, 1)
    expire(lib, h, T0 + 250)
    lib.hx_timer_set(h, a, T0 + 100)          # in a tick already run
    assert expire(lib, h, T0 + 250) == []
    assert expire(lib, h, T0 + 300) == [a]


@pytest.mark.parametrize("how", ["timer_set", "store"])
def test_deadline_moved_later_fires_only_at_the_new_one(lib, wheel, how, alloc):
    h = wheel
    a, b = alloc(h, 2)
    lib.hx_timer_set(h, a, T0 + 500)
    lib.hx_timer_set(h, b, T0 + 500)
    # timer_set only stores a later deadline; txn_touch stores it directly.
    if how == "timer_set":
        lib.hx_timer_set(h, a, T0 + 4_321)
    else:
        lib.hx_store_expires(h, a, T0 + 4_321)
    fired = run(lib, h, T0, T0 + 10_000, 10)
    assert fired[b] == [T0 + 500]
    assert len(fired[a]) == 1 and T0 + 4_321 <= fired[a][0] < T0 + 4_321 + lib.TICK_MS + 10


def test_deadline_moved_later_many_times_fires_once(lib, wheel, alloc):
    h = wheel
    (a,) = alloc(h, 1)
    lib.hx_timer_set(h, a, T0 + 200)
    now = T0
    # Activity every 50 ms for 5 s pushes the deadline on each time.
    while now < T0 + 5_000:
        assert expire(lib, h, now) == []
        lib.hx_timer_set(h, a, now + 200)
        now += 50
    last = now - 50 + 200
    fired = run(lib, h, now, now + 1_000, 10)
    assert list(fired) == [a] and len(fired[a]) == 1
    assert last <= fired[a][0] < last + lib.TICK_MS + 10


def test_deadline_moved_earlier_fires_at_the_new_one_and_not_again(lib, wheel, alloc):
    h = wheel
    (a,) = alloc(h, 1)
    lib.hx_timer_set(h, a, T0 + 60_000)
    lib.hx_timer_set(h, a, T0 + 1_000)
    fired = run(lib, h, T0, T0 + 70_000, 100)
    assert fired == {a: [T0 + 1_000]}


def test_deadline_moved_later_then_earlier_again(lib, wheel, alloc):
    h = wheel
    (a,) = alloc(h, 1)
    lib.hx_timer_set(h, a, T0 + 1_000)
    lib.hx_timer_set(h, a, T0 + 9_000)        # stored only
    lib.hx_timer_set(h, a, T0 + 3_000)        # earlier than the stored one: relinked
    fired = run(lib, h, T0, T0 + 12_000, 100)
    assert fired == {a: [T0 + 3_000]}


@pytest.mark.parametrize("how", ["cancel", "set0"])
def test_cancelled_deadline_never_fires(lib, wheel, how, alloc):
    h = wheel
    a, b, c = alloc(h, 3)
    for cid in (a, b, c):
        lib.hx_timer_set(h, cid, T0 + 700)
    lib.hx_timer_set(h, c, T0 + 5_000)        # moved later, then cancelled
    for cid in (a, c):
        if how == "cancel":
            lib.hx_timer_cancel(h, cid)
        else:
            lib.hx_timer_set(h, cid, 0)
        assert not lib.hx_in_wheel(h, cid) and lib.hx_expires(h, cid) == 0
    assert run(lib, h, T0, T0 + 10_000, 50) == {b: [T0 + 700]}


def test_cancel_of_a_connection_not_in_the_wheel_is_harmless(lib, wheel, alloc):
    h = wheel
    a, b = alloc(h, 2)
    lib.hx_timer_cancel(h, a)
    lib.hx_timer_set(h, b, T0 + 300)
    lib.hx_timer_cancel(h, a)
    assert run(lib, h, T0, T0 + 1_000, 100) == {b: [T0 + 300]}


@pytest.mark.parametrize("laps", [1, 2, 3.5])
def test_deadline_laps_away_does_not_fire_when_its_slot_comes_round(lib, wheel, laps, alloc):
    h = wheel
    lap = lib.WHEEL_SLOTS * lib.TICK_MS
    near, far = alloc(h, 2)
    lib.hx_timer_set(h, near, T0 + 300)
    lib.hx_timer_set(h, far, T0 + 300 + int(laps * lap))   # the same slot (for whole laps)
    fired = run(lib, h, T0, T0 + 300 + int(laps * lap) + 1_000, 100)
    assert fired == {near: [T0 + 300], far: [T0 + 300 + int(laps * lap)]}


def test_deadline_moved_a_lap_later_while_its_slot_is_emptied(lib, wheel, alloc):
    """Two connections in one slot: the first's handler pushes the second's
    deadline a whole lap on (the same slot). It must park, not come back
    in this turn, and fire a lap later, once."""
    h = wheel
    lap = lib.WHEEL_SLOTS * lib.TICK_MS
    a, b = alloc(h, 2)
    e = T0 + 500
    lib.hx_timer_set(h, a, e)
    lib.hx_timer_set(h, b, e)
    first = []

    def handler(cid, now):
        if not first:
            first.append(cid)
            other = b if cid == a else a
            lib.hx_timer_set(h, other, now + lap)
    fired = run(lib, h, T0, e + lap + 500, 100, handler)
    other = b if first[0] == a else a
    assert fired == {first[0]: [e], other: [e + lap]}


def test_handlers_rearm_cancel_and_move_others_during_expiry(lib, wheel, alloc):
    """The loop's handler for one expired connection touches other
    connections' deadlines (a session's peer) and its own, while the wheel
    is between two of the connections it hands back."""
    h = wheel
    a, b, c, d, e = alloc(h, 5)
    t = T0 + 1_000
    for cid in (a, b, c):
        lib.hx_timer_set(h, cid, t)           # one slot
    lib.hx_timer_set(h, d, T0 + 5_000)
    lib.hx_timer_set(h, e, T0 + 8_000)
    log = []

    def handler(cid, now):
        log.append((cid, now))
        if len(log) == 1:
            # The first of a, b, c: cancel one of the others, pull d in to
            # now (already due), push e later, re-arm itself 2 s on.
            rest = [x for x in (a, b, c) if x != cid]
            lib.hx_timer_cancel(h, rest[0])
            lib.hx_timer_set(h, d, now)
            lib.hx_timer_set(h, e, now + 9_000)
            lib.hx_timer_set(h, cid, now + 2_000)
            handler.first, handler.cancelled, handler.kept = cid, rest[0], rest[1]
    fired = run(lib, h, T0, T0 + 20_000, 100, handler)
    assert fired == {
        handler.first: [t, t + 2_000],      # fired, re-armed, fired again
        handler.kept: [t],                  # the other one in its slot still fires
        d: [t + lib.TICK_MS],               # due at once: the next tick
        e: [t + 9_000],
    }
    assert handler.cancelled not in fired


def test_handler_rearming_itself_as_due_is_not_handed_back_in_the_same_turn(lib, wheel, alloc):
    h = wheel
    (a,) = alloc(h, 1)
    lib.hx_timer_set(h, a, T0 + 200)
    calls = []

    def handler(cid):
        calls.append(cid)
        lib.hx_timer_set(h, cid, T0 + 200)    # still due: a loop would spin
    assert expire(lib, h, T0 + 200, handler) == [a]
    assert expire(lib, h, T0 + 250, handler) == []
    assert expire(lib, h, T0 + 300, handler) == [a]


def test_many_in_one_slot_with_mixed_deadlines(lib, wheel, alloc):
    """One slot holds deadlines of this tick and of later laps, some of them
    already past their tick's start: each leaves at its own time."""
    h = wheel
    lap = lib.WHEEL_SLOTS * lib.TICK_MS
    ids = alloc(h, 40)
    base = T0 + 2_000
    want = {cid: base + (i % 4) * lap + (i * 2) % lib.TICK_MS for i, cid in enumerate(ids)}
    for cid, e in want.items():
        lib.hx_timer_set(h, cid, e)
    fired = run(lib, h, T0, base + 4 * lap, 20)
    assert sorted(fired) == sorted(ids)
    for cid, times in fired.items():
        assert len(times) == 1 and 0 <= times[0] - want[cid] < lib.TICK_MS + 20


def test_time_jumping_many_laps_at_once_fires_everything_once(lib, wheel, alloc):
    h = wheel
    lap = lib.WHEEL_SLOTS * lib.TICK_MS
    ids = alloc(h, 200)
    rng = random.Random(5)
    want = {cid: T0 + rng.randint(1, 3 * lap) for cid in ids}
    for cid, e in want.items():
        lib.hx_timer_set(h, cid, e)
    later = alloc(h, 1)[0]
    lib.hx_timer_set(h, later, T0 + 10 * lap)
    got = expire(lib, h, T0 + 5 * lap)        # a stalled loop, or a suspended machine
    assert sorted(got) == sorted(ids)
    fired = run(lib, h, T0 + 5 * lap + 100, T0 + 10 * lap + 200, 500)
    assert fired == {later: [T0 + 10 * lap + 100]}


def test_hand_up_stack_gives_each_connection_once_with_all_its_reasons(lib, ffi, wheel, alloc):
    h = wheel
    a, b, free = alloc(h, 3)
    for cid in (a, b):
        lib.hx_conn_open(h, cid, -1)          # a kind: a free slot is skipped
    lib.hx_hand_up(h, free, lib.C_UP_FINISH)
    lib.hx_hand_up(h, a, lib.C_UP_FINISH)
    lib.hx_hand_up(h, b, lib.C_UP_ADOPT)
    lib.hx_hand_up(h, a, lib.C_UP_ADOPT)      # a second reason: not a second entry
    why = ffi.new("uint16_t *")
    got = []
    while (cid := lib.hx_next_handed_up(h, why)) >= 0:
        got.append((cid, why[0]))
    assert sorted(got) == [(a, lib.C_UP_FINISH | lib.C_UP_ADOPT), (b, lib.C_UP_ADOPT)]
