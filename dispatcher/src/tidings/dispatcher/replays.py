"""Running Replays: a Replay's events handed to its Trigger, a page at a time.

The operator (or `tidings dev`) compiles each Replay into `keys.REPLAY_JOBS`;
every dispatcher looks at that HASH every second and runs the Replays whose
Trigger it routes, one dispatcher per Replay (a lease, keys.replay_lease).

A run (`run_replay`):

1. starts once per Replay object (lua/replay_start.lua): the window is fixed —
   dead letters up to the newest one now (since `since` ago, or these ids), or
   stream entries from `since` (default: the oldest stored) up to `until`
   (default: now) — and counted in Redis (`total`);
2. reads a page after its cursor (XRANGE on the DLQ or the source's stream),
   keeps what the Trigger's filter and the Replay's own filter accept, adds the
   extension `tidingsreplay: NAME`, and hands the page over in one script
   (lua/replay_hand_back.lua): each event becomes a due retry of that Trigger
   only, delivered from a copy (the replay HASH, as `tidings replay` does), its
   owner recorded, and the cursor moves past the page — all or nothing, and
   only if the cursor is still where this runner read it. A runner killed
   at any moment resumes from the cursor without handing anything over twice;
3. keeps at most WINDOW events outstanding (handed over, not settled: bounded
   memory for the copies) and at most `rate.perSecond`;
4. ends when the window is scanned and every sent event settled: the settle
   script (cursor.py) counts each as delivered or failed for its owner.

Deleting the Replay removes its run and withdraws the events it handed over
and not yet delivered, dead letters back into the DLQ
(tidings.api.replays.cancel_run): the next page's script finds no run and the
runner stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import keys, scripts
from tidings.api.replays import Progress, read_progress, redis_now_ms
from tidings.api.routes import MAX_SEQUENCE, CompiledReplay, Route
from tidings.api.text import text
from tidings.dispatcher.filtering import Filter, FilterFailed

log = logging.getLogger(__name__)

# The CloudEvents extension each redelivery carries: the Replay's name.
EXTENSION = "tidingsreplay"
PAGE = 200  # entries read per page
WINDOW = 1000  # events handed over and not settled yet, at most
COUNT_STEP = 10_000  # entries counted per script call (total)
LEASE_MS = 15_000
IDLE = 0.2  # seconds between looks while waiting for outstanding events


def _before(ms: int) -> str:
    """The largest stream id before time `ms`."""
    return f"{ms - 1}-{MAX_SEQUENCE}" if ms > 0 else "0-0"


def _after(stream_id: str) -> str:
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq) + 1}"


class ReplayRun:
    """One Replay, run by this dispatcher while it holds the lease."""

    def __init__(self, redis: Redis, job: CompiledReplay, route: Route, consumer: str) -> None:
        self.redis = redis
        self.job = job
        self.route = route
        self.consumer = consumer
        ns, source, trigger = job.namespace, route.source, route.name
        self.runs = keys.replay_runs(ns, source, trigger)
        self.dlq = keys.dead_letters(ns, source, trigger)
        self.lease = keys.replay_lease(ns, source, trigger, job.name)
        self.hand_back_keys = [
            self.dlq,
            keys.retries(ns, source, trigger),
            keys.attempts(ns, source, trigger),
            keys.replays(ns, source, trigger),
            keys.replay_owners(ns, source, trigger),
            self.runs,
            keys.replay_dead_letters(ns, source, trigger),
        ]
        self.trigger_filter = Filter(route.filter)
        self.own_filter = Filter(job.filter) if job.filter is not None else None

    async def progress(self) -> Progress | None:
        route = self.route
        return await read_progress(
            self.redis, route.namespace, route.source, route.name, self.job.name
        )

    async def hold_lease(self) -> bool:
        """Take or renew the lease; False when another dispatcher holds it."""
        if await self.redis.set(self.lease, self.consumer, nx=True, px=LEASE_MS):
            return True
        if text(await self.redis.get(self.lease)) == self.consumer:
            await self.redis.pexpire(self.lease, LEASE_MS)
            return True
        return False

    async def start(self) -> Progress | None:
        """Fix the window and count it, once per Replay object; the run's progress."""
        current = await self.progress()
        if current is not None and current.uid == self.job.uid:
            return current
        job = self.job
        now = await redis_now_ms(self.redis)
        if job.dead_letters:
            stream = self.dlq
            newest = await self.redis.xrevrange(self.dlq, count=1)
            end = _after(str(text(newest[0][0]))) if newest else "0-1"
            since = job.dead_letter_since
            cursor = _before(now - int(since * 1000)) if since is not None else "0-0"
            if job.dead_letter_ids:
                total = len(set(job.dead_letter_ids))
        else:
            stream = self.route.stream
            until = job.stream_until_ms if job.stream_until_ms is not None else now
            end = f"{until}-0"
            cursor = _before(job.stream_since_ms) if job.stream_since_ms else "0-0"
        if not job.dead_letter_ids:
            total = await self._count(stream, cursor, end)
        await scripts.REPLAY_START(
            self.redis, keys=[self.runs], args=[job.name, job.uid, cursor, end, total]
        )
        log.info("Replay %s of Trigger %s: started, %d entries", job.id, job.trigger_id, total)
        return await self.progress()

    async def _count(self, stream: str, cursor: str, end: str) -> int:
        total, start = 0, f"({cursor}"
        while True:
            count, last = await scripts.REPLAY_COUNT(
                self.redis, keys=[stream], args=[start, f"({end}", COUNT_STEP]
            )
            total += int(count)
            if int(count) < COUNT_STEP:
                return total
            start = f"({text(last)}"

    async def run(self) -> None:
        """Hand the window over, page by page, until every sent event settled."""
        progress = await self.start()
        rate = self.job.rate
        while progress is not None and progress.uid == self.job.uid and not progress.completed:
            if not await self.hold_lease():
                return
            if progress.scanned:
                if progress.outstanding <= 0:
                    await self.redis.hsetnx(  # type: ignore[misc]
                        self.runs,
                        keys.run_field(self.job.name, keys.RUN_COMPLETED),
                        await redis_now_ms(self.redis),
                    )
                    log.info("Replay %s: completed", self.job.id)
                    return
                await asyncio.sleep(IDLE)
            else:
                room = WINDOW - progress.outstanding
                if room <= 0:
                    await asyncio.sleep(IDLE)
                else:
                    want = min(PAGE, room)
                    if rate is not None:
                        want = max(1, min(want, int(rate)))
                    started = time.monotonic()
                    sent = await self.page(progress, want)
                    if sent < 0:
                        return  # deleted, or another runner moved on
                    if rate is not None and sent:
                        await asyncio.sleep(max(0.0, sent / rate - (time.monotonic() - started)))
            progress = await self.progress()

    async def page(self, progress: Progress, want: int) -> int:
        """Read, select and hand over one page; the events sent (-1: stop)."""
        job = self.job
        stream = self.dlq if job.dead_letters else self.route.stream
        entries: list[tuple[Any, dict[Any, Any]]] = await self.redis.xrange(
            stream, min=f"({progress.cursor}", max=f"({progress.end}", count=want
        )  # type: ignore[assignment]
        last = len(entries) < want
        cursor = text(entries[-1][0]) if entries else progress.cursor
        selected: list[str] = []
        skipped = 0
        wanted_ids = set(job.dead_letter_ids)
        for raw_id, raw_fields in entries:
            entry_id = text(raw_id)
            fields: dict[str, str] = {text(k): text(v) for k, v in raw_fields.items()}
            if job.dead_letters:
                if wanted_ids and entry_id not in wanted_ids:
                    continue  # not selected at all: not counted
                stream_id = fields.get(keys.DLQ_STREAM_ID, "")
                event_json = fields.get(keys.DLQ_EVENT, "") or await self._from_source(stream_id)
                dlq_id = entry_id
            else:
                stream_id, dlq_id = entry_id, ""
                event_json = fields.get(keys.FIELD_EVENT, "")
            event = self._select(event_json)
            if event is None or not stream_id:
                skipped += 1
                continue
            event[EXTENSION] = job.name
            selected += [stream_id, dlq_id, json.dumps(event, separators=(",", ":"))]
        if job.dead_letter_ids and last:
            # Ids no longer in the DLQ (replayed or trimmed meanwhile) are skipped.
            seen = progress.sent + progress.skipped + skipped + len(selected) // 3
            skipped += max(0, progress.total - seen)
        head = [job.name, job.uid, progress.cursor, cursor, str(skipped), "1" if last else "0"]
        sent, _ = await scripts.REPLAY_HAND_BACK(
            self.redis, keys=self.hand_back_keys, args=[*head, *selected]
        )
        if int(sent):
            await self.redis.publish(keys.TRIGGER_WAKE, self.route.id)
        return int(sent)

    async def _from_source(self, stream_id: str) -> str:
        """A dead letter stored without its event: the source's copy, if still there."""
        if not stream_id:
            return ""
        found: list[tuple[Any, dict[Any, Any]]] = await self.redis.xrange(
            self.route.stream, min=stream_id, max=stream_id
        )  # type: ignore[assignment]
        if not found:
            return ""
        value = found[0][1].get(keys.FIELD_EVENT.encode(), found[0][1].get(keys.FIELD_EVENT))
        return text(value) if value is not None else ""

    def _select(self, event_json: str) -> dict[str, Any] | None:
        """The event to hand over, or None: unreadable, or a filter drops it."""
        if not event_json:
            return None
        try:
            event = json.loads(event_json)
        except ValueError:
            return None
        if not isinstance(event, dict) or "id" not in event:
            return None
        try:
            if not self.trigger_filter(event):
                return None
            if self.own_filter is not None and not self.own_filter(event):
                return None
        except FilterFailed:
            return None  # the expression fails on it: skipped, as delivery would drop it
        return event


