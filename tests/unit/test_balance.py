"""Choosing an upstream server (native/upstream/balance.c): each balancer's
distribution and weights, servers that are down (active health,
the control block's server_health) or ejected (passive health, balance_result), the
`avoid` argument the dialers use for the next server after a failed
connect, per-worker state, and consistent hashing's stability when a
server is added, removed or down."""
import random
from collections import Counter

import pytest

NIL = 0xFFFFFFFF
T0 = 5_000_000
RING_POINTS = 160       # src/uproxy/tables.py: points per unit of weight


def setup(lib, h, balance, weights, fail_threshold=0, eject_ms=0, nworkers=2, more=()):
    """One cluster (0) of len(weights) servers, then the clusters in `more`
    (each a list of weights, balanced the same way) after it."""
    clusters = [list(weights)] + [list(m) for m in more]
    nservers = sum(len(c) for c in clusters)
    assert lib.hx_cfg_new(h, len(clusters), nservers, nworkers, 0) == 0
    first = 0
    for ci, ws in enumerate(clusters):
        lib.hx_cfg_cluster(h, ci, first, len(ws), balance, fail_threshold, eject_ms)
        for j, wt in enumerate(ws):
            lib.hx_cfg_server(h, first + j, ci, wt, first + j)
        first += len(ws)


def picks(lib, h, n, cluster=0, avoid=NIL, key=0):
    return [lib.hx_pick(h, cluster, avoid, key) for _ in range(n)]


@pytest.fixture
def h(worker):
    return worker(nconns=8, now_ms=T0)


# ---- round robin -------------------------------------------------------

def test_round_robin_equal_weights_rotates(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1, 1, 1])
    got = picks(lib, h, 400)
    assert sorted(got[:4]) == [0, 1, 2, 3]
    assert all(got[i] == got[i + 4] for i in range(len(got) - 4))
    assert Counter(got) == {0: 100, 1: 100, 2: 100, 3: 100}


def smooth_wrr(weights, n):
    """The smooth weighted round robin balance.c documents (nginx's)."""
    cur = [0] * len(weights)
    out = []
    for _ in range(n):
        for i, w in enumerate(weights):
            cur[i] += w
        best = max(range(len(weights)), key=lambda i: (cur[i], -i))
        cur[best] -= sum(weights)
        out.append(best)
    return out


@pytest.mark.parametrize("weights", [[5, 1, 1], [3, 2], [1, 4, 2, 1]])
def test_round_robin_weights_are_exact_and_interleaved(lib, h, weights):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, weights)
    total = sum(weights)
    got = picks(lib, h, 20 * total)
    # Each full period of sum(weights) picks gives each server its weight.
    for p in range(20):
        assert Counter(got[p * total:(p + 1) * total]) == dict(enumerate(weights))
    assert got == smooth_wrr(weights, 20 * total)
    if weights == [5, 1, 1]:
        assert got[:7] == [0, 0, 1, 0, 2, 0, 0]   # interleaved, not 5 in a row


def test_round_robin_skips_avoided_down_and_ejected(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1, 1, 1], fail_threshold=1, eject_ms=1_000)
    assert Counter(picks(lib, h, 300, avoid=1)) == {0: 100, 2: 100, 3: 100}
    lib.hx_set_health(h, 2, 0)
    lib.hx_result(h, 3, 0)                     # one failure: ejected
    assert set(picks(lib, h, 50)) == {0, 1}
    assert set(picks(lib, h, 50, avoid=0)) == {1}
    lib.hx_set_health(h, 2, 1)                 # back up
    assert set(picks(lib, h, 50)) == {0, 1, 2}


def test_round_robin_with_every_server_down_picks_none(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1])
    lib.hx_set_health(h, 0, 0)
    assert picks(lib, h, 3, avoid=1) == [-1, -1, -1]
    lib.hx_set_health(h, 1, 0)
    assert picks(lib, h, 3) == [-1, -1, -1]


def test_clusters_pick_only_their_own_servers(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1, 1], more=[[1, 1], [2]])
    assert Counter(picks(lib, h, 90, cluster=0)) == {0: 30, 1: 30, 2: 30}
    assert Counter(picks(lib, h, 90, cluster=1)) == {3: 45, 4: 45}
    assert set(picks(lib, h, 10, cluster=2)) == {5}


