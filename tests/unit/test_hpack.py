"""HPACK (RFC 7541): native/http2/hpack.c and hpack_huff.c, through a small
cffi module of their own (build_hpack_harness.py).

The RFC's examples (Appendix C) block by block with the tables after each;
the Huffman decoder against a bit-by-bit reference on every input of one
and two bytes; one test per error rule; the encoder's choices of
representation (exact matches, name indexes, what it never indexes or does
not index, the 3/4 rule, size updates); and differential tests with
hypothesis against the reference Python `hpack` package both ways: its
Encoder's blocks (Huffman or raw, table size changes) decode with ours to
the same fields and the same table, and ours decode with its Decoder to the
same fields and the table our policy predicts.
"""
import collections
import os
import random
import re
import subprocess
import sys

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_hpack_harness  # noqa: E402

_mod = build_hpack_harness.build()
ffi, lib = _mod.ffi, _mod.lib
ROOT = build_hpack_harness.ROOT

END, FIELD = lib.HPACK_END, lib.HPACK_FIELD
E_COMPRESSION, E_TOO_LONG = lib.HPACK_E_COMPRESSION, lib.HPACK_E_TOO_LONG
NEVER, NOINDEX = lib.HPACK_F_NEVER, lib.HPACK_F_NOINDEX
PROPS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)
HUFF = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
STATIC = hpack.table.HeaderTable.STATIC_TABLE          # index i at STATIC[i - 1]


def hx(s):
    return bytes.fromhex(s.replace(" ", ""))


def hint(v, prefix, first=0):
    """An HPACK integer (RFC 7541 5.1)."""
    mask = (1 << prefix) - 1
    if v < mask:
        return bytes([first | v])
    out = [first | mask]
    v -= mask
    while v >= 128:
        out.append(v & 127 | 128)
        v >>= 7
    out.append(v)
    return bytes(out)


def hstr(s, huffman=False):
    """A string literal (5.2)."""
    if huffman:
        s = HUFF.encode(s)
    return hint(len(s), 7, 0x80 if huffman else 0) + s


class DecodeError(Exception):
    def __init__(self, code, fields, offset):
        super().__init__(code, fields, offset)
        self.code, self.fields, self.offset = code, fields, offset


class Dec:
    """A struct hpack_dec and the calls around it."""

    def __init__(self, limit=None):
        self.d = ffi.new("struct hpack_dec *")
        lib.hpack_dec_init(self.d)
        if limit is not None:
            lib.hpack_dec_limit(self.d, limit)

    def decode(self, block, cap=1 << 16):
        """The block's fields [(name, value, flags)], read right after each
        call; DecodeError on an error. Also returns where each field ended."""
        buf = ffi.new("uint8_t[]", len(block) or 1)     # exactly the block
        ffi.memmove(buf, block, len(block))
        p = ffi.new("const uint8_t **", buf)
        end = buf + len(block)
        f = ffi.new("struct hpack_field *")
        scratch = ffi.new("uint8_t[]", cap) if cap else ffi.NULL
        lib.hpack_dec_begin(self.d)
        fields, ends = [], []
        while True:
            r = lib.hpack_decode(self.d, p, end, f, scratch, cap)
            if r == END:
                assert p[0] == end
                self.ends = ends
                return fields
            if r != FIELD:
                raise DecodeError(r, fields, p[0] - buf)
            assert f.name != ffi.NULL and f.value != ffi.NULL
            fields.append((ffi.buffer(f.name, f.nlen)[:], ffi.buffer(f.value, f.vlen)[:], f.flags))
            ends.append(p[0] - buf)

    def pairs(self, block, **kw):
        return [(n, v) for n, v, _ in self.decode(block, **kw)]

    def error(self, block, **kw):
        with pytest.raises(DecodeError) as e:
            self.decode(block, **kw)
        return e.value.code

    def table(self):
        return entries(self.d.t)

    def table_by_index(self):
        """The dynamic table as indexed fields 62, 63, ... decode (black box)."""
        block = b"".join(hint(61 + i, 7, 0x80) for i in range(1, self.d.t.n + 1))
        saved = self.d.fields
        out = self.pairs(block)
        self.d.fields = saved
        return out


class Enc:
    def __init__(self):
        self.e = ffi.new("struct hpack_enc *")
        lib.hpack_enc_init(self.e)

    def limit(self, v):
        lib.hpack_enc_limit(self.e, v)

    def begin(self, room=64):
        buf = ffi.new("uint8_t[]", room or 1)
        n = lib.hpack_encode_begin(self.e, buf, room)
        return None if n < 0 else ffi.buffer(buf, n)[:]

    def field(self, name, value, flags=0, room=1 << 16):
        buf = ffi.new("uint8_t[]", room or 1)
        n = lib.hpack_encode(self.e, buf, room, name, len(name), value, len(value), flags)
        return None if n < 0 else ffi.buffer(buf, n)[:]

    def block(self, fields):
        out = self.begin()
        assert out is not None
        for f in fields:
            name, value, flags = (tuple(f) + (0,))[:3]
            b = self.field(name, value, flags)
            assert b
            out += b
        return out

    def table(self):
        return entries(self.e.t)


def entries(t):
    """A table's entries, newest first, read from its ring; checks the
    layout's invariants on the way (entries inside the ring, not
    overlapping, the RFC size their sum)."""
    ring = ffi.buffer(t.ring)
    out, spans, size = [], [], 0
    for age in range(1, t.n + 1):
        e = t.ent[(t.ins - age) % lib.HPACK_ENTRIES]
        assert e.off + e.nlen + e.vlen <= lib.HPACK_RING
        out.append((ring[e.off:e.off + e.nlen], ring[e.off + e.nlen:e.off + e.nlen + e.vlen]))
        spans.append((e.off, e.off + e.nlen + e.vlen))
        size += e.nlen + e.vlen + 32
    spans = sorted(s for s in spans if s[0] != s[1])
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    assert size == t.size <= t.max <= lib.HPACK_TABLE_MAX
    return out


