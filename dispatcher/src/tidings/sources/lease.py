"""One active adapter per EventSource: a coordination.k8s.io/v1 Lease.

Replicas of an adapter Deployment race for the Lease `tidings-source-<name>`
in the EventSource's namespace. The holder renews it every `renew_every`
seconds; a waiting replica takes it over once it has seen the same record
unrenewed for `duration` seconds *by its own clock* (as client-go's leader
election does: no trust in clocks of other hosts). Writes carry the
resourceVersion they read, so two replicas can never both win. A holder that
cannot renew for `duration` seconds declares the Lease lost and stops its
adapter before anyone else may take over.

The adapters do not depend on it for correctness where they can avoid it: a
replication slot streams to one connection at a time, and schedule ticks are
guarded in Redis. For the Kubernetes adapter it is what keeps two watchers
from emitting every change twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tidings.sources.errors import Forbidden
from tidings.sources.kubeapi import ApiError, KubeApi

log = logging.getLogger(__name__)

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def lease_name(source_name: str) -> str:
    return f"tidings-source-{source_name}"[:253]


def default_identity() -> str:
    """The pod name (POD_NAME, set by the chart from the downward API) or host, and pid."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


def _micro_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        *,
        duration: float = 15.0,
        renew_every: float = 5.0,
        retry_every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_every = renew_every
        self.retry_every = retry_every
        self.clock = clock
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renewal = 0.0

    @property
    def _collection(self) -> str:
        return LEASES.format(namespace=self.namespace)

    def _spec(self, lease: dict[str, Any] | None, now: float) -> dict[str, Any]:
        previous = (lease or {}).get("spec") or {}
        transitions = int(previous.get("leaseTransitions") or 0)
        taking_over = previous.get("holderIdentity") != self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": _micro_time(now) if taking_over else previous.get("acquireTime"),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions + 1 if taking_over and lease else transitions,
        }

    async def try_acquire(self) -> bool:
        """One attempt: True if this replica holds the Lease now."""
        wall = time.time()
        try:
            lease = await self.api.get(f"{self._collection}/{self.name}")
        except ApiError as error:
            if error.status == 404:
                return await self._create(wall)
            raise self._forbidden(error) if error.status == 403 else error from None
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime")))
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        expired = now - self._observed_at >= self.duration
        if holder and holder != self.identity and not expired:
            return False
        lease["spec"] = self._spec(lease, wall)
        try:
            await self.api.request(
                "PUT", f"{self._collection}/{self.name}", body=lease
            )  # carries metadata.resourceVersion: a concurrent writer gets 409
        except ApiError as error:
            if error.status == 409:
                return False
            raise self._forbidden(error) if error.status == 403 else error from None
        self._last_renewal = self.clock()
        if holder != self.identity:
            log.info(
                "took the Lease %s/%s (previous holder: %s)",
                self.namespace,
                self.name,
                holder or "none",
            )
        return True

    async def _create(self, wall: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self._spec(None, wall),
        }
        try:
            await self.api.request("POST", self._collection, body=body)
        except ApiError as error:
            if error.status == 409:
                return False  # another replica created it first
            raise self._forbidden(error) if error.status == 403 else error from None
        self._last_renewal = self.clock()
        log.info("created and took the Lease %s/%s", self.namespace, self.name)
        return True

    def _forbidden(self, error: ApiError) -> Forbidden:
        return Forbidden(
            f"cannot use Lease {self.namespace}/{self.name}: {error.message}; the adapter's "
            "ServiceAccount needs get, create and update on leases.coordination.k8s.io "
            "in this namespace"
        )

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease; raises Forbidden when RBAC
        does not allow Leases at all."""
        announced = False
        while True:
            try:
                if await self.try_acquire():
                    return
            except Forbidden:
                raise  # retrying cannot help; the caller decides
            except Exception as error:  # the API is away: say so, keep trying
                log.error("cannot take the Lease %s/%s: %s", self.namespace, self.name, error)
                await asyncio.sleep(self.retry_every)
                continue
            if not announced:
                log.info(
                    "standing by: Lease %s/%s is held by %s",
                    self.namespace,
                    self.name,
                    (self._observed or ("?",))[0],
                )
                announced = True
            await asyncio.sleep(self.retry_every)

    async def hold(self) -> None:
        """Renew until the Lease is lost (returns then); cancel to stop renewing."""
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                if await self.try_acquire():
                    continue
                log.error(
                    "lost the Lease %s/%s to %s",
                    self.namespace,
                    self.name,
                    (self._observed or ("?",))[0],
                )
                return
            except Exception as error:  # API unreachable: keep trying until it expires
                log.warning("could not renew the Lease %s/%s: %s", self.namespace, self.name, error)
            if self.clock() - self._last_renewal >= self.duration:
                log.error(
                    "could not renew the Lease %s/%s for %.0fs: giving it up",
                    self.namespace,
                    self.name,
                    self.duration,
                )
                return

    async def release(self) -> None:
        """Hand the Lease over at once (on a clean shutdown)."""
        with contextlib.suppress(Exception):
            lease = await self.api.get(f"{self._collection}/{self.name}")
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = None
            lease["spec"]["renewTime"] = None
            await self.api.request("PUT", f"{self._collection}/{self.name}", body=lease)
