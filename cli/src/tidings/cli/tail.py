"""`tidings tail NS/TRIGGER`: follow a Trigger's attempt log, one line per attempt.

    tidings tail shop/welcome-email                  # from now on, until Ctrl-C
    tidings tail shop/welcome-email --since 10m      # the last 10 minutes first, then follow
    tidings tail shop/welcome-email --failed -o json # failed attempts only, as JSON lines
    tidings tail shop/welcome-email --since 1h --no-follow

A line: when the attempt ended, event id, type, attempt number, outcome, HTTP
status, duration, latency (stored -> this attempt), replica, error. On a
terminal, failures are coloured (retries yellow, dead letters red); NO_COLOR
turns that off. The log is the Trigger's `delivery.attemptLog` (docs/observability.md).
Against a cluster: `kubectl port-forward svc/RELEASE-redis 6379` and
`--redis-url redis://127.0.0.1:6379/0`; with `tidings dev`, the URL it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import attempts, keys
from tidings.api.attempts import Attempt, AttemptOutcome
from tidings.api.durations import DurationError, parse_duration
from tidings.api.process import connect_redis
from tidings.api.settings import SettingsError, add_arguments, load
from tidings.cli.replay import ReplayError, ReplaySettings, find_route

PAGE = 500
BLOCK_MS = 1000
_RED, _YELLOW, _RESET = "\033[31m", "\033[33m", "\033[0m"


def timestamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def seconds(ms: int) -> str:
    """A duration for people: 12ms, 1.52s, 3m05s, 2h10m."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f}s"
    minutes, secs = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def line(record: Attempt, colour: bool) -> str:
    text = "  ".join(
        [
            timestamp(record.time_ms),
            record.event_id or "-",
            record.type or "-",
            f"#{record.attempt}",
            record.outcome.value,
            record.status or "-",
            seconds(record.duration_ms),
            f"latency {seconds(record.latency_ms)}",
            record.replica or "-",
            record.error,
        ]
    ).rstrip()
    if colour and record.outcome is not AttemptOutcome.DELIVERED:
        tint = _YELLOW if record.outcome is AttemptOutcome.RETRY else _RED
        return f"{tint}{text}{_RESET}"
    return text


def wants_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


async def redis_now_ms(redis: Redis) -> int:
    clock: Any = await redis.time()
    if isinstance(clock, dict):  # Redis Cluster may answer per node
        clock = next(iter(clock.values()))
    return int(clock[0]) * 1000 + int(clock[1]) // 1000


async def follow(
    redis: Redis,
    key: str,
    *,
    since_ms: int | None,
    follow: bool,
    failed_only: bool,
    as_json: bool,
    out: TextIO,
) -> int:
    """Print the log from `since_ms` (None: from now), then new entries while `follow`."""
    colour = not as_json and wants_colour(out)
    shown = 0

    def show(entries: list[Any]) -> str:
        nonlocal shown
        last = ""
        for entry_id, fields in entries:
            record = attempts.decode(entry_id, fields)
            last = record.id
            if failed_only and not record.outcome.failed:
                continue
            shown += 1
            print(json.dumps(record.to_json()) if as_json else line(record, colour), file=out)
        out.flush()
        return last

    if since_ms is None:
        newest: Any = await redis.xrevrange(key, count=1)
        last_id = attempts.decode(*newest[0]).id if newest else "0-0"
    else:
        start, last_id = f"{since_ms}-0", "0-0"
        while True:
            page: Any = await redis.xrange(key, min=start, count=PAGE)
            if page:
                last_id = show(page)
                start = f"({last_id}"
            if len(page) < PAGE:
                break
    if follow:
        # On stderr, so `-o json` output stays clean; scripts can wait for it.
        print(f"following {key} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    while follow:
        reply: Any = await redis.xread({key: last_id}, count=PAGE, block=BLOCK_MS)
        for _, entries in reply or []:
            last_id = show(entries) or last_id
    return shown


async def _run(args: argparse.Namespace, settings: ReplaySettings, since: float | None) -> int:
    redis = connect_redis(settings.redis_connection(), cluster=settings.redis_cluster)
    try:
        route = await find_route(redis, args.trigger)
        key = keys.attempt_log(route.namespace, route.source, route.name)
        since_ms = None if since is None else await redis_now_ms(redis) - int(since * 1000)
        await follow(
            redis,
            key,
            since_ms=since_ms,
            follow=not args.no_follow,
            failed_only=args.failed,
            as_json=args.output == "json",
            out=sys.stdout,
        )
        return 0
    finally:
        await redis.aclose()


def run(args: argparse.Namespace) -> int:
    trigger = args.trigger
    if trigger.count("/") != 1 or not all(trigger.split("/")):
        return _fail(f"{trigger!r}: write the Trigger as NAMESPACE/NAME, e.g. shop/welcome-email")
    try:
        settings = load(ReplaySettings, args)
        settings.redis_connection()
    except SettingsError as error:
        return _fail(str(error))
    since = None
    if args.since:
        try:
            since = parse_duration(args.since, field="--since")
        except DurationError as error:
            return _fail(str(error))
    try:
        return asyncio.run(_run(args, settings, since))
    except KeyboardInterrupt:
        return 0
    except ReplayError as error:
        return _fail(str(error), code=1)
    except (RedisError, OSError) as error:
        return _fail(f"cannot use Redis at --redis-url {settings.redis_url}: {error}", code=1)


def _fail(message: str, code: int = 2) -> int:
    print(f"tidings tail: {message}", file=sys.stderr)
    return code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = subparsers.add_parser(
        "tail",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "trigger", metavar="NS/TRIGGER", help="the Trigger, e.g. shop/welcome-email"
    )
    parser.add_argument("--failed", action="store_true", help="only attempts that failed")
    parser.add_argument(
        "--since", metavar="DURATION", help="start DURATION ago (e.g. 10m), not from now"
    )
    parser.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="one JSON object a line"
    )
    parser.add_argument(
        "--no-follow", action="store_true", help="print what is logged (see --since) and exit"
    )
    add_arguments(parser, ReplaySettings)
    parser.set_defaults(func=run)
