"""What the TLS workloads need beside the contenders: the run's certificate,
the crypto floor of a full handshake (`openssl speed`), and the library
comparison (bench/tls_libs.c, built once per library found).

The certificate: ECDSA P-256, self-signed, for localhost and 127.0.0.1,
made with the openssl command into the run's directory; every contender
serves the same one. HAProxy wants the certificate and key in one file
(tls.pem).

The floor: a full TLS 1.3 handshake with an ECDSA P-256 certificate and
X25519 costs the server at least one P-256 signature (CertificateVerify)
and two X25519 scalar multiplications (its key share, then the shared
secret); a resumed one (psk_dhe_ke) the two X25519 operations only.
`openssl speed -mr ecdsap256 ecdhx25519`, pinned to the proxy CPU, prices
them on this machine (OpenSSL's figure for X25519 is one derive, one scalar
multiplication; key generation is another).
"""
from __future__ import annotations

import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))

WOLFSSL_HEADER = "/usr/include/wolfssl/ssl.h"


def make_cert(ctx) -> dict:
    d = os.path.join(ctx.run_dir, "tls")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    cert, key, pem = (os.path.join(d, n) for n in ("cert.pem", "key.pem", "tls.pem"))
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "365", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl req failed: {r.stderr.strip()[-300:]}")
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    # The proxies run as root here, but a proxy that drops privileges must
    # still read its key at start.
    for p in (cert, key, pem):
        os.chmod(p, 0o644)
    ctx.tls_cert, ctx.tls_key, ctx.tls_pem = cert, key, pem
    # wrk has no option for its TLS settings; OpenSSL's configuration file
    # (OPENSSL_CONF, for wrk's process only) makes it offer what loadgen
    # offers. Without it wrk offers OpenSSL's default order, AES-256-GCM
    # first, and a server that follows the client's order (BoringSSL:
    # Envoy) would encrypt with AES-256 where the others use AES-128.
    conf = os.path.join(d, "client-openssl.cnf")
    with open(conf, "w") as f:
        f.write("openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n[ssl_sect]\n"
                "system_default = system_default_sect\n[system_default_sect]\nMinProtocol = TLSv1.3\n"
                "Ciphersuites = TLS_AES_128_GCM_SHA256\nGroups = X25519\n")
    ctx.tls_client_conf = conf
    return {"cert": cert, "key": key, "pem": pem, "client_conf": conf,
            "kind": "ECDSA P-256 (prime256v1), self-signed, subjectAltName DNS:localhost, IP:127.0.0.1"}


def crypto_floor(ctx, seconds=1) -> dict:
    """P-256 sign and X25519, one each, in microseconds, on the proxy CPU."""
    cpus = ",".join(map(str, ctx.proxy_cpus))
    argv = ["taskset", "-c", cpus, "openssl", "speed", "-seconds", str(seconds), "-mr", "ecdsap256", "ecdhx25519"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"openssl speed: {e}"}
    sign = x25519 = None
    for line in r.stdout.splitlines():
        f = line.split(":")
        # +F4:<idx>:<bits>:<sign/s>:<verify/s> (ECDSA); +F5:<idx>:<bits>:<ops/s> (ECDH)
        if line.startswith("+F4:") and len(f) >= 5 and f[2] == "256":
            sign = 1e6 / float(f[3])
        elif line.startswith("+F5:") and len(f) >= 4 and f[2] == "253":
            x25519 = 1e6 / float(f[3])
    if sign is None or x25519 is None:
        return {"error": f"openssl speed gave no figure (exit {r.returncode}): {r.stderr.strip()[-300:]}"}
    ver = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    return {"p256_sign_us": sign, "x25519_us": x25519, "full_us": sign + 2 * x25519, "resumed_us": 2 * x25519,
            "openssl": ver, "command": " ".join(argv[3:])}


