"""The bounded cache of opened secrets that ingest and delivery share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.api.sealing import OpenedSecrets, Sealer, SealError, load_sealer, new_key


def test_opened_secrets_are_bounded_dropping_the_least_recently_used() -> None:
    sealer = Sealer(new_key())
    opened = OpenedSecrets(sealer, max_entries=2)
    a, b, c = (sealer.seal(text) for text in ("a", "b", "c"))
    assert (opened.unseal(a), opened.unseal(b), opened.unseal(a)) == ("a", "b", "a")
    assert opened.unseal(c) == "c"  # b, the least recently used, makes room
    assert len(opened) == 2
    assert opened.unseal(b) == "b" and len(opened) == 2


def test_a_value_sealed_with_another_key_is_an_error_not_a_cached_guess() -> None:
    opened = OpenedSecrets(Sealer(new_key()))
    with pytest.raises(SealError, match="same key"):
        opened.unseal(Sealer(new_key()).seal("x"))
    assert len(opened) == 0


def test_no_seal_key_is_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TIDINGS_SEAL_KEY", raising=False)
    monkeypatch.delenv("TIDINGS_SEAL_KEY_FILE", raising=False)
    with pytest.raises(SealError, match="TIDINGS_SEAL_KEY_FILE"):
        load_sealer()
    empty = tmp_path / "key"
    empty.write_text("\n")
    monkeypatch.setenv("TIDINGS_SEAL_KEY_FILE", str(empty))
    with pytest.raises(SealError, match=f"TIDINGS_SEAL_KEY_FILE={empty}: the file is empty"):
        load_sealer()
    monkeypatch.setenv("TIDINGS_SEAL_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(SealError, match="cannot read the seal key"):
        load_sealer()
    empty.write_text("not-a-key\n")
    monkeypatch.setenv("TIDINGS_SEAL_KEY_FILE", str(empty))
    with pytest.raises(SealError, match="TIDINGS_SEAL_KEY_FILE must name a file holding a Fernet"):
        load_sealer()
    key = new_key()
    empty.write_text(key + "\n")
    sealer = load_sealer()
    assert sealer.unseal(Sealer(key).seal("x")) == "x"
