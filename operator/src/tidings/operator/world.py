"""What exists in the cluster, as the compiler needs it — answered from memory.

Kopf index handlers (tidings.operator.handlers) keep in-memory indexes of
EventSources, Services, Secrets and adapter Deployments, fed by watches. Kopf
fills every index from a full listing before any daemon starts, so a restarted
operator never mistakes a cold cache for a missing Service. `IndexWorld`
answers `tidings.api.routes.World` from those indexes: compiling a Trigger
needs no API call.

`Wakeups` is how a missing object recovers without polling: each object's
controller subscribes to the keys it depends on (its EventSource, Services,
Secrets); a watch event on one of them wakes exactly those controllers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import ValidationError

from tidings.api.routes import cluster_service, ingest_token_secret_name
from tidings.api.types import EventSourceSpec, TriggerGrantSpec, TriggerSpec

# (kind, namespace, name): what a controller may depend on or be woken for.
Key = tuple[str, str, str]
# A Kopf index: key -> a store (iterable) of the values of the objects under that key.
Index = Mapping[Any, Iterable[Any]]

# Secrets that are never a Tidings credential but can be large (Helm keeps whole
# releases in them): left out of memory.
IGNORED_SECRET_TYPES = frozenset({"helm.sh/release.v1"})


def _first(index: Index | None, key: Any) -> Any | None:
    if index is None:
        return None
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


# --- index entries (what each index handler stores) --------------------------------------


@dataclass(frozen=True)
class SourceEntry:
    """An EventSource as Triggers need it: its spec and whether it is Ready."""

    spec: EventSourceSpec | None  # None when the stored spec does not validate
    ready: bool | None  # its Ready condition; None while it has none
    message: str = ""


def source_entry(namespace: str, name: str, body: Mapping[str, Any]) -> dict[Any, SourceEntry]:
    try:
        spec: EventSourceSpec | None = EventSourceSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        spec = None
    ready: bool | None = None
    message = ""
    status = body.get("status") or {}
    # The last reported readiness, even of an older generation: a spec change is
    # re-reported within moments, and Triggers should not flap meanwhile.
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            message = condition.get("message", "")
    return {(namespace, name): SourceEntry(spec=spec, ready=ready, message=message)}


def service_entry(namespace: str, name: str, spec: Mapping[str, Any]) -> dict[Any, list[int]]:
    ports = [int(p["port"]) for p in spec.get("ports") or [] if "port" in p]
    return {(namespace, name): ports}


def grant_entry(
    namespace: str, name: str, body: Mapping[str, Any]
) -> dict[Any, TriggerGrantSpec] | None:
    """A TriggerGrant, by its namespace (a grant that does not validate grants nothing)."""
    try:
        return {namespace: TriggerGrantSpec.model_validate(body.get("spec") or {})}
    except ValidationError:
        return None


def secret_entry(
    namespace: str, name: str, body: Mapping[str, Any]
) -> dict[Any, dict[str, str]] | None:
    if body.get("type") in IGNORED_SECRET_TYPES:
        return None
    return {(namespace, name): dict(body.get("data") or {})}


@dataclass(frozen=True)
class AdapterEntry:
    """An adapter Deployment the operator manages: which template it runs and
    whether a replica is available."""

    name: str
    template_hash: str
    available: int
    message: str = ""


def adapter_entry(
    namespace: str, body: Mapping[str, Any], *, source_label: str, hash_annotation: str
) -> dict[Any, AdapterEntry] | None:
    meta = body.get("metadata") or {}
    source = (meta.get("labels") or {}).get(source_label)
    if not source:
        return None
    status = body.get("status") or {}
    message = ""
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("Available", "Progressing") and condition.get("message"):
            message = condition["message"]
    return {
        (namespace, source): AdapterEntry(
            name=meta.get("name", ""),
            template_hash=(meta.get("annotations") or {}).get(hash_annotation, ""),
            available=int(status.get("availableReplicas") or 0),
            message=message,
        )
    }


# --- the World -------------------------------------------------------------------------


class IndexWorld:
    """`tidings.api.routes.World` over Kopf's indexes (the mappings Kopf passes to
    handlers as `<index id>` keyword arguments)."""

    def __init__(
        self,
        *,
        sources: Index | None,
        services: Index | None,
        secrets: Index | None,
        adapters: Index | None = None,
        grants: Index | None = None,
    ) -> None:
        self._grants = grants
        self._sources = sources
        self._services = services
        self._secrets = secrets
        self._adapters = adapters

    def source_entry(self, namespace: str, name: str) -> SourceEntry | None:
        entry: SourceEntry | None = _first(self._sources, (namespace, name))
        return entry

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        entry = self.source_entry(namespace, name)
        return entry.spec if entry is not None else None

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        ports: list[int] | None = _first(self._services, (namespace, name))
        return list(ports) if ports is not None else None

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        data: dict[str, str] | None = _first(self._secrets, (namespace, name))
        if data is None or key not in data:
            return None
        try:
            return base64.b64decode(data[key], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        if self._grants is None:
            return []
        return list(self._grants.get(namespace) or [])

    def adapter(self, namespace: str, source: str) -> AdapterEntry | None:
        entry: AdapterEntry | None = _first(self._adapters, (namespace, source))
        return entry


# --- what a controller depends on ------------------------------------------------------


def trigger_dependencies(namespace: str, name: str, spec: TriggerSpec) -> set[Key]:
    """The keys whose change may change this Trigger's route or status."""
    keys: set[Key] = {("Trigger", namespace, name), ("EventSource", namespace, spec.source)}
    for destination in (spec.subscriber, spec.delivery.dead_letter):
        if destination is None:
            continue
        target = None
        if destination.ref is not None:
            target = destination.ref.namespace or namespace
            keys.add(("Service", target, destination.ref.name))
        elif destination.uri is not None:
            service = cluster_service(urlsplit(destination.uri).hostname or "")
            target = service[0] if service is not None else None
        if target is not None and target != namespace:
            # Any grant in the target namespace may grant or revoke consent.
            keys.add(grants_key(target))
    keys.update(("Secret", namespace, name) for name in delivery_secrets(spec))
    return keys


