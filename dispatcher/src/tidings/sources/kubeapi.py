"""A small asyncio client of the Kubernetes API, for the source adapters.

Why not the official `kubernetes` client for the calls themselves: its watch
is a blocking generator, so every watch would need a thread of its own that
cannot be cancelled (it sits in a socket read until the next event or the
server's timeout). Why not `kubernetes_asyncio`: a second, generated client
as a new dependency for five calls. So the official client only loads the
configuration (kubeconfig with all its auth plugins, or the in-cluster
service account, with token refresh), and the calls go over aiohttp — the
HTTP client the data plane already uses — where a watch is one streaming GET
that a task can cancel at once.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

WATCH_TIMEOUT = 290  # seconds; below common proxy idle limits, the server ends it cleanly


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Gone(ApiError):
    """410: the resourceVersion is too old to resume from; list again."""


@dataclass(frozen=True)
class Resource:
    """A kind, as the API serves it: how to build its URLs."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else (f"/apis/{self.api_version}")
        )
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


class KubeApi:
    def __init__(self, configuration: Any) -> None:
        self._config = configuration
        self.host = str(configuration.host).rstrip("/")
        context: ssl.SSLContext | bool
        if self.host.startswith("https"):
            if configuration.verify_ssl:
                context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
            else:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if configuration.cert_file:
                context.load_cert_chain(configuration.cert_file, configuration.key_file)
        else:
            context = False
        self._ssl = context
        self._session: aiohttp.ClientSession | None = None
        self._resources: dict[tuple[str, str], Resource] = {}

    @classmethod
    def from_config(cls, kubeconfig: str | None = None) -> KubeApi:
        """From `kubeconfig` (or $KUBECONFIG, ~/.kube/config), else in-cluster."""
        # Imported here: the client costs ~1 s of start-up, and only this needs it
        # (`tidings dev`'s console imports this module but never talks to a cluster).
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        configuration = k8s_client.Configuration()
        in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
        if kubeconfig or os.environ.get("KUBECONFIG") or not in_cluster:
            load = k8s_config.load_kube_config
            load(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        return cls(configuration)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        # auth_settings() runs the token refresh hook (rotating service-account
        # tokens) and names the header, whatever the client version calls the key.
        for setting in self._config.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[str(setting["key"]).title()] = str(setting["value"])
        return headers

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        seconds: float = 30,
        content_type: str = "application/json",
    ) -> Any:
        headers = self._headers()
        if body is not None:
            headers["Content-Type"] = content_type
        async with self._client().request(
            method,
            self.host + path,
            params=params,
            data=None if body is None else json.dumps(body),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=seconds),
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise _error(response.status, text)
            return json.loads(text) if text else None

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, params=params or None)

    async def resource(self, api_version: str, kind: str) -> Resource:
        """Discovery: the plural and scope of `kind` in `api_version`."""
        key = (api_version, kind)
        if key not in self._resources:
            prefix = "/api/" if "/" not in api_version else "/apis/"
            try:
                listing = await self.get(prefix + api_version)
            except ApiError as error:
                if error.status == 404:
                    message = f"apiVersion {api_version} is not served"
                    raise ApiError(404, "NotFound", message) from None
                raise
            for entry in listing.get("resources", []):
                if "/" not in entry["name"]:
                    found = Resource(api_version, entry["kind"], entry["name"], entry["namespaced"])
                    self._resources[(api_version, entry["kind"])] = found
            if key not in self._resources:
                raise ApiError(404, "NotFound", f"kind {kind} is not served in {api_version}")
        return self._resources[key]

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
        """Watch events ({type, object}) until the server ends the watch.
        Raises Gone when the resourceVersion is too old."""
        query = {
            **params,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT),
        }
        async with self._client().get(
            self.host + path,
            params=query,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=10, sock_read=WATCH_TIMEOUT + 30
            ),
        ) as response:
            if response.status >= 400:
                raise _error(response.status, await response.text())
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise _error(int(status.get("code", 500)), json.dumps(status))
                yield event


def _error(status: int, text: str) -> ApiError:
    reason, message = "", text
    try:
        body = json.loads(text)
        reason = str(body.get("reason", ""))
        message = str(body.get("message", text))
    except (ValueError, AttributeError):
        pass
    if status == 410:
        return Gone(status, reason or "Expired", message)
    return ApiError(status, reason, message)
