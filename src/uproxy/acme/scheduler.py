"""When to ask the CA: each certificate's renewal time and the back-off of
one that failed. Pure arithmetic on a clock, tested without a CA.

- Renewal at two thirds of the lifetime (90-day certificates: 30 days
  before expiry, as certbot and Caddy do), or at the time the CA's ARI
  renewal window suggests when it offers one; plus jitter (up to 2% of
  the lifetime) so that a fleet does not ask at the same second.
- After a failure: retry_min, doubled per failure up to retry_max, with
  jitter; a rate-limit answer waits at least an hour (the CA's limits are
  counted over hours and weeks: asking sooner only counts against them).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

RATE_LIMIT_WAIT_S = 3600.0


@dataclass
class Entry:
    names: tuple
    cert: object = None                  # tls.Certificate: issued and stored
    placeholder: object = None           # tls.Certificate: served until then
    next_at: float = 0.0                 # Unix time of the next attempt
    failures: int = 0
    last_error: str | None = None
    last_kind: str | None = None
    ari_at: float | None = None          # the CA's suggested renewal time
    warned_at: float = 0.0
    history: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.names[0]


def renew_at(not_before: float, not_after: float, fraction: float, rng=random) -> float:
    life = max(1.0, not_after - not_before)
    return not_before + fraction * life + rng.uniform(0, 0.02 * life)


def plan(e: Entry, now: float, fraction: float, rng=random) -> float:
    """The next attempt for an entry with no failure pending."""
    if e.cert is None:
        return now
    if e.ari_at is not None:
        return max(now, min(e.ari_at, e.cert.not_after - 60))
    return max(now, renew_at(e.cert.not_before, e.cert.not_after, fraction, rng))


def backoff(e: Entry, now: float, retry_min_s: float, retry_max_s: float, kind: str,
            retry_after: float | None = None, rng=random) -> float:
    """The next attempt after a failure (e.failures already counted)."""
    wait = min(retry_max_s, retry_min_s * 2 ** max(0, e.failures - 1))
    wait *= rng.uniform(1.0, 1.25)
    if kind == "rate_limited":
        wait = max(wait, min(RATE_LIMIT_WAIT_S, retry_max_s))
    if retry_after:
        wait = max(wait, retry_after)
    if e.cert is not None:
        # never sleep past the end of a certificate that still serves
        wait = min(wait, max(retry_min_s, (e.cert.not_after - now) / 2))
    return now + wait
