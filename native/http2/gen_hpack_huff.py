#!/usr/bin/env python3
"""Writes native/http2/hpack_huff_table.h: the Huffman code of HPACK
(RFC 7541 Appendix B) as the tables native/http2/hpack_huff.c decodes with.

    python3 native/http2/gen_hpack_huff.py            rewrite the header
    python3 native/http2/gen_hpack_huff.py --check    exit 1 if it is stale

The decoder reads a string four bits at a time. Its states are the inner
nodes of the code's binary tree (257 leaves, so 256 inner nodes), plus one
dead state that swallows the rest of a string once the EOS symbol was read
(RFC 7541 5.2: EOS inside a string is an error). From a state, four bits
lead to another state and emit at most one symbol (the shortest code is 5
bits long, so one nibble cannot finish two). The numbering makes the end
check a comparison: state 0 is the root and states 1-7 are the nodes
reached by 1 to 7 one-bits from it. A string may end only on those (what
follows its last symbol is padding: the most significant bits of EOS, all
ones, at most 7 of them), so it ends well iff its final state is below 8.

hpack_huff_step[state][nibble] = next state (bits 0-8)
                                 | HUFF_EMIT (bit 9) | symbol << 16

With HPACK_HUFF_CODES defined before the include, the header also gives the
code itself (hpack_huff_code/hpack_huff_bits, by symbol): the fuzz harness
Huffman-codes strings with it; the proxy never does (see hpack.c).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "hpack_huff_table.h")

# RFC 7541 Appendix B: (code, length in bits) of symbols 0..256 (256: EOS),
# the code right-aligned as the RFC prints it in hex.
CODES = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),  # 0
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),  # 4
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),  # 8
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),  # 12
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),  # 16
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),  # 20
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),  # 24
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),  # 28
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),  # 32
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),  # 36
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),  # 40
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),  # 44
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6),  # 48
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),  # 52
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),  # 56
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),  # 60
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7),  # 64
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),  # 68
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7),  # 72
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),  # 76
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),  # 80
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),  # 84
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13),  # 88
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),  # 92
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),  # 96
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),  # 100
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),  # 104
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),  # 108
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5),  # 112
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),  # 116
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15),  # 120
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),  # 124
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),  # 128
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),  # 132
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),  # 136
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),  # 140
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),  # 144
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),  # 148
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),  # 152
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),  # 156
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),  # 160
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),  # 164
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),  # 168
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),  # 172
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),  # 176
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),  # 180
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),  # 184
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),  # 188
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),  # 192
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),  # 196
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),  # 200
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),  # 204
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),  # 208
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),  # 212
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),  # 216
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),  # 220
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),  # 224
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),  # 228
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),  # 232
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),  # 236
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),  # 240
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),  # 244
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),  # 248
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),  # 252
    (0x3fffffff, 30),  # 256
]

EOS = 256
DEAD = 256          # the state after EOS: no way out, never accepted
ACCEPT_BELOW = 8    # states 0..7: the root and the 1..7 one-bit paths from it
EMIT = 1 << 9


def check_code():
    """A complete prefix code of 257 symbols (Kraft sum exactly 1), EOS all
    ones over 30 bits, the shortest code 5 bits."""
    assert len(CODES) == 257
    assert CODES[EOS] == ((1 << 30) - 1, 30)
    assert sum(2.0 ** -bits for _, bits in CODES) == 1.0
    assert min(bits for _, bits in CODES) == 5
    words = sorted(format(code, f"0{bits}b") for code, bits in CODES)
    for a, b in zip(words, words[1:]):
        assert not b.startswith(a), (a, b)


def build_tree():
    """children[node] = [child for bit 0, child for bit 1]: an int for an
    inner node, ("sym", s) for a leaf. Node 0 is the root."""
    children = [[None, None]]
    for sym, (code, bits) in enumerate(CODES):
        node = 0
        for i in range(bits - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                assert children[node][bit] is None
                children[node][bit] = ("sym", sym)
            else:
                if children[node][bit] is None:
                    children.append([None, None])
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    assert len(children) == 256 and all(c is not None for kids in children for c in kids)
    return children


def number_states(children):
    """Tree node -> state number: the root 0, the one-bit path 1..7, the rest
    breadth first."""
    order = [0]
    node = 0
    for _ in range(ACCEPT_BELOW - 1):
        node = children[node][1]
        assert isinstance(node, int)
        order.append(node)
    queue = [0]
    while queue:
        n = queue.pop(0)
        if n not in order:
            order.append(n)
        queue += [c for c in children[n] if isinstance(c, int)]
    assert sorted(order) == list(range(256))
    return {node: i for i, node in enumerate(order)}


def build_steps(children, state_of):
    node_of = {s: n for n, s in state_of.items()}
    steps = []
    for state in range(257):
        row = []
        for nibble in range(16):
            if state == DEAD:
                row.append(DEAD)
                continue
            node, emitted, dead = node_of[state], None, False
            for i in (3, 2, 1, 0):
                nxt = children[node][(nibble >> i) & 1]
                if isinstance(nxt, int):
                    node = nxt
                    continue
                sym = nxt[1]
                if sym == EOS:
                    dead = True
                    break
                assert emitted is None, "two symbols in one nibble"
                emitted, node = sym, 0
            if dead:
                row.append(DEAD)
            elif emitted is None:
                row.append(state_of[node])
            else:
                row.append(state_of[node] | EMIT | emitted << 16)
        steps.append(row)
    return steps


def decode_with(steps, data):
    """The C decoder's loop, in Python: the self-test below runs it."""
    state, out = 0, bytearray()
    for byte in data:
        for nibble in (byte >> 4, byte & 15):
            e = steps[state][nibble]
            if e & EMIT:
                out.append(e >> 16)
            state = e & 0x1FF
    return bytes(out) if state < ACCEPT_BELOW else None


