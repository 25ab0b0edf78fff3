"""`tidings source KIND --eventsource NS/NAME`: run one EventSource's adapter.

Where the EventSource comes from, first match wins:
- `--manifest FILE…`: from files, with the Secret holding the DSN (local
  runs; no Lease then);
- $TIDINGS_EVENTSOURCE_SPEC: the spec as JSON, which the operator puts into
  the adapter Deployment (a spec change rolls the pod);
- otherwise the Kubernetes API (get on eventsources); the adapter then polls
  the object and restarts with the new spec when its generation moves.

When it reads from the API (not --manifest), the adapter stops for good, and
the command exits 0, once the EventSource is gone or has a deletionTimestamp:
the operator's finalizer drops the Postgres slot and publication, and an
adapter outliving its Deployment must not create them again.

With `--listen HOST:PORT` (or $TIDINGS_SOURCE_LISTEN) it serves /healthz,
/readyz and /metrics there (tidings.sources.health); without, no server.

In a cluster the adapter holds the Lease `tidings-source-<name>` in the
EventSource's namespace, so a second replica waits instead of streaming too.

The Postgres DSN comes from $TIDINGS_PG_DSN when set (the operator injects it
from the Secret with a secretKeyRef, so the adapter needs no right to read
Secrets), else from the Secret named in spec.postgres.connectionSecretRef.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidings.api.process import connect_redis, parse_listen
from tidings.api.settings import CommonSettings, SettingsError, add_arguments, load, setting
from tidings.sources import adapters, health
from tidings.sources.adapters import S3_ACCESS_ENV, S3_CA_ENV, S3_SECRET_ENV
from tidings.sources.errors import Forbidden

# What running an adapter needs (the API types, the compiler, the Kubernetes
# client on aiohttp, the Lease, Prometheus) is imported by the functions that
# use it: `--help` and a bad flag answer without it. MinIO comes only with an
# objectStore source.
if TYPE_CHECKING:
    from tidings.api.routes import CompiledSource
    from tidings.api.types import EventSource, EventSourceSpec, TriggerGrantSpec
    from tidings.sources.kubeapi import KubeApi
    from tidings.sources.lease import LeaseElector
    from tidings.sources.metrics import SourceSeries
    from tidings.sources.objectstore import Credentials

log = logging.getLogger("tidings.source")

DSN_ENV = "TIDINGS_PG_DSN"
SPEC_ENV = "TIDINGS_EVENTSOURCE_SPEC"
SPEC_POLL_SECONDS = 15.0
WANTED_CHECK_SECONDS = 10.0  # a hung API must not hold up a reconnect for long


class UsageError(Exception):
    """Bad arguments or an EventSource this command cannot run; exit code 2."""


@dataclass(frozen=True)
class SourceSettings(CommonSettings):
    kubeconfig: str | None = setting(
        "--kubeconfig",
        "KUBECONFIG",
        None,
        "kubeconfig file (unset: ~/.kube/config, else in-cluster)",
        kind=str,
    )
    identity: str = setting(
        "--identity",
        "TIDINGS_SOURCE_IDENTITY",
        "",
        "Lease holder identity (empty: $POD_NAME or the host name, and the pid)",
    )
    no_lease: bool = setting(
        "--no-lease", "TIDINGS_SOURCE_NO_LEASE", False, "do not hold the Lease (one replica only!)"
    )
    lease_seconds: float = setting(
        "--lease-seconds",
        "TIDINGS_SOURCE_LEASE_SECONDS",
        15.0,
        "Lease duration: how long a stopped holder blocks a standby",
    )
    spec_poll_seconds: float = setting(
        "--spec-poll-seconds",
        "TIDINGS_SOURCE_SPEC_POLL_SECONDS",
        SPEC_POLL_SECONDS,
        "how often to check the EventSource for a new generation, when read from the API",
    )
    listen: str = setting(
        "--listen",
        health.LISTEN_ENV,
        "",
        "serve /healthz, /readyz and /metrics on HOST:PORT (empty: no server)",
        metavar="HOST:PORT",
    )
    eventsource_spec: str = setting(
        "--eventsource-spec",
        SPEC_ENV,
        "",
        "the EventSource's spec as JSON (the operator sets it in adapter Deployments)",
        metavar="JSON",
    )
    redis_cluster: bool = setting(
        "--redis-cluster", "TIDINGS_REDIS_CLUSTER", False, "--redis-url points at a Redis Cluster"
    )
    # Environment only: the operator injects it from the Secret (secretKeyRef).
    pg_dsn: str = setting(None, DSN_ENV, "", "the Postgres DSN")
    s3_access_key_id: str = setting(
        None, S3_ACCESS_ENV, "", "objectStore: the access key id (else from the Secret)"
    )
    s3_secret_access_key: str = setting(
        None, S3_SECRET_ENV, "", "objectStore: the secret access key (else from the Secret)"
    )
    # The operator mounts caSecretRef's key as a file (no `get` on the Secret).
    s3_ca_file: str = setting(
        None, S3_CA_ENV, "", "objectStore: file with the endpoint's CA (else from caSecretRef)"
    )


def register(subparsers: Any, summary: str) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "source",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=adapters.ADAPTER_KINDS)
    parser.add_argument("--eventsource", required=True, metavar="NS/NAME")
    parser.add_argument(
        "-f",
        "--manifest",
        action="append",
        metavar="PATH",
        help="read the EventSource (and its Secret) from YAML files instead of the API",
    )
    add_arguments(parser, SourceSettings)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        try:
            settings = load(SourceSettings, args)
            if settings.redis_url:
                settings.redis_connection()
        except SettingsError as error:
            raise UsageError(str(error)) from None
        return asyncio.run(run(args, settings))
    except UsageError as error:
        print(f"tidings source: {error}", file=sys.stderr)
        return 2


def parse_ref(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise UsageError(f"--eventsource {text!r}: write NAMESPACE/NAME, e.g. shop/users-db")
    return namespace, name


@dataclass
class Loaded:
    eventsource: EventSource
    secrets: dict[tuple[str, str], dict[str, str]]

    @property
    def generation(self) -> int:
        return self.eventsource.metadata.generation


def eventsource_path(namespace: str, name: str) -> str:
    from tidings.api.types import GROUP, VERSION

    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/eventsources/{name}"


def being_deleted(metadata: dict[str, Any]) -> bool:
    return bool(metadata.get("deletionTimestamp"))


def eventsource_still_wanted(
    api: KubeApi, namespace: str, name: str
) -> Callable[[], Awaitable[bool]]:
    """Whether the EventSource exists and is not being deleted, from a GET.

    False only for a sure answer (404, a deletionTimestamp): any other error
    answers True, since a flaky API must not stop the capture."""
    from tidings.sources.kubeapi import ApiError

    path = eventsource_path(namespace, name)
    warned = False

    async def still_wanted() -> bool:
        nonlocal warned
        try:
            body = await api.request("GET", path, seconds=WANTED_CHECK_SECONDS)
        except ApiError as error:
            if error.status == 404:
                return False
            if error.status == 403 and not warned:
                # Not flakiness but a missing grant: say it once, loudly.
                warned = True
                log.warning(
                    "cannot get EventSource %s/%s (%s): the adapter cannot tell when it is "
                    "deleted and may re-create its replication slot after the operator "
                    "dropped it; grant its ServiceAccount `get` on eventsources.tidings.dev",
                    namespace,
                    name,
                    error.message,
                )
                return True
            log.debug("could not check EventSource %s/%s: %s", namespace, name, error)
            return True
        except Exception as error:  # timeouts, connection errors
            log.debug("could not check EventSource %s/%s: %r", namespace, name, error)
            return True
        return not being_deleted((body or {}).get("metadata") or {})

    return still_wanted


async def load_from_api(api: KubeApi, namespace: str, name: str) -> Loaded | None:
    from tidings.api.types import EventSource
    from tidings.sources.kubeapi import ApiError

    path = eventsource_path(namespace, name)
    try:
        body = await api.get(path)
    except ApiError as error:
        if error.status == 404:
            return None
        raise
    return Loaded(EventSource.model_validate(body), {})


def load_from_files(paths: list[str], namespace: str, name: str) -> Loaded:
    from tidings.api.manifests import ManifestError, load

    try:
        manifests = load(paths)
    except ManifestError as error:
        raise UsageError(str(error)) from None
    eventsource = manifests.sources.get((namespace, name))
    if eventsource is None:
        found = ", ".join(f"{ns}/{n}" for ns, n in manifests.sources) or "none"
        raise UsageError(
            f"no EventSource {namespace}/{name} in {', '.join(paths)} (found: {found})"
        )
    return Loaded(eventsource, manifests.secrets)


def compile_adapter_source(eventsource: EventSource) -> CompiledSource:
    """The compiled form adapters write with (stream key, retention). Adapter
    kinds use no Secrets or Services in compiling, so the World is empty."""
    from tidings.api.routes import compile_source
    from tidings.api.sealing import Sealer, new_key

    class _Empty:
        def source(self, namespace: str, name: str) -> EventSourceSpec | None:
            return None

        def service_ports(self, namespace: str, name: str) -> list[int] | None:
            return None

        def secret(self, namespace: str, name: str, key: str) -> str | None:
            return None

        def grants(self, namespace: str) -> list[TriggerGrantSpec]:
            return []

    meta = eventsource.metadata
    extra = meta.model_extra or {}
    return compile_source(
        namespace=meta.namespace,
        name=meta.name,
        spec=eventsource.spec,
        world=_Empty(),
        sealer=Sealer(new_key()),
        uid=str(extra.get("uid", "")),
        generation=meta.generation,
    )


async def resolve_dsn(loaded: Loaded, api: KubeApi | None, given: str = "") -> str:
    from tidings.sources.kubeapi import ApiError

    if given:
        return given
    spec = loaded.eventsource.spec.postgres
    assert spec is not None
    namespace = loaded.eventsource.metadata.namespace
    ref = spec.connection_secret_ref
    where = f"spec.postgres.connectionSecretRef: Secret {namespace}/{ref.name} key {ref.key!r}"
    if api is None:
        value = loaded.secrets.get((namespace, ref.name), {}).get(ref.key)
        if value is None:
            raise UsageError(f"{where} is not in the manifest files; add it or set {DSN_ENV}")
        return value
    try:
        secret = await api.get(f"/api/v1/namespaces/{namespace}/secrets/{ref.name}")
    except ApiError as error:
        raise UsageError(f"{where}: {error.message}") from None
    encoded = (secret.get("data") or {}).get(ref.key)
    if encoded is None:
        raise UsageError(f"{where} not found; add the key or fix the reference")
    return base64.b64decode(encoded).decode()


async def resolve_s3_credentials(
    loaded: Loaded, api: KubeApi | None, settings: SourceSettings
) -> Credentials | None:
    """The access keys of a poll source and the CA of its https endpoint: the
    environment (the operator injects the keys with secretKeyRef and mounts the
    CA as a file), else the Secrets; None when one of them or a key is missing
    (the adapter reports SecretNotFound and waits for a new spec)."""
    from tidings.sources.kubeapi import ApiError
    from tidings.sources.objectstore import Credentials

    spec = loaded.eventsource.spec.object_store
    assert spec is not None
    namespace = loaded.eventsource.metadata.namespace

    async def secret_data(field: str, name: str) -> dict[str, str] | None:
        if api is None:
            return loaded.secrets.get((namespace, name), {})
        try:
            secret = await api.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as error:
            log.error("spec.objectStore.%s: %s", field, error.message)
            return None
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    ca_pem: str | None = None
    if settings.s3_ca_file:
        try:
            ca_pem = await asyncio.to_thread(Path(settings.s3_ca_file).read_text)
        except OSError as error:
            log.error("$%s: %s", S3_CA_ENV, error)
            return None
    elif spec.ca_secret_ref is not None:
        ca_ref = spec.ca_secret_ref
        ca_pem = ((await secret_data("caSecretRef", ca_ref.name)) or {}).get(ca_ref.key)
        if not ca_pem:
            log.error(
                "spec.objectStore.caSecretRef: Secret %s/%s has no key %r",
                namespace,
                ca_ref.name,
                ca_ref.key,
            )
            return None
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        return Credentials(settings.s3_access_key_id, settings.s3_secret_access_key, ca_pem)
    ref = spec.credentials_secret_ref
    if ref is None:
        return None
    data = await secret_data("credentialsSecretRef", ref.name) or {}
    access, secret_key = data.get(ref.access_key_id_key), data.get(ref.secret_access_key_key)
    if not access or not secret_key:
        return None
    return Credentials(access, secret_key, ca_pem)


async def run(args: argparse.Namespace, settings: SourceSettings) -> int:
    namespace, name = parse_ref(args.eventsource)
    if not settings.redis_url:
        raise UsageError("no Redis: pass --redis-url or set REDIS_URL")
    listen = None
    if settings.listen:
        try:
            listen = parse_listen(settings.listen)
        except ValueError as error:
            raise UsageError(f"{error} (or ${health.LISTEN_ENV})") from None
    from prometheus_client import CollectorRegistry

    from tidings.sources.lease import LeaseElector, default_identity, lease_name
    from tidings.sources.metrics import SourceMetrics, attach

    api = None if args.manifest else _kube_api(settings.kubeconfig)
    # Postgres only: its adapter creates a slot and a publication that must not
    # outlive the EventSource (and only it is granted `get` on it with the spec
    # in its env).
    still_wanted = None
    if api is not None and args.kind == "postgres":
        still_wanted = eventsource_still_wanted(api, namespace, name)
    redis = connect_redis(settings.redis_connection(), cluster=settings.redis_cluster)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    elector = None
    if api is not None and not settings.no_lease:
        elector = LeaseElector(
            api,
            namespace,
            lease_name(name),
            settings.identity or default_identity(),
            duration=settings.lease_seconds,
            renew_every=settings.lease_seconds / 3,
            retry_every=min(2.0, settings.lease_seconds / 3),
        )
    series: SourceSeries | None = None
    server = None
    try:
        if listen is not None:
            registry = CollectorRegistry()
            series = SourceMetrics(registry).of(f"{namespace}/{name}")
            try:
                server = await health.serve(registry, series, *listen)
            except OSError as error:
                raise UsageError(f"--listen {settings.listen}: {error}") from None
            log.info("serving /healthz, /readyz, /metrics on %s:%d", *listen)
        while not stopping.is_set():
            if elector is not None:
                if series is not None:
                    # Local only: the Redis status is the Lease holder's to write.
                    series.set_state("Standby", "WaitingForLease")
                try:
                    if not await _until(elector.acquire(), stopping):
                        break
                except Forbidden as error:
                    # An adapter that never starts is worse: the operator runs one
                    # replica, and slots and schedule guards stay exclusive anyway.
                    log.error("%s; running WITHOUT the Lease: keep to one replica", error)
                    elector = None
                if series is not None:
                    series.set_state("")  # no longer a standby: starting
            if still_wanted is not None and not await still_wanted():
                log.info("EventSource %s/%s is being deleted: exiting", namespace, name)
                break
            loaded = await _load(args.manifest, settings.eventsource_spec, api, namespace, name)
            if loaded is None:
                log.info("EventSource %s/%s is gone: exiting", namespace, name)
                break
            kind = loaded.eventsource.spec.kind
            if kind != args.kind:
                raise UsageError(
                    f"EventSource {namespace}/{name} is a {kind} source, not {args.kind}"
                )
            dsn = await resolve_dsn(loaded, api, settings.pg_dsn) if kind == "postgres" else None
            s3_credentials = (
                await resolve_s3_credentials(loaded, api, settings)
                if kind == "objectStore"
                else None
            )
            adapter = adapters.build(
                compile_adapter_source(loaded.eventsource),
                loaded.eventsource.spec,
                redis,
                dsn=dsn,
                s3_credentials=s3_credentials,
                kubeconfig=settings.kubeconfig,
                still_wanted=still_wanted,
            )
            if series is not None:
                attach(adapter, series)
            outcome = await _run_until(
                adapter,
                stopping,
                elector,
                api if not settings.eventsource_spec else None,
                loaded,
                settings.spec_poll_seconds,
            )
            log.info("adapter of %s/%s stopped: %s", namespace, name, outcome)
            # A Postgres adapter that saw the deletion stopped for good: no restart.
            if outcome == "deleted" or getattr(adapter, "deleted", False):
                break
    finally:
        if server is not None:
            await server.cleanup()
        if elector is not None:
            await elector.release()
        if api is not None:
            await api.close()
        await redis.aclose()
    return 0


def load_from_env(text: str, namespace: str, name: str) -> Loaded:
    from tidings.api.types import EventSource, EventSourceSpec, ObjectMeta

    try:
        spec = EventSourceSpec.model_validate(json.loads(text))
    except ValueError as error:
        raise UsageError(f"${SPEC_ENV} is not a valid EventSource spec: {error}") from None
    meta = ObjectMeta(name=name, namespace=namespace)
    return Loaded(EventSource(metadata=meta, spec=spec), {})


def _kube_api(kubeconfig: str | None) -> KubeApi:
    from tidings.sources.kubeapi import KubeApi

    try:
        return KubeApi.from_config(kubeconfig)
    except Exception as error:  # kubernetes.config raises its own ConfigException
        raise UsageError(
            f"no usable Kubernetes configuration ({error}); pass --kubeconfig, run in a "
            "cluster, or read the EventSource from files with --manifest"
        ) from None


async def _load(
    manifests: list[str] | None, spec: str, api: KubeApi | None, namespace: str, name: str
) -> Loaded | None:
    if manifests:
        return load_from_files(manifests, namespace, name)
    if spec:
        return load_from_env(spec, namespace, name)
    assert api is not None
    return await load_from_api(api, namespace, name)


async def _until(work: Any, stopping: asyncio.Event) -> bool:
    """Run `work` unless `stopping` comes first; True if the work finished."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    for pending in (task, stop):
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
    if not task.done() or task.cancelled():
        return False
    task.result()  # the work's own exception, if any
    return True


