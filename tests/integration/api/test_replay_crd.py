"""The Replay CRD on a real kube-apiserver: one source of events, a spec that
cannot change once created (a CEL transition rule), printer columns; and the
Trigger's startFrom and delivery.delay, the EventSource's http.maxDelay."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def crds_installed(kubectl: Kubectl) -> Iterator[None]:
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    assert applied.returncode == 0, applied.stderr
    for name in ("replays.tidings.dev", "triggers.tidings.dev", "eventsources.tidings.dev"):
        waited = kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
        assert waited.returncode == 0, waited.stderr
    yield


def _apply(kubectl: Kubectl, namespace: str, manifest: dict[str, Any], *extra: str) -> Any:
    return kubectl("apply", "-n", namespace, *extra, "-f", "-", input=yaml.safe_dump(manifest))


def _replay(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"trigger": "welcome-email", "from": {"deadLetters": {}}}
    body.update(spec)
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "Replay",
        "metadata": {"name": "r"},
        "spec": body,
    }


def _trigger(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": "users-db", "subscriber": {"ref": {"name": "mailer"}}}
    body.update(spec)
    return {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "Trigger",
        "metadata": {"name": "t"},
        "spec": body,
    }


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no from", {**_replay(), "spec": {"trigger": "t"}}, "spec.from: Required value"),
    ("empty from", _replay(**{"from": {}}), "set exactly one of deadLetters or stream"),
    (
        "both sources",
        _replay(**{"from": {"deadLetters": {}, "stream": {}}}),
        "set exactly one of deadLetters or stream",
    ),
    (
        "since and ids",
        _replay(**{"from": {"deadLetters": {"since": "2h", "ids": ["1-0"]}}}),
        "set at most one of since or ids",
    ),
    (
        "a dead letter id that is none",
        _replay(**{"from": {"deadLetters": {"ids": ["abc"]}}}),
        "spec.from.deadLetters.ids[0]",
    ),
    (
        "since in days",
        _replay(**{"from": {"deadLetters": {"since": "2d"}}}),
        "spec.from.deadLetters.since",
    ),
    (
        "stream window not a time",
        _replay(**{"from": {"stream": {"since": "yesterday"}}}),
        "spec.from.stream.since",
    ),
    (
        "stream window backwards",
        _replay(
            **{
                "from": {
                    "stream": {"since": "2026-11-29T10:00:00Z", "until": "2026-11-29T09:00:00Z"}
                }
            }
        ),
        "until must be after since",
    ),
    ("zero rate", _replay(rate={"perSecond": 0}), "spec.rate.perSecond"),
    ("startFrom gibberish", _trigger(startFrom="yesterday"), "spec.startFrom"),
    ("delay in days", _trigger(delivery={"delay": "1d"}), "spec.delivery.delay"),
]


@pytest.mark.parametrize(("case", "manifest", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_replay_or_time_field_is_rejected_naming_it(
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


def test_time_fields_are_accepted_and_defaulted(
    crds_installed: None, kubectl: Kubectl, k8s_namespace: str
) -> None:
    for start in ("now", "beginning", "2026-11-29T10:00:00Z", "2026-11-29T10:00:00.5+01:00"):
        done = _apply(kubectl, k8s_namespace, _trigger(startFrom=start), "--dry-run=server")
        assert done.returncode == 0, f"{start}: {done.stderr}"
    done = _apply(kubectl, k8s_namespace, _trigger(), "--dry-run=server", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spec"]["startFrom"] == "now"
    source = {
        "apiVersion": "tidings.dev/v1alpha1",
        "kind": "EventSource",
        "metadata": {"name": "s"},
        "spec": {"http": {}},
    }
    done = _apply(kubectl, k8s_namespace, source, "--dry-run=server", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spec"]["http"]["maxDelay"] == "168h"


def test_replay_spec_cannot_be_edited_once_created(
    crds_installed: None, kubectl: Kubectl, k8s_namespace: str
) -> None:
    window = {"stream": {"since": "2026-11-29T10:00:00Z", "filter": {"types": ["a"]}}}
    assert _apply(kubectl, k8s_namespace, _replay(**{"from": window})).returncode == 0
    edited = _apply(kubectl, k8s_namespace, _replay(**{"from": window}, rate={"perSecond": 5}))
    assert edited.returncode != 0
    assert "spec is immutable: a Replay runs once" in edited.stderr, edited.stderr
    # Status is not spec: the operator still reports progress.
    status = {"status": {"phase": "Running", "total": 10, "sent": 4, "delivered": 3}}
    patched = kubectl(
        "patch",
        "-n",
        k8s_namespace,
        "replay/r",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )
    assert patched.returncode == 0, patched.stderr
    table = kubectl("get", "-n", k8s_namespace, "replays")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "TRIGGER",
        "PHASE",
        "TOTAL",
        "SENT",
        "DELIVERED",
        "FAILED",
        "AGE",
    ]
    assert row.split()[:6] == ["r", "welcome-email", "Running", "10", "4", "3"]
    wide = kubectl("get", "-n", k8s_namespace, "rpl", "-o", "wide")
    assert "SKIPPED" in wide.stdout.splitlines()[0], wide.stdout


def test_tidings_replay_cluster_creates_a_replay_object(
    crds_installed: None, kubectl: Kubectl, k8s_namespace: str, kubeconfig: Path
) -> None:
    import sys

    tidings = str(Path(sys.executable).parent / "tidings")
    done = subprocess.run(
        [tidings, "replay", f"{k8s_namespace}/welcome", "--since", "2h", "--cluster"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("replay.tidings.dev/welcome-replay-"), done.stdout
    listing = kubectl("get", "-n", k8s_namespace, "replays", "-o", "json")
    items = json.loads(listing.stdout)["items"]
    assert [i["spec"] for i in items] == [
        {"trigger": "welcome", "from": {"deadLetters": {"since": "2h"}}}
    ]
    refused = subprocess.run(
        [tidings, "replay", f"{k8s_namespace}/welcome", "--all", "--cluster", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert refused.returncode == 2 and "--dry-run and --limit work without it" in refused.stderr
