"""A whole Tidings for the console's browser tests, every part real: the
kube-apiserver of hack/control-plane.sh with the CRDs, `tidings operator`,
`tidings dispatcher` and `tidings console` as subprocesses on the test-env
Redis, a subscriber whose answer the test switches, and Debian's chromium
driven by Playwright."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[3]
T = TypeVar("T")

CHROMIUM_HINT = (
    "Debian's chromium is needed for the console's browser tests: apt-get install -y chromium "
    "(hack/test-env.sh up installs it on a fresh machine), or set CHROMIUM=/path/to/chromium"
)


def chromium_path() -> str:
    """Debian's chromium; Playwright never downloads a browser here."""
    candidate = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(candidate, os.X_OK):
        pytest.fail(f"{candidate} not found. {CHROMIUM_HINT}", pytrace=False)
    return candidate


def child_env(**extra: str) -> dict[str, str]:
    """This test's environment for a `tidings` child, without the TLS Redis's
    variables hack/test-env.sh exports (REDIS_TLS_CA_FILE would make a process
    refuse the plain redis:// URL it is given)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_TLS_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(check: Callable[[], T], *, within: float = 20.0, interval: float = 0.2) -> T:
    """Retry `check` until it returns something truthy without an AssertionError."""
    deadline = time.monotonic() + within
    while True:
        failure: AssertionError | None = None
        try:
            value = check()
            if value:
                return value
        except AssertionError as error:
            failure = error
        if time.monotonic() > deadline:
            if failure is not None:
                raise failure
            raise AssertionError(f"not true within {within}s: last value {value!r}")
        time.sleep(interval)


class Subscriber:
    """An HTTP subscriber on loopback: answers `status` (switchable), records ids."""

    def __init__(self) -> None:
        self.status = 200
        self.received: list[dict[str, str]] = []
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace")
                code = subscriber.status if self.path.startswith("/bad") else 200
                subscriber.received.append(
                    {"path": self.path, "id": self.headers.get("ce-id", ""), "status": str(code)}
                )
                answer = b'{"error": "mailer is down"}' if code >= 400 else b"ok"
                self.send_response(code)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                del body

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def delivered(self, path: str) -> list[str]:
        return [r["id"] for r in self.received if r["path"] == path and r["status"] == "200"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Process:
    """A `tidings` subcommand with its output in a file."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tidings.cli", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(**self.env),
            cwd=REPO,
        )
        log.close()
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def wait_http(url: str, within: float = 120.0) -> None:
    import urllib.error
    import urllib.request

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status < 500)
        except urllib.error.HTTPError as error:
            return error.code < 500
        except OSError:
            return False

    eventually(answers, within=within)


def manifest(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def rbac(namespace_a: str, namespace_b: str) -> list[dict[str, Any]]:
    """Two ServiceAccounts in namespace A: `editor` (read, pause, replay in A and
    B) and `viewer` (read and replay in A only)."""
    rules_read = {
        "apiGroups": ["tidings.dev"],
        "resources": ["triggers", "eventsources"],
        "verbs": ["get", "list", "watch"],
    }
    replay = {"apiGroups": ["tidings.dev"], "resources": ["replays"], "verbs": ["create", "list"]}
    patch = {"apiGroups": ["tidings.dev"], "resources": ["triggers"], "verbs": ["patch"]}
    suffix = namespace_a
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"console-editor-{suffix}"},
            "rules": [rules_read, replay, patch],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"console-viewer-{suffix}"},
            "rules": [rules_read, replay],
        },
    ]
    for sa in ("editor", "viewer"):
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": sa, "namespace": namespace_a},
            }
        )
    bindings = [("editor", namespace_a), ("editor", namespace_b), ("viewer", namespace_a)]
    for sa, namespace in bindings:
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"console-{sa}", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"console-{sa}-{suffix}",
                },
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace_a}],
            }
        )
    return objects


@dataclass
class Stack:
    kubectl: Any
    ns_a: str
    ns_b: str
    subscriber: Subscriber
    console_url: str
    ingest_url: str
    redis_url: str
    console: Process
    csrf_key: str  # TIDINGS_CONSOLE_CSRF_KEY of the console
    shots: Path
    console_kubeconfig: Path
    logs: Path

    def token(self, service_account: str) -> str:
        done = self.kubectl("create", "token", service_account, "-n", self.ns_a)
        assert done.returncode == 0, done.stderr
        return str(done.stdout.strip())

    def trigger(self, namespace: str, name: str) -> dict[str, Any]:
        done = self.kubectl("get", "trigger", name, "-n", namespace, "-o", "json")
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))


def as_yaml_list(objects: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
