"""Manifests from files, for `tidings dev`: load, validate, compile.

`load(paths)` reads EventSource, Trigger, Replay, TriggerGrant, Secret and Service objects from YAML
or JSON files and folders (recursively; multi-document YAML and `kind: List`
both work) and validates them with the API types. Every error names the file,
the object and the field. Other kinds (Deployments, Namespaces,
kustomization.yaml …) are skipped and listed in `Manifests.ignored`.

`compile_all` runs the operator's own compiler (tidings.api.routes) over them,
with `ManifestWorld` answering its questions from the files.

Services in dev: nothing runs in a cluster, so a Trigger's Service ref
(`ref: {name: mailer, port: 8080}`) is delivered to `http://127.0.0.1:8080`
(the ref's port, else the port of a Service manifest in the files, else 80),
keeping its `path`. `--service NAME=URL` (or `NAMESPACE/NAME=URL`) sends one
Service elsewhere, e.g. `--service mailer=http://127.0.0.1:9001`. Absolute
`uri:` subscribers are used as written.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from tidings.api.destinations import LOCAL, DestinationPolicy
from tidings.api.routes import (
    CLUSTER_DOMAIN,
    CompiledSource,
    CompileError,
    Route,
    check_destination,
    compile_source,
    compile_trigger,
)
from tidings.api.sealing import Sealer
from tidings.api.types import (
    API_VERSION,
    GROUP,
    EventSource,
    EventSourceSpec,
    Replay,
    Trigger,
    TriggerGrant,
    TriggerGrantSpec,
)

SUFFIXES = (".yaml", ".yml", ".json")
SKIPPED_FILES = ("kustomization.yaml", "kustomization.yml", "Chart.yaml", "values.yaml")


class ManifestError(Exception):
    """Manifests that cannot be loaded; `errors` holds one readable line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Manifests:
    sources: dict[tuple[str, str], EventSource] = field(default_factory=dict)
    triggers: dict[tuple[str, str], Trigger] = field(default_factory=dict)
    replays: dict[tuple[str, str], Replay] = field(default_factory=dict)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    services: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    grants: dict[tuple[str, str], TriggerGrant] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # "Deployment shop/web (file)"
    # Where each object came from: ("Trigger", ns, name) -> "file (document n)".
    origin: dict[tuple[str, str, str], str] = field(default_factory=dict)


def manifest_files(paths: Iterable[Path | str]) -> list[Path]:
    """The manifest files under `paths` (files as given, folders recursively), sorted."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found += sorted(
                p
                for p in entry.rglob("*")
                if p.is_file()
                and p.suffix in SUFFIXES
                and p.name not in SKIPPED_FILES
                and not any(part.startswith(".") for part in p.relative_to(entry).parts)
            )
        else:
            found.append(entry)
    return found


def fingerprint(paths: Iterable[Path | str]) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every manifest file: changes when a file is edited, added or removed."""
    result: dict[str, tuple[int, int]] = {}
    for path in manifest_files(paths):
        try:
            stat = path.stat()
        except OSError:
            continue
        result[str(path)] = (stat.st_mtime_ns, stat.st_size)
    return result


