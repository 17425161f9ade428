"""docs/architecture.md states the slot sizes of the connection and
transaction slabs (what an idle connection and a request in flight cost);
they are read here from the compiled core, so the doc cannot go stale again
(it said 4,504 bytes for a 6,928-byte transaction slot)."""
import os
import re

from support import ROOT

DOC = os.path.join(ROOT, "docs", "architecture.md")


def _stated():
    text = " ".join(open(DOC).read().split())         # the sentences wrap
    conn = re.search(r"holds one ([\d,]+)-byte slot \(`sizeof\(struct conn\)`", text)
    txn = re.search(r"\(`sizeof\(struct txn\)`, ([\d,]+) bytes\)", text)
    assert conn and txn, "docs/architecture.md no longer states both slot sizes where expected"
    return int(conn.group(1).replace(",", "")), int(txn.group(1).replace(",", ""))


def test_architecture_doc_states_the_slot_sizes_of_the_core(lib):
    conn, txn = _stated()
    assert (conn, txn) == (lib.hx_sizeof_conn(), lib.hx_sizeof_txn()), (
        f"docs/architecture.md (## Memory) says struct conn is {conn} B and struct txn {txn} B;"
        f" the core has {lib.hx_sizeof_conn()} and {lib.hx_sizeof_txn()}: update the doc")
