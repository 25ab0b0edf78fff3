"""`tidings replay NS/TRIGGER`: deliver a Trigger's dead letters again.

    tidings replay shop/welcome-email --all --dry-run     # list what would be replayed
    tidings replay shop/welcome-email --all               # every dead letter
    tidings replay shop/welcome-email --since 2h          # dead-lettered in the last 2 hours
    tidings replay shop/welcome-email --id 1732791234567-0 --id 1732791234999-0

With --cluster it is a thin client: it creates a Replay object (docs/replay.md)
of those dead letters in the cluster of --kubeconfig ($KUBECONFIG, or the pod's
service account) and, with --wait, follows its status until it is done; the
operator and the dispatchers run it. Without --cluster it works on the Redis
of --redis-url directly (tidings dev, or a cluster's Redis):

Choose what to replay with --all, --since DURATION or --id (repeatable; the ids
--dry-run lists), optionally bounded by --limit N (oldest first). The replayed
events go to this Trigger only, not to the other Triggers of its source, with a
fresh attempt count and their maxAge counted from now; the running dispatchers
pick them up within about a second. An event that fails again is retried and
dead-lettered again like any other. A dead letter leaves the DLQ in the same
Redis script that makes its event due, so a crash never loses a dead letter
nor hands it back twice; events the source's retention already trimmed are delivered
from the copy the dead letter keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import keys, table
from tidings.api.durations import DurationError, parse_duration
from tidings.api.process import connect_redis
from tidings.api.routes import Route
from tidings.api.settings import CommonSettings, SettingsError, add_arguments, load, setting
from tidings.api.types import API_VERSION, GROUP, VERSION
from tidings.dispatcher import deadletter
from tidings.dispatcher.deadletter import DeadLetter

# Dead letters read per XRANGE and handed back per script call.
PAGE = 500
_STREAM_ID = re.compile(r"\d+-\d+")


class ReplayError(Exception):
    """Something the user can fix; the message says what."""


async def find_route(redis: Redis, trigger: str) -> Route:
    """The Trigger's compiled route from the routing table (it names the source)."""
    namespace, _, name = trigger.partition("/")
    loaded = await table.load(redis)
    route = loaded.routes.get(f"{namespace}/{name}")
    if route is None:
        raise ReplayError(
            f"Trigger {trigger} is not in the routing table: check the name "
            f"(kubectl get triggers -n {namespace}) and that the operator is running"
        )
    return route


