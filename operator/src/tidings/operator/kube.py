"""The few Kubernetes API writes the operator makes itself.

Kopf watches, indexes, adds and removes finalizers and posts Events; everything else —
status, the generated token Secret, adapter Deployments — goes through the
official client, run in a small thread pool (the client is synchronous).

Status is written with server-side apply under the field manager
`tidings-operator`: the operator owns exactly the fields it sends, so a
condition of another type (e.g. one an adapter adds) is never overwritten, and
a field it stops sending (subscriberURI of a broken Trigger) is removed.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import kopf
import kubernetes  # type: ignore[import-untyped]
from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]

from tidings.api.types import GROUP, VERSION
from tidings.operator.pacing import RECHECK, TurnPending, Turns
from tidings.operator.status import Status, owned, same
from tidings.operator.world import Key

FIELD_MANAGER = "tidings-operator"
APPLY = "application/apply-patch+yaml"
# Threads (and pooled connections) for the synchronous client's calls.
WORKERS = 16

# A LIST of names: metadata only, a page at a time.
METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
LIST_PAGE = 500

T = TypeVar("T")


def load_config(kubeconfig: str | None = None) -> Any:
    """A client configuration: in-cluster when running in a pod, else the kubeconfig
    (`kubeconfig`, else $KUBECONFIG, else ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    else:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    return configuration


def connection_info(kubeconfig: str | None = None) -> kopf.ConnectionInfo:
    """Kopf's credentials, from the same configuration the client uses (so Kopf's
    watches and our writes act as the same user). Called again on a 401: an
    in-cluster token that rotated is read afresh."""
    configuration = load_config(kubeconfig)
    # kubernetes >= 36 keeps a bearer token under "BearerToken", older under "authorization".
    header: str | None = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    scheme, token = None, None
    if header:
        parts = header.split(" ", 1)
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class Kube:
    def __init__(self, configuration: Any, *, status_turns: Turns | None = None) -> None:
        configuration.connection_pool_maxsize = WORKERS
        self._client = kubernetes.client.ApiClient(configuration)
        self._custom = kubernetes.client.CustomObjectsApi(self._client)
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="kube")
        # Status writes are most of the operator's API calls (one per Trigger
        # applied); the few others are not paced.
        self.status_turns = status_turns or Turns(lambda: 0.0, 1)

    # Built on first use: the client's generated CoreV1Api and AppsV1Api take about
    # a second of CPU to build (their models and validators), which Kopf's start
    # and Triggers' status writes need not wait for.
    @functools.cached_property
    def _core(self) -> Any:
        return kubernetes.client.CoreV1Api(self._client)

    @functools.cached_property
    def _apps(self) -> Any:
        return kubernetes.client.AppsV1Api(self._client)

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()  # type: ignore[no-untyped-call]

    async def apply_status(
        self, kind: str, plural: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Server-side apply of the fields of `status` this operator owns."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": dict(status),
        }
        result: Any = await self._run(
            lambda: self._custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY,
            )
        )
        return dict(result)

    async def create_secret_if_missing(self, manifest: Mapping[str, Any]) -> bool:
        """Create the Secret unless one of that name exists; True if created."""
        namespace = manifest["metadata"]["namespace"]
        try:
            await self._run(
                lambda: self._core.create_namespaced_secret(namespace, dict(manifest))  # type: ignore[arg-type]
            )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def apply(self, manifest: Mapping[str, Any]) -> None:
        """Server-side apply of a Secret or Deployment this operator manages."""
        meta = manifest["metadata"]
        kind = manifest["kind"]
        if kind == "Deployment":
            patch: Callable[..., Any] = self._apps.patch_namespaced_deployment
        elif kind == "Secret":
            patch = self._core.patch_namespaced_secret
        else:
            raise ValueError(f"cannot apply a {kind}")
        await self._run(
            lambda: patch(
                meta["name"],
                meta["namespace"],
                dict(manifest),
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type=APPLY,
            )
        )

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete a Secret or Deployment; False if it was already gone."""
        if kind == "Deployment":
            delete: Callable[..., Any] = self._apps.delete_namespaced_deployment
        elif kind == "Secret":
            delete = self._core.delete_namespaced_secret
        else:
            raise ValueError(f"cannot delete a {kind}")
        try:
            await self._run(lambda: delete(name, namespace, propagation_policy="Background"))
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def create_custom_if_missing(
        self, group: str, version: str, plural: str, manifest: Mapping[str, Any]
    ) -> bool:
        """Create a custom object unless it exists; True if created. Raises
        ApiException 404 when its CRD is not installed."""
        namespace = manifest["metadata"].get("namespace")
        body = dict(manifest)
        try:
            if namespace:
                await self._run(
                    lambda: self._custom.create_namespaced_custom_object(
                        group, version, namespace, plural, body
                    )
                )
            else:
                await self._run(
                    lambda: self._custom.create_cluster_custom_object(group, version, plural, body)
                )
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True

    async def list_names(self, plural: str, namespaces: Sequence[str]) -> set[tuple[str, str]]:
        """(namespace, name) of every Tidings object of `plural` in `namespaces`
        (all namespaces when empty): metadata only, LIST_PAGE at a time (10,000
        Triggers in full were 46 MB of JSON, and several times that decoded)."""

        def page_in(namespace: str | None, token: str | None) -> Callable[[], Any]:
            # A copy: the client adds its default headers into the dict it is given.
            paging: dict[str, Any] = {"limit": LIST_PAGE, "_headers": dict(METADATA_ONLY)}
            if token:
                paging["_continue"] = token
            if namespace is None:
                return lambda: self._custom.list_cluster_custom_object(
                    GROUP, VERSION, plural, **paging
                )
            return lambda: self._custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, **paging
            )

        names: set[tuple[str, str]] = set()
        scopes: list[str | None] = list(namespaces) or [None]
        for namespace in scopes:
            token: str | None = None
            while True:
                page = await self._run(page_in(namespace, token))
                for item in page.get("items") or []:
                    names.add((item["metadata"]["namespace"], item["metadata"]["name"]))
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        return names

    async def exists(self, plural: str, namespace: str, name: str) -> bool:
        """Whether the Tidings object exists (a GET: never a cached answer)."""
        try:
            await self._run(
                lambda: self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name
                )
            )
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    async def get_secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        """The labels of a Secret, or None if it does not exist."""
        try:
            secret = await self._run(lambda: self._core.read_namespaced_secret(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        meta = secret.metadata
        return dict((meta.labels if meta is not None else None) or {})


class StatusWriter(Generic[Status]):
    """Writes one object's status (a typed model, tidings.api.types) only when it
    differs from the newest known one, in its turn (tidings.operator.pacing).

    "Newest known" is the live status from the watch, except in the moment
    between our own write and its watch event: then it is what we wrote (while
    the live resourceVersion is still the one we wrote over).

    A write whose turn has not come raises TurnPending, and `wake` is called at
    the turn: the round ends instead of holding a worker of the queue.
    """

    def __init__(
        self,
        kube: Kube,
        key: Key,
        *,
        model: type[Status],
        plural: str,
        types: tuple[str, ...],
        wake: Callable[[], None],
    ) -> None:
        self._kube = kube
        self._kind, self._namespace, self._name = key
        self._model, self._plural, self._types = model, plural, types
        self._wake = wake
        self._applied: Status | None = None
        self._applied_over: str | None = None
        self._ticket: int | None = None  # its turn for the next write, kept across rounds

    def known(self, body: Mapping[str, Any]) -> Status:
        """The status this operator owns, as it stands now."""
        version = (body.get("metadata") or {}).get("resourceVersion")
        if self._applied is not None:
            if version == self._applied_over:
                return self._applied
            self._applied = None  # the watch brought our write (or a newer one): not needed
        return owned(body.get("status"), self._model, self._types)

    def close(self) -> None:
        """The object is no longer driven here: give up its turn, if it holds one."""
        if self._ticket is not None:
            self._kube.status_turns.done(self._ticket)
            self._ticket = None

    async def write(
        self, body: Mapping[str, Any], desired: Status, known: Status | None = None
    ) -> bool:
        """Apply `desired` unless it is already there (`known`, if the caller has just
        read it: parsing status is a tenth of a restart's CPU); True if written."""
        if same(desired, known if known is not None else self.known(body)):
            return False
        await self.apply(body, desired)
        return True

    async def apply(self, body: Mapping[str, Any], desired: Status) -> None:
        """Write `desired` (known to differ) in this object's turn."""
        turns = self._kube.status_turns
        if self._ticket is None:
            self._ticket = turns.ticket()
        if (delay := turns.due_in(self._ticket)) > 0:
            if not turns.call_when_due(self._ticket, self._wake):
                delay = min(delay, RECHECK)  # nothing will wake it: look again soon
            raise TurnPending(delay)
        turns.done(self._ticket)
        self._ticket = None
        version = (body.get("metadata") or {}).get("resourceVersion")
        await self._kube.apply_status(
            self._kind, self._plural, self._namespace, self._name, desired.to_wire()
        )
        self._applied, self._applied_over = desired, version
