"""The attempt log: one record per delivery attempt, per Trigger, in Redis.

Where: `keys.attempt_log(ns, source, trigger)` = `tidings:{ns/source}:t:<trigger>:log`,
a STREAM. The dispatcher appends the attempts of a settled batch in the same
script call that settles it (lua/cursor_settle.lua, `pack`) and bounds it by the Trigger's
`delivery.attemptLog`: `maxEntries` (default 10,000; XTRIM MAXLEN ~) and `maxAge`
(default 24h; XTRIM MINID ~), both approximate, as Redis trims whole nodes. The
entry id is when the attempt ended (Redis's clock), so `XRANGE log <ms> +`
reads what happened from a moment on. The key is one of `keys.trigger_keys`:
deleting the Trigger deletes its log.

Fields (`keys.ATTEMPT_*`), all strings on the wire:

    eventId     the CloudEvent's id ("" when the stored entry was unreadable)
    type        its type
    streamId    its id in the source's stream (the key to everything else)
    attempt     1-based; a Backoff probe is an attempt too (it does not spend one)
    outcome     delivered | retry | dead | refused | expired
                  retry    failed, another attempt is scheduled
                  dead     failed and dead-lettered: attempts or maxAge spent
                  refused  the subscriber answered a status not in retryOn: dead-lettered
                  expired  maxAge passed before it could be sent: dead-lettered unsent
    status      the HTTP status, "" when there was no answer
    durationMs  the HTTP attempt, request to answer or failure (0 when not sent)
    error       why it failed, "" when delivered
    body        the first 1 KiB of the response body (decoded as UTF-8, lossy)
    replica     the dispatcher replica that made it (pod or host name)
    latencyMs   from when the event was stored to the end of this attempt

Finding an event by id (`tidings trace`): `keys.event_index(ns, source)` is a
ZSET event id -> the ms part of its stream id, written in the same script as the
append (ingest and the source adapters) and trimmed with the stream by
retention. The stream id is then one `XRANGE stream <ms> <ms>` away (the entries
of one millisecond). Measured here (Redis 7.0, 36-character UUID ids): 144 bytes
of memory and ~6 µs of Redis CPU per event, one ZSCORE per lookup. A stream
entry of a small event is ~300-600 bytes, so the index adds roughly a third to a
source's memory; that is its price for "what happened to event X" in O(log n).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tidings.api import keys
from tidings.api.text import text

BODY_LIMIT = 1024  # bytes of the response body kept per attempt
ERROR_LIMIT = 500  # characters of the error kept per attempt
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_AGE = "24h"


class AttemptOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    REFUSED = "refused"
    EXPIRED = "expired"

    @property
    def failed(self) -> bool:
        return self is not AttemptOutcome.DELIVERED


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt as recorded. `id` is the log entry's id ("" before it is written)."""

    event_id: str
    type: str
    stream_id: str
    attempt: int
    outcome: AttemptOutcome
    status: str = ""
    duration_ms: int = 0
    error: str = ""
    body: str = ""
    replica: str = ""
    latency_ms: int = 0
    id: str = ""

    @property
    def time_ms(self) -> int:
        """When the attempt ended (ms since epoch), from the entry id."""
        return int(self.id.split("-", 1)[0]) if self.id else 0

    def to_json(self) -> dict[str, Any]:
        """The record as `tidings tail -o json` and the console show it."""
        return {
            "id": self.id,
            "time": self.time_ms,
            "eventId": self.event_id,
            "type": self.type,
            "streamId": self.stream_id,
            "attempt": self.attempt,
            "outcome": self.outcome.value,
            "status": self.status,
            "durationMs": self.duration_ms,
            "error": self.error,
            "body": self.body,
            "replica": self.replica,
            "latencyMs": self.latency_ms,
        }


def clip_body(body: bytes) -> str:
    """The part of a response body an attempt keeps."""
    return body[:BODY_LIMIT].decode("utf-8", errors="replace")


