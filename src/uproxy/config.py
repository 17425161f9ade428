"""Reading and validating uproxy.toml.

The result is plain, frozen data (Config and friends); nothing here touches
sockets or the C core. Every mistake is reported: ``load`` and ``parse``
read the whole file, collect each problem as a ConfigError that names the
file, the line, the key path (``listeners[0].bind``), the offending line of
text and what is wrong, and raise one ConfigError holding them all, so that
``uproxy check`` can print them the way ``nginx -t`` or a compiler does.
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import socket
import ssl
import tomllib
from dataclasses import dataclass, field, replace

from . import tls
from .acme import settings as acme_settings
from .features import FEATURES


class ConfigError(Exception):
    """One mistake (path, line, key, message, snippet), or several: then
    ``errors`` lists them in file order and the attributes are the first's."""

    def __init__(self, path: str, key: str, message: str, line: int | None = None,
                 snippet: str | None = None, errors: list | None = None):
        self.path, self.key, self.message = path, key, message
        self.line, self.snippet = line, snippet
        self.errors = list(errors) if errors else [self]
        super().__init__(str(self))

    def one(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0].one()
        return f"{len(self.errors)} errors: " + "; ".join(e.one() for e in self.errors)


# ---- where a key is written ----------------------------------------------------

_WORD = re.compile(r"[^\s\[\]{}=,#\"']+")
_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def _tokens(text: str):
    """(kind, value, line) for a text tomllib accepted: just enough of TOML
    to know where each key and array element starts."""
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            yield "nl", None, line
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in "[]{}=,":
            yield c, c, line
            i += 1
        elif c in "\"'":
            if text.startswith(c * 3, i):
                j = i + 3
                while True:
                    k = text.find(c * 3, j)
                    if k < 0:
                        raise ValueError("unterminated string")
                    if c == '"' and _odd_backslashes(text, k):
                        j = k + 1
                        continue
                    break
                end = k + 3
                while end < n and text[end] == c and end < k + 5:
                    end += 1          # """a""""" ends with quotes inside
                yield "str", text[i + 3:end - 3], line
                line += text.count("\n", i, end)
                i = end
            else:
                j = i + 1
                while j < n and text[j] != c and text[j] != "\n":
                    j += 2 if c == '"' and text[j] == "\\" else 1
                yield "str", text[i + 1:j], line
                i = j + 1
        else:
            m = _WORD.match(text, i)
            yield "word", m.group(), line
            i = m.end()


