"""Putting compiled objects into the routing table, and taking them out with their state.

The table itself (versioned, change-only writes, pub/sub) is tidings.api.table;
this module adds what only the control plane does:

- **Stable sealing.** Fernet ciphertexts differ on every call (random IV), so
  re-sealing an unchanged secret would rewrite every route and bump the table
  version on each operator restart. `StableSealer` (tidings.api.sealing) re-uses
  the ciphertext already in the table when it opens to the same plaintext; the
  `sealed_in_*` functions below find those ciphertexts.
- **Cursors.** The operator creates a Trigger's consumer group
  (tidings.api.groups, where spec.startFrom says: by default `$`, the events that
  arrive from then on) before its route appears,
  and records where in `keys.CURSORS`. A Trigger that is not Ready loses its
  route but keeps its cursor, so nothing is lost while it is broken. A Trigger
  moved to another source, or deleted, has its old group and per-Trigger keys
  removed.
- **Deletion** (the finalizers' policy, docs/operator.md): a deleted Trigger's
  route, consumer group and every per-Trigger key (retries, attempts, dead
  letters, state, limits, ordering) are removed; a deleted EventSource's table
  entry and every key under its hash tag (stream — and with it all consumer
  groups —, dedupe keys, adapter state, per-Trigger keys) are removed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tidings.api import keys, table
from tidings.api.groups import ensure_group, ensure_stream
from tidings.api.routes import CompiledSource, Route
from tidings.api.sealing import StableSealer as StableSealer  # where the operator imports it
from tidings.api.text import text

log = logging.getLogger(__name__)

Compiled = TypeVar("Compiled", Route, CompiledSource)

SCAN_BATCH = 500


def sealed_in_route(route: Route | None) -> list[str]:
    if route is None:
        return []
    delivery = route.delivery
    tls = [delivery.tls.ca, delivery.tls.cert, delivery.tls.key] if delivery.tls else []
    return [*delivery.signing_secrets, *delivery.secret_headers.values(), *(v for v in tls if v)]


def sealed_in_source(source: CompiledSource | None) -> list[str]:
    if source is None or source.ingest is None:
        return []
    ingest = source.ingest
    return [v for v in (ingest.token_sealed, ingest.hmac_secret_sealed) if v] + list(
        ingest.webhook_secrets
    )


async def current_route(redis: Redis, namespace: str, name: str) -> Route | None:
    return await _current(redis, keys.ROUTES, Route, namespace, name)


@dataclass(frozen=True)
class RouteEntry:
    """What the table holds for a Trigger, read in one round trip (the route and
    cursor hashes share a hash tag, so this holds in a Redis Cluster too)."""

    route: Route | None  # None when absent or in another format
    stored: str | None  # the route as stored; None when absent
    cursor: str | None  # the source its consumer group is on


async def current_route_entry(redis: Redis, namespace: str, name: str) -> RouteEntry:
    trigger_id = keys.source_id(namespace, name)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.ROUTES, trigger_id)
        pipe.hget(keys.CURSORS, trigger_id)
        raw, cursor = await pipe.execute()
    route = None
    if raw is not None:
        with contextlib.suppress(ValueError):
            route = Route.model_validate_json(raw)
    return RouteEntry(route, text(raw), text(cursor))


async def current_source(redis: Redis, namespace: str, name: str) -> CompiledSource | None:
    return await _current(redis, keys.SOURCES, CompiledSource, namespace, name)


async def _current(
    redis: Redis, hash_key: str, model: type[Compiled], namespace: str, name: str
) -> Compiled | None:
    """The table's entry for namespace/name, or None when absent or in another
    format (then it is overwritten by this one)."""
    raw = await redis.hget(hash_key, keys.source_id(namespace, name))  # type: ignore[misc]
    if raw is None:
        return None
    try:
        return model.model_validate_json(raw)
    except ValueError:
        return None


# --- Triggers --------------------------------------------------------------------------


async def publish_route(redis: Redis, route: Route, entry: RouteEntry | None = None) -> int | None:
    """Make `route` live: its cursor first, then the route. The new table version,
    or None when the route was already there unchanged. `entry`: the table's
    entry as just read (else read here); when its route is `route`'s very bytes,
    the table is not written (the change-only script would compare the same: a
    round trip per Trigger saved at every restart and resync), but the consumer
    group is still made sure of."""
    if entry is None:
        entry = await current_route_entry(redis, route.namespace, route.name)
    cursor = entry.cursor
    if cursor is not None and cursor != route.source:
        log.info("trigger %s moved from source %s to %s", route.id, cursor, route.source)
        await _remove_cursor(redis, route.namespace, cursor, route.name)
    if await ensure_group(redis, route.stream, route.group, route.cursor_start):
        log.info("trigger %s: consumer group created on %s", route.id, route.stream)
    if cursor != route.source:
        await redis.hset(keys.CURSORS, route.id, route.source)  # type: ignore[misc]
    encoded = route.model_dump_json()
    if entry.stored is not None and entry.stored == encoded:
        return None
    return await table.put_route_json(redis, route.id, encoded)


async def withdraw_route(redis: Redis, namespace: str, name: str) -> int | None:
    """Take a Trigger that is not Ready out of the table; its cursor stays."""
    return await table.delete_route(redis, namespace, name)


async def _remove_cursor(redis: Redis, namespace: str, source: str, trigger: str) -> None:
    try:
        await redis.xgroup_destroy(keys.stream(namespace, source), keys.group(trigger))
    except ResponseError as error:
        if not _stream_missing(error):  # the stream is gone, and the group with it
            raise
    await redis.delete(*keys.trigger_keys(namespace, source, trigger))


def _stream_missing(error: ResponseError) -> bool:
    message = str(error).lower()
    return "requires the key to exist" in message or "no such key" in message


async def remove_trigger(redis: Redis, namespace: str, name: str, source: str | None) -> None:
    """A deleted Trigger: route, consumer group and per-Trigger keys. `source` is
    spec.source (used when no cursor was ever recorded)."""
    trigger_id = keys.source_id(namespace, name)
    await table.delete_route(redis, namespace, name)
    cursor = text(await redis.hget(keys.CURSORS, trigger_id))  # type: ignore[misc]
    for where in {s for s in (cursor, source) if s}:
        await _remove_cursor(redis, namespace, where, name)
    await redis.hdel(keys.CURSORS, trigger_id)  # type: ignore[misc]


async def sweep_trigger(redis: Redis, namespace: str, name: str, source: str) -> int:
    """Delete per-Trigger keys again: a dispatcher that was still draining the
    deleted Trigger's deliveries may have written some after `remove_trigger`."""
    deleted: int = await redis.delete(*keys.trigger_keys(namespace, source, name))
    return deleted


# --- EventSources ----------------------------------------------------------------------


async def publish_source(redis: Redis, source: CompiledSource) -> int | None:
    if await ensure_stream(redis, source.stream):
        log.info("source %s: stream %s created", source.id, source.stream)
    return await table.put_source(redis, source)


async def withdraw_source(redis: Redis, namespace: str, name: str) -> int | None:
    """Take a source that does not compile out of the table (its stream stays):
    a revoked token must stop working."""
    return await table.delete_source(redis, namespace, name)


async def remove_source(redis: Redis, namespace: str, name: str) -> int:
    """A deleted EventSource: its table entry and every key under its hash tag.
    Returns how many keys were deleted."""
    await table.delete_source(redis, namespace, name)
    pattern = f"{keys.PREFIX}:{keys.source_tag(namespace, name)}:*"
    deleted = 0
    batch: list[bytes | str] = []
    async for key in redis.scan_iter(match=pattern, count=SCAN_BATCH):
        batch.append(key)
        if len(batch) >= SCAN_BATCH:
            deleted += await redis.delete(*batch)
            batch = []
    if batch:
        deleted += await redis.delete(*batch)
    return deleted
