"""Where the console's EventSources and Triggers come from, and how it changes them.

In a cluster (`ClusterObjects`): the Kubernetes API — spec and the status the
operator wrote; pause/resume is a merge patch of `spec.paused` (Argo CD or
Flux will show the drift from Git, and the page says so). Under `tidings dev`
(`DevObjects`): the manifests the session loaded, with compile errors as a
Ready=False condition; pausing there means editing the file, which dev reloads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidings.api.manifests import Compiled, Manifests
from tidings.api.types import GROUP, VERSION
from tidings.sources.kubeapi import ApiError, KubeApi

FIELD_MANAGER = "tidings-console"
PAUSED_BY = f"{GROUP}/paused-by"
REQUESTED_BY = f"{GROUP}/requested-by"
# Replays the console creates carry their Trigger as a label, to list them per Trigger.
REPLAY_TRIGGER_LABEL = f"{GROUP}/trigger"
LIST_CACHE_SECONDS = 1.5


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""


def _conditions(status: dict[str, Any]) -> list[Condition]:
    return [
        Condition(
            str(c.get("type", "")),
            str(c.get("status", "Unknown")),
            str(c.get("reason", "")),
            str(c.get("message", "")),
        )
        for c in status.get("conditions") or []
    ]


@dataclass(frozen=True)
class ObjectView:
    namespace: str
    name: str
    spec: dict[str, Any]
    conditions: list[Condition]
    origin: str = ""  # dev: the file it came from

    @property
    def id(self) -> str:
        return f"{self.namespace}/{self.name}"

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def ready(self) -> Condition:
        return self.condition("Ready") or Condition(
            "Ready", "Unknown", "NotReconciled", "no status yet: is the operator running?"
        )


@dataclass(frozen=True)
class SourceView(ObjectView):
    url: str = ""

    @property
    def kind(self) -> str:
        for kind in ("http", "postgres", "kubernetes", "schedule", "objectStore"):
            if self.spec.get(kind) is not None:
                return kind
        return "?"

    @property
    def ingests(self) -> bool:
        """Whether producers POST its events to ingest (http, and objectStore in
        notify mode: the store posts); the others have an adapter that reports."""
        if self.kind == "objectStore":
            return bool(self.spec["objectStore"].get("mode") == "notify")
        return self.kind == "http"


@dataclass(frozen=True)
class TriggerView(ObjectView):
    subscriber_uri: str = ""
    delivery: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.spec.get("source", ""))

    @property
    def paused(self) -> bool:
        return bool(self.spec.get("paused"))


class NotSupported(Exception):
    """An action this console cannot take here; the message says what to do instead."""


class Objects(Protocol):
    can_pause: bool
    pause_note: str

    async def sources(self) -> list[SourceView]: ...
    async def triggers(self) -> list[TriggerView]: ...
    async def set_paused(self, namespace: str, name: str, paused: bool, by: str) -> None: ...


@dataclass(frozen=True)
class ReplayView:
    name: str
    trigger: str
    phase: str
    total: int
    sent: int
    delivered: int
    failed: int
    created: str
    message: str


class ClusterObjects:
    """EventSources and Triggers from the API, listed with the console's own
    ServiceAccount (cluster-wide list) and filtered per viewer by the caller."""

    can_pause = True
    pause_note = (
        "Pause and resume patch spec.paused of the Trigger in the cluster: a GitOps tool "
        "(Argo CD, Flux) shows the Trigger out of sync, and may revert it, until Git says the same."
    )

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube
        self._cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    async def _list(self, plural: str) -> list[dict[str, Any]]:
        now = time.monotonic()
        cached = self._cache.get(plural)
        if cached and cached[0] > now:
            return cached[1]
        listing = await self.kube.get(f"/apis/{GROUP}/{VERSION}/{plural}")
        items: list[dict[str, Any]] = listing.get("items") or []
        self._cache[plural] = (now + LIST_CACHE_SECONDS, items)
        return items

    async def sources(self) -> list[SourceView]:
        out = []
        for item in await self._list("eventsources"):
            meta, status = item.get("metadata") or {}, item.get("status") or {}
            out.append(
                SourceView(
                    namespace=meta.get("namespace", ""),
                    name=meta.get("name", ""),
                    spec=item.get("spec") or {},
                    conditions=_conditions(status),
                    url=str(status.get("url") or ""),
                )
            )
        return sorted(out, key=lambda s: s.id)

    async def triggers(self) -> list[TriggerView]:
        out = []
        for item in await self._list("triggers"):
            meta, status = item.get("metadata") or {}, item.get("status") or {}
            out.append(
                TriggerView(
                    namespace=meta.get("namespace", ""),
                    name=meta.get("name", ""),
                    spec=item.get("spec") or {},
                    conditions=_conditions(status),
                    subscriber_uri=str(status.get("subscriberURI") or ""),
                    delivery=status.get("delivery") or {},
                )
            )
        return sorted(out, key=lambda t: t.id)

    async def set_paused(self, namespace: str, name: str, paused: bool, by: str) -> None:
        patch = {
            "metadata": {"annotations": {PAUSED_BY: by if paused else None}},
            "spec": {"paused": paused},
        }
        try:
            await self.kube.request(
                "PATCH",
                f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/triggers/{name}",
                params={"fieldManager": FIELD_MANAGER},
                body=patch,
                content_type="application/merge-patch+json",
            )
        finally:
            self._cache.pop("triggers", None)

    async def create_replay(
        self, namespace: str, trigger: str, ids: list[str] | None, by: str
    ) -> str:
        """A Replay of these dead letters (None: all) of the Trigger; its name.
        The operator runs it (docs/replay.md) and reports progress in its status."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Replay",
            "metadata": {
                "generateName": f"{trigger[:40]}-console-",
                "namespace": namespace,
                "annotations": {REQUESTED_BY: by},
                "labels": {REPLAY_TRIGGER_LABEL: trigger[:63]},
            },
            "spec": {"trigger": trigger, "from": {"deadLetters": {"ids": ids} if ids else {}}},
        }
        created = await self.kube.request(
            "POST",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/replays",
            params={"fieldManager": FIELD_MANAGER},
            body=body,
        )
        return str(created["metadata"]["name"])

    async def replays(self, namespace: str, trigger: str) -> list[ReplayView]:
        """The Trigger's Replays, newest first."""
        listing = await self.kube.get(
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/replays",
            labelSelector=f"{REPLAY_TRIGGER_LABEL}={trigger[:63]}",
        )
        out = []
        for item in listing.get("items") or []:
            status = item.get("status") or {}
            ready: dict[str, Any] = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Complete"), {}
            )
            out.append(
                ReplayView(
                    name=item["metadata"]["name"],
                    trigger=str((item.get("spec") or {}).get("trigger", "")),
                    phase=str(status.get("phase") or "Pending"),
                    total=int(status.get("total") or 0),
                    sent=int(status.get("sent") or 0),
                    delivered=int(status.get("delivered") or 0),
                    failed=int(status.get("failed") or 0),
                    created=str(item["metadata"].get("creationTimestamp", "")),
                    message=str(ready.get("message", "")),
                )
            )
        return sorted(out, key=lambda r: r.created, reverse=True)