async def pages(
    redis: Redis,
    route: Route,
    *,
    ids: list[str] | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> AsyncIterator[list[DeadLetter]]:
    """The dead letters to replay, oldest first, a page at a time (a DLQ may hold
    100,000): those with these DLQ ids, or those dead-lettered in the last `since`
    seconds (None: all); at most `limit`. Unknown ids raise ReplayError first."""
    if ids:
        found: dict[str, DeadLetter] = {}
        for dlq_id in dict.fromkeys(ids):
            hit = await deadletter.read(
                redis, route.namespace, route.source, route.name, start=dlq_id, count=1
            )
            if hit and hit[0].dlq_id == dlq_id:
                found[dlq_id] = hit[0]
        missing = [i for i in ids if i not in found]
        if missing:
            raise ReplayError(
                f"--id {', '.join(missing)}: no such dead letter of {route.id}; "
                f"list them with: tidings replay {route.id} --all --dry-run"
            )
        chosen = sorted(found.values(), key=lambda d: _id_key(d.dlq_id))[:limit]
        for i in range(0, len(chosen), PAGE):
            yield chosen[i : i + PAGE]
        return
    start = "-"
    if since is not None:
        # Redis's clock: the DLQ ids and times are written with it.
        clock = await redis.time()
        if isinstance(clock, dict):  # Redis Cluster may answer per node
            clock = next(iter(clock.values()))
        now_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000
        start = f"{max(0, now_ms - int(since * 1000))}-0"
    # Up to the newest dead letter now: an event replayed by this run that fails
    # again is dead-lettered anew, after it, and must not be handed back twice.
    newest = await redis.xrevrange(
        keys.dead_letters(route.namespace, route.source, route.name), count=1
    )
    if not newest:
        return
    newest_id = newest[0][0]
    end = newest_id.decode() if isinstance(newest_id, bytes) else str(newest_id)
    left = limit
    while left is None or left > 0:
        want = PAGE if left is None else min(PAGE, left)
        page = await deadletter.read(
            redis, route.namespace, route.source, route.name, start=start, end=end, count=want
        )
        if page:
            yield page
        if len(page) < want:
            return
        if left is not None:
            left -= len(page)
        # Exclusive: the next page starts after this one (replayed entries are gone
        # from the DLQ by then, which does not move this cursor).
        start = f"({page[-1].dlq_id}"


def describe(dead: DeadLetter) -> str:
    """One line of --dry-run: DLQ id, time, event id, type, status, error."""
    when = datetime.fromtimestamp(dead.time_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event_id = str(dead.event.get("id", "-")) if dead.event else "(event not stored)"
    event_type = str(dead.event.get("type", "-")) if dead.event else "-"
    return "  ".join(
        [dead.dlq_id, when, event_id, event_type, dead.status or "-", dead.error or "-"]
    )


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


@dataclass(frozen=True)
class ReplaySettings(CommonSettings):
    redis_cluster: bool = setting(
        "--redis-cluster", "TIDINGS_REDIS_CLUSTER", False, "--redis-url points at a Redis Cluster"
    )


async def _run(args: argparse.Namespace, settings: ReplaySettings, since: float | None) -> int:
    redis = connect_redis(settings.redis_connection(), cluster=settings.redis_cluster)
    try:
        route = await find_route(redis, args.trigger)
        selected = replayed = kept = 0
        async for page in pages(redis, route, ids=args.id, since=since, limit=args.limit):
            selected += len(page)
            if args.dry_run:
                for entry in page:
                    print(describe(entry))
                continue
            moved, stuck = await deadletter.hand_back(redis, route, [d.dlq_id for d in page])
            replayed += moved
            kept += stuck
        if args.dry_run:
            print(f"would replay {_count(selected)} of {route.id} (dry run: nothing changed)")
            return 0
        line = f"replayed {_count(replayed)} of {route.id}"
        if kept:
            line += (
                f"; {kept} kept in the DLQ: their event was already gone from the source "
                "when they were dead-lettered, so there is nothing to deliver"
            )
        if route.paused and replayed:
            line += " (the Trigger is paused: they are delivered when it resumes)"
        print(line)
        return 0
    finally:
        await redis.aclose()


FINAL = ("Succeeded", "Failed")


def replay_object(
    namespace: str, trigger: str, since: str | None, ids: list[str] | None
) -> dict[str, Any]:
    """The Replay to create for these dead letters of the Trigger."""
    selection: dict[str, Any] = {}
    if since:
        selection["since"] = since
    if ids:
        selection["ids"] = list(dict.fromkeys(ids))
    return {
        "apiVersion": API_VERSION,
        "kind": "Replay",
        "metadata": {"generateName": f"{trigger[:40]}-replay-", "namespace": namespace},
        "spec": {"trigger": trigger, "from": {"deadLetters": selection}},
    }


def run_in_cluster(args: argparse.Namespace) -> int:
    """Create the Replay object; with --wait, print its progress until it is done."""
    from kubernetes import client  # type: ignore[import-untyped]
    from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]

    from tidings.operator.kube import load_config

    namespace, _, name = args.trigger.partition("/")
    try:
        api = client.CustomObjectsApi(client.ApiClient(load_config(args.kubeconfig)))
        created: dict[str, Any] = api.create_namespaced_custom_object(  # type: ignore[assignment]
            GROUP,
            VERSION,
            namespace,
            "replays",
            replay_object(namespace, name, args.since, args.id),
        )
    except (ApiException, OSError, ValueError) as error:
        reason = getattr(error, "body", None) or str(error)
        return _fail(f"cannot create the Replay in namespace {namespace}: {reason}", code=1)
    replay = created["metadata"]["name"]
    print(f"replay.tidings.dev/{replay} created (kubectl -n {namespace} get replay {replay})")
    if not args.wait:
        return 0
    shown = ""
    while True:
        found: dict[str, Any] = api.get_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, namespace, "replays", replay
        )
        status = found.get("status") or {}
        phase = status.get("phase") or "Pending"
        line = (
            f"{phase}: {status.get('sent', 0)} of {status.get('total', '?')} sent, "
            f"{status.get('delivered', 0)} delivered, {status.get('failed', 0)} failed, "
            f"{status.get('skipped', 0)} skipped"
        )
        if line != shown:
            print(line, flush=True)
            shown = line
        if phase in FINAL:
            return 0 if phase == "Succeeded" else 1
        time.sleep(1.0)


