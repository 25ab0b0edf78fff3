"""What the chart renders, for a matrix of values: names, security, probes,
RBAC, Redis wiring, scaling. Rendered by the real helm; the API server's
verdict on the same renders is in test_chart_on_apiserver.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet
from helm_harness import CHART, VALUES, Helm, Manifest, container, env_of, find, kinds, pod_specs

from tidings.api import keys
from tidings.operator import adapters, peering

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Each entry: a name and the helm arguments of one configuration.
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-features": {"values": [VALUES / "all-features.yaml"]},
    "external-redis": {"values": [VALUES / "external-redis.yaml"]},
    "minimal": {
        "set": [
            "dispatcher.autoscaling.enabled=false",
            "operator.peering.enabled=false",
            "redis.persistence.enabled=false",
            "sources.serviceAccount.create=false",
        ]
    },
    "external-url-secret": {
        "set": [
            "redis.enabled=false",
            "externalRedis.urlSecret.name=redis-url",
            "networkPolicy.enabled=true",
        ]
    },
}


@pytest.fixture(scope="module", params=sorted(MATRIX))
def rendered(request: pytest.FixtureRequest, helm: Helm) -> list[Manifest]:
    return helm.render(**MATRIX[request.param])


def normalized(rules: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rules as sorted (group, resource, verbs) tuples: the same grants compare equal."""
    grants = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.add((group, resource, tuple(sorted(rule["verbs"]))))
    return sorted(grants)


# --- lint ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], ["all-features.yaml"], ["external-redis.yaml"]])
def test_helm_lint_is_clean_with_defaults_and_with_every_feature_on(
    helm: Helm, values: list[str]
) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", "tidings"]
    for name in values:
        args += ["--values", str(VALUES / name)]
    done = helm.run(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


# --- shape of every configuration ----------------------------------------------------------


def test_every_pod_runs_under_the_restricted_pod_security_standard(
    rendered: list[Manifest],
) -> None:
    specs = list(pod_specs(rendered))
    assert specs
    for name, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] != 0, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert c["resources"]["requests"]["cpu"], name
            assert c["resources"]["requests"]["memory"], name
            assert c["livenessProbe"] and c["readinessProbe"], name


def test_every_object_carries_the_standard_labels(rendered: list[Manifest]) -> None:
    for o in rendered:
        labels = o["metadata"]["labels"]
        where = f"{o['kind']} {o['metadata']['name']}"
        for key in ("name", "instance", "version", "component", "part-of", "managed-by"):
            assert labels.get(f"app.kubernetes.io/{key}"), f"{where}: no app.kubernetes.io/{key}"


