"""Status as a pure function of what the controller observed.

The status is the API's own typed model (tidings.api.types.TriggerStatus,
EventSourceStatus: the models the CRD schema is generated from), written in
its wire form (camelCase, unset fields left out).

Conditions follow the Kubernetes API conventions: type, status, a CamelCase
reason a script can match, a human message, observedGeneration, and a
lastTransitionTime that only moves when the status (True/False/Unknown) does.
Messages never carry counters or timestamps, so an unchanged situation yields
byte-identical status and the operator writes nothing.

Trigger conditions:
  SourceReady         the EventSource exists and is Ready
  SubscriberResolved  the subscriber (and dead-letter sink) resolve to URLs
  Ready               compiled and routed: the route is in the routing table
  Delivering          what the data plane reports (Backoff, Paused, no report …)
  FilterErrors        Triggers with a filter expression: True when it failed on most
                      events of its recent window (docs/filters.md)
EventSource conditions:
  Ready               compiled and published; for adapter kinds also: the adapter
                      Deployment is available and the adapter reports it captures
  AdapterReady        adapter kinds only: the adapter Deployment has an available replica
  Capturing           adapter kinds only: what the adapter itself reports (Streaming,
                      or the reason it retries: ConnectionFailed, TableNotFound, …)
  WalRetained         postgres: the slot's retained WAL against maxRetainedWalBytes
  ChangesMissed       postgres, once it happened: the slot had to be created anew
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from tidings.api.routes import CompileError
from tidings.api.types import (
    Condition,
    DeliveryStatus,
    EventSourceStatus,
    ObjectStatus,
    TriggerStatus,
)
from tidings.operator.health import Reading
from tidings.operator.world import AdapterEntry, SourceEntry
from tidings.sources import status as adapter_status

ConditionStatus = Literal["True", "False", "Unknown"]
Status = TypeVar("Status", bound=ObjectStatus)

TRIGGER_CONDITIONS = ("Ready", "SourceReady", "SubscriberResolved", "Delivering", "FilterErrors")
SOURCE_CONDITIONS = ("Ready", "AdapterReady", "Capturing", "WalRetained", "ChangesMissed")


@dataclass(frozen=True)
class Want:
    """A condition as the controller wants it, before timestamps."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


def conditions(
    wanted: Sequence[Want],
    current: Sequence[Condition] | None,
    *,
    generation: int,
    now: str,
) -> list[Condition]:
    """The conditions to write: `lastTransitionTime` kept from `current` while a
    condition's status is unchanged, else `now`."""
    previous = {c.type: c for c in current or []}
    out: list[Condition] = []
    for want in wanted:
        before = previous.get(want.type)
        since = before.last_transition_time if before is not None else None
        if before is None or before.status != want.status or not since:
            since = now
        out.append(
            Condition(
                type=want.type,
                status=want.status,
                reason=want.reason,
                message=want.message,
                observed_generation=generation,
                last_transition_time=since,
            )
        )
    return out


def owned(status: Mapping[str, Any] | None, model: type[Status], types: Sequence[str]) -> Status:
    """The part of a live status this operator writes, to compare with a desired one
    (other fields and conditions of other types belong to other writers)."""
    status = status or {}
    fields = [field.alias or name for name, field in model.model_fields.items()]
    mine = {k: status[k] for k in fields if k in status and k != "conditions"}
    mine["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") in types]
    try:
        return model.model_validate(mine)
    except ValidationError:
        # Not what the CRD schema admits (so not ours): the next write replaces it.
        return model(conditions=[])


def same(a: ObjectStatus, b: ObjectStatus) -> bool:
    """Equal as status, whatever the order of conditions."""

    def normal(s: ObjectStatus) -> dict[str, Any]:
        out = s.to_wire()
        out["conditions"] = sorted(out.get("conditions") or [], key=lambda c: str(c["type"]))
        return out

    return normal(a) == normal(b)


# --- Trigger ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggerFacts:
    namespace: str
    source: str  # spec.source
    generation: int
    paused: bool
    source_entry: SourceEntry | None
    subscriber_url: str | None  # resolved subscriber, when it resolves
    subscriber_error: CompileError | None  # why the subscriber or dead-letter sink does not
    compile_error: CompileError | None  # the compiler's verdict on the whole Trigger
    reading: Reading | None  # what the data plane reports, settled (tidings.operator.health)
    stale: bool = False  # the reading is older than the staleness limit
    name: str = ""
    has_expression: bool = False  # spec.filter.expression is set


