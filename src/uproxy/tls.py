"""TLS on the control plane: certificates and keys read and checked, a
listener's certificates grouped into the contexts the core builds, and the
session-ticket keys every worker shares.

Nothing here runs per connection or touches the C core: config.py calls
the readers when it loads a file (at start, at each reload, in `uproxy
check`), tables.py turns the result into the core's structs, and the
runtime keeps the ticket keys (tickets.py would be a smaller file, but the
keys and the certificates share the file format rules, so they live here).

Python's own ``ssl`` module is the judge of a file, so that no new
dependency comes in: ``ssl._ssl._test_decode_cert`` reads a certificate's
names and dates, and ``SSLContext.load_cert_chain`` says whether a key is
the certificate's (it runs the same OpenSSL check the core runs later).
"""
from __future__ import annotations

import base64
import binascii
import math
import os
import re
import ssl
import stat
import time
from dataclasses import dataclass, field

# Modern defaults (Mozilla's "intermediate" profile, minus what it keeps
# for old clients): forward secrecy and AEAD only, so no RC4, 3DES or
# CBC-SHA1, whatever the system's OpenSSL configuration would allow.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
DEFAULT_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# Key exchange: X25519 first (fast, and what clients offer first), then
# the NIST curves Mozilla's profiles list. OpenSSL's own default adds X448
# and P-521, which sslyze flags against Mozilla's "intermediate" profile.
DEFAULT_CURVES = "X25519:P-256:P-384"
CURVES = ("X25519", "X448", "P-256", "P-384", "P-521", "secp256r1", "secp384r1", "secp521r1",
          "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192")
VERSIONS = {"1.2": 0x0303, "1.3": 0x0304}
CLIENT_AUTH = ("none", "optional", "required")

EXPIRY_WARNING_S = 30 * 86400     # `uproxy check` and the start warn this long before
MAX_GROUPS = 16                   # native/transport/tls.h TLS_MAX_CTX
MAX_NAMES = 1024                  # TLS_MAX_NAMES
MAX_NAME_LEN = 253                # a DNS name; tls_name.name holds 254 bytes
MAX_ALPN_WIRE = 64                # tls_server.alpn
TICKET_KEY_LEN = 80               # 16 name, 32 HMAC key, 32 AES key
MAX_TICKET_KEYS = 16


class TLSFileError(Exception):
    """What is wrong with a file and what to do about it, as one sentence;
    part says which file of a pair it is about ("cert" or "key")."""

    def __init__(self, message: str, part: str | None = None):
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class Certificate:
    """One certificate/key pair as read from disk."""
    cert: str                 # the PEM file: the certificate, then its chain
    key: str                  # the PEM file of its private key
    names: tuple              # lower-case DNS names (SAN, or the CN without SAN)
    subject: str              # its subject's commonName, or the whole subject
    issuer: str
    serial: str
    not_before: float         # Unix time
    not_after: float
    key_type: str | None      # "RSA", "EC", "Ed25519", "Ed448", or None: not known

    @property
    def label(self) -> str:
        return self.names[0] if self.names else self.subject


# ---- files -------------------------------------------------------------------

def _read(path: str, what: str, part: str | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TLSFileError(f"{what} {path} does not exist", part) from None
    except IsADirectoryError:
        raise TLSFileError(f"{what} {path} is a directory, not a PEM file", part) from None
    except PermissionError:
        raise TLSFileError(
            f"{what} {path} is not readable by this process (uid {os.geteuid()}); make it "
            f"readable by the user uproxy runs as (with [proxy] user, that user: for a key, "
            f"chgrp that user's group and chmod 640)", part) from None
    except OSError as e:
        raise TLSFileError(f"{what} {path} cannot be read: {e.strerror}", part) from None


class _Encrypted(Exception):
    pass


def _no_passphrase():
    # load_cert_chain would otherwise ask on the terminal: a proxy that
    # starts from systemd has none, and a reload must never wait on one.
    raise _Encrypted()


_ENCRYPTED_FIX = ("is encrypted with a passphrase, which uproxy cannot ask for; write it "
                  "decrypted (openssl pkey -in KEY -out KEY.plain) and keep that file mode 600")

# AlgorithmIdentifier OIDs in a PKCS#8 key, DER-encoded
_KEY_OIDS = ((bytes.fromhex("06092a864886f70d010101"), "RSA"),
             (bytes.fromhex("06092a864886f70d01010a"), "RSA"),          # RSA-PSS
             (bytes.fromhex("06072a8648ce3d0201"), "EC"),
             (bytes.fromhex("06032b6570"), "Ed25519"),
             (bytes.fromhex("06032b6571"), "Ed448"))
_PEM_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |)PRIVATE KEY)-----(.*?)-----END", re.S)


