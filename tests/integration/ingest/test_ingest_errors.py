"""Every bad request gets its own status and a message naming the field — and
changes nothing: the stream stays empty."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from ingest_harness import AUTH, IngestUnderTest

CE = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
BINARY = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BATCH = {"Content-Type": "application/cloudevents-batch+json"}
JSON = {"Content-Type": "application/json"}


@dataclass
class Case:
    id: str
    headers: dict[str, str]
    body: bytes | str | Any
    status: int
    says: str  # a part of the error message: the field it names
    auth: bool = True
    query: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


def without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


CASES = [
    # binary mode
    Case("binary-missing-id", {**without(BINARY, "ce-id"), **JSON}, {}, 400, "ce-id header"),
    Case("binary-missing-source", {**without(BINARY, "ce-source"), **JSON}, {}, 400, "ce-source"),
    Case("binary-missing-type", {**without(BINARY, "ce-type"), **JSON}, {}, 400, "ce-type"),
    Case("binary-old-specversion", {**BINARY, "ce-specversion": "0.3"}, {}, 400, "ce-specversion"),
    Case("binary-bad-time", {**BINARY, **JSON, "ce-time": "yesterday"}, {}, 400, "ce-time"),
    Case("binary-json-body-invalid", {**BINARY, **JSON}, "{nope", 400, "body"),
    Case("binary-bad-extension-name", {**BINARY, "ce-my_ext": "x"}, b"", 400, "ce-my_ext"),
    Case("ce-headers-without-specversion", {"ce-type": "t", **JSON}, {}, 400, "ce-specversion"),
    # structured mode
    Case("structured-invalid-json", STRUCTURED, "{nope", 400, "body: not valid JSON"),
    Case("structured-empty-body", STRUCTURED, b"", 400, "body: empty"),
    Case("structured-not-an-object", STRUCTURED, [CE], 400, "must be a JSON object"),
    Case("structured-missing-specversion", STRUCTURED, without(CE, "specversion"), 400,
         "specversion: required"),
    Case("structured-wrong-specversion", STRUCTURED, {**CE, "specversion": "0.3"}, 400,
         "specversion"),
    Case("structured-missing-id", STRUCTURED, without(CE, "id"), 400, "id: required"),
    Case("structured-empty-source", STRUCTURED, {**CE, "source": ""}, 400, "source: must be"),
    Case("structured-type-not-string", STRUCTURED, {**CE, "type": 7}, 400, "type: must be"),
    Case("structured-subject-not-string", STRUCTURED, {**CE, "subject": 1}, 400, "subject"),
    Case("structured-bad-time", STRUCTURED, {**CE, "time": "2024-13-01T00:00:00Z"}, 400,
         "time: '2024-13-01T00:00:00Z' is not an RFC 3339"),
    Case("structured-date-only-time", STRUCTURED, {**CE, "time": "2024-05-01"}, 400, "time"),
    Case("structured-data-and-base64", STRUCTURED, {**CE, "data": 1, "data_base64": "AA=="},
         400, "data_base64: set either"),
    Case("structured-bad-base64", STRUCTURED, {**CE, "data_base64": "%%%"}, 400, "data_base64"),
    Case("structured-bad-extension-name", STRUCTURED, {**CE, "Tenant": "x"}, 400, "Tenant"),
    Case("structured-object-extension", STRUCTURED, {**CE, "tenant": {"a": 1}}, 400, "tenant"),
    # batch mode
    Case("batch-not-an-array", BATCH, CE, 400, "must be a JSON array"),
    Case("batch-empty", BATCH, [], 400, "batch is empty"),
    Case("batch-item-missing-id", BATCH, [CE, without(CE, "id")], 400, "[1].id: required"),
    Case("batch-item-not-object", BATCH, [CE, "x"], 400, "[1].: a CloudEvent"),
    # plain JSON
    Case("plain-invalid-json", JSON, "{nope", 400, "body: not valid JSON"),
    Case("plain-empty-type", JSON, {}, 400, "type query parameter", query="?type="),
    # found by the fuzzer (test_ingest_fuzz.py): these were 500s, or stored non-JSON
    Case("structured-lone-surrogate-id", STRUCTURED,
         '{"specversion":"1.0","id":"\\ud800","source":"/s","type":"t"}', 400,
         "id: not valid Unicode"),
    Case("structured-lone-surrogate-extension", STRUCTURED,
         '{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":"a\\udc80"}', 400,
         "ext: not valid Unicode"),
    Case("batch-lone-surrogate-source", BATCH,
         '[{"specversion":"1.0","id":"1","source":"\\udfff","type":"t"}]', 400,
         "[0].source: not valid Unicode"),
    Case("structured-nan-data", STRUCTURED,
         '{"specversion":"1.0","id":"1","source":"/s","type":"t","data":NaN}', 400,
         "NaN is not a JSON value"),
    Case("binary-infinity-body", {**BINARY, **JSON}, "[Infinity]", 400,
         "Infinity is not a JSON value"),
    Case("plain-negative-infinity", JSON, '{"x": -Infinity}', 400,
         "-Infinity is not a JSON value"),
    Case("gzip-that-does-not-decode", {**STRUCTURED, "Content-Encoding": "gzip"},
         b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 20, 400,
         "body: cannot be read"),
    # content types
    Case("text-plain", {"Content-Type": "text/plain"}, "hi", 415, "Content-Type text/plain"),
    Case("no-content-type", {}, b"hi", 415, "Content-Type (none)"),
    Case("cloudevents-xml", {"Content-Type": "application/cloudevents+xml"}, "<e/>", 415,
         "application/cloudevents+xml"),
    # size
    Case("too-large", JSON, {"x": "a" * 5000}, 413, "maxBodyBytes"),
    # auth
    Case("no-token", JSON, {}, 401, "Authorization: Bearer", auth=False),
    Case("wrong-token", JSON, {}, 403, "not valid", auth=False,
         extra={"Authorization": "Bearer nope"}),
    Case("basic-auth", JSON, {}, 401, "expected `Bearer", auth=False,
         extra={"Authorization": "Basic dXNlcjpwdw=="}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_request_is_refused_with_its_status_and_changes_nothing(
    ingest: IngestUnderTest, case: Case
) -> None:
    await ingest.add_source(
        "shop",
        http={
            "auth": {"tokenSecretRef": {"name": "shop-token", "key": "token"}},
            "maxBodyBytes": 4096,
        },
    )
    headers = {**(AUTH if case.auth else {}), **case.headers, **case.extra}
    response = await ingest.client.post(
        ingest.url("shop") + case.query,
        data=case.payload(),
        headers=headers,
        # Otherwise the client adds its own Content-Type to a bytes body.
        skip_auto_headers=["Content-Type"],
    )
    body = await response.json()
    assert response.status == case.status, body
    assert case.says in body["error"], body["error"]
    assert await ingest.stored("shop") == []


async def test_a_chunked_body_over_the_limit_is_refused_while_streaming(
    ingest: IngestUnderTest,
) -> None:
    await ingest.add_source("shop", http={"auth": {"allowAnonymous": True}, "maxBodyBytes": 1024})

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(64):
            yield b"[" + b"1," * 100 + b"1]"

    response = await ingest.client.post(
        ingest.url("shop"), data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status == 413
    assert await ingest.stored("shop") == []


async def test_unknown_source_is_404_naming_it(ingest: IngestUnderTest) -> None:
    response = await ingest.client.post(ingest.url("nope"), json={}, headers=AUTH)
    assert response.status == 404
    assert f"EventSource {ingest.namespace}/nope not found" in (await response.json())["error"]


async def test_a_source_that_is_not_http_is_404(ingest: IngestUnderTest) -> None:
    await ingest.add_source("tick", schedule={"cron": "@hourly"})
    response = await ingest.client.post(ingest.url("tick"), json={}, headers=AUTH)
    assert response.status == 404
    assert "takes no POSTs (not http, not objectStore notify)" in (await response.json())["error"]


async def raw_post(
    ingest: IngestUnderTest, path: str, headers: bytes, body: bytes, method: bytes = b"POST"
) -> bytes:
    """A request as bytes on a socket: headers no HTTP client would send."""
    server = ingest.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            method
            + b" "
            + path.encode()
            + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + headers
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.mark.parametrize("expect", [b"\x80", b"fast-please", b"100-continue, and more"])
async def test_an_expect_header_other_than_100_continue_is_417_not_a_500(
    ingest: IngestUnderTest, expect: bytes
) -> None:
    await ingest.add_source("shop", http={"auth": {"allowAnonymous": True}})
    path = f"/sources/{ingest.namespace}/shop"
    answer = await raw_post(
        ingest, path, b"Content-Type: application/json\r\nExpect: " + expect + b"\r\n", b"{}"
    )
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 417 Expectation Failed", answer
    assert b"only 100-continue is understood" in answer, answer
    assert await ingest.stored("shop") == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"GET", "/sources/{ns}/shop"),  # the fuzz test's: a 500 before (aiohttp's 405)
        (b"POST", "/elsewhere"),  # aiohttp's 404
        (b"GET", "/healthz"),
    ],
)
async def test_a_bad_expect_header_off_the_ingest_route_is_417_not_a_500(
    ingest: IngestUnderTest, method: bytes, path: str
) -> None:
    """aiohttp's own 404 and 405 answers, and the health routes, take `Expect` as
    ingest's route does: its default handler raised on a value that is not ASCII."""
    await ingest.add_source("shop", http={"auth": {"allowAnonymous": True}})
    answer = await raw_post(
        ingest,
        path.format(ns=ingest.namespace),
        b"Content-Type: application/json\r\nExpect: \x92\r\n",
        b"{}",
        method=method,
    )
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 417 Expectation Failed", answer
    assert await ingest.stored("shop") == []


async def test_expect_100_continue_is_answered_and_the_event_stored(
    ingest: IngestUnderTest,
) -> None:
    await ingest.add_source("shop", http={"auth": {"allowAnonymous": True}})
    path = f"/sources/{ingest.namespace}/shop"
    answer = await raw_post(
        ingest, path, b"Content-Type: application/json\r\nExpect: 100-Continue\r\n", b'{"a": 1}'
    )
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 "), answer
    assert len(await ingest.stored("shop")) == 1
