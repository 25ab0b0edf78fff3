"""One Trigger's controller: compile it, publish its route, report its status.

A Kopf daemon runs one `TriggerController` per Trigger. It reconciles when
woken — by a watch event on the Trigger or on anything it depends on (its
EventSource, Services, signing Secret), see tidings.operator.world — and otherwise
only reads the data plane's delivery report every `health_interval`. Nothing
is written unless it changed: the routing table skips identical routes, the
status writer skips identical status, so a restarted operator re-derives
everything and writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]
from pydantic import ValidationError
from redis.exceptions import RedisError

from tidings.api.routes import CompileError, Route, compile_trigger, resolve_destination
from tidings.api.types import TriggerSpec
from tidings.operator import health, publishing, status
from tidings.operator.context import Context, ObjectLog
from tidings.operator.health import Reading, Transition
from tidings.operator.kube import StatusWriter
from tidings.operator.world import IndexWorld, Key, trigger_dependencies, worth_reconciling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Compiled:
    """The outcome of the last reconcile."""

    generation: int
    spec: TriggerSpec | None
    route: Route | None
    error: CompileError | None
    subscriber_url: str | None
    subscriber_error: CompileError | None


def resolve_subscriber(
    world: IndexWorld, namespace: str, spec: TriggerSpec
) -> tuple[str | None, CompileError | None]:
    """The subscriber URL, and why it or the dead-letter sink does not resolve."""
    url = None
    try:
        url = resolve_destination(world, namespace, spec.subscriber, "spec.subscriber")
        if spec.delivery.dead_letter is not None:
            resolve_destination(
                world, namespace, spec.delivery.dead_letter, "spec.delivery.deadLetter"
            )
    except CompileError as error:
        return url, error
    return url, None


def compile_body(body: Mapping[str, Any], world: IndexWorld, ctx: Context) -> Compiled:
    """Compile a Trigger object (pure but for the sealer's memory)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation") or 0)
    try:
        spec = TriggerSpec.model_validate(body.get("spec") or {})
    except ValidationError as bad_spec:
        invalid = CompileError("InvalidSpec", f"spec: {bad_spec}")
        return Compiled(generation, None, None, invalid, None, None)
    try:
        route: Route | None = compile_trigger(
            namespace=namespace,
            name=name,
            spec=spec,
            world=world,
            sealer=ctx.sealer,
            uid=meta.get("uid", ""),
            generation=generation,
        )
        error: CompileError | None = None
    except CompileError as failure:
        route, error = None, failure
    url, subscriber_error = resolve_subscriber(world, namespace, spec)
    return Compiled(generation, spec, route, error, url, subscriber_error)


class TriggerController:
    def __init__(
        self,
        ctx: Context,
        body: Mapping[str, Any],
        world: IndexWorld,
        *,
        post_event: Callable[[Transition], None],
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self.ctx = ctx
        self.body = body  # Kopf's live view: always the newest object seen
        self.world = world
        self.post_event = post_event
        meta = body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.log = logger or ObjectLog(log, "Trigger", self.namespace, self.name)
        self.key: Key = ("Trigger", self.namespace, self.name)
        self.writer = StatusWriter(
            ctx.kube,
            kind="Trigger",
            plural="triggers",
            namespace=self.namespace,
            name=self.name,
            fields=status.TRIGGER_FIELDS,
            types=status.TRIGGER_CONDITIONS,
        )
        known = self.writer.known(body)
        self.shown: Reading | None = health.from_status(known.get("delivery"))
        self.shown_state: str | None = self.shown.state if self.shown else None
        self.delivery_written = -math.inf
        self.compiled: Compiled | None = None

    async def run(self, stopped: Any) -> None:
        """Reconcile until Kopf stops the daemon (deletion, pause, exit)."""
        settings = self.ctx.settings
        loop = asyncio.get_running_loop()
        subscription = self.ctx.wakeups.subscribe()
        subscription.follow({self.key})
        fired: set[Key] = set()
        next_resync, failures = 0.0, 0
        try:
            while not stopped:
                delay = settings.health_interval
                try:
                    if (
                        self.compiled is None
                        or loop.time() >= next_resync
                        or worth_reconciling(
                            fired, self.key, self.generation(), self.compiled.generation
                        )
                    ):
                        # Follow first, then read: a change after the read still wakes us.
                        subscription.follow(self.dependencies())
                        await self.reconcile()
                        next_resync = loop.time() + settings.resync_interval * random.uniform(
                            0.8, 1.2
                        )
                    await self.report()
                    failures = 0
                except (RedisError, OSError, ApiException) as error:
                    failures += 1
                    self.compiled, delay = None, settings.retry_after(failures)
                    self.log.warning("will retry in %.1fs: %s", delay, error)
                fired = await subscription.wait(delay, stopped)
        finally:
            subscription.close()

    def generation(self) -> int:
        return int(self.body["metadata"].get("generation") or 0)

    def dependencies(self) -> set[Key]:
        try:
            spec = TriggerSpec.model_validate(self.body.get("spec") or {})
        except ValidationError:
            return {self.key}
        return trigger_dependencies(self.namespace, self.name, spec)

    async def reconcile(self) -> None:
        """Compile and publish (or withdraw) the route."""
        redis = self.ctx.redis
        current = await publishing.current_route(redis, self.namespace, self.name)
        self.ctx.sealer.learn(publishing.sealed_in_route(current))
        compiled = compile_body(self.body, self.world, self.ctx)
        if compiled.route is not None:
            version = await publishing.publish_route(redis, compiled.route)
            if version is not None:
                self.log.info("route published (table version %d)", version)
        else:
            assert compiled.error is not None
            version = await publishing.withdraw_route(redis, self.namespace, self.name)
            if version is not None:
                self.log.info("route withdrawn: %s", compiled.error.message)
        self.compiled = compiled

    async def report(self) -> None:
        """Read the delivery report and write status if it changed meaningfully."""
        compiled = self.compiled
        assert compiled is not None
        settings = self.ctx.settings
        loop = asyncio.get_running_loop()
        source = compiled.spec.source if compiled.spec is not None else None
        fresh = None
        if source is not None:
            fresh = await health.read(self.ctx.redis, self.namespace, source, self.name)
        stale = health.is_stale(fresh, int(time.time() * 1000), settings.stale_after)
        shown = health.settle(self.shown, fresh, loop.time() - self.delivery_written)
        facts = status.TriggerFacts(
            namespace=self.namespace,
            source=source or "",
            generation=compiled.generation,
            paused=compiled.spec.paused if compiled.spec is not None else False,
            source_entry=self.world.source_entry(self.namespace, source) if source else None,
            subscriber_url=compiled.subscriber_url,
            subscriber_error=compiled.subscriber_error,
            compile_error=compiled.error,
            reading=shown,
            stale=stale,
        )
        known = self.writer.known(self.body)
        desired = status.trigger_status(
            facts, known, now=health.now_rfc3339(), stale_after=settings.stale_after
        )
        written = await self.writer.write(self.body, desired)
        if written and desired.get("delivery") != known.get("delivery"):
            self.delivery_written = loop.time()
        state = (desired.get("delivery") or {}).get("state")
        transition = health.backoff_transition(self.shown_state, state, shown)
        if transition is not None:
            self.post_event(transition)
        self.shown, self.shown_state = shown, state
