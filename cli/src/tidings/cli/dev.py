"""`tidings dev -f PATH…`: the whole data plane in one process, from manifest files.

It loads EventSource, Trigger, Replay and Secret manifests (tidings.api.manifests),
compiles them with the operator's compiler and publishes them to the routing
table, then serves ingest (S3 notifications of objectStore notify sources
too), runs the delivery engine and the adapters of postgres / kubernetes /
schedule / objectStore poll EventSources — the same code a cluster runs,
in one process, minus the operator. Files are polled every second; a change is
compiled and published while everything keeps running. A reload with errors is
not applied (the last good manifests keep running) until the files are fixed.

Redis: $REDIS_URL / --redis-url, else a private `redis-server` (AOF on, data in
.tidings/dev-redis) when one is on PATH. `tidings dev` owns the routing table
of the Redis it uses: do not point it at a cluster's Redis.

Secrets: the seal key comes from $TIDINGS_SEAL_KEY(_FILE), else one is made in
.tidings/dev-seal.key. An http (or objectStore notify) source with neither
token nor HMAC Secret and no allowAnonymous gets a generated token (the
operator would make the Secret `<name>-ingest-token`), kept in
.tidings/dev-tokens.json. The ingest URL and
tokens are written to .tidings/dev-session.json for `tidings send`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tidings.api import keys, sealing, table
from tidings.api import manifests as manifest_files
from tidings.api.destinations import LOCAL, DestinationPolicy
from tidings.api.events import CloudEvent
from tidings.api.groups import ensure_group
from tidings.api.manifests import Compiled, LocalServices, ManifestError, Manifests
from tidings.api.process import connect_redis, event_loop_choice, parse_listen, run_event_loop
from tidings.api.replays import cancel_run, read_progress
from tidings.api.routes import (
    DEAD_LETTER_MAX_EVENTS,
    CompiledReplay,
    CompiledSource,
    CompileError,
    Route,
    compile_replay,
    ingest_token_secret_name,
)
from tidings.api.sealing import Sealer, StableSealer
from tidings.api.settings import (
    DestinationSettings,
    RedisConnection,
    ServeSettings,
    add_arguments,
    load,
    setting,
)
from tidings.api.text import text
from tidings.api.types import EventSourceSpec, Replay
from tidings.cli.redis_server import RedisServer, RedisServerError
from tidings.cli.send import SESSION_FILE
from tidings.dispatcher.delivery import Result
from tidings.dispatcher.engine import Dispatcher
from tidings.dispatcher.ingest import build_app
from tidings.dispatcher.routing import TableWatcher
from tidings.dispatcher.streams import AppendResult
from tidings.sources import adapters
from tidings.sources.adapters import Adapter
from tidings.sources.metrics import SourceMetrics, SourceSeries, attach

if TYPE_CHECKING:
    from tidings.sources.objectstore import Credentials as S3Credentials

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
CONSOLE_PATH = "/console/"


def say(line: str) -> None:
    """User-facing output: stdout, one line, flushed (logs go to stderr)."""
    print(line, flush=True)


def dev_seal_key(state: Path) -> str:
    """$TIDINGS_SEAL_KEY(_FILE) when set, else a key kept in the state dir."""
    with contextlib.suppress(sealing.SealError):
        return sealing.load_key()
    path = state / "dev-seal.key"
    if not path.exists():
        state.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(sealing.new_key() + "\n")
    return path.read_text().strip()


def client_url(host: str, port: int) -> str:
    """How a local client reaches a server bound to host:port."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


# --- manifests -> routing table ---------------------------------------------------------


@dataclass
class Credentials:
    """What a producer needs per http source; written to the session file."""

    tokens: dict[str, str] = field(default_factory=dict)
    hmac: dict[str, dict[str, str]] = field(default_factory=dict)
    webhooks: dict[str, str] = field(default_factory=dict)  # a whsec_ secret per source