def size_of(pairs):
    return sum(len(n) + len(v) + 32 for n, v in pairs)


# ---- RFC 7541 Appendix C --------------------------------------------------------

REQ1 = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
        (b":authority", b"www.example.com")]
REQ2 = REQ1 + [(b"cache-control", b"no-cache")]
REQ3 = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
        (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")]
DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESP1 = [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1),
         (b"location", b"https://www.example.com")]
RESP2 = [(b":status", b"307")] + RESP1[1:]
RESP3 = [(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE2),
         (b"location", b"https://www.example.com"), (b"content-encoding", b"gzip"),
         (b"set-cookie", COOKIE)]
TABLE_REQ1 = [(b":authority", b"www.example.com")]
TABLE_REQ2 = [(b"cache-control", b"no-cache")] + TABLE_REQ1
TABLE_REQ3 = [(b"custom-key", b"custom-value")] + TABLE_REQ2
TABLE_RESP1 = [(b"location", b"https://www.example.com"), (b"date", DATE1),
               (b"cache-control", b"private"), (b":status", b"302")]
TABLE_RESP2 = [(b":status", b"307")] + TABLE_RESP1[:3]
TABLE_RESP3 = [(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)]

# (block, fields, table after, its size), the hex as the RFC prints it
C3 = [
    ("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", REQ1, TABLE_REQ1, 57),
    ("8286 84be 5808 6e6f 2d63 6163 6865", REQ2, TABLE_REQ2, 110),
    ("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
     REQ3, TABLE_REQ3, 164),
]
C4 = [
    ("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", REQ1, TABLE_REQ1, 57),
    ("8286 84be 5886 a8eb 1064 9cbf", REQ2, TABLE_REQ2, 110),
    ("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf", REQ3, TABLE_REQ3, 164),
]
C5 = [
    ("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
     "2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70"
     "6c65 2e63 6f6d", RESP1, TABLE_RESP1, 222),
    ("4803 3330 37c1 c0bf", RESP2, TABLE_RESP2, 222),
    ("88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d"
     "54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049"
     "5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e"
     "3d31", RESP3, TABLE_RESP3, 215),
]
C6 = [
    ("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
     "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3", RESP1, TABLE_RESP1, 222),
    ("4883 640e ffc1 c0bf", RESP2, TABLE_RESP2, 222),
    ("88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
     "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
     "9587 3160 65c0 03ed 4ee5 b106 3d50 07", RESP3, TABLE_RESP3, 215),
]
# C.5 and C.6 assume a 256-byte table from the start. Ours starts at 4096:
# lowered to 256 (hpack_dec_limit), it wants the first block to say so.
UPDATE_256 = hint(256, 5, 0x20)


def rfc_decoder(example):
    return Dec(limit=256) if example in (C5, C6) else Dec()


def rfc_blocks(example):
    blocks = [hx(b) for b, *_ in example]
    if example in (C5, C6):
        blocks[0] = UPDATE_256 + blocks[0]
    return blocks


@pytest.mark.parametrize("section,block,fields,flags,table", [
    ("C.2.1", "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
     [(b"custom-key", b"custom-header")], 0, [(b"custom-key", b"custom-header")]),
    ("C.2.2", "040c 2f73 616d 706c 652f 7061 7468", [(b":path", b"/sample/path")], 0, []),
    ("C.2.3", "1008 7061 7373 776f 7264 0673 6563 7265 74", [(b"password", b"secret")], NEVER, []),
    ("C.2.4", "82", [(b":method", b"GET")], 0, []),
])
def test_rfc_c2_field_representations(section, block, fields, flags, table):
    d = Dec()
    assert d.decode(hx(block)) == [f + (flags,) for f in fields], section
    assert d.table() == d.table_by_index() == table
    assert d.d.t.size == size_of(table)


@pytest.mark.parametrize("name", ["C.3", "C.4", "C.5", "C.6"])
def test_rfc_c3_to_c6_block_sequences_and_their_tables(name):
    example = {"C.3": C3, "C.4": C4, "C.5": C5, "C.6": C6}[name]
    d = rfc_decoder(example)
    for i, (block, (_, fields, table, size)) in enumerate(zip(rfc_blocks(example), example)):
        assert d.decode(block) == [f + (0,) for f in fields], f"{name}.{i + 1}"
        assert d.table() == d.table_by_index() == table, f"{name}.{i + 1}"
        assert d.d.t.size == size == size_of(table)


def test_rfc_c5_without_the_size_update_is_an_error_once_the_limit_is_lowered():
    d = Dec(limit=256)
    assert d.error(hx(C5[0][0])) == E_COMPRESSION
    d = Dec(limit=256)
    assert d.pairs(UPDATE_256 + hx(C5[0][0])) == RESP1


def test_rfc_blocks_also_come_from_the_reference_encoder():
    """The hex above is the RFC's; Python's hpack Encoder (which follows the
    RFC) writes the same blocks, so the two sources check each other."""
    for example, huffman in ((C3, False), (C4, True), (C5, False), (C6, True)):
        enc = hpack.Encoder()
        if example in (C5, C6):
            enc.header_table_size = 256
        for i, (block, fields, _, _) in enumerate(example):
            out = enc.encode(fields, huffman=huffman)
            if i == 0 and example in (C5, C6):
                assert out[:3] == UPDATE_256
                out = out[3:]
            assert out == hx(block)


