"""The Kopf handlers: thin glue between watch events and the controllers.

- Indexes (Kopf fills them completely before any daemon starts): EventSources,
  Services, Secrets, and the adapter Deployments this operator manages.
- Every watch event on one of those kinds, and on Triggers, wakes the
  controllers that depend on that object (tidings.operator.world).
- Every handler here is a coroutine: Kopf runs a plain function in its thread
  pool, a thread hop per event, and a wake-up from there would touch the work
  queue off the event loop.
- One daemon per Trigger, EventSource and Replay puts its controller
  (tidings.operator.triggers, .sources, .replays) on the shared work queue
  (tidings.operator.loop) until Kopf asks it to stop; the queue's workers are
  stopped at the operator's cleanup.
- Deletion handlers (Kopf holds the finalizer `tidings.dev/cleanup` until they
  succeed) remove the object's data-plane state (tidings.operator.publishing).
- The bodies Kopf keeps (`keep_bodies_small`) lose `metadata.managedFields`
  and share their strings.
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


# The kinds with a daemon: Kopf keeps the newest body of each such object.
DAEMON_PLURALS = ("triggers", "eventsources", "replays")


def build_registry(ctx: Context, queue: WorkQueue) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    wake = ctx.wakeups.notify
    keep_bodies_small(registry)

    @kopf.on.cleanup(registry=registry)
    async def stop_queue(**_: Any) -> None:
        # Before Kopf's wait for leftover tasks: the workers would be 5 s of it.
        await queue.close()

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
    async def source_event(namespace: str | None, name: str, **_: Any) -> None:
        wake(("EventSource", namespace or "", name))

    @kopf.on.event(GROUP, VERSION, "triggers", registry=registry)
    async def trigger_event(namespace: str | None, name: str, **_: Any) -> None:
        wake(("Trigger", namespace or "", name))

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

    @daemon("triggers")
    async def trigger(body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
        controller = TriggerController(ctx, body, the_world(kwargs), post_event=poster(body))
        await drive(controller, stopped)

    @daemon("eventsources")
    async def eventsource(body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
        controller = SourceController(ctx, body, the_world(kwargs), post_event=poster(body))
        await drive(controller, stopped)

    @daemon("replays")
    async def replay(body: kopf.Body, stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
        controller = replays.ReplayController(ctx, body, the_world(kwargs), post_event=poster(body))
        await drive(controller, stopped)

    # --- deletion ----------------------------------------------------------------------

    @kopf.on.delete(GROUP, VERSION, "triggers", registry=registry)
    async def trigger_deleted(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> None:
        namespace = namespace or ""
        await ctx.stopped(("Trigger", namespace, name))
        source = spec.get("source")
        await publishing.remove_trigger(ctx.redis, namespace, name, source)
        if source:
            ctx.spawn(sweep_later(ctx, namespace, name, source, timeout_of(spec)), f"sweep {name}")

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


def poster(body: kopf.Body) -> Callable[[Transition], None]:
    """Posts a controller's Events (BackoffStarted, RetainedWalOverThreshold …) on its object."""

    def post(t: Transition) -> None:
        kopf.event(body, type=t.type, reason=t.reason, message=t.message)

    return post


def timeout_of(spec: Mapping[str, Any]) -> float:
    """The Trigger's delivery timeout: how long a draining dispatcher may still
    write its keys."""
    try:
        return parse_duration((spec.get("delivery") or {}).get("timeout") or "10s")
    except ValueError:
        return 10.0


async def sweep_later(ctx: Context, namespace: str, name: str, source: str, after: float) -> None:
    await asyncio.sleep(after + SWEEP_MARGIN)
    with contextlib.suppress(RedisError, OSError):
        await publishing.sweep_trigger(ctx.redis, namespace, name, source)


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


def keep_bodies_small(registry: kopf.OperatorRegistry) -> None:
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
    for plural in DAEMON_PLURALS:
        kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-trim", registry=registry)(
            compact_event_object
        )


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


async def compact_event_object(event: kopf.RawEvent, **_: Any) -> None:
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