def _where(path: Path, index: int, count: int) -> str:
    return f"{path} (document {index + 1})" if count > 1 else str(path)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _field_path(loc: Sequence[int | str]) -> str:
    """`spec.delivery.retry`, `spec.filter.types[0]`; a key that is not a plain word is
    quoted (`spec.headers["X: y"]`), so the path reads unambiguously."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _PLAIN_KEY.match(part):
            out += f"[{json.dumps(part)}]"
        else:
            out += f".{part}" if out else part
    return out


def _validation_lines(where: str, label: str, error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors():
        path = _field_path(item["loc"]) or "(object)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {label}: {path}: {message}")
    return lines


def _documents(path: Path) -> list[Any]:
    text = path.read_text()
    if path.suffix == ".json":
        return [json.loads(text)]
    return [doc for doc in yaml.safe_load_all(text)]


def _flatten(docs: list[Any]) -> list[Any]:
    out: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            out += doc.get("items") or []
        else:
            out.append(doc)
    return out


def _secret_data(where: str, label: str, doc: dict[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, encoded in (doc.get("data") or {}).items():
        try:
            values[str(key)] = base64.b64decode(str(encoded), validate=True).decode()
        except (binascii.Error, ValueError):
            raise ManifestError(
                [f"{where}: {label}: data.{key}: not base64; put plain text under stringData"]
            ) from None
    for key, value in (doc.get("stringData") or {}).items():
        values[str(key)] = str(value)
    return values


def _service_ports(doc: dict[str, Any]) -> list[int]:
    ports = (doc.get("spec") or {}).get("ports") or []
    return [int(p["port"]) for p in ports if isinstance(p, dict) and "port" in p]


def load(paths: Iterable[Path | str]) -> Manifests:
    """Load and validate every manifest under `paths`; raises ManifestError listing
    every problem found (not just the first)."""
    manifests = Manifests()
    errors: list[str] = []
    paths = list(paths)
    for entry in map(Path, paths):
        if not entry.exists():
            errors.append(f"{entry}: no such file or folder")
    manifests.files = manifest_files(p for p in paths if Path(p).exists())
    for path in manifests.files:
        try:
            docs = _flatten(_documents(path))
        except (OSError, yaml.YAMLError, ValueError, UnicodeDecodeError) as error:
            errors.append(f"{path}: cannot be read: {error}")
            continue
        for index, doc in enumerate(docs):
            if doc is None:
                continue
            try:
                _load_one(manifests, _where(path, index, len(docs)), doc)
            except ManifestError as error:
                errors += error.errors
    if errors:
        raise ManifestError(errors)
    return manifests


def _load_one(manifests: Manifests, where: str, doc: Any) -> None:
    if not isinstance(doc, dict):
        raise ManifestError([f"{where}: not an object; a manifest has apiVersion, kind, metadata"])
    kind = doc.get("kind")
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    namespace = str(metadata.get("namespace") or "default")
    name = str(metadata.get("name") or "")
    label = f"{kind} {namespace}/{name or '(no name)'}"
    api_version = str(doc.get("apiVersion") or "")
    if kind in ("EventSource", "Trigger", "Replay", "TriggerGrant") and api_version.split("/")[
        0
    ] not in (
        GROUP,
        "",
    ):
        # Another project's Trigger (Knative's, say): not ours to load.
        manifests.ignored.append(f"{api_version} {label} ({where})")
        return
    if kind in ("EventSource", "Trigger", "Replay", "TriggerGrant") and api_version != API_VERSION:
        raise ManifestError(
            [f"{where}: {label}: apiVersion: {doc.get('apiVersion')!r}; use {API_VERSION}"]
        )
    if kind in ("Secret", "Service") and not name:
        raise ManifestError([f"{where}: {label}: metadata.name: required"])
    key = (namespace, name)
    origin_key = (str(kind), namespace, name)
    if origin_key in manifests.origin:
        raise ManifestError(
            [f"{where}: {label}: defined twice (also in {manifests.origin[origin_key]})"]
        )
    if kind == "EventSource":
        try:
            manifests.sources[key] = EventSource.model_validate(doc)
        except ValidationError as error:
            raise ManifestError(_validation_lines(where, label, error)) from None
    elif kind == "Trigger":
        try:
            manifests.triggers[key] = Trigger.model_validate(doc)
        except ValidationError as error:
            raise ManifestError(_validation_lines(where, label, error)) from None
    elif kind == "Replay":
        try:
            manifests.replays[key] = Replay.model_validate(doc)
        except ValidationError as error:
            raise ManifestError(_validation_lines(where, label, error)) from None
    elif kind == "TriggerGrant":
        try:
            manifests.grants[key] = TriggerGrant.model_validate(doc)
        except ValidationError as error:
            raise ManifestError(_validation_lines(where, label, error)) from None
    elif kind == "Secret":
        manifests.secrets[key] = _secret_data(where, label, doc)
    elif kind == "Service":
        manifests.services[key] = _service_ports(doc)
    else:
        manifests.ignored.append(f"{label} ({where})")
        return
    manifests.origin[origin_key] = where


# --- the World the compiler asks ------------------------------------------------------


@dataclass
class ManifestWorld:
    """Answers the compiler from loaded manifests. Every Service exists in dev
    (it runs on this machine); its ports are known only from a Service manifest."""

    manifests: Manifests

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        found = self.manifests.sources.get((namespace, name))
        return found.spec if found else None

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return self.manifests.services.get((namespace, name), [])

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return self.manifests.secrets.get((namespace, name), {}).get(key)

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        return [g.spec for (ns, _), g in sorted(self.manifests.grants.items()) if ns == namespace]


@dataclass
class LocalServices:
    """Where Service refs go in dev: 127.0.0.1 on the Service port, or an override
    given as `NAME=URL` / `NAMESPACE/NAME=URL`."""

    overrides: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"

    @classmethod
    def parse(cls, mappings: Iterable[str]) -> LocalServices:
        overrides: dict[str, str] = {}
        for mapping in mappings:
            name, sep, url = mapping.partition("=")
            if not sep or not name or not url.startswith(("http://", "https://")):
                raise ValueError(
                    f"--service {mapping!r}: write NAME=URL or NAMESPACE/NAME=URL, "
                    "e.g. mailer=http://127.0.0.1:9001"
                )
            overrides[name.strip()] = url.rstrip("/")
        return cls(overrides)

    def rewrite(self, url: str | None) -> str | None:
        """A cluster URL (http://NAME.NS.svc.cluster.local[:PORT]/PATH) made local."""
        if url is None:
            return None
        parts = urlsplit(url)
        suffix = f".svc.{CLUSTER_DOMAIN}"
        host = parts.hostname or ""
        if not host.endswith(suffix):
            return url
        name, _, namespace = host.removesuffix(suffix).partition(".")
        base = self.overrides.get(f"{namespace}/{name}") or self.overrides.get(name)
        if base is None:
            base = f"{parts.scheme}://{self.host}:{parts.port or 80}"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return base + path


@dataclass
class Compiled:
    sources: dict[str, CompiledSource] = field(default_factory=dict)  # "ns/name" ->
    routes: dict[str, Route] = field(default_factory=dict)
    # Objects that did not compile: "Trigger ns/name" -> "Reason: message".
    errors: dict[str, str] = field(default_factory=dict)


def compile_all(
    manifests: Manifests,
    sealer: Sealer,
    services: LocalServices | None = None,
    destinations: DestinationPolicy = LOCAL,
) -> Compiled:
    """Compile every EventSource and Trigger with the operator's compiler, under
    `destinations` (dev's default allows loopback: Service refs go to 127.0.0.1)."""
    services = services or LocalServices()
    world = ManifestWorld(manifests)
    compiled = Compiled()
    for (namespace, name), source in sorted(manifests.sources.items()):
        try:
            result = compile_source(
                namespace=namespace,
                name=name,
                spec=source.spec,
                world=world,
                sealer=sealer,
                generation=source.metadata.generation,
            )
            compiled.sources[result.id] = result
        except CompileError as error:
            compiled.errors[f"EventSource {namespace}/{name}"] = f"{error.reason}: {error.message}"
    for (namespace, name), trigger in sorted(manifests.triggers.items()):
        try:
            route = compile_trigger(
                namespace=namespace,
                name=name,
                spec=trigger.spec,
                world=world,
                sealer=sealer,
                destinations=destinations,
                generation=trigger.metadata.generation,
            )
            route = localize(route, services)
            # Where a Service ref really goes in dev is known only now.
            check_destination(destinations, route.subscriber_url, "spec.subscriber")
            if route.delivery.dead_letter_url is not None:
                check_destination(
                    destinations, route.delivery.dead_letter_url, "spec.delivery.deadLetter"
                )
        except CompileError as error:
            compiled.errors[f"Trigger {namespace}/{name}"] = f"{error.reason}: {error.message}"
            continue
        compiled.routes[route.id] = route
    return compiled


def localize(route: Route, services: LocalServices) -> Route:
    delivery = route.delivery.model_copy(
        update={"dead_letter_url": services.rewrite(route.delivery.dead_letter_url)}
    )
    return route.model_copy(
        update={"subscriber_url": services.rewrite(route.subscriber_url), "delivery": delivery}
    )
