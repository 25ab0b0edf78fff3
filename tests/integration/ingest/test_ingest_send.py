"""`tidings send` as a user runs it: a subprocess posting to a real ingest server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from ingest_harness import IngestUnderTest


async def send(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings.cli",
        "send",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TIDINGS_STATE_DIR": "/nonexistent", **(env or {})},
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def base_url(ingest: IngestUnderTest) -> str:
    return str(ingest.client.make_url("")).rstrip("/")


@pytest.mark.parametrize("mode", ["binary", "structured", "plain"])
async def test_send_posts_one_event_in_each_mode_and_prints_the_answer(
    ingest: IngestUnderTest, mode: str
) -> None:
    await ingest.add_source("orders")
    code, out, err = await send(
        f"{ingest.namespace}/orders",
        "--type", "com.shop.order.created",
        "--data", '{"id": 1}',
        "--subject", "orders/1",
        "--mode", mode,
        "--url", base_url(ingest),
        "--token", "t0ken",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("202 accepted: com.shop.order.created id=")
    [event] = await ingest.stored("orders")
    assert (event.type, event.subject, event.data) == (
        "com.shop.order.created",
        "orders/1",
        {"id": 1},
    )
    assert event.id in out


async def test_send_reports_a_refusal_and_exits_non_zero(ingest: IngestUnderTest) -> None:
    await ingest.add_source("orders")
    target = [f"{ingest.namespace}/orders", "--type", "t", "--url", base_url(ingest)]
    code, _, err = await send(*target, "--token", "wrong")
    assert code == 1
    assert "403 refused: Authorization header: the bearer token is not valid" in err


async def test_send_says_when_the_same_id_was_a_duplicate(ingest: IngestUnderTest) -> None:
    await ingest.add_source("orders")
    target = [f"{ingest.namespace}/orders", "--type", "t", "--url", base_url(ingest)]
    assert (await send(*target, "--token", "t0ken", "--id", "x"))[0] == 0
    code, out, _ = await send(*target, "--token", "t0ken", "--id", "x")
    assert code == 0 and out.startswith("202 duplicate: x")
    assert len(await ingest.stored("orders")) == 1


async def test_send_finds_url_token_and_hmac_secret_in_the_dev_session_file(
    ingest: IngestUnderTest, tmp_path: Path
) -> None:
    await ingest.add_source("orders")
    await ingest.add_source(
        "github", http={"auth": {"hmacSecretRef": {"name": "github-hmac", "key": "secret"}}}
    )
    session = {
        "url": base_url(ingest),
        "tokens": {f"{ingest.namespace}/orders": "t0ken"},
        "hmac": {
            f"{ingest.namespace}/github": {"secret": "hmac-s3cret", "header": "X-Signature-256"}
        },
    }
    (tmp_path / "dev-session.json").write_text(json.dumps(session))
    env = {"TIDINGS_STATE_DIR": str(tmp_path)}
    for name in ("orders", "github"):
        code, _, err = await send(f"{ingest.namespace}/{name}", "--type", "t", env=env)
        assert code == 0, err
        assert len(await ingest.stored(name)) == 1


async def test_send_explains_an_unreachable_url_and_bad_arguments() -> None:
    code, _, err = await send("shop/orders", "--type", "t", "--url", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach http://127.0.0.1:9/sources/shop/orders" in err
    code, _, err = await send("orders", "--type", "t")
    assert code == 2 and "NAMESPACE/NAME" in err
    code, _, err = await send("shop/orders", "--type", "t", "--data", "{oops")
    assert code == 1 and "--data: not valid JSON" in err
