"""Compiling a Trigger: pure function of its spec and what exists."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tidings.api.destinations import LOCAL, DestinationPolicy
from tidings.api.routes import CompileError, compile_source, compile_trigger
from tidings.api.sealing import Sealer, SealError, new_key
from tidings.api.types import EventSourceSpec, TriggerGrantSpec, TriggerSpec

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class FakeWorld:
    """A plain in-memory World: the compiler's only input besides the spec."""

    sources: dict[str, EventSourceSpec] = field(default_factory=dict)
    services: dict[str, list[int]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    granted: dict[str, list[TriggerGrantSpec]] = field(default_factory=dict)

    def grants(self, namespace: str) -> list[TriggerGrantSpec]:
        return self.granted.get(namespace, [])

    def source(self, namespace: str, name: str) -> EventSourceSpec | None:
        return self.sources.get(f"{namespace}/{name}")

    def service_ports(self, namespace: str, name: str) -> list[int] | None:
        return self.services.get(f"{namespace}/{name}")

    def secret(self, namespace: str, name: str, key: str) -> str | None:
        return self.secrets.get((f"{namespace}/{name}", key))


def world() -> FakeWorld:
    return FakeWorld(
        sources={"shop/users-db": EventSourceSpec.model_validate({"http": {}})},
        services={"shop/mailer": [8080], "shop/web": [80, 443]},
        secrets={
            ("shop/hook", "secret"): f"{SECRET} {SECRET}",
            ("shop/users-db-ingest-token", "token"): "t0k",
        },
    )


def trigger(**overrides: object) -> TriggerSpec:
    spec: dict[str, object] = {"source": "users-db", "subscriber": {"ref": {"name": "mailer"}}}
    spec.update(overrides)
    return TriggerSpec.model_validate(spec)


def compile_(spec: TriggerSpec, w: FakeWorld | None = None, sealer: Sealer | None = None):  # type: ignore[no-untyped-def]
    return compile_trigger(
        namespace="shop",
        name="welcome",
        spec=spec,
        world=w or world(),
        sealer=sealer or Sealer(new_key()),
    )


def test_service_ref_resolves_to_cluster_dns_with_its_single_port() -> None:
    route = compile_(trigger(subscriber={"ref": {"name": "mailer"}, "path": "/hooks/signup"}))
    assert route.subscriber_url == "http://mailer.shop.svc.cluster.local:8080/hooks/signup"
    assert route.stream == "tidings:{shop/users-db}:events"
    assert route.group == "welcome"


def test_port_80_is_left_out_of_the_url() -> None:
    route = compile_(trigger(subscriber={"ref": {"name": "web", "port": 80}}))
    assert route.subscriber_url == "http://web.shop.svc.cluster.local"


def test_durations_compile_to_seconds_with_defaults_filled() -> None:
    route = compile_(trigger(delivery={"timeout": "2s", "retry": {"maxDelay": "5m"}}))
    assert route.delivery.timeout == 2
    assert route.delivery.retry.max_delay == 300
    assert route.delivery.retry.initial_delay == 1
    assert route.delivery.max_age == 72 * 3600
    assert route.delivery.dead_letter_max_age == 720 * 3600
    assert route.delivery.dead_letter_max_events == 100_000
    # Defaults stay out of the stored JSON: dispatchers that predate the fields
    # refuse unknown ones, and must keep reading routes during an upgrade.
    assert "dead_letter_max" not in route.model_dump_json()
    kept = compile_(trigger(delivery={"deadLetterRetention": {"maxAge": "24h", "maxEvents": 10}}))
    assert type(kept).model_validate_json(kept.model_dump_json()) == kept
    assert (kept.delivery.dead_letter_max_age, kept.delivery.dead_letter_max_events) == (
        24 * 3600,
        10,
    )


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (trigger(source="nope"), "SourceNotFound"),
        (trigger(subscriber={"ref": {"name": "ghost"}}), "SubscriberNotFound"),
        (trigger(subscriber={"ref": {"name": "mailer", "port": 9}}), "SubscriberNotFound"),
        (
            trigger(delivery={"signing": {"secretRef": {"name": "missing", "key": "k"}}}),
            "SecretNotFound",
        ),
        (trigger(filter={"expression": "event.data.plan =="}), "InvalidFilter"),
        (trigger(filter={"expression": "data.plan == 'pro'"}), "InvalidFilter"),
    ],
)
def test_failures_carry_the_condition_reason(spec: TriggerSpec, reason: str) -> None:
    with pytest.raises(CompileError) as caught:
        compile_(spec)
    assert caught.value.reason == reason
    assert caught.value.message.startswith("spec.")


