"""Reading and validating uproxy.toml.

The result is plain, frozen data (Config and friends); nothing here touches
sockets or the C core. Every mistake is reported as a ConfigError that names
the file, the key path (``listeners[0].bind``) and what is wrong, so that
``uproxy check`` can print it the way ``nginx -t`` does.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field

from .features import FEATURES


class ConfigError(Exception):
    def __init__(self, path: str, key: str, message: str):
        self.path, self.key, self.message = path, key, message
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)


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
    pool_max_idle: int = 64
    pool_idle_timeout_ms: int = 60000
    max_requests: int = 0
    health: Health | None = None


@dataclass(frozen=True)
class Route:
    cluster: str
    host: str | None = None          # exact, or "*.example.com"
    path_prefix: str = ""


@dataclass(frozen=True)
class Listener:
    name: str
    host: str
    port: int
    mode: str
    cluster: str
    forwarding: str = "splice"
    idle_timeout_ms: int = 300000
    backlog: int = 4096
    routes: tuple = ()
    header_timeout_ms: int = 10000
    keepalive_timeout_ms: int = 60000
    max_header_size: int = 16384
    max_target: int = 8192
    max_body_size: int = 0               # 0: no limit
    underscores_in_headers: bool = False # forward header names with '_' 
    access_log: str | None = None        # "stdout", "stderr" or a file path
    access_log_format: str = "json"      # or "combined"

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
    user: str | None = None           # drop to this user after binding
    group: str | None = None


@dataclass(frozen=True)
class Admin:
    host: str
    port: int


@dataclass(frozen=True)
class Config:
    path: str
    proxy: Proxy
    listeners: tuple
    clusters: dict = field(default_factory=dict)
    admin: Admin | None = None


# ---- small typed readers -------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*(k|kib|kb|m|mib|mb|g|gib|gb)?\s*$", re.I)


class _Reader:
    """Walks one table, checking types and remembering which keys it used,
    so that unknown keys (usually typos) are reported with a suggestion."""

    def __init__(self, path: str, key: str, table):
        if not isinstance(table, dict):
            raise ConfigError(path, key, f"must be a table, not {_kind(table)}")
        self.path, self.key, self.t, self.used = path, key, table, set()

    def _k(self, name):
        return f"{self.key}.{name}" if self.key else name

    def err(self, name, message):
        return ConfigError(self.path, self._k(name), message)

    def get(self, name, default=None, required=False):
        self.used.add(name)
        if name not in self.t:
            if required:
                raise ConfigError(self.path, self._k(name), "is required")
            return default
        return self.t[name]

    def str(self, name, default=None, required=False, choices=None):
        v = self.get(name, default, required)
        if v is None:
            return v
        if not isinstance(v, str):
            raise self.err(name, f"must be a string, not {_kind(v)}")
        if choices and v not in choices:
            raise self.err(name, f"{v!r} is not one of {', '.join(map(repr, choices))}")
        return v

    def int(self, name, default=None, lo=None, hi=None):
        v = self.get(name, default)
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(name, f"must be an integer, not {_kind(v)}")
        if lo is not None and v < lo:
            raise self.err(name, f"must be at least {lo} (got {v})")
        if hi is not None and v > hi:
            raise self.err(name, f"must be at most {hi} (got {v})")
        return v

    def duration_ms(self, name, default_ms, lo=0, hi=86400_000):
        v = self.get(name, None)
        if v is None:
            return default_ms
        if isinstance(v, bool):
            raise self.err(name, "must be a duration like \"5s\" or \"250ms\"")
        if isinstance(v, (int, float)):
            ms = int(v * 1000)
        elif isinstance(v, str) and (m := _DURATION.match(v)):
            n, unit = float(m.group(1)), (m.group(2) or "s")
            ms = int(n * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}[unit])
        else:
            raise self.err(name, f"{v!r} is not a duration like \"5s\" or \"250ms\"")
        if ms < lo or ms > hi:
            raise self.err(name, f"must be between {lo} ms and {hi // 1000} s (got {ms} ms)")
        return ms

    def size(self, name, default, lo, hi, power_of_two=False):
        v = self.get(name, None)
        if v is None:
            return default
        if isinstance(v, bool):
            raise self.err(name, "must be a size like 16384 or \"16k\"")
        if isinstance(v, int):
            n = v
        elif isinstance(v, str) and (m := _SIZE.match(v)):
            unit = (m.group(2) or "").lower()[:1]
            n = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]
        else:
            raise self.err(name, f"{v!r} is not a size like 16384 or \"16k\"")
        if n < lo or n > hi:
            raise self.err(name, f"must be between {lo} and {hi} (got {n})")
        if power_of_two and n & (n - 1):
            raise self.err(name, f"must be a power of two (got {n})")
        return n

    def bool(self, name, default):
        v = self.get(name, default)
        if not isinstance(v, bool):
            raise self.err(name, f"must be true or false, not {_kind(v)}")
        return v

    def list(self, name, default=()):
        v = self.get(name, None)
        if v is None:
            return list(default)
        if not isinstance(v, list):
            raise self.err(name, f"must be a list, not {_kind(v)}")
        return v

    def done(self):
        extra = [k for k in self.t if k not in self.used]
        if extra:
            k = extra[0]
            hint = difflib.get_close_matches(k, sorted(self.used), n=1)
            more = f"; did you mean {hint[0]!r}?" if hint else ""
            raise self.err(k, f"unknown key{more}")


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

def _proxy(path, raw) -> Proxy:
    r = _Reader(path, "proxy", raw or {})
    workers = r.get("workers")
    if workers is not None and workers != "auto":
        workers = r.int("workers", lo=1, hi=256)
    elif workers == "auto":
        workers = None
    disabled = []
    for i, name in enumerate(r.list("disable_features")):
        if name not in FEATURES:
            hint = difflib.get_close_matches(str(name), FEATURES, n=1)
            raise ConfigError(path, f"proxy.disable_features[{i}]",
                              f"{name!r} is not a feature; known: {', '.join(FEATURES)}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        disabled.append(name)
    iowq_cpu = r.get("iowq_cpu", "worker")
    if not (iowq_cpu in ("worker", "any") or (isinstance(iowq_cpu, int) and not isinstance(iowq_cpu, bool) and iowq_cpu >= 0)):
        raise r.err("iowq_cpu", f"{iowq_cpu!r} must be \"worker\", \"any\" or a CPU number")
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
        user=r.str("user"),
        group=r.str("group"),
    )
    if p.user is not None:
        import pwd
        try:
            pwd.getpwnam(p.user)
        except KeyError:
            raise r.err("user", f"no user named {p.user!r} on this host") from None
    if p.group is not None:
        import grp
        try:
            grp.getgrnam(p.group)
        except KeyError:
            raise r.err("group", f"no group named {p.group!r} on this host") from None
        if p.user is None:
            raise r.err("group", "group needs user too")
    r.done()
    return p


def _server(path, key, v):
    weight = 1
    if isinstance(v, dict):
        r = _Reader(path, key, v)
        addr = r.str("address", required=True)
        weight = r.int("weight", 1, lo=1, hi=1000)
        r.done()
        key = key + ".address"
    else:
        addr = v
    try:
        host, port = parse_hostport(addr, "a server")
        fam_sa = resolve(host, port)
    except ValueError as e:
        raise ConfigError(path, key, str(e)) from None
    return Server(host=host, port=port, address=fam_sa, weight=weight)


def _cluster(path, i, raw) -> Cluster:
    r = _Reader(path, f"clusters[{i}]", raw)
    name = r.str("name", required=True)
    raw_servers = r.list("servers")
    if not raw_servers:
        raise r.err("servers", "needs at least one server, like [\"127.0.0.1:8080\"]")
    servers = tuple(_server(path, f"clusters[{i}].servers[{j}]", s)
                    for j, s in enumerate(raw_servers))
    hash_key = r.str("hash_key", "client_ip")
    if hash_key != "client_ip" and not re.match(r"^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$", hash_key):
        raise r.err("hash_key", f"{hash_key!r} must be \"client_ip\" or \"header:Name\"")
    c = Cluster(
        name=name,
        servers=servers,
        balance=r.str("balance", "round_robin",
                      choices=("round_robin", "least_conn", "p2c", "hash")),
        connect_timeout_ms=r.duration_ms("connect_timeout", 5000, lo=1),
        max_attempts=r.int("max_attempts", min(3, len(servers) + 1), lo=1, hi=16),
        fail_threshold=r.int("fail_threshold", 3, lo=0, hi=1000),
        eject_ms=r.duration_ms("eject_time", 10000),
        hash_key=hash_key,
        response_timeout_ms=r.duration_ms("response_timeout", 60000, lo=1),
        pool_max_idle=r.int("pool_max_idle", 64, lo=0, hi=100000),
        pool_idle_timeout_ms=r.duration_ms("pool_idle_timeout", 60000),
        max_requests=r.int("max_requests", 0, lo=0),
        health=_health(path, f"clusters[{i}].health", r.get("health")),
    )
    r.done()
    return c


def _health(path, key, raw) -> Health | None:
    if raw is None:
        return None
    r = _Reader(path, key, raw)
    hpath = r.str("path", "/")
    if hpath is not None and not hpath.startswith("/"):
        raise r.err("path", f"{hpath!r} must start with /")
    if r.get("tcp", False) is True:
        hpath = None
    expect = r.str("expect", "2xx")
    for part in expect.split(","):
        if not re.match(r"^\s*([1-5]xx|[1-5]\d\d)\s*$", part):
            raise r.err("expect", f"{expect!r}: use status classes or codes like \"2xx\" or \"200,301\"")
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


def _listener(path, i, raw, clusters) -> Listener:
    r = _Reader(path, f"listeners[{i}]", raw)
    name = r.str("name", required=True)
    bind = r.str("bind", required=True)
    try:
        host, port = parse_hostport(bind, "bind")
        ipaddress.ip_address(host)
    except ValueError as e:
        msg = str(e) if "host:port" in str(e) or "port" in str(e) else \
            f"{bind!r}: bind needs an IP address, not a name (use 0.0.0.0 or ::)"
        raise r.err("bind", msg) from None
    mode = r.str("mode", "tcp", choices=("tcp", "http"))
    cluster = r.str("cluster", required=True)

    def known(c, key):
        if c not in clusters:
            names = ", ".join(sorted(clusters)) or "none"
            raise ConfigError(path, key, f"no cluster named {c!r} (clusters: {names})")
    known(cluster, f"listeners[{i}].cluster")
    routes = []
    raw_routes = r.list("routes")
    if raw_routes and mode != "http":
        raise r.err("routes", "routes need mode = \"http\"")
    for j, raw in enumerate(raw_routes):
        rr = _Reader(path, f"listeners[{i}].routes[{j}]", raw)
        rc = rr.str("cluster", required=True)
        known(rc, f"listeners[{i}].routes[{j}].cluster")
        host_m = rr.str("host")
        prefix = rr.str("path_prefix", "")
        if host_m is None and not prefix:
            raise rr.err("host", "a route needs a host, a path_prefix, or both")
        if host_m is not None and not re.match(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", host_m):
            raise rr.err("host", f"{host_m!r} is not a host name or \"*.domain\"")
        if prefix and not prefix.startswith("/"):
            raise rr.err("path_prefix", f"{prefix!r} must start with /")
        rr.done()
        routes.append(Route(cluster=rc, host=host_m.lower() if host_m else None, path_prefix=prefix))
    http = mode == "http"
    lst = Listener(
        name=name, host=host, port=port, mode=mode, cluster=cluster,
        forwarding=r.str("forwarding", "splice", choices=("splice", "splice_iowq", "buffered")),
        idle_timeout_ms=r.duration_ms("idle_timeout", 60000 if http else 300000),
        backlog=r.int("backlog", 4096, lo=1, hi=65535),
        routes=tuple(routes),
        header_timeout_ms=r.duration_ms("header_timeout", 10000, lo=1),
        keepalive_timeout_ms=r.duration_ms("keepalive_timeout", 60000, lo=1),
        max_header_size=r.size("max_header_size", 16384, 1024, 32768),
        max_target=r.size("max_target", 8192, 256, 32768),
        max_body_size=r.size("max_body_size", 0, 0, 1 << 50),
        underscores_in_headers=r.bool("underscores_in_headers", False),
        access_log=r.str("access_log"),
        access_log_format=r.str("access_log_format", "json", choices=("json", "combined")),
    )
    if lst.access_log and mode != "http":
        raise r.err("access_log", "access logs are written by mode = \"http\" listeners")
    if lst.access_log and lst.access_log not in ("stdout", "stderr"):
        d = os.path.dirname(os.path.abspath(lst.access_log))
        if not os.path.isdir(d):
            raise r.err("access_log", f"the directory {d} does not exist")
    r.done()
    return lst


def parse(text: str, path: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    top = _Reader(path, "", raw)
    proxy = _proxy(path, top.get("proxy", {}))
    clusters = {}
    raw_clusters = top.get("clusters", [])
    if not isinstance(raw_clusters, list):
        raise ConfigError(path, "clusters", "must be an array of tables: write [[clusters]]")
    for i, c in enumerate(raw_clusters):
        cl = _cluster(path, i, c)
        if cl.name in clusters:
            raise ConfigError(path, f"clusters[{i}].name", f"cluster {cl.name!r} is defined twice")
        clusters[cl.name] = cl
    raw_listeners = top.get("listeners", [])
    if not isinstance(raw_listeners, list):
        raise ConfigError(path, "listeners", "must be an array of tables: write [[listeners]]")
    if not raw_listeners:
        raise ConfigError(path, "listeners", "at least one [[listeners]] table is needed")
    listeners, names, binds = [], set(), {}
    for i, l in enumerate(raw_listeners):
        lst = _listener(path, i, l, clusters)
        if lst.name in names:
            raise ConfigError(path, f"listeners[{i}].name", f"listener {lst.name!r} is defined twice")
        if (lst.host, lst.port) in binds:
            raise ConfigError(path, f"listeners[{i}].bind",
                              f"{lst.bind} is already bound by listener {binds[(lst.host, lst.port)]!r}")
        names.add(lst.name)
        binds[(lst.host, lst.port)] = lst.name
        listeners.append(lst)
    if len(listeners) > 64:
        raise ConfigError(path, "listeners", "at most 64 listeners")
    admin = _admin(path, top.get("admin"), binds)
    top.done()
    return Config(path=path, proxy=proxy, listeners=tuple(listeners), clusters=clusters,
                  admin=admin)


def _admin(path, raw, binds) -> Admin | None:
    """[admin] bind = "127.0.0.1:9901": /metrics, /status and /health."""
    if raw is None:
        return None
    r = _Reader(path, "admin", raw)
    bind = r.str("bind", required=True)
    try:
        host, port = parse_hostport(bind, "bind")
        ipaddress.ip_address(host)
    except ValueError as e:
        raise r.err("bind", str(e) if "port" in str(e) else
                    f"{bind!r}: bind needs an IP address, not a name") from None
    if (host, port) in binds:
        raise r.err("bind", f"{bind} is also listener {binds[(host, port)]!r}'s address")
    r.done()
    return Admin(host=host, port=port)


def load(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the file: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not UTF-8 text: {e}") from None
    return parse(text, os.path.abspath(path))
