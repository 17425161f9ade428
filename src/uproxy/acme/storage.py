"""The ACME files on disk, all under [acme] storage, one directory per CA
directory (Let's Encrypt's staging and production never mix):

  <storage>/<directory host and path>/
    account.key                 the account's private key (PEM, 0600)
    account.json                its URL at the CA, and the e-mail it was made with
    certs/<first name>.pem      the certificate, its chain, then its key (0600)
    placeholders/<first name>.pem   self-signed, served until the first issuance
    challenges/<name>.pem       TLS-ALPN-01 certificates while a validation runs

A certificate and its key share one file, so that one rename replaces both:
a crash can never pair a new certificate with an old key. Every write is a
temporary file in the same directory, fsync, rename, fsync of the
directory; a half-written file never has the real name.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .. import tls

ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")   # RFC 8737


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _self_signed(names, key, days: float, extensions=()) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False))
    for ext, critical in extensions:
        b = b.add_extension(ext, critical)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.") or "_"


class Storage:
    def __init__(self, root: str, directory: str):
        host_path = re.sub(r"^https?://", "", directory)
        self.dir = os.path.join(root, slug(host_path))

    # ---- the account ---------------------------------------------------------
    @property
    def account_key_path(self) -> str:
        return os.path.join(self.dir, "account.key")

    def account(self):
        """(key, account.json's dict) as stored; a new key (and no URL)
        when there is none. A damaged file is set aside (.corrupt) and
        reported by the caller; a new account is then made."""
        damaged = []
        key = None
        try:
            with open(self.account_key_path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), None)
        except FileNotFoundError:
            pass
        except (ValueError, TypeError) as e:
            damaged.append(self._set_aside(self.account_key_path, e))
        meta = {}
        if key is not None:
            try:
                with open(os.path.join(self.dir, "account.json")) as f:
                    meta = json.load(f)
            except FileNotFoundError:
                pass
            except ValueError as e:
                damaged.append(self._set_aside(os.path.join(self.dir, "account.json"), e))
        if key is None:
            key = new_key()
            write_atomic(self.account_key_path, key_pem(key))
        return key, meta, damaged

    def save_account(self, meta: dict) -> None:
        write_atomic(os.path.join(self.dir, "account.json"),
                     json.dumps(meta, indent=1).encode(), 0o600)

    # ---- certificates ----------------------------------------------------------
    def cert_path(self, names) -> str:
        return os.path.join(self.dir, "certs", slug(names[0]) + ".pem")

    def load(self, names):
        """(tls.Certificate or None, why-not or None) for the stored
        certificate of names; one that is damaged or names others is set
        aside and said why."""
        path = self.cert_path(names)
        if not os.path.exists(path):
            return None, None
        try:
            c = tls.read_certificate(path, path)
        except tls.TLSFileError as e:
            return None, self._set_aside(path, e)
        if set(c.names) != set(names):
            return None, (f"{path} names {', '.join(c.names)}, not {', '.join(names)}; "
                          f"a new certificate is requested")
        return c, None

    def save(self, names, fullchain_pem: bytes, key) -> str:
        path = self.cert_path(names)
        write_atomic(path, fullchain_pem.rstrip(b"\n") + b"\n" + key_pem(key))
        return path

    def placeholder(self, names):
        """A self-signed certificate for names, served until the CA's
        arrives (clients see a certificate error, not a refused
        handshake); made once and kept."""
        path = os.path.join(self.dir, "placeholders", slug(names[0]) + ".pem")
        try:
            c = tls.read_certificate(path, path)
            if set(c.names) == set(names) and c.not_after > _now() + 86400:
                return c
        except tls.TLSFileError:
            pass
        key = new_key()
        write_atomic(path, _self_signed(list(names), key, 30) + key_pem(key))
        return tls.read_certificate(path, path)

    def challenge_cert(self, name: str, key_authorization: str) -> tuple:
        """RFC 8737's certificate for a TLS-ALPN-01 validation of name:
        self-signed, the name alone, and the SHA-256 of the key
        authorization in the critical acmeIdentifier extension. (cert, key)
        paths: the same file."""
        key = new_key()
        digest = hashlib.sha256(key_authorization.encode()).digest()
        ext = x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest)
        path = os.path.join(self.dir, "challenges", slug(name) + ".pem")
        write_atomic(path, _self_signed([name], key, 7, [(ext, True)]) + key_pem(key))
        return path, path

    def _set_aside(self, path: str, why) -> str:
        aside = path + ".corrupt"
        try:
            os.replace(path, aside)
        except OSError:
            aside = None
        return (f"{path} is damaged ({why}); " +
                (f"kept as {aside} for a look, " if aside else "") + "and made again")


def _now() -> float:
    import time
    return time.time()
