"""The [acme] table and a listener's `tls = { acme = ... }`, checked for
`uproxy check` and every load. config.py calls these with its own reader
(passed in, so that this module does not import config at load time)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
CHALLENGES = ("http-01", "tls-alpn-01", "dns-01")
ROUTES = ("<routes>",)          # acme = true: the names of the listener's routes
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")


@dataclass(frozen=True)
class Acme:
    directory: str = LETSENCRYPT
    email: str = ""
    agree_terms: bool = False
    storage: str = "/var/lib/uproxy/acme"
    directory_ca: str | None = None      # CA bundle for the directory's HTTPS (a test CA)
    challenges: tuple = ("http-01", "tls-alpn-01")   # in order of preference
    retry_min_ms: int = 60_000           # back-off after a failure, doubling ...
    retry_max_ms: int = 24 * 3600_000    # ... up to this
    renew_fraction: float = 2 / 3        # of the lifetime, when the server offers no ARI


def parse(errs, raw, Reader) -> Acme | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errs.add("acme", "must be a table ([acme])")
        return None
    r = Reader(errs, "acme", raw)
    directory = r.str("directory", LETSENCRYPT)
    if directory and not directory.startswith(("https://", "http://")):
        r.fail("directory", f"{directory!r} is not a URL; Let's Encrypt's is {LETSENCRYPT} "
                            f"(staging first: {LETSENCRYPT_STAGING})")
    email = r.str("email")
    if email is None:
        r.fail("email", "is required: the address the CA writes to about expiring "
                        "certificates and its terms, e.g. email = \"admin@example.com\"")
    elif not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", email):
        r.fail("email", f"{email!r} is not an e-mail address")
    if "agree_terms" in r.t and "accept_tos" in r.t:
        r.fail("accept_tos", "agree_terms and accept_tos are the same key: give one")
    tos_key = "accept_tos" if "accept_tos" in r.t else "agree_terms"
    agree = r.bool(tos_key, False)
    if not agree:
        r.fail(tos_key, "the CA's terms of service must be accepted to get certificates "
                        "(read them at the directory's meta.termsOfService), then set "
                        f"{tos_key} = true")
    storage = r.file("storage") or "/var/lib/uproxy/acme"
    why = _unwritable(storage)
    if why:
        r.fail("storage", why)
    ca = r.file("directory_ca")
    if ca is not None and not os.path.isfile(ca):
        r.fail("directory_ca", f"the CA bundle {ca} does not exist")
    chal = []
    for j, c in enumerate(r.list("challenges", ["http-01", "tls-alpn-01"])):
        if c not in CHALLENGES:
            errs.add(f"acme.challenges[{j}]", f"{c!r} is not a challenge; they are "
                                              f"{', '.join(CHALLENGES)}")
        elif c == "dns-01":
            errs.add(f"acme.challenges[{j}]",
                     "dns-01 needs a DNS provider's API, which uproxy does not have yet (an "
                     "extension point: uproxy.acme.client.answer_dns01); use http-01 (a plain "
                     "http listener on port 80) or tls-alpn-01 (a TLS listener on port 443)")
        else:
            chal.append(c)
    rmin = r.duration_ms("retry_min", 60_000, lo=100, hi=86400_000)
    rmax = r.duration_ms("retry_max", 24 * 3600_000, lo=100, hi=30 * 86400_000)
    r.done()
    return Acme(directory=directory or LETSENCRYPT, email=email or "", agree_terms=agree,
                storage=storage, directory_ca=ca, challenges=tuple(chal) or ("http-01",),
                retry_min_ms=rmin, retry_max_ms=max(rmin, rmax))


def _unwritable(path: str) -> str | None:
    """Why uproxy could not keep its files in path, or None."""
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    if not os.path.isdir(p):
        return f"{p} is not a directory"
    if not os.access(p, os.W_OK | os.X_OK):
        return (f"{p} is not writable by this process (uid {os.geteuid()}); the account key "
                f"and certificates are kept there: chown it to the user uproxy runs as")
    return None


def listener(errs, key: str, raw) -> tuple:
    """tls.acme: true (the routes' hosts, one certificate each), a list of
    names (one certificate each), or { domains = [...], san = true } (one
    certificate for them all). A tuple of name tuples, or ROUTES."""
    if raw is True:
        return ROUTES
    if raw is False:
        return ()
    san = False
    names = raw
    if isinstance(raw, dict):
        unknown = set(raw) - {"domains", "san"}
        if unknown:
            errs.add(f"{key}.{sorted(unknown)[0]}", "is not a key of acme; it has domains and san")
        names = raw.get("domains")
        san = raw.get("san", False)
        if not isinstance(san, bool):
            errs.add(f"{key}.san", "must be true or false")
            san = False
    if not isinstance(names, list) or not names:
        errs.add(key, "must be true (the names of the listener's routes), a list of names "
                      "like [\"example.com\", \"www.example.com\"], or { domains = [...], "
                      "san = true } for one certificate naming them all")
        return ()
    out = []
    for j, n in enumerate(names):
        if not isinstance(n, str) or not check_name(errs, f"{key}[{j}]", n):
            continue
        out.append(n.lower().rstrip("."))
    if san:
        return (tuple(dict.fromkeys(out)),) if out else ()
    return tuple((n,) for n in dict.fromkeys(out))


def check_name(errs, key: str, name: str) -> bool:
    n = name.lower().rstrip(".")
    if n.startswith("*."):
        errs.add(key, f"{name!r}: a wildcard certificate needs the dns-01 challenge, which "
                      f"uproxy does not answer yet; list the names")
        return False
    if not _NAME.match(n) or len(n) > 253:
        errs.add(key, f"{name!r} is not a DNS name a CA issues for (an IP address or a "
                      f"single label is not)")
        return False
    return True


def resolve(errs, key: str, requests: tuple, routes) -> tuple:
    """acme = true: one certificate per exact host of the listener's routes."""
    if requests != ROUTES:
        return requests
    hosts = [rt.host for rt in routes if rt.host and not rt.host.startswith("*.")]
    if not hosts:
        errs.add(key, "acme = true takes the names of the listener's routes' hosts, and this "
                      "listener has none: list the names, acme = [\"example.com\"]")
        return ()
    return tuple((h,) for h in dict.fromkeys(hosts) if check_name(errs, key, h))
