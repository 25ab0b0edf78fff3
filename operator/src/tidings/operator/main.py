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
import logging
import os
import random
import sys
from typing import Any

import kopf
import redis.asyncio as aioredis
from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]

from tidings.api import sealing
from tidings.api.process import add_common_options
from tidings.operator import handlers, orphans, peering
from tidings.operator.adapters import DEFAULT_RESOURCES, AdapterSettings, parse_resources
from tidings.operator.context import Context, Settings
from tidings.operator.kube import Kube, connection_info, load_config
from tidings.operator.publishing import StableSealer

log = logging.getLogger("tidings.operator")

DEFAULT_IMAGE = "tidings:latest"
# Redis connections shared by all controllers: enough for bursts at start,
# bounded so a thousand daemons cannot open a thousand connections.
REDIS_CONNECTIONS = 32


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "operator",
        help="run the operator: EventSources and Triggers into the routing table, with status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(parser)
    env = os.environ.get
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--kubeconfig", default=None, help="default: in-cluster, else $KUBECONFIG")
    parser.add_argument(
        "--seal-key-file",
        default=None,
        help=f"file holding the seal key (default: ${sealing.ENV_KEY_FILE}, "
        f"else ${sealing.ENV_KEY})",
    )
    parser.add_argument(
        "--image",
        default=env("TIDINGS_IMAGE", DEFAULT_IMAGE),
        help="image of adapter Deployments (default: $TIDINGS_IMAGE, else %(default)s)",
    )
    parser.add_argument(
        "--adapter-resources",
        default=None,
        metavar="JSON",
        help="resources of adapter containers, e.g. "
        '\'{"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}\' '
        "(default: 50m CPU and 64Mi requested, 256Mi memory limit)",
    )
    parser.add_argument(
        "--adapter-image-pull-policy",
        choices=["Always", "IfNotPresent", "Never"],
        default="IfNotPresent",
        help="imagePullPolicy of adapter containers (default: %(default)s)",
    )
    parser.add_argument(
        "--adapter-service-account",
        default=env("TIDINGS_ADAPTER_SERVICE_ACCOUNT"),
        help="ServiceAccount adapter pods run as, in the EventSource's namespace",
    )
    parser.add_argument(
        "--adapter-redis-url",
        default=env("TIDINGS_ADAPTER_REDIS_URL"),
        help="Redis URL adapters use (default: --redis-url)",
    )
    parser.add_argument(
        "--ingest-service",
        default=env("TIDINGS_INGEST_SERVICE", "tidings-ingest"),
        help="the ingest Service, for http sources' status.url (default: %(default)s)",
    )
    parser.add_argument(
        "--ingest-namespace",
        default=env("TIDINGS_INGEST_NAMESPACE", "tidings"),
        help="namespace of the ingest Service (default: %(default)s)",
    )
    parser.add_argument(
        "--health-interval",
        type=float,
        default=5.0,
        help="seconds between reads of each Trigger's delivery report and each source "
        "adapter's report (default: %(default)s)",
    )
    parser.add_argument(
        "--wal-check-interval",
        type=float,
        default=60.0,
        help="seconds between the operator's own reads of a Postgres slot's retained WAL "
        "while its adapter is not running (default: %(default)s)",
    )
    parser.add_argument(
        "--cleanup-attempts",
        type=int,
        default=10,
        help="attempts at dropping a deleted Postgres EventSource's replication slot and "
        "publication (delays double up to 60 s, ~4 min in all) before releasing it with a "
        "Warning Event (default: %(default)s)",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=120.0,
        help="a delivery report older than this many seconds is shown as stale",
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=300.0,
        help="seconds between full re-reconciles of each object without any event: the "
        "safety net for a Redis that lost its data (default: %(default)s)",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="run without peering (then run exactly one replica)",
    )
    parser.add_argument(
        "--peering-name",
        default=peering.DEFAULT_NAME,
        help="peering object shared by replicas (default: %(default)s)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest live replica is active (default: random)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds after which a silent (killed) replica is presumed dead",
    )
    parser.add_argument(
        "--liveness",
        default=env("TIDINGS_OPERATOR_LIVENESS"),
        metavar="HOST:PORT",
        help="serve a liveness probe at http://HOST:PORT/healthz",
    )
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
    if not args.redis_url:
        log.error("no Redis: pass --redis-url or set REDIS_URL")
        return 2
    if args.adapter_resources:
        try:
            parse_resources(args.adapter_resources)
        except ValueError as error:
            log.error("%s", error)
            return 2
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # Kopf logs every handler call at INFO ("Handler ... succeeded"): thousands
        # of lines per minute at scale. Our controllers log what changes.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        sealer = StableSealer(sealing.load_key(args.seal_key_file))
    except (sealing.SealError, OSError) as error:
        log.error("%s", error)
        return 2
    try:
        asyncio.run(serve(args, sealer))
    except PeeringError as error:
        log.error("%s", error)
        return 2
    return 0


class PeeringError(RuntimeError):
    pass


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        adapters=AdapterSettings(
            image=args.image,
            redis_url=args.adapter_redis_url or args.redis_url,
            service_account=args.adapter_service_account,
            image_pull_policy=args.adapter_image_pull_policy,
            resources=(
                parse_resources(args.adapter_resources)
                if args.adapter_resources
                else dict(DEFAULT_RESOURCES)
            ),
        ),
        ingest_service=args.ingest_service,
        ingest_namespace=args.ingest_namespace,
        health_interval=args.health_interval,
        stale_after=args.stale_after,
        resync_interval=args.resync_interval,
        cleanup_attempts=max(1, args.cleanup_attempts),
        wal_check_interval=args.wal_check_interval,
    )


async def ensure_peering(kube: Kube, name: str, namespaces: list[str]) -> None:
    """The peering objects must exist before Kopf starts, or peering silently does nothing."""
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


async def serve(args: argparse.Namespace, sealer: StableSealer) -> None:
    kube = Kube(load_config(args.kubeconfig))
    redis = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            args.redis_url, max_connections=REDIS_CONNECTIONS, timeout=None
        )
    )
    namespaces: list[str] = args.namespace
    priority = args.priority if args.priority is not None else random.randint(1, 2**31 - 1)
    if not args.standalone:
        await ensure_peering(kube, args.peering_name, namespaces)
    ctx = Context(settings=settings_from(args), redis=redis, kube=kube, sealer=sealer)
    registry = handlers.build_registry(ctx)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(args.kubeconfig)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        handlers.configure(settings)
        settings.peering.lifetime = args.peering_lifetime
        settings.peering.stealth = True

    log.info(
        "operator starting: %s, %s, Redis %s",
        f"namespaces {', '.join(namespaces)}" if namespaces else "all namespaces",
        "standalone" if args.standalone else f"peering {args.peering_name!r} priority {priority}",
        _redacted(args.redis_url),
    )
    # Entries whose object vanished without its finalizer (tidings.operator.orphans).
    collector = asyncio.create_task(
        orphans.keep_collecting(redis, kube, namespaces, args.resync_interval),
        name="orphan collector",
    )
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering_name,
            priority=priority,
            liveness_endpoint=f"http://{args.liveness}/healthz" if args.liveness else None,
        )
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await redis.aclose()
        kube.close()


def _redacted(url: str) -> str:
    """A Redis URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