def _odd_backslashes(text: str, k: int) -> bool:
    n = 0
    while k - n - 1 >= 0 and text[k - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def _snippet(lines: list, line: int | None) -> str | None:
    if not line or line > len(lines):
        return None
    s = lines[line - 1].strip()
    return s if len(s) <= 120 else s[:117] + "..."


def _parent(key: str) -> str:
    if key.endswith("]"):
        return key[:key.rindex("[")]
    return key.rpartition(".")[0]


class Positions:
    """Key path (``listeners[1].routes[0].host``, ``clusters[0].servers[2]``)
    -> the line it is written on. tomllib keeps no positions, so this scans
    the text once: table headers (``[a]``, ``[[a]]``, ``[[a.b]]``), keys
    (dotted too), inline tables and array elements, multi-line strings and
    arrays. Best effort: a position helps the reader, it never fails a load."""

    def __init__(self, text: str):
        self.lines = text.split("\n")
        self.at: dict = {}
        try:
            self._scan(list(_tokens(text)))
        except (ValueError, IndexError, AttributeError):
            pass

    def line_of(self, key: str) -> int | None:
        """The key's line or, failing that, its nearest ancestor's (a
        missing key points at its table's header)."""
        while key:
            if key in self.at:
                return self.at[key]
            key = _parent(key)
        return None

    def snippet(self, line: int | None) -> str | None:
        return _snippet(self.lines, line)

    # ---- the scan
    def _mark(self, key, line):
        self.at.setdefault(key, line)

    @staticmethod
    def _key(toks, i, stop):
        parts = []
        while toks[i][0] not in stop:
            kind, v, _ = toks[i]
            if kind == "str":
                parts.append(v)
            elif kind == "word":
                parts += [p for p in v.split(".") if p]
            else:
                raise ValueError(f"unexpected {kind!r} in a key")
            i += 1
        return parts, i

    def _assign(self, toks, i, prefix):
        """key = value at toks[i]; returns the index after the value."""
        line = toks[i][2]
        parts, i = self._key(toks, i, ("=",))
        cur = prefix
        for p in parts:
            cur = f"{cur}.{p}" if cur else p
            self._mark(cur, line)
        return self._value(toks, i + 1, cur)

    def _value(self, toks, i, path):
        kind = toks[i][0]
        if kind in ("[", "{"):
            close, n = ("]" if kind == "[" else "}"), 0
            i += 1
            while True:
                while toks[i][0] == "nl":
                    i += 1
                if toks[i][0] == close:
                    return i + 1
                start = i
                if kind == "[":
                    self._mark(f"{path}[{n}]", toks[i][2])
                    i = self._value(toks, i, f"{path}[{n}]")
                    n += 1
                else:
                    i = self._assign(toks, i, path)
                if i == start:
                    raise ValueError("no progress")
                while toks[i][0] == "nl":
                    i += 1
                if toks[i][0] == ",":
                    i += 1
        if kind == "str":
            return i + 1
        while i < len(toks) and toks[i][0] == "word":     # numbers, booleans, dates
            i += 1
        return i

    def _scan(self, toks):
        i, prefix, arrays = 0, "", {}
        while i < len(toks):
            kind, _, line = toks[i]
            if kind == "nl":
                i += 1
            elif kind == "[":
                aot = toks[i + 1][0] == "["
                parts, i = self._key(toks, i + (2 if aot else 1), ("]",))
                i += 2 if aot else 1
                cur = ""
                for n, p in enumerate(parts):
                    cur = f"{cur}.{p}" if cur else p
                    if aot and n == len(parts) - 1:
                        self._mark(cur, line)
                        arrays[cur] = arrays.get(cur, -1) + 1
                        cur = f"{cur}[{arrays[cur]}]"
                    elif cur in arrays:
                        cur = f"{cur}[{arrays[cur]}]"
                    self._mark(cur, line)
                prefix = cur
            else:
                start = i
                i = self._assign(toks, i, prefix)
                if i == start:
                    raise ValueError("no progress")


class _Errors:
    """The problems found in one file, each placed at its line."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.pos = Positions(text)
        self.items: list = []
        self.warnings: list = []    # the same records, for what works but deserves a look
        self.binds: list = []       # (key, host, port) of addresses that parsed
        # relative file names (certificates, keys) are the configuration
        # file's neighbours, whatever directory uproxy was started from
        self.base = os.path.dirname(os.path.abspath(path)) if os.path.isfile(path) else os.getcwd()

    def add(self, key: str, message: str):
        line = self.pos.line_of(key) if key else None
        self.items.append(ConfigError(self.path, key, message, line, self.pos.snippet(line)))

    def warn(self, key: str, message: str):
        line = self.pos.line_of(key) if key else None
        self.warnings.append(ConfigError(self.path, key, message, line, self.pos.snippet(line)))

    def keys(self) -> set:
        return {e.key for e in self.items}

    def raise_if_any(self):
        if self.items:
            errs = sorted(self.items, key=lambda e: (e.line is None, e.line or 0))
            f = errs[0]
            e = ConfigError(f.path, f.key, f.message, f.line, f.snippet, errors=errs)
            e.binds = self.binds     # `uproxy check` still tries these
            e.warnings = sorted(self.warnings, key=lambda w: (w.line is None, w.line or 0))
            raise e


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    address: tuple          # (family, sockaddr) as resolved at load time
    weight: int = 1

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Health:
    """Active checks: an HTTP GET of path (or, for tcp clusters without a
    path, a connect) every interval; rise successes bring a server up, fall
    failures take it down."""
    path: str | None = "/"
    interval_ms: int = 2000
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 3
    expect: str = "2xx"      # a status class "2xx", a code "200", or "2xx,3xx"


@dataclass(frozen=True)
class DNS:
    """How a cluster's named servers are re-resolved (providers/dns.py):
    on each answer's TTL, clamped to [min_ttl, max_ttl]; resolvers None
    means the system's (/etc/resolv.conf)."""
    resolvers: tuple | None = None       # ((ip, port), ...)
    min_ttl_ms: int = 5000
    max_ttl_ms: int = 300000
    timeout_ms: int = 2000


@dataclass(frozen=True)
class DNSName:
    """A server given by a name that DNS answers for: kind "A" (every A and
    AAAA address of name, on port) or "SRV" (the targets, ports and
    weights of an SRV record)."""
    kind: str
    name: str
    port: int = 0
    weight: int = 1

    @property
    def label(self) -> str:
        return f"srv+{self.name}" if self.kind == "SRV" else f"{self.name}:{self.port}"

    @property
    def host(self) -> str:          # (the name a TLS cluster's default sni is taken from)
        return self.name


@dataclass(frozen=True)
class CircuitBreaker:
    """circuit_breaker = { ... } on a cluster (docs/resilience.md): per
    worker, open on an error share or a latency percentile over a window."""
    error_ratio: float = 0.5             # 0: not on errors
    latency_ms: int = 0                  # 0: not on latency
    latency_percentile: float = 99.0     # open when this percentile passes latency
    window_ms: int = 10000
    min_requests: int = 20
    open_ms: int = 30000                 # open_for
    half_open_requests: int = 3


@dataclass(frozen=True)
class RetryBudget:
    """retry_budget = { ratio, min_retries } on a cluster: retries under
    way at most max(min_retries, ratio x requests under way), per worker."""
    ratio: float = 0.2
    min_retries: int = 3


@dataclass(frozen=True)
class Cluster:
    name: str
    servers: tuple
    balance: str = "round_robin"
    connect_timeout_ms: int = 5000
    max_attempts: int = 3
    fail_threshold: int = 3
    eject_ms: int = 10000
    hash_key: str = "client_ip"          # or "header:Name"
    response_timeout_ms: int = 60000
    pool_max_idle: int = 4096
    pool_idle_timeout_ms: int = 60000
    max_requests: int = 0
    health: Health | None = None
    tls: "ClusterTLS | None" = None      # TLS to the servers
    dns: DNS | None = None               # re-resolve names (names), not only at load
    names: tuple = ()                    # DNSName: servers that DNS adds to servers
    circuit_breaker: CircuitBreaker | None = None
    retry_budget: RetryBudget | None = None
    max_in_flight: int = 0               # per server, over all workers (0: no limit)
    proxy_protocol: str | None = None    # "v1" or "v2": a PROXY header to the servers
    protocol: str = "http1"              # "h2": HTTP/2 to the servers (h2c, or ALPN h2 over tls)
    max_streams_per_connection: int = 100  # h2: concurrent streams per connection, at most


@dataclass(frozen=True)
class ListenerTLS:
    """A listener's TLS termination (docs/tls.md)."""
    certificates: tuple                  # tls.Certificate, as listed
    min_version: str = "1.2"
    ciphers: str = tls.DEFAULT_CIPHERS
    ciphersuites: str = tls.DEFAULT_CIPHERSUITES
    curves: str = tls.DEFAULT_CURVES
    alpn: tuple = ("http/1.1",)
    handshake_timeout_ms: int = 10000
    client_ca: str | None = None
    client_auth: str = "none"            # "optional", "required"
    session_tickets: bool = True
    ticket_key_file: str | None = None
    ticket_keys: tuple = field(default=(), repr=False)   # from ticket_key_file
    ticket_rotate_ms: int = 12 * 3600_000
    session_timeout_s: int = 7200
    session_cache: int = 20000
    client_subject_header: str | None = None      # mTLS: the verified subject, to the upstream
    client_fingerprint_header: str | None = None  # mTLS: its SHA-256 fingerprint
    acme: tuple = ()                     # certificates to obtain: tuples of names (uproxy/acme/)
    acme_alpn: tuple = ()                # TLS-ALPN-01 challenges now: (name, cert, key)


@dataclass(frozen=True)
class Redirect:
    """redirect_https on a plain-HTTP listener: every request is answered
    with this status and https://<host>[:port]<target> (docs/tls.md)."""
    code: int = 308
    port: int = 443


@dataclass(frozen=True)
class ClusterTLS:
    """A cluster's TLS to its servers; `tls = true` is all the defaults."""
    ca: str | None = None                # None: the system's CA store
    sni: str | None = None               # None: the server's host
    verify: bool = True
    cert: "tls.Certificate | None" = None  # upstream mTLS
    min_version: str = "1.2"


# Methods a route may list (the ones the C parser names; any other method
# is a token the core would have to compare as a string per request).
# CONNECT is not among them: it is allowed by allow_connect = true.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")
# forwarding = "sockmap": the send buffer each session socket gets (docs/l4.md,
# "One stream, profiled": one stream moves about one send buffer per 4-8 ms;
# 8 MiB against the autotuned 4 MiB moved 40-56% more, 64 streams the same).
SOCKMAP_SEND_BUFFER = 8 << 20
MAX_HEADER_FIELDS = 1024             # the parser's result arrays (H1_MAX_HEADERS)


# ---- per-route HTTP policies (docs/configuration.md "Policies") -------------

@dataclass(frozen=True)
class PolicyRedirect:
    """redirect = { ... }: answer with a redirect, asking no upstream."""
    code: int = 302
    scheme: str | None = None            # None: the request's
    host: str | None = None              # None: the request's Host
    path_prefix: str | None = None       # in place of the route's path_prefix


@dataclass(frozen=True)
class Rewrite:
    """rewrite = { ... }: the path the upstream gets (the query is kept)."""
    strip_prefix: str | None = None
    add_prefix: str | None = None
    replace_path: str | None = None
    regex: str | None = None
    replacement: str | None = None


@dataclass(frozen=True)
class BasicAuth:
    """basic_auth = { htpasswd = "file", realm = "..." }: the file's users,
    read at load (a reload reads it again)."""
    htpasswd: str
    realm: str = "uproxy"
    users: tuple = ()                    # ((name, crypt hash), ...)


@dataclass(frozen=True)
class Compress:
    """compress = { ... }: response compression (native/http/h1_compress.c)."""
    algorithms: tuple = ("zstd", "gzip")     # the route's preference, best first
    types: tuple = ()                        # media types, or "type/*"
    min_size: int = 1024
    gzip_level: int = 5
    zstd_level: int = 3


@dataclass(frozen=True)
class ForwardAuth:
    """forward_auth = { ... }: a subrequest to an auth service decides
    (native/http/h1_fauth.c)."""
    cluster: str
    path: str = "/"
    copy_headers: tuple = ()                 # from the auth service's 2xx onto the request
    forward_headers: tuple = ()              # the client's to send it (empty: all but the body's)
    timeout_ms: int = 2000


@dataclass(frozen=True)
class Policy:
    """What a route (or, as their default, a listener) does to a request
    besides routing it; compiled into steps by tables.compile_policy."""
    request_set: tuple = ()              # ((name, value), ...)
    request_add: tuple = ()
    request_remove: tuple = ()
    response_set: tuple = ()
    response_add: tuple = ()
    response_remove: tuple = ()
    via: str | None = None               # "1.1 uproxy"
    forwarded: bool = False              # RFC 7239 Forwarded
    x_real_ip: bool = False
    x_forwarded: bool = True             # X-Forwarded-For/-Proto/-Host
    trusted_proxies: tuple = ()          # ipaddress networks (listener only)
    allow: tuple = ()
    deny: tuple = ()
    rate_limit: tuple | None = None      # (requests per second, burst)
    max_in_flight: int | None = None
    max_body_size: int | None = None     # a route's own (a listener's is Listener.max_body_size)
    redirect: PolicyRedirect | None = None
    rewrite: Rewrite | None = None
    basic_auth: BasicAuth | None = None
    error_pages: tuple = ()              # (("5xx" or "503", content type, body bytes), ...)
    compress: Compress | None = None
    forward_auth: ForwardAuth | None = None

    def empty(self) -> bool:
        return self == Policy()


@dataclass(frozen=True)
class Route:
    cluster: str
    host: str | None = None          # http: exact, or "*.example.com"
    path_prefix: str = ""            # http
    methods: tuple | None = None     # http; None: every method but CONNECT
    allow_connect: bool = False      # http
    sni: str | None = None           # tcp: the ClientHello's server name, exact or "*.example.com"
    policy: Policy = Policy()        # http: the listener's, with the route's own keys


@dataclass(frozen=True)
class Listener:
    name: str
    host: str
    port: int
    mode: str
    cluster: str
    forwarding: str = "splice"
    sockmap_send_buffer: int = 8 << 20   # forwarding = "sockmap": each socket's send buffer; 0: autotuned
    idle_timeout_ms: int = 300000
    backlog: int = 4096
    routes: tuple = ()
    sni_timeout_ms: int = 5000           # tcp with sni routes: the ClientHello must arrive in it
    header_timeout_ms: int = 10000
    keepalive_timeout_ms: int = 60000
    max_header_size: int = 16384
    max_header_fields: int = 128
    max_target: int = 8192
    max_body_size: int = 0               # 0: no limit
    underscores_in_headers: bool = False # forward header names with '_' 
    access_log: str | None = None        # "stdout", "stderr" or a file path
    access_log_format: str = "json"      # or "combined"
    tls: ListenerTLS | None = None
    methods: tuple | None = None         # the default of its routes (and of no route)
    allow_connect: bool = False
    redirect: Redirect | None = None     # redirect_https: no cluster is asked
    http2: bool = False                  # HTTP/2 from clients: ALPN h2 over TLS, h2c by prior knowledge
    http2_max_concurrent_streams: int = 128   # SETTINGS_MAX_CONCURRENT_STREAMS (nginx's name)
    policy: Policy = Policy()            # http: the default of its routes (and of no route)
    proxy_protocol: bool = False         # a PROXY header (v1/v2) before each connection's bytes
                                         # (from policy.trusted_proxies only, when it lists any)

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Proxy:
    workers: int | None = None
    disable_features: tuple = ()
    max_connections: int = 16384
    drain_timeout_ms: int = 30000
    ring_entries: int = 4096
    buffer_size: int = 16384
    buffers: int = 2048
    pipes: int = 256
    pipe_size: int = 1048576
    queue_limit: int = 262144
    iowq_max_workers: int = 2
    iowq_cpu: str = "worker"
    head_buffers: int = 512
    body_splice_min: int = 32768
    compress_streams: int = 16
    batch_wait_us: int = 50           # a busy worker waits up to this long for a batch of completions (0: never)
    batch_wait_events: int = 32       # the batch: completions (worker/wait.c)
    user: str | None = None           # drop to this user after binding
    group: str | None = None
    watch: bool = False               # reload when the file changes (providers/watch.py)


@dataclass(frozen=True)
class Admin:
    host: str
    port: int


@dataclass(frozen=True)
class Etcd:
    """Where the dynamic part of the configuration lives (providers/etcd.py)."""
    endpoints: tuple                     # ((host, port), ...)
    prefix: str = "/uproxy/"
    timeout_ms: int = 3000
    backoff_max_ms: int = 10000


@dataclass(frozen=True)
class Config:
    path: str
    proxy: Proxy
    listeners: tuple
    clusters: dict = field(default_factory=dict)
    admin: Admin | None = None
    warnings: tuple = ()                 # ConfigError records that do not stop a load
    etcd: Etcd | None = None
    acme: "acme_settings.Acme | None" = None
    acme_tokens: tuple = ()              # HTTP-01 answers now: (token, key authorization)


# ---- small typed readers -------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(k|kib|kb|m|mib|mb|g|gib|gb)?\s*$", re.I)

# How a table is written, for "did you mean [[listeners]]?".
_TABLES = {"proxy": "[proxy]", "admin": "[admin]", "listeners": "[[listeners]]",
           "clusters": "[[clusters]]", "listeners.routes": "[[listeners.routes]]",
           "clusters.health": "[clusters.health]", "clusters.dns": "[clusters.dns]",
           "dns": "[dns]", "etcd": "[etcd]", "acme": "[acme]"}


class _Reader:
    """Walks one table, checking types and remembering which keys it used,
    so that unknown keys (usually typos) are reported with a suggestion.
    A wrong value is recorded in errs and read as its default, so that the
    rest of the file is still checked."""

    def __init__(self, errs: _Errors, key: str, table):
        self.errs, self.key, self.used = errs, key, set()
        self.path = errs.path
        self.ok = isinstance(table, dict)
        if not self.ok:
            errs.add(key, f"must be a table, not {_kind(table)}")
            table = {}
        self.t = table

    def _k(self, name):
        return f"{self.key}.{name}" if self.key else name

    def fail(self, name, message):
        self.errs.add(self._k(name), message)

    def get(self, name, default=None, required=False):
        self.used.add(name)
        if name not in self.t:
            if required:
                self.fail(name, "is required")
            return default
        return self.t[name]

    def str(self, name, default=None, required=False, choices=None):
        v = self.get(name, default, required)
        if v is None:
            return v
        if not isinstance(v, str):
            self.fail(name, f"must be a string, not {_kind(v)}")
            return None if required else default
        if choices and v not in choices:
            hint = difflib.get_close_matches(v, choices, n=1)
            self.fail(name, f"{v!r} is not one of {', '.join(map(repr, choices))}"
                      + (f"; did you mean {hint[0]!r}?" if hint else ""))
            return default
        return v

    def int(self, name, default=None, lo=None, hi=None):
        v = self.get(name, default)
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(name, f"must be an integer, not {_kind(v)}")
            return default
        if lo is not None and v < lo:
            self.fail(name, f"must be at least {lo} (got {v})")
            return default
        if hi is not None and v > hi:
            self.fail(name, f"must be at most {hi} (got {v})")
            return default
        return v

    def duration_ms(self, name, default_ms, lo=0, hi=86400_000):
        v = self.get(name, None)
        if v is None:
            return default_ms
        if isinstance(v, bool):
            self.fail(name, "must be a duration like \"5s\" or \"250ms\"")
            return default_ms
        if isinstance(v, (int, float)):
            ms = int(v * 1000)
        elif isinstance(v, str) and (m := _DURATION.match(v)):
            n, unit = float(m.group(1)), (m.group(2) or "s")
            ms = int(n * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}[unit])
        else:
            self.fail(name, f"{v!r} is not a duration like \"5s\" or \"250ms\"")
            return default_ms
        if ms < lo or ms > hi:
            self.fail(name, f"must be between {lo} ms and {hi // 1000} s (got {ms} ms)")
            return default_ms
        return ms

    def size(self, name, default, lo, hi, power_of_two=False):
        v = self.get(name, None)
        if v is None:
            return default
        if isinstance(v, bool):
            self.fail(name, "must be a size like 16384 or \"16k\"")
            return default
        if isinstance(v, int):
            n = v
        elif isinstance(v, str) and (m := _SIZE.match(v)):
            unit = (m.group(2) or "").lower()[:1]
            n = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]
        else:
            self.fail(name, f"{v!r} is not a size like 16384 or \"16k\"")
            return default
        if n < lo or n > hi:
            self.fail(name, f"must be between {lo} and {hi} (got {n})")
            return default
        if power_of_two and n & (n - 1):
            self.fail(name, f"must be a power of two (got {n})")
            return default
        return n

    def bool(self, name, default):
        v = self.get(name, default)
        if not isinstance(v, bool):
            self.fail(name, f"must be true or false, not {_kind(v)}")
            return default
        return v

    def file(self, name, required=False):
        """A file name, made absolute (relative to the configuration file's
        directory); its content is checked by the caller."""
        v = self.str(name, required=required)
        if v is None:
            return None
        if not v.strip():
            self.fail(name, "is empty; give a file name")
            return None
        return os.path.normpath(os.path.join(self.errs.base, os.path.expanduser(v)))

    def list(self, name, default=()):
        v = self.get(name, None)
        if v is None:
            return list(default)
        if not isinstance(v, list):
            self.fail(name, f"must be a list, not {_kind(v)}")
            return list(default)
        return v

    def done(self):
        """Every key this table has that nothing read: an error each, with
        the nearest known key (or table) as a suggestion."""
        known = sorted(self.used)
        for k in self.t:
            if k in self.used:
                continue
            hint = difflib.get_close_matches(k, known, n=1)
            v = self.t[k]
            table = isinstance(v, dict) or (isinstance(v, list) and v and
                                              all(isinstance(x, dict) for x in v))
            if table:
                generic = re.sub(r"\[\d+\]", "", self._k(k))
                shown = f"[[{generic}]]" if isinstance(v, list) else f"[{generic}]"
                msg = f"unknown table {shown}"
                if hint:
                    h = re.sub(r"\[\d+\]", "", self._k(hint[0]))
                    msg += f"; did you mean {_TABLES.get(h, repr(hint[0]))}?"
            else:
                msg = "unknown key" + (f"; did you mean {hint[0]!r}?" if hint else "")
            self.fail(k, msg)

    def typo_of(self, name) -> str | None:
        """An unread key of this table that looks like a misspelling of name."""
        rest = [k for k in self.t if k not in self.used]
        hint = difflib.get_close_matches(name, rest, n=1)
        return hint[0] if hint else None