def test_empty_cluster_picks_none(lib, h):
    assert lib.hx_cfg_new(h, 1, 0, 1, 0) == 0
    for balance in (lib.UP_BALANCE_ROUND_ROBIN, lib.UP_BALANCE_LEAST_CONN,
                    lib.UP_BALANCE_P2C, lib.UP_BALANCE_HASH):
        lib.hx_cfg_cluster(h, 0, 0, 0, balance, 0, 0)
        assert lib.hx_pick(h, 0, NIL, 123) == -1


def test_each_worker_keeps_its_own_cursor(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [2, 1], nworkers=2)
    seq = {0: [], 1: []}
    for i in range(30):
        wi = 0 if i % 3 else 1                # worker 0 picks twice as often
        lib.hx_set_worker_index(h, wi)
        seq[wi].append(lib.hx_pick(h, 0, NIL, 0))
    assert seq[0] == smooth_wrr([2, 1], len(seq[0]))
    assert seq[1] == smooth_wrr([2, 1], len(seq[1]))


# ---- least connections ------------------------------------------------

def test_least_conn_picks_the_least_loaded(lib, h):
    setup(lib, h, lib.UP_BALANCE_LEAST_CONN, [1, 1, 1, 1])
    for s, load in enumerate([5, 0, 3, 7]):
        lib.hx_set_in_flight(h, s, load)
    assert set(picks(lib, h, 20)) == {1}
    assert set(picks(lib, h, 20, avoid=1)) == {2}
    lib.hx_set_health(h, 2, 0)
    assert set(picks(lib, h, 20, avoid=1)) == {0}


def test_least_conn_weighs_load_per_unit_of_weight(lib, h):
    setup(lib, h, lib.UP_BALANCE_LEAST_CONN, [4, 1])
    lib.hx_set_in_flight(h, 0, 6)              # 1.5 per unit of weight
    lib.hx_set_in_flight(h, 1, 2)              # 2 per unit
    assert set(picks(lib, h, 10)) == {0}
    lib.hx_set_in_flight(h, 0, 9)              # 2.25 per unit
    assert set(picks(lib, h, 10)) == {1}


def test_least_conn_ties_go_round(lib, h):
    setup(lib, h, lib.UP_BALANCE_LEAST_CONN, [1, 1, 1])
    assert Counter(picks(lib, h, 300)) == {0: 100, 1: 100, 2: 100}


@pytest.mark.parametrize("weights", [[1, 1, 1], [3, 1], [1, 2, 5]])
def test_least_conn_spreads_load_by_weight(lib, h, weights):
    """Each pick adds one to its server's load, as a dialer does: the loads
    end proportional to the weights."""
    setup(lib, h, lib.UP_BALANCE_LEAST_CONN, weights)
    load = [0] * len(weights)
    n = 80 * sum(weights)
    for _ in range(n):
        s = lib.hx_pick(h, 0, NIL, 0)
        load[s] += 1
        lib.hx_set_in_flight(h, s, load[s])
    assert load == [80 * wt for wt in weights]


# ---- power of two choices ---------------------------------------------

def test_p2c_prefers_the_less_loaded_of_two(lib, h):
    setup(lib, h, lib.UP_BALANCE_P2C, [1, 1, 1, 1])
    lib.hx_set_rng(h, 0x1234567)
    for s, load in enumerate([0, 1, 2, 3]):
        lib.hx_set_in_flight(h, s, load)
    n = 6000
    got = Counter(picks(lib, h, n))
    share = [got[s] / n for s in range(4)]
    # A random pair of distinct servers, the less loaded wins: 3/6, 2/6,
    # 1/6 and (never) 0 of the 6 pairs.
    assert share[0] == pytest.approx(3 / 6, abs=0.05)
    assert share[1] == pytest.approx(2 / 6, abs=0.05)
    assert share[2] == pytest.approx(1 / 6, abs=0.05)
    assert share[3] < 0.02                    # only when four draws found no pair


def test_p2c_equal_loads_spread_evenly(lib, h):
    setup(lib, h, lib.UP_BALANCE_P2C, [1, 1, 1, 1, 1])
    lib.hx_set_rng(h, 99)
    got = Counter(picks(lib, h, 5000))
    assert set(got) == {0, 1, 2, 3, 4}
    assert all(abs(c / 5000 - 0.2) < 0.05 for c in got.values())


