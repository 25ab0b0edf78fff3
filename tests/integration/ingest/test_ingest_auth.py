"""Auth per EventSource: bearer token, HMAC-SHA256 body signatures for
third-party webhooks, either when both are set, nothing when anonymous."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from ingest_harness import IngestUnderTest

BODY = json.dumps({"action": "opened"}).encode()
JSON = {"Content-Type": "application/json"}


def sign(body: bytes, secret: str = "hmac-s3cret") -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post(ingest: IngestUnderTest, name: str, headers: dict[str, str]) -> tuple[int, str]:
    response = await ingest.client.post(ingest.url(name), data=BODY, headers={**JSON, **headers})
    body = await response.json()
    return response.status, body.get("error", "")


async def test_the_right_bearer_token_is_accepted(ingest: IngestUnderTest) -> None:
    await ingest.add_source("api")
    assert await post(ingest, "api", {"Authorization": "Bearer t0ken"}) == (202, "")
    assert len(await ingest.stored("api")) == 1


@pytest.mark.parametrize("prefix", ["sha256=", ""], ids=["github-style", "bare-hex"])
async def test_an_hmac_signature_of_the_body_is_accepted(
    ingest: IngestUnderTest, prefix: str
) -> None:
    await ingest.add_source(
        "github", http={"auth": {"hmacSecretRef": {"name": "github-hmac", "key": "secret"}}}
    )
    status, error = await post(ingest, "github", {"X-Signature-256": prefix + sign(BODY)})
    assert (status, error) == (202, "")
    [event] = await ingest.stored("github")
    assert event.data == {"action": "opened"}


async def test_an_hmac_signature_over_another_body_is_403(ingest: IngestUnderTest) -> None:
    await ingest.add_source(
        "github", http={"auth": {"hmacSecretRef": {"name": "github-hmac", "key": "secret"}}}
    )
    status, error = await post(ingest, "github", {"X-Signature-256": sign(b"other body")})
    assert status == 403 and "X-Signature-256 header" in error
    status, error = await post(ingest, "github", {"X-Signature-256": sign(BODY, "wrong key")})
    assert status == 403
    assert await ingest.stored("github") == []


async def test_a_missing_hmac_signature_is_401_naming_the_header(ingest: IngestUnderTest) -> None:
    await ingest.add_source(
        "github",
        http={
            "auth": {
                "hmacSecretRef": {"name": "github-hmac", "key": "secret"},
                "hmacHeader": "X-Hub-Signature-256",
            }
        },
    )
    status, error = await post(ingest, "github", {"X-Signature-256": sign(BODY)})
    assert status == 401 and "X-Hub-Signature-256" in error
    assert await post(ingest, "github", {"X-Hub-Signature-256": "sha256=" + sign(BODY)}) == (
        202,
        "",
    )


async def test_with_token_and_hmac_either_one_is_enough(ingest: IngestUnderTest) -> None:
    await ingest.add_source(
        "both",
        http={
            "auth": {
                "tokenSecretRef": {"name": "both-token", "key": "token"},
                "hmacSecretRef": {"name": "both-hmac", "key": "secret"},
            }
        },
    )
    assert (await post(ingest, "both", {"Authorization": "Bearer t0ken"}))[0] == 202
    assert (await post(ingest, "both", {"X-Signature-256": sign(BODY)}))[0] == 202
    assert (await post(ingest, "both", {}))[0] == 401
    assert (await post(ingest, "both", {"Authorization": "Bearer wrong"}))[0] == 403


async def test_anonymous_sources_need_no_credentials(ingest: IngestUnderTest) -> None:
    await ingest.add_source("open", http={"auth": {"allowAnonymous": True}})
    assert await post(ingest, "open", {}) == (202, "")


async def test_the_default_http_source_requires_the_generated_token(
    ingest: IngestUnderTest,
) -> None:
    # spec.http: {} -> the operator generates <name>-ingest-token; here we create it.
    ingest.world.secrets[(ingest.namespace, "plain-ingest-token", "token")] = "generated"
    await ingest.add_source("plain", http={})
    assert (await post(ingest, "plain", {}))[0] == 401
    assert (await post(ingest, "plain", {"Authorization": "Bearer generated"}))[0] == 202
