"""The operator under test: the real `tidings operator` as a subprocess against
the real kube-apiserver and a real Redis, driven with the real kubectl."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from redis.asyncio import Redis

from tidings.api import table
from tidings.api.table import RoutingTable

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[3]


class OperatorProcess:
    """`tidings operator --namespace NS` with its log in a file."""

    def __init__(
        self,
        *,
        namespaces: list[str],
        redis_url: str,
        kubeconfig: Path,
        seal_key: str,
        log_path: Path,
        args: list[str] | None = None,
    ) -> None:
        self.command = [sys.executable, "-m", "tidings.cli", "operator"]
        for namespace in namespaces:
            self.command += ["--namespace", namespace]
        self.command += [
            "--redis-url",
            redis_url,
            "--kubeconfig",
            str(kubeconfig),
            "--health-interval",
            "0.3",
            "--peering-lifetime",
            "5",
            "--image",
            "tidings:test",
            *(args or []),
        ]
        self.env = {**os.environ, "TIDINGS_SEAL_KEY": seal_key}
        self.env.pop("TIDINGS_SEAL_KEY_FILE", None)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.starts += 1
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO
        )
        log.close()
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, as Kubernetes stops a pod; SIGKILL if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@dataclass
class Cluster:
    """kubectl, bound to the test's namespace."""

    kubectl: Any  # tests/conftest.py's Kubectl
    namespace: str
    applied: list[str] = field(default_factory=list)

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.kubectl(*args, input=input)  # type: ignore[no-any-return]

    def ok(self, *args: str, input: str | None = None) -> str:
        done = self.run(*args, input=input)
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def apply(self, *manifests: dict[str, Any] | str) -> None:
        docs = [m if isinstance(m, str) else yaml.safe_dump(m) for m in manifests]
        self.ok("apply", "-n", self.namespace, "-f", "-", input="\n---\n".join(docs))

    def delete(self, kind: str, name: str, *, wait: bool = False) -> None:
        self.ok("delete", "-n", self.namespace, kind, name, f"--wait={str(wait).lower()}")

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        done = self.run("get", "-n", self.namespace, kind, name, "-o", "json")
        if done.returncode != 0:
            assert "NotFound" in done.stderr, done.stderr
            return None
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def list(self, kind: str) -> list[dict[str, Any]]:
        out = self.ok("get", "-n", self.namespace, kind, "-o", "json")
        return json.loads(out)["items"]  # type: ignore[no-any-return]

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        obj = self.get(kind, name) or {}
        for condition in (obj.get("status") or {}).get("conditions") or []:
            if condition.get("type") == type_:
                return condition  # type: ignore[no-any-return]
        return None

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.ok(
            "get",
            "events",
            "-n",
            self.namespace,
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "json",
        )
        return json.loads(out)["items"]  # type: ignore[no-any-return]


async def eventually(
    check: Callable[[], T | Awaitable[T]], *, within: float = 15.0, interval: float = 0.1
) -> T:
    """Retry `check` until it returns a truthy value without failing an assertion."""
    deadline = time.monotonic() + within
    while True:
        try:
            value = check()
            if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
                value = await value  # type: ignore[misc]
            if value:
                return value  # type: ignore[return-value]
            failure: Exception | None = None
        except AssertionError as error:
            failure = error
        if time.monotonic() > deadline:
            if failure is not None:
                raise failure
            raise AssertionError(f"not true within {within}s: last value {value!r}")
        await asyncio.sleep(interval)


async def routing_table(redis: Redis) -> RoutingTable:
    return await table.load(redis)


# --- manifests -------------------------------------------------------------------------


def http_source(name: str, **http: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": name},
        "spec": {"http": http},
    }


def service(name: str, port: int = 8080) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"port": port}]},
    }


def secret(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": data,
    }


def trigger(name: str, source: str, subscriber: str = "mailer", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": source, "subscriber": {"ref": {"name": subscriber}}}
    body.update(spec)
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": name},
        "spec": body,
    }
