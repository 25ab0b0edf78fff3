"""One EventSource's controller: its stream, its table entry, its owned objects, its status.

Per EventSource: the stream exists; the compiled source (sealed ingest
credentials) is in the routing table; an http source without a token Secret
gets a generated one (created once, never rewritten); an adapter source runs
its adapter Deployment; status carries the ingest URL and the truth about all
of it. Like Triggers, it runs in the reconcile loop (tidings.operator.loop):
it reconciles when woken by a watch event on itself or what it depends on
(its Secrets, its Deployment), and writes only changes.

Adapter sources also report on themselves (tidings.sources.status):
the controller reads that report every `health_interval` and merges it into
status (Capturing, WalRetained, ChangesMissed, and Ready), posting a Warning
Event when a warning condition turns True.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tidings.api.routes import (
    CompiledSource,
    CompileError,
    compile_source,
    ingest_token_secret_name,
)
from tidings.api.types import (
    EventSourceSpec,
    EventSourceStatus,
    PostgresSource,
    TriggerGrantSpec,
)
from tidings.operator import adapters, health, publishing, status
from tidings.operator.context import ObjectController
from tidings.operator.health import Transition
from tidings.operator.world import IndexWorld, Key, source_dependencies
from tidings.sources import status as adapter_status
from tidings.sources.errors import SourceError

# The operator's own look at a slot's retained WAL may not stall the controller.
WAL_CHECK_TIMEOUT = 10.0


class WithSecret:
    """A World that also knows one Secret value we just created (the watch has
    not brought it back yet)."""

    def __init__(self, world: IndexWorld, namespace: str, name: str, key: str, value: str):
        self._world = world
        self._known = (namespace, name, key)
        self._value = value

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return self._world.source(namespace, name)

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return self._world.service_ports(namespace, name)

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        if (namespace, name, key) == self._known:
            return self._value
        return self._world.secret(namespace, name, key)

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        return self._world.grants(namespace)


@dataclass(frozen=True)
class SourceOutcome:
    generation: int
    spec: EventSourceSpec | None
    compiled: CompiledSource | None
    error: CompileError | None
    url: str | None


def check_adapter_secrets(world: IndexWorld, namespace: str, spec: EventSourceSpec) -> None:
    """Secrets an adapter pod reads at start (a missing one would only show as a
    pod that cannot start)."""
    if spec.postgres is not None:
        ref = spec.postgres.connection_secret_ref
        if world.secret(namespace, ref.name, ref.key) is None:
            raise CompileError(
                "SecretNotFound",
                f"spec.postgres.connectionSecretRef: Secret {namespace}/{ref.name} with key "
                f"{ref.key!r} not found; create it or fix the reference",
            )
    store = spec.object_store
    if store is not None and store.mode == "poll" and store.credentials_secret_ref is not None:
        creds = store.credentials_secret_ref
        for key in (creds.access_key_id_key, creds.secret_access_key_key):
            if world.secret(namespace, creds.name, key) is None:
                raise CompileError(
                    "SecretNotFound",
                    f"spec.objectStore.credentialsSecretRef: Secret {namespace}/{creds.name} "
                    f"with key {key!r} not found; create it (keys {creds.access_key_id_key!r} "
                    f"and {creds.secret_access_key_key!r}) or fix the reference",
                )
    if store is not None and store.mode == "poll" and store.ca_secret_ref is not None:
        ca = store.ca_secret_ref
        if world.secret(namespace, ca.name, ca.key) is None:
            raise CompileError(
                "SecretNotFound",
                f"spec.objectStore.caSecretRef: Secret {namespace}/{ca.name} with key {ca.key!r} "
                "not found; create it with the PEM of the CA that signs the endpoint's "
                "certificate, or fix the reference",
            )


class SourceController(ObjectController[EventSourceStatus]):
    """Drives one EventSource (tidings.operator.loop.Controller)."""

    KIND = "EventSource"
    PLURAL = "eventsources"
    STATUS = EventSourceStatus
    CONDITIONS = status.SOURCE_CONDITIONS
    outcome: SourceOutcome | None = None  # the last reconcile's verdict
    # Postgres: the operator's own reading of the slot's retained WAL, taken
    # while the adapter does not run (then nobody else would warn of it).
    wal: adapter_status.WalReading | None = None
    next_wal_check = 0.0

    async def observe(self) -> float | None:
        """Write status if it changed; an adapter's report is read again after
        `health_interval`, other sources change only when woken."""
        await self.write_status()
        return self.ctx.settings.health_interval if self.reports() else None

    def reports(self) -> bool:
        """Whether this source has an adapter whose report status shows."""
        outcome = self.outcome
        return outcome is not None and adapters.has_adapter(outcome.spec)

    def _url(self, spec: EventSourceSpec) -> str | None:
        if spec.ingest_auth is None:
            return None
        return adapters.ingest_url(
            self.namespace,
            self.name,
            service=self.ctx.settings.ingest_service,
            service_namespace=self.ctx.settings.ingest_namespace,
        )

    def dependencies(self) -> set[Key]:
        try:
            spec = EventSourceSpec.model_validate(self.body.get("spec") or {})
        except ValidationError:
            return source_dependencies(self.namespace, self.name, None)
        return source_dependencies(self.namespace, self.name, spec)

    async def reconcile(self) -> None:
        """Publish (or withdraw) the compiled source and run its adapter; status
        follows in `observe`."""
        meta = self.body["metadata"]
        generation = int(meta.get("generation") or 0)
        uid = meta.get("uid", "")
        try:
            spec = EventSourceSpec.model_validate(self.body.get("spec") or {})
        except ValidationError as bad_spec:
            outcome = SourceOutcome(
                generation, None, None, CompileError("InvalidSpec", f"spec: {bad_spec}"), None
            )
            await publishing.withdraw_source(self.ctx.redis, self.namespace, self.name)
            self.outcome = outcome
            return

        world: Any = self.world
        if adapters.needs_generated_token(spec):
            world = await self.ensure_token(uid) or world
        redis = self.ctx.redis
        current = await publishing.current_source(redis, self.namespace, self.name)
        self.ctx.sealer.learn(publishing.sealed_in_source(current))
        compiled: CompiledSource | None = None
        error: CompileError | None = None
        try:
            compiled = compile_source(
                namespace=self.namespace,
                name=self.name,
                spec=spec,
                world=world,
                sealer=self.ctx.sealer,
                uid=uid,
                generation=generation,
            )
            check_adapter_secrets(self.world, self.namespace, spec)
            self.remember_dsn(spec)
        except CompileError as failure:
            compiled, error = None, failure
        if compiled is not None:
            version = await publishing.publish_source(redis, compiled)
            if version is not None:
                self.log.info("source published (table version %d)", version)
        elif await publishing.withdraw_source(redis, self.namespace, self.name) is not None:
            assert error is not None
            self.log.info("source withdrawn: %s", error.message)
        await self.reconcile_adapter(spec, uid, compiled is not None)
        self.outcome = SourceOutcome(generation, spec, compiled, error, self._url(spec))

    async def check_wal(self, spec: PostgresSource) -> None:
        """Read the slot's retained WAL, at most every wal_check_interval."""
        import psycopg  # with pgsetup: only an operator with Postgres sources loads them

        from tidings.sources import pgsetup

        loop = asyncio.get_running_loop()
        if loop.time() < self.next_wal_check:
            return
        self.next_wal_check = loop.time() + self.ctx.settings.wal_check_interval
        dsn = self.ctx.dsns.get((self.namespace, self.name))
        if dsn is None:
            return
        try:
            retention = await asyncio.wait_for(
                pgsetup.check_wal_retention(spec, dsn, namespace=self.namespace, name=self.name),
                WAL_CHECK_TIMEOUT,
            )
        except (SourceError, psycopg.Error, OSError, TimeoutError) as error:
            # The adapter reports why it cannot connect; this is only a second look.
            self.log.debug("cannot read the slot's retained WAL: %s", error)
            return
        if not retention.exists:
            # No slot, nothing retained (and an older report's number is moot).
            self.wal = adapter_status.WalReading(retention.slot, 0, retention.threshold)
            return
        self.wal = adapter_status.WalReading(
            retention.slot, retention.retained_bytes, retention.threshold
        )

    def remember_dsn(self, spec: EventSourceSpec) -> None:
        if spec.postgres is not None:
            ref = spec.postgres.connection_secret_ref
            dsn = self.world.secret(self.namespace, ref.name, ref.key)
            if dsn is not None:
                self.ctx.dsns[(self.namespace, self.name)] = dsn

    async def ensure_token(self, uid: str) -> WithSecret | None:
        """Create the generated ingest token Secret if it does not exist yet."""
        name = ingest_token_secret_name(self.name)
        if self.world.secret(self.namespace, name, adapters.TOKEN_KEY) is not None:
            return None
        manifest = adapters.token_secret(self.namespace, self.name, uid)
        if not await self.ctx.kube.create_secret_if_missing(manifest):
            return None  # it exists (maybe without a `token` key: compiling says so)
        self.log.info("generated ingest token Secret %s/%s", self.namespace, name)
        token = manifest["stringData"][adapters.TOKEN_KEY]
        return WithSecret(self.world, self.namespace, name, adapters.TOKEN_KEY, token)

    async def reconcile_adapter(self, spec: EventSourceSpec, uid: str, compiled: bool) -> None:
        current = self.world.adapter(self.namespace, self.name)
        kube = self.ctx.kube
        if not adapters.has_adapter(spec):
            if current is not None:  # it was an adapter source before this change
                await kube.delete("Deployment", self.namespace, current.name)
                await kube.delete("Secret", self.namespace, current.name)
            return
        if not compiled:
            return  # keep a running adapter until the spec compiles again
        settings = self.ctx.settings.adapters
        # A changed Secret wakes this controller (source_dependencies); its values
        # in the pod template roll the adapter, which reads them only at start.
        values = {
            (name, key): self.world.secret(self.namespace, name, key)
            for name, key in adapters.consumed_secrets(spec)
        }
        deployment = adapters.adapter_deployment(
            self.namespace, self.name, uid, spec, settings, values
        )
        if current is not None and current.template_hash == adapters.template_hash(deployment):
            return
        await kube.apply(adapters.adapter_config_secret(self.namespace, self.name, uid, settings))
        await kube.apply(deployment)
        self.log.info("adapter Deployment %s applied", deployment["metadata"]["name"])

    async def write_status(self) -> None:
        outcome = self.outcome
        assert outcome is not None  # the loop reconciles first
        spec = outcome.spec
        kind = spec.kind if spec is not None else ""
        expected = adapters.has_adapter(spec)
        report = None
        deployment = self.world.adapter(self.namespace, self.name)
        if expected:
            report = await adapter_status.read(self.ctx.redis, self.namespace, self.name)
        if spec is not None and spec.postgres is not None:
            running = report is not None and report.state == "Running"
            reading = adapter_status.WalReading.from_details(report.details) if report else None
            if running and reading is not None and deployment and deployment.available > 0:
                self.wal = None  # the adapter's own reading is fresher
            else:
                await self.check_wal(spec.postgres)
        facts = status.SourceFacts(
            namespace=self.namespace,
            name=self.name,
            generation=outcome.generation,
            kind=kind,
            url=outcome.url,
            instructions=(
                adapters.notify_instructions(spec, self.name, outcome.url)
                if spec is not None and outcome.url is not None
                else None
            ),
            compile_error=outcome.error,
            adapter_expected=expected,
            adapter=deployment,
            report=report,
            wal=self.wal,
        )
        known = self.writer.known(self.body)
        wanted = status.source_conditions(facts)
        desired = status.source_status(facts, known, now=health.now_rfc3339())
        if await self.writer.write(self.body, desired, known):
            for warning in status.warnings(known.conditions, wanted):
                self.log.warning("%s: %s", warning.reason, warning.message)
                self.post_event(Transition("Warning", warning.reason, warning.message))
