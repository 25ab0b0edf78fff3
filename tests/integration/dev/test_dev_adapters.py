"""`tidings dev` runs the adapters of non-http EventSources too: one process, everything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dev_harness import Process, tidings

from tidings.cli.redis_server import free_port

SOURCE = """
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {name: configs, namespace: shop}
spec:
  kubernetes:
    resources:
    - {apiVersion: v1, kind: ConfigMap, namespace: NAMESPACE,
       labelSelector: {matchLabels: {app: demo}}}
---
apiVersion: tidings.dev/v1alpha1
kind: Trigger
metadata: {name: config-changes, namespace: shop}
spec:
  source: configs
  subscriber: {ref: {name: subscriber, port: 9000}, path: /configs}
"""


def test_a_kubernetes_eventsource_is_watched_and_its_events_delivered(
    tmp_path: Path,
    subscriber: tuple[Process, int],
    kubectl: Any,
    k8s_namespace: str,
    kubeconfig: Path,
) -> None:
    printer, port = subscriber
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "configs.yaml").write_text(SOURCE.replace("NAMESPACE", k8s_namespace))
    dev = Process(
        tidings(
            "dev",
            "-f",
            str(folder),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--service",
            f"subscriber=http://127.0.0.1:{port}",
        ),
        cwd=tmp_path,
        env={"KUBECONFIG": str(kubeconfig), "REDIS_URL": ""},
    )
    try:
        dev.wait_for("started the kubernetes adapter of EventSource shop/configs")
        dev.wait_for("ready")
        created = kubectl(
            "create", "configmap", "settings", "-n", k8s_namespace, "--from-literal=a=1"
        )
        assert created.returncode == 0, created.stderr
        labelled = kubectl("label", "configmap", "settings", "-n", k8s_namespace, "app=demo")
        assert labelled.returncode == 0, labelled.stderr
        printer.wait_for(r"received dev.tidings.kubernetes.\w+ id=\S+ on /configs", timeout=30)
        dev.wait_for(r"-> shop/config-changes: delivered dev.tidings.kubernetes")
        # A change of the source's spec restarts its adapter; removing it stops it.
        (folder / "configs.yaml").write_text(
            SOURCE.replace("NAMESPACE", k8s_namespace).replace("app: demo", "app: other")
        )
        dev.wait_for("started the kubernetes adapter of EventSource shop/configs", count=2)
        (folder / "configs.yaml").unlink()
        dev.wait_for("stopped the kubernetes adapter of EventSource shop/configs", count=2)
    finally:
        assert dev.stop() == 0, dev.output()
