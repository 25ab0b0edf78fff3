"""The HTTP request a subscriber receives, checked with independent
implementations: the CloudEvents SDK and the `standardwebhooks` package."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from standardwebhooks import Webhook, WebhookVerificationError

from tidings.dispatcher.delivery import build_request, signing_key

EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "evt-1",
    "source": "/apis/tidings.dev/v1alpha1/namespaces/shop/eventsources/users-db",
    "type": "dev.tidings.postgres.insert",
    "subject": "public.users café",
    "time": "2026-01-01T00:00:00Z",
    "datacontenttype": "application/json",
    "traceparent": "00-abc-01",
    "data": {"new": {"plan": "pro"}},
}
RAW = json.dumps(EVENT).encode()
SECRET = "whsec_" + base64.b64encode(b"a" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"b" * 32).decode()


def parse(request: Any) -> Any:
    """The CloudEvents SDK's reading of a request."""
    return from_http(HTTPMessage(headers=request.headers, body=request.body), JSONFormat())


def build(event: dict[str, Any] = EVENT, **options: Any) -> Any:
    defaults: dict[str, Any] = {"format": "binary", "headers": {}, "signing_keys": []}
    defaults.update(options)
    return build_request(event, json.dumps(event).encode(), **defaults)


def test_binary_mode_is_parsed_by_the_cloudevents_sdk() -> None:
    request = build()
    parsed = parse(request)
    attributes = parsed.get_attributes()
    assert attributes["id"] == "evt-1"
    assert attributes["subject"] == "public.users café"  # percent-encoded on the wire
    assert attributes["traceparent"] == "00-abc-01"
    assert parsed.get_data() == {"new": {"plan": "pro"}}
    assert request.headers["webhook-id"] == "evt-1"


def test_structured_mode_forwards_the_stored_json_as_is() -> None:
    request = build_request(EVENT, RAW, format="structured", headers={}, signing_keys=[])
    assert request.body == RAW
    assert request.headers["Content-Type"] == "application/cloudevents+json"
    assert parse(request).get_attributes()["type"] == "dev.tidings.postgres.insert"


def test_data_mode_sends_only_the_data_with_the_stable_id() -> None:
    request = build(format="data")
    assert json.loads(request.body) == {"new": {"plan": "pro"}}
    assert not any(h.startswith("ce-") for h in request.headers)
    assert request.headers["webhook-id"] == "evt-1"


def test_binary_data_travels_raw() -> None:
    event = {**EVENT, "datacontenttype": "image/png", "data_base64": "AAEC"}
    del event["data"]
    request = build(event)
    assert request.body == b"\x00\x01\x02"
    assert request.headers["Content-Type"] == "image/png"


def test_signature_verifies_with_standard_webhooks_during_rotation() -> None:
    request = build(signing_keys=[signing_key(SECRET), signing_key(OLD_SECRET)], now=1_700_000_000)
    assert len(request.headers["webhook-signature"].split()) == 2
    for secret in (SECRET, OLD_SECRET):
        hook = Webhook(secret)
        # The library checks the timestamp against its clock: sign fresh instead.
        fresh = build(signing_keys=[signing_key(SECRET), signing_key(OLD_SECRET)])
        assert hook.verify(fresh.body, fresh.headers)["new"] == {"plan": "pro"}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"c" * 32).decode()).verify(
            request.body, request.headers
        )


def test_custom_headers_are_sent_but_cannot_replace_ids_or_signatures() -> None:
    request = build(
        headers={"X-Env": "prod", "ce-id": "forged", "webhook-id": "forged", "Content-Type": "x"},
        signing_keys=[signing_key(SECRET)],
    )
    assert request.headers["X-Env"] == "prod"
    assert request.headers["ce-id"] == "evt-1"
    assert request.headers["webhook-id"] == "evt-1"
    assert request.headers["Content-Type"] == "application/json"
    Webhook(SECRET).verify(request.body, request.headers)
