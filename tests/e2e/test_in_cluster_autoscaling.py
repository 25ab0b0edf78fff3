"""The chart's dispatcher HorizontalPodAutoscaler at work: metrics-server
(hack/cluster.sh installs it behind the aggregation layer) reports the
dispatchers' CPU, the HPA adds dispatchers under a stream of events and
removes them once it ends, and nothing is lost while it does."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from e2e_kube import (
    CHART,
    INGEST,
    RELEASE,
    Cluster,
    delivered_all,
    dispatcher_pods,
    producer_result,
    sink_stats,
    start_producer,
    wait_until,
)

HPA = f"{RELEASE}-dispatcher"


def pod_metrics(cluster: Cluster, namespace: str) -> dict[str, str]:
    """CPU of each dispatcher pod, as the HPA reads it (metrics.k8s.io)."""
    found = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"
            "?labelSelector=app.kubernetes.io/component%3Ddispatcher",
        )
    )
    return {
        item["metadata"]["name"]: item["containers"][0]["usage"]["cpu"]
        for item in found.get("items", [])
    }


def hpa_status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return dict(cluster.get("-n", namespace, "hpa", HPA).get("status", {}))


@pytest.mark.timeout(1800)
def test_the_dispatcher_hpa_scales_up_under_load_and_back_down(
    cluster: Cluster, release: str, app: str
) -> None:
    wait_until(
        "metrics-server to report the dispatchers' CPU (hack/cluster.sh installs it)",
        lambda: pod_metrics(cluster, release),
        240,
        5,
    )
    # One dispatcher at rest (~1% of its 250m request). A low target (10%): on
    # this 2-core machine shared by other work the dispatcher gets ~50-60m
    # under the stream (~22%), so 30% was never reached. Scale-down after
    # 30 s, not Kubernetes' 5 minutes.
    cluster.helm(
        "upgrade", RELEASE, str(CHART), "-n", release, "--reuse-values",
        "--set", "dispatcher.autoscaling.enabled=true",
        "--set", "dispatcher.autoscaling.minReplicas=1",
        "--set", "dispatcher.autoscaling.maxReplicas=3",
        "--set", "dispatcher.autoscaling.targetCPUUtilizationPercentage=10",
        "--set", "dispatcher.autoscaling.behavior.scaleDown.stabilizationWindowSeconds=30",
        "--wait", "--timeout", "5m",
    )  # fmt: skip
    wait_until(
        "the HPA to read CPU and settle at 1 dispatcher",
        lambda: (
            hpa_status(cluster, release).get("currentMetrics")
            and len(dispatcher_pods(cluster, release)) == 1
            and hpa_status(cluster, release).get("desiredReplicas") == 1
        ),
        300,
        5,
    )
    # The producer pod is CPU-bound here too (~20-40 events/s while the
    # machine is shared): 6,000 events keep the dispatchers busy for minutes.
    rate, seconds = 200, 30
    count = rate * seconds
    started = time.monotonic()
    producer = start_producer(
        cluster,
        app,
        ingest=INGEST,
        source=f"{app}/load",
        token_secret="load-ingest",
        prefix="hpa-",
        count=count,
        rate=rate,
    )
    readings: list[dict[str, Any]] = []

    def scaled_up() -> bool:
        current = hpa_status(cluster, release)
        readings.append(
            {
                "t": round(time.monotonic() - started),
                "desired": current.get("desiredReplicas"),
                "cpu": pod_metrics(cluster, release),
            }
        )
        return len(dispatcher_pods(cluster, release)) > 1

    wait_until("the HPA to add dispatchers under load", scaled_up, 300, 5)
    up_after = round(time.monotonic() - started)
    most = 0

    def producer_done() -> bool:
        nonlocal most
        most = max(most, len(dispatcher_pods(cluster, release)))
        phase = cluster.kubectl("-n", app, "get", "pod", producer, "-o", "jsonpath={.status.phase}")
        return phase in ("Succeeded", "Failed")

    wait_until("the stream to end", producer_done, 600, 5)
    sent = producer_result(cluster, app, producer, 60)
    stats = delivered_all(cluster, "hpa-", count, 300)
    ended = time.monotonic()
    wait_until(
        "the HPA to go back to 1 dispatcher",
        lambda: len(dispatcher_pods(cluster, release)) == 1,
        300,
        5,
    )
    down_after = round(time.monotonic() - ended)
    cluster.note(
        test="hpa",
        events=count,
        rate=rate,
        scaled_up_after_s=up_after,
        most_dispatchers=most,
        back_to_one_after_s=down_after,
        readings=readings[-3:],
        producer=sent,
        sink={k: stats[k] for k in ("unique", "duplicates", "missing")},
    )
    assert most > 1
    assert sent["accepted"] == count, sent
    assert stats["unique"] == count, sink_stats(cluster, app, "hpa-", count)
