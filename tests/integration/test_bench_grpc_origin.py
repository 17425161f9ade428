"""The bench's gRPC origin (bench/upstream.py, bench/grpc.py): the nginx
origin's h2c gRPC listener answers a POSTed call with the framed 64-byte
message and grpc-status 0 in trailers, checked with nghttp as the bench
checks each proxy; and h2load's counts over a second of calls pass the
workload's own judgement. Real nginx, nghttp and h2load."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types

import pytest

from support import ROOT

sys.path.insert(0, ROOT)

from bench import grpc  # noqa: E402
from bench.env import Ctx  # noqa: E402
from bench.upstream import Upstream  # noqa: E402
from bench.workloads import grpc_calls_short  # noqa: E402

for _tool in ("nginx", "nghttp", "h2load", "taskset"):
    if not shutil.which(_tool) and not os.path.exists(f"/usr/sbin/{_tool}"):
        pytest.skip(f"{_tool} is not installed (scripts/setup --test)", allow_module_level=True)


@pytest.fixture
def origin():
    # nginx's workers may run as another user (www-data when started by
    # root): the files must be readable, so not under pytest's 0700 tmp_path.
    d = tempfile.mkdtemp(prefix="uproxy-bench-grpc-")
    os.chmod(d, 0o755)
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    args = types.SimpleNamespace(proxy_cpus=cpus, load_cpus=cpus, bench_venv=os.path.join(d, "venv"))
    ctx = Ctx(args, d)
    ctx.tools = {"iperf3": None}
    up = Upstream(ctx)
    try:
        up.start()
        yield ctx
    finally:
        up.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_origin_answers_a_grpc_call_with_trailers(origin):
    url = f"http://127.0.0.1:{origin.grpc_upstream_port}{grpc.PATH}"
    assert grpc.check_call(url, origin.grpc_request) is None
    # what the check read: the message in DATA, then grpc-status in trailers
    argv = ["nghttp", "-v", "-n", "-d", origin.grpc_request]
    for h in grpc.HEADERS:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], capture_output=True, timeout=10).stdout.decode("latin-1")
    ex = grpc.parse_nghttp(out)
    assert ex["data"] == len(grpc.RESPONSE)
    assert ex["trailers"].get("grpc-status") == "0"
    assert "grpc-status" not in ex["head"]


def test_check_names_a_call_that_is_not_grpc(origin):
    # the origin's HTTP/1.1 listener: no HTTP/2 answer at all
    why = grpc.check_call(f"http://127.0.0.1:{origin.upstream_port}{grpc.PATH}", origin.grpc_request)
    assert why and "no response" in why


def test_h2load_calls_pass_the_workload_judgement(origin):
    argv = ["h2load", "-c", "4", "-m", "10", "-t", "1", "-D", "1", "-d", origin.grpc_request]
    for h in grpc.HEADERS:
        argv += ["-H", h]
    out = subprocess.run(argv + [f"http://127.0.0.1:{origin.grpc_upstream_port}{grpc.PATH}"],
                         capture_output=True, text=True, timeout=30).stdout
    ok = int(re.search(r"(\d+) succeeded", out).group(1))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    data = int(re.search(r"traffic: .*\((\d+)\) data", out).group(1))
    assert ok > 100, out
    r = {"requests": ok, "data_bytes": data, "errors": 0,
         "status_not_2xx": sum(int(codes.group(i)) for i in (2, 3, 4))}
    assert grpc_calls_short(r, 40) is None, out