def add_generated_tokens(manifests: Manifests, state: Path) -> list[str]:
    """Give http sources that need the operator-generated token Secret one,
    stable across restarts. Returns the ids of sources that got a new one."""
    path = state / "dev-tokens.json"
    try:
        stored: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    generated = []
    for (namespace, name), source in manifests.sources.items():
        auth = source.spec.ingest_auth  # http, and objectStore in notify mode
        if auth is None or not auth.generated_token:
            continue
        secret = (namespace, ingest_token_secret_name(name))
        if "token" in manifests.secrets.get(secret, {}):
            continue
        source_id = f"{namespace}/{name}"
        if source_id not in stored:
            stored[source_id] = secrets.token_urlsafe(24)
            generated.append(source_id)
        manifests.secrets.setdefault(secret, {})["token"] = stored[source_id]
    if generated:
        state.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(stored, indent=2) + "\n")
    return generated


def credentials(manifests: Manifests) -> Credentials:
    found = Credentials()
    world = manifest_files.ManifestWorld(manifests)
    for (namespace, name), source in manifests.sources.items():
        http = source.spec.ingest_auth
        if http is None:
            continue
        key = f"{namespace}/{name}"
        ref = http.token_secret_ref
        if http.generated_token:
            ref_name, ref_key = ingest_token_secret_name(name), "token"
        elif ref is not None:
            ref_name, ref_key = ref.name, ref.key
        else:
            ref_name = ref_key = ""
        token = world.secret(namespace, ref_name, ref_key) if ref_name else None
        if token is not None:
            found.tokens[key] = token
        if http.hmac_secret_ref is not None:
            hmac_ref = http.hmac_secret_ref
            secret = world.secret(namespace, hmac_ref.name, hmac_ref.key)
            if secret is not None:
                found.hmac[key] = {"secret": secret, "header": http.hmac_header}
                if http.hmac_timestamp_header is not None:
                    found.hmac[key]["timestampHeader"] = http.hmac_timestamp_header
        if http.standard_webhooks is not None:
            webhooks_ref = http.standard_webhooks.secret_ref
            secrets_value = world.secret(namespace, webhooks_ref.name, webhooks_ref.key)
            if secrets_value and secrets_value.split():
                found.webhooks[key] = secrets_value.split()[0]
    return found


async def publish(redis: Redis, compiled: Compiled) -> list[str]:
    """Make the routing table hold exactly `compiled`; returns one line per change."""
    current = await table.load(redis)
    changes: list[str] = []
    for source_id, source in compiled.sources.items():
        if await table.put_source(redis, source) is not None:
            verb = "~" if source_id in current.sources else "+"
            changes.append(f"{verb} EventSource {source_id}")
    for route_id, route in compiled.routes.items():
        if await table.put_route(redis, route) is not None:
            verb = "~" if route_id in current.routes else "+"
            changes.append(f"{verb} Trigger {route_id} -> {route.subscriber_url}")
    for route_id, route in current.routes.items():
        if route_id not in compiled.routes:
            await table.delete_route(redis, route.namespace, route.name)
            changes.append(f"- Trigger {route_id}")
    for source_id, source in current.sources.items():
        if source_id not in compiled.sources:
            await table.delete_source(redis, source.namespace, source.name)
            changes.append(f"- EventSource {source_id}")
    return changes


def replay_uid(replay: Replay) -> str:
    """A stable uid for a Replay manifest: the same file does not run twice (a
    Replay runs once), an edited spec is a new Replay."""
    digest = hashlib.sha256(replay.spec.model_dump_json(by_alias=True).encode()).hexdigest()
    return f"dev-{digest[:16]}"


