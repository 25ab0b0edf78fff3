"""A Replay run's progress as Redis holds it (keys.replay_runs): written by the
dispatchers that run it (tidings.dispatcher.replays) and the settle script,
read by the operator for the Replay's status; and the cancelling of a run, by
the operator and `tidings dev` when a Replay goes away."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from tidings.api import keys, scripts
from tidings.api.text import text


@dataclass(frozen=True)
class Progress:
    """A run's fields in the Trigger's replay runs HASH."""

    uid: str = ""
    cursor: str = ""
    end: str = ""
    total: int = 0
    sent: int = 0
    skipped: int = 0
    delivered: int = 0
    failed: int = 0
    started: int = 0  # ms
    scanned: bool = False
    completed: int = 0  # ms

    @property
    def outstanding(self) -> int:
        return self.sent - self.delivered - self.failed


FIELDS = (
    keys.RUN_UID,
    keys.RUN_CURSOR,
    keys.RUN_END,
    keys.RUN_TOTAL,
    keys.RUN_SENT,
    keys.RUN_SKIPPED,
    keys.RUN_DELIVERED,
    keys.RUN_FAILED,
    keys.RUN_STARTED,
    keys.RUN_SCANNED,
    keys.RUN_COMPLETED,
)


async def read_progress(
    redis: Redis, namespace: str, source: str, trigger: str, replay: str
) -> Progress | None:
    """The run of `replay` (None: not started, or deleted)."""
    values = await redis.hmget(  # type: ignore[misc]
        keys.replay_runs(namespace, source, trigger), [keys.run_field(replay, f) for f in FIELDS]
    )
    raw = dict(zip(FIELDS, (text(v) if v is not None else None for v in values), strict=True))
    if not raw[keys.RUN_UID]:
        return None

    def number(field: str) -> int:
        return int(raw[field] or 0)

    return Progress(
        uid=raw[keys.RUN_UID] or "",
        cursor=raw[keys.RUN_CURSOR] or "",
        end=raw[keys.RUN_END] or "",
        total=number(keys.RUN_TOTAL),
        sent=number(keys.RUN_SENT),
        skipped=number(keys.RUN_SKIPPED),
        delivered=number(keys.RUN_DELIVERED),
        failed=number(keys.RUN_FAILED),
        started=number(keys.RUN_STARTED),
        scanned=raw[keys.RUN_SCANNED] == "1",
        completed=number(keys.RUN_COMPLETED),
    )


async def redis_now_ms(redis: Redis) -> int:
    clock = await redis.time()
    if isinstance(clock, dict):  # Redis Cluster may answer per node
        clock = next(iter(clock.values()))
    return int(clock[0]) * 1000 + int(clock[1]) // 1000


async def cancel_run(
    redis: Redis,
    namespace: str,
    source: str,
    trigger: str,
    replay: str,
    *,
    dead_letter_max_events: int,
) -> int:
    """Forget the run of a deleted Replay and withdraw the events it handed to the
    Trigger that are not delivered yet (lua/replay_cancel.lua); the count withdrawn.
    Dead letters go back into the Trigger's DLQ as they were, within its
    `dead_letter_max_events`. An attempt under way ends: delivered, it is acked;
    failed, it is withdrawn rather than retried."""
    _, withdrawn, marked = await scripts.REPLAY_CANCEL(
        redis,
        keys=[
            keys.replay_runs(namespace, source, trigger),
            keys.replay_owners(namespace, source, trigger),
            keys.retries(namespace, source, trigger),
            keys.replays(namespace, source, trigger),
            keys.attempts(namespace, source, trigger),
            keys.dead_letters(namespace, source, trigger),
            keys.trigger_state(namespace, source, trigger),
            keys.replay_dead_letters(namespace, source, trigger),
            keys.replay_leased(namespace, source, trigger),
        ],
        args=[replay, dead_letter_max_events],
    )
    return int(withdrawn) + int(marked)
