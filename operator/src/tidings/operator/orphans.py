"""Routing-table entries whose Trigger or EventSource is gone.

A Trigger has no finalizer (tidings.operator.handlers): one deleted while no
operator ran, or while this one was paused and its peer had not seen it yet,
leaves its route behind. An EventSource's finalizer `tidings.dev/cleanup`
removes its data-plane state, unless someone strips it (a stuck namespace
"fixed" by removing finalizers, a forced GitOps prune). Either way dispatchers
would go on delivering for an object that no longer exists. So shortly after
start (FIRST_PASS) and then every `--resync-interval` the operator compares
the table with the API and removes what has no object.

Safe whatever this replica knows: an entry is a candidate when its object is
not in a fresh LIST, and is removed only after a GET of that very object
answers 404. Any replica may run it (removal is idempotent), so it does not
depend on peering. Only namespaces this operator watches are looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import keys
from tidings.api.text import text
from tidings.operator import publishing
from tidings.operator.kube import Kube

log = logging.getLogger(__name__)

# Seconds from start to the first pass: a Trigger deleted while no operator ran
# stops being delivered within about this long of its return. Not sooner: a
# restart with 10,000 Triggers takes ~30 s, and the pass would share its CPU.
FIRST_PASS = 60.0


@dataclass
class Collected:
    routes: list[str] = field(default_factory=list)  # "namespace/name" of removed routes
    sources: list[str] = field(default_factory=list)


def _ids(raw: Sequence[bytes | str]) -> list[tuple[str, str]]:
    out = []
    for entry in raw:
        namespace, _, name = text(entry).partition("/")
        out.append((namespace, name))
    return out


def candidates(
    entries: list[tuple[str, str]], listed: set[tuple[str, str]], namespaces: Sequence[str]
) -> list[tuple[str, str]]:
    """Entries in watched namespaces whose object the LIST did not return."""
    return [
        (ns, name)
        for ns, name in entries
        if (not namespaces or ns in namespaces) and (ns, name) not in listed
    ]


async def gone(
    kube: Kube, plural: str, entries: list[tuple[str, str]], namespaces: Sequence[str]
) -> list[tuple[str, str]]:
    """Entries whose object is in no fresh LIST and whose GET answers 404."""
    if not entries:
        return []
    listed = await kube.list_names(plural, namespaces)
    return [
        (namespace, name)
        for namespace, name in candidates(entries, listed, namespaces)
        if not await kube.exists(plural, namespace, name)
    ]


class Tracked(Protocol):
    """The Triggers this operator drives (tidings.operator.handlers.TriggerEvents)."""

    def tracked(self) -> dict[tuple[str, str], object]:
        """(namespace, name) of each, with a token for `vanished`."""
        ...

    def vanished(self, namespace: str, name: str, token: object) -> bool:
        """It is gone: clean it up as its deletion would have (in the background),
        if it is still the one `token` named; False if another one of that name
        is driven now."""
        ...

    def driving(self, namespace: str, name: str) -> bool:
        """Whether a Trigger of that name is driven now (created again)."""
        ...

    def paused(self) -> bool:
        """Whether this replica is paused (its peer collects)."""
        ...


async def collect(
    redis: Redis, kube: Kube, namespaces: Sequence[str], tracked: Tracked | None = None
) -> Collected:
    """One pass. Reads the table (and what is driven) first, then the API: an
    object created in between has its entry written after the table was read,
    so it is not seen.

    The Triggers driven are looked at too: one deleted while a watch was down
    (Kopf's watch, restarted after "410 Gone", lists again and says nothing of
    what vanished) would publish its route again at every resync."""
    driven = tracked.tracked() if tracked is not None else {}
    route_ids = _ids(await redis.hkeys(keys.ROUTES))  # type: ignore[misc]
    source_ids = _ids(await redis.hkeys(keys.SOURCES))  # type: ignore[misc]
    trigger_ids = list(dict.fromkeys([*route_ids, *driven]))
    done = Collected()
    for namespace, name in await gone(kube, "triggers", trigger_ids, namespaces):
        if tracked is not None:
            if (namespace, name) in driven:
                # As a deletion event would: after its round in flight, in turn
                # with a successor's first publication.
                if tracked.vanished(namespace, name, driven[(namespace, name)]):
                    done.routes.append(f"{namespace}/{name}")
                    log.warning(
                        "[Trigger/%s/%s] is gone, though no deletion was seen: cleaning up",
                        namespace,
                        name,
                    )
                continue
            if tracked.driving(namespace, name):
                continue  # created again since the GET: the name is the new one's
        route = await publishing.current_route(redis, namespace, name)
        source = route.source if route is not None else None
        await publishing.remove_trigger(redis, namespace, name, source)
        if source:
            await publishing.sweep_trigger(redis, namespace, name, source)
        done.routes.append(f"{namespace}/{name}")
        log.warning(
            "[Trigger/%s/%s] is gone but its route was still routed (deleted while no "
            "operator ran, or unseen?): route, consumer group and keys removed",
            namespace,
            name,
        )
    for namespace, name in await gone(kube, "eventsources", source_ids, namespaces):
        removed = await publishing.remove_source(redis, namespace, name)
        done.sources.append(f"{namespace}/{name}")
        log.warning(
            "[EventSource/%s/%s] is gone but was still in the routing table (its "
            "finalizer was removed by hand?): its stream and %d keys removed; a "
            "Postgres source's replication slot, if any, must be dropped by hand",
            namespace,
            name,
            removed,
        )
    return done


async def keep_collecting(
    redis: Redis,
    kube: Kube,
    namespaces: Sequence[str],
    interval: float,
    tracked: Tracked | None = None,
    soon: asyncio.Event | None = None,
) -> None:
    """`collect` soon after start, then every `interval` seconds (jittered),
    until cancelled; when `soon` is set (a paused replica resumed: what was
    deleted meanwhile was not seen here), a pass comes soon again."""
    soon = soon if soon is not None else asyncio.Event()
    wait = min(interval, FIRST_PASS)
    while True:
        # asyncio.timeout, not wait_for: no task per wait (Kopf, exiting, waits 5 s
        # for every task created after it started).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait * random.uniform(0.8, 1.2)):
                await soon.wait()
            soon.clear()
            await asyncio.sleep(min(interval, FIRST_PASS))  # Kopf lists everything again first
        wait = interval
        if tracked is not None and tracked.paused():
            continue  # the active replica collects; ours would race its publications
        try:
            await collect(redis, kube, namespaces, tracked)
        except (RedisError, OSError, ApiException) as error:
            log.warning("orphan collection failed, will retry: %s", error)
