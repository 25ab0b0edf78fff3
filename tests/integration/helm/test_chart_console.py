"""The chart's optional console (console.enabled): off by default; when on, a
Deployment, a Service and a ServiceAccount whose ClusterRole holds only what the
console needs (docs/console.md, "Security"). Rendered by the real helm."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from helm_harness import VALUES, Helm, container, find

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NAME = "tidings-console"


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_console_is_off_by_default(helm: Helm) -> None:
    rendered = helm.render()
    assert not [o for o in rendered if "console" in o["metadata"]["name"]]


def test_enabled_it_runs_tidings_console_behind_a_service(helm: Helm) -> None:
    rendered = helm.render(set=["console.enabled=true"])
    c = container(rendered, "Deployment", NAME)
    assert c["args"][:4] == ["console", "--listen=0.0.0.0:8090", "--auth=token", "--replay=object"]
    assert "--ingest-url=http://tidings-ingest.tidings.svc.cluster.local:80" in c["args"]
    assert {e["name"] for e in c["env"]} >= {"REDIS_URL", "REDIS_PASSWORD"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pod = find(rendered, "Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == NAME
    # It reads no secrets: the seal key is not mounted.
    assert "seal-key" not in {v["name"] for v in pod["volumes"]}
    service = find(rendered, "Service", NAME)
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_its_service_account_has_only_what_the_console_needs(helm: Helm) -> None:
    rendered = helm.render(set=["console.enabled=true"])
    role = find(rendered, "ClusterRole", NAME)
    assert grants(role["rules"]) == {
        ("tidings.dev", "eventsources", "get"),
        ("tidings.dev", "eventsources", "list"),
        ("tidings.dev", "triggers", "get"),
        ("tidings.dev", "triggers", "list"),
        ("tidings.dev", "triggers", "patch"),
        ("tidings.dev", "replays", "get"),
        ("tidings.dev", "replays", "list"),
        ("tidings.dev", "replays", "create"),
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    binding = find(rendered, "ClusterRoleBinding", NAME)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": "tidings"}]


def test_proxy_auth_needs_the_proxy_addresses(helm: Helm) -> None:
    done = helm.template(set=["console.enabled=true", "console.auth=proxy"])
    assert done.returncode != 0
    assert "console.trustedProxies" in done.stderr
    rendered = helm.render(
        set=[
            "console.enabled=true",
            "console.auth=proxy",
            "console.trustedProxies={10.0.0.0/8,192.168.1.5/32}",
            "console.secureCookie=true",
        ]
    )
    args = container(rendered, "Deployment", NAME)["args"]
    assert "--auth=proxy" in args and "--secure-cookie" in args
    assert "--trusted-proxy=10.0.0.0/8" in args and "--trusted-proxy=192.168.1.5/32" in args


def test_a_bad_console_value_is_refused_naming_it(helm: Helm) -> None:
    done = helm.template(set=["console.enabled=true", "console.auth=anonymous"])
    assert done.returncode != 0
    assert "console" in done.stderr and "auth" in done.stderr


def test_with_an_external_tls_redis_it_gets_the_credentials_and_certificates(helm: Helm) -> None:
    rendered = helm.render(values=[VALUES / "external-redis.yaml"], set=["console.enabled=true"])
    c = container(rendered, "Deployment", NAME)
    env = {e["name"] for e in c["env"]}
    assert env >= {"REDIS_URL", "REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_TLS_CA_FILE"}
    assert {m["name"] for m in c["volumeMounts"]} == {"tmp", "csrf-key", "redis-ca", "redis-client"}


def test_every_replica_signs_csrf_tokens_with_the_key_of_one_generated_secret(
    helm: Helm,
) -> None:
    """A form served by one replica posts to another (console.replicas > 1); the
    Secret is read back with lookup on upgrades (test_chart_on_apiserver.py)."""
    rendered = helm.render(set=["console.enabled=true", "console.replicas=3"])
    secret = find(rendered, "Secret", "tidings-console-csrf-key")
    assert len(base64.b64decode(secret["data"]["key"])) == 64  # 48 random bytes, base64
    c = container(rendered, "Deployment", NAME)
    assert {"name": "TIDINGS_CONSOLE_CSRF_KEY_FILE", "value": "/etc/tidings/console-csrf/key"} in c[
        "env"
    ]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "csrf-key")
    assert mount == {"name": "csrf-key", "mountPath": "/etc/tidings/console-csrf", "readOnly": True}
    pod = find(rendered, "Deployment", NAME)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "csrf-key")
    assert volume["secret"]["secretName"] == "tidings-console-csrf-key"
    assert not [o for o in helm.render() if o["metadata"]["name"] == "tidings-console-csrf-key"]
