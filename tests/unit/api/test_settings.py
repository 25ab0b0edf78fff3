"""Settings: flag, then environment variable, then default; errors name the source."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import pytest

from tidings.api.process import event_loop_choice, parse_listen, run_event_loop
from tidings.api.settings import CommonSettings, SettingsError, add_arguments, load, setting


@dataclass(frozen=True)
class Example(CommonSettings):
    grace: float = setting("--grace", "EX_GRACE", 30.0, "seconds to drain", example="30")
    cluster: bool = setting("--cluster", "EX_CLUSTER", False, "Redis Cluster")
    namespaces: list[str] = setting("--namespace", "EX_NAMESPACES", [], "namespaces")
    mode: str = setting("--mode", "EX_MODE", "a", "mode", choices=("a", "b"))
    secret: str = setting(None, "EX_SECRET", "", "environment only")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    return parser.parse_args(argv)


def test_a_flag_beats_its_variable_which_beats_the_default() -> None:
    env = {"EX_GRACE": "5", "EX_CLUSTER": "yes", "EX_NAMESPACES": "a, b", "REDIS_URL": "redis://r"}
    assert load(Example, parse(), {}) == Example()
    from_env = load(Example, parse(), env)
    assert (from_env.grace, from_env.cluster, from_env.namespaces) == (5.0, True, ["a", "b"])
    assert from_env.redis_url == "redis://r"
    given = load(Example, parse("--grace", "1", "--namespace", "x", "--namespace", "y"), env)
    assert (given.grace, given.namespaces) == (1.0, ["x", "y"])


def test_an_environment_only_setting_has_no_flag() -> None:
    with pytest.raises(SystemExit):
        parse("--secret", "s")
    assert load(Example, parse(), {"EX_SECRET": "s"}).secret == "s"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EX_GRACE": "soon"}, r"EX_GRACE='soon': not a number; e\.g\. 30"),
        ({"EX_CLUSTER": "maybe"}, r"EX_CLUSTER='maybe': not a boolean"),
        ({"EX_MODE": "c"}, r"EX_MODE='c': use one of a, b"),
    ],
)
def test_a_malformed_variable_is_named_with_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load(Example, parse(), env)


def test_every_flag_names_its_variable_in_the_help() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    text = parser.format_help()
    for variable in ("REDIS_URL", "TIDINGS_LOG_FORMAT", "EX_GRACE", "EX_CLUSTER", "EX_MODE"):
        assert f"env {variable}" in text


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::]:9000", ("::", 9000)),
        ("[::1]:9", ("::1", 9)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_addresses_are_host_and_port(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["8080", ":8080", "host:http", "host:70000", "::1:8080"])
def test_a_bad_listen_address_names_the_flag_and_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"--listen .*: write HOST:PORT, e\.g\. 0\.0\.0\.0:8080"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("value", "loop"), [("", "uvloop"), ("uvloop", "uvloop"), (" AsyncIO ", "asyncio")]
)
def test_the_event_loop_is_uvloop_unless_asked_for_asyncio(value: str, loop: str) -> None:
    assert event_loop_choice({"TIDINGS_EVENT_LOOP": value}) == loop


def test_an_unknown_event_loop_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"TIDINGS_EVENT_LOOP: 'trio' .*use uvloop .* or asyncio"):
        event_loop_choice({"TIDINGS_EVENT_LOOP": "trio"})


@pytest.mark.parametrize("value", ["uvloop", "asyncio"])
def test_the_chosen_event_loop_runs_the_process(value: str) -> None:
    async def loop_class() -> str:
        return type(asyncio.get_running_loop()).__module__

    module = run_event_loop(loop_class(), {"TIDINGS_EVENT_LOOP": value})
    assert module.startswith("uvloop" if value == "uvloop" else "asyncio")