def test_p2c_never_picks_avoided_or_down_and_falls_back_to_the_one_left(lib, h):
    setup(lib, h, lib.UP_BALANCE_P2C, [1, 1, 1, 1], fail_threshold=1, eject_ms=10_000)
    lib.hx_set_rng(h, 7)
    lib.hx_set_health(h, 0, 0)
    lib.hx_result(h, 1, 0)                     # ejected
    assert set(picks(lib, h, 500, avoid=2)) == {3}   # random draws rarely find it alone
    lib.hx_set_health(h, 3, 0)
    assert set(picks(lib, h, 20, avoid=2)) == {-1}
    assert set(picks(lib, h, 20)) == {2}


# ---- passive health: ejection -----------------------------------------

def test_failures_eject_after_the_threshold_for_the_cool_down(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1, 1], fail_threshold=3, eject_ms=10_000)
    lib.hx_result(h, 1, 0)
    lib.hx_result(h, 1, 0)
    assert lib.hx_fails(h, 1) == 2 and lib.hx_ejected_until(h, 1) == 0
    lib.hx_result(h, 1, 1)                     # a success forgives
    assert lib.hx_fails(h, 1) == 0
    lib.hx_result(h, 1, 0)
    lib.hx_result(h, 1, 0)
    assert set(picks(lib, h, 9)) == {0, 1, 2}
    lib.hx_result(h, 1, 0)                     # the third in a row
    assert lib.hx_ejected_until(h, 1) == T0 + 10_000
    assert lib.hx_fails(h, 1) == 0
    assert lib.hx_counter(h, lib.UP_C_HEALTH_EJECTIONS) == 1
    assert set(picks(lib, h, 30)) == {0, 2}
    lib.hx_set_now(h, T0 + 9_999)
    assert set(picks(lib, h, 30)) == {0, 2}
    lib.hx_set_now(h, T0 + 10_000)             # the cool-down is over
    assert set(picks(lib, h, 30)) == {0, 1, 2}


def test_no_threshold_never_ejects(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1], fail_threshold=0, eject_ms=10_000)
    for _ in range(50):
        lib.hx_result(h, 0, 0)
    assert lib.hx_ejected_until(h, 0) == 0
    assert lib.hx_counter(h, lib.UP_C_HEALTH_EJECTIONS) == 0
    assert set(picks(lib, h, 10)) == {0, 1}


def test_ejection_is_per_worker(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1], fail_threshold=1, eject_ms=10_000, nworkers=2)
    lib.hx_set_worker_index(h, 1)
    lib.hx_result(h, 0, 0)
    assert set(picks(lib, h, 10)) == {1}
    lib.hx_set_worker_index(h, 0)              # worker 0 saw no failure
    assert set(picks(lib, h, 10)) == {0, 1}


# ---- across a reload: the worker's own blocks (upstream/wstate.h) -------
# hx_cfg_new builds a new table, as a reload does; the worker's balancing
# state is its own and outlives it, found again by each server's stat slot
# and each cluster's slot, stamped with the generation that gave the slot.

def reload(lib, h, balance, weights, **kw):
    """A new table with the same servers in the same slots (generation 1:
    the slots' owners unchanged)."""
    setup(lib, h, balance, weights, **kw)


def test_reload_keeps_smooth_wrr_exact(lib, h):
    weights = [5, 1, 1]
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, weights)
    got = picks(lib, h, 3)
    reload(lib, h, lib.UP_BALANCE_ROUND_ROBIN, weights)
    got += picks(lib, h, 4 + 7 * 10)
    # one sequence, as if no reload came between: not restarted at [0, 0, 1]
    assert got == smooth_wrr(weights, len(got))


def test_reload_keeps_an_ejected_server_ejected_until_its_time(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1, 1], fail_threshold=2, eject_ms=10_000)
    lib.hx_result(h, 1, 0)
    lib.hx_result(h, 1, 0)                     # ejected until T0 + 10 s
    lib.hx_result(h, 2, 0)                     # one failure on the count
    reload(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1, 1], fail_threshold=2, eject_ms=10_000)
    assert lib.hx_ejected_until(h, 1) == T0 + 10_000
    assert set(picks(lib, h, 30)) == {0, 2}
    assert lib.hx_fails(h, 2) == 1
    lib.hx_result(h, 2, 0)                     # the second in a row, across the reload
    assert set(picks(lib, h, 30)) == {0}
    lib.hx_set_now(h, T0 + 10_000)
    assert set(picks(lib, h, 30)) == {0, 1, 2}