async def publish_replays(redis: Redis, manifests: Manifests, compiled: Compiled) -> list[str]:
    """Hand the Replays of the files to the engine (as the operator does in a
    cluster); one line per new one. Replays no longer in the files are cancelled."""
    changes: list[str] = []
    wanted: dict[str, CompiledReplay] = {}
    for (namespace, name), replay in sorted(manifests.replays.items()):
        route = compiled.routes.get(f"{namespace}/{replay.spec.trigger}")
        if route is None:
            changes.append(
                f"Replay {namespace}/{name} waits: Trigger {namespace}/{replay.spec.trigger} "
                "is not loaded"
            )
            continue
        try:
            job = compile_replay(
                namespace=namespace,
                name=name,
                uid=replay_uid(replay),
                spec=replay.spec,
                route=route,
            )
        except CompileError as error:
            changes.append(f"Replay {namespace}/{name} not compiled: {error.message}")
            continue
        wanted[job.id] = job
    current = {
        text(k): text(v)
        for k, v in (await redis.hgetall(keys.REPLAY_JOBS)).items()  # type: ignore[misc]
    }
    for replay_id, job in wanted.items():
        value = job.model_dump_json()
        if current.get(replay_id) != value:
            if replay_id in current:  # an edited spec is a new Replay: the old one goes
                await _cancel_replay(redis, compiled, current[replay_id], unless_uid=job.uid)
            await redis.hset(keys.REPLAY_JOBS, replay_id, value)  # type: ignore[misc]
            changes.append(f"+ Replay {replay_id}")
    for replay_id in current.keys() - wanted.keys():
        await redis.hdel(keys.REPLAY_JOBS, replay_id)  # type: ignore[misc]
        await _cancel_replay(redis, compiled, current[replay_id])
        changes.append(f"- Replay {replay_id}")
    return changes


async def _cancel_replay(
    redis: Redis, compiled: Compiled, job: str, *, unless_uid: str = ""
) -> None:
    """As deleting a Replay in a cluster does: its run stops, and what it handed to
    the Trigger that is not delivered yet is withdrawn, dead letters back into the
    DLQ (tidings.api.replays). A completed run is kept: the same file put back does
    not run again."""
    try:
        gone = CompiledReplay.model_validate_json(job)
    except ValueError:
        return  # not a job this version reads: the engine does not run it either
    if gone.uid == unless_uid:
        return
    ns, source, trigger = gone.namespace, gone.source, gone.trigger
    progress = await read_progress(redis, ns, source, trigger, gone.name)
    if progress is None or progress.uid != gone.uid or not progress.completed:
        route = compiled.routes.get(gone.trigger_id)
        dlq_max = DEAD_LETTER_MAX_EVENTS
        if route is not None and route.source == source:
            dlq_max = route.delivery.dead_letter_max_events
        await cancel_run(redis, ns, source, trigger, gone.name, dead_letter_max_events=dlq_max)


def example_type(routes: list[Route]) -> str:
    """An event type the first Trigger's filter lets through, for the hint we print."""
    for route in sorted(routes, key=lambda r: r.id):
        if route.filter.types:
            return route.filter.types[0]
        if "type" in route.filter.prefix:
            return route.filter.prefix["type"] + "example"
    return "com.example.hello"


# --- the delivery engine ---------------------------------------------------------------


EngineStop = Callable[[], Awaitable[None]]
# Deliveries in flight get this long to finish when dev stops (Ctrl-C).
STOP_GRACE = 5.0


def attempt_line(route: Route, event: dict[str, Any], result: Result, op: str) -> str:
    """One line per delivery attempt, for the terminal."""
    took = f"{result.seconds * 1000:.0f} ms"
    what = f"{event.get('type', '?')} id={event.get('id', '?')}"
    if result.failure is None:
        return (
            f"-> {route.id}: delivered {what} to {route.subscriber_url} ({result.status}, {took})"
        )
    outcome = {"retry": "will retry", "dead": "dead-lettered"}.get(op, op)
    return f"-> {route.id}: {what} failed: {result.failure.message} ({took}); {outcome}"


async def start_engine(
    redis: Redis,
    watcher: TableWatcher,
    registry: CollectorRegistry,
    sealer: Sealer,
    destinations: DestinationPolicy = LOCAL,
) -> EngineStop:
    """The delivery engine of `tidings dispatcher`, in this process, printing
    one line per attempt."""
    dispatcher = Dispatcher(
        redis,
        watcher,
        consumer=f"dev-{os.getpid()}",
        sealer=sealer,
        registry=registry,
        on_attempt=lambda *attempt: say(attempt_line(*attempt)),
        destinations=destinations,
    )
    await dispatcher.start()

    async def stop() -> None:
        stopping = asyncio.ensure_future(dispatcher.stop(grace=STOP_GRACE))
        while not stopping.done():
            await asyncio.wait({stopping}, timeout=0.5)
            # Dispatcher.stop cancels its background loops once; on Python 3.11 a
            # cancel landing in redis-py's asyncio.wait_for can be lost and the
            # loop runs on. Cancelling again is harmless and ends them.
            for task in getattr(dispatcher, "_tasks", []):
                task.cancel()

    return stop