def test_signing_secrets_are_sealed_and_open_only_with_the_key() -> None:
    sealer = Sealer(new_key())
    route = compile_(
        trigger(delivery={"signing": {"secretRef": {"name": "hook", "key": "secret"}}}),
        sealer=sealer,
    )
    assert len(route.delivery.signing_secrets) == 2
    assert SECRET not in route.model_dump_json()
    assert sealer.unseal(route.delivery.signing_secrets[0]) == SECRET
    with pytest.raises(SealError, match="same key"):
        Sealer(new_key()).unseal(route.delivery.signing_secrets[0])


def test_http_source_without_token_ref_uses_the_generated_secret() -> None:
    sealer = Sealer(new_key())
    compiled = compile_source(
        namespace="shop",
        name="users-db",
        spec=EventSourceSpec.model_validate({"http": {}}),
        world=world(),
        sealer=sealer,
    )
    assert compiled.ingest is not None and compiled.ingest.token_sealed is not None
    assert sealer.unseal(compiled.ingest.token_sealed) == "t0k"
    assert compiled.api_path == "/apis/tidings.dev/v1alpha1/namespaces/shop/eventsources/users-db"


def test_start_from_becomes_the_id_the_consumer_group_is_created_at() -> None:
    from tidings.api.routes import MAX_SEQUENCE, cursor_start

    assert cursor_start("now") == "$"
    assert cursor_start("beginning") == "0"
    # 2026-11-29T10:00:00Z is 1795946400000 ms: the group starts just before it.
    assert cursor_start("2026-11-29T10:00:00Z") == f"1795946399999-{MAX_SEQUENCE}"
    assert cursor_start("2026-11-29T11:00:00+01:00") == f"1795946399999-{MAX_SEQUENCE}"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        ("whsec_", "not whsec_<base64"),
        ("whsec_abc", "not whsec_<base64"),  # not base64
        ("whsec_" + "a2V5", "not whsec_<base64"),  # 3 bytes: too short to be a key
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "not whsec_<base64"),  # no prefix
        (f"{SECRET} whsec_%%%", "value 2 of 2"),
    ],
)
def test_an_empty_or_malformed_signing_secret_is_invalid_secret(value: str, says: str) -> None:
    w = world()
    w.secrets[("shop/hook", "secret")] = value
    spec = trigger(delivery={"signing": {"secretRef": {"name": "hook", "key": "secret"}}})
    with pytest.raises(CompileError) as caught:
        compile_(spec, w)
    assert caught.value.reason == "InvalidSecret"
    assert caught.value.message.startswith("spec.delivery.signing.secretRef: Secret shop/hook")
    assert says in caught.value.message
    assert "MfKQ9r8" not in caught.value.message  # the value itself is never shown


def test_an_empty_ingest_token_is_invalid_secret_not_an_open_door() -> None:
    w = world()
    w.secrets[("shop/users-db-ingest-token", "token")] = ""
    with pytest.raises(CompileError) as caught:
        compile_source(
            namespace="shop",
            name="users-db",
            spec=EventSourceSpec.model_validate({"http": {}}),
            world=w,
            sealer=Sealer(new_key()),
        )
    assert caught.value.reason == "InvalidSecret"
    assert "users-db-ingest-token" in caught.value.message


@pytest.mark.parametrize(
    ("subscriber", "rule"),
    [
        ({"uri": "http://169.254.169.254/latest/meta-data/"}, "link-local"),
        ({"uri": "http://metadata.google.internal/computeMetadata/v1/"}, "metadata"),
        ({"uri": "http://[::ffff:169.254.169.254]/"}, "link-local"),
        ({"uri": "http://127.0.0.1:8080/"}, "loopback"),
        ({"uri": "http://0.0.0.0:8080/"}, "unspecified"),
    ],
)
def test_a_forbidden_destination_is_destination_not_allowed_naming_the_rule(
    subscriber: dict[str, str], rule: str
) -> None:
    with pytest.raises(CompileError) as caught:
        compile_(trigger(subscriber=subscriber))
    assert caught.value.reason == "DestinationNotAllowed"
    assert caught.value.message.startswith("spec.subscriber.uri: ")
    assert f"(rule {rule};" in caught.value.message


