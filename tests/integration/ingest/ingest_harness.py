"""Shared pieces of the ingest tests: a World of Secrets and the app under test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from tidings.api import keys, table
from tidings.api.events import CloudEvent, decode
from tidings.api.routes import CompiledSource, compile_source
from tidings.api.sealing import Sealer
from tidings.api.types import EventSourceSpec
from tidings.dispatcher.routing import TableWatcher

AUTH = {"Authorization": "Bearer t0ken"}


@dataclass
class SecretsWorld:
    """A World with only what compile_source needs: Secrets."""

    secrets: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return None

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return None

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return self.secrets.get((namespace, name, key))


@dataclass
class IngestUnderTest:
    client: TestClient[Any, Any]
    redis: Redis
    watcher: TableWatcher
    sealer: Sealer
    registry: CollectorRegistry
    namespace: str
    world: SecretsWorld = field(default_factory=SecretsWorld)

    async def add_source(
        self, name: str, http: dict[str, Any] | None = None, **spec: Any
    ) -> CompiledSource:
        """Compile and publish an EventSource (default: http with bearer token `t0ken`).
        The Secrets `<name>-token` and `<name>-hmac` (key `token` / `secret`) exist."""
        self.world.secrets[(self.namespace, f"{name}-token", "token")] = "t0ken"
        self.world.secrets[(self.namespace, f"{name}-hmac", "secret")] = "hmac-s3cret"
        if http is None and not spec:
            http = {"auth": {"tokenSecretRef": {"name": f"{name}-token", "key": "token"}}}
        if http is not None:
            spec["http"] = http
        compiled = compile_source(
            namespace=self.namespace,
            name=name,
            spec=EventSourceSpec.model_validate(spec),
            world=self.world,
            sealer=self.sealer,
        )
        await table.put_source(self.redis, compiled)
        await self.watcher.refresh()
        return compiled

    def url(self, name: str) -> str:
        return f"/sources/{self.namespace}/{name}"

    async def stored(self, name: str) -> list[CloudEvent]:
        entries = await self.redis.xrange(keys.stream(self.namespace, name))
        return [decode(fields)[0] for _, fields in entries]
