"""Fixtures of the chart tests: the real helm, built from Go modules by
hack/build-helm.sh (or $HELM), and the real kube-apiserver."""

from __future__ import annotations

import subprocess

import pytest
from helm_harness import REPO, Helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    """helm from $HELM, else the cached build (the first build takes minutes)."""
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "build-helm.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, f"hack/build-helm.sh failed:\n{done.stderr[-3000:]}"
    return Helm(done.stdout.strip().splitlines()[-1])
