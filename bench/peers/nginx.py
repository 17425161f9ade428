"""nginx (Debian's package), as a reverse proxy with one worker.

Tuning, from nginx's documentation: upstream keep-alive (an upstream block
with `keepalive`, `proxy_http_version 1.1` and an empty Connection header),
no access log, error log at `error`, generous keepalive_requests. The
"bigbuf" contender also raises the proxy buffers (stock: one 4 KiB header
buffer and 8 x 4 KiB body buffers, which costs nginx about half its 64 KiB
throughput) and the stream module's proxy_buffer_size (stock 16 KiB).

TLS (the TLS workloads' listener), from nginx's "Configuring HTTPS servers"
(HTTPS server optimization): a shared session cache (ssl_session_cache
shared:SSL:10m, ssl_session_timeout 10m) and session tickets (on by
default); TLS 1.2 and 1.3, the TLS 1.3 suite TLS_AES_128_GCM_SHA256 (through
ssl_conf_command), X25519 first; the same location, and so the same
upstream keep-alive, as the plaintext listener.

gRPC (the gRPC workload's listener), from ngx_http_grpc_module's
documentation: `listen ... http2` and `grpc_pass grpc://` to an upstream
block with `keepalive` (nginx opens one HTTP/2 connection per call in
flight and keeps them: it does not multiplex calls upstream).
"""
from __future__ import annotations

import os
import shutil
import subprocess

from . import GRPC_WORKLOADS, H2_WORKLOADS, L4S_WORKLOADS, TLS_SUITE, Contender, write

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def nginx_missing() -> str | None:
    if not os.path.exists(NGINX):
        return "nginx is not installed (Debian: apt-get install nginx, or scripts/setup --bench)"
    return None


def nginx_version() -> str:
    try:
        out = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr
        return out.strip().split("/")[-1]
    except OSError:
        return ""


def common_main(d: str, workers: int) -> str:
    return f"""worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log error;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
"""


def temp_paths(d: str) -> str:
    return (f"  client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n"
            f"  fastcgi_temp_path {d}/tmp-fcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n"
            f"  scgi_temp_path {d}/tmp-scgi;\n")