def test_our_encoder_writes_the_rfc_c3_blocks():
    """No Huffman and the same choices as the RFC's requests: byte for byte."""
    e = Enc()
    for block, fields, table, size in C3:
        assert e.block(fields) == hx(block)
        assert e.table() == table and e.e.t.size == size


@pytest.mark.parametrize("example", [C5, C6], ids=["C.5", "C.6"])
def test_our_encoder_on_the_rfc_responses_at_256(example):
    """Our policy leaves location and set-cookie out of the table (the RFC's
    encoder indexes them), so the blocks differ; the reference decoder reads
    them back and holds the table ours predicts."""
    e, ref = Enc(), hpack.Decoder()
    e.limit(256)
    ref.max_allowed_table_size = 256
    tables = [
        [(b"date", DATE1), (b"cache-control", b"private"), (b":status", b"302")],
        [(b":status", b"307"), (b"date", DATE1), (b"cache-control", b"private"),
         (b":status", b"302")],
        # :status 302 goes for the new date, cache-control for content-encoding
        [(b"content-encoding", b"gzip"), (b"date", DATE2), (b":status", b"307"),
         (b"date", DATE1)],
    ]
    for (_, fields, _, _), table in zip(example, tables):
        block = e.block(fields)
        assert ref.decode(block, raw=True) == fields
        assert e.table() == list(ref.header_table.dynamic_entries) == table
        assert e.e.t.size == size_of(table)
    # :status 200 (static), cache-control private (dynamic 64), then date as
    # a literal with its name indexed; location by name, without indexing
    assert block.startswith(b"\x88\xc0\x61\x1d" + DATE2)
    assert b"\x0f\x1f" + hstr(b"https://www.example.com") in block


def test_every_truncated_block_is_an_error():
    """Cut anywhere but between two representations, a block is malformed;
    cut between them, it is the fields before the cut."""
    for example in (C3, C4, C5, C6):
        blocks = rfc_blocks(example)
        for k, block in enumerate(blocks):
            d = rfc_decoder(example)
            for earlier in blocks[:k]:
                d.decode(earlier)
            d.decode(block)
            bounds = {0: 0, **{end: i + 1 for i, end in enumerate(d.ends)}}
            if example in (C5, C6) and k == 0:
                bounds[len(UPDATE_256)] = 0
            for cut in range(len(block)):
                d = rfc_decoder(example)
                for earlier in blocks[:k]:
                    d.decode(earlier)
                if cut in bounds:
                    assert len(d.decode(block[:cut])) == bounds[cut]
                else:
                    assert d.error(block[:cut]) == E_COMPRESSION, (k, cut)


# ---- Huffman -------------------------------------------------------------------

CODES = {(c, n): s for s, (c, n) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH))}


def ref_huffman(data):
    """RFC 7541 5.2 bit by bit: the bytes, or None if malformed."""
    out, acc, n = bytearray(), 0, 0
    for byte in data:
        for i in range(7, -1, -1):
            acc, n = acc << 1 | (byte >> i) & 1, n + 1
            sym = CODES.get((acc, n))
            if sym == 256:
                return None
            if sym is not None:
                out.append(sym)
                acc = n = 0
    return bytes(out) if n <= 7 and acc == (1 << n) - 1 else None


def huff(data, cap=1 << 12):
    out = ffi.new("uint8_t[]", cap or 1)
    got = ffi.new("size_t *")
    r = lib.hpack_huff_decode(data, len(data), out, cap, got)
    return ffi.buffer(out, got[0])[:] if r == 0 else r


@pytest.mark.parametrize("nbytes", [1, 2])
def test_huffman_every_input_of_one_and_two_bytes_against_a_bit_by_bit_decoder(nbytes):
    for x in range(256 ** nbytes):
        data = x.to_bytes(nbytes, "big")
        want = ref_huffman(data)
        assert huff(data) == (E_COMPRESSION if want is None else want), data.hex()


def test_huffman_the_rfc_strings():
    for coded, text in [
        ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", b"www.example.com"),
        ("a8eb 1064 9cbf", b"no-cache"),
        ("25a8 49e9 5ba9 7d7f", b"custom-key"),
        ("25a8 49e9 5bb8 e8b4 bf", b"custom-value"),
        ("6402", b"302"), ("aec3 771a 4b", b"private"),
        ("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff", DATE1),
        ("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", b"https://www.example.com"),
        ("9bd9 ab", b"gzip"),
        ("94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587"
         "3160 65c0 03ed 4ee5 b106 3d50 07", COOKIE),
    ]:
        assert huff(hx(coded)) == text


def test_huffman_every_symbol_alone_and_all_together():
    every = bytes(range(256))
    for b in every:
        assert huff(HUFF.encode(bytes([b]))) == bytes([b])
    assert huff(HUFF.encode(every * 4)) == every * 4
    assert huff(b"") == b""


