"""The Kopf handlers: thin glue between watch events and the controllers.

- Indexes (Kopf fills them completely before any daemon starts): EventSources,
  Services, Secrets, and the adapter Deployments this operator manages.
- Every watch event on one of those kinds, and on Triggers, wakes the
  controllers that depend on that object (tidings.operator.world).
- Every handler here is a coroutine: Kopf runs a plain function in its thread
  pool, a thread hop per event, and a wake-up from there would touch the work
  queue off the event loop.
- Triggers: their watch events put each one's controller
  (tidings.operator.triggers) on the shared work queue (tidings.operator.loop)
  with the newest body, and a deletion takes it off and removes its
  data-plane state in the background (`TriggerEvents`). No daemon and no
  finalizer: at 10,000 Triggers, Kopf's finalizer was a third of the writes
  to the API server during an apply, and its daemons most of Kopf's own work
  per object. A Trigger deleted while no operator runs is cleaned up by the
  orphan collector (tidings.operator.orphans); Kopf's peering pause takes
  them off the queue (tidings.operator.kopf_pause).
- EventSources and Replays: one daemon each puts its controller (.sources,
  .replays) on the queue until Kopf asks it to stop; their deletion handlers
  (Kopf holds the finalizer `tidings.dev/cleanup` until they succeed) remove
  the object's data-plane state, a Postgres source's replication slot
  included, which must not be left behind. The queue's workers are stopped at
  the operator's cleanup.
- The bodies kept for controllers (`keep_bodies_small`, `trim`) lose
  `metadata.managedFields` and share their strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import kopf
from redis.exceptions import RedisError

from tidings.api.durations import parse_duration
from tidings.api.routes import ingest_token_secret_name
from tidings.api.types import GROUP, VERSION
from tidings.operator import adapters, publishing, replays, replication, world
from tidings.operator.context import Context
from tidings.operator.health import Transition
from tidings.operator.loop import Controller, WorkQueue
from tidings.operator.sources import SourceController
from tidings.operator.triggers import TriggerController
from tidings.operator.world import Key

FINALIZER = "tidings.dev/cleanup"
ANNOTATIONS_PREFIX = "tidings.dev"
MANAGED = {"app.kubernetes.io/managed-by": adapters.MANAGED_BY}
# A stopped daemon (deletion, peering pause, exit) is asked to return first (it
# returns at once, waiting at most loop.WITHDRAW_GRACE for a round in flight),
# and cancelled only if it has not within this time.
GRACE = 3.0
CANCEL_AFTER = 2.0

# A deleted Trigger's keys are deleted again this long after its delivery timeout.
SWEEP_MARGIN = 5.0

log = logging.getLogger(__name__)


# The kinds whose bodies are kept: by Kopf for each daemon (EventSources,
# Replays), by the work queue for each Trigger.
KEPT_PLURALS = ("triggers", "eventsources", "replays")
# Made small by a handler of their own; a Trigger's event handler does it itself
# (one handler per event instead of two: Kopf's handling of each is most of its
# work per event).
TRIMMED_BY_HANDLER = ("eventsources", "replays")


def build_registry(
    ctx: Context, queue: WorkQueue, triggers: TriggerEvents
) -> kopf.OperatorRegistry:
    """`triggers`: what drives the Triggers from their watch events (it knows
    whether Kopf's peering has paused this replica)."""
    registry = kopf.OperatorRegistry()
    wake = ctx.wakeups.notify
    keep_bodies_small(registry, TRIMMED_BY_HANDLER)

    @kopf.on.cleanup(registry=registry)
    async def stop_queue(**_: Any) -> None:
        # Before Kopf's wait for leftover tasks: the workers would be 5 s of it.
        await queue.close()
        ctx.cancel_background()

    # --- indexes and wake-ups ----------------------------------------------------------

    @kopf.index(GROUP, VERSION, "eventsources", id="sources", registry=registry)
    async def index_source(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
        return world.source_entry(namespace or "", name, body)

    @kopf.index("", "v1", "services", id="services", registry=registry)
    async def index_service(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> Any:
        return world.service_entry(namespace or "", name, spec)

    @kopf.index("", "v1", "secrets", id="secrets", registry=registry)
    async def index_secret(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
        return world.secret_entry(namespace or "", name, body)

    @kopf.index(GROUP, VERSION, "triggergrants", id="grants", registry=registry)
    async def index_grant(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
        return world.grant_entry(namespace or "", name, body)

    @kopf.on.event(GROUP, VERSION, "triggergrants", registry=registry)
    async def grant_event(namespace: str | None, **_: Any) -> None:
        # Granting and revoking take effect at once: the Triggers pointing here recompile.
        wake(world.grants_key(namespace or ""))

    @kopf.index("apps", "v1", "deployments", id="adapters", labels=MANAGED, registry=registry)
    async def index_adapter(namespace: str | None, body: kopf.Body, **_: Any) -> Any:
        return world.adapter_entry(
            namespace or "",
            body,
            source_label=adapters.SOURCE_LABEL,
            hash_annotation=adapters.TEMPLATE_HASH,
        )

    @kopf.on.event(GROUP, VERSION, "eventsources", registry=registry)
    async def source_event(namespace: str | None, name: str, type: str | None, **_: Any) -> None:
        if type == "ADDED":
            ctx.creates.saw()
        wake(("EventSource", namespace or "", name))

    @kopf.on.event(GROUP, VERSION, "replays", registry=registry)
    async def replay_event(namespace: str | None, name: str, **_: Any) -> None:
        wake(("Replay", namespace or "", name))

    @kopf.on.event("", "v1", "services", registry=registry)
    async def service_event(namespace: str | None, name: str, **_: Any) -> None:
        wake(("Service", namespace or "", name))

    @kopf.on.event("", "v1", "secrets", registry=registry)
    async def secret_event(namespace: str | None, name: str, **_: Any) -> None:
        wake(("Secret", namespace or "", name))

    @kopf.on.event("apps", "v1", "deployments", labels=MANAGED, registry=registry)
    async def adapter_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        wake(("Deployment", namespace or "", labels.get(adapters.SOURCE_LABEL, "")))

    # --- controllers -------------------------------------------------------------------

    def the_world(kwargs: dict[str, Any]) -> world.IndexWorld:
        return world.IndexWorld(
            sources=kwargs["sources"],
            services=kwargs["services"],
            secrets=kwargs["secrets"],
            adapters=kwargs["adapters"],
            grants=kwargs["grants"],
        )

    async def drive(controller: Controller, stopped: kopf.DaemonStopped) -> None:
        with ctx.running(controller.key):
            await queue.drive(controller, stopped)

    def daemon(plural: str) -> kopf.on.DaemonDecorator:
        return kopf.daemon(
            GROUP,
            VERSION,
            plural,
            cancellation_backoff=GRACE,
            cancellation_timeout=CANCEL_AFTER,
            registry=registry,
        )

    ctx.vanished = triggers.deleted
    ctx.hurry = queue.hurry
    ctx.kube.status_turns.wake_with(ctx.spawn)

    @kopf.on.event(GROUP, VERSION, "triggers", registry=registry)
    async def trigger_event(event: kopf.RawEvent, **kwargs: Any) -> None:
        triggers.saw(event, the_world(kwargs))

    @daemon("eventsources")
    async def eventsource(body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
        controller = SourceController(ctx, body, the_world(kwargs), post_event=poster(body))
        await drive(controller, stopped)

    @daemon("replays")
    async def replay(body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
        controller = replays.ReplayController(ctx, body, the_world(kwargs), post_event=poster(body))
        await drive(controller, stopped)

    # --- deletion ----------------------------------------------------------------------

    @kopf.on.delete(GROUP, VERSION, "replays", registry=registry)
    async def replay_deleted(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> None:
        namespace = namespace or ""
        await ctx.stopped(("Replay", namespace, name))
        await replays.cancel(ctx.redis, namespace, name, spec.get("trigger"))

    @kopf.on.delete(GROUP, VERSION, "eventsources", registry=registry)
    async def eventsource_deleted(namespace: str | None, name: str, **_: Any) -> None:
        namespace = namespace or ""
        await ctx.stopped(("EventSource", namespace, name))
        removed = await publishing.remove_source(ctx.redis, namespace, name)
        await remove_owned(ctx, namespace, name)
        log.info(
            "[EventSource/%s/%s] removed stream and %d data-plane keys", namespace, name, removed
        )

    @kopf.on.delete(GROUP, VERSION, "eventsources", id="replication", registry=registry)
    async def eventsource_replication(
        namespace: str | None,
        name: str,
        spec: kopf.Spec,
        body: kopf.Body,
        retry: int,
        **kwargs: Any,
    ) -> None:
        # Runs after `eventsource_deleted`: the adapter Deployment is gone, so
        # no walsender of ours holds the slot for long.
        postgres = replication.postgres_spec(spec)
        if postgres is None:
            return
        namespace = namespace or ""
        outcome = await replication.drop(
            postgres,
            the_world(kwargs),
            namespace=namespace,
            name=name,
            attempt=retry + 1,
            attempts=ctx.settings.cleanup_attempts,
            known_dsn=ctx.dsns.get((namespace, name)),
        )
        kopf.event(body, type=outcome.event_type, reason=outcome.reason, message=outcome.message)
        if outcome.verdict == "retry":  # Kopf logs it, and keeps the count in an annotation
            raise kopf.TemporaryError(outcome.message, delay=outcome.delay)
        level = logging.INFO if outcome.verdict == "done" else logging.ERROR
        log.log(level, "[EventSource/%s/%s] %s", namespace, name, outcome.message)
        ctx.dsns.pop((namespace, name), None)

    return registry


def poster(body: Mapping[str, Any]) -> Callable[[Transition], None]:
    """Posts a controller's Events (BackoffStarted, RetainedWalOverThreshold …) on its
    object. Keeps only what Kopf reads of it (the reference), not the whole body:
    a Trigger's controller is handed a new body by every event."""
    meta = body.get("metadata") or {}
    reference = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {key: meta.get(key) for key in ("name", "namespace", "uid")},
    }

    def post(t: Transition) -> None:
        kopf.event(cast(kopf.Body, reference), type=t.type, reason=t.reason, message=t.message)

    return post


def timeout_of(spec: Mapping[str, Any]) -> float:
    """The Trigger's delivery timeout: how long a draining dispatcher may still
    write its keys."""
    try:
        return parse_duration((spec.get("delivery") or {}).get("timeout") or "10s")
    except ValueError:
        return 10.0


class TriggerEvents:
    """Triggers on the work queue, driven by their watch events.

    Every event but a deletion puts the Trigger's controller on the queue with
    the event's body (the newest), or gives the one there that body, and wakes
    what depends on the Trigger. A deletion takes the controller off and
    removes the route, cursor and per-Trigger keys in the background, retried
    until Redis answers (`Context.clean_up`).

    A Trigger deleted and created again under the same name: Kopf handles the
    two objects (two uids) apart, in either order. The new controller publishes
    only once the old one's cleanup has ended (`TriggerController.reconcile`);
    a cleanup that ran after the new one published has it publish again.
    """

    def __init__(self, ctx: Context, queue: WorkQueue, paused: Callable[[], bool]) -> None:
        self._ctx, self._queue, self._paused = ctx, queue, paused

    def saw(self, event: kopf.RawEvent, world_now: world.IndexWorld) -> None:
        trim(event)
        body = cast(dict[str, Any], event.get("object") or {})
        meta = body.get("metadata") or {}
        key: Key = ("Trigger", meta.get("namespace") or "", meta.get("name") or "")
        kind = event.get("type")
        if kind == "ADDED":  # new (the first listing's events have no type)
            self._ctx.creates.saw()
        if kind == "DELETED":
            self.deleted(key, body)
        elif not self._paused():
            current = self._queue.controller(key)
            if isinstance(current, TriggerController) and current.uid == meta.get("uid"):
                current.body = body
            else:
                self._queue.add(
                    TriggerController(self._ctx, body, world_now, post_event=poster(body))
                )
        self._ctx.wakeups.notify(key)

    def deleted(self, key: Key, body: Mapping[str, Any]) -> None:
        current = self._queue.controller(key)
        in_flight = None
        if isinstance(current, TriggerController) and current.uid == body["metadata"].get("uid"):
            in_flight = self._queue.drop(key)
        spec = body.get("spec") or {}
        source, sweep_after = spec.get("source"), timeout_of(spec)
        self._ctx.clean_up(key, lambda: self.remove(key, source, sweep_after, in_flight))

    async def remove(
        self, key: Key, source: str | None, sweep_after: float, in_flight: asyncio.Event | None
    ) -> None:
        _, namespace, name = key
        # A round in flight could publish again after the removal.
        await self._queue.round_ended(in_flight)
        failures = 0
        while True:
            try:
                await publishing.remove_trigger(self._ctx.redis, namespace, name, source)
                break
            except (RedisError, OSError) as error:
                failures += 1
                delay = self._ctx.settings.retry_after(failures)
                log.warning(
                    "[Trigger/%s/%s] deleted; removing its route failed, will retry in %.1fs: %s",
                    namespace,
                    name,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)
        log.info("[Trigger/%s/%s] deleted: route, cursor and keys removed", namespace, name)
        self._ctx.wakeups.notify(key)  # its Replays see the route gone
        if self._queue.controller(key) is not None:
            # Created again meanwhile; had it published already, that is gone now.
            self._queue.reconcile_again(key)
        elif source:
            self._ctx.spawn(self.sweep_later(key, source, sweep_after), f"sweep {name}")

    def tracked(self) -> dict[tuple[str, str], object]:
        """The Triggers on the queue, for the orphan collector (orphans.Tracked)."""
        return {(key[1], key[2]): c for key, c in self._queue.controllers("Trigger").items()}

    def vanished(self, namespace: str, name: str, token: object) -> bool:
        key: Key = ("Trigger", namespace, name)
        if not isinstance(token, TriggerController) or self._queue.controller(key) is not token:
            return False  # created again since
        self.deleted(key, token.body)
        return True

    def driving(self, namespace: str, name: str) -> bool:
        return self._queue.controller(("Trigger", namespace, name)) is not None

    def paused(self) -> bool:
        return self._paused()

    async def sweep_later(self, key: Key, source: str, after: float) -> None:
        await asyncio.sleep(after + SWEEP_MARGIN)
        if self._queue.controller(key) is not None:
            return  # created again: these keys are the new Trigger's now
        _, namespace, name = key
        with contextlib.suppress(RedisError, OSError):
            await publishing.sweep_trigger(self._ctx.redis, namespace, name, source)


async def remove_owned(ctx: Context, namespace: str, source: str) -> None:
    """Stop the adapter and delete what the operator made for this source. Owner
    references would let the garbage collector do it too, but later."""
    name = adapters.adapter_name(source)
    await ctx.kube.delete("Deployment", namespace, name)
    await ctx.kube.delete("Secret", namespace, name)
    token = ingest_token_secret_name(source)
    labels = await ctx.kube.get_secret_labels(namespace, token)
    if labels is not None and labels.get("app.kubernetes.io/managed-by") == adapters.MANAGED_BY:
        await ctx.kube.delete("Secret", namespace, token)


class NoDiffBase(kopf.DiffBaseStorage):
    """No change detection: no handler here reacts to a creation or an update (the
    work queue compiles from the live object), so the essence Kopf keeps for that
    is never needed. Kopf's default deep-copied every object on every event
    (13 % of a restart's CPU at 10,000 Triggers) and wrote it into an annotation
    of each new object: a second write per object during an apply. Every object
    now has the same, empty essence: no create or update causes, ever; deletion
    (the finalizer) does not depend on it."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return {}

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


def keep_bodies_small(
    registry: kopf.OperatorRegistry, plurals: Iterable[str] = KEPT_PLURALS
) -> None:
    """Make every event of a kind with a daemon small before Kopf keeps it.

    Kopf keeps the newest body of each such object for its daemon (the very dict
    an event handler is given as `event["object"]`), 10,000 of them at scale:
    - `metadata.managedFields` (who set which field: kubectl's, Kopf's finalizer
      and our status apply) were ~57 % of a Trigger's body as Python objects,
      15 of 27 KiB; nothing here or in Kopf reads them, nor kubectl's
      last-applied annotation (0.6 KiB).
    - Each watch event is decoded on its own, so each body had its own copy of
      every key ("lastTransitionTime", "observedGeneration"…) and of every
      repeated short value ("True", "Ready", a source's name): 11.5 KiB a
      Trigger, 5.3 KiB with those strings shared (`share_strings`).
    """
    for plural in plurals:
        kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-trim", registry=registry)(
            compact_event_object
        )


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


async def compact_event_object(event: kopf.RawEvent, **_: Any) -> None:
    """Kopf's handler form of `trim`."""
    trim(event)


def trim(event: kopf.RawEvent) -> None:
    """Remove the server's field-ownership bookkeeping and kubectl's last-applied
    copy from a watch event's object and share its strings, in place (Kopf holds
    this very dict)."""
    body = cast(dict[str, Any], event.get("object", {}))
    metadata: dict[str, Any] = body.get("metadata", {})
    metadata.pop("managedFields", None)
    # kubectl's copy of the whole manifest (client-side apply); nothing here reads it.
    (metadata.get("annotations") or {}).pop(LAST_APPLIED, None)
    share_strings(body)


# Longer strings (messages, URLs, the last-applied annotation) are rarely the
# same in two objects; interning them would only grow the interned table.
SHARED_STRING_MAX = 64


def share_strings(value: Any) -> Any:
    """Replace, in place, every key and every short string value under `value` by
    the interned copy, so equal strings of all bodies are one object. Dicts and
    lists keep their identity; the (possibly interned) value is returned."""
    if isinstance(value, dict):
        pairs = [(sys.intern(key), share_strings(item)) for key, item in value.items()]
        value.clear()
        value.update(pairs)
    elif isinstance(value, list):
        value[:] = [share_strings(item) for item in value]
    elif isinstance(value, str) and len(value) <= SHARED_STRING_MAX:
        return sys.intern(value)
    return value


def configure(settings: kopf.OperatorSettings) -> None:
    """Kopf settings: our finalizer, and Kopf's bookkeeping in annotations (never in
    status, which users read)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATIONS_PREFIX
    )
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.reporting_component = "tidings-operator"
    # No watching of CRDs and Namespaces (cluster-wide permissions for little gain):
    # the CRDs must be installed before the operator starts (Helm does), and
    # `--namespace` takes exact names.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Filter on the server: only our adapter Deployments, and no Helm release
    # Secrets (large, and never a Tidings credential).
    settings.watching.label_selectors["apps", "v1", "deployments"] = (
        f"app.kubernetes.io/managed-by={adapters.MANAGED_BY}"
    )
    settings.watching.field_selectors["", "v1", "secrets"] = "type!=helm.sh/release.v1"
