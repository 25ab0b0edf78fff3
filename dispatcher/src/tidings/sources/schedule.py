"""The schedule source: a CloudEvent `dev.tidings.schedule.tick` per cron tick.

- Cron in a time zone (croniter; spec.schedule.timeZone, IANA names), so
  `0 6 * * *` in Europe/Berlin fires at 06:00 local time in summer and winter.
- Exactly one event per tick, however many replicas run: each tick is written
  with tidings.sources.journal at the position of its time, and the
  guard in Redis drops a tick written before (by a twin replica, or before a
  restart).
- Catch-up after an outage: a tick that is due when the adapter looks is
  fired if it is at most `on_time_grace` (60 s) old. Older due ticks were
  *missed*; the newest spec.schedule.maxCatchUp of them are fired (oldest
  first, with the extension attribute `late: "true"`) and the rest are skipped
  and logged. maxCatchUp 0 fires no missed tick; the default 1 fires the last
  one, like Kubernetes CronJobs do after a short outage. At most 35 days of
  missed ticks are considered.
- A new EventSource starts counting from when its adapter first ran: it does
  not fire ticks from before it existed.

Time comes from a `Clock`, so tests drive it by hand instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis.exceptions
from croniter import croniter
from redis.asyncio import Redis

from tidings.api.events import CloudEvent
from tidings.api.routes import CompiledSource
from tidings.api.types import ScheduleSource
from tidings.sources import journal
from tidings.sources.errors import InvalidSchedule
from tidings.sources.journal import Batch, position
from tidings.sources.metrics import SourceSeries
from tidings.sources.status import StatusReporter

log = logging.getLogger(__name__)

TICK_TYPE = "dev.tidings.schedule.tick"
MAX_LOOKBACK = 35 * 86400.0
CHECKED = "checked"  # adapter_state: the newest tick time looked at (fired or skipped)
SINCE = "since"  # adapter_state: when this source's schedule started counting


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    # Sleep in short steps so a wall-clock jump (NTP, suspend) is noticed soon.
    STEP = 30.0

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, self.STEP)))


class Schedule:
    """Tick times of a cron expression in a time zone (pure; no I/O)."""

    def __init__(self, cron: str, time_zone: str) -> None:
        try:
            self.zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidSchedule(
                f"spec.schedule.timeZone: {time_zone!r} is not an IANA time zone; "
                "write e.g. UTC or Europe/Berlin"
            ) from None
        if not croniter.is_valid(cron):
            raise InvalidSchedule(
                f"spec.schedule.cron: {cron!r} is not a cron expression; write five fields "
                "(minute hour day-of-month month day-of-week), e.g. '*/5 * * * *', or @daily"
            )
        self.cron = cron

    def between(self, after: float, until: float) -> list[float]:
        """Tick times t with after < t <= until."""
        start = datetime.fromtimestamp(after, self.zone)
        ticks: list[float] = []
        for moment in croniter(self.cron, start, ret_type=float):
            if moment > until:
                break
            ticks.append(float(moment))
        return ticks

    def next_after(self, moment: float) -> float:
        start = datetime.fromtimestamp(moment, self.zone)
        return float(croniter(self.cron, start).get_next(float))

    def iso(self, moment: float) -> str:
        return datetime.fromtimestamp(moment, self.zone).isoformat()


def choose(
    due: list[float], now: float, max_catch_up: int, grace: float
) -> tuple[list[float], list[float]]:
    """Split due ticks into (fire, skip) by the catch-up policy (see module doc)."""
    if not due:
        return [], []
    on_time = now - due[-1] <= grace
    missed = due[:-1] if on_time else due
    caught_up = missed[len(missed) - max_catch_up :] if max_catch_up > 0 else []
    fire = caught_up + ([due[-1]] if on_time else [])
    skipped = missed[: len(missed) - len(caught_up)]
    return fire, skipped


class ScheduleAdapter:
    kind = "schedule"

    def __init__(
        self,
        source: CompiledSource,
        spec: ScheduleSource,
        redis: Redis,
        *,
        clock: Clock | None = None,
        on_time_grace: float = 60.0,
        backoff_max: float = 30.0,
    ) -> None:
        self.source = source
        self.spec = spec
        self.redis = redis
        self.clock = clock or SystemClock()
        self.on_time_grace = on_time_grace
        self.backoff_max = backoff_max
        self.status = StatusReporter(redis, source.namespace, source.name)
        self._stopping = asyncio.Event()
        self.fired = 0  # ticks this replica wrote (a twin's are not counted)
        self.skipped = 0
        self.metrics: SourceSeries | None = None  # `tidings source --listen` attaches it

    async def stop(self) -> None:
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep on the clock, or until stop()."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (sleeper, stopper):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def run(self) -> None:
        try:
            schedule = Schedule(self.spec.cron, self.spec.time_zone)
        except InvalidSchedule as error:
            # Only a new spec fixes this; `tidings source` restarts on a spec change.
            log.error("%s: %s", self.source.id, error)
            await self.status.report("Retrying", error.reason, error.message)
            await self._stopping.wait()
            return
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self._loop(schedule)
            except redis.exceptions.RedisError as error:
                log.warning("%s: Redis error: %s", self.source.id, error)
                await self.status.report("Retrying", "RedisUnavailable", f"Redis: {error}")
                await self._pause(delay)
                delay = min(delay * 2, self.backoff_max)
        await self.status.report("Stopped", "Stopped", "the adapter was stopped")

    async def _loop(self, schedule: Schedule) -> None:
        state = await journal.read_state(self.redis, self.source)
        if SINCE not in state:
            state[SINCE] = repr(self.clock.now())
            await journal.set_state(self.redis, self.source, {SINCE: state[SINCE]})
        await self.status.report(
            "Running", "Scheduled", f"{self.spec.cron} in {self.spec.time_zone}"
        )
        while not self._stopping.is_set():
            now = self.clock.now()
            state = await journal.read_state(self.redis, self.source)
            guard = state.get(journal.GUARD)
            last = max(
                float(state[SINCE]),
                float(state.get(CHECKED, 0)),
                int(guard) if guard else 0.0,
                now - MAX_LOOKBACK,
            )
            due = schedule.between(last, now)
            if due:
                await self._fire(schedule, due, now)
                last = due[-1]
            await self._pause(schedule.next_after(max(last, now)) - self.clock.now())

    async def _fire(self, schedule: Schedule, due: list[float], now: float) -> None:
        fire, skipped = choose(due, now, self.spec.max_catch_up, self.on_time_grace)
        if skipped:
            self.skipped += len(skipped)
            log.warning(
                "%s: skipped %d missed tick(s) from %s to %s (spec.schedule.maxCatchUp=%d)",
                self.source.id,
                len(skipped),
                schedule.iso(skipped[0]),
                schedule.iso(skipped[-1]),
                self.spec.max_catch_up,
            )
        batch = Batch(state={CHECKED: repr(due[-1]), "lastTick": schedule.iso(due[-1])})
        for tick in fire:
            late = now - tick > self.on_time_grace
            batch.events.append((position(int(tick)), self._event(schedule, tick, late)))
        written = await journal.write(self.redis, self.source, batch)
        self.fired += written.appended
        if self.metrics is not None:
            self.metrics.wrote(written.appended, written.skipped)

    def _event(self, schedule: Schedule, tick: float, late: bool) -> CloudEvent:
        return CloudEvent(
            id=f"tick-{int(tick)}",  # the same tick has the same id on every replica
            source=self.source.api_path,
            type=TICK_TYPE,
            time=schedule.iso(tick),
            datacontenttype="application/json" if self.spec.data is not None else None,
            data=self.spec.data,
            extensions={"late": "true"} if late else {},
        )