def delivery_secrets(spec: TriggerSpec) -> set[str]:
    """The names of the Secrets a Trigger's delivery reads (signing, auth,
    headersFrom, tls): a change to any of them recompiles its route."""
    delivery = spec.delivery
    names = {h.secret_key_ref.name for h in delivery.headers_from or []}
    if delivery.signing is not None:
        names.add(delivery.signing.secret_ref.name)
    auth = delivery.auth
    if auth is not None and auth.bearer is not None:
        names.add(auth.bearer.secret_ref.name)
    if auth is not None and auth.basic is not None:
        names.add(auth.basic.secret_ref.name)
    if delivery.tls is not None:
        for ref in (delivery.tls.ca_secret_ref, delivery.tls.client_cert_secret_ref):
            if ref is not None:
                names.add(ref.name)
    return names


def grants_key(namespace: str) -> Key:
    """The key every TriggerGrant of `namespace` wakes (grants are read together)."""
    return ("TriggerGrant", namespace, "")


def source_dependencies(namespace: str, name: str, spec: EventSourceSpec | None) -> set[Key]:
    keys: set[Key] = {("EventSource", namespace, name), ("Deployment", namespace, name)}
    if spec is None:
        return keys
    auth = spec.ingest_auth
    if auth is not None:
        webhooks = auth.standard_webhooks.secret_ref if auth.standard_webhooks else None
        for ref in (auth.token_secret_ref, auth.hmac_secret_ref, webhooks):
            if ref is not None:
                keys.add(("Secret", namespace, ref.name))
        if auth.token_secret_ref is None:
            keys.add(("Secret", namespace, ingest_token_secret_name(name)))
    store = spec.object_store
    if store is not None and store.credentials_secret_ref is not None:
        keys.add(("Secret", namespace, store.credentials_secret_ref.name))
    if store is not None and store.ca_secret_ref is not None:
        keys.add(("Secret", namespace, store.ca_secret_ref.name))
    if spec.postgres is not None:
        keys.add(("Secret", namespace, spec.postgres.connection_secret_ref.name))
    return keys


