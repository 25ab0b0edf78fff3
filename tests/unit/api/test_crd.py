"""The CRD YAML in crds/ and the chart is generated from the API models."""

from __future__ import annotations

from typing import Any

from tidings.api import crd


def test_crd_files_match_the_api_models() -> None:
    assert crd.main(["--check"]) == 0, "CRDs drifted: run `tidings crds --write`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        if "items" in node:
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_schemas_are_structural() -> None:
    for crd_object in crd.crds().values():
        schema = crd_object["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(schema):
            assert "$ref" not in node and "anyOf" not in node, path
            assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path


def test_nested_policy_objects_default_so_the_server_fills_them() -> None:
    trigger = crd.crds()["tidings.dev_triggers.yaml"]
    spec = trigger["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    delivery = spec["properties"]["delivery"]
    assert delivery["default"] == {}
    assert delivery["properties"]["retry"]["default"] == {}
    assert delivery["properties"]["retry"]["properties"]["maxAttempts"]["default"] == 12
    assert "default" not in delivery["properties"]["deadLetter"]


def test_trigger_printer_columns_follow_the_design() -> None:
    trigger = crd.crds()["tidings.dev_triggers.yaml"]
    columns = [c["name"] for c in trigger["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Source", "Subscriber", "Ready", "State", "Lag", "Age"]
    assert trigger["spec"]["names"]["categories"] == ["tidings"]
