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

`event` is all a replay needs: append it to the source's stream again
(tidings.dispatcher.streams.append) or POST it to ingest as structured
CloudEvent. The entry is written in the same script that removes the event
from the Trigger's cursor, so it is never both pending and dead.

With `delivery.deadLetter`, each dead letter is also POSTed once to that sink
(best effort: the DLQ entry is the record) in the Trigger's format, with
`tidings-dead-letter-*` headers saying why.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.asyncio import Redis
from tidings.dispatcher.delivery import Request, build_request, send

from tidings.api import keys

log = logging.getLogger(__name__)

# deadletter_add(id, attempts, status, message, now, trigger): spliced into cursor.py's settle.
LUA = """
local function deadletter_add(id, attempts, status, message, now, trigger)
  local entry = redis.call('XRANGE', KEYS[K_STREAM], id, id)[1]
  local event = ''
  if entry then
    for i = 1, #entry[2], 2 do
      if entry[2][i] == FIELD_EVENT then event = entry[2][i + 1] end
    end
  end
  redis.call('XADD', KEYS[K_DLQ], '*', 'event', event, 'streamId', id, 'attempts', attempts,
    'status', status, 'error', message, 'time', now, 'trigger', trigger)
  redis.call('HINCRBY', KEYS[K_STATE], 'deadLettered', 1)
end
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


async def read(redis: Redis, namespace: str, source: str, trigger: str) -> list[DeadLetter]:
    """Every dead letter of a Trigger, oldest first (for replay tools and tests)."""
    entries: list[tuple[Any, dict[Any, Any]]] = await redis.xrange(
        keys.dead_letters(namespace, source, trigger)
    )  # type: ignore[assignment]
    out = []
    for dlq_id, raw in entries:
        fields = {_text(k): _text(v) for k, v in raw.items()}
        out.append(
            DeadLetter(
                dlq_id=_text(dlq_id),
                event=json.loads(fields["event"]) if fields.get("event") else {},
                stream_id=fields["streamId"],
                attempts=int(fields["attempts"]),
                status=fields["status"],
                error=fields["error"],
                time_ms=int(fields["time"]),
                trigger=fields["trigger"],
            )
        )
    return out


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