def test_the_dispatcher_has_no_kubernetes_api_access(rendered: list[Manifest]) -> None:
    account = find(rendered, "ServiceAccount", "tidings-dispatcher")
    assert account["automountServiceAccountToken"] is False
    pod = find(rendered, "Deployment", "tidings-dispatcher")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "tidings-dispatcher"
    for binding in (o for o in rendered if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        names = {s["name"] for s in binding["subjects"]}
        assert "tidings-dispatcher" not in names, binding["metadata"]["name"]


def test_the_operator_runs_one_replica_replaced_not_rolled(rendered: list[Manifest]) -> None:
    spec = find(rendered, "Deployment", "tidings-operator")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


# --- names and flags ---------------------------------------------------------------------


def test_a_release_named_tidings_gets_the_names_the_operator_defaults_to(helm: Helm) -> None:
    objects = helm.render("tidings", "eventing")
    find(objects, "Service", "tidings-ingest")
    find(objects, "ServiceAccount", "tidings-operator")
    args = container(objects, "Deployment", "tidings-operator")["args"]
    assert args[0] == "operator"
    assert "--ingest-service=tidings-ingest" in args
    assert "--ingest-namespace=eventing" in args
    assert "--adapter-service-account=tidings-source" in args
    assert not [a for a in args if a.startswith("--namespace")]  # all namespaces


def test_adapter_resources_and_pull_policy_reach_the_operator_as_flags(helm: Helm) -> None:
    args = container(helm.render(), "Deployment", "tidings-operator")["args"]
    flag = next(a for a in args if a.startswith("--adapter-resources="))
    resources = json.loads(flag.partition("=")[2])
    assert resources == adapters.DEFAULT_RESOURCES  # the chart's default is the operator's
    assert adapters.parse_resources(flag.partition("=")[2]) == resources
    assert "--adapter-image-pull-policy=IfNotPresent" in args
    sized = helm.render(set=["sources.resources.requests.cpu=1", "sources.imagePullPolicy=Always"])
    args = container(sized, "Deployment", "tidings-operator")["args"]
    flag = next(a for a in args if a.startswith("--adapter-resources="))
    assert json.loads(flag.partition("=")[2])["requests"]["cpu"] in (1, "1")
    assert "--adapter-image-pull-policy=Always" in args


def test_another_release_name_prefixes_every_name(helm: Helm) -> None:
    objects = helm.render("events", "eventing")
    find(objects, "Service", "events-tidings-ingest")
    args = container(objects, "Deployment", "events-tidings-operator")["args"]
    assert "--ingest-service=events-tidings-ingest" in args


def test_the_dispatcher_serves_ingest_health_and_readiness_on_8080(helm: Helm) -> None:
    objects = helm.render()
    c = container(objects, "Deployment", "tidings-dispatcher")
    assert c["args"][:2] == ["dispatcher", "--listen=0.0.0.0:8080"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = find(objects, "Service", "tidings-ingest")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pod = find(objects, "Deployment", "tidings-dispatcher")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # The drain on SIGTERM fits in the pod's grace period.
    grace = next(a for a in c["args"] if a.startswith("--grace="))
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(grace.split("=")[1])


def test_the_operator_probes_kopfs_liveness_endpoint(helm: Helm) -> None:
    c = container(helm.render(), "Deployment", "tidings-operator")
    assert "--liveness=0.0.0.0:8081" in c["args"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8081} in c["ports"]


def test_operator_and_dispatchers_read_the_same_mounted_seal_key(helm: Helm) -> None:
    objects = helm.render()
    secret = find(objects, "Secret", "tidings-seal-key")
    for name in ("tidings-operator", "tidings-dispatcher"):
        deployment = find(objects, "Deployment", name)
        c = deployment["spec"]["template"]["spec"]["containers"][0]
        assert env_of(c)["TIDINGS_SEAL_KEY_FILE"] == "/etc/tidings/seal/key"
        mount = next(m for m in c["volumeMounts"] if m["name"] == "seal-key")
        assert mount == {"name": "seal-key", "mountPath": "/etc/tidings/seal", "readOnly": True}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["seal-key"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_the_generated_seal_key_is_a_fernet_key_kept_on_uninstall(helm: Helm) -> None:
    first = find(helm.render(), "Secret", "tidings-seal-key")
    second = find(helm.render(), "Secret", "tidings-seal-key")
    key = base64.b64decode(first["data"]["key"])
    Fernet(key)  # raises unless 32 bytes of URL-safe base64
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert first["data"]["key"] != second["data"]["key"]  # random, not a constant
    assert first["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_an_existing_seal_key_secret_is_mounted_and_none_generated(helm: Helm) -> None:
    objects = helm.render(set=["sealKey.existingSecret=mine", "sealKey.existingSecretKey=fernet"])
    assert not [o for o in objects if o["kind"] == "Secret" and "seal" in o["metadata"]["name"]]
    deployment = find(objects, "Deployment", "tidings-operator")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["seal-key"]["secret"]["secretName"] == "mine"
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    assert env_of(c)["TIDINGS_SEAL_KEY_FILE"] == "/etc/tidings/seal/fernet"


# --- RBAC ----------------------------------------------------------------------------------


def test_operator_rbac_watching_all_namespaces_is_exactly_operator_rbac_py(helm: Helm) -> None:
    from tidings.operator import rbac

    objects = helm.render()
    role = find(objects, "ClusterRole", "tidings-operator")
    expected = rbac.NAMESPACED_RULES + rbac.CLUSTER_RULES + rbac.PEERING_CLUSTER_RULES
    assert normalized(role["rules"]) == normalized(expected)
    binding = find(objects, "ClusterRoleBinding", "tidings-operator")
    assert binding["roleRef"]["name"] == "tidings-operator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tidings-operator", "namespace": "tidings"}
    ]


def test_operator_rbac_with_watch_namespaces_is_bound_only_in_them(helm: Helm) -> None:
    from tidings.operator import rbac

    objects = helm.render(set=["operator.watchNamespaces={shop,billing}"])
    namespaced = find(objects, "ClusterRole", "tidings-operator")
    assert normalized(namespaced["rules"]) == normalized(
        rbac.NAMESPACED_RULES + rbac.PEERING_NAMESPACED_RULES
    )
    # Nothing cluster-wide: the operator needs no cluster-scoped rules.
    assert rbac.CLUSTER_RULES == []
    assert "ClusterRoleBinding" not in kinds(objects)
    bindings = [
        o for o in objects if o["kind"] == "RoleBinding" and "operator" in o["metadata"]["name"]
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["billing", "shop"]
    assert all(
        b["roleRef"]
        == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "tidings-operator",
        }
        for b in bindings
    )
    args = container(objects, "Deployment", "tidings-operator")["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=shop",
        "--namespace=billing",
    ]


def test_operator_rbac_without_peering_has_no_peering_rules_and_runs_standalone(
    helm: Helm,
) -> None:
    from tidings.operator import rbac

    objects = helm.render(set=["operator.peering.enabled=false"])
    role = find(objects, "ClusterRole", "tidings-operator")
    assert normalized(role["rules"]) == normalized(rbac.NAMESPACED_RULES + rbac.CLUSTER_RULES)
    assert "--standalone" in container(objects, "Deployment", "tidings-operator")["args"]
    assert "CustomResourceDefinition" not in kinds(objects)


def test_the_peering_crds_are_the_ones_the_operator_prints(helm: Helm) -> None:
    crds = {
        o["metadata"]["name"]: o for o in helm.render() if o["kind"] == "CustomResourceDefinition"
    }
    assert {name: crd["spec"] for name, crd in crds.items()} == {
        crd["metadata"]["name"]: crd["spec"] for crd in peering.CRDS
    }


def test_adapters_get_a_service_account_with_lease_rights_in_each_source_namespace(
    helm: Helm,
) -> None:
    objects = helm.render(set=["operator.watchNamespaces={shop,billing}"])
    accounts = [
        o
        for o in objects
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "tidings-source"
    ]
    assert sorted(a["metadata"]["namespace"] for a in accounts) == ["billing", "shop"]
    role = find(objects, "ClusterRole", "tidings-source")
    assert normalized(role["rules"]) == [
        ("coordination.k8s.io", "leases", ("create", "get", "update")),
        ("tidings.dev", "eventsources", ("get",)),
    ]
    bindings = [
        o
        for o in objects
        if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == "tidings-source"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["billing", "shop"]
    for b in bindings:
        assert b["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": "tidings-source",
                "namespace": b["metadata"]["namespace"],
            }
        ]
    # No watch rights unless kubernetes sources are given resources.
    assert not [o for o in objects if o["metadata"]["name"] == "tidings-source-watch"]


def test_kubernetes_sources_may_watch_the_configured_kinds_in_their_namespace_or_everywhere(
    helm: Helm, tmp_path: Path
) -> None:
    values = tmp_path / "watch.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "kubernetes": {"resources": [{"apiGroups": [""], "resources": ["configmaps"]}]}
                }
            }
        )
    )
    local = helm.render(values=[values], set=["sources.namespaces={shop}"])
    watch = find(local, "ClusterRole", "tidings-source-watch")
    assert normalized(watch["rules"]) == [("", "configmaps", ("get", "list", "watch"))]
    binding = find(local, "RoleBinding", "tidings-source-watch")
    assert binding["metadata"]["namespace"] == "shop"
    wide = helm.render(
        values=[values],
        set=["sources.namespaces={shop,ops}", "sources.kubernetes.clusterWide=true"],
    )
    binding = find(wide, "ClusterRoleBinding", "tidings-source-watch")
    assert {s["namespace"] for s in binding["subjects"]} == {"shop", "ops"}
    local_bindings = [
        o
        for o in wide
        if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "tidings-source-watch"
    ]
    assert local_bindings == []


