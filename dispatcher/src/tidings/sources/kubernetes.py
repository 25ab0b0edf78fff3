"""The Kubernetes source: watch objects, emit `dev.tidings.kubernetes.<verb>`.

For each resource in spec.kubernetes.resources (apiVersion, kind, namespace —
default the EventSource's —, labelSelector) the adapter lists once, then
watches. Every ADDED / MODIFIED / DELETED becomes a CloudEvent with subject
`Kind/namespace/name` (`Kind/name` for cluster-scoped kinds) and the object
as data (metadata.managedFields left out: bulky bookkeeping of field owners).

Resuming without re-emitting:

- The resourceVersion to resume from is stored in keys.adapter_state, in the
  same atomic write as the event it follows (tidings.sources.journal),
  so a restart watches from exactly after the last event written.
- The adapter also keeps, per object uid, the last resourceVersion it emitted
  (keys.adapter_objects, bounded by the number of objects that exist). When
  the server answers 410 Gone (the version is too old for its watch cache),
  the adapter lists again and emits only differences: objects it never saw
  (added), whose resourceVersion moved (modified), that are gone (deleted,
  with the name and uid it remembers as data).
- A new EventSource takes the objects that exist as its baseline and emits
  nothing for them: events are changes from then on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.exceptions
from redis.asyncio import Redis

from tidings.api import keys
from tidings.api.events import CloudEvent, now_rfc3339
from tidings.api.routes import CompiledSource
from tidings.api.types import KubernetesResource, KubernetesSource, LabelSelector
from tidings.sources import journal
from tidings.sources.errors import Forbidden, ResourceNotFound, SourceError
from tidings.sources.journal import Batch
from tidings.sources.kubeapi import ApiError, Gone, KubeApi, Resource
from tidings.sources.metrics import SourceSeries
from tidings.sources.status import StatusReporter

log = logging.getLogger(__name__)

TYPE_PREFIX = "dev.tidings.kubernetes."
LIST_PAGE = 500
VERBS = {"ADDED": "added", "MODIFIED": "modified", "DELETED": "deleted"}


def selector_string(selector: LabelSelector | None) -> str:
    """A LabelSelector in the query-string form the API takes."""
    if selector is None:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for requirement in selector.match_expressions or []:
        values = ",".join(requirement.values or [])
        if requirement.operator == "In":
            parts.append(f"{requirement.key} in ({values})")
        elif requirement.operator == "NotIn":
            parts.append(f"{requirement.key} notin ({values})")
        elif requirement.operator == "Exists":
            parts.append(requirement.key)
        else:
            parts.append(f"!{requirement.key}")
    return ",".join(parts)


@dataclass(frozen=True)
class Known:
    """What the adapter remembers of an object it emitted."""

    rv: str
    name: str
    namespace: str | None

    def to_json(self) -> str:
        return json.dumps({"rv": self.rv, "name": self.name, "namespace": self.namespace})

    @classmethod
    def from_json(cls, text: str) -> Known:
        raw = json.loads(text)
        return cls(str(raw["rv"]), str(raw["name"]), raw.get("namespace"))


@dataclass(frozen=True)
class Change:
    verb: str  # added | modified | deleted
    obj: dict[str, Any]


def diff(known: dict[str, Known], listed: list[dict[str, Any]]) -> list[Change]:
    """The changes between what was emitted and a fresh list (pure): objects
    never seen are added, those with a new resourceVersion modified, missing
    ones deleted."""
    changes: list[Change] = []
    present: set[str] = set()
    for obj in listed:
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid"))
        present.add(uid)
        before = known.get(uid)
        if before is None:
            changes.append(Change("added", obj))
        elif before.rv != str(meta.get("resourceVersion")):
            changes.append(Change("modified", obj))
    for uid, before in known.items():
        if uid not in present:
            metadata: dict[str, Any] = {
                "name": before.name,
                "uid": uid,
                "resourceVersion": before.rv,
            }
            if before.namespace:
                metadata["namespace"] = before.namespace
            changes.append(Change("deleted", {"metadata": metadata}))
    return changes


class _Watch:
    """One resource of the spec: its list/watch loop and what it has seen."""

    def __init__(self, adapter: KubernetesAdapter, spec: KubernetesResource) -> None:
        self.adapter = adapter
        self.spec = spec
        self.namespace = spec.namespace or adapter.source.namespace
        self.selector = selector_string(spec.label_selector)
        # Names the resource in Redis fields; stable while the spec is.
        self.key = f"{spec.api_version}/{spec.kind}/{self.namespace}/{self.selector}"
        self.rv_field = f"rv:{self.key}"
        self.known: dict[str, Known] = {}
        self.resource: Resource | None = None

    def _field(self, uid: str) -> str:
        return f"{self.key}|{uid}"

    def _params(self) -> dict[str, str]:
        return {"labelSelector": self.selector} if self.selector else {}

    def _path(self) -> str:
        assert self.resource is not None
        return self.resource.path(self.namespace if self.resource.namespaced else None)

    async def _list(self) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        params = {**self._params(), "limit": str(LIST_PAGE)}
        while True:
            page = await self.adapter.api.get(self._path(), **params)
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion"))
            params["continue"] = meta["continue"]

    async def _load_known(self) -> None:
        raw = await self.adapter.redis.hgetall(self.adapter.objects_key)  # type: ignore[misc]
        prefix = f"{self.key}|"
        self.known = {}
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else field
            if name.startswith(prefix):
                text = value.decode() if isinstance(value, bytes) else value
                self.known[name[len(prefix) :]] = Known.from_json(text)

    async def run(self) -> None:
        try:
            self.resource = await self.adapter.api.resource(self.spec.api_version, self.spec.kind)
        except ApiError as error:
            if error.status == 404:
                raise ResourceNotFound(
                    f"spec.kubernetes.resources: {self.spec.kind} in {self.spec.api_version} "
                    f"is not served by this cluster ({error.message}); check apiVersion and kind"
                ) from None
            raise
        await self._load_known()
        state = await journal.read_state(self.adapter.redis, self.adapter.source)
        rv = state.get(self.rv_field)
        if rv is None:
            rv = await self._baseline()
        self.adapter.watching.add(self.key)
        await self.adapter.report_running()
        while True:
            try:
                rv = await self._watch(rv)
            except Gone:
                log.info(
                    "%s: %s: resourceVersion %s expired; listing again",
                    self.adapter.source.id,
                    self.key,
                    rv,
                )
                rv = await self.relist()

    async def _baseline(self) -> str:
        items, rv = await self._list()
        batch = Batch(state={self.rv_field: rv})
        for obj in items:
            meta = obj["metadata"]
            known = Known(str(meta["resourceVersion"]), meta["name"], meta.get("namespace"))
            self.known[meta["uid"]] = known
            batch.objects_set[self._field(meta["uid"])] = known.to_json()
        await self.adapter.write(batch)
        return rv

    async def relist(self) -> str:
        """List again and emit only what changed since the last event written."""
        items, rv = await self._list()
        batch = Batch(state={self.rv_field: rv})
        for change in diff(self.known, items):
            self._add(batch, change)
        await self.adapter.write(batch)
        return rv

    def _add(self, batch: Batch, change: Change) -> None:
        meta = change.obj.get("metadata") or {}
        uid = str(meta.get("uid"))
        if change.verb == "deleted":
            self.known.pop(uid, None)
            batch.objects_deleted.append(self._field(uid))
        else:
            known = Known(
                str(meta.get("resourceVersion")), meta.get("name", ""), meta.get("namespace")
            )
            self.known[uid] = known
            batch.objects_set[self._field(uid)] = known.to_json()
        batch.events.append(("", self.adapter.event(self.spec, change)))

    async def _watch(self, rv: str) -> str:
        params = {**self._params(), "resourceVersion": rv}
        async for item in self.adapter.api.watch(self._path(), params):
            kind = item.get("type")
            obj = item.get("object") or {}
            meta = obj.get("metadata") or {}
            new_rv = str(meta.get("resourceVersion", rv))
            if kind == "BOOKMARK":
                rv = new_rv
                await journal.set_state(
                    self.adapter.redis, self.adapter.source, {self.rv_field: rv}
                )
                continue
            verb = VERBS.get(str(kind))
            if verb is None:
                continue
            before = self.known.get(str(meta.get("uid")))
            if verb != "deleted" and before is not None and before.rv == new_rv:
                rv = new_rv  # already emitted (a re-list saw this version)
                continue
            batch = Batch(state={self.rv_field: new_rv})
            self._add(batch, Change(verb, obj))
            await self.adapter.write(batch)
            rv = new_rv
        return rv


class KubernetesAdapter:
    kind = "kubernetes"

    def __init__(
        self,
        source: CompiledSource,
        spec: KubernetesSource,
        redis: Redis,
        *,
        api: KubeApi,
        backoff_max: float = 30.0,
    ) -> None:
        self.source = source
        self.spec = spec
        self.redis = redis
        self.api = api
        self.backoff_max = backoff_max
        self.objects_key = keys.adapter_objects(source.namespace, source.name)
        self.status = StatusReporter(redis, source.namespace, source.name)
        self.watches = [_Watch(self, resource) for resource in spec.resources]
        self.watching: set[str] = set()
        self._stopping = asyncio.Event()
        self.events_written = 0
        self.metrics: SourceSeries | None = None  # `tidings source --listen` attaches it

    def event(self, resource: KubernetesResource, change: Change) -> CloudEvent:
        obj = change.obj
        meta = obj.get("metadata") or {}
        meta.pop("managedFields", None)
        obj.setdefault("apiVersion", resource.api_version)
        obj.setdefault("kind", resource.kind)
        namespace = meta.get("namespace")
        name = meta.get("name", "")
        subject = f"{resource.kind}/{namespace}/{name}" if namespace else f"{resource.kind}/{name}"
        return CloudEvent(
            # uid + resourceVersion: the same change has the same id.
            id=f"{meta.get('uid')}:{meta.get('resourceVersion')}",
            source=self.source.api_path,
            type=TYPE_PREFIX + change.verb,
            subject=subject,
            time=now_rfc3339(),
            datacontenttype="application/json",
            data=obj,
        )

    async def write(self, batch: Batch) -> None:
        written = await journal.write(
            self.redis, self.source, batch, guarded=False, objects_key=self.objects_key
        )
        self.events_written += written.appended
        if self.metrics is not None:
            self.metrics.wrote(written.appended, written.skipped)

    async def report_running(self) -> None:
        if len(self.watching) == len(self.watches):
            count = len(self.watches)
            await self.status.report(
                "Running", "Watching", f"watching {count} resource{'s' * (count != 1)}"
            )

    async def _keep_watching(self, watch: _Watch) -> None:
        delay = 1.0
        while True:
            started = time.monotonic()
            try:
                await watch.run()
            except SourceError as error:
                log.error("%s: %s", self.source.id, error)
                await self.status.report("Retrying", error.reason, error.message)
            except ApiError as error:
                failure: SourceError = (
                    Forbidden(
                        f"spec.kubernetes.resources: cannot list/watch {watch.spec.kind} in "
                        f"{watch.namespace}: {error.message}; grant the adapter's "
                        "ServiceAccount get, list and watch on it"
                    )
                    if error.status == 403
                    else SourceError(str(error), reason="ApiError")
                )
                log.error("%s: %s", self.source.id, failure)
                await self.status.report("Retrying", failure.reason, failure.message)
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                log.warning("%s: Kubernetes API unreachable: %s", self.source.id, error)
                await self.status.report("Retrying", "ApiUnreachable", f"Kubernetes API: {error}")
            except redis.exceptions.RedisError as error:
                log.warning("%s: Redis error: %s", self.source.id, error)
                await self.status.report("Retrying", "RedisUnavailable", f"Redis: {error}")
            self.watching.discard(watch.key)
            if time.monotonic() - started > 60:
                delay = 1.0
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(self._keep_watching(w)) for w in self.watches]
        try:
            await self._stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            # Bounded: a Redis call cancelled mid-reply may never finish
            # cancelling; what it wrote is atomic either way.
            await asyncio.wait(tasks, timeout=5)
            await self.api.close()
            await self.status.report("Stopped", "Stopped", "the adapter was stopped")

    async def stop(self) -> None:
        self._stopping.set()
