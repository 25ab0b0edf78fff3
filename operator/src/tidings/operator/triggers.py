"""One Trigger's controller: compile it, publish its route, report its status.

One `TriggerController` per Trigger runs in the reconcile loop
(tidings.operator.loop): it reconciles when woken by a watch event on the
Trigger or on anything it depends on (its EventSource, Services, signing
Secret; tidings.operator.world), and otherwise only reads the data plane's
delivery report every `health_interval` — at rest, every `health_rest_interval`
and whenever a dispatcher announces news for it. Nothing is written unless it
changed: the routing table skips identical routes, the status writer skips
identical status, so a restarted operator re-derives everything and writes
nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]
from pydantic import ValidationError

from tidings.api.destinations import DestinationPolicy
from tidings.api.events import parse_rfc3339_ms
from tidings.api.routes import (
    CompileError,
    Route,
    check_destination,
    compile_trigger,
    resolve_destination,
)
from tidings.api.types import TriggerSpec, TriggerStatus
from tidings.operator import health, publishing, status
from tidings.operator.context import Context, ObjectController
from tidings.operator.health import Reading
from tidings.operator.world import IndexWorld, Key, SourceEntry, trigger_dependencies


@dataclass(frozen=True)
class Compiled:
    """What the last reconcile found, as status needs it. Not the spec or the
    route themselves: kept for every Trigger between rounds, those two were
    ~20 KiB each of pydantic objects (200 MiB at 10,000 Triggers)."""

    generation: int
    source: str | None  # None: the spec does not validate
    paused: bool
    has_expression: bool
    error: CompileError | None
    subscriber_url: str | None
    subscriber_error: CompileError | None


def resolve_subscriber(
    world: IndexWorld, namespace: str, spec: TriggerSpec, destinations: DestinationPolicy
) -> tuple[str | None, CompileError | None]:
    """The subscriber URL, and why it or the dead-letter sink does not resolve
    (or is not an allowed destination)."""
    url = None
    try:
        url = resolve_destination(world, namespace, spec.subscriber, "spec.subscriber")
        check_destination(destinations, url, "spec.subscriber")
        if spec.delivery.dead_letter is not None:
            resolve_destination(
                world,
                namespace,
                spec.delivery.dead_letter,
                "spec.delivery.deadLetter",
                destinations,
            )
    except CompileError as error:
        return url, error
    return url, None


def compile_body(
    body: Mapping[str, Any], world: IndexWorld, ctx: Context
) -> tuple[Compiled, Route | None]:
    """Compile a Trigger object (pure but for the sealer's memory): what status
    needs, and the route to publish (None: `error` says why not)."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation") or 0)
    try:
        spec = TriggerSpec.model_validate(body.get("spec") or {})
    except ValidationError as bad_spec:
        invalid = CompileError("InvalidSpec", f"spec: {bad_spec}")
        return Compiled(generation, None, False, False, invalid, None, None), None
    try:
        route: Route | None = compile_trigger(
            namespace=namespace,
            name=name,
            spec=spec,
            world=world,
            sealer=ctx.sealer,
            destinations=ctx.settings.destinations,
            uid=meta.get("uid", ""),
            generation=generation,
        )
        error: CompileError | None = None
    except CompileError as failure:
        route, error = None, failure
    url, subscriber_error = resolve_subscriber(world, namespace, spec, ctx.settings.destinations)
    compiled = Compiled(
        generation,
        spec.source,
        spec.paused,
        spec.filter.expression is not None,
        error,
        url,
        subscriber_error,
    )
    return compiled, route