def _kind(v):
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def parse_hostport(text: str, what: str = "address"):
    """'127.0.0.1:80', '[::1]:80' or 'name:80' -> (host, port). Raises
    ValueError with a sentence a user can act on."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string like \"127.0.0.1:8080\"")
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$", text) or re.match(r"^([^:\[\]\s]+):(\d+)$", text)
    if not m:
        raise ValueError(f"{text!r} is not host:port (for IPv6 write [::1]:8080)")
    host, port = m.group(1), int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} in {text!r} is not between 1 and 65535")
    return host, port


def resolve(host: str, port: int):
    """One address for host:port, resolved at load time (and again at each
    reload), never on the request path."""
    try:
        ip = ipaddress.ip_address(host)
        fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return fam, (host, port) if fam == socket.AF_INET else (host, port, 0, 0)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve {host!r}: {e.strerror}") from None
    fam, _, _, _, sa = infos[0]
    return fam, sa


# ---- sections ------------------------------------------------------------

def _proxy(errs, raw) -> Proxy:
    r = _Reader(errs, "proxy", raw)
    workers = r.get("workers")
    if workers == "auto":
        workers = None
    elif workers is not None:
        workers = r.int("workers", lo=1, hi=256)
    disabled = []
    for i, name in enumerate(r.list("disable_features")):
        if name not in FEATURES:
            hint = difflib.get_close_matches(str(name), FEATURES, n=1)
            errs.add(f"proxy.disable_features[{i}]",
                     f"{name!r} is not a feature; known: {', '.join(FEATURES)}"
                     + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            continue
        disabled.append(name)
    iowq_cpu = r.get("iowq_cpu", "worker")
    if not (iowq_cpu in ("worker", "any") or (isinstance(iowq_cpu, int) and not isinstance(iowq_cpu, bool) and iowq_cpu >= 0)):
        r.fail("iowq_cpu", f"{iowq_cpu!r} must be \"worker\", \"any\" or a CPU number")
        iowq_cpu = "worker"
    p = Proxy(
        workers=workers,
        disable_features=tuple(disabled),
        max_connections=r.int("max_connections", 16384, lo=1, hi=1 << 20),
        drain_timeout_ms=r.duration_ms("drain_timeout", 30000),
        ring_entries=r.size("ring_entries", 4096, 64, 32768, power_of_two=True),
        buffer_size=r.size("buffer_size", 16384, 4096, 1 << 20),
        buffers=r.size("buffers", 2048, 64, 32768, power_of_two=True),
        pipes=r.int("pipes", 256, lo=0, hi=65536),
        pipe_size=r.size("pipe_size", 1 << 20, 4096, 1 << 20, power_of_two=True),
        queue_limit=r.size("queue_limit", 262144, 4096, 1 << 30),
        iowq_max_workers=r.int("iowq_max_workers", 2, lo=0, hi=1024),
        iowq_cpu=str(iowq_cpu),
        head_buffers=r.int("head_buffers", 512, lo=0, hi=65536),
        body_splice_min=r.size("body_splice_min", 32768, 0, 1 << 30),
        compress_streams=r.int("compress_streams", 16, lo=0, hi=4096),
        batch_wait_us=r.int("batch_wait_us", 50, lo=0, hi=10000),
        batch_wait_events=r.int("batch_wait_events", 32, lo=2, hi=4096),
        user=r.str("user"),
        group=r.str("group"),
        watch=r.bool("watch", False),
    )
    if p.user is not None:
        import pwd
        try:
            pwd.getpwnam(p.user)
        except KeyError:
            r.fail("user", f"no user named {p.user!r} on this host")
    if p.group is not None:
        import grp
        try:
            grp.getgrnam(p.group)
        except KeyError:
            r.fail("group", f"no group named {p.group!r} on this host")
        if p.user is None and "user" not in r.t:
            r.fail("group", "group needs user too")
    r.done()
    return p


SRV_PREFIX = "srv+"


def _server(errs, key, v, dynamic=False):
    """A Server, a DNSName (a name DNS answers for, when the cluster
    re-resolves, or any "srv+" entry), or None (the mistake is in errs)."""
    weight = 1
    if isinstance(v, dict):
        r = _Reader(errs, key, v)
        addr = r.str("address", required=True)
        weight = r.int("weight", 1, lo=1, hi=1000)
        r.done()
        if addr is None:
            return None
        key = key + ".address"
    else:
        addr = v
    if isinstance(addr, str) and addr.startswith(SRV_PREFIX):
        name = addr[len(SRV_PREFIX):].rstrip(".")
        if not _SRV_NAME.match(name):
            errs.add(key, f"{addr!r}: an SRV server is \"srv+_service._proto.name\", "
                          f"like \"srv+_http._tcp.app.internal\"")
            return None
        return DNSName("SRV", name.lower(), 0, weight)
    try:
        host, port = parse_hostport(addr, "a server")
        if dynamic and not _is_ip(host):
            if not _HOSTNAME.match(host):
                raise ValueError(f"{host!r} is not a host name")
            return DNSName("A", host.lower().rstrip("."), port, weight)
        fam_sa = resolve(host, port)
    except ValueError as e:
        errs.add(key, str(e))
        return None
    return Server(host=host, port=port, address=fam_sa, weight=weight)


_SRV_NAME = re.compile(r"^_[A-Za-z0-9-]+\._(tcp|udp)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))+$")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _dns(errs, key, raw, defaults: dict | None) -> DNS | None:
    """[clusters.dns] (or `dns = true`), over the top-level [dns] table's
    defaults: the cluster's named servers are re-resolved on their TTL."""
    if raw is None or raw is False:
        return None
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        errs.add(key, f"must be true or a table like {{ min_ttl = \"1s\" }}, not {_kind(raw)}")
        return None
    merged = dict(defaults or {})
    merged.update(raw)
    r = _Reader(errs, key, merged)
    resolvers = None
    if "resolvers" in merged:
        resolvers = []
        for j, v in enumerate(r.list("resolvers")):
            try:
                text = v if isinstance(v, str) and (v.count(":") == 1 or v.startswith("[")) else \
                    (f"[{v}]:53" if isinstance(v, str) and ":" in v else f"{v}:53")
                host, port = parse_hostport(text, "a resolver")
                ipaddress.ip_address(host)
            except ValueError:
                errs.add(f"{key}.resolvers[{j}]", f"{v!r} is not a resolver address like "
                                                   f"\"10.0.0.2\" or \"127.0.0.1:5353\"")
                continue
            resolvers.append((host, port))
        if not resolvers:
            r.fail("resolvers", "needs at least one address; leave it out to use the "
                                "system's resolvers (/etc/resolv.conf)")
            resolvers = None
    d = DNS(resolvers=tuple(resolvers) if resolvers else None,
            min_ttl_ms=r.duration_ms("min_ttl", 5000, lo=100),
            max_ttl_ms=r.duration_ms("max_ttl", 300000, lo=100),
            timeout_ms=r.duration_ms("timeout", 2000, lo=10, hi=60000))
    if d.min_ttl_ms > d.max_ttl_ms:
        r.fail("min_ttl", f"min_ttl ({d.min_ttl_ms} ms) is more than max_ttl ({d.max_ttl_ms} ms)")
    r.done()
    return d


def _cluster(errs, i, raw, dns_defaults=None) -> Cluster:
    r = _Reader(errs, f"clusters[{i}]", raw)
    name = r.str("name", required=True)
    raw_servers = r.list("servers")
    if not raw_servers and r.ok:
        r.fail("servers", "needs at least one server, like [\"127.0.0.1:8080\"]")
    dns = _dns(errs, f"clusters[{i}].dns", r.get("dns"), dns_defaults)
    found = [s for j, v in enumerate(raw_servers)
             if (s := _server(errs, f"clusters[{i}].servers[{j}]", v, dns is not None)) is not None]
    servers = tuple(s for s in found if isinstance(s, Server))
    names = tuple(s for s in found if isinstance(s, DNSName))
    if names and dns is None:
        dns = _dns(errs, f"clusters[{i}].dns", True, dns_defaults)   # "srv+" alone asks for it
    hash_key = r.str("hash_key", "client_ip")
    if hash_key != "client_ip" and not re.match(r"^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$", hash_key):
        r.fail("hash_key", f"{hash_key!r} must be \"client_ip\" or \"header:Name\"")
    c = Cluster(
        name=name,
        servers=servers,
        balance=r.str("balance", "round_robin",
                      choices=("round_robin", "least_conn", "p2c", "hash")),
        connect_timeout_ms=r.duration_ms("connect_timeout", 5000, lo=1),
        max_attempts=r.int("max_attempts", 3 if names else min(3, len(servers) + 1), lo=1, hi=16),
        fail_threshold=r.int("fail_threshold", 3, lo=0, hi=1000),
        eject_ms=r.duration_ms("eject_time", 10000),
        hash_key=hash_key,
        response_timeout_ms=r.duration_ms("response_timeout", 60000, lo=1),
        pool_max_idle=r.int("pool_max_idle", 4096, lo=0, hi=100000),
        pool_idle_timeout_ms=r.duration_ms("pool_idle_timeout", 60000),
        max_requests=r.int("max_requests", 0, lo=0),
        health=_health(errs, f"clusters[{i}].health", r.get("health")),
        tls=_cluster_tls(errs, f"clusters[{i}].tls", r.get("tls"),
                         servers + tuple(n for n in names if n.kind == "A")),
        dns=dns,
        names=names,
        circuit_breaker=_circuit_breaker(errs, f"clusters[{i}].circuit_breaker",
                                         r.get("circuit_breaker")),
        retry_budget=_retry_budget(errs, f"clusters[{i}].retry_budget", r.get("retry_budget")),
        max_in_flight=r.int("max_in_flight", 0, lo=0, hi=10_000_000),
        proxy_protocol=_proxy_send(r),
        protocol=r.str("protocol", "http1", choices=("http1", "h2")),
        max_streams_per_connection=r.int("max_streams_per_connection", 100, lo=1, hi=1000),
    )
    if c.protocol == "h2" and c.proxy_protocol:
        r.fail("proxy_protocol", "a PROXY header names one client per connection, and an HTTP/2 "
                                 "connection carries many clients' streams: remove proxy_protocol "
                                 "or use protocol = \"http1\"")
    if r.t.get("protocol", "http1") == "http1" and "max_streams_per_connection" in r.t:
        r.fail("max_streams_per_connection", "applies to HTTP/2 upstreams only: "
                                             "set protocol = \"h2\" on the cluster, or remove it")
    r.done()
    return c


