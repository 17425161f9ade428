"""One certificate order with certbot's `acme` library (RFC 8555): the
account, a new order, the challenges answered by uproxy's own listeners,
finalization and the chain. Blocking calls: run on the ACME thread only.

The challenges are not answered here but published: `publish(http, alpn)`
(the manager's) puts HTTP-01 key authorizations and TLS-ALPN-01
certificates into the tables the workers read, and returns once every
worker runs them; only then is the CA told to validate.

DNS-01 is an extension point: answer_dns01 raises with what it would take.
"""
from __future__ import annotations

import datetime
import logging

import josepy as jose
import requests
from acme import challenges, client, crypto_util, errors, messages

from . import storage as st

log = logging.getLogger("uproxy")
RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"


class Failure(Exception):
    """Why an order failed, for the log and the back-off: kind is
    "rate_limited", "challenge", "network", "refused" (the CA said no) or
    "internal"; retry_after: seconds the CA asked for, or None."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.retry_after = kind, retry_after


def answer_dns01(name: str, validation: str):
    raise Failure("refused", f"{name}: dns-01 needs a DNS provider's API to publish the TXT "
                             f"record _acme-challenge.{name} = {validation!r}; uproxy has none "
                             f"yet: use http-01 or tls-alpn-01")


def retry_after_seconds(value, now: float | None = None) -> float | None:
    """A Retry-After header's wait in seconds: delta-seconds or an HTTP
    date (RFC 9110 10.2.3); None when absent or unreadable."""
    import email.utils
    import time
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class _Network(client.ClientNetwork):
    """The library's network, keeping the Retry-After of the CA's last 429
    or 503 answer: the library raises the problem document alone, and a
    rate limit's wait (Let's Encrypt's can be days) is in that header."""
    retry_after = None

    def _send_request(self, method, url, *args, **kwargs):
        response = super()._send_request(method, url, *args, **kwargs)
        if response.status_code in (429, 503):
            self.retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        return response


class Client:
    def __init__(self, settings, store: st.Storage):
        self.s = settings
        self.store = store
        self.acme = None                 # client.ClientV2 once the account is known
        self.key = None
        self.net = None

    # ---- the account -----------------------------------------------------------
    def connect(self):
        if self.acme is not None:
            return self.acme
        key, meta, damaged = self.store.account()
        for why in damaged:
            log.warning("acme: %s", why)
        self.key = jose.JWKEC(key=key)
        verify = self.s.directory_ca or True
        net = _Network(self.key, alg=jose.ES256, verify_ssl=verify,
                       user_agent="uproxy", timeout=15)
        self.net = net
        try:
            directory = client.ClientV2.get_directory(self.s.directory, net)
            acme = client.ClientV2(directory, net)
            if meta.get("uri") and meta.get("email") == self.s.email:
                net.account = messages.RegistrationResource(uri=meta["uri"], body=messages.Registration())
            else:
                reg = messages.NewRegistration.from_data(email=self.s.email,
                                                         terms_of_service_agreed=True)
                try:
                    acc = acme.new_account(reg)
                except errors.ConflictError as e:       # the key has an account already
                    acc = messages.RegistrationResource(uri=e.location, body=messages.Registration())
                net.account = acc
                self.store.save_account({"uri": acc.uri, "email": self.s.email,
                                         "directory": self.s.directory})
                log.info("acme: account %s at %s", acc.uri, self.s.directory)
        except Exception as e:
            raise _failure(e, f"the ACME directory {self.s.directory}", net) from None
        self.acme = acme
        return acme

    def key_authorization(self, token: str) -> str:
        return f"{token}.{jose.b64encode(self.key.thumbprint()).decode()}"

    # ---- one order -------------------------------------------------------------
    def issue(self, names, publish, timeout_s: float = 90):
        """(fullchain PEM, private key) for names; raises Failure."""
        acme = self.connect()
        key = st.new_key()
        csr = crypto_util.make_csr(st.key_pem(key), list(names))
        http, alpn = {}, {}
        try:
            try:
                order = acme.new_order(csr)
                answers = []
                for authz in order.authorizations:
                    if authz.body.status == messages.STATUS_VALID:
                        continue                        # validated recently: reused
                    name = authz.body.identifier.value
                    challb = self._pick(authz, name)
                    token = challb.chall.jobj["token"] if not hasattr(challb.chall, "token") \
                        else jose.b64encode(challb.chall.token).decode()
                    ka = self.key_authorization(token)
                    if _typ(challb.chall) == "http-01":
                        http[token] = ka
                    else:
                        alpn[name] = self.store.challenge_cert(name, ka)
                    answers.append(challb)
                if answers:
                    publish(http, alpn)
                for challb in answers:
                    acme.answer_challenge(challb, challenges.HTTP01Response())   # body {}
                deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
                order = acme.poll_and_finalize(order, deadline)
            except Failure:
                raise
            except Exception as e:
                raise _failure(e, ", ".join(names), self.net) from None
        finally:
            if http or alpn:
                publish({}, {}, remove=(set(http), set(alpn)))
        return order.fullchain_pem.encode(), key

    def _pick(self, authz, name):
        offered = {_typ(c.chall): c for c in authz.body.challenges}
        for want in self.s.challenges:
            if want in offered:
                return offered[want]
        if "dns-01" in offered and len(offered) == 1:
            answer_dns01(name, "...")
        raise Failure("refused", f"{name}: the CA offers {', '.join(sorted(offered))}, and "
                                 f"[acme] challenges allows {', '.join(self.s.challenges)}")

    def renewal_time(self, cert_pem: bytes):
        """The CA's suggested renewal time (ARI) when it offers one, else None."""
        try:
            acme = self.connect()
            when, _ = acme.renewal_time(cert_pem)
            return when.timestamp() if when is not None else None
        except Exception:
            return None


def _typ(chall) -> str:
    # tls-alpn-01 is not a class of the library (an UnrecognizedChallenge)
    typ = getattr(chall, "typ", None)
    return typ if isinstance(typ, str) else getattr(chall, "jobj", {}).get("type", "")


def _failure(e, what: str, net=None) -> Failure:
    if isinstance(e, messages.Error):
        if e.typ == RATE_LIMITED:
            wait = getattr(net, "retry_after", None)
            after = f" (it asks to wait {wait:.0f} s)" if wait else ""
            return Failure("rate_limited", f"{what}: the CA's rate limit{after}: {e.detail}",
                           retry_after=wait)
        return Failure("refused", f"{what}: the CA refused: {e.detail or e.typ}")
    if isinstance(e, errors.ValidationError):
        details = []
        for a in e.failed_authzrs:
            for c in a.body.challenges:
                if c.error is not None:
                    details.append(f"{a.body.identifier.value} ({_typ(c.chall)}): "
                                   f"{c.error.detail or c.error.typ}")
        return Failure("challenge", f"{what}: the validation failed: " + "; ".join(details) +
                       " (can the CA reach this listener on port 80 or 443 for that name?)")
    if isinstance(e, errors.TimeoutError):
        return Failure("challenge", f"{what}: the CA did not finish validating in time")
    if isinstance(e, requests.exceptions.SSLError):
        return Failure("network", f"{what}: the CA's certificate is not trusted (for a test CA, "
                                  f"give its root as [acme] directory_ca): {str(e)[:200]}")
    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return Failure("network", f"{what}: cannot reach the CA: {e.__class__.__name__}: "
                                  f"{str(e)[:200]}")
    return Failure("internal", f"{what}: {e.__class__.__name__}: {e}")
