"""Which routing-table entries may be orphans (the removal itself is proven
against the real API server in tests/integration/operator/test_operator_orphans.py)."""

from __future__ import annotations

from tidings.operator.orphans import candidates


def test_only_unlisted_entries_in_watched_namespaces_are_candidates() -> None:
    entries = [("shop", "a"), ("shop", "b"), ("other", "c")]
    listed = {("shop", "a")}
    assert candidates(entries, listed, ["shop"]) == [("shop", "b")]
    # Watching every namespace: every unlisted entry.
    assert candidates(entries, listed, []) == [("shop", "b"), ("other", "c")]
