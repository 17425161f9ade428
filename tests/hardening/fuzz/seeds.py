"""Writes the seed corpora of the fuzz targets (tests/hardening/fuzz/corpus/<target>/).
Run once when seeds change: python3 tests/hardening/fuzz/seeds.py. libFuzzer adds the
inputs it finds to the same folders; seeds are named seed-*.

The request and response harnesses take one leading byte that picks the
limits (and, for responses, the request method); seeds use 0 (defaults,
GET) and a few others. The clienthello harness's leading byte says how the
rest is framed (0: as sent; 1 and 2: a ClientHello body the harness wraps);
its seeds are ClientHellos real clients sent (Python's ssl, openssl
s_client), made anew each run, so name the targets to write:
python3 tests/hardening/fuzz/seeds.py clienthello."""
import hashlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88\r\nAccept: */*\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 005\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Custom, Content-Length\r\nX-Custom: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"PUT /u HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    b"GET http://example.com/path HTTP/1.1\r\nHost: other\r\n\r\n",
    b"GET http://example.com:8080 HTTP/1.1\r\nHost: \r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTrailer: X\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nValue: caf\xc3\xa9\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: a\r\nHOST: b\r\n\r\n",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 200 Connection established\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbad",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 999 Odd reason \xff\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HELLO THERE\r\n\r\n",
]

CHUNKED = [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;ext=1\r\nhello\r\n3 ; a = \"q\\\"x\" ; b\r\nabc\r\n0\r\nX-Trailer: yes\r\nY: z\r\n\r\n",
    b"000000000000000000005\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
    b"fffffffffffffff\r\n",
    b"ffffffffffffffff\r\n",
    b"5\nhello\n0\n\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"0\r\n\r\nPOST /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    b"1\r\nA\r\n1\r\nB\r\n0\r\nT: 1\r\n\r\n",
    b"0\r\n X: folded\r\n\r\n",
    b"a\r\n0123456789\r\n0;last\r\n\r\n",
]


# HPACK (fuzz_hpack.c). Decoding (first byte even): per block an op byte,
# two bytes of length, the block; RFC 7541 Appendix C's sequences, C.5 and
# C.6 after lowering the limit to 256 (op 9) and saying so in the block.
HPACK_RFC = [
    ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", "8286 84be 5808 6e6f 2d63 6163 6865",
     "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"],
    ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", "8286 84be 5886 a8eb 1064 9cbf",
     "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"],
    ["3fe101 4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
     "2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63"
     "6f6d", "4803 3330 37c1 c0bf",
     "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04"
     "677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49"
     "553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31"],
    ["3fe101 4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b"
     "ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3", "4883 640e ffc1 c0bf",
     "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7"
     "821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed"
     "4ee5 b106 3d50 07"],
]


def hpack_seeds():
    out = []
    for i, blocks in enumerate(HPACK_RFC):
        for scratch in (0, 0x50):        # 0x50: a scratch of 3 bytes, too small for most strings
            data = b"\x00"
            for k, hexblock in enumerate(blocks):
                block = bytes.fromhex(hexblock.replace(" ", ""))
                op = (9 if i >= 2 and k == 0 else 0) | scratch
                data += bytes([op]) + len(block).to_bytes(2, "big") + block
            out.append(data)
    # Round trips (first byte odd): per block an op byte (bits 0-1: limit
    # changes, a byte each; bits 2-5: fields), then per field a name byte
    # (odd: a known name), a value byte (bits 3-7: its length) and a flags
    # byte (1: none; 0 then 1: never indexed).
    response = (b"\x01\x18" b"200" b"\x01" b"\x0f\x60" b"nginx/1.22.1" b"\x01"
                b"\x0d\xe8" b"Tue, 14 May 2024 10:00:00 GMT" b"\x01"
                b"\x0b\x50" b"text/plain" b"\x01" b"\x09\x10" b"64" b"\x01")
    out.append(b"\x01" + bytes([5 << 2 | 1, 3]) + response + bytes([5 << 2]) + response)
    out.append(b"\x01" + bytes([3 << 2]) + b"\x11\x18a=b\x00\x01" + b"\x15\x20abcd\x01"
               + b"\x02x\x0f\x01")
    out.append(b"\x01" + (bytes([2 << 2 | 2, 0, 6]) + b"\x1d\x07\x01" * 2) * 2)
    return out


def write(target, items, prefixes):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for item in items:
        for pre in prefixes:
            data = pre + item
            name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)


def clienthellos():
    """(as sent, body only) ClientHellos of real clients and a few made by
    hand at the edges of the format."""
    import ssl
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "lib"))
    import clienthellos as ch
    sent = [
        ch.python_hello("db.example.com"),
        ch.python_hello(None),
        ch.python_hello("a.b.example.com", max_version=ssl.TLSVersion.TLSv1_2),
        ch.python_hello("xn--bcher-kva.example", alpn=["h2", "http/1.1"]),
        ch.python_hello("x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "w" * 61),
        ch.openssl_hello("-servername", "db.example.com"),
        ch.openssl_hello("-noservername"),
        ch.openssl_hello("-servername", "api.example.com", "-tls1_2"),
        ch.hello("db.example.com", session_id=b""),
        ch.hello(extra=ch.ext(0x10, b"\x00\x03\x02h2")),
        ch.frame(ch.handshake(ch.hello_body(None)), [16384]),           # no extensions at all
        # a host name and a name of another type in one list
        ch.frame(ch.handshake(ch.hello_body(ch.ext(0, b"\x00\x12" b"\x00\x00\x09x.example"
                                                      b"\x01\x00\x03abc"))), [16384]),
    ]
    sent.append(ch.frame(ch.message_of(sent[0]), [7]))          # tiny records
    sent.append(ch.frame(ch.message_of(sent[5]), [2, 100]))     # the header split
    bodies = [ch.message_of(h)[4:] for h in sent[:4]]
    return sent, bodies


if __name__ == "__main__":
    targets = sys.argv[1:] or ["request", "response", "chunked", "hpack"]
    if "request" in targets:
        write("request", REQUESTS, [b"\x00", b"\x01"])
    if "response" in targets:
        write("response", RESPONSES, [b"\x00", b"\x01", b"\x02", b"\x04"])
    if "chunked" in targets:
        write("chunked", CHUNKED, [b""])
    if "hpack" in targets:
        write("hpack", hpack_seeds(), [b""])
    if "clienthello" in targets:
        sent, bodies = clienthellos()
        write("clienthello", sent, [b"\x00"])
        write("clienthello", bodies, [b"\x01", b"\x02"])
    print("seeds written")