def run(args: argparse.Namespace) -> int:
    trigger = args.trigger
    if trigger.count("/") != 1 or not all(trigger.split("/")):
        return _fail(f"{trigger!r}: write the Trigger as NAMESPACE/NAME, e.g. shop/welcome-email")
    try:
        settings = load(ReplaySettings, args)
        if not args.cluster:
            settings.redis_connection()
    except SettingsError as error:
        return _fail(str(error))
    chosen = [
        flag for flag, on in (("--id", args.id), ("--since", args.since), ("--all", args.all)) if on
    ]
    if len(chosen) != 1:
        what = "nothing" if not chosen else " and ".join(chosen)
        return _fail(
            f"{what}: choose exactly one of --all, --since DURATION (e.g. --since 2h) or "
            "--id ID (repeatable); see the ids with --all --dry-run"
        )
    for dlq_id in args.id or []:
        if not _STREAM_ID.fullmatch(dlq_id):
            return _fail(
                f"--id {dlq_id}: not a dead letter id; they look like 1764349200000-0 "
                "(see them with --all --dry-run)"
            )
    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit {args.limit}: give a positive number, or leave it out for no limit")
    if args.cluster:
        if args.dry_run or args.limit is not None:
            return _fail("--cluster creates a Replay object: --dry-run and --limit work without it")
        if args.since:
            try:
                parse_duration(args.since, field="--since")
            except DurationError as error:
                return _fail(str(error))
        return run_in_cluster(args)
    since = None
    if args.since:
        try:
            since = parse_duration(args.since, field="--since")
        except DurationError as error:
            return _fail(str(error))
    try:
        return asyncio.run(_run(args, settings, since))
    except ReplayError as error:
        return _fail(str(error), code=1)
    except (RedisError, OSError) as error:
        return _fail(f"cannot use Redis at --redis-url {settings.redis_url}: {error}", code=1)


def _count(n: int) -> str:
    return f"{n} dead letter" if n == 1 else f"{n} dead letters"


def _fail(message: str, code: int = 2) -> int:
    print(f"tidings replay: {message}", file=sys.stderr)
    return code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = subparsers.add_parser(
        "replay",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "trigger", metavar="NS/TRIGGER", help="the Trigger, e.g. shop/welcome-email"
    )
    parser.add_argument(
        "--id",
        action="append",
        metavar="ID",
        help="a dead letter's id, as --dry-run lists it (repeatable)",
    )
    parser.add_argument(
        "--since", metavar="DURATION", help="dead letters of the last DURATION, e.g. 30m, 24h"
    )
    parser.add_argument("--all", action="store_true", help="every dead letter of the Trigger")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N, oldest first")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be replayed; change nothing"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="create a Replay object in the cluster instead of working on Redis directly",
    )
    parser.add_argument("--kubeconfig", help="with --cluster: kubeconfig (default $KUBECONFIG)")
    parser.add_argument(
        "--wait", action="store_true", help="with --cluster: follow its status until it is done"
    )
    add_arguments(parser, ReplaySettings)
    parser.set_defaults(func=run)
