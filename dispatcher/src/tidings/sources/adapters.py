"""Build the adapter of an EventSource: one entry point for `tidings source`
and for `tidings dev`, which runs adapters in its own process.

Every adapter has `async run()` (returns after `stop()`; failures inside are
reported in its status and retried, never raised) and `async stop()`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tidings.api.routes import CompiledSource
    from tidings.api.types import EventSourceSpec
    from tidings.sources.objectstore import Credentials


class Adapter(Protocol):
    kind: str

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


ADAPTER_KINDS = ("postgres", "kubernetes", "schedule", "objectStore")  # objectStore: poll mode

# The object store's credentials in an adapter's environment (`tidings source`
# reads them, the operator injects them with secretKeyRef): named here, where
# the operator can import them without the adapter command's libraries.
S3_ACCESS_ENV = "TIDINGS_S3_ACCESS_KEY_ID"
S3_SECRET_ENV = "TIDINGS_S3_SECRET_ACCESS_KEY"
S3_CA_ENV = "TIDINGS_S3_CA_FILE"


def build(
    source: CompiledSource,
    spec: EventSourceSpec,
    redis: Redis,
    *,
    dsn: str | None = None,
    kubeconfig: str | None = None,
    still_wanted: Callable[[], Awaitable[bool]] | None = None,
    s3_credentials: Credentials | None = None,
) -> Adapter:
    """The adapter for `spec`'s kind. Postgres needs the `dsn` (the value of
    spec.postgres.connectionSecretRef) and stops for good when `still_wanted`
    returns False (the EventSource is being deleted: it must not re-create its
    slot); Kubernetes uses `kubeconfig` (default: $KUBECONFIG, ~/.kube/config,
    else in-cluster); an objectStore source in poll mode lists its bucket with
    `s3_credentials` (None: it reports SecretNotFound)."""
    if spec.postgres is not None:
        if dsn is None:
            raise ValueError("a postgres source needs the DSN from its connectionSecretRef")
        from tidings.sources.postgres import PostgresAdapter

        return PostgresAdapter(source, spec.postgres, redis, dsn=dsn, still_wanted=still_wanted)
    if spec.schedule is not None:
        from tidings.sources.schedule import ScheduleAdapter

        return ScheduleAdapter(source, spec.schedule, redis)
    if spec.kubernetes is not None:
        from tidings.sources.kubeapi import KubeApi
        from tidings.sources.kubernetes import KubernetesAdapter

        return KubernetesAdapter(
            source, spec.kubernetes, redis, api=KubeApi.from_config(kubeconfig)
        )
    if spec.object_store is not None and spec.object_store.mode == "poll":
        from tidings.sources.objectstore import ObjectStoreAdapter

        return ObjectStoreAdapter(source, spec.object_store, redis, credentials=s3_credentials)
    raise ValueError(
        f"{spec.kind} sources have no adapter "
        "(http and objectStore notify events come through ingest)"
    )
