"""The console's pure pieces: who a request is from (trusted proxy, dev's
loopback rule and its Host check), CSRF tokens, the payload cap, durations on the pages."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tidings.api.settings import SettingsError
from tidings.cli.console import ConsoleSettings, csrf_key
from tidings.console import data
from tidings.console.app import _duration
from tidings.console.auth import (
    Gate,
    Identity,
    Unauthenticated,
    WrongHost,
    host_name,
    parse_cidrs,
)
from tidings.console.objects import SourceView


def identify(gate: Gate, peer: str, headers: dict[str, str] | None = None) -> Identity:
    return asyncio.run(gate.identify(peer=peer, headers=headers or {}, cookie=None))


def test_forwarded_identity_is_believed_only_from_the_trusted_proxy() -> None:
    gate = Gate("proxy", kube=object(), trusted_proxies=parse_cidrs(["10.0.0.0/8"]))  # type: ignore[arg-type]
    headers = {"X-Forwarded-User": "alice", "X-Forwarded-Groups": "dev, ops"}
    alice = identify(gate, "10.1.2.3", headers)
    assert (alice.user, alice.groups) == ("alice", ("dev", "ops"))
    with pytest.raises(Unauthenticated, match="trusted-proxy"):
        identify(gate, "192.168.0.9", headers)
    with pytest.raises(Unauthenticated, match="X-Forwarded-User"):
        identify(gate, "10.1.2.3", {})


def test_proxy_mode_without_proxies_is_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="--trusted-proxy"):
        Gate("proxy", kube=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--trusted-proxy 'ten': not a CIDR"):
        parse_cidrs(["ten"])


def test_the_open_console_of_tidings_dev_answers_loopback_only() -> None:
    gate = Gate("open")
    local = {"Host": "127.0.0.1:8080"}
    assert identify(gate, "127.0.0.1", local).open
    assert identify(gate, "::1", local).open
    with pytest.raises(Unauthenticated, match="loopback"):
        identify(gate, "192.168.1.20", local)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8080", "127.0.0.1", "localhost:8080", "LOCALHOST", "[::1]:8080", "::1"]
)
def test_the_open_console_answers_to_loopback_names(host: str) -> None:
    assert identify(Gate("open"), "127.0.0.1", {"Host": host}).open


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.2:8080", "[::2]", ""],
)
def test_the_open_console_refuses_other_host_names_against_dns_rebinding(host: str) -> None:
    """A page of evil.example whose name is rebound to 127.0.0.1 reaches the
    loopback console from the developer's own browser, but sends its own Host."""
    with pytest.raises(WrongHost, match=re.escape("127.0.0.1, localhost or [::1] only")):
        identify(Gate("open"), "127.0.0.1", {"Host": host})
    with pytest.raises(WrongHost):
        identify(Gate("open"), "127.0.0.1", {})


def test_the_name_part_of_a_host_header() -> None:
    assert host_name("[::1]:8080") == "::1"
    assert host_name("Localhost:80") == "localhost"
    assert host_name("::1") == "::1"
    assert host_name("example.com") == "example.com"


def test_csrf_tokens_are_bound_to_the_session() -> None:
    gate = Gate("open")
    one, other = Identity("a", session="s1"), Identity("a", session="s2")
    token = gate.csrf_token(one)
    assert gate.csrf_ok(one, token)
    assert not gate.csrf_ok(other, token)
    assert not gate.csrf_ok(one, "")
    assert not gate.csrf_ok(one, None)
    assert Gate("open").csrf_token(one) != token, "without a key each process makes its own"


def test_consoles_given_the_same_csrf_key_accept_each_others_tokens(tmp_path: Path) -> None:
    """console.replicas > 1: a form one replica served posts to another."""
    (tmp_path / "key").write_text("k" * 48 + "\n")
    key = csrf_key(ConsoleSettings(csrf_key_file=str(tmp_path / "key")))
    assert key == b"k" * 48
    assert csrf_key(ConsoleSettings(csrf_key="k" * 48)) == key
    one = Identity("a", session="s1")
    token = Gate("open", csrf_secret=key).csrf_token(one)
    assert Gate("open", csrf_secret=key).csrf_ok(one, token)
    assert csrf_key(ConsoleSettings()) is None


def test_an_unreadable_or_short_csrf_key_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"--csrf-key-file .*: cannot read the CSRF key"):
        csrf_key(ConsoleSettings(csrf_key_file=str(tmp_path / "missing")))
    with pytest.raises(SettingsError, match=r"TIDINGS_CONSOLE_CSRF_KEY: .* fewer than 32"):
        csrf_key(ConsoleSettings(csrf_key="short"))


@pytest.mark.parametrize(
    ("spec", "ingests"),
    [
        ({"http": {}}, True),
        ({"objectStore": {"mode": "notify", "bucket": "b"}}, True),
        ({"objectStore": {"mode": "poll", "bucket": "b"}}, False),
        ({"schedule": {"cron": "@hourly"}}, False),
        ({"postgres": {}}, False),
    ],
)
def test_only_sources_producers_post_to_get_an_ingest_url(
    spec: dict[str, object], ingests: bool
) -> None:
    """The source page's curl example, or else its adapter's health."""
    assert SourceView("ns", "s", spec, []).ingests is ingests


def test_a_payload_is_cut_at_the_cap() -> None:
    text, cut = data.pretty_payload({"data": "x" * (data.PAYLOAD_CAP + 10)})
    assert cut and len(text) == data.PAYLOAD_CAP
    text, cut = data.pretty_payload({"data": "<script>"})
    assert not cut and "<script>" in text


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (0.1, "100ms"),
        (0, "0s"),
        (5, "5s"),
        (90, "1m 30s"),
        (3600, "1h"),
        (90061, "1d 1h"),
    ],
)
def test_durations_read_like_kubectl(seconds: float | None, shown: str) -> None:
    assert _duration(seconds) == shown
