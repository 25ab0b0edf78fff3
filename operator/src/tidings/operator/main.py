"""`tidings operator`: run the Kopf operator.

    tidings operator [--namespace NS ...] [--redis-url URL] [--standalone] ...

Watches all namespaces unless `--namespace` (repeatable) restricts it. Talks
to the API server in-cluster (service account) or through a kubeconfig
(`--kubeconfig`, else $KUBECONFIG, else ~/.kube/config). The seal key comes
from $TIDINGS_SEAL_KEY_FILE or $TIDINGS_SEAL_KEY (or `--seal-key-file`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidings.api import sealing
from tidings.api.process import (
    connect_redis,
    event_loop_choice,
    run_event_loop,
    wait_until_reachable,
)
from tidings.api.sealing import StableSealer
from tidings.api.settings import (
    CommonSettings,
    DestinationSettings,
    RedisConnection,
    SettingsError,
    add_arguments,
    load,
    setting,
)
from tidings.operator import pacing, peering

# Kopf, the Kubernetes client and the controllers are imported where the
# operator starts (serve), not here: `tidings operator --help` and a bad flag
# answer without them.
if TYPE_CHECKING:
    from tidings.operator.context import Settings
    from tidings.operator.kube import Kube
    from tidings.operator.loop import WorkQueue

log = logging.getLogger("tidings.operator")

DEFAULT_IMAGE = "tidings:latest"
# Redis connections shared by all controllers: enough for bursts at start,
# bounded so a thousand daemons cannot open a thousand connections.
REDIS_CONNECTIONS = 32
# mallopt(3) parameter.
M_ARENA_MAX = -8
# After SIGTERM, exit by force if the graceful stop has not ended by then (an API
# call in flight to a slow API server; a pod's default grace period is 30 s).
EXIT_DEADLINE = 8.0
# Also put in adapters' config Secret (adapter_redis_env): the adapters read it too.
CLUSTER_ENV = "TIDINGS_REDIS_CLUSTER"
# Status writes during a mass apply (tidings.operator.pacing; docs/benchmarks.md,
# 2026-12-01, status writes yield to a mass apply).
BULK_STATUS_WRITE_QPS = 5.0
STATUS_WRITE_BURST = 20


@dataclass(frozen=True)
class OperatorSettings(CommonSettings, DestinationSettings):
    namespaces: list[str] = setting(
        "--namespace",
        "TIDINGS_NAMESPACES",
        [],
        "watch only this namespace (empty: all namespaces)",
        metavar="NS",
    )
    kubeconfig: str | None = setting(
        "--kubeconfig", "KUBECONFIG", None, "kubeconfig file (unset: in-cluster)", kind=str
    )
    seal_key_file: str = setting(
        "--seal-key-file",
        sealing.ENV_KEY_FILE,
        "",
        f"file holding the seal key (empty: ${sealing.ENV_KEY})",
    )
    image: str = setting("--image", "TIDINGS_IMAGE", DEFAULT_IMAGE, "image of adapter Deployments")
    adapter_resources: str = setting(
        "--adapter-resources",
        "TIDINGS_ADAPTER_RESOURCES",
        "",
        "resources of adapter containers as JSON, e.g. "
        '\'{"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}\' '
        "(empty: 50m CPU and 64Mi requested, 256Mi memory limit)",
        metavar="JSON",
    )
    adapter_image_pull_policy: str = setting(
        "--adapter-image-pull-policy",
        "TIDINGS_ADAPTER_IMAGE_PULL_POLICY",
        "IfNotPresent",
        "imagePullPolicy of adapter containers",
        choices=("Always", "IfNotPresent", "Never"),
    )
    adapter_service_account: str = setting(
        "--adapter-service-account",
        "TIDINGS_ADAPTER_SERVICE_ACCOUNT",
        "",
        "ServiceAccount adapter pods run as, in the EventSource's namespace",
    )
    adapter_redis_url: str = setting(
        "--adapter-redis-url",
        "TIDINGS_ADAPTER_REDIS_URL",
        "",
        "Redis URL adapters use (empty: --redis-url)",
    )
    redis_cluster: bool = setting(
        "--redis-cluster",
        CLUSTER_ENV,
        False,
        "--redis-url points at a Redis Cluster (adapters are told so too)",
    )
    ingest_service: str = setting(
        "--ingest-service",
        "TIDINGS_INGEST_SERVICE",
        "tidings-ingest",
        "the ingest Service, for http sources' status.url",
    )
    ingest_namespace: str = setting(
        "--ingest-namespace",
        "TIDINGS_INGEST_NAMESPACE",
        "tidings",
        "namespace of the ingest Service",
    )
    health_interval: float = setting(
        "--health-interval",
        "TIDINGS_HEALTH_INTERVAL",
        5.0,
        "seconds between reads of each Trigger's delivery report and each source adapter's report",
    )
    health_rest_interval: float = setting(
        "--health-rest-interval",
        "TIDINGS_HEALTH_REST_INTERVAL",
        60.0,
        "seconds between reads of the delivery report of a Trigger at rest (dispatchers "
        "announce news, so this is a safety net)",
    )
    wal_check_interval: float = setting(
        "--wal-check-interval",
        "TIDINGS_WAL_CHECK_INTERVAL",
        60.0,
        "seconds between the operator's own reads of a Postgres slot's retained WAL while its "
        "adapter is not running",
    )
    cleanup_attempts: int = setting(
        "--cleanup-attempts",
        "TIDINGS_CLEANUP_ATTEMPTS",
        10,
        "attempts at dropping a deleted Postgres EventSource's replication slot and "
        "publication (delays double up to 60 s, ~4 min in all) before releasing it with a "
        "Warning Event",
    )
    stale_after: float = setting(
        "--stale-after",
        "TIDINGS_STALE_AFTER",
        120.0,
        "a delivery report older than this many seconds is shown as stale",
    )
    resync_interval: float = setting(
        "--resync-interval",
        "TIDINGS_RESYNC_INTERVAL",
        300.0,
        "seconds between full re-reconciles of each object without any event: the safety net "
        "for a Redis that lost its data",
    )
    standalone: bool = setting(
        "--standalone",
        "TIDINGS_STANDALONE",
        False,
        "run without peering (then run exactly one replica)",
    )
    peering_name: str = setting(
        "--peering-name",
        "TIDINGS_PEERING_NAME",
        peering.DEFAULT_NAME,
        "peering object shared by replicas",
    )
    priority: int | None = setting(
        "--priority",
        "TIDINGS_PRIORITY",
        None,
        "peering priority; the highest live replica is active (unset: random)",
        kind=int,
    )
    peering_lifetime: int = setting(
        "--peering-lifetime",
        "TIDINGS_PEERING_LIFETIME",
        60,
        "seconds after which a silent (killed) replica is presumed dead",
    )
    bulk_status_write_qps: float = setting(
        "--bulk-status-write-qps",
        "TIDINGS_BULK_STATUS_WRITE_QPS",
        BULK_STATUS_WRITE_QPS,
        f"status writes a second while Triggers and EventSources are being created in bulk "
        f"({pacing.BULK_CREATES} or more a second): the rest wait until the apply is over, "
        f"rather than slow it down (0: do not hold back)",
    )
    status_write_qps: float = setting(
        "--status-write-qps",
        "TIDINGS_STATUS_WRITE_QPS",
        0.0,
        "status writes a second at most, at any time, after --status-write-burst (0: no cap)",
    )
    status_write_burst: int = setting(
        "--status-write-burst",
        "TIDINGS_STATUS_WRITE_BURST",
        STATUS_WRITE_BURST,
        "status writes at once before a rate applies",
    )
    liveness: str = setting(
        "--liveness",
        "TIDINGS_OPERATOR_LIVENESS",
        "",
        "serve a liveness probe at http://HOST:PORT/healthz",
        metavar="HOST:PORT",
    )

    def check_status_write_limits(self) -> None:
        for flag, qps in (
            ("--status-write-qps", self.status_write_qps),
            ("--bulk-status-write-qps", self.bulk_status_write_qps),
        ):
            if not qps >= 0:  # also NaN
                raise SettingsError(f"{flag}={qps}: use 0 (no limit) or a rate above 0")
        if self.status_write_burst < 1:
            raise SettingsError(f"--status-write-burst={self.status_write_burst}: use 1 or more")


def register(subparsers: Any, summary: str) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "operator",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, OperatorSettings)
    parser.add_argument(
        "--print-peering-crds",
        action="store_true",
        help="print the KopfPeering CRDs peering needs, and exit",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.print_peering_crds:
        sys.stdout.write(peering.crds_yaml())
        return 0
    try:
        options = load(OperatorSettings, args)
        options.destination_policy()
        event_loop_choice()
        options.check_status_write_limits()
    except SettingsError as error:
        log.error("%s", error)
        return 2
    if not options.redis_url:
        log.error("no Redis: pass --redis-url or set REDIS_URL")
        return 2
    try:
        adapter_redis_env(options.redis_connection())
    except (SettingsError, OSError) as error:
        log.error("%s", error)
        return 2
    if options.adapter_resources:
        from tidings.operator.adapters import parse_resources

        try:
            parse_resources(options.adapter_resources)
        except ValueError as error:
            log.error("%s", error)
            return 2
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # Kopf logs every handler call at INFO ("Handler ... succeeded"): thousands
        # of lines per minute at scale. Our controllers log what changes.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        sealer = sealing.load_sealer(options.seal_key_file or None, StableSealer)
    except sealing.SealError as error:
        log.error("tidings operator: %s", error)
        return 2
    limit_malloc_arenas()
    try:
        run_event_loop(serve(options, sealer))
    except PeeringError as error:
        log.error("%s", error)
        return 2
    # Stopped gracefully (Kopf has left the peering, the work queue has halted).
    # Skip the interpreter's teardown: it joins the API client's threads, whose
    # calls in flight to a busy API server took seconds, and frees a heap of
    # thousands of objects one by one. Every round is redone by the next operator.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


class PeeringError(RuntimeError):
    pass


def settings_from(options: OperatorSettings) -> Settings:
    from tidings.operator.adapters import DEFAULT_RESOURCES, AdapterSettings, parse_resources
    from tidings.operator.context import Settings

    return Settings(
        adapters=AdapterSettings(
            image=options.image,
            redis_url=options.adapter_redis_url or options.require_redis_url(),
            redis_env=adapter_redis_env(options.redis_connection(), cluster=options.redis_cluster),
            service_account=options.adapter_service_account or None,
            image_pull_policy=options.adapter_image_pull_policy,
            resources=(
                parse_resources(options.adapter_resources)
                if options.adapter_resources
                else dict(DEFAULT_RESOURCES)
            ),
            # Adapters keep their own service name (tidings-source).
            otel_env={
                k: v
                for k, v in os.environ.items()
                if k.startswith("OTEL_") and k != "OTEL_SERVICE_NAME"
            },
        ),
        ingest_service=options.ingest_service,
        ingest_namespace=options.ingest_namespace,
        health_interval=options.health_interval,
        health_rest_interval=options.health_rest_interval,
        stale_after=options.stale_after,
        resync_interval=options.resync_interval,
        cleanup_attempts=max(1, options.cleanup_attempts),
        wal_check_interval=options.wal_check_interval,
        destinations=options.destination_policy(),
    )


def adapter_redis_env(connection: RedisConnection, *, cluster: bool = False) -> dict[str, str]:
    """What source adapters need of the operator's own Redis settings (their
    config Secret's keys): the ACL user, the password, the CA bundle as PEM,
    and whether the URL is a Redis Cluster's."""
    env = {"REDIS_USERNAME": connection.username, "REDIS_PASSWORD": connection.password}
    if cluster:
        env[CLUSTER_ENV] = "true"
    ca = connection.ca_data
    if connection.ca_file:
        ca = Path(connection.ca_file).read_text()
    if connection.tls and ca:
        env["REDIS_TLS_CA"] = ca
    return {name: value for name, value in env.items() if value}