async def create_groups(redis: Redis, routes: Iterable[Route]) -> None:
    """Create new Triggers' consumer groups now, where their startFrom says, as the
    engine would: an event sent right after dev says a Trigger is there must
    reach it, even if the engine's worker for it has not started yet."""
    for route in routes:
        await ensure_group(redis, route.stream, route.group, route.cursor_start)


# --- source adapters (postgres, kubernetes, schedule) ---------------------------------


@dataclass
class RunningAdapter:
    fingerprint: str  # the spec (and DSN) it was built from
    adapter: Adapter
    task: asyncio.Task[None]
    series: SourceSeries | None


def s3_credentials(
    world: manifest_files.ManifestWorld, namespace: str, spec: EventSourceSpec
) -> S3Credentials | None:
    """A poll source's access keys from its credentialsSecretRef in the manifests,
    and its endpoint's CA from caSecretRef (None: missing, and the adapter
    reports SecretNotFound)."""
    store = spec.object_store
    if store is None or store.credentials_secret_ref is None:
        return None
    from tidings.sources.objectstore import Credentials  # the MinIO SDK only when needed

    ref = store.credentials_secret_ref
    access = world.secret(namespace, ref.name, ref.access_key_id_key)
    secret = world.secret(namespace, ref.name, ref.secret_access_key_key)
    ca_pem = None
    if store.ca_secret_ref is not None:
        ca_pem = world.secret(namespace, store.ca_secret_ref.name, store.ca_secret_ref.key)
        if not ca_pem:
            return None
    return Credentials(access, secret, ca_pem) if access and secret else None


class SourceAdapters:
    """The adapters of the loaded non-http EventSources, in this process, as
    `tidings source` runs them in a cluster; restarted when their spec changes.
    Their series (tidings_source_*, tidings.sources.metrics) go into `registry`,
    which dev serves on /metrics, as each adapter's pod serves its own."""

    def __init__(self, redis: Redis, registry: CollectorRegistry | None = None) -> None:
        self.redis = redis
        self.metrics = SourceMetrics(registry) if registry is not None else None
        self.running: dict[str, RunningAdapter] = {}

    async def sync(self, manifests: Manifests, compiled: Compiled) -> None:
        world = manifest_files.ManifestWorld(manifests)
        wanted: dict[
            str, tuple[str, CompiledSource, EventSourceSpec, str | None, S3Credentials | None]
        ] = {}
        for (namespace, name), eventsource in sorted(manifests.sources.items()):
            spec = eventsource.spec
            source = compiled.sources.get(f"{namespace}/{name}")
            if spec.ingest_auth is not None or source is None:
                # http and objectStore notify events come through ingest; compile
                # errors are printed
                continue
            dsn = None
            if spec.postgres is not None:
                ref = spec.postgres.connection_secret_ref
                dsn = world.secret(namespace, ref.name, ref.key)
            s3 = s3_credentials(world, namespace, spec)
            fingerprint = spec.model_dump_json() + (dsn or "") + repr(s3)
            wanted[source.id] = (fingerprint, source, spec, dsn, s3)
        for source_id, running in list(self.running.items()):
            if source_id not in wanted or wanted[source_id][0] != running.fingerprint:
                await self.stop_one(source_id)
        for source_id, (fingerprint, source, spec, dsn, s3) in wanted.items():
            if source_id in self.running:
                continue
            try:
                adapter = adapters.build(source, spec, self.redis, dsn=dsn, s3_credentials=s3)
            except Exception as error:  # kubeconfig, DSN …: say why, keep the rest running
                say(f"tidings dev: the {spec.kind} adapter of {source_id} cannot start: {error}")
                continue
            series = None
            if self.metrics is not None:
                series = self.metrics.of(source_id)
                attach(adapter, series)
            task = asyncio.create_task(adapter.run(), name=f"adapter {source_id}")
            self.running[source_id] = RunningAdapter(fingerprint, adapter, task, series)
            say(f"tidings dev: started the {spec.kind} adapter of EventSource {source_id}")

    async def stop_one(self, source_id: str) -> None:
        running = self.running.pop(source_id)
        await running.adapter.stop()
        await _bounded(running.task, 10, f"the adapter of {source_id}")
        if running.series is not None:
            running.series.set_state("Stopped")
        say(f"tidings dev: stopped the {running.adapter.kind} adapter of EventSource {source_id}")

    async def stop(self) -> None:
        for source_id in list(self.running):
            await self.stop_one(source_id)


