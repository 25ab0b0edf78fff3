"""One Replay's controller: compile it against its Trigger's route, hand it to the
dispatchers, report its progress.

The dispatchers run Replays (tidings.dispatcher.replays): the operator only
writes the compiled Replay into `keys.REPLAY_JOBS` once its Trigger is routed,
reads the run's progress from Redis into status, and removes the job when the
run completed. A Replay whose status says Succeeded or Failed is done for good:
a restarted operator reconciles nothing more for it (a Replay runs once).

Status:
  phase      Pending (its Trigger is not routed yet, or no dispatcher took it),
             Running, Succeeded, Failed (events dead-lettered again, or a spec
             that cannot run)
  counts     total, sent, delivered, failed, skipped (tidings.api.replays)
  Complete   condition: False while Pending/Running (reason says why), True when done
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import ValidationError
from redis.asyncio import Redis

from tidings.api import keys
from tidings.api.replays import Progress, cancel_run, read_progress
from tidings.api.routes import (
    DEAD_LETTER_MAX_EVENTS,
    CompiledReplay,
    CompileError,
    compile_replay,
)
from tidings.api.text import text
from tidings.api.types import ReplaySpec, ReplayStatus
from tidings.operator import publishing, status
from tidings.operator.context import ObjectController
from tidings.operator.health import now_rfc3339
from tidings.operator.world import Key

CONDITIONS = ("Complete",)
FINAL = ("Succeeded", "Failed")


def _time(ms: int) -> str | None:
    if ms <= 0:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def replay_status(
    progress: Progress | None,
    error: CompileError | None,
    *,
    trigger: str,
    generation: int,
    known: ReplayStatus,
    now: str,
) -> ReplayStatus:
    """The status to write (pure): phase, counts, times and the Complete condition."""
    if progress is None:
        phase = "Failed" if error is not None and error.reason == "InvalidSpec" else "Pending"
        if error is not None:
            want = status.Want("Complete", "False", error.reason, error.message)
        else:
            want = status.Want(
                "Complete",
                "False",
                "Waiting",
                f"waiting for a dispatcher routing Trigger {trigger}",
            )
        return ReplayStatus(
            observed_generation=generation,
            phase=phase,  # type: ignore[arg-type]
            conditions=status.conditions([want], known.conditions, generation=generation, now=now),
        )
    if progress.completed:
        if progress.failed:
            phase = "Failed"
            want = status.Want(
                "Complete",
                "True",
                "EventsDeadLettered",
                "some replayed events were dead-lettered again (see status.failed); "
                "they are back in the Trigger's DLQ",
            )
        else:
            phase = "Succeeded"
            want = status.Want("Complete", "True", "Succeeded", "every event delivered or skipped")
    else:
        phase = "Running"
        want = status.Want("Complete", "False", "Running", f"handing events to Trigger {trigger}")
    return ReplayStatus(
        observed_generation=generation,
        phase=phase,  # type: ignore[arg-type]
        total=progress.total,
        sent=progress.sent,
        delivered=progress.delivered,
        failed=progress.failed,
        skipped=progress.skipped,
        start_time=_time(progress.started),
        completion_time=_time(progress.completed),
        conditions=status.conditions([want], known.conditions, generation=generation, now=now),
    )


async def cancel(redis: Redis, namespace: str, name: str, trigger: str | None) -> None:
    """A deleted Replay: the job is gone, no more pages are handed over, and its
    events the Trigger has not delivered yet are withdrawn (dead letters back into
    the DLQ)."""
    replay_id = keys.source_id(namespace, name)
    raw = await redis.hget(keys.REPLAY_JOBS, replay_id)  # type: ignore[misc]
    source = None
    if raw is not None:
        job = CompiledReplay.model_validate_json(raw)
        source, trigger = job.source, job.trigger
    route = await publishing.current_route(redis, namespace, trigger) if trigger else None
    if source is None and route is not None:
        source = route.source
    await redis.hdel(keys.REPLAY_JOBS, replay_id)  # type: ignore[misc]
    if source and trigger:
        dlq_max = DEAD_LETTER_MAX_EVENTS
        if route is not None and route.source == source:
            dlq_max = route.delivery.dead_letter_max_events
        await cancel_run(redis, namespace, source, trigger, name, dead_letter_max_events=dlq_max)


class ReplayController(ObjectController[ReplayStatus]):
    """Drives one Replay (tidings.operator.loop.Controller)."""

    KIND = "Replay"
    PLURAL = "replays"
    STATUS = ReplayStatus
    CONDITIONS = CONDITIONS

    def __post_init__(self) -> None:
        super().__post_init__()
        self.job: CompiledReplay | None = None
        self.error: CompileError | None = None
        self.spec: ReplaySpec | None = None

    def dependencies(self) -> set[Key]:
        trigger = (self.body.get("spec") or {}).get("trigger")
        found: set[Key] = {self.key}
        if trigger:
            found.add(("Trigger", self.namespace, str(trigger)))
        return found

    def done(self) -> bool:
        return self.writer.known(self.body).phase in FINAL

    async def reconcile(self) -> None:
        if self.done():
            return  # a Replay runs once
        self.error = None
        try:
            self.spec = spec = ReplaySpec.model_validate(self.body.get("spec") or {})
        except ValidationError as bad:
            self.error = CompileError("InvalidSpec", f"spec: {bad}")
            return
        redis = self.ctx.redis
        route = await publishing.current_route(redis, self.namespace, spec.trigger)
        if route is None:
            self.error = CompileError(
                "TriggerNotReady",
                f"spec.trigger: Trigger {self.namespace}/{spec.trigger} is not routed "
                f"(missing or not Ready: kubectl get trigger -n {self.namespace} {spec.trigger})",
            )
            return
        uid = str(self.body["metadata"].get("uid", ""))
        try:
            job = compile_replay(
                namespace=self.namespace, name=self.name, uid=uid, spec=spec, route=route
            )
        except CompileError as failure:
            self.error = failure
            return
        current = await redis.hget(keys.REPLAY_JOBS, job.id)  # type: ignore[misc]
        if text(current) != job.model_dump_json():
            await redis.hset(keys.REPLAY_JOBS, job.id, job.model_dump_json())  # type: ignore[misc]
            self.log.info("handed to the dispatchers (Trigger %s)", job.trigger_id)
        self.job = job

    async def observe(self) -> float | None:
        if self.done():
            return None
        progress = None
        job = self.job
        if job is not None:
            progress = await read_progress(
                self.ctx.redis, self.namespace, job.source, job.trigger, self.name
            )
            if progress is not None and progress.uid != job.uid:
                progress = None
        known = self.writer.known(self.body)
        desired = replay_status(
            progress,
            self.error,
            trigger=self.spec.trigger if self.spec else "",
            generation=self.generation(),
            known=known,
            now=now_rfc3339(),
        )
        await self.writer.write(self.body, desired, known)
        if desired.phase in FINAL:
            await self.ctx.redis.hdel(keys.REPLAY_JOBS, keys.source_id(self.namespace, self.name))  # type: ignore[misc]
            self.log.info(
                "%s: %s", desired.phase, desired.conditions[0].message if desired.conditions else ""
            )
            return None
        return self.ctx.settings.health_interval