def test_reload_follows_a_server_to_its_new_index_by_its_slot(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1, 1], fail_threshold=1, eject_ms=10_000)
    lib.hx_result(h, 2, 0)                     # slot 2 ejected
    # the new table: a server before it went away; slot 2 is now index 1
    assert lib.hx_cfg_new(h, 1, 2, 2, 0) == 0
    lib.hx_cfg_cluster(h, 0, 0, 2, lib.UP_BALANCE_ROUND_ROBIN, 1, 10_000)
    lib.hx_cfg_server(h, 0, 0, 1, 0)
    lib.hx_cfg_server(h, 1, 0, 1, 2)
    assert lib.hx_ejected_until(h, 1) == T0 + 10_000
    assert set(picks(lib, h, 10)) == {0}


def test_a_slot_given_to_another_server_starts_fresh(lib, h):
    setup(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1], fail_threshold=3, eject_ms=10_000)
    for _ in range(3):
        lib.hx_result(h, 1, 0)                 # slot 1 ejected
    lib.hx_result(h, 0, 0)
    # the new table gives slot 1 to a new server (generation 7): nothing of
    # the old one's ejection; slot 0's server is the same and keeps its count
    reload(lib, h, lib.UP_BALANCE_ROUND_ROBIN, [1, 1], fail_threshold=3, eject_ms=10_000)
    lib.hx_cfg_server_gen(h, 1, 7)
    assert lib.hx_ejected_until(h, 1) == 0 and lib.hx_fails(h, 1) == 0
    assert lib.hx_fails(h, 0) == 1
    assert set(picks(lib, h, 10)) == {0, 1}
    lib.hx_result(h, 1, 0)
    lib.hx_result(h, 1, 0)
    # work still holding the old table (generation 1) for slot 1: a spare
    # entry, which neither shows nor changes the new owner's state
    lib.hx_cfg_server_gen(h, 1, 1)
    assert lib.hx_fails(h, 1) == 0
    lib.hx_result(h, 1, 0)
    lib.hx_cfg_server_gen(h, 1, 7)
    assert lib.hx_fails(h, 1) == 2
    assert lib.hx_ejected_until(h, 1) == 0


def open_breaker(lib, h, ci=0):
    for _ in range(4):
        t = lib.hx_breaker_admit(h, ci)
        assert t == lib.BRK_COUNTED
        lib.hx_breaker_report(h, ci, t, 0)
    assert lib.hx_breaker_state(h, ci) == lib.UP_BRK_OPEN


def breaker_cluster(lib, h, nclusters=1):
    assert lib.hx_cfg_new(h, nclusters, nclusters, 2, 0) == 0
    for ci in range(nclusters):
        lib.hx_cfg_cluster(h, ci, ci, 1, lib.UP_BALANCE_ROUND_ROBIN, 0, 0)
        lib.hx_cfg_breaker(h, ci, 10_000, 500, 4, 5_000, 1)


def test_reload_keeps_an_open_breaker_open_until_its_time(lib, h):
    breaker_cluster(lib, h)
    open_breaker(lib, h)
    # the new table: another cluster first; ours is index 1, same slot (0)
    breaker_cluster(lib, h, 2)
    lib.hx_cfg_cluster_slot(h, 0, 1, 1)
    lib.hx_cfg_cluster_slot(h, 1, 0, 1)
    assert lib.hx_breaker_state(h, 1) == lib.UP_BRK_OPEN
    assert lib.hx_breaker_admit(h, 1) == lib.BRK_REFUSED
    assert lib.hx_breaker_admit(h, 0) == lib.BRK_COUNTED
    lib.hx_set_now(h, T0 + 5_000)              # its open time is over: a probe
    assert lib.hx_breaker_admit(h, 1) == lib.BRK_PROBE


