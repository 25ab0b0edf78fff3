"""What to do after a failed attempt: retry later (and when), or dead-letter.

Pure functions of the Trigger's compiled retry policy and the attempt's result,
so every rule of the policy is unit-tested without a network:

- the delay grows exponentially, linearly or stays fixed from `initialDelay`,
  is spread by +/- `jitter`, and never exceeds `maxDelay`;
- a `Retry-After` from the subscriber (seconds or an HTTP date) is honoured up
  to `retryAfterMax`: the next attempt is never earlier than it asked;
- `retryOn` names the failures worth retrying (`network`, `timeout`, a status
  like `429`, or a class like `5xx`); any other failure is dead-lettered at once;
- `maxAttempts` and `maxAge` end the retries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

from tidings.api.destinations import REASON as DESTINATION_NOT_ALLOWED
from tidings.api.routes import CompiledRetry

# "destination": the destination policy refused the connection, before any
# packet (tidings.dispatcher.guard); never retried, dead-lettered at once.
# "request": the request cannot be encoded (tidings.dispatcher.http_post
# RequestError); it never could be, so it is dead-lettered at once too.
FailureKind = Literal["network", "timeout", "status", "destination", "request"]


@dataclass(frozen=True)
class Failure:
    """One failed attempt: no answer (network/timeout) or a non-2xx status."""

    kind: FailureKind
    status: int | None = None
    message: str = ""
    retry_after: float | None = None  # seconds, from the Retry-After header
    rule: str = ""  # destination: the policy's rule that refused it

    def label(self) -> str:
        """`network`, `timeout` or the status code: how retryOn names it."""
        return str(self.status) if self.kind == "status" else self.kind


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float = 0.0  # seconds until the next attempt, when retry
    reason: str = ""  # why not retried, for the dead letter


def is_retryable(retry_on: list[str], failure: Failure) -> bool:
    """Whether `failure` matches one of the retryOn entries."""
    if failure.kind != "status":
        return failure.kind in retry_on
    code = str(failure.status)
    return code in retry_on or f"{code[0]}xx" in retry_on


def backoff_delay(policy: CompiledRetry, attempts: int, rng: random.Random | None = None) -> float:
    """The delay before attempt `attempts + 1`, after `attempts` (>= 1) failures."""
    n = max(1, attempts)
    if policy.backoff == "exponential":
        # 2 ** n overflows a float long before the cap matters; clamp the exponent.
        delay = policy.initial_delay * 2.0 ** min(n - 1, 60)
    elif policy.backoff == "linear":
        delay = policy.initial_delay * n
    else:
        delay = policy.initial_delay
    delay = min(delay, policy.max_delay)
    if policy.jitter > 0:
        spread = (rng or random).uniform(-policy.jitter, policy.jitter)
        delay = min(delay * (1 + spread), policy.max_delay)
    return max(0.0, delay)


def decide(
    policy: CompiledRetry,
    failure: Failure,
    *,
    attempts: int,
    age: float,
    max_age: float,
    rng: random.Random | None = None,
) -> Decision:
    """After `attempts` attempts (this failure included) of an event `age` seconds old."""
    if failure.kind == "destination":
        # The policy will refuse it again; a fixed policy and `tidings replay` bring it back.
        return Decision(False, reason=DESTINATION_NOT_ALLOWED)
    if failure.kind == "request":
        return Decision(False, reason="the request can never be sent")
    if not is_retryable(policy.retry_on, failure):
        return Decision(False, reason=f"{failure.label()} is not in retryOn")
    if attempts >= policy.max_attempts:
        return Decision(False, reason=f"maxAttempts ({policy.max_attempts}) reached")
    delay = backoff_delay(policy, attempts, rng)
    if failure.retry_after is not None:
        delay = max(delay, min(failure.retry_after, policy.retry_after_max))
    if age + delay > max_age:
        return Decision(False, reason=f"maxAge ({max_age:g}s) would pass before the next attempt")
    return Decision(True, delay=delay)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)