async def ensure_peering(kube: Kube, name: str, namespaces: list[str]) -> None:
    """The peering objects must exist before Kopf starts, or peering silently does nothing."""
    from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]

    plural = peering.NAMESPACED_PLURAL if namespaces else peering.CLUSTER_PLURAL
    for namespace in namespaces or [""]:
        manifest = peering.peering_object(name, namespace)
        try:
            if await kube.create_custom_if_missing(
                peering.GROUP, peering.VERSION, plural, manifest
            ):
                log.info("created peering object %s %s", manifest["kind"], name)
        except ApiException as error:
            if error.status == 404:
                raise PeeringError(
                    f"peering needs the KopfPeering CRDs: `tidings operator --print-peering-crds"
                    f" | kubectl apply -f -` (the Helm chart installs them), or run with "
                    f"--standalone ({plural}.{peering.GROUP} is not served)"
                ) from None
            if error.status != 403:
                raise
            log.warning("cannot create the peering object %s (forbidden); assuming it exists", name)


async def serve(options: OperatorSettings, sealer: StableSealer) -> None:
    import kopf

    from tidings.operator import handlers, health, kopf_pause, kopf_toggles, orphans
    from tidings.operator.context import Context
    from tidings.operator.kube import Kube, connection_info, load_config
    from tidings.operator.loop import WorkQueue

    configuration = load_config(options.kubeconfig)
    # Started before its API server (a fresh cluster, a control-plane restart):
    # wait, do not crash into a restart loop.
    await wait_until_reachable("the Kubernetes API", lambda: _api_version(configuration))
    creates = pacing.BulkCreates()
    rate = pacing.status_rate(
        creates, qps=options.status_write_qps, bulk_qps=options.bulk_status_write_qps
    )
    kube = Kube(configuration, status_turns=pacing.Turns(rate, options.status_write_burst))
    # A cluster client's per-node pool raises when full instead of waiting:
    # it keeps redis-py's default bound (100 a node) rather than ours.
    pool = {} if options.redis_cluster else {"max_connections": REDIS_CONNECTIONS, "timeout": None}
    redis = connect_redis(options.redis_connection(), cluster=options.redis_cluster, **pool)
    namespaces: list[str] = options.namespaces
    priority = options.priority if options.priority is not None else random.randint(1, 2**31 - 1)
    if not options.standalone:
        await ensure_peering(kube, options.peering_name, namespaces)
    ctx = Context(
        settings=settings_from(options), redis=redis, kube=kube, sealer=sealer, creates=creates
    )
    queue = WorkQueue(wakeups=ctx.wakeups, settings=ctx.settings)

    # A resumed replica saw no deletion while paused: the orphan collector looks soon.
    resumed = asyncio.Event()

    def paused() -> None:
        # Also at every start with peering: Kopf starts paused until it has seen the peers.
        dropped = queue.drop_kind("Trigger")
        if dropped:
            log.info("paused by a peer of higher priority: %d Triggers left to it", dropped)

    pause = kopf_pause.install(paused, resumed.set)
    if pause is None and not options.standalone:
        raise PeeringError(
            "this Kopf version's peering pause cannot be followed (Triggers would stay "
            "active on a paused replica): run with --standalone, or the Kopf version "
            "Tidings locks"
        )
    triggers = handlers.TriggerEvents(
        ctx, queue, (lambda: pause.paused) if pause is not None else (lambda: False)
    )
    registry = handlers.build_registry(ctx, queue, triggers=triggers)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(options.kubeconfig)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        handlers.configure(settings)
        settings.peering.lifetime = options.peering_lifetime
        settings.peering.stealth = True

    log.info(
        "operator starting: %s, %s, Redis %s",
        f"namespaces {', '.join(namespaces)}" if namespaces else "all namespaces",
        "standalone"
        if options.standalone
        else f"peering {options.peering_name!r} priority {priority}",
        _redacted(options.require_redis_url()),
    )
    # Entries whose object vanished without its finalizer (tidings.operator.orphans).
    collector = asyncio.create_task(
        orphans.keep_collecting(
            redis, kube, namespaces, options.resync_interval, triggers, resumed
        ),
        name="orphan collector",
    )
    # Reports with news for status (a Trigger at rest is otherwise read seldom).
    news = asyncio.create_task(
        health.follow_news(
            redis,
            lambda namespace, name: queue.hurry(("Trigger", namespace, name)),
            lambda: queue.hurry_all("Trigger"),
        ),
        name="report news",
    )
    ready, stop = asyncio.Event(), asyncio.Event()
    signals = asyncio.create_task(take_signals(ready, stop, queue), name="signals")
    kopf_toggles.install()  # a restart with many objects: no O(N²) wake-ups
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=options.standalone,
            peering_name=None if options.standalone else options.peering_name,
            priority=priority,
            liveness_endpoint=f"http://{options.liveness}/healthz" if options.liveness else None,
            ready_flag=ready,
            stop_flag=stop,
        )
    finally:
        for task in (collector, news, signals):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await queue.close()
        await redis.aclose()
        kube.close()