def source_ready(f: TriggerFacts) -> Want:
    where = f"EventSource {f.namespace}/{f.source}"
    if f.source_entry is None:
        return Want(
            "SourceReady",
            "False",
            "SourceNotFound",
            f"spec.source: {where} not found; create it or fix spec.source",
        )
    if f.source_entry.ready is False:
        detail = f": {f.source_entry.message}" if f.source_entry.message else ""
        return Want("SourceReady", "False", "SourceNotReady", f"{where} is not Ready{detail}")
    if f.source_entry.ready is None:
        return Want("SourceReady", "Unknown", "SourcePending", f"{where} has no status yet")
    return Want("SourceReady", "True", "SourceReady", f"{where} is Ready")


def subscriber_resolved(f: TriggerFacts) -> Want:
    if f.subscriber_error is not None:
        return Want(
            "SubscriberResolved", "False", f.subscriber_error.reason, f.subscriber_error.message
        )
    return Want("SubscriberResolved", "True", "SubscriberResolved", f"{f.subscriber_url}")


def ready(f: TriggerFacts, source: Want) -> Want:
    if f.compile_error is not None:
        return Want("Ready", "False", f.compile_error.reason, f.compile_error.message)
    if source.status != "True":
        return Want("Ready", "False", source.reason, source.message)
    return Want("Ready", "True", "Ready", f"routed: events of {f.source} go to {f.subscriber_url}")


def delivering(f: TriggerFacts, stale_after: float) -> Want:
    if f.compile_error is not None:
        return Want("Delivering", "False", "NotReady", "not delivering: the Trigger is not Ready")
    if f.paused:
        return Want(
            "Delivering",
            "False",
            "Paused",
            "spec.paused is true: delivery is stopped and the cursor kept; "
            "set it to false to resume where it stopped",
        )
    reading = f.reading
    if reading is None or reading.state is None:
        return Want(
            "Delivering",
            "Unknown",
            "NoReport",
            "no dispatcher has reported on this Trigger yet; is `tidings dispatcher` running?",
        )
    if f.stale:
        return Want(
            "Delivering",
            "Unknown",
            "ReportStale",
            f"no dispatcher has reported on this Trigger for over {stale_after:g}s; "
            "are dispatchers running?",
        )
    if reading.state == "Backoff":
        failure = reading.failure_summary()
        return Want(
            "Delivering",
            "False",
            "Backoff",
            f"the subscriber keeps failing ({failure}); delivery is paused and the oldest "
            "event is retried at growing intervals until it succeeds",
        )
    if reading.state == "Paused":
        return Want(
            "Delivering", "Unknown", "Resuming", "dispatchers have not resumed delivery yet"
        )
    return Want("Delivering", "True", reading.state, "events are delivered as they arrive")


def filter_errors(f: TriggerFacts) -> Want | None:
    """FilterErrors, for a routed Trigger with a filter expression."""
    if not f.has_expression or f.compile_error is not None:
        return None
    failing = f.reading.filter_failing() if f.reading is not None else None
    if failing is None:
        return Want(
            "FilterErrors",
            "Unknown",
            "NoReport",
            "no dispatcher has reported on this Trigger's filter yet",
        )
    if failing:
        assert f.reading is not None
        last = f"{f.reading.filter_error_reason}: {f.reading.filter_error_message}"
        return Want(
            "FilterErrors",
            "True",
            "FilterErrors",
            f"spec.filter.expression fails on most events (last: {last[:300]}); they are "
            "dead-lettered, not delivered: fix the expression (has() guards a field that "
            f"may be absent), then `tidings replay {f.namespace}/{f.name} --all`",
        )
    return Want(
        "FilterErrors",
        "False",
        "FilterEvaluates",
        "the filter expression did not fail on most recent events; "
        "status.delivery.filterErrors counts every failure",
    )


def trigger_conditions(f: TriggerFacts, *, stale_after: float) -> list[Want]:
    source = source_ready(f)
    wanted = [ready(f, source), source, subscriber_resolved(f), delivering(f, stale_after)]
    failing = filter_errors(f)
    return wanted + ([failing] if failing is not None else [])


def trigger_status(
    f: TriggerFacts,
    current: TriggerStatus | None,
    *,
    now: str,
    stale_after: float,
) -> TriggerStatus:
    """The whole status this operator owns for a Trigger."""
    return TriggerStatus(
        observed_generation=f.generation,
        subscriber_uri=f.subscriber_url,
        conditions=conditions(
            trigger_conditions(f, stale_after=stale_after),
            current.conditions if current is not None else None,
            generation=f.generation,
            now=now,
        ),
        delivery=delivery_status(f),
    )


