"""Generate the CustomResourceDefinitions from the API models.

Kubernetes wants *structural* OpenAPI v3 schemas: no `$ref`, no `anyOf` over
types, every node typed. Pydantic's JSON Schema is close; this module inlines
references, drops the `null` branch of optional fields, turns free-form maps
into `x-kubernetes-preserve-unknown-fields`, and adds `default: {}` to nested
objects so the API server fills their defaults in.

    tidings crds --write    # rewrite crds/ and helm/tidings/crds/
    tidings crds --check    # exit 1 if the files drift from the models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tidings.api.types import (
    GROUP,
    VERSION,
    EventSourceSpec,
    EventSourceStatus,
    ReplaySpec,
    ReplayStatus,
    TriggerGrantSpec,
    TriggerSpec,
    TriggerStatus,
)

JsonSchema = dict[str, Any]

# Keywords a structural schema may carry over from JSON Schema unchanged.
_KEPT = (
    "type",
    "description",
    "default",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "maxProperties",
    "format",
    "x-kubernetes-validations",
)


def structural(schema: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    """Convert one pydantic JSON Schema node into a structural CRD schema node."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {schema}")
        outer = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        # Optional fields default to None in Python; in the CRD they are simply absent.
        return structural({**branches[0], **outer}, defs)

    out: JsonSchema = {k: schema[k] for k in _KEPT if k in schema}
    # JSON Schema 2020-12 makes exclusive bounds numbers; OpenAPI v3 (CRDs) makes them flags.
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in out:
            out[plain] = out[bound]
            out[bound] = True
    if "const" in schema:
        out["enum"] = [schema["const"]]
        out.setdefault("type", "string")
    if "type" not in schema and "properties" not in schema and "const" not in schema:
        # `Any`: free-form JSON.
        return {**out, "x-kubernetes-preserve-unknown-fields": True}

    if schema.get("type") == "object" or "properties" in schema:
        out["type"] = "object"
        properties = schema.get("properties", {})
        if properties:
            out["properties"] = {name: structural(node, defs) for name, node in properties.items()}
            for name, node in out["properties"].items():
                source = _resolve(properties[name], defs)
                # A nested object with defaults of its own gets `default: {}` so the
                # API server applies them even when the user omits the object.
                if "default" not in node and _is_defaultable_object(source, name, schema):
                    node["default"] = {}
        if schema.get("required"):
            out["required"] = list(schema["required"])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = structural(extra, defs)
        elif extra is True or extra == {} or (extra is None and not properties):
            # dict[str, Any]: free-form JSON the API server must keep as is.
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif schema.get("type") == "array":
        out["items"] = structural(schema.get("items", {}), defs)
    return out


def _resolve(schema: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    if "$ref" in schema:
        return defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _is_defaultable_object(node: JsonSchema, name: str, parent: JsonSchema) -> bool:
    """True for a required-less object field whose Python default is a model instance."""
    if name in parent.get("required", []) or "properties" not in node:
        return False
    # Optional fields (`X | None`) stay absent unless the user sets them.
    return "anyOf" not in parent["properties"][name] and not node.get("required")


def model_schema(model: type[BaseModel]) -> JsonSchema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = structural(raw, raw.get("$defs", {}))
    _strip_titles(schema)
    return schema


def _strip_titles(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("title", None)
        for value in node.values():
            _strip_titles(value)
    elif isinstance(node, list):
        for value in node:
            _strip_titles(value)


def _status_schema(model: type[BaseModel]) -> JsonSchema:
    schema = model_schema(model)
    # Kopf and future fields may write more; typed parts stay validated.
    schema["x-kubernetes-preserve-unknown-fields"] = True
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    spec: type[BaseModel],
    status: type[BaseModel] | None,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": model_schema(spec),
    }
    if status is not None:
        properties["status"] = _status_schema(status)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "tidings"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["tidings"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    **({"subresources": {"status": {}}} if status is not None else {}),
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"{kind} of Tidings ({GROUP}/{VERSION}).",
                            "required": ["spec"],
                            "properties": properties,
                        }
                    },
                }
            ],
        },
    }


_READY = '.status.conditions[?(@.type=="Ready")].status'
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object."""
    eventsource = _crd(
        kind="EventSource",
        plural="eventsources",
        short_names=["evs"],
        spec=EventSourceSpec,
        status=EventSourceStatus,
        columns=[
            {"name": "Ready", "type": "string", "jsonPath": _READY},
            {"name": "URL", "type": "string", "jsonPath": ".status.url"},
            _AGE,
        ],
    )
    trigger = _crd(
        kind="Trigger",
        plural="triggers",
        short_names=["trg"],
        spec=TriggerSpec,
        status=TriggerStatus,
        columns=[
            {"name": "Source", "type": "string", "jsonPath": ".spec.source"},
            {"name": "Subscriber", "type": "string", "jsonPath": ".status.subscriberURI"},
            {"name": "Ready", "type": "string", "jsonPath": _READY},
            {"name": "State", "type": "string", "jsonPath": ".status.delivery.state"},
            {"name": "Lag", "type": "integer", "jsonPath": ".status.delivery.lag"},
            _AGE,
        ],
    )
    replay = _crd(
        kind="Replay",
        plural="replays",
        short_names=["rpl"],
        spec=ReplaySpec,
        status=ReplayStatus,
        columns=[
            {"name": "Trigger", "type": "string", "jsonPath": ".spec.trigger"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Total", "type": "integer", "jsonPath": ".status.total"},
            {"name": "Sent", "type": "integer", "jsonPath": ".status.sent"},
            {"name": "Delivered", "type": "integer", "jsonPath": ".status.delivered"},
            {"name": "Failed", "type": "integer", "jsonPath": ".status.failed"},
            {"name": "Skipped", "type": "integer", "jsonPath": ".status.skipped", "priority": 1},
            _AGE,
        ],
    )
    grant = _crd(
        kind="TriggerGrant",
        plural="triggergrants",
        short_names=["tgg"],
        spec=TriggerGrantSpec,
        status=None,
        columns=[
            {"name": "From", "type": "string", "jsonPath": ".spec.from[*].namespace"},
            {"name": "To", "type": "string", "jsonPath": ".spec.to[*].name"},
            _AGE,
        ],
    )
    return {
        f"{GROUP}_eventsources.yaml": eventsource,
        f"{GROUP}_triggergrants.yaml": grant,
        f"{GROUP}_triggers.yaml": trigger,
        f"{GROUP}_replays.yaml": replay,
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Shared sub-schemas are written out in full; anchors confuse readers and tools."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `tidings crds --write` from tidings.api.types. Do not edit.\n"
    return header + yaml.dump(crd, Dumper=_NoAliasDumper, sort_keys=False, width=100)


# api/src/tidings/api/crd.py -> the repository root (an editable install only).
REPO = Path(__file__).resolve().parents[4]
OUTPUT_DIRS = (REPO / "crds", REPO / "helm" / "tidings" / "crds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    stale = []
    for directory in OUTPUT_DIRS:
        for name, crd in crds().items():
            path = directory / name
            text = render(crd)
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path))
            else:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if stale:
        print("stale CRDs (run `tidings crds --write`):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