async def take_signals(ready: asyncio.Event, stop: asyncio.Event, queue: WorkQueue) -> None:
    """Once Kopf has started (and set its own handlers), SIGTERM and SIGINT halt
    the work queue before Kopf stops: no round starts or logs a retry while
    Kopf stops its watches and daemons, and every daemon returns at once."""
    await ready.wait()
    loop = asyncio.get_running_loop()

    def stopping(signum: signal.Signals) -> None:
        log.info("%s received: the operator is stopping", signum.name)
        queue.halt()
        stop.set()
        # A thread, not the loop: it fires even if the loop is stuck. A daemon
        # thread: a graceful exit does not wait for it.
        deadline = threading.Timer(EXIT_DEADLINE, exit_now)
        deadline.daemon = True
        deadline.start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping, signum)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per
    core): the API client's 16 threads then hold memory the event loop freed.
    Two arenas cut the operator's RSS without slowing it (it is single-threaded
    but for those blocking calls)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


def exit_now() -> None:
    """The graceful stop took too long: leave what is in flight (every round is
    redone by the next operator) rather than be SIGKILLed."""
    log.error("not stopped %.0f s after the signal: exiting now", EXIT_DEADLINE)
    logging.shutdown()
    os._exit(1)


async def _api_version(configuration: Any) -> None:
    import kubernetes.client  # type: ignore[import-untyped]

    def call() -> None:
        with kubernetes.client.ApiClient(configuration) as client:
            kubernetes.client.VersionApi(client).get_code(_request_timeout=5)

    await asyncio.to_thread(call)


def _redacted(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
