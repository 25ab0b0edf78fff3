"""Signed requests on the real ingest (real Redis): Standard Webhooks signatures
made by the reference `standardwebhooks` package, several secrets during a
rotation, a tolerance window; and timestamped HMAC, so that a captured request
cannot be replayed later, and a replay inside the window is only a duplicate."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from ingest_harness import IngestUnderTest
from standardwebhooks import Webhook

pytestmark = pytest.mark.integration

OLD = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
BODY = json.dumps({"order": 17}).encode()
JSON = {"Content-Type": "application/json"}


async def webhooks_source(ingest: IngestUnderTest, secrets: str, **options: Any) -> None:
    ingest.world.secrets[(ingest.namespace, "producer", "secret")] = secrets
    auth = {"standardWebhooks": {"secretRef": {"name": "producer", "key": "secret"}, **options}}
    await ingest.add_source("hooks", http={"auth": auth})


def signed(
    secret: str, body: bytes = BODY, *, msg_id: str | None = None, at: float | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    when = datetime.fromtimestamp(int(at if at is not None else time.time()), UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body.decode()),
    }


async def post(
    ingest: IngestUnderTest, headers: dict[str, str], body: bytes = BODY, name: str = "hooks"
) -> tuple[int, dict[str, Any]]:
    response = await ingest.client.post(ingest.url(name), data=body, headers={**JSON, **headers})
    return response.status, await response.json()


async def test_a_standard_webhooks_signature_is_accepted_and_its_id_is_the_event_id(
    ingest: IngestUnderTest,
) -> None:
    await webhooks_source(ingest, OLD)
    headers = signed(OLD, msg_id="msg_2Kx")
    status, answer = await post(ingest, headers)
    assert (status, answer["accepted"]) == (202, ["msg_2Kx"])
    [event] = await ingest.stored("hooks")
    assert (event.id, event.data) == ("msg_2Kx", {"order": 17})


async def test_during_a_rotation_either_secret_signs(ingest: IngestUnderTest) -> None:
    await webhooks_source(ingest, f"{NEW} {OLD}")
    assert (await post(ingest, signed(OLD)))[0] == 202
    assert (await post(ingest, signed(NEW)))[0] == 202
    # A sender mid-rotation sends both signatures; one match is enough.
    both = signed(OLD, msg_id="msg_both")
    both["webhook-signature"] = "v1,bm90IGl0 " + both["webhook-signature"]
    assert (await post(ingest, both))[0] == 202
    assert len(await ingest.stored("hooks")) == 3


async def test_a_wrong_secret_or_a_changed_body_is_403_and_nothing_is_stored(
    ingest: IngestUnderTest,
) -> None:
    await webhooks_source(ingest, NEW)
    status, answer = await post(ingest, signed(OLD))
    assert status == 403 and "webhook-signature header" in answer["error"]
    status, _ = await post(ingest, signed(NEW), body=b'{"order": 18}')
    assert status == 403
    assert await ingest.stored("hooks") == []


async def test_a_timestamp_outside_the_tolerance_is_refused_however_well_signed(
    ingest: IngestUnderTest,
) -> None:
    await webhooks_source(ingest, NEW, tolerance="1m")
    status, answer = await post(ingest, signed(NEW, at=time.time() - 120))
    assert status == 403
    assert "webhook-timestamp header" in answer["error"] and "tolerance of 60s" in answer["error"]
    status, answer = await post(ingest, signed(NEW, at=time.time() + 120))
    assert status == 403 and "ahead" in answer["error"]
    assert (await post(ingest, signed(NEW, at=time.time() - 30)))[0] == 202


async def test_a_replay_inside_the_window_is_a_duplicate_not_a_second_event(
    ingest: IngestUnderTest,
) -> None:
    await webhooks_source(ingest, NEW)
    captured = signed(NEW)
    assert (await post(ingest, captured))[0] == 202
    status, answer = await post(ingest, captured)
    assert (status, answer["accepted"], answer["duplicates"]) == (
        202,
        [],
        [captured["webhook-id"]],
    )
    assert len(await ingest.stored("hooks")) == 1


async def test_missing_standard_webhooks_headers_are_401_naming_them(
    ingest: IngestUnderTest,
) -> None:
    await webhooks_source(ingest, NEW)
    status, answer = await post(ingest, {})
    assert status == 401 and "webhook-signature" in answer["error"]
    headers = signed(NEW)
    del headers["webhook-timestamp"]
    status, answer = await post(ingest, headers)
    assert status == 401 and "webhook-timestamp header" in answer["error"]


async def test_a_tolerance_longer_than_the_dedupe_window_is_refused_at_compile() -> None:
    from ingest_harness import SecretsWorld

    from tidings.api.routes import CompileError, compile_source
    from tidings.api.sealing import Sealer, new_key
    from tidings.api.types import EventSourceSpec

    world = SecretsWorld({("ns", "producer", "secret"): NEW})
    spec = EventSourceSpec.model_validate(
        {
            "http": {
                "dedupeWindow": "5m",
                "auth": {
                    "standardWebhooks": {
                        "secretRef": {"name": "producer", "key": "secret"},
                        "tolerance": "10m",
                    }
                },
            }
        }
    )
    with pytest.raises(CompileError, match=r"standardWebhooks\.tolerance") as error:
        compile_source(namespace="ns", name="s", spec=spec, world=world, sealer=Sealer(new_key()))
    assert error.value.reason == "InvalidSpec"


# --- timestamped HMAC -----------------------------------------------------------------


async def hmac_source(ingest: IngestUnderTest, **auth: Any) -> None:
    await ingest.add_source(
        "github",
        http={"auth": {"hmacSecretRef": {"name": "github-hmac", "key": "secret"}, **auth}},
    )


def stamped(at: float, body: bytes = BODY, secret: str = "hmac-s3cret") -> dict[str, str]:
    stamp = str(int(at))
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Signature-Timestamp": stamp, "X-Signature-256": f"sha256={digest}"}


async def test_a_timestamped_hmac_is_accepted_within_its_window_only(
    ingest: IngestUnderTest,
) -> None:
    await hmac_source(ingest, hmacTimestampHeader="X-Signature-Timestamp", hmacTolerance="2m")
    assert (await post(ingest, stamped(time.time()), name="github"))[0] == 202
    status, answer = await post(ingest, stamped(time.time() - 600), name="github")
    assert status == 403 and "X-Signature-Timestamp header" in answer["error"]
    # The body-only signature no longer passes: the timestamp is part of what is signed.
    body_only = hmac.new(b"hmac-s3cret", BODY, hashlib.sha256).hexdigest()
    headers = {"X-Signature-Timestamp": str(int(time.time())), "X-Signature-256": body_only}
    status, answer = await post(ingest, headers, name="github")
    assert status == 403 and "<X-Signature-Timestamp>.<raw body>" in answer["error"]
    # A signature with a timestamp moved forward: the timestamp is signed too.
    moved = stamped(time.time() - 30)
    moved["X-Signature-Timestamp"] = str(int(time.time()))
    assert (await post(ingest, moved, name="github"))[0] == 403
    status, answer = await post(ingest, {"X-Signature-256": body_only}, name="github")
    assert status == 401 and "X-Signature-Timestamp header" in answer["error"]
    assert len(await ingest.stored("github")) == 1


async def test_a_replayed_timestamped_hmac_request_is_a_duplicate(ingest: IngestUnderTest) -> None:
    await hmac_source(ingest, hmacTimestampHeader="X-Signature-Timestamp")
    captured = stamped(time.time())
    status, first = await post(ingest, captured, name="github")
    assert status == 202 and len(first["accepted"]) == 1
    status, again = await post(ingest, captured, name="github")
    assert (status, again["accepted"], again["duplicates"]) == (202, [], first["accepted"])
    assert len(await ingest.stored("github")) == 1


async def test_without_a_timestamp_header_hmac_keeps_signing_the_body_alone(
    ingest: IngestUnderTest,
) -> None:
    """Backward compatible: sources written before timestamps keep working (and a
    resend of the same plain JSON body is, as before, a new event)."""
    await hmac_source(ingest)
    body_only = {"X-Signature-256": hmac.new(b"hmac-s3cret", BODY, hashlib.sha256).hexdigest()}
    assert (await post(ingest, body_only, name="github"))[0] == 202
    assert (await post(ingest, body_only, name="github"))[0] == 202
    assert len(await ingest.stored("github")) == 2