def encode(attempt: Attempt) -> dict[str, str | int]:
    """Stream entry fields for XADD, every field named (tests and tools read this)."""
    return {
        keys.ATTEMPT_EVENT_ID: attempt.event_id,
        keys.ATTEMPT_TYPE: attempt.type,
        keys.ATTEMPT_STREAM_ID: attempt.stream_id,
        keys.ATTEMPT_NUMBER: attempt.attempt,
        keys.ATTEMPT_OUTCOME: attempt.outcome.value,
        keys.ATTEMPT_STATUS: attempt.status,
        keys.ATTEMPT_DURATION_MS: attempt.duration_ms,
        keys.ATTEMPT_ERROR: attempt.error[:ERROR_LIMIT],
        keys.ATTEMPT_BODY: attempt.body,
        keys.ATTEMPT_REPLICA: attempt.replica,
        keys.ATTEMPT_LATENCY_MS: attempt.latency_ms,
    }


_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _fields(attempt: Attempt) -> list[str]:
    """The same fields as `encode`, as name, value, name, value… (all strings; empty
    ones left out, `decode` reads them as empty)."""
    packed: list[str] = []
    for name, value in (
        (keys.ATTEMPT_EVENT_ID, attempt.event_id),
        (keys.ATTEMPT_TYPE, attempt.type),
        (keys.ATTEMPT_STREAM_ID, attempt.stream_id),
        (keys.ATTEMPT_NUMBER, str(attempt.attempt)),
        (keys.ATTEMPT_OUTCOME, attempt.outcome.value),
        (keys.ATTEMPT_STATUS, attempt.status),
        (keys.ATTEMPT_DURATION_MS, str(attempt.duration_ms)),
        (keys.ATTEMPT_ERROR, attempt.error[:ERROR_LIMIT]),
        (keys.ATTEMPT_BODY, attempt.body),
        (keys.ATTEMPT_REPLICA, attempt.replica),
        (keys.ATTEMPT_LATENCY_MS, str(attempt.latency_ms)),
    ):
        if value:
            packed += (name, value)
    return packed


def pack(records: list[Attempt]) -> str:
    """A batch's attempts as one JSON argument of lua/cursor_settle.lua: an array of
    `[name, value, …]` arrays ("" for none). One argument per batch, not 22 per
    attempt: the client's per-argument encoding was most of the log's cost
    (docs/benchmarks.md)."""
    return _to_json([_fields(r) for r in records]) if records else ""


def decode(entry_id: bytes | str, fields: dict[Any, Any]) -> Attempt:
    """An attempt log entry (as XRANGE/XREAD return it, bytes or str) as a record.
    A field a newer writer added is ignored; one missing reads as empty."""
    values = {text(k): text(v) for k, v in fields.items()}

    def number(name: str) -> int:
        try:
            return int(values.get(name) or 0)
        except ValueError:
            return 0

    outcome = values.get(keys.ATTEMPT_OUTCOME, "")
    return Attempt(
        id=text(entry_id),
        event_id=values.get(keys.ATTEMPT_EVENT_ID, ""),
        type=values.get(keys.ATTEMPT_TYPE, ""),
        stream_id=values.get(keys.ATTEMPT_STREAM_ID, ""),
        attempt=number(keys.ATTEMPT_NUMBER),
        outcome=AttemptOutcome(outcome)
        if outcome in AttemptOutcome.__members__.values()
        else AttemptOutcome.DEAD,
        status=values.get(keys.ATTEMPT_STATUS, ""),
        duration_ms=number(keys.ATTEMPT_DURATION_MS),
        error=values.get(keys.ATTEMPT_ERROR, ""),
        body=values.get(keys.ATTEMPT_BODY, ""),
        replica=values.get(keys.ATTEMPT_REPLICA, ""),
        latency_ms=number(keys.ATTEMPT_LATENCY_MS),
    )
