"""The bench's gRPC workload judges each call from nghttp's frame log and
each run from h2load's counts (bench/grpc.py, bench/workloads.py): a
proxy that drops the trailers or answers with a gRPC error must fail the
run, not score. Pure: canned logs."""
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench import grpc  # noqa: E402
from bench.workloads import grpc_calls_short  # noqa: E402

HEAD = """[  0.003] recv (stream_id=13) :status: 200
[  0.003] recv (stream_id=13) server: nginx/1.22.1
[  0.003] recv (stream_id=13) date: Tue, 01 Dec 2026 06:44:51 GMT
[  0.003] recv (stream_id=13) content-type: application/grpc
[  0.003] recv HEADERS frame <length=110, flags=0x04, stream_id=13>
          ; END_HEADERS
          (padlen=0)
          ; First response header
[  0.003] send SETTINGS frame <length=0, flags=0x01, stream_id=0>
          ; ACK
"""
DATA = "[  0.004] recv DATA frame <length=69, flags=0x00, stream_id=13>\n"
TRAILERS = """[  0.004] recv (stream_id=13) grpc-status: 0
[  0.004] recv HEADERS frame <length=12, flags=0x05, stream_id=13>
          ; END_STREAM | END_HEADERS
"""


def test_frame_is_length_prefixed():
    assert grpc.frame(b"abc") == b"\x00" + struct.pack(">I", 3) + b"abc"
    assert len(grpc.RESPONSE) == 5 + grpc.MESSAGE_BYTES


def test_whole_call_passes():
    ex = grpc.parse_nghttp(HEAD + DATA + TRAILERS)
    assert ex["head"][":status"] == "200"
    assert ex["data"] == 69
    assert ex["trailers"] == {"grpc-status": "0"}
    assert grpc.judge(ex) is None


def test_missing_trailers_fail():
    why = grpc.judge(grpc.parse_nghttp(HEAD + DATA.replace("flags=0x00", "flags=0x01")))
    assert why and "trailers" in why


def test_error_status_in_trailers_fails():
    why = grpc.judge(grpc.parse_nghttp(HEAD + DATA + TRAILERS.replace("grpc-status: 0", "grpc-status: 13")))
    assert why and "grpc-status 13" in why


def test_trailers_only_error_fails():
    head = HEAD.replace("[  0.003] recv HEADERS",
                        "[  0.003] recv (stream_id=13) grpc-status: 14\n[  0.003] recv HEADERS")
    why = grpc.judge(grpc.parse_nghttp(head))
    assert why and "trailers-only" in why and "14" in why


def test_short_message_and_wrong_type_fail():
    assert "bytes of DATA" in grpc.judge(grpc.parse_nghttp(HEAD + DATA.replace("69", "40") + TRAILERS))
    assert "content-type" in grpc.judge(grpc.parse_nghttp(HEAD.replace("application/grpc", "text/html")
                                                          + DATA + TRAILERS))
    assert grpc.judge(grpc.parse_nghttp("")) == "no response"


def _run(ok, data, not_2xx=0, errors=0):
    return {"requests": ok, "data_bytes": data, "status_not_2xx": not_2xx, "errors": errors}


def test_run_counts():
    n = len(grpc.RESPONSE)
    assert grpc_calls_short(_run(1000, 1000 * n), 160) is None
    # calls in flight at the end may have sent their DATA uncounted, or not
    assert grpc_calls_short(_run(1000, 1100 * n), 160) is None
    assert grpc_calls_short(_run(1000, 900 * n), 160) is None
    # half the calls were trailers-only errors (HTTP 200, no DATA)
    assert "carried" in grpc_calls_short(_run(1000, 500 * n), 160)
    assert "other than 2xx" in grpc_calls_short(_run(1000, 1000 * n, not_2xx=3), 160)
    assert "no status codes" in grpc_calls_short({"requests": 10, "data_bytes": None,
                                                  "status_not_2xx": 0, "errors": 0}, 160)


def _res():
    """A run of grpc_unary alone, two contenders, one round."""
    from bench import report
    conts = {n: {"label": lab, "family": n, "tuning": "", "missing": None, "skipped": {},
                 "h2_tuning": "h2 " + n, "grpc_tuning": "grpc " + n}
             for n, lab in (("uproxy", "uproxy"), ("nginx", "nginx"))}
    row = {"uproxy": {"grpc_unary": {"requests": 9000, "rps": 18000.0, "cpu_us_per_req": 16.8, "mean_ms": 8.4}},
           "nginx": {"grpc_unary": {"requests": 2500, "rps": 5000.0, "cpu_us_per_req": 60.1, "mean_ms": 31.7}}}
    res = {"started": "now", "machine": {"cpu": "cpu", "cpus": 2, "kernel": "k"},
           "settings": {"rounds": 1, "duration": 5}, "cpus": {"proxy": [1], "load": [0]},
           "contenders": conts, "rounds": [row], "workloads": ["grpc_unary"], "gates": []}
    res["summary"] = report.summarize(res)
    return res


def test_report_h2_section_carries_the_call_rate():
    from bench import report
    md = report.h2_md(_res())
    assert "| uproxy | 16.8, 18,000 |" in md          # CPU-µs/call, calls/s per proxy
    assert "| nginx | grpc nginx |" in md             # each proxy's gRPC settings
    assert "HTTP/2 settings" not in md                # no h2load workload in this run
    assert "reported, not gated" in md
    # the tables of the rest of the page leave it to this section
    assert "gRPC unary" not in report.tables(_res(), tls=False)