def bits(*codes):
    """Bytes from (code, length) pairs, padded with ones."""
    acc, n = 0, 0
    for code, length in codes:
        acc, n = acc << length | code, n + length
    pad = -n % 8
    return ((acc << pad) | ((1 << pad) - 1)).to_bytes((n + pad) // 8, "big")


def code(ch):
    return REQUEST_CODES[ch], REQUEST_CODES_LENGTH[ch]


def test_huffman_eos_inside_a_string_is_an_error():
    eos = (REQUEST_CODES[256], 30)
    assert huff(bits(eos)) == E_COMPRESSION
    assert huff(bits(code(ord("a")), eos, code(ord("b")))) == E_COMPRESSION
    assert huff(bits(code(ord("a")), code(ord("b")))) == b"ab"


def test_huffman_padding_over_seven_bits_is_an_error():
    aligned = bits(*[code(ord("a"))] * 8)            # 8 x 5 bits: no padding
    assert huff(aligned) == b"a" * 8
    assert huff(aligned + b"\xff") == E_COMPRESSION
    assert huff(HUFF.encode(b"a") + b"\xff") == E_COMPRESSION


def test_huffman_padding_not_all_ones_is_an_error():
    assert huff(bytes([0b00011111])) == b"a"         # 'a' = 00011, then 111
    for pad in (0b000, 0b011, 0b101, 0b110):
        assert huff(bytes([0b00011000 | pad])) == E_COMPRESSION


@PROPS
@given(st.binary(max_size=300))
def test_huffman_round_trip_and_output_room(data):
    coded = HUFF.encode(data)
    assert huff(coded) == data
    assert huff(coded, cap=len(data)) == data        # the bounded path, exactly full
    if data:
        assert huff(coded, cap=len(data) - 1) == E_TOO_LONG


@PROPS
@given(st.binary(min_size=1, max_size=6))
def test_huffman_arbitrary_bytes_like_the_reference(data):
    want = ref_huffman(data)
    assert huff(data) == (E_COMPRESSION if want is None else want)


def test_huffman_table_is_what_the_generator_writes():
    gen = os.path.join(ROOT, "native", "http2", "gen_hpack_huff.py")
    p = subprocess.run([sys.executable, gen, "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# ---- decoder: each rule ----------------------------------------------------------

def test_integers_over_32_bits_or_too_long_are_errors():
    assert Dec().error(hint(1 << 32, 7, 0x80)) == E_COMPRESSION         # an index
    assert Dec().error(hint(1 << 32, 5, 0x20)) == E_COMPRESSION         # a size update
    assert Dec().error(b"\x02" + hint(1 << 32, 7) + b"x") == E_COMPRESSION   # a length
    assert Dec().error(hint(1 << 40, 7, 0x80)) == E_COMPRESSION
    # 5 continuation bytes (the most 32 bits need) are read, even for a small
    # value; a sixth is an error
    assert Dec().pairs(b"\x3f\x80\x80\x80\x80\x00") == []          # a size update of 31
    assert Dec().error(b"\x3f\x80\x80\x80\x80\x80\x00") == E_COMPRESSION
    assert Dec().pairs(b"\x02\x7f\x80\x80\x80\x80\x00" + b"v" * 127) == [(b":method", b"v" * 127)]


def test_integer_encodings_at_the_limits():
    # 0x3f 0xe1 0x1f: a size update of 31 + 0x61 + (0x1f << 7) = 4096
    assert Dec().pairs(b"\x3f\xe1\x1f") == []
    assert Dec().error(b"\x3f\xe2\x1f") == E_COMPRESSION               # 4097: over the limit
    assert Dec().error(b"\xff") == E_COMPRESSION                         # cut short
    assert Dec().error(b"\xff\x80") == E_COMPRESSION
    assert Dec().error(b"\x3f") == E_COMPRESSION
    # 62 in a 6-bit prefix is one byte, 63 takes two
    d = Dec()
    d.decode(b"\x40" + hstr(b"k") + hstr(b"v") + b"\x40" + hstr(b"k2") + hstr(b"v2"))
    assert d.pairs(b"\x7e" + hstr(b"w")) == [(b"k2", b"w")]
    # now [k2: w, k2: v2, k: v]: 64 = 63 + 1
    assert d.pairs(b"\x7f\x01" + hstr(b"w")) == [(b"k", b"w")]


def test_a_string_longer_than_the_block_is_an_error():
    assert Dec().error(b"\x04" + hint(5, 7) + b"/abc") == E_COMPRESSION
    assert Dec().error(b"\x00" + hint(3, 7) + b"abc") == E_COMPRESSION  # the value is missing
    assert Dec().error(b"\x04" + hint(1 << 20, 7) + b"/") == E_COMPRESSION


def test_index_zero_and_past_the_tables_are_errors():
    assert Dec().error(b"\x80") == E_COMPRESSION
    assert Dec().pairs(hint(61, 7, 0x80)) == [(b"www-authenticate", b"")]
    assert Dec().error(hint(62, 7, 0x80)) == E_COMPRESSION
    d = Dec()
    d.decode(b"\x40" + hstr(b"k") + hstr(b"v"))
    assert d.pairs(hint(62, 7, 0x80)) == [(b"k", b"v")]
    assert d.error(hint(63, 7, 0x80)) == E_COMPRESSION
    # a literal's name index, in each literal form
    for first, prefix in ((0x40, 6), (0x00, 4), (0x10, 4)):
        d = Dec()
        d.decode(b"\x40" + hstr(b"k") + hstr(b"v"))
        assert d.pairs(hint(62, prefix, first) + hstr(b"w")) == [(b"k", b"w")]
        assert d.error(hint(62 + d.d.t.n, prefix, first) + hstr(b"w")) == E_COMPRESSION


def test_size_update_above_the_limit_is_an_error():
    assert Dec().error(hint(4097, 5, 0x20)) == E_COMPRESSION
    assert Dec().pairs(hint(4096, 5, 0x20) + b"\x82") == [(b":method", b"GET")]
    d = Dec(limit=100)
    assert d.error(hint(101, 5, 0x20)) == E_COMPRESSION
    d = Dec(limit=100)
    assert d.pairs(hint(100, 5, 0x20)) == [] and d.d.t.max == 100
    d = Dec(limit=1 << 20)                       # the limit is HPACK_TABLE_MAX at most
    assert d.error(hint(4097, 5, 0x20)) == E_COMPRESSION


def test_size_update_after_a_field_is_an_error():
    assert Dec().error(b"\x82" + hint(100, 5, 0x20)) == E_COMPRESSION
    assert Dec().error(b"\x82\x82" + hint(100, 5, 0x20) + b"\x82") == E_COMPRESSION
    # before the first field, several are fine (4.2: the least, then the final)
    d = Dec()
    d.decode(b"\x40" + hstr(b"k") + hstr(b"v"))
    assert d.pairs(hint(0, 5, 0x20) + hint(4096, 5, 0x20) + b"\x82") == [(b":method", b"GET")]
    assert d.d.t.n == 0 and d.d.t.max == 4096
    # and each block may have its own
    assert d.pairs(hint(10, 5, 0x20)) == [] and d.d.t.max == 10


def test_a_lowered_limit_wants_a_size_update_first():
    d = Dec()
    d.decode(b"\x40" + hstr(b"k") + hstr(b"v" * 100))
    lib.hpack_dec_limit(d.d, 64)
    assert d.d.t.max == 64 and d.d.t.n == 0           # evicted at once
    assert d.error(b"\x82") == E_COMPRESSION
    assert d.error(hint(65, 5, 0x20)) == E_COMPRESSION
    assert d.pairs(hint(64, 5, 0x20) + b"\x82") == [(b":method", b"GET")]
    assert d.pairs(b"\x82") == [(b":method", b"GET")]   # once is enough
    # raising it again asks for nothing
    lib.hpack_dec_limit(d.d, 4096)
    assert d.pairs(b"\x82") == [(b":method", b"GET")]
    assert d.pairs(hint(4096, 5, 0x20) + b"\x82") == [(b":method", b"GET")]
    # a limit at or above the max asks for nothing either
    d = Dec(limit=4096)
    assert d.pairs(b"\x82") == [(b":method", b"GET")]


def test_insertion_evicts_from_the_oldest():
    d = Dec()
    d.decode(hint(200, 5, 0x20))
    for i in range(5):            # each entry 1 + 50 + 32 = 83: two fit in 200
        d.decode(b"\x40" + hstr(b"%d" % i) + hstr(b"v" * 50))
        assert d.table() == [(b"%d" % j, b"v" * 50) for j in range(i, max(i - 2, -1), -1)]
    assert d.d.t.size == 166


def test_an_entry_larger_than_the_max_empties_the_table_and_is_not_added():
    d = Dec()
    d.decode(hint(100, 5, 0x20) + b"\x40" + hstr(b"k") + hstr(b"v"))
    assert d.table() == [(b"k", b"v")]
    # 1 + 68 + 32 = 101 > 100, its name the entry it flushes
    assert d.decode(b"\x7e" + hstr(b"x" * 68)) == [(b"k", b"x" * 68, 0)]
    assert d.table() == [] and d.d.t.size == 0
    d.decode(b"\x40" + hstr(b"k") + hstr(b"x" * 67))        # exactly 100 fits
    assert d.table() == [(b"k", b"x" * 67)] and d.d.t.size == 100


def test_a_name_from_the_entry_its_insertion_evicts():
    """The new entry goes where the old one's bytes lie (the table empties,
    so it goes to the ring's start, and the name moves onto itself, shifted):
    the name is moved before the value is written."""
    d = Dec()
    name = bytes(range(256)) * 8                    # 2,048 bytes, no two alike nearby
    d.decode(b"\x40" + hstr(b"w") + hstr(b""))      # at offset 0, 1 byte
    d.decode(b"\x40" + hstr(name) + hstr(b""))      # at offset 1
    assert d.table() == [(name, b""), (b"w", b"")]
    value = b"y" * 1500                              # 2048 + 1500 + 32 > 4096 - 33 - 2080
    assert d.decode(hint(62, 6, 0x40) + hstr(value)) == [(name, value, 0)]
    assert d.table() == [(name, value)]
    e = d.d.t.ent[(d.d.t.ins - 1) % lib.HPACK_ENTRIES]
    assert e.off == 0                                # it did move down by one


def test_a_field_points_at_its_bytes_until_the_next_call_through_wraps():
    """Entries of many sizes (names from the table too, some of them
    evicted by the very insertion) through small and full tables, the ring
    wrapping: every field read right after its call is right, and the table
    reads back as the reference decoder's."""
    rnd = random.Random(7)
    d, ref = Dec(), hpack.Decoder(max_header_list_size=1 << 30)
    for i in range(400):
        block = hint(rnd.choice([300, 4096, 1000]), 5, 0x20) if i % 50 == 0 else b""
        for _ in range(rnd.randint(1, 4)):
            n = d.d.t.n
            if n and rnd.random() < 0.5:
                block += hint(61 + rnd.randint(1, n), 6, 0x40)
            else:
                block += b"\x40" + hstr(rnd.randbytes(rnd.randint(0, 40)), rnd.random() < 0.5)
            block += hstr(bytes([65 + i % 26]) * rnd.choice([0, 5, 200, 900, 2000]),
                          rnd.random() < 0.5)
        try:
            want = ref.decode(block, raw=True)
        except hpack.HPACKError:            # an index the block's own insertions evicted
            assert d.error(block) == E_COMPRESSION
            d, ref = Dec(), hpack.Decoder(max_header_list_size=1 << 30)
            continue
        assert d.pairs(block) == [tuple(h) for h in want]
        assert d.table() == list(ref.header_table.dynamic_entries)


def test_never_indexed_literals_carry_the_flag():
    got = Dec().decode(b"\x10" + hstr(b"x") + hstr(b"1") + b"\x00" + hstr(b"y") + hstr(b"2")
                       + b"\x1f\x08" + hstr(b"s"))
    assert got == [(b"x", b"1", NEVER), (b"y", b"2", 0), (b"authorization", b"s", NEVER)]


def test_too_long_for_the_scratch_leaves_the_decoder_as_it_was():
    d = Dec()
    block = hx(C4[0][0])                              # :authority Huffman, 15 bytes decoded
    with pytest.raises(DecodeError) as e:
        d.decode(block, cap=14)
    assert e.value.code == E_TOO_LONG and len(e.value.fields) == 3
    assert e.value.offset == 3                        # *p stays at the field
    assert d.d.t.n == 0 and d.d.t.size == 0
    assert d.pairs(block, cap=15) == REQ1
    # name and value share the scratch
    d = Dec()
    block = b"\x40" + hstr(b"abcdef", True) + hstr(b"ghij", True)
    assert d.error(block, cap=9) == E_TOO_LONG
    assert d.pairs(block, cap=10) == [(b"abcdef", b"ghij")]


def test_raw_strings_need_no_scratch():
    d = Dec()
    for block, fields, _, _ in C3:
        assert d.pairs(hx(block), cap=0) == fields
    assert Dec().error(hx(C4[0][0]), cap=0) == E_TOO_LONG
    # empty Huffman strings fit in nothing (and still point somewhere)
    assert Dec().decode(b"\x00\x80\x80", cap=0) == [(b"", b"", 0)]


def test_empty_blocks_and_size_updates_alone():
    d = Dec()
    assert d.decode(b"") == []
    assert d.decode(hint(0, 5, 0x20)) == [] and d.d.t.max == 0
    assert d.decode(hint(0, 5, 0x20) + hint(50, 5, 0x20)) == [] and d.d.t.max == 50


# ---- encoder ---------------------------------------------------------------------

def literal(first, prefix, index, value, name=None):
    return hint(index, prefix, first) + (b"" if name is None else hstr(name)) + hstr(value)


def test_exact_static_matches_are_indexed():
    e = Enc()
    for i, (name, value) in enumerate(STATIC, 1):
        if value:
            assert e.field(name, value) == hint(i, 7, 0x80), name
    assert e.field(b":authority", b"") == b"\x81"
    assert e.e.t.n == 0


def test_every_static_name_is_found_and_near_misses_are_not():
    e = Enc()
    first = {}
    for i, (name, _) in enumerate(STATIC, 1):
        first.setdefault(name, i)
    for name, i in first.items():
        out = e.field(name, b"\x01", NOINDEX)
        rep = 0x10 if name in (b"authorization", b"proxy-authorization", b"cookie",
                               b"set-cookie") else 0x00
        assert out == literal(rep, 4, i, b"\x01"), name
        for k in range(len(name)):
            for c in (b"x", b"-"):
                miss = name[:k] + c + name[k + 1:]
                if miss in first:
                    continue
                out = e.field(miss, b"\x01", NOINDEX)
                assert out == literal(0x00, 4, 0, b"\x01", miss), miss
        assert e.field(name + b"x", b"\x01", NOINDEX)[0] == 0x00
    assert e.e.t.n == 0


def test_incremental_indexing_then_an_exact_dynamic_match():
    e = Enc()
    assert e.field(b"server", b"nginx/1.22.1") == literal(0x40, 6, 54, b"nginx/1.22.1")
    assert e.field(b"server", b"nginx/1.22.1") == b"\xbe"
    assert e.field(b"x-custom", b"1") == literal(0x40, 6, 0, b"1", b"x-custom")
    assert e.field(b"server", b"nginx/1.22.1") == b"\xbf"
    assert e.field(b"x-custom", b"2") == literal(0x40, 6, 62, b"2")       # the name by index
    assert e.field(b"x-custom", b"1") == b"\xbf"
    assert e.table() == [(b"x-custom", b"2"), (b"x-custom", b"1"), (b"server", b"nginx/1.22.1")]


@pytest.mark.parametrize("name,index", [(b":path", 4), (b"content-length", 28), (b"etag", 34),
                                        (b"if-modified-since", 40), (b"if-none-match", 41),
                                        (b"location", 46), (b"set-cookie", 55), (b"age", 21),
                                        (b"last-modified", 44), (b"link", 45)])
def test_fields_that_change_are_not_indexed(name, index):
    e = Enc()
    value = b"a-value-of-twenty-bytes-or-more"
    for _ in range(2):
        assert e.field(name, value) == literal(0x00, 4, index, value)
    assert e.e.t.n == 0


def test_secrets_are_never_indexed():
    e = Enc()
    for name, index in ((b"authorization", 23), (b"proxy-authorization", 49)):
        assert e.field(name, b"Basic dXNlcjpwYXNzd29yZA==") == \
            literal(0x10, 4, index, b"Basic dXNlcjpwYXNzd29yZA==")
    assert e.field(b"cookie", b"sid=1234") == literal(0x10, 4, 32, b"sid=1234")
    assert e.field(b"set-cookie", b"sid=1234") == literal(0x10, 4, 55, b"sid=1234")
    long = b"x" * 20
    assert e.field(b"set-cookie", long) == literal(0x00, 4, 55, long)
    assert e.table() == []
    assert e.field(b"cookie", long) == literal(0x40, 6, 32, long)
    assert e.field(b"cookie", long) == b"\xbe"
    # HPACK_F_NEVER: never indexed, even for an exact match in either table
    assert e.field(b"cookie", long, NEVER) == literal(0x10, 4, 32, long)
    assert e.field(b":method", b"GET", NEVER) == literal(0x10, 4, 2, b"GET")
    assert e.field(b"x-secret", b"s", NEVER) == literal(0x10, 4, 0, b"s", b"x-secret")
    assert e.field(b"x-secret", b"t", NEVER) == literal(0x10, 4, 0, b"t", b"x-secret")
    assert e.table() == [(b"cookie", long)]


def test_noindex_flag_and_the_three_quarters_rule():
    e = Enc()
    assert e.field(b"x-a", b"1", NOINDEX) == literal(0x00, 4, 0, b"1", b"x-a")
    assert e.table() == []
    e.field(b"x-a", b"1")
    assert e.field(b"x-a", b"1", NOINDEX) == b"\xbe"          # an exact match is used
    e = Enc()
    v = b"v" * (3072 - 32 - 3)                                 # exactly 3/4 of 4096
    assert e.field(b"x-a", v)[0] == 0x40 and e.e.t.n == 1
    e = Enc()
    assert e.field(b"x-a", v + b"v")[0] == 0x00 and e.e.t.n == 0
    e = Enc()
    e.limit(400)
    e.begin()
    assert e.field(b"x-a", b"v" * 265)[0] == 0x40              # 300 of 400
    assert e.field(b"x-b", b"v" * 266)[0] == 0x00


def test_room_short_writes_nothing_and_changes_nothing():
    fields = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"x-long", b"z" * 300),
              (b"x-long", b"y" * 300), (b"server", b"nginx/1.22.1"), (b"cookie", b"a"),
              (b"content-length", b"64")]
    e = Enc()
    for name, value in fields:
        probe = Enc()
        ffi.memmove(probe.e, e.e, ffi.sizeof("struct hpack_enc"))
        need = len(probe.field(name, value))
        for room in range(need):
            before = (e.table(), e.e.t.size, e.e.t.ins)
            assert e.field(name, value, room=room) is None
            assert (e.table(), e.e.t.size, e.e.t.ins) == before
        assert len(e.field(name, value, room=need)) == need


def test_size_updates_at_the_start_of_the_next_block():
    e = Enc()
    assert e.begin() == b""                                    # nothing pending
    e.limit(4096)
    assert e.begin() == b""                                    # the same max: nothing to say
    e.limit(1 << 20)
    assert e.begin() == b"" and e.e.t.max == 4096              # min(v, HPACK_TABLE_MAX)
    e.field(b"x-a", b"v" * 100)
    e.limit(100)
    assert e.e.t.n == 0                                        # evicted at once
    assert e.begin(room=1) is None                             # room short: still pending
    assert e.begin() == hint(100, 5, 0x20)
    assert e.begin() == b""
    e.limit(0)
    e.limit(4096)
    assert e.begin() == hint(0, 5, 0x20) + hint(4096, 5, 0x20)  # the least, then the final
    e.limit(2000)
    e.limit(3000)
    assert e.begin() == hint(2000, 5, 0x20) + hint(3000, 5, 0x20)   # we evicted to 2000
    e.limit(4096)
    e.limit(3000)
    assert e.begin() == b""                                    # back where the peer is
    e.limit(100)
    e.limit(3000)
    e.limit(50)
    e.limit(1000)
    assert e.begin() == hint(50, 5, 0x20) + hint(1000, 5, 0x20)


def test_sequence_numbers_wrap_and_the_index_keeps_up():
    """More insertions than 15-bit sequence numbers count, small entries, a
    few names over and over, exact matches among them: every block still
    reads back, and the tables agree."""
    e, d = Enc(), Dec()
    names = [b"x-%d" % i for i in range(7)]
    inserted = 0
    for i in range(36000):
        fields = [(names[i % 7], b"%d" % (i % 151)), (names[(i * 3) % 7], b"%d" % i)]
        block = e.begin()
        for name, value in fields:
            out = e.field(name, value)
            inserted += out[0] & 0xc0 == 0x40
            block += out
        assert d.pairs(block, cap=0) == fields
    assert inserted > 32768 + 128
    assert e.table() == d.table()


def test_struct_sizes_stay_small_and_as_the_header_says():
    """The frame layer embeds one of each per connection; hpack.h states
    their sizes."""
    dec, enc = ffi.sizeof("struct hpack_dec"), ffi.sizeof("struct hpack_enc")
    assert dec <= 9 * 1024 and enc <= 10 * 1024
    with open(build_hpack_harness.HEADER) as f:
        text = " ".join(f.read().split())
    said = re.search(r"struct hpack_dec ([\d,]+) bytes, struct hpack_enc ([\d,]+)", text)
    assert said and (int(said[1].replace(",", "")), int(said[2].replace(",", ""))) == (dec, enc)


# ---- differential tests with the reference Python hpack ------------------------------

STATIC_NAMES = sorted({n for n, _ in STATIC})
STATIC_EXACT = {(n, v) for n, v in STATIC}
NEVER_NAMES = {b"authorization", b"proxy-authorization"}
SHORT_SECRETS = {b"cookie", b"set-cookie"}
NOINDEX_NAMES = {b":path", b"content-length", b"etag", b"if-modified-since", b"if-none-match",
                 b"location", b"set-cookie", b"age", b"last-modified", b"link"}

names = st.one_of(st.sampled_from(STATIC_NAMES),
                  st.sampled_from([b"x-a", b"x-b", b"x-request-id", b"custom-key"]),
                  st.binary(min_size=1, max_size=12).map(lambda b: b.lower()))
values = st.one_of(st.sampled_from([b"", b"GET", b"200", b"/", b"gzip, deflate", b"nginx"]),
                   st.binary(max_size=40),
                   st.builds(lambda c, n: c * n, st.sampled_from([b"a", b"z"]),
                             st.sampled_from([100, 500, 1500, 3100, 4100])))
sizes = st.sampled_from([0, 32, 100, 256, 1000, 3000, 4096])


@PROPS
@given(st.lists(st.tuples(st.lists(sizes, max_size=2),
                          st.lists(st.tuples(names, values, st.booleans()), max_size=10),
                          st.booleans()), min_size=1, max_size=8))
def test_reference_encoder_blocks_decode_the_same(blocks):
    """Python's Encoder (Huffman or raw, sensitive fields, table size
    changes) to ours: the same fields and flags, the same table."""
    enc, d, ref = hpack.Encoder(), Dec(), hpack.Decoder(max_header_list_size=1 << 30)
    for size_changes, fields, huffman in blocks:
        for s in size_changes:
            if s != enc.header_table_size:
                enc.header_table_size = s
        block = enc.encode(fields, huffman=huffman)
        want = ref.decode(block, raw=True)
        assert [tuple(h) for h in want] == [(n, v) for n, v, _ in fields]
        # never indexed where Python's encoder says (a sensitive field with an
        # exact match is sent indexed)
        assert d.decode(block) == [(n, v, 0 if h.indexable else NEVER)
                                   for (n, v, _), h in zip(fields, want)]
        assert d.table() == list(enc.header_table.dynamic_entries)


class Policy:
    """What our encoder does with each field, as a model: the table it
    keeps, which fields it sends never-indexed."""

    def __init__(self):
        self.max, self.table = 4096, collections.deque()

    def limit(self, v):
        self.max = min(v, 4096)
        self.evict(0)

    def evict(self, room):
        while self.table and size_of(self.table) + room > self.max:
            self.table.pop()

    def field(self, name, value, flags):
        """-> True if it goes never-indexed."""
        if flags & NEVER or name in NEVER_NAMES or (name in SHORT_SECRETS and len(value) < 20):
            return True
        if (name, value) in STATIC_EXACT or (name, value) in self.table:
            return False
        size = len(name) + len(value) + 32
        if not (flags & NOINDEX or name in NOINDEX_NAMES or size * 4 > self.max * 3):
            self.evict(size)
            self.table.appendleft((name, value))
        return False


@PROPS
@given(st.lists(st.tuples(st.lists(st.sampled_from([0, 100, 256, 1000, 4096, 8192]), max_size=3),
                          st.lists(st.tuples(names, values, st.sampled_from([0, 0, NEVER, NOINDEX])),
                                   max_size=10)),
                min_size=1, max_size=8))
def test_our_blocks_decode_the_same_with_the_reference_decoder(blocks):
    """Ours to Python's Decoder (the peer announcing each limit): the same
    fields, never-indexed where our policy says, and the table our policy
    predicts; our own decoder agrees on all of it."""
    e, ours, ref, model = Enc(), Dec(), hpack.Decoder(max_header_list_size=1 << 30), Policy()
    for limits, fields in blocks:
        for v in limits:
            e.limit(v)
            ref.max_allowed_table_size = v
            model.limit(v)
        block = e.block(fields)
        got = ref.decode(block, raw=True)
        assert [tuple(h) for h in got] == [(n, v) for n, v, _ in fields]
        never = [model.field(n, v, f) for n, v, f in fields]
        assert [not h.indexable for h in got] == never
        assert e.table() == list(ref.header_table.dynamic_entries) == list(model.table)
        assert ours.decode(block) == [(n, v, NEVER if nv else 0) for (n, v, _), nv in zip(fields, never)]
        assert ours.table() == e.table()


# ---- what it costs ----------------------------------------------------------------

BENCH_CASES = {
    # case: (the brief's target or a guard against regressions, for HPACK's own
    # instructions per block), measured at this commit in the comment
    "decode-request-all-indexed": 300,     # 221: the target, well under 300
    "decode-request-h2load": 520,          # 434: :path a Huffman-coded literal
    "decode-request-ours": 380,            # 316
    "decode-response": 360,                # 297
    "encode-response": 640,                # 532: the target was ~400
    "encode-request": 720,                 # 597
}


def callgrind_counts(exe, case, n, tmp_path):
    """(all instructions, those inside hpack_* calls) of one run."""
    out = tmp_path / f"cg.{case}.{n}"
    p = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", exe, case,
                        str(n)], capture_output=True, text=True, check=True)
    total = int(re.search(r"refs:\s*([\d,]+)", p.stderr)[1].replace(",", ""))
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out)], capture_output=True,
                         text=True, check=True).stdout
    ours = sum(int(m[1].replace(",", "")) for m in re.finditer(
        r"^\s*([\d,]+) .*:hpack_(?:encode|decode|dec_begin|encode_begin) ", ann, re.M)
        if "=>" not in m[0])
    return total, ours


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("UPROXY_HPACK_BENCH") != "1",
                    reason="set UPROXY_HPACK_BENCH=1 (needs valgrind): instructions per block")
