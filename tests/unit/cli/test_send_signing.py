"""`tidings send` signs what `tidings dev`'s sources verify: Standard Webhooks and
timestamped HMAC, checked by ingest's own (pure) verifier."""

from __future__ import annotations

from tidings.api.routes import CompiledIngest
from tidings.api.sealing import Sealer, new_key
from tidings.cli.send import build_request
from tidings.dispatcher.ingest import check_auth

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
