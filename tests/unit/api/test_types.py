"""The API models accept the design's manifests and reject bad ones with the field named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tidings.api.types import EventSource, EventSourceSpec, Trigger, TriggerSpec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_example_object_validates() -> None:
    models = {"EventSource": EventSource, "Trigger": Trigger}
    checked = 0
    for doc in _docs():
        if doc.get("kind") in models:
            models[doc["kind"]].model_validate(doc)
            checked += 1
    assert checked >= 4


def test_trigger_defaults_fill_the_whole_policy() -> None:
    spec = TriggerSpec.model_validate({"source": "s", "subscriber": {"uri": "http://x/"}})
    assert spec.delivery.retry.max_attempts == 12
    assert spec.delivery.retry.retry_on == ["network", "timeout", "408", "429", "5xx"]
    assert spec.delivery.timeout == "10s"
    assert spec.delivery.format == "binary"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": "s", "subscriber": {}}, "exactly one of ref or uri"),
        (
            {"source": "s", "subscriber": {"uri": "http://x", "ref": {"name": "m"}}},
            "exactly one of ref or uri",
        ),
        (
            {"source": "s", "subscriber": {"uri": "http://x"}, "delivery": {"timeout": "10"}},
            "timeout",
        ),
        (
            {
                "source": "s",
                "subscriber": {"uri": "http://x"},
                "delivery": {"retry": {"initialDelay": "1h", "maxDelay": "1s"}},
            },
            "maxDelay must be at least",
        ),
        ({"source": "s", "subscriber": {"uri": "http://x"}, "colour": "red"}, "colour"),
    ],
)
def test_bad_triggers_are_rejected_naming_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TriggerSpec.model_validate(spec)


def test_an_event_source_has_exactly_one_kind() -> None:
    with pytest.raises(ValidationError, match="exactly one of http, postgres"):
        EventSourceSpec.model_validate({})
    with pytest.raises(ValidationError, match="exactly one of http, postgres"):
        EventSourceSpec.model_validate({"http": {}, "schedule": {"cron": "* * * * *"}})
    assert EventSourceSpec.model_validate({"http": {}}).kind == "http"


def test_wire_form_is_camel_case() -> None:
    spec = TriggerSpec.model_validate(
        {"source": "s", "subscriber": {"uri": "http://x"}, "delivery": {"maxAge": "1h"}}
    )
    wire = spec.to_wire()
    assert wire["delivery"]["maxAge"] == "1h"
    assert wire["delivery"]["retry"]["initialDelay"] == "1s"