def test_the_dead_letter_sink_is_held_to_the_same_policy() -> None:
    spec = trigger(delivery={"deadLetter": {"uri": "http://169.254.169.254/"}})
    with pytest.raises(CompileError) as caught:
        compile_(spec)
    assert caught.value.reason == "DestinationNotAllowed"
    assert caught.value.message.startswith("spec.delivery.deadLetter.uri: ")


def test_the_policy_is_the_callers_and_a_cluster_refuses_loopback_by_default() -> None:
    spec = trigger(subscriber={"uri": "http://127.0.0.1:9000/hook"})
    assert compile_trigger(
        namespace="shop",
        name="w",
        spec=spec,
        world=world(),
        sealer=Sealer(new_key()),
        destinations=LOCAL,
    ).subscriber_url.startswith("http://127.0.0.1")
    denied = DestinationPolicy.build(deny=["svc.cluster.local"])
    with pytest.raises(CompileError, match=r"deny-list entry 'svc\.cluster\.local'"):
        compile_trigger(
            namespace="shop",
            name="w",
            spec=trigger(),
            world=world(),
            sealer=Sealer(new_key()),
            destinations=denied,
        )


def grant(*namespaces: str, service: str | None = None) -> TriggerGrantSpec:
    return TriggerGrantSpec.model_validate(
        {"from": [{"namespace": n} for n in namespaces], "to": [{"name": service}]}
    )


def test_a_ref_into_another_namespace_needs_that_namespaces_grant() -> None:
    w = world()
    w.services["mail/mailer"] = [8080]
    spec = trigger(subscriber={"ref": {"name": "mailer", "namespace": "mail"}})
    with pytest.raises(CompileError) as caught:
        compile_(spec, w)
    assert caught.value.reason == "CrossNamespaceNotAllowed"
    assert caught.value.message.startswith("spec.subscriber.ref: Service mail/mailer")
    assert "TriggerGrant in namespace mail" in caught.value.message
    w.granted["mail"] = [grant("billing"), grant("shop", service="other")]  # not these
    with pytest.raises(CompileError, match=r"in another namespace"):
        compile_(spec, w)
    w.granted["mail"].append(grant("ops", "shop", service="mailer"))
    assert compile_(spec, w).subscriber_url == "http://mailer.mail.svc.cluster.local:8080"
    w.granted["mail"] = [grant("shop")]  # every Service of mail
    assert compile_(spec, w).subscriber_url == "http://mailer.mail.svc.cluster.local:8080"


def test_consent_is_checked_before_the_service_so_nothing_leaks() -> None:
    spec = trigger(subscriber={"ref": {"name": "ghost", "namespace": "mail"}})
    with pytest.raises(CompileError) as caught:
        compile_(spec)
    assert caught.value.reason == "CrossNamespaceNotAllowed"


@pytest.mark.parametrize(
    "uri",
    [
        "http://mailer.mail.svc.cluster.local:8080/x",
        "http://mailer.mail.svc/x",
        "http://MAILER.mail.svc.cluster.local./x",
    ],
)
def test_a_uri_naming_another_namespaces_service_needs_the_grant_too(uri: str) -> None:
    w = world()
    spec = trigger(subscriber={"uri": uri})
    with pytest.raises(CompileError) as caught:
        compile_(spec, w)
    assert caught.value.reason == "CrossNamespaceNotAllowed"
    assert caught.value.message.startswith("spec.subscriber.uri: ")
    w.granted["mail"] = [grant("shop", service="mailer")]
    assert compile_(spec, w).subscriber_url == uri


def test_the_dead_letter_sink_crosses_namespaces_only_with_consent() -> None:
    w = world()
    w.services["ops/dlq"] = [80]
    spec = trigger(delivery={"deadLetter": {"ref": {"name": "dlq", "namespace": "ops"}}})
    with pytest.raises(CompileError, match=r"^spec\.delivery\.deadLetter\.ref: "):
        compile_(spec, w)
    w.granted["ops"] = [grant("shop")]
    assert compile_(spec, w).delivery.dead_letter_url == "http://dlq.ops.svc.cluster.local"


def test_a_ref_into_the_triggers_own_namespace_needs_no_grant() -> None:
    spec = trigger(subscriber={"ref": {"name": "mailer", "namespace": "shop"}})
    assert compile_(spec).subscriber_url.startswith("http://mailer.shop.svc")
