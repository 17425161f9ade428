"""io_uring features uproxy uses when the kernel has them, and kTLS.

Each can be switched off (``[proxy] disable_features`` or
``UPROXY_DISABLE=a,b``); switching off the post-5.15 ones makes the worker
take the same fallback paths it takes on a Linux 5.15 kernel.
"""
import os
import platform
import re

# name -> (bit in native/api.h, the kernel that brought it)
_TABLE = {
    "multishot_accept": (1, "5.19"),
    "buf_ring": (2, "5.19"),
    "multishot_recv": (4, "6.0"),
    "single_issuer": (8, "6.0"),
    "defer_taskrun": (16, "6.1"),
    "coop_taskrun": (32, "5.19"),
    "registered_files": (64, "5.1"),
    "registered_ring": (128, "5.18"),
    # A multishot receive with a byte limit (the SQE's optlen), after which
    # it ends: an HTTP/2 stream's upstream keeps one armed across requests
    # with its memory still bounded (docs/http2.md). Older kernels refuse
    # the field (EINVAL); the worker then arms one receive per response.
    "multishot_recv_limit": (2048, "6.17"),
    # A busy worker's wait asks the kernel for a batch of completions
    # (io_uring_enter's min_wait_usec, IORING_FEAT_MIN_TIMEOUT): fewer,
    # fuller loop turns under load (docs/architecture.md, the loop).
    # Older kernels: every wait returns at the first completion.
    "batched_wait": (8192, "6.12"),
    # A connection's socket also sits in the ring's file table (a sparse
    # table registered at start, filled and emptied by IORING_OP_FILES_UPDATE
    # requests that post no completion when they succeed), and its receives,
    # sends and polls name it there (IOSQE_FIXED_FILE): the kernel skips
    # fget/fput on each (docs/http2.md). Off: every op looks its fd up.
    # 6.13: before it a file taken out of the table stayed open while any
    # request issued earlier was pending (probed by its behaviour).
    "fixed_sockets": (32768, "6.13"),
    # Kernel TLS: present only where the kernel is built with CONFIG_TLS
    # (the `tls` module), whatever its version; detected by the TLS layer.
    "ktls": (256, "4.17"),
    # kTLS receiving (TLS_RX) beside sending; needs "ktls". Off: the
    # kernel encrypts, the library still decrypts (docs/tls.md).
    "ktls_rx": (1024, "4.17"),
    # forwarding = "sockmap": the program (bpf/sockmap.c) loaded by the
    # control plane at start; 6.4 has the sockmap fixes it relies on
    # (src/uproxy/sockmap.py says why it could not load).
    "sockmap": (512, "6.4"),
    # TLS 1.3 records sealed by uproxy itself rather than by SSL_write (no
    # copy of the response through the library's buffers; docs/tls.md);
    # no kernel need, on by default. Off: the library writes every record.
    "tls_seal": (4096, "5.15"),
    # TLS 1.3 records opened by uproxy itself rather than by SSL_read, where
    # it seals them too (docs/tls.md); on by default. Off: the library
    # decrypts every record.
    "tls_open": (16384, "5.15"),
    # Where uproxy opens a client's TLS records itself the library holds
    # nothing back, so the connection keeps one multishot receive armed,
    # as a plain one does (docs/tls.md); needs "multishot_recv" and
    # "tls_open". Off: one receive armed per record read.
    "tls_multishot": (65536, "6.0"),
    # Clients' HTTP/2 connections framed, compressed (HPACK) and
    # flow-controlled by uproxy's own codec (native/http2/h2_sess.h,
    # docs/http2.md); no kernel need, on by default. Off: nghttp2 for them
    # too (it always serves the connections toward HTTP/2 upstreams).
    "h2_codec": (131072, "5.15"),
}
FEATURES = tuple(_TABLE)
# What a 5.15 kernel lacks: disabling these exercises its code paths.
POST_5_15 = tuple(n for n, (_, v) in _TABLE.items()
                  if tuple(map(int, v.split("."))) > (5, 15))
MIN_KERNEL = (5, 15)


def bit(name: str) -> int:
    return _TABLE[name][0]


def since(name: str) -> str:
    return _TABLE[name][1]


def names(mask: int) -> list:
    return [n for n, (b, _) in _TABLE.items() if mask & b]


def mask(names_) -> int:
    m = 0
    for n in names_:
        m |= _TABLE[n][0]
    return m


def from_env(env=None) -> list:
    """Feature names listed in UPROXY_DISABLE; 'post-5.15' stands for all
    the features a 5.15 kernel lacks. Unknown names raise ValueError."""
    raw = (env if env is not None else os.environ).get("UPROXY_DISABLE", "")
    out = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        if part in ("post-5.15", "5.15"):
            out.extend(POST_5_15)
        elif part in _TABLE:
            out.append(part)
        else:
            raise ValueError(f"UPROXY_DISABLE: {part!r} is not a feature; known: "
                             f"{', '.join(FEATURES)} or post-5.15")
    return out


def kernel_version(release: str | None = None) -> tuple:
    release = release or platform.release()
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def kernel_too_old(release: str | None = None) -> str | None:
    """A sentence saying why this kernel cannot run uproxy, or None."""
    release = release or platform.release()
    v = kernel_version(release)
    if v >= MIN_KERNEL:
        return None
    return (f"uproxy needs Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer for its io_uring "
            f"data path; this kernel is {release}. Upgrade the kernel (Debian 12 ships 6.1, "
            f"Ubuntu 22.04 ships 5.15), or test in the VM: scripts/vm-test.")
