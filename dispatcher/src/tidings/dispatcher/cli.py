"""`tidings dispatcher`: ingest and delivery in one process.

    tidings dispatcher --listen 0.0.0.0:8080 --redis-url redis://... [--consumer-name NAME]

Serves ingest, /healthz, /readyz and /metrics on --listen, and delivers every
Trigger of the routing table. Any number of these processes share the work:
each is one consumer in every Trigger's consumer group, named --consumer-name
(default: host name and pid; keep it stable per pod only if you want a
restarted pod to resume its own pending entries at once instead of after the
reclaim idle time).

SIGTERM (or SIGINT) stops ingest first: for --drain-connections seconds it
still answers, each answer with `Connection: close` (so producers' keep-alive
connections move to another dispatcher instead of being cut), then it stops
listening. Then it drains deliveries in flight for up to --grace seconds;
what is still running after that stays pending in Redis and another
dispatcher reclaims it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidings.api.process import (
    connect_redis,
    event_loop_choice,
    freeze_startup_heap,
    parse_listen,
    run_event_loop,
    wait_until_reachable,
)
from tidings.api.sealing import ENV_KEY, ENV_KEY_FILE, Sealer, SealError, load_sealer
from tidings.api.settings import (
    DestinationSettings,
    ServeSettings,
    SettingsError,
    add_arguments,
    load,
    setting,
)

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from tidings.dispatcher.routing import TableWatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatcherSettings(ServeSettings, DestinationSettings):
    consumer_name: str = setting(
        "--consumer-name",
        "TIDINGS_CONSUMER_NAME",
        "",
        "this process's name in the consumer groups (empty: HOSTNAME-PID)",
    )
    grace: float = setting(
        "--grace", "TIDINGS_GRACE", 30.0, "seconds to drain in-flight deliveries on SIGTERM"
    )
    drain_connections: float = setting(
        "--drain-connections",
        "TIDINGS_DRAIN_CONNECTIONS",
        2.0,
        "seconds ingest keeps answering after SIGTERM, every answer with Connection: close, "
        "so producers' keep-alive connections reconnect elsewhere (0: stop listening at once)",
    )
    redis_cluster: bool = setting(
        "--redis-cluster", "TIDINGS_REDIS_CLUSTER", False, "--redis-url points at a Redis Cluster"
    )
    wait_replicas: int = setting(
        "--wait-replicas",
        "TIDINGS_WAIT_REPLICAS",
        0,
        "ingest answers 202 only after this many replicas have the event (WAIT)",
    )
    max_in_flight: int = setting(
        "--max-in-flight",
        "TIDINGS_MAX_IN_FLIGHT",
        512,
        "deliveries one Trigger may have in flight in this process; the Trigger's "
        "concurrency limits all processes together",
    )
    seal_key_file: str = setting(
        "--seal-key-file",
        ENV_KEY_FILE,
        "",
        f"file holding the seal key shared with the operator (empty: ${ENV_KEY})",
    )
    no_ingest: bool = setting(
        "--no-ingest", "TIDINGS_NO_INGEST", False, "deliver only; serve just health and metrics"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = subparsers.add_parser(
        "dispatcher",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, DispatcherSettings)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load(DispatcherSettings, args)
        settings.redis_connection()
        host, port = parse_listen(settings.listen)
        settings.destination_policy()  # a bad entry stops the start, naming its flag
        event_loop_choice()
        # Refused at start, not at the first sealed value: without the operator's
        # key every ingest token and signing key would fail at run time.
        sealer: Sealer = load_sealer(settings.seal_key_file or None)
    except (SettingsError, SealError) as error:
        raise SystemExit(f"tidings dispatcher: {error}") from None
    return run_event_loop(serve(settings, host, port, sealer))


async def serve(settings: DispatcherSettings, host: str, port: int, sealer: Sealer) -> int:
    # The data plane is imported here, once the settings are good: `--help` and a
    # bad flag answer without loading aiohttp, the engine and the compiled formats.
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from tidings.dispatcher.engine import Dispatcher, default_consumer_name
    from tidings.dispatcher.ingest import INGEST, build_app
    from tidings.dispatcher.routing import TableWatcher

    consumer_name = settings.consumer_name or default_consumer_name()
    redis = connect_redis(settings.redis_connection(), cluster=settings.redis_cluster)
    watcher = TableWatcher(redis)
    registry = CollectorRegistry()
    dispatcher = Dispatcher(
        redis,
        watcher,
        consumer=consumer_name,
        sealer=sealer,
        registry=registry,
        max_in_flight=settings.max_in_flight,
        destinations=settings.destination_policy(),
    )
    if settings.no_ingest:
        app = web.Application()
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", lambda request: _readyz(watcher))
        app.router.add_get("/metrics", lambda request: _metrics(registry))
    else:
        app = build_app(redis, watcher, registry, sealer, wait_replicas=settings.wait_replicas)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Serve first: alive at once, ready (and ingesting) once Redis answers and
    # the table is loaded, so a pod started before its Redis waits, not crashes.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("dispatcher %s listening on %s:%d", consumer_name, host, port)
    started = await wait_until_reachable("Redis", redis.ping, stop)
    if started:
        await watcher.start()
        await dispatcher.start()
        freeze_startup_heap()
        await stop.wait()
    if INGEST in app and settings.drain_connections > 0:
        log.info(
            "stopping: ingest closes producers' connections for %gs", settings.drain_connections
        )
        app[INGEST].start_draining()
        await asyncio.sleep(settings.drain_connections)
    log.info("stopping: no more ingest, draining deliveries for up to %gs", settings.grace)
    await runner.cleanup()
    if started:
        await dispatcher.stop(grace=settings.grace)
    # Bounded: cancelling the table watcher's pub/sub reader can stall in the client.
    stopping = asyncio.create_task(watcher.stop())
    await asyncio.wait({stopping}, timeout=2.0)
    with contextlib.suppress(Exception):
        await redis.aclose()
    return 0


async def _healthz(request: web.Request) -> web.Response:
    from aiohttp import web

    return web.json_response({"ok": True})


async def _readyz(watcher: TableWatcher) -> web.Response:
    from aiohttp import web

    if watcher.loaded.is_set():
        return web.json_response({"ready": True})
    return web.json_response(
        {"ready": False, "reason": "the routing table is not loaded yet"}, status=503
    )


async def _metrics(registry: CollectorRegistry) -> web.Response:
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
