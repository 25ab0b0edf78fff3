"""The chart under test, rendered by the real helm (built from Go modules by
hack/build-helm.sh, or $HELM); helpers to pick rendered objects apart."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "tidings"
VALUES = Path(__file__).parent / "values"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Helm:
    binary: str

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # No user config or cache: the chart has no dependencies to fetch.
        env = {**os.environ, "HELM_CACHE_HOME": "/tmp/tidings-helm-cache"}
        return subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )

    def template(
        self,
        release: str = "tidings",
        namespace: str = "tidings",
        *,
        values: Iterable[str | Path] = (),
        set: Iterable[str] = (),
        extra: Iterable[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", release, str(CHART), "--namespace", namespace, *extra]
        for path in values:
            args += ["--values", str(path)]
        for item in set:
            args += ["--set", item]
        return self.run(*args)

    def render(self, *args: Any, **kwargs: Any) -> list[Manifest]:
        """The rendered objects; the render must succeed."""
        done = self.template(*args, **kwargs)
        assert done.returncode == 0, done.stderr
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"{kind} {name or ''}: {len(matches)} rendered"
    return matches[0]


def kinds(objects: list[Manifest]) -> set[str]:
    return {o["kind"] for o in objects}


def pod_specs(objects: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    """(name, pod spec) of every workload."""
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def container(objects: list[Manifest], kind: str, name: str) -> Manifest:
    spec = find(objects, kind, name)["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return spec["containers"][0]  # type: ignore[no-any-return]


def env_of(c: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}
