"""What Kopf keeps per object: the body a daemon sees has no managedFields, and
the strings of all bodies are shared.

Kopf keeps the body of every object with a daemon (EventSources, Replays; the
work queue keeps each Trigger's, trimmed the same way: test_operator_trim.py),
and the field-ownership bookkeeping the API server adds was most of each. This
runs the real Kopf in this process against the real kube-apiserver, with the
operator's own trimming registered, and looks at the body a daemon is handed
(a daemon on Triggers here: the test's own, two specs to compare).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import kopf
import pytest
from operator_harness import Cluster, eventually, http_source, trigger

from tidings.api.types import GROUP, VERSION
from tidings.operator import handlers
from tidings.operator.kube import connection_info

pytestmark = pytest.mark.integration


async def test_a_daemon_body_keeps_no_managed_fields_and_shares_its_strings(
    cluster: Cluster, kubeconfig: Path
) -> None:
    registry = kopf.OperatorRegistry()
    handlers.keep_bodies_small(registry)
    bodies: dict[str, kopf.Body] = {}

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(str(kubeconfig))

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        handlers.configure(settings)

    @kopf.daemon(GROUP, VERSION, "triggers", registry=registry)
    async def hold(name: str, body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
        bodies[name] = body  # Kopf's live body: each event replaces its content
        await stopped.wait()

    cluster.apply(http_source("users"), trigger("welcome", "users"), trigger("goodbye", "users"))
    stop = asyncio.Event()
    running = asyncio.create_task(
        kopf.operator(
            registry=registry,
            namespaces=[cluster.namespace],
            clusterwide=False,
            standalone=True,
            stop_flag=stop,
        )
    )
    try:
        await eventually(lambda: {"welcome", "goodbye"} <= bodies.keys(), within=30)
        # An update: kubectl's and Kopf's owners are on the object by now.
        cluster.apply(trigger("welcome", "users", delivery={"timeout": "7s"}))
        await eventually(
            lambda: bodies["welcome"]["spec"].get("delivery", {}).get("timeout") == "7s"
        )
        stored = cluster.kubectl(
            "get",
            "-n",
            cluster.namespace,
            "trigger",
            "welcome",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
            "--show-managed-fields",
        ).stdout.split()
        assert "kubectl-client-side-apply" in stored  # the server has them...
        assert "managedFields" not in bodies["welcome"]["metadata"]  # ...Kopf keeps none
        assert bodies["welcome"]["metadata"]["finalizers"] == [handlers.FINALIZER]
        stored_metadata = cluster.kubectl(
            "get", "-n", cluster.namespace, "trigger", "welcome", "-o", "jsonpath={.metadata}"
        ).stdout
        assert handlers.LAST_APPLIED in stored_metadata  # kubectl's copy is stored...
        assert handlers.LAST_APPLIED not in bodies["welcome"]["metadata"].get("annotations", {})

        # The update came in a watch event of its own, decoded apart from the
        # other body, yet both hold one string object per key and short value.
        welcome, goodbye = bodies["welcome"]["spec"], bodies["goodbye"]["spec"]
        assert next(k for k in welcome if k == "source") is next(
            k for k in goodbye if k == "source"
        )
        assert welcome["source"] == "users"
        assert welcome["source"] is goodbye["source"]
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 30)
