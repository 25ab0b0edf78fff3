"""values.schema.json and the chart's own checks refuse bad values before
anything reaches the cluster, with a message naming the value and the fix."""

from __future__ import annotations

import pytest
from helm_harness import Helm

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("dispatcher.replicas=-1", "at '/dispatcher/replicas': minimum: got -1, want 0"),
        ("logFormat=xml", "at '/logFormat': value must be one of 'json', 'text'"),
        ("dispatcher.replica=2", "at '/dispatcher': additional properties 'replica' not allowed"),
        ("operator.watchNamespaces={Shop_NS}", "at '/operator/watchNamespaces/0'"),
        ("dispatcher.keda.enabled=true", "at '/dispatcher/keda/triggers': minItems: got 0, want 1"),
        ("image.digest=latest", "at '/image/digest'"),
        ("externalRedis.url=http://redis:6379", "at '/externalRedis/url'"),
        ("redis.appendfsync=no", "at '/redis/appendfsync': value must be one of"),
        ("dispatcher.autoscaling.targetCPUUtilizationPercentage=0", "minimum: got 0, want 1"),
        ("dispatcher.pdb.minAvailable=half", "at '/dispatcher/pdb/minAvailable'"),
        ("operator.livenessPort=70000", "at '/operator/livenessPort': maximum"),
    ],
)
def test_the_schema_rejects_a_bad_value_naming_it(helm: Helm, setting: str, message: str) -> None:
    done = helm.template(set=[setting])
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert message in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["redis.enabled=false"],
            "externalRedis: redis.enabled is false, so set externalRedis.url "
            "(e.g. redis://my-redis:6379/0) or externalRedis.urlSecret.name",
        ),
        (
            ["externalRedis.url=redis://mine:6379/0"],
            "externalRedis is set but redis.enabled is true",
        ),
        (
            [
                "redis.enabled=false",
                "externalRedis.url=redis://mine:6379/0",
                "externalRedis.tls.caSecret=ca",
            ],
            "externalRedis.tls.caSecret: TLS needs a rediss:// URL",
        ),
        (
            [
                "dispatcher.autoscaling.minReplicas=5",
                "dispatcher.autoscaling.maxReplicas=2",
            ],
            "dispatcher.autoscaling.maxReplicas must be at least minReplicas",
        ),
        (
            [
                "redis.enabled=false",
                "externalRedis.urlSecret.name=url",
                "dispatcher.keda.enabled=true",
                "dispatcher.keda.triggers[0].namespace=shop",
                "dispatcher.keda.triggers[0].source=orders",
                "dispatcher.keda.triggers[0].trigger=mail",
            ],
            "dispatcher.keda.address: set host:port of your Redis",
        ),
    ],
)
def test_combinations_the_schema_cannot_express_fail_with_the_fix(
    helm: Helm, settings: list[str], message: str
) -> None:
    done = helm.template(set=settings)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_good_values_pass(helm: Helm) -> None:
    done = helm.template(
        set=[
            "dispatcher.replicas=0",
            "logFormat=text",
            "operator.watchNamespaces={shop}",
            "image.digest=sha256:" + "a" * 64,
            "dispatcher.pdb.minAvailable=50%",
        ]
    )
    assert done.returncode == 0, done.stderr
    assert 'image: "tidings@sha256:' + "a" * 64 in done.stdout
