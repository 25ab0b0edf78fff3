"""What a source adapter tells the operator: its health, in Redis.

The adapter never writes the EventSource's status itself (the operator owns
it). It keeps one JSON document in the `status` field of keys.adapter_state;
the operator reads it with `read` and turns it into conditions with
`conditions`:

- `Capturing`: True while the adapter streams (reason Streaming, Watching,
  Scheduled); False with the error's reason (ConnectionFailed,
  WalLevelNotLogical, TableNotFound, …) and message while it retries; False
  with Stopped / EventSourceDeleted once it stopped.
- `WalRetained` (Postgres): True/RetainedWalOverThreshold when the slot keeps
  more WAL than spec.postgres.maxRetainedWalBytes, else False/WithinThreshold.
- `ChangesMissed` (Postgres, only once it happened): True/SlotRecreated when
  the replication slot had to be created anew after the adapter had streamed
  from it (dropped by hand, invalidated, a failover): changes committed in
  between were not captured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from redis.asyncio import Redis

from tidings.api import keys
from tidings.api.types import Condition

log = logging.getLogger(__name__)

FIELD = "status"
CAPTURING = "Capturing"


@dataclass
class AdapterStatus:
    state: str  # Running | Retrying | Standby | Stopped
    reason: str
    message: str = ""
    since: float = 0.0  # when `state`/`reason` last changed (s since epoch)
    updated: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


_FIELDS = frozenset(f.name for f in fields(AdapterStatus))


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class StatusReporter:
    """Writes an adapter's status when it changes (and `details` when they do)."""

    def __init__(self, redis: Redis, namespace: str, name: str) -> None:
        self._redis = redis
        self._key = keys.adapter_state(namespace, name)
        self.current: AdapterStatus | None = None
        # Told every report, changed or not (`tidings source --listen` counts
        # each failed attempt); None in-process (`tidings dev`, tests).
        self.on_report: Callable[[AdapterStatus], None] | None = None

    async def report(self, state: str, reason: str, message: str = "", **details: Any) -> None:
        now = time.time()
        previous = self.current
        merged = dict(previous.details) if previous else {}
        merged.update(details)
        since = now
        unchanged = False
        if previous and (previous.state, previous.reason) == (state, reason):
            since = previous.since
            unchanged = previous.message == message and previous.details == merged
        if self.on_report is not None:
            with contextlib.suppress(Exception):  # metrics must not stop the adapter
                self.on_report(AdapterStatus(state, reason, message, since, now, merged))
        if unchanged:
            return
        self.current = AdapterStatus(state, reason, message, since, now, merged)
        # Best effort: a status that cannot be written must not stop the adapter.
        with contextlib.suppress(Exception):
            await self._redis.hset(self._key, FIELD, json.dumps(asdict(self.current)))  # type: ignore[misc]


async def read(redis: Redis, namespace: str, name: str) -> AdapterStatus | None:
    """The adapter's last reported status (for the operator), or None."""
    raw = await redis.hget(keys.adapter_state(namespace, name), FIELD)  # type: ignore[misc]
    if raw is None:
        return None
    try:
        document = json.loads(raw)
        # Known fields only: an adapter newer than the operator may add some.
        return AdapterStatus(**{k: v for k, v in document.items() if k in _FIELDS})
    except (ValueError, TypeError, AttributeError) as error:
        log.warning("unreadable status of the adapter of %s/%s: %s", namespace, name, error)
        return None


@dataclass(frozen=True)
class WalReading:
    """How much WAL a slot retains, against the EventSource's threshold."""

    slot: str
    retained: int
    threshold: int

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> WalReading | None:
        if details.get("walRetainedBytes") is None:
            return None
        return cls(
            str(details.get("slot", "")),
            int(details["walRetainedBytes"]),
            int(details.get("walThresholdBytes", 0)),
        )


def wal_condition(wal: WalReading, generation: int | None = None) -> Condition:
    over = wal.retained > wal.threshold
    return Condition(
        type="WalRetained",
        status="True" if over else "False",
        reason="RetainedWalOverThreshold" if over else "WithinThreshold",
        # No byte count: status stays unchanged (and unwritten) as the number
        # moves; the adapter logs it.
        message=(
            f"replication slot {wal.slot} retains "
            + ("more" if over else "less")
            + f" WAL than spec.postgres.maxRetainedWalBytes={wal.threshold}"
            + (
                "; the adapter is behind or stopped: the database disk fills up "
                "until it catches up or the EventSource is deleted"
                if over
                else ""
            )
        ),
        observed_generation=generation,
    )


def conditions(
    status: AdapterStatus | None,
    generation: int | None = None,
    *,
    wal: WalReading | None = None,
) -> list[Condition]:
    """Capturing (and WalRetained, ChangesMissed for Postgres) from an adapter
    status; `wal`, when given, is a newer reading than the adapter's (the
    operator reads it itself while the adapter is down)."""
    if status is None:
        capturing = Condition(
            type=CAPTURING,
            status="Unknown",
            reason="AdapterNotReporting",
            message="the source adapter has not reported yet",
            observed_generation=generation,
        )
        return [capturing] + ([wal_condition(wal, generation)] if wal else [])
    ready = Condition(
        type=CAPTURING,
        status="True" if status.state == "Running" else "False",
        reason=status.reason,
        message=status.message,
        observed_generation=generation,
        last_transition_time=_iso(status.since),
    )
    out = [ready]
    wal = wal or WalReading.from_details(status.details)
    if wal is not None:
        out.append(wal_condition(wal, generation))
    recreated = status.details.get("slotRecreated")
    if isinstance(recreated, dict):
        out.append(
            Condition(
                type="ChangesMissed",
                status="True",
                reason="SlotRecreated",
                message=(
                    f"replication slot {status.details.get('slot', '')} was missing and was "
                    f"created anew at {recreated.get('at', '?')}: changes committed after LSN "
                    f"{recreated.get('afterLsn', '?')} until then were not captured (the slot "
                    "was dropped, invalidated by max_slot_wal_keep_size, or lost in a failover)"
                ),
                observed_generation=generation,
            )
        )
    return out
