"""`tidings trace NS/SOURCE EVENT_ID`: what happened to one event, for every Trigger.

    tidings trace shop/orders order-42
    tidings trace shop/orders order-42 -o json

It finds the event through the source's event index (keys.event_index: no scan
of the stream), says when it was stored, and for each Trigger of the source:

    filtered out   which clause of the Trigger's filter dropped it
    pending        not read yet (and how many events are ahead of it)
    delivering     an attempt is under way (at which replica, for how long)
    waiting        parked behind an earlier event of its ordering key
    scheduled      a delayed event (deliverafter, delivery.delay) not due yet: when
    retrying       the next attempt's time and the last error
    in Backoff     the Trigger stopped pulling; the next probe's time, the last error
    delivered      when, after how many attempts, the latency from stored
    dead-lettered  when and why (refused, retries spent, maxAge)
    expired        trimmed by the source's retention before the Trigger read it

The details come from the Trigger's attempt log (delivery.attemptLog): an event
older than the log's maxAge shows as delivered or dead-lettered without them.
Against a cluster, `kubectl port-forward` its Redis (docs/observability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import attempts, keys, table
from tidings.api.attempts import Attempt, AttemptOutcome
from tidings.api.process import connect_redis
from tidings.api.routes import CompiledSource, Route
from tidings.api.settings import SettingsError, add_arguments, load
from tidings.api.text import text
from tidings.cli.replay import ReplaySettings
from tidings.cli.tail import seconds, timestamp
from tidings.dispatcher.filtering import Filter

PAGE = 1000


class TraceError(Exception):
    """Something the user can fix or should know; the message says what."""


@dataclass
class Stored:
    event_id: str
    stream_id: str  # "" when the entry is gone from the stream
    stored_ms: int
    event: dict[str, Any] | None  # None when the entry is gone


@dataclass
class Verdict:
    trigger: str
    state: str  # filtered | pending | delivering | waiting | scheduled | retrying | backoff
    #             | delivered | dead-lettered | expired | unknown
    detail: str
    attempts: list[dict[str, Any]] = field(default_factory=list)


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def find_event(redis: Redis, source: CompiledSource, event_id: str) -> Stored:
    index = keys.event_index(source.namespace, source.name)
    score = await redis.zscore(index, event_id)
    if score is None:
        retention = seconds(int(source.retention_max_age * 1000))
        raise TraceError(
            f"event {event_id!r} is not in {source.id}: it was never stored there, or it "
            f"is older than the source's retention ({retention})"
        )
    ms, stream_id = int(score), ""
    # An incomplete id is the whole millisecond: ms-0 .. ms-<max>.
    entries: Any = await redis.xrange(source.stream, min=str(ms), max=str(ms))
    for entry_id, fields in entries:
        body = fields.get(keys.FIELD_EVENT.encode()) or fields.get(keys.FIELD_EVENT)
        try:
            event = json.loads(body)
        except (TypeError, ValueError):
            continue
        if isinstance(event, dict) and str(event.get("id")) == event_id:
            stored = fields.get(keys.FIELD_TIME.encode()) or fields.get(keys.FIELD_TIME)
            return Stored(event_id, text(entry_id), int(stored or ms), event)
    return Stored(event_id, stream_id, ms, None)


async def _log_of(redis: Redis, route: Route, stored: Stored) -> list[Attempt]:
    """The Trigger's attempts at this event (the log from the event's time on)."""
    key = keys.attempt_log(route.namespace, route.source, route.name)
    found: list[Attempt] = []
    start = f"{stored.stored_ms}-0"
    while True:
        page: Any = await redis.xrange(key, min=start, count=PAGE)
        for entry_id, fields in page:
            record = attempts.decode(entry_id, fields)
            if record.event_id == stored.event_id and (
                not stored.stream_id or record.stream_id == stored.stream_id
            ):
                found.append(record)
        if len(page) < PAGE:
            return found
        start = f"({text(page[-1][0])}"


async def _dead_letter(redis: Redis, route: Route, stored: Stored) -> dict[str, str] | None:
    key = keys.dead_letters(route.namespace, route.source, route.name)
    start = f"{stored.stored_ms}-0"
    while True:
        page: Any = await redis.xrange(key, min=start, count=PAGE)
        for entry_id, fields in page:
            values = {text(k): text(v) for k, v in fields.items()}
            if stored.stream_id and values.get(keys.DLQ_STREAM_ID) == stored.stream_id:
                return {"id": text(entry_id), **values}
        if len(page) < PAGE:
            return None
        start = f"({text(page[-1][0])}"


async def _group(redis: Redis, route: Route) -> dict[str, Any] | None:
    try:
        groups = await redis.xinfo_groups(route.stream)
    except RedisError:
        return None
    for group in groups:
        if text(group["name"]) == route.group:
            return {text(k): v for k, v in group.items()}
    return None


def _last_error(log: list[Attempt]) -> str:
    failed = [r for r in log if r.outcome.failed]
    if not failed:
        return ""
    last = failed[-1]
    return f"last error (attempt {last.attempt}, {timestamp(last.time_ms)}): {last.error}"


async def verdict(redis: Redis, route: Route, stored: Stored) -> Verdict:
    """What became of the event for one Trigger."""
    ns, src, name = route.namespace, route.source, route.name
    if stored.event is not None:
        dropped = Filter(route.filter).explain(stored.event)
        if dropped is not None:
            return Verdict(route.id, "filtered", f"filtered out: {dropped}")
    log = await _log_of(redis, route, stored)
    records = [r.to_json() for r in log]
    last = log[-1] if log else None
    if last is not None and last.outcome is AttemptOutcome.DELIVERED:
        detail = (
            f"delivered {timestamp(last.time_ms)} after {last.attempt} "
            f"{'attempt' if last.attempt == 1 else 'attempts'}, latency {seconds(last.latency_ms)}"
            f" (HTTP {last.status}, {last.replica})"
        )
        return Verdict(route.id, "delivered", detail, records)
    if last is not None and last.outcome is AttemptOutcome.EXPIRED:
        detail = (
            f"expired: maxAge passed before it could be sent; dead-lettered unsent "
            f"{timestamp(last.time_ms)}: {last.error}"
        )
        return Verdict(route.id, "expired", detail, records)
    if last is not None and last.outcome is not AttemptOutcome.RETRY:
        how = {
            AttemptOutcome.REFUSED: "refused by the subscriber",
            AttemptOutcome.DEAD: "given up",
        }[last.outcome]
        detail = f"dead-lettered {timestamp(last.time_ms)}, {how}: {last.error}"
        return Verdict(route.id, "dead-lettered", detail, records)
    state = {
        text(k): text(v)
        for k, v in (await redis.hgetall(keys.trigger_state(ns, src, name))).items()  # type: ignore[misc]
    }
    in_backoff = state.get(keys.STATE_STATE) == keys.BACKOFF
    probe = ""
    if in_backoff and state.get(keys.STATE_PROBE_DUE):
        probe = f"; next probe {timestamp(int(state[keys.STATE_PROBE_DUE]))}"
    stream_id = stored.stream_id
    if stream_id:
        scheduled = await redis.zscore(keys.delayed(ns, src, name), stream_id)
        if scheduled is not None and scheduled > time.time() * 1000:
            detail = f"scheduled: delayed until {timestamp(int(scheduled))}, not late"
            return Verdict(route.id, "scheduled", detail, records)
        due = await redis.zscore(keys.retries(ns, src, name), stream_id)
        if due is not None:
            done = await redis.hget(keys.attempts(ns, src, name), stream_id)  # type: ignore[misc]
            made = int(done or 0)
            error = _last_error(log)
            if in_backoff:
                detail = f"in Backoff{probe}; {made} attempts made; {error}".rstrip("; ")
                return Verdict(route.id, "backoff", detail, records)
            detail = f"retrying: attempt {made + 1} due {timestamp(int(due))}; {error}"
            return Verdict(route.id, "retrying", detail.rstrip("; "), records)
        pel = await redis.xpending_range(route.stream, route.group, stream_id, stream_id, 1)
        if pel:
            entry = pel[0]
            detail = (
                f"delivering: attempt under way at {text(entry['consumer'])} for "
                f"{seconds(int(entry['time_since_delivered']))}"
            )
            return Verdict(route.id, "delivering", detail, records)
        if await redis.zscore(keys.held(ns, src, name), stream_id) is not None:
            detail = "waiting behind an earlier event of its ordering key"
            return Verdict(route.id, "waiting", detail, records)
    group = await _group(redis, route)
    last_read = text(group["last-delivered-id"]) if group else "0-0"
    unread = not stream_id or _id(stream_id) > _id(last_read)
    if stored.event is None:
        if unread:
            detail = "expired: trimmed by the source's retention before this Trigger read it"
            return Verdict(route.id, "expired", detail, records)
    elif unread:
        ahead = 0
        if group is not None:
            between: Any = await redis.xrange(
                route.stream, min=f"({last_read}", max=f"({stream_id}", count=10_000
            )
            ahead = len(between)
        detail = f"pending: not read yet, {ahead:,}{'+' if ahead >= 10_000 else ''} events ahead"
        if route.paused:
            detail += " (the Trigger is paused)"
        elif in_backoff:
            detail = f"in Backoff{probe}; " + detail
        return Verdict(route.id, "backoff" if in_backoff else "pending", detail, records)
    dead = await _dead_letter(redis, route, stored)
    if dead is not None:
        made_, why = dead.get(keys.DLQ_ATTEMPTS), dead.get(keys.DLQ_ERROR)
        detail = f"dead-lettered after {made_} attempts: {why}"
        return Verdict(route.id, "dead-lettered", detail, records)
    oldest: Any = await redis.xrange(keys.attempt_log(ns, src, name), count=1)
    if oldest and attempts.decode(*oldest[0]).time_ms <= stored.stored_ms:
        # The log reaches back past the event and has no attempt at it.
        detail = "not for this Trigger: its cursor was past the event (created after it?)"
        return Verdict(route.id, "skipped", detail, records)
    detail = "settled: delivered, or before this Trigger existed (no record left in its log)"
    return Verdict(
        route.id, "delivered" if stored.event is not None else "unknown", detail, records
    )


async def trace(redis: Redis, source_id: str, event_id: str) -> dict[str, Any]:
    loaded = await table.load(redis)
    source = loaded.sources.get(source_id)
    if source is None:
        namespace = source_id.partition("/")[0]
        raise TraceError(
            f"EventSource {source_id} is not in the routing table: check the name "
            f"(kubectl get eventsources -n {namespace}) and that the operator is running"
        )
    stored = await find_event(redis, source, event_id)
    routes = sorted(loaded.routes_of(source.namespace, source.name), key=lambda r: r.name)
    verdicts = [await verdict(redis, route, stored) for route in routes]
    return {
        "source": source_id,
        "eventId": event_id,
        "streamId": stored.stream_id,
        "stored": stored.stored_ms,
        "type": (stored.event or {}).get("type"),
        "subject": (stored.event or {}).get("subject"),
        "inStream": stored.event is not None,
        "triggers": [asdict(v) for v in verdicts],
    }


def render(report: dict[str, Any]) -> str:
    lines = [f"event {report['eventId']} in {report['source']}"]
    where = f"stream id {report['streamId']}" if report["streamId"] else "no longer in the stream"
    what = f"type {report['type']}" if report["type"] else ""
    if report.get("subject"):
        what += f", subject {report['subject']}"
    lines.append(f"  stored {timestamp(report['stored'])}  {where}  {what}".rstrip())
    if not report["triggers"]:
        lines.append("  no Trigger subscribes to this source")
    width = max((len(t["trigger"].partition("/")[2]) for t in report["triggers"]), default=0)
    for verdict_ in report["triggers"]:
        name = verdict_["trigger"].partition("/")[2]
        lines.append(f"  {name:<{width}}  {verdict_['detail']}")
    return "\n".join(lines)


async def _run(args: argparse.Namespace, settings: ReplaySettings) -> int:
    redis = connect_redis(settings.redis_connection(), cluster=settings.redis_cluster)
    try:
        report = await trace(redis, args.source, args.event_id)
    finally:
        await redis.aclose()
    print(json.dumps(report, indent=2) if args.output == "json" else render(report))
    return 0


def run(args: argparse.Namespace) -> int:
    source = args.source
    if source.count("/") != 1 or not all(source.split("/")):
        return _fail(f"{source!r}: write the EventSource as NAMESPACE/NAME, e.g. shop/orders")
    try:
        settings = load(ReplaySettings, args)
        settings.redis_connection()
    except SettingsError as error:
        return _fail(str(error))
    try:
        return asyncio.run(_run(args, settings))
    except TraceError as error:
        return _fail(str(error), code=1)
    except (RedisError, OSError) as error:
        return _fail(f"cannot use Redis at --redis-url {settings.redis_url}: {error}", code=1)


def _fail(message: str, code: int = 2) -> int:
    print(f"tidings trace: {message}", file=sys.stderr)
    return code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = subparsers.add_parser(
        "trace",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="NS/SOURCE", help="the EventSource, e.g. shop/orders")
    parser.add_argument("event_id", metavar="EVENT_ID", help="the CloudEvent's id (ce-id)")
    parser.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="the report as JSON"
    )
    add_arguments(parser, ReplaySettings)
    parser.set_defaults(func=run)