def encode(data):
    acc, n = 0, 0
    for b in data:
        code, bits = CODES[b]
        acc, n = acc << bits | code, n + bits
    pad = -n % 8
    acc, n = acc << pad | (1 << pad) - 1, n + pad
    return acc.to_bytes(n // 8, "big")


def self_test(steps):
    every = bytes(range(256))
    for s in (b"", b"www.example.com", every, every[::-1] * 3):
        assert decode_with(steps, encode(s)) == s
    assert encode(b"www.example.com").hex() == "f1e3c2e5f23a6ba0ab90f4ff"  # RFC 7541 C.4.1
    assert decode_with(steps, b"\xff\xff\xff\xff") is None       # EOS inside
    assert decode_with(steps, encode(b"a") + b"\xff") is None   # padding over 7 bits
    assert decode_with(steps, b"\x1e") is None                  # 'a' (00011), then 110: padding not all ones


def render(steps):
    out = ["/* Generated by native/http2/gen_hpack_huff.py from RFC 7541 Appendix B: do not",
           " * edit, run the script. What the numbers mean: its docstring. */",
           "#ifndef UPROXY_HPACK_HUFF_TABLE_H",
           "#define UPROXY_HPACK_HUFF_TABLE_H",
           "#include <stdint.h>",
           "",
           f"#define HUFF_ACCEPT_BELOW {ACCEPT_BELOW}",
           f"#define HUFF_EMIT 0x{EMIT:x}u",
           "#define HUFF_STATE 0x1ffu",
           "",
           "static const uint32_t hpack_huff_step[257][16] = {"]
    for state, row in enumerate(steps):
        cells = ",".join(f"0x{e:x}" for e in row)
        out.append(f"    /* {state:3d} */ {{{cells}}},")
    out += ["};", "", "#ifdef HPACK_HUFF_CODES", "static const uint32_t hpack_huff_code[257] = {"]
    for i in range(0, 257, 8):
        out.append("    " + ", ".join(f"0x{c:x}" for c, _ in CODES[i:i + 8]) + ",")
    out += ["};", "static const uint8_t hpack_huff_bits[257] = {"]
    for i in range(0, 257, 16):
        out.append("    " + ", ".join(str(b) for _, b in CODES[i:i + 16]) + ",")
    out += ["};", "#endif", "", "#endif", ""]
    return "\n".join(out)


def generate():
    check_code()
    children = build_tree()
    steps = build_steps(children, number_states(children))
    self_test(steps)
    return render(steps)


if __name__ == "__main__":
    text = generate()
    if sys.argv[1:] == ["--check"]:
        with open(OUT) as f:
            stale = f.read() != text
        if stale:
            print(f"{OUT} is stale: run {sys.argv[0]}", file=sys.stderr)
        sys.exit(1 if stale else 0)
    with open(OUT, "w") as f:
        f.write(text)
