"""The HTTP transaction's two state machines (native/http/h1_state.c),
through the test-only cffi module: every (state, event) pair against the
table written out here, the lifecycles the proxy walks, and illegal
transitions refused. The names come from the C side, so a state or an event
added there without a line here fails the table test."""
import pytest

ILLEGAL = 0xFF

# (state, event) -> next state; every pair not listed is illegal.
REQUEST = {
    ("SEND_HEAD", "ALL_IN"): "SEND_HEAD_ALL",
    ("SEND_HEAD", "ROUND_OUT"): "SEND_BODY",
    ("SEND_HEAD", "AGAIN"): "SEND_HEAD",
    ("SEND_HEAD_ALL", "ROUND_OUT"): "DONE",
    ("SEND_HEAD_ALL", "AGAIN"): "SEND_HEAD",
    ("SEND_BODY", "ALL_IN"): "DONE",
    ("SEND_BODY", "ROUND_OUT"): "SEND_BODY",
    ("SEND_BODY", "AGAIN"): "SEND_HEAD",
    ("DONE", "ROUND_OUT"): "DONE",
    ("DONE", "AGAIN"): "SEND_HEAD",
}

RESPONSE = {
    ("WAIT", "SENDING"): "INTERIM",
    ("WAIT", "FINAL_HEAD"): "HEAD",
    ("WAIT", "LOCAL"): "DONE",
    ("WAIT", "ERROR"): "ERROR",
    ("INTERIM", "SENDING"): "INTERIM",
    ("INTERIM", "FINAL_HEAD"): "HEAD",
    ("INTERIM", "ERROR"): "ERROR",
    ("INTERIM", "ERROR_LATER"): "ERROR_LATER",
    ("HEAD", "SENDING"): "BODY",
    ("HEAD", "ALL_IN"): "HEAD_ALL",
    ("HEAD", "ERROR"): "ERROR",
    ("HEAD_ALL", "SENDING"): "DONE",
    ("HEAD_ALL", "ERROR"): "ERROR",
    ("BODY", "SENDING"): "BODY",
    ("BODY", "ALL_IN"): "DONE",
    ("DONE", "SENDING"): "DONE",
    ("ERROR_LATER", "ERROR"): "ERROR",
}


class Machine:
    """One side's functions and its names, read from the C side."""

    def __init__(self, ffi, lib, side):
        self.ffi = ffi
        self.next = getattr(lib, f"h1_{side}_next")
        self.step_fn = getattr(lib, f"h1_{side}_step")
        self.states = self._names(getattr(lib, f"h1_{side}_state_name"))
        self.events = self._names(getattr(lib, f"h1_{side}_event_name"))

    def _names(self, fn):
        out = []
        while len(out) < 64:
            name = self.ffi.string(fn(len(out))).decode()
            if name == "?":
                return out
            out.append(name)
        raise AssertionError("no end to the names")

    def s(self, name):
        return self.states.index(name)

    def e(self, name):
        return self.events.index(name)

    def walk(self, start, events):
        """The states a state byte goes through, stepped as the proxy does."""
        b = self.ffi.new("uint8_t *", self.s(start))
        seen = [start]
        for ev in events:
            self.step_fn(b, self.e(ev))
            seen.append(self.states[b[0]])
        return seen


@pytest.fixture(scope="module")
def req(ffi, lib):
    return Machine(ffi, lib, "req")


@pytest.fixture(scope="module")
def resp(ffi, lib):
    return Machine(ffi, lib, "resp")


def test_names_are_the_documented_ones(req, resp):
    assert req.states == ["SEND_HEAD", "SEND_HEAD_ALL", "SEND_BODY", "DONE"]
    assert req.events == ["ALL_IN", "ROUND_OUT", "AGAIN"]
    assert resp.states == ["WAIT", "INTERIM", "HEAD", "HEAD_ALL", "BODY", "DONE",
                           "ERROR_LATER", "ERROR"]
    assert resp.events == ["SENDING", "FINAL_HEAD", "ALL_IN", "LOCAL", "ERROR",
                           "ERROR_LATER"]