def test_a_cluster_slot_given_to_another_name_starts_closed(lib, h):
    breaker_cluster(lib, h)
    open_breaker(lib, h)
    breaker_cluster(lib, h)
    lib.hx_cfg_cluster_slot(h, 0, 0, 2)        # slot 0, now another name's
    assert lib.hx_breaker_state(h, 0) == lib.UP_BRK_CLOSED
    assert lib.hx_breaker_admit(h, 0) == lib.BRK_COUNTED


@pytest.mark.parametrize("balance", ["ROUND_ROBIN", "LEAST_CONN", "P2C", "HASH"])
def test_next_server_after_a_failed_connect(lib, h, balance):
    """What both dialers (l4.c connect_next, h1_upstream.c on_connect) ask:
    a server other than the one that failed, else that one again."""
    b = getattr(lib, "UP_BALANCE_" + balance)
    setup(lib, h, b, [1, 1, 1])
    if balance == "HASH":
        set_ring(lib, h, 0, [(0, "a", 1), (1, "b", 1), (2, "c", 1)])
    lib.hx_set_rng(h, 3)
    for key in range(0, 2 ** 64, 2 ** 58):
        first = lib.hx_pick(h, 0, NIL, key)
        nxt = lib.hx_pick(h, 0, first, key)
        assert nxt not in (first, -1)
    lib.hx_set_health(h, 1, 0)
    lib.hx_set_health(h, 2, 0)
    assert lib.hx_pick(h, 0, 0, 77) == -1      # only the failed one is left
    assert lib.hx_pick(h, 0, NIL, 77) == 0     # so it is tried again


# ---- consistent hashing ------------------------------------------------

def ring_points(lib, servers):
    """(hash, global index) points as src/uproxy/tables.py builds them."""
    pts = []
    for index, label, weight in servers:
        for i in range(RING_POINTS * weight):
            key = f"{label}#{i}".encode()
            pts.append((lib.up_hash(key, len(key)), index))
    pts.sort()
    return pts


def set_ring(lib, h, ci, servers):
    pts = ring_points(lib, servers)
    from cffi import FFI
    ffi = FFI()
    hashes = ffi.new("uint64_t[]", [p[0] for p in pts])
    idx = ffi.new("uint32_t[]", [p[1] for p in pts])
    assert lib.hx_cfg_ring(h, ci, hashes, idx, len(pts)) == 0


def hash_cluster(lib, h, labels, weights=None):
    """A hash cluster of servers named by labels, in that order (global
    indexes 0..n-1, as the control plane numbers them)."""
    weights = weights or [1] * len(labels)
    setup(lib, h, lib.UP_BALANCE_HASH, weights)
    set_ring(lib, h, 0, [(i, lab, wt) for i, (lab, wt) in enumerate(zip(labels, weights))])


_rng = random.Random(11)
KEYS = [_rng.getrandbits(64) for _ in range(20_000)]
assert len(set(KEYS)) == len(KEYS)


def assignment(lib, h, labels):
    """key -> server label."""
    return {k: labels[lib.hx_pick(h, 0, NIL, k)] for k in KEYS}


def fnv_fmix(data: bytes) -> int:
    m = 2 ** 64
    x = 0xcbf29ce484222325
    for b in data:
        x = ((x ^ b) * 0x100000001b3) % m
    x ^= x >> 33
    x = (x * 0xff51afd7ed558ccd) % m
    x ^= x >> 33
    x = (x * 0xc4ceb9fe1a85ec53) % m
    x ^= x >> 33
    return x


def test_up_hash_is_fnv1a_with_a_64_bit_finalizer(lib):
    for data in [b"", b"a", b"10.0.0.1", b"x" * 100, bytes(range(256))]:
        assert lib.up_hash(data, len(data)) == fnv_fmix(data)
    # Nearby keys land far apart on the ring.
    a, b = lib.up_hash(b"10.0.0.1", 8), lib.up_hash(b"10.0.0.2", 8)
    assert bin(a ^ b).count("1") > 16


def test_ring_built_here_is_the_control_planes(lib):
    tables = pytest.importorskip("uproxy.tables")
    servers = [(0, "10.0.0.1:80", 1), (1, "10.0.0.2:80", 2)]
    assert tables.RING_POINTS == RING_POINTS
    assert tables.hash_ring(servers) == ring_points(lib, servers)


