"""`tidings dispatcher`: ingest and delivery in one process.

    tidings dispatcher --listen 0.0.0.0:8080 --redis-url redis://... [--consumer-name NAME]

Serves ingest, /healthz, /readyz and /metrics on --listen, and delivers every
Trigger of the routing table. Any number of these processes share the work:
each is one consumer in every Trigger's consumer group, named --consumer-name
(default: host name and pid; keep it stable per pod only if you want a
restarted pod to resume its own pending entries at once instead of after the
reclaim idle time).

SIGTERM (or SIGINT) stops ingest first, then drains deliveries in flight for up
to --grace seconds; what is still running after that stays pending in Redis
and another dispatcher reclaims it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis, RedisCluster

from tidings.api.process import add_common_options
from tidings.api.sealing import Sealer, SealError, load_key, new_key
from tidings.dispatcher.engine import Dispatcher, default_consumer_name
from tidings.dispatcher.ingest import build_app
from tidings.dispatcher.routing import TableWatcher

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dispatcher",
        help="Serve ingest and deliver events to subscribers (the data plane).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser)
    parser.add_argument(
        "--listen",
        default=os.environ.get("TIDINGS_LISTEN", "0.0.0.0:8080"),
        help="HOST:PORT for ingest, health and metrics (default 0.0.0.0:8080)",
    )
    parser.add_argument(
        "--consumer-name",
        default=os.environ.get("TIDINGS_CONSUMER_NAME") or default_consumer_name(),
        help="This process's name in the consumer groups (default: HOSTNAME-PID)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("TIDINGS_GRACE", "30")),
        help="Seconds to drain in-flight deliveries on SIGTERM (default 30)",
    )
    parser.add_argument(
        "--redis-cluster",
        action="store_true",
        default=os.environ.get("TIDINGS_REDIS_CLUSTER", "") in ("1", "true", "yes"),
        help="--redis-url points at a Redis Cluster node",
    )
    parser.add_argument(
        "--wait-replicas",
        type=int,
        default=0,
        help="Ingest answers 202 only after this many replicas have the event (WAIT)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=512,
        help="Deliveries one Trigger may have in flight in this process (default 512); "
        "the Trigger's concurrency limits all processes together",
    )
    parser.add_argument(
        "--no-ingest", action="store_true", help="Deliver only; serve just health and metrics"
    )
    parser.set_defaults(func=run)


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--listen: {value!r} is not HOST:PORT, e.g. 0.0.0.0:8080")
    return host, int(port)


def _sealer() -> Sealer:
    try:
        return Sealer(load_key())
    except SealError as error:
        log.warning("%s; sealed secrets (ingest tokens, signing keys) cannot be opened", error)
        return Sealer(new_key())


def run(args: argparse.Namespace) -> int:
    if not args.redis_url:
        raise SystemExit("--redis-url (or REDIS_URL) is required, e.g. redis://127.0.0.1:6379/0")
    host, port = _listen(args.listen)
    return asyncio.run(serve(args, host, port))


async def serve(args: argparse.Namespace, host: str, port: int) -> int:
    redis: Redis
    if args.redis_cluster:
        redis = RedisCluster.from_url(args.redis_url)  # type: ignore[assignment]
    else:
        redis = Redis.from_url(args.redis_url, socket_connect_timeout=5)
    watcher = TableWatcher(redis)
    registry = CollectorRegistry()
    sealer = _sealer()
    await watcher.start()
    dispatcher = Dispatcher(
        redis,
        watcher,
        consumer=args.consumer_name,
        sealer=sealer,
        registry=registry,
        max_in_flight=args.max_in_flight,
    )
    await dispatcher.start()
    if args.no_ingest:
        app = web.Application()
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/metrics", lambda request: _metrics(registry))
    else:
        app = build_app(redis, watcher, registry, sealer, wait_replicas=args.wait_replicas)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("dispatcher %s listening on %s:%d", args.consumer_name, host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: no more ingest, draining deliveries for up to %gs", args.grace)
    await runner.cleanup()
    await dispatcher.stop(grace=args.grace)
    # Bounded: cancelling the table watcher's pub/sub reader can stall in the client.
    stopping = asyncio.create_task(watcher.stop())
    await asyncio.wait({stopping}, timeout=2.0)
    with contextlib.suppress(Exception):
        await redis.aclose()
    return 0


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _metrics(registry: CollectorRegistry) -> web.Response:
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
