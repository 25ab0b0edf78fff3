"""The routing table in Redis: written by the control plane, read by dispatchers.

Layout (tidings.api.keys): a HASH of compiled Routes, a HASH of compiled
sources, and a version counter, all under the `{routing}` hash tag. Every
change is one Lua call (lua/table_put.lua) that writes only when the value
differs, bumps the version and publishes it on TABLE_CHANGED, so a restarted
operator that re-publishes identical routes causes no churn. Dispatchers
subscribe for changes and re-read the whole table on a timer as a safety net.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis

from tidings.api import keys, scripts
from tidings.api.routes import CompiledSource, Route
from tidings.api.text import text


async def _put(redis: Redis, table: str, entry: str, value: str) -> int | None:
    """Write (or with value "" delete) one entry; the new version, or None if unchanged."""
    version = int(
        await scripts.TABLE_PUT(redis, keys=[table, keys.TABLE_VERSION], args=[entry, value])
    )
    return None if version < 0 else version


async def put_route(redis: Redis, route: Route) -> int | None:
    return await put_route_json(redis, route.id, route.model_dump_json())


async def put_route_json(redis: Redis, route_id: str, encoded: str) -> int | None:
    """`put_route` of a route already encoded (`Route.model_dump_json()`)."""
    return await _put(redis, keys.ROUTES, route_id, encoded)


async def delete_route(redis: Redis, namespace: str, name: str) -> int | None:
    return await _put(redis, keys.ROUTES, keys.source_id(namespace, name), "")


async def put_source(redis: Redis, source: CompiledSource) -> int | None:
    return await _put(redis, keys.SOURCES, source.id, source.model_dump_json())


async def delete_source(redis: Redis, namespace: str, name: str) -> int | None:
    return await _put(redis, keys.SOURCES, keys.source_id(namespace, name), "")


@dataclass
class RoutingTable:
    version: int = 0
    sources: dict[str, CompiledSource] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    # Entries written by a newer format or corrupted: kept out, reported by id.
    rejected: dict[str, str] = field(default_factory=dict)

    def routes_of(self, namespace: str, source: str) -> list[Route]:
        return [r for r in self.routes.values() if r.namespace == namespace and r.source == source]


async def load(redis: Redis) -> RoutingTable:
    """A consistent snapshot of the whole table (one MULTI)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.get(keys.TABLE_VERSION)
        pipe.hgetall(keys.ROUTES)
        pipe.hgetall(keys.SOURCES)
        version, raw_routes, raw_sources = await pipe.execute()
    table = RoutingTable(version=int(version or 0))
    _read(raw_sources, CompiledSource, table.sources, "source", table.rejected)
    _read(raw_routes, Route, table.routes, "route", table.rejected)
    return table


Entry = TypeVar("Entry", CompiledSource, Route)


def _read(
    raw: dict[Any, Any],
    model: type[Entry],
    into: dict[str, Entry],
    kind: str,
    rejected: dict[str, str],
) -> None:
    """Parse one HASH of the table into `into`; what does not parse goes to `rejected`."""
    for raw_entry, value in raw.items():
        entry = text(raw_entry)
        try:
            into[entry] = model.model_validate_json(value)
        except ValueError as error:
            rejected[f"{kind} {entry}"] = str(error)