def test_hash_same_key_same_server_on_every_worker(lib, h):
    labels = ["a", "b", "c", "d"]
    hash_cluster(lib, h, labels)
    first = assignment(lib, h, labels)
    assert assignment(lib, h, labels) == first
    lib.hx_set_worker_index(h, 1)
    assert assignment(lib, h, labels) == first


def test_hash_spreads_keys_evenly_and_by_weight(lib, h):
    labels = ["s1", "s2", "s3", "s4", "s5"]
    hash_cluster(lib, h, labels)
    share = Counter(assignment(lib, h, labels).values())
    assert all(abs(share[lab] / len(KEYS) - 0.2) < 0.06 for lab in labels), share
    hash_cluster(lib, h, ["x", "y", "z"], weights=[2, 1, 1])
    share = Counter(assignment(lib, h, ["x", "y", "z"]).values())
    assert share["x"] / len(KEYS) == pytest.approx(0.5, abs=0.07), share


def test_hash_removing_a_server_moves_only_its_keys(lib, h):
    labels = ["10.0.0.%d:80" % i for i in range(1, 7)]
    hash_cluster(lib, h, labels)
    before = assignment(lib, h, labels)
    gone = labels[2]
    rest = [lab for lab in labels if lab != gone]   # the others renumbered
    hash_cluster(lib, h, rest)
    after = assignment(lib, h, rest)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == gone for k in moved)
    assert len(moved) == sum(1 for k in KEYS if before[k] == gone)
    # Its keys spread over the others, not onto one neighbour.
    assert len({after[k] for k in moved}) >= 4


def test_hash_adding_a_server_moves_keys_only_to_it(lib, h):
    labels = ["10.0.0.%d:80" % i for i in range(1, 6)]
    hash_cluster(lib, h, labels)
    before = assignment(lib, h, labels)
    grown = labels[:2] + ["10.0.0.99:80"] + labels[2:]   # in the middle: indexes shift
    hash_cluster(lib, h, grown)
    after = assignment(lib, h, grown)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "10.0.0.99:80" for k in moved)
    assert len(moved) / len(KEYS) == pytest.approx(1 / 6, abs=0.06)


@pytest.mark.parametrize("how", ["down", "ejected", "avoided"])
def test_hash_server_out_moves_only_its_keys_and_they_come_back(lib, h, how):
    labels = ["a", "b", "c", "d", "e"]
    hash_cluster(lib, h, labels)
    lib.hx_cfg_cluster(h, 0, 0, 5, lib.UP_BALANCE_HASH, 1, 30_000)
    before = assignment(lib, h, labels)
    avoid = NIL
    if how == "down":
        lib.hx_set_health(h, 1, 0)
    elif how == "ejected":
        lib.hx_result(h, 1, 0)
    else:
        avoid = 1
    during = {k: labels[lib.hx_pick(h, 0, avoid, k)] for k in KEYS}
    for k in KEYS:
        if before[k] == "b":
            assert during[k] != "b"
        else:
            assert during[k] == before[k]
    if how == "down":
        lib.hx_set_health(h, 1, 1)
    elif how == "ejected":
        lib.hx_set_now(h, T0 + 30_000)
    assert assignment(lib, h, labels) == before


def test_hash_with_every_server_out_picks_none(lib, h):
    hash_cluster(lib, h, ["a", "b"])
    lib.hx_set_health(h, 0, 0)
    assert lib.hx_pick(h, 0, 1, 5) == -1
    lib.hx_set_health(h, 1, 0)
    assert lib.hx_pick(h, 0, NIL, 5) == -1


def test_hash_key_beyond_the_last_point_wraps_to_the_first(lib, h):
    labels = ["a", "b", "c"]
    hash_cluster(lib, h, labels)
    pts = ring_points(lib, [(i, lab, 1) for i, lab in enumerate(labels)])
    assert lib.hx_pick(h, 0, NIL, 2 ** 64 - 1) == pts[0][1] or pts[-1][0] == 2 ** 64 - 1
    assert lib.hx_pick(h, 0, NIL, pts[0][0]) == pts[0][1]
    assert lib.hx_pick(h, 0, NIL, pts[0][0] + 1) == pts[1][1]
    assert lib.hx_pick(h, 0, NIL, 0) == pts[0][1]
