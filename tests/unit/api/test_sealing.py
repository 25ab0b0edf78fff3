"""The bounded cache of opened secrets that ingest and delivery share."""

from __future__ import annotations

import pytest

from tidings.api.sealing import OpenedSecrets, Sealer, SealError, new_key


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
