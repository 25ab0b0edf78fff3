"""What a re-list after 410 Gone emits, and label selectors as query strings."""

from __future__ import annotations

from typing import Any

from tidings.api.types import LabelSelector
from tidings.sources.kubernetes import Known, diff, selector_string


def obj(uid: str, rv: str, name: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "resourceVersion": rv, "name": name, "namespace": "shop"}}


def test_relist_emits_added_modified_and_deleted_only() -> None:
    known = {
        "u1": Known("10", "same", "shop"),
        "u2": Known("11", "changed", "shop"),
        "u3": Known("12", "gone", "shop"),
    }
    listed = [obj("u1", "10", "same"), obj("u2", "20", "changed"), obj("u4", "21", "new")]
    changes = [(c.verb, c.obj["metadata"]["name"]) for c in diff(known, listed)]
    assert changes == [("modified", "changed"), ("added", "new"), ("deleted", "gone")]


def test_a_deleted_object_is_described_by_what_was_remembered() -> None:
    (change,) = diff({"u3": Known("12", "gone", "shop")}, [])
    assert change.obj == {
        "metadata": {"name": "gone", "namespace": "shop", "uid": "u3", "resourceVersion": "12"}
    }


def test_nothing_changed_emits_nothing() -> None:
    assert diff({"u1": Known("10", "a", None)}, [obj("u1", "10", "a")]) == []


def test_label_selectors_become_query_strings() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"tier": "web", "app": "shop"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "stage"]},
                {"key": "canary", "operator": "NotIn", "values": ["true"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector_string(selector) == (
        "app=shop,tier=web,env in (prod,stage),canary notin (true),team,!legacy"
    )
    assert selector_string(None) == ""
