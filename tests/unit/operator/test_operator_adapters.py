"""The objects an EventSource owns, as manifests."""

from __future__ import annotations

import pytest

from tidings.api.types import EventSourceSpec
from tidings.operator import adapters
from tidings.operator.adapters import AdapterSettings

SETTINGS = AdapterSettings(image="tidings:1.0", redis_url="redis://:pw@redis:6379/0")
POSTGRES = EventSourceSpec.model_validate(
    {"postgres": {"connectionSecretRef": {"name": "db", "key": "dsn"}, "tables": ["public.users"]}}
)


def test_the_adapter_runs_tidings_source_for_its_eventsource_owned_by_it() -> None:
    deployment = adapters.adapter_deployment("shop", "users-db", "uid-1", POSTGRES, SETTINGS)
    meta = deployment["metadata"]
    assert meta["name"] == "tidings-source-users-db"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "tidings.dev/v1alpha1",
            "kind": "EventSource",
            "name": "users-db",
            "uid": "uid-1",
            "controller": True,
        }
    ]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = spec["template"]["spec"]["containers"][0]
    assert container["image"] == "tidings:1.0"
    assert container["args"] == ["source", "postgres", "--eventsource", "shop/users-db"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TIDINGS_PG_DSN"]["valueFrom"] == {"secretKeyRef": {"name": "db", "key": "dsn"}}
    # The Redis URL (it may carry a password) is never written into the Deployment.
    assert "pw" not in str(deployment)
    assert container["envFrom"] == [{"secretRef": {"name": "tidings-source-users-db"}}]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


def test_the_config_secret_holds_the_redis_url() -> None:
    secret = adapters.adapter_config_secret("shop", "users-db", "uid-1", SETTINGS)
    assert secret["stringData"] == {"REDIS_URL": "redis://:pw@redis:6379/0"}
    assert secret["metadata"]["name"] == adapters.adapter_name("users-db")


def test_the_template_hash_changes_with_the_spec_and_only_then() -> None:
    one = adapters.adapter_deployment("shop", "db", "u", POSTGRES, SETTINGS)
    again = adapters.adapter_deployment("shop", "db", "u", POSTGRES, SETTINGS)
    changed = EventSourceSpec.model_validate(
        {"postgres": {"connectionSecretRef": {"name": "db", "key": "dsn"}, "tables": ["a.b"]}}
    )
    other = adapters.adapter_deployment("shop", "db", "u", changed, SETTINGS)
    assert adapters.template_hash(one) == adapters.template_hash(again)
    assert adapters.template_hash(one) != adapters.template_hash(other)


def test_long_source_names_still_give_a_valid_deployment_name() -> None:
    name = adapters.adapter_name("x" * 63)
    assert len(name) <= 63 and name.startswith("tidings-source-")
    assert name != adapters.adapter_name("x" * 62 + "y")


def test_http_sources_get_a_generated_token_only_without_other_credentials() -> None:
    def spec(auth: dict[str, object]) -> EventSourceSpec:
        return EventSourceSpec.model_validate({"http": {"auth": auth}})

    assert adapters.needs_generated_token(spec({}))
    assert not adapters.needs_generated_token(spec({"allowAnonymous": True}))
    assert not adapters.needs_generated_token(spec({"tokenSecretRef": {"name": "t", "key": "k"}}))
    assert not adapters.needs_generated_token(spec({"hmacSecretRef": {"name": "h", "key": "k"}}))
    assert not adapters.needs_generated_token(POSTGRES)


def test_the_generated_token_secret_is_named_by_the_contract_and_random() -> None:
    one = adapters.token_secret("shop", "web", "uid")
    two = adapters.token_secret("shop", "web", "uid")
    assert one["metadata"]["name"] == "web-ingest-token"
    assert len(one["stringData"]["token"]) >= 32
    assert one["stringData"] != two["stringData"]


def test_the_ingest_url_names_the_ingest_service_and_the_source() -> None:
    assert adapters.ingest_url(
        "shop", "web", service="tidings-ingest", service_namespace="tidings"
    ) == ("http://tidings-ingest.tidings.svc.cluster.local/sources/shop/web")


def test_adapter_resources_and_pull_policy_come_from_the_operators_flags() -> None:
    default = adapters.adapter_deployment("shop", "users-db", "u", POSTGRES, SETTINGS)
    container = default["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == adapters.DEFAULT_RESOURCES
    one_core = AdapterSettings(
        image="tidings:1.0",
        redis_url="redis://redis:6379/0",
        image_pull_policy="Always",
        resources=adapters.parse_resources('{"requests": {"cpu": 1, "memory": "128Mi"}}'),
    )
    sized = adapters.adapter_deployment("shop", "users-db", "u", POSTGRES, one_core)
    container = sized["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "128Mi"}}
    assert container["imagePullPolicy"] == "Always"
    # A new size rolls the adapters (the template hash moves).
    assert adapters.template_hash(sized) != adapters.template_hash(default)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cpu=1", "not JSON"),
        ('{"requests": {"gpu": 1}}', "requests takes `cpu` and/or `memory`"),
        ('{"request": {"cpu": 1}}', "`requests` and/or `limits`"),
        ('{"limits": {"memory": "lots"}}', "limits.memory='lots' is not a Kubernetes quantity"),
    ],
)
def test_bad_adapter_resources_are_refused_naming_the_flag(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="--adapter-resources") as refused:
        adapters.parse_resources(text)
    assert message in str(refused.value)


@pytest.mark.parametrize("kind", ["postgres", "schedule"])
def test_the_adapter_serves_health_and_metrics_on_8080_with_a_generous_liveness_probe(
    kind: str,
) -> None:
    spec = (
        POSTGRES
        if kind == "postgres"
        else EventSourceSpec.model_validate({"schedule": {"cron": "* * * * *"}})
    )
    deployment = adapters.adapter_deployment("shop", "src", "u", spec, SETTINGS)
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TIDINGS_SOURCE_LISTEN"] == "0.0.0.0:8080"
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # At least a minute of silence before a restart: a slow database must not kill it.
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60
    assert probe["timeoutSeconds"] >= 5
    # No readiness probe: AdapterReady counts available replicas, and a retrying
    # adapter or a standby is alive, not unavailable.
    assert "readinessProbe" not in container
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_operators_otel_variables_reach_every_adapter() -> None:
    """Tracing is configured once, on the operator; its adapters trace the same way."""
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_SAMPLER": "x"}
    settings = AdapterSettings(image="tidings:1.0", redis_url="redis://r:6379/0", otel_env=otel)
    deployment = adapters.adapter_deployment("shop", "users-db", "u", POSTGRES, settings)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector:4318"
    assert env["OTEL_TRACES_SAMPLER"] == "x"
    plain = adapters.adapter_deployment("shop", "users-db", "u", POSTGRES, SETTINGS)
    assert adapters.template_hash(plain) != adapters.template_hash(deployment)


def test_an_operator_on_a_redis_cluster_tells_its_adapters_so() -> None:
    """TIDINGS_REDIS_CLUSTER travels in the adapter's config Secret (envFrom), and
    `tidings source` reads it from there: in-cluster adapters use a cluster client."""
    from tidings.api.settings import load
    from tidings.operator.main import OperatorSettings, settings_from
    from tidings.sources.cli import SourceSettings

    def secret_of(environ: dict[str, str]) -> dict[str, str]:
        operator = load(OperatorSettings, environ=environ)
        adapter = settings_from(operator).adapters
        secret = adapters.adapter_config_secret("shop", "users-db", "u", adapter)
        data: dict[str, str] = secret["stringData"]
        return data

    url = {"REDIS_URL": "redis://redis-0.data:6379/0"}
    on_cluster = secret_of({**url, "TIDINGS_REDIS_CLUSTER": "true"})
    assert on_cluster["TIDINGS_REDIS_CLUSTER"] == "true"
    assert load(SourceSettings, environ=on_cluster).redis_cluster
    # Not on a cluster: the Secret is as before (no roll of existing adapters).
    assert secret_of(url) == {"REDIS_URL": "redis://redis-0.data:6379/0"}
    assert not load(SourceSettings, environ=secret_of(url)).redis_cluster