def _ratio(r, name, default, lo=0.0, hi=1.0):
    v = r.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        r.fail(name, f"must be a number between {lo:g} and {hi:g} (got {v!r})")
        return default
    return float(v)


def _circuit_breaker(errs, key, raw) -> CircuitBreaker | None:
    if raw is None or raw is False:
        return None
    r = _Reader(errs, key, {} if raw is True else raw)
    b = CircuitBreaker(
        error_ratio=_ratio(r, "error_ratio", 0.5),
        latency_ms=r.duration_ms("latency", 0, lo=0, hi=3600_000),
        latency_percentile=_ratio(r, "latency_percentile", 99.0, lo=50.0, hi=99.9),
        window_ms=r.duration_ms("window", 10000, lo=100, hi=3600_000),
        min_requests=r.int("min_requests", 20, lo=1, hi=1_000_000),
        open_ms=r.duration_ms("open_for", 30000, lo=100, hi=86400_000),
        half_open_requests=r.int("half_open_requests", 3, lo=1, hi=1000),
    )
    if r.ok and b.error_ratio == 0 and b.latency_ms == 0:
        r.fail("error_ratio", "and latency are both off: the breaker would never open "
                              "(give error_ratio > 0 or a latency, or remove circuit_breaker)")
    r.done()
    return b


def _retry_budget(errs, key, raw) -> RetryBudget | None:
    if raw is None or raw is False:
        return None
    r = _Reader(errs, key, {} if raw is True else raw)
    b = RetryBudget(ratio=_ratio(r, "ratio", 0.2),
                    min_retries=r.int("min_retries", 3, lo=0, hi=1_000_000))
    r.done()
    return b


def _proxy_send(r) -> str | None:
    v = r.get("proxy_protocol", None)
    if v is None or v is False:
        return None
    if v not in ("v1", "v2"):
        r.fail("proxy_protocol", f"must be \"v1\" or \"v2\" (the PROXY protocol version "
                                 f"sent to the servers), not {v!r}")
        return None
    return v


def _health(errs, key, raw) -> Health | None:
    if raw is None:
        return None
    r = _Reader(errs, key, raw)
    hpath = r.str("path", "/")
    if hpath is not None and not hpath.startswith("/"):
        r.fail("path", f"{hpath!r} must start with /")
    if r.get("tcp", False) is True:
        hpath = None
    expect = r.str("expect", "2xx")
    for part in expect.split(","):
        if not re.match(r"^\s*([1-5]xx|[1-5]\d\d)\s*$", part):
            r.fail("expect", f"{expect!r}: use status classes or codes like \"2xx\" or \"200,301\"")
            break
    h = Health(
        path=hpath,
        interval_ms=r.duration_ms("interval", 2000, lo=100),
        timeout_ms=r.duration_ms("timeout", 1000, lo=10),
        rise=r.int("rise", 2, lo=1, hi=100),
        fall=r.int("fall", 3, lo=1, hi=100),
        expect=expect,
    )
    r.done()
    return h


# ---- TLS ------------------------------------------------------------------------

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")
_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
           "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256")


def _tls_version(r) -> str:
    v = r.get("min_version", "1.2")
    if isinstance(v, float) and f"{v}" in tls.VERSIONS:
        return f"{v}"                   # min_version = 1.2 written without quotes
    if isinstance(v, str) and v.strip() in ("1.0", "1.1"):
        r.fail("min_version", f"TLS {v.strip()} is deprecated (RFC 8996) and never offered; "
                              f"the lowest is \"1.2\"")
        return "1.2"
    return r.str("min_version", "1.2", choices=tuple(tls.VERSIONS))


def _pair(errs, key, cert, keyf):
    """A certificate and its key, read and checked, or None (the mistake
    is in errs); its dates give an error (expired) or a warning."""
    try:
        c = tls.read_certificate(cert, keyf or cert)
    except tls.TLSFileError as e:
        errs.add(f"{key}.{'key' if e.part == 'key' and keyf else 'cert'}", str(e))
        return None
    kind, msg = tls.expiry(c)
    if kind == "error":
        errs.add(f"{key}.cert", msg)
    elif kind == "warning":
        errs.warn(f"{key}.cert", msg)
    return c