class TriggerController(ObjectController[TriggerStatus]):
    """Drives one Trigger (tidings.operator.loop.Controller)."""

    KIND = "Trigger"
    PLURAL = "triggers"
    STATUS = TriggerStatus
    CONDITIONS = status.TRIGGER_CONDITIONS

    def __post_init__(self) -> None:
        super().__post_init__()
        # What status.delivery shows, and when it was last written (settled against).
        self.shown: Reading | None = health.from_status(self.writer.known(self.body).delivery)
        self.shown_state: str | None = self.shown.state if self.shown else None
        self.delivery_written = -math.inf
        self.compiled: Compiled | None = None
        # What the last round that held nothing back saw (see `observe`).
        self.settled: Inputs | None = None

    def dependencies(self) -> set[Key]:
        try:
            spec = TriggerSpec.model_validate(self.body.get("spec") or {})
        except ValidationError:
            return {self.key}
        return trigger_dependencies(self.namespace, self.name, spec)

    @property
    def uid(self) -> str | None:
        uid: str | None = self.body["metadata"].get("uid")
        return uid

    async def reconcile(self) -> None:
        """Compile and publish (or withdraw) the route."""
        # A deleted Trigger of the same name: its cleanup removes what we would publish.
        await self.ctx.cleaned_up(self.key)
        redis = self.ctx.redis
        entry = await publishing.current_route_entry(redis, self.namespace, self.name)
        self.ctx.sealer.learn(publishing.sealed_in_route(entry.route))
        compiled, route = compile_body(self.body, self.world, self.ctx)
        if route is not None:
            version = await publishing.publish_route(redis, route, entry)
            if version is not None:
                self.log.info("route published (table version %d)", version)
        else:
            assert compiled.error is not None
            version = await publishing.withdraw_route(redis, self.namespace, self.name)
            if version is not None:
                self.log.info("route withdrawn: %s", compiled.error.message)
        self.compiled = compiled

    async def observe(self) -> float:
        """Read the delivery report and write status if it changed meaningfully;
        look again after `health_interval`."""
        compiled = self.compiled
        assert compiled is not None  # the loop reconciles first
        settings = self.ctx.settings
        loop = asyncio.get_running_loop()
        source = compiled.source
        fresh = None
        if source is not None:
            fresh = await health.read(self.ctx.redis, self.namespace, source, self.name)
        stale = health.is_stale(fresh, int(time.time() * 1000), settings.stale_after)
        source_entry = self.world.source_entry(self.namespace, source) if source else None
        inputs = Inputs(
            report=without_time(fresh),
            stale=stale,
            compiled=compiled,
            source_entry=source_entry,
            resource_version=self.body["metadata"].get("resourceVersion"),
            reported=fresh is not None and fresh.updated_ms is not None,
        )
        if self.settled is not None and self.settled.same_as(inputs):
            # Status would come out as it is: skip building and comparing it (most
            # of a round's CPU; at 10,000 Triggers at rest, over a core). At rest,
            # look again only now and then: news is announced (keys.REPORT_NEWS).
            return self.rest_interval(fresh) if self.resting(inputs) else settings.health_interval
        shown = health.settle(self.shown, fresh, loop.time() - self.delivery_written)
        facts = status.TriggerFacts(
            namespace=self.namespace,
            source=source or "",
            generation=compiled.generation,
            paused=compiled.paused,
            source_entry=source_entry,
            subscriber_url=compiled.subscriber_url,
            subscriber_error=compiled.subscriber_error,
            compile_error=compiled.error,
            reading=shown,
            stale=stale,
            name=self.name,
            has_expression=compiled.has_expression,
        )
        known = self.writer.known(self.body)
        desired = status.trigger_status(
            facts, known, now=health.now_rfc3339(), stale_after=settings.stale_after
        )
        written = not status.same(desired, known)
        try:
            if written:
                await self.writer.apply(self.body, desired)
        except ApiException as error:
            if not names_this_object(error, self.name):
                raise
            # Deleted, and the watch missed it (a watch restarted after "410 Gone"
            # lists again, and says nothing of what vanished meanwhile).
            self.log.warning("is gone, though no deletion was seen: cleaning up")
            self.ctx.vanished(self.key, self.body)
            return settings.health_interval
        if written and desired.delivery != known.delivery:
            self.delivery_written = loop.time()
        state = desired.delivery.state if desired.delivery is not None else None
        transition = health.backoff_transition(self.shown_state, state, shown)
        if transition is not None:
            self.post_event(transition)
        wanted = status.trigger_conditions(facts, stale_after=settings.stale_after)
        for warning in status.warnings(known.conditions, wanted, types=("FilterErrors",)):
            self.post_event(health.Transition("Warning", warning.reason, warning.message))
        self.shown, self.shown_state = shown, state
        # Nothing held back (no change in the report that settle would show once its
        # interval has passed): the same inputs give the same status until they move
        # or staleness flips. Else look in full next time.
        held_back = health.settle(shown, fresh, math.inf) != shown
        self.settled = None if held_back else inputs
        return settings.health_interval

    def resting(self, inputs: Inputs) -> bool:
        """At rest, and for a Trigger no dispatcher has reported yet, also older than
        `health_rest_interval`: a dispatcher announces a first report, but one older
        than that announcement does not, and a new Trigger's first status must not
        wait a rest interval for it (e.g. `kubectl wait` in a pipeline)."""
        if not inputs.at_rest():
            return False
        if inputs.reported:
            return True
        created_ms = parse_rfc3339_ms(self.body["metadata"].get("creationTimestamp") or "")
        if created_ms is None:
            return True
        return time.time() - created_ms / 1000 >= self.ctx.settings.health_rest_interval

    def rest_interval(self, fresh: Reading | None) -> float:
        """When to look again at a report at rest: after `health_rest_interval`, but
        not after it would go stale (dispatchers announce news; their silence is
        seen here, from the newest heartbeat)."""
        settings = self.ctx.settings
        interval = settings.health_rest_interval
        if fresh is not None and fresh.updated_ms is not None:
            stale_in = fresh.updated_ms / 1000 + settings.stale_after - time.time()
            interval = min(interval, max(settings.health_interval, stale_in + 0.5))
        return interval


def names_this_object(error: ApiException, name: str) -> bool:
    """A 404 that says this very Trigger is not found, not one for a path the
    API server does not serve (a CRD being registered again, a new server that
    has not loaded it yet)."""
    if error.status != 404:
        return False
    try:
        details = json.loads(error.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return False
    return bool(details.get("name") == name and details.get("kind") == "triggers")


def without_time(reading: Reading | None) -> Reading | None:
    """A report without its time (the dispatchers' heartbeat moves it; status shows
    staleness, computed from it, not the time itself)."""
    return replace(reading, updated_ms=None) if reading is not None else None


@dataclass(frozen=True)
class Inputs:
    """What a Trigger's status is computed from, besides time."""

    report: Reading | None
    stale: bool
    compiled: Compiled
    source_entry: SourceEntry | None
    resource_version: str | None
    # A dispatcher has published a report (`report` has no time: see without_time).
    reported: bool = True

    def at_rest(self) -> bool:
        """A fresh report at rest: the dispatchers announce whatever moves it off
        (and `rest_interval` looks again before it would go stale). No report yet is
        at rest too: the first one a dispatcher publishes is announced (at 10,000
        Triggers no dispatcher has taken up, looking every `health_interval` cost the
        operator a third of a core)."""
        if not self.reported:
            return True
        return self.report is not None and not self.stale and self.report.at_rest()

    def same_as(self, other: Inputs) -> bool:
        # The compile outcome and the index entry are replaced, never changed in place.
        return (
            self.report == other.report
            and self.stale == other.stale
            and self.compiled is other.compiled
            and self.source_entry is other.source_entry
            and self.resource_version == other.resource_version
            and self.reported == other.reported
        )
