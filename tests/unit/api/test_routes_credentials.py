"""Compiling a Trigger's subscriber credentials: auth, headersFrom and tls come
from Secrets, are checked, and cross into the route sealed only."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError
from test_routes import FakeWorld, world

from pki import TestCA
from tidings.api.routes import CompileError, Route, compile_trigger
from tidings.api.sealing import Sealer, new_key
from tidings.api.types import TriggerSpec

SEALER = Sealer(new_key())


def spec(uri: str = "https://hooks.example.com/in", **delivery: object) -> TriggerSpec:
    return TriggerSpec.model_validate(
        {"source": "users-db", "subscriber": {"uri": uri}, "delivery": delivery}
    )


def compile_(s: TriggerSpec, w: FakeWorld) -> Route:
    return compile_trigger(namespace="shop", name="t", spec=s, world=w, sealer=SEALER)


def opened(route: Route) -> dict[str, str]:
    return {k: SEALER.unseal(v) for k, v in route.delivery.secret_headers.items()}


def with_secrets(**values: str) -> FakeWorld:
    w = world()
    for ref, value in values.items():
        name, key = ref.split("__")
        w.secrets[(f"shop/{name}", key.replace("_", "."))] = value
    return w


def test_bearer_token_becomes_a_sealed_authorization_header() -> None:
    w = with_secrets(api__token="s3cr3t\n")  # a trailing newline from a file is dropped
    route = compile_(spec(auth={"bearer": {"secretRef": {"name": "api", "key": "token"}}}), w)
    assert opened(route) == {"Authorization": "Bearer s3cr3t"}
    assert "s3cr3t" not in route.model_dump_json()


def test_basic_auth_reads_username_and_password() -> None:
    w = with_secrets(login__username="ann", login__password="pa:ss")
    route = compile_(spec(auth={"basic": {"secretRef": {"name": "login"}}}), w)
    expected = base64.b64encode(b"ann:pa:ss").decode()
    assert opened(route) == {"Authorization": f"Basic {expected}"}
    assert "pa:ss" not in route.model_dump_json()


def test_headers_from_secrets_each_sealed() -> None:
    w = with_secrets(api__key="k-1", api__tenant="acme")
    route = compile_(
        spec(
            headersFrom=[
                {"name": "X-Api-Key", "secretKeyRef": {"name": "api", "key": "key"}},
                {"name": "X-Tenant", "secretKeyRef": {"name": "api", "key": "tenant"}},
            ]
        ),
        w,
    )
    assert opened(route) == {"X-Api-Key": "k-1", "X-Tenant": "acme"}


def test_a_route_without_credentials_has_no_new_fields_in_its_json() -> None:
    route = compile_(spec(), world())
    assert "secret_headers" not in route.model_dump_json()
    assert '"tls"' not in route.model_dump_json()


@pytest.mark.parametrize(
    ("delivery", "named"),
    [
        ({"auth": {"bearer": {"secretRef": {"name": "nope", "key": "token"}}}}, "auth.bearer"),
        ({"auth": {"basic": {"secretRef": {"name": "nope"}}}}, "auth.basic"),
        (
            {"headersFrom": [{"name": "X-Key", "secretKeyRef": {"name": "nope", "key": "k"}}]},
            "headersFrom[0]",
        ),
        ({"tls": {"caSecretRef": {"name": "nope"}}}, "tls.caSecretRef"),
        ({"tls": {"clientCertSecretRef": {"name": "nope"}}}, "tls.clientCertSecretRef"),
    ],
)
def test_a_missing_secret_or_key_is_secret_not_found_naming_the_field(
    delivery: dict[str, object], named: str
) -> None:
    with pytest.raises(CompileError) as error:
        compile_(spec(**delivery), world())
    assert error.value.reason == "SecretNotFound"
    assert f"spec.delivery.{named}" in error.value.message
    assert "shop/nope" in error.value.message


def test_basic_auth_without_its_password_key_is_secret_not_found() -> None:
    w = with_secrets(login__username="ann")
    with pytest.raises(CompileError) as error:
        compile_(spec(auth={"basic": {"secretRef": {"name": "login"}}}), w)
    assert error.value.reason == "SecretNotFound"
    assert "'password'" in error.value.message


@pytest.mark.parametrize("value", ["", "two\nlines", "\r\n"])
def test_a_header_value_must_be_one_non_empty_line(value: str) -> None:
    w = with_secrets(api__token=value)
    with pytest.raises(CompileError) as error:
        compile_(spec(auth={"bearer": {"secretRef": {"name": "api", "key": "token"}}}), w)
    assert error.value.reason == "InvalidSecret"
    assert "two" not in error.value.message  # the value never appears


def test_a_basic_username_with_a_colon_is_invalid() -> None:
    w = with_secrets(login__username="a:b", login__password="p")
    with pytest.raises(CompileError, match="RFC 7617") as error:
        compile_(spec(auth={"basic": {"secretRef": {"name": "login"}}}), w)
    assert error.value.reason == "InvalidSecret"


def test_tls_seals_the_ca_and_the_client_certificate() -> None:
    ca = TestCA()
    client = ca.issue("tidings", server=False, client=True)
    w = with_secrets(
        **{"ca__ca_crt": ca.cert, "me__tls_crt": client.cert, "me__tls_key": client.key}
    )
    route = compile_(
        spec(tls={"caSecretRef": {"name": "ca"}, "clientCertSecretRef": {"name": "me"}}), w
    )
    tls = route.delivery.tls
    assert tls is not None and tls.ca and tls.cert and tls.key
    assert SEALER.unseal(tls.ca) == ca.cert
    assert SEALER.unseal(tls.key) == client.key
    assert "PRIVATE KEY" not in route.model_dump_json()


def test_tls_material_that_does_not_load_is_invalid_secret() -> None:
    ca = TestCA()
    other = TestCA().issue("x", server=False, client=True)
    mine = ca.issue("y", server=False, client=True)
    w = with_secrets(
        **{"bad__ca_crt": "not a pem", "me__tls_crt": mine.cert, "me__tls_key": other.key}
    )
    with pytest.raises(CompileError) as error:
        compile_(spec(tls={"caSecretRef": {"name": "bad"}}), w)
    assert error.value.reason == "InvalidSecret"
    assert error.value.message.startswith("spec.delivery.tls: Secret shop/bad")
    with pytest.raises(CompileError) as error:
        compile_(spec(tls={"clientCertSecretRef": {"name": "me"}}), w)
    assert error.value.reason == "InvalidSecret"
    assert "PRIVATE" not in error.value.message


def test_tls_needs_an_https_subscriber() -> None:
    w = with_secrets(**{"ca__ca_crt": TestCA().cert})
    with pytest.raises(CompileError, match="not https") as error:
        compile_(spec(uri="http://hooks.example.com/", tls={"caSecretRef": {"name": "ca"}}), w)
    assert error.value.reason == "InvalidSpec"


@pytest.mark.parametrize(
    ("delivery", "message"),
    [
        (
            {
                "auth": {
                    "bearer": {"secretRef": {"name": "a", "key": "t"}},
                    "basic": {"secretRef": {"name": "b"}},
                }
            },
            "at most one of bearer or basic",
        ),
        (
            {
                "headers": {"authorization": "x"},
                "auth": {"bearer": {"secretRef": {"name": "a", "key": "t"}}},
            },
            "both set Authorization",
        ),
        (
            {"headersFrom": [{"name": "webhook-id", "secretKeyRef": {"name": "a", "key": "k"}}]},
            "headersFrom[0].name: webhook-id is set by Tidings",
        ),
        (
            {
                "headers": {"X-Key": "literal"},
                "headersFrom": [{"name": "x-key", "secretKeyRef": {"name": "a", "key": "k"}}],
            },
            "also set by delivery.headers.X-Key",
        ),
        (
            {"headers": {"Host:admin.internal": ""}},
            "delivery.headers: 'Host:admin.internal' is not a header name; use letters",
        ),
        ({"headers": {"X Y": "1"}}, "'X Y' is not a header name"),
        ({"headers": {"X" * 129: "1"}}, "is not a header name.*at most 128"),
        ({"headers": {f"X-{n}": "1" for n in range(65)}}, "at most 64 items"),
        ({"headers": {"X-Big": "v" * 8193}}, "at most 8192 characters"),
        (
            {"headers": {"X-Key": "a\r\nHost: elsewhere"}},
            "delivery.headers.X-Key: a value may not contain CR, LF or NUL",
        ),
    ],
)
def test_each_header_has_one_origin(delivery: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        spec(**delivery)