# --- Redis -------------------------------------------------------------------------------


def test_bundled_redis_keeps_an_append_only_file_on_a_volume(helm: Helm) -> None:
    objects = helm.render()
    conf = find(objects, "ConfigMap", "tidings-redis")["data"]["redis.conf"]
    assert "appendonly yes" in conf
    assert "maxmemory-policy noeviction" in conf
    sts = find(objects, "StatefulSet", "tidings-redis")
    assert sts["spec"]["replicas"] == 1
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    c = sts["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert c["args"][0] == "/etc/redis/redis.conf"
    # Its password is generated, never in the pod spec.
    password = find(objects, "Secret", "tidings-redis")["data"]["password"]
    assert len(base64.b64decode(password)) >= 32
    assert base64.b64decode(password).decode() not in json.dumps(objects)


def test_bundled_redis_without_persistence_uses_an_empty_dir(helm: Helm) -> None:
    sts = find(helm.render(set=["redis.persistence.enabled=false"]), "StatefulSet", "tidings-redis")
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


def test_processes_reach_the_bundled_redis_by_its_cluster_wide_name(helm: Helm) -> None:
    objects = helm.render("tidings", "eventing")
    for name in ("tidings-operator", "tidings-dispatcher"):
        c = container(objects, "Deployment", name)
        names = [e["name"] for e in c["env"]]
        # $(REDIS_PASSWORD) expands only from a variable defined before it.
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
        url = env_of(c)["REDIS_URL"]
        assert url == "redis://:$(REDIS_PASSWORD)@tidings-redis.eventing.svc.cluster.local:6379/0"
    operator = env_of(container(objects, "Deployment", "tidings-operator"))
    # Adapters run in the EventSources' namespaces: they need the full name too.
    assert operator["TIDINGS_ADAPTER_REDIS_URL"] == operator["REDIS_URL"]
    assert operator["TIDINGS_IMAGE"] == "tidings:0.1.0"


def test_external_redis_with_tls_user_password_and_cluster_mode(helm: Helm) -> None:
    objects = helm.render(values=[VALUES / "external-redis.yaml"])
    assert "StatefulSet" not in kinds(objects)
    operator = container(objects, "Deployment", "tidings-operator")
    env = env_of(operator)
    assert env["REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": "redis-credentials", "key": "password"}
    }
    # The URL as given; user, password and TLS files are the settings every
    # process reads (tidings.api.settings), so the password needs no URL-escaping.
    assert env["REDIS_URL"] == "rediss://redis.data.svc.cluster.local:6380/0"
    assert env["REDIS_USERNAME"] == "tidings"
    assert env["REDIS_TLS_CA_FILE"] == "/etc/tidings/redis-ca/ca.crt"
    assert env["REDIS_TLS_CERT_FILE"] == "/etc/tidings/redis-client/tls.crt"
    assert env["REDIS_TLS_KEY_FILE"] == "/etc/tidings/redis-client/tls.key"
    # Adapters get the same URL; the operator hands them user, password and CA.
    assert env["TIDINGS_ADAPTER_REDIS_URL"] == env["REDIS_URL"]
    assert env["TIDINGS_REDIS_CLUSTER"] == "true"
    for name in ("tidings-operator", "tidings-dispatcher"):
        c = container(objects, "Deployment", name)
        mounts = c["volumeMounts"]
        assert {
            "name": "redis-ca",
            "mountPath": "/etc/tidings/redis-ca",
            "readOnly": True,
        } in mounts
        assert {
            "name": "redis-client",
            "mountPath": "/etc/tidings/redis-client",
            "readOnly": True,
        } in mounts
        pod = find(objects, "Deployment", name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["redis-ca"]["secret"]["secretName"] == "redis-ca"
        assert volumes["redis-client"]["secret"]["secretName"] == "tidings-redis-client"
        # Every path a setting names is mounted in that container.
        files = [v for k, v in env_of(c).items() if k.endswith("_FILE") and k.startswith("REDIS")]
        for path in files:
            assert any(path.startswith(m["mountPath"] + "/") for m in mounts), path
    dispatcher = env_of(container(objects, "Deployment", "tidings-dispatcher"))
    for name in (
        "REDIS_URL",
        "REDIS_USERNAME",
        "REDIS_PASSWORD",
        "REDIS_TLS_CA_FILE",
        "REDIS_TLS_CERT_FILE",
        "REDIS_TLS_KEY_FILE",
    ):
        assert dispatcher[name] == env[name], name
    assert dispatcher["TIDINGS_REDIS_CLUSTER"] == "true"


def test_external_redis_env_is_what_the_processes_read(helm: Helm) -> None:
    """The chart's variable names are the settings' own: a rename in either breaks this."""
    from tidings.api.settings import CommonSettings, _settings

    read = {meta.env for _, meta in _settings(CommonSettings)}
    objects = helm.render(values=[VALUES / "external-redis.yaml"])
    given = {
        n for n in env_of(container(objects, "Deployment", "tidings-dispatcher")) if "REDIS" in n
    }
    assert given - {"REDIS_ADDRESS", "TIDINGS_REDIS_CLUSTER"} <= read


def test_external_redis_url_from_a_secret(helm: Helm) -> None:
    objects = helm.render(**MATRIX["external-url-secret"])
    ref = {"secretKeyRef": {"name": "redis-url", "key": "url"}}
    for name in ("tidings-operator", "tidings-dispatcher"):
        env = env_of(container(objects, "Deployment", name))
        assert env["REDIS_URL"] == ref
        assert "REDIS_PASSWORD" not in env
    assert (
        env_of(container(objects, "Deployment", "tidings-operator"))["TIDINGS_ADAPTER_REDIS_URL"]
        == ref
    )
    # No bundled Redis, so no policy for it.
    policies = {o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies == {"tidings-dispatcher", "tidings-operator"}


# --- scaling ------------------------------------------------------------------------------


def test_the_hpa_scales_the_dispatchers_on_cpu_by_default(helm: Helm) -> None:
    objects = helm.render()
    hpa = find(objects, "HorizontalPodAutoscaler", "tidings-dispatcher")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tidings-dispatcher"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in find(objects, "Deployment", "tidings-dispatcher")["spec"]
    assert "behavior" not in hpa["spec"]  # Kubernetes' defaults


def test_the_hpa_takes_a_scaling_behavior(helm: Helm) -> None:
    objects = helm.render(
        set=["dispatcher.autoscaling.behavior.scaleDown.stabilizationWindowSeconds=60"]
    )
    hpa = find(objects, "HorizontalPodAutoscaler", "tidings-dispatcher")
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 60}}


