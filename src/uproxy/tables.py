"""Turning a validated Config into the immutable C tables the workers read.

A Tables object owns every C allocation of one configuration generation
(cffi frees them when it is dropped) and its TLS library contexts (freed by
free(), or when dropped). It is published to the workers by one atomic
pointer store and dropped only when every worker has moved past it and no
session still holds it (see Runtime.collect).
"""
from __future__ import annotations

import os
import re
import socket
import struct

from . import tls
from ._native import ffi, lib
from .config import PAGE_STATUSES, REGEX_CAPTURES, Config, ConfigError, Policy, Route, locate

BALANCE = {"round_robin": lib.UP_BALANCE_ROUND_ROBIN, "least_conn": lib.UP_BALANCE_LEAST_CONN,
           "p2c": lib.UP_BALANCE_P2C, "hash": lib.UP_BALANCE_HASH}
RING_POINTS = 160       # points per unit of weight on a consistent-hash ring
MODE = {"tcp": lib.UP_MODE_TCP, "http": lib.UP_MODE_HTTP}
FORWARDING = {"buffered": lib.UP_FWD_BUFFERED, "splice": lib.UP_FWD_SPLICE,
              "splice_iowq": lib.UP_FWD_SPLICE_IOWQ, "sockmap": lib.UP_FWD_SOCKMAP}


def sockaddr(family, sa) -> bytes:
    if family == socket.AF_INET:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", sa[1]) + \
            socket.inet_pton(socket.AF_INET, sa[0]) + b"\0" * 8
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!H", sa[1]) + \
        struct.pack("=I", 0) + socket.inet_pton(socket.AF_INET6, sa[0].split("%")[0]) + \
        struct.pack("=I", sa[3] if len(sa) > 3 else 0)


class Strings:
    """Host names, path prefixes and header names, packed in one buffer the
    C side reads by (offset, length)."""

    def __init__(self):
        self.data = bytearray()

    def add(self, text: str) -> tuple:
        return self.add_bytes(text.encode())

    def add_bytes(self, raw: bytes) -> tuple:
        off = len(self.data)
        self.data += raw + b"\0"
        return off, len(raw)