def test_instructions_per_block(tmp_path):
    """bench/hpack_cost.c under callgrind: instructions per header block
    with a warm table, all of them and HPACK's own (inclusive of the hpack_*
    calls), as the difference of two runs (setup cancels out). For scale,
    nghttp2 1.52 measured the same way (its deflater and inflater, the same
    blocks): 1,466 to encode the response, 1,654 the request, 1,806 to
    decode its own response block and 2,026 its request block."""
    import build_hpack_harness as b
    exe = str(tmp_path / "hpack_cost")
    flags = [f for f in b._flags() if f.startswith(("-O", "-std", "-D", "-W", "-f"))]
    subprocess.run(["gcc", *flags, "-I", b.NATIVE, os.path.join(ROOT, "bench", "hpack_cost.c"),
                    os.path.join(b.NATIVE, "http2", "hpack.c"),
                    os.path.join(b.NATIVE, "http2", "hpack_huff.c"), "-o", exe], check=True)
    rows, over = [], []
    for case, limit in BENCH_CASES.items():
        (t1, o1), (t2, o2) = (callgrind_counts(exe, case, n, tmp_path) for n in (1000, 3000))
        total, ours = (t2 - t1) / 2000, (o2 - o1) / 2000
        rows.append(f"{case:28} {total:6.0f} {ours:6.0f}")
        if ours > limit:
            over.append(f"{case}: {ours:.0f} > {limit}")
    print("\ncase                         all  hpack\n" + "\n".join(rows))
    assert not over, over
