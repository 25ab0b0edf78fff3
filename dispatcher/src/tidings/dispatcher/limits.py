"""A Trigger's concurrency limit and rate limit, held across all dispatcher replicas.

Both live in Redis under the source's hash tag and are taken inside the same
Lua call that reads the entries (tidings.dispatcher.cursor), so a replica only
ever reads what it may start at once, and the limits cost no extra round trip.

- Concurrency: a ZSET of leases (member "consumer:stream-id" -> expiry ms).
  A lease ends when its outcome is settled, or expires after the Trigger's
  timeout plus a margin when its holder died, so a crash cannot leak capacity.
- Rate: a token bucket (HASH keys.RATE_TOKENS, keys.RATE_UPDATED) refilled at
  `perSecond` up to `burst`. Events a filter then drops get their tokens back.

The Lua is tidings/api/lua/_limits.lua, included in the cursor scripts; this
module turns a Trigger's delivery policy into those scripts' arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.api.routes import CompiledDelivery


@dataclass(frozen=True)
class Limits:
    """A Trigger's limits as script arguments (0 means none)."""

    concurrency: int
    rate: float
    burst: int

    @classmethod
    def of(cls, delivery: CompiledDelivery) -> Limits:
        rate = delivery.rate_per_second or 0.0
        burst = delivery.rate_burst or (max(1, int(rate)) if rate else 0)
        return cls(concurrency=delivery.concurrency, rate=rate, burst=burst)