# --- the session ----------------------------------------------------------------------


@dataclass
class DevOptions:
    paths: list[Path]
    listen: str = "0.0.0.0:8080"
    redis_url: str | None = None
    # REDIS_URL's user, password and TLS settings (None: the private redis-server).
    redis: RedisConnection | None = None
    state: Path = Path(".tidings")
    services: LocalServices = field(default_factory=LocalServices)
    poll_interval: float = POLL_INTERVAL
    destinations: DestinationPolicy = LOCAL


class DevSession:
    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self.state = options.state
        self.redis_server: RedisServer | None = None
        self.redis: Redis | None = None
        self.watcher: TableWatcher | None = None
        self.runner: web.AppRunner | None = None
        self.engine_stop: EngineStop | None = None
        self.sealer: StableSealer | None = None
        self.url = ""
        self.fingerprint: dict[str, tuple[int, int]] = {}
        self.loaded = False
        self.credentials = Credentials()
        self.adapters: SourceAdapters | None = None
        self.manifests: Manifests | None = None
        self.compiled: Compiled | None = None

    async def start(self) -> None:
        options = self.options
        self.sealer = StableSealer(dev_seal_key(self.state))
        redis_url = options.redis_url
        if redis_url:
            say(f"tidings dev: Redis {redis_url}")
        else:
            self.redis_server = RedisServer(self.state / "dev-redis")
            # Started from the main thread on purpose: the child's parent-death signal
            # follows the thread that forked it, and a pool thread may exit first.
            redis_url = self.redis_server.start()
            say(
                f"tidings dev: started redis-server on {redis_url} "
                f"(AOF on, data in {self.state / 'dev-redis'})"
            )
        target = options.redis if options.redis is not None and options.redis_url else redis_url
        self.redis = connect_redis(target, socket_timeout=5)
        await self.redis.ping()
        await self.reload(initial=True)
        self.watcher = TableWatcher(self.redis, resync_interval=5)
        await self.watcher.start()
        registry = CollectorRegistry()
        app = build_app(self.redis, self.watcher, registry, self.sealer, on_append=self._stored)
        app.add_subapp(CONSOLE_PATH, self._console())
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        host, port = parse_listen(options.listen)
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        bound_port = port or self._bound_port()
        self.url = client_url(host, bound_port)
        say(f"tidings dev: ingest, /healthz, /readyz and /metrics on {host}:{bound_port}")
        say(f"tidings dev: console on {self.url}{CONSOLE_PATH} (from this machine only)")
        self.engine_stop = await start_engine(
            self.redis, self.watcher, registry, self.sealer, options.destinations
        )
        self.adapters = SourceAdapters(self.redis, registry)
        if self.manifests is not None and self.compiled is not None:
            await self.adapters.sync(self.manifests, self.compiled)
        self._write_session()
        self._print_endpoints()

    def _console(self) -> web.Application:
        """The web console (tidings.console) over this session's manifests, open
        without sign-in but to loopback peers only."""
        assert self.redis is not None
        # Imported here: Jinja2 and the pages cost start-up time no delivery needs.
        from tidings.console.app import Console, build_console
        from tidings.console.auth import Gate
        from tidings.console.objects import DevObjects, SourceView

        def ingest_url(source: SourceView) -> str:
            return f"{self.url}/sources/{source.namespace}/{source.name}"

        console = Console(
            redis=self.redis,
            objects=DevObjects(lambda: (self.manifests, self.compiled)),
            gate=Gate("open"),
            prefix=CONSOLE_PATH,
            ingest_url=ingest_url,
        )
        return build_console(console)

    def _bound_port(self) -> int:
        assert self.runner is not None
        address = self.runner.addresses[0]
        return int(address[1])

    def _stored(
        self, source: CompiledSource, events: list[CloudEvent], result: AppendResult
    ) -> None:
        for event, appended in zip(events, result.events, strict=True):
            what = "duplicate, dropped" if appended.duplicate else "stored"
            say(f"<- {source.id}: {event.type} id={event.id} ({what})")

    def _print_endpoints(self) -> None:
        if self.watcher is None:
            return
        current = self.watcher.current
        for source in sorted(current.sources.values(), key=lambda s: s.id):
            if source.kind == "http":
                say(f"   POST {self.url}/sources/{source.namespace}/{source.name}")
            elif source.ingest is not None and source.object_store is not None:
                token = "?token=<token>" if source.ingest.token_sealed else ""
                say(
                    f"   S3 notifications of bucket {source.object_store.bucket}: "
                    f"{self.url}/sources/{source.namespace}/{source.name}{token}"
                )
        for route in sorted(current.routes.values(), key=lambda r: r.id):
            say(f"   Trigger {route.id}: {route.source} -> {route.subscriber_url}")
        http = sorted((s for s in current.sources.values() if s.kind == "http"), key=lambda s: s.id)
        if http:
            example = http[0]
            event_type = example_type(current.routes_of(example.namespace, example.name))
            say(
                f"   try: tidings send {example.id} --type {event_type} "
                '--data \'{"hello": "world"}\''
            )

    async def reload(self, *, initial: bool = False) -> bool:
        """Load, compile and publish the manifests; False (nothing changed) on errors."""
        assert self.redis is not None and self.sealer is not None
        self.fingerprint = manifest_files.fingerprint(self.options.paths)
        try:
            manifests = manifest_files.load(self.options.paths)
        except ManifestError as error:
            say("tidings dev: manifests not applied, fix these and save again:")
            for line in error.errors:
                say(f"   {line}")
            return False
        for source_id in add_generated_tokens(manifests, self.state):
            say(f"tidings dev: generated an ingest token for {source_id} (tidings send knows it)")
        compiled = manifest_files.compile_all(
            manifests, self.sealer, self.options.services, self.options.destinations
        )
        for what, problem in sorted(compiled.errors.items()):
            say(f"tidings dev: {what} not compiled: {problem}")
        await create_groups(self.redis, compiled.routes.values())
        changes = await publish(self.redis, compiled)
        changes += await publish_replays(self.redis, manifests, compiled)
        self.credentials = credentials(manifests)
        self.manifests, self.compiled = manifests, compiled
        if self.adapters is not None:
            await self.adapters.sync(manifests, compiled)
        if initial:
            count = f"{len(compiled.sources)} EventSource(s), {len(compiled.routes)} Trigger(s)"
            say(f"tidings dev: loaded {count} from {len(manifests.files)} file(s)")
        else:
            for line in changes or ["(no change to sources or triggers)"]:
                say(f"tidings dev: {line}")
            self._write_session()
        self.loaded = True
        return True

    def _write_session(self) -> None:
        if not self.url:
            return
        session = {
            "url": self.url,
            "pid": os.getpid(),
            "tokens": self.credentials.tokens,
            "hmac": self.credentials.hmac,
            "webhooks": self.credentials.webhooks,
        }
        path = self.state / SESSION_FILE
        self.state.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(session, indent=2) + "\n")

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll the manifest files until `stop` is set; reload on change."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.poll_interval)
            if stop.is_set():
                break
            if manifest_files.fingerprint(self.options.paths) != self.fingerprint:
                say("tidings dev: manifests changed, reloading")
                try:
                    await self.reload()
                except (RedisError, OSError) as error:
                    say(f"tidings dev: reload failed: {error}; retrying")
                    self.fingerprint = {}

    async def stop(self) -> None:
        # As `tidings dispatcher` does: no more ingest, then drain deliveries.
        if self.runner is not None:
            await _bounded(self.runner.cleanup(), 5, "ingest server")
        if self.adapters is not None:
            await self.adapters.stop()
        if self.engine_stop is not None:
            await _bounded(self.engine_stop(), STOP_GRACE + 5, "delivery engine")
        if self.watcher is not None:
            await _bounded(self.watcher.stop(), 5, "routing table watcher")
        if self.redis is not None:
            await _bounded(self.redis.aclose(), 5, "Redis client")
        if self.redis_server is not None:
            self.redis_server.stop()
        with contextlib.suppress(OSError):
            session = self.state / SESSION_FILE
            if json.loads(session.read_text()).get("pid") == os.getpid():
                session.unlink()