class Replays:
    """The Replays this dispatcher runs; `sync` looks at the jobs and starts runs."""

    def __init__(self, redis: Redis, consumer: str) -> None:
        self.redis = redis
        self.consumer = consumer
        self.running: dict[str, asyncio.Task[None]] = {}

    async def sync(self, routes: dict[str, Route]) -> None:
        raw = await self.redis.hgetall(keys.REPLAY_JOBS)  # type: ignore[misc]
        for entry, value in raw.items():
            replay_id = text(entry)
            task = self.running.get(replay_id)
            if task is not None and not task.done():
                continue
            try:
                job = CompiledReplay.model_validate_json(value)
            except ValueError as error:
                log.error("Replay %s: cannot read its job (%s); skipped", replay_id, error)
                continue
            route = routes.get(job.trigger_id)
            if route is None or route.source != job.source:
                continue  # its Trigger is not routed (yet): the operator says Pending
            run = ReplayRun(self.redis, job, route, self.consumer)
            progress = await run.progress()
            if progress is not None and progress.uid == job.uid and progress.completed:
                continue
            if not await run.hold_lease():
                continue
            self.running[replay_id] = asyncio.create_task(
                self._run(run), name=f"replay {replay_id}"
            )

    async def _run(self, run: ReplayRun) -> None:
        try:
            await run.run()
        except (RedisError, OSError) as error:
            log.warning("Replay %s: Redis: %s; resuming within a second", run.job.id, error)
        except Exception:
            log.exception("Replay %s: unexpected error; resuming within a second", run.job.id)
        finally:
            # Let another dispatcher (or the next sync here) take over at once.
            if text(await _quiet(self.redis.get(run.lease))) == self.consumer:
                await _quiet(self.redis.delete(run.lease))

    async def stop(self) -> None:
        tasks = [t for t in self.running.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _quiet(call: Any) -> Any:
    try:
        return await call
    except (RedisError, OSError):
        return None