def _listener_tls(errs, key, raw, mode, http2=False) -> ListenerTLS | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errs.add(key, f"must be a table like {{ certificates = [{{ cert = \"site.pem\", "
                      f"key = \"site.key\" }}] }}, not {_kind(raw)}")
        return None
    r = _Reader(errs, key, raw)
    certs, ckeys = [], []
    raw_certs = r.list("certificates")
    acme = acme_settings.listener(errs, f"{key}.acme", r.get("acme")) if "acme" in r.t else ()
    if acme or "acme" in r.t:
        pass                            # certificates come from the CA (and may be added)
    elif not raw_certs and "certificates" not in r.t:
        r.fail("certificates", "is required: certificates = [{ cert = \"site.pem\", "
                               "key = \"site.key\" }]")
    elif not raw_certs:
        r.fail("certificates", "needs at least one { cert = \"...\", key = \"...\" }")
    for j, rc in enumerate(raw_certs):
        ck = f"{key}.certificates[{j}]"
        cr = _Reader(errs, ck, rc)
        if not cr.ok:
            continue
        cert, keyf = cr.file("cert", required=True), cr.file("key")
        cr.done()
        if cert is not None and (c := _pair(errs, ck, cert, keyf)) is not None:
            certs.append(c)
            ckeys.append(ck)
    _check_groups(errs, key, certs, ckeys)

    version = _tls_version(r)
    ciphers = r.str("ciphers", tls.DEFAULT_CIPHERS)
    if ciphers is not None:
        try:                            # OpenSSL's own parser, as the core will use it
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
        except ssl.SSLError:
            r.fail("ciphers", f"OpenSSL finds no usable TLS 1.2 cipher in {ciphers!r}; "
                              f"leave it out for the default {tls.DEFAULT_CIPHERS!r}")
    suites = r.str("ciphersuites", tls.DEFAULT_CIPHERSUITES)
    for s in (suites or "").split(":"):
        if s not in _SUITES:
            hint = difflib.get_close_matches(s, _SUITES, n=1)
            r.fail("ciphersuites", f"{s!r} is not a TLS 1.3 suite; they are "
                                   f"{', '.join(_SUITES)}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
            break
    curves = r.str("curves", tls.DEFAULT_CURVES)
    for c in (curves or "").split(":"):
        if c not in tls.CURVES:
            hint = difflib.get_close_matches(c, tls.CURVES, n=1)
            r.fail("curves", f"{c!r} is not a curve uproxy knows; they are {', '.join(tls.CURVES)}"
                             + (f"; did you mean {hint[0]!r}?" if hint else ""))
            curves = None
            break
    http = mode == "http"
    alpn = []
    # With http2 = true, h2 is offered first: a client that speaks both
    # picks HTTP/2 (the server's order wins in the select callback).
    for j, p in enumerate(r.list("alpn", (["h2", "http/1.1"] if http2 else ["http/1.1"]) if http else [])):
        if not isinstance(p, str) or not 0 < len(p.encode()) < 256:
            errs.add(f"{key}.alpn[{j}]", f"{p!r} is not a protocol name like \"http/1.1\"")
        elif http and p == "h2" and not http2:
            errs.add(f"{key}.alpn[{j}]", "\"h2\" needs http2 = true on the listener "
                     "(which offers [\"h2\", \"http/1.1\"] by default)")
        elif http and p not in ("http/1.1", "http/1.0", "h2"):
            errs.add(f"{key}.alpn[{j}]", f"{p!r}: an http listener speaks HTTP/1.x "
                     f"and, with http2 = true, h2; use [\"http/1.1\"]")
        else:
            alpn.append(p)
    if len(tls.alpn_wire(alpn)) > tls.MAX_ALPN_WIRE:
        r.fail("alpn", f"the protocol names take more than {tls.MAX_ALPN_WIRE} bytes")

    client_ca = r.file("client_ca")
    if client_ca is not None:
        try:
            tls.check_ca_bundle(client_ca, "the client CA bundle")
        except tls.TLSFileError as e:
            r.fail("client_ca", str(e))
    client_auth = r.str("client_auth", "required" if client_ca else "none", choices=tls.CLIENT_AUTH)
    if client_auth != "none" and client_ca is None and "client_ca" not in r.t:
        r.fail("client_auth", f"client_auth = {client_auth!r} needs client_ca, the CA bundle "
                              f"that issued your clients' certificates")
    elif client_auth == "none" and client_ca is not None:
        errs.warn(f"{key}.client_auth", "client_auth = \"none\": client_ca is not used; "
                                        "say \"optional\" or \"required\" to ask for client certificates")

    tickets = r.bool("session_tickets", True)
    key_file = r.file("ticket_key_file")
    keys = ()
    if key_file is not None:
        if not tickets:
            r.fail("ticket_key_file", "session_tickets = false issues no tickets: leave out "
                                      "ticket_key_file, or set session_tickets = true")
        else:
            try:
                keys = tls.read_ticket_keys(key_file)
            except tls.TLSFileError as e:
                r.fail("ticket_key_file", str(e))
            else:
                if tls.ticket_file_exposed(key_file):
                    errs.warn(f"{key}.ticket_key_file",
                              f"{key_file} is readable by every user, and its keys decrypt "
                              f"resumed sessions: chmod 600 {key_file}")
    rotate = r.duration_ms("ticket_rotate", 12 * 3600_000, lo=60_000, hi=7 * 86400_000)
    if key_file is not None and "ticket_rotate" in r.t:
        errs.warn(f"{key}.ticket_rotate", "keys from ticket_key_file are not rotated by uproxy: "
                                          "write a new first key into the file, then reload")
    timeout = r.duration_ms("session_timeout", 7200_000, lo=1000, hi=7 * 86400_000)
    subject_h, fp_h = _cert_headers(r, mode, client_auth)
    t = ListenerTLS(
        certificates=tuple(certs), min_version=version,
        ciphers=ciphers or tls.DEFAULT_CIPHERS, ciphersuites=suites or tls.DEFAULT_CIPHERSUITES,
        curves=curves or tls.DEFAULT_CURVES, alpn=tuple(alpn),
        handshake_timeout_ms=r.duration_ms("handshake_timeout", 10000, lo=1),
        client_ca=client_ca, client_auth=client_auth,
        session_tickets=tickets, ticket_key_file=key_file if tickets else None, ticket_keys=keys,
        ticket_rotate_ms=rotate, session_timeout_s=max(1, timeout // 1000),
        session_cache=r.int("session_cache", 20000, lo=0, hi=1 << 22),
        client_subject_header=subject_h, client_fingerprint_header=fp_h, acme=acme,
    )
    r.done()
    return t


# Header lines the proxy itself frames, forwards or writes: a client
# certificate's header may not take one of their names.
_PROXY_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                  "proxy-connection", "te", "trailer", "upgrade", "expect", "x-forwarded-for",
                  "x-forwarded-proto", "x-forwarded-host"}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$")


def _cert_headers(r, mode, client_auth) -> tuple:
    """client_subject_header and client_fingerprint_header: names of the
    request headers that carry a verified client certificate's subject
    and SHA-256 fingerprint to the upstream (None: not sent)."""
    out = []
    for k in ("client_subject_header", "client_fingerprint_header"):
        v = r.str(k)
        if v is None:
            out.append(None)
            continue
        norm = v.lower().replace("_", "-")
        if not _HEADER_NAME.match(v) or len(v) > 64:
            r.fail(k, f"{v!r} is not a header name like \"X-Client-Cert-Sha256\" (letters, "
                      f"digits and '-', at most 64)")
            v = None
        elif norm in _PROXY_HEADERS:
            r.fail(k, f"{v!r} is a header the proxy frames or writes itself; choose a name "
                      f"of your own, like \"X-Client-Subject\"")
            v = None
        elif mode != "http":
            r.fail(k, f"{k} adds a request header: it needs mode = \"http\"")
            v = None
        elif client_auth == "none":
            r.fail(k, f"{k} passes on a verified client certificate, which client_auth = "
                      f"\"none\" never asks for: set client_ca and client_auth = \"optional\" "
                      f"or \"required\"")
            v = None
        out.append(v)
    if out[0] and out[1] and out[0].lower() == out[1].lower():
        r.fail("client_fingerprint_header", f"{out[1]!r} is client_subject_header's name too; "
                                            f"give each its own")
        out[1] = None
    return tuple(out)


def _check_groups(errs, key, certs, ckeys):
    """What the core cannot serve: too many groups or names, a name too
    long, and two keys of one type for the same names (a context holds one
    key per type, so the later would silently replace the earlier)."""
    if not certs:
        return
    cert_ctx, names, ngroups = tls.group(certs)
    if ngroups > tls.MAX_GROUPS:
        errs.add(f"{key}.certificates", f"{ngroups} different sets of names; at most "
                                        f"{tls.MAX_GROUPS} (put more names in one certificate)")
    if len(names) > tls.MAX_NAMES:
        errs.add(f"{key}.certificates", f"{len(names)} names; at most {tls.MAX_NAMES}")
    seen = {}
    for j, (c, g) in enumerate(zip(certs, cert_ctx)):
        for n in c.names:
            if len(n) > tls.MAX_NAME_LEN:
                errs.add(f"{ckeys[j]}.cert", f"the name {n[:40]!r}... is longer than "
                                             f"{tls.MAX_NAME_LEN} characters")
        if not c.names and j > 0:
            errs.warn(f"{ckeys[j]}.cert", f"{c.cert} names no DNS name (no subjectAltName, no "
                                          f"commonName): no client can choose it by name")
        if c.key_type is None:
            continue
        other = seen.get((g, c.key_type))
        if other is not None:
            errs.add(f"{ckeys[j]}.cert",
                     f"serves the same names as {other.rsplit('.', 1)[-1]} "
                     f"({', '.join(c.names[:3]) or 'none'}) with the same key type "
                     f"({c.key_type}): one context holds one key per type, so one of them "
                     f"would never be served; remove one, or pair an RSA with an ECDSA one")
        else:
            seen[(g, c.key_type)] = ckeys[j]


def _cluster_tls(errs, key, raw, servers) -> ClusterTLS | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        _system_store(errs, key)
        return ClusterTLS(sni=_default_sni(errs, key, servers))
    if not isinstance(raw, dict):
        errs.add(key, f"must be true or a table like {{ ca = \"ca.pem\", sni = "
                      f"\"app.internal\" }}, not {_kind(raw)}")
        return None
    r = _Reader(errs, key, raw)
    verify = r.bool("verify", True)
    ca = r.file("ca")
    if ca is not None:
        try:
            tls.check_ca_bundle(ca, "the CA bundle")
        except tls.TLSFileError as e:
            r.fail("ca", str(e))
    elif verify:
        _system_store(errs, key)
    if not verify:
        errs.warn(f"{key}.verify", "verify = false: the servers' certificates are not checked, "
                                   "so anyone on the path to them can pose as them; give ca "
                                   "(your internal CA's bundle) instead")
    sni = r.str("sni")
    if sni is not None and not (_HOSTNAME.match(sni) and len(sni) <= tls.MAX_NAME_LEN):
        r.fail("sni", f"{sni!r} is not a host name (the name sent to the servers and "
                      f"checked in their certificates)")
        sni = None
    cert, keyf = r.file("cert"), r.file("key")
    pair = None
    if keyf is not None and cert is None:
        r.fail("key", "key needs cert, the client certificate it belongs to")
    elif cert is not None:
        pair = _pair(errs, key, cert, keyf)
    if sni is None and verify and "sni" not in r.t:
        sni = _default_sni(errs, key, servers)
    t = ClusterTLS(ca=ca, sni=sni.lower().rstrip(".") if sni else None, verify=verify,
                   cert=pair, min_version=_tls_version(r))
    r.done()
    return t


def _default_sni(errs, key, servers) -> str | None:
    """The name to send and verify when sni is not given: the servers'
    host name when they all have the same one. Servers given by address
    (or by several names) leave none, and then a certificate is checked
    for its chain but not its name: that deserves a warning."""
    hosts = {s.host.lower().rstrip(".") for s in servers}
    if len(hosts) == 1:
        (h,) = hosts
        try:
            ipaddress.ip_address(h)
        except ValueError:
            return h
    if servers:
        errs.warn(key, "no sni, and the servers are not one host name: their certificates are "
                       "checked for a trusted chain but not for a name, so any certificate the "
                       "CA issued passes; set sni to the name their certificates carry")
    return None


def _system_store(errs, key):
    """Verification against the system's CA store needs one."""
    p = ssl.get_default_verify_paths()
    if not any(f and os.path.exists(f) for f in (p.cafile, p.capath)):
        errs.warn(key, f"no system CA store here ({p.openssl_cafile} or {p.openssl_capath}) to "
                       f"verify the servers with: install ca-certificates, or give ca")


def _methods(r, name="methods"):
    """A route's (or a listener's) methods list: a tuple of METHODS, or
    None when the key is absent (every method but CONNECT)."""
    if name not in r.t:
        r.used.add(name)
        return None
    v = r.list(name)
    if not v:
        if isinstance(r.t.get(name), list):
            r.fail(name, "needs at least one method; leave it out to allow every method "
                   "(CONNECT needs allow_connect = true)")
        return None
    out = []
    for k, m in enumerate(v):
        key = f"{name}[{k}]"
        if not isinstance(m, str):
            r.fail(key, f"must be a method name like \"GET\", not {_kind(m)}")
        elif m == "CONNECT":
            r.fail(key, "CONNECT is allowed with allow_connect = true, not in methods")
        elif m not in METHODS:
            if m.upper() in METHODS or m.upper() == "CONNECT":
                r.fail(key, f"{m!r}: methods are case-sensitive; did you mean {m.upper()!r}?")
            else:
                r.fail(key, f"{m!r} cannot be listed: methods may be {', '.join(METHODS)} "
                       "(leave methods out to allow every method, other ones included)")
        elif m not in out:
            out.append(m)
    return tuple(out) if out else None


def _listener(errs, i, raw, cluster_names, tls_clusters=frozenset()) -> Listener:
    r = _Reader(errs, f"listeners[{i}]", raw)
    name = r.str("name", required=True)
    bind = r.str("bind", required=True)
    host = port = None
    if bind is not None:
        try:
            host, port = parse_hostport(bind, "bind")
            ipaddress.ip_address(host)
        except ValueError as e:
            r.fail("bind", str(e) if "host:port" in str(e) or "port" in str(e) else
                   f"{bind!r}: bind needs an IP address, not a name (use 0.0.0.0 or ::)")
            host = port = None
    mode = r.str("mode", "tcp", choices=("tcp", "http"))
    redirect = _redirect(r)
    # A redirecting listener asks no upstream: its cluster may be left out.
    cluster = r.str("cluster", required=redirect is None)

    def known(c, key):
        if c is not None and c not in cluster_names:
            names = ", ".join(sorted(cluster_names)) or "none"
            hint = difflib.get_close_matches(c, sorted(cluster_names), n=1)
            errs.add(key, f"no cluster named {c!r} (clusters: {names})"
                     + (f"; did you mean {hint[0]!r}?" if hint else ""))
    known(cluster, f"listeners[{i}].cluster")
    routes = []
    raw_routes = r.list("routes")
    tcp = r.t.get("mode", "tcp") == "tcp"      # (not a mode that is itself wrong)
    # The listener's methods and allow_connect: the default of its routes,
    # and the policy of requests that match no route.
    l_methods = _methods(r)
    l_connect = r.bool("allow_connect", False)
    for k in ("methods", "allow_connect", "max_header_fields"):
        if k in r.t and tcp:
            r.fail(k, f"{k} needs mode = \"http\"")
    l_policy = _listener_policy(errs, r, tcp)
    if "forward_auth" in r.t and l_policy.forward_auth:
        known(l_policy.forward_auth.cluster, f"listeners[{i}].forward_auth.cluster")
    for j, raw_route in enumerate(raw_routes):
        rr = _Reader(errs, f"listeners[{i}].routes[{j}]", raw_route)
        if not rr.ok:
            continue
        rc = rr.str("cluster", required=True)
        known(rc, f"listeners[{i}].routes[{j}].cluster")
        if tcp:
            route = _sni_route(rr, rc, routes, () if "tls" in r.t else tls_clusters)
            if route:
                routes.append(route)
            continue
        if "sni" in rr.t:
            rr.used.add("sni")
            rr.fail("sni", "sni matches the TLS server name on mode = \"tcp\" listeners; "
                           "an http listener's route matches the request's Host: "
                           f"did you mean host = {_toml_str(rr.t['sni'])}?")
        host_m = rr.str("host")
        prefix = rr.str("path_prefix", "")
        if host_m is None and not prefix and "sni" not in rr.t:   # (that one said enough)
            rr.fail("host", "a route needs a host, a path_prefix, or both")
        if host_m is not None and not re.match(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", host_m):
            rr.fail("host", f"{host_m!r} is not a host name or \"*.domain\"")
        if prefix and not prefix.startswith("/"):
            rr.fail("path_prefix", f"{prefix!r} must start with /")
        methods = _methods(rr)
        allow_connect = rr.bool("allow_connect", l_connect)
        policy = _route_policy(errs, rr, l_policy)
        if "forward_auth" in rr.t and policy.forward_auth:
            known(policy.forward_auth.cluster, f"listeners[{i}].routes[{j}].forward_auth.cluster")
        rr.done()
        routes.append(Route(cluster=rc, host=host_m.lower() if host_m else None, path_prefix=prefix,
                            methods=methods if "methods" in rr.t else l_methods,
                            allow_connect=allow_connect, policy=policy))
    http = mode == "http"
    lst = Listener(
        name=name, host=host, port=port, mode=mode, cluster=cluster,
        forwarding=r.str("forwarding", "splice", choices=("splice", "splice_iowq", "buffered", "sockmap")),
        sockmap_send_buffer=r.size("sockmap_send_buffer", SOCKMAP_SEND_BUFFER, 0, 1 << 30),
        idle_timeout_ms=r.duration_ms("idle_timeout", 60000 if http else 300000),
        backlog=r.int("backlog", 4096, lo=1, hi=65535),
        routes=tuple(routes),
        sni_timeout_ms=r.duration_ms("sni_timeout", 5000, lo=1),
        header_timeout_ms=r.duration_ms("header_timeout", 10000, lo=1),
        keepalive_timeout_ms=r.duration_ms("keepalive_timeout", 60000, lo=1),
        max_header_size=r.size("max_header_size", 16384, 1024, 32768),
        max_header_fields=_max_header_fields(r),
        max_target=r.size("max_target", 8192, 256, 32768),
        max_body_size=r.size("max_body_size", 0, 0, 1 << 50),
        underscores_in_headers=r.bool("underscores_in_headers", False),
        access_log=r.str("access_log"),
        access_log_format=r.str("access_log_format", "json", choices=("json", "combined")),
        tls=_listener_tls(errs, f"listeners[{i}].tls", r.get("tls"), mode,
                          http2=r.t.get("http2") is True),
        methods=l_methods,
        allow_connect=l_connect,
        redirect=redirect,
        http2=r.bool("http2", False),
        http2_max_concurrent_streams=r.int("http2_max_concurrent_streams", 128, lo=1, hi=128),
        policy=l_policy,
        proxy_protocol=_proxy_protocol(r),
    )
    if lst.tls is not None and lst.tls.acme:
        lst = replace(lst, tls=replace(lst.tls, acme=acme_settings.resolve(
            errs, f"listeners[{i}].tls.acme", lst.tls.acme, routes)))
    if lst.http2 and mode != "http":
        r.fail("http2", "http2 = true needs mode = \"http\" (a tcp listener passes "
                        "HTTP/2 through untouched)")
    if lst.http2 and redirect is not None:
        r.fail("http2", "a redirect_https listener answers HTTP/1.x only; leave out http2")
    if "http2_max_concurrent_streams" in r.t and not lst.http2:
        r.fail("http2_max_concurrent_streams", "it limits HTTP/2 clients' streams: set "
                                               "http2 = true on the listener, or leave it out")
    if redirect is not None and not l_policy.empty():
        r.fail("redirect_https", "redirect_https answers every request before any policy "
                                 "would run: leave out the policy keys, or redirect_https")
    if redirect is not None:
        if mode != "http":
            r.fail("redirect_https", "redirect_https answers HTTP requests: it needs "
                                     "mode = \"http\"")
        elif lst.tls is not None or "tls" in r.t:
            r.fail("redirect_https", "this listener serves HTTPS already (it has tls), and would "
                                     "send its clients to itself; redirect_https belongs on the "
                                     "plain-HTTP listener (port 80)")
        elif raw_routes:
            r.fail("routes", "redirect_https answers every request itself, so no route is ever "
                             "used: leave out the routes, or redirect_https")
    if raw_routes and tcp and "tls" not in r.t:
        _passthrough_checks(r, cluster, tls_clusters)
    if "sockmap_send_buffer" in r.t and (not tcp or lst.forwarding != "sockmap"):
        r.fail("sockmap_send_buffer", "sockmap_send_buffer is for mode = \"tcp\" listeners with "
                                      "forwarding = \"sockmap\" (other forwarding waits for room "
                                      "in the send buffer without a delay)")
    if "sni_timeout" in r.t and not tcp:
        r.fail("sni_timeout", "sni_timeout is for mode = \"tcp\" listeners with sni routes")
    if lst.access_log and tcp:
        r.fail("access_log", "access logs are written by mode = \"http\" listeners")
    if lst.access_log and lst.access_log not in ("stdout", "stderr"):
        d = os.path.dirname(os.path.abspath(lst.access_log))
        if not os.path.isdir(d):
            r.fail("access_log", f"the directory {d} does not exist")
    r.done()
    return lst


def _redirect(r) -> Redirect | None:
    """redirect_https = true | 301 | 308 | { code = 301|308, port = N }:
    true is 308 to port 443 (Caddy's choice: a 308 keeps the method and
    body, where a 301 lets clients turn a POST into a GET)."""
    v = r.get("redirect_https")
    if v is None or v is False:
        return None
    hint = "redirect_https = true (308), 301, 308, or { code = 308, port = 8443 }"
    if v is True:
        return Redirect()
    if isinstance(v, int) and not isinstance(v, bool):
        code, port = v, 443
    elif isinstance(v, dict):
        rr = _Reader(r.errs, r._k("redirect_https"), v)
        code = rr.get("code", 308)
        port = rr.int("port", 443, lo=1, hi=65535)
        rr.done()
    else:
        r.fail("redirect_https", f"must be {hint}, not {_kind(v)}")
        return None
    if code not in (301, 308) or isinstance(code, bool):
        r.fail("redirect_https.code" if isinstance(v, dict) else "redirect_https",
               f"{code!r}: the redirect is 301 or 308, permanent, as HTTPS is meant to be "
               f"(308 keeps a POST a POST); write {hint}")
        return None
    return Redirect(code=code, port=port)


def _max_header_fields(r) -> int:
    v = r.get("max_header_fields", 128)
    if isinstance(v, bool) or not isinstance(v, int):
        r.fail("max_header_fields", f"must be an integer, not {_kind(v)}")
        return 128
    if v < 1:
        r.fail("max_header_fields", f"must be at least 1 (got {v})")
        return 128
    if v > MAX_HEADER_FIELDS:
        r.fail("max_header_fields", f"must be at most {MAX_HEADER_FIELDS} (got {v}): each worker's "
               "parse results hold that many fields, allocated once at start")
        return 128
    return v


_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,63}$")


# ---- per-route HTTP policies ---------------------------------------------------

POLICY_KEYS = ("request_headers", "response_headers", "via", "forwarded", "x_real_ip",
               "x_forwarded", "allow", "deny", "rate_limit", "max_in_flight", "redirect",
               "rewrite", "basic_auth", "error_pages", "compress", "forward_auth")
# The proxy's own answers an error page may replace (401, 405 and 429 carry
# headers a page would lose: WWW-Authenticate, Allow, Retry-After).
PAGE_STATUSES = (400, 403, 408, 413, 414, 431, 500, 501, 502, 503, 504, 505)
MAX_PAGE = 65536
# What libcrypt verifies and htpasswd writes: bcrypt (htpasswd -B) and
# SHA-crypt; Apache's own MD5 ($apr1$) and {SHA} are not crypt(3) formats.
_HASHES = ("$2y$", "$2b$", "$2a$", "$5$", "$6$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Lines the proxy owns: framing and connection management (a wrong one
# would split a request in two), and the X-Forwarded-* it writes itself.
_OWNED = {"content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
          "te", "trailer", "upgrade"}
_XF = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
REGEX_CAPTURES = 15                     # POL_CAPTURES - 1 (h1_policy.h): $0..$15


def _header_name(r, key, name, request, how):
    if not isinstance(name, str) or not _TOKEN.match(name):
        r.fail(key, f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~, "
                    "no spaces or ':')")
        return None
    low = name.lower()
    if low in _OWNED:
        r.fail(key, f"{name} is the proxy's to write (framing and connection management); "
                    "it cannot be set, added or removed")
        return None
    if low in _XF:
        r.fail(key, f"{name} is written by the proxy: use x_forwarded = false to send none, "
                    "and trusted_proxies to pass a load balancer's on")
        return None
    if low == "host" and (not request or how != "set"):
        r.fail(key, "Host can only be set (on requests), never added or removed: a request "
                    "has exactly one")
        return None
    return name


def _header_value(r, key, v):
    if not isinstance(v, str):
        r.fail(key, f"must be a string, not {_kind(v)}")
        return None
    if any(ord(ch) < 32 and ch != "\t" or ord(ch) == 127 for ch in v):
        r.fail(key, "a header value cannot hold control characters (CR, LF, NUL, ...)")
        return None
    if v != v.strip():
        r.fail(key, "a header value cannot start or end with whitespace")
        return None
    return v


def _headers(errs, key, raw, request) -> tuple:
    """request_headers / response_headers = { set = {...}, add = {...}, remove = [...] }:
    (set pairs, add pairs, remove names)."""
    if raw is None:
        return (), (), ()
    r = _Reader(errs, key, raw)
    out = []
    for how in ("set", "add"):
        pairs = []
        t = r.get(how, {})
        if not isinstance(t, dict):
            r.fail(how, f"must be a table of name = \"value\", not {_kind(t)}")
            t = {}
        for name, v in t.items():
            n = _header_name(r, f"{how}.{name}", name, request, how)
            val = _header_value(r, f"{how}.{name}", v)
            if n and val is not None:
                pairs.append((n, val))
        out.append(tuple(pairs))
    names = []
    for k, name in enumerate(r.list("remove")):
        n = _header_name(r, f"remove[{k}]", name, request, "remove")
        if n:
            names.append(n)
    set_names = {n.lower() for n, _ in out[0]}
    for n in names:
        if n.lower() in set_names:
            r.fail("remove", f"{n} is both set and removed: set already replaces the client's")
    r.done()
    return out[0], out[1], tuple(names)


def _networks(r, name) -> tuple:
    out = []
    for k, v in enumerate(r.list(name)):
        if not isinstance(v, str):
            r.fail(f"{name}[{k}]", f"must be a network like \"10.0.0.0/8\" or an address, "
                                   f"not {_kind(v)}")
            continue
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            r.fail(f"{name}[{k}]", f"{v!r} is not a network like \"10.0.0.0/8\", "
                                   "\"2001:db8::/32\" or an address")
    if name in r.t and not out and isinstance(r.t[name], list) and not r.t[name]:
        r.fail(name, "is empty; give at least one network, or leave it out")
    return tuple(out)


def _rate_limit(errs, key, raw):
    r = _Reader(errs, key, raw)
    rate = r.get("rate", None, required=True)
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                             or not 0.001 <= rate <= 1_000_000):
        r.fail("rate", f"must be a number of requests per second between 0.001 and 1000000 "
                       f"(got {rate!r})")
        rate = None
    burst = r.int("burst", None, lo=1, hi=1_000_000)
    r.done()
    if rate is None:
        return None
    return (float(rate), burst if burst is not None else max(1, int(-(-rate // 1))))


def _policy_redirect(errs, key, raw):
    r = _Reader(errs, key, raw)
    code = r.int("code", 302)
    if code not in (301, 302, 307, 308):
        r.fail("code", f"must be 301, 302, 307 or 308 (got {code})")
        code = 302
    scheme = r.str("scheme", choices=("http", "https"))
    host = r.str("host")
    if host is not None:
        try:
            h, _ = parse_hostport(host if re.search(r":\d+$", host) else host + ":1", "host")
            if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", h) and not _is_ip(h):
                raise ValueError
        except ValueError:
            r.fail("host", f"{host!r} is not a host name (with an optional :port)")
            host = None
    prefix = r.str("path_prefix")
    if prefix is not None and (not prefix.startswith("/") or any(ord(c) <= 32 for c in prefix)):
        r.fail("path_prefix", f"{prefix!r} must start with / and hold no spaces")
        prefix = None
    if r.ok and not any(k in r.t for k in ("scheme", "host", "path_prefix")):
        r.fail("scheme", "a redirect needs a scheme, a host, a path_prefix, or some of them")
    r.done()
    return PolicyRedirect(code=code, scheme=scheme, host=host, path_prefix=prefix)


def _rewrite(errs, key, raw):
    r = _Reader(errs, key, raw)
    vals = {}
    for k in ("strip_prefix", "add_prefix", "replace_path"):
        v = r.str(k)
        if v is not None and (not v.startswith("/") or any(ord(c) <= 32 or c == "?" for c in v)):
            r.fail(k, f"{v!r} must start with / and hold no spaces or '?'")
            v = None
        vals[k] = v
    regex = r.str("regex")
    repl = r.str("replacement")
    if regex is not None and repl is None:
        r.fail("replacement", "a regex rewrite needs a replacement (\"/new/$1\")")
    if repl is not None and regex is None:
        r.fail("regex", "a replacement needs a regex to match the path with")
    if repl is not None and any(ord(c) <= 32 for c in repl):
        r.fail("replacement", "the replacement cannot hold spaces or control characters")
    if vals["replace_path"] and (vals["strip_prefix"] or vals["add_prefix"] or regex):
        r.fail("replace_path", "replace_path replaces the whole path: give it alone")
    if regex and (vals["strip_prefix"] or vals["add_prefix"]):
        r.fail("regex", "a regex rewrite goes alone (its replacement can add and strip)")
    if r.ok and not (regex or repl or any(vals.values())):
        r.fail("strip_prefix", "a rewrite needs strip_prefix, add_prefix, replace_path, or "
                               "regex with replacement")
    r.done()
    return Rewrite(regex=regex, replacement=repl, **vals)


def _basic_auth(errs, key, raw):
    r = _Reader(errs, key, raw)
    path = r.file("htpasswd", required=True)
    realm = r.str("realm", "uproxy")
    if realm is not None and (not realm or any(ord(c) < 32 or c in '"\\' for c in realm)):
        r.fail("realm", f"{realm!r}: a realm is printable text without quotes or backslashes")
        realm = "uproxy"
    r.done()
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        r.fail("htpasswd", f"cannot read {path}: {e.strerror} (make one with "
                           "`htpasswd -B -c FILE USER`)")
        return None
    users, seen = [], set()
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, h = line.partition(":")
        if not sep or not name:
            r.fail("htpasswd", f"{path}:{n}: not a user:hash line")
            continue
        if not h.startswith(_HASHES):
            r.fail("htpasswd", f"{path}:{n}: {name}'s hash is not bcrypt ($2y$, from "
                               "`htpasswd -B`) or SHA-crypt ($5$, $6$); uproxy verifies only "
                               "those (Apache's $apr1$ and {SHA} are weak)")
            continue
        if name in seen:
            r.fail("htpasswd", f"{path}:{n}: {name} is listed twice")
            continue
        seen.add(name)
        users.append((name, h))
    if not users and not any(e.key == r._k("htpasswd") for e in errs.items):
        r.fail("htpasswd", f"{path} holds no user: add one with `htpasswd -B {path} USER`")
    return BasicAuth(htpasswd=path, realm=realm, users=tuple(users))


def _error_pages(errs, key, raw) -> tuple:
    """error_pages = { "5xx" = "file.html", "503" = "busy.html" }: the
    files read at load, with the content type their extension names."""
    r = _Reader(errs, key, raw)
    out = []
    for k in list(r.t):
        m = re.match(r"^([45])(xx|\d\d)$", k) if isinstance(k, str) else None
        if not m:
            r.used.add(k)
            r.fail(k, f"{k!r} is not a status class (\"4xx\", \"5xx\") or code (\"503\")")
            continue
        if m.group(2) != "xx" and int(k) not in PAGE_STATUSES:
            r.used.add(k)
            r.fail(k, f"{k} cannot have a page: the codes a page can replace are "
                      f"{', '.join(map(str, PAGE_STATUSES))} (401, 405 and 429 keep their own, "
                      "for the headers they carry)")
            continue
        path = r.file(k, required=True)
        if path is None:
            continue
        try:
            with open(path, "rb") as f:
                body = f.read(MAX_PAGE + 1)
        except OSError as e:
            r.fail(k, f"cannot read {path}: {e.strerror}")
            continue
        if len(body) > MAX_PAGE:
            r.fail(k, f"{path} is over {MAX_PAGE // 1024} KiB; an error page should be small")
            continue
        ext = os.path.splitext(path)[1].lower()
        ctype = {".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
                 ".json": "application/json"}.get(ext, "text/plain; charset=utf-8")
        out.append((k, ctype, body))
    r.done()
    return tuple(out)


COMPRESS_ALGORITHMS = ("zstd", "gzip")
# Text compresses (typically 4-10x); these types are the usual text the web
# serves, nginx's and Traefik's defaults and more.
COMPRESS_TYPES = ("text/html", "text/plain", "text/css", "text/javascript", "text/xml",
                  "text/csv", "text/markdown", "application/javascript", "application/json",
                  "application/xml", "application/ld+json", "application/manifest+json",
                  "application/rss+xml", "application/atom+xml", "application/wasm",
                  "image/svg+xml")
# Already compressed: compressing again costs CPU and saves nothing.
_COMPRESSED_TYPES = ("image/", "video/", "audio/", "font/woff", "application/zip",
                     "application/gzip", "application/x-gzip", "application/zstd",
                     "application/x-7z-compressed", "application/x-rar-compressed",
                     "application/x-bzip2", "application/x-xz", "application/pdf")
_MEDIA = re.compile(r"^[a-z0-9!#$&^_.+-]+/([a-z0-9!#$&^_.+-]+|\*)$")
ZSTD_LEVEL_MAX = 9                      # CZ_ZSTD_LEVEL_MAX (native/http/h1_compress.h)


def _compress(errs, key, raw):
    """compress = true (the defaults), false (none: a route turning off its
    listener's), or a table."""
    if raw is False:
        return None
    if raw is True:
        return Compress(types=COMPRESS_TYPES)
    r = _Reader(errs, key, raw)
    algs = []
    for k, a in enumerate(r.list("algorithms", list(COMPRESS_ALGORITHMS))):
        if a not in COMPRESS_ALGORITHMS:
            r.fail(f"algorithms[{k}]", f"{a!r} is not an algorithm uproxy compresses with: "
                                       "\"zstd\" or \"gzip\"")
        elif a in algs:
            r.fail(f"algorithms[{k}]", f"{a} is listed twice")
        else:
            algs.append(a)
    if "algorithms" in r.t and not algs and isinstance(r.t["algorithms"], list) \
            and not r.t["algorithms"]:
        r.fail("algorithms", "is empty; give \"zstd\", \"gzip\" or both (or compress = false)")
    types = []
    for k, t in enumerate(r.list("types", list(COMPRESS_TYPES))):
        low = t.strip().lower() if isinstance(t, str) else None
        if low is None or not _MEDIA.match(low):
            r.fail(f"types[{k}]", f"{t!r} is not a media type like \"text/html\" or "
                                  "\"text/*\"")
        elif low != "image/svg+xml" and (low.startswith(_COMPRESSED_TYPES) or low == "*/*"):
            r.fail(f"types[{k}]", f"{t} is compressed already (or may be): compressing it "
                                  "again costs CPU and saves nothing")
        else:
            types.append(low)
    min_size = r.size("min_size", 1024, 0, 1 << 30)
    gz = r.int("gzip_level", 5, lo=1, hi=9)
    zs = r.int("zstd_level", 3, lo=1, hi=ZSTD_LEVEL_MAX)
    r.done()
    if not algs or not types:
        return None
    return Compress(algorithms=tuple(algs), types=tuple(types), min_size=min_size,
                    gzip_level=gz, zstd_level=zs)


def _forward_auth(errs, key, raw):
    r = _Reader(errs, key, raw)
    cluster = r.str("cluster", required=True)
    path = r.str("path", "/")
    if path is not None and (not path.startswith("/") or any(ord(ch) <= 32 or ord(ch) == 127
                                                             for ch in path)):
        r.fail("path", f"{path!r}: the path (and query) the auth service is asked, starting "
                       "with / and without spaces or control characters")
        path = "/"
    lists = {}
    for which in ("copy_headers", "forward_headers"):
        names = []
        for k, n in enumerate(r.list(which)):
            if not isinstance(n, str) or not _TOKEN.match(n):
                r.fail(f"{which}[{k}]", f"{n!r} is not a header name (letters, digits and "
                                        "!#$%&'*+-.^_`|~, no spaces or ':')")
            elif n.lower() in _OWNED or (which == "copy_headers" and n.lower() in ("host",)):
                r.fail(f"{which}[{k}]", f"{n} is the proxy's to write (framing and connection "
                                        "management)")
            else:
                names.append(n.lower())
        lists[which] = tuple(dict.fromkeys(names))
    timeout = r.duration_ms("timeout", 2000, lo=1, hi=300_000)
    r.done()
    if cluster is None:
        return None
    return ForwardAuth(cluster=cluster, path=path, timeout_ms=timeout, **lists)


def _via(r):
    v = r.get("via", None)
    if v is None or v is False:
        return None
    if v is True:
        return "1.1 uproxy"
    if isinstance(v, str) and _TOKEN.match(v):
        return f"1.1 {v}"
    r.fail("via", "must be true (\"Via: 1.1 uproxy\") or a name for this proxy (a token, no "
                  f"spaces), not {v!r}")
    return None


def _policy(errs, r, base: Policy | None, route_prefix: str = "") -> Policy:
    """The policy keys of a listener (base None) or of one of its routes
    (base: the listener's): each key a route gives replaces the listener's,
    except request_headers and response_headers, whose set, add and remove
    are added to the listener's."""
    base = base or Policy()
    kw = {}
    for which, request in (("request_headers", True), ("response_headers", False)):
        if which in r.t:
            st, ad, rm = _headers(errs, r._k(which), r.get(which), request)
            pre = "request" if request else "response"
            own = {n.lower() for n, _ in st}
            kw[f"{pre}_set"] = tuple(p for p in getattr(base, f"{pre}_set")
                                     if p[0].lower() not in own) + st
            kw[f"{pre}_add"] = getattr(base, f"{pre}_add") + ad
            kw[f"{pre}_remove"] = getattr(base, f"{pre}_remove") + rm
        else:
            r.used.add(which)
    if "via" in r.t:
        kw["via"] = _via(r)
    for k in ("forwarded", "x_real_ip", "x_forwarded"):
        if k in r.t:
            kw[k] = r.bool(k, getattr(base, k))
        r.used.add(k)
    for k in ("allow", "deny"):
        if k in r.t:
            kw[k] = _networks(r, k)
        r.used.add(k)
    if "rate_limit" in r.t:
        kw["rate_limit"] = _rate_limit(errs, r._k("rate_limit"), r.get("rate_limit"))
    if "max_in_flight" in r.t:
        kw["max_in_flight"] = r.int("max_in_flight", None, lo=1, hi=1 << 30)
    if "redirect" in r.t:
        kw["redirect"] = _policy_redirect(errs, r._k("redirect"), r.get("redirect"))
    if "rewrite" in r.t:
        kw["rewrite"] = _rewrite(errs, r._k("rewrite"), r.get("rewrite"))
    if "basic_auth" in r.t:
        kw["basic_auth"] = _basic_auth(errs, r._k("basic_auth"), r.get("basic_auth"))
    if "error_pages" in r.t:
        kw["error_pages"] = _error_pages(errs, r._k("error_pages"), r.get("error_pages"))
    if "compress" in r.t:
        kw["compress"] = _compress(errs, r._k("compress"), r.get("compress"))
    if "forward_auth" in r.t:
        fa = r.get("forward_auth")
        kw["forward_auth"] = None if fa is False else \
            _forward_auth(errs, r._k("forward_auth"), fa)
    for k in ("rate_limit", "max_in_flight", "redirect", "rewrite", "via", "basic_auth",
              "error_pages", "compress", "forward_auth"):
        r.used.add(k)
    return Policy(**{**base.__dict__, **kw})


def _listener_policy(errs, r, tcp) -> Policy:
    """A listener's policy keys (with trusted_proxies, which only a
    listener has: it is about who connects)."""
    present = [k for k in POLICY_KEYS if k in r.t]
    if tcp:
        for k in present:
            r.used.add(k)
            r.fail(k, f"{k} is an HTTP policy: it needs mode = \"http\"")
        r.used.add("trusted_proxies")
        if "trusted_proxies" not in r.t:
            return Policy()
        if r.t.get("proxy_protocol") is not True:
            r.fail("trusted_proxies", "on a tcp listener trusted_proxies says who may send a "
                                      "PROXY header: it needs proxy_protocol = true")
        # (a tcp listener's only policy key: who may send a PROXY header)
        return Policy(trusted_proxies=_networks(r, "trusted_proxies"))
    p = _policy(errs, r, None)
    if "trusted_proxies" in r.t:
        p = Policy(**{**p.__dict__, "trusted_proxies": _networks(r, "trusted_proxies")})
    r.used.add("trusted_proxies")
    return p


def _proxy_protocol(r) -> bool:
    # With tls the header still comes first, in the clear, before the
    # handshake (as HAProxy's accept-proxy on an ssl bind): the core reads
    # it, then hands what follows to TLS.
    return r.bool("proxy_protocol", False)


def _route_policy(errs, rr, base: Policy) -> Policy:
    if "trusted_proxies" in rr.t:
        rr.used.add("trusted_proxies")
        rr.fail("trusted_proxies", "trusted_proxies is about who connects: it goes on the "
                                   "listener, for all its routes")
    p = _policy(errs, rr, base)
    if "max_body_size" in rr.t:
        p = Policy(**{**p.__dict__, "max_body_size": rr.size("max_body_size", 0, 1, 1 << 50)})
    rr.used.add("max_body_size")
    if p.redirect is not None and p.rewrite is not None and (
            "redirect" in rr.t or "rewrite" in rr.t):
        rr.fail("redirect" if "redirect" in rr.t else "rewrite",
                "a route that redirects never forwards, so a rewrite would not be used: "
                "give one of redirect and rewrite")
    return p


def _toml_str(v) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)


def _sni_name_ok(name: str) -> bool:
    """A host name, or "*." and a host name: dot-separated labels of
    letters, digits, '-' and '_' (what the ClientHello reader accepts,
    native/l4/clienthello.c), at most 253 bytes."""
    base = name[2:] if name.startswith("*.") else name
    return 0 < len(base) <= 253 and all(_LABEL.match(x) for x in base.split("."))


_PASSTHROUGH = ("an SNI passthrough listener forwards its clients' TLS untouched, so its "
                "clusters must not wrap it in TLS again: leave out the cluster's tls")


def _passthrough_checks(r, cluster, tls_clusters):
    """A tcp listener with sni routes and no tls passes TLS through: its
    clusters must not add TLS again. (With tls it terminates, routes by the
    same name, and a cluster may speak TLS to its servers.)"""
    if cluster in tls_clusters:
        r.fail("cluster", f"cluster {cluster!r} speaks TLS to its servers; " + _PASSTHROUGH)


def _sni_route(rr, cluster, earlier, tls_clusters) -> Route | None:
    """A route of a tcp listener: the ClientHello's server name (SNI
    passthrough, or routing after termination on a listener with tls),
    exact or "*.suffix", and nothing of HTTP's. tls_clusters: the clusters
    a passthrough route may not name (empty when the listener terminates)."""
    sni = rr.str("sni")
    for key in ("host", "path_prefix", "methods", "allow_connect", "max_body_size",
                "trusted_proxies") + POLICY_KEYS:
        if key in rr.t:
            rr.used.add(key)
            hint = (f"did you mean sni = {_toml_str(rr.t[key])}?" if key == "host"
                    else "it needs mode = \"http\"")
            rr.fail(key, f"{key} is for HTTP requests; a tcp listener's route matches the "
                         f"TLS server name (sni): {hint}")
    # (not when a host or a misspelt sni already says what is wrong)
    if sni is None and "host" not in rr.t and "sni" not in rr.t and not rr.typo_of("sni"):
        rr.fail("sni", "a tcp listener's route needs sni, the TLS server name it matches "
                       "(exact, or \"*.example.com\")")
    if cluster in tls_clusters:
        rr.fail("cluster", f"cluster {cluster!r} speaks TLS to its servers; " + _PASSTHROUGH)
    rr.done()
    if sni is None:
        return None
    if not _sni_name_ok(sni):
        rr.fail("sni", f"{sni!r} is not a host name or \"*.domain\"")
        return None
    sni = sni.lower()
    for other in earlier:
        if other.sni == sni:
            rr.fail("sni", f"{sni!r} is already routed (to {other.cluster!r}) by an earlier route")
            return None
    return Route(cluster=cluster, sni=sni)


def _table_list(errs, top, name) -> list:
    v = top.get(name, [])
    if not isinstance(v, list):
        errs.add(name, f"must be an array of tables: write [[{name}]]")
        return []
    return v


def parse(text: str, path: str = "<config>") -> Config:
    """The configuration in text, or a ConfigError listing every mistake."""
    return parse_raw(parse_toml(text, path), path, text)


def parse_toml(text: str, path: str = "<config>") -> dict:
    """tomllib's document, or a ConfigError at the line it names."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_AT.search(str(e))
        line = int(m.group(1)) if m else None
        raise ConfigError(path, "", f"not valid TOML: {e}", line,
                          _snippet(text.split("\n"), line)) from None


def parse_raw(raw: dict, path: str = "<config>", text: str = "") -> Config:
    """The checks of parse() on a document already read: the file's own,
    or the file with the dynamic part from etcd laid over it (then text is
    empty and errors carry key paths, not lines)."""
    errs = _Errors(path, text)
    top = _Reader(errs, "", raw)
    proxy = _proxy(errs, top.get("proxy", {}))
    dns_defaults = top.get("dns")
    if dns_defaults is not None and not isinstance(dns_defaults, dict):
        errs.add("dns", f"must be a table ([dns]), not {_kind(dns_defaults)}")
        dns_defaults = None
    elif dns_defaults is not None:
        _dns(errs, "dns", dns_defaults, None)     # checked once here, used by each cluster
    etcd = _etcd(errs, top.get("etcd"))
    raw_clusters = _table_list(errs, top, "clusters")
    raw_listeners = _table_list(errs, top, "listeners")
    raw_admin = top.get("admin")

    clusters = {}
    # Every name a cluster table gives, even one with other mistakes: a
    # listener that names it is not wrong too.
    names = {c["name"] for c in raw_clusters if isinstance(c, dict) and isinstance(c.get("name"), str)}
    for i, c in enumerate(raw_clusters):
        cl = _cluster(errs, i, c, dns_defaults)
        if cl.name is None:
            continue
        if cl.name in clusters:
            errs.add(f"clusters[{i}].name", f"cluster {cl.name!r} is defined twice")
            continue
        clusters[cl.name] = cl

    # (a misspelt [[listener]] is reported by top.done(), with the right name)
    if not raw_listeners and ("listeners" in top.t or not top.typo_of("listeners")):
        errs.add("listeners", "at least one [[listeners]] table is needed")
    listeners, seen, binds = [], {}, {}
    for i, l in enumerate(raw_listeners):
        lst = _listener(errs, i, l, names, {n for n, c in clusters.items() if c.tls})
        if lst.name is not None:
            if lst.name in seen:
                errs.add(f"listeners[{i}].name", f"listener {lst.name!r} is defined twice")
            seen[lst.name] = i
        if lst.host is not None:
            if (lst.host, lst.port) in binds:
                errs.add(f"listeners[{i}].bind",
                         f"{lst.bind} is already bound by listener {binds[(lst.host, lst.port)]!r}")
            else:
                binds[(lst.host, lst.port)] = lst.name
                errs.binds.append((f"listeners[{i}].bind", lst.host, lst.port))
        listeners.append(lst)
    if len(listeners) > 64:
        errs.add("listeners", "at most 64 listeners")
    admin = _admin(errs, raw_admin, binds)
    if admin:
        errs.binds.append(("admin.bind", admin.host, admin.port))
    acme = acme_settings.parse(errs, top.get("acme"), _Reader)
    for i, l in enumerate(listeners):
        if l.tls is not None and l.tls.acme and acme is None and "acme" not in top.t:
            errs.add(f"listeners[{i}].tls.acme", "needs an [acme] table: the CA's directory, "
                     "your email and agree_terms = true (docs/tls.md, Automatic certificates)")
    top.done()
    errs.raise_if_any()
    warnings = sorted(errs.warnings, key=lambda e: (e.line is None, e.line or 0))
    return Config(path=path, proxy=proxy, listeners=tuple(listeners), clusters=clusters,
                  admin=admin, warnings=tuple(warnings), etcd=etcd, acme=acme)


def _etcd(errs, raw) -> Etcd | None:
    """[etcd] endpoints = ["127.0.0.1:2379"], prefix = "/uproxy/": the
    dynamic part (clusters, routes) is read from there and watched."""
    if raw is None:
        return None
    r = _Reader(errs, "etcd", raw)
    endpoints = []
    for j, v in enumerate(r.list("endpoints")):
        try:
            text = v[len("http://"):] if isinstance(v, str) and v.startswith("http://") else v
            endpoints.append(parse_hostport(text, "an etcd endpoint"))
        except ValueError as e:
            errs.add(f"etcd.endpoints[{j}]", f"{e}; write \"host:2379\" (plain HTTP, etcd's "
                                             f"client port)")
    if not endpoints and "endpoints" not in errs.keys() and not any(
            k.startswith("etcd.endpoints[") for k in errs.keys()):
        r.fail("endpoints", "needs at least one etcd member, like [\"127.0.0.1:2379\"]")
    prefix = r.str("prefix", "/uproxy/")
    if prefix is not None and not prefix.endswith("/"):
        r.fail("prefix", f"{prefix!r} must end with / (keys are <prefix>clusters/<name>)")
    e = Etcd(endpoints=tuple(endpoints), prefix=prefix or "/uproxy/",
             timeout_ms=r.duration_ms("timeout", 3000, lo=100, hi=60000),
             backoff_max_ms=r.duration_ms("backoff_max", 10000, lo=100, hi=600000))
    r.done()
    return e


def locate(path: str, key: str, message: str) -> ConfigError:
    """A ConfigError for a mistake found after the file loaded (the TLS
    library refusing a setting the checks here let through), placed at
    the key's line as load() would place it."""
    try:
        with open(path, encoding="utf-8") as f:
            pos = Positions(f.read())
    except (OSError, UnicodeDecodeError):
        pos = Positions("")
    line = pos.line_of(key)
    return ConfigError(path, key, message, line, pos.snippet(line))


def _admin(errs, raw, binds) -> Admin | None:
    """[admin] bind = "127.0.0.1:9901": /metrics, /status and /health."""
    if raw is None:
        return None
    r = _Reader(errs, "admin", raw)
    bind = r.str("bind", required=True)
    admin = None
    if bind is not None:
        try:
            host, port = parse_hostport(bind, "bind")
            ipaddress.ip_address(host)
        except ValueError as e:
            r.fail("bind", str(e) if "port" in str(e) else
                   f"{bind!r}: bind needs an IP address, not a name")
        else:
            if (host, port) in binds:
                r.fail("bind", f"{bind} is also listener {binds[(host, port)]!r}'s address")
            admin = Admin(host=host, port=port)
    r.done()
    return admin


def read(path: str) -> str:
    """The file's text, or a ConfigError saying why it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not UTF-8 text: {e}") from None


def load(path: str) -> Config:
    return parse(read(path), os.path.abspath(path))
