"""What a Trigger's event handler keeps of each watch event's body (the work
queue holds it until the next event): no field-ownership bookkeeping, no
kubectl last-applied copy, and short strings shared with every other body."""

from __future__ import annotations

import json
from typing import Any, cast

import kopf

from tidings.operator.handlers import LAST_APPLIED, trim


def event(name: str) -> kopf.RawEvent:
    # Decoded apart, as each watch event is: no string object in common.
    raw = json.dumps(
        {
            "type": "MODIFIED",
            "object": {
                "metadata": {
                    "name": name,
                    "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                    "annotations": {LAST_APPLIED: "{...}", "team": "payments"},
                },
                "spec": {"source": "users", "note": "x" * 100},
            },
        }
    )
    return cast(kopf.RawEvent, json.loads(raw))


def test_a_trimmed_body_keeps_what_is_read_and_shares_its_short_strings() -> None:
    first, second = event("welcome"), event("goodbye")
    trim(first)
    trim(second)
    a: Any = first["object"]
    b: Any = second["object"]
    assert "managedFields" not in a["metadata"]
    assert a["metadata"]["annotations"] == {"team": "payments"}
    assert a["metadata"]["name"] == "welcome" and a["spec"]["source"] == "users"
    assert a["spec"]["source"] is b["spec"]["source"]  # one object for both
    assert next(iter(a["spec"])) is next(iter(b["spec"]))  # keys too
    assert a["spec"]["note"] == b["spec"]["note"]
    assert a["spec"]["note"] is not b["spec"]["note"]  # long strings are left alone