@dataclass
class DevObjects:
    """The objects `tidings dev` loaded; `current` returns its latest manifests and
    compile result (None before the first load)."""

    current: Callable[[], tuple[Manifests | None, Compiled | None]]
    can_pause = False
    pause_note = (
        "Under tidings dev the manifests are the truth: set spec.paused in the file; "
        "dev reloads it within a second."
    )

    async def sources(self) -> list[SourceView]:
        manifests, compiled = self.current()
        if manifests is None:
            return []
        errors = compiled.errors if compiled else {}
        return [
            SourceView(
                namespace=ns,
                name=name,
                spec=source.spec.model_dump(by_alias=True, exclude_none=True),
                conditions=[_dev_ready(errors.get(f"EventSource {ns}/{name}"))],
                origin=manifests.origin.get(("EventSource", ns, name), ""),
            )
            for (ns, name), source in sorted(manifests.sources.items())
        ]

    async def triggers(self) -> list[TriggerView]:
        manifests, compiled = self.current()
        if manifests is None:
            return []
        errors = compiled.errors if compiled else {}
        routes = compiled.routes if compiled else {}
        out = []
        for (ns, name), trigger in sorted(manifests.triggers.items()):
            route = routes.get(f"{ns}/{name}")
            out.append(
                TriggerView(
                    namespace=ns,
                    name=name,
                    spec=trigger.spec.model_dump(by_alias=True, exclude_none=True),
                    conditions=[_dev_ready(errors.get(f"Trigger {ns}/{name}"))],
                    subscriber_uri=route.subscriber_url if route else "",
                    origin=manifests.origin.get(("Trigger", ns, name), ""),
                )
            )
        return out

    async def set_paused(self, namespace: str, name: str, paused: bool, by: str) -> None:
        raise NotSupported(self.pause_note)


def _dev_ready(error: str | None) -> Condition:
    if error is None:
        return Condition("Ready", "True", "Compiled", "loaded by tidings dev")
    reason, _, message = error.partition(": ")
    return Condition("Ready", "False", reason or "CompileError", message or error)


def api_error_text(error: ApiError) -> str:
    return f"the Kubernetes API answered {error.status} {error.reason}: {error.message}"