async def _bounded(step: Awaitable[None], seconds: float, what: str) -> None:
    """Await a shutdown step, but not forever: on Python 3.11 a cancellation that
    meets a finishing asyncio.wait_for (redis-py uses it) can be lost, leaving a
    loop that never ends. Exiting matters more than waiting for it."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        say(f"tidings dev: {what} did not stop within {seconds:g}s; exiting anyway")


async def run_dev(options: DevOptions) -> int:
    session = DevSession(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            say("tidings dev: second signal, exiting at once")
            os._exit(130)  # the private redis-server follows (parent-death signal)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        await session.start()
        say("tidings dev: ready; Ctrl-C stops")
        await session.watch(stop)
        say("tidings dev: stopping")
    except RedisServerError as error:
        say(f"tidings dev: {error}")
        return 2
    except (RedisError, OSError) as error:
        say(f"tidings dev: {type(error).__name__}: {error}")
        return 1
    finally:
        await session.stop()
    return 0


@dataclass(frozen=True)
class DevSettings(ServeSettings, DestinationSettings):
    # On a laptop the subscribers are local processes: loopback is allowed
    # unless refused (--destinations-loopback=refuse tries a cluster's policy).
    destinations_loopback: str = setting(
        "--destinations-loopback",
        "TIDINGS_DESTINATIONS_LOOPBACK",
        "allow",
        "deliver to loopback addresses (127.0.0.0/8, ::1, localhost)?",
        choices=("allow", "refuse"),
    )
    services: list[str] = setting(
        "--service",
        "TIDINGS_SERVICES",
        [],
        "deliver a Service ref to URL instead of 127.0.0.1:PORT (NAME or NAMESPACE/NAME)",
        metavar="NAME=URL",
    )
    state_dir: str = setting(
        "--state-dir",
        "TIDINGS_STATE_DIR",
        ".tidings",
        "where the private Redis, seal key and session live",
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = load(DevSettings, args)
        parse_listen(settings.listen)
        services = LocalServices.parse(settings.services)
        redis = settings.redis_connection() if settings.redis_url else None
        destinations = settings.destination_policy()
        event_loop_choice()
    except ValueError as bad:
        print(f"tidings dev: {bad}", file=sys.stderr)
        return 2
    paths = [Path(p) for group in args.files for p in group]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        print(f"tidings dev: -f {', '.join(missing)}: no such file or folder", file=sys.stderr)
        return 2
    options = DevOptions(
        paths=paths,
        listen=settings.listen,
        redis_url=settings.redis_url,
        redis=redis,
        state=Path(settings.state_dir),
        services=services,
        destinations=destinations,
    )
    return run_event_loop(run_dev(options))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = subparsers.add_parser(
        "dev",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="append",
        nargs="+",
        required=True,
        metavar="PATH",
        help="manifest file or folder (repeatable), e.g. -f examples/quickstart",
    )
    add_arguments(parser, DevSettings)
    parser.set_defaults(func=run)
