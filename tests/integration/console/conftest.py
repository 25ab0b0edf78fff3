"""One real Tidings for the console's browser tests (module-scoped: the operator,
dispatcher and console start once; the tests run in the order of a user's day)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from console_harness import (
    REPO,
    Process,
    Stack,
    Subscriber,
    as_yaml_list,
    chromium_path,
    eventually,
    free_port,
    manifest,
    rbac,
    wait_http,
)

from tidings.api.sealing import new_key


def chart_console_account(
    kubectl: Any, admin: Path, release: str, namespace: str, path: Path
) -> Path:
    """The console's ServiceAccount, ClusterRole and binding as the chart renders
    them (console.enabled), applied; a kubeconfig with that account's token."""
    helm = (
        subprocess.run(
            ["bash", str(REPO / "hack" / "build-helm.sh")],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    rendered = subprocess.run(
        [
            helm,
            "template",
            release,
            str(REPO / "helm" / "tidings"),
            "--namespace",
            namespace,
            "--set",
            "console.enabled=true",
            "--show-only",
            "templates/console/serviceaccount.yaml",
            "--show-only",
            "templates/console/rbac.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    _apply(kubectl, rendered)
    account = f"{release}-tidings-console"
    token = kubectl("create", "token", account, "-n", namespace, "--duration=1h")
    assert token.returncode == 0, token.stderr
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": account, "user": {"token": token.stdout.strip()}}]
    cluster = config["clusters"][0]["name"]
    config["contexts"] = [{"name": account, "context": {"cluster": cluster, "user": account}}]
    config["current-context"] = account
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _apply(kubectl: Any, text: str) -> None:
    done = kubectl("apply", "-f", "-", input=text)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def stack(
    kubectl: Any, redis_url: str, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    chromium_path()  # fail first, and clearly, without a browser
    logs = tmp_path_factory.mktemp("console-stack")
    redis.Redis.from_url(redis_url).flushdb()
    peering = subprocess.run(
        [sys.executable, "-m", "tidings.cli", "operator", "--print-peering-crds"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert kubectl("apply", "-f", str(REPO / "crds")).returncode == 0
    _apply(kubectl, peering)
    assert (
        kubectl(
            "wait",
            "--for=condition=Established",
            "crd/triggers.tidings.dev",
            "crd/eventsources.tidings.dev",
            "crd/kopfpeerings.kopf.dev",
        ).returncode
        == 0
    )
    suffix = uuid.uuid4().hex[:5]
    ns_a, ns_b, ns_console = f"shop-{suffix}", f"billing-{suffix}", f"tidings-{suffix}"
    for namespace in (ns_a, ns_b, ns_console):
        assert kubectl("create", "namespace", namespace).returncode == 0
    # The console runs as the chart's own ServiceAccount, with exactly its roles.
    console_kubeconfig = chart_console_account(
        kubectl, kubeconfig, f"c{suffix}", ns_console, logs / "console.kubeconfig"
    )
    subscriber = Subscriber()
    seal = new_key()
    ingest_port, console_port = free_port(), free_port()
    env = {
        "TIDINGS_SEAL_KEY": seal,
        "KUBECONFIG": str(kubeconfig),
        "TIDINGS_DESTINATIONS_LOOPBACK": "allow",  # the subscriber listens on loopback
    }
    operator = Process(
        "operator",
        [
            "operator",
            "--namespace",
            ns_a,
            "--namespace",
            ns_b,
            "--redis-url",
            redis_url,
            "--kubeconfig",
            str(kubeconfig),
            "--health-interval",
            "0.3",
            "--image",
            "tidings:test",
        ],
        logs / "operator.log",
        env,
    ).start()
    dispatcher = Process(
        "dispatcher",
        ["dispatcher", "--listen", f"127.0.0.1:{ingest_port}", "--redis-url", redis_url],
        logs / "dispatcher.log",
        env,
    ).start()
    # As the chart's Secret gives every replica the same key (test_replay_direct… posts
    # a form of this console to a second one).
    csrf_key = secrets.token_urlsafe(48)
    console = Process(
        "console",
        [
            "console",
            "--listen",
            f"127.0.0.1:{console_port}",
            "--redis-url",
            redis_url,
            "--kubeconfig",
            str(console_kubeconfig),
        ],
        logs / "console.log",
        {**env, "TIDINGS_CONSOLE_CSRF_KEY": csrf_key},
    ).start()
    _apply(kubectl, as_yaml_list(rbac(ns_a, ns_b)))
    anonymous = {"http": {"auth": {"allowAnonymous": True}}}
    fast_retry = {"retry": {"maxAttempts": 2, "initialDelay": "100ms", "maxDelay": "200ms"}}
    objects = [
        manifest("EventSource", "orders", ns_a, anonymous),
        manifest(
            "Trigger",
            "receipts",
            ns_a,
            {"source": "orders", "subscriber": {"uri": subscriber.url("/ok")}},
        ),
        manifest(
            "Trigger",
            "mailer",
            ns_a,
            {
                "source": "orders",
                "subscriber": {"uri": subscriber.url("/bad")},
                "delivery": fast_retry,
            },
        ),
        manifest(
            "Trigger",
            "archive",
            ns_a,
            {"source": "orders", "subscriber": {"uri": subscriber.url("/ok")}, "paused": True},
        ),
        manifest("EventSource", "ticks", ns_a, {"schedule": {"cron": "@hourly"}}),
        manifest("EventSource", "payments", ns_b, anonymous),
        manifest(
            "Trigger",
            "ledger",
            ns_b,
            {
                "source": "payments",
                "subscriber": {"uri": subscriber.url("/bad")},
                "delivery": fast_retry,
            },
        ),
    ]
    _apply(kubectl, as_yaml_list(objects))
    # The schedule source's adapter, as its Deployment would run it (this API
    # server has no kubelet to run the one the operator makes).
    ticks = Process(
        "source-ticks",
        ["source", "schedule", "--eventsource", f"{ns_a}/ticks", "--redis-url", redis_url,
         "--kubeconfig", str(kubeconfig)],
        logs / "source-ticks.log",
        env,
    ).start()  # fmt: skip
    shots = REPO / "docs" / "console" if os.environ.get("TIDINGS_CONSOLE_SCREENSHOTS") else logs
    stack = Stack(
        kubectl=kubectl,
        ns_a=ns_a,
        ns_b=ns_b,
        subscriber=subscriber,
        console_url=f"http://127.0.0.1:{console_port}/",
        ingest_url=f"http://127.0.0.1:{ingest_port}",
        redis_url=redis_url,
        console=console,
        csrf_key=csrf_key,
        shots=shots,
        console_kubeconfig=console_kubeconfig,
        logs=logs,
    )
    try:
        wait_http(f"{stack.console_url}healthz")
        wait_http(f"{stack.ingest_url}/healthz")

        def all_ready() -> bool:
            for namespace, name in ((ns_a, "receipts"), (ns_a, "mailer"), (ns_b, "ledger")):
                status = stack.trigger(namespace, name).get("status") or {}
                ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
                if not ready or ready[0]["status"] != "True":
                    return False
            return True

        eventually(all_ready, within=60)
        yield stack
    finally:
        for process in (console, ticks, dispatcher, operator):
            process.stop()
        subscriber.stop()
        for namespace in (ns_a, ns_b, ns_console):
            kubectl("delete", "namespace", namespace, "--wait=false")
        for process in (operator, dispatcher, ticks, console):
            print(f"----- {process.name} log (tail) -----")
            print("\n".join(process.logs().splitlines()[-60:]))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()