@pytest.mark.parametrize("side,table", [("req", REQUEST), ("resp", RESPONSE)])
def test_every_pair_against_the_table(request, side, table):
    m = request.getfixturevalue(side)
    for k in table:
        assert k[0] in m.states and k[1] in m.events and table[k] in m.states, k
    for si, s in enumerate(m.states):
        for ei, e in enumerate(m.events):
            got = m.next(si, ei)
            want = table.get((s, e))
            if want is None:
                assert got == ILLEGAL, f"{side}: {s} on {e} should be refused, gave {got}"
            else:
                assert got != ILLEGAL and m.states[got] == want, f"{side}: {s} on {e}"


@pytest.mark.parametrize("side", ["req", "resp"])
def test_out_of_range_refused(request, side):
    m = request.getfixturevalue(side)
    assert m.next(len(m.states), 0) == ILLEGAL
    assert m.next(0, len(m.events)) == ILLEGAL
    assert m.next(ILLEGAL, 0) == ILLEGAL


@pytest.mark.parametrize("side,table", [("req", REQUEST), ("resp", RESPONSE)])
def test_every_state_reachable_and_an_end_reached(request, side, table):
    """From the first state every state is reachable, and from every state
    but the dead end of the proxy's own error answer, DONE is."""
    m = request.getfixturevalue(side)

    def reach(start):
        seen, todo = {start}, [start]
        while todo:
            s = todo.pop()
            for (a, _), b in table.items():
                if a == s and b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen
    assert reach(m.states[0]) == set(m.states)
    for s in m.states:
        if s not in ("ERROR", "ERROR_LATER"):
            assert "DONE" in reach(s), s


# The lifecycles the proxy walks (docs/architecture.md), stepped as it does.
@pytest.mark.parametrize("events,states", [
    # a GET: its head is the whole request, then the round goes out
    (["ALL_IN", "ROUND_OUT"], ["SEND_HEAD", "SEND_HEAD_ALL", "DONE"]),
    # a POST whose body streams after the head, in several rounds
    (["ROUND_OUT", "ROUND_OUT", "ALL_IN", "ROUND_OUT"],
     ["SEND_HEAD", "SEND_BODY", "SEND_BODY", "DONE", "DONE"]),
    # a retry on a new connection after the pooled one died
    (["ALL_IN", "ROUND_OUT", "AGAIN", "ALL_IN", "ROUND_OUT"],
     ["SEND_HEAD", "SEND_HEAD_ALL", "DONE", "SEND_HEAD", "SEND_HEAD_ALL", "DONE"]),
])
def test_request_lifecycles(req, events, states):
    assert req.walk("SEND_HEAD", events) == states


@pytest.mark.parametrize("events,states", [
    # a body that streams
    (["FINAL_HEAD", "SENDING", "SENDING", "ALL_IN", "SENDING"],
     ["WAIT", "HEAD", "BODY", "BODY", "DONE", "DONE"]),
    # a head with its whole body in one buffer
    (["FINAL_HEAD", "ALL_IN", "SENDING"], ["WAIT", "HEAD", "HEAD_ALL", "DONE"]),
    # 100 Continue, then the final response
    (["SENDING", "FINAL_HEAD", "ALL_IN", "SENDING"],
     ["WAIT", "INTERIM", "HEAD", "HEAD_ALL", "DONE"]),
    # the upstream fails while a 1xx is on its way out: the 502 follows it
    (["SENDING", "ERROR_LATER", "ERROR"], ["WAIT", "INTERIM", "ERROR_LATER", "ERROR"]),
    # a redirect (or an ACME answer): the proxy's whole answer
    (["LOCAL", "SENDING"], ["WAIT", "DONE", "DONE"]),
    # a head the proxy could not rewrite: 502 instead
    (["FINAL_HEAD", "ERROR"], ["WAIT", "HEAD", "ERROR"]),
])
def test_response_lifecycles(resp, events, states):
    assert resp.walk("WAIT", events) == states


def test_illegal_step_leaves_the_state(req, resp, lib):
    """Unchecked builds (this harness is one unless UPROXY_CFLAGS says
    otherwise) keep the state on an illegal transition; checked ones stop."""
    import os
    flags = os.environ.get("UPROXY_CFLAGS", "")
    if "sanitize=address" in flags or "UPROXY_CHECKS" in flags:
        pytest.skip("checked build: an illegal transition stops the process")
    assert req.walk("DONE", ["ALL_IN"]) == ["DONE", "DONE"]
    assert resp.walk("BODY", ["ERROR"]) == ["BODY", "BODY"]
    assert resp.walk("ERROR", ["SENDING", "LOCAL"]) == ["ERROR", "ERROR", "ERROR"]
