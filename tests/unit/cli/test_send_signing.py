"""`tidings send` signs what `tidings dev`'s sources verify: Standard Webhooks and
timestamped HMAC, checked by ingest's own (pure) verifier; and its
--deliver-after is what ingest reads as a delay."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from multidict import CIMultiDict

from tidings.api.events import DELIVER_AFTER, CloudEvent, parse_rfc3339_ms
from tidings.api.routes import CompiledIngest, CompiledSource
from tidings.api.sealing import Sealer, new_key
from tidings.cli.send import _check_deliver_after, build_request
from tidings.dispatcher.ingest import apply_delays, check_auth, parse_events

SEALER = Sealer(new_key())
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_a_standard_webhooks_signature_from_send_passes_ingest() -> None:
    ingest = CompiledIngest(webhook_secrets=[SEALER.seal(WHSEC)])
    request = build_request(
        base_url="http://x", source="ns/s", event_type="t", data={"a": 1}, webhook_secret=WHSEC
    )
    assert check_auth(ingest, request.headers, request.body, SEALER.unseal) == request.event_id


def test_a_timestamped_hmac_from_send_passes_ingest() -> None:
    ingest = CompiledIngest(
        hmac_secret_sealed=SEALER.seal("k"), hmac_timestamp_header="X-Signature-Timestamp"
    )
    request = build_request(
        base_url="http://x",
        source="ns/s",
        event_type="t",
        data=1,
        hmac_secret="k",
        hmac_timestamp_header="X-Signature-Timestamp",
    )
    assert check_auth(ingest, request.headers, request.body, SEALER.unseal) is not None


def delayed(deliver_after: str, mode: str, now_ms: int) -> CloudEvent:
    """The event ingest stores from what `tidings send --deliver-after` posts."""
    request = build_request(
        base_url="http://x",
        source="ns/s",
        event_type="t",
        data={"a": 1},
        mode=mode,
        deliver_after=deliver_after,
    )
    headers = CIMultiDict(request.headers)
    query = dict(parse_qsl(urlsplit(request.url).query))
    source = CompiledSource.model_construct(namespace="ns", name="s")
    [event] = parse_events(source, headers, request.body, query)
    apply_delays([event], headers, query, max_delay=7 * 86400, now_ms=now_ms)
    return event


@pytest.mark.parametrize("mode", ["binary", "structured", "plain"])
def test_deliver_after_a_duration_is_due_that_long_after_ingest(mode: str) -> None:
    now_ms = 1_764_403_200_000  # 2025-11-29T08:00:00Z
    event = delayed("15m", mode, now_ms)
    assert parse_rfc3339_ms(event.extensions[DELIVER_AFTER]) == now_ms + 15 * 60_000


def test_deliver_after_a_time_is_kept_as_given() -> None:
    event = delayed("2025-11-29T09:00:00Z", "binary", 1_764_403_200_000)
    assert event.extensions[DELIVER_AFTER] == "2025-11-29T09:00:00Z"


def test_deliver_after_that_is_neither_a_time_nor_a_duration_names_the_flag() -> None:
    with pytest.raises(SystemExit, match="--deliver-after: 'tomorrow'"):
        _check_deliver_after("tomorrow")
