"""The pure parts of `tidings dev`: seal key, generated tokens, credentials for
`tidings send`, the lines it prints."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tidings.api.manifests import load
from tidings.api.routes import CompiledDelivery, CompiledFilter, CompiledRetry, Route
from tidings.api.sealing import Sealer, SealError, new_key
from tidings.cli.dev import (
    StableSealer,
    add_generated_tokens,
    attempt_line,
    client_url,
    credentials,
    dev_seal_key,
    example_type,
)
from tidings.dispatcher.delivery import Result
from tidings.dispatcher.retry import Failure

SOURCES = """
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {name: plain, namespace: shop}
spec: {http: {}}
---
apiVersion: tidings.dev/v1alpha1
kind: EventSource
metadata: {name: hooks, namespace: shop}
spec:
  http:
    auth:
      hmacSecretRef: {name: gh, key: secret}
      hmacHeader: X-Hub-Signature-256
---
apiVersion: v1
kind: Secret
metadata: {name: gh, namespace: shop}
stringData: {secret: s3cret}
"""


def route(**filter_: object) -> Route:
    return Route(
        namespace="shop",
        name="mail",
        source="orders",
        stream="s",
        group="mail",
        filter=CompiledFilter.model_validate(filter_),
        subscriber_url="http://127.0.0.1:9000/hook",
        delivery=CompiledDelivery(
            format="binary",
            timeout=1,
            retry=CompiledRetry(
                max_attempts=3,
                backoff="fixed",
                initial_delay=1,
                max_delay=1,
                jitter=0,
                retry_after_max=1,
                retry_on=[],
            ),
            max_age=60,
            concurrency=1,
        ),
    )


def test_a_seal_key_is_made_once_in_the_state_dir_and_kept_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIDINGS_SEAL_KEY", raising=False)
    monkeypatch.delenv("TIDINGS_SEAL_KEY_FILE", raising=False)
    key = dev_seal_key(tmp_path)
    assert dev_seal_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / "dev-seal.key").stat().st_mode) == 0o600
    Sealer(key)  # a valid key


def test_a_configured_seal_key_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_SEAL_KEY", "not-a-fernet-key")
    assert dev_seal_key(tmp_path) == "not-a-fernet-key"
    with pytest.raises(SealError):
        Sealer(dev_seal_key(tmp_path))
    assert not (tmp_path / "dev-seal.key").exists()


def test_the_stable_sealer_seals_the_same_text_to_the_same_value() -> None:
    sealer = StableSealer(new_key())
    assert sealer.seal("t") == sealer.seal("t") != sealer.seal("u")
    assert sealer.unseal(sealer.seal("t")) == "t"


def test_a_source_needing_the_generated_token_gets_one_that_survives_restarts(
    tmp_path: Path,
) -> None:
    (tmp_path / "m.yaml").write_text(SOURCES)
    first = load([tmp_path])
    assert add_generated_tokens(first, tmp_path / "state") == ["shop/plain"]
    token = first.secrets[("shop", "plain-ingest-token")]["token"]
    again = load([tmp_path])
    assert add_generated_tokens(again, tmp_path / "state") == []  # not new: nothing to say
    assert again.secrets[("shop", "plain-ingest-token")]["token"] == token
    found = credentials(again)
    assert found.tokens == {"shop/plain": token}
    assert found.hmac == {"shop/hooks": {"secret": "s3cret", "header": "X-Hub-Signature-256"}}


def test_attempt_lines_say_what_happened() -> None:
    event = {"id": "e1", "type": "com.shop.created"}
    ok = attempt_line(route(), event, Result(status=200, seconds=0.003), "ok")
    assert ok == (
        "-> shop/mail: delivered com.shop.created id=e1 to http://127.0.0.1:9000/hook (200, 3 ms)"
    )
    failed = Result(status=503, seconds=0.01, failure=Failure("status", 503, "503 Unavailable"))
    line = attempt_line(route(), event, failed, "retry")
    assert (
        line == "-> shop/mail: com.shop.created id=e1 failed: 503 Unavailable (10 ms); will retry"
    )
    assert attempt_line(route(), event, failed, "dead").endswith("dead-lettered")


def test_the_hint_uses_a_type_the_trigger_lets_through() -> None:
    assert example_type([route(types=["a.b"])]) == "a.b"
    assert example_type([route(prefix={"type": "com.shop."})]) == "com.shop.example"
    assert example_type([]) == "com.example.hello"


def test_a_wildcard_listen_address_is_reached_on_loopback() -> None:
    assert client_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert client_url("127.0.0.2", 9) == "http://127.0.0.2:9"
