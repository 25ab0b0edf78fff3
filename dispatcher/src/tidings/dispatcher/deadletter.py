"""Dead letters: events a Trigger gave up on, kept where a person can act on them.

Every Trigger always has a DLQ stream (keys.dead_letters). An entry holds:

    event      the CloudEvent exactly as stored in the source's stream (JSON)
    streamId   its id in the source's stream
    attempts   attempts made
    status     the last HTTP status ("" after a network error or timeout)
    error      why it was given up and the last error, e.g.
               "400 is not in retryOn: HTTP 400: missing field email"
    time       when, ms since epoch
    trigger    "namespace/name"

The entry is written in the same script that removes the event from the
Trigger's cursor, so it is never both pending and dead.

The DLQ is bounded by the Trigger's `delivery.deadLetterRetention`: at most
maxEvents entries (XADD MAXLEN, in that same script) and nothing older than
maxAge (retention.py's periodic pass). What either drops is counted in the Trigger's state HASH
(`deadLettersTrimmed`).

`hand_back` (used by `tidings replay`, replay.py) moves dead letters back to
their Trigger, and to no other Trigger of the source: in one script per batch
it copies each entry's event into the Trigger's replay HASH, makes its stream
id a due retry with a fresh attempt count, and deletes the DLQ entry. The
dispatchers' fetch script delivers a due retry from that copy when there is
one (the source's entry may have been trimmed since), with the replay time as
its ingest time, so maxAge counts from the replay. An event that fails again
is retried and dead-lettered again like any other.

With `delivery.deadLetter`, each dead letter is also POSTed once to that sink
(best effort: the DLQ entry is the record) in the Trigger's format, with
`tidings-dead-letter-*` headers saying why.
"""

from __future__ import annotations

import json
import logging
import weakref
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from tidings.api import keys
from tidings.api.routes import DEAD_LETTER_MAX_AGE, DEAD_LETTER_MAX_EVENTS, Route
from tidings.dispatcher.delivery import Request, build_request, send

log = logging.getLogger(__name__)

# The DLQ's default bounds (spec.delivery.deadLetterRetention). The count is
# exact (MAXLEN without ~: dead letters are rare, and a small cap must hold);
# the age is enforced by retention.py with Redis's clock.
MAX_EVENTS = DEAD_LETTER_MAX_EVENTS
MAX_AGE = DEAD_LETTER_MAX_AGE  # seconds

# replayed(id): the fields of a replayed event's copy ({e, json, t, replay ms}),
# or nil. Spliced into cursor.py's fetch.
REPLAYED_LUA = """
local function replayed(id)
  local copy = redis.call('HGET', KEYS[K_REPLAY], id)
  if not copy then return nil end
  local space = string.find(copy, ' ', 1, true)
  return {FIELD_EVENT, string.sub(copy, space + 1), FIELD_TIME, string.sub(copy, 1, space - 1)}
end
""".replace("FIELD_EVENT", repr(keys.FIELD_EVENT)).replace("FIELD_TIME", repr(keys.FIELD_TIME))

# deadletter_add(id, attempts, status, message, now, trigger, max_events): spliced
# into cursor.py's settle.
LUA = """
local function deadletter_add(id, attempts, status, message, now, trigger, max_events)
  local event = ''
  local copy = redis.call('HGET', KEYS[K_REPLAY], id)
  if copy then  -- a replayed event: its copy, the source's entry may be gone
    event = string.sub(copy, string.find(copy, ' ', 1, true) + 1)
  else
    local entry = redis.call('XRANGE', KEYS[K_STREAM], id, id)[1]
    if entry then
      for i = 1, #entry[2], 2 do
        if entry[2][i] == FIELD_EVENT then event = entry[2][i + 1] end
      end
    end
  end
  local before = redis.call('XLEN', KEYS[K_DLQ])
  redis.call('XADD', KEYS[K_DLQ], 'MAXLEN', max_events, '*', 'event', event,
    'streamId', id, 'attempts', attempts, 'status', status, 'error', message, 'time', now,
    'trigger', trigger)
  local dropped = before + 1 - redis.call('XLEN', KEYS[K_DLQ])
  if dropped > 0 then redis.call('HINCRBY', KEYS[K_STATE], STATE_TRIMMED, dropped) end
  redis.call('HINCRBY', KEYS[K_STATE], 'deadLettered', 1)
end
""".replace("FIELD_EVENT", repr(keys.FIELD_EVENT)).replace(
    "STATE_TRIMMED", repr(keys.STATE_DEAD_LETTERS_TRIMMED)
)

# KEYS: DLQ, source stream, retry ZSET, attempts HASH, replay HASH.
# ARGV: DLQ entry ids. Returns {handed back, kept (no event stored anywhere)}.
_HAND_BACK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local moved, kept = 0, 0
for _, dlq_id in ipairs(ARGV) do
  local entry = redis.call('XRANGE', KEYS[1], dlq_id, dlq_id)[1]
  if entry then
    local fields = {}
    for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
    local id, event = fields['streamId'], fields['event'] or ''
    if event == '' and id then  -- lost when dead-lettered; the source may still have it
      local source = redis.call('XRANGE', KEYS[2], id, id)[1]
      if source then
        for i = 1, #source[2], 2 do
          if source[2][i] == FIELD_EVENT then event = source[2][i + 1] end
        end
      end
    end
    if event ~= '' then
      -- Already due (e.g. two dead letters of one event): one delivery is enough.
      if not redis.call('ZSCORE', KEYS[3], id) then
        redis.call('HSET', KEYS[5], id, now .. ' ' .. event)
        redis.call('HDEL', KEYS[4], id)
        redis.call('ZADD', KEYS[3], now, id)
      end
      redis.call('XDEL', KEYS[1], dlq_id)
      moved = moved + 1
    else
      kept = kept + 1
    end
  end
end
return {moved, kept}
""".replace("FIELD_EVENT", repr(keys.FIELD_EVENT))


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
    script = _cache.get(redis)
    if script is None:
        script = _cache[redis] = redis.register_script(_HAND_BACK)
    moved, kept = await script(
        keys=[
            keys.dead_letters(ns, source, name),
            route.stream,
            keys.retries(ns, source, name),
            keys.attempts(ns, source, name),
            keys.replays(ns, source, name),
        ],
        args=dlq_ids,
    )
    return int(moved), int(kept)


def _dead_letter(dlq_id: Any, raw: dict[Any, Any]) -> DeadLetter:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        event = json.loads(fields["event"]) if fields.get("event") else {}
    except ValueError:
        event = {}
    return DeadLetter(
        dlq_id=_text(dlq_id),
        event=event if isinstance(event, dict) else {},
        stream_id=fields.get("streamId", ""),
        attempts=int(fields.get("attempts") or 0),
        status=fields.get("status", ""),
        error=fields.get("error", ""),
        time_ms=int(fields.get("time") or 0),
        trigger=fields.get("trigger", ""),
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


async def send_to_sink(
    session: aiohttp.ClientSession, url: str, request: Request, seconds: float
) -> None:
    result = await send(session, url, request, seconds)
    if not result.ok:
        assert result.failure is not None
        log.warning(
            "dead-letter sink %s refused event %s: %s (it stays in the DLQ stream)",
            url,
            request.headers.get("webhook-id"),
            result.failure.message,
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_cache: weakref.WeakKeyDictionary[Redis, AsyncScript] = weakref.WeakKeyDictionary()
