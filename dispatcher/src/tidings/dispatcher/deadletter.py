"""Dead letters: events a Trigger gave up on, kept where a person can act on them.

Every Trigger always has a DLQ stream (keys.dead_letters). An entry holds
(field names: keys.DLQ_*):

    event      the CloudEvent exactly as stored in the source's stream (JSON)
    streamId   its id in the source's stream
    attempts   attempts made
    status     the last HTTP status ("" after a network error or timeout)
    error      why it was given up and the last error, e.g.
               "400 is not in retryOn: HTTP 400: missing field email"
    time       when, ms since epoch
    trigger    "namespace/name"

The entry is written in the same script that removes the event from the
Trigger's cursor (lua/_deadletter_add.lua, included in cursor_settle.lua), so
it is never both pending and dead.

The DLQ is bounded by the Trigger's `delivery.deadLetterRetention`: at most
maxEvents entries (XADD MAXLEN, in that same script) and nothing older than
maxAge (retention.py's periodic pass). What either drops is counted in the
Trigger's state HASH (`deadLettersTrimmed`).

`hand_back` (used by `tidings replay`, replay.py) moves dead letters back to
their Trigger, and to no other Trigger of the source: in one script per batch
(lua/deadletter_hand_back.lua) it copies each entry's event into the Trigger's
replay HASH, makes its stream id a due retry with a fresh attempt count, and
deletes the DLQ entry. The dispatchers' fetch script delivers a due retry from
that copy when there is one (lua/_replayed.lua; the source's entry may have
been trimmed since), with the replay time as its ingest time, so maxAge counts
from the replay. An event that fails again is retried and dead-lettered again
like any other.

With `delivery.deadLetter`, each dead letter is also POSTed once to that sink
(best effort: the DLQ entry is the record) in the Trigger's format, with
`tidings-dead-letter-*` headers saying why.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from tidings.api import keys, scripts
from tidings.api.routes import DEAD_LETTER_MAX_AGE, DEAD_LETTER_MAX_EVENTS, Route
from tidings.api.text import text
from tidings.dispatcher.delivery import Request, build_request, send
from tidings.dispatcher.http_post import Client

log = logging.getLogger(__name__)

# The DLQ's default bounds (spec.delivery.deadLetterRetention). The count is
# exact (MAXLEN without ~: dead letters are rare, and a small cap must hold);
# the age is enforced by retention.py with Redis's clock.
MAX_EVENTS = DEAD_LETTER_MAX_EVENTS
MAX_AGE = DEAD_LETTER_MAX_AGE  # seconds


@dataclass(frozen=True)
class DeadLetter:
    dlq_id: str
    event: dict[str, Any]
    stream_id: str
    attempts: int
    status: str
    error: str
    time_ms: int
    trigger: str


async def read(
    redis: Redis,
    namespace: str,
    source: str,
    trigger: str,
    *,
    start: str = "-",
    end: str = "+",
    count: int | None = None,
) -> list[DeadLetter]:
    """A Trigger's dead letters with DLQ ids from `start` to `end` (default: every
    one), oldest first."""
    entries: list[tuple[Any, dict[Any, Any]]] = await redis.xrange(
        keys.dead_letters(namespace, source, trigger), min=start, max=end, count=count
    )  # type: ignore[assignment]
    return [_dead_letter(dlq_id, raw) for dlq_id, raw in entries]


async def hand_back(redis: Redis, route: Route, dlq_ids: list[str]) -> tuple[int, int]:
    """Move these dead letters back to `route`'s Trigger as due retries, atomically
    per call; returns (handed back, kept because no copy of their event is left).
    Ids no longer in the DLQ (replayed meanwhile, trimmed) are skipped."""
    if not dlq_ids:
        return 0, 0
    ns, source, name = route.namespace, route.source, route.name
    moved, kept = await scripts.DEADLETTER_HAND_BACK(
        redis,
        keys=[
            keys.dead_letters(ns, source, name),
            route.stream,
            keys.retries(ns, source, name),
            keys.attempts(ns, source, name),
            keys.replays(ns, source, name),
        ],
        args=dlq_ids,
    )
    if int(moved):
        await redis.publish(keys.TRIGGER_WAKE, route.id)
    return int(moved), int(kept)


def _dead_letter(dlq_id: Any, raw: dict[Any, Any]) -> DeadLetter:
    fields = {text(k): text(v) for k, v in raw.items()}
    try:
        event = json.loads(fields[keys.DLQ_EVENT]) if fields.get(keys.DLQ_EVENT) else {}
    except ValueError:
        event = {}
    return DeadLetter(
        dlq_id=text(dlq_id),
        event=event if isinstance(event, dict) else {},
        stream_id=fields.get(keys.DLQ_STREAM_ID, ""),
        attempts=int(fields.get(keys.DLQ_ATTEMPTS) or 0),
        status=fields.get(keys.DLQ_STATUS, ""),
        error=fields.get(keys.DLQ_ERROR, ""),
        time_ms=int(fields.get(keys.DLQ_TIME) or 0),
        trigger=fields.get(keys.DLQ_TRIGGER, ""),
    )


def sink_request(
    event: dict[str, Any],
    raw: bytes,
    *,
    format: str,
    signing_keys: list[bytes],
    attempts: int,
    status: str,
    error: str,
) -> Request:
    headers = {
        "tidings-dead-letter-attempts": str(attempts),
        "tidings-dead-letter-status": status,
        "tidings-dead-letter-error": error[:500].encode("ascii", "replace").decode(),
    }
    return build_request(event, raw, format=format, headers=headers, signing_keys=signing_keys)


async def send_to_sink(client: Client, url: str, request: Request, seconds: float) -> None:
    result = await send(client, url, request, seconds)
    if not result.ok:
        assert result.failure is not None
        log.warning(
            "dead-letter sink %s refused event %s: %s (it stays in the DLQ stream)",
            url,
            request.headers.get("webhook-id"),
            result.failure.message,
        )