def key_type(pem: bytes) -> str | None:
    """The private key's algorithm from its PEM text: the traditional
    headers name it, a PKCS#8 key carries its OID near the start. Used
    only to find two keys of one type serving the same names."""
    m = _PEM_KEY.search(pem)
    if not m:
        return None
    head = m.group(1).decode()
    if head != "PRIVATE KEY":
        return head.split()[0]
    try:
        der = base64.b64decode(b"".join(m.group(2).split()))
    except (binascii.Error, ValueError):
        return None
    for oid, name in _KEY_OIDS:
        if oid in der[:40]:
            return name
    return None


def _name_of(rdns) -> str:
    parts = [f"{k}={v}" for rdn in rdns for k, v in rdn]
    for rdn in rdns:
        for k, v in rdn:
            if k == "commonName":
                return v
    return ", ".join(parts)


def read_certificate(cert: str, key: str) -> Certificate:
    """The pair, checked the way the core will load it: both files
    readable PEM, the key unencrypted and the certificate's own. Raises
    TLSFileError naming the file and the fix."""
    data = _read(cert, "the certificate", "cert")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSFileError(
            f"the certificate {cert} is not a PEM certificate (no '-----BEGIN CERTIFICATE-----' "
            f"line); a DER file converts with: openssl x509 -inform der -in {cert} -out cert.pem",
            "cert")
    try:
        d = ssl._ssl._test_decode_cert(cert)
    except (ssl.SSLError, ValueError, OSError) as e:
        raise TLSFileError(f"the certificate {cert} cannot be decoded: {e}", "cert") from None
    kdata = data if key == cert else _read(key, "the private key", "key")
    if b"ENCRYPTED PRIVATE KEY-----" in kdata or b"Proc-Type: 4,ENCRYPTED" in kdata:
        raise TLSFileError(f"the private key {key} {_ENCRYPTED_FIX}", "key")
    if not _PEM_KEY.search(kdata):
        raise TLSFileError(
            f"the private key {key} holds no PEM private key (no '-----BEGIN PRIVATE KEY-----' "
            f"line)" + ("; give the key file with key = \"...\"" if key == cert else ""), "key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise TLSFileError(f"the private key {key} {_ENCRYPTED_FIX}", "key") from None
    except ssl.SSLError as e:
        if e.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            raise TLSFileError(
                f"the private key {key} does not belong to the certificate {cert}; find the "
                f"pair whose public keys agree: openssl x509 -in {cert} -noout -pubkey and "
                f"openssl pkey -in {key} -pubout print the same key for a matching pair",
                "key") from None
        if e.reason == "EE_KEY_TOO_SMALL":
            raise TLSFileError(f"the key of {cert} is too small for this system's OpenSSL "
                               f"security level; issue it with a 2048-bit (or larger) RSA key "
                               f"or an ECDSA P-256 key", "cert") from None
        if e.reason in ("CA_MD_TOO_WEAK", "EE_MD_TOO_WEAK"):
            raise TLSFileError(f"the certificate {cert} is signed with a digest (MD5 or SHA-1) "
                               f"this system's OpenSSL refuses; reissue it with SHA-256", "cert") from None
        raise TLSFileError(f"the pair {cert} / {key} cannot be loaded: "
                           f"{e.reason or e.strerror or e}", "cert") from None
    san = [v for k, v in d.get("subjectAltName", ()) if k == "DNS"]
    subject = _name_of(d.get("subject", ()))
    names = san or ([subject] if subject and "=" not in subject else [])
    seen = []
    for n in names:
        n = n.lower().rstrip(".")
        if n and n not in seen:
            seen.append(n)
    return Certificate(
        cert=cert, key=key, names=tuple(seen), subject=subject,
        issuer=_name_of(d.get("issuer", ())), serial=d.get("serialNumber", ""),
        not_before=float(ssl.cert_time_to_seconds(d["notBefore"])),
        not_after=float(ssl.cert_time_to_seconds(d["notAfter"])),
        key_type=key_type(kdata))


def expiry(c: Certificate, now: float | None = None) -> tuple:
    """(kind, sentence) about the certificate's dates: ("error", ...) when
    it has expired, ("warning", ...) when it expires within 30 days or is
    not valid yet, else (None, None)."""
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(c.not_after))
    left = c.not_after - now
    if left <= 0:
        return "error", (f"the certificate {c.cert} ({c.label}) expired on {when}; clients "
                         f"refuse it: renew it (certbot renew, or your CA), then reload")
    if c.not_before > now:
        start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(c.not_before))
        return "warning", (f"the certificate {c.cert} ({c.label}) is not valid before "
                           f"{start}; clients refuse it until then (is the clock right?)")
    if left < EXPIRY_WARNING_S:
        return "warning", (f"the certificate {c.cert} ({c.label}) expires in "
                           f"{_span(left)}, on {when}; renew it, then reload")
    return None, None