class Nginx(Contender):
    name = "nginx"
    family = "nginx"
    label = "nginx"
    tuning = "upstream keepalive 256, proxy_http_version 1.1, access_log off; stock proxy buffers"
    tls_tuning = ("ssl_session_cache shared:SSL:10m, ssl_session_timeout 10m, ssl_session_tickets on; "
                  "ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256, ssl_ecdh_curve X25519:prime256v1")
    bigbuf = False
    policies = False
    # The common set of per-route policies (issue 16), as nginx writes them:
    # the same as uproxy-policies' route (bench/peers/uproxy.py).
    ZONE = "  limit_req_zone $binary_remote_addr zone=perip:10m rate=1000000r/s;\n"
    POLICIES = ("      proxy_set_header X-Env bench;\n"
                "      add_header X-Served-By nginx;\n"
                "      rewrite ^ /64 break;\n"
                "      allow 127.0.0.0/8;\n      deny all;\n"
                "      limit_req zone=perip burst=1000000 nodelay;\n")
    grpc_tuning = ("listen ... http2, grpc_pass grpc:// to an upstream with keepalive 256 "
                   "(one upstream connection per call in flight)")
    h2_tuning = "listen ... http2 (h2c) and listen ... ssl http2 (ALPN h2), the same location and TLS settings"
    workloads = ("idle", "http64", "http64k", "rate", "newconn", "l4_1", "l4_64",
                 "tls64", "tls64k", "tls_full", "tls_resume") + H2_WORKLOADS + GRPC_WORKLOADS + L4S_WORKLOADS

    def missing(self):
        return nginx_missing()

    def version(self):
        return nginx_version()

    def skip(self, workload):
        if workload.startswith("l4") and not os.path.exists(STREAM_MODULE):
            return "no stream module (Debian: apt-get install libnginx-mod-stream)"
        return super().skip(workload)

    def render(self):
        d, c = self.dir, self.ctx
        buffers = ("      proxy_buffer_size 64k;\n      proxy_buffers 4 64k;\n"
                   "      proxy_busy_buffers_size 128k;\n") if self.bigbuf else ""
        sbuf = "    proxy_buffer_size 256k;\n" if self.bigbuf else ""
        location = f"""    location / {{
{self.POLICIES if self.policies else ""}      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
{buffers}    }}
"""
        tls = ""
        ssl = f"""    ssl_certificate {c.tls_cert};
    ssl_certificate_key {c.tls_key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_conf_command Ciphersuites {TLS_SUITE};
    ssl_ecdh_curve X25519:prime256v1;
    ssl_session_cache shared:SSL:10m;
    ssl_session_timeout 10m;
    ssl_session_tickets on;
"""
        # HTTP/2 (G8): the same location; nginx 1.22 takes `http2` on listen
        if self.wants_h2c():
            tls += f"""  server {{
    listen 127.0.0.1:{self.h2c_port} http2 backlog=4096;
{location}  }}
"""
        if self.wants_h2s():
            tls += f"""  server {{
    listen 127.0.0.1:{self.h2s_port} ssl http2 backlog=4096;
{ssl}{location}  }}
"""
        if self.wants_grpc():
            tls += f"""  upstream grpc_up {{
    server 127.0.0.1:{c.grpc_upstream_port};
    keepalive 256;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{self.grpc_port} http2 backlog=4096;
    location / {{
      grpc_pass grpc://grpc_up;
    }}
  }}
"""
        if self.wants_tls():
            tls += f"""  server {{
    listen 127.0.0.1:{self.https_port} ssl backlog=4096;
{ssl}{location}  }}
"""
        stream = ""
        if os.path.exists(STREAM_MODULE):
            # short L4 sessions (l4_short): a stream server in front of the HTTP origin
            short = f"""  server {{
    listen 127.0.0.1:{self.l4s_port} backlog=4096;
    proxy_pass 127.0.0.1:{c.upstream_port};
  }}
""" if self.wants_l4s() else ""
            stream = f"""
stream {{
  server {{
    listen 127.0.0.1:{self.l4_port} backlog=4096;
    proxy_pass 127.0.0.1:{c.iperf_port};
{sbuf}  }}
{short}}}
"""
        conf = (f"load_module {STREAM_MODULE};\n" if stream else "") + common_main(d, 1) + f"""
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
{temp_paths(d)}
{self.ZONE if self.policies else ""}  upstream up {{
    server 127.0.0.1:{c.upstream_port};
    keepalive 256;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{self.http_port} backlog=4096;
{location}  }}
{tls}}}
""" + stream
        write(os.path.join(d, "nginx.conf"), conf)
        return [NGINX, "-p", d, "-e", os.path.join(d, "error.log"), "-c", os.path.join(d, "nginx.conf")]


class NginxBigbuf(Nginx):
    name = "nginx-bigbuf"
    label = "nginx, larger buffers"
    tuning = ("as nginx, plus proxy_buffer_size 64k, proxy_buffers 4 64k, proxy_busy_buffers_size 128k; "
              "stream proxy_buffer_size 256k")
    bigbuf = True
    workloads = ("http64k", "l4_1", "l4_64", "tls64k")
    skip_reasons = {w: "same as nginx (buffer sizes matter for large bodies and streams only)"
                    for w in ("idle", "http64", "rate", "newconn", "tls64", "tls_full", "tls_resume")
                    + H2_WORKLOADS + GRPC_WORKLOADS + L4S_WORKLOADS}


class NginxPolicies(Nginx):
    """nginx with the common set of policies on its location, as
    uproxy-policies has on its route: against plain nginx it is the cost of
    nginx's equivalents."""
    name = "nginx-policies"
    label = "nginx, policies"
    tuning = ("as nginx, the location with proxy_set_header, add_header, rewrite ^ /64 break, "
              "allow 127.0.0.0/8 + deny all, limit_req (never reached)")
    family = "nginx-policies"        # a row of its own, outside the gates' best peer
    policies = True
    workloads = ("http64",)
    skip_reasons = {w: "only http64 measures the policies' cost"
                    for w in ("idle", "http64k", "rate", "newconn", "l4_1", "l4_64", "tls64", "tls64k",
                              "tls_full", "tls_resume") + H2_WORKLOADS + GRPC_WORKLOADS + L4S_WORKLOADS}
