"""kubectl and helm for the in-cluster tests, and the pieces they deploy: the
sink (a subscriber counting deliveries by id) and producer pods, both running
tests/e2e/e2e_app.py from the Tidings image."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "tidings"
APP = Path(__file__).with_name("e2e_app.py")

RELEASE = "tidings"
NAMESPACE = "tidings-e2e"  # the release
APP_NAMESPACE = "e2e-app"  # the sink, an http EventSource and its Trigger
INGEST = f"http://tidings-ingest.{NAMESPACE}.svc.cluster.local"
DISPATCHERS = "app.kubernetes.io/component=dispatcher"

HOW_TO_GET_A_CLUSTER = (
    "the in-cluster tests need a Kubernetes cluster with the Tidings image loaded: "
    "run them with hack/test.sh (it starts one), or `hack/cluster.sh up && "
    'eval "$(hack/cluster.sh env)"` first (where Docker runs: hack/kind-e2e.sh)'
)


class KubeError(AssertionError):
    pass


@dataclass
class Cluster:
    kubeconfig: str
    kubectl_bin: str
    helm_bin: str
    values: Path
    upgrade_tag: str
    postgres_image: str
    s3_image: str = ""  # Versity Gateway (hack/build-images.sh versitygw)
    report: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def image(self) -> str:
        image = yaml.safe_load(self.values.read_text())["image"]
        return f"{image['repository']}:{image['tag']}"

    @property
    def pull_policy(self) -> str:
        return str(yaml.safe_load(self.values.read_text())["image"].get("pullPolicy", "Never"))

    def _run(self, argv: list[str], stdin: str | None, timeout: float, check: bool) -> str:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and done.returncode != 0:
            raise KubeError(f"{' '.join(argv[:6])}… failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 120, check: bool = True
    ) -> str:
        return self._run([self.kubectl_bin, *args], stdin, timeout, check)

    def helm(self, *args: str, timeout: float = 600) -> str:
        return self._run([self.helm_bin, *args], None, timeout, True)

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-f", "-", stdin=manifest)

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        argv = ["-n", namespace, "pods"] + (["-l", selector] if selector else [])
        return list(self.get(*argv)["items"])

    def restarts(self, namespace: str) -> dict[str, int]:
        return {
            pod["metadata"]["name"]: sum(
                c.get("restartCount", 0) for c in pod["status"].get("containerStatuses", [])
            )
            for pod in self.pods(namespace)
        }

    def exec_python(self, namespace: str, target: str, code: str, *args: str) -> str:
        return self.kubectl("-n", namespace, "exec", target, "--", "python", "-c", code, *args)

    def note(self, **figures: Any) -> None:
        """Figures printed at the end of the run (pytest_terminal_summary)."""
        self.report.append(figures)


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except KubeError as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}: {last}")
        time.sleep(every)


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def app_configmap(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "namespace", namespace, check=False)
    cluster.apply(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "e2e-app", "namespace": namespace},
                "data": {"e2e_app.py": APP.read_text()},
            }
        )
    )


def deploy_sink(cluster: Cluster, namespace: str, name: str = "sink") -> None:
    """A Deployment + Service `name` on port 9000 counting deliveries by id."""
    app_configmap(cluster, namespace)
    labels = {"app": name}
    cluster.apply(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "selector": {"matchLabels": labels},
                        "template": {
                            "metadata": {"labels": labels},
                            "spec": {
                                "securityContext": pod_security(),
                                "containers": [
                                    {
                                        "name": "sink",
                                        "image": cluster.image,
                                        "imagePullPolicy": cluster.pull_policy,
                                        "command": ["python", "/app/e2e_app.py", "sink"],
                                        "ports": [{"containerPort": 9000}],
                                        "readinessProbe": {
                                            "tcpSocket": {"port": 9000},
                                            "periodSeconds": 1,
                                        },
                                        "securityContext": container_security(),
                                        "volumeMounts": [{"name": "app", "mountPath": "/app"}],
                                    }
                                ],
                                "volumes": [{"name": "app", "configMap": {"name": "e2e-app"}}],
                            },
                        },
                    },
                },
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"selector": labels, "ports": [{"port": 9000, "targetPort": 9000}]},
                },
            ]
        )
    )
    cluster.kubectl("-n", namespace, "rollout", "status", f"deployment/{name}", "--timeout=120s")


STATS = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen('http://127.0.0.1:9000/stats?' + sys.argv[1]).read().decode())"
)


def sink_stats(cluster: Cluster, namespace: str, prefix: str, expect: int) -> dict[str, Any]:
    out = cluster.exec_python(
        namespace, "deployment/sink", STATS, f"prefix={prefix}&expect={expect}"
    )
    return dict(json.loads(out))


def start_producer(
    cluster: Cluster,
    namespace: str,
    *,
    ingest: str,
    source: str,
    token_secret: str,
    prefix: str,
    count: int,
    rate: float,
) -> str:
    """A pod sending `count` events to `source` (NS/NAME) through `ingest` (a
    Service URL); returns its name. producer_result() waits for its summary."""
    name = f"produce-{prefix.strip('-')}"
    cluster.kubectl("-n", namespace, "delete", "pod", name, "--ignore-not-found", "--wait")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "producer"}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security(),
            "containers": [
                {
                    "name": "produce",
                    "image": cluster.image,
                    "imagePullPolicy": cluster.pull_policy,
                    "command": [
                        "sh",
                        "-c",
                        'exec python /app/e2e_app.py produce --token "$TOKEN" "$@"',
                        "produce",
                        f"--url={ingest}/sources/{source}",
                        f"--prefix={prefix}",
                        f"--count={count}",
                        f"--rate={rate}",
                    ],
                    "env": [
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "token"}},
                        }
                    ],
                    "securityContext": container_security(),
                    "volumeMounts": [{"name": "app", "mountPath": "/app"}],
                }
            ],
            "volumes": [{"name": "app", "configMap": {"name": "e2e-app"}}],
        },
    }
    cluster.apply(yaml.safe_dump(pod))
    return name


def producer_result(cluster: Cluster, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    def finished() -> str:
        phase = cluster.kubectl(
            "-n", namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}"
        )
        return phase if phase in ("Succeeded", "Failed") else ""

    phase = wait_until(f"producer {name}", finished, timeout)
    logs = cluster.kubectl("-n", namespace, "logs", name)
    results = [line for line in logs.splitlines() if line.startswith("RESULT ")]
    assert phase == "Succeeded" and results, f"producer {name} {phase}:\n{logs[-3000:]}"
    return dict(json.loads(results[-1][len("RESULT ") :]))


def conditions(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, str]:
    found = cluster.get("-n", namespace, kind, name)
    return {c["type"]: c["status"] for c in found.get("status", {}).get("conditions", [])}


def ready(cluster: Cluster, namespace: str, kind: str, name: str) -> bool:
    return conditions(cluster, namespace, kind, name).get("Ready") == "True"


def wait_ready(
    cluster: Cluster, namespace: str, kind: str, name: str, timeout: float = 120
) -> None:
    wait_until(
        f"{kind} {namespace}/{name} Ready", lambda: ready(cluster, namespace, kind, name), timeout
    )


def dispatcher_pods(cluster: Cluster, namespace: str) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in cluster.pods(namespace, DISPATCHERS)
        if not p["metadata"].get("deletionTimestamp")
    ]


def delivered_all(cluster: Cluster, prefix: str, count: int, timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        stats = sink_stats(cluster, APP_NAMESPACE, prefix, count)
        return stats if stats["missing"] == 0 else None

    try:
        return dict(wait_until(f"all {count} {prefix}* events at the sink", check, timeout, 2))
    except AssertionError as error:
        raise AssertionError(
            f"{error}\nnow: {sink_stats(cluster, APP_NAMESPACE, prefix, count)}"
        ) from None
