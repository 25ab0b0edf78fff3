"""The World over Kopf's indexes, and the wake-ups that replace polling."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from tidings.api.routes import compile_trigger
from tidings.api.sealing import Sealer, new_key
from tidings.api.types import TriggerSpec
from tidings.operator import world
from tidings.operator.world import IndexWorld, Wakeups

SIGNING = "whsec_" + base64.b64encode(b"s" * 32).decode()


def index(*entries: dict[Any, Any] | None) -> dict[Any, list[Any]]:
    """What Kopf's index looks like: key -> a store of values."""
    out: dict[Any, list[Any]] = {}
    for entry in entries:
        for key, value in (entry or {}).items():
            out.setdefault(key, []).append(value)
    return out


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def a_world() -> IndexWorld:
    return IndexWorld(
        sources=index(world.source_entry("shop", "users", {"spec": {"http": {}}})),
        services=index(world.service_entry("shop", "mailer", {"ports": [{"port": 8080}]})),
        secrets=index(
            world.secret_entry("shop", "hook", {"data": {"secret": b64(SIGNING)}}),
            world.secret_entry("shop", "release", {"type": "helm.sh/release.v1", "data": {}}),
        ),
    )


def test_the_compiler_runs_on_the_indexes() -> None:
    spec = TriggerSpec.model_validate(
        {
            "source": "users",
            "subscriber": {"ref": {"name": "mailer"}},
            "delivery": {"signing": {"secretRef": {"name": "hook", "key": "secret"}}},
        }
    )
    sealer = Sealer(new_key())
    route = compile_trigger(namespace="shop", name="t", spec=spec, world=a_world(), sealer=sealer)
    assert route.subscriber_url == "http://mailer.shop.svc.cluster.local:8080"
    assert [sealer.unseal(s) for s in route.delivery.signing_secrets] == [SIGNING]


def test_missing_objects_and_keys_are_none() -> None:
    w = a_world()
    assert w.source("shop", "nope") is None
    assert w.service_ports("shop", "nope") is None
    assert w.secret("shop", "hook", "other-key") is None
    assert w.secret("shop", "nope", "secret") is None


def test_helm_release_secrets_are_not_kept_in_memory() -> None:
    assert world.secret_entry("shop", "r", {"type": "helm.sh/release.v1"}) is None


def test_a_source_is_as_ready_as_it_last_reported_and_unknown_before_that() -> None:
    body: dict[str, Any] = {"metadata": {"generation": 3}, "spec": {"http": {}}}
    assert world.source_entry("shop", "users", body)[("shop", "users")].ready is None
    # Of an older generation: kept until re-reported, so Triggers do not flap on a spec edit.
    body["status"] = {
        "conditions": [
            {"type": "Ready", "status": "False", "message": "m", "observedGeneration": 2}
        ]
    }
    entry = world.source_entry("shop", "users", body)[("shop", "users")]
    assert (entry.ready, entry.message) == (False, "m")


def test_an_invalid_source_spec_is_kept_as_existing_without_a_spec() -> None:
    entry = world.source_entry("shop", "users", {"spec": {"http": {}, "schedule": {}}})
    assert entry[("shop", "users")].spec is None


def test_adapter_entries_are_keyed_by_their_source() -> None:
    body = {
        "metadata": {
            "name": "tidings-source-db",
            "labels": {"tidings.dev/eventsource": "db"},
            "annotations": {"tidings.dev/template-hash": "abc"},
        },
        "status": {"availableReplicas": 1},
    }
    entry = world.adapter_entry(
        "shop",
        body,
        source_label="tidings.dev/eventsource",
        hash_annotation="tidings.dev/template-hash",
    )
    assert entry == {("shop", "db"): world.AdapterEntry("tidings-source-db", "abc", 1)}


def test_a_trigger_depends_on_its_source_services_and_signing_secret() -> None:
    spec = TriggerSpec.model_validate(
        {
            "source": "users",
            "subscriber": {"ref": {"name": "mailer"}},
            "delivery": {
                "deadLetter": {"ref": {"name": "sink", "namespace": "ops"}},
                "signing": {"secretRef": {"name": "hook", "key": "secret"}},
            },
        }
    )
    assert world.trigger_dependencies("shop", "t", spec) == {
        ("Trigger", "shop", "t"),
        ("EventSource", "shop", "users"),
        ("Service", "shop", "mailer"),
        ("Service", "ops", "sink"),
        ("TriggerGrant", "ops", ""),  # another namespace: its grants decide
        ("Secret", "shop", "hook"),
    }


async def test_a_wakeup_reaches_exactly_the_controllers_that_depend_on_the_key() -> None:
    wakeups = Wakeups()
    mailer, other = wakeups.subscribe(), wakeups.subscribe()
    mailer.follow({("Service", "shop", "mailer")})
    other.follow({("Service", "shop", "other")})
    wakeups.notify(("Service", "shop", "mailer"))
    assert await mailer.wait(1.0) == {("Service", "shop", "mailer")}
    assert await other.wait(0.01) == set()


async def test_a_wakeup_during_work_is_not_lost() -> None:
    wakeups = Wakeups()
    sub = wakeups.subscribe()
    sub.follow({("Secret", "shop", "s")})
    wakeups.notify(("Secret", "shop", "s"))  # arrives while the controller is busy
    await asyncio.sleep(0)
    assert await sub.wait(0.01) == {("Secret", "shop", "s")}
    assert await sub.wait(0.01) == set()  # consumed once


def test_following_new_keys_drops_the_old_ones() -> None:
    wakeups = Wakeups()
    sub = wakeups.subscribe()
    sub.follow({("Service", "shop", "a")})
    sub.follow({("Service", "shop", "b")})
    assert len(wakeups) == 1
    sub.close()
    assert len(wakeups) == 0


def test_only_a_new_generation_or_a_dependency_calls_for_compiling_again() -> None:
    own = ("Trigger", "shop", "t")
    service = ("Service", "shop", "mailer")
    assert not world.worth_reconciling({own}, own, generation=2, reconciled_generation=2)
    assert world.worth_reconciling({own}, own, generation=3, reconciled_generation=2)
    assert world.worth_reconciling({service}, own, generation=2, reconciled_generation=2)
    assert not world.worth_reconciling(set(), own, generation=2, reconciled_generation=2)


def test_grants_are_indexed_by_namespace_and_invalid_ones_grant_nothing() -> None:
    body = {"spec": {"from": [{"namespace": "shop"}], "to": [{"kind": "Service"}]}}
    grants = index(world.grant_entry("mail", "g", body), world.grant_entry("mail", "bad", {}))
    w = IndexWorld(sources=None, services=None, secrets=None, grants=grants)
    [grant] = w.grants("mail")
    assert grant.admits("shop", "anything") and not grant.admits("ops", "anything")
    assert w.grants("other") == []
