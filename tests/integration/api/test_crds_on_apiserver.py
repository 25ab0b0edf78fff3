"""The generated CRDs on a real kube-apiserver: examples accepted, bad manifests
rejected with the field or rule named, printer columns and the category work."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
Kubectl = Callable[..., subprocess.CompletedProcess[str]]
# Argo CD and Flux objects in examples/gitops/: their CRDs belong to those
# projects and are not on the test server (the gitops tree itself is built
# and applied in tests/integration/helm).
FOREIGN_GROUPS = {"argoproj.io", "source.toolkit.fluxcd.io", "kustomize.toolkit.fluxcd.io"}


@pytest.fixture(scope="module")
def crds_installed(kubectl: Kubectl) -> Iterator[None]:
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    assert applied.returncode == 0, applied.stderr
    for name in (
        "eventsources.tidings.dev",
        "triggers.tidings.dev",
        "replays.tidings.dev",
        "triggergrants.tidings.dev",
    ):
        waited = kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
        assert waited.returncode == 0, waited.stderr
    yield


def _apply(
    kubectl: Kubectl, namespace: str, manifest: dict[str, Any] | str, *extra: str
) -> subprocess.CompletedProcess[str]:
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
    return kubectl("apply", "-n", namespace, *extra, "-f", "-", input=text)


def test_every_example_manifest_is_accepted(
    crds_installed: None, kubectl: Kubectl, k8s_namespace: str
) -> None:
    files = sorted(p for p in (REPO / "examples").rglob("*.yaml") if p.name != "kustomization.yaml")
    assert len(files) >= 3
    applied = 0
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for doc in docs:
            if doc.get("apiVersion", "").split("/")[0] in FOREIGN_GROUPS:
                continue
            applied += 1
            # Examples name their own namespace; the test puts them in a fresh one.
            doc.setdefault("metadata", {})["namespace"] = k8s_namespace
            result = _apply(kubectl, k8s_namespace, doc, "--dry-run=server")
            assert result.returncode == 0, f"{path.relative_to(REPO)}: {result.stderr}"
    assert applied >= 10


def _trigger(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"source": "users-db", "subscriber": {"ref": {"name": "mailer"}}}
    base.update(spec)
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": "t"},
        "spec": base,
    }


def _source(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "s"},
        "spec": spec,
    }


PG = {"connectionSecretRef": {"name": "db", "key": "dsn"}, "tables": ["public.users"]}

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("source without a kind", _source(), "exactly one of http, postgres, kubernetes, schedule"),
    (
        "source with two kinds",
        _source(http={}, schedule={"cron": "* * * * *"}),
        "exactly one of http, postgres",
    ),
    (
        "postgres without tables",
        _source(postgres={"connectionSecretRef": PG["connectionSecretRef"]}),
        "spec.postgres.tables: Required value",
    ),
    ("postgres with no tables", _source(postgres={**PG, "tables": []}), "spec.postgres.tables"),
    (
        "postgres bad operation",
        _source(postgres={**PG, "operations": ["upsert"]}),
        'spec.postgres.operations[0]: Unsupported value: "upsert"',
    ),
    (
        "postgres bad table name",
        _source(postgres={**PG, "tables": ["users; drop"]}),
        "spec.postgres.tables[0]",
    ),
    ("cron not cron", _source(schedule={"cron": "every day"}), "spec.schedule.cron"),
    ("retention in days", _source(http={}, retention={"maxAge": "7d"}), "spec.retention.maxAge"),
    (
        "trigger without subscriber",
        {**_trigger(), "spec": {"source": "users-db"}},
        "spec.subscriber: Required value",
    ),
    (
        "ref and uri",
        _trigger(subscriber={"ref": {"name": "m"}, "uri": "http://x"}),
        "set exactly one of ref or uri",
    ),
    ("neither ref nor uri", _trigger(subscriber={"path": "/x"}), "set exactly one of ref or uri"),
    ("uri with path", _trigger(subscriber={"uri": "http://x", "path": "/y"}), "path goes with ref"),
    ("uri not http", _trigger(subscriber={"uri": "ftp://x"}), "spec.subscriber.uri"),
    ("timeout in words", _trigger(delivery={"timeout": "10 seconds"}), "spec.delivery.timeout"),
    (
        "maxDelay below initialDelay",
        _trigger(delivery={"retry": {"initialDelay": "1h", "maxDelay": "1s"}}),
        "retry.maxDelay must be at least retry.initialDelay",
    ),
    (
        "unknown backoff",
        _trigger(delivery={"retry": {"backoff": "random"}}),
        'spec.delivery.retry.backoff: Unsupported value: "random"',
    ),
    ("jitter above 1", _trigger(delivery={"retry": {"jitter": 2}}), "spec.delivery.retry.jitter"),
    (
        "retryOn gibberish",
        _trigger(delivery={"retry": {"retryOn": ["sometimes"]}}),
        "spec.delivery.retry.retryOn[0]",
    ),
    (
        "unknown format",
        _trigger(delivery={"format": "xml"}),
        'spec.delivery.format: Unsupported value: "xml"',
    ),
    ("zero concurrency", _trigger(delivery={"concurrency": 0}), "spec.delivery.concurrency"),
    (
        "dead-letter retention of no entries",
        _trigger(delivery={"deadLetterRetention": {"maxEvents": 0}}),
        "spec.delivery.deadLetterRetention.maxEvents",
    ),
    (
        "dead-letter retention in days",
        _trigger(delivery={"deadLetterRetention": {"maxAge": "30d"}}),
        "spec.delivery.deadLetterRetention.maxAge",
    ),
    (
        "port out of range",
        _trigger(subscriber={"ref": {"name": "m", "port": 70000}}),
        "spec.subscriber.ref.port",
    ),
    ("bad source name", _trigger(source="Users_DB"), "spec.source"),
    (
        "zero rate",
        _trigger(delivery={"rateLimit": {"perSecond": 0}}),
        "spec.delivery.rateLimit.perSecond",
    ),
    ("unknown field", _trigger(colour="red"), 'unknown field "spec.colour"'),
    (
        "header name with a colon",
        _trigger(delivery={"headers": {"Host:admin.internal": "x"}}),
        'spec.delivery.headers: Invalid value: "object": a header name is letters',
    ),
    (
        "header name with a space",
        _trigger(delivery={"headers": {"X Tenant": "x"}}),
        'spec.delivery.headers: Invalid value: "object": a header name is letters',
    ),
    (
        "header value on two lines",
        _trigger(delivery={"headers": {"X-Tenant": "a\r\nHost: admin.internal"}}),
        'spec.delivery.headers: Invalid value: "object": a header value may not contain CR',
    ),
    (
        "too many headers",
        _trigger(delivery={"headers": {f"X-{n}": "x" for n in range(65)}}),
        "spec.delivery.headers: Too many: 65: must have at most 64 items",
    ),
    (
        "dead letter with both",
        _trigger(delivery={"deadLetter": {"uri": "http://x", "ref": {"name": "d"}}}),
        "spec.delivery.deadLetter: Invalid value",
    ),
]


@pytest.mark.parametrize(("case", "manifest", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(
    crds_installed: None,
    kubectl: Kubectl,
    k8s_namespace: str,
    case: str,
    manifest: dict[str, Any],
    message: str,
) -> None:
    result = _apply(kubectl, k8s_namespace, manifest, "--dry-run=server")
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, f"{case}: {result.stderr}"


def test_ordinary_headers_are_accepted(
    crds_installed: None, kubectl: Kubectl, k8s_namespace: str
) -> None:
    headers = {"X-Tenant": "acme", "x-api-version": "2024-01-01", "X_Odd!#$%&'*+.^`|~": "ok"}
    result = _apply(
        kubectl, k8s_namespace, _trigger(delivery={"headers": headers}), "--dry-run=server"
    )
    assert result.returncode == 0, result.stderr


def test_defaults_are_filled_by_the_api_server(
    crds_installed: None, kubectl: Kubectl, k8s_namespace: str
) -> None:
    result = _apply(kubectl, k8s_namespace, _trigger(), "--dry-run=server", "-o", "json")
    assert result.returncode == 0, result.stderr
    delivery = json.loads(result.stdout)["spec"]["delivery"]
    assert delivery["retry"]["maxAttempts"] == 12
    assert delivery["retry"]["retryOn"] == ["network", "timeout", "408", "429", "5xx"]
    assert delivery["timeout"] == "10s" and delivery["format"] == "binary"
    assert delivery["deadLetterRetention"] == {"maxAge": "720h", "maxEvents": 100000}


def test_get_shows_printer_columns_and_the_tidings_category(
    crds_installed: None, kubectl: Kubectl, k8s_namespace: str
) -> None:
    assert _apply(kubectl, k8s_namespace, _source(http={})).returncode == 0
    assert _apply(kubectl, k8s_namespace, _trigger(source="s")).returncode == 0
    status = {
        "status": {
            "subscriberURI": "http://mailer.ns.svc.cluster.local",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ready",
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "delivery": {"state": "Delivering", "lag": 7},
        }
    }
    patched = kubectl(
        "patch",
        "-n",
        k8s_namespace,
        "trigger/t",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    assert patched.returncode == 0, patched.stderr
    table = kubectl("get", "-n", k8s_namespace, "triggers")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "SOURCE", "SUBSCRIBER", "READY", "STATE", "LAG", "AGE"]
    assert row.split()[:6] == [
        "t",
        "s",
        "http://mailer.ns.svc.cluster.local",
        "True",
        "Delivering",
        "7",
    ]
    deadline = time.monotonic() + 10
    while True:
        everything = kubectl("get", "-n", k8s_namespace, "tidings", "-o", "name")
        names = set(everything.stdout.split())
        if {
            "eventsource.tidings.dev/s",
            "trigger.tidings.dev/t",
        } <= names or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # discovery of a new category can lag a moment
    assert {"eventsource.tidings.dev/s", "trigger.tidings.dev/t"} <= names, everything.stderr
    short = kubectl("get", "-n", k8s_namespace, "trg,evs", "-o", "name")
    assert "trigger.tidings.dev/t" in short.stdout, short.stderr
