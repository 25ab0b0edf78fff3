"""Which sources a routing table change sends the retention pass to at once: only
those whose entry or Triggers changed (engine.changed_sources), found through one
index of the routes by source (engine.routes_by_source)."""

from __future__ import annotations

from typing import Any

from tidings.api.routes import CompiledSource, Route, compile_source, compile_trigger
from tidings.api.sealing import Sealer, new_key
from tidings.api.table import RoutingTable
from tidings.api.types import EventSourceSpec, TriggerGrantSpec, TriggerSpec
from tidings.dispatcher.engine import changed_sources, routes_by_source

SOURCE = EventSourceSpec.model_validate({"http": {"auth": {"allowAnonymous": True}}})
SEALER = Sealer(new_key())


class World:
    def source(self, namespace: str, name: str) -> EventSourceSpec:
        return SOURCE

    def service_ports(self, namespace: str, name: str) -> list[int]:
        return [80]

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return None

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        return []


def source(name: str, **retention: Any) -> CompiledSource:
    spec = SOURCE.model_copy(update={"retention": SOURCE.retention.model_copy(update=retention)})
    return compile_source(namespace="shop", name=name, spec=spec, world=World(), sealer=SEALER)


def trigger(name: str, on: str, **delivery: Any) -> Route:
    spec = TriggerSpec.model_validate(
        {"source": on, "subscriber": {"uri": "http://mailer.shop/"}, "delivery": delivery}
    )
    return compile_trigger(namespace="shop", name=name, spec=spec, world=World(), sealer=SEALER)


def table(sources: list[CompiledSource], routes: list[Route], version: int) -> RoutingTable:
    # As the watcher loads it: new objects, equal to the last load's where unchanged.
    return RoutingTable(
        version=version,
        sources={s.id: CompiledSource.model_validate_json(s.model_dump_json()) for s in sources},
        routes={r.id: Route.model_validate_json(r.model_dump_json()) for r in routes},
    )


def changed(old: RoutingTable, new: RoutingTable) -> set[str]:
    return changed_sources(old, routes_by_source(old), new, routes_by_source(new))


SOURCES = [source("a"), source("b"), source("c")]
ROUTES = [trigger("t1", "a"), trigger("t2", "a"), trigger("t3", "b")]


def test_routes_are_indexed_by_source_in_id_order() -> None:
    index = routes_by_source(table(SOURCES, list(reversed(ROUTES)), 1))
    assert {k: [r.name for r in v] for k, v in index.items()} == {
        "shop/a": ["t1", "t2"],
        "shop/b": ["t3"],
    }


def test_a_reload_with_nothing_changed_sends_retention_nowhere() -> None:
    assert changed(table(SOURCES, ROUTES, 1), table(SOURCES, list(reversed(ROUTES)), 2)) == set()


def test_only_the_sources_whose_triggers_or_entry_changed_are_looked_at() -> None:
    before = table(SOURCES, ROUTES, 1)
    added = table(SOURCES, [*ROUTES, trigger("t4", "c")], 2)
    assert changed(before, added) == {"shop/c"}
    removed = table(SOURCES, ROUTES[1:], 2)
    assert changed(before, removed) == {"shop/a"}
    limits = table(SOURCES, [trigger("t1", "a", maxAge="1h"), *ROUTES[1:]], 2)
    assert changed(before, limits) == {"shop/a"}
    retention = table([source("a"), source("b", max_events=5), source("c")], ROUTES, 2)
    assert changed(before, retention) == {"shop/b"}
    gone = table(SOURCES[:2], ROUTES, 2)
    assert changed(before, gone) == {"shop/c"}