def test_without_autoscaling_the_dispatcher_runs_the_replicas_given(helm: Helm) -> None:
    objects = helm.render(set=["dispatcher.autoscaling.enabled=false", "dispatcher.replicas=3"])
    assert "HorizontalPodAutoscaler" not in kinds(objects)
    assert find(objects, "Deployment", "tidings-dispatcher")["spec"]["replicas"] == 3


def test_keda_scales_on_the_lag_of_each_listed_trigger_instead_of_the_hpa(helm: Helm) -> None:
    objects = helm.render(values=[VALUES / "all-features.yaml"])
    assert "HorizontalPodAutoscaler" not in kinds(objects)
    assert "replicas" not in find(objects, "Deployment", "tidings-dispatcher")["spec"]
    scaled = find(objects, "ScaledObject", "tidings-dispatcher")
    assert scaled["spec"]["scaleTargetRef"] == {"name": "tidings-dispatcher"}
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [
        keys.stream("shop", "orders"),
        keys.stream("billing", "invoices"),
    ]
    assert [t["metadata"]["consumerGroup"] for t in triggers] == [
        keys.group("print-orders"),
        keys.group("archive"),
    ]
    for t in triggers:
        assert t["type"] == "redis-streams"
        assert t["metadata"]["addressFromEnv"] == "REDIS_ADDRESS"
        assert t["metadata"]["passwordFromEnv"] == "REDIS_PASSWORD"
        assert int(t["metadata"]["lagCount"]) > 0
    env = env_of(container(objects, "Deployment", "tidings-dispatcher"))
    assert env["REDIS_ADDRESS"] == "tidings-redis.tidings.svc.cluster.local:6379"