def method_policy(methods, allow_connect: bool, strings: "Strings") -> tuple:
    """(bit mask of enum h1_method, deny_off, deny_len) for a route: the
    methods it allows, and the whole 405 answer with its Allow line for the
    others (deny_len 0 when no list was given: only CONNECT can be refused
    then, with 501)."""
    if methods is None:
        mask = 0xFFFFFFFF & ~(1 << lib.H1_M_CONNECT)
        if allow_connect:
            mask |= 1 << lib.H1_M_CONNECT
        return mask, 0, 0
    allowed = [m for m in METHOD_ORDER if m in methods or (m == "HEAD" and "GET" in methods)
               or (m == "CONNECT" and allow_connect)]
    mask = 0
    for m in allowed:
        mask |= 1 << getattr(lib, f"H1_M_{m}")
    body = "Method Not Allowed\n"
    text = ("HTTP/1.1 405 Method Not Allowed\r\nAllow: " + ", ".join(allowed) +
            "\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(body) + body)
    off, n = strings.add(text)
    return mask, off, n


# The order of an Allow line (GET brings HEAD, as nginx's limit_except and
# HAProxy's METH_GET do).
METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT")


def hash_ring(servers: list) -> list:
    """(hash, server index) points, sorted: each server gets RING_POINTS
    points per unit of weight, placed by the core's own hash function."""
    points = []
    for index, label, weight in servers:
        for i in range(RING_POINTS * weight):
            key = f"{label}#{i}".encode()
            points.append((lib.up_hash(key, len(key)), index))
    points.sort()
    return points


VERIFY = {"none": lib.UP_TLS_VERIFY_NONE, "optional": lib.UP_TLS_VERIFY_OPTIONAL,
          "required": lib.UP_TLS_VERIFY_REQUIRED}


def _cstr(text, keep):
    if text is None:
        return ffi.NULL
    buf = ffi.new("char[]", text.encode())
    keep.append(buf)
    return buf


def server_conf(t, ticket_keys: bytes, keep: list):
    """A listener's tls settings as a struct up_tls_server; every buffer it
    points into goes to keep."""
    conf = ffi.new("struct up_tls_server *")
    keep.append(conf)
    certs = ffi.new("struct up_tls_cert[]", max(1, len(t.certificates)))
    for j, c in enumerate(t.certificates):
        certs[j].cert = _cstr(c.cert, keep)
        certs[j].key = _cstr(c.key, keep)
    cert_ctx, names, ngroups = tls.group(t.certificates)
    c_ctx = ffi.new("uint32_t[]", cert_ctx or [0])
    c_names = ffi.new("struct up_tls_name[]", max(1, len(names)))
    for j, (name, g) in enumerate(names):
        c_names[j].name = _cstr(name, keep)
        c_names[j].ctx = g
    keep += [certs, c_ctx, c_names]
    conf.ncerts, conf.certs, conf.cert_ctx = len(t.certificates), certs, c_ctx
    conf.nctx = ngroups
    conf.names, conf.nnames = c_names, len(names)
    conf.min_version = tls.VERSIONS[t.min_version]
    conf.ciphers = _cstr(t.ciphers, keep)
    conf.ciphersuites = _cstr(t.ciphersuites, keep)
    conf.curves = _cstr(t.curves, keep)
    wire = tls.alpn_wire(t.alpn)
    if wire:
        alpn = ffi.new("uint8_t[]", wire)
        keep.append(alpn)
        conf.alpn, conf.alpn_len = alpn, len(wire)
    conf.verify = VERIFY[t.client_auth]
    conf.client_ca = _cstr(t.client_ca if t.client_auth != "none" else None, keep)
    if ticket_keys:
        keys = ffi.new("uint8_t[]", ticket_keys)
        keep.append(keys)
        conf.ticket_keys, conf.nticket_keys = keys, len(ticket_keys) // tls.TICKET_KEY_LEN
    conf.session_timeout_s = t.session_timeout_s
    conf.session_cache = t.session_cache
    # The transport writes a client certificate's facts down at the end of
    # each handshake only where a header will carry them.
    conf.peer_cert = 1 if (t.client_subject_header or t.client_fingerprint_header) else 0
    if t.acme:                          # an ACME listener answers acme-tls/1 (TLS-ALPN-01)
        conf.acme_alpn = 1
        chal = ffi.new("struct up_tls_acme[]", max(1, len(t.acme_alpn)))
        keep.append(chal)
        for j, (name, cert, key) in enumerate(t.acme_alpn):
            chal[j].name, chal[j].cert, chal[j].key = (_cstr(name, keep), _cstr(cert, keep),
                                                       _cstr(key, keep))
        conf.acme, conf.nacme = chal, len(t.acme_alpn)
    return conf


def client_conf(t, keep: list, alpn: tuple = ()):
    """A cluster's tls settings as a struct up_tls_client; alpn: the
    protocols offered (("h2",) for an HTTP/2 cluster, else none)."""
    conf = ffi.new("struct up_tls_client *")
    keep.append(conf)
    if alpn:
        wire = ffi.new("uint8_t[]", tls.alpn_wire(alpn))
        keep.append(wire)
        conf.alpn, conf.alpn_len = wire, len(tls.alpn_wire(alpn))
    conf.ca = _cstr(t.ca, keep)
    conf.sni = _cstr(t.sni, keep)
    if t.cert is not None:
        conf.cert = _cstr(t.cert.cert, keep)
        conf.key = _cstr(t.cert.key, keep)
    conf.verify = 1 if t.verify else 0
    conf.min_version = tls.VERSIONS[t.min_version]
    return conf


def _library_key(base: str, message: str, t) -> str:
    """Which key a library error is about, from the words it starts with
    (native/transport/tls_ctx.c), so that it is reported at that line."""
    if message.startswith("no usable TLS 1.2 cipher"):
        return f"{base}.ciphers"
    if message.startswith("no usable TLS 1.3 suite"):
        return f"{base}.ciphersuites"
    if message.startswith("no usable curve"):
        return f"{base}.curves"
    if message.startswith("client CA bundle"):
        return f"{base}.client_ca"
    if message.startswith("CA bundle"):
        return f"{base}.ca"
    if message.startswith(("client certificate", "client key")):
        return f"{base}.{'key' if 'key' in message.split()[1] else 'cert'}"
    mismatch = message.startswith("the private key does not match")
    for j, c in enumerate(getattr(t, "certificates", ())):
        for part, path in (("key", c.key), ("cert", c.cert)):
            if path in message:
                return f"{base}.certificates[{j}].{'key' if mismatch else part}"
    return base


def library_error(cfg: Config, base: str, message: str, t) -> ConfigError:
    """The library's refusal, placed at the key it is about, with the hint
    a file the process cannot read deserves (keys are often root's only,
    and [proxy] user makes the workers someone else)."""
    text = f"the TLS library refused it: {message}"
    for path in _files_of(t):
        if path in message:
            try:                        # OpenSSL 3 says "system lib": say what it was
                with open(path, "rb"):
                    pass
            except OSError as e:
                text += (f" ({e.strerror}; uproxy runs as uid {os.geteuid()} here: with "
                         f"[proxy] user, certificates and keys must be readable by that user)")
            break
    return locate(cfg.path, _library_key(base, message, t), text)


def _files_of(t) -> list:
    out = []
    for c in getattr(t, "certificates", ()):
        out += [c.key, c.cert]
    cert = getattr(t, "cert", None)
    if cert is not None:
        out += [cert.key, cert.cert]
    return out + [f for f in (getattr(t, "client_ca", None), getattr(t, "ca", None)) if f]


class TLSContexts:
    """The TLS library contexts of one configuration: for each TLS listener
    and each TLS cluster one context per worker (DESIGN.md law 8: nothing
    is shared between workers), each array ready for the core's tls field.
    A refusal of the library raises ConfigError after freeing what was made."""

    def __init__(self, cfg: Config, nworkers: int, ticket_keys: dict | None = None):
        self.keep: list = []
        self.owned: list = []           # ffi.gc'd contexts: ffi.release frees each once
        self.listeners: dict = {}       # listener name -> void *[nworkers]
        self.clusters: dict = {}        # cluster name -> void *[nworkers]
        ticket_keys = ticket_keys or {}
        err = ffi.new("char[]", 512)
        try:
            for i, l in enumerate(cfg.listeners):
                if l.tls is None:
                    continue
                keys = ticket_keys.get(l.name)
                if keys is None and l.tls.session_tickets:
                    keys = b"".join(l.tls.ticket_keys) or os.urandom(tls.TICKET_KEY_LEN)
                conf = server_conf(l.tls, keys or b"", self.keep)
                self.listeners[l.name] = self._per_worker(
                    lambda: lib.up_tls_server_new(conf, err, 512), nworkers, err,
                    cfg, f"listeners[{i}].tls", l.tls)
            for i, c in enumerate(cfg.clusters.values()):
                if c.tls is None:
                    continue
                conf = client_conf(c.tls, self.keep, ("h2",) if c.protocol == "h2" else ())
                self.clusters[c.name] = self._per_worker(
                    lambda: lib.up_tls_client_new(conf, err, 512), nworkers, err,
                    cfg, f"clusters[{i}].tls", c.tls)
        except BaseException:
            self.free()
            raise

    def _per_worker(self, make, nworkers, err, cfg, key, t):
        arr = ffi.new("void *[]", nworkers)
        self.keep.append(arr)
        for w in range(nworkers):
            raw = make()
            if raw == ffi.NULL:
                raise library_error(cfg, key, ffi.string(err).decode(errors="replace")
                                    or "no reason given", t)
            arr[w] = raw
            self.owned.append(ffi.gc(raw, lib.up_tls_free))
        return arr

    def free(self):
        """Free every context now (the tables that point at them must be
        out of the workers' hands)."""
        owned, self.owned = self.owned, []
        for p in owned:
            ffi.release(p)
        for arr in self.listeners.values():
            for w in range(len(arr)):
                arr[w] = ffi.NULL
        for arr in self.clusters.values():
            for w in range(len(arr)):
                arr[w] = ffi.NULL


def check_library(cfg: Config) -> list:
    """ConfigErrors for what the TLS library refuses in cfg (one context
    each, as `uproxy check` asks before anything runs)."""
    try:
        TLSContexts(cfg, 1).free()
    except ConfigError as e:
        return [e] + check_regexes(cfg)
    return check_regexes(cfg)


# ---- per-route HTTP policies (native/http/h1_policy.c) -----------------------

def _replacement_refs(text: str) -> list:
    """The group numbers a PCRE2 replacement names ($1, ${2})."""
    return [int(m.group(1) or m.group(2)) for m in re.finditer(r"\$(?:(\d+)|\{(\d+)\})", text)]


def regex_error(pattern: str, replacement: str | None) -> str | None:
    """Why a rewrite's regex (and its replacement) cannot be used, or None."""
    err = ffi.new("char[]", 256)
    n = ffi.new("uint32_t *")
    re_ = lib.up_regex_compile(pattern.encode(), err, 256, n)
    if re_ == ffi.NULL:
        return f"the regex does not compile: {ffi.string(err).decode(errors='replace')}"
    lib.up_regex_free(re_)
    if n[0] > REGEX_CAPTURES:
        return f"the regex has {n[0]} capture groups; at most {REGEX_CAPTURES} can be used"
    for k in _replacement_refs(replacement or ""):
        if k > n[0]:
            return (f"the replacement names ${k}, but the regex has {n[0]} capture group"
                    f"{'' if n[0] == 1 else 's'}")
    return None


def check_regexes(cfg: Config) -> list:
    """ConfigErrors for rewrite regexes PCRE2 refuses (for `uproxy check`)."""
    out = []
    for i, l in enumerate(cfg.listeners):
        where = [(f"listeners[{i}]", l.policy)] + [
            (f"listeners[{i}].routes[{j}]", rt.policy) for j, rt in enumerate(l.routes)]
        for key, p in where:
            rw = p.rewrite
            if rw is not None and rw.regex is not None:
                why = regex_error(rw.regex, rw.replacement)
                if why:
                    k = f"{key}.rewrite.{'replacement' if 'replacement names' in why else 'regex'}"
                    if not any(e.key == k for e in out):
                        out.append(locate(cfg.path, k, why))
    return out


CZ_ALG = {"gzip": 1, "zstd": 2}         # enum cz_alg (native/http/h1_compress.h)

REASONS = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 413: "Content Too Large",
           414: "URI Too Long", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported"}


class PolicyTables:
    """Every route's policy of one configuration, compiled into the arrays
    up_config points at: steps, networks, regexes, in-flight slots."""

    def __init__(self, strings: "Strings", cindex: dict | None = None):
        self.strings = strings
        self.cindex = cindex or {}      # cluster name -> index (forward_auth)
        self.policies = []              # struct up_policy fields, one dict each
        self.steps = []                 # dicts of struct up_step fields
        self.cidrs = []                 # ipaddress networks
        self.regexes = []               # ffi.gc'd pcre2 codes
        self.users = []                 # (name off, len, hash off, len)
        self.pages = []                 # (status, off, len)
        self.ninflight = 0

    def _cidrs(self, nets) -> tuple:
        first = len(self.cidrs)
        self.cidrs += list(nets)
        return first, len(nets)

    def _line(self, name, value) -> tuple:
        return self.strings.add(f"{name}: {value}\r\n")

    def add(self, p: Policy, route_prefix: str, cfg_path: str, key: str) -> int:
        """p compiled for a route with path_prefix route_prefix: its 1 + index,
        or 0 when it does nothing."""
        if p.empty():
            return 0
        steps = []

        def step(kind, **f):
            steps.append({"kind": kind, **f})
        if p.deny:
            first, n = self._cidrs(p.deny)
            step(lib.UP_STEP_DENY, first=first, count=n)
        if p.allow:
            first, n = self._cidrs(p.allow)
            step(lib.UP_STEP_ALLOW, first=first, count=n)
        if p.rate_limit:
            rate, burst = p.rate_limit
            step(lib.UP_STEP_RATE, x=max(1, int(rate * 1000)), y=burst * 1000)
        if p.basic_auth:                # after the rate limit: it guards bcrypt too
            ba = p.basic_auth
            first = len(self.users)
            for name, h in ba.users:
                self.users.append(self.strings.add(name) + self.strings.add(h))
            body = "Unauthorized\n"
            o, n = self.strings.add(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"%s\", "
                "charset=\"UTF-8\"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                "Connection: close\r\n\r\n%s" % (ba.realm, len(body), body))
            step(lib.UP_STEP_BASIC_AUTH, first=first, count=len(ba.users), a_off=o, a_len=n)
        if p.forward_auth:              # after the proxy's own checks, before limits
            fa = p.forward_auth
            o, n = self.strings.add(fa.path)
            bo, bn = self.strings.add("".join(f"{x}," for x in fa.copy_headers))
            co, cn = self.strings.add("".join(f"{x}," for x in fa.forward_headers))
            step(lib.UP_STEP_FORWARD_AUTH, first=self.cindex[fa.cluster], x=fa.timeout_ms,
                 a_off=o, a_len=n, b_off=bo, b_len=bn, c_off=co, c_len=cn)
        if p.max_body_size:
            step(lib.UP_STEP_BODY, x=p.max_body_size)
        if p.max_in_flight:
            step(lib.UP_STEP_INFLIGHT, x=p.max_in_flight, first=self.ninflight)
            self.ninflight += 1
        if p.redirect:
            rd = p.redirect
            f = {"code": rd.code, "cut": len(route_prefix) if rd.path_prefix is not None else 0}
            if rd.scheme:
                f["a_off"], f["a_len"] = self.strings.add(rd.scheme)
            if rd.host:
                f["b_off"], f["b_len"] = self.strings.add(rd.host)
            if rd.path_prefix is not None:
                # "/new/" in place of the route's "/old/"; a prefix without
                # its own trailing '/' takes the path's.
                f["c_off"], f["c_len"] = self.strings.add(rd.path_prefix)
            step(lib.UP_STEP_REDIRECT, **f)
        rw = p.rewrite
        if rw:
            if rw.strip_prefix:
                o, n = self.strings.add(rw.strip_prefix)
                step(lib.UP_STEP_STRIP_PREFIX, a_off=o, a_len=n)
            if rw.add_prefix:
                o, n = self.strings.add(rw.add_prefix)
                step(lib.UP_STEP_ADD_PREFIX, a_off=o, a_len=n)
            if rw.replace_path:
                o, n = self.strings.add(rw.replace_path)
                step(lib.UP_STEP_REPLACE_PATH, a_off=o, a_len=n)
            if rw.regex:
                why = regex_error(rw.regex, rw.replacement)
                if why:
                    raise locate(cfg_path, f"{key}.rewrite.regex", why)
                err = ffi.new("char[]", 256)
                ncap = ffi.new("uint32_t *")
                code = ffi.gc(lib.up_regex_compile(rw.regex.encode(), err, 256, ncap),
                              lib.up_regex_free)
                self.regexes.append(code)
                o, n = self.strings.add(rw.replacement)
                step(lib.UP_STEP_REGEX, first=len(self.regexes) - 1, a_off=o, a_len=n)
        if p.compress:                  # at request time: what the client accepts
            cz = p.compress
            prefs = 0
            for k, a in enumerate(cz.algorithms):
                prefs |= CZ_ALG[a] << (8 * k)
            o, n = self.strings.add("".join(f"{x}," for x in cz.types))
            step(lib.UP_STEP_COMPRESS, first=prefs, count=cz.gzip_level | cz.zstd_level << 8,
                 x=cz.min_size, a_off=o, a_len=n)
        removes = [n for n, _ in p.request_set] + list(p.request_remove)
        if p.x_real_ip:
            removes.append("X-Real-IP")
        if p.forwarded:
            removes.append("Forwarded")
        for name in dict.fromkeys(n.lower() for n in removes):
            o, n = self.strings.add(name)
            step(lib.UP_STEP_REQ_REMOVE, a_off=o, a_len=n)
        for name, value in p.request_set + p.request_add:
            o, n = self._line(name, value)
            step(lib.UP_STEP_REQ_ADD, a_off=o, a_len=n)
        if p.via:
            o, n = self._line("Via", p.via)
            step(lib.UP_STEP_REQ_ADD, a_off=o, a_len=n)
        if p.x_real_ip:
            step(lib.UP_STEP_REAL_IP)
        if p.forwarded:
            step(lib.UP_STEP_FORWARDED)
        for name in dict.fromkeys(n.lower() for n in [n for n, _ in p.response_set] +
                                  list(p.response_remove)):
            o, n = self.strings.add(name)
            step(lib.UP_STEP_RESP_REMOVE, a_off=o, a_len=n)
        for name, value in p.response_set + p.response_add:
            o, n = self._line(name, value)
            step(lib.UP_STEP_RESP_ADD, a_off=o, a_len=n)
        pages_first = len(self.pages)
        self._pages(p.error_pages)
        base = len(self.steps)
        self.steps += steps
        # The ranges of struct up_policy: steps were added in this order.
        groups = {"decide": [], "rm": [], "add": [], "resp_rm": [], "resp_add": []}
        kind_group = {lib.UP_STEP_REQ_REMOVE: "rm", lib.UP_STEP_REQ_ADD: "add",
                      lib.UP_STEP_REAL_IP: "add", lib.UP_STEP_FORWARDED: "add",
                      lib.UP_STEP_RESP_REMOVE: "resp_rm", lib.UP_STEP_RESP_ADD: "resp_add"}
        for k, st in enumerate(steps):
            groups[kind_group.get(st["kind"], "decide")].append(base + k)
        order = [i for g in groups.values() for i in g]
        assert order == list(range(base, base + len(steps))), "policy steps out of order"

        def rng(g):
            return (groups[g][0] if groups[g] else base), len(groups[g])

        def lens(g):
            m = 0
            for i in groups[g]:
                m |= 1 << (self.steps[i]["a_len"] % 64)
            return m
        flags = (0 if p.x_forwarded else lib.UP_POL_XF_OFF) | \
            (lib.UP_POL_TRUSTED if p.trusted_proxies else 0)
        tfirst, tcount = self._cidrs(p.trusted_proxies)
        self.policies.append({
            "first": rng("decide")[0], "count": rng("decide")[1],
            "rm_first": rng("rm")[0], "rm_count": rng("rm")[1],
            "add_first": rng("add")[0], "add_count": rng("add")[1],
            "resp_rm_first": rng("resp_rm")[0], "resp_rm_count": rng("resp_rm")[1],
            "resp_add_first": rng("resp_add")[0], "resp_add_count": rng("resp_add")[1],
            "rm_lens": lens("rm"), "resp_rm_lens": lens("resp_rm"),
            "flags": flags, "trusted_first": tfirst, "trusted_count": tcount,
            "pages_first": pages_first, "pages_count": len(self.pages) - pages_first,
            "id": len(self.policies)})
        return len(self.policies)

    def _pages(self, pages):
        """The whole answer of every status a page replaces: its own code's
        page, else its class's."""
        byname = {k: (ctype, body) for k, ctype, body in pages}
        for status in PAGE_STATUSES:
            hit = byname.get(str(status)) or byname.get(f"{status // 100}xx")
            if not hit:
                continue
            ctype, body = hit
            head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            off, n = self.strings.add_bytes(head + body)
            self.pages.append((status, off, n))

    def publish(self, t, nworkers: int, keep: list):
        """Point the tables' policy fields at C arrays of what was added."""
        if not self.policies and not self.cidrs:     # (listeners' trusted_proxies use cidrs too)
            return
        pol = ffi.new("struct up_policy[]", max(1, len(self.policies)))
        for i, fields in enumerate(self.policies):
            for k, v in fields.items():
                setattr(pol[i], k, v)
        steps = ffi.new("struct up_step[]", max(1, len(self.steps)))
        for i, f in enumerate(self.steps):
            for k, v in f.items():
                setattr(steps[i], k, v)
        cidrs = ffi.new("struct up_cidr[]", max(1, len(self.cidrs)))
        for i, net in enumerate(self.cidrs):
            raw = net.network_address.packed
            ffi.memmove(cidrs[i].addr, raw, len(raw))
            cidrs[i].len = len(raw)
            cidrs[i].bits = net.prefixlen
        regexes = ffi.new("void *[]", max(1, len(self.regexes)))
        for i, code in enumerate(self.regexes):
            regexes[i] = code
        row = (self.ninflight + lib.UP_INFLIGHT_ROW - 1) // lib.UP_INFLIGHT_ROW * lib.UP_INFLIGHT_ROW
        inflight = ffi.new("uint32_t[]", max(1, nworkers * row))
        users = ffi.new("struct up_user[]", max(1, len(self.users)))
        for i, (no, nl, ho, hl) in enumerate(self.users):
            users[i].name_off, users[i].name_len = no, nl
            users[i].hash_off, users[i].hash_len = ho, hl
        t.users = users
        pages = ffi.new("struct up_page[]", max(1, len(self.pages)))
        for i, (status, off, n) in enumerate(self.pages):
            pages[i].status, pages[i].off, pages[i].len = status, off, n
        t.pages = pages
        keep += [pol, steps, cidrs, regexes, inflight, self.regexes, users, pages]
        t.policies, t.npolicies = pol, len(self.policies)
        t.steps, t.nsteps = steps, len(self.steps)
        t.cidrs, t.regexes = cidrs, regexes
        t.ninflight, t.inflight = self.ninflight, inflight


def breaker_answer(c) -> str:
    """The whole 503 an open circuit breaker answers with (built here,
    once): it names the cluster and says when to try again."""
    secs = max(1, -(-c.circuit_breaker.open_ms // 1000))
    body = (f"503 Service Unavailable: the upstream cluster {c.name!r} is failing and its "
            f"circuit breaker is open; retry in {secs} s\n")
    return ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            f"Retry-After: {secs}\r\nContent-Length: {len(body.encode())}\r\n"
            f"Connection: close\r\n\r\n{body}")


def resilience(cc, c, strings: "Strings"):
    """A cluster's circuit breaker, retry budget, per-server in-flight
    limit and PROXY header (docs/resilience.md) into its C table."""
    b = c.circuit_breaker
    if b is not None:
        cc.brk_window_ms = b.window_ms
        cc.brk_error_permille = round(b.error_ratio * 1000)
        cc.brk_latency_ms = b.latency_ms
        cc.brk_slow_permille = round((100.0 - b.latency_percentile) * 10)
        cc.brk_min_requests = b.min_requests
        cc.brk_open_ms = b.open_ms
        cc.brk_probes = b.half_open_requests
        cc.brk_reply_off, cc.brk_reply_len = strings.add(breaker_answer(c))
    if c.retry_budget is not None:
        cc.retry_budget = 1
        cc.budget_permille = round(c.retry_budget.ratio * 1000)
        cc.budget_min = c.retry_budget.min_retries
    cc.max_in_flight = c.max_in_flight
    cc.proxy_protocol = {"v1": 1, "v2": 2}.get(c.proxy_protocol, 0)


class Tables:
    def __init__(self, cfg: Config, generation: int, nworkers: int, sockets: dict,
                 slots: dict, tls_contexts: TLSContexts | None = None, lslots: dict | None = None,
                 slot_gens: dict | None = None, cslots: dict | None = None):
        """sockets: listener name -> ListenerSockets; slots: (cluster, server
        label) -> statistics slot in the segment (and health byte, in
        up_control.server_health: not in the tables; and the workers'
        balancing state of the server, native/upstream/wstate.h);
        slot_gens: server slot -> the generation that gave it to its server
        (1 when not given); cslots: cluster name -> (slot, generation), the
        workers' balancing state of the cluster (its index, 1 when not given);
        tls_contexts: the TLS contexts of cfg (made here when not given), which
        the Tables own from now on."""
        self.cfg = cfg
        self.generation = generation
        self.sockets = dict(sockets)
        self.tls = tls_contexts if tls_contexts is not None else TLSContexts(cfg, nworkers)
        keep = []                       # every cffi object the C side points into
        clusters = list(cfg.clusters.values())
        cindex = {c.name: i for i, c in enumerate(clusters)}
        servers = [(ci, s) for ci, c in enumerate(clusters) for s in c.servers]

        c_servers = ffi.new("struct up_server[]", max(1, len(servers)))
        self.server_labels = []
        for i, (ci, s) in enumerate(servers):
            raw = sockaddr(*s.address)
            ffi.memmove(c_servers[i].addr, raw, len(raw))
            c_servers[i].addrlen = len(raw)
            c_servers[i].weight = s.weight
            c_servers[i].cluster = ci
            c_servers[i].stat_slot = slots[(clusters[ci].name, s.label)]
            c_servers[i].slot_gen = (slot_gens or {}).get(c_servers[i].stat_slot, 1)
            self.server_labels.append((clusters[ci].name, s.label))

        strings = Strings()
        c_clusters = ffi.new("struct up_cluster[]", max(1, len(clusters)))
        first = 0
        for i, c in enumerate(clusters):
            cc = c_clusters[i]
            cc.first_server = first
            cc.nservers = len(c.servers)
            cc.slot, cc.slot_gen = (cslots or {}).get(c.name, (i, 1))
            cc.balance = BALANCE[c.balance]
            cc.connect_timeout_ms = c.connect_timeout_ms
            cc.connect_timeout_ts[0] = c.connect_timeout_ms // 1000
            cc.connect_timeout_ts[1] = (c.connect_timeout_ms % 1000) * 1_000_000
            cc.max_attempts = c.max_attempts
            cc.fail_threshold = c.fail_threshold
            cc.eject_ms = c.eject_ms
            cc.response_timeout_ms = c.response_timeout_ms
            cc.pool_max_idle = c.pool_max_idle
            cc.pool_idle_timeout_ms = c.pool_idle_timeout_ms
            cc.max_requests = c.max_requests
            cc.protocol = lib.UP_PROTO_H2 if c.protocol == "h2" else lib.UP_PROTO_H1
            cc.max_streams = c.max_streams_per_connection
            if c.hash_key.startswith("header:"):
                cc.hash_kind = lib.UP_HASH_HEADER
                cc.hash_header_off, cc.hash_header_len = strings.add(c.hash_key[7:].lower())
            else:
                cc.hash_kind = lib.UP_HASH_CLIENT_IP
            if c.balance == "hash":
                pts = hash_ring([(first + j, s.label, s.weight) for j, s in enumerate(c.servers)])
                ring = ffi.new("struct up_ring_point[]", len(pts))
                for k, (h, idx) in enumerate(pts):
                    ring[k].hash = h
                    ring[k].server = idx
                keep.append(ring)
                cc.ring = ring
                cc.nring = len(pts)
            if c.name in self.tls.clusters:
                cc.tls = self.tls.clusters[c.name]
            resilience(cc, c, strings)
            first += len(c.servers)

        policies = PolicyTables(strings, cindex)
        c_listeners = ffi.new("struct up_listener[]", len(cfg.listeners))
        for i, l in enumerate(cfg.listeners):
            socks = sockets[l.name]
            fds = ffi.new("int32_t[]", socks.fds())
            keep.append(fds)
            cl = c_listeners[i]
            cl.id = socks.id
            cl.stat_slot = (lslots or {}).get(l.name, 0)
            cl.mode = MODE[l.mode]
            cl.cluster = cindex.get(l.cluster, 0)    # a redirecting listener may name none
            # An upgraded HTTP connection becomes a tunnel whose first bytes
            # are already in receive buffers: it is forwarded buffered.
            cl.forwarding = FORWARDING[l.forwarding] if l.mode == "tcp" else lib.UP_FWD_BUFFERED
            cl.idle_timeout_ms = l.idle_timeout_ms
            cl.header_timeout_ms = l.header_timeout_ms
            cl.keepalive_timeout_ms = l.keepalive_timeout_ms
            cl.max_head = l.max_header_size
            cl.access_log = 1 if l.access_log else 0
            cl.max_target = l.max_target
            cl.max_fields = l.max_header_fields
            cl.sni_timeout_ms = l.sni_timeout_ms
            cl.sm_send_buffer = l.sockmap_send_buffer if l.forwarding == "sockmap" else 0
            cl.max_body = l.max_body_size
            cl.keep_underscores = 1 if l.underscores_in_headers else 0
            cl.http2 = 1 if l.http2 else 0
            cl.h2_max_streams = l.http2_max_concurrent_streams
            cl.proxy_protocol = 1 if l.proxy_protocol else 0
            if l.proxy_protocol and l.policy.trusted_proxies:
                # who may send a PROXY header (a peer in none is taken as it is)
                cl.pp_trusted_first, cl.pp_trusted_count = policies._cidrs(
                    l.policy.trusted_proxies)
            rts = list(l.routes)
            # (http only: on a tcp listener a route matches the ClientHello's name)
            if l.mode == "http" and (l.methods is not None or l.allow_connect or
                                     not l.policy.empty()):
                # The listener's own method policy and policies: a last
                # route that matches everything, with the listener's cluster.
                rts.append(Route(cluster=l.cluster, methods=l.methods,
                                 allow_connect=l.allow_connect, policy=l.policy))
            if rts:
                routes = ffi.new("struct up_route[]", len(rts))
                for k, rt in enumerate(rts):
                    r = routes[k]
                    r.cluster = cindex[rt.cluster]
                    r.stat_slot = (lslots or {}).get(("route", l.name, k), lib.UP_NO_SLOT)
                    r.methods, r.deny_off, r.deny_len = method_policy(
                        rt.methods, rt.allow_connect, strings)
                    # An http route matches the Host, a tcp route the
                    # ClientHello's server name: the same matching form.
                    name = rt.host if l.mode == "http" else rt.sni
                    if name is None:
                        r.host_kind = lib.UP_ROUTE_HOST_ANY
                    elif name.startswith("*."):
                        r.host_kind = lib.UP_ROUTE_HOST_SUFFIX
                        r.host_off, r.host_len = strings.add(name[1:])
                    else:
                        r.host_kind = lib.UP_ROUTE_HOST_EXACT
                        r.host_off, r.host_len = strings.add(name)
                    if rt.path_prefix:
                        r.path_off, r.path_len = strings.add(rt.path_prefix)
                    if l.mode == "http":
                        key = f"listeners[{i}]" + (f".routes[{k}]" if k < len(l.routes) else "")
                        r.policy = policies.add(rt.policy, rt.path_prefix, cfg.path, key)
                keep.append(routes)
                cl.routes = routes
                cl.nroutes = len(rts)
            cl.fds = fds
            if l.name in self.tls.listeners:
                cl.tls = self.tls.listeners[l.name]
                cl.tls_handshake_timeout_ms = l.tls.handshake_timeout_ms
                # "Name: " in strings, the name's length beside it (the core
                # compares the name and sends the whole prefix).
                if l.tls.client_subject_header:
                    cl.cert_subject_off, _ = strings.add(l.tls.client_subject_header + ": ")
                    cl.cert_subject_len = len(l.tls.client_subject_header)
                if l.tls.client_fingerprint_header:
                    cl.cert_sha256_off, _ = strings.add(l.tls.client_fingerprint_header + ": ")
                    cl.cert_sha256_len = len(l.tls.client_fingerprint_header)
            if l.redirect is not None:
                cl.redirect_code = l.redirect.code
                cl.redirect_port = l.redirect.port

        self.refs = ffi.new("uint64_t[]", nworkers * lib.UP_REFS_STRIDE)

        t = ffi.new("struct up_config *")
        t.generation = generation
        t.nworkers = nworkers
        t.nlisteners = len(cfg.listeners)
        t.nclusters = len(clusters)
        t.nservers = len(servers)
        t.listeners = c_listeners
        t.clusters = c_clusters
        t.servers = c_servers
        t.refs = self.refs
        if cfg.acme_tokens:                 # HTTP-01 answers (native/http/h1_acme.c)
            toks = ffi.new("struct up_acme_token[]", len(cfg.acme_tokens))
            for k, (token, keyauth) in enumerate(cfg.acme_tokens):
                answer = ("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                          f"Content-Length: {len(keyauth)}\r\nConnection: close\r\n\r\n{keyauth}")
                toks[k].token_off, toks[k].token_len = strings.add(token)
                toks[k].answer_off, toks[k].answer_len = strings.add(answer)
            keep.append(toks)
            t.acme, t.nacme = toks, len(cfg.acme_tokens)
        policies.publish(t, nworkers, keep)
        self.strings = ffi.new("char[]", bytes(strings.data) + b"\0")
        t.strings = self.strings
        self.ptr = t
        self._keep = keep + [c_servers, c_clusters, c_listeners]

    def refs_held(self) -> int:
        return lib.up_config_refs(self.ptr)

    def free(self):
        """Free the TLS contexts now: no worker may read these tables again."""
        self.tls.free()
