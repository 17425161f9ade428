"""The gRPC unary workload's pieces that are not load: the messages, the
origin's server block, and the check of one call's exchange.

h2load counts a stream with a 2xx status as a success, and cannot see a
gRPC status: a proxy that answered every call with a trailers-only error
(HTTP 200, `grpc-status: 14`) or that dropped the trailers would score
full marks. So before and after each run one call goes through the proxy
with `nghttp -v`, whose frame log is read here: HTTP 200,
`content-type: application/grpc`, the whole response message in DATA, and
`grpc-status: 0` in trailers (a HEADERS frame after the DATA), or the run
is an error. During the run, h2load's DATA byte count says whether every
counted call carried its message (a trailers-only error carries none).
"""
from __future__ import annotations

import re
import struct
import subprocess

# The method every call names; any path would do for the origin (it
# answers every POST the same), a real one reads right in the proxies' logs.
PATH = "/bench.Echo/Call"
MESSAGE_BYTES = 64


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (not compressed), 4-byte
    big-endian length, the message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


# The origin's answer (the same to every call) and the calls' request body.
RESPONSE = frame(bytes(range(MESSAGE_BYTES)))
REQUEST = frame(bytes(range(MESSAGE_BYTES - 1, -1, -1)))
HEADERS = ("content-type: application/grpc", "te: trailers")


def origin_server(port: int, www: str) -> str:
    """The nginx origin's h2c server block: every POST gets RESPONSE, with
    `grpc-status: 0` as a trailer, after the whole request was read. nginx
    cannot put a NUL byte (the frame's first) in `return`'s text, and its
    static module answers POST with 405; so the POST is rewritten to the
    file and its 405 turned into a 200 that serves it (error_page makes the
    internal request a GET). A `mirror` (to a location that answers 204
    inside nginx) makes nginx read the request body first: a static answer
    sent before the request's DATA arrived ends with RST_STREAM(NO_ERROR),
    on a stream the proxy has already finished, which nginx's grpc_pass
    takes for an upstream error (a real gRPC server reads the request
    message before it answers)."""
    return f"""  server {{
    listen 127.0.0.1:{port} http2 backlog=4096;
    http2_max_concurrent_streams 1024;
    root {www};
    etag off;
    location = /grpc-response {{
      internal;
      default_type application/grpc;
      add_trailer grpc-status 0 always;
    }}
    location = /grpc-read-body {{
      internal;
      return 204;
    }}
    location / {{
      mirror /grpc-read-body;
      rewrite ^ /grpc-response break;
      error_page 405 =200 /grpc-response;
    }}
  }}
"""


def parse_nghttp(text: str) -> dict:
    """One stream's exchange from `nghttp -v`'s frame log: the response
    head, the DATA bytes, and the trailers (header fields received after
    the first HEADERS frame). nghttp prints a frame's fields before the
    frame's own line."""
    head, trailers, pending = None, None, {}
    data = 0
    for line in text.splitlines():
        m = re.search(r"\] recv \(stream_id=\d+\) ([^:\s][^:]*|:[a-z]+): (.*)$", line)
        if m:
            pending[m.group(1).strip().lower()] = m.group(2).strip()
            continue
        m = re.search(r"\] recv DATA frame <length=(\d+)", line)
        if m:
            data += int(m.group(1))
            continue
        if re.search(r"\] recv HEADERS frame", line):
            if head is None:
                head = pending
            else:
                trailers = {**(trailers or {}), **pending}
            pending = {}
    return {"head": head or {}, "data": data, "trailers": trailers or {}}


def judge(ex: dict) -> str | None:
    """None if the exchange is a successful unary call with the whole
    message, else what was wrong."""
    head, tr = ex["head"], ex["trailers"]
    if not head:
        return "no response"
    if head.get(":status") != "200":
        return f"HTTP status {head.get(':status')}"
    if not head.get("content-type", "").startswith("application/grpc"):
        return f"content-type {head.get('content-type')!r}"
    if "grpc-status" in head:
        return (f"a trailers-only response, grpc-status {head['grpc-status']} "
                f"({head.get('grpc-message', 'no grpc-message')})")
    if ex["data"] != len(RESPONSE):
        return f"{ex['data']} bytes of DATA, not the {len(RESPONSE)}-byte framed message"
    if "grpc-status" not in tr:
        return "no grpc-status trailer (the trailers did not come through)"
    if tr["grpc-status"] != "0":
        return f"grpc-status {tr['grpc-status']} ({tr.get('grpc-message', 'no grpc-message')})"
    return None


def check_call(url: str, request_file: str, nghttp: str = "nghttp", whole: bool = True) -> str | None:
    """One call to url with nghttp (h2c, prior knowledge): None if it
    succeeded as a gRPC call, else why not. whole=False asks only for an
    HTTP/2 response (a listener that is up; the workload judges the rest)."""
    argv = [nghttp, "-v", "-n", "-d", request_file]
    for h in HEADERS:
        argv += ["-H", h]
    try:
        r = subprocess.run(argv + [url], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nghttp {url}: {e}"
    text = r.stdout.decode("latin-1") + r.stderr.decode("latin-1")
    ex = parse_nghttp(text)
    why = judge(ex) if whole else (None if ex["head"] else "no response")
    return f"{url}: {why}" if why else None