def test_keda_on_a_redis_cluster_uses_the_cluster_scaler_over_tls(helm: Helm) -> None:
    objects = helm.render(values=[VALUES / "external-redis.yaml"])
    trigger = find(objects, "ScaledObject")["spec"]["triggers"][0]
    assert trigger["type"] == "redis-cluster-streams"
    assert trigger["metadata"]["addressesFromEnv"] == "REDIS_ADDRESS"
    assert trigger["metadata"]["enableTLS"] == "true"
    env = env_of(container(objects, "Deployment", "tidings-dispatcher"))
    assert env["REDIS_ADDRESS"] == "redis.data.svc.cluster.local:6380"


def test_optional_objects_appear_only_when_enabled(helm: Helm) -> None:
    defaults = kinds(helm.render())
    for kind in ("ServiceMonitor", "PodDisruptionBudget", "NetworkPolicy", "ScaledObject"):
        assert kind not in defaults
    everything = helm.render(values=[VALUES / "all-features.yaml"])
    monitor = find(everything, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0] == {
        "port": "http",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    pdb = find(everything, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


def test_network_policies_open_ingest_and_close_redis_to_all_but_tidings(helm: Helm) -> None:
    objects = helm.render(values=[VALUES / "all-features.yaml"])
    ingest = find(objects, "NetworkPolicy", "tidings-dispatcher")["spec"]["ingress"]
    assert ingest == [
        {
            "ports": [{"port": "http", "protocol": "TCP"}],
            "from": [{"namespaceSelector": {"matchLabels": {"tidings-producer": "true"}}}],
        }
    ]
    redis = find(objects, "NetworkPolicy", "tidings-redis")["spec"]
    assert redis["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    peers = redis["ingress"][0]["from"]
    assert peers[0] == {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/instance": "tidings",
                "app.kubernetes.io/part-of": "tidings",
            }
        }
    }
    # Adapters, labelled so by the operator (tidings.operator.adapters), in the source namespaces.
    assert peers[1]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "tidings-source",
        "app.kubernetes.io/managed-by": "tidings-operator",
    }
    assert peers[1]["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "shop",
        "billing",
        "ops",
    ]
    open_ingest = helm.render(set=["networkPolicy.enabled=true"])
    assert (
        "from" not in find(open_ingest, "NetworkPolicy", "tidings-dispatcher")["spec"]["ingress"][0]
    )