# --- wake-ups --------------------------------------------------------------------------


def worth_reconciling(
    fired: set[Key], own: Key, generation: int, reconciled_generation: int | None
) -> bool:
    """Whether the wake-ups call for compiling again. A dependency changed: yes.
    The object itself: only if its spec did (a new generation) — its own status
    writes and Kopf's annotations wake it too, and change nothing to compile."""
    if fired - {own}:
        return True
    return own in fired and generation != reconciled_generation


class Wakeups:
    """Wakes the controllers that depend on a key when a watch event names it."""

    def __init__(self) -> None:
        self._followers: defaultdict[Key, set[Subscription]] = defaultdict(set)

    def notify(self, key: Key) -> None:
        for subscription in self._followers.get(key, ()):
            subscription._fire(key)

    def subscribe(self) -> Subscription:
        return Subscription(self)

    def _follow(self, subscription: Subscription, keys: Iterable[Key]) -> None:
        for key in keys:
            self._followers[key].add(subscription)

    def _unfollow(self, subscription: Subscription, keys: Iterable[Key]) -> None:
        for key in keys:
            followers = self._followers.get(key)
            if followers is not None:
                followers.discard(subscription)
                if not followers:
                    del self._followers[key]

    def __len__(self) -> int:
        return len(self._followers)


class Stopped(Protocol):
    """Kopf's `stopped` flag of a daemon (kopf.DaemonStopped): true once Kopf asks
    the daemon to return (deletion, peering pause, exit)."""

    def __bool__(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


class Subscription:
    """One controller's interest: the keys it follows, and those that fired.
    Either awaited (`wait`) or, on the work queue, called back (`on_fire`)."""

    def __init__(self, wakeups: Wakeups) -> None:
        self._wakeups = wakeups
        self._event = asyncio.Event()
        self._keys: set[Key] = set()
        self._fired: set[Key] = set()
        self.on_fire: Callable[[], None] | None = None

    def follow(self, keys: set[Key]) -> None:
        """Depend on exactly `keys` from now on."""
        self._wakeups._unfollow(self, self._keys - keys)
        self._wakeups._follow(self, keys - self._keys)
        self._keys = set(keys)

    def _fire(self, key: Key) -> None:
        self._fired.add(key)
        self._event.set()
        if self.on_fire is not None:
            self.on_fire()

    def pending(self) -> bool:
        """Whether keys fired since the last `take` or `wait`."""
        return bool(self._fired)

    def take(self) -> set[Key]:
        """The keys that fired since the last `take` or `wait`."""
        fired, self._fired = self._fired, set()
        self._event.clear()
        return fired

    async def wait(self, seconds: float, stopped: Stopped | None = None) -> set[Key]:
        """Wait for wake-ups, at most `seconds`, or until `stopped` is set; the keys
        that fired since the last wait (empty after a timeout). Nothing that fires
        meanwhile is lost."""
        if stopped is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), seconds)
        else:
            # A daemon that returns when asked is stopped gracefully, not
            # cancelled (and Kopf warns about every cancellation).
            woken = asyncio.ensure_future(self._event.wait())
            asked = asyncio.ensure_future(stopped.wait())
            try:
                await asyncio.wait({woken, asked}, timeout=seconds, return_when="FIRST_COMPLETED")
            finally:
                for task in (woken, asked):
                    task.cancel()
                await asyncio.gather(woken, asked, return_exceptions=True)
        fired, self._fired = self._fired, set()
        self._event.clear()
        return fired

    def close(self) -> None:
        self._wakeups._unfollow(self, self._keys)
        self._keys = set()
        self.on_fire = None