def delivery_status(f: TriggerFacts) -> DeliveryStatus | None:
    """status.delivery (and so the STATE and LAG columns); None when there is nothing
    to show."""
    delivery = f.reading.as_status() if f.reading is not None else DeliveryStatus()
    if f.compile_error is not None:
        delivery = delivery.model_copy(update={"state": None})  # no route: nobody delivers it
    elif f.paused:
        # spec wins; dispatchers follow within a second
        delivery = delivery.model_copy(update={"state": "Paused"})
    return delivery if delivery != DeliveryStatus() else None


# --- EventSource -----------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFacts:
    namespace: str
    name: str
    generation: int
    kind: str
    url: str | None  # http and objectStore notify sources: the ingest URL
    compile_error: CompileError | None
    adapter_expected: bool  # postgres, kubernetes, schedule, objectStore poll
    adapter: AdapterEntry | None  # the adapter Deployment as last seen
    report: adapter_status.AdapterStatus | None = None  # what the adapter last reported
    wal: adapter_status.WalReading | None = None  # the operator's own, newer WAL reading
    # objectStore notify: what to configure on the store (URL and auth), for Ready's message.
    instructions: str | None = None


def adapter_ready(f: SourceFacts) -> Want | None:
    if not f.adapter_expected:
        return None
    if f.compile_error is not None:
        return Want(
            "AdapterReady", "False", "NotCreated", "the adapter waits until the source compiles"
        )
    if f.adapter is None:
        return Want(
            "AdapterReady", "Unknown", "Creating", "the adapter Deployment is being created"
        )
    if f.adapter.available < 1:
        detail = f": {f.adapter.message}" if f.adapter.message else ""
        return Want(
            "AdapterReady",
            "False",
            "AdapterUnavailable",
            f"adapter Deployment {f.namespace}/{f.adapter.name} has no available replica{detail}",
        )
    return Want(
        "AdapterReady",
        "True",
        "AdapterAvailable",
        f"adapter Deployment {f.namespace}/{f.adapter.name} is running",
    )


def reported(f: SourceFacts) -> list[Want]:
    """Capturing (and WalRetained, ChangesMissed) from the adapter's own report."""
    if not f.adapter_expected:
        return []
    found = adapter_status.conditions(f.report, wal=f.wal)
    return [Want(c.type, c.status, c.reason, c.message) for c in found]


def source_conditions(f: SourceFacts) -> list[Want]:
    adapter = adapter_ready(f)
    from_adapter = reported(f)
    capturing = from_adapter[0] if from_adapter else None
    if f.compile_error is not None:
        ready_ = Want("Ready", "False", f.compile_error.reason, f.compile_error.message)
    elif capturing is not None and capturing.status == "False":
        # The adapter's own reason (TableNotFound, ConnectionFailed …) says more
        # than "no available replica", which it often causes.
        ready_ = Want("Ready", "False", capturing.reason, capturing.message)
    elif adapter is not None and adapter.status != "True":
        ready_ = Want(
            "Ready",
            "False" if adapter.status == "False" else "Unknown",
            adapter.reason,
            adapter.message,
        )
    elif capturing is not None and capturing.status != "True":
        ready_ = Want("Ready", "Unknown", capturing.reason, capturing.message)
    elif f.url is not None and f.instructions is not None:
        ready_ = Want("Ready", "True", "Ready", f"accepting S3 notifications: {f.instructions}")
    elif f.url is not None:
        ready_ = Want("Ready", "True", "Ready", f"accepting events at {f.url}")
    elif capturing is not None and capturing.message:
        ready_ = Want("Ready", "True", "Ready", f"capturing {f.kind} events: {capturing.message}")
    else:
        ready_ = Want("Ready", "True", "Ready", f"capturing {f.kind} events")
    return [ready_] + ([adapter] if adapter is not None else []) + from_adapter


def warnings(
    before: Sequence[Condition] | None,
    after: Sequence[Want],
    types: Sequence[str] = ("WalRetained", "ChangesMissed"),
) -> list[Want]:
    """Warning conditions (of `types`) that just became True (each is worth a Kubernetes
    Event once; the written status remembers it across operator restarts)."""
    was_true = {c.type for c in before or [] if c.status == "True"}
    return [w for w in after if w.type in types and w.status == "True" and w.type not in was_true]


def source_status(
    f: SourceFacts, current: EventSourceStatus | None, *, now: str
) -> EventSourceStatus:
    """The whole status this operator owns for an EventSource."""
    return EventSourceStatus(
        observed_generation=f.generation,
        url=f.url,
        conditions=conditions(
            source_conditions(f),
            current.conditions if current is not None else None,
            generation=f.generation,
            now=now,
        ),
    )