def _libraries():
    """(name, gcc flags, why not) for each library the comparison knows."""
    out = [("OpenSSL", ["-DLIB_OPENSSL", "-lssl", "-lcrypto"], None)]
    if os.path.exists(WOLFSSL_HEADER):
        out.append(("wolfSSL", ["-DLIB_WOLFSSL", "-lwolfssl"], None))
    else:
        out.append(("wolfSSL", None, "libwolfssl-dev is not installed (scripts/setup --bench installs it)"))
    why = ("Debian 12 packages mbedTLS 2.28 LTS only, which has no TLS 1.3 (its config.h: \"TLS 1.3 and "
           "DTLS 1.3 aren't yet supported in Mbed TLS\"; TLS 1.3 came with 3.x)")
    out.append(("mbedTLS", None, why))
    return out


def _median_row(rows):
    """Per-figure medians of a library's rounds (every number in the JSON)."""
    import statistics

    def merge(vals):
        if isinstance(vals[0], dict):
            return {k: merge([v[k] for v in vals]) for k in vals[0]}
        if isinstance(vals[0], (int, float)) and not isinstance(vals[0], bool):
            return statistics.median(vals)
        return vals[0]
    out = merge(rows)
    out["rounds"] = len(rows)
    out["full"]["server_us_range"] = [min(r["full"]["server_us"] for r in rows),
                                      max(r["full"]["server_us"] for r in rows)]
    out["resumed"]["server_us_range"] = [min(r["resumed"]["server_us"] for r in rows),
                                         max(r["resumed"]["server_us"] for r in rows)]
    return out


def compare_libraries(ctx, seconds, say, rounds=3) -> dict:
    """Builds bench/tls_libs.c per library and runs each on the proxy CPU,
    OpenSSL a second time with SSL_MODE_RELEASE_BUFFERS (nginx's setting);
    the runs interleaved over rounds, each figure the median of its rounds."""
    res = {"seconds": seconds, "rounds": rounds, "rows": [], "not_run": {}}
    cpus = ",".join(map(str, ctx.proxy_cpus))
    runs = []
    for name, flags, why in _libraries():
        if flags is None:
            res["not_run"][name] = why
            continue
        exe = os.path.join(ctx.run_dir, f"tls_libs-{name.lower()}")
        src = os.path.join(HERE, "tls_libs.c")
        b = subprocess.run(["gcc", "-O2", "-Wall", "-rdynamic", "-o", exe, src, *flags, "-ldl"],
                           capture_output=True, text=True)
        if b.returncode != 0:
            res["not_run"][name] = f"did not build: {b.stderr.strip()[-300:]}"
            continue
        runs.append((name, exe, []))
        if name == "OpenSSL":
            runs.append((name + ", SSL_MODE_RELEASE_BUFFERS", exe, ["-R"]))
    got = {name: [] for name, _, _ in runs}
    for rnd in range(rounds):
        for name, exe, extra in runs:
            argv = ["taskset", "-c", cpus, exe, "-c", ctx.tls_cert, "-k", ctx.tls_key, "-t", str(seconds),
                    "-n", "50000" if seconds >= 1 else "20000", *extra]
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
                got[name].append(json.loads(r.stdout))
            except (OSError, ValueError, subprocess.SubprocessError) as e:
                res["not_run"][name] = f"failed: {e}; {getattr(r, 'stderr', '')[-300:]}"
    for name, _, _ in runs:
        if not got[name]:
            continue
        row = _median_row(got[name])
        row["name"] = name
        res["rows"].append(row)
        say(f"  tls_libs {row['name']}: full {row['full']['server_us']:.0f} µs, resumed "
            f"{row['resumed']['server_us']:.0f} µs (server side), keep-alive round trip "
            f"{row['keepalive']['server_us']:.2f} µs, {row['keepalive']['server_allocs']:.1f} allocs; "
            f"16 KiB seal {row['records16k']['seal_mb_s']:.0f} MB/s (median of {row['rounds']})")
    return res