async def _run_until(
    adapter: adapters.Adapter,
    stopping: asyncio.Event,
    elector: LeaseElector | None,
    spec_api: KubeApi | None,
    loaded: Loaded,
    poll: float,
) -> str:
    """Run the adapter until a signal, a lost Lease or a changed EventSource
    (polled through `spec_api`, unless the spec came from files or the env)."""
    running = asyncio.ensure_future(adapter.run())
    watchers: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(stopping.wait()): "signal",
        running: "adapter returned",
    }
    if elector is not None:
        watchers[asyncio.ensure_future(elector.hold())] = "lease lost"
    if spec_api is not None:
        watchers[asyncio.ensure_future(_spec_changes(spec_api, loaded, poll))] = "spec"
    done, _ = await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
    first = next(iter(done))
    outcome = watchers[first]
    if outcome == "spec":
        outcome = first.result()
    await adapter.stop()
    await running
    for task in watchers:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return str(outcome)


async def _spec_changes(api: KubeApi, loaded: Loaded, every: float) -> str:
    """Returns "changed" when the EventSource's generation moves, "deleted" when
    it is gone or being deleted."""
    meta = loaded.eventsource.metadata
    while True:
        await asyncio.sleep(every)
        try:
            current = await load_from_api(api, meta.namespace, meta.name)
        except Exception as error:  # the API being away is no reason to stop streaming
            log.warning("could not check EventSource %s/%s: %s", meta.namespace, meta.name, error)
            continue
        if current is None or being_deleted(current.eventsource.metadata.model_dump()):
            return "deleted"
        if current.generation != loaded.generation:
            return "changed"
