"""Stable sealing: an unchanged secret never rewrites the routing table."""

from __future__ import annotations

from tidings.api.routes import compile_trigger
from tidings.api.sealing import Sealer, new_key
from tidings.api.types import TriggerSpec
from tidings.operator.publishing import StableSealer, sealed_in_route

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class World:
    def source(self, namespace: str, name: str) -> object:
        return object()

    def service_ports(self, namespace: str, name: str) -> list[int]:
        return [80]

    def secret(self, namespace: str, name: str, key: str) -> str:
        return SECRET


SPEC = TriggerSpec.model_validate(
    {
        "source": "s",
        "subscriber": {"uri": "http://example.test/"},
        "delivery": {"signing": {"secretRef": {"name": "hook", "key": "secret"}}},
    }
)


def compile_with(sealer: Sealer):  # type: ignore[no-untyped-def]
    return compile_trigger(namespace="shop", name="t", spec=SPEC, world=World(), sealer=sealer)  # type: ignore[arg-type]


def test_fernet_alone_would_churn() -> None:
    key = new_key()
    assert compile_with(Sealer(key)) != compile_with(Sealer(key))


def test_a_restarted_operator_reproduces_the_published_route_byte_for_byte() -> None:
    key = new_key()
    published = compile_with(StableSealer(key))
    restarted = StableSealer(key)
    restarted.learn(sealed_in_route(published))
    assert compile_with(restarted).model_dump_json() == published.model_dump_json()


def test_ciphertexts_from_another_key_are_resealed() -> None:
    old = compile_with(StableSealer(new_key()))
    sealer = StableSealer(new_key())
    sealer.learn(sealed_in_route(old))
    fresh = compile_with(sealer)
    assert fresh.delivery.signing_secrets != old.delivery.signing_secrets
    assert sealer.unseal(fresh.delivery.signing_secrets[0]) == SECRET