def test_adapter_pods_match_the_redis_network_policy(helm: Helm) -> None:
    """The labels the policy admits are the ones the operator puts on adapter pods."""
    from tidings.api.types import EventSourceSpec
    from tidings.operator.adapters import AdapterSettings, adapter_deployment

    spec = EventSourceSpec.model_validate({"schedule": {"cron": "@hourly"}})
    deployment = adapter_deployment(
        "shop", "ticks", "uid", spec, AdapterSettings("img", "redis://x")
    )
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    redis = find(helm.render(set=["networkPolicy.enabled=true"]), "NetworkPolicy", "tidings-redis")
    admitted = redis["spec"]["ingress"][0]["from"][1]["podSelector"]["matchLabels"]
    assert admitted.items() <= pod_labels.items()


def test_an_optional_pod_monitor_scrapes_the_adapters_in_the_source_namespaces(
    helm: Helm,
) -> None:
    """The PodMonitor selects the pods the operator makes (tidings.operator.adapters) on
    their `metrics` port, in sources.namespaces, or every namespace when empty."""
    from tidings.api.types import EventSourceSpec
    from tidings.operator.adapters import AdapterSettings, adapter_deployment

    assert "PodMonitor" not in kinds(helm.render())
    objects = helm.render(
        set=[
            "sources.podMonitor.enabled=true",
            "sources.podMonitor.interval=15s",
            "sources.podMonitor.labels.release=prometheus",
            "sources.namespaces={shop,billing}",
        ]
    )
    monitor = find(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["shop", "billing"]}
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    spec = EventSourceSpec.model_validate({"schedule": {"cron": "@hourly"}})
    pod = adapter_deployment("shop", "ticks", "uid", spec, AdapterSettings("img", "redis://x"))[
        "spec"
    ]["template"]
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= pod["metadata"]["labels"].items()
    ports = [p["name"] for p in pod["spec"]["containers"][0]["ports"]]
    assert "metrics" in ports
    everywhere = find(helm.render(set=["sources.podMonitor.enabled=true"]), "PodMonitor")
    assert everywhere["spec"]["namespaceSelector"] == {"any": True}