def _span(s: float) -> str:
    if s >= 2 * 86400:
        return f"{int(s // 86400)} days"
    if s >= 2 * 3600:
        return f"{int(s // 3600)} hours"
    return f"{max(1, int(s // 60))} minutes"


def check_ca_bundle(path: str, what: str) -> None:
    """A CA bundle the library will load: readable, with at least one
    certificate OpenSSL accepts."""
    data = _read(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSFileError(f"{what} {path} holds no PEM certificate (no '-----BEGIN "
                           f"CERTIFICATE-----' line)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as e:
        raise TLSFileError(f"{what} {path} cannot be loaded: {e.reason or e}") from None


# ---- a listener's contexts -------------------------------------------------

def group(certs) -> tuple:
    """(cert_ctx, names, ngroups) for native/api.h's up_tls_server.

    Certificates that serve the same set of names share one context (an
    RSA and an ECDSA certificate for one site: the library picks by the
    client's signature algorithms). Groups are numbered in the order their
    first certificate is listed, so group 0, the default for a client
    without SNI or with an unknown name, is the first certificate's.
    names maps each name, in the order the certificates list them, to its
    group; a name two groups serve goes to the first listed."""
    index: dict = {}
    cert_ctx = []
    for c in certs:
        cert_ctx.append(index.setdefault(frozenset(c.names), len(index)))
    names, seen = [], set()
    for c, g in zip(certs, cert_ctx):
        for n in c.names:
            if n not in seen:
                seen.add(n)
                names.append((n, g))
    return cert_ctx, names, len(index)


def alpn_wire(protocols) -> bytes:
    """["h2", "http/1.1"] -> b"\\x02h2\\x08http/1.1" (RFC 7301's wire form)."""
    out = b""
    for p in protocols:
        raw = p.encode()
        out += bytes([len(raw)]) + raw
    return out


# ---- session-ticket keys -------------------------------------------------------

def read_ticket_keys(path: str) -> tuple:
    """The keys of a ticket-key file, the first of which issues tickets.

    Two forms: binary, 80 bytes per key back to back (`openssl rand 80 >
    ticket.key`, the format of nginx's ssl_session_ticket_key), or text,
    one key per line in base64 (`openssl rand 80 | base64 -w0`), with
    blank lines and '#' comments allowed. A key is 16 bytes of name, 32 of
    HMAC key, then 32 of AES key."""
    data = _read(path, "the ticket key file")
    keys = _text_keys(data)
    if keys is None:
        if not data or len(data) % TICKET_KEY_LEN:
            raise TLSFileError(
                f"the ticket key file {path} is neither base64 lines nor binary keys of "
                f"{TICKET_KEY_LEN} bytes ({len(data)} bytes); make one with: "
                f"openssl rand {TICKET_KEY_LEN} > {path}")
        keys = [data[i:i + TICKET_KEY_LEN] for i in range(0, len(data), TICKET_KEY_LEN)]
    if not keys:
        raise TLSFileError(f"the ticket key file {path} holds no key; make one with: "
                           f"openssl rand {TICKET_KEY_LEN} > {path}")
    if len(keys) > MAX_TICKET_KEYS:
        raise TLSFileError(f"the ticket key file {path} holds {len(keys)} keys; at most "
                           f"{MAX_TICKET_KEYS} (drop the oldest, at the end)")
    if len({k[:16] for k in keys}) != len(keys):
        raise TLSFileError(f"the ticket key file {path} holds two keys with the same name "
                           f"(first 16 bytes): each key must be random")
    return tuple(keys)


def _text_keys(data: bytes):
    """The keys of a base64 file, or None when data is not one."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    keys, lines = [], [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        return None
    for n, ln in enumerate(lines, 1):
        try:
            raw = base64.b64decode(ln, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != TICKET_KEY_LEN:
            raise TLSFileError(
                f"the ticket key file's key {n} is {len(raw)} bytes, not {TICKET_KEY_LEN}; "
                f"write one key per line: openssl rand {TICKET_KEY_LEN} | base64 -w0")
        keys.append(raw)
    return keys


def ticket_file_exposed(path: str) -> bool:
    """True when others than the owner and its group may read the file:
    whoever reads it can decrypt every session resumed with its keys."""
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


@dataclass
class _Rotating:
    rotate_s: float
    keep: int
    next_at: float
    keys: list = field(default_factory=list)


class TicketKeys:
    """The session-ticket keys of every TLS listener, kept by the runtime
    across reloads (a reload that made new keys would end every client's
    resumption).

    Without a key file a listener's keys are random (os.urandom), made at
    start and shared by all its workers; every ``ticket_rotate`` a new
    first key issues the tickets and the previous ones stay accepted as
    long as a ticket they issued can live (session_timeout), so a rotation
    costs no resumption. With ``ticket_key_file`` the file's keys are used
    as they are (several instances share them; the file's owner rotates
    them and reloads)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.generated: dict = {}           # listener name -> _Rotating
        self.rotated_at: dict = {}          # listener name -> Unix time of its last key

    @staticmethod
    def keep_for(rotate_s: float, timeout_s: float) -> int:
        """Keys kept: the issuing one, and enough older ones to accept a
        ticket for its whole lifetime."""
        return max(2, min(MAX_TICKET_KEYS, 1 + math.ceil(timeout_s / max(1.0, rotate_s))))

    def keys_for(self, name: str, tls) -> bytes:
        """The listener's keys for the core, the issuing key first; b""
        when it issues no tickets."""
        if not tls.session_tickets:
            self.generated.pop(name, None)
            return b""
        if tls.ticket_keys:
            self.generated.pop(name, None)
            return b"".join(tls.ticket_keys)
        rotate_s = tls.ticket_rotate_ms / 1000
        keep = self.keep_for(rotate_s, tls.session_timeout_s)
        r = self.generated.get(name)
        if r is None:
            r = _Rotating(rotate_s, keep, self.clock() + rotate_s, [os.urandom(TICKET_KEY_LEN)])
            self.generated[name] = r
            self.rotated_at[name] = time.time()
        elif r.rotate_s != rotate_s or r.keep != keep:
            # new settings keep the keys (sessions resume) and take effect now
            r.next_at = min(r.next_at, self.clock() + rotate_s)
            r.rotate_s, r.keep = rotate_s, keep
            del r.keys[keep:]
        return b"".join(r.keys)

    def forget(self, names) -> None:
        """Drop the keys of listeners no longer configured."""
        for n in list(self.generated):
            if n not in names:
                del self.generated[n]
                self.rotated_at.pop(n, None)

    def due(self) -> float | None:
        """Seconds until the next rotation (<= 0: one is due), or None."""
        if not self.generated:
            return None
        return min(r.next_at for r in self.generated.values()) - self.clock()

    def rotate_due(self) -> list:
        """Rotate the listeners whose time has come; their names."""
        now = self.clock()
        done = []
        for name, r in self.generated.items():
            if r.next_at <= now:
                r.keys.insert(0, os.urandom(TICKET_KEY_LEN))
                del r.keys[r.keep:]
                r.next_at = now + r.rotate_s
                self.rotated_at[name] = time.time()
                done.append(name)
        return done

    def describe(self, name: str, tls) -> dict:
        """For /status: where the keys come from and how many there are
        (never the keys)."""
        if not tls.session_tickets:
            return {"enabled": False}
        if tls.ticket_keys:
            return {"enabled": True, "source": "file", "file": tls.ticket_key_file,
                    "keys": len(tls.ticket_keys)}
        r = self.generated.get(name)
        return {"enabled": True, "source": "generated", "keys": len(r.keys) if r else 0,
                "rotate_s": tls.ticket_rotate_ms / 1000,
                "rotated_at_ms": int(self.rotated_at.get(name, 0) * 1000),
                "next_rotation_s": round(max(0.0, r.next_at - self.clock()), 1) if r else None}


# ---- what the admin endpoint shows -------------------------------------------------

def _cert_doc(c: Certificate, group_: int | None, now: float) -> dict:
    d = {"cert": c.cert, "key": c.key, "names": list(c.names), "subject": c.subject,
         "issuer": c.issuer, "serial": c.serial, "key_type": c.key_type,
         "not_before_ms": int(c.not_before * 1000), "not_after_ms": int(c.not_after * 1000),
         "expires_in_s": int(c.not_after - now)}
    if group_ is not None:
        d["group"] = group_
    return d


def status(cfg, tickets: TicketKeys | None = None, now: float | None = None) -> dict:
    """/status's "tls": each TLS listener's settings and certificates (with
    their expiry and the group that serves them; group 0 is the default),
    and each TLS cluster's. Never a key's content."""
    now = time.time() if now is None else now
    listeners, clusters = [], []
    for l in cfg.listeners:
        t = l.tls
        if t is None:
            continue
        cert_ctx, _, ngroups = group(t.certificates)
        listeners.append({
            "listener": l.name, "min_version": t.min_version, "alpn": list(t.alpn),
            "client_auth": t.client_auth, "handshake_timeout_ms": t.handshake_timeout_ms,
            "client_subject_header": t.client_subject_header,
            "client_fingerprint_header": t.client_fingerprint_header,
            "groups": ngroups,
            "certificates": [_cert_doc(c, g, now) for c, g in zip(t.certificates, cert_ctx)],
            "session_tickets": (tickets.describe(l.name, t) if tickets is not None
                                else {"enabled": t.session_tickets}),
            "session_timeout_s": t.session_timeout_s, "session_cache": t.session_cache})
    for c in cfg.clusters.values():
        t = c.tls
        if t is None:
            continue
        clusters.append({"cluster": c.name, "verify": t.verify, "ca": t.ca or "system",
                         "sni": t.sni, "min_version": t.min_version,
                         "certificate": _cert_doc(t.cert, None, now) if t.cert else None})
    return {"listeners": listeners, "clusters": clusters}


# ---- the control plane's own client (health checks) ------------------------------

def client_context(t) -> ssl.SSLContext:
    """A Python ssl context with a cluster's tls settings, for the health
    checker: a check of a TLS server speaks TLS too, with the same
    verification the workers apply, so a server whose certificate would
    fail every request is not reported up."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if t.min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    if t.verify:
        if t.ca:
            ctx.load_verify_locations(cafile=t.ca)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if t.cert is not None:
        ctx.load_cert_chain(t.cert.cert, t.cert.key, password=_no_passphrase)
    return ctx