# --- values documentation -------------------------------------------------------------------


def _undescribed(values: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Paths in `values` the schema does not type and describe. Free-form maps
    (resources, labels, annotations…) are described as a whole."""
    if not schema.get("description") or not ("type" in schema or "anyOf" in schema):
        return [f"{path}: no type or description in values.schema.json"]
    if not isinstance(values, dict) or "properties" not in schema:
        return []
    missing = []
    for key, value in values.items():
        child = schema["properties"].get(key)
        if child is None:
            missing.append(f"{path}.{key}: not in values.schema.json")
        else:
            missing += _undescribed(value, child, f"{path}.{key}")
    return missing


def test_every_value_is_typed_and_described_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    schema.setdefault("description", "the chart's values")
    assert _undescribed(values, schema, "values") == []


def test_every_key_in_values_yaml_has_a_comment() -> None:
    """A comment right above each key, or the key opens a group with its
    parent or follows a sibling: a key after a blank line or at the end of a
    nested block must say what it is."""

    def indent(text: str) -> int:
        return len(text) - len(text.lstrip())

    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        above = lines[number - 1] if number else ""
        commented = above.strip().startswith("#")
        grouped = above.strip() and not commented and indent(above) <= indent(line)
        if not (commented or grouped):
            undocumented.append(f"values.yaml:{number + 1}: {stripped}")
    assert not undocumented, "\n".join(undocumented)


def test_values_yaml_is_valid_against_its_own_schema(helm: Helm, tmp_path: Path) -> None:
    # helm validates the defaults on every render; a render with none set proves it.
    assert helm.template().returncode == 0


# --- destination policy ----------------------------------------------------------------


def test_operator_and_dispatchers_get_the_same_destination_policy(helm: Helm) -> None:
    objects = helm.render(
        set=[
            "destinations.allowLoopback=true",
            "destinations.nodeAddresses={10.0.0.0/24}",
            "destinations.allow={svc.cluster.local,203.0.113.0/24}",
            "destinations.deny={10.9.0.0/16}",
        ]
    )
    for name in ("tidings-operator", "tidings-dispatcher"):
        env = env_of(container(objects, "Deployment", name))
        assert env["TIDINGS_DESTINATIONS_LOOPBACK"] == "allow"
        assert env["TIDINGS_DESTINATIONS_NODE"] == "refuse"
        assert env["TIDINGS_HOST_IPS"] == {"fieldRef": {"fieldPath": "status.hostIPs"}}
        assert env["TIDINGS_NODE_ADDRESSES"] == "$(TIDINGS_HOST_IPS),10.0.0.0/24"
        assert env["TIDINGS_DESTINATIONS_ALLOW"] == "svc.cluster.local,203.0.113.0/24"
        assert env["TIDINGS_DESTINATIONS_DENY"] == "10.9.0.0/16"
    defaults = env_of(container(helm.render(), "Deployment", "tidings-dispatcher"))
    assert defaults["TIDINGS_DESTINATIONS_LOOPBACK"] == "refuse"
    assert "TIDINGS_DESTINATIONS_ALLOW" not in defaults


def _subscriber_peers(objects: list[Manifest]) -> list[dict[str, Any]]:
    policy = find(objects, "NetworkPolicy", "tidings-dispatcher")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    egress = policy["egress"]
    assert egress[0] == {
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    }
    return egress[-1]["to"]  # type: ignore[no-any-return]


def test_the_dispatchers_egress_policy_refuses_what_the_destination_policy_refuses(
    helm: Helm,
) -> None:
    objects = helm.render(
        set=[
            "networkPolicy.enabled=true",
            "destinations.deny={10.0.0.0/8,internal.example.com,fd00::/8,198.51.100.7}",
            "destinations.nodeAddresses={192.168.50.0/24}",
        ]
    )
    v4, v6, pods = _subscriber_peers(objects)
    assert v4["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/4", "100.100.100.200/32"} <= set(
        v4["ipBlock"]["except"]
    )
    assert {"10.0.0.0/8", "198.51.100.7/32", "192.168.50.0/24"} <= set(v4["ipBlock"]["except"])
    assert v6["ipBlock"]["cidr"] == "::/0"
    assert {"fe80::/10", "fd00:ec2::254/128", "ff00::/8", "fd00::/8"} <= set(
        v6["ipBlock"]["except"]
    )
    assert "internal.example.com" not in json.dumps(v4) + json.dumps(v6)  # names: the app's
    assert pods == {"namespaceSelector": {}}
    # Redis (bundled) is reachable; node addresses become reachable when allowed.
    policy = find(objects, "NetworkPolicy", "tidings-dispatcher")["spec"]
    assert policy["egress"][1]["ports"] == [{"port": "redis", "protocol": "TCP"}]
    allowed = helm.render(
        set=[
            "networkPolicy.enabled=true",
            "destinations.nodeAddresses={192.168.50.0/24}",
            "destinations.allowNodeAddresses=true",
        ]
    )
    assert "192.168.50.0/24" not in _subscriber_peers(allowed)[0]["ipBlock"]["except"]


def test_an_allow_list_limits_the_dispatchers_egress_to_its_cidrs(helm: Helm) -> None:
    objects = helm.render(
        set=[
            "networkPolicy.enabled=true",
            "destinations.allow={203.0.113.0/24,svc.cluster.local,10.1.2.3}",
            "networkPolicy.egressTo[0].ipBlock.cidr=10.20.0.5/32",
        ]
    )
    assert _subscriber_peers(objects) == [
        {"ipBlock": {"cidr": "203.0.113.0/24"}},
        {"ipBlock": {"cidr": "10.1.2.3/32"}},
    ]
    egress = find(objects, "NetworkPolicy", "tidings-dispatcher")["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.20.0.5/32"}}]} in egress
